"""The front half of the asd stage: from a dialogue's frames to its tracks and their crops.

Everything here is host work around one small network, the face detector: decoding, shot
detection, detection, tracking, and cutting the crops the later steps read (ASD input, embedder
input and, when the visual stage follows, its FER crops). It needs no model replica of the back
half (scoring, embedding), so :class:`FrontHalf` runs it in a worker process of the run's pool
(``--workers``, :mod:`m3ed.pipelines.host_pool`) while the main process scores other dialogues.
A dialogue's result depends on that dialogue alone: the same bytes in any process (tested).
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from functools import partial
from typing import Any, Callable, Iterable, Iterator

import numpy as np
import torch

from ..corpus import Dialogue
from ..device import torch_threads
from ..media import FrameCache, MediaError
from .assign import spoken_frames
from .crop import TrackCrops, crop_face
from .detect import Detections
from .detectors import build_detector
from .faces import DialogueFaces
from .options import AsdConfig
from .score import dialogue_mfcc
from .shots import ShotDetector
from .track import Track, number_tracks, track_shots

log = logging.getLogger(__name__)

CHUNK_FRAMES = 64       # frames decoded at a time (memory bound)

#: ``hook(step, artifact)``, called after each step (:mod:`m3ed.asd.pipeline`).
Hook = Callable[[str, Any], None]

#: The visual stage's crop, ``(mode, scale)`` as ``--fer-crop`` and ``--fer-crop-scale`` give it.
FerCrop = tuple[str, float]


def no_hook(step: str, artifact: Any) -> None:
    pass


@dataclass
class Found:
    """A dialogue's front half: its tracks and crops, and the ASD models' MFCC of its audio."""

    faces: DialogueFaces
    crops: TrackCrops
    mfcc: torch.Tensor


class FaceFinder:
    """Shots, detections, tracks and crops of one dialogue at a time (the detector is built once)."""

    def __init__(self, config: AsdConfig, detector, embed_size: int, embed_box=None):
        self.config = config
        self.detector = detector
        self.embed_size, self.embed_box = embed_size, embed_box

    def front(self, dialogue: Dialogue, media, hook: Hook | None = None, fer: FerCrop | None = None) -> Found:
        """Locate the dialogue, decode its audio once and its frames once: everything before scoring.
        ``fer``: also cut the visual stage's crops of every track inside an utterance."""
        hook = hook or no_hook
        span = media.locate(dialogue)
        audio = media.audio(span)
        hook("audio", audio)
        spoken = spoken_frames(dialogue, self.config.fps, self.config.assign.end_inclusive) if fer else None
        faces, crops = self.find_faces(dialogue.id, lambda: media.frames(span, fps=self.config.fps, chunk=CHUNK_FRAMES),
                                       hook, fer=fer, fer_frames=spoken)
        with torch_threads(1):   # the same arithmetic in the main process and in a one-thread worker
            mfcc = dialogue_mfcc(audio)
        return Found(faces, crops, mfcc)

    def find_faces(self, dialogue_id: str, decode: Callable[[], Iterable[np.ndarray]], hook: Hook | None = None,
                   fer: FerCrop | None = None, fer_frames: np.ndarray | None = None) -> tuple[DialogueFaces, TrackCrops]:
        """Shots, detections, tracks and crops from one decode (``decode()`` gives the frame chunks).

        Frames wait in a :class:`m3ed.media.FrameCache` until their shot has ended (shot boundaries
        never move once seen); then the shot is tracked and cropped, and its frames are dropped. A
        shot that outgrows the cache loses its frames and is cropped in a second decode at the end.
        The tracks equal :func:`m3ed.asd.track.track_faces` over the whole dialogue (tested).
        """
        hook = hook or no_hook
        new_crops = partial(self.new_crops, fer=fer, fer_frames=fer_frames)
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
            parts.append(_crops_from(new_crops(ready), cache))
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
            parts.append(crop_stream(new_crops(late), _announced(decode(), hook)))
            hook("crops", parts[-1])
        tracks = number_tracks(tracks)
        faces = DialogueFaces(dialogue_id, detections.frame_count, tuple(detections.frame_size), shots.boundaries(), tracks)
        hook("faces", faces)
        return faces, TrackCrops.merge(parts, tracks)

    def new_crops(self, tracks: list[Track], fer: FerCrop | None = None, fer_frames: np.ndarray | None = None) -> TrackCrops:
        """Empty crops of ``tracks``, to be cut (:meth:`TrackCrops.add_chunk`)."""
        return TrackCrops(tracks, self.config.embed_every, embed_size=self.embed_size, embed_box=self.embed_box,
                          fer=partial(crop_face, crop=fer[0], scale=fer[1]) if fer else None, fer_frames=fer_frames)

    def crop(self, tracks: list[Track], chunks) -> TrackCrops:
        """ASD crops and embedding crops of ``tracks`` from a stream of frame chunks from frame 0."""
        return crop_stream(self.new_crops(tracks), chunks)


class FrontHalf:
    """:meth:`FaceFinder.front` as a worker process runs it: picklable (options, not models); the
    detector is built on the first dialogue and kept for the worker's life."""

    def __init__(self, config: AsdConfig, profile, device: str, embed_size: int, embed_box=None,
                 fer: FerCrop | None = None):
        self.config, self.profile, self.device = config, profile, device
        self.embed_size, self.embed_box, self.fer = embed_size, embed_box, fer
        self._finder: FaceFinder | None = None

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_finder": None}

    def __call__(self, dialogue: Dialogue, media) -> Found:
        if self._finder is None:
            detector = build_detector(self.config, self.profile, torch.device(self.device))
            self._finder = FaceFinder(self.config, detector, self.embed_size, self.embed_box)
        return self._finder.front(dialogue, media, fer=self.fer)


def _crops_from(crops: TrackCrops, cache: FrameCache) -> TrackCrops:
    """``crops`` cut from the frames held in ``cache``."""
    if crops.tracks:
        last = max(t.last for t in crops.tracks)
        for first, frames in cache.chunks():
            if first > last:
                break
            crops.add_chunk(frames, first=first)
        crops.check_complete()
    return crops


def crop_stream(crops: TrackCrops, chunks) -> TrackCrops:
    """``crops`` cut from a stream of frame chunks from frame 0 (the stream is closed once they are)."""
    last = max((t.last for t in crops.tracks), default=-1)
    if last >= 0:
        for chunk in chunks:
            crops.add_chunk(chunk)
            if crops.next_frame > last:
                break
    if hasattr(chunks, "close"):
        chunks.close()   # stops the decoder
    crops.check_complete()
    return crops


def _announced(chunks: Iterable[np.ndarray], hook: Hook) -> Iterator[np.ndarray]:
    """The decoded chunks, each announced as step ``decode``; closing this closes the decoder."""
    try:
        for chunk in chunks:
            hook("decode", chunk)
            yield chunk
    finally:
        if hasattr(chunks, "close"):
            chunks.close()
