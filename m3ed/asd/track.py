"""Face tracking by box overlap, with the TalkNet demo's parameters (DESIGN §6).

Within each shot, tracks are built greedily one after another, like the demo's ``track_shot``:
walk the shot's detected frames in order; a face joins the track when it overlaps the track's
last box with IoU > ``iou_threshold`` and comes at most ``max_gap`` frames after it; the track
ends at the first larger gap. Faces taken are removed and the walk starts again for the next
track. One difference, documented: where several faces of a frame qualify, the demo takes the
first in detection order and we take the best-overlapping one.

A track keeps its detected boxes and fills every frame between them by linear interpolation
(gaps from missed detections and, with ``every=k`` detection, the k-1 frames between). It is
kept when it has more than ``min_track / every`` detections (the demo: more than ``min_track``
= 10 detections, detecting every frame) and its mean box side exceeds ``min_face_size``.
Tracks never cross a shot boundary; shots shorter than ``min_track`` frames give no tracks.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from .detect import Detections
from .params import TrackingParams


@dataclass
class Track:
    """One face over consecutive frames of a dialogue."""

    frames: np.ndarray           # int64 [n] dialogue frame indices, consecutive
    boxes: np.ndarray            # float32 [n, 4] x1, y1, x2, y2 in original pixels
    track_id: int
    detected: np.ndarray = field(default=None)  # bool [n]: a detection (not interpolation) at this frame
    shot: int = 0

    def __post_init__(self):
        self.frames = np.asarray(self.frames, np.int64)
        self.boxes = np.asarray(self.boxes, np.float32).reshape(-1, 4)
        if self.detected is None:
            self.detected = np.ones(len(self.frames), bool)
        if len(self.frames) != len(self.boxes):
            raise ValueError(f"track {self.track_id}: {len(self.frames)} frames but {len(self.boxes)} boxes")
        if len(self.frames) > 1 and not np.all(np.diff(self.frames) == 1):
            raise ValueError(f"track {self.track_id}: frames must be consecutive")

    def __len__(self) -> int:
        return len(self.frames)

    @property
    def first(self) -> int:
        return int(self.frames[0])

    @property
    def last(self) -> int:
        return int(self.frames[-1])

    def box_at(self, frame: int) -> np.ndarray | None:
        if self.first <= frame <= self.last:
            return self.boxes[frame - self.first]
        return None

    def to_dict(self) -> dict:
        return {"track_id": self.track_id, "shot": self.shot, "first_frame": self.first,
                "frames": self.frames.tolist(), "boxes": np.round(self.boxes, 2).tolist(),
                "detected": self.detected.astype(int).tolist()}

    @classmethod
    def from_dict(cls, record: dict) -> "Track":
        return cls(np.asarray(record["frames"]), np.asarray(record["boxes"]), int(record["track_id"]),
                   np.asarray(record.get("detected", [1] * len(record["frames"])), bool), int(record.get("shot", 0)))


def iou(box: np.ndarray, boxes: np.ndarray) -> np.ndarray:
    """Intersection over union of one ``[4]`` box with each of ``[k,4]`` boxes."""
    x1 = np.maximum(box[0], boxes[:, 0])
    y1 = np.maximum(box[1], boxes[:, 1])
    x2 = np.minimum(box[2], boxes[:, 2])
    y2 = np.minimum(box[3], boxes[:, 3])
    inter = np.clip(x2 - x1, 0, None) * np.clip(y2 - y1, 0, None)
    area = (box[2] - box[0]) * (box[3] - box[1])
    areas = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
    return inter / np.maximum(area + areas - inter, 1e-9)


def track_faces(detections: Detections, shots: np.ndarray, params: TrackingParams = TrackingParams()) -> list[Track]:
    """All face tracks of a dialogue, shot by shot, numbered from 0 in order of first frame."""
    return number_tracks(track_shots(detections, shots, 0, None, params))


def track_shots(detections: Detections, shots: np.ndarray, first: int = 0, stop: int | None = None,
                params: TrackingParams = TrackingParams()) -> list[Track]:
    """The tracks of shots ``first`` to ``stop - 1`` (default: the last), unnumbered. A shot's tracks
    depend on its own detections only, so shots can be tracked as soon as they end."""
    if detections.every > params.max_gap:
        raise ValueError(f"TrackingParams.max_gap={params.max_gap}: detecting every {detections.every} frames leaves "
                         f"larger gaps, so no track could continue; detect every <= {params.max_gap} frames")
    frames = detections.frames()
    if len(frames) == 0:
        return []
    shots = shots if len(shots) else np.zeros(1, np.int64)
    ends = np.append(shots[1:], max(detections.frame_count, int(frames[-1]) + 1))
    tracks: list[Track] = []
    for shot in range(first, len(shots) if stop is None else stop):
        start, end = shots[shot], ends[shot]
        if end - start < params.min_track:
            continue
        in_shot = frames[(frames >= start) & (frames < end)]
        faces = {int(f): list(detections.faces[int(f)][:, :4]) for f in in_shot}
        for frame_list, box_list in _greedy_tracks(faces, params):
            track = _interpolate(frame_list, box_list, shot)
            if track is not None and len(frame_list) * detections.every > params.min_track \
                    and _mean_side(track.boxes) > params.min_face_size:
                tracks.append(track)
    return tracks


def number_tracks(tracks: list[Track]) -> list[Track]:
    """Sort tracks by first frame (then left edge) and number them from 0."""
    tracks = sorted(tracks, key=lambda t: (t.first, t.boxes[0, 0]))
    for number, track in enumerate(tracks):
        track.track_id = number
    return tracks


def _greedy_tracks(faces: dict[int, list[np.ndarray]], params: TrackingParams):
    """Yield ``(frames, boxes)`` of successive tracks, removing the faces each one takes."""
    order = sorted(faces)
    while True:
        track_frames: list[int] = []
        track_boxes: list[np.ndarray] = []
        for frame in order:
            candidates = faces[frame]
            if not candidates:
                continue
            if not track_frames:
                track_frames.append(frame)
                track_boxes.append(candidates.pop(0))
                continue
            if frame - track_frames[-1] > params.max_gap:
                break
            overlaps = iou(track_boxes[-1], np.asarray(candidates))
            best = int(np.argmax(overlaps))
            if overlaps[best] > params.iou_threshold:
                track_frames.append(frame)
                track_boxes.append(candidates.pop(best))
        if not track_frames:
            return
        yield track_frames, track_boxes


def _interpolate(frames: list[int], boxes: list[np.ndarray], shot: int) -> Track | None:
    known = np.asarray(frames, np.int64)
    known_boxes = np.asarray(boxes, np.float32)
    every_frame = np.arange(known[0], known[-1] + 1)
    filled = np.stack([np.interp(every_frame, known, known_boxes[:, j]) for j in range(4)], axis=1)
    detected = np.isin(every_frame, known)
    return Track(every_frame, filled, track_id=-1, detected=detected, shot=shot)


def _mean_side(boxes: np.ndarray) -> float:
    return float(max(np.mean(boxes[:, 2] - boxes[:, 0]), np.mean(boxes[:, 3] - boxes[:, 1])))
