"""Weights downloaded on first use (m3ed.profiles.download_once): a file already there is used as it is;
an unreachable address is a ModelUnavailable that names the weights and how to provide them."""
from __future__ import annotations

import pytest

from m3ed.profiles import ModelUnavailable, download_once, fetch_checkpoint

UNREACHABLE = "http://127.0.0.1:9/weights.pt"   # the discard port: refused at once, no network needed


def test_a_file_already_there_is_not_downloaded_again(tmp_path):
    target = tmp_path / "weights.pt"
    target.write_bytes(b"cached")
    assert download_once(UNREACHABLE, target, "face embedder", "put it there") == target
    assert target.read_bytes() == b"cached"


def test_an_unreachable_address_says_what_is_missing_and_how_to_provide_it(tmp_path):
    target = tmp_path / "checkpoints" / "weights.pt"
    with pytest.raises(ModelUnavailable, match=r"(?s)face embedder 'vggface2' is not available here.*put it at"):
        download_once(UNREACHABLE, target, "face embedder", f"put it at {target}", name="vggface2", progress=False)
    assert not target.exists()


def test_a_checkpoint_url_goes_through_the_same_download(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    with pytest.raises(ModelUnavailable, match=r"(?s)DenseNet FER checkpoint 'http://127.0.0.1:9/weights.pt'.*--fer-checkpoint"):
        fetch_checkpoint(UNREACHABLE, "DenseNet FER checkpoint", "--fer-checkpoint")
