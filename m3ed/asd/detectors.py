"""The face detector of an ASD run, by ``AsdConfig.detector``: MTCNN or S3FD.

- ``mtcnn`` (default): facenet-pytorch's MTCNN (:mod:`m3ed.asd.detect`), weights in its wheel.
- ``s3fd``: the authors' front end, TalkNet demo's S3FD (:mod:`m3ed.asd.s3fd`). With a profile of
  real weights it loads TalkNet-ASD's ``sfd_face.pth`` (``AsdConfig.detector_checkpoint``, else
  :func:`m3ed.asd.s3fd.s3fd_weights`); a missing file is a :class:`m3ed.profiles.ModelUnavailable`
  that says where to get it. The random profiles (``paper-random``, ``tiny``) build it with random
  weights from ``profile.seed``, unless a checkpoint is given: speed is real, faces are not.

Both give each frame's faces from that frame alone, as ``[k, 5]`` rows in original pixels.
"""
from __future__ import annotations

from pathlib import Path

import torch

from ..models.checkpoint import CheckpointError
from ..profiles import ModelUnavailable, Profile
from ..weights import sha256_of
from .detect import FaceDetector
from .options import AsdConfig

MTCNN_NAME = "facenet-pytorch-mtcnn"


def random_s3fd(config: AsdConfig, profile: Profile) -> bool:
    """Whether S3FD runs with random weights: a random profile and no checkpoint given."""
    return config.detector_checkpoint is None and profile.random_init


def build_detector(config: AsdConfig, profile: Profile, device: str | torch.device = "cpu"):
    """The detector ``config.detector`` names, with its settings, on ``device``."""
    if config.detector == "mtcnn":
        return FaceDetector(config.detection, device)
    from ..models.s3fd import WEIGHTS_FILE, WEIGHTS_SOURCE, S3FDNet
    from .s3fd import S3FDDetector, s3fd_weights

    if random_s3fd(config, profile):
        with torch.random.fork_rng(devices=[]):   # fixed weights without touching the global RNG
            torch.manual_seed(profile.seed)
            return S3FDDetector(S3FDNet(), config.s3fd, device)
    path = s3fd_weights(config.detector_checkpoint)
    if not path.is_file():
        raise ModelUnavailable(f"face detector s3fd: weights not found at {path}.\n  To provide them: download "
                               f"{WEIGHTS_FILE} ({WEIGHTS_SOURCE}, TalkNet-ASD's model/faceDetector/s3fd/) and put "
                               f"it there or pass AsdConfig.detector_checkpoint FILE; or use AsdConfig.detector='mtcnn'")
    try:
        return S3FDDetector.from_file(path, config.s3fd, device)
    except CheckpointError as e:
        raise ModelUnavailable(f"face detector weights {path}: {e}\n  Expected TalkNet-ASD's {WEIGHTS_FILE}.") from e


def detector_provenance(config: AsdConfig, profile: Profile) -> dict:
    """What the stage provenance records of the detector: its name, its weights (S3FD) and its
    settings (``detection``: the active detector's). MTCNN's weights ship in facenet-pytorch."""
    if config.detector == "mtcnn":
        return {"detector": MTCNN_NAME}
    if random_s3fd(config, profile):
        return {"detector": "s3fd", "detector_weights": f"random(seed={profile.seed})"}
    from .s3fd import s3fd_weights

    path = s3fd_weights(config.detector_checkpoint)
    return {"detector": "s3fd", "detector_weights": str(path),
            "detector_weights_sha256": sha256_of(path) if Path(path).is_file() else None}
