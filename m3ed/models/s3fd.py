"""S3FD (Zhang et al., ICCV 2017): the face detector of TalkNet's demo, the M3ED authors' ASD front end.

Architecture (checkpoint-compatible with ``sfd_face.pth`` of the TalkNet-ASD release): a VGG16 base
whose ``fc6``/``fc7`` are convolutions (a 3x3 dilated by 6, then a 1x1), two extra stride-2 stages,
and six detection heads on the maps of stride 4, 8, 16, 32, 64 and 128 (conv3_3, conv4_3 and conv5_3
each L2-normalised over channels and scaled by a learned weight; fc7; the two extras). Each map
cell carries one square prior; its head predicts four box offsets (``loc``) and two class logits
(``conf``: background, face). The stride-4 head predicts three background logits and keeps their
maximum ("max-out background", which lowers false positives among the many small priors).

:meth:`S3FDNet.forward` stops at the heads' outputs; softmax, :func:`prior_boxes` and the decoding
into boxes belong to the detector (:mod:`m3ed.asd.s3fd`).

Weights: :func:`load_s3fd` reads the released ``sfd_face.pth`` (a plain state dict, no prefix) and
loads it strictly: every name and shape as the release has them, nothing missing, nothing extra.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .checkpoint import CheckpointNotFoundError, load_checkpoint_file, load_state_dict_strict

WEIGHTS_FILE = "sfd_face.pth"
#: Where TalkNet-ASD's demo fetches the file (``gdown --id 1KafnHz7ccT-3IyddBsL5yi2xGtxAKypt``).
WEIGHTS_SOURCE = "https://drive.google.com/uc?id=1KafnHz7ccT-3IyddBsL5yi2xGtxAKypt"

#: Prior side (input pixels) and stride of the six heads' maps.
MIN_SIZES = (16, 32, 64, 128, 256, 512)
STEPS = (4, 8, 16, 32, 64, 128)

# VGG16's conv stages: channels, "M" a 2x2 max pool, "C" the same with ceil mode. The released
# state dict numbers these layers (ReLUs and pools included) as vgg.0, vgg.1, ...
_VGG = (64, 64, "M", 128, 128, "M", 256, 256, 256, "C", 512, 512, 512, "M", 512, 512, 512, "M")
# Length of the vgg prefix whose output each L2Norm taps: conv3_3, conv4_3 and conv5_3 after their ReLU.
_L2NORM_TAPS = {16: "L2Norm3_3", 23: "L2Norm4_3", 30: "L2Norm5_3"}
_L2NORM_SCALES = {"L2Norm3_3": (256, 10.0), "L2Norm4_3": (512, 8.0), "L2Norm5_3": (512, 5.0)}   # channels, initial weight
_HEAD_CHANNELS = (256, 512, 512, 1024, 512, 256)
_MAXOUT_BACKGROUND = 3   # background logits of the stride-4 head


class HeadOutputs(NamedTuple):
    """The six heads' outputs, flattened over cells in prior order (map by map, row-major)."""

    loc: torch.Tensor            # [N, P, 4] box offsets, before decoding
    conf_logits: torch.Tensor    # [N, P, 2] background, face (before softmax)
    feature_sizes: list[tuple[int, int]]   # (height, width) of each head's map


class L2Norm(nn.Module):
    """Channel-wise L2 normalisation with a learned per-channel scale (ParseNet), as S3FD uses it."""

    eps = 1e-10

    def __init__(self, channels: int, scale: float) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.full((channels,), scale))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        norm = x.pow(2).sum(dim=1, keepdim=True).sqrt() + self.eps
        return self.weight.view(1, -1, 1, 1) * (x / norm)


def _vgg_layers() -> list[nn.Module]:
    layers: list[nn.Module] = []
    channels = 3
    for item in _VGG:
        if item in ("M", "C"):
            layers.append(nn.MaxPool2d(2, 2, ceil_mode=item == "C"))
        else:
            layers += [nn.Conv2d(channels, item, 3, padding=1), nn.ReLU(inplace=True)]
            channels = item
    fc6 = nn.Conv2d(512, 1024, 3, padding=6, dilation=6)
    fc7 = nn.Conv2d(1024, 1024, 1)
    return layers + [fc6, nn.ReLU(inplace=True), fc7, nn.ReLU(inplace=True)]


class S3FDNet(nn.Module):
    """S3FD whose :meth:`forward` gives the heads' outputs (:class:`HeadOutputs`) for an image batch."""

    def __init__(self) -> None:
        super().__init__()
        # registration order = the released state dict's order: vgg, L2Norms, extras, loc, conf
        self.vgg = nn.ModuleList(_vgg_layers())
        for name, (channels, scale) in _L2NORM_SCALES.items():
            setattr(self, name, L2Norm(channels, scale))
        self.extras = nn.ModuleList([nn.Conv2d(1024, 256, 1), nn.Conv2d(256, 512, 3, stride=2, padding=1),
                                     nn.Conv2d(512, 128, 1), nn.Conv2d(128, 256, 3, stride=2, padding=1)])
        self.loc = nn.ModuleList([nn.Conv2d(c, 4, 3, padding=1) for c in _HEAD_CHANNELS])
        conf_outputs = [_MAXOUT_BACKGROUND + 1] + [2] * (len(_HEAD_CHANNELS) - 1)
        self.conf = nn.ModuleList([nn.Conv2d(c, k, 3, padding=1) for c, k in zip(_HEAD_CHANNELS, conf_outputs)])

    def forward_features(self, x: torch.Tensor) -> list[torch.Tensor]:
        """``[N, 3, H, W]`` preprocessed RGB -> the six maps the heads read."""
        sources = []
        for index, layer in enumerate(self.vgg):
            if index in _L2NORM_TAPS:
                sources.append(getattr(self, _L2NORM_TAPS[index])(x))
            x = layer(x)
        sources.append(x)   # fc7
        for index, layer in enumerate(self.extras):
            x = F.relu(layer(x))
            if index % 2 == 1:   # the output of each stride-2 stage
                sources.append(x)
        return sources

    def forward(self, x: torch.Tensor) -> HeadOutputs:
        """``[N, 3, H, W]`` preprocessed RGB (see :func:`m3ed.asd.s3fd.preprocess`) -> :class:`HeadOutputs`."""
        sources = self.forward_features(x)
        locs, confs = [], []
        for index, source in enumerate(sources):
            conf = self.conf[index](source)
            if index == 0:
                background = conf[:, :_MAXOUT_BACKGROUND].max(dim=1, keepdim=True).values
                conf = torch.cat([background, conf[:, _MAXOUT_BACKGROUND:]], dim=1)
            locs.append(_per_cell(self.loc[index](source), 4))
            confs.append(_per_cell(conf, 2))
        sizes = [(int(s.shape[2]), int(s.shape[3])) for s in sources]
        return HeadOutputs(torch.cat(locs, dim=1), torch.cat(confs, dim=1), sizes)


def _per_cell(head: torch.Tensor, values: int) -> torch.Tensor:
    """``[N, C, h, w]`` -> ``[N, h * w, C]``: one row per cell, row-major like the priors."""
    return head.permute(0, 2, 3, 1).reshape(head.shape[0], -1, values)


def prior_boxes(image_size: tuple[int, int], feature_sizes: list[tuple[int, int]]) -> torch.Tensor:
    """The priors ``[P, 4]`` (cx, cy, w, h) in units of the input's width and height, float32.

    A cell (i, j) of the map with stride ``s`` is centred at ((j + 0.5) s / W, (i + 0.5) s / H); its
    prior's side is the map's minimum size. Computed in float64 and rounded once, as the reference does.
    """
    height, width = image_size
    rows = []
    for (map_h, map_w), step, size in zip(feature_sizes, STEPS, MIN_SIZES):
        i, j = np.meshgrid(np.arange(map_h), np.arange(map_w), indexing="ij")
        cx = (j.ravel() + 0.5) / (width / step)
        cy = (i.ravel() + 0.5) / (height / step)
        rows.append(np.stack([cx, cy, np.full_like(cx, size / width), np.full_like(cy, size / height)], axis=1))
    return torch.from_numpy(np.concatenate(rows).astype(np.float32))


def load_s3fd(path: str | os.PathLike[str]) -> S3FDNet:
    """S3FD in eval mode with the released ``sfd_face.pth`` at ``path``, loaded strictly."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointNotFoundError(
            f"S3FD weights not found: {path}. Expected {WEIGHTS_FILE}, the S3FD face detector's weights of the "
            f"TalkNet-ASD release (model/faceDetector/s3fd/{WEIGHTS_FILE}; download: {WEIGHTS_SOURCE}); "
            f"put it there or pass the path of a local copy")
    return s3fd_from_state_dict(load_checkpoint_file(path), source=str(path))


def s3fd_from_state_dict(state_dict: dict[str, torch.Tensor], source: str) -> S3FDNet:
    """S3FD in eval mode with ``state_dict`` (the released names, no prefix) loaded strictly."""
    model = S3FDNet()
    load_state_dict_strict(model, state_dict, strip_prefixes=(), source=source)
    return model.eval()
