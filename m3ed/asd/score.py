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

Chunks of equal length are batched across tracks (``batch_frames`` video frames per forward).
"""
from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass
from typing import Sequence

import numpy as np
import torch

from ..models.talknet import MFCC_FRAMES_PER_VIDEO_FRAME, AudioVisualASD
from ..profiles import Profile, fetch_checkpoint
from .mfcc import audio_for_asd, mfcc
from .track import Track

VIDEO_FPS = 25
MFCC_RATE = 100
MULTI_DURATIONS = (1, 2, 3, 4, 5, 6)   # seconds; the demo's durationSet as Python evaluates it

ASD_MODELS = ("talknet", "light-asd")
#: TalkNet's TalkSet-trained checkpoint: the demo downloads it from this Google Drive file
#: (id 1AbN9fCf9IexMxEKXLQY2KYBlb-IhSEea, saved as ``pretrain_TalkSet.model``).
TALKNET_CHECKPOINT_URL = "https://drive.google.com/uc?export=download&id=1AbN9fCf9IexMxEKXLQY2KYBlb-IhSEea"
TALKNET_CHECKPOINT_NAME = "pretrain_TalkSet.model"
#: Light-ASD's TalkSet fine-tuned checkpoint, ``weight/finetuning_TalkSet.model`` of its repository (MIT).
LIGHT_ASD_CHECKPOINT_URL = "https://raw.githubusercontent.com/Junhua-Liao/Light-ASD/main/weight/finetuning_TalkSet.model"
CHECKPOINT_URLS = {"talknet": TALKNET_CHECKPOINT_URL, "light-asd": LIGHT_ASD_CHECKPOINT_URL}


@dataclass(frozen=True)
class ScoreParams:
    mode: str = "single"            # "single" or "multi" (see the module docstring)
    batch_frames: int = 1500        # video frames per forward pass (all chunks of a batch are equally long)

    def __post_init__(self):
        if self.mode not in ("single", "multi"):
            raise ValueError(f"ASD mode {self.mode!r}: choose 'single' or 'multi'")


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

    ``paper``: the released checkpoint (``checkpoint`` or ``profile.asd_checkpoint`` overrides
    it: a local file or URL), downloaded once into ``TORCH_HOME``. ``paper-random``/``tiny``:
    the same architecture with random weights from ``profile.seed`` (the ASD models are small
    enough to keep full size in ``tiny``: TalkNet 15.7 M parameters, Light-ASD 1.0 M), unless a
    checkpoint is given explicitly.
    """
    name = model or profile.asd_model
    cls = model_class(name)
    checkpoint = checkpoint or profile.asd_checkpoint
    if checkpoint is None and profile.random_init:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(profile.seed)
            network = cls()
        return network.to(device).eval()
    source = checkpoint or CHECKPOINT_URLS[name]
    path = fetch_checkpoint(source, f"{name} ASD checkpoint", "--asd-checkpoint")
    return cls.from_checkpoint(path, device)


def dialogue_mfcc(audio: np.ndarray, sample_rate: int = 16000) -> torch.Tensor:
    """``[F,13]`` MFCC of a dialogue's float audio (read as int16 values, like the reference's wav)."""
    if sample_rate != 16000:
        raise ValueError(f"ASD audio must be 16 kHz, got {sample_rate} Hz")
    return mfcc(audio_for_asd(np.asarray(audio, np.float32)), sample_rate)


def score_tracks(model: AudioVisualASD, features: torch.Tensor, tracks: Sequence[Track],
                 crops: Sequence[np.ndarray], params: ScoreParams = ScoreParams()) -> list[np.ndarray]:
    """Speaking probability per frame of every track (float32 ``[len(track)]``, NaN past the audio)."""
    per = MFCC_FRAMES_PER_VIDEO_FRAME
    durations = MULTI_DURATIONS if params.mode == "multi" else (None,)
    # (track, first frame within the track, frame count) of every chunk, by duration
    sums = [np.zeros(len(t), np.float64) for t in tracks]
    counts = [np.zeros(len(t), np.int64) for t in tracks]
    pieces: dict[int, list[tuple[int, int]]] = defaultdict(list)   # length -> (track, offset)
    for i, track in enumerate(tracks):
        audio_frames = max(0, min(len(track), features.shape[0] // per - track.first))
        for duration in durations:
            step = audio_frames if duration is None else duration * VIDEO_FPS
            for offset in range(0, audio_frames, max(step, 1)):
                pieces[min(step, audio_frames - offset)].append((i, offset))
    with torch.inference_mode():
        for length, members in sorted(pieces.items()):
            per_batch = max(1, params.batch_frames // length)
            for b in range(0, len(members), per_batch):
                batch = members[b:b + per_batch]
                audio = torch.stack([features[per * (tracks[i].first + o):per * (tracks[i].first + o + length)]
                                     for i, o in batch])
                video = torch.from_numpy(np.stack([crops[i][o:o + length] for i, o in batch])).float()
                logits = model.logits(audio, video).float().cpu().numpy()
                for (i, o), row in zip(batch, logits):
                    sums[i][o:o + len(row)] += row[:, 1] - row[:, 0]
                    counts[i][o:o + len(row)] += 1
    return [_probability(s, c) for s, c in zip(sums, counts)]


def _probability(sums: np.ndarray, counts: np.ndarray) -> np.ndarray:
    out = np.full(len(sums), np.nan, np.float32)
    seen = counts > 0
    out[seen] = 1.0 / (1.0 + np.exp(-sums[seen] / counts[seen]))
    return out
