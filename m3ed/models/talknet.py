"""TalkNet active speaker detection (Tao et al., ACM MM 2021), checkpoint-compatible.

The network scores, for every video frame of a face track, whether that face is speaking, from the
gray 112x112 face crops and the audio's MFCCs (4 MFCC frames per 25 fps video frame):

    video [B,T,112,112] ─ visual front-end (3-D conv + ResNet-18) ─ V-TCN ─ Conv1D ─► [B,T,128] ─┐
    mfcc  [B,4T,13]     ─ audio encoder (SE-ResNet-34, half width) ──────────────► [B,T,128] ─┤
                          cross-attention A→V and V→A, concatenation, self-attention ◄─────────┘
                          ─► [B,T,256] ─ lossAV.FC ─► logits [B,T,2] (not speaking, speaking)

Module and parameter names follow the authors' code (github.com/TaoRuijie/TalkNet-ASD), so the
official checkpoints (``pretrain_TalkSet.model``, ``pretrain_AVA.model``) load strictly: their keys
are ``model.*`` (this backbone), ``lossAV.FC.*`` (the audio-visual head used at inference) and
``lossA.*``/``lossV.*`` (auxiliary training heads, dropped on load). The attribute names are
therefore camelCase where the checkpoint says so.

This module also holds what both of our ASD scorers share (this one and Light-ASD): the input
conventions, the length alignment of audio and video, the scoring head and the probability.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Mapping

import torch
import torch.nn.functional as F
from torch import nn

from .checkpoint import load_checkpoint_file, load_state_dict_strict

__all__ = [
    "FACE_PIXEL_MEAN",
    "FACE_PIXEL_STD",
    "MAX_FRAMES_PER_PASS",
    "MFCC_FRAMES_PER_VIDEO_FRAME",
    "NUM_MFCC",
    "AudioVisualASD",
    "ScoreHead",
    "TalkNet",
    "crop_to_common_length",
    "normalise_face_pixels",
]

logger = logging.getLogger(__name__)

#: MFCCs at 100 frames/s against video at 25 frames/s.
MFCC_FRAMES_PER_VIDEO_FRAME = 4
#: Cepstral coefficients per MFCC frame.
NUM_MFCC = 13
#: Face pixels (0-255 gray values) are normalised as (x / 255 - mean) / std inside the models.
FACE_PIXEL_MEAN = 0.4161
FACE_PIXEL_STD = 0.1688
#: Most video frames the memory-hungry parts take in one pass: longer pieces run their front-ends
#: chunk by chunk (:meth:`AudioVisualASD._in_chunks`) and TalkNet's attention that many queries at a
#: time, since activations grow with the frames of a pass (Light-ASD's front-ends: about 1.6 MiB a
#: frame; TalkNet's attention scores: quadratically). 250 is what ``ScoreParams.batch_frames``
#: already lets a batch of short pieces hold, so a long piece peaks no higher than they do.
MAX_FRAMES_PER_PASS = 250

# Keys of the official checkpoints that belong to training-only heads.
_TALKNET_TRAINING_ONLY_PREFIXES = ("lossA.", "lossV.")


# --------------------------------------------------------------------------------------------------
# Shared by the ASD scorers
# --------------------------------------------------------------------------------------------------


def normalise_face_pixels(video: torch.Tensor) -> torch.Tensor:
    """Map raw gray values (0-255) to the models' input scale, like the reference code."""
    return (video / 255 - FACE_PIXEL_MEAN) / FACE_PIXEL_STD


def crop_to_common_length(mfcc: torch.Tensor, video: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Crop ``mfcc [B,N,13]`` and ``video [B,T,H,W]`` to the same duration, ``4*T'`` and ``T'`` frames.

    ``T' = min(N // 4, T)``: the reference demo does the same (it cuts both streams to the shorter
    duration, with the audio rounded down to whole video frames) because the networks pair audio
    and video frame by frame. Frames past the common length get no score.
    """
    frames = min(mfcc.shape[1] // MFCC_FRAMES_PER_VIDEO_FRAME, video.shape[1])
    if frames < 1:
        raise ValueError(
            f"nothing to score: mfcc has {mfcc.shape[1]} frames and video {video.shape[1]}; at least "
            f"{MFCC_FRAMES_PER_VIDEO_FRAME} MFCC frames and 1 video frame are needed"
        )
    return mfcc[:, : frames * MFCC_FRAMES_PER_VIDEO_FRAME], video[:, :frames]


def _check_mfcc(mfcc: torch.Tensor) -> None:
    if mfcc.dim() != 3 or mfcc.shape[-1] != NUM_MFCC:
        raise ValueError(
            f"mfcc must be [batch, 4*frames, {NUM_MFCC}] (m3ed.asd.mfcc.mfcc output with a batch "
            f"axis), got shape {list(mfcc.shape)}"
        )


def _check_video(video: torch.Tensor, size: int | None) -> None:
    if video.dim() != 4 or (size is not None and tuple(video.shape[-2:]) != (size, size)):
        want = f"{size}x{size}" if size is not None else "height x width"
        raise ValueError(
            f"video must be [batch, frames, {want}] gray face crops (0-255 values), "
            f"got shape {list(video.shape)}"
        )


class ScoreHead(nn.Module):
    """Linear layer to (not speaking, speaking) logits; ``lossAV``/``lossV`` in the checkpoints."""

    def __init__(self, in_features: int) -> None:
        super().__init__()
        self.FC = nn.Linear(in_features, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.FC(x)


class AudioVisualASD(nn.Module):
    """The interface of an audio-visual active speaker scorer.

    Subclasses provide the two front-ends, :meth:`fuse` and a ``lossAV`` :class:`ScoreHead`;
    front-ends that look at nearby frames only run long pieces through :meth:`_in_chunks`.
    Inputs: ``mfcc [B,4T,13]`` (:func:`m3ed.asd.mfcc.mfcc` of int16-scale samples) and
    ``video [B,T,H,W]`` raw gray values 0-255 as floats (or uint8); the models normalise inside.
    Inputs are moved to the model's device and dtype.
    """

    #: Face crop size the model needs (None: any size works).
    face_size: int | None = 112
    #: Longest piece that runs in one pass (an attribute so that tests can shrink it).
    max_frames_per_pass: int = MAX_FRAMES_PER_PASS
    lossAV: ScoreHead

    def forward_audio_frontend(self, mfcc: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def forward_visual_frontend(self, video: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def fuse(self, audio_embed: torch.Tensor, visual_embed: torch.Tensor) -> torch.Tensor:
        """Audio-visual embedding ``[B,T,D]`` from the two front-end outputs ``[B,T,128]``."""
        raise NotImplementedError

    def logits(self, mfcc: torch.Tensor, video: torch.Tensor) -> torch.Tensor:
        """Per-frame ``[B,T',2]`` logits (not speaking, speaking), ``T'`` the common length.

        The reference demo's per-frame score is the second logit alone; see
        :meth:`speaking_probability` for a probability.
        """
        mfcc, video = self._prepare(mfcc, video)
        audio = self.forward_audio_frontend(mfcc)
        visual = self.forward_visual_frontend(video)
        return self.lossAV(self.fuse(audio, visual))

    def speaking_probability(self, mfcc: torch.Tensor, video: torch.Tensor) -> torch.Tensor:
        """Per-frame ``[B,T']`` probability that the face speaks: ``sigmoid(logit1 - logit0)``.

        Equal to the softmax's second entry, the probability the models were trained on.
        """
        logits = self.logits(mfcc, video)
        return torch.sigmoid(logits[..., 1] - logits[..., 0])

    def forward(self, mfcc: torch.Tensor, video: torch.Tensor) -> torch.Tensor:
        return self.logits(mfcc, video)

    def _prepare(self, mfcc: torch.Tensor, video: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Validate both inputs, move them to the model and crop them to their common length."""
        _check_mfcc(mfcc)
        video = self._prepare_video(video)
        if mfcc.shape[0] != video.shape[0]:
            raise ValueError(
                f"mfcc and video must have the same batch size, got {mfcc.shape[0]} and {video.shape[0]}"
            )
        return crop_to_common_length(self._to_model(mfcc), video)

    def _prepare_video(self, video: torch.Tensor) -> torch.Tensor:
        _check_video(video, self.face_size)
        return self._to_model(video)

    def _to_model(self, x: torch.Tensor) -> torch.Tensor:
        reference = next(self.parameters())
        return x.to(device=reference.device, dtype=reference.dtype)

    def _in_chunks(self, frontend: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor, context: int,
                   steps_per_frame: int = 1) -> torch.Tensor:
        """``frontend(x)`` in memory bounded by :attr:`max_frames_per_pass` whatever the length.

        ``frontend`` maps ``x [B, steps_per_frame*T, ...]`` to ``[B,T,D]``, each output frame
        depending only on the inputs within ``context`` frames of it (its temporal receptive field).
        Each chunk runs with ``context`` more frames on both sides, and their outputs (the ones that
        saw the chunk's edge padding) are dropped: the same values as one pass, up to rounding.
        Pieces up to :attr:`max_frames_per_pass` (and inputs not whole frames) take one pass.
        """
        frames, rest = divmod(x.shape[1], steps_per_frame)
        if rest or frames <= self.max_frames_per_pass:
            return frontend(x)
        chunks = -(-frames // self.max_frames_per_pass)
        size = -(-frames // chunks)  # equal chunks: no short last one carrying two full halos
        outputs = []
        for start in range(0, frames, size):
            stop = min(start + size, frames)
            first, last = max(0, start - context), min(frames, stop + context)
            embedding = frontend(x[:, first * steps_per_frame:last * steps_per_frame])
            outputs.append(embedding[:, start - first:stop - first])
        return torch.cat(outputs, dim=1)


# --------------------------------------------------------------------------------------------------
# Visual encoder: 3-D conv front-end + ResNet-18 (from deep_avsr), V-TCN, Conv1D
# --------------------------------------------------------------------------------------------------

# The visual front-end's batch norms use these (non-default) settings; eps changes the outputs.
_FRONTEND_BN = {"momentum": 0.01, "eps": 0.001}
# Frames either side that a frame's _VisualFrontend embedding depends on: its 3-D convolution spans
# 5 frames; pooling and the ResNet-18 work frame by frame.
_VISUAL_FRONTEND_CONTEXT_FRAMES = 2


class _ResNetLayer(nn.Module):
    """Two residual blocks whose batch norm + ReLU follow the addition (deep_avsr's layout)."""

    def __init__(self, in_planes: int, out_planes: int, stride: int) -> None:
        super().__init__()
        self.conv1a = nn.Conv2d(in_planes, out_planes, 3, stride=stride, padding=1, bias=False)
        self.bn1a = nn.BatchNorm2d(out_planes, **_FRONTEND_BN)
        self.conv2a = nn.Conv2d(out_planes, out_planes, 3, stride=1, padding=1, bias=False)
        self.stride = stride
        # Present (and in the checkpoint) even where unused: at stride 1 the shortcut is identity.
        self.downsample = nn.Conv2d(in_planes, out_planes, 1, stride=stride, bias=False)
        self.outbna = nn.BatchNorm2d(out_planes, **_FRONTEND_BN)
        self.conv1b = nn.Conv2d(out_planes, out_planes, 3, stride=1, padding=1, bias=False)
        self.bn1b = nn.BatchNorm2d(out_planes, **_FRONTEND_BN)
        self.conv2b = nn.Conv2d(out_planes, out_planes, 3, stride=1, padding=1, bias=False)
        self.outbnb = nn.BatchNorm2d(out_planes, **_FRONTEND_BN)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shortcut = x if self.stride == 1 else self.downsample(x)
        first = self.conv2a(F.relu(self.bn1a(self.conv1a(x)))) + shortcut
        y = F.relu(self.outbna(first))
        second = self.conv2b(F.relu(self.bn1b(self.conv1b(y)))) + first
        return F.relu(self.outbnb(second))


class _ResNet18(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.layer1 = _ResNetLayer(64, 64, stride=1)
        self.layer2 = _ResNetLayer(64, 128, stride=2)
        self.layer3 = _ResNetLayer(128, 256, stride=2)
        self.layer4 = _ResNetLayer(256, 512, stride=2)
        self.avgpool = nn.AvgPool2d(kernel_size=4, stride=1)  # 4x4 maps for 112x112 faces

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.avgpool(self.layer4(self.layer3(self.layer2(self.layer1(x)))))


class _VisualFrontend(nn.Module):
    """512-d embedding per frame: a 5-frame 3-D convolution, then a 2-D ResNet-18 per frame."""

    def __init__(self) -> None:
        super().__init__()
        self.frontend3D = nn.Sequential(
            nn.Conv3d(1, 64, kernel_size=(5, 7, 7), stride=(1, 2, 2), padding=(2, 3, 3), bias=False),
            nn.BatchNorm3d(64, **_FRONTEND_BN),
            nn.ReLU(),
            nn.MaxPool3d(kernel_size=(1, 3, 3), stride=(1, 2, 2), padding=(0, 1, 1)),
        )
        self.resnet = _ResNet18()

    def forward(self, video: torch.Tensor) -> torch.Tensor:
        """``[B,T,H,W]`` normalised frames -> ``[B,T,512]``.

        Each track is its own sequence for the temporal convolution. (The reference stacks all
        B*T frames into one sequence, so with B > 1 neighbouring tracks leak into each other's
        first/last two frames; with B = 1 both are the same.)
        """
        batch, frames = video.shape[:2]
        x = self.frontend3D(video.unsqueeze(1))  # [B,64,T,h,w]
        channels, height, width = x.shape[1], x.shape[3], x.shape[4]
        x = x.transpose(1, 2).reshape(batch * frames, channels, height, width)
        return self.resnet(x).reshape(batch, frames, 512)


class _GlobalLayerNorm(nn.Module):
    """Layer norm over channels and time jointly, per sample (from Conv-TasNet)."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.gamma = nn.Parameter(torch.ones(1, channels, 1))
        self.beta = nn.Parameter(torch.zeros(1, channels, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        mean = x.mean(dim=1, keepdim=True).mean(dim=2, keepdim=True)
        var = (x - mean).pow(2).mean(dim=1, keepdim=True).mean(dim=2, keepdim=True)
        return self.gamma * (x - mean) / torch.sqrt(var + 1e-8) + self.beta


class _DSConv1d(nn.Module):
    """Residual depthwise-separable temporal convolution block of the V-TCN."""

    def __init__(self, channels: int = 512) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.ReLU(),
            nn.BatchNorm1d(channels),
            nn.Conv1d(channels, channels, 3, stride=1, padding=1, groups=channels, bias=False),
            nn.PReLU(),
            _GlobalLayerNorm(channels),
            nn.Conv1d(channels, channels, 1, bias=False),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x) + x


class _VisualTCN(nn.Module):
    def __init__(self, blocks: int = 5) -> None:
        super().__init__()
        self.net = nn.Sequential(*(_DSConv1d() for _ in range(blocks)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class _VisualConv1D(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.Conv1d(512, 256, 5, stride=1, padding=2),
            nn.BatchNorm1d(256),
            nn.ReLU(),
            nn.Conv1d(256, 128, 1),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


# --------------------------------------------------------------------------------------------------
# Audio encoder: SE-ResNet over the MFCC "image" [13 coefficients x 4T frames]
# --------------------------------------------------------------------------------------------------


class _SELayer(nn.Module):
    """Squeeze-and-excitation channel gating."""

    def __init__(self, channels: int, reduction: int = 8) -> None:
        super().__init__()
        self.fc = nn.Sequential(
            nn.Linear(channels, channels // reduction),
            nn.ReLU(),
            nn.Linear(channels // reduction, channels),
            nn.Sigmoid(),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        weights = self.fc(x.mean(dim=(2, 3)))
        return x * weights[:, :, None, None]


class _SEBasicBlock(nn.Module):
    def __init__(self, in_planes: int, planes: int, stride: int | tuple[int, int] = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.se = _SELayer(planes)
        self.downsample: nn.Module | None = None
        if stride not in (1, (1, 1)) or in_planes != planes:
            self.downsample = nn.Sequential(
                nn.Conv2d(in_planes, planes, 1, stride=stride, bias=False),
                nn.BatchNorm2d(planes),
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # The reference applies ReLU before the first batch norm; the weights were trained so.
        out = self.bn1(F.relu(self.conv1(x)))
        out = self.se(self.bn2(self.conv2(out)))
        shortcut = x if self.downsample is None else self.downsample(x)
        return F.relu(out + shortcut)


class _AudioEncoder(nn.Module):
    """``[B,1,13,4T]`` MFCC image -> ``[B,T,128]``: time is halved twice, coefficients averaged."""

    def __init__(
        self, layers: tuple[int, ...] = (3, 4, 6, 3), filters: tuple[int, ...] = (16, 32, 64, 128)
    ) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(1, filters[0], kernel_size=7, stride=(2, 1), padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(filters[0])
        strides = (1, (2, 2), (2, 2), (1, 1))
        in_planes = filters[0]
        for index, (count, planes, stride) in enumerate(zip(layers, filters, strides, strict=True)):
            blocks = [_SEBasicBlock(in_planes, planes, stride)]
            blocks += [_SEBasicBlock(planes, planes) for _ in range(count - 1)]
            self.add_module(f"layer{index + 1}", nn.Sequential(*blocks))
            in_planes = planes

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.bn1(self.conv1(x)))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return x.mean(dim=2).transpose(1, 2)


# --------------------------------------------------------------------------------------------------
# Attention and the backbone
# --------------------------------------------------------------------------------------------------


class _AttentionLayer(nn.Module):
    """Post-norm transformer layer whose queries come from ``target``, keys/values from ``source``.

    The residual branch carries ``source``: cross-attention A→V (source audio, target video)
    returns audio features re-weighted by their agreement with the video.
    """

    def __init__(self, d_model: int, nhead: int = 8, dropout: float = 0.1) -> None:
        super().__init__()
        self.self_attn = nn.MultiheadAttention(d_model, nhead, dropout=dropout, batch_first=True)
        self.linear1 = nn.Linear(d_model, d_model * 4)
        self.dropout = nn.Dropout(dropout)
        self.linear2 = nn.Linear(d_model * 4, d_model)
        self.norm1 = nn.LayerNorm(d_model)
        self.norm2 = nn.LayerNorm(d_model)
        self.dropout1 = nn.Dropout(dropout)
        self.dropout2 = nn.Dropout(dropout)

    def forward(self, source: torch.Tensor, target: torch.Tensor, queries_per_pass: int | None = None) -> torch.Tensor:
        """``queries_per_pass`` bounds the ``[queries, T]`` attention scores of a long sequence; every
        query still attends to all of ``source``, so the values are the same (up to rounding)."""
        if queries_per_pass is None or target.shape[1] <= queries_per_pass:
            # target itself, not a view of it: attention packs its projections when query is key
            attended = self.self_attn(target, source, source, need_weights=False)[0]
        else:
            attended = torch.cat([self.self_attn(queries, source, source, need_weights=False)[0]
                                  for queries in target.split(queries_per_pass, dim=1)], dim=1)
        x = self.norm1(source + self.dropout1(attended))
        feed_forward = self.linear2(self.dropout(F.relu(self.linear1(x))))
        return self.norm2(x + self.dropout2(feed_forward))


class _TalkNetBackbone(nn.Module):
    """``talkNetModel`` of the reference: everything but the scoring head (``model.*`` keys)."""

    def __init__(self) -> None:
        super().__init__()
        self.visualFrontend = _VisualFrontend()
        self.visualTCN = _VisualTCN()
        self.visualConv1D = _VisualConv1D()
        self.audioEncoder = _AudioEncoder()
        self.crossA2V = _AttentionLayer(d_model=128)
        self.crossV2A = _AttentionLayer(d_model=128)
        self.selfAV = _AttentionLayer(d_model=256)


class TalkNet(AudioVisualASD):
    """TalkNet (15.7 M parameters), loading the official checkpoints strictly.

    ``state_dict()`` holds ``model.*`` (the backbone) and ``lossAV.FC.*`` (the head used at
    inference); the official files' ``lossA.*``/``lossV.*`` training heads are dropped on load.
    """

    face_size = 112

    def __init__(self) -> None:
        super().__init__()
        self.model = _TalkNetBackbone()
        self.lossAV = ScoreHead(256)

    @classmethod
    def from_checkpoint(cls, path: str | os.PathLike[str], device: str | torch.device = "cpu") -> TalkNet:
        """Build TalkNet from an official checkpoint file (e.g. ``pretrain_TalkSet.model``), in eval mode."""
        network = cls()
        network.load_checkpoint_state_dict(load_checkpoint_file(path), source=str(path))
        return network.to(device).eval()

    def load_checkpoint_state_dict(
        self, state_dict: Mapping[str, torch.Tensor], *, source: str = "state dict"
    ) -> list[str]:
        """Strictly load an official state dict (``module.`` prefixes allowed); returns the dropped keys."""
        ignored = load_state_dict_strict(
            self, state_dict, ignore_prefixes=_TALKNET_TRAINING_ONLY_PREFIXES, source=source
        )
        if ignored:
            logger.info("%s: ignored %d training-only keys (lossA.*, lossV.*)", source, len(ignored))
        return ignored

    def forward_audio_frontend(self, mfcc: torch.Tensor) -> torch.Tensor:
        """``[B,4T,13]`` MFCC -> ``[B,T,128]`` audio embedding."""
        return self.model.audioEncoder(mfcc.unsqueeze(1).transpose(2, 3))

    def forward_visual_frontend(self, video: torch.Tensor) -> torch.Tensor:
        """``[B,T,112,112]`` raw gray values (0-255) -> ``[B,T,128]`` visual embedding.

        The per-frame front-end, nearly all of the memory, runs in chunks on long pieces; the
        V-TCN after it sees the whole piece (its global layer norm spans all frames) on [B,512,T].
        (The audio encoder is not chunked either: its squeeze-and-excitation means span all frames,
        and its activations are small.)
        """
        x = self._in_chunks(lambda chunk: self.model.visualFrontend(normalise_face_pixels(chunk)), video,
                            _VISUAL_FRONTEND_CONTEXT_FRAMES)
        x = self.model.visualConv1D(self.model.visualTCN(x.transpose(1, 2)))
        return x.transpose(1, 2)

    def forward_cross_attention(
        self, audio_embed: torch.Tensor, visual_embed: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Each stream attended by the other: ``([B,T,128], [B,T,128])``."""
        per_pass = self.max_frames_per_pass
        audio = self.model.crossA2V(source=audio_embed, target=visual_embed, queries_per_pass=per_pass)
        visual = self.model.crossV2A(source=visual_embed, target=audio_embed, queries_per_pass=per_pass)
        return audio, visual

    def forward_audio_visual_backend(self, audio: torch.Tensor, visual: torch.Tensor) -> torch.Tensor:
        """Self-attention over the concatenated streams: ``[B,T,256]``."""
        x = torch.cat((audio, visual), dim=2)
        return self.model.selfAV(source=x, target=x, queries_per_pass=self.max_frames_per_pass)

    def fuse(self, audio_embed: torch.Tensor, visual_embed: torch.Tensor) -> torch.Tensor:
        return self.forward_audio_visual_backend(*self.forward_cross_attention(audio_embed, visual_embed))
