"""S3FD, the authors' face detector: checkpoint layout, parity with the reference, detector plumbing.

The reference (TalkNet-ASD's S3FD and its demo's ``detect_faces(rgb, conf_th=0.9, scales=[0.25])``),
loaded with the parity weights of ``tests/parity.py``, produced ``tests/data/s3fd_parity.npz``: the
astronaut image, its 0.25 resize, the network input, the heads' outputs, the priors, ``Detect``'s
rows and the final boxes. With parity weights the decoded boxes are absurd (far outside the image)
and four candidates tie at score 1.0, whose order is implementation-defined; the ``post_*`` arrays
check the post-processing on synthetic head outputs of realistic size, without ties.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from m3ed.asd.detect import detect_faces
from m3ed.asd.s3fd import S3FDDetector, S3FDParams, face_candidates, faces_in_pixels, preprocess, s3fd_weights
from m3ed.models.checkpoint import CheckpointError, CheckpointNotFoundError
from m3ed.models.s3fd import S3FDNet, load_s3fd, prior_boxes, s3fd_from_state_dict

try:
    from tests.parity import parity_state_dict
except ImportError:  # tests/ itself on sys.path
    from parity import parity_state_dict

pytestmark = pytest.mark.usefixtures("one_torch_thread")

DATA = Path(__file__).parent / "data"
MANIFEST = DATA / "s3fd_sfd_face_state_dict_manifest.json"


@pytest.fixture(scope="module")
def ref() -> dict[str, np.ndarray]:
    with np.load(DATA / "s3fd_parity.npz") as data:
        return {k: data[k] for k in data.files}


@pytest.fixture(scope="module")
def weights() -> dict[str, torch.Tensor]:
    return parity_state_dict(MANIFEST)


@pytest.fixture(scope="module")
def net(weights) -> S3FDNet:
    return s3fd_from_state_dict(weights, source="parity weights")


@pytest.fixture(scope="module")
def heads(net, ref):
    with torch.inference_mode():
        return net(torch.from_numpy(ref["s3fd_input"]))


def reference_rows(detections: np.ndarray) -> np.ndarray:
    """The face class's kept rows of the reference ``Detect`` output ``[1, 2, 750, 5]``."""
    assert not detections[0, 0].any()   # class 0 (background) is never filled
    rows = detections[0, 1]
    return rows[rows[:, 0] > 0]


def assert_rows_match(ours: np.ndarray, theirs: np.ndarray, score: int, box: slice, box_atol: float) -> None:
    """Same rows in the same order, except that rows of equal reference score may come in any order:
    scores within 1e-4, box coordinates within rtol 1e-3 (``box_atol`` for coordinates near 0)."""
    assert ours.shape == theirs.shape
    for value in np.unique(theirs[:, score]):
        group = np.flatnonzero(theirs[:, score] == value)
        mine, want = ours[group], theirs[group]
        if len(group) > 1:   # a tie: compare the rows sorted by their coordinates
            mine, want = mine[np.lexsort(mine[:, box].T[::-1])], want[np.lexsort(want[:, box].T[::-1])]
        np.testing.assert_allclose(mine[:, score], want[:, score], rtol=0, atol=1e-4)
        np.testing.assert_allclose(mine[:, box], want[:, box], rtol=1e-3, atol=box_atol)


def test_state_dict_matches_the_manifest_in_order():
    manifest = json.loads(MANIFEST.read_text())["state_dict"]
    ours = S3FDNet().state_dict()
    assert list(ours) == list(manifest)
    assert all(list(ours[k].shape) == manifest[k]["shape"] for k in manifest)
    assert len(ours) == 65 and sum(v.numel() for v in ours.values()) == 22_459_110


def test_preprocessing_matches_the_reference(ref):
    detector = S3FDDetector(S3FDNet(), S3FDParams(scale=0.25))
    resized = detector.rescale(ref["s3fd_image_u8"][None])
    assert np.array_equal(resized[0], ref["s3fd_resized_u8"])
    assert np.array_equal(preprocess(resized[0]).numpy(), ref["s3fd_input"])   # R - 123, G - 117, B - 104


def test_heads_priors_and_softmax_match_the_reference(heads, ref):
    for name, ours in (("s3fd_conf_logits", heads.conf_logits), ("s3fd_loc", heads.loc)):
        np.testing.assert_allclose(ours.numpy(), ref[name], rtol=1e-5, atol=1e-3, err_msg=name)
    np.testing.assert_allclose(torch.softmax(heads.conf_logits, -1).numpy(), ref["s3fd_conf"], rtol=0, atol=1e-4)
    assert heads.feature_sizes == [(32, 32), (16, 16), (8, 8), (4, 4), (2, 2), (1, 1)]
    priors = prior_boxes((128, 128), heads.feature_sizes).numpy()
    np.testing.assert_allclose(priors, ref["s3fd_priors"], rtol=0, atol=1e-6)


def test_post_processing_matches_the_reference_on_its_inputs(ref):
    priors = torch.from_numpy(ref["s3fd_priors"])
    candidates = face_candidates(torch.from_numpy(ref["s3fd_post_loc"][0]),
                                 torch.from_numpy(ref["s3fd_post_conf_logits"][0]), priors)
    want = reference_rows(ref["s3fd_post_detections"])
    assert len(want) == 210 and candidates.shape == want.shape
    np.testing.assert_allclose(candidates, want, rtol=0, atol=1e-4)
    faces = faces_in_pixels(candidates, 512, 512, min_score=0.9, iou=0.1)
    np.testing.assert_allclose(faces, ref["s3fd_post_bboxes"], rtol=0, atol=1e-2)


def test_detections_and_boxes_match_the_reference(heads, ref, net):
    candidates = face_candidates(heads.loc[0], heads.conf_logits[0], torch.from_numpy(ref["s3fd_priors"]))
    want = reference_rows(ref["s3fd_detections"])
    assert len(want) == 212
    assert_rows_match(candidates, want, score=0, box=slice(1, 5), box_atol=1e-6)
    # the whole front end, in original pixels: resize at 0.25, network, Detect, detect_faces
    faces = S3FDDetector(net, S3FDParams(scale=0.25, min_score=0.9)).detect(ref["s3fd_image_u8"][None])[0]
    assert faces.dtype == np.float32 and faces.shape == (7, 5)
    assert_rows_match(faces.astype(np.float64), ref["s3fd_bboxes"], score=4, box=slice(0, 4), box_atol=1e-3)


def frames_to_detect(ref) -> np.ndarray:
    """Four different 256 x 192 frames cut from the astronaut (width != height, so axes cannot swap)."""
    image = ref["s3fd_image_u8"]
    cuts = [image[:384:2, :512:2], image[128::2, ::-2], image[64:256, 100:356], image[::2, ::2][32:224]]
    return np.ascontiguousarray(np.stack(cuts))


def test_batching_never_changes_a_frames_faces(net, ref):
    frames = frames_to_detect(ref)
    alone = [S3FDDetector(net, S3FDParams(scale=0.25)).detect(frame[None])[0] for frame in frames]
    assert sum(len(faces) for faces in alone) > 0   # else the comparison would prove little
    for batch_size in (2, 3):
        batched = S3FDDetector(net, S3FDParams(scale=0.25, batch_size=batch_size)).detect(frames)
        assert all(np.array_equal(a, b) for a, b in zip(alone, batched))
    # Detections (frames arriving in decode chunks, every other one detected) takes the detector unchanged
    detector = S3FDDetector(net, S3FDParams(every=2, scale=0.25, batch_size=2))
    detections = detect_faces(detector, [frames[:3], frames[3:]])
    assert list(detections.frames()) == [0, 2]
    assert all(np.array_equal(detections.faces[i], alone[i]) for i in (0, 2))


def test_boxes_come_back_in_original_pixels(net, ref):
    frame = frames_to_detect(ref)[0]   # 192 high, 256 wide
    faces = S3FDDetector(net, S3FDParams(scale=0.25, min_score=0.5)).detect(frame[None])[0]
    small = S3FDDetector(net, S3FDParams(scale=0.25)).rescale(frame[None])[0]
    assert small.shape == (48, 64, 3)
    with torch.inference_mode():
        heads = net(preprocess(small))
    candidates = face_candidates(heads.loc[0], heads.conf_logits[0], prior_boxes((48, 64), heads.feature_sizes))
    # [0, 1] units of the detection frame times the original width and height: x by 256, y by 192
    want = faces_in_pixels(candidates, width=256, height=192, min_score=0.5, iou=0.1)
    assert len(want) > 0
    np.testing.assert_array_equal(faces, want.astype(np.float32))


def test_bad_frames_are_refused_clearly(net):
    detector = S3FDDetector(net, S3FDParams(scale=0.25))
    with pytest.raises(ValueError, match="at least 28 pixels a side.*got 25x25"):
        detector.detect(np.zeros((1, 100, 100, 3), np.uint8))
    with pytest.raises(ValueError, match=r"RGB uint8, got float32 \[1, 100, 100\]"):
        detector.detect(np.zeros((1, 100, 100), np.float32))
    with pytest.raises(ValueError, match="scale=0"):
        S3FDParams(scale=0)


def test_strict_loading_refuses_missing_misshaped_and_prefixed_keys(weights):
    missing = {k: v for k, v in weights.items() if k != "L2Norm4_3.weight"}
    with pytest.raises(CheckpointError, match=r"(?s)my_sfd_face\.pth.*missing keys \(1\): L2Norm4_3\.weight"):
        s3fd_from_state_dict(missing, source="my_sfd_face.pth")
    misshaped = dict(weights, **{"conf.0.weight": torch.zeros(2, 256, 3, 3)})   # no max-out background
    with pytest.raises(CheckpointError, match=r"conf\.0\.weight \(expected \[4, 256, 3, 3\], got \[2, 256, 3, 3\]\)"):
        s3fd_from_state_dict(misshaped, source="my_sfd_face.pth")
    prefixed = {f"module.{k}": v for k, v in weights.items()}   # not the released layout
    with pytest.raises(CheckpointError, match="unexpected keys"):
        s3fd_from_state_dict(prefixed, source="my_sfd_face.pth")


def test_released_file_loads_and_a_missing_one_says_what_it_is(tmp_path, weights, net):
    path = tmp_path / "sfd_face.pth"
    torch.save(weights, path)   # the release: a plain state dict, no prefix
    loaded = load_s3fd(path)
    assert not loaded.training
    assert all(torch.equal(a, b) for a, b in zip(loaded.state_dict().values(), net.state_dict().values()))
    with pytest.raises(CheckpointNotFoundError, match=r"(?s)absent\.pth.*sfd_face\.pth.*TalkNet-ASD"):
        load_s3fd(tmp_path / "absent.pth")


def test_weights_are_looked_for_beside_the_other_face_models(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    assert s3fd_weights() == tmp_path / "checkpoints" / "sfd_face.pth"
    assert s3fd_weights("~/mine.pth") == Path.home() / "mine.pth"
    with pytest.raises(CheckpointNotFoundError, match=r"(?s)checkpoints/sfd_face\.pth.*TalkNet-ASD"):
        S3FDDetector.from_file(s3fd_weights())
