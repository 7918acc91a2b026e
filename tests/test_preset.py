"""``--preset authors|fast``: the M3ED authors' asd front end as one preset, explicit options over it,
and the rules it turns on, checked on small inputs against expectations worked out by hand from the
authors' ``preprocess/extract_spk_faces.py`` and TalkNet's ``demoTalkNet.py``. Also the fast
default's stage-1 minimum under detection on every K-th frame."""
from __future__ import annotations

import json
from dataclasses import asdict

import numpy as np
import pytest

from m3ed.asd.assign import COLUMNS, AssignParams, Rule, assign_speakers, owned_frames, utterance_frames
from m3ed.asd.options import AsdConfig
from m3ed.asd.params import S3FDParams, ScoreParams, ShotParams, TrackingParams
from m3ed.asd.score import score_pieces
from m3ed.asd.track import Track
from m3ed.config import ExtractConfig, RunOptions
from m3ed.corpus import Dialogue, Utterance
from m3ed.errors import ConfigurationError
from m3ed.profiles import get_profile

FPS = 25.0
STAGE, TRACK, FRAME = COLUMNS.index("stage"), COLUMNS.index("track"), COLUMNS.index("frame")
TINY = get_profile("tiny")


def resolved(config: ExtractConfig) -> AsdConfig:
    return config.stage_options("asd").config(TINY)


def from_command_line(*argv: str) -> ExtractConfig:
    from m3ed.pipelines.cli import build_extract_parser, config_from_args

    return config_from_args(build_extract_parser().parse_args(list(argv)))


# --- what the presets resolve to -----------------------------------------------------------------

def test_fast_is_the_default_and_changes_nothing():
    assert RunOptions().preset == "fast" and from_command_line().run.preset == "fast"
    assert resolved(ExtractConfig()) == AsdConfig(model=TINY.asd_model, checkpoint=TINY.asd_checkpoint)


def test_authors_resolves_to_the_authors_front_end():
    c = resolved(from_command_line("--preset", "authors"))
    assert c.preset == "authors"
    assert c.detector == "s3fd" and c.detector_params == S3FDParams(every=1, scale=0.25, min_score=0.9)
    assert (c.scoring.mode, c.scoring.frames, c.scoring.score_last_frame) == ("multi", "all", False)
    assert c.embed_every == 1 and c.embedder == "senet50-vggface2"
    assert c.assign.rules == "authors" and c.assign.end_inclusive and c.assign.one_utterance_per_frame
    # the demo's track_shot: iouThres 0.5, numFailedDet 10, minTrack 10, minFaceSize 1
    assert c.tracking == TrackingParams(iou_threshold=0.5, max_gap=10, min_track=10, min_face_size=1)
    assert c.shots.min_shot_frames == 15   # PySceneDetect's min_scene_len


def test_explicit_options_win_over_the_preset():
    config = from_command_line("--preset", "authors", "--detector", "mtcnn", "--asd-mode", "single",
                               "--embed-every", "5", "--face-embedder", "inception-resnet-v1", "--assign-rules", "strict")
    c = resolved(config)
    assert (c.detector, c.scoring.mode, c.embed_every, c.embedder, c.assign.rules) == \
        ("mtcnn", "single", 5, "inception-resnet-v1", "strict")
    # what was not given still comes from the preset
    assert c.scoring.frames == "all" and not c.scoring.score_last_frame and c.assign.end_inclusive
    # a section field set from Python wins too
    config.asd.shots = ShotParams(min_shot_frames=12)
    assert resolved(config).shots.min_shot_frames == 12


def test_a_preset_reads_back_from_run_json_and_a_bad_one_is_refused():
    config = from_command_line("--preset", "authors")
    back = ExtractConfig.from_dict(json.loads(json.dumps(config.to_dict())))
    assert back.run.preset == "authors" and resolved(back).preset == "authors"
    with pytest.raises(ConfigurationError, match="--preset exact: choose one of fast, authors"):
        RunOptions(preset="exact")
    with pytest.raises(SystemExit):
        from_command_line("--preset", "exact")


# --- end to end on the bundled sample ------------------------------------------------------------

SHORT = "sampletest_1"   # 10 s; its utterances, 0.20-2.12, 2.56-4.84, 5.08-6.68, 7.24-9.28 s, overlap nowhere


@pytest.fixture(scope="module")
def authors_run(tmp_path_factory, sample_paths, models_cache):
    """``--preset authors`` on one dialogue, asd then visual, tiny profile (S3FD and SENet-50 with random
    weights). Two explicit settings keep it short and make it find faces: Light-ASD (small, its shipped
    weights) scores, and S3FD keeps faces above 0.67 (its random weights score none above 0.9)."""
    from m3ed.pipelines.extract import extract

    config = from_command_line("--preset", "authors", "--stages", "asd,visual", "--profile", "tiny", "--device", "cpu",
                               "--threads", "1", "--no-progress", "--no-report", "--asd-model", "light-asd",
                               "--annotations", str(sample_paths["annotations"]), "--relation", str(sample_paths["relation"]),
                               "--videos", str(sample_paths["videos"]), "--dialogues", SHORT,
                               "--out", str(tmp_path_factory.mktemp("authors")))
    config.asd.s3fd = S3FDParams(min_score=0.67)
    extract(config)
    return config.run.out


def test_authors_preset_end_to_end_records_the_preset(authors_run):
    from pathlib import Path

    from m3ed.store import FeatureReader

    out = Path(authors_run)
    record = json.loads((out / "run.json").read_text())
    assert record["config"]["run"]["preset"] == "authors"
    asd = record["stages"]["asd"]["provenance"]
    assert asd["preset"] == "authors" and asd["detector"] == "s3fd" and asd["face_embedder"] == "senet50-vggface2"
    assert asd["scoring"]["mode"] == "multi" and asd["scoring"]["score_last_frame"] is False
    assert asd["detection"] == asdict(S3FDParams(min_score=0.67))   # the explicit setting won
    assert record["stages"]["visual"]["provenance"]["preset"] == "authors"
    with FeatureReader(out / "features" / "speaker_faces.h5") as reader:
        assert reader.attrs["preset"] == "authors" and reader.attrs["face_embedder_authors_cast"]
        # end frame included: 0.20-2.12 s is frames 5-53, 2.56-4.84 s 64-121, 5.08-6.68 s 127-167, 7.24-9.28 s 181-232
        for i, (first, last) in enumerate(((5, 53), (64, 121), (127, 167), (181, 232))):
            assert reader[f"{SHORT}_{i + 1}"][:, FRAME].tolist() == list(range(first, last + 1))
        found = sum(int((reader[f"{SHORT}_{i}"][:, TRACK] >= 0).sum()) for i in range(1, 5))
    assert found > 0, "S3FD found no face: the visual stage below would have nothing to crop"
    with FeatureReader(out / "features" / "denseface_frame.h5") as reader:
        assert reader.attrs["preset"] == "authors"
    # every track frame is scored (multi mode, all frames) except each track's last, as in the demo
    tracks = json.loads((out / "asd" / f"{SHORT}.json").read_text())["tracks"]
    assert tracks
    for track in tracks:
        assert track["asd_prob"][-1] is None and None not in track["asd_prob"][:-1]


# --- the last frame of a track, unscored as in the demo -------------------------------------------

def test_the_demo_leaves_a_tracks_last_frame_unscored():
    """The demo cuts a track of T frames with T/25 s of audio: 4T - 1 MFCC rows (25 ms windows every
    10 ms), trimmed to 4(T - 1), so T - 1 video frames are scored."""
    import torch

    from m3ed.asd.mfcc import mfcc

    frames = 30
    rows = len(mfcc(torch.ones(16000 * frames // 25), 16000))
    assert rows == 4 * frames - 1 and (rows - rows % 4) // 4 == frames - 1


def test_score_last_frame_false_scores_every_frame_but_the_last():
    track = Track(np.arange(100, 130), np.tile([0, 0, 50, 50], (30, 1)), 0)
    # multi mode, 29 frames scored: the 1 s grid is chunks of 25 and 4 frames; the 2..6 s grids one chunk of 29
    pieces = score_pieces([track], 10_000, ScoreParams(mode="multi", score_last_frame=False))
    assert dict(pieces) == {25: [(0, 0)], 4: [(0, 25)], 29: [(0, 0)] * 5}
    every = score_pieces([track], 10_000, ScoreParams(mode="multi"))
    assert dict(every) == {25: [(0, 0)], 5: [(0, 25)], 30: [(0, 0)] * 5}
    single = score_pieces([track], 10_000, ScoreParams(score_last_frame=False))
    assert dict(single) == {29: [(0, 0)]}


def test_the_unscored_last_frame_is_nan():
    import torch

    from m3ed.asd.score import build_scorer, track_scores

    model = build_scorer(TINY, "cpu", "light-asd")
    tracks = [Track(np.arange(0, 12), np.tile([0, 0, 50, 50], (12, 1)), 0),
              Track(np.arange(5, 11), np.tile([0, 0, 50, 50], (6, 1)), 1)]
    rng = np.random.default_rng(0)
    crops = [rng.integers(0, 255, (len(t), 112, 112), dtype=np.uint8) for t in tracks]
    features = torch.from_numpy(rng.normal(size=(4 * 12, 13)).astype(np.float32))
    probs, demo = track_scores(model, features, tracks, crops, ScoreParams(mode="multi", score_last_frame=False))
    for p, d, n in zip(probs, demo, (12, 6)):
        assert np.isnan(p[-1]) and np.isnan(d[-1]) and np.all(np.isfinite(p[:n - 1])) and np.all(np.isfinite(d[:n - 1]))


# --- the authors' utterance frames: end frame included, an overlapping frame for one utterance ----

def dialogue(*spans: tuple[str, float, float]) -> Dialogue:
    return Dialogue("d", "show", tuple(Utterance(f"d_{i + 1}", "d", s, a, b) for i, (s, a, b) in enumerate(spans)))


def one_face(first: int, n: int):
    """One track of ``n`` frames from ``first``: every frame has this single face."""
    return Track(np.arange(first, first + n), np.tile([0, 10, 50, 60], (n, 1)), 7)


def assign(dlg: Dialogue, tracks: list[Track], **params) -> dict[str, np.ndarray]:
    """The authors' rules; nobody speaking (demo score -1), one identity for every face."""
    demo = [np.full(len(t), -1.0, np.float32) for t in tracks]
    embeddings = [np.tile(np.eye(4, dtype=np.float32)[0], (len(t), 1)) for t in tracks]
    probs = [np.full(len(t), 0.5, np.float32) for t in tracks]
    return assign_speakers(dlg, tracks, probs, embeddings, FPS, AssignParams(**params), stage1_scores=demo)


def test_end_inclusive_utterance_frames():
    # 0.20 s is frame 5 and 2.12 s frame 53: theirs range(5, 53 + 1), ours [5, 53)
    u = Utterance("u", "d", "A", 0.2, 2.12)
    assert utterance_frames(u, FPS, end_inclusive=True).tolist() == list(range(5, 54))
    assert utterance_frames(u, FPS).tolist() == list(range(5, 53))
    assert utterance_frames(Utterance("u", "d", "A", 0.12, 0.16), FPS, end_inclusive=True).tolist() == [3, 4]
    assert utterance_frames(Utterance("u", "d", "A", 1.0, 1.0), FPS, end_inclusive=True).tolist() == [25]


def test_an_overlapping_frame_belongs_to_the_speaker_written_last():
    # A 0.0-1.0 s (frames 0-25 with the end frame), B 0.8-1.6 s (frames 20-40): frames 20-25 overlap.
    # Their frame -> utterance map is filled speaker by speaker (A, then B): B's write stays.
    dlg = dialogue(("A", 0.0, 1.0), ("B", 0.8, 1.6))
    out = assign(dlg, [one_face(0, 50)], end_inclusive=True, one_utterance_per_frame=True)
    a, b = out["d_1"], out["d_2"]
    assert a[:, FRAME].tolist() == list(range(0, 26)) and b[:, FRAME].tolist() == list(range(20, 41))
    assert a[:, STAGE].tolist() == [Rule.SINGLE_FACE] * 20 + [Rule.NONE] * 6
    assert a[:, TRACK].tolist() == [7] * 20 + [-1] * 6
    assert b[:, STAGE].tolist() == [Rule.SINGLE_FACE] * 21
    # without the rule both utterances decide the overlap, and the end frame is not theirs
    shared = assign(dlg, [one_face(0, 50)])
    assert shared["d_1"][:, STAGE].tolist() == [Rule.SINGLE_FACE] * 25 and len(shared["d_2"]) == 20


def test_the_order_is_by_speaker_not_by_time():
    # A 0-1 s, B 2-3 s (frames 50-75), A again 2.8-3.5 s (frames 70-87). The later utterance in time
    # is A's, but B is written after every A: frames 70-75 stay B's.
    dlg = dialogue(("A", 0.0, 1.0), ("B", 2.0, 3.0), ("A", 2.8, 3.5))
    frames = {u.id: utterance_frames(u, FPS, end_inclusive=True) for u in dlg.utterances}
    owned = owned_frames(dlg, frames)
    assert owned["d_2"].tolist() == list(range(50, 76)) and owned["d_3"].tolist() == list(range(76, 88))
    # B speaks first: then A is written last and keeps the overlap
    swapped = dialogue(("B", 0.0, 1.0), ("A", 0.8, 1.6))
    owned = owned_frames(swapped, {u.id: utterance_frames(u, FPS, True) for u in swapped.utterances})
    assert owned["d_1"].tolist() == list(range(0, 20)) and owned["d_2"].tolist() == list(range(20, 41))


def test_stage1_faces_of_an_overlap_go_to_its_owner_only():
    # A 0-1 s and B 0.6-2 s overlap on frames 15-25 (end frame included), which B owns. Two faces
    # (so case 1 never applies); face 8 speaks (demo score 0.5) in frames 15-25 only: 11 stage-1
    # frames, all B's. A has none and her frames 0-14 fall to case 2.3 (least like B's face 8).
    dlg = dialogue(("A", 0.0, 1.0), ("B", 0.6, 2.0))
    speaking, other = one_face(0, 60), Track(np.arange(0, 60), np.tile([100, 10, 150, 60], (60, 1)), 9)
    speaking.track_id = 8
    demo = [np.where((np.arange(60) >= 15) & (np.arange(60) <= 25), 0.5, -1.0).astype(np.float32),
            np.full(60, -1.0, np.float32)]
    embeddings = [np.tile(np.eye(4, dtype=np.float32)[0], (60, 1)), np.tile(np.eye(4, dtype=np.float32)[1], (60, 1))]
    out = assign_speakers(dlg, [speaking, other], [np.full(60, 0.5, np.float32)] * 2, embeddings, FPS,
                          AssignParams(end_inclusive=True, one_utterance_per_frame=True), stage1_scores=demo)
    a, b = out["d_1"], out["d_2"]
    assert b[:11, STAGE].tolist() == [Rule.ASD] * 11 and b[:11, TRACK].tolist() == [8] * 11
    assert a[:15, STAGE].tolist() == [Rule.LEAST_LIKE_OTHER] * 15 and a[:15, TRACK].tolist() == [9] * 15
    assert a[15:, STAGE].tolist() == [Rule.NONE] * 11


# --- the stage-1 minimum under detection on every K-th frame -------------------------------------

def test_stage1_minimum_counts_k_frames_per_detected_face():
    # A speaks 0-2 s (frames 0-49). Two faces, detected on every 5th frame (0, 5, 10, ...). A's face
    # (track 1) speaks in frames 0-14: stage-1 faces only where it was detected, frames 0, 5 and 10.
    # With K = 5 these 3 faces count 15 frames >= 10: A is known (her 3 frames are ASD, none random).
    # Counted as 3 (K = 1) A is unknown, nobody has stage-1 faces, and every frame is random.
    def run(speaking_frames: int, k: int) -> list[int]:
        tracks = [Track(np.arange(50), np.tile([x, 10, x + 50, 60], (50, 1)), tid) for tid, x in ((1, 0), (2, 100))]
        for t in tracks:
            t.detected = np.arange(50) % 5 == 0
        demo = [np.where(np.arange(50) < speaking_frames, 0.4, -1.0).astype(np.float32), np.full(50, -1.0, np.float32)]
        rng = np.random.default_rng(1)
        embeddings = [np.tile(v / np.linalg.norm(v), (50, 1)).astype(np.float32) for v in rng.normal(size=(2, 16))]
        out = assign_speakers(dialogue(("A", 0.0, 2.0)), tracks, [np.full(50, 0.5, np.float32)] * 2, embeddings, FPS,
                              AssignParams(), stage1_scores=demo, detect_every=k)
        return out["d_1"][:, STAGE].astype(int).tolist()

    known = run(15, k=5)
    assert [known[f] for f in (0, 5, 10)] == [Rule.ASD] * 3 and Rule.RANDOM not in known
    assert set(run(15, k=1)) == {Rule.RANDOM}
    assert Rule.RANDOM not in run(10, k=5)        # frames 0 and 5: 2 faces, 10 frames, just enough
    assert set(run(5, k=5)) == {Rule.RANDOM}      # frame 0: 1 face, 5 frames
