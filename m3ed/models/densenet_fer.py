"""The M3ED authors' facial-expression network: DenseNet-BC-100 on 64x64 gray faces.

Three dense blocks of 16 bottleneck layers (BN-ReLU-1x1 conv to 4*12 channels, BN-ReLU-3x3 conv to
12 new channels, concatenated to the input), transitions (BN-ReLU-1x1 conv halving the channels,
2x2 average pool) between blocks, a single 3x3 stride-2 stem convolution (no norm, no max-pool),
a final BN-ReLU and a global average pool give the **342-d** face feature (the paper's V_Frm);
a linear layer maps it to the 8 FER+ classes the network was trained on. Channels:
24 -> 216 -> 108 -> 300 -> 150 -> 342; spatial size 64 -> 32 -> 16 -> 8.

Names follow the authors' code (AIM3-RUC/MEmoBert ``code/denseface/model/dense_net.py``): the
checkpoints are state dicts with ``features.*`` and ``classifier.*`` keys (768,044 parameters).
"""

from __future__ import annotations

import os
from collections import OrderedDict

import numpy as np
import torch
from torch import nn

from .checkpoint import load_checkpoint_file, load_state_dict_strict

__all__ = [
    "FACE_SIZE",
    "FER_PLUS_CLASSES",
    "M3ED_FACE_MEAN",
    "M3ED_FACE_STD",
    "DenseNetFER",
    "preprocess",
]

#: Output classes, in the order of the classifier's outputs (FER+ order).
FER_PLUS_CLASSES = ("neutral", "happiness", "surprise", "sadness", "anger", "disgust", "fear", "contempt")
#: Gray-value normalisation constants of the authors' M3ED feature extraction.
M3ED_FACE_MEAN = 89.936089
M3ED_FACE_STD = 45.954746
#: Input face crops are FACE_SIZE x FACE_SIZE gray images.
FACE_SIZE = 64


def preprocess(
    gray_u8: np.ndarray | torch.Tensor, mean: float = M3ED_FACE_MEAN, std: float = M3ED_FACE_STD
) -> torch.Tensor:
    """Gray face crops ``[B,64,64]`` (or one ``[64,64]``), values 0-255 -> float32 ``[B,1,64,64]``.

    Normalised as ``(x - mean) / std`` with scalar constants, like the authors' extraction.
    """
    faces = torch.as_tensor(gray_u8)
    if faces.dim() == 2:
        faces = faces.unsqueeze(0)
    if faces.dim() != 3 or tuple(faces.shape[-2:]) != (FACE_SIZE, FACE_SIZE):
        raise ValueError(
            f"faces must be gray crops [batch, {FACE_SIZE}, {FACE_SIZE}] (or one [{FACE_SIZE}, "
            f"{FACE_SIZE}]); got shape {list(faces.shape)}: resize the crops first"
        )
    return ((faces.to(torch.float32) - mean) / std).unsqueeze(1)


class _DenseLayer(nn.Sequential):
    """Bottleneck layer: BN-ReLU-1x1 conv, BN-ReLU-3x3 conv; its output is appended to its input."""

    def __init__(self, in_features: int, growth_rate: int, bn_size: int) -> None:
        super().__init__(
            OrderedDict(
                norm1=nn.BatchNorm2d(in_features),
                relu1=nn.ReLU(inplace=True),  # in place: on the norm's fresh output, saves a pass over memory
                conv1=nn.Conv2d(in_features, bn_size * growth_rate, 1, bias=False),
                norm2=nn.BatchNorm2d(bn_size * growth_rate),
                relu2=nn.ReLU(inplace=True),
                conv2=nn.Conv2d(bn_size * growth_rate, growth_rate, 3, padding=1, bias=False),
            )
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([x, super().forward(x)], dim=1)


class _Transition(nn.Sequential):
    def __init__(self, in_features: int, out_features: int) -> None:
        super().__init__(
            OrderedDict(
                norm=nn.BatchNorm2d(in_features),
                relu=nn.ReLU(inplace=True),
                conv=nn.Conv2d(in_features, out_features, 1, bias=False),
                pool=nn.AvgPool2d(2, stride=2),
            )
        )


class DenseNetFER(nn.Module):
    """DenseNet-BC for gray faces; defaults are the authors' DenseNet-BC-100 (342-d features).

    Dropout (a training option of the authors' code) is not part of inference and is omitted.
    """

    def __init__(
        self,
        growth_rate: int = 12,
        block_config: tuple[int, ...] = (16, 16, 16),
        num_init_features: int = 24,
        bn_size: int = 4,
        compression: float = 0.5,
        num_classes: int = len(FER_PLUS_CLASSES),
    ) -> None:
        super().__init__()
        features: OrderedDict[str, nn.Module] = OrderedDict(
            conv0=nn.Conv2d(1, num_init_features, 3, stride=2, padding=1, bias=False)
        )
        channels = num_init_features
        for index, num_layers in enumerate(block_config, start=1):
            block = nn.Sequential(
                OrderedDict(
                    (f"denselayer{i + 1}", _DenseLayer(channels + i * growth_rate, growth_rate, bn_size))
                    for i in range(num_layers)
                )
            )
            features[f"denseblock{index}"] = block
            channels += num_layers * growth_rate
            if index != len(block_config):
                features[f"transition{index}"] = _Transition(channels, int(channels * compression))
                channels = int(channels * compression)
        # The authors name the final norm after the number of blocks ("norm3" here).
        features[f"norm{len(block_config)}"] = nn.BatchNorm2d(channels)
        features[f"relu{len(block_config)}"] = nn.ReLU(inplace=True)
        self.features = nn.Sequential(features)
        self.classifier = nn.Linear(channels, num_classes)
        #: Size of :meth:`forward_features`' output (342 for DenseNet-BC-100).
        self.feature_dim = channels

    @classmethod
    def from_checkpoint(cls, path: str | os.PathLike[str], device: str | torch.device = "cpu") -> DenseNetFER:
        """Build the default network from a checkpoint (plain or nested state dict), in eval mode."""
        network = cls()
        load_state_dict_strict(network, load_checkpoint_file(path), source=str(path))
        return network.to(device).eval()

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """``[B,1,64,64]`` normalised faces (see :func:`preprocess`) -> ``[B,342]`` features."""
        if x.dim() != 4 or x.shape[1] != 1 or tuple(x.shape[-2:]) != (FACE_SIZE, FACE_SIZE):
            raise ValueError(
                f"x must be normalised gray faces [batch, 1, {FACE_SIZE}, {FACE_SIZE}] "
                f"(use densenet_fer.preprocess); got shape {list(x.shape)}"
            )
        # Global average of the final 8x8 map (the authors: avg_pool2d(kernel_size=8)).
        return self.features(x).mean(dim=(2, 3))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``[B,1,64,64]`` normalised faces -> ``[B,8]`` logits in :data:`FER_PLUS_CLASSES` order."""
        return self.classifier(self.forward_features(x))

