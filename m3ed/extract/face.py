"""The visual stage: DenseNet FER features of the speaker's face (the paper's V_Frm and V_Utt).

For each utterance it reads the speaker's face box per frame from the ``speaker_faces`` feature set
(written by the asd stage), crops each chosen face (or takes the crops the asd stage of the same run
cut while it had the frames: :mod:`m3ed.asd.speaker_crops`; else it decodes the dialogue once), converts it
to gray 64x64, normalises it with scalar constants and runs the authors' DenseNet-BC-100. The crop
(``--fer-crop``) is by default the authors' (``extract_spk_faces.py`` cut the detector box out of the
frame, ``extract_visual_ft.py`` stretched it to 64x64): the tight box, its aspect ratio not kept; the
normalisation constants were computed on such crops. ``square`` is a square around the box centre,
``--fer-crop-scale`` times the box's longer side, zero-padded outside the picture.

- ``denseface_frame``: ``[T_faces, 342]``, one row per frame with a speaker face, in frame order;
- ``denseface_mean``: ``[342]``, their mean.

An utterance whose speaker's face was never found gets no key and a failure line saying so.

Weights: ``--fer-checkpoint PATH`` (or ``profile.fer_checkpoint``). The authors' checkpoint is not
public, so the ``paper`` profile needs one made by ``m3ed train-fer``; ``paper-random`` and ``tiny``
use random weights from ``profile.seed`` (meaningless features, real cost).
"""
from __future__ import annotations

import logging
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import numpy as np
import torch

from ..asd.crop import crop_face
from ..asd.speaker_crops import SpeakerCrops, crops_path, face_rows
from ..catalogue import BOX, COLUMN
from ..corpus import Dialogue
from ..device import autocast, side_by_side
from ..media import MediaError
from ..models.densenet_fer import M3ED_FACE_MEAN, M3ED_FACE_STD, DenseNetFER, preprocess
from ..stage import DialogueResult, RunContext, Stage, failed_dialogue, register_stage
from ..profiles import Profile, fetch_checkpoint, unavailable
from ..store import Failure, FeatureReader, PartsReader
from ..timecode import DEFAULT_FPS
from ..weights import sha256_of
from .batching import split_on_oom
from .options import CROPS, DEFAULT_CROP_SCALE, VisualOptions

log = logging.getLogger(__name__)

FRAME_SET, MEAN_SET = "denseface_frame", "denseface_mean"
SPEAKER_FACES = "speaker_faces"
#: On CPU a batch runs through DenseNet in pieces of this many faces. Its activations are large
#: (216 x 32 x 32 floats a face at the end of the first block, rewritten by every layer's concatenation,
#: norm and ReLU): a few dozen faces stay in the caches, 256 spill to memory (measured 2-2.5x slower on
#: one thread; bench/bench_visual_parts.py).
CPU_PIECE = 32
#: PyTorch runs a 1x1 convolution of fewer than 16 inputs on one thread with its own kernel instead of
#: oneDNN's (``use_mkldnn`` in ATen's Convolution.cpp), whose last bits differ; oneDNN's result for a face
#: does not depend on how many faces share its batch. Pieces are never smaller than this (unless the whole
#: batch is), so every face goes through the same kernels as in the whole batch: bit-identical features.
ONEDNN_MIN_BATCH = 16


@dataclass(frozen=True)
class FaceConfig:
    """Everything that determines the visual features besides the corpus."""

    checkpoint: str | None = None      # None: random weights from ``seed``
    seed: int = 0
    mean: float = M3ED_FACE_MEAN       # gray-value normalisation (x - mean) / std; authors' M3ED values
    std: float = M3ED_FACE_STD
    crop: str = "tight"
    crop_scale: float = DEFAULT_CROP_SCALE  # square crops only
    batch_size: int = 256
    cpu_piece: int = CPU_PIECE              # faces per DenseNet call on CPU (speed only: same bits)

    def __post_init__(self) -> None:
        if self.crop not in CROPS:
            raise ValueError(f"--fer-crop {self.crop!r}: choose tight (the authors') or square")


def pieces(n: int, size: int = CPU_PIECE, floor: int = ONEDNN_MIN_BATCH) -> list[range]:
    """Consecutive pieces of ``n`` rows, ``size`` rows each; a remainder shorter than ``floor`` joins the
    piece before it, and a batch shorter than ``size + floor`` stays whole (see :data:`ONEDNN_MIN_BATCH`)."""
    size = max(size, floor)
    if n < size + floor:
        return [range(0, n)]
    starts = list(range(0, n, size))
    if n - starts[-1] < floor:
        starts.pop()
    return [range(a, b) for a, b in zip(starts, starts[1:] + [n])]


def resolve_checkpoint(profile: Profile, option: str | None) -> str | None:
    """The FER checkpoint file to use, or None for random weights (random-init profiles only)."""
    source = option or profile.fer_checkpoint
    if source is None:
        if profile.random_init:
            return None
        how = ("the M3ED authors' DenseNet FER checkpoint is not public; make one with `m3ed train-fer "
               "--ferplus-csv fer2013.csv --ferplus-labels fer2013new.csv [--affectnet DIR] --out DIR` and pass "
               "DIR/densenet_fer.pt with --fer-checkpoint (or use the paper-random profile)")
        raise unavailable("DenseNet FER checkpoint", "(none given)", how)
    return str(fetch_checkpoint(source, "DenseNet FER checkpoint", "--fer-checkpoint"))


def build_model(config: FaceConfig) -> DenseNetFER:
    if config.checkpoint is not None:
        return DenseNetFER.from_checkpoint(config.checkpoint)
    with torch.random.fork_rng(devices=[]):  # fixed weights without touching the global RNG
        torch.manual_seed(config.seed)
        return DenseNetFER().eval()


@register_stage
class FaceStage(Stage):
    name = "visual"
    feature_sets = (FRAME_SET, MEAN_SET)
    options = VisualOptions
    needs = ("asd",)   # reads the speaker faces the asd stage published

    def __init__(self, config: FaceConfig, device: str = "cpu", fps: float = DEFAULT_FPS,
                 speaker_faces_hash: str | None = None, precision: str = "fp32", preset: str | None = None):
        self.config = config
        self.device = torch.device(device)
        self.precision = precision  # "bf16"/"fp16" autocast on CUDA only
        self.fps = fps
        self.speaker_faces_hash = speaker_faces_hash  # new speaker faces (asd re-run) mean new features
        self.preset = preset  # the asd preset of the faces it crops (their boxes decide the crops)
        self.model = build_model(config).to(self.device).eval()
        self._checkpoint_sha = sha256_of(Path(config.checkpoint))[:16] if config.checkpoint else None

    @classmethod
    def from_config(cls, options: VisualOptions, context: RunContext) -> "FaceStage":
        config = FaceConfig(checkpoint=resolve_checkpoint(context.profile, options.checkpoint),
                            seed=context.profile.seed, mean=options.mean, std=options.std, crop=options.crop,
                            crop_scale=options.crop_scale)
        with open_speaker_faces(context) as faces:  # fail now, clearly, when the asd stage has not run
            speaker_faces_hash, preset = faces.attrs.get("config_hash"), faces.attrs.get("preset", options.preset or "fast")
        return cls(config, context.device, context.media.timing.fps, speaker_faces_hash, context.precision, preset)

    def provenance(self) -> dict:
        c = self.config
        # The checkpoint counts by content (sha256), so moving the file does not invalidate finished work.
        return {"model": "densenet-bc-100-fer", "checkpoint": Path(c.checkpoint).name if c.checkpoint else None,
                "checkpoint_sha256": self._checkpoint_sha,
                "random_seed": None if c.checkpoint else c.seed, "mean": c.mean, "std": c.std,
                "crop": c.crop, "crop_scale": c.crop_scale if c.crop == "square" else None, "fps": self.fps,
                "speaker_faces": self.speaker_faces_hash, "preset": self.preset,
                "precision": self.precision if self.device.type == "cuda" else "fp32"}

    def attrs(self, feature_set: str) -> dict:
        attrs = {"model_id": "densenet-bc-100-fer", "checkpoint": self.config.checkpoint or "",
                 "checkpoint_sha256": self._checkpoint_sha or "", "normalisation_mean": self.config.mean,
                 "normalisation_std": self.config.std, "crop": self.config.crop}
        if self.config.crop == "square":
            attrs["crop_scale"] = self.config.crop_scale
        if feature_set == FRAME_SET:
            attrs["frame_rate"] = self.fps  # rows are the frames (at this rate) where the speaker's face was found
        return attrs

    def process(self, dialogues: list[Dialogue], context: RunContext) -> Iterator[DialogueResult]:
        with open_speaker_faces(context) as faces:
            for dialogue in dialogues:
                try:
                    yield self._dialogue(dialogue, faces, context)
                except (MediaError, OSError, ValueError) as e:
                    yield failed_dialogue(dialogue, f"visual: {e}")

    def _dialogue(self, dialogue: Dialogue, faces: FeatureReader, context: RunContext) -> DialogueResult:
        result = DialogueResult(dialogue.id, features={FRAME_SET: {}, MEAN_SET: {}})
        wanted = {}  # utterance id -> rows with a speaker face, in frame order
        for u in dialogue.utterances:
            rows = faces.get(u.id)
            if rows is None:
                reason = "no speaker_faces entry for this utterance (the asd stage failed for it; see failures.jsonl)"
            else:
                rows = face_rows(rows)
                reason = f"no face of speaker {u.speaker} found in this utterance"
            if rows is None or len(rows) == 0:
                result.failures += [Failure(s, dialogue.id, u.id, reason) for s in self.feature_sets]
            else:
                wanted[u.id] = rows
        if wanted:
            crops = self.handed_over(dialogue, wanted, context) or self.crops(dialogue, wanted, context)
            for utt_id, feats in self.features(crops).items():
                result.features[FRAME_SET][utt_id] = feats
                result.features[MEAN_SET][utt_id] = feats.mean(axis=0)
        return result

    def handed_over(self, dialogue: Dialogue, wanted: dict[str, np.ndarray],
                    context: RunContext) -> dict[str, list[np.ndarray]] | None:
        """The crops the asd stage of this run cut for ``wanted`` (:mod:`m3ed.asd.speaker_crops`), if
        they are exactly what :meth:`crops` would cut; the file is removed once read."""
        path = crops_path(context.store, dialogue.id)
        if not path.exists():
            return None
        try:
            handed = SpeakerCrops.load(path)
        except (OSError, ValueError, KeyError) as e:   # a damaged file: decode instead
            log.warning("dialogue %s: %s unreadable (%s); decoding the video instead", dialogue.id, path, e)
            return None
        finally:
            path.unlink(missing_ok=True)
        return handed.matching(wanted, self.config.crop, self.config.crop_scale)

    def crops(self, dialogue: Dialogue, wanted: dict[str, np.ndarray], context: RunContext) -> dict[str, list[np.ndarray]]:
        """Decode the dialogue once (native size: boxes are in original pixels) and cut every wanted
        face (rows in frame order); utterance id -> gray crops in frame order."""
        by_frame: dict[int, list[tuple[str, np.ndarray]]] = defaultdict(list)
        for utt_id, rows in wanted.items():
            for row in rows:
                by_frame[int(row[COLUMN["frame"]])].append((utt_id, row[BOX]))
        crops: dict[str, list[np.ndarray]] = defaultdict(list)
        span = context.media.locate(dialogue)
        index = 0
        for chunk in context.media.frames(span, fps=self.fps):
            for frame in chunk:
                for utt_id, box in by_frame.pop(index, []):
                    crops[utt_id].append(crop_face(frame, box, self.config.crop, self.config.crop_scale))
                index += 1
            if not by_frame:
                break  # every wanted frame is cut; stop decoding early
        if by_frame:
            missing = sorted(by_frame)
            raise MediaError(f"dialogue {dialogue.id}: speaker faces refer to frames {missing[0]}..{missing[-1]} "
                             f"but the video has only {index} frames at {self.fps} fps (is speaker_faces "
                             f"from another video or timing?)")
        return crops

    @torch.inference_mode()
    def features(self, crops: dict[str, list[np.ndarray]]) -> dict[str, np.ndarray]:
        """Utterance id -> ``[n, 342]``, computed in batches across the dialogue's utterances."""
        order = list(crops)
        faces = np.stack([c for utt_id in order for c in crops[utt_id]])
        out = np.zeros((len(faces), self.model.feature_dim), np.float32)

        def run(rows: list[int]) -> list[np.ndarray]:
            x = preprocess(faces[rows[0]:rows[-1] + 1], self.config.mean, self.config.std).to(self.device)
            # CPU: in cache-sized pieces side by side, same bits (see CPU_PIECE); an accelerator takes the batch whole.
            parts = pieces(len(rows), self.config.cpu_piece) if self.device.type == "cpu" else [range(len(rows))]
            with autocast(self.device, self.precision):
                outputs = side_by_side(lambda part: self.model.forward_features(x[part.start:part.stop]).float().cpu().numpy(),
                                       parts, self.device)
            return [row for output in outputs for row in output]

        for first in range(0, len(faces), self.config.batch_size):
            rows = list(range(first, min(first + self.config.batch_size, len(faces))))
            out[first:first + len(rows)] = np.stack(split_on_oom(run, rows))
        result, offset = {}, 0
        for utt_id in order:
            result[utt_id] = out[offset: offset + len(crops[utt_id])]
            offset += len(crops[utt_id])
        return result

    def close(self) -> None:
        self.model = None  # type: ignore[assignment]



def open_speaker_faces(context: RunContext) -> FeatureReader | PartsReader:
    """The published speaker faces; without them, a shard's own (its asd stage's parts, unpublished
    until ``m3ed merge``)."""
    path = context.store.feature_path(SPEAKER_FACES)
    if path.exists():
        return FeatureReader(path)
    parts = PartsReader(context.store, SPEAKER_FACES) if context.sharded else None
    if not parts:
        raise FileNotFoundError(f"{path}: the visual stage needs the speaker faces found by the asd stage; "
                                f"run the asd stage first (e.g. `m3ed-extract --stages asd,visual ...` with "
                                f"the same output directory)")
    return parts
