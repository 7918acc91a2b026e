"""SENet-50 (VGGFace2), the authors' face embedder: checkpoint layout and parity with the reference.

The reference (VGGFace2-pytorch's ``senet50`` and the authors' ``get_batch_vggface_embeeding``),
loaded with the parity weights of ``tests/parity.py``, produced ``tests/data/parity_io_senet50.npz``
(the SENet-50 arrays of the shared ``parity_io_2.npz``: four faces after Resize(256) and
CenterCrop(224), the first face's network inputs, the embeddings). At the authors' input scale
(about ±130) parity-weight SENet is ill-conditioned (float32 error grows about 2x per block), so the
architecture check runs on inputs / 128 (atol 1e-3) and the full-scale outputs are compared by
cosine similarity, as the reference's notes prescribe.
"""
from __future__ import annotations

import json
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch

from m3ed.models.checkpoint import CheckpointError
from m3ed.models.senet50 import EMBED_DIM, SENet50, load_senet50, preprocess, read_senet50_pickle

try:
    from tests.parity import parity_state_dict
except ImportError:  # tests/ itself on sys.path
    from parity import parity_state_dict

pytestmark = pytest.mark.usefixtures("one_torch_thread")

DATA = Path(__file__).parent / "data"
MANIFEST = DATA / "senet50_vggface2_state_dict_manifest.json"


@pytest.fixture(scope="module")
def ref() -> dict[str, np.ndarray]:
    with np.load(DATA / "parity_io_senet50.npz") as data:
        return {k: data[k] for k in data.files}


@pytest.fixture(scope="module")
def released_layout() -> dict[str, torch.Tensor]:
    """Parity weights laid out as the released pickle: every key but ``num_batches_tracked``."""
    return {k: v for k, v in parity_state_dict(MANIFEST).items() if not k.endswith("num_batches_tracked")}


@pytest.fixture(scope="module")
def model(released_layout) -> SENet50:
    return load_senet50(released_layout, source="parity weights")


def cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return (a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)


def test_state_dict_matches_the_manifest_in_order():
    manifest = json.loads(MANIFEST.read_text())["state_dict"]
    ours = SENet50().state_dict()
    assert list(ours) == list(manifest)
    assert all(list(ours[k].shape) == manifest[k]["shape"] for k in manifest)
    assert len(manifest) == 384 and sum(v.numel() for k, v in ours.items() if "num_batches" not in k
                                        and "running" not in k) == 43_723_943


def test_preprocessing_matches_the_authors(ref):
    faces = ref["senet_faces_u8"]
    assert np.abs(preprocess(faces[:1]).numpy() - ref["senet_input_float_face0"]).max() <= 1e-4
    # their np.array(..., dtype=np.uint8) over the mean-subtracted floats: truncated, negatives wrapped
    authors = preprocess(faces[:1], authors_cast=True).numpy()
    assert np.array_equal(authors, ref["senet_input_authors_face0_u8"].astype(np.float32))
    assert authors.min() >= 0 and authors.max() <= 255 and authors.mean() > 100   # dark pixels turned bright
    with pytest.raises(ValueError, match="224, 224, 3"):
        preprocess(np.zeros((1, 160, 160, 3), np.uint8))


@pytest.mark.parametrize("variant", ["float", "authors"])
def test_parity_well_conditioned(model, ref, variant):
    x = preprocess(ref["senet_faces_u8"], authors_cast=variant == "authors") / 128
    with torch.inference_mode():
        out = model(x).numpy()
    assert out.shape == (4, EMBED_DIM)
    assert np.abs(out - ref[f"senet_embed_{variant}_div128"]).max() <= 1e-3


def test_parity_at_the_authors_scale_and_the_quirk_matters(model, ref):
    faces = ref["senet_faces_u8"]
    with torch.inference_mode():
        plain, authors = model(preprocess(faces)).numpy(), model(preprocess(faces, authors_cast=True)).numpy()
    assert cosines(plain, ref["senet_embed_float"]).min() >= 0.99
    assert cosines(authors, ref["senet_embed_authors"]).min() >= 0.99
    # the uint8 cast moves an embedding about as far as a change of face (reference: 0.875-0.914)
    assert cosines(plain, authors).max() <= 0.93


def test_released_pickle_loads_strictly(tmp_path, released_layout, model):
    path = tmp_path / "senet50_scratch_weight.pkl"
    arrays = {k: v.numpy() for k, v in released_layout.items()}
    path.write_bytes(pickle.dumps(arrays, protocol=2))   # the released file: a Python-2 pickle of arrays
    loaded = load_senet50(read_senet50_pickle(path), source=str(path))
    for (name, mine), (_, theirs) in zip(loaded.state_dict().items(), model.state_dict().items()):
        assert torch.equal(mine, theirs), name
    del arrays["fc.weight"]   # the authors' strict load needs the classifier too
    path.write_bytes(pickle.dumps(arrays, protocol=2))
    with pytest.raises(CheckpointError, match="fc.weight"):
        load_senet50(read_senet50_pickle(path), source=str(path))


def test_unreadable_weight_files_name_the_file(tmp_path):
    truncated = tmp_path / "senet50_scratch_weight.pkl"
    truncated.write_bytes(pickle.dumps({"conv1.weight": np.zeros(3)}, protocol=2)[:-5])
    with pytest.raises(CheckpointError, match="senet50_scratch_weight.pkl"):
        read_senet50_pickle(truncated)
    with pytest.raises(CheckpointError, match="not found"):
        read_senet50_pickle(tmp_path / "absent.pkl")
