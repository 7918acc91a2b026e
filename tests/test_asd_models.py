"""TalkNet, Light-ASD and the authors' DenseNet: checkpoint compatibility and parity with the references.

Parity: the reference implementations, loaded with the deterministic parity weights of
``tests/parity.py``, produced ``tests/data/parity_io.npz``; ours must reproduce it (atol 1e-3, the
outputs vary by ~0.1 between frames, so an op out of place shows at once).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from m3ed.weights import light_asd_checkpoint
import torch

from m3ed.models.checkpoint import (
    CheckpointError,
    CheckpointNotFoundError,
    load_checkpoint_file,
    load_state_dict_strict,
)
from m3ed.models.densenet_fer import FER_PLUS_CLASSES, DenseNetFER, preprocess
from m3ed.models.light_asd import LightASD
from m3ed.models.talknet import TalkNet

try:
    from tests.parity import parity_state_dict
except ImportError:  # tests/ is not a package when pytest puts it on sys.path itself
    from parity import parity_state_dict

DATA = Path(__file__).parent / "data"
TALKNET_MANIFEST = DATA / "talknet_state_dict_manifest.json"
LIGHT_ASD_MANIFEST = DATA / "light_asd_state_dict_manifest.json"
DENSENET_MANIFEST = DATA / "densenet100_fer_state_dict_manifest.json"
# The released Light-ASD weights ship in the package (m3ed/weights, MIT licence).
LIGHT_ASD_WEIGHTS = light_asd_checkpoint()   # shipped in the package, sha256-checked
ATOL = 1e-3


def manifest_shapes(path: Path) -> dict[str, list[int]]:
    return {name: spec["shape"] for name, spec in json.loads(path.read_text())["state_dict"].items()}


def state_dict_shapes(module: torch.nn.Module) -> dict[str, list[int]]:
    return {name: list(value.shape) for name, value in module.state_dict().items()}


def max_abs_error(actual: torch.Tensor, expected: np.ndarray) -> float:
    assert tuple(actual.shape) == expected.shape
    return float(np.abs(actual.detach().numpy() - expected).max())


@pytest.fixture(scope="module")
def parity_io() -> dict[str, np.ndarray]:
    with np.load(DATA / "parity_io.npz") as data:
        return dict(data)


@pytest.fixture(scope="module")
def av_inputs(parity_io: dict[str, np.ndarray]) -> tuple[torch.Tensor, torch.Tensor]:
    """The reference's conventions: mfcc [1,4T,13], video [1,T,112,112] float of the uint8 values."""
    mfcc = torch.from_numpy(parity_io["mfcc"]).unsqueeze(0)
    video = torch.from_numpy(parity_io["video_u8"]).float().unsqueeze(0)
    return mfcc, video


@pytest.fixture(scope="module")
def talknet_parity() -> TalkNet:
    model = TalkNet()
    model.load_checkpoint_state_dict(parity_state_dict(TALKNET_MANIFEST), source="parity weights")
    return model.eval()


@pytest.fixture(scope="module")
def light_asd_parity() -> LightASD:
    model = LightASD()
    load_state_dict_strict(model, parity_state_dict(LIGHT_ASD_MANIFEST), source="parity weights")
    return model.eval()


# --- state-dict layout ----------------------------------------------------------------------------


def test_talknet_state_dict_matches_manifest_without_training_heads() -> None:
    expected = {
        name: shape
        for name, shape in manifest_shapes(TALKNET_MANIFEST).items()
        if not name.startswith(("lossA.", "lossV."))
    }
    model = TalkNet()
    assert state_dict_shapes(model) == expected
    assert list(model.state_dict()) == list(expected)  # same order too
    assert sum(p.numel() for p in model.model.parameters()) == 15_743_451
    assert sum(p.numel() for p in model.lossAV.parameters()) == 514


def test_light_asd_state_dict_matches_manifest() -> None:
    model = LightASD()
    assert state_dict_shapes(model) == manifest_shapes(LIGHT_ASD_MANIFEST)
    assert sum(p.numel() for p in model.model.parameters()) == 1_021_120


def test_densenet_state_dict_matches_manifest() -> None:
    model = DenseNetFER()
    assert state_dict_shapes(model) == manifest_shapes(DENSENET_MANIFEST)
    assert sum(p.numel() for p in model.parameters()) == 768_044
    assert model.feature_dim == 342
    assert len(FER_PLUS_CLASSES) == model.classifier.out_features == 8


def test_buffers_have_the_checkpoint_dtypes() -> None:
    manifest = json.loads(LIGHT_ASD_MANIFEST.read_text())["state_dict"]
    for name, value in LightASD().state_dict().items():
        assert str(value.dtype).removeprefix("torch.") == manifest[name]["dtype"], name


# --- loading checkpoints in the official formats --------------------------------------------------


@pytest.mark.parametrize("prefix", ["", "module."])
def test_talknet_loads_official_checkpoint_file(tmp_path: Path, prefix: str) -> None:
    official = parity_state_dict(TALKNET_MANIFEST)  # all 487 keys: model.*, lossAV.*, lossA.*, lossV.*
    path = tmp_path / "pretrain_TalkSet.model"
    torch.save({prefix + name: value for name, value in official.items()}, path)

    model = TalkNet.from_checkpoint(path)

    assert not model.training
    loaded = model.state_dict()
    assert set(loaded) == {n for n in official if not n.startswith(("lossA.", "lossV."))}
    for name, value in loaded.items():
        assert torch.equal(value, official[name]), name


def test_talknet_reports_the_training_heads_it_ignores() -> None:
    official = parity_state_dict(TALKNET_MANIFEST)
    ignored = TalkNet().load_checkpoint_state_dict(official)
    assert ignored == ["lossA.FC.bias", "lossA.FC.weight", "lossV.FC.bias", "lossV.FC.weight"]
    # Files without the training heads load as well.
    without = {n: v for n, v in official.items() if not n.startswith(("lossA.", "lossV."))}
    assert TalkNet().load_checkpoint_state_dict(without) == []


@pytest.mark.parametrize("wrap", ["plain", "state_dict", "model"])
def test_densenet_loads_plain_and_nested_checkpoints(tmp_path: Path, wrap: str) -> None:
    weights = parity_state_dict(DENSENET_MANIFEST)
    content = weights if wrap == "plain" else {wrap: weights, "epoch": 12}
    path = tmp_path / "densenet100.pth"
    torch.save(content, path)

    model = DenseNetFER.from_checkpoint(path)

    assert torch.equal(model.classifier.weight, weights["classifier.weight"])


def test_missing_unexpected_and_misshapen_keys_are_listed() -> None:
    weights = parity_state_dict(LIGHT_ASD_MANIFEST)
    del weights["model.GRU.gru_forward.bias_hh_l0"]
    weights["model.extra.weight"] = torch.zeros(3)
    weights["lossAV.FC.weight"] = torch.zeros(2, 256)

    with pytest.raises(CheckpointError) as caught:
        load_state_dict_strict(LightASD(), weights, source="my_asd.model")

    message = str(caught.value)
    assert "my_asd.model" in message and "LightASD" in message
    assert "missing keys (1): model.GRU.gru_forward.bias_hh_l0" in message
    assert "unexpected keys (1): model.extra.weight" in message
    assert "lossAV.FC.weight (expected [2, 128], got [2, 256])" in message
    assert isinstance(caught.value, ValueError)


def test_a_checkpoint_of_another_model_is_rejected(tmp_path: Path) -> None:
    path = tmp_path / "light_asd.model"
    torch.save(parity_state_dict(LIGHT_ASD_MANIFEST), path)
    with pytest.raises(CheckpointError, match="light_asd.model"):
        TalkNet.from_checkpoint(path)


def test_corrupt_and_truncated_checkpoints_name_the_file(tmp_path: Path) -> None:
    garbage = tmp_path / "garbage.model"
    garbage.write_bytes(b"<html>Google Drive - virus scan warning</html>")
    with pytest.raises(CheckpointError, match="garbage.model.*not a readable torch file"):
        load_checkpoint_file(garbage)

    complete = tmp_path / "complete.model"
    torch.save(parity_state_dict(LIGHT_ASD_MANIFEST), complete)
    truncated = tmp_path / "truncated.model"
    truncated.write_bytes(complete.read_bytes()[: complete.stat().st_size // 2])
    with pytest.raises(CheckpointError, match="truncated.model"):
        LightASD.from_checkpoint(truncated)


def test_missing_checkpoint_is_a_file_not_found_error(tmp_path: Path) -> None:
    path = tmp_path / "pretrain_TalkSet.model"
    with pytest.raises(CheckpointNotFoundError, match="pretrain_TalkSet.model"):
        TalkNet.from_checkpoint(path)
    with pytest.raises(FileNotFoundError):
        load_checkpoint_file(path)


def test_a_file_without_a_state_dict_is_rejected(tmp_path: Path) -> None:
    path = tmp_path / "not_weights.pt"
    torch.save({"epoch": 3, "lr": 0.1}, path)
    with pytest.raises(CheckpointError, match="no state dict found"):
        load_checkpoint_file(path)


# --- parity with the reference implementations ----------------------------------------------------


def test_talknet_parity(talknet_parity: TalkNet, av_inputs, parity_io) -> None:
    mfcc, video = av_inputs
    with torch.inference_mode():
        audio = talknet_parity.forward_audio_frontend(mfcc)
        visual = talknet_parity.forward_visual_frontend(video)
        backend = talknet_parity.forward_audio_visual_backend(*talknet_parity.forward_cross_attention(audio, visual))
        logits = talknet_parity.logits(mfcc, video)

    assert max_abs_error(audio[0], parity_io["talknet_audio_embed"]) < ATOL
    assert max_abs_error(visual[0], parity_io["talknet_visual_embed"]) < ATOL
    assert max_abs_error(backend[0], parity_io["talknet_av"]) < ATOL
    assert max_abs_error(logits[0], parity_io["talknet_logits"]) < ATOL


def test_light_asd_parity(light_asd_parity: LightASD, av_inputs, parity_io) -> None:
    with torch.inference_mode():
        logits = light_asd_parity.logits(*av_inputs)
    assert max_abs_error(logits[0], parity_io["lightasd_parity_logits"]) < ATOL


def test_light_asd_real_weights(av_inputs, parity_io) -> None:
    if not LIGHT_ASD_WEIGHTS.is_file():
        pytest.skip(f"released Light-ASD weights not found at {LIGHT_ASD_WEIGHTS} (shared reference folder)")
    model = LightASD.from_checkpoint(LIGHT_ASD_WEIGHTS)
    with torch.inference_mode():
        logits = model.logits(*av_inputs)
    assert max_abs_error(logits[0], parity_io["lightasd_real_logits"]) < ATOL


def test_densenet_parity(parity_io) -> None:
    model = DenseNetFER()
    load_state_dict_strict(model, parity_state_dict(DENSENET_MANIFEST), source="parity weights")
    model.eval()
    faces = preprocess(parity_io["densenet_faces_u8"])
    with torch.inference_mode():
        features = model.forward_features(faces)
        logits = model(faces)
    assert max_abs_error(features, parity_io["densenet_feature"]) < ATOL
    assert max_abs_error(logits, parity_io["densenet_logits"]) < ATOL


def test_densenet_preprocess_normalises_with_the_authors_constants() -> None:
    faces = np.zeros((1, 64, 64), dtype=np.uint8)
    faces[0, 0, 1] = 255
    x = preprocess(faces)
    assert x.shape == (1, 1, 64, 64) and x.dtype == torch.float32
    assert x[0, 0, 0, 0].item() == pytest.approx((0 - 89.936089) / 45.954746)
    assert x[0, 0, 0, 1].item() == pytest.approx((255 - 89.936089) / 45.954746)
    with pytest.raises(ValueError, match="resize"):
        preprocess(np.zeros((2, 48, 48), dtype=np.uint8))


# --- the scoring API ------------------------------------------------------------------------------


def test_speaking_probability_is_the_softmax_of_the_logits(light_asd_parity: LightASD, av_inputs) -> None:
    with torch.inference_mode():
        logits = light_asd_parity.logits(*av_inputs)
        probability = light_asd_parity.speaking_probability(*av_inputs)
    assert probability.shape == (1, 50)
    torch.testing.assert_close(probability, torch.softmax(logits, dim=-1)[..., 1])


@pytest.mark.parametrize("model_name", ["talknet", "light_asd"])
def test_audio_and_video_are_cropped_to_their_common_length(model_name: str, request, av_inputs) -> None:
    model = request.getfixturevalue(f"{model_name}_parity")
    mfcc, video = av_inputs
    mfcc, video = mfcc[:, :80], video[:, :20]
    with torch.inference_mode():
        exact = model.logits(mfcc, video)
        longer_audio = model.logits(torch.cat([mfcc, mfcc[:, :7]], dim=1), video)  # 87 MFCC frames
        longer_video = model.logits(mfcc[:, :70], video)  # 17 whole video frames of audio
    assert exact.shape == (1, 20, 2)
    torch.testing.assert_close(longer_audio, exact)
    assert longer_video.shape == (1, 17, 2)
    torch.testing.assert_close(longer_video, model.logits(mfcc[:, :68], video[:, :17]))


@pytest.mark.parametrize("model_name", ["talknet", "light_asd"])
def test_tracks_in_a_batch_are_scored_independently(model_name: str, request, av_inputs) -> None:
    model = request.getfixturevalue(f"{model_name}_parity")
    mfcc, video = av_inputs
    first = (mfcc[:, :40], video[:, :10])
    second = (mfcc[:, 120:160], video[:, 30:40])
    with torch.inference_mode():
        batched = model.logits(torch.cat([first[0], second[0]]), torch.cat([first[1], second[1]]))
        alone = torch.cat([model.logits(*first), model.logits(*second)])
    torch.testing.assert_close(batched, alone, atol=1e-4, rtol=1e-4)


def test_uint8_video_is_accepted(light_asd_parity: LightASD, av_inputs, parity_io) -> None:
    mfcc, _ = av_inputs
    video_u8 = torch.from_numpy(parity_io["video_u8"]).unsqueeze(0)
    with torch.inference_mode():
        logits = light_asd_parity.logits(mfcc, video_u8)
    assert max_abs_error(logits[0], parity_io["lightasd_parity_logits"]) < ATOL


def test_bad_inputs_are_explained(talknet_parity: TalkNet, av_inputs) -> None:
    mfcc, video = av_inputs
    with pytest.raises(ValueError, match=r"mfcc must be \[batch, 4\*frames, 13\]"):
        talknet_parity.logits(mfcc[0], video)
    with pytest.raises(ValueError, match=r"video must be \[batch, frames, 112x112\]"):
        talknet_parity.logits(mfcc, video[..., :64, :64])
    with pytest.raises(ValueError, match="same batch size"):
        talknet_parity.logits(torch.cat([mfcc, mfcc]), video)
    with pytest.raises(ValueError, match="nothing to score"):
        talknet_parity.logits(mfcc[:, :3], video)


def test_light_asd_visual_only_head(light_asd_parity: LightASD, av_inputs) -> None:
    _, video = av_inputs
    with torch.inference_mode():
        visual = light_asd_parity.visual_logits(video[:, :12])
        expected = light_asd_parity.lossV(light_asd_parity.forward_visual_frontend(video[:, :12]))
    assert visual.shape == (1, 12, 2)
    torch.testing.assert_close(visual, expected)
    with pytest.raises(ValueError, match="video must be"):
        light_asd_parity.visual_logits(video[0])
