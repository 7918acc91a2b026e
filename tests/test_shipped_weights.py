"""The Light-ASD checkpoint shipped in the package: it is the released file (sha256, licence beside
it), a damaged copy is refused, it is the default of ``--asd-model light-asd`` in every profile
(the paper profile keeps TalkNet), and with it the demo's speaker faces match the sample's truth.

Ground truth comes from the sample generator (``samples/make_sample.py``): per utterance, which
side of the split-screen two-shot the speaker's face is on, or a close-up of the speaker (where
the only face is theirs). :func:`speaker_side_accuracy` is the number quoted in the README.
"""
from __future__ import annotations

import hashlib
import importlib.util
import json
import shutil
import sys

import h5py
import numpy as np
import pytest
import torch

from conftest import SAMPLE, SHARED_REFERENCE
from m3ed.asd.assign import COLUMNS
from m3ed.asd.pipeline import FEATURE_SET
from m3ed.asd.score import build_scorer, checkpoint_provenance
from m3ed.corpus import Corpus
from m3ed.models.light_asd import LightASD
from m3ed.pipelines.cli import main
from m3ed.profiles import get_profile
from m3ed.store import FeatureReader
from m3ed import weights

DIALOGUE = "sampleshow_1"   # the demo's main dialogue: two-shots and close-ups of both speakers
RELEASED_SHA256 = "efc375833887eefa9d209dc92810e18519b04c3c73ea35a549f2a7f40b7d94d5"  # reference/README.md
_FRAME, _TRACK, _X1, _X2, _STAGE = (COLUMNS.index(c) for c in ("frame", "track", "x1", "x2", "stage"))


def sample_generator():
    """``samples/make_sample.py`` as a module (its show definitions are the ground truth)."""
    spec = importlib.util.spec_from_file_location("make_sample", SAMPLE / "make_sample.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules.setdefault("make_sample", module)
    spec.loader.exec_module(module)
    return module


def speaker_side_accuracy(out_dir, corpus: Corpus) -> dict:
    """Share of utterance frames whose chosen face is the true speaker's, by the sample's shot plan.

    Two-shot utterances: the chosen box's centre must lie in the speaker's half of the frame.
    Close-up utterances (``Show.close_ups``, always of the current speaker): any chosen face is
    right, the speaker's being the only one in the picture. Frames without a chosen face count as
    misses. Returns ``{"frames", "correct", "with_face", "accuracy", "precision"}``.
    """
    generator = sample_generator()
    shows = {show.dialog_id: show for show in generator.SHOWS}
    frames = correct = with_face = 0
    with FeatureReader.open(out_dir, FEATURE_SET) as reader:
        for dialogue in corpus:
            show = shows[dialogue.id]
            for number, u in enumerate(dialogue.utterances, start=1):
                rows = reader[u.id]
                chosen = rows[rows[:, _TRACK] >= 0]
                frames, with_face = frames + len(rows), with_face + len(chosen)
                if number in show.close_ups:
                    assert show.close_ups[number] == u.speaker, "the sample's close-ups show the current speaker"
                    correct += len(chosen)
                    continue
                left = show.characters[u.speaker].face == show.left_face
                centre = (chosen[:, _X1] + chosen[:, _X2]) / 2
                correct += int(np.sum(centre < generator.WIDTH / 2) if left else np.sum(centre >= generator.WIDTH / 2))
    return {"frames": frames, "correct": correct, "with_face": with_face,
            "accuracy": correct / frames, "precision": correct / with_face if with_face else None}


# ---- the file --------------------------------------------------------------------------------------
def test_shipped_checkpoint_is_the_released_file_with_its_licence():
    path = weights.light_asd_checkpoint()
    assert path.parent.name == "weights" and path.parent.parent.name == "m3ed"
    assert hashlib.sha256(path.read_bytes()).hexdigest() == RELEASED_SHA256 == weights.LIGHT_ASD_SHA256
    assert path.stat().st_size == 4_175_289
    licence = weights.light_asd_license()
    assert licence.startswith("MIT License") and "Liao Junhua" in licence
    reference = SHARED_REFERENCE / "weights" / "light_asd_finetuning_TalkSet.model"
    if reference.exists():
        assert path.read_bytes() == reference.read_bytes()


def test_damaged_copy_is_refused_with_the_fix(tmp_path):
    copy = tmp_path / weights.LIGHT_ASD_FILE
    shutil.copyfile(weights.light_asd_checkpoint(), copy)
    assert weights.verified(copy, RELEASED_SHA256) == copy
    data = bytearray(copy.read_bytes())
    data[len(data) // 2] ^= 0xFF
    copy.write_bytes(bytes(data))
    with pytest.raises(weights.WeightsError, match=r"light_asd_finetuning_TalkSet\.model.*sha256.*reinstall"):
        weights.verified(copy, RELEASED_SHA256)
    with pytest.raises(weights.WeightsError, match="missing"):
        weights.verified(tmp_path / "absent.model", RELEASED_SHA256)


# ---- the default weights -----------------------------------------------------------------------------
@pytest.mark.parametrize("profile", ["tiny", "paper-random", "paper"])
def test_light_asd_loads_the_shipped_weights_in_every_profile(profile):
    model = build_scorer(get_profile(profile), "cpu", "light-asd")
    expected = LightASD.from_checkpoint(weights.light_asd_checkpoint())
    got, want = model.state_dict(), expected.state_dict()
    assert got.keys() == want.keys()
    assert all(torch.equal(got[k], want[k]) for k in want)
    random_init = LightASD()   # a freshly built model differs: the weights really came from the file
    assert not torch.equal(random_init.state_dict()["lossAV.FC.weight"], want["lossAV.FC.weight"])
    provenance = checkpoint_provenance(get_profile(profile), "light-asd")
    assert provenance == {"asd_checkpoint": f"m3ed/weights/{weights.LIGHT_ASD_FILE}",
                          "asd_checkpoint_sha256": RELEASED_SHA256}


def test_paper_profile_keeps_talknet_and_random_profiles_stay_random():
    assert get_profile("paper").asd_model == "talknet"
    assert checkpoint_provenance(get_profile("tiny"), "talknet") == {"asd_checkpoint": None, "asd_random_seed": 0}


def test_explicit_checkpoint_is_recorded_by_its_sha256(tmp_path):
    copy = tmp_path / "mine.model"
    shutil.copyfile(weights.light_asd_checkpoint(), copy)
    provenance = checkpoint_provenance(get_profile("tiny"), "light-asd", str(copy))
    assert provenance == {"asd_checkpoint": str(copy), "asd_checkpoint_sha256": RELEASED_SHA256}


# ---- the demo finds the speakers -------------------------------------------------------------------------
@pytest.fixture(scope="module")
def demo_asd(tmp_path_factory, sample_paths, models_cache):
    """The demo's ASD (tiny profile, --asd-model light-asd, no checkpoint path) on its main dialogue,
    with cheaper detection than the demo's (every 5th frame at 144 px)."""
    out = tmp_path_factory.mktemp("demo-asd")
    code = main(["extract", "--stages", "asd", "--profile", "tiny", "--device", "cpu", "--no-progress",
                 "--asd-model", "light-asd", "--dialogues", DIALOGUE, "--out", str(out),
                 "--detect-every", "5", "--detect-height", "144", "--embed-every", "25"])
    assert code == 0
    return out


def test_real_weights_see_the_moving_lips(demo_asd, sample_corpus):
    """A face talks only during its own character's lines.  During the astronaut character's lines in
    the two-shots (her mouth moving, the carphone face held still) the real weights score her face far
    above the still one.  (The carphone clip's own talking is seen less reliably, so it is not asserted.)"""
    generator = sample_generator()
    show = next(s for s in generator.SHOWS if s.dialog_id == DIALOGUE)
    talker = next(key for key, c in show.characters.items() if c.face == "astronaut")
    astronaut = "left" if show.left_face == "astronaut" else "right"
    still = "right" if astronaut == "left" else "left"
    record = json.loads((demo_asd / "asd" / f"{DIALOGUE}.json").read_text(encoding="utf-8"))
    shots = np.asarray(record["shots"])
    by_shot: dict[int, dict[str, tuple]] = {}
    for track in record["tracks"]:
        shot = int(np.searchsorted(shots, track["frames"][0], side="right"))
        centre = np.mean([(b[0] + b[2]) / 2 for b in track["boxes"]])
        side = "left" if centre < generator.WIDTH / 2 else "right"
        by_shot.setdefault(shot, {})[side] = (np.asarray(track["frames"]), np.array(track["asd_prob"], float))
    pairs = [faces for faces in by_shot.values() if len(faces) == 2]   # the two-shots: a face on each side
    assert len(pairs) == 3
    lines = [u for u in sample_corpus[DIALOGUE].utterances if u.speaker == talker]
    checked = 0
    for shot in pairs:
        for u in lines:
            first, end = round(u.start * generator.FPS), round(u.end * generator.FPS)
            means = {}
            for side, (frames, prob) in shot.items():
                inside = (frames >= first) & (frames < end)
                means[side] = float(np.nanmean(prob[inside])) if inside.sum() > 5 else None
            if means[astronaut] is None or means[still] is None:
                continue
            checked += 1
            assert means[astronaut] > 0.8 and means[astronaut] > means[still] + 0.4, (u.id, means)
    assert checked >= 3


def test_demo_speaker_faces_match_the_sample_ground_truth(demo_asd):
    corpus = Corpus.from_jsonl(demo_asd / "manifest.jsonl")
    result = speaker_side_accuracy(demo_asd, corpus)
    print(f"speaker-face accuracy on {DIALOGUE}: {result}")
    assert result["frames"] > 400
    # Chance is at most 0.5 (a random side whenever a face is chosen); random ASD weights choose none.
    # The sample's faces talk only during their own character's lines; measured here: 0.905 (504 / 557), precision 0.906.
    assert result["accuracy"] > 0.8 and result["precision"] > 0.8


def test_demo_run_records_the_shipped_checkpoint(demo_asd):
    with h5py.File(demo_asd / "features" / f"{FEATURE_SET}.h5", "r") as h5:
        assert h5.attrs["asd_checkpoint_sha256"] == RELEASED_SHA256
        assert h5.attrs["asd_checkpoint"] == f"m3ed/weights/{weights.LIGHT_ASD_FILE}"
