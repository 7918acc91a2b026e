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

Output: feature set ``speaker_faces``, per utterance float32 ``[T_utt_frames, 9]`` with columns
:data:`m3ed.asd.assign.COLUMNS` (boxes in the video's native pixels), and the dialogue's tracks
(:class:`m3ed.asd.faces.DialogueFaces`). The stage around it is :class:`m3ed.asd.stage.AsdStage`.
"""
from __future__ import annotations

import logging
from typing import Any, Callable, Iterable, Iterator

import numpy as np
import torch

from ..corpus import Dialogue
from ..device import autocast, release_memory
from ..media import FrameCache, MediaError
from .assign import assign_speakers, utterance_frames
from .crop import TrackCrops
from .detect import Detections
from .detectors import build_detector
from .embed import FaceEmbedder
from .faces import FEATURE_SET, DialogueFaces, read_dialogue_faces, tracks_path
from .options import AsdConfig, AsdOptions
from .score import build_scorer, dialogue_mfcc, track_scores
from .shots import ShotDetector
from .track import Track, number_tracks, track_shots

__all__ = ["AsdPipeline", "CHUNK_FRAMES", "Hook", "read_positions",
           # where they were before the split, for existing imports
           "AsdConfig", "AsdOptions", "DialogueFaces", "FEATURE_SET", "read_dialogue_faces", "tracks_path"]

log = logging.getLogger(__name__)

CHUNK_FRAMES = 64       # frames decoded at a time (memory bound)

#: ``hook(step, artifact)``, called after each step (see the module docstring).
Hook = Callable[[str, Any], None]


def _no_hook(step: str, artifact: Any) -> None:
    pass


class AsdPipeline:
    """The models and thresholds of ASD; :meth:`run` does one dialogue. The device is given once."""

    def __init__(self, config: AsdConfig, profile, device: str | torch.device = "cpu", precision: str = "fp32"):
        self.config = config
        self.device = torch.device(device)
        self.precision = precision   # bf16/fp16 autocast of the ASD model and the embedder, on CUDA only
        self.detector = build_detector(config, profile, self.device)
        self.scorer = build_scorer(profile, self.device, config.model, config.checkpoint)
        self.embedder = FaceEmbedder(profile, str(self.device), model=config.embedder,
                                     checkpoint=config.embedder_checkpoint,
                                     authors_cast=config.assign.rules == "authors")

    def run(self, dialogue: Dialogue, media, hook: Hook | None = None) -> tuple[DialogueFaces, dict[str, np.ndarray]]:
        """One dialogue: its tracks and, per utterance, the speaker's face rows. ``media`` locates and
        decodes (:class:`m3ed.locate.MediaSource`); ``hook(step, artifact)`` follows every step."""
        hook = hook or _no_hook
        span = media.locate(dialogue)
        audio = media.audio(span)
        hook("audio", audio)
        faces, crops = self.find_faces(dialogue.id, lambda: media.frames(span, fps=self.config.fps, chunk=CHUNK_FRAMES),
                                       hook)
        # Each step's buffers are freed by its end, but the C heap keeps them and the next step's
        # land elsewhere; handing them back lowers a long dialogue's peak (9.8 min: 5.4 -> 4.1 GB).
        release_memory()
        with autocast(self.device, self.precision):
            faces.scores, faces.demo_scores = self.score(faces.tracks, crops, audio,
                                                         self.needed_frames(dialogue, faces.tracks))
            hook("scores", (faces.scores, faces.demo_scores))
            release_memory()
            embeddings = self.embed(faces.tracks, crops, self.embedded_rows(dialogue, faces.tracks))
            hook("embeddings", embeddings)
        speaker_faces = assign_speakers(dialogue, faces.tracks, faces.scores, embeddings, self.config.fps,
                                        self.config.assign, stage1_scores=faces.demo_scores,
                                        detect_every=self.config.detector_params.every)
        hook("speaker_faces", speaker_faces)
        return faces, speaker_faces

    def find_faces(self, dialogue_id: str, decode: Callable[[], Iterable[np.ndarray]],
                   hook: Hook | None = None) -> tuple[DialogueFaces, TrackCrops]:
        """Shots, detections, tracks and crops from one decode (``decode()`` gives the frame chunks).

        Frames wait in a :class:`m3ed.media.FrameCache` until their shot has ended (shot boundaries
        never move once seen); then the shot is tracked and cropped, and its frames are dropped. A
        shot that outgrows the cache loses its frames and is cropped in a second decode at the end.
        The tracks equal :func:`m3ed.asd.track.track_faces` over the whole dialogue (tested).
        """
        hook = hook or _no_hook
        shots, detections = ShotDetector(self.config.shots), Detections(self.config.detector_params.every)
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
            # Tracking reads every detection, so the frames still waiting are detected now, in
            # the batches tracking itself would flush them in.
            detections.flush()
            hook("detections", detections)
            new = track_shots(detections, boundaries, tracked, stop, self.config.tracking)
            hook("tracks", new)
            ready = [t for t in new if t.first >= cache.first]
            late.extend(t for t in new if t.first < cache.first)
            parts.append(self._crops_from(ready, cache))
            hook("crops", parts[-1])
            tracks.extend(new)
            tracked = stop
            cache.drop_before(int(boundaries[stop]) if stop < len(boundaries) else cache.end)

        for chunk in _announced(decode(), hook):
            shots.update(chunk)
            hook("shots", shots)
            detections.add_chunk(self.detector, chunk)
            hook("detections", detections)
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
            parts.append(self.crop(late, _announced(decode(), hook)))
            hook("crops", parts[-1])
        tracks = number_tracks(tracks)
        faces = DialogueFaces(dialogue_id, detections.frame_count, tuple(detections.frame_size), shots.boundaries(), tracks)
        hook("faces", faces)
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
        frames = np.zeros(max((t.last + 1 for t in tracks), default=0), bool)
        for u in dialogue.utterances:
            inside = utterance_frames(u, self.config.fps, self.config.assign.end_inclusive)
            frames[inside[inside < len(frames)]] = True
        return [frames[t.first:t.last + 1] for t in tracks]

    def crop(self, tracks: list[Track], chunks) -> TrackCrops:
        """ASD crops and embedding crops of ``tracks`` from a stream of frame chunks from frame 0."""
        crops = self._new_crops(tracks)
        last = max((t.last for t in tracks), default=-1)
        if last >= 0:
            for chunk in chunks:
                crops.add_chunk(chunk)
                if crops.next_frame > last:
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


def _announced(chunks: Iterable[np.ndarray], hook: Hook) -> Iterator[np.ndarray]:
    """The decoded chunks, each announced as step ``decode``; closing this closes the decoder."""
    try:
        for chunk in chunks:
            hook("decode", chunk)
            yield chunk
    finally:
        if hasattr(chunks, "close"):
            chunks.close()


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
