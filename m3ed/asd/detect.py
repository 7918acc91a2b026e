"""Face detection with facenet-pytorch's MTCNN (its weights ship in the wheel).

Frames arrive in chunks from one decode of the dialogue (:meth:`m3ed.locate.MediaSource.frames`).
Every ``every``-th frame of the dialogue is detected (the tracker interpolates the others),
after rescaling to ``height`` pixels (faster, and the detector's pyramid starts at
``min_face_size``); boxes are returned in the original frame's pixels. Frames go to MTCNN in
batches of equal size (``MTCNN.detect`` accepts ``[n,H,W,3]``), gathered across decode chunks
(:class:`Detections` keeps the rescaled frames until a batch is full), so that a sparse schedule
still fills its batches. On CPU, batches run side by side, one per torch thread of the run, each
call on one thread; on CUDA the batches are larger and MTCNN runs on the GPU.

The default schedule, every 5th frame at 240 px, was chosen from the agreement with every-frame
detection at native size measured by ``bench/bench_asd_agreement.py`` (README, "Active speaker
detection"); ``--detect-every 1 --detect-height 0`` is the exact setting.

Thresholds (named in :class:`DetectionParams`):

- ``min_face_size`` 20 px at the detection height (MTCNN's default). At 360 px high this is
  ~5.5 % of the frame height: faces smaller than that are too small for ASD crops anyway.
- ``stage_thresholds`` (0.6, 0.7, 0.7): MTCNN's P-, R- and O-net defaults.
- ``min_probability`` 0.9: faces whose final probability is lower are dropped, like the TalkNet
  demo's ``conf_th=0.9`` for its S3FD detector.
- ``scale_factor`` 0.709: the pyramid step (MTCNN's default). With ``min_face_size`` it sets
  the P-net's work and the number of candidate boxes the R- and O-nets check, most of MTCNN's time.
  0.5 takes about a quarter off detection (see the docs' detection-schedule table).

A frame's faces depend on that frame alone, never on the frames detected with it
(:mod:`m3ed.asd.mtcnn` gives every network call a fixed shape): the batch size, the side-by-side
workers and the ASD frame cache are work division only, and cannot change the output.

MTCNN's max pools run on channels-last copies (:class:`_ChannelsLastMaxPool`): the same values
bit for bit, a quarter of the time of PyTorch's channels-first kernel on CPU.
"""
from __future__ import annotations

from contextlib import contextmanager
from functools import partial
from typing import Iterable, Iterator, Sequence

import cv2
import numpy as np
import torch

from ..device import side_by_side, side_by_side_workers
from .mtcnn import detect_face
from .params import DetectionParams

#: One frame's faces: ``[k, 5]`` float32 rows ``x1, y1, x2, y2, probability`` in original pixels.
NO_FACES = np.zeros((0, 5), np.float32)


@contextmanager
def _one_thread_on_cpu(device: torch.device) -> Iterator[None]:
    """MTCNN's time on CPU goes to thousands of tiny per-candidate resizes, which intra-op threads
    only slow down: one thread measured 8.5-9.6 frames/s against 0.8-0.9 with two on a busy 2-core
    machine. The run's threads go to whole MTCNN calls side by side instead (:meth:`FaceDetector.detect_batches`)."""
    if device.type != "cpu":
        yield
        return
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


class FrameDetector:
    """What tracking needs of a face detector (MTCNN here, S3FD in :mod:`m3ed.asd.s3fd`): ``detect(frames)``
    gives each frame's faces in original pixels. A subclass gives ``device``, ``batch_size``,
    ``scale(frame_height)``, ``rescale(frames)`` and ``detect_batches(batches, scale)``."""

    @property
    def workers(self) -> int:
        """Calls run side by side: on CPU one per torch thread of the run, on a GPU one."""
        return side_by_side_workers(self.device)

    def detect(self, frames: np.ndarray) -> list[np.ndarray]:
        """``[n,H,W,3]`` RGB uint8 -> n arrays ``[k,5]`` (x1, y1, x2, y2, score), original pixels."""
        check_frames(frames)
        size = self.batch_size
        batches = [self.rescale(frames[first:first + size]) for first in range(0, len(frames), size)]
        return [faces for batch in self.detect_batches(batches, self.scale(frames.shape[1])) for faces in batch]


class FaceDetector(FrameDetector):
    """MTCNN on batches of frames; ``detect(frames)`` gives each frame's faces in original pixels."""

    def __init__(self, params: DetectionParams = DetectionParams(), device: str | torch.device = "cpu"):
        from facenet_pytorch import MTCNN

        self.params = params
        self.device = torch.device(device)
        self.mtcnn = MTCNN(keep_all=True, min_face_size=params.min_face_size, factor=params.scale_factor,
                           thresholds=list(params.stage_thresholds), post_process=False, device=self.device)
        _fast_max_pools(self.mtcnn)

    def to(self, device: str | torch.device) -> "FaceDetector":
        self.device = torch.device(device)
        self.mtcnn.to(self.device)
        self.mtcnn.device = self.device
        return self

    def scale(self, frame_height: int) -> float:
        """Detection pixels per original pixel."""
        height = self.params.height
        return 1.0 if height is None or height >= frame_height else height / frame_height

    @property
    def batch_size(self) -> int:
        return self.params.batch_for(self.device)

    def rescale(self, frames: np.ndarray) -> np.ndarray:
        """Frames at the detection height (the same array when no rescaling is needed)."""
        check_frames(frames)
        scale = self.scale(frames.shape[1])
        if scale == 1.0:
            return frames
        size = (max(1, round(frames.shape[2] * scale)), max(1, round(frames.shape[1] * scale)))
        return np.stack([cv2.resize(f, size, interpolation=cv2.INTER_AREA) for f in frames])

    def detect_rescaled(self, frames: np.ndarray, scale: float) -> list[np.ndarray]:
        """Faces of frames already at the detection height (one MTCNN call); ``scale`` from :meth:`scale`."""
        return self.detect_batches([frames], scale)[0]

    def detect_batches(self, batches: Sequence[np.ndarray], scale: float) -> list[list[np.ndarray]]:
        """:meth:`detect_rescaled` of each batch. On CPU the calls run side by side, one per torch
        thread of the run, each on one thread (:func:`m3ed.device.side_by_side`): 1.8x faster on 2
        cores than one call after another. Each frame's faces depend on that frame alone."""
        call = partial(self._call, scale=scale)
        if len(batches) > 1:
            return side_by_side(call, batches, self.device)
        with _one_thread_on_cpu(self.device):
            return [call(frames) for frames in batches]

    def _call(self, frames: np.ndarray, scale: float) -> list[np.ndarray]:
        if len(frames) == 0:
            return []
        with torch.inference_mode():   # per call: grad mode is thread-local
            found = self._mtcnn(frames)
        return [self._faces(faces, scale) for faces in found]

    def _mtcnn(self, frames: np.ndarray) -> list[np.ndarray]:
        """MTCNN's faces per frame, ``[k,5]`` float32 at the detection size, largest first; each
        frame's from that frame alone (:mod:`m3ed.asd.mtcnn`)."""
        m = self.mtcnn
        return detect_face(frames, m.min_face_size, m.pnet, m.rnet, m.onet, m.thresholds, m.factor, self.device)

    def _faces(self, faces: np.ndarray, scale: float) -> np.ndarray:
        faces = np.concatenate([faces[:, :4] / scale, faces[:, 4:]], axis=1)
        return faces[faces[:, 4] >= self.params.min_probability]


class _ChannelsLastMaxPool(torch.nn.Module):
    """The same max pooling computed on a channels-last copy, returned contiguous: on CPU about 4x
    faster than PyTorch's channels-first kernel for MTCNN's many small R-/O-net maps, and equal
    bit for bit (a maximum does not depend on the order it is taken in; tested)."""

    def __init__(self, pool: torch.nn.MaxPool2d):
        super().__init__()
        self.pool = pool

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.device.type != "cpu" or x.dim() != 4 or not x.is_contiguous():
            return self.pool(x)   # already channels-last (or unusual strides): as it comes
        return self.pool(x.contiguous(memory_format=torch.channels_last)).contiguous()


def _fast_max_pools(mtcnn) -> None:
    """Swap the P-, R- and O-net max pools for :class:`_ChannelsLastMaxPool` (same outputs)."""
    for net in (mtcnn.pnet, mtcnn.rnet, mtcnn.onet):
        for name, module in list(net.named_children()):
            if isinstance(module, torch.nn.MaxPool2d):
                setattr(net, name, _ChannelsLastMaxPool(module))


class Detections:
    """Faces per detected frame of one dialogue (frames ``0, every, 2*every, ...``), filled chunk by chunk.

    The chunk's frames on the grid are rescaled at once and wait (small) until every worker of the
    detector has a full batch; reading :attr:`faces` (or :meth:`frames`) detects what still waits.
    A frame's faces do not depend on the batch it was detected in (:mod:`m3ed.asd.mtcnn`).
    """

    def __init__(self, every: int = 1):
        self.every = every
        self._faces: dict[int, np.ndarray] = {}
        self.frame_count = 0
        self.frame_size: tuple[int, int] | None = None  # (height, width)
        self._detector: FaceDetector | None = None
        self._waiting: list[tuple[int, np.ndarray]] = []   # (frame index, rescaled frame)

    @property
    def faces(self) -> dict[int, np.ndarray]:
        self.flush()
        return self._faces

    @faces.setter
    def faces(self, faces: dict[int, np.ndarray]) -> None:
        self._waiting = []
        self._faces = faces

    def add_chunk(self, detector: FaceDetector, frames: np.ndarray) -> None:
        """Queue the chunk's frames that fall on the ``every`` grid; ``frames`` follow the previous chunk."""
        first = self.frame_count
        self.frame_count += len(frames)
        if len(frames) == 0:
            return
        if self._detector is not None and detector is not self._detector:
            self.flush()
        self._detector = detector
        self.frame_size = frames.shape[1:3]
        offsets = np.arange((-first) % self.every, len(frames), self.every)
        if len(offsets):
            self._waiting.extend(zip((first + offsets).tolist(), detector.rescale(frames[offsets])))
        ready = len(self._waiting) - len(self._waiting) % detector.batch_size
        if ready >= detector.batch_size * detector.workers:   # a full batch for every worker
            self._detect(ready)

    def flush(self) -> None:
        """Detect the frames still waiting (the last batch may be short)."""
        if self._waiting:
            self._detect(len(self._waiting))

    def _detect(self, count: int) -> None:
        """Detect the first ``count`` waiting frames, in batches of the detector's size."""
        waiting, self._waiting = self._waiting[:count], self._waiting[count:]
        size = self._detector.batch_size
        batches = [np.stack([frame for _, frame in waiting[i:i + size]]) for i in range(0, count, size)]
        found = self._detector.detect_batches(batches, self._detector.scale(self.frame_size[0]))
        for (index, _), faces in zip(waiting, (faces for batch in found for faces in batch)):
            self._faces[index] = faces

    def frames(self) -> np.ndarray:
        """The detected frame indices, ascending."""
        return np.asarray(sorted(self.faces), np.int64)

    def count(self) -> int:
        return sum(len(f) for f in self.faces.values())


def detect_faces(detector: FaceDetector, chunks: Iterable[np.ndarray]) -> Detections:
    """Detect every ``detector.params.every``-th frame of a stream of frame chunks."""
    detections = Detections(detector.params.every)
    for chunk in chunks:
        detections.add_chunk(detector, chunk)
    detections.flush()
    return detections


def check_frames(frames: np.ndarray) -> None:
    if frames.ndim != 4 or frames.shape[-1] != 3 or frames.dtype != np.uint8:
        raise ValueError(f"frames must be [n, height, width, 3] RGB uint8, got {frames.dtype} {list(frames.shape)}")
