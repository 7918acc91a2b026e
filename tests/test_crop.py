"""Crop geometry of the ASD face crops (TalkNet demo) and the embedding crops, on synthetic frames."""
from __future__ import annotations

import numpy as np
from scipy.signal import medfilt

from m3ed.asd.crop import (ASD_FACE_SIZE, PAD_VALUE, TrackCrops, asd_crop, crop_window, embed_positions,
                           face_crops, smooth_boxes)
from m3ed.asd.track import Track


def frame_with_rectangle(box=(100, 50, 140, 100), shape=(200, 300)) -> np.ndarray:
    frame = np.zeros(shape + (3,), np.uint8)
    x1, y1, x2, y2 = box
    frame[y1:y2, x1:x2] = 255
    return frame


def test_crop_window_by_hand():
    # box 40 wide, 50 high: s = 25, centre (120, 75); the square starts at the face top (75 - 25)
    # and reaches s * (1 + 2 * 0.4) = 45 below the centre; it is 2 * 25 * 1.4 = 70 wide
    assert crop_window(25.0, 120.0, 75.0, (200, 300)) == (50, 120, 85, 155)


def test_asd_crop_content_by_hand():
    frame = frame_with_rectangle()
    s, x, y = 25.0, 120.0, 75.0
    gray = asd_crop(frame, s, x, y)
    assert gray.shape == (ASD_FACE_SIZE, ASD_FACE_SIZE) and gray.dtype == np.uint8
    # the 70 px square becomes 224 px (x3.2); the central 112 px show frame rows 67.5..102.5 and
    # columns 102.5..137.5; the rectangle (rows 50..100, columns 100..140) fills rows 0..104 of it
    assert (gray[:100] == 255).all()
    assert (gray[108:] == 0).all()


def test_asd_crop_pads_with_110_outside_the_frame():
    frame = frame_with_rectangle(box=(0, 0, 30, 30), shape=(100, 100))
    r0, r1, c0, c1 = crop_window(15.0, 5.0, 5.0, frame.shape[:2])
    assert r0 < 0 and c0 < 0
    gray = asd_crop(np.zeros((100, 100, 3), np.uint8), 15.0, 5.0, 5.0)
    # centre 5,5 with s=15: the crop's top-left lies outside the picture -> padding value
    assert gray[0, 0] == PAD_VALUE
    assert gray[-1, -1] == 0


def test_smoothing_is_a_13_frame_median_with_zero_padded_edges():
    boxes = np.tile(np.array([[100, 50, 140, 100]], np.float32), (30, 1))
    boxes[15] = [10, 10, 200, 190]                   # one wild detection
    s, x, y = smooth_boxes(boxes)
    assert np.allclose(s, 25.0) and np.allclose(x, 120.0) and np.allclose(y, 75.0)
    ramp = np.arange(20, dtype=np.float64)
    boxes = np.stack([ramp, ramp, ramp + 10, ramp + 10], axis=1)
    _, x, _ = smooth_boxes(boxes)
    assert np.array_equal(x, medfilt(ramp + 5, 13))  # scipy semantics: the ends see zeros
    assert x[-1] == 18 < ramp[-1] + 5                # (the last window: 18..24 and six zeros)


def test_track_crops_stream_in_chunks_and_embedding_positions():
    frames = np.stack([frame_with_rectangle()] * 30)
    track = Track(np.arange(3, 27), np.tile([[100, 50, 140, 100]], (24, 1)), track_id=0)
    crops = TrackCrops([track], embed_every=10)
    for first in range(0, 30, 7):                    # chunks that cut through the track
        crops.add_chunk(frames[first:first + 7])
    crops.check_complete()
    assert crops.asd[0].shape == (24, 112, 112)
    assert np.array_equal(crops.asd[0][5], asd_crop(frames[0], 25.0, 120.0, 75.0))
    assert crops.face_positions[0].tolist() == [0, 10, 20, 23] == embed_positions(24, 10).tolist()
    assert crops.faces[0].shape == (4, 160, 160, 3)
    assert (crops.faces[0] == 255).all()             # the tight box is all rectangle


def test_face_crops_resize_the_box():
    frame = frame_with_rectangle()
    out = face_crops(frame[None], np.array([[90, 40, 150, 110]], np.float32), size=160)
    assert out.shape == (1, 160, 160, 3)
    assert out[0, 80, 80, 0] == 255 and out[0, 2, 2, 0] == 0
