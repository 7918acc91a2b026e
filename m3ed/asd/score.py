"""Scoring face tracks with an audio-visual ASD model (TalkNet or Light-ASD).

Inputs per track: its ``[T,112,112]`` gray crops (:mod:`m3ed.asd.crop`) and the MFCC rows of
the dialogue audio under it. MFCC is computed once per dialogue (:func:`dialogue_mfcc`, 100
frames/s); a track over dialogue frames ``f0..f1`` (25 fps) reads rows ``4*f0 .. 4*(f1+1)``,
which equals the demo's MFCC of the track's own audio cut (same 10 ms grid).

Output per track: float32 ``[T]`` speaking probability ``P = sigmoid(s1 - s0)`` from the model's
(not speaking, speaking) logits; NaN for frames the audio does not reach.

Modes (:class:`ScoreParams.mode`):

- ``multi`` (the reference demo's): for each duration d in 1..6 s, cut the track into
  non-overlapping d-second chunks, score each chunk alone; average the logit difference
  ``s1 - s0`` over the six durations, then apply the sigmoid. (The demo writes the durations as
  the set literal ``{1,1,1,2,2,2,3,3,4,5,6}``, which Python reduces to {1,...,6}; it averages
  the raw ``s1`` and rounds to 0.1 for display, which we do not.) Six passes over every frame.
- ``single`` (default): one pass over the whole track. 6x cheaper than ``multi`` (measured in
  ``bench/bench_asd.py``); TalkNet's cross-attention then sees the whole track, which the models
  (trained on clips of up to ~6 s) handle, though its scores differ somewhat from ``multi``'s.
  Use ``--asd-mode multi`` to reproduce the reference.

Chunks of equal length are batched across tracks, at most ``batch_frames`` video frames per
forward (one longer chunk goes alone): 250 bounds the activations' memory, which grows with the
batch; the scores do not depend on it (tested). A piece longer than
:data:`m3ed.models.talknet.MAX_FRAMES_PER_PASS` (a long track run in ``single`` mode) runs the
models' front-ends in chunks widened by their receptive fields, and TalkNet's attention a chunk of
queries at a time, so its memory does not grow with its length either; the scores equal one
pass's up to rounding (``tests/test_asd_memory.py``).

Only what is needed is scored (``needed``, per track a boolean mask; the asd stage passes the
frames inside some utterance, since assignment reads nothing else). ``multi`` scores the chunks of
its grid (aligned on the track start, as the reference) that hold a needed frame: the scores of
needed frames are exactly those of scoring everything. ``single`` scores each run of needed
frames widened by ``context_frames`` on both sides (within the track) in one pass. Frames not
scored are NaN. ``score_last_frame=False`` (``--preset authors``) leaves each track's last frame
unscored, as the demo: it cuts a track of T frames with audio of T/25 s, whose 4T - 1 MFCC rows it
trims to 4(T - 1), so the model sees T - 1 frames (the six durations' grid is the same).

``fused`` (on by default): Light-ASD runs :meth:`m3ed.models.light_asd.LightASD.fused_logits`,
batch norms folded into the visual convolutions and every one of them run by oneDNN in the
channels-last layout: about 2.4x faster on one CPU thread, logits equal up to rounding (~1e-5).
"""
from __future__ import annotations

from collections import defaultdict
from typing import Sequence

import numpy as np
import torch

from ..device import freed_buffers_kept
from ..media import SAMPLE_RATE
from ..models.talknet import MFCC_FRAMES_PER_VIDEO_FRAME, AudioVisualASD
from ..profiles import Profile, fetch_checkpoint
from ..weights import LIGHT_ASD_FILE, LIGHT_ASD_SHA256, light_asd_checkpoint, sha256_of
from .mfcc import audio_for_asd, mfcc
from .options import ASD_MODELS, VIDEO_FPS
from .params import ScoreParams
from .track import Track

MULTI_DURATIONS = (1, 2, 3, 4, 5, 6)   # seconds; the demo's durationSet as Python evaluates it

#: TalkNet's TalkSet-trained checkpoint: the demo downloads it from this Google Drive file
#: (id 1AbN9fCf9IexMxEKXLQY2KYBlb-IhSEea, saved as ``pretrain_TalkSet.model``).
TALKNET_CHECKPOINT_URL = "https://drive.google.com/uc?export=download&id=1AbN9fCf9IexMxEKXLQY2KYBlb-IhSEea"
#: Light-ASD's TalkSet fine-tuned checkpoint, ``weight/finetuning_TalkSet.model`` of its repository (MIT).
LIGHT_ASD_CHECKPOINT_URL = "https://raw.githubusercontent.com/Junhua-Liao/Light-ASD/main/weight/finetuning_TalkSet.model"
CHECKPOINT_URLS = {"talknet": TALKNET_CHECKPOINT_URL, "light-asd": LIGHT_ASD_CHECKPOINT_URL}


def model_class(name: str) -> type[AudioVisualASD]:
    if name == "talknet":
        from ..models.talknet import TalkNet
        return TalkNet
    if name == "light-asd":
        from ..models.light_asd import LightASD
        return LightASD
    raise ValueError(f"ASD model {name!r}: choose one of {', '.join(ASD_MODELS)}")


def build_scorer(profile: Profile, device: str | torch.device = "cpu", model: str | None = None,
                 checkpoint: str | None = None) -> AudioVisualASD:
    """The profile's ASD model in eval mode on ``device``.

    ``checkpoint`` (or ``profile.asd_checkpoint``), a local file or URL, overrides the defaults:
    Light-ASD loads the checkpoint shipped in :mod:`m3ed.weights` in every profile (real weights,
    no download). TalkNet: ``paper`` downloads the released checkpoint once into ``TORCH_HOME``;
    ``paper-random``/``tiny`` build it with random weights from ``profile.seed`` (full size in
    ``tiny`` too: 15.7 M parameters).
    """
    name = model or profile.asd_model
    cls = model_class(name)
    checkpoint = checkpoint or profile.asd_checkpoint
    if checkpoint is None and name == "light-asd":
        return cls.from_checkpoint(light_asd_checkpoint(), device)
    if checkpoint is None and profile.random_init:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(profile.seed)
            network = cls()
        return network.to(device).eval()
    source = checkpoint or CHECKPOINT_URLS[name]
    path = fetch_checkpoint(source, f"{name} ASD checkpoint", "AsdConfig.checkpoint")
    return cls.from_checkpoint(path, device)


def checkpoint_provenance(profile: Profile, model: str | None = None, checkpoint: str | None = None) -> dict:
    """Which weights :func:`build_scorer` loads, for the stage provenance: the checkpoint (the
    shipped one by its package-relative name, so that the hash does not depend on where the
    package is installed), its sha256 when the file is here, or the seed of random weights."""
    name = model or profile.asd_model
    checkpoint = checkpoint or profile.asd_checkpoint
    if checkpoint is None and name == "light-asd":
        return {"asd_checkpoint": f"m3ed/weights/{LIGHT_ASD_FILE}", "asd_checkpoint_sha256": LIGHT_ASD_SHA256}
    if checkpoint is None and profile.random_init:
        return {"asd_checkpoint": None, "asd_random_seed": profile.seed}
    source = checkpoint or CHECKPOINT_URLS[name]
    try:
        path = fetch_checkpoint(source, f"{name} ASD checkpoint", "AsdConfig.checkpoint")
    except RuntimeError:  # not fetchable here: build_scorer reports it; the provenance just has no digest
        path = None
    return {"asd_checkpoint": source, "asd_checkpoint_sha256": sha256_of(path) if path else None}


def dialogue_mfcc(audio: np.ndarray, sample_rate: int = SAMPLE_RATE) -> torch.Tensor:
    """``[F,13]`` MFCC of a dialogue's float audio (read as int16 values, like the reference's wav)."""
    if sample_rate != SAMPLE_RATE:
        raise ValueError(f"ASD audio must be 16 kHz, got {sample_rate} Hz")
    return mfcc(audio_for_asd(np.asarray(audio, np.float32)), sample_rate)


def score_tracks(model: AudioVisualASD, features: torch.Tensor, tracks: Sequence[Track],
                 crops: Sequence[np.ndarray], params: ScoreParams = ScoreParams(),
                 needed: Sequence[np.ndarray] | None = None) -> list[np.ndarray]:
    """Speaking probability per frame of every track (float32 ``[len(track)]``, NaN past the audio)."""
    return track_scores(model, features, tracks, crops, params, needed)[0]


def track_scores(model: AudioVisualASD, features: torch.Tensor, tracks: Sequence[Track],
                 crops: Sequence[np.ndarray], params: ScoreParams = ScoreParams(),
                 needed: Sequence[np.ndarray] | None = None) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """Per track, float32 ``[len(track)]`` (NaN past the audio and where not scored): the speaking
    probability, and the demo's score, its class-1 output averaged over the passes and rounded to
    0.1 (what the M3ED authors' stage 1 thresholds at 0). ``needed``: per track a boolean mask of
    the frames to score (default: all)."""
    per = MFCC_FRAMES_PER_VIDEO_FRAME
    sums = [np.zeros(len(t), np.float64) for t in tracks]
    speaking = [np.zeros(len(t), np.float64) for t in tracks]
    counts = [np.zeros(len(t), np.int64) for t in tracks]
    pieces = score_pieces(tracks, features.shape[0] // per, params, needed)
    forward = model.fused_logits if params.fused and hasattr(model, "fused_logits") else model.logits
    with torch.inference_mode():
        for length, members in sorted(pieces.items()):
            per_batch = max(1, params.batch_frames // length)
            for b in range(0, len(members), per_batch):
                batch = members[b:b + per_batch]
                audio = torch.stack([features[per * (tracks[i].first + o):per * (tracks[i].first + o + length)]
                                     for i, o in batch])
                video = torch.from_numpy(np.stack([crops[i][o:o + length] for i, o in batch])).float()
                with freed_buffers_kept():   # one call's activations reuse each other's memory, then go back
                    logits = forward(audio, video).float().cpu().numpy()
                for (i, o), row in zip(batch, logits):
                    sums[i][o:o + len(row)] += row[:, 1] - row[:, 0]
                    speaking[i][o:o + len(row)] += row[:, 1]
                    counts[i][o:o + len(row)] += 1
    return ([_probability(s, c) for s, c in zip(sums, counts)],
            [_demo_score(s, c) for s, c in zip(speaking, counts)])


def score_pieces(tracks: Sequence[Track], audio_frames: int, params: ScoreParams = ScoreParams(),
                 needed: Sequence[np.ndarray] | None = None) -> dict[int, list[tuple[int, int]]]:
    """The model inputs to compute: length -> ``(track, first frame within the track)`` of every
    piece, pieces limited to the video frames the audio covers (``audio_frames``)."""
    pieces: dict[int, list[tuple[int, int]]] = defaultdict(list)
    scored = 0 if params.score_last_frame else 1   # frames left unscored at a track's end (the demo: 1)
    for i, track in enumerate(tracks):
        covered = max(0, min(len(track) - scored, audio_frames - track.first))
        mask = np.ones(covered, bool) if needed is None else np.asarray(needed[i], bool)[:covered]
        if params.mode == "multi":
            # the reference's grid from the track start; a chunk is computed when it holds a needed frame
            for duration in MULTI_DURATIONS:
                step = int(duration * VIDEO_FPS)
                for offset in range(0, covered, step):
                    if mask[offset:offset + step].any():
                        pieces[min(step, covered - offset)].append((i, offset))
        else:
            for first, stop in _runs(mask, params.context_frames if needed is not None else 0):
                pieces[stop - first].append((i, first))
    return pieces


def _runs(mask: np.ndarray, context: int) -> list[tuple[int, int]]:
    """``[first, stop)`` of each run of True in ``mask``, widened by ``context`` (runs that then
    touch are merged)."""
    runs: list[tuple[int, int]] = []
    true = np.flatnonzero(mask)
    if len(true) == 0:
        return runs
    breaks = np.flatnonzero(np.diff(true) > 1)
    for first, last in zip(np.concatenate([[true[0]], true[breaks + 1]]), np.concatenate([true[breaks], [true[-1]]])):
        first, stop = max(0, int(first) - context), min(len(mask), int(last) + 1 + context)
        if runs and first <= runs[-1][1]:
            runs[-1] = (runs[-1][0], stop)
        else:
            runs.append((first, stop))
    return runs


def _demo_score(sums: np.ndarray, counts: np.ndarray) -> np.ndarray:
    """The demo's ``numpy.round(mean(scores), 1)`` (round half to even), NaN where no pass reached."""
    out = np.full(len(sums), np.nan, np.float32)
    seen = counts > 0
    out[seen] = np.round(sums[seen] / counts[seen], 1)
    return out


def _probability(sums: np.ndarray, counts: np.ndarray) -> np.ndarray:
    out = np.full(len(sums), np.nan, np.float32)
    seen = counts > 0
    out[seen] = 1.0 / (1.0 + np.exp(-sums[seen] / counts[seen]))
    return out
