"""Acoustic features: Wav2Vec2 (``jonatasgrosman/wav2vec2-large-xlsr-53-chinese-zh-cn``) hidden states.

Feature sets (DESIGN §4):

- ``wav2vec2_frame`` ``[T_50Hz, 1024]``: the encoder's last hidden state (loaded as ``Wav2Vec2Model``,
  so the CTC head of the checkpoint is never computed);
- ``wav2vec2_mean`` ``[1024]``: the mean of the frames of the first ``--audio-mean-max-seconds``
  (default 10 s, as the authors' ``sen_avg_wav2vec``; 0 = the whole utterance). The frames come
  from the whole utterance, so they match ``wav2vec2_frame``;
- ``wav2vec2_ft_last`` ``[1024]``: the last time step of a fine-tuned encoder (``--audio-finetuned
  DIR``, written by ``m3ed finetune audio``). ``--audio-ft-seconds 4`` reproduces the authors, who
  zero-padded or clipped every utterance to 4 s first (the last step then often sees only padding);
  by default the last step of the whole utterance is used.

Each dialogue's audio is decoded once (a background thread decodes the next dialogues while the
model runs) and sliced into utterances. Preprocessing is the checkpoint's own feature extractor.
Rules, so that no utterance crashes the run or exhausts memory:

- shorter than the convolutional front end's receptive field (400 samples, 25 ms): zero-padded at
  the end to 400 samples, giving one frame;
- longer than ``--audio-chunk-seconds`` (30 s): encoded in 30 s windows that overlap by 2 s; each
  frame is taken from the window where it is farthest from an edge, so the frame count and rate
  are those of the whole utterance (each window is normalised on its own);
- no samples at all (an utterance outside the decoded dialogue): no key, failure "no audio".

Padding never changes a feature: with a layer-norm front end and attention masks (XLSR) padded
frames are masked everywhere; models whose front end normalises over time (GroupNorm, base
models) or whose checkpoint says not to use attention masks are batched only with equal lengths.
"""
from __future__ import annotations

import argparse
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Iterator

import numpy as np
import torch

from ..corpus import Dialogue
from ..locate import MediaSource
from ..media import SAMPLE_RATE, MediaError
from ..pipelines.stage import DialogueResult, RunContext, Stage
from ..store import Failure
from .batching import BatchBudget, plan_batches, restore_order
from .hf_models import ModelSpec, autocast, load_audio, model_spec
from .text import _fingerprint

FRAME, MEAN, FT_LAST = "wav2vec2_frame", "wav2vec2_mean", "wav2vec2_ft_last"
NO_AUDIO = "no audio: the utterance span holds no samples of the decoded dialogue"


@dataclass(frozen=True)
class Piece:
    """A stretch of one utterance sent through the model, and which of its frames to keep."""

    owner: int           # index of the utterance
    samples: np.ndarray
    keep_from: int       # frames [keep_from, keep_to) of this piece's output belong to the utterance
    keep_to: int


class AudioEncoder:
    """A feature extractor and a Wav2Vec2-style encoder on a device: waveforms in, frame features out."""

    def __init__(self, spec: ModelSpec, device: str = "cpu", precision: str = "fp32",
                 budget: BatchBudget = BatchBudget(16, 60 * SAMPLE_RATE), chunk_seconds: float = 30.0,
                 overlap_seconds: float = 2.0, option: str = "--audio-model"):
        self.spec, self.device, self.precision = spec, device, precision
        self.features, self.model = load_audio(spec, option)
        self.model.to(device)
        config = self.model.config
        self.kernels, self.strides = list(config.conv_kernel), list(config.conv_stride)
        self.hop = int(np.prod(self.strides))            # samples per frame (320: 50 Hz)
        self.field = self.receptive_field()              # samples for one frame (400)
        self.use_mask = bool(getattr(self.features, "return_attention_mask", False))
        invariant = getattr(config, "feat_extract_norm", "group") == "layer" and self.use_mask
        self.budget = BatchBudget(budget.max_items, budget.max_padded, equal_length_only=not invariant)
        self.chunk = max(self.field, int(chunk_seconds * SAMPLE_RATE))
        self.overlap_frames = int(round(overlap_seconds * SAMPLE_RATE / self.hop))
        if self.overlap_frames >= self.num_frames(self.chunk) // 2:
            raise ValueError(f"audio chunks of {chunk_seconds} s cannot overlap by {overlap_seconds} s; "
                             "use an overlap under half the chunk (--audio-chunk-seconds)")

    @property
    def frame_rate(self) -> float:
        return SAMPLE_RATE / self.hop

    def receptive_field(self) -> int:
        field = 1
        for kernel, stride in zip(reversed(self.kernels), reversed(self.strides)):
            field = (field - 1) * stride + kernel
        return field

    def num_frames(self, samples: int) -> int:
        """Frames the conv front end gives for ``samples`` (as ``_get_feat_extract_output_lengths``)."""
        for kernel, stride in zip(self.kernels, self.strides):
            samples = (samples - kernel) // stride + 1
        return max(0, samples)

    def pieces(self, owner: int, wave: np.ndarray) -> list[Piece]:
        if len(wave) < self.field:  # too short for one frame: pad at the end to the receptive field
            wave = np.pad(wave, (0, self.field - len(wave)))
        if len(wave) <= self.chunk:
            return [Piece(owner, wave, 0, self.num_frames(len(wave)))]
        return self._windows(owner, wave)

    def _windows(self, owner: int, wave: np.ndarray) -> list[Piece]:
        """Overlapping windows that start on frame boundaries; window k keeps the frames from the middle
        of its overlap with window k-1 to the middle of its overlap with window k+1."""
        total = self.num_frames(len(wave))
        window = self.num_frames(self.chunk)
        step = window - self.overlap_frames
        half = self.overlap_frames // 2
        pieces, k = [], 0
        while True:
            first = k * step
            samples = wave[first * self.hop: first * self.hop + self.chunk]
            frames = self.num_frames(len(samples))
            last = first + frames >= total
            pieces.append(Piece(owner, samples, 0 if k == 0 else half, frames if last else step + half))
            if last:
                return pieces
            k += 1

    def encode(self, waves: list[np.ndarray]) -> list[np.ndarray]:
        """``[T, D]`` float32 frames per waveform (mono float32 at 16 kHz)."""
        pieces = [p for i, wave in enumerate(waves) for p in self.pieces(i, wave)]
        batches = plan_batches([len(p.samples) for p in pieces], self.budget)
        outputs = restore_order(batches, [self._forward([pieces[i] for i in batch]) for batch in batches])
        frames: list[list[np.ndarray]] = [[] for _ in waves]
        for piece, out in zip(pieces, outputs):
            frames[piece.owner].append(out[piece.keep_from: piece.keep_to])
        return [np.concatenate(parts) for parts in frames]

    def _forward(self, batch: list[Piece]) -> list[np.ndarray]:
        inputs = self.features([p.samples for p in batch], sampling_rate=SAMPLE_RATE, padding=True,
                               return_attention_mask=self.use_mask, return_tensors="pt")
        inputs = {k: v.to(self.device) for k, v in inputs.items()}
        with torch.inference_mode(), autocast(self.device, self.precision):
            hidden = self.model(**inputs).last_hidden_state.float().cpu().numpy()
        return [hidden[j, : self.num_frames(len(p.samples))] for j, p in enumerate(batch)]

    def close(self) -> None:
        del self.model


@dataclass(frozen=True)
class AudioConfig:
    model: ModelSpec
    finetuned: str | None = None
    mean_max_seconds: float = 10.0       # the authors' sen_avg_wav2vec averaged the first 10 s
    ft_seconds: float | None = None      # the authors' 4 s pad/clip before the fine-tuned last step
    chunk_seconds: float = 30.0
    overlap_seconds: float = 2.0
    batch_seconds: float = 60.0          # padded audio per batch
    batch_items: int = 16
    wave_seconds: float = 120.0          # decoded audio gathered before a round of batches

    def provenance(self) -> dict:
        return {**self.model.provenance(), "finetuned": _fingerprint(self.finetuned),
                "mean_max_seconds": self.mean_max_seconds, "ft_seconds": self.ft_seconds,
                "chunk_seconds": self.chunk_seconds, "overlap_seconds": self.overlap_seconds}


@dataclass
class DecodedDialogue:
    dialogue: Dialogue
    waves: dict[str, np.ndarray] | None = None
    error: str | None = None


def decode_dialogue(media: MediaSource, dialogue: Dialogue) -> DecodedDialogue:
    """The dialogue's audio decoded once, sliced into utterances; a media error names the dialogue."""
    try:
        audio = media.audio(media.locate(dialogue))
    except (MediaError, ValueError, OSError) as e:
        message = str(e) if dialogue.id in str(e) else f"dialogue {dialogue.id}: {e}"
        return DecodedDialogue(dialogue, error=message)
    return DecodedDialogue(dialogue, {u.id: media.utterance_audio(audio, u) for u in dialogue.utterances})


def _option(args: argparse.Namespace, name: str, default):
    """An option's value, or ``default`` when the runner's parser lacks it or left it unset."""
    value = getattr(args, name, None)
    return default if value is None else value


class AudioStage(Stage):
    name = "audio"
    feature_sets = (FRAME, MEAN)
    group_size = 16

    def __init__(self, config: AudioConfig, device: str = "cpu", precision: str = "fp32"):
        self.config, self.device, self.precision = config, device, precision
        if config.finetuned:
            self.feature_sets = (FRAME, MEAN, FT_LAST)
        self._encoders: dict[str, AudioEncoder] = {}
        self._decoder: ThreadPoolExecutor | None = None

    @classmethod
    def add_arguments(cls, parser: argparse.ArgumentParser) -> None:
        group = parser.add_argument_group("audio stage")
        group.add_argument("--audio-model", metavar="ID|PATH",
                           help="another Wav2Vec2-style encoder (hub id or local directory) instead of the profile's")
        group.add_argument("--audio-finetuned", metavar="DIR",
                           help="checkpoint of `m3ed finetune audio`; adds the wav2vec2_ft_last feature set")
        group.add_argument("--audio-mean-max-seconds", type=float, default=10.0, metavar="S",
                           help="wav2vec2_mean averages the frames of the first S seconds, as the authors "
                                "(default: %(default)s; 0: the whole utterance)")
        group.add_argument("--audio-ft-seconds", type=float, metavar="S",
                           help="zero-pad or clip utterances to S seconds before the fine-tuned model's last "
                                "step (the authors used 4; default: the whole utterance)")
        group.add_argument("--audio-chunk-seconds", type=float, default=30.0, metavar="S",
                           help="longer utterances are encoded in overlapping windows of S seconds (default: %(default)s)")
        group.add_argument("--audio-batch-seconds", type=float, default=60.0, metavar="S",
                           help="padded audio per batch (default: %(default)s)")

    @classmethod
    def from_args(cls, args: argparse.Namespace, context: RunContext) -> "AudioStage":
        defaults = AudioConfig(ModelSpec(""))
        config = AudioConfig(
            model=model_spec(context.profile, "audio", getattr(args, "audio_model", None)),
            finetuned=getattr(args, "audio_finetuned", None),
            mean_max_seconds=_option(args, "audio_mean_max_seconds", defaults.mean_max_seconds),
            ft_seconds=_option(args, "audio_ft_seconds", None),
            chunk_seconds=_option(args, "audio_chunk_seconds", defaults.chunk_seconds),
            batch_seconds=_option(args, "audio_batch_seconds", defaults.batch_seconds),
        )
        return cls(config, context.device, context.precision)

    def provenance(self) -> dict:
        return {"stage": self.name, **self.config.provenance()}

    def attrs(self, feature_set: str) -> dict:
        spec = self.config.model
        common = {"sample_rate": SAMPLE_RATE, "frame_rate": SAMPLE_RATE / 320}
        if feature_set == FT_LAST:
            return {**common, "model": str(self.config.finetuned), "pooling": "last time step",
                    "ft_seconds": self.config.ft_seconds if self.config.ft_seconds else "whole utterance"}
        pooling = {FRAME: "none", MEAN: f"mean of the first {self.config.mean_max_seconds} s (0: all)"}[feature_set]
        return {**common, "model": spec.name, "revision": spec.revision or "", "pooling": pooling,
                "chunk_seconds": self.config.chunk_seconds, "overlap_seconds": self.config.overlap_seconds}

    def _encoder(self, key: str) -> AudioEncoder:
        if key not in self._encoders:
            c = self.config
            budget = BatchBudget(c.batch_items, int(c.batch_seconds * SAMPLE_RATE))
            spec, option = (c.model, "--audio-model") if key == "base" else (ModelSpec(c.finetuned), "--audio-finetuned")
            self._encoders[key] = AudioEncoder(spec, self.device, self.precision, budget, c.chunk_seconds,
                                               c.overlap_seconds, option)
        return self._encoders[key]

    def process(self, dialogues: list[Dialogue], context: RunContext) -> Iterator[DialogueResult]:
        # Decoding runs ahead in the background thread while the model works on earlier dialogues.
        if self._decoder is None:
            self._decoder = ThreadPoolExecutor(max_workers=1, thread_name_prefix="m3ed-audio-decode")
        pending: list[Future] = [self._decoder.submit(decode_dialogue, context.media, d) for d in dialogues]
        wave: list[DecodedDialogue] = []
        for future in pending:
            wave.append(future.result())
            if sum(len(a) for d in wave for a in (d.waves or {}).values()) >= self.config.wave_seconds * SAMPLE_RATE:
                yield from self._encode_wave(wave)
                wave = []
        yield from self._encode_wave(wave)

    def _encode_wave(self, wave: list[DecodedDialogue]) -> Iterator[DialogueResult]:
        items = [(d.dialogue.id, uid, a) for d in wave if d.waves for uid, a in d.waves.items() if len(a)]
        waves = [a for _, _, a in items]
        frames = dict(zip([uid for _, uid, _ in items], self._encoder("base").encode(waves)))
        last = dict(zip([uid for _, uid, _ in items], self._fine_tuned_last(waves))) if self.config.finetuned else {}
        for decoded in wave:
            yield self._result(decoded, frames, last)

    def _fine_tuned_last(self, waves: list[np.ndarray]) -> list[np.ndarray]:
        seconds = self.config.ft_seconds
        if not seconds:
            return [f[-1] for f in self._encoder("ft").encode(waves)]
        n = int(round(seconds * SAMPLE_RATE))
        # The authors' pad/clip: the zeros are part of the input (equal lengths, so no mask is involved).
        fixed = [np.pad(a[:n], (0, max(0, n - len(a)))) for a in waves]
        return [f[-1] for f in self._encoder("ft").encode(fixed)]

    def _mean(self, frames: np.ndarray) -> np.ndarray:
        limit = self.config.mean_max_seconds
        keep = len(frames) if limit <= 0 else max(1, int(round(limit * self._encoder("base").frame_rate)))
        return frames[:keep].mean(axis=0)

    def _result(self, decoded: DecodedDialogue, frames: dict, last: dict) -> DialogueResult:
        dialogue = decoded.dialogue
        if decoded.error:
            return DialogueResult(dialogue.id, error=decoded.error)
        result = DialogueResult(dialogue.id, {name: {} for name in self.feature_sets})
        for utterance in dialogue.utterances:
            if utterance.id not in frames:
                result.failures += [Failure(name, dialogue.id, utterance.id, NO_AUDIO) for name in self.feature_sets]
                continue
            result.features[FRAME][utterance.id] = frames[utterance.id]
            result.features[MEAN][utterance.id] = self._mean(frames[utterance.id])
            if self.config.finetuned:
                result.features[FT_LAST][utterance.id] = last[utterance.id]
        return result

    def close(self) -> None:
        if self._decoder is not None:
            self._decoder.shutdown(wait=True)
            self._decoder = None
        for encoder in self._encoders.values():
            encoder.close()
        self._encoders.clear()
