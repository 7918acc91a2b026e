"""Face identity embeddings for stage 2 of the speaker assignment.

Two embedders (``--face-embedder``):

- ``senet50-vggface2``: the authors' SENet-50 (:mod:`m3ed.models.senet50`, 2048-d) with the
  released ``senet50_scratch_weight.pkl`` (from ``--face-embedder-checkpoint``, else
  ``$TORCH_HOME/checkpoints/``; it is not downloadable without a browser). Crops follow the
  authors' Resize(256) -> CenterCrop(224) of the tight box: the centred square of side
  224/256 of the box's shorter side, resized to 224. ``authors_cast`` adds their uint8 cast.
- ``inception-resnet-v1``: facenet-pytorch InceptionResnetV1 (VGGFace2, 512-d) on 160x160 crops.
- ``auto`` (default): SENet-50 when its weights are there (profiles with real weights), else
  InceptionResnetV1; the log says which ran and the stage provenance records it.

InceptionResnetV1's weights, ``profile.face_embedder``:

- ``"vggface2"``: the VGGFace2-trained weights of facenet-pytorch (107 MB), read from the same cache
  facenet-pytorch uses (``$TORCH_HOME/checkpoints/20180402-114759-vggface2.pt``) or downloaded there
  once; offline and not cached is a :class:`m3ed.profiles.ModelUnavailable` that says how to get it.
- a path to such a ``.pt`` file: those weights.
- ``None`` (``paper-random``, ``tiny``): random weights from ``profile.seed``; embeddings are
  meaningless, cost is real.

Input: RGB uint8 faces ``[N, 160, 160, 3]``; standardised as facenet-pytorch expects,
``(x - 127.5) / 128``. Output of either embedder: L2-normalised float32 ``[N, dim]``.
"""
from __future__ import annotations

import logging
import os
from pathlib import Path

import numpy as np
import torch
from facenet_pytorch import InceptionResnetV1

from ..models import senet50
from ..models.checkpoint import CheckpointError, load_checkpoint_file, load_state_dict_strict
from ..profiles import ModelUnavailable, Profile, download_once
from .options import EMBEDDERS

log = logging.getLogger(__name__)

EMBED_SIZE = 160   # input side in pixels
EMBED_DIM = 512
VGGFACE2_URL = "https://github.com/timesler/facenet-pytorch/releases/download/v2.2.9/20180402-114759-vggface2.pt"
VGGFACE2_CLASSES = 8631  # the checkpoint carries its training classifier (logits.*), unused here
SENET50_FILE = "senet50_scratch_weight.pkl"
#: VGGFace2-pytorch's README link for senet50_scratch (Google Drive, needs a browser's confirmation)
SENET50_SOURCE = "https://drive.google.com/file/d/11Xo4tKir1KF8GdaTCMSbEQ9N4LhshJNP"


def torch_home() -> Path:
    """facenet-pytorch's cache root (``TORCH_HOME``, else ``$XDG_CACHE_HOME/torch``)."""
    default = Path(os.environ.get("XDG_CACHE_HOME", "~/.cache")) / "torch"
    return Path(os.environ.get("TORCH_HOME", default)).expanduser()


def vggface2_weights() -> Path:
    """The VGGFace2 checkpoint, from the cache or downloaded into it."""
    cached = torch_home() / "checkpoints" / VGGFACE2_URL.rsplit("/", 1)[-1]
    how = (f"download {VGGFACE2_URL} where the internet is reachable and put it at {cached} "
           f"(or set TORCH_HOME to a directory whose checkpoints/ holds it); use the paper-random "
           f"profile to run without it")
    return download_once(VGGFACE2_URL, cached, "face embedder (InceptionResnetV1)", how, name="vggface2", progress=False)


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


def senet50_weights(checkpoint: str | None = None) -> Path | None:
    """SENet-50's weight file: ``checkpoint`` when given, else the cached one, else None."""
    path = Path(checkpoint).expanduser() if checkpoint else torch_home() / "checkpoints" / SENET50_FILE
    return path if path.is_file() else None


def resolve_embedder(name: str, profile: Profile, checkpoint: str | None = None) -> str:
    """The embedder ``auto`` stands for here: SENet-50 when its weights are there, else InceptionResnetV1."""
    if name not in EMBEDDERS:
        raise ValueError(f"AsdConfig.embedder={name!r}: choose one of {', '.join(EMBEDDERS)}")
    if name != "auto":
        return name
    real = checkpoint is not None or profile.face_embedder is not None
    return "senet50-vggface2" if real and senet50_weights(checkpoint) else "inception-resnet-v1"


def build_senet50(profile: Profile, checkpoint: str | None = None) -> senet50.SENet50:
    """SENet-50 with the released weights (random ones, from ``profile.seed``, for random profiles)."""
    if checkpoint is None and profile.face_embedder is None:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(profile.seed)
            return senet50.SENet50().eval()
    path = senet50_weights(checkpoint)
    if path is None:
        where = checkpoint or torch_home() / "checkpoints" / SENET50_FILE
        raise ModelUnavailable(f"face embedder senet50-vggface2: weights not found at {where}.\n  To provide "
                               f"them: download {SENET50_FILE} ({SENET50_SOURCE}, VGGFace2-pytorch) and put it "
                               f"there or pass AsdConfig.embedder_checkpoint FILE; or use "
                               f"AsdConfig.embedder='inception-resnet-v1'")
    try:
        return senet50.load_senet50(senet50.read_senet50_pickle(path), source=str(path))
    except CheckpointError as e:
        raise ModelUnavailable(f"face embedder weights {path}: {e}\n  Expected VGGFace2-pytorch's {SENET50_FILE}.") from e


def senet50_box(box: np.ndarray) -> np.ndarray:
    """The square of the face box that the authors' Resize(256) -> CenterCrop(224) keeps."""
    x1, y1, x2, y2 = (float(v) for v in box)
    half = senet50.INPUT_SIZE / senet50.RESIZE * min(x2 - x1, y2 - y1) / 2
    cx, cy = (x1 + x2) / 2, (y1 + y2) / 2
    return np.array([cx - half, cy - half, cx + half, cy + half], np.float32)


class FaceEmbedder:
    """Batched identity embeddings of face crops; ``input_size``, ``dim`` and ``crop_box`` say what
    crops it reads (``crop_box``: the part of a face box to cut, None for the whole box)."""

    def __init__(self, profile: Profile, device: str = "cpu", batch_size: int = 32, model: str = "auto",
                 checkpoint: str | None = None, authors_cast: bool = False):
        self.device = torch.device(device)
        self.batch_size = batch_size
        self.name = resolve_embedder(model, profile, checkpoint)
        self.authors_cast = authors_cast and self.name == "senet50-vggface2"
        if self.name == "senet50-vggface2":
            self.model = build_senet50(profile, checkpoint).to(self.device)
            random = checkpoint is None and profile.face_embedder is None
            self.source = f"random(seed={profile.seed})" if random else senet50_weights(checkpoint).name
            self.input_size, self.dim, self.crop_box = senet50.INPUT_SIZE, senet50.EMBED_DIM, senet50_box
        else:
            self.source = profile.face_embedder or f"random(seed={profile.seed})"
            self.model = build_embedder(profile).to(self.device)
            self.input_size, self.dim, self.crop_box = EMBED_SIZE, EMBED_DIM, None
        why = " (senet50-vggface2 weights not found)" if model == "auto" and self.name != "senet50-vggface2" else ""
        log.info("face embedder: %s, weights %s%s%s", self.name, self.source, why,
                 ", with the authors' uint8 cast" if self.authors_cast else "")

    @torch.inference_mode()
    def embed(self, faces_rgb_u8: np.ndarray) -> np.ndarray:
        """RGB uint8 ``[N, size, size, 3]`` -> unit-norm float32 ``[N, dim]``."""
        faces = np.asarray(faces_rgb_u8)
        size = self.input_size
        if faces.ndim != 4 or faces.shape[1:] != (size, size, 3):
            raise ValueError(f"faces must be RGB crops [N, {size}, {size}, 3] for {self.name}; got shape "
                             f"{list(faces.shape)}: crop and resize the faces to {size} px first")
        out = np.zeros((len(faces), self.dim), np.float32)
        for first in range(0, len(faces), self.batch_size):
            batch = np.ascontiguousarray(faces[first:first + self.batch_size])
            if self.name == "senet50-vggface2":
                x = senet50.preprocess(batch, self.authors_cast)
            else:
                x = (torch.from_numpy(batch).permute(0, 3, 1, 2).float() - 127.5) / 128.0  # fixed_image_standardization
            y = self.model(x.to(self.device)).float()
            out[first:first + len(batch)] = torch.nn.functional.normalize(y.float(), dim=1).cpu().numpy()
        return out
