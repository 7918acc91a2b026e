"""The asd stage's steps: who is speaking, frame by frame (paper appendix A.1, DESIGN §6).

:meth:`AsdPipeline.run` does one dialogue in named steps; after each it calls ``hook(step, artifact)``
when a hook is given (timing, inspection, other tools), as pyannote's pipelines do:

    step           artifact                                   what the step does
    audio          float32 samples (16 kHz)                   locate the dialogue's span; decode its audio once
    decode         a chunk of frames [n, H, W, 3] RGB         stream the frames once (25 fps, native size)
    shots          the ShotDetector, fed so far               shot changes (m3ed.asd.shots)
    detections     the Detections, so far                     faces on every k-th frame (MTCNN or S3FD)
    tracks         the new tracks of the shots just ended     IoU tracks, gaps interpolated (m3ed.asd.track)
    crops          their TrackCrops                           ASD crops (112x112 gray) and embedding crops
    faces          DialogueFaces: every shot and track        the tracks numbered
    scores         (probabilities, demo scores) per track     TalkNet / Light-ASD on the frames assignment reads
    embeddings     per track [len, dim], NaN where not read   SENet-50 or InceptionResnetV1 (m3ed.asd.embed)
    speaker_faces  utterance id -> [T, 9] rows                two-stage assignment (m3ed.asd.assign)

The front half streams: decoded frames wait in a bounded cache (``cache_mb``) until their shot has
ended, then the shot is tracked and cropped. So ``decode``, ``shots`` and ``detections`` come once
per chunk, ``detections``, ``tracks`` and ``crops`` once per group of ended shots (a shot longer
than the cache is cropped in a second decode at the end, with its own ``decode`` calls), the rest
once per dialogue. The time between two calls is the work of the step the second one names.
That front half, audio to ``faces``, is :class:`m3ed.asd.find.FaceFinder`'s: with ``--workers`` a
worker process runs it (:meth:`AsdPipeline.front_half`) and :meth:`AsdPipeline.run` takes its result.

Output: feature set ``speaker_faces``, per utterance float32 ``[T_utt_frames, 9]`` with columns
:data:`m3ed.asd.assign.COLUMNS` (boxes in the video's native pixels), and the dialogue's tracks
(:class:`m3ed.asd.faces.DialogueFaces`). The stage around it is :class:`m3ed.asd.stage.AsdStage`.
"""
from __future__ import annotations

import logging

import numpy as np
import torch

from ..corpus import Dialogue
from ..device import autocast, release_memory
from .assign import assign_speakers, frames_in, spoken_frames
from .crop import TrackCrops
from .detectors import build_detector
from .embed import FaceEmbedder
from .faces import FEATURE_SET, DialogueFaces, read_dialogue_faces, tracks_path
from .find import CHUNK_FRAMES, FaceFinder, FerCrop, Found, FrontHalf, Hook, no_hook
from .options import AsdConfig, AsdOptions
from .score import build_scorer, track_scores
from .track import Track

__all__ = ["AsdPipeline", "CHUNK_FRAMES", "Hook", "read_positions",
           # where they were before the split, for existing imports
           "AsdConfig", "AsdOptions", "DialogueFaces", "FEATURE_SET", "read_dialogue_faces", "tracks_path"]

log = logging.getLogger(__name__)


class AsdPipeline:
    """The models and thresholds of ASD; :meth:`run` does one dialogue. The device is given once."""

    def __init__(self, config: AsdConfig, profile, device: str | torch.device = "cpu", precision: str = "fp32"):
        self.config = config
        self.device = torch.device(device)
        self.precision = precision   # bf16/fp16 autocast of the ASD model and the embedder, on CUDA only
        self.profile = profile
        self.detector = build_detector(config, profile, self.device)
        self.scorer = build_scorer(profile, self.device, config.model, config.checkpoint)
        self.embedder = FaceEmbedder(profile, str(self.device), model=config.embedder,
                                     checkpoint=config.embedder_checkpoint,
                                     authors_cast=config.assign.rules == "authors")
        self.finder = FaceFinder(config, self.detector, self.embedder.input_size, self.embedder.crop_box)

    def run(self, dialogue: Dialogue, media, hook: Hook | None = None, found: Found | None = None,
            fer: FerCrop | None = None) -> tuple[DialogueFaces, dict[str, np.ndarray], TrackCrops]:
        """One dialogue: its tracks, per utterance the speaker's face rows, and the crops they were
        scored on. ``media`` locates and decodes (:class:`m3ed.locate.MediaSource`); ``hook(step,
        artifact)`` follows every step. ``found``: the front half, already done by a worker
        (:meth:`front_half`); ``fer``: cut the visual stage's crops too (in ``crops.fer``)."""
        hook = hook or no_hook
        found = found or self.finder.front(dialogue, media, hook, fer=fer)
        faces, crops = found.faces, found.crops
        # Each step's buffers are freed by its end, but the C heap keeps them and the next step's
        # land elsewhere; handing them back lowers a long dialogue's peak (9.8 min: 5.4 -> 4.1 GB).
        release_memory()
        with autocast(self.device, self.precision):
            faces.scores, faces.demo_scores = self.score(faces.tracks, crops, found.mfcc,
                                                         self.needed_frames(dialogue, faces.tracks))
            hook("scores", (faces.scores, faces.demo_scores))
            release_memory()
            embeddings = self.embed(faces.tracks, crops, self.embedded_rows(dialogue, faces.tracks))
            hook("embeddings", embeddings)
        speaker_faces = assign_speakers(dialogue, faces.tracks, faces.scores, embeddings, self.config.fps,
                                        self.config.assign, stage1_scores=faces.demo_scores,
                                        detect_every=self.config.detector_params.every)
        hook("speaker_faces", speaker_faces)
        return faces, speaker_faces, crops

    def front_half(self, fer: FerCrop | None = None) -> FrontHalf:
        """The work before scoring, as a worker process can run it (its own detector)."""
        return FrontHalf(self.config, self.profile, str(self.device), self.embedder.input_size,
                         self.embedder.crop_box, fer)

    def needed_frames(self, dialogue: Dialogue, tracks: list[Track]) -> list[np.ndarray] | None:
        """Per track, the frames :meth:`run` scores: those assignment reads (inside an utterance;
        ``ScoreParams.frames="utterances"``), or None for all of them (``"all"``)."""
        if self.config.scoring.frames == "all":
            return None
        return self.utterance_rows(dialogue, tracks)

    def embedded_rows(self, dialogue: Dialogue, tracks: list[Track]) -> list[np.ndarray] | None:
        """Per track, the rows whose nearest embedded positions :meth:`run` embeds: those assignment
        reads (``AsdConfig.embed_frames="utterances"``), or None for every position (``"track"``)."""
        if self.config.embed_frames == "track":
            return None
        return self.utterance_rows(dialogue, tracks)

    def utterance_rows(self, dialogue: Dialogue, tracks: list[Track]) -> list[np.ndarray]:
        """Per track, a boolean mask of its frames inside some utterance (all that assignment reads)."""
        spoken = spoken_frames(dialogue, self.config.fps, self.config.assign.end_inclusive)
        return [frames_in(spoken, t.frames) for t in tracks]

    def score(self, tracks: list[Track], crops: TrackCrops, mfcc: torch.Tensor,
              needed: list[np.ndarray] | None = None) -> tuple[list[np.ndarray], list[np.ndarray]]:
        """Per track: speaking probabilities and the demo's scores (see :func:`m3ed.asd.score.track_scores`);
        ``mfcc``: the dialogue's (:func:`m3ed.asd.score.dialogue_mfcc`)."""
        if not tracks:
            return [], []
        return track_scores(self.scorer, mfcc, tracks, crops.asd, self.config.scoring, needed)

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
        self.detector = self.scorer = self.embedder = self.finder = None


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
