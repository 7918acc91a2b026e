"""How the asd stage is configured: :class:`AsdConfig` for the library, :class:`AsdOptions` for a run.

- :class:`AsdConfig` holds every parameter of the stage, resolved: the models, the chosen face
  detector and each step's thresholds (:mod:`m3ed.asd.params`). :class:`m3ed.asd.pipeline.AsdPipeline`
  runs it.
- :class:`AsdOptions` is the ``asd`` section of :class:`m3ed.config.ExtractConfig`: the flat fields
  the command line shows as flags (``--detect-every``...), and the same sections as :class:`AsdConfig`
  (``detection``, ``s3fd``, ``shots``, ``tracking``, ``scoring``, ``assign``) for every threshold
  the flags do not reach. A flat field left at ``None`` takes its section's value; given, it wins::

      config.asd.assign = AssignParams(stage1_min_prob=0.8)   # from Python: reaches the run
      config.asd.detect_every = 3                              # what --detect-every 3 sets

A preset (``--preset``, :mod:`m3ed.asd.presets`) fills what the options leave unset: the flat
fields left at ``None`` and the section fields left at their defaults; ``fast`` (default) changes nothing.

Library errors name the field they refuse (``DetectionParams.every=0: must be >= 1``);
:func:`with_flags` turns those names into the command line's flags with :data:`FIELD_FLAGS`.
This module loads neither torch nor OpenCV, so that the command line starts fast.
"""
from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from ..errors import ConfigurationError
from ..options import option
from .params import SCORE_FRAMES, SCORE_MODES, RULES, AssignParams, DetectionParams, S3FDParams, ScoreParams, \
    ShotParams, TrackingParams
from .presets import PRESETS, get_preset

if TYPE_CHECKING:
    from ..profiles import Profile

VIDEO_FPS = 25.0   # the ASD models' video rate: 4 MFCC frames (100 per second) per video frame
ASD_MODELS = ("talknet", "light-asd")
DETECTORS = ("mtcnn", "s3fd")                                     # AsdConfig.detector
EMBEDDERS = ("auto", "senet50-vggface2", "inception-resnet-v1")   # AsdConfig.embedder (m3ed.asd.embed)
EMBED_FRAMES = ("track", "utterances")                            # AsdConfig.embed_frames
CACHE_MB = 512     # decoded frames held until their shot is tracked (~185 frames of 720p, 740 of 360p)

#: The command line's flag of each configuration field it sets (``m3ed-extract``), for its messages.
FIELD_FLAGS = {
    "AsdConfig.model": "--asd-model",
    "AsdConfig.checkpoint": "--asd-checkpoint",
    "AsdConfig.detector": "--detector",
    "AsdConfig.detector_checkpoint": "--detector-checkpoint",
    "DetectionParams.every": "--detect-every",
    "S3FDParams.every": "--detect-every",
    "DetectionParams.height": "--detect-height",
    "DetectionParams.min_face_size": "--detect-min-face",
    "DetectionParams.scale_factor": "--detect-scale-factor",
    "S3FDParams.scale": "--detect-scale",
    "ScoreParams.mode": "--asd-mode",
    "ScoreParams.frames": "--asd-frames",
    "ScoreParams.fused": "--asd-unfused",
    "AsdConfig.embed_every": "--embed-every",
    "AsdConfig.embed_frames": "--embed-frames",
    "AsdConfig.embedder": "--face-embedder",
    "AsdConfig.embedder_checkpoint": "--face-embedder-checkpoint",
    "AssignParams.rules": "--assign-rules",
    "AsdConfig.fps": "--fps",
    "AsdConfig.preset": "--preset",
}


def with_flags(message: str, flags: dict[str, str] = FIELD_FLAGS) -> str:
    """``message`` with each field name of ``flags`` replaced by its flag: ``DetectionParams.every=0``
    becomes ``--detect-every 0``, ``AsdConfig.detector='mtcnn'`` becomes ``--detector mtcnn``."""
    names = "|".join(re.escape(name) for name in sorted(flags, key=len, reverse=True))

    def flag(match: re.Match) -> str:
        value = match.group(2) if match.group(2) is not None else match.group(3)
        return flags[match.group(1)] + ("" if value is None else f" {value}")

    return re.sub(rf"\b({names})\b(?:='([^']*)'|=([^\s:;,]+))?", flag, message)


@dataclass(frozen=True)
class AsdConfig:
    """Everything that determines the asd stage's output besides the corpus and the weights."""

    model: str = "talknet"
    checkpoint: str | None = None
    detector: str = "mtcnn"                  # see DETECTORS; its settings: detection (MTCNN) or s3fd
    detection: DetectionParams = DetectionParams()
    s3fd: S3FDParams = S3FDParams()
    detector_checkpoint: str | None = None   # S3FD's sfd_face.pth (default: m3ed.asd.s3fd.s3fd_weights())
    shots: ShotParams = ShotParams()
    tracking: TrackingParams = TrackingParams()
    scoring: ScoreParams = ScoreParams()
    assign: AssignParams = AssignParams()
    embed_every: int = 25  # embed every 25th frame of a track (1 per second); assignment fills the rest
    embedder: str = "auto"             # see EMBEDDERS
    embedder_checkpoint: str | None = None
    fps: float = VIDEO_FPS
    cache_mb: int = CACHE_MB           # decoded frames held for cropping (memory bound; not an output setting)
    #: "track": embed every ``embed_every``-th frame of every track; "utterances": only those of them
    #: that assignment reads, the nearest embedded position of some track frame inside an utterance
    #: (the same positions are read, so only the batches, and with them the rounding, change)
    embed_frames: str = "utterances"
    preset: str = "fast"               # the preset these settings were resolved under (recorded, not read)

    def __post_init__(self):
        if self.model not in ASD_MODELS:
            raise ValueError(f"AsdConfig.model={self.model!r}: choose one of {', '.join(ASD_MODELS)}")
        if self.detector not in DETECTORS:
            raise ValueError(f"AsdConfig.detector={self.detector!r}: choose one of {', '.join(DETECTORS)}")
        every, name = self.detector_params.every, f"{type(self.detector_params).__name__}.every"
        if every > self.tracking.max_gap:
            raise ValueError(f"{name}={every}: tracks tolerate gaps of at most TrackingParams.max_gap="
                             f"{self.tracking.max_gap} frames; use a value <= {self.tracking.max_gap}")
        if self.embed_every < 1:
            raise ValueError(f"AsdConfig.embed_every={self.embed_every}: must be >= 1")
        if self.embedder not in EMBEDDERS:
            raise ValueError(f"AsdConfig.embedder={self.embedder!r}: choose one of {', '.join(EMBEDDERS)}")
        if self.embed_frames not in EMBED_FRAMES:
            raise ValueError(f"AsdConfig.embed_frames={self.embed_frames!r}: choose one of {', '.join(EMBED_FRAMES)}")
        if self.preset not in PRESETS:
            raise ValueError(f"AsdConfig.preset={self.preset!r}: choose one of {', '.join(PRESETS)}")
        if self.fps != VIDEO_FPS:
            raise ValueError(f"AsdConfig.fps={self.fps}: the ASD models need {VIDEO_FPS:g} fps video "
                             f"(4 MFCC frames per video frame)")

    @property
    def detector_params(self) -> DetectionParams | S3FDParams:
        """The active detector's settings (``every`` is its schedule)."""
        return self.s3fd if self.detector == "s3fd" else self.detection


@dataclass
class AsdOptions:
    """The asd stage's options, as a run is given them (``ExtractConfig.asd``): the command line's
    flat fields and the full sections; :meth:`config` resolves them into an :class:`AsdConfig`."""

    model: str | None = option(None, "ASD scorer (default: the profile's, talknet)", choices=ASD_MODELS)
    checkpoint: str | None = option(None, "ASD checkpoint file or URL (default: light-asd uses the checkpoint shipped "
                                          "in the package in every profile; talknet its released checkpoint for the "
                                          "paper profile, random weights for paper-random/tiny)", metavar="PATH")
    detector: str | None = option(None, "face detector: mtcnn (facenet-pytorch's, weights in its wheel) or s3fd "
                                        "(the authors', TalkNet's demo; on every frame unless --detect-every is "
                                        f"given) (default: {AsdConfig.detector}; s3fd under --preset authors)",
                                  flag="--detector", choices=DETECTORS)
    detector_checkpoint: str | None = option(None, "S3FD weights, TalkNet-ASD's sfd_face.pth (default: "
                                                   "$TORCH_HOME/checkpoints/sfd_face.pth; random weights in the "
                                                   "paper-random and tiny profiles)", flag="--detector-checkpoint",
                                             metavar="FILE")
    detect_every: int | None = option(None, "run the face detector on every K-th frame; tracks interpolate between "
                                            f"(default: {DetectionParams.every} with mtcnn, {S3FDParams.every} with "
                                            "s3fd)", flag="--detect-every", metavar="K")
    detect_height: int | None = option(None, "MTCNN: frame height for face detection (0: native); boxes are in "
                                             f"native pixels (default: {DetectionParams.height})",
                                       flag="--detect-height", metavar="H")
    detect_min_face: int | None = option(None, "MTCNN: smallest face it looks for, pixels at the detection height "
                                               f"(default: {DetectionParams.min_face_size})", flag="--detect-min-face",
                                         metavar="PX")
    detect_scale_factor: float | None = option(None, "MTCNN's image-pyramid step (default: "
                                               f"{DetectionParams.scale_factor}, MTCNN's own; 0.5 detects in about "
                                               "three quarters of the time)", flag="--detect-scale-factor", metavar="F")
    detect_scale: float | None = option(None, "S3FD: detection size per frame size (default: "
                                              f"{S3FDParams.scale}, the authors')", flag="--detect-scale", metavar="F")
    mode: str | None = option(None, "single: one pass per track; multi: the reference's average over 1-6 s "
                                    f"chunks (6x cost) (default: {ScoreParams.mode}; multi under --preset authors)",
                              choices=SCORE_MODES)
    frames: str | None = option(None, "score the track frames inside utterances (what assignment reads; single "
                                      f"mode adds {ScoreParams.context_frames} frames of context around them), "
                                      f"or all track frames (default: {ScoreParams.frames}; all under --preset "
                                      "authors)", choices=SCORE_FRAMES)
    fused: bool = option(True, "score Light-ASD with its convolutions and batch norms as trained, "
                               "not folded (2.4x slower on CPU; scores equal up to rounding)",
                         flag="--asd-unfused")
    embed_every: int | None = option(None, "embed every K-th frame of each face track for speaker matching (the "
                                           f"authors: 1; default: {AsdConfig.embed_every}; 1 under --preset authors)",
                                     flag="--embed-every", metavar="K")
    embed_frames: str = option(AsdConfig.embed_frames, "utterances: embed only the positions assignment reads (track "
                               "frames inside utterances); track: every K-th frame of every track (default: "
                               "%(default)s)", flag="--embed-frames", choices=EMBED_FRAMES)
    face_embedder: str | None = option(None, "identity embeddings for stage 2: senet50-vggface2 (the authors'), "
                                             "inception-resnet-v1 (facenet-pytorch), auto: SENet-50 when its weights "
                                             f"are there, else InceptionResnetV1 (default: {AsdConfig.embedder}; "
                                             "senet50-vggface2 under --preset authors)", flag="--face-embedder",
                                       choices=EMBEDDERS)
    face_embedder_checkpoint: str | None = option(None, "SENet-50 weights, VGGFace2-pytorch's "
                                                        "senet50_scratch_weight.pkl (default: "
                                                        "$TORCH_HOME/checkpoints/senet50_scratch_weight.pkl)",
                                                  flag="--face-embedder-checkpoint", metavar="FILE")
    assign_rules: str | None = option(None, "authors: their extract_spk_faces.py (every frame with a face gets "
                                            "one; SENet-50 input with their uint8 cast); strict: ours, decide "
                                            "only on ASD probability >= 0.9 or a clear embedding match, else "
                                            f"leave the frame undecided (default: {AssignParams.rules})",
                                      flag="--assign-rules", choices=RULES)
    # The full sections (no flags): every threshold, from Python or run.json.
    detection: DetectionParams = field(default_factory=DetectionParams)
    s3fd: S3FDParams = field(default_factory=S3FDParams)
    shots: ShotParams = field(default_factory=ShotParams)
    tracking: TrackingParams = field(default_factory=TrackingParams)
    scoring: ScoreParams = field(default_factory=ScoreParams)
    assign: AssignParams = field(default_factory=AssignParams)
    cache_mb: int = CACHE_MB
    #: The run's ``--preset`` (:class:`m3ed.config.RunOptions`), handed over by
    #: :meth:`m3ed.config.ExtractConfig.stage_options`; None: ``fast``.
    preset: str | None = None

    def config(self, profile: Profile, fps: float = VIDEO_FPS) -> AsdConfig:
        """The :class:`AsdConfig` of these options, the profile's model where none is given; a bad
        value is a :class:`m3ed.errors.ConfigurationError` that names its flag."""
        try:
            return self._config(profile, fps)
        except ValueError as e:
            raise ConfigurationError(with_flags(str(e))) from e

    def _config(self, profile: Profile, fps: float) -> AsdConfig:
        preset = get_preset(self.preset)

        def flat(name: str, given):
            """A flat option: given, the preset's value, else AsdConfig's default."""
            if given is not None:
                return given
            return preset.flat.get(name, AsdConfig.__dataclass_fields__[name].default)

        detector = flat("detector", self.detector)
        mtcnn = detector == "mtcnn"
        for name, value, applies in (("DetectionParams.height", self.detect_height, mtcnn),
                                     ("DetectionParams.min_face_size", self.detect_min_face, mtcnn),
                                     ("DetectionParams.scale_factor", self.detect_scale_factor, mtcnn),
                                     ("S3FDParams.scale", self.detect_scale, not mtcnn)):
            if value is not None and not applies:
                raise ValueError(f"{name}={value}: a setting of the other face detector than "
                                 f"AsdConfig.detector='{detector}'")
        detection = _given(preset.section("detection", self.detection), every=self.detect_every if mtcnn else None,
                           min_face_size=self.detect_min_face, scale_factor=self.detect_scale_factor)
        if self.detect_height is not None:
            detection = dataclasses.replace(detection, height=self.detect_height or None)   # 0: native
        scoring = _given(preset.section("scoring", self.scoring), mode=self.mode, frames=self.frames)
        if not self.fused:
            scoring = dataclasses.replace(scoring, fused=False)
        return AsdConfig(
            model=self.model or profile.asd_model,
            checkpoint=self.checkpoint or profile.asd_checkpoint,
            detector=detector,
            detection=detection,
            s3fd=_given(preset.section("s3fd", self.s3fd), every=None if mtcnn else self.detect_every,
                        scale=self.detect_scale),
            detector_checkpoint=self.detector_checkpoint,
            shots=preset.section("shots", self.shots),
            tracking=preset.section("tracking", self.tracking),
            scoring=scoring,
            assign=_given(preset.section("assign", self.assign), rules=self.assign_rules),
            embed_every=flat("embed_every", self.embed_every),
            embed_frames=self.embed_frames,
            embedder=flat("embedder", self.face_embedder),
            embedder_checkpoint=self.face_embedder_checkpoint,
            fps=fps,
            cache_mb=self.cache_mb,
            preset=preset.name,
        )


def _given(params, **flat):
    """``params`` with the fields the command line gave (``None``: not given, the section's value)."""
    given = {name: value for name, value in flat.items() if value is not None}
    return dataclasses.replace(params, **given) if given else params
