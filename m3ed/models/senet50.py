"""SENet-50 (SE-ResNet-50) trained on VGGFace2: the M3ED authors' face-identity embedder (paper footnote 6).

Architecture (VGGFace2-pytorch ``senet50(num_classes=8631, include_top=False)``, as the authors build
it): a 7x7 stride-2 stem, BN-ReLU, max-pool 3/2 (no padding, ceil mode), four stages of 3, 4, 6, 3
bottlenecks (width 64, 128, 256, 512, expansion 4), an ``AvgPool2d(7)`` over the final 7x7 map:
the **2048-d** embedding, not normalised. Two details the state dict does not show: a stage's
stride sits on its first 1x1 convolution (not the 3x3), and each bottleneck's squeeze-excitation
gate ``sigmoid(conv5(relu(conv4(mean of the bn3 output))))`` scales the bn3 output before the
residual add. ``fc`` (2048 -> 8631, the training classifier) is built so that the released file
loads strictly, and is not used.

Weights: ``senet50_scratch_weight.pkl`` of VGGFace2-pytorch (the file the authors load), a Python-2
pickle of a plain dict {state-dict name: numpy array}; :func:`read_senet50_pickle` reads it and
:func:`load_senet50` loads it strictly (it has no ``num_batches_tracked``; BatchNorm fills those in).

Preprocessing (:func:`preprocess`, the authors' ``get_batch_vggface_embeeding``): RGB face
(after Resize(256) of the shorter side and CenterCrop(224)) -> BGR -> minus the VGGFace2 mean
(:data:`MEAN_BGR`) -> C x H x W. ``authors_cast=True`` adds their quirk: the mean-subtracted floats
pass through ``np.array(..., dtype=np.uint8)``, which truncates and wraps negative values to
``256 + trunc(v)`` (dark pixels turn bright). It is a bug, and their features were computed with it.
"""
from __future__ import annotations

import os
import pickle
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .checkpoint import CheckpointError, load_state_dict_strict

EMBED_DIM = 2048
INPUT_SIZE = 224          # CenterCrop
RESIZE = 256              # Resize: the shorter side
VGGFACE2_CLASSES = 8631
#: VGGFace2 training mean, in BGR order (the authors' ``transform``).
MEAN_BGR = (91.4953, 103.8827, 131.0912)
_SE_REDUCTION = 16
_STAGES = ((64, 3, 1), (128, 4, 2), (256, 6, 2), (512, 3, 2))   # width, blocks, stride


class _Bottleneck(nn.Module):
    expansion = 4

    def __init__(self, inplanes: int, planes: int, stride: int = 1) -> None:
        super().__init__()
        out = planes * self.expansion
        # registration order = the released state dict's order: conv1..bn3, downsample, conv4, conv5
        self.conv1 = nn.Conv2d(inplanes, planes, 1, stride=stride, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = nn.Conv2d(planes, out, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(out)
        self.downsample = None
        if stride != 1 or inplanes != out:
            self.downsample = nn.Sequential(nn.Conv2d(inplanes, out, 1, stride=stride, bias=False), nn.BatchNorm2d(out))
        self.conv4 = nn.Conv2d(out, out // _SE_REDUCTION, 1)
        self.conv5 = nn.Conv2d(out // _SE_REDUCTION, out, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = F.relu(self.bn1(self.conv1(x)))
        y = F.relu(self.bn2(self.conv2(y)))
        y = self.bn3(self.conv3(y))
        gate = torch.sigmoid(self.conv5(F.relu(self.conv4(y.mean(dim=(2, 3), keepdim=True)))))
        residual = x if self.downsample is None else self.downsample(x)
        return F.relu(gate * y + residual)


class SENet50(nn.Module):
    """SENet-50 whose :meth:`forward` returns the ``[N, 2048]`` embedding (the pooled features)."""

    def __init__(self, num_classes: int = VGGFACE2_CLASSES) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 64, 7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        inplanes = 64
        for index, (planes, blocks, stride) in enumerate(_STAGES, start=1):
            layers = []
            for b in range(blocks):
                layers.append(_Bottleneck(inplanes, planes, stride if b == 0 else 1))
                inplanes = planes * _Bottleneck.expansion
            setattr(self, f"layer{index}", nn.Sequential(*layers))
        self.fc = nn.Linear(EMBED_DIM, num_classes)   # the training classifier: loaded, never run

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``[N, 3, 224, 224]`` preprocessed BGR faces (see :func:`preprocess`) -> ``[N, 2048]``."""
        x = F.relu(self.bn1(self.conv1(x)))
        x = F.max_pool2d(x, 3, stride=2, padding=0, ceil_mode=True)
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return F.avg_pool2d(x, 7, stride=1).flatten(1)


def read_senet50_pickle(path: str | os.PathLike[str]) -> dict[str, torch.Tensor]:
    """The state dict in a VGGFace2-pytorch ``.pkl`` weight file (Python-2 pickle of numpy arrays)."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"SENet-50 weights not found: {path}")
    try:
        with path.open("rb") as f:
            obj = pickle.load(f, encoding="latin1")  # noqa: S301 - the released format is a pickle
    except Exception as e:  # pickle raises many types for a truncated or foreign file
        raise CheckpointError(f"cannot read SENet-50 weights {path}: not a VGGFace2-pytorch pickle "
                              f"({type(e).__name__}: {e}); download senet50_scratch_weight.pkl again") from e
    if not isinstance(obj, dict) or not all(isinstance(v, np.ndarray) for v in obj.values()):
        raise CheckpointError(f"{path}: expected a dict of numpy arrays (VGGFace2-pytorch's senet50_*_weight.pkl), "
                              f"got {type(obj).__name__}")
    return {name: torch.from_numpy(np.ascontiguousarray(value)) for name, value in obj.items()}


def load_senet50(state_dict: dict[str, torch.Tensor], source: str) -> SENet50:
    """SENet-50 in eval mode with ``state_dict`` loaded strictly (``num_batches_tracked`` may be absent:
    the released file predates them, and BatchNorm does not use them in eval mode)."""
    model = SENet50()
    filled = dict(state_dict)
    for name, value in model.state_dict().items():
        if name.endswith("num_batches_tracked"):
            filled.setdefault(name, value)
    load_state_dict_strict(model, filled, source=source)
    return model.eval()


def preprocess(faces_rgb_u8: np.ndarray, authors_cast: bool = False) -> torch.Tensor:
    """RGB uint8 faces ``[N, 224, 224, 3]`` (resized and cropped) -> float32 ``[N, 3, 224, 224]``."""
    faces = np.asarray(faces_rgb_u8)
    if faces.ndim != 4 or faces.shape[1:] != (INPUT_SIZE, INPUT_SIZE, 3) or faces.dtype != np.uint8:
        raise ValueError(f"faces must be RGB uint8 [N, {INPUT_SIZE}, {INPUT_SIZE}, 3]; got {faces.dtype} "
                         f"{list(faces.shape)}: resize the shorter side to 256 and cut the central 224 x 224 first")
    # float32 pixels minus a float64 mean: computed in float64, stored as float32 (as the authors' numpy did)
    x = (faces[..., ::-1].astype(np.float32) - np.asarray(MEAN_BGR)).astype(np.float32).transpose(0, 3, 1, 2)
    if authors_cast:
        x = _uint8_wrap(x)
    return torch.from_numpy(np.ascontiguousarray(x))


def _uint8_wrap(x: np.ndarray) -> np.ndarray:
    """numpy's float -> uint8 cast on x86-64, written out: trunc(v) mod 256 (values are within ±256)."""
    return np.mod(np.trunc(x), 256.0).astype(np.float32)
