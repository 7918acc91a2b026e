"""Face crops: the ASD models' input, cut exactly like the TalkNet demo's ``crop_video``, and
the face embedder's input.

ASD crops (:func:`asd_crop`, DESIGN §6), per track:

    s = max(box width, box height) / 2, centre (x, y); each of s, x, y smoothed over the track by
        a 13-frame median filter (``scipy.signal.medfilt``: the ends see zero padding, as in the demo)
    the frame is padded by bsi = int(s * (1 + 2 * cs)) pixels of value 110 on every side
    rows    int(y' - s) : int(y' + s * (1 + 2 * cs))         (y' = y + bsi; the crop starts at the face top)
    columns int(x' - s * (1 + cs)) : int(x' + s * (1 + cs))  (x' = x + bsi): a square of side 2s(1 + cs)
    resized to 224 x 224 (bilinear), converted to gray, central 112 x 112 kept

with cs = 0.4 (the demo's ``cropScale``): the square is 1.4x the face box. The demo writes the
224 x 224 crops to an XVID file and reads them back; we skip that lossy round trip. The padding
is not materialised: pixels outside the frame are filled with 110 directly.

Embedding crops (:func:`face_crops`): facenet-pytorch's ``extract_face`` geometry (the box
grown by ``margin`` pixels of the output scale, clipped to the frame, resized to 160 x 160 with
area interpolation), RGB uint8.

FER crops (:func:`crop_face`): the visual stage's DenseNet input, gray 64 x 64 (its module,
:mod:`m3ed.extract.face`, says how). :class:`TrackCrops` cuts them too when asked, so that the
visual stage need not decode the video again (:mod:`m3ed.asd.speaker_crops`).
"""
from __future__ import annotations

from typing import Sequence

import cv2
import numpy as np
from scipy.signal import medfilt

from ..extract.options import DEFAULT_CROP_SCALE
from ..models.densenet_fer import FACE_SIZE as FER_FACE_SIZE
from .assign import frames_in
from .track import Track

CROP_SCALE = 0.4          # demo cropScale (cs): the crop square is (1 + cs) times the face box
SMOOTHING_FRAMES = 13     # demo: medfilt kernel for box size and centre
PAD_VALUE = 110           # demo: padding pixel value
RESIZE = 224              # demo: crops resized to this before the central crop
ASD_FACE_SIZE = 112       # the models' input: central 112 x 112 of the 224 x 224 gray crop
EMBED_FACE_SIZE = 160     # InceptionResnetV1 input
EMBED_MARGIN = 0          # facenet-pytorch MTCNN's default margin


def smooth_boxes(boxes: np.ndarray, kernel: int = SMOOTHING_FRAMES) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Half-size ``s`` and centre ``x``, ``y`` per frame, each median filtered like the demo."""
    boxes = np.asarray(boxes, np.float64)
    s = np.maximum(boxes[:, 3] - boxes[:, 1], boxes[:, 2] - boxes[:, 0]) / 2
    y = (boxes[:, 1] + boxes[:, 3]) / 2
    x = (boxes[:, 0] + boxes[:, 2]) / 2
    return medfilt(s, kernel), medfilt(x, kernel), medfilt(y, kernel)


def crop_window(s: float, x: float, y: float, frame_shape: tuple[int, int], cs: float = CROP_SCALE) -> tuple[int, int, int, int]:
    """The demo's crop rows ``r0:r1`` and columns ``c0:c1`` in frame coordinates (may lie outside)."""
    bsi = int(s * (1 + 2 * cs))
    my, mx = y + bsi, x + bsi
    height, width = frame_shape[0] + 2 * bsi, frame_shape[1] + 2 * bsi
    # numpy slicing of the padded frame clips at its bounds; int() truncates, as in the demo
    r0, r1 = (min(max(int(v), 0), height) for v in (my - s, my + s * (1 + 2 * cs)))
    c0, c1 = (min(max(int(v), 0), width) for v in (mx - s * (1 + cs), mx + s * (1 + cs)))
    return r0 - bsi, r1 - bsi, c0 - bsi, c1 - bsi


def cut(frame: np.ndarray, r0: int, r1: int, c0: int, c1: int, fill: int = PAD_VALUE) -> np.ndarray:
    """``frame[r0:r1, c0:c1]`` where pixels outside the frame take the value ``fill``."""
    out = np.full((max(r1 - r0, 0), max(c1 - c0, 0)) + frame.shape[2:], fill, frame.dtype)
    fr0, fr1 = max(r0, 0), min(r1, frame.shape[0])
    fc0, fc1 = max(c0, 0), min(c1, frame.shape[1])
    if fr1 > fr0 and fc1 > fc0:
        out[fr0 - r0:fr1 - r0, fc0 - c0:fc1 - c0] = frame[fr0:fr1, fc0:fc1]
    return out


def asd_crop(frame: np.ndarray, s: float, x: float, y: float, cs: float = CROP_SCALE) -> np.ndarray:
    """One RGB frame -> the ``[112,112]`` uint8 gray face the ASD models read."""
    face = cut(frame, *crop_window(max(s, 1.0), x, y, frame.shape[:2], cs))
    if face.size == 0:
        face = np.full((1, 1, 3), PAD_VALUE, np.uint8)
    face = cv2.resize(face, (RESIZE, RESIZE))
    gray = cv2.cvtColor(face, cv2.COLOR_RGB2GRAY)
    lo = (RESIZE - ASD_FACE_SIZE) // 2
    return gray[lo:lo + ASD_FACE_SIZE, lo:lo + ASD_FACE_SIZE]


def face_crops(frames: np.ndarray, boxes: np.ndarray, size: int = EMBED_FACE_SIZE, margin: float = EMBED_MARGIN) -> np.ndarray:
    """``[n,H,W,3]`` frames and ``[n,4]`` boxes -> ``[n,size,size,3]`` RGB uint8 face crops (extract_face geometry)."""
    out = np.empty((len(frames), size, size, 3), np.uint8)
    for i, (frame, box) in enumerate(zip(frames, boxes)):
        out[i] = _face_crop(frame, box, size, margin)
    return out


def _face_crop(frame: np.ndarray, box: np.ndarray, size: int, margin: float) -> np.ndarray:
    grow_x = margin * (box[2] - box[0]) / (size - margin) / 2
    grow_y = margin * (box[3] - box[1]) / (size - margin) / 2
    x0, y0 = int(max(box[0] - grow_x, 0)), int(max(box[1] - grow_y, 0))
    x1, y1 = int(min(box[2] + grow_x, frame.shape[1])), int(min(box[3] + grow_y, frame.shape[0]))
    if x1 <= x0 or y1 <= y0:
        return np.zeros((size, size, 3), np.uint8)
    return cv2.resize(frame[y0:y1, x0:x1], (size, size), interpolation=cv2.INTER_AREA)


def crop_face(frame_rgb: np.ndarray, box: np.ndarray, crop: str = "tight",
              scale: float = DEFAULT_CROP_SCALE) -> np.ndarray:
    """Gray uint8 ``[64, 64]`` of the face in ``box`` (x1, y1, x2, y2 in the frame's pixels)."""
    if crop == "tight":
        return tight_crop(frame_rgb, box)
    return square_crop(frame_rgb, box, scale)


def tight_crop(frame_rgb: np.ndarray, box: np.ndarray) -> np.ndarray:
    """The authors' face: the box's top-left clamped to the picture, every corner truncated to an integer
    pixel, the rows and columns in between cut out (beyond the picture's right and bottom edges nothing
    is cut) and resized, aspect ratio not kept, to 64x64 with OpenCV's default bilinear interpolation."""
    x1, y1, x2, y2 = (float(v) for v in box)
    h, w = frame_rgb.shape[:2]
    left, top = int(max(x1, 0.0)), int(max(y1, 0.0))
    right, bottom = min(int(x2), w), min(int(y2), h)
    if right <= left or bottom <= top:
        raise ValueError(f"face box {[round(v, 1) for v in (x1, y1, x2, y2)]} holds no pixel of the {w}x{h} frame "
                         f"(is speaker_faces from another video?)")
    gray = cv2.cvtColor(np.ascontiguousarray(frame_rgb[top:bottom, left:right]), cv2.COLOR_RGB2GRAY)
    return cv2.resize(gray, (FER_FACE_SIZE, FER_FACE_SIZE), interpolation=cv2.INTER_LINEAR)


def square_crop(frame_rgb: np.ndarray, box: np.ndarray, scale: float = DEFAULT_CROP_SCALE) -> np.ndarray:
    """A square of ``scale`` x the box's longer side around its centre, zero-padded outside the picture."""
    x1, y1, x2, y2 = (float(v) for v in box)
    side = max(x2 - x1, y2 - y1, 1.0) * scale
    cx, cy = (x1 + x2) / 2, (y1 + y2) / 2
    left, top = int(round(cx - side / 2)), int(round(cy - side / 2))
    size = max(1, int(round(side)))
    h, w = frame_rgb.shape[:2]
    pad = max(0, -left, -top, left + size - w, top + size - h)
    gray = cv2.cvtColor(frame_rgb, cv2.COLOR_RGB2GRAY)
    if pad:
        gray = cv2.copyMakeBorder(gray, pad, pad, pad, pad, cv2.BORDER_CONSTANT, value=0)
    patch = gray[top + pad: top + pad + size, left + pad: left + pad + size]
    interpolation = cv2.INTER_AREA if size > FER_FACE_SIZE else cv2.INTER_LINEAR
    return cv2.resize(patch, (FER_FACE_SIZE, FER_FACE_SIZE), interpolation=interpolation)


class TrackCrops:
    """Cuts every track's crops from a stream of frame chunks (memory: the crops, one chunk of frames).

    ``asd[i]``: ``[len(track_i), 112, 112]`` uint8 ASD input. ``faces[i]``: ``[m, 160, 160, 3]``
    embedding crops at the track positions ``face_positions[i]`` (every ``embed_every``-th frame of
    the track, and its last). With ``fer`` (``crop(frame, box) -> [64, 64]``, a partial of
    :func:`crop_face`) and ``fer_frames`` (a boolean mask over the dialogue's frames), ``fer[i]``
    holds the FER crops at the track positions ``fer_positions[i]``: its rows in a wanted frame. A
    box that holds no pixel of its frame gets no crop, and its track position is left in
    ``fer_missing[i]``.
    """

    def __init__(self, tracks: Sequence[Track], embed_every: int = 5, cs: float = CROP_SCALE,
                 embed_size: int = EMBED_FACE_SIZE, embed_margin: float = EMBED_MARGIN, embed_box=None,
                 fer=None, fer_frames: np.ndarray | None = None):
        self.tracks = list(tracks)
        self.cs, self.embed_size, self.embed_margin = cs, embed_size, embed_margin
        self.embed_box = embed_box or whole_box   # the part of a face box the embedder reads
        self._smooth = [smooth_boxes(t.boxes) for t in self.tracks]
        self.asd = [np.zeros((len(t), ASD_FACE_SIZE, ASD_FACE_SIZE), np.uint8) for t in self.tracks]
        self.face_positions = [embed_positions(len(t), embed_every) for t in self.tracks]
        self.faces = [np.zeros((len(p), embed_size, embed_size, 3), np.uint8) for p in self.face_positions]
        self.fer_crop = fer
        wanted = np.zeros(0, bool) if fer is None or fer_frames is None else np.asarray(fer_frames, bool)
        self.fer_positions = [np.flatnonzero(frames_in(wanted, t.frames)) for t in self.tracks]
        self.fer = [np.zeros((len(p), FER_FACE_SIZE, FER_FACE_SIZE), np.uint8) for p in self.fer_positions]
        self.fer_missing: list[list[int]] = [[] for _ in self.tracks]
        self._done = [np.zeros(len(t), bool) for t in self.tracks]
        self._next = 0

    def add_chunk(self, frames: np.ndarray, first: int | None = None) -> None:
        """Cut the crops of ``frames``: dialogue frames ``first ..`` (default: after the previous chunk)."""
        first = self._next if first is None else first
        self._next = first + len(frames)
        for i, track in enumerate(self.tracks):
            lo, hi = max(track.first, first), min(track.last + 1, self._next)
            s, x, y = self._smooth[i]
            for frame in range(lo, hi):
                k = frame - track.first
                image = frames[frame - first]
                self.asd[i][k] = asd_crop(image, s[k], x[k], y[k], self.cs)
                self._done[i][k] = True
                j = index_of(self.face_positions[i], k)
                if j is not None:
                    self.faces[i][j] = _face_crop(image, self.embed_box(track.boxes[k]), self.embed_size,
                                                  self.embed_margin)
                j = index_of(self.fer_positions[i], k)
                if j is not None:
                    try:
                        self.fer[i][j] = self.fer_crop(image, track.boxes[k])
                    except ValueError:   # no pixel of the frame: the visual stage reports it
                        self.fer_missing[i].append(k)

    @property
    def next_frame(self) -> int:
        """The dialogue frame the next chunk starts at (every frame before it has been seen)."""
        return self._next

    @classmethod
    def merge(cls, parts: Sequence["TrackCrops"], tracks: Sequence[Track]) -> "TrackCrops":
        """One set of crops for ``tracks``, each found in one of ``parts`` (cut separately, e.g. shot by shot)."""
        where = {id(t): (part, k) for part in parts for k, t in enumerate(part.tracks)}
        missing = [t.track_id for t in tracks if id(t) not in where]
        if missing:
            raise ValueError(f"tracks {missing} have no crops in any part")
        merged = cls.__new__(cls)
        merged.tracks = list(tracks)
        first = parts[0] if parts else cls([])
        merged.cs, merged.embed_size, merged.embed_margin = first.cs, first.embed_size, first.embed_margin
        merged.embed_box = first.embed_box
        merged.fer_crop = first.fer_crop
        for name in ("_smooth", "asd", "face_positions", "faces", "fer_positions", "fer", "fer_missing", "_done"):
            setattr(merged, name, [getattr(where[id(t)][0], name)[where[id(t)][1]] for t in tracks])
        merged._next = max((part._next for part in parts), default=0)
        return merged

    def check_complete(self) -> None:
        for track, done in zip(self.tracks, self._done):
            if not done.all():
                raise RuntimeError(f"track {track.track_id}: frames {track.first}-{track.last} reach past the "
                                   f"{self._next} frames decoded in the cropping pass (decode not repeatable?)")


def embed_positions(length: int, every: int) -> np.ndarray:
    """Track positions whose faces are embedded: 0, every, 2*every, ... and the last."""
    positions = np.arange(0, length, max(every, 1))
    if length and positions[-1] != length - 1:
        positions = np.append(positions, length - 1)
    return positions.astype(np.int64)


def whole_box(box: np.ndarray) -> np.ndarray:
    """The embedder reads the whole box (a function, not a lambda: crops travel between processes)."""
    return box


def index_of(positions: np.ndarray, k: int) -> int | None:
    """The index of ``k`` in the ascending ``positions``, or None."""
    j = int(np.searchsorted(positions, k))
    return j if j < len(positions) and positions[j] == k else None

