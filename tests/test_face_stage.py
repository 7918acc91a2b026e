"""The visual stage on a real clip, with a speaker_faces file as the asd stage writes it."""
from __future__ import annotations

import dataclasses
import subprocess
from pathlib import Path

import cv2
import numpy as np
import pytest
import skimage.data
import torch

from m3ed.asd.assign import COLUMNS
from m3ed.corpus import Corpus, Dialogue, Utterance
from m3ed.extract.face import FRAME_SET, MEAN_SET, SPEAKER_FACES, FaceStage, VisualOptions, crop_face
from m3ed.locate import MediaSource
from m3ed.media import ffmpeg_exe
from m3ed.stage import RunContext
from m3ed.profiles import ModelUnavailable, get_profile
from m3ed.store import FeatureStore

FACE_BOX = np.array([110, 30, 200, 130], np.float32)  # the astronaut's face in the 320x240 frames


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def make_clip(path: Path, frames: int = 50) -> Path:
    """2 s of the astronaut photo (a real face) drifting right, H.264 at 25 fps."""
    picture = cv2.resize(skimage.data.astronaut()[:384], (320, 240), interpolation=cv2.INTER_AREA)
    data = b"".join(np.roll(picture, i // 10, axis=1).tobytes() for i in range(frames))
    cmd = [ffmpeg_exe(), "-y", "-v", "error", "-f", "rawvideo", "-pix_fmt", "rgb24", "-s", "320x240", "-r", "25",
           "-i", "-", "-c:v", "libx264", "-pix_fmt", "yuv420p", str(path)]
    subprocess.run(cmd, input=data, check=True)
    return path


def speaker_face_rows(frames: range, box: np.ndarray | None) -> np.ndarray:
    rows = np.full((len(frames), len(COLUMNS)), np.nan, np.float32)
    rows[:, 0], rows[:, 1], rows[:, 7] = list(frames), -1, 0
    if box is not None:
        rows[:, 1], rows[:, 2:6], rows[:, 6], rows[:, 7] = 3, box, 0.95, 1
    return rows


@pytest.fixture(scope="module")
def context(tmp_path_factory) -> RunContext:
    root = tmp_path_factory.mktemp("visual")
    videos = root / "videos"
    videos.mkdir()
    make_clip(videos / "clip_1.mp4")
    dialogue = Dialogue("clip_1", "show", (
        Utterance("clip_1_1", "clip_1", "A", 0.0, 0.8),   # A's face in every other frame
        Utterance("clip_1_2", "clip_1", "B", 0.8, 1.6),   # B's face never found
        Utterance("clip_1_3", "clip_1", "A", 1.6, 2.0),   # A's face in the first 3 frames only
        Utterance("clip_1_4", "clip_1", "B", 1.6, 2.0),   # no speaker_faces entry (asd failed)
    ), speakers={})
    corpus = Corpus((dialogue,))
    store = FeatureStore(root / "out")
    rows1 = speaker_face_rows(range(0, 20), FACE_BOX)
    rows1[::2, 1], rows1[::2, 2:7], rows1[::2, 7] = -1, np.nan, 0  # a face in every other frame
    rows3 = speaker_face_rows(range(40, 50), FACE_BOX)
    rows3[3:, 1], rows3[3:, 2:7], rows3[3:, 7] = -1, np.nan, 0
    store.write_part(SPEAKER_FACES, "clip_1", {
        "clip_1_1": rows1,
        "clip_1_2": speaker_face_rows(range(20, 40), None),
        "clip_1_3": rows3,
    }, config="asd-test")
    store.publish(SPEAKER_FACES, corpus, {"config_hash": "asd-test"})
    return RunContext(corpus=corpus, media=MediaSource(videos), store=store, profile=get_profile("tiny"))


@pytest.fixture(scope="module")
def stage(context) -> FaceStage:
    return FaceStage.from_config(VisualOptions(), context)


@pytest.fixture(scope="module")
def result(stage, context):
    (result,) = stage.process(list(context.corpus), context)
    return result


def test_the_authors_densenet(stage):
    assert sum(p.numel() for p in stage.model.parameters()) == 768_044
    assert stage.model.feature_dim == 342


def test_features_per_frame_with_a_face_and_their_mean(result):
    assert result.error is None
    frames, means = result.features[FRAME_SET], result.features[MEAN_SET]
    assert set(frames) == set(means) == {"clip_1_1", "clip_1_3"}
    assert frames["clip_1_1"].shape == (10, 342) and frames["clip_1_3"].shape == (3, 342)
    assert frames["clip_1_1"].dtype == np.float32 and np.isfinite(frames["clip_1_1"]).all()
    assert np.allclose(means["clip_1_1"], frames["clip_1_1"].mean(axis=0))
    assert means["clip_1_3"].shape == (342,)


def test_an_utterance_without_the_speakers_face_gets_no_key_and_a_reason(result):
    reasons = {(f.feature_set, f.utterance_id): f.reason for f in result.failures}
    assert set(reasons) == {(fs, u) for fs in (FRAME_SET, MEAN_SET) for u in ("clip_1_2", "clip_1_4")}
    assert reasons[(FRAME_SET, "clip_1_2")] == "no face of speaker B found in this utterance"
    assert "asd stage" in reasons[(MEAN_SET, "clip_1_4")]


def test_provenance_and_attrs(stage):
    provenance = stage.provenance()
    assert provenance["mean"] == pytest.approx(89.936089) and provenance["std"] == pytest.approx(45.954746)
    assert provenance["checkpoint"] is None and provenance["speaker_faces"] == "asd-test"
    assert stage.attrs(FRAME_SET)["frame_rate"] == 25.0


def test_normalisation_constants_are_options(context, stage):
    other = FaceStage.from_config(VisualOptions(mean=128.0, std=64.0), context)
    assert other.provenance()["mean"] == 128.0 and other.provenance()["std"] == 64.0
    face = crop_face(np.asarray(skimage.data.astronaut()), FACE_BOX * 1.6)
    mine, theirs = stage.features({"u": [face]})["u"], other.features({"u": [face]})["u"]
    assert not np.allclose(mine, theirs)  # same weights (same seed), other normalisation


def test_the_asd_stage_must_have_run(context, tmp_path):
    bare = RunContext(corpus=context.corpus, media=context.media, store=FeatureStore(tmp_path), profile=context.profile)
    with pytest.raises(FileNotFoundError, match="run the asd stage first"):
        FaceStage.from_config(VisualOptions(), bare)


def test_paper_profile_needs_a_checkpoint(context):
    paper = RunContext(corpus=context.corpus, media=context.media, store=context.store, profile=get_profile("paper"))
    with pytest.raises(ModelUnavailable, match="m3ed train-fer"):
        FaceStage.from_config(VisualOptions(checkpoint=None), paper)


def test_square_crop_pads_outside_the_picture():
    frame = np.full((100, 100, 3), 200, np.uint8)
    crop = crop_face(frame, np.array([-20, -20, 30, 30], np.float32), "square")
    assert crop.shape == (64, 64) and crop.dtype == np.uint8
    assert crop[0, 0] == 0 and crop[-1, -1] == 200  # zero padding top-left, picture bottom-right


def authors_face(frame_rgb: np.ndarray, box) -> np.ndarray:
    """extract_spk_faces.extract_all_face (x1, y1 clamped at 0, img[int(y1):int(y2), int(x1):int(x2)] of the
    BGR frame) followed by DensefaceExtractor (BGR2GRAY, cv2.resize to 64x64, default interpolation)."""
    img = np.ascontiguousarray(frame_rgb[:, :, ::-1])  # cv2.imread gives BGR
    x1, y1, x2, y2 = box
    x1, y1 = max(x1, 0), max(y1, 0)
    face = img[int(y1):int(y2), int(x1):int(x2)]
    return cv2.resize(cv2.cvtColor(face, cv2.COLOR_BGR2GRAY), (64, 64))


def test_default_crop_is_the_authors_stretched_box():
    rng = np.random.default_rng(0)
    frame = rng.integers(0, 256, (120, 160, 3), dtype=np.uint8)
    for box in [(10.7, 5.2, 50.9, 85.6), (-12.5, -3.9, 30.2, 40.8), (140.3, 90.1, 175.0, 131.0)]:
        np.testing.assert_array_equal(crop_face(frame, np.array(box, np.float32)), authors_face(frame, box))
    # A 40x80 box, left half black and right half white: stretched, no context around it.
    halves = np.full((120, 160, 3), 128, np.uint8)
    halves[20:100, 60:80], halves[20:100, 80:100] = 0, 255
    tight = crop_face(halves, np.array([60, 20, 100, 100], np.float32))
    assert (tight[:, :31] == 0).all() and (tight[:, 33:] == 255).all()
    square = crop_face(halves, np.array([60, 20, 100, 100], np.float32), "square")
    assert (square[:, :10] == 128).all()  # the square shows the frame around the face
    with pytest.raises(ValueError, match="holds no pixel"):
        crop_face(halves, np.array([170, 10, 200, 50], np.float32))


def test_stage_cuts_the_authors_crop_by_default(context, stage):
    assert stage.config.crop == "tight" and stage.provenance()["crop"] == "tight"
    rows = speaker_face_rows(range(40, 43), FACE_BOX)
    crops = stage.crops(context.corpus["clip_1"], {"u": rows}, context)["u"]
    frames = np.concatenate(list(context.media.frames(context.media.locate(context.corpus["clip_1"]), fps=25.0)))
    for crop, frame in zip(crops, frames[40:43]):
        np.testing.assert_array_equal(crop, authors_face(frame, tuple(FACE_BOX)))
    from m3ed.pipelines.cli import build_extract_parser, config_from_args

    square = FaceStage.from_config(config_from_args(build_extract_parser().parse_args(["--fer-crop", "square"])).visual,
                                   context)
    assert square.config.crop == "square" and square.attrs(FRAME_SET)["crop_scale"] == 1.2
    assert not np.array_equal(square.crops(context.corpus["clip_1"], {"u": rows}, context)["u"][0], crops[0])


def test_through_the_runner_into_published_files(context):
    from m3ed.pipelines.extract import run_extraction
    from m3ed.store import FeatureReader

    from m3ed.config import ExtractConfig, RunOptions

    record = run_extraction(context.corpus, context, ExtractConfig(run=RunOptions(stages=("visual",), progress=False)))
    assert record["stages"]["visual"]["dialogues_done"] == 1
    with FeatureReader(context.store.feature_path(FRAME_SET)) as frames:
        assert sorted(frames.keys()) == ["clip_1_1", "clip_1_3"] and frames.dim == 342
        assert frames.attrs["normalisation_std"] == pytest.approx(45.954746)
    with FeatureReader(context.store.feature_path(MEAN_SET)) as means:
        assert means["clip_1_1"].shape == (342,)
    failed = {(f.feature_set, f.utterance_id) for f in context.store.read_failures()}
    assert (FRAME_SET, "clip_1_2") in failed and (MEAN_SET, "clip_1_4") in failed


def astronaut_faces(n: int) -> list[np.ndarray]:
    """``n`` real gray 64x64 faces: the astronaut's face, the box shifted a pixel at a time."""
    picture = np.asarray(skimage.data.astronaut())
    return [crop_face(picture, np.array([150 + i % 7, 20 + i // 7, 350 + i % 7, 220 + i // 7], np.float32))
            for i in range(n)]


@pytest.mark.parametrize("n", [1, 5, 15, 16, 40, 47, 48, 50, 64, 100, 256, 300])
def test_pieces_cover_the_batch_in_order_never_below_the_onednn_floor(n):
    from m3ed.extract.face import CPU_PIECE, ONEDNN_MIN_BATCH, pieces

    parts = pieces(n)
    assert [i for part in parts for i in part] == list(range(n))
    if n < CPU_PIECE + ONEDNN_MIN_BATCH:
        assert parts == [range(0, n)]   # a small batch stays whole: the kernels PyTorch picks for it stay the same
    else:
        assert all(ONEDNN_MIN_BATCH <= len(p) < CPU_PIECE + ONEDNN_MIN_BATCH for p in parts)
        assert len(parts) == n // CPU_PIECE + (n % CPU_PIECE >= ONEDNN_MIN_BATCH)
        assert all(len(p) == CPU_PIECE for p in parts[:-1])


def test_cpu_pieces_give_the_same_bits_as_one_whole_batch(stage):
    """Pieces of 32 faces (and a last one of 18) against one call for the whole batch of 50: other
    batch shapes, so the features agree within the same-results tolerance (rtol and atol 1e-4 of scale)."""
    crops = {"u1": astronaut_faces(20), "u2": astronaut_faces(30)[::-1]}
    pieced = stage.features(crops)
    config = stage.config
    stage.config = dataclasses.replace(config, cpu_piece=256)   # one call for the whole batch, as before pieces
    try:
        whole = stage.features(crops)
    finally:
        stage.config = config
    for utt_id in crops:
        assert pieced[utt_id].shape == (len(crops[utt_id]), 342)
        scale = float(np.abs(whole[utt_id]).max())
        np.testing.assert_allclose(pieced[utt_id], whole[utt_id], rtol=1e-4, atol=1e-4 * scale)


def test_in_place_relu_gives_the_same_bits(stage):
    from torch import nn

    from m3ed.models.densenet_fer import preprocess

    x = torch.as_tensor(np.stack(astronaut_faces(16)))
    relus = [m for m in stage.model.modules() if isinstance(m, nn.ReLU)]
    assert relus and all(m.inplace for m in relus)
    with torch.inference_mode():
        fast = stage.model.forward_features(preprocess(x)).numpy()
        for m in relus:
            m.inplace = False
        try:
            plain = stage.model.forward_features(preprocess(x)).numpy()
        finally:
            for m in relus:
                m.inplace = True
    # A tolerance, not bytes: the convolutions read the same values, but from other buffers.
    np.testing.assert_allclose(fast, plain, rtol=1e-4, atol=1e-4 * float(np.abs(plain).max()))


def test_the_runs_thread_count_applies_to_the_stage_and_is_restored(context):
    """--threads N: the models of every stage run with N torch threads; the caller's count comes back."""
    from m3ed.config import ExtractConfig, RunOptions
    from m3ed.pipelines.extract import run_extraction

    before = torch.get_num_threads()
    wanted = 3 if before != 3 else 2
    seen = []
    hook = torch.nn.modules.module.register_module_forward_hook(lambda *_: seen.append(torch.get_num_threads()))
    try:
        context.store.remove_parts(FRAME_SET)
        for name in (FRAME_SET, MEAN_SET):
            context.store.feature_path(name).unlink(missing_ok=True)
        run_extraction(context.corpus, context, ExtractConfig(run=RunOptions(stages=("visual",), progress=False,
                                                                             threads=wanted)))
    finally:
        hook.remove()
    assert seen and set(seen) == {wanted}
    assert torch.get_num_threads() == before
