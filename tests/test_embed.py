"""Face identity embeddings (facenet-pytorch InceptionResnetV1), random weights and the offline error."""
from __future__ import annotations

import cv2
import numpy as np
import pytest
import skimage.data
import torch

from m3ed.asd.embed import EMBED_DIM, EMBED_SIZE, FaceEmbedder
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
