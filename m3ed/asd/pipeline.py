"""The asd stage: who is speaking, frame by frame (paper appendix A.1, DESIGN §6).

Per dialogue, in named steps:

    locate   the dialogue's video span; decode its audio once (16 kHz)
    decode   stream the frames once (25 fps, native size): shot changes + MTCNN on every k-th frame;
             the frames wait in a bounded cache (``cache_mb``) until their shot has ended
    track    IoU tracks within each ended shot, gaps interpolated (m3ed.asd.track)
    crop     from the cache: ASD crops (112x112 gray) and embedding crops (160x160 RGB, every
             ``embed_every``-th frame of each track) (m3ed.asd.crop); a shot longer than the
             cache is cropped in a second decode, the only case that decodes twice
    score    TalkNet / Light-ASD speaking probability of the track frames inside utterances
             (plus context; m3ed.asd.score)
    embed    identity embeddings of the embedding crops: SENet-50 or InceptionResnetV1 (m3ed.asd.embed)
    assign   the two-stage speaker assignment, authors' or strict rules (m3ed.asd.assign)

Output: feature set ``speaker_faces``, per utterance float32 ``[T_utt_frames, 9]`` with columns
:data:`m3ed.asd.assign.COLUMNS` (boxes in the video's native pixels). Besides, the stage writes
``OUT/asd/{dialogue}.json`` (atomically): every track of the dialogue with its frames, boxes and
speaking probabilities, and the shot boundaries, for ``m3ed viz-asd`` and for inspection.
"""
from __future__ import annotations

import json
import logging
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Iterator
from urllib.parse import quote

import numpy as np
import torch

from ..corpus import Dialogue
from ..device import autocast, release_memory
from ..media import FrameCache, MediaError
from ..options import option
from ..stage import DialogueResult, RunContext, Stage, failed_dialogue, register_stage
from ..store import Failure, atomic_write_text
from .assign import COLUMNS, RULE_NAMES, RULES, AssignParams, assign_speakers, utterance_frames
from .crop import TrackCrops
from .detect import DetectionParams, Detections, FaceDetector
from .embed import EMBEDDERS, FaceEmbedder
from .score import (ASD_MODELS, SCORE_FRAMES, SCORE_MODES, VIDEO_FPS, ScoreParams, build_scorer,
                    checkpoint_provenance, dialogue_mfcc, track_scores)
from .shots import ShotDetector, ShotParams
from .track import Track, TrackingParams, number_tracks, track_shots

log = logging.getLogger(__name__)

FEATURE_SET = "speaker_faces"
CHUNK_FRAMES = 64       # frames decoded at a time (memory bound)
CACHE_MB = 512          # decoded frames held until their shot is tracked (~185 frames of 720p, 740 of 360p)
TRACKS_DIR = "asd"      # OUT/asd/{dialogue}.json
EMBED_FRAMES = ("track", "utterances")   # AsdConfig.embed_frames


@dataclass(frozen=True)
class AsdConfig:
    """Everything that determines the asd stage's output besides the corpus and the weights."""

    model: str = "talknet"
    checkpoint: str | None = None
    detection: DetectionParams = DetectionParams()
    shots: ShotParams = ShotParams()
    tracking: TrackingParams = TrackingParams()
    scoring: ScoreParams = ScoreParams()
    assign: AssignParams = AssignParams()
    embed_every: int = 25  # embed every 25th frame of a track (1 per second); assignment fills the rest
    embedder: str = "auto"             # see m3ed.asd.embed.EMBEDDERS
    embedder_checkpoint: str | None = None
    fps: float = VIDEO_FPS
    cache_mb: int = CACHE_MB           # decoded frames held for cropping (memory bound; not an output setting)
    #: "track": embed every ``embed_every``-th frame of every track; "utterances": only those of them
    #: that assignment reads, the nearest embedded position of some track frame inside an utterance
    #: (the same positions are read, so only the batches, and with them the rounding, change)
    embed_frames: str = "utterances"

    def __post_init__(self):
        if self.detection.every > self.tracking.max_gap:
            raise ValueError(f"--detect-every {self.detection.every}: tracks tolerate gaps of at most "
                             f"{self.tracking.max_gap} frames; use a value <= {self.tracking.max_gap}")
        if self.embed_every < 1:
            raise ValueError(f"embed_every={self.embed_every}: must be >= 1")
        if self.embed_frames not in EMBED_FRAMES:
            raise ValueError(f"embed_frames={self.embed_frames!r}: choose one of {', '.join(EMBED_FRAMES)}")


@dataclass
class DialogueFaces:
    """Every intermediate result of one dialogue (what ``OUT/asd/{dialogue}.json`` holds)."""

    dialogue_id: str
    frame_count: int
    frame_size: tuple[int, int]             # (height, width) of the video
    shots: np.ndarray
    tracks: list[Track]
    scores: list[np.ndarray] = field(default_factory=list)
    demo_scores: list[np.ndarray] = field(default_factory=list)   # the ASD demo's rounded class-1 score

    def to_json(self) -> str:
        return json.dumps({
            "dialogue_id": self.dialogue_id, "fps": VIDEO_FPS, "frame_count": self.frame_count,
            "frame_height": self.frame_size[0], "frame_width": self.frame_size[1],
            "shots": self.shots.tolist(),
            "tracks": [{**t.to_dict(), "asd_prob": [None if np.isnan(p) else round(float(p), 4) for p in s]}
                       for t, s in zip(self.tracks, self.scores)],
        }, ensure_ascii=False)


def tracks_path(out_dir: str | Path, dialogue_id: str) -> Path:
    return Path(out_dir) / TRACKS_DIR / f"{quote(dialogue_id, safe='')}.json"


def read_dialogue_faces(out_dir: str | Path, dialogue_id: str) -> dict:
    """The JSON record the asd stage wrote for a dialogue (tracks, scores, shots)."""
    path = tracks_path(out_dir, dialogue_id)
    if not path.exists():
        raise FileNotFoundError(f"{path}: no ASD tracks for dialogue {dialogue_id}; run the asd stage "
                                f"(m3ed-extract --stages asd --out {out_dir}) first")
    return json.loads(path.read_text(encoding="utf-8"))


class AsdPipeline:
    """The models and thresholds of ASD; :meth:`run` does one dialogue. The device is given once."""

    def __init__(self, config: AsdConfig, profile, device: str | torch.device = "cpu", precision: str = "fp32"):
        self.config = config
        self.device = torch.device(device)
        self.precision = precision   # bf16/fp16 autocast of the ASD model and the embedder, on CUDA only
        self.detector = FaceDetector(config.detection, self.device)
        self.scorer = build_scorer(profile, self.device, config.model, config.checkpoint)
        self.embedder = FaceEmbedder(profile, str(self.device), model=config.embedder,
                                     checkpoint=config.embedder_checkpoint,
                                     authors_cast=config.assign.rules == "authors")

    def run(self, dialogue: Dialogue, media) -> tuple[DialogueFaces, dict[str, np.ndarray]]:
        span = media.locate(dialogue)
        audio = media.audio(span)
        faces, crops = self.find_faces(dialogue.id, lambda: media.frames(span, fps=self.config.fps, chunk=CHUNK_FRAMES))
        # Each step's buffers are freed by its end, but the C heap keeps them and the next step's
        # land elsewhere; handing them back lowers a long dialogue's peak (9.8 min: 5.4 -> 4.1 GB).
        release_memory()
        inside = self.utterance_rows(dialogue, faces.tracks)   # what assignment reads: scored and embedded
        with autocast(self.device, self.precision):
            needed = None if self.config.scoring.frames == "all" else inside   # as needed_frames
            faces.scores, faces.demo_scores = self.score(faces.tracks, crops, audio, needed)
            release_memory()
            embeddings = self.embed(faces.tracks, crops, inside if self.config.embed_frames == "utterances" else None)
        speaker_faces = assign_speakers(dialogue, faces.tracks, faces.scores, embeddings, self.config.fps,
                                        self.config.assign, stage1_scores=faces.demo_scores)
        return faces, speaker_faces

    def find_faces(self, dialogue_id: str, decode) -> tuple[DialogueFaces, TrackCrops]:
        """Shots, detections, tracks and crops from one decode (``decode()`` gives the frame chunks).

        Frames wait in a :class:`m3ed.media.FrameCache` until their shot has ended (shot boundaries
        never move once seen); then the shot is tracked and cropped, and its frames are dropped. A
        shot that outgrows the cache loses its frames and is cropped in a second decode at the end.
        The tracks equal :func:`m3ed.asd.track.track_faces` over the whole dialogue (tested).
        """
        shots, detections = ShotDetector(self.config.shots), Detections(self.config.detection.every)
        cache = FrameCache(self.config.cache_mb * 2 ** 20)
        tracks: list[Track] = []
        parts: list[TrackCrops] = []
        late: list[Track] = []    # tracks whose frames left the cache: cropped in a second decode
        tracked = 0               # shots tracked so far

        def settle(final: bool) -> None:
            nonlocal tracked
            boundaries = shots.boundaries()
            stop = len(boundaries) if final else len(boundaries) - 1   # the last shot may go on
            if stop <= tracked:
                return
            new = track_shots(detections, boundaries, tracked, stop, self.config.tracking)
            ready = [t for t in new if t.first >= cache.first]
            late.extend(t for t in new if t.first < cache.first)
            parts.append(self._crops_from(ready, cache))
            tracks.extend(new)
            tracked = stop
            cache.drop_before(int(boundaries[stop]) if stop < len(boundaries) else cache.end)

        chunks = decode()
        for chunk in chunks:
            shots.update(chunk)
            detections.add_chunk(self.detector, chunk)
            cache.add(chunk)
            if cache.over_limit:
                settle(final=False)
                if cache.over_limit:   # one shot longer than the cache
                    cache.drop_before(cache.end)
        if detections.frame_count == 0:
            raise MediaError(f"dialogue {dialogue_id}: no video frames decoded")
        settle(final=True)
        if late:
            log.info("dialogue %s: %d track(s) in shots longer than the frame cache (%d MB): decoding again",
                     dialogue_id, len(late), self.config.cache_mb)
            parts.append(self.crop(late, decode()))
        tracks = number_tracks(tracks)
        faces = DialogueFaces(dialogue_id, detections.frame_count, tuple(detections.frame_size), shots.boundaries(), tracks)
        return faces, TrackCrops.merge(parts, tracks)

    def _crops_from(self, tracks: list[Track], cache: FrameCache) -> TrackCrops:
        crops = self._new_crops(tracks)
        if tracks:
            last = max(t.last for t in tracks)
            for first, frames in cache.chunks():
                if first > last:
                    break
                crops.add_chunk(frames, first=first)
            crops.check_complete()
        return crops

    def _new_crops(self, tracks: list[Track]) -> TrackCrops:
        return TrackCrops(tracks, self.config.embed_every, embed_size=self.embedder.input_size,
                          embed_box=self.embedder.crop_box)

    def needed_frames(self, dialogue: Dialogue, tracks: list[Track]) -> list[np.ndarray] | None:
        """Per track, the frames whose scores assignment reads (inside an utterance); None: all."""
        if self.config.scoring.frames == "all":
            return None
        return self.utterance_rows(dialogue, tracks)

    def utterance_rows(self, dialogue: Dialogue, tracks: list[Track]) -> list[np.ndarray]:
        """Per track, a boolean mask of its frames inside some utterance (all that assignment reads)."""
        frames = np.zeros(max((t.last + 1 for t in tracks), default=0), bool)
        for u in dialogue.utterances:
            inside = utterance_frames(u, self.config.fps)
            frames[inside[inside < len(frames)]] = True
        return [frames[t.first:t.last + 1] for t in tracks]

    def crop(self, tracks: list[Track], chunks) -> TrackCrops:
        """ASD crops and embedding crops of ``tracks`` from a stream of frame chunks from frame 0."""
        crops = self._new_crops(tracks)
        last = max((t.last for t in tracks), default=-1)
        if last >= 0:
            for chunk in chunks:
                crops.add_chunk(chunk)
                if crops._next > last:
                    break
        if hasattr(chunks, "close"):
            chunks.close()   # stops the decoder
        crops.check_complete()
        return crops

    def score(self, tracks: list[Track], crops: TrackCrops, audio: np.ndarray,
              needed: list[np.ndarray] | None = None) -> tuple[list[np.ndarray], list[np.ndarray]]:
        """Per track: speaking probabilities and the demo's scores (see :func:`m3ed.asd.score.track_scores`)."""
        if not tracks:
            return [], []
        return track_scores(self.scorer, dialogue_mfcc(audio), tracks, crops.asd, self.config.scoring, needed)

    def embed(self, tracks: list[Track], crops: TrackCrops, read: list[np.ndarray] | None = None) -> list[np.ndarray]:
        """Per track ``[len, dim]``: embeddings at the embedded positions, NaN elsewhere.

        ``read``: per track a boolean mask of the rows assignment reads; then only the embedded
        positions nearest to those rows are embedded (:func:`read_positions`), which are the
        rows assignment's nearest-row fill takes for them."""
        out = [np.full((len(t), self.embedder.dim), np.nan, np.float32) for t in tracks]
        if not tracks:
            return out
        if read is None:
            chosen = [np.arange(len(p)) for p in crops.face_positions]
        else:
            chosen = [read_positions(p, mask) for p, mask in zip(crops.face_positions, read)]
        faces = [f[c] for f, c in zip(crops.faces, chosen)]
        if not sum(len(f) for f in faces):
            return out
        vectors = self.embedder.embed(np.concatenate(faces))
        offset = 0
        for rows, positions, c in zip(out, crops.face_positions, chosen):
            rows[positions[c]] = vectors[offset:offset + len(c)]
            offset += len(c)
        return out

    def close(self) -> None:
        self.detector = self.scorer = self.embedder = None


@dataclass
class AsdOptions:
    """The asd stage's options, as a user gives them (``ExtractConfig.asd``); :class:`AsdConfig`,
    which they resolve into, holds every parameter (shots, tracking...) for library use."""

    model: str | None = option(None, "ASD scorer (default: the profile's, talknet)", choices=ASD_MODELS)
    checkpoint: str | None = option(None, "ASD checkpoint file or URL (default: light-asd uses the checkpoint shipped "
                                          "in the package in every profile; talknet its released checkpoint for the "
                                          "paper profile, random weights for paper-random/tiny)", metavar="PATH")
    detect_every: int = option(DetectionParams.every, "run the face detector on every K-th frame; tracks interpolate "
                                                      "between (default: %(default)s)", flag="--detect-every",
                               metavar="K")
    detect_height: int = option(DetectionParams.height, "frame height for face detection (0: native); boxes are in "
                                                        "native pixels (default: %(default)s)", flag="--detect-height",
                                metavar="H")
    detect_min_face: int = option(DetectionParams.min_face_size, "smallest face MTCNN looks for, pixels at the "
                                  "detection height (default: %(default)s)", flag="--detect-min-face", metavar="PX")
    detect_scale_factor: float = option(DetectionParams.scale_factor, "MTCNN's image-pyramid step (default: "
                                        "%(default)s, MTCNN's own; 0.5 detects in about three quarters of the time)",
                                        flag="--detect-scale-factor", metavar="F")
    mode: str = option(ScoreParams.mode, "single: one pass per track; multi: the reference's average over 1-6 s "
                                         "chunks (6x cost)", choices=SCORE_MODES)
    frames: str = option(ScoreParams.frames, "score the track frames inside utterances (what assignment reads; single "
                                             f"mode adds {ScoreParams.context_frames} frames of context around them), "
                                             "or all track frames", choices=SCORE_FRAMES)
    embed_every: int = option(AsdConfig.embed_every, "embed every K-th frame of each face track for speaker matching "
                                                     "(the authors: 1; default: %(default)s)", flag="--embed-every",
                              metavar="K")
    embed_frames: str = option(AsdConfig.embed_frames, "utterances: embed only the positions assignment reads (track "
                               "frames inside utterances); track: every K-th frame of every track (default: "
                               "%(default)s)", flag="--embed-frames", choices=EMBED_FRAMES)
    fused: bool = option(ScoreParams.fused, "score Light-ASD with its convolutions and batch norms as trained, "
                                            "not folded (2.4x slower on CPU; scores equal up to rounding)",
                         flag="--asd-unfused")
    face_embedder: str = option(AsdConfig.embedder, "identity embeddings for stage 2: senet50-vggface2 (the authors'), "
                                                    "inception-resnet-v1 (facenet-pytorch), auto: SENet-50 when its "
                                                    "weights are there, else InceptionResnetV1", flag="--face-embedder",
                                choices=EMBEDDERS)
    face_embedder_checkpoint: str | None = option(None, "SENet-50 weights, VGGFace2-pytorch's "
                                                        "senet50_scratch_weight.pkl (default: "
                                                        "$TORCH_HOME/checkpoints/senet50_scratch_weight.pkl)",
                                                  flag="--face-embedder-checkpoint", metavar="FILE")
    assign_rules: str = option(AssignParams.rules, "authors: their extract_spk_faces.py (every frame with a face gets "
                                                   "one; SENet-50 input with their uint8 cast); strict: ours, decide "
                                                   "only on ASD probability >= 0.9 or a clear embedding match, else "
                                                   "leave the frame undecided", flag="--assign-rules", choices=RULES)


def read_positions(positions: np.ndarray, read: np.ndarray) -> np.ndarray:
    """Indices into ``positions`` (a track's embedded rows, ascending) of the nearest embedded row
    of every row in ``read`` (boolean mask over the track's rows), nearest as
    :func:`m3ed.asd.assign._fill_embeddings` picks it (ties to the earlier row). A subset that keeps
    these gives every read row the same nearest row as the full set."""
    rows = np.flatnonzero(np.asarray(read, bool))
    if len(positions) == 0 or len(rows) == 0:
        return np.zeros(0, np.int64)
    pos = np.clip(np.searchsorted(positions, rows), 0, len(positions) - 1)
    before = np.clip(pos - 1, 0, len(positions) - 1)
    nearest = np.where(np.abs(rows - positions[before]) <= np.abs(positions[pos] - rows), before, pos)
    return np.unique(nearest)


@register_stage
class AsdStage(Stage):
    name = "asd"
    feature_sets = (FEATURE_SET,)
    options = AsdOptions

    def __init__(self, config: AsdConfig, profile, device: str = "cpu", out_dir: str | Path | None = None,
                 precision: str = "fp32"):
        self.config = config
        self.profile = profile
        self.out_dir = Path(out_dir) if out_dir else None
        self.precision = precision
        self.pipeline = AsdPipeline(config, profile, device, precision)
        embedder = self.pipeline.embedder   # recorded now: close() releases the models
        self.embedder_provenance = {"face_embedder": embedder.name, "face_embedder_weights": embedder.source,
                                    "face_embedder_authors_cast": embedder.authors_cast}

    @classmethod
    def from_config(cls, options: AsdOptions, context: RunContext) -> "AsdStage":
        config = AsdConfig(
            model=options.model or context.profile.asd_model,
            checkpoint=options.checkpoint or context.profile.asd_checkpoint,
            detection=DetectionParams(every=options.detect_every, height=options.detect_height or None,
                                      min_face_size=options.detect_min_face, scale_factor=options.detect_scale_factor),
            scoring=ScoreParams(mode=options.mode, frames=options.frames, fused=options.fused),
            embed_every=options.embed_every,
            embed_frames=options.embed_frames,
            embedder=options.face_embedder,
            embedder_checkpoint=options.face_embedder_checkpoint,
            assign=AssignParams(rules=options.assign_rules),
            fps=context.media.timing.fps,
        )
        if config.fps != VIDEO_FPS:
            raise ValueError(f"the ASD models need 25 fps video (4 MFCC frames per frame); --fps is {config.fps}")
        return cls(config, context.profile, context.device, context.store.root, precision=context.precision)

    def provenance(self) -> dict:
        c = self.config
        return {"detector": "facenet-pytorch-mtcnn", "asd_model": c.model,
                **checkpoint_provenance(self.profile, c.model, c.checkpoint),
                **self.embedder_provenance,
                "detection": asdict(c.detection), "shots": asdict(c.shots), "tracking": asdict(c.tracking),
                "scoring": asdict(c.scoring), "assign": asdict(c.assign), "embed_every": c.embed_every,
                "embed_frames": c.embed_frames, "fps": c.fps,
                **({"precision": self.precision} if self.precision != "fp32" else {})}

    def attrs(self, feature_set: str) -> dict:
        return {"columns": list(COLUMNS), "frame_rate": self.config.fps, "box_units": "native video pixels",
                "asd_model": self.config.model, "assign_rules": self.config.assign.rules,
                "stage_codes": ", ".join(f"{code} {name}" for code, name in RULE_NAMES.items())}

    def process(self, dialogues: list[Dialogue], context: RunContext) -> Iterator[DialogueResult]:
        for dialogue in dialogues:
            try:
                faces, speaker_faces = self.pipeline.run(dialogue, context.media)
            except (MediaError, OSError) as e:
                yield failed_dialogue(dialogue, f"asd: {e}")
                continue
            self._write_tracks(faces)
            yield self._result(dialogue, speaker_faces)

    def _result(self, dialogue: Dialogue, speaker_faces: dict[str, np.ndarray]) -> DialogueResult:
        result = DialogueResult(dialogue.id, features={FEATURE_SET: {}})
        for u in dialogue.utterances:
            rows = speaker_faces.get(u.id)
            if rows is None or len(rows) == 0:
                result.failures.append(Failure(FEATURE_SET, dialogue.id, u.id,
                                               "utterance covers no video frame (empty or outside the dialogue)"))
            else:
                result.features[FEATURE_SET][u.id] = np.asarray(rows, np.float32)
        return result

    def _write_tracks(self, faces: DialogueFaces) -> None:
        if self.out_dir is None:
            return
        path = tracks_path(self.out_dir, faces.dialogue_id)
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(path, faces.to_json())

    def close(self) -> None:
        self.pipeline.close()
