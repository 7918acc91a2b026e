"""Which face, frame by frame, is the annotated speaker's: the paper's two-stage assignment (A.1).

Stage 1 (high-confidence faces): during an utterance of speaker S, a face whose speaking
probability is at least ``stage1_min_prob`` is S's face (the most probable one when several are).
Every stage-1 face of S across the dialogue goes into S's *face bank* of embeddings.

Stage 2 (embedding matching): in the utterance frames stage 1 left open, each visible face is
compared with S's bank and with the banks of the dialogue's other speakers (cosine similarity,
reduced over the bank by ``similarity``: "mean" or "max"). The face most similar to S is chosen
when that similarity reaches ``stage2_min_similarity`` and exceeds its similarity to every other
known speaker by ``stage2_margin``. The authors' extra rules are options: a speaker with fewer than
``min_stage1_faces`` stage-1 faces is *unknown* (too little evidence: no stage 2 for them, and
their bank is not used as a rival), and ``single_face_rule`` gives a lone face in the frame to the
speaker unless its embedding clearly says it is another known speaker. One rule of ours,
``one_speaker_per_track``: a face track (one person) is never stage-1 evidence for two speakers.

Frames where nothing is decided are recorded as stage 0, never guessed.

Output per utterance: float32 ``[T, 9]`` with the columns of :data:`COLUMNS`.
"""
from __future__ import annotations

import math
from collections import defaultdict
from dataclasses import dataclass
from typing import Literal, Protocol, Sequence

import numpy as np

from ..corpus import Dialogue, Utterance

COLUMNS: tuple[str, ...] = ("frame", "track", "x1", "y1", "x2", "y2", "asd_prob", "stage", "similarity")
NO_DECISION, STAGE1, STAGE2 = 0, 1, 2
_TIME_EPS = 1e-6  # seconds; keeps frame i inside [start, end) when start == i / fps up to float error


class TrackLike(Protocol):
    """What assignment needs of a face track (see :class:`m3ed.asd.track.Track`)."""

    frames: np.ndarray   # [n] consecutive dialogue frame indices
    boxes: np.ndarray    # [n, 4] x1, y1, x2, y2
    track_id: int


@dataclass(frozen=True)
class AssignParams:
    """Thresholds of the two-stage assignment. Defaults are ours (the paper gives no numbers)."""

    #: Stage 1: minimum speaking probability, sigmoid(s1 - s0) of the ASD logits, for a face to be
    #: taken as the current speaker's without further evidence.
    stage1_min_prob: float = 0.9
    #: Stage 2: minimum cosine similarity (FaceNet VGGFace2 embeddings) between a face and the
    #: speaker's bank. Same-identity pairs typically score above 0.5, different people below 0.3.
    stage2_min_similarity: float = 0.5
    #: Stage 2: how much more similar to the speaker than to any other known speaker a face must be.
    stage2_margin: float = 0.1
    #: How a face's similarities to a bank's embeddings are reduced to one number.
    similarity: Literal["mean", "max"] = "mean"
    #: A speaker with fewer stage-1 faces (frames) than this is unknown: no stage 2 for them.
    min_stage1_faces: int = 10
    #: The authors' rule: a single face in the frame belongs to the current (known) speaker,
    #: unless its embedding assigns it to another known speaker (stage-2 thresholds, reversed).
    single_face_rule: bool = True
    #: A track is one person and a dialogue's speakers are different people: when stage 1 gives
    #: one track to several speakers (an ASD false positive on a listener, overlapping speech), the
    #: track goes to the speaker with most stage-1 frames in it and the others' stage-1 decisions
    #: on it are withdrawn (on a tie, everyone's). Withdrawn frames may still be decided by stage 2.
    one_speaker_per_track: bool = True

    def __post_init__(self) -> None:
        if self.similarity not in ("mean", "max"):
            raise ValueError(f"AssignParams.similarity must be 'mean' or 'max', got {self.similarity!r}")
        if not 0.0 <= self.stage1_min_prob <= 1.0:
            raise ValueError(f"AssignParams.stage1_min_prob must lie in [0, 1], got {self.stage1_min_prob}")
        if self.min_stage1_faces < 0:
            raise ValueError(f"AssignParams.min_stage1_faces must be >= 0, got {self.min_stage1_faces}")


@dataclass(frozen=True)
class _Face:
    """One face in one frame: track ``t``, row ``j`` of that track."""

    t: int
    j: int


def utterance_frames(utterance: Utterance, fps: float) -> np.ndarray:
    """Dialogue frame indices whose time ``i / fps`` lies in ``[start, end)`` of the utterance."""
    first = max(0, math.ceil(utterance.start * fps - _TIME_EPS * fps))
    stop = max(first, math.ceil(utterance.end * fps - _TIME_EPS * fps))
    return np.arange(first, stop, dtype=np.int64)


def assign_speakers(dialogue: Dialogue, tracks: Sequence[TrackLike], scores: Sequence[np.ndarray],
                    embeddings: Sequence[np.ndarray], fps: float,
                    params: AssignParams = AssignParams()) -> dict[str, np.ndarray]:
    """The speaker's face in every frame of every utterance; see the module docstring."""
    _check_inputs(dialogue, tracks, scores, embeddings)
    faces_at = _faces_by_frame(tracks)
    filled = [_fill_embeddings(np.asarray(e, np.float32)) for e in embeddings]
    probs = [np.asarray(s, np.float32) for s in scores]
    frames = {u.id: utterance_frames(u, fps) for u in dialogue.utterances}

    stage1 = {u.id: _stage1(frames[u.id], faces_at, probs, params) for u in dialogue.utterances}
    if params.one_speaker_per_track:
        stage1 = _one_speaker_per_track(dialogue, stage1)
    banks = _speaker_banks(dialogue, stage1, filled)
    # A speaker needs at least one stage-1 face to be matched at all, whatever min_stage1_faces says.
    known = {s: bank for s, (bank, count) in banks.items() if count >= max(1, params.min_stage1_faces)}
    if params.similarity == "mean":  # the mean of cosines with unit rows is the cosine with their mean
        known = {s: bank.mean(axis=0, keepdims=True) if bank.size else bank for s, bank in known.items()}

    result: dict[str, np.ndarray] = {}
    for u in dialogue.utterances:
        rows = np.full((len(frames[u.id]), len(COLUMNS)), np.nan, np.float32)
        rows[:, 0], rows[:, 1], rows[:, 7] = frames[u.id], -1, NO_DECISION
        for i, frame in enumerate(frames[u.id]):
            decision = stage1[u.id].get(int(frame))
            if decision is not None:
                _fill_row(rows[i], tracks, probs, decision, STAGE1, np.nan)
            elif u.speaker in known:
                face, sim = _stage2(faces_at.get(int(frame), []), u.speaker, known, filled, params)
                if face is not None:
                    _fill_row(rows[i], tracks, probs, face, STAGE2, sim)
        result[u.id] = rows
    return result


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
            params: AssignParams) -> tuple[_Face | None, float]:
    """The face of ``speaker`` among ``faces`` by embedding similarity (or the single-face rule)."""
    best: tuple[_Face | None, float] = (None, math.nan)
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
            if best[0] is None or own > best[1]:
                best = (face, own)
    if best[0] is None and params.single_face_rule and len(scored) == 1:
        face, own, rival = scored[0]
        claimed_by_rival = rival >= params.stage2_min_similarity and rival - own >= params.stage2_margin
        if not claimed_by_rival:  # NaN comparisons are False: a face without embedding is not claimed
            best = (face, own)
    return best


def _fill_row(row: np.ndarray, tracks: Sequence[TrackLike], probs: list[np.ndarray], face: _Face,
              stage: int, similarity: float) -> None:
    row[1] = tracks[face.t].track_id
    row[2:6] = np.asarray(tracks[face.t].boxes[face.j], np.float32)
    row[6] = probs[face.t][face.j]
    row[7] = stage
    row[8] = similarity if math.isfinite(similarity) else math.nan
