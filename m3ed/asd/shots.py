"""Shot-change detection on decoded frames: a cheap colour-histogram test between neighbours.

A face track never crosses a shot boundary (DESIGN §6), so tracking needs the boundaries. The
TalkNet demo uses PySceneDetect's ``ContentDetector``; we compute an equivalent signal on the
frames we already decode, so the video is read once:

    each frame -> HSV, downscaled to ``SHOT_ANALYSIS_WIDTH`` px wide
    normalised 2-D hue x saturation histogram (``HUE_BINS`` x ``SAT_BINS``)
    distance(t) = Bhattacharyya distance between the histograms of frames t-1 and t (0 same, 1 disjoint)
    frame t starts a new shot when distance(t) > ``threshold``
        and the current shot is at least ``min_shot_frames`` long

Within a shot consecutive frames of real video stay below ~0.2 (camera motion, lighting); a cut
between different scenes gives 0.4-0.9. The default threshold (0.35) sits between.
"""
from __future__ import annotations

import cv2
import numpy as np

from .params import ShotParams

SHOT_ANALYSIS_WIDTH = 96
HUE_BINS = 16
SAT_BINS = 8


def frame_histograms(frames: np.ndarray) -> np.ndarray:
    """``[n,H,W,3]`` RGB uint8 -> ``[n, HUE_BINS*SAT_BINS]`` float32 histograms summing to 1."""
    out = np.empty((len(frames), HUE_BINS * SAT_BINS), np.float32)
    for i, frame in enumerate(frames):
        height = max(1, round(frame.shape[0] * SHOT_ANALYSIS_WIDTH / frame.shape[1]))
        small = cv2.resize(frame, (SHOT_ANALYSIS_WIDTH, height), interpolation=cv2.INTER_AREA)
        hsv = cv2.cvtColor(small, cv2.COLOR_RGB2HSV)
        hist = cv2.calcHist([hsv], [0, 1], None, [HUE_BINS, SAT_BINS], [0, 180, 0, 256]).ravel()
        out[i] = hist / max(float(hist.sum()), 1.0)
    return out


def bhattacharyya(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Row-wise Bhattacharyya distance between normalised histograms (0 identical, 1 disjoint)."""
    coefficient = np.sqrt(a * b).sum(axis=-1)
    return np.sqrt(np.clip(1.0 - coefficient, 0.0, 1.0))


class ShotDetector:
    """Streaming shot detection: feed frame chunks in order, then read :meth:`boundaries`."""

    def __init__(self, params: ShotParams = ShotParams()):
        self.params = params
        self._previous: np.ndarray | None = None
        self._distances: list[np.ndarray] = []
        self.frame_count = 0

    def update(self, frames: np.ndarray) -> None:
        if len(frames) == 0:
            return
        hists = frame_histograms(frames)
        previous = hists[:1] if self._previous is None else self._previous[None]
        self._distances.append(bhattacharyya(np.concatenate([previous, hists[:-1]]), hists))
        self._previous = hists[-1]
        self.frame_count += len(frames)

    @property
    def distances(self) -> np.ndarray:
        """Distance of every frame to the one before it (0 for the first frame)."""
        return np.concatenate(self._distances) if self._distances else np.zeros(0, np.float32)

    def boundaries(self) -> np.ndarray:
        """Sorted first-frame indices of every shot (always starting with 0 when there are frames)."""
        return shot_boundaries(self.distances, self.params)


def shot_boundaries(distances: np.ndarray, params: ShotParams = ShotParams()) -> np.ndarray:
    """First frames of the shots given each frame's distance to its predecessor."""
    if len(distances) == 0:
        return np.zeros(0, np.int64)
    starts = [0]
    for t in np.flatnonzero(distances > params.threshold):
        if t - starts[-1] >= params.min_shot_frames:
            starts.append(int(t))
    return np.asarray(starts, np.int64)


def detect_shots(frames: np.ndarray, params: ShotParams = ShotParams()) -> np.ndarray:
    """Shot boundaries of frames held in memory (see :class:`ShotDetector` for streams)."""
    detector = ShotDetector(params)
    detector.update(frames)
    return detector.boundaries()
