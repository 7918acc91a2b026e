"""The thresholds of each step of the asd stage: one frozen dataclass per step.

They live apart from the steps (:mod:`m3ed.asd.detect`, :mod:`m3ed.asd.s3fd`, :mod:`m3ed.asd.shots`,
:mod:`m3ed.asd.track`, :mod:`m3ed.asd.score`, :mod:`m3ed.asd.assign`), which re-export them, so that the
configuration reads without loading torch or OpenCV. Each module's docstring explains its values.

A bad value is refused by its field's name and value (``DetectionParams.every=0: must be >= 1``); the
command line turns these names into its flags (:data:`m3ed.asd.options.FIELD_FLAGS`).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

if TYPE_CHECKING:
    import torch

SCORE_MODES = ("single", "multi")       # ScoreParams.mode
SCORE_FRAMES = ("utterances", "all")    # ScoreParams.frames
RULES = ("authors", "strict")           # AssignParams.rules


@dataclass(frozen=True)
class DetectionParams:
    """MTCNN's schedule and thresholds (:mod:`m3ed.asd.detect`)."""

    every: int = 5                  # detect on every k-th frame (0, k, 2k, ...); the tracker interpolates
    height: int | None = 240        # detection height in pixels (None: native); never upscales
    min_face_size: int = 20         # smallest face MTCNN looks for, pixels at the detection height
    stage_thresholds: tuple[float, float, float] = (0.6, 0.7, 0.7)
    min_probability: float = 0.9    # drop faces below this final probability (TalkNet demo: 0.9)
    batch_size: int | None = None   # frames per MTCNN call (None: 16 on CPU, 128 on CUDA)
    scale_factor: float = 0.709     # MTCNN's image-pyramid step (its default); smaller: fewer levels, faster

    def __post_init__(self):
        if self.every < 1:
            raise ValueError(f"DetectionParams.every={self.every}: must be >= 1 (1 = every frame)")
        if self.height is not None and self.height < 32:
            raise ValueError(f"DetectionParams.height={self.height}: must be at least 32 pixels (or None for native)")
        if self.min_face_size < 1:
            raise ValueError(f"DetectionParams.min_face_size={self.min_face_size}: must be >= 1 pixel")
        if self.batch_size is not None and self.batch_size < 1:
            raise ValueError(f"DetectionParams.batch_size={self.batch_size}: must be >= 1 (or None for the device's "
                             f"default)")
        if not 0.1 <= self.scale_factor < 1:
            raise ValueError(f"DetectionParams.scale_factor={self.scale_factor}: must lie in [0.1, 1)")

    def batch_for(self, device: torch.device) -> int:
        """Frames per MTCNN call: on CPU more frames per call gain little (MTCNN's time goes to
        per-candidate work); on a GPU large batches keep it busy."""
        if self.batch_size is not None:
            return self.batch_size
        return 128 if device.type == "cuda" else 16


@dataclass(frozen=True)
class S3FDParams:
    """S3FD's schedule and thresholds, the TalkNet demo's by default (:mod:`m3ed.asd.s3fd`)."""

    every: int = 1                 # detect on every k-th frame (the authors: every frame)
    scale: float = 0.25            # detection size per original size, both axes (the authors: 0.25)
    min_score: float = 0.9         # keep faces scored above this (the demo's conf_th)
    face_iou: float = 0.1          # final NMS between kept faces, in pixels
    batch_size: int | None = None  # frames gathered per detect call (None: 16); results do not depend on it

    def __post_init__(self):
        if self.every < 1:
            raise ValueError(f"S3FDParams.every={self.every}: must be >= 1 (1 = every frame)")
        if not 0 < self.scale <= 4:
            raise ValueError(f"S3FDParams.scale={self.scale}: must lie in (0, 4] (the authors use 0.25)")
        if not 0 <= self.min_score < 1:
            raise ValueError(f"S3FDParams.min_score={self.min_score}: must lie in [0, 1)")
        if not 0 <= self.face_iou <= 1:
            raise ValueError(f"S3FDParams.face_iou={self.face_iou}: must lie in [0, 1]")
        if self.batch_size is not None and self.batch_size < 1:
            raise ValueError(f"S3FDParams.batch_size={self.batch_size}: must be >= 1 (or None for 16)")


@dataclass(frozen=True)
class ShotParams:
    """Shot-change detection (:mod:`m3ed.asd.shots`)."""

    threshold: float = 0.35      # Bhattacharyya distance above which a frame starts a new shot
    min_shot_frames: int = 10    # no boundary within this many frames of the previous one

    def __post_init__(self):
        if not 0 <= self.threshold <= 1:
            raise ValueError(f"ShotParams.threshold={self.threshold}: must lie in [0, 1] (a Bhattacharyya distance)")
        if self.min_shot_frames < 0:
            raise ValueError(f"ShotParams.min_shot_frames={self.min_shot_frames}: must be >= 0")


@dataclass(frozen=True)
class TrackingParams:
    """Face tracking by box overlap, the TalkNet demo's values (:mod:`m3ed.asd.track`)."""

    iou_threshold: float = 0.5   # demo iouThres: a face continues a track above this IoU
    max_gap: int = 10            # demo numFailedDet: most frames between two detections of a track
    min_track: int = 10          # demo minTrack: keep tracks of more than this many detections (every=1)
    min_face_size: float = 1.0   # demo minFaceSize: mean box side must exceed this (pixels)

    def __post_init__(self):
        if not 0 <= self.iou_threshold < 1:
            raise ValueError(f"TrackingParams.iou_threshold={self.iou_threshold}: must lie in [0, 1)")
        if self.max_gap < 1:
            raise ValueError(f"TrackingParams.max_gap={self.max_gap}: must be >= 1")
        if self.min_track < 0:
            raise ValueError(f"TrackingParams.min_track={self.min_track}: must be >= 0")


@dataclass(frozen=True)
class ScoreParams:
    """ASD scoring (:mod:`m3ed.asd.score`)."""

    mode: str = "single"            # "single" or "multi" (see m3ed.asd.score)
    batch_frames: int = 250         # most video frames per forward pass (all chunks of a batch are equally long)
    frames: str = "utterances"      # "utterances": the track frames inside an utterance (+ context); "all"
    context_frames: int = 25        # single mode: frames scored around each needed run (1 s)
    fused: bool = True              # Light-ASD: folded batch norms, oneDNN convolutions (2.4x faster; rounding differs)
    #: False: a track's last frame is not scored, as in the TalkNet demo: its audio cut of T frames
    #: gives 4T - 1 MFCC rows, trimmed to 4(T - 1), so the video is cut to T - 1 frames.
    score_last_frame: bool = True

    def __post_init__(self):
        if self.mode not in SCORE_MODES:
            raise ValueError(f"ScoreParams.mode={self.mode!r}: choose one of {', '.join(SCORE_MODES)}")
        if self.frames not in SCORE_FRAMES:
            raise ValueError(f"ScoreParams.frames={self.frames!r}: choose one of {', '.join(SCORE_FRAMES)}")
        if self.batch_frames < 1:
            raise ValueError(f"ScoreParams.batch_frames={self.batch_frames}: must be >= 1")
        if self.context_frames < 0:
            raise ValueError(f"ScoreParams.context_frames={self.context_frames}: must be >= 0")


@dataclass(frozen=True)
class AssignParams:
    """Rule set and thresholds of the two-stage assignment (see the module docstring)."""

    #: "authors": their extract_spk_faces.py (every frame with a face is decided); "strict": ours.
    rules: Literal["authors", "strict"] = "authors"
    #: authors: stage 1 takes a face whose demo score (rounded class-1 output) is above this.
    authors_min_score: float = 0.0
    #: authors, case 2.1: mean similarity above which the same face index is kept.
    same_utterance_min_similarity: float = 0.6
    #: authors, case 2.4: seed of the random face (with the utterance id and the frame).
    seed: int = 0

    # The thresholds below are the strict rules' (ours: the paper gives no numbers), except
    # min_stage1_faces, which both rule sets use.
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
    #: A speaker with fewer stage-1 faces (frames) than this is unknown: no stage 2 for them. The
    #: authors' stage 1 takes only detected frames, so with detection on every K-th frame each of
    #: its faces counts K frames: the minimum stays 10 frames (0.4 s) of speech.
    min_stage1_faces: int = 10
    #: The authors' rule: a single face in the frame belongs to the current (known) speaker,
    #: unless its embedding assigns it to another known speaker (stage-2 thresholds, reversed).
    single_face_rule: bool = True
    #: A track is one person and a dialogue's speakers are different people: when stage 1 gives
    #: one track to several speakers (an ASD false positive on a listener, overlapping speech), the
    #: track goes to the speaker with most stage-1 frames in it and the others' stage-1 decisions
    #: on it are withdrawn (on a tie, everyone's). Withdrawn frames may still be decided by stage 2.
    one_speaker_per_track: bool = True
    #: The authors' utterance frames (extract_spk_faces.py, ``transtime2frames``): from the start
    #: frame to the end frame inclusive. False: frames whose time lies in [start, end).
    end_inclusive: bool = False
    #: The authors' overlap rule: a frame inside several utterances is decided only for the one their
    #: frame -> utterance map keeps, the last written (speakers in order of first appearance, each
    #: one's utterances in order); the others leave it undecided. False: decided for each utterance.
    one_utterance_per_frame: bool = False

    def __post_init__(self) -> None:
        if self.rules not in RULES:
            raise ValueError(f"AssignParams.rules={self.rules!r}: choose one of {', '.join(RULES)}")
        if self.similarity not in ("mean", "max"):
            raise ValueError(f"AssignParams.similarity={self.similarity!r}: choose 'mean' or 'max'")
        if not 0.0 <= self.stage1_min_prob <= 1.0:
            raise ValueError(f"AssignParams.stage1_min_prob={self.stage1_min_prob}: must lie in [0, 1]")
        if self.min_stage1_faces < 0:
            raise ValueError(f"AssignParams.min_stage1_faces={self.min_stage1_faces}: must be >= 0")
