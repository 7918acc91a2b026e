"""Light-ASD active speaker detection (Liao et al., CVPR 2023), checkpoint-compatible.

A 1.0 M-parameter alternative to TalkNet with the same inputs and outputs (see
:class:`m3ed.models.talknet.AudioVisualASD`), about four times faster on CPU, whose released
weights are usable offline:

    video [B,T,112,112] ─ 3 visual blocks (split 2-D spatial / 1-D temporal convs) ─► [B,T,128] ─┐
    mfcc  [B,4T,13]     ─ 3 audio blocks (split coefficient / time convs) ──────────► [B,T,128] ─┤
                          sum ─ bidirectional GRU (two one-way GRUs) ─► [B,T,128] ◄────────────────┘
                          ─ lossAV.FC ─► logits [B,T,2]

Names follow the authors' code (github.com/Junhua-Liao/Light-ASD): checkpoints hold ``model.*``,
``lossAV.FC.*`` (audio-visual head, used at inference) and ``lossV.FC.*`` (the visual-only head of
the training loss, kept here as :meth:`LightASD.visual_logits`).
"""

from __future__ import annotations

import os

import torch
import torch.nn.functional as F
from torch import nn

from .checkpoint import load_checkpoint_file, load_state_dict_strict
from .talknet import MFCC_FRAMES_PER_VIDEO_FRAME, AudioVisualASD, ScoreHead, normalise_face_pixels

__all__ = ["LightASD"]

# All of Light-ASD's batch norms use these (non-default) settings; eps changes the outputs.
_BN = {"momentum": 0.01, "eps": 0.001}
# Video frames either side that a frame's embedding depends on (for AudioVisualASD._in_chunks).
# Visual: each block's temporal convolutions reach 2 frames (kernel 5; the pools are spatial), so 3
# blocks reach 6. Audio, from the output back: block3 reaches 2 frames; pool2 (3 wide, stride 2)
# makes that 2*2+1 = 5 steps at 2 a frame, block2 7; pool1 2*7+1 = 15 MFCC steps, block1 17, within
# 5 frames (20 steps). Chunks start on whole frames, so the pools' stride-2 grids stay aligned.
_VISUAL_CONTEXT_FRAMES = 6
_AUDIO_CONTEXT_FRAMES = 5


class _VisualBlock(nn.Module):
    """Two parallel (spatial k×k, then temporal k) branches, k = 3 and 5, summed, then a 1×1×1 conv."""

    def __init__(self, in_channels: int, out_channels: int, downsample: bool = False) -> None:
        super().__init__()
        stride = (1, 2, 2) if downsample else (1, 1, 1)
        self.s_3 = nn.Conv3d(in_channels, out_channels, (1, 3, 3), stride=stride, padding=(0, 1, 1), bias=False)
        self.bn_s_3 = nn.BatchNorm3d(out_channels, **_BN)
        self.t_3 = nn.Conv3d(out_channels, out_channels, (3, 1, 1), padding=(1, 0, 0), bias=False)
        self.bn_t_3 = nn.BatchNorm3d(out_channels, **_BN)
        self.s_5 = nn.Conv3d(in_channels, out_channels, (1, 5, 5), stride=stride, padding=(0, 2, 2), bias=False)
        self.bn_s_5 = nn.BatchNorm3d(out_channels, **_BN)
        self.t_5 = nn.Conv3d(out_channels, out_channels, (5, 1, 1), padding=(2, 0, 0), bias=False)
        self.bn_t_5 = nn.BatchNorm3d(out_channels, **_BN)
        self.last = nn.Conv3d(out_channels, out_channels, (1, 1, 1), bias=False)
        self.bn_last = nn.BatchNorm3d(out_channels, **_BN)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x_3 = F.relu(self.bn_t_3(self.t_3(F.relu(self.bn_s_3(self.s_3(x))))))
        x_5 = F.relu(self.bn_t_5(self.t_5(F.relu(self.bn_s_5(self.s_5(x))))))
        return F.relu(self.bn_last(self.last(x_3 + x_5)))


class _AudioBlock(nn.Module):
    """Like :class:`_VisualBlock` over the MFCC image: coefficient convs (m_k), then time convs (t_k)."""

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        self.m_3 = nn.Conv2d(in_channels, out_channels, (3, 1), padding=(1, 0), bias=False)
        self.bn_m_3 = nn.BatchNorm2d(out_channels, **_BN)
        self.t_3 = nn.Conv2d(out_channels, out_channels, (1, 3), padding=(0, 1), bias=False)
        self.bn_t_3 = nn.BatchNorm2d(out_channels, **_BN)
        self.m_5 = nn.Conv2d(in_channels, out_channels, (5, 1), padding=(2, 0), bias=False)
        self.bn_m_5 = nn.BatchNorm2d(out_channels, **_BN)
        self.t_5 = nn.Conv2d(out_channels, out_channels, (1, 5), padding=(0, 2), bias=False)
        self.bn_t_5 = nn.BatchNorm2d(out_channels, **_BN)
        self.last = nn.Conv2d(out_channels, out_channels, (1, 1), bias=False)
        self.bn_last = nn.BatchNorm2d(out_channels, **_BN)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x_3 = F.relu(self.bn_t_3(self.t_3(F.relu(self.bn_m_3(self.m_3(x))))))
        x_5 = F.relu(self.bn_t_5(self.t_5(F.relu(self.bn_m_5(self.m_5(x))))))
        return F.relu(self.bn_last(self.last(x_3 + x_5)))


class _VisualEncoder(nn.Module):
    """``[B,1,T,H,W]`` normalised frames -> ``[B,T,128]`` (spatial max over the final map)."""

    def __init__(self) -> None:
        super().__init__()
        self.block1 = _VisualBlock(1, 32, downsample=True)
        self.pool1 = nn.MaxPool3d(kernel_size=(1, 3, 3), stride=(1, 2, 2), padding=(0, 1, 1))
        self.block2 = _VisualBlock(32, 64)
        self.pool2 = nn.MaxPool3d(kernel_size=(1, 3, 3), stride=(1, 2, 2), padding=(0, 1, 1))
        self.block3 = _VisualBlock(64, 128)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.block3(self.pool2(self.block2(self.pool1(self.block1(x)))))  # [B,128,T,h,w]
        return x.amax(dim=(3, 4)).transpose(1, 2)


class _AudioEncoder(nn.Module):
    """``[B,1,13,4T]`` MFCC image -> ``[B,T,128]``: time halved twice, coefficients averaged."""

    def __init__(self) -> None:
        super().__init__()
        self.block1 = _AudioBlock(1, 32)
        self.pool1 = nn.MaxPool2d(kernel_size=(1, 3), stride=(1, 2), padding=(0, 1))  # over time only
        self.block2 = _AudioBlock(32, 64)
        self.pool2 = nn.MaxPool2d(kernel_size=(1, 3), stride=(1, 2), padding=(0, 1))
        self.block3 = _AudioBlock(64, 128)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.block3(self.pool2(self.block2(self.pool1(self.block1(x)))))  # [B,128,13,T]
        return x.mean(dim=2).transpose(1, 2)


class _BidirectionalGRU(nn.Module):
    """A forward GRU, then a GRU over the reversed sequence, each followed by GELU."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.gru_forward = nn.GRU(channels, channels, num_layers=1, batch_first=True)
        self.gru_backward = nn.GRU(channels, channels, num_layers=1, batch_first=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.gelu(self.gru_forward(x)[0])
        x = self.gru_backward(torch.flip(x, dims=[1]))[0]
        return F.gelu(torch.flip(x, dims=[1]))


def _fold(conv: nn.Conv3d, bn: nn.BatchNorm3d) -> tuple[torch.Tensor, torch.Tensor]:
    """Weight and bias of ``bn(conv(x))`` as one convolution (eval mode: running statistics)."""
    scale = bn.weight / torch.sqrt(bn.running_var + bn.eps)
    weight = conv.weight * scale.reshape(-1, 1, 1, 1, 1)
    return weight.contiguous(), (bn.bias - bn.running_mean * scale).contiguous()


def _conv_bn_relu(conv: nn.Conv3d, bn: nn.BatchNorm3d, x: torch.Tensor) -> torch.Tensor:
    weight, bias = _fold(conv, bn)
    if x.device.type == "cpu" and x.dtype == torch.float32 and torch.backends.mkldnn.is_available():
        cl = torch.channels_last_3d   # oneDNN's fast layout; the max pools are faster on it too
        y = torch.ops.aten.mkldnn_convolution(x.contiguous(memory_format=cl), weight.contiguous(memory_format=cl),
                                              bias, list(conv.padding), list(conv.stride), list(conv.dilation),
                                              conv.groups)
    else:
        y = F.conv3d(x, weight.to(x.dtype), bias.to(x.dtype), conv.stride, conv.padding, conv.dilation, conv.groups)
    return torch.relu_(y)


def _fused_visual_block(block: _VisualBlock, x: torch.Tensor) -> torch.Tensor:
    """:meth:`_VisualBlock.forward` with folded batch norms (see :meth:`LightASD.fused_logits`)."""
    x_3 = _conv_bn_relu(block.t_3, block.bn_t_3, _conv_bn_relu(block.s_3, block.bn_s_3, x))
    x_5 = _conv_bn_relu(block.t_5, block.bn_t_5, _conv_bn_relu(block.s_5, block.bn_s_5, x))
    return _conv_bn_relu(block.last, block.bn_last, x_3.add_(x_5))


class _LightASDBackbone(nn.Module):
    """``ASD_Model`` of the reference (``model.*`` keys)."""

    def __init__(self) -> None:
        super().__init__()
        self.visualEncoder = _VisualEncoder()
        self.audioEncoder = _AudioEncoder()
        self.GRU = _BidirectionalGRU(128)


class LightASD(AudioVisualASD):
    """Light-ASD (1.02 M parameters); ``state_dict()`` equals the released checkpoints' keys."""

    # Trained on 112x112 faces; the final spatial max-pool accepts other sizes too.
    face_size = None

    def __init__(self) -> None:
        super().__init__()
        self.model = _LightASDBackbone()
        self.lossAV = ScoreHead(128)
        self.lossV = ScoreHead(128)

    @classmethod
    def from_checkpoint(cls, path: str | os.PathLike[str], device: str | torch.device = "cpu") -> LightASD:
        """Build Light-ASD from a released checkpoint (e.g. ``finetuning_TalkSet.model``), in eval mode."""
        network = cls()
        load_state_dict_strict(network, load_checkpoint_file(path), source=str(path))
        return network.to(device).eval()

    def forward_audio_frontend(self, mfcc: torch.Tensor) -> torch.Tensor:
        """``[B,4T,13]`` MFCC -> ``[B,T,128]`` audio embedding (long pieces in chunks)."""
        return self._in_chunks(lambda chunk: self.model.audioEncoder(chunk.unsqueeze(1).transpose(2, 3)), mfcc,
                               _AUDIO_CONTEXT_FRAMES, MFCC_FRAMES_PER_VIDEO_FRAME)

    def forward_visual_frontend(self, video: torch.Tensor) -> torch.Tensor:
        """``[B,T,H,W]`` raw gray values (0-255) -> ``[B,T,128]`` visual embedding (long pieces in chunks)."""
        return self._in_chunks(lambda chunk: self.model.visualEncoder(normalise_face_pixels(chunk).unsqueeze(1)),
                               video, _VISUAL_CONTEXT_FRAMES)

    def forward_audio_visual_backend(self, audio: torch.Tensor, visual: torch.Tensor) -> torch.Tensor:
        """Sum of the two embeddings through the bidirectional GRU: ``[B,T,128]``."""
        return self.model.GRU(audio + visual)

    def fuse(self, audio_embed: torch.Tensor, visual_embed: torch.Tensor) -> torch.Tensor:
        return self.forward_audio_visual_backend(audio_embed, visual_embed)

    def fused_logits(self, mfcc: torch.Tensor, video: torch.Tensor) -> torch.Tensor:
        """:meth:`logits` computed faster for inference: each visual batch norm folded into its
        convolution and every visual convolution run by oneDNN on CPU (PyTorch otherwise sends
        the temporal and 1x1x1 convolutions of a small batch on one thread to its slow im2col
        path), in the channels-last layout. Same function; floating-point rounding differs (about
        1e-5 on the logits)."""
        mfcc, video = self._prepare(mfcc, video)
        audio = self.forward_audio_frontend(mfcc)
        visual = self._in_chunks(self._fused_visual_frontend, video, _VISUAL_CONTEXT_FRAMES)
        return self.lossAV(self.fuse(audio, visual))

    def _fused_visual_frontend(self, video: torch.Tensor) -> torch.Tensor:
        encoder = self.model.visualEncoder
        x = normalise_face_pixels(video).unsqueeze(1)
        x = encoder.pool1(_fused_visual_block(encoder.block1, x))
        x = encoder.pool2(_fused_visual_block(encoder.block2, x))
        x = _fused_visual_block(encoder.block3, x)
        return x.amax(dim=(3, 4)).transpose(1, 2)

    def visual_logits(self, video: torch.Tensor) -> torch.Tensor:
        """Visual-only ``[B,T,2]`` logits from the training loss's ``lossV`` head (no audio needed).

        A weaker cue than :meth:`logits`; the authors trained it as an auxiliary objective.
        """
        return self.lossV(self.forward_visual_frontend(self._prepare_video(video)))
