"""The asd stage's faster paths on real inputs (the bundled sample, scikit-image's astronaut):
MTCNN's channels-last max pools give the same detections bit for bit; the coarser pyramid still
finds the faces; Light-ASD's fused inference gives the plain logits up to rounding; embedding
only what assignment reads leaves every read row with the same nearest embedded row."""
from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from m3ed.asd.assign import _fill_embeddings
from m3ed.asd.crop import embed_positions
from m3ed.asd.detect import DetectionParams, FaceDetector, _ChannelsLastMaxPool
from m3ed.asd.options import AsdConfig
from m3ed.asd.pipeline import CHUNK_FRAMES, AsdPipeline, read_positions
from m3ed.asd.score import ScoreParams, build_scorer, dialogue_mfcc, track_scores
from m3ed.locate import MediaSource
from m3ed.profiles import get_profile

DIALOGUE = "sampleval_1"   # 10 s, two faces


@pytest.fixture(scope="module")
def sample_frames(sample_paths, sample_corpus):
    media = MediaSource(sample_paths["videos"])
    span = media.locate(sample_corpus[DIALOGUE])
    return np.concatenate(list(media.frames(span, chunk=CHUNK_FRAMES)))


def _plain_pools(detector: FaceDetector) -> FaceDetector:
    for net in (detector.mtcnn.pnet, detector.mtcnn.rnet, detector.mtcnn.onet):
        for name, module in list(net.named_children()):
            if isinstance(module, _ChannelsLastMaxPool):
                setattr(net, name, module.pool)
    return detector


def test_channels_last_max_pools_give_the_same_detections_bit_for_bit(sample_frames):
    fast = FaceDetector(DetectionParams(height=None))
    plain = _plain_pools(FaceDetector(DetectionParams(height=None)))
    assert any(isinstance(m, _ChannelsLastMaxPool) for m in fast.mtcnn.rnet.children())
    assert not any(isinstance(m, _ChannelsLastMaxPool) for m in plain.mtcnn.rnet.children())
    frames = sample_frames[::25][:10]
    ours, theirs = fast.detect(frames), plain.detect(frames)
    assert sum(len(f) for f in theirs) >= len(frames)   # faces were found: the comparison means something
    # Exact: the same arithmetic. A maximum is exact in any order, and the nets then read equal
    # contiguous tensors with the same shapes.
    assert all(np.array_equal(a, b) for a, b in zip(ours, theirs))


def test_a_coarser_pyramid_with_a_larger_minimum_face_still_finds_the_astronaut():
    skimage_data = pytest.importorskip("skimage.data")
    image = skimage_data.astronaut()[None]   # 512 x 512, one face about 100 px high
    exact = FaceDetector(DetectionParams(height=None)).detect(image)[0]
    coarse = FaceDetector(DetectionParams(height=None, min_face_size=60, scale_factor=0.5)).detect(image)[0]
    assert len(exact) == 1 and len(coarse) == 1
    a, b = exact[0, :4], coarse[0, :4]
    inter = np.prod(np.clip(np.minimum(a[2:], b[2:]) - np.maximum(a[:2], b[:2]), 0, None))
    union = np.prod(a[2:] - a[:2]) + np.prod(b[2:] - b[:2]) - inter
    assert inter / union > 0.8
    with pytest.raises(ValueError, match="scale_factor"):
        DetectionParams(scale_factor=1.0)


@pytest.fixture(scope="module")
def sample_tracks(sample_paths, sample_corpus):
    config = AsdConfig(model="light-asd", embedder="inception-resnet-v1")
    pipeline = AsdPipeline(config, get_profile("tiny"))
    media = MediaSource(sample_paths["videos"])
    dialogue = sample_corpus[DIALOGUE]
    span = media.locate(dialogue)
    faces, crops = pipeline.finder.find_faces(DIALOGUE, lambda: media.frames(span, chunk=CHUNK_FRAMES))
    return pipeline, dialogue, faces, crops, media.audio(span)


def test_fused_light_asd_gives_the_plain_scores(sample_tracks):
    pipeline, dialogue, faces, crops, audio = sample_tracks
    model = build_scorer(get_profile("tiny"), "cpu", "light-asd")
    features = dialogue_mfcc(audio)
    needed = pipeline.needed_frames(dialogue, faces.tracks)
    plain, plain_demo = track_scores(model, features, faces.tracks, crops.asd, ScoreParams(), needed)
    fused, fused_demo = track_scores(model, features, faces.tracks, crops.asd, ScoreParams(fused=True), needed)
    speaking = np.concatenate(plain)
    assert np.nanmax(speaking) > 0.9 and np.nanmin(speaking) < 0.1   # real weights: both kinds of frame
    for a, b in zip(plain, fused):
        assert np.array_equal(np.isnan(a), np.isnan(b))
        assert np.nanmax(np.abs(a - b)) < 1e-4
    # the rounded demo score moves only where its unrounded value sits on a rounding boundary
    changed = sum(int(np.sum(a != b)) for a, b in zip(plain_demo, fused_demo))
    assert changed <= 0.01 * sum(len(a) for a in plain_demo)
    video = torch.from_numpy(crops.asd[0][:60]).float()[None]
    first = faces.tracks[0].first
    mfcc = features[4 * first:4 * (first + 60)][None]
    with torch.inference_mode():
        assert torch.allclose(model.fused_logits(mfcc, video), model.logits(mfcc, video), atol=1e-4)


def test_read_positions_keep_the_nearest_embedded_row_of_every_read_row():
    rng = np.random.default_rng(0)
    for length, every in [(1, 5), (7, 5), (53, 5), (120, 10), (200, 25)]:
        positions = embed_positions(length, every)
        read = rng.random(length) < 0.3
        read[rng.integers(length)] = True
        chosen = read_positions(positions, read)
        assert len(chosen) <= len(positions)
        full = np.full((length, 2), np.nan, np.float32)
        full[positions] = np.stack([np.cos(positions), np.sin(positions)], 1)
        part = np.full((length, 2), np.nan, np.float32)
        part[positions[chosen]] = full[positions[chosen]]
        rows = np.flatnonzero(read)
        assert np.array_equal(_fill_embeddings(full)[rows], _fill_embeddings(part)[rows])
    assert len(read_positions(embed_positions(50, 5), np.zeros(50, bool))) == 0


def test_embedding_only_read_rows_gives_the_same_assignment(sample_tracks):
    pipeline, dialogue, faces, crops, audio = sample_tracks
    from m3ed.asd.assign import assign_speakers

    faces.scores, faces.demo_scores = pipeline.score(faces.tracks, crops, dialogue_mfcc(audio),
                                                     pipeline.needed_frames(dialogue, faces.tracks))
    # the dialogue with its first half of utterances only: the tracks go on, unread, after them
    half = dialogue.utterances[:len(dialogue.utterances) // 2]
    dialogue = dataclasses.replace(dialogue, utterances=half)
    read = pipeline.utterance_rows(dialogue, faces.tracks)
    full = pipeline.embed(faces.tracks, crops)
    part = pipeline.embed(faces.tracks, crops, read)
    embedded_full = sum(int((~np.isnan(e[:, 0])).sum()) for e in full)
    embedded_part = sum(int((~np.isnan(e[:, 0])).sum()) for e in part)
    assert 0 < embedded_part < embedded_full
    for r, a, b in zip(read, full, part):
        fa, fb = _fill_embeddings(a)[r], _fill_embeddings(b)[r]
        assert np.allclose(fa, fb, atol=1e-5)
    ours = assign_speakers(dialogue, faces.tracks, faces.scores, part, 25.0, pipeline.config.assign,
                           stage1_scores=faces.demo_scores)
    theirs = assign_speakers(dialogue, faces.tracks, faces.scores, full, 25.0, pipeline.config.assign,
                             stage1_scores=faces.demo_scores)
    assert any((rows[:, 1] >= 0).any() for rows in ours.values())
    # Embeddings from other batches round differently: the contract's share of the same face and stage.
    same = sum(int(((ours[u.id][:, 1] == theirs[u.id][:, 1]) & (ours[u.id][:, 7] == theirs[u.id][:, 7])).sum()) for u in half)
    assert same >= 0.995 * sum(len(theirs[u.id]) for u in half)
    with pytest.raises(ValueError, match="embed_frames"):
        AsdConfig(embed_frames="some")


def test_run_calls_the_hook_after_each_step_with_what_it_made(sample_tracks, sample_paths):
    """The hook sees every step in order, and the run scores and embeds exactly the rows that
    needed_frames and embedded_rows name (the conditions tested above are the ones it runs)."""
    pipeline, dialogue, _, _, _ = sample_tracks
    seen: list[tuple[str, object]] = []
    faces, speaker_faces, _ = pipeline.run(dialogue, MediaSource(sample_paths["videos"]),
                                        hook=lambda step, artifact: seen.append((step, artifact)))
    steps = [step for step, _ in seen]
    assert steps[0] == "audio" and steps[-4:] == ["faces", "scores", "embeddings", "speaker_faces"]
    chunks = [a for s, a in seen if s == "decode"]
    assert sum(len(c) for c in chunks) == faces.frame_count and steps.count("shots") == len(chunks)
    assert {"detections", "tracks", "crops"} <= set(steps[:-4])
    artifacts = dict(seen[-4:])
    assert artifacts["faces"] is faces and artifacts["speaker_faces"] is speaker_faces
    assert sum(len(new) for s, new in seen if s == "tracks") == len(faces.tracks) > 0
    needed = pipeline.needed_frames(dialogue, faces.tracks)
    scores, _ = artifacts["scores"]
    context = pipeline.config.scoring.context_frames
    for probabilities, mask in zip(scores, needed):
        assert not np.isnan(probabilities[mask]).any()
        rows, scored = np.flatnonzero(mask), np.flatnonzero(~np.isnan(probabilities))
        assert all(np.abs(rows - f).min() <= context for f in scored)   # only what is read, and its context
    crops = [a for s, a in seen if s == "crops"]
    positions = {id(t): p for c in crops for t, p in zip(c.tracks, c.face_positions)}
    for track, rows, read in zip(faces.tracks, artifacts["embeddings"], pipeline.embedded_rows(dialogue, faces.tracks)):
        embedded = np.flatnonzero(~np.isnan(rows[:, 0]))
        expected = positions[id(track)][read_positions(positions[id(track)], read)]
        assert np.array_equal(embedded, expected)
