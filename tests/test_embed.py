"""Face identity embeddings (InceptionResnetV1 and the authors' SENet-50), random weights and the offline errors."""
from __future__ import annotations

import cv2
import numpy as np
import pytest
import skimage.data
import torch

from m3ed.asd.embed import EMBED_DIM, EMBED_SIZE, FaceEmbedder, resolve_embedder, senet50_box
from m3ed.profiles import ModelUnavailable, get_profile


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def faces() -> np.ndarray:
    """Three real faces: the astronaut photo's face, shifted and mirrored."""
    image = skimage.data.astronaut()
    crops = [image[20:220, 150:350], image[30:230, 140:340][:, ::-1]]
    return np.stack([cv2.resize(np.ascontiguousarray(c), (EMBED_SIZE, EMBED_SIZE)) for c in crops])


@pytest.fixture(scope="module")
def embedder() -> FaceEmbedder:
    return FaceEmbedder(get_profile("tiny"), "cpu", batch_size=2)


@pytest.fixture(scope="module")
def batched(embedder, faces) -> np.ndarray:
    return embedder.embed(faces)


def test_embeddings_are_512_d_unit_vectors(batched):
    assert batched.shape == (2, EMBED_DIM) and batched.dtype == np.float32
    assert np.allclose(np.linalg.norm(batched, axis=1), 1.0, atol=1e-5)


def test_batched_equals_one_at_a_time(embedder, faces, batched):
    single = np.concatenate([embedder.embed(faces[i:i + 1]) for i in range(len(faces))])
    assert np.allclose(batched, single, atol=1e-4)


def test_random_weights_are_fixed_by_the_seed(embedder):
    again = FaceEmbedder(get_profile("tiny"), "cpu")
    for (name, mine), (_, theirs) in zip(embedder.model.state_dict().items(), again.model.state_dict().items()):
        assert torch.equal(mine, theirs), name


def test_wrong_input_shape_is_explained(embedder):
    with pytest.raises(ValueError, match="160, 160, 3"):
        embedder.embed(np.zeros((1, 112, 112, 3), np.uint8))


def test_vggface2_offline_and_not_cached_says_how_to_provide_it(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    # no network here: the download fails at once (pytest-socket style guard, without the plugin)
    import socket

    def no_network(*args, **kwargs):
        raise OSError("network disabled in this test")

    monkeypatch.setattr(socket, "getaddrinfo", no_network)
    with pytest.raises(ModelUnavailable) as error:
        FaceEmbedder(get_profile("paper"), "cpu")
    message = str(error.value)
    assert "vggface2" in message and "20180402-114759-vggface2.pt" in message and str(tmp_path) in message


# --- SENet-50, the authors' embedder ---------------------------------------------------------------

def test_senet50_embedder_reads_224_crops_and_gives_2048_d_unit_vectors(faces):
    senet = FaceEmbedder(get_profile("tiny"), "cpu", model="senet50-vggface2")
    crops = np.stack([cv2.resize(f, (224, 224)) for f in faces])
    plain = senet.embed(crops)
    assert senet.name == "senet50-vggface2" and senet.input_size == 224 and plain.shape == (2, 2048)
    assert np.allclose(np.linalg.norm(plain, axis=1), 1.0, atol=1e-5)
    quirk = FaceEmbedder(get_profile("tiny"), "cpu", model="senet50-vggface2", authors_cast=True)
    assert quirk.authors_cast and not np.allclose(quirk.embed(crops), plain, atol=1e-3)
    with pytest.raises(ValueError, match="224, 224, 3"):
        senet.embed(faces)


def test_auto_uses_senet50_only_when_its_weights_are_there(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    assert resolve_embedder("auto", get_profile("paper")) == "inception-resnet-v1"
    assert resolve_embedder("auto", get_profile("tiny")) == "inception-resnet-v1"
    cached = tmp_path / "checkpoints" / "senet50_scratch_weight.pkl"
    cached.parent.mkdir()
    cached.write_bytes(b"x")
    assert resolve_embedder("auto", get_profile("paper")) == "senet50-vggface2"
    assert resolve_embedder("auto", get_profile("tiny")) == "inception-resnet-v1"   # random weights: the cheap one
    with pytest.raises(ValueError, match="senet50-vggface2"):
        resolve_embedder("arcface", get_profile("paper"))


def test_senet50_without_weights_says_how_to_provide_them(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    with pytest.raises(ModelUnavailable) as error:
        FaceEmbedder(get_profile("paper"), "cpu", model="senet50-vggface2")
    message = str(error.value)
    assert "senet50_scratch_weight.pkl" in message and "AsdConfig.embedder_checkpoint" in message
    assert str(tmp_path) in message


def test_senet50_box_is_what_resize_256_center_crop_224_keeps():
    # a 100 x 200 box: the shorter side becomes 256, the central 224 x 224 is 87.5 px of the source
    assert np.allclose(senet50_box(np.array([10, 20, 110, 220])), [16.25, 76.25, 103.75, 163.75])
