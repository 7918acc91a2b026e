"""MDI, Multimodal Dialog-aware Interaction (the M3ED paper's framework, section 4).

    u_t = concat(l, a, v, presence flags)  ─ Linear + tanh ─ dropout ─ + 0.1 · positional encoding ─ dropout
      ─ L post-norm Transformer blocks (ReLU feed-forward), run under four self-attention masks
        (shared weights):
            global  all utterances of the dialogue
            local   |i - j| < window
            intra   utterances of the same speaker (self included)
            inter   utterances of the other speaker(s), and self
      ─ the four outputs added ─ LayerNorm ─ Linear ─► logits [B, N, 7]

The defaults are the authors' M3ED runs (``codes/mdi/model.py`` and ``run_htrm.sh`` of their
repository): positional encoding scaled by 0.1 (``position_scale``), ReLU feed-forward
(``activation``), a LayerNorm closing each stream (their ``nn.TransformerEncoder`` norm,
``stream_norm``), no dropout before the classifier (``head_dropout``), and all four masks for
unimodal and multimodal runs alike (``interactions``).

Where the four outputs are added is ``fusion``:

* ``"final"`` (default, as the authors' code): four streams, each through the whole stack under
  its own mask, added after the last block.
* ``"per_block"`` (the paper's figure and text): inside every block the four masked outputs are
  added (and normalised) and the sum is the next block's input.

The early-fusion ``embed`` Linear is the one their ``--bert_frozen`` leaves out of the optimiser in
every M3ED run (its parameters are named ``bert_encoder.fc``): it keeps its initial weights, and its
gradient, never zeroed, accumulates and still counts in the clip norm. ``m3ed train
--mdi-frozen-fusion`` reproduces that (the training loop, not the model); by default it is trained.

The four masks are built once per batch, vectorised (:func:`interaction_masks`), and the four
streams run as one batch of ``4B`` sequences, so a block costs one batched attention call.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from .data import Batch, early_fusion
from .registry import ModelConfig, register_model

__all__ = ["INTERACTIONS", "MDI", "MDIConfig", "interaction_masks"]

INTERACTIONS: tuple[str, ...] = ("global", "local", "intra", "inter")


@dataclass
class MDIConfig(ModelConfig):
    """Paper defaults: hidden 512 / 8 heads (multimodal), 384 / 6 heads (unimodal); 4 blocks."""

    hidden: int | None = None        # None: 512 multimodal, 384 unimodal
    layers: int = 4
    heads: int | None = None         # None: 8 multimodal, 6 unimodal
    ffn: int | None = None           # None: 1536 multimodal, 1024 unimodal
    dropout: float = 0.1
    window: int = 3                  # local interaction: |i - j| < window
    fusion: str = "final"            # "final" (authors' code) or "per_block" (paper text)
    interactions: tuple[str, ...] = INTERACTIONS   # the masks run (their script: all four, any modalities)
    position_scale: float = 0.1      # their PositionalEncoding adds 0.1 * table
    activation: str = "relu"         # feed-forward; their nn.TransformerEncoderLayer default
    stream_norm: bool = True         # fusion=final: each stream ends in a LayerNorm, as their encoder's norm
    head_dropout: float = 0.0        # their classifier reads the fused features directly

    # transformers.AdamW (weight decay 0), lr 3e-5, cosine schedule, no early stop, the best validation
    # epoch kept. Batch and epochs are MDI version 1 of their history (one dialogue per batch, 15 epochs:
    # run_htrm.sh/run_htrm.py, MEmoConv 452bbfd-ba3f3dc); ``m3ed train --mdi-version v2`` takes the later
    # one (batch 32, 50 epochs, global attention only for unimodal runs: e75d7dd to HEAD).
    default_lr: ClassVar[float] = 3e-5
    default_weight_decay: ClassVar[float] = 0.0
    default_batch_size: ClassVar[int] = 1
    default_epochs: ClassVar[int] = 15
    default_schedule: ClassVar[str] = "cosine"
    default_early_stop: ClassVar[bool] = False

    def __post_init__(self) -> None:
        super().__post_init__()
        multimodal = len(self.input_dims) > 1
        self.hidden = self.hidden or (512 if multimodal else 384)
        self.heads = self.heads or (8 if multimodal else 6)
        self.ffn = self.ffn or (1536 if multimodal else 1024)
        if self.hidden % self.heads:
            raise ValueError(f"MDI: hidden {self.hidden} is not divisible by heads {self.heads}")
        if self.fusion not in ("final", "per_block"):
            raise ValueError(f"MDI: fusion {self.fusion!r}; use 'final' or 'per_block'")
        if self.layers < 1:
            raise ValueError(f"MDI: layers must be at least 1, got {self.layers}")
        if self.window < 1:
            raise ValueError(f"MDI: window must be at least 1 (|i - j| < window), got {self.window}")
        self.interactions = tuple(self.interactions)
        unknown = [k for k in self.interactions if k not in INTERACTIONS]
        if unknown or not self.interactions or len(set(self.interactions)) != len(self.interactions):
            raise ValueError(f"MDI: interactions {list(self.interactions)}; use distinct names from "
                             f"{', '.join(INTERACTIONS)}")
        if self.activation not in ("relu", "gelu"):
            raise ValueError(f"MDI: activation {self.activation!r}; use 'relu' or 'gelu'")


def interaction_masks(speakers: torch.Tensor, mask: torch.Tensor, window: int) -> torch.Tensor:
    """Attention masks ``[B, 4, N, N]`` (True = query i may attend to key j), in INTERACTIONS order.

    Keys are real utterances only. A padded query (a row no real utterance asks for) may attend to
    itself only, so that no softmax row is empty; its output is never used.
    """
    n = mask.shape[1]
    position = torch.arange(n, device=mask.device)
    keys = mask[:, None, :]                                                   # [B, 1, N]
    same = speakers[:, :, None] == speakers[:, None, :]                        # [B, N, N]
    eye = torch.eye(n, dtype=torch.bool, device=mask.device).expand_as(same)
    local = ((position[:, None] - position[None, :]).abs() < window).expand_as(same)
    masks = torch.stack([keys.expand_as(same), local & keys, same & keys, (~same | eye) & keys], dim=1)
    padded_query = ~mask[:, None, :, None]                                     # [B, 1, N, 1]
    return torch.where(padded_query, eye[:, None], masks)


def sinusoidal_positions(n: int, dim: int, device: torch.device) -> torch.Tensor:
    position = torch.arange(n, device=device, dtype=torch.float32)[:, None]
    freq = torch.exp(torch.arange(0, dim, 2, device=device, dtype=torch.float32) * (-math.log(10000.0) / dim))
    table = torch.zeros(n, dim, device=device)
    table[:, 0::2] = torch.sin(position * freq)
    table[:, 1::2] = torch.cos(position * freq[: dim // 2])
    return table


class Block(nn.Module):
    """A post-norm Transformer layer whose self-attention takes a per-sequence boolean mask."""

    def __init__(self, hidden: int, heads: int, ffn: int, dropout: float, activation: str = "relu"):
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(hidden, 3 * hidden)
        self.proj = nn.Linear(hidden, hidden)
        self.norm1 = nn.LayerNorm(hidden)
        act = nn.ReLU() if activation == "relu" else nn.GELU()
        self.ffn = nn.Sequential(nn.Linear(hidden, ffn), act, nn.Dropout(dropout), nn.Linear(ffn, hidden))
        self.norm2 = nn.LayerNorm(hidden)
        self.dropout = nn.Dropout(dropout)
        self.attn_dropout = dropout

    def forward(self, x: torch.Tensor, attn_mask: torch.Tensor) -> torch.Tensor:
        """x [S, N, H], attn_mask [S, N, N] bool -> [S, N, H]."""
        s, n, h = x.shape
        q, k, v = self.qkv(x).view(s, n, 3, self.heads, h // self.heads).permute(2, 0, 3, 1, 4)
        context = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask[:, None],
                                                 dropout_p=self.attn_dropout if self.training else 0.0)
        x = self.norm1(x + self.dropout(self.proj(context.transpose(1, 2).reshape(s, n, h))))
        return self.norm2(x + self.dropout(self.ffn(x)))


@register_model("mdi", config=MDIConfig, tiny={"hidden": 32, "heads": 2, "ffn": 64, "layers": 2})
class MDI(nn.Module):
    """MDI: early fusion + Transformer blocks under global/local/intra-/inter-speaker masks."""

    def __init__(self, config: MDIConfig):
        super().__init__()
        self.config = config
        fused = sum(config.input_dims.values()) + len(config.input_dims)
        self.embed = nn.Linear(fused, config.hidden)
        self.dropout = nn.Dropout(config.dropout)
        self.blocks = nn.ModuleList(Block(config.hidden, config.heads, config.ffn, config.dropout, config.activation)
                                    for _ in range(config.layers))
        self.stream_norm = None
        if config.fusion == "per_block":   # one "add, then LayerNorm" per block
            self.block_norms = nn.ModuleList(nn.LayerNorm(config.hidden) for _ in range(config.layers))
        else:                              # one "add, then LayerNorm" after the stack
            self.block_norms, self.norm = None, nn.LayerNorm(config.hidden)
            if config.stream_norm:         # one module shared by the streams, as their shared encoder
                self.stream_norm = nn.LayerNorm(config.hidden)
        self.head_dropout = nn.Dropout(config.head_dropout)
        self.head = nn.Linear(config.hidden, config.num_classes)
        self.register_buffer("mask_index", torch.tensor([INTERACTIONS.index(k) for k in config.interactions]),
                             persistent=False)

    def forward_features(self, batch: Batch) -> torch.Tensor:
        """Fused interaction features ``[B, N, hidden]``."""
        x = self.dropout(torch.tanh(self.embed(early_fusion(batch, self.config.modalities))))
        b, n, h = x.shape
        x = self.dropout(x + self.config.position_scale * sinusoidal_positions(n, h, x.device).to(x.dtype))
        k = len(self.config.interactions)
        masks = interaction_masks(batch.speakers, batch.mask, self.config.window)[:, self.mask_index]
        masks = masks.reshape(b * k, n, n)
        streams = x[:, None].expand(b, k, n, h).reshape(b * k, n, h)
        for i, block in enumerate(self.blocks):
            streams = block(streams, masks)
            if self.block_norms is not None:   # per_block: add the four outputs, feed the sum on
                fused = self.block_norms[i](streams.view(b, k, n, h).sum(1))
                if i + 1 < len(self.blocks):
                    streams = fused[:, None].expand(b, k, n, h).reshape(b * k, n, h)
        if self.block_norms is not None:
            return fused
        if self.stream_norm is not None:
            streams = self.stream_norm(streams)
        return self.norm(streams.view(b, k, n, h).sum(1))

    def forward_head(self, features: torch.Tensor) -> torch.Tensor:
        return self.head(self.head_dropout(features))

    def forward(self, batch: Batch) -> torch.Tensor:
        return self.forward_head(self.forward_features(batch))
