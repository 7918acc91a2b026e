"""Acoustic features: Wav2Vec2 (``jonatasgrosman/wav2vec2-large-xlsr-53-chinese-zh-cn``) hidden states.

Feature sets (DESIGN §4):

- ``wav2vec2_frame`` ``[T_50Hz, 1024]``: the encoder's last hidden state (loaded as ``Wav2Vec2Model``,
  so the CTC head of the checkpoint is never computed);
- ``wav2vec2_mean`` ``[1024]``: the mean over the first ``--audio-mean-max-seconds`` (default 10 s,
  as the authors' ``sen_avg_wav2vec``; 0 = the whole utterance). ``--audio-mean-clip before`` (the
  default, the authors' ``read_audio``) clips the waveform to 10 s and encodes the clip on its own;
  ``after`` averages the first 10 s of the frames of the whole utterance, so that the mean matches
  ``wav2vec2_frame``. Both agree on utterances up to 10 s;
- ``wav2vec2_ft_last`` ``[1024]``: the last time step of a fine-tuned encoder (``--audio-finetuned
  DIR``, written by ``m3ed finetune audio``) on the input :class:`InputRule` describes: the whole
  utterance normalised, then zero-padded or clipped to 4 s (the authors' ``chmed_wav2vec_dataset``;
  the last step then often sees only padding). The checkpoint records the rule it was trained with
  and extraction uses it; ``--audio-ft-seconds`` that contradicts it is an error.

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

import json
import logging
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Iterator

import numpy as np
import torch

from ..corpus import Dialogue
from ..errors import ConfigurationError
from ..locate import MediaSource
from ..media import SAMPLE_RATE, MediaError
from ..stage import DialogueResult, RunContext, Stage, register_stage
from ..store import Failure
from .batching import BatchBudget, plan_batches, restore_order, split_on_oom
from .hf_models import ModelSpec, autocast, check_model, load_audio, model_spec
from .options import MEAN_CLIPS, AudioOptions
from .text import _fingerprint

log = logging.getLogger(__name__)

FRAME, MEAN, FT_LAST = "wav2vec2_frame", "wav2vec2_mean", "wav2vec2_ft_last"
NO_AUDIO = "no audio: the utterance span holds no samples of the decoded dialogue"
FINETUNE_RECORD = "finetune.json"   # written by `m3ed finetune`; its "input" entry is the InputRule


def normalise(features, wave: np.ndarray) -> np.ndarray:
    """One whole waveform through the checkpoint's own feature extractor (zero mean and unit variance
    when its config says ``do_normalize``), as the authors' processor call before padding."""
    return np.asarray(features(wave, sampling_rate=SAMPLE_RATE)["input_values"][0], np.float32)


@dataclass(frozen=True)
class InputRule:
    """How an utterance becomes the fine-tuned model's input, in training and in extraction alike.

    The whole utterance is normalised first (:func:`normalise`); then, with ``seconds`` > 0, it is
    zero-padded or clipped to exactly that length (the authors: 4 s); with ``seconds`` = 0 it is
    clipped to ``max_seconds`` (0: no limit) and never padded.
    """

    seconds: float = 4.0
    max_seconds: float = 0.0

    def __post_init__(self) -> None:
        if self.seconds < 0 or self.max_seconds < 0:
            raise ValueError(f"audio input rule {self}: lengths must be >= 0 seconds")

    def apply(self, normalised: np.ndarray) -> np.ndarray:
        limit = self.seconds or self.max_seconds
        wave = normalised[: int(round(limit * SAMPLE_RATE))] if limit else normalised
        if self.seconds:
            wave = np.pad(wave, (0, int(round(self.seconds * SAMPLE_RATE)) - len(wave)))
        return wave

    def describe(self) -> str:
        if self.seconds:
            return f"normalised, then zero-padded or clipped to {self.seconds:g} s"
        return f"normalised, then clipped to {self.max_seconds:g} s" if self.max_seconds else "normalised, whole utterance"

    @classmethod
    def of_checkpoint(cls, directory: str | Path) -> "InputRule | None":
        """The rule a `m3ed finetune audio` checkpoint was trained with; None when it does not say."""
        path = Path(directory) / FINETUNE_RECORD
        if not path.exists():
            return None
        record = json.loads(path.read_text(encoding="utf-8"))
        if record.get("input"):
            return cls(**record["input"])
        if "max_seconds" in record.get("config", {}):  # written before the rule was recorded
            log.warning("%s: a checkpoint from before input rules were recorded; it was trained on clips of up to "
                        "%s s, so wav2vec2_ft_last uses the same (fine-tune again for the authors' 4 s rule)",
                        path, record["config"]["max_seconds"])
            return cls(0.0, float(record["config"]["max_seconds"]))
        return None


def resolve_input_rule(finetuned: str, seconds: float | None) -> InputRule:
    """The checkpoint's own rule; ``--audio-ft-seconds`` may only confirm it. A checkpoint that does not
    record one (made elsewhere) gets ``seconds``, else the authors' 4 s."""
    stored = InputRule.of_checkpoint(finetuned)
    if stored is None:
        return InputRule() if seconds is None else InputRule(seconds)
    if seconds is not None and seconds != stored.seconds:
        raise ValueError(f"--audio-ft-seconds {seconds:g}: the checkpoint {finetuned} was trained on input "
                         f"{stored.describe()} ({FINETUNE_RECORD}), and its last step means something else on "
                         f"other input; omit --audio-ft-seconds to use the checkpoint's rule, or fine-tune "
                         f"with --audio-ft-seconds {seconds:g}")
    return stored


@dataclass(frozen=True)
class Piece:
    """A stretch of one utterance sent through the model, and which of its frames to keep."""

    owner: int           # index of the utterance
    samples: np.ndarray
    keep_from: int       # frames [keep_from, keep_to) of this piece's output belong to the utterance
    keep_to: int


def conv_hop(config) -> int:
    """Samples per output frame of a Wav2Vec2-style convolutional front end (its strides' product)."""
    return int(np.prod(config.conv_stride))


def receptive_field(config) -> int:
    """Samples one output frame of the front end sees (the shortest usable input)."""
    field = 1
    for kernel, stride in zip(reversed(config.conv_kernel), reversed(config.conv_stride)):
        field = (field - 1) * stride + kernel
    return field


class AudioEncoder:
    """A feature extractor and a Wav2Vec2-style encoder on a device: waveforms in, frame features out."""

    def __init__(self, spec: ModelSpec, device: str = "cpu", precision: str = "fp32",
                 budget: BatchBudget = BatchBudget(16, 60 * SAMPLE_RATE), chunk_seconds: float = 30.0,
                 overlap_seconds: float = 2.0, option: str = "--audio-model"):
        self.spec, self.device, self.precision = spec, device, precision
        self.features, self.model = load_audio(spec, option)
        self.model.to(device)
        config = self.model.config
        self.hop = conv_hop(config)                      # samples per frame (320: 50 Hz)
        self.field = receptive_field(config)             # samples for one frame (400)
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

    def num_frames(self, samples: int) -> int:
        """Frames the conv front end gives for ``samples`` (as ``_get_feat_extract_output_lengths``)."""
        for kernel, stride in zip(self.model.config.conv_kernel, self.model.config.conv_stride):
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

    def normalise(self, wave: np.ndarray) -> np.ndarray:
        return normalise(self.features, wave)

    def encode(self, waves: list[np.ndarray], normalised: bool = False) -> list[np.ndarray]:
        """``[T, D]`` float32 frames per waveform (mono float32 at 16 kHz); ``normalised``: the waves
        went through :meth:`normalise` already and are only padded."""
        pieces = [p for i, wave in enumerate(waves) for p in self.pieces(i, wave)]
        batches = plan_batches([len(p.samples) for p in pieces], self.budget)
        outputs = restore_order(batches, [split_on_oom(lambda b: self._forward([pieces[i] for i in b], normalised), batch)
                                          for batch in batches])
        frames: list[list[np.ndarray]] = [[] for _ in waves]
        for piece, out in zip(pieces, outputs):
            frames[piece.owner].append(out[piece.keep_from: piece.keep_to])
        return [np.concatenate(parts) for parts in frames]

    def _forward(self, batch: list[Piece], normalised: bool = False) -> list[np.ndarray]:
        samples = [p.samples for p in batch]
        if normalised:
            inputs = self.features.pad({"input_values": samples}, padding=True,
                                       return_attention_mask=self.use_mask, return_tensors="pt")
        else:
            inputs = self.features(samples, sampling_rate=SAMPLE_RATE, padding=True,
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
    mean_max_seconds: float = AudioOptions.mean_max_seconds   # the authors' sen_avg_wav2vec averaged 10 s
    mean_clip: str = AudioOptions.mean_clip
    ft_seconds: float | None = None      # None: the fine-tuned checkpoint's own input rule (InputRule)
    chunk_seconds: float = AudioOptions.chunk_seconds
    overlap_seconds: float = 2.0
    batch_seconds: float = AudioOptions.batch_seconds
    sets: tuple[str, ...] | None = None  # None: every set the options allow
    batch_items: int = 16
    wave_seconds: float = 120.0          # decoded audio gathered before a round of batches

    def __post_init__(self) -> None:
        if self.mean_clip not in MEAN_CLIPS:
            raise ValueError(f"--audio-mean-clip {self.mean_clip!r}: choose before or after")
        allowed = (FRAME, MEAN, FT_LAST) if self.finetuned else (FRAME, MEAN)
        unknown = [name for name in self.sets or () if name not in allowed]
        if unknown or self.sets == ():
            raise ConfigurationError(f"--audio-sets {','.join(self.sets or ())!r}: choose from {', '.join(allowed)}"
                                     + ("" if self.finetuned else " (wav2vec2_ft_last needs --audio-finetuned)"))

    def feature_sets(self) -> tuple[str, ...]:
        allowed = (FRAME, MEAN, FT_LAST) if self.finetuned else (FRAME, MEAN)
        return tuple(name for name in allowed if self.sets is None or name in self.sets)

    def provenance(self) -> dict:
        return {**self.model.provenance(), "finetuned": _fingerprint(self.finetuned),
                "mean_max_seconds": self.mean_max_seconds, "mean_clip": self.mean_clip, "ft_seconds": self.ft_seconds,
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


@register_stage
class AudioStage(Stage):
    name = "audio"
    feature_sets = (FRAME, MEAN)
    group_size = 16
    options = AudioOptions

    def __init__(self, config: AudioConfig, device: str = "cpu", precision: str = "fp32"):
        self.config, self.device, self.precision = config, device, precision
        self.feature_sets = config.feature_sets()
        self.ft_rule: InputRule | None = None
        if config.finetuned and FT_LAST in self.feature_sets:
            self.ft_rule = resolve_input_rule(config.finetuned, config.ft_seconds)
        self._encoders: dict[str, AudioEncoder] = {}
        self._decoder: ThreadPoolExecutor | None = None

    @classmethod
    def from_config(cls, options: AudioOptions, context: RunContext) -> "AudioStage":
        config = AudioConfig(model=model_spec(context.profile, "audio", options.model), finetuned=options.finetuned,
                             mean_max_seconds=options.mean_max_seconds, mean_clip=options.mean_clip,
                             ft_seconds=options.ft_seconds, chunk_seconds=options.chunk_seconds,
                             batch_seconds=options.batch_seconds, sets=options.sets)
        return cls(config, context.device, context.precision)

    def preflight(self) -> None:
        check_model(self.config.model, self.name)

    def provenance(self) -> dict:
        rule = asdict(self.ft_rule) if self.ft_rule else None
        return {"stage": self.name, **self.config.provenance(), "ft_input": rule}

    def attrs(self, feature_set: str) -> dict:
        spec = self.config.model
        common = {"sample_rate": SAMPLE_RATE, "frame_rate": self.encoder("base").frame_rate}
        if feature_set == FT_LAST:
            return {**common, "model": str(self.config.finetuned), "pooling": "last time step",
                    "input": self.ft_rule.describe(), "ft_seconds": self.ft_rule.seconds}
        pooling = {FRAME: "none", MEAN: self._mean_pooling()}[feature_set]
        return {**common, "model": spec.name, "revision": spec.revision or "", "pooling": pooling,
                "chunk_seconds": self.config.chunk_seconds, "overlap_seconds": self.config.overlap_seconds}

    def encoder(self, key: str) -> AudioEncoder:
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
        ids, waves = [uid for _, uid, _ in items], [a for _, _, a in items]
        frames, means = {}, {}
        if FRAME in self.feature_sets:
            encoded = self.encoder("base").encode(waves)
            frames, means = dict(zip(ids, encoded)), dict(zip(ids, self._means(waves, encoded)))
        elif MEAN in self.feature_sets:
            means = dict(zip(ids, self._means_alone(waves)))
        last = dict(zip(ids, self._fine_tuned_last(waves))) if FT_LAST in self.feature_sets else {}
        by_set = {FRAME: frames, MEAN: means, FT_LAST: last}
        for decoded in wave:
            yield self._result(decoded, {name: by_set[name] for name in self.feature_sets})

    def _fine_tuned_last(self, waves: list[np.ndarray]) -> list[np.ndarray]:
        # The training rule: normalise the whole utterance, then pad/clip; the zeros are part of the input.
        encoder = self.encoder("ft")
        inputs = [self.ft_rule.apply(encoder.normalise(a)) for a in waves]
        return [f[-1] for f in encoder.encode(inputs, normalised=True)]

    def _mean_pooling(self) -> str:
        limit = self.config.mean_max_seconds
        if limit <= 0:
            return "mean of all frames"
        if self.config.mean_clip == "before":
            return f"mean of the frames of the waveform clipped to its first {limit:g} s"
        return f"mean of the whole utterance's frames of its first {limit:g} s"

    def _means(self, waves: list[np.ndarray], frames: list[np.ndarray]) -> list[np.ndarray]:
        limit = self.config.mean_max_seconds
        if limit <= 0:
            return [f.mean(axis=0) for f in frames]
        if self.config.mean_clip == "after":
            keep = max(1, int(round(limit * self.encoder("base").frame_rate)))
            return [f[:keep].mean(axis=0) for f in frames]
        # "before": only utterances longer than the limit differ from their own frames; encode their clips.
        n = int(limit * SAMPLE_RATE)
        means = [f.mean(axis=0) for f in frames]
        longer = [i for i, a in enumerate(waves) if len(a) > n]
        for i, clipped in zip(longer, self.encoder("base").encode([waves[i][:n] for i in longer])):
            means[i] = clipped.mean(axis=0)
        return means

    def _means_alone(self, waves: list[np.ndarray]) -> list[np.ndarray]:
        """wav2vec2_mean without wav2vec2_frame: with the authors' clipping only the first
        ``mean_max_seconds`` of each utterance go through the model."""
        limit = self.config.mean_max_seconds
        if limit <= 0 or self.config.mean_clip == "after":   # frames of the whole utterance are needed
            return self._means(waves, self.encoder("base").encode(waves))
        n = int(limit * SAMPLE_RATE)
        return [f.mean(axis=0) for f in self.encoder("base").encode([a[:n] for a in waves])]

    def _result(self, decoded: DecodedDialogue, by_set: dict[str, dict]) -> DialogueResult:
        """The dialogue's features, set -> utterance id -> array (every set holds the same utterances)."""
        dialogue = decoded.dialogue
        if decoded.error:
            return DialogueResult(dialogue.id, error=decoded.error)
        result = DialogueResult(dialogue.id, {name: {} for name in self.feature_sets})
        for utterance in dialogue.utterances:
            if utterance.id not in by_set[self.feature_sets[0]]:   # no audio in its span
                result.failures += [Failure(name, dialogue.id, utterance.id, NO_AUDIO) for name in self.feature_sets]
                continue
            for name, values in by_set.items():
                result.features[name][utterance.id] = values[utterance.id]
        return result

    def close(self) -> None:
        if self._decoder is not None:
            self._decoder.shutdown(wait=True)
            self._decoder = None
        for encoder in self._encoders.values():
            encoder.close()
        self._encoders.clear()
