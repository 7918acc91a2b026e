"""Two-stage speaker-face assignment with injected ASD scores and face embeddings."""
from __future__ import annotations

import numpy as np
import pytest

from m3ed.asd.assign import COLUMNS, NO_DECISION, STAGE1, STAGE2, AssignParams, assign_speakers, utterance_frames
from m3ed.asd.track import Track
from m3ed.corpus import Dialogue, Utterance

FPS = 25.0
COL = {name: i for i, name in enumerate(COLUMNS)}
RNG = np.random.default_rng(0)
ID_A, ID_B, STRANGER = (v / np.linalg.norm(v) for v in RNG.normal(size=(3, 512)))


def unit(v: np.ndarray) -> np.ndarray:
    return (v / np.linalg.norm(v)).astype(np.float32)


def dialogue(*spans: tuple[str, float, float]) -> Dialogue:
    utterances = tuple(Utterance(f"d_{i + 1}", "d", speaker, start, end) for i, (speaker, start, end) in enumerate(spans))
    return Dialogue("d", "show", utterances)


def face(first: int, n: int, track_id: int, identity: np.ndarray, prob: float, x: float = 0.0):
    """A track of ``n`` frames from ``first``, its embeddings (one identity) and constant ASD scores."""
    track = Track(np.arange(first, first + n), np.tile([x, 10, x + 50, 60], (n, 1)), track_id)
    return track, np.full(n, prob, np.float32), np.tile(unit(identity), (n, 1))


def run(dlg: Dialogue, faces: list, **params) -> dict[str, np.ndarray]:
    tracks, scores, embeddings = (list(x) for x in zip(*faces)) if faces else ([], [], [])
    return assign_speakers(dlg, tracks, scores, embeddings, FPS, AssignParams(**params))


def two_speakers(a_prob_later: float = 0.95, later_identity=ID_A, b_frames: int = 50) -> tuple[Dialogue, list]:
    """A speaks 0-2 s, B speaks 2-4 s and A again 4-6 s. A's face is confidently speaking in the
    first utterance; B's in the second; in the third a track (``later_identity``) has ``a_prob_later``."""
    dlg = dialogue(("A", 0.0, 2.0), ("B", 2.0, 4.0), ("A", 4.0, 6.0))
    faces = [face(0, 50, 1, ID_A, 0.95), face(50, b_frames, 2, ID_B, 0.97, x=100),
             face(100, 50, 3, later_identity, a_prob_later)]
    return dlg, faces


def test_utterance_frames_are_the_frames_inside_start_end():
    assert utterance_frames(Utterance("u", "d", "A", 0.0, 0.2), FPS).tolist() == [0, 1, 2, 3, 4]
    assert utterance_frames(Utterance("u", "d", "A", 0.04, 0.1), FPS).tolist() == [1, 2]
    # 0.12 s is frame 3 exactly, whatever the float error of 0.12 * 25
    assert utterance_frames(Utterance("u", "d", "A", 0.12, 0.16), FPS).tolist() == [3]
    assert utterance_frames(Utterance("u", "d", "A", 1.0, 1.0), FPS).tolist() == []


def test_output_layout_and_stage1():
    dlg, faces = two_speakers()
    out = run(dlg, faces)
    assert set(out) == {"d_1", "d_2", "d_3"}
    rows = out["d_1"]
    assert rows.dtype == np.float32 and rows.shape == (50, len(COLUMNS))
    assert rows[:, COL["frame"]].tolist() == list(range(50))
    assert np.all(rows[:, COL["stage"]] == STAGE1) and np.all(rows[:, COL["track"]] == 1)
    assert np.allclose(rows[:, COL["asd_prob"]], 0.95)
    assert np.allclose(rows[0, COL["x1"]:COL["y2"] + 1], [0, 10, 50, 60])
    assert np.all(np.isnan(rows[:, COL["similarity"]]))  # stage 1 has no similarity
    assert np.all(out["d_2"][:, COL["track"]] == 2)


def test_stage1_takes_the_most_probable_of_several_speaking_faces():
    dlg = dialogue(("A", 0.0, 1.0))
    out = run(dlg, [face(0, 25, 7, ID_A, 0.92), face(0, 25, 8, ID_B, 0.99, x=100)])
    assert np.all(out["d_1"][:, COL["track"]] == 8)


def test_stage1_threshold():
    dlg = dialogue(("A", 0.0, 1.0))
    faces = [face(0, 25, 1, ID_A, 0.85)]
    assert np.all(run(dlg, faces, stage1_min_prob=0.8)["d_1"][:, COL["stage"]] == STAGE1)
    # below the threshold, and no bank to match against: no decision
    assert np.all(run(dlg, faces, stage1_min_prob=0.9)["d_1"][:, COL["stage"]] == NO_DECISION)


def test_stage2_matches_the_speakers_face_by_embedding():
    dlg, faces = two_speakers(a_prob_later=0.3)
    rows = run(dlg, faces)["d_3"]
    assert np.all(rows[:, COL["stage"]] == STAGE2) and np.all(rows[:, COL["track"]] == 3)
    assert np.allclose(rows[:, COL["similarity"]], 1.0, atol=1e-5)
    assert np.allclose(rows[:, COL["asd_prob"]], 0.3)


def test_stage2_picks_the_speaker_among_several_faces():
    dlg = dialogue(("A", 0.0, 2.0), ("A", 2.0, 4.0))
    faces = [face(0, 50, 1, ID_A, 0.95), face(50, 50, 2, ID_B, 0.2, x=100), face(50, 50, 3, ID_A, 0.2, x=200),
             face(50, 50, 4, STRANGER, 0.4, x=300)]
    rows = run(dlg, faces)["d_2"]
    assert np.all(rows[:, COL["stage"]] == STAGE2) and np.all(rows[:, COL["track"]] == 3)


def test_stage2_similarity_threshold():
    noisy_a = unit(ID_A + 0.9 * STRANGER)  # cosine with A about 0.74
    dlg, faces = two_speakers(a_prob_later=0.3, later_identity=noisy_a)
    sim = float(unit(ID_A) @ noisy_a)
    assert np.all(run(dlg, faces, stage2_min_similarity=sim - 0.05)["d_3"][:, COL["stage"]] == STAGE2)
    # the single face is still not given by the single-face rule when the rule is off
    rows = run(dlg, faces, stage2_min_similarity=sim + 0.05, single_face_rule=False)["d_3"]
    assert np.all(rows[:, COL["stage"]] == NO_DECISION) and np.all(rows[:, COL["track"]] == -1)


def test_stage2_margin_against_the_other_speaker():
    between = unit(ID_A + ID_B)  # equally like A and B: cosine ~0.71 with each
    dlg, faces = two_speakers(a_prob_later=0.3, later_identity=between)
    strict = run(dlg, faces, stage2_margin=0.1, single_face_rule=False)["d_3"]
    assert np.all(strict[:, COL["stage"]] == NO_DECISION)
    lenient = run(dlg, faces, stage2_margin=-0.01, single_face_rule=False)["d_3"]
    assert np.all(lenient[:, COL["stage"]] == STAGE2)


def test_similarity_mean_or_max():
    # A's bank holds two looks of A; the later face matches one of them exactly
    look1, look2 = unit(ID_A + STRANGER), unit(ID_A - STRANGER)
    dlg = dialogue(("A", 0.0, 2.0), ("A", 2.0, 3.0))
    faces = [face(0, 25, 1, look1, 0.95), face(25, 25, 2, look2, 0.95), face(50, 25, 3, look1, 0.1)]
    by_mean = run(dlg, faces, similarity="mean", single_face_rule=False)["d_2"][:, COL["similarity"]]
    by_max = run(dlg, faces, similarity="max", single_face_rule=False)["d_2"][:, COL["similarity"]]
    assert np.allclose(by_max, 1.0, atol=1e-5)
    assert np.allclose(by_mean, (1.0 + float(look1 @ look2)) / 2, atol=1e-5)
    with pytest.raises(ValueError, match="similarity"):
        AssignParams(similarity="median")


def test_single_face_rule():
    dlg, faces = two_speakers(a_prob_later=0.3, later_identity=STRANGER)
    with_rule = run(dlg, faces, single_face_rule=True)["d_3"]
    assert np.all(with_rule[:, COL["stage"]] == STAGE2) and np.all(with_rule[:, COL["track"]] == 3)
    without = run(dlg, faces, single_face_rule=False)["d_3"]
    assert np.all(without[:, COL["stage"]] == NO_DECISION)


def test_single_face_rule_does_not_give_away_another_known_speakers_face():
    dlg, faces = two_speakers(a_prob_later=0.3, later_identity=ID_B)  # a reaction shot of B while A talks
    rows = run(dlg, faces, single_face_rule=True)["d_3"]
    assert np.all(rows[:, COL["stage"]] == NO_DECISION)


def test_single_face_rule_needs_a_single_face():
    dlg = dialogue(("A", 0.0, 2.0), ("A", 2.0, 4.0))
    faces = [face(0, 50, 1, ID_A, 0.95), face(50, 50, 2, STRANGER, 0.2), face(50, 50, 3, unit(-ID_A + STRANGER), 0.2)]
    assert np.all(run(dlg, faces)["d_2"][:, COL["stage"]] == NO_DECISION)


def test_min_stage1_faces_makes_a_speaker_unknown():
    dlg = dialogue(("A", 0.0, 0.2), ("A", 1.0, 2.0))  # 5 stage-1 frames only
    faces = [face(0, 5, 1, ID_A, 0.95), face(25, 25, 2, ID_A, 0.1)]
    unknown = run(dlg, faces, min_stage1_faces=10)["d_2"]
    assert np.all(unknown[:, COL["stage"]] == NO_DECISION)  # neither matching nor the single-face rule
    known = run(dlg, faces, min_stage1_faces=5)["d_2"]
    assert np.all(known[:, COL["stage"]] == STAGE2)


def test_no_faces_and_no_evidence_give_no_decision():
    dlg = dialogue(("A", 0.0, 1.0), ("B", 1.0, 2.0))
    out = run(dlg, [face(30, 10, 1, ID_B, 0.1)])
    for rows in out.values():
        assert np.all(rows[:, COL["stage"]] == NO_DECISION) and np.all(rows[:, COL["track"]] == -1)
        assert np.all(np.isnan(rows[:, COL["x1"]:])[:, :5])  # box and prob
    assert run(dlg, [])["d_1"].shape == (25, len(COLUMNS))


def test_unembedded_rows_use_the_nearest_embedded_row_of_their_track():
    dlg, faces = two_speakers(a_prob_later=0.3)
    track, score, emb = faces[2]
    sparse = np.full_like(emb, np.nan)
    sparse[::10] = emb[::10]  # embedded every 10th frame only
    rows = run(dlg, faces[:2] + [(track, score, sparse)])["d_3"]
    assert np.all(rows[:, COL["stage"]] == STAGE2)


def test_misaligned_inputs_are_rejected():
    dlg, faces = two_speakers()
    track, score, emb = faces[0]
    with pytest.raises(ValueError, match="track 1"):
        run(dlg, [(track, score[:-1], emb)])


def test_one_speaker_per_track():
    # track 1 is confidently "speaking" through both speakers' turns (an ASD false positive on a
    # listener): it belongs to A, who has more stage-1 frames in it; B's decisions on it are withdrawn
    dlg = dialogue(("A", 0.0, 2.0), ("B", 2.0, 3.0), ("A", 3.0, 4.0))
    faces = [face(0, 100, 1, ID_A, 0.95)]
    out = run(dlg, faces, single_face_rule=False)
    assert np.all(out["d_1"][:, COL["stage"]] == STAGE1) and np.all(out["d_3"][:, COL["stage"]] == STAGE1)
    assert np.all(out["d_2"][:, COL["stage"]] == NO_DECISION)
    unchecked = run(dlg, faces, single_face_rule=False, one_speaker_per_track=False)
    assert np.all(unchecked["d_2"][:, COL["stage"]] == STAGE1)


def test_one_speaker_per_track_tie_withdraws_everyone():
    dlg = dialogue(("A", 0.0, 1.0), ("B", 1.0, 2.0))
    out = run(dlg, [face(0, 50, 1, ID_A, 0.95)], single_face_rule=False)
    assert all(np.all(rows[:, COL["stage"]] == NO_DECISION) for rows in out.values())
