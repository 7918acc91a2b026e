"""Face identity embeddings for stage 2 of the speaker assignment: facenet-pytorch InceptionResnetV1.

``profile.face_embedder``:

- ``"vggface2"``: the VGGFace2-trained weights of facenet-pytorch (107 MB), read from the same cache
  facenet-pytorch uses (``$TORCH_HOME/checkpoints/20180402-114759-vggface2.pt``) or downloaded there
  once; offline and not cached is a :class:`m3ed.profiles.ModelUnavailable` that says how to get it.
- a path to such a ``.pt`` file: those weights.
- ``None`` (``paper-random``, ``tiny``): random weights from ``profile.seed``; embeddings are
  meaningless, cost is real.

Input: RGB uint8 faces ``[N, 160, 160, 3]``; standardised as facenet-pytorch expects,
``(x - 127.5) / 128``. Output: L2-normalised float32 ``[N, 512]``.
"""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch
from facenet_pytorch import InceptionResnetV1

from ..models.checkpoint import CheckpointError, load_checkpoint_file, load_state_dict_strict
from ..profiles import ModelUnavailable, Profile, unavailable

EMBED_SIZE = 160   # input side in pixels
EMBED_DIM = 512
VGGFACE2_URL = "https://github.com/timesler/facenet-pytorch/releases/download/v2.2.9/20180402-114759-vggface2.pt"
VGGFACE2_CLASSES = 8631  # the checkpoint carries its training classifier (logits.*), unused here


def torch_home() -> Path:
    """facenet-pytorch's cache root (``TORCH_HOME``, else ``$XDG_CACHE_HOME/torch``)."""
    default = Path(os.environ.get("XDG_CACHE_HOME", "~/.cache")) / "torch"
    return Path(os.environ.get("TORCH_HOME", default)).expanduser()


def vggface2_weights() -> Path:
    """The VGGFace2 checkpoint, from the cache or downloaded into it."""
    cached = torch_home() / "checkpoints" / VGGFACE2_URL.rsplit("/", 1)[-1]
    if cached.is_file():
        return cached
    cached.parent.mkdir(parents=True, exist_ok=True)
    try:
        torch.hub.download_url_to_file(VGGFACE2_URL, str(cached), progress=False)
    except Exception as e:  # urllib/socket raise many kinds; all mean "not downloadable here"
        how = (f"download {VGGFACE2_URL} where the internet is reachable and put it at {cached} "
               f"(or set TORCH_HOME to a directory whose checkpoints/ holds it); use the paper-random "
               f"profile to run without it")
        raise unavailable("face embedder (InceptionResnetV1)", "vggface2", how, e) from e
    return cached


def build_embedder(profile: Profile) -> InceptionResnetV1:
    """InceptionResnetV1 with the weights ``profile.face_embedder`` names, in eval mode."""
    if profile.face_embedder is None:
        with torch.random.fork_rng(devices=[]):  # fixed weights without touching the global RNG
            torch.manual_seed(profile.seed)
            return InceptionResnetV1(pretrained=None).eval()
    source = profile.face_embedder
    path = vggface2_weights() if source == "vggface2" else Path(source).expanduser()
    model = InceptionResnetV1(pretrained=None)
    model.logits = torch.nn.Linear(EMBED_DIM, VGGFACE2_CLASSES)  # so that the strict load sees every key
    try:
        load_state_dict_strict(model, load_checkpoint_file(path), source=str(path))
    except CheckpointError as e:
        raise ModelUnavailable(f"face embedder weights {path}: {e}\n  Expected facenet-pytorch's "
                               f"20180402-114759-vggface2.pt (profile face_embedder='vggface2').") from e
    del model.logits
    return model.eval()


class FaceEmbedder:
    """Batched identity embeddings of face crops."""

    def __init__(self, profile: Profile, device: str = "cpu", batch_size: int = 32):
        self.device = torch.device(device)
        self.batch_size = batch_size
        self.source = profile.face_embedder or f"random(seed={profile.seed})"
        self.model = build_embedder(profile).to(self.device)

    @torch.inference_mode()
    def embed(self, faces_rgb_u8: np.ndarray) -> np.ndarray:
        """RGB uint8 ``[N, 160, 160, 3]`` -> unit-norm float32 ``[N, 512]``."""
        faces = np.asarray(faces_rgb_u8)
        if faces.ndim != 4 or faces.shape[1:] != (EMBED_SIZE, EMBED_SIZE, 3):
            raise ValueError(f"faces must be RGB crops [N, {EMBED_SIZE}, {EMBED_SIZE}, 3]; got shape "
                             f"{list(faces.shape)}: crop and resize the faces to {EMBED_SIZE} px first")
        out = np.zeros((len(faces), EMBED_DIM), np.float32)
        for first in range(0, len(faces), self.batch_size):
            batch = torch.from_numpy(np.ascontiguousarray(faces[first:first + self.batch_size]))
            x = batch.to(self.device).permute(0, 3, 1, 2).float()
            x = (x - 127.5) / 128.0  # facenet-pytorch's fixed_image_standardization
            out[first:first + len(batch)] = self.model(x).float().cpu().numpy()
        return out
