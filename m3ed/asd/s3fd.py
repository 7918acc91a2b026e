"""Face detection with S3FD (:mod:`m3ed.models.s3fd`), as the M3ED authors' front end runs it.

The authors' active speaker detection starts from TalkNet's demo, which detects faces with S3FD on
every frame scaled to 0.25, keeping faces scored above 0.9. :class:`S3FDDetector` does what that
demo's ``S3FD.detect_faces(rgb, conf_th=0.9, scales=[0.25])`` does, step by step:

1. :meth:`S3FDDetector.rescale`: ``cv2.resize`` by ``scale`` on both axes, ``INTER_LINEAR``;
2. :func:`preprocess`: RGB minus the (123, 117, 104) means (the reference subtracts VGG's BGR means
   from an RGB image after two channel swaps: the network sees R - 123, G - 117, B - 104);
3. the network, one frame per call, then the reference's ``Detect`` (:func:`face_candidates`): softmax,
   boxes decoded from the priors with variances 0.1 / 0.2, faces scored above 0.05, NMS at IoU 0.3
   over the 5000 best, at most 750 kept;
4. :func:`faces_in_pixels`: candidates scored above ``min_score``, scaled to the original frame's
   pixels, NMS at IoU 0.1.

The network runs one frame per call, each on one torch thread (calls side by side on CPU), so a
frame's faces depend on that frame alone: neither on the frames batched with it nor on the run's
thread count. Each frame's faces are ``[k, 5]`` float32 rows (x1, y1, x2, y2, score) in original
pixels, as :class:`m3ed.asd.detect.FaceDetector` gives them, so :class:`m3ed.asd.detect.Detections`
and the tracker take them unchanged.

Boxes are mapped back through the detection size divided by ``scale``: the reference multiplies by
the original size instead, which is the same when the frame's size times ``scale`` is whole (any
frame size divisible by 4 at 0.25) and within half a detection pixel otherwise.
"""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

import cv2
import numpy as np
import torch

from ..device import side_by_side, torch_threads
from ..models.s3fd import WEIGHTS_FILE, S3FDNet, load_s3fd, prior_boxes
from .detect import NO_FACES, FrameDetector, check_frames
from .embed import torch_home
from .params import S3FDParams

#: The network's input means, in the RGB order it receives.
MEAN_RGB = (123.0, 117.0, 104.0)
#: Smallest side, in detection pixels, whose feature maps do not vanish before the stride-32 head.
MIN_INPUT_SIDE = 28

# The reference's Detect step: fixed by how the released model was trained, not tuned here.
VARIANCES = (0.1, 0.2)      # scales of the centre and of the log-size offsets
CANDIDATE_SCORE = 0.05      # faces scored at or below this are not candidates
CANDIDATE_IOU = 0.3         # NMS among candidates, in [0, 1] box units
CANDIDATE_POOL = 5000       # NMS looks at the best this many candidates
CANDIDATE_KEEP = 750        # and keeps at most this many


def s3fd_weights(checkpoint: str | None = None) -> Path:
    """Where S3FD's released weights are read from: ``checkpoint`` when given, else
    ``$TORCH_HOME/checkpoints/sfd_face.pth``, beside the other released face models' weights."""
    return Path(checkpoint).expanduser() if checkpoint else torch_home() / "checkpoints" / WEIGHTS_FILE


def preprocess(frame_rgb: np.ndarray) -> torch.Tensor:
    """One RGB uint8 frame ``[h, w, 3]`` at detection size -> the network input ``[1, 3, h, w]``."""
    x = frame_rgb.transpose(2, 0, 1).astype(np.float32) - np.asarray(MEAN_RGB, np.float32)[:, None, None]
    return torch.from_numpy(np.ascontiguousarray(x))[None]


def decode(loc: torch.Tensor, priors: torch.Tensor) -> torch.Tensor:
    """Offsets ``[P, 4]`` and priors (cx, cy, w, h) -> boxes (x1, y1, x2, y2), float32, in the reference's
    order of operations (x2 = x1 + w, not cx + w / 2: the two round differently)."""
    centre = priors[:, :2] + loc[:, :2] * VARIANCES[0] * priors[:, 2:]
    size = priors[:, 2:] * torch.exp(loc[:, 2:] * VARIANCES[1])
    corner = centre - size / 2
    return torch.cat([corner, size + corner], dim=1)


def nms(boxes: np.ndarray, scores: np.ndarray, iou: float, pool: int | None = None,
        keep_at_most: int | None = None) -> np.ndarray:
    """Greedy NMS: indices of the kept boxes, best score first. Of equal scores the later box goes first
    (as the reference's ascending sort read from its end). A box is kept while its IoU with every kept
    box is at most ``iou``; a NaN IoU (two empty boxes) suppresses, as in the reference."""
    order = np.argsort(scores, kind="stable")[::-1]
    if pool is not None:
        order = order[:pool]
    x1, y1, x2, y2 = boxes.T
    areas = (x2 - x1) * (y2 - y1)
    keep = []
    with np.errstate(invalid="ignore", divide="ignore"):
        while order.size and (keep_at_most is None or len(keep) < keep_at_most):
            best, rest = order[0], order[1:]
            keep.append(best)
            width = np.maximum(np.minimum(x2[rest], x2[best]) - np.maximum(x1[rest], x1[best]), 0)
            height = np.maximum(np.minimum(y2[rest], y2[best]) - np.maximum(y1[rest], y1[best]), 0)
            inter = width * height
            order = rest[inter / ((areas[rest] - inter) + areas[best]) <= iou]
    return np.asarray(keep, np.int64)


def face_candidates(loc: torch.Tensor, conf_logits: torch.Tensor, priors: torch.Tensor) -> np.ndarray:
    """One image's head outputs (``[P, 4]``, ``[P, 2]``) -> candidate faces ``[k, 5]`` float32 rows
    (score, x1, y1, x2, y2) in [0, 1] units, best first: the reference's ``Detect`` for the face class."""
    scores = torch.softmax(conf_logits, dim=-1)[:, 1]
    candidate = scores > CANDIDATE_SCORE
    boxes = decode(loc, priors)[candidate].numpy()
    scores = scores[candidate].numpy()
    kept = nms(boxes, scores, CANDIDATE_IOU, pool=CANDIDATE_POOL, keep_at_most=CANDIDATE_KEEP)
    return np.concatenate([scores[kept, None], boxes[kept]], axis=1).astype(np.float32)


def faces_in_pixels(candidates: np.ndarray, width: float, height: float, min_score: float = 0.9,
                    iou: float = 0.1) -> np.ndarray:
    """Candidates (score, x1, y1, x2, y2 in [0, 1] units) -> faces ``[k, 5]`` float64 (x1, y1, x2, y2,
    score) in pixels of a ``width`` x ``height`` frame: the reference's ``detect_faces`` after the network."""
    faces = candidates[candidates[:, 0] > min_score]
    # float32 product, then float64 NMS, as the reference computes them
    pixels = (faces[:, 1:] * np.asarray([width, height, width, height], np.float32)).astype(np.float64)
    rows = np.concatenate([pixels, faces[:, :1].astype(np.float64)], axis=1)
    return rows[nms(rows[:, :4], rows[:, 4], iou)]


class S3FDDetector(FrameDetector):
    """S3FD on frames; ``detect(frames)`` gives each frame's faces in original pixels (the surface of
    :class:`m3ed.asd.detect.FaceDetector`)."""

    def __init__(self, net: S3FDNet, params: S3FDParams = S3FDParams(), device: str | torch.device = "cpu"):
        self.params = params
        self.device = torch.device(device)
        self.net = net.eval().to(self.device)

    @classmethod
    def from_file(cls, path, params: S3FDParams = S3FDParams(), device: str | torch.device = "cpu") -> "S3FDDetector":
        """The detector with the released ``sfd_face.pth`` at ``path`` (see :func:`m3ed.models.s3fd.load_s3fd`)."""
        return cls(load_s3fd(path), params, device)

    def to(self, device: str | torch.device) -> "S3FDDetector":
        self.device = torch.device(device)
        self.net.to(self.device)
        return self

    def scale(self, frame_height: int) -> float:
        """Detection pixels per original pixel: the fixed ``params.scale``, whatever the frame's size."""
        return self.params.scale

    @property
    def batch_size(self) -> int:
        return self.params.batch_size or 16

    def rescale(self, frames: np.ndarray) -> np.ndarray:
        """Frames at detection size (the same array at scale 1), resized as the reference does."""
        check_frames(frames)
        scale = self.params.scale
        if scale == 1.0 or len(frames) == 0:
            return frames
        return np.stack([cv2.resize(f, (0, 0), fx=scale, fy=scale, interpolation=cv2.INTER_LINEAR) for f in frames])

    def detect_batches(self, batches: Sequence[np.ndarray], scale: float) -> list[list[np.ndarray]]:
        """Faces of each frame of each batch of frames at detection size; ``scale`` from :meth:`scale`.
        Every frame is its own network call on one torch thread (side by side on CPU), so the result
        does not depend on how frames are batched or on the run's thread count."""
        frames = [frame for batch in batches for frame in batch]
        if len(frames) > 1:
            found = side_by_side(lambda frame: self._detect_frame(frame, scale), frames, self.device)
        else:
            with torch_threads(1), torch.inference_mode():
                found = [self._detect_frame(frame, scale) for frame in frames]
        out, first = [], 0
        for batch in batches:
            out.append(found[first:first + len(batch)])
            first += len(batch)
        return out

    def _detect_frame(self, frame: np.ndarray, scale: float) -> np.ndarray:
        height, width = frame.shape[:2]
        if min(height, width) < MIN_INPUT_SIDE:
            raise ValueError(f"S3FD needs frames of at least {MIN_INPUT_SIDE} pixels a side at detection size; "
                             f"got {width}x{height} (scale {scale}): raise the detection scale")
        with torch.inference_mode():   # per call: grad mode is thread-local
            heads = self.net(preprocess(frame).to(self.device))
        priors = prior_boxes((height, width), heads.feature_sizes)
        candidates = face_candidates(heads.loc[0].float().cpu(), heads.conf_logits[0].float().cpu(), priors)
        faces = faces_in_pixels(candidates, width / scale, height / scale, self.params.min_score, self.params.face_iou)
        return faces.astype(np.float32) if len(faces) else NO_FACES
