"""Two-stage speaker-face assignment with injected ASD scores and face embeddings.

The strict rules' tests come first; the authors' rules (the default) are checked on cases built by
hand from the logic of their ``preprocess/extract_spk_faces.py`` (JinmingZhao/MEmoConv)."""
from __future__ import annotations

import numpy as np
import pytest

from m3ed.asd.assign import (COLUMNS, NO_DECISION, RULE_NAMES, STAGE1, STAGE2, AssignParams, Rule, assign_speakers,
                             utterance_frames)
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
    return assign_speakers(dlg, tracks, scores, embeddings, FPS, AssignParams(**{"rules": "strict", **params}))


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
    assert np.all(with_rule[:, COL["stage"]] == Rule.SINGLE_FACE) and np.all(with_rule[:, COL["track"]] == 3)
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


# --- the authors' rules ---------------------------------------------------------------------------

PERP = unit(STRANGER - (STRANGER @ ID_A) * ID_A)   # orthogonal to A


def like_a(cosine: float) -> np.ndarray:
    """A unit vector whose cosine with A is ``cosine``."""
    return unit(cosine * ID_A + np.sqrt(1 - cosine ** 2) * PERP)


def aface(first: int, n: int, track_id: int, identity, demo_score, x: float = 0.0):
    """A track, its ASD demo scores (a constant or one per frame) and its embeddings (one identity,
    or one vector per frame)."""
    track = Track(np.arange(first, first + n), np.tile([x, 10, x + 50, 60], (n, 1)), track_id)
    scores = np.broadcast_to(np.asarray(demo_score, np.float32), (n,)).copy()
    identity = np.asarray(identity, np.float32)
    if identity.ndim == 1:
        embeddings = np.tile(unit(identity), (n, 1))
    else:
        embeddings = identity / np.linalg.norm(identity, axis=1, keepdims=True)
    return track, scores, embeddings


def run_authors(dlg: Dialogue, faces: list, **params) -> dict[str, np.ndarray]:
    tracks, scores, embeddings = (list(x) for x in zip(*faces)) if faces else ([], [], [])
    probabilities = [np.full(len(t), 0.5, np.float32) for t in tracks]   # the authors' rules never read them
    return assign_speakers(dlg, tracks, probabilities, embeddings, FPS, AssignParams(**params), stage1_scores=scores)


def stages(rows: np.ndarray) -> list[int]:
    return rows[:, COL["stage"]].astype(int).tolist()


def tracks_of(rows: np.ndarray) -> list[int]:
    return rows[:, COL["track"]].astype(int).tolist()


def test_authors_rules_are_the_default_and_need_the_demo_scores():
    assert AssignParams().rules == "authors"
    dlg, faces = two_speakers()
    with pytest.raises(ValueError, match="stage1_scores"):
        assign_speakers(dlg, *(list(x) for x in zip(*faces)), FPS)
    with pytest.raises(ValueError, match="rules"):
        AssignParams(rules="lenient")
    assert RULE_NAMES[int(Rule.SINGLE_FACE)] == "single_face"


def test_authors_stage1_is_a_demo_score_above_zero():
    # A talks 0-1 s; two faces throughout: A's (demo score 0.3) and B's (-0.5)
    dlg = dialogue(("A", 0.0, 1.0))
    out = run_authors(dlg, [aface(0, 25, 1, ID_A, 0.3), aface(0, 25, 2, ID_B, -0.5, x=100)])["d_1"]
    assert stages(out) == [Rule.ASD] * 25 and tracks_of(out) == [1] * 25
    # their test is "score > 0": the demo's rounded 0.0 is not speaking; nobody then has stage-1
    # faces, so case 2.4 picks a random face in every frame
    out = run_authors(dlg, [aface(0, 25, 1, ID_A, 0.0), aface(0, 25, 2, ID_B, -0.5, x=100)])["d_1"]
    assert stages(out) == [Rule.RANDOM] * 25 and set(tracks_of(out)) == {1, 2}


def test_authors_speaker_with_fewer_than_10_stage1_frames_has_none():
    dlg = dialogue(("A", 0.0, 1.0))
    for speaking, expected in ((9, [Rule.RANDOM] * 25), (10, [Rule.ASD] * 10 + [Rule.SAME_UTTERANCE] * 15)):
        score = np.where(np.arange(25) < speaking, 0.4, -1.0)
        out = run_authors(dlg, [aface(0, 25, 1, ID_A, score), aface(0, 25, 2, ID_B, -1.0, x=100)])["d_1"]
        assert stages(out) == expected, speaking


def test_authors_stage1_needs_a_detected_face():
    # they match the track's box to the frame's detections: interpolated positions never match
    dlg = dialogue(("A", 0.0, 1.0))
    t1, s1, e1 = aface(0, 25, 1, ID_A, 0.4)
    t1.detected[10:] = False                      # 10 detected speaking frames: enough
    out = run_authors(dlg, [(t1, s1, e1), aface(0, 25, 2, ID_B, -1.0, x=100)])["d_1"]
    assert stages(out)[:10] == [Rule.ASD] * 10 and Rule.ASD not in stages(out)[10:]
    t1.detected[9] = False                        # 9: A has no stage-1 faces at all
    out = run_authors(dlg, [(t1, s1, e1), aface(0, 25, 2, ID_B, -1.0, x=100)])["d_1"]
    assert set(stages(out)) == {Rule.RANDOM}


def test_authors_single_face_goes_to_every_speaker_and_comes_first():
    # A has stage-1 faces; B has none (never speaking). In B's turn a stranger is alone on screen:
    # theirs gives it to B (strict leaves it undecided). In A's turn A's lone speaking face counts
    # as their case 1 (checked before the ASD case 2.0).
    dlg = dialogue(("A", 0.0, 1.0), ("B", 1.0, 2.0))
    faces = [aface(0, 25, 1, ID_A, 0.5), aface(25, 25, 2, STRANGER, -2.0)]
    out = run_authors(dlg, faces)
    assert stages(out["d_1"]) == [Rule.SINGLE_FACE] * 25 and tracks_of(out["d_1"]) == [1] * 25
    assert stages(out["d_2"]) == [Rule.SINGLE_FACE] * 25 and tracks_of(out["d_2"]) == [2] * 25
    strict = run(dlg, [faces[0], (faces[1][0], np.full(25, 0.1, np.float32), faces[1][2])])
    assert stages(strict["d_2"]) == [NO_DECISION] * 25


def test_authors_case_2_1_same_face_index_above_0_6():
    # A's turn, 50 frames. Face index 0: track 1 (B), all along. Index 1: track 2 (A, speaking in
    # frames 0-14), then track 3 from frame 15 (someone with cosine c to A, silent).
    dlg = dialogue(("A", 0.0, 2.0))
    for cosine, chosen in ((0.65, 3), (0.55, 1)):
        faces = [aface(0, 50, 1, ID_B, -1.0), aface(0, 15, 2, ID_A, 0.5, x=100),
                 aface(15, 35, 3, like_a(cosine), -1.0, x=100)]
        out = run_authors(dlg, faces)["d_1"]
        assert stages(out) == [Rule.ASD] * 15 + [Rule.SAME_UTTERANCE] * 35
        # above 0.6 the face at index 1 is kept; otherwise "the other" index 0 is taken, even B's face
        assert tracks_of(out)[15:] == [chosen] * 35, cosine
        assert np.allclose(out[15:, COL["similarity"]], cosine, atol=1e-5)


def test_authors_case_2_1_index_2_falls_back_to_face_0():
    # three faces; A's stage-1 faces sit at index 2; the face now at index 2 is not A: face 0
    dlg = dialogue(("A", 0.0, 2.0))
    faces = [aface(0, 50, 1, ID_B, -1.0), aface(0, 50, 2, STRANGER, -1.0, x=100),
             aface(0, 15, 3, ID_A, 0.5, x=200), aface(15, 35, 4, like_a(0.1), -1.0, x=200)]
    out = run_authors(dlg, faces)["d_1"]
    assert tracks_of(out)[15:] == [1] * 35 and stages(out)[15:] == [Rule.SAME_UTTERANCE] * 35


def test_authors_case_2_2_most_similar_without_threshold():
    # A's stage-1 faces come from another utterance; here two silent faces: B and a weak likeness
    # of A (cosine 0.3, below the strict threshold 0.5). Theirs takes the most similar.
    dlg = dialogue(("A", 0.0, 1.0), ("A", 1.0, 2.0))
    faces = [aface(0, 25, 1, ID_A, 0.5), aface(25, 25, 2, ID_B, -1.0), aface(25, 25, 3, like_a(0.3), -1.0, x=100)]
    out = run_authors(dlg, faces)["d_2"]
    assert stages(out) == [Rule.MOST_SIMILAR] * 25 and tracks_of(out) == [3] * 25
    assert np.allclose(out[:, COL["similarity"]], 0.3, atol=1e-5)


def test_authors_case_2_1_with_two_face_indices_uses_case_2_2():
    # this utterance's stage-1 faces of A sit at index 0 (frames 0-9: B's face, an ASD false
    # positive) and index 1 (frames 10-24: A's): the bank holds both, A's more often
    dlg = dialogue(("A", 0.0, 2.0))
    s_left = np.where(np.arange(50) < 10, 0.5, -1.0)
    s_right = np.where((np.arange(50) >= 10) & (np.arange(50) < 25), 0.5, -1.0)
    faces = [aface(0, 50, 1, ID_B, s_left), aface(0, 50, 2, ID_A, s_right, x=100)]
    out = run_authors(dlg, faces)["d_1"]
    assert stages(out) == [Rule.ASD] * 25 + [Rule.MOST_SIMILAR] * 25 and tracks_of(out)[25:] == [2] * 25


def test_authors_case_2_3_least_like_the_other_speaker():
    # B has no stage-1 faces, A has: in B's turn, the face least like A
    dlg = dialogue(("A", 0.0, 1.0), ("B", 1.0, 2.0))
    faces = [aface(0, 25, 1, ID_A, 0.5), aface(25, 25, 2, like_a(0.7), -1.0), aface(25, 25, 3, like_a(0.2), -1.0, x=100)]
    out = run_authors(dlg, faces)["d_2"]
    assert stages(out) == [Rule.LEAST_LIKE_OTHER] * 25 and tracks_of(out) == [3] * 25
    assert np.allclose(out[:, COL["similarity"]], 0.2, atol=1e-5)


def test_authors_case_2_4_random_face_is_seeded():
    dlg = dialogue(("A", 0.0, 4.0))
    faces = [aface(0, 100, 1, ID_A, -1.0), aface(0, 100, 2, ID_B, -1.0, x=100)]
    first, again = run_authors(dlg, faces)["d_1"], run_authors(dlg, faces)["d_1"]
    other_seed = run_authors(dlg, faces, seed=1)["d_1"]
    assert set(stages(first)) == {Rule.RANDOM} and set(tracks_of(first)) == {1, 2}
    assert tracks_of(first) == tracks_of(again) and tracks_of(first) != tracks_of(other_seed)


def test_authors_speaker_bank_is_their_evenly_spaced_subset():
    # 120 stage-1 frames of A (> 100: they keep int(120 / 2) = 60, at np.linspace(0, 119, 60)
    # truncated: the even frames 0..116 and frame 119). Frame embeddings alternate X (even), Y (odd).
    x, y = unit(ID_A), unit(STRANGER)
    alternating = np.where((np.arange(120) % 2 == 0)[:, None], x, y)
    dlg = dialogue(("A", 0.0, 4.8), ("A", 5.0, 6.0))
    probe_face = unit(ID_A + ID_B)
    faces = [aface(0, 120, 1, alternating, 0.5), aface(125, 25, 2, probe_face, -1.0),
             aface(125, 25, 3, -probe_face, -1.0, x=100)]
    out = run_authors(dlg, faces)["d_2"]
    picked = np.linspace(0, 119, 60, dtype=int)
    assert np.sum(picked % 2) == 1   # the hand count above: 59 X, 1 Y
    expected = (59 * float(probe_face @ x) + float(probe_face @ y)) / 60
    assert stages(out) == [Rule.MOST_SIMILAR] * 25 and tracks_of(out) == [2] * 25
    assert np.allclose(out[:, COL["similarity"]], expected, atol=1e-5)
