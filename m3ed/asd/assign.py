"""Which face, frame by frame, is the annotated speaker's: the paper's two-stage assignment (A.1).

Two rule sets (``AssignParams.rules``, ``--assign-rules``):

``authors`` (default) reproduces the authors' ``preprocess/extract_spk_faces.py``:

- stage 1: a face whose score from the ASD demo (the class-1 output averaged over the demo's
  durations and rounded to 0.1; ``stage1_scores``) is above ``authors_min_score`` (0), at a frame
  where the detector saw it (they match track boxes to the frame's detections), is the face of
  the speaker whose utterance covers the frame (the highest score when several are). A speaker
  with fewer than ``min_stage1_faces`` (10) such frames in the dialogue has none; with detection
  on every K-th frame each such frame counts K (``detect_every``), so the minimum stays 0.4 s.
- stage 2 decides every frame that has a face, in their order: the only face in the frame
  (whatever the speaker); the speaker's stage-1 face; case 2.1: when this utterance's stage-1
  faces of the speaker all sit at one face index k (faces of a frame ranked by track), the face at
  k if its mean cosine similarity to them exceeds ``same_utterance_min_similarity`` (0.6), else the
  other of faces 0 and 1 (face 0 when k >= 2); case 2.2: the face most similar to the speaker's
  stage-1 faces; 2.3 (the speaker has none): the face least similar to the other speakers'; 2.4
  (nobody has any): a random face, drawn from ``seed``, the utterance and the frame.
  Speaker banks are their subset of the stage-1 faces: all up to 100, a half up to 300, a third
  beyond, evenly spaced (``np.linspace``).

``strict`` (ours) decides only on evidence: stage 1 takes a face with speaking probability
sigmoid(s1 - s0) >= ``stage1_min_prob`` (0.9); stage 2 takes the face most similar to the
speaker's stage-1 faces when that similarity reaches ``stage2_min_similarity`` (0.5) and beats
every other known speaker by ``stage2_margin`` (0.1); ``single_face_rule`` gives a lone face to
a speaker with stage-1 faces unless it clearly matches another speaker; a speaker with fewer than
``min_stage1_faces`` stage-1 faces is unknown; ``one_speaker_per_track``: a face track (one person)
is never stage-1 evidence for two speakers. Frames where nothing is decided are left undecided.

An utterance's frames are those whose time lies in [start, end); ``end_inclusive`` adds the end
frame, as the authors. ``one_utterance_per_frame``: where utterances overlap, only one of them
decides the frame, as in the authors' frame -> utterance map (:func:`owned_frames`); the others
keep a row for it, undecided. Both are on under ``--preset authors``.

The ``stage`` column records the rule that decided each frame (:class:`Rule`, :data:`RULE_NAMES`).
Output per utterance: float32 ``[T, 9]`` with the columns of :data:`COLUMNS`.
"""
from __future__ import annotations

import math
import zlib
from collections import defaultdict
from dataclasses import dataclass
from enum import IntEnum
from typing import Protocol, Sequence

import numpy as np

from ..corpus import Dialogue, Utterance
from ..catalogue import BOX, COLUMN, SPEAKER_FACE_COLUMNS
from .params import AssignParams

COLUMNS: tuple[str, ...] = SPEAKER_FACE_COLUMNS   # named once, in the feature-set catalogue


class Rule(IntEnum):
    """The value of the ``stage`` column: which rule chose the face (authors' case numbers in brackets)."""

    NONE = 0              # undecided: no face, or (strict) no rule applied
    ASD = 1               # stage 1: the ASD model says this face speaks [case 2.0]
    MATCH = 2             # strict stage 2: embedding similarity over threshold and margin
    SINGLE_FACE = 3       # the only face in the frame [case 1]
    SAME_UTTERANCE = 4    # [case 2.1] the face index of this utterance's stage-1 faces, or the other
    MOST_SIMILAR = 5      # [case 2.2] most similar to the speaker's stage-1 faces
    LEAST_LIKE_OTHER = 6  # [case 2.3] least similar to the other speaker's stage-1 faces
    RANDOM = 7            # [case 2.4] nobody has stage-1 faces: a seeded random face


RULE_NAMES: dict[int, str] = {int(r): r.name.lower() for r in Rule}
NO_DECISION, STAGE1, STAGE2 = Rule.NONE, Rule.ASD, Rule.MATCH
_TIME_EPS = 1e-6  # seconds; keeps frame i inside [start, end) when start == i / fps up to float error


class TrackLike(Protocol):
    """What assignment needs of a face track (see :class:`m3ed.asd.track.Track`)."""

    frames: np.ndarray   # [n] consecutive dialogue frame indices
    boxes: np.ndarray    # [n, 4] x1, y1, x2, y2
    track_id: int


@dataclass(frozen=True)
class _Face:
    """One face in one frame: track ``t``, row ``j`` of that track."""

    t: int
    j: int


def utterance_frames(utterance: Utterance, fps: float, end_inclusive: bool = False) -> np.ndarray:
    """Dialogue frame indices whose time ``i / fps`` lies in ``[start, end)`` of the utterance, or in
    ``[start, end]`` with ``end_inclusive`` (the authors': their frames run from the start frame to
    the end frame, both included)."""
    first = max(0, math.ceil(utterance.start * fps - _TIME_EPS * fps))
    if end_inclusive:
        stop = math.floor(utterance.end * fps + _TIME_EPS * fps) + 1
    else:
        stop = math.ceil(utterance.end * fps - _TIME_EPS * fps)
    return np.arange(first, max(first, stop), dtype=np.int64)


def spoken_frames(dialogue: Dialogue, fps: float, end_inclusive: bool = False) -> np.ndarray:
    """A boolean mask over the dialogue's frames: those inside some utterance (all that assignment reads)."""
    inside = [utterance_frames(u, fps, end_inclusive) for u in dialogue.utterances]
    mask = np.zeros(max((int(f[-1]) + 1 for f in inside if len(f)), default=0), bool)
    for frames in inside:
        mask[frames] = True
    return mask


def frames_in(mask: np.ndarray, frames: np.ndarray) -> np.ndarray:
    """``mask[frames]``, False past the mask's end."""
    inside = frames < len(mask)
    out = np.zeros(len(frames), bool)
    out[inside] = mask[frames[inside]]
    return out


def owned_frames(dialogue: Dialogue, frames: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Per utterance, its frames that no other utterance takes: where utterances overlap, the frame
    belongs to the one the authors' frame -> utterance map keeps. They fill it speaker by speaker
    in order of first appearance, each speaker's utterances in order, so the last one written wins."""
    speakers = list(dict.fromkeys(u.speaker for u in dialogue.utterances))
    owner: dict[int, str] = {}
    for speaker in speakers:
        for u in dialogue.utterances:
            if u.speaker == speaker:
                owner.update((int(f), u.id) for f in frames[u.id])
    return {u.id: np.array([f for f in frames[u.id] if owner[int(f)] == u.id], np.int64) for u in dialogue.utterances}


def assign_speakers(dialogue: Dialogue, tracks: Sequence[TrackLike], scores: Sequence[np.ndarray],
                    embeddings: Sequence[np.ndarray], fps: float, params: AssignParams = AssignParams(),
                    stage1_scores: Sequence[np.ndarray] | None = None, detect_every: int = 1) -> dict[str, np.ndarray]:
    """The speaker's face in every frame of every utterance; see the module docstring.

    ``scores``: per track, the speaking probability of each frame (the ``asd_prob`` column and the
    strict stage 1). ``stage1_scores``: per track, the ASD demo's score (rounded mean class-1
    output), which the authors' stage 1 thresholds; needed when ``params.rules == "authors"``.
    ``detect_every``: the detector ran on every K-th frame; each of the authors' stage-1 faces (on
    detected frames only) then counts K frames towards ``min_stage1_faces``.
    """
    _check_inputs(dialogue, tracks, scores, embeddings)
    if detect_every < 1:
        raise ValueError(f"dialogue {dialogue.id}: detect_every={detect_every}: must be >= 1")
    faces_at = _faces_by_frame(tracks)
    filled = [_fill_embeddings(np.asarray(e, np.float32)) for e in embeddings]
    probs = [np.asarray(s, np.float32) for s in scores]
    frames = {u.id: utterance_frames(u, fps, params.end_inclusive) for u in dialogue.utterances}
    # the frames each utterance decides: all of its own, or (authors) those no later-written one takes
    decided = owned_frames(dialogue, frames) if params.one_utterance_per_frame else frames
    if params.rules == "authors":
        if stage1_scores is None or len(stage1_scores) != len(tracks):
            raise ValueError(f"dialogue {dialogue.id}: the authors' rules need the ASD demo score of every "
                             f"track (stage1_scores); pass them, or use rules='strict'")
        decide = _authors_rules(dialogue, tracks, [np.asarray(s, np.float32) for s in stage1_scores],
                                filled, frames, decided, faces_at, params, detect_every)
    else:
        decide = _strict_rules(dialogue, probs, filled, decided, faces_at, params)

    result: dict[str, np.ndarray] = {}
    for u in dialogue.utterances:
        rows = np.full((len(frames[u.id]), len(COLUMNS)), np.nan, np.float32)
        rows[:, COLUMN["frame"]], rows[:, COLUMN["track"]], rows[:, COLUMN["stage"]] = frames[u.id], -1, Rule.NONE
        mine = set(decided[u.id].tolist())
        for i, frame in enumerate(frames[u.id]):
            if int(frame) not in mine:   # another utterance's frame (one_utterance_per_frame)
                continue
            face, rule, sim = decide(u, int(frame))
            if face is not None:
                _fill_row(rows[i], tracks, probs, face, rule, sim)
        result[u.id] = rows
    return result


def _strict_rules(dialogue: Dialogue, probs, filled, frames, faces_at, params: AssignParams):
    """The strict rules as a function (utterance, frame) -> (face or None, rule, similarity)."""
    stage1 = {u.id: _stage1(frames[u.id], faces_at, probs, params) for u in dialogue.utterances}
    if params.one_speaker_per_track:
        stage1 = _one_speaker_per_track(dialogue, stage1)
    banks = _speaker_banks(dialogue, stage1, filled)
    # A speaker needs at least one stage-1 face to be matched at all, whatever min_stage1_faces says.
    known = {s: bank for s, (bank, count) in banks.items() if count >= max(1, params.min_stage1_faces)}
    if params.similarity == "mean":  # mean of the dot products = dot product with the mean row
        known = {s: bank.mean(axis=0, keepdims=True) if bank.size else bank for s, bank in known.items()}

    def decide(u: Utterance, frame: int) -> tuple[_Face | None, int, float]:
        face = stage1[u.id].get(frame)
        if face is not None:
            return face, Rule.ASD, math.nan
        if u.speaker in known:
            return _stage2(faces_at.get(frame, []), u.speaker, known, filled, params)
        return None, Rule.NONE, math.nan
    return decide


def _check_inputs(dialogue: Dialogue, tracks, scores, embeddings) -> None:
    if not len(tracks) == len(scores) == len(embeddings):
        raise ValueError(f"dialogue {dialogue.id}: {len(tracks)} tracks but {len(scores)} score arrays "
                         f"and {len(embeddings)} embedding arrays; give one of each per track")
    for track, score, emb in zip(tracks, scores, embeddings):
        n = len(track.frames)
        if len(track.boxes) != n or len(score) != n or len(emb) != n:
            raise ValueError(f"dialogue {dialogue.id}, track {track.track_id}: {n} frames, {len(track.boxes)} "
                             f"boxes, {len(score)} scores, {len(emb)} embeddings; they must be aligned")


def _faces_by_frame(tracks: Sequence[TrackLike]) -> dict[int, list[_Face]]:
    faces: dict[int, list[_Face]] = defaultdict(list)
    for t, track in enumerate(tracks):
        for j, frame in enumerate(np.asarray(track.frames)):
            faces[int(frame)].append(_Face(t, j))
    return faces


def _fill_embeddings(emb: np.ndarray) -> np.ndarray:
    """Unit rows; a row that was not embedded (NaN) takes the nearest embedded row of its track
    (a track is one person, so the closest embedded frame is the best stand-in). A track with
    no embedded row stays NaN and cannot take part in stage 2."""
    done = ~np.isnan(emb).any(axis=1)
    if not done.any():
        return emb
    idx = np.flatnonzero(done)
    pos = np.clip(np.searchsorted(idx, np.arange(len(emb))), 0, len(idx) - 1)
    before = idx[np.clip(pos - 1, 0, len(idx) - 1)]
    after = idx[pos]
    rows = np.arange(len(emb))
    nearest = np.where(np.abs(rows - before) <= np.abs(after - rows), before, after)
    out = emb[nearest]
    return out / np.maximum(np.linalg.norm(out, axis=1, keepdims=True), 1e-12)


def _stage1(frames: np.ndarray, faces_at: dict[int, list[_Face]], probs: list[np.ndarray],
            params: AssignParams) -> dict[int, _Face]:
    """Frame -> the most probable speaking face, where one reaches ``stage1_min_prob``."""
    chosen: dict[int, _Face] = {}
    for frame in frames:
        confident = [f for f in faces_at.get(int(frame), []) if probs[f.t][f.j] >= params.stage1_min_prob]
        if confident:
            chosen[int(frame)] = max(confident, key=lambda f: probs[f.t][f.j])
    return chosen


def _one_speaker_per_track(dialogue: Dialogue, stage1: dict[str, dict[int, _Face]]) -> dict[str, dict[int, _Face]]:
    """Withdraw stage-1 decisions that give a track to a speaker other than its majority speaker."""
    counts: dict[int, dict[str, int]] = defaultdict(lambda: defaultdict(int))
    for u in dialogue.utterances:
        for face in stage1[u.id].values():
            counts[face.t][u.speaker] += 1
    owner = {}
    for t, by_speaker in counts.items():
        most = max(by_speaker.values())
        leaders = [s for s, n in by_speaker.items() if n == most]
        owner[t] = leaders[0] if len(leaders) == 1 else None
    return {u.id: {frame: face for frame, face in stage1[u.id].items() if owner[face.t] == u.speaker}
            for u in dialogue.utterances}


def _speaker_banks(dialogue: Dialogue, stage1: dict[str, dict[int, _Face]],
                   filled: list[np.ndarray]) -> dict[str, tuple[np.ndarray, int]]:
    """Speaker -> (embeddings of their stage-1 faces [k, 512], number of stage-1 face frames).

    Overlapping utterances of one speaker count a frame once."""
    decided: dict[str, dict[int, _Face]] = defaultdict(dict)
    for u in dialogue.utterances:
        decided[u.speaker].update(stage1[u.id])
    banks = {}
    for speaker, faces in decided.items():
        rows = [filled[f.t][f.j] for f in faces.values()]
        rows = [r for r in rows if not np.isnan(r).any()]
        bank = np.stack(rows) if rows else np.zeros((0, 0), np.float32)
        banks[speaker] = (bank, len(faces))
    return banks


def _similarity(embedding: np.ndarray, bank: np.ndarray, how: str) -> float:
    if bank.size == 0:
        return -math.inf
    sims = bank @ embedding
    return float(sims.mean() if how == "mean" else sims.max())


def _stage2(faces: list[_Face], speaker: str, known: dict[str, np.ndarray], filled: list[np.ndarray],
            params: AssignParams) -> tuple[_Face | None, int, float]:
    """The face of ``speaker`` among ``faces`` by embedding similarity (or the single-face rule)."""
    best: tuple[_Face | None, int, float] = (None, Rule.NONE, math.nan)
    scored = []
    for face in faces:
        embedding = filled[face.t][face.j]
        if np.isnan(embedding).any():
            scored.append((face, math.nan, math.nan))
            continue
        own = _similarity(embedding, known[speaker], params.similarity)
        rival = max((_similarity(embedding, bank, params.similarity) for s, bank in known.items() if s != speaker),
                    default=-math.inf)
        scored.append((face, own, rival))
        if own >= params.stage2_min_similarity and own - rival >= params.stage2_margin:
            if best[0] is None or own > best[2]:
                best = (face, Rule.MATCH, own)
    if best[0] is None and params.single_face_rule and len(scored) == 1:
        face, own, rival = scored[0]
        claimed_by_rival = rival >= params.stage2_min_similarity and rival - own >= params.stage2_margin
        if not claimed_by_rival:  # NaN comparisons are False: a face without embedding is not claimed
            best = (face, Rule.SINGLE_FACE, own)
    return best


def _authors_rules(dialogue: Dialogue, tracks: Sequence[TrackLike], demo_scores: list[np.ndarray],
                   filled: list[np.ndarray], frames: dict[str, np.ndarray], decided: dict[str, np.ndarray],
                   faces_at: dict[int, list[_Face]], params: AssignParams, detect_every: int = 1):
    """The authors' rules as a function (utterance, frame) -> (face or None, rule, similarity).

    ``frames``: each utterance's frames (case 2.1 reads all of them, as the authors do);
    ``decided``: those it decides, which are also where its speaker's stage-1 faces come from."""
    stage1: dict[str, dict[int, _Face]] = defaultdict(dict)   # speaker -> frame -> face, whole dialogue
    for u in dialogue.utterances:
        for frame in decided[u.id]:
            face = _authors_stage1(faces_at.get(int(frame), []), tracks, demo_scores, params.authors_min_score)
            if face is not None:
                stage1[u.speaker][int(frame)] = face
    # stage-1 faces sit on detected frames only: each stands for the K frames one detection covers
    stage1 = {s: faces for s, faces in stage1.items() if len(faces) * detect_every >= params.min_stage1_faces}
    banks = {s: _authors_bank(faces, filled) for s, faces in stage1.items()}
    # case 2.1's evidence per utterance: (face index in its frame, embedding) of the speaker's stage-1 faces
    indexed = {u.id: [(faces_at[int(f)].index(stage1[u.speaker][int(f)]), stage1[u.speaker][int(f)])
                      for f in frames[u.id] if int(f) in stage1.get(u.speaker, {})] for u in dialogue.utterances}

    def embedding(face: _Face) -> np.ndarray:
        return filled[face.t][face.j]

    def decide(u: Utterance, frame: int) -> tuple[_Face | None, int, float]:
        faces = faces_at.get(frame, [])
        own = stage1.get(u.speaker, {})
        if not faces:
            return None, Rule.NONE, math.nan
        if len(faces) == 1:                                          # case 1
            return faces[0], Rule.SINGLE_FACE, math.nan
        if frame in own:                                             # case 2.0
            return own[frame], Rule.ASD, math.nan
        by_index: dict[int, list[np.ndarray]] = defaultdict(list)   # case 2.1
        for k, face in indexed[u.id]:
            if k < len(faces):
                by_index[k].append(embedding(face))
        if len(by_index) == 1:
            (k, rows), = by_index.items()
            sim = float(np.mean(np.stack(rows) @ embedding(faces[k])))
            if sim > params.same_utterance_min_similarity:
                return faces[k], Rule.SAME_UTTERANCE, sim
            return faces[1 - k] if k < 2 else faces[0], Rule.SAME_UTTERANCE, sim
        def similarities(bank: np.ndarray) -> np.ndarray:
            return np.array([float(embedding(f) @ bank) for f in faces])
        if u.speaker in banks:                                       # case 2.2
            sims = similarities(banks[u.speaker])
            i = int(np.argmax(np.nan_to_num(sims, nan=-np.inf)))
            return faces[i], Rule.MOST_SIMILAR, float(sims[i])
        others = [bank for s, bank in banks.items() if s != u.speaker]
        if others:                                                   # case 2.3
            sims = np.max([similarities(bank) for bank in others], axis=0)
            i = int(np.argmin(np.nan_to_num(sims, nan=np.inf)))
            return faces[i], Rule.LEAST_LIKE_OTHER, float(sims[i])
        rng = np.random.default_rng([params.seed, zlib.crc32(u.id.encode("utf-8")), frame])   # case 2.4
        return faces[int(rng.integers(len(faces)))], Rule.RANDOM, math.nan
    return decide


def _authors_stage1(faces: list[_Face], tracks: Sequence[TrackLike], demo_scores: list[np.ndarray],
                    min_score: float) -> _Face | None:
    """The face of the frame the ASD demo scores above ``min_score``, where the detector saw it."""
    def seen(face: _Face) -> bool:
        detected = getattr(tracks[face.t], "detected", None)
        return True if detected is None else bool(detected[face.j])
    speaking = [f for f in faces if demo_scores[f.t][f.j] > min_score and seen(f)]
    return max(speaking, key=lambda f: demo_scores[f.t][f.j]) if speaking else None


def _authors_bank(faces: dict[int, _Face], filled: list[np.ndarray]) -> np.ndarray:
    """Mean of the authors' evenly spaced subset of a speaker's stage-1 face embeddings.

    A mean similarity to the subset is the dot product with this mean (rows are unit vectors)."""
    chosen = [faces[f] for f in sorted(faces)]
    n = len(chosen)
    keep = n // 3 if n > 300 else n // 2 if n > 100 else n
    rows = np.stack([filled[chosen[i].t][chosen[i].j] for i in np.linspace(0, n - 1, keep, dtype=int)])
    rows = rows[~np.isnan(rows).any(axis=1)]
    return rows.mean(axis=0) if len(rows) else np.full(rows.shape[1], np.nan, np.float32)


def _fill_row(row: np.ndarray, tracks: Sequence[TrackLike], probs: list[np.ndarray], face: _Face,
              stage: int, similarity: float) -> None:
    row[COLUMN["track"]] = tracks[face.t].track_id
    row[BOX] = np.asarray(tracks[face.t].boxes[face.j], np.float32)
    row[COLUMN["asd_prob"]] = probs[face.t][face.j]
    row[COLUMN["stage"]] = stage
    row[COLUMN["similarity"]] = similarity if math.isfinite(similarity) else math.nan
