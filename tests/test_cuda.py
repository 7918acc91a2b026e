"""The pipeline on a CUDA GPU gives the CPU's features (skipped where there is no GPU).

fp32 on the GPU must match the CPU up to kernel rounding; bf16 autocast must run every stage and
write finite features of the same shapes.
"""
import h5py
import numpy as np
import pytest
import torch

from m3ed.config import ExtractConfig
from m3ed.pipelines.extract import extract

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")

DIALOGUE = "sampleshow_1"


def _run(out, device: str, precision: str = "fp32") -> dict[str, dict[str, np.ndarray]]:
    config = ExtractConfig()
    config.run.out, config.run.profile, config.run.progress = str(out), "tiny", False
    config.run.device, config.run.precision = device, precision
    config.corpus.dialogues = (DIALOGUE,)
    record = extract(config)
    assert record["complete"], record
    features = {}
    for path in sorted((out / "features").glob("*.h5")):
        arrays = {}
        with h5py.File(path) as h5:
            h5.visititems(lambda name, item: arrays.__setitem__(name, item[()]) if isinstance(item, h5py.Dataset) else None)
        features[path.stem] = arrays
    return features


@pytest.fixture(scope="module")
def on_cpu(tmp_path_factory, models_cache):
    return _run(tmp_path_factory.mktemp("cpu"), "cpu")


def test_fp32_on_the_gpu_matches_the_cpu(tmp_path, on_cpu):
    on_gpu = _run(tmp_path, "cuda")
    assert on_gpu.keys() == on_cpu.keys() and len(on_cpu) >= 5
    for name in ("roberta_mean", "roberta_frame", "wav2vec2_mean", "wav2vec2_frame"):
        for key, value in on_cpu[name].items():
            if value.dtype.kind == "f":
                np.testing.assert_allclose(on_gpu[name][key], value, rtol=1e-3, atol=1e-3, err_msg=f"{name}/{key}")
            else:
                assert np.array_equal(on_gpu[name][key], value), f"{name}/{key}"
    speakers = [name for name in on_cpu if name.startswith("speaker_faces")]
    for name in speakers:
        for key, value in on_cpu[name].items():
            assert on_gpu[name][key].shape == value.shape, f"{name}/{key}: one row per utterance frame on both"


def test_bf16_runs_every_stage_with_finite_features(tmp_path, on_cpu):
    on_gpu = _run(tmp_path, "cuda", "bf16")
    assert on_gpu.keys() == on_cpu.keys()
    for name, arrays in on_gpu.items():
        for key, value in arrays.items():
            assert value.shape == on_cpu[name][key].shape or name.startswith(("speaker_faces", "denseface")), f"{name}/{key}"
            if value.dtype.kind == "f" and not name.startswith("speaker_faces"):
                assert np.isfinite(value).all(), f"{name}/{key} has non-finite values under bf16"


def test_mtcnn_with_batched_crops_on_the_gpu_finds_facenet_pytorchs_faces(sample_paths, sample_corpus):
    """On CUDA the detector batches MTCNN's candidate crops (m3ed.asd.mtcnn); facenet-pytorch's own
    cascade on the same GPU must find the same faces (its CUDA resampling may round differently)."""
    from m3ed.asd.detect import DetectionParams, FaceDetector
    from m3ed.locate import MediaSource

    media = MediaSource(sample_paths["videos"])
    frames = np.concatenate(list(media.frames(media.locate(sample_corpus[DIALOGUE]), chunk=64)))[::25][:16]
    detector = FaceDetector(DetectionParams(height=None), "cuda")
    ours = detector.detect(frames)
    with torch.inference_mode():
        boxes, probs = detector.mtcnn.detect(np.ascontiguousarray(frames))
    assert sum(len(f) for f in ours) >= len(frames)
    for faces, b, p in zip(ours, boxes, probs):
        theirs = np.zeros((0, 5), np.float32) if b is None else np.concatenate(
            [np.asarray(list(b), np.float32).reshape(-1, 4), np.asarray(list(p), np.float32).reshape(-1, 1)], axis=1)
        theirs = theirs[theirs[:, 4] >= 0.9]
        assert faces.shape == theirs.shape
        np.testing.assert_allclose(faces, theirs, atol=1e-2)


def test_mtcnn_on_the_gpu_gives_each_frame_the_faces_it_has_alone(sample_paths, sample_corpus):
    """The same-results contract on a GPU: fixed call shapes make a frame's faces independent of
    the frames detected with it (so the frame cache and batch size cannot change the asd output)."""
    from m3ed.asd.detect import DetectionParams, FaceDetector
    from m3ed.locate import MediaSource

    media = MediaSource(sample_paths["videos"])
    frames = np.concatenate(list(media.frames(media.locate(sample_corpus[DIALOGUE]), chunk=64)))[::25][:16]
    detector = FaceDetector(DetectionParams(height=240), "cuda")
    small = detector.rescale(frames)
    together = detector.detect_rescaled(small, 1.0)
    alone = [detector.detect_rescaled(small[i:i + 1], 1.0)[0] for i in range(len(small))]
    assert sum(len(f) for f in together) >= len(frames)
    assert all(np.array_equal(a, b) for a, b in zip(together, alone))
