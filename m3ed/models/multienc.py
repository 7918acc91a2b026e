"""MultiEnc (Zhao et al., 2021; the MMIN code's ``utt_fusion`` model): the utterance-level baseline.

Each utterance is classified on its own (no dialogue context):

    ``multienc`` (frame-level inputs, the paper's "Frm" columns)
        audio  frames ─ LSTM ─ max-pool over real frames ─► 512 ┐
        visual frames ─ LSTM ─ max-pool over real frames ─► 256 ┼─ concat ─ FC 512 ─ FC 256 ─ Linear ─► logits
        text   tokens ─ TextCNN (kernels 3,4,5, max-pool) ─► 256 ┘
    ``multienc_pooled`` (utterance-level inputs, "Utt" columns; light enough for a CPU)
        each modality ─ Linear-ReLU-dropout (a DNN encoder) ─► the same sizes, then the same fusion classifier.

Sizes and dropout 0.5 are the authors' M3ED runs (``codes/utt_baseline/run.sh``:
``--a_hidden_size 512 --v_hidden_size 256 --l_hidden_size 256``); the fusion layers are 512, 256 for
multimodal runs and ``--mid_fusion_layers 256,128`` for unimodal ones, lr 3e-4 (1e-3 only up to
MEmoConv 6527c1b), 50 epochs (``--max_epoch 50 --patience 10``) and the frames each encoder reads
cut to the first 150 audio frames, 70 faces and 30 tokens (``--max_acoustic_tokens 150
--max_visual_tokens 70 --max_text_tokens 30``): ``run.sh`` at HEAD (f31c9fd and later). Their
loader also pads every sequence with zero frames up to those lengths, which the LSTMs then read;
ours encodes the real frames only (``frame_limits``).

A missing modality's embedding is zero (the presence mask says which). Only real utterances
with that modality are encoded (packed, masked), so padding never changes a prediction.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

from .data import Batch
from .registry import ModelConfig, register_model

__all__ = ["MultiEnc", "MultiEncConfig", "MultiEncPooled", "MultiEncPooledConfig"]


@dataclass
class MultiEncPooledConfig(ModelConfig):
    """The authors' M3ED sizes: text 256, audio 512, visual 256; fusion layers 512, 256 (multimodal)
    or 256, 128 (unimodal); dropout 0.5."""

    text_size: int = 256
    audio_size: int = 512
    visual_size: int = 256
    classifier_layers: tuple[int, ...] | None = None   # None: (512, 256) multimodal, (256, 128) unimodal
    dropout: float = 0.5

    default_lr: ClassVar[float] = 3e-4        # their run.sh at HEAD: --learning_rate 3e-4
    default_weight_decay: ClassVar[float] = 0.0
    default_batch_size: ClassVar[int] = 3      # dialogues: their 64 utterances, at 24.7 per M3ED dialogue
    default_epochs: ClassVar[int] = 50         # --max_epoch 50 --patience 10

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.classifier_layers is None:
            self.classifier_layers = (512, 256) if len(self.input_dims) > 1 else (256, 128)
        self.classifier_layers = tuple(int(x) for x in self.classifier_layers)

    def size(self, modality: str) -> int:
        """The embedding size of one modality."""
        return {"l": self.text_size, "a": self.audio_size, "v": self.visual_size}[modality]

    @property
    def fused_size(self) -> int:
        return sum(self.size(m) for m in self.modalities)


@dataclass
class MultiEncConfig(MultiEncPooledConfig):
    text_kernels: tuple[int, ...] = (3, 4, 5)
    text_channels: int = 128
    text_dropout: float = 0.5
    lstm_pooling: str = "maxpool"       # "maxpool", "mean" or "last"
    # The first frames each encoder reads (their --max_acoustic_tokens 150 --max_visual_tokens 70
    # --max_text_tokens 30); a modality left out: every frame.
    frame_limits: dict[str, int] = field(default_factory=lambda: {"a": 150, "v": 70, "l": 30})

    def __post_init__(self) -> None:
        super().__post_init__()
        self.text_kernels = tuple(int(x) for x in self.text_kernels)
        self.frame_limits = {m: int(n) for m, n in self.frame_limits.items()}
        bad = {m: n for m, n in self.frame_limits.items() if m not in ("l", "a", "v") or n < 1}
        if bad:
            raise ValueError(f"MultiEnc: frame_limits {bad}: use modalities l, a, v and limits of at least 1")
        if self.lstm_pooling not in ("maxpool", "mean", "last"):
            raise ValueError(f"MultiEnc: lstm_pooling {self.lstm_pooling!r}; use 'maxpool', 'mean' or 'last'")


class FusionClassifier(nn.Module):
    """MMIN's FcClassifier: (Linear, ReLU, dropout) per hidden layer, then a Linear output."""

    def __init__(self, in_dim: int, layers: tuple[int, ...], out_dim: int, dropout: float):
        super().__init__()
        blocks: list[nn.Module] = []
        for width in layers:
            blocks += [nn.Linear(in_dim, width), nn.ReLU(), nn.Dropout(dropout)]
            in_dim = width
        self.hidden = nn.Sequential(*blocks)
        self.out = nn.Linear(in_dim, out_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out(self.hidden(x))


class LSTMEncoder(nn.Module):
    """Frames ``[K, T, D]`` with lengths ``[K]`` -> ``[K, H]`` (pooled over the real frames)."""

    def __init__(self, in_dim: int, hidden: int, pooling: str):
        super().__init__()
        self.lstm = nn.LSTM(in_dim, hidden, batch_first=True)
        self.pooling = pooling

    def forward(self, x: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        packed = pack_padded_sequence(x, lengths.cpu(), batch_first=True, enforce_sorted=False)
        out, (h_n, _) = self.lstm(packed)
        if self.pooling == "last":
            return h_n[-1]
        out, _ = pad_packed_sequence(out, batch_first=True, total_length=x.shape[1])
        real = (torch.arange(x.shape[1], device=x.device)[None] < lengths[:, None])[..., None]
        if self.pooling == "mean":
            return (out * real).sum(1) / lengths[:, None].to(out.dtype)
        return out.masked_fill(~real, float("-inf")).amax(1)


class TextCNN(nn.Module):
    """MMIN's TextCNN: convolutions of 3, 4, 5 tokens, ReLU, max over the valid positions."""

    def __init__(self, in_dim: int, channels: int, kernels: tuple[int, ...], out_dim: int, dropout: float):
        super().__init__()
        self.kernels = kernels
        self.convs = nn.ModuleList(nn.Conv1d(in_dim, channels, k) for k in kernels)
        self.dropout = nn.Dropout(dropout)
        self.embed = nn.Sequential(nn.Linear(channels * len(kernels), out_dim), nn.ReLU())

    def forward(self, x: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        """x [K, T, D]; a window is valid when it lies within the tokens (or starts at 0 for short ones)."""
        widest = max(self.kernels)
        if x.shape[1] < widest:
            x = F.pad(x, (0, 0, 0, widest - x.shape[1]))
        x = x.transpose(1, 2)
        pooled = []
        for k, conv in zip(self.kernels, self.convs):
            out = F.relu(conv(x))                                                 # [K, C, T - k + 1]
            last_start = (lengths - k).clamp(min=0)
            valid = torch.arange(out.shape[-1], device=x.device)[None] <= last_start[:, None]
            pooled.append(out.masked_fill(~valid[:, None], float("-inf")).amax(-1))
        return self.embed(self.dropout(torch.cat(pooled, -1)))


def _scatter_rows(values: torch.Tensor, where: torch.Tensor) -> torch.Tensor:
    """Put ``values [K, H]`` into the True cells of ``where [B, N]``; zeros elsewhere."""
    out = values.new_zeros(*where.shape, values.shape[-1])
    out[where] = values
    return out


_TINY_SIZES = {"text_size": 32, "audio_size": 32, "visual_size": 32, "classifier_layers": (32,), "dropout": 0.3}


@register_model("multienc", config=MultiEncConfig, input_level="frame", tiny={**_TINY_SIZES, "text_channels": 32})
class MultiEnc(nn.Module):
    """MultiEnc on frame-level features: LSTM (audio, visual) and TextCNN (text) encoders, FC fusion."""

    def __init__(self, config: MultiEncConfig):
        super().__init__()
        self.config = config
        c = config
        self.encoders = nn.ModuleDict({
            m: (TextCNN(dim, c.text_channels, c.text_kernels, c.size(m), c.text_dropout) if m == "l"
                else LSTMEncoder(dim, c.size(m), c.lstm_pooling))
            for m, dim in c.input_dims.items()
        })
        self.classifier = FusionClassifier(c.fused_size, c.classifier_layers, c.num_classes, c.dropout)

    def forward_features(self, batch: Batch) -> torch.Tensor:
        embeddings = []
        for m in self.config.modalities:
            where = batch.present[m] & batch.mask
            frames = batch.features[m][where]                                     # [K, T, D]
            if not batch.frame_mask:
                raise ValueError("MultiEnc needs frame-level features ([T, D] per utterance); "
                                 "use multienc_pooled for utterance-level ones")
            lengths = batch.frame_mask[m][where].sum(-1)
            limit = self.config.frame_limits.get(m)
            if limit is not None:   # the first frames only, as the authors' loader cuts them
                frames, lengths = frames[:, :limit], lengths.clamp(max=limit)
            encoded = (self.encoders[m](frames, lengths) if len(frames)
                       else frames.new_zeros(0, self.config.size(m)))
            embeddings.append(_scatter_rows(encoded, where))
        return torch.cat(embeddings, -1)

    def forward_head(self, features: torch.Tensor) -> torch.Tensor:
        return self.classifier(features)

    def forward(self, batch: Batch) -> torch.Tensor:
        return self.forward_head(self.forward_features(batch))


@register_model("multienc_pooled", config=MultiEncPooledConfig, tiny=_TINY_SIZES)
class MultiEncPooled(nn.Module):
    """MultiEnc on utterance-level features: one DNN encoder per modality, FC fusion."""

    def __init__(self, config: MultiEncPooledConfig):
        super().__init__()
        self.config = config
        c = config
        self.encoders = nn.ModuleDict({
            m: nn.Sequential(nn.Linear(dim, c.size(m)), nn.ReLU(), nn.Dropout(c.dropout))
            for m, dim in c.input_dims.items()
        })
        self.classifier = FusionClassifier(c.fused_size, c.classifier_layers, c.num_classes, c.dropout)

    def forward_features(self, batch: Batch) -> torch.Tensor:
        return torch.cat([self.encoders[m](batch.features[m]) * batch.present[m][..., None]
                          for m in self.config.modalities], -1)

    def forward_head(self, features: torch.Tensor) -> torch.Tensor:
        return self.classifier(features)

    def forward(self, batch: Batch) -> torch.Tensor:
        return self.forward_head(self.forward_features(batch))
