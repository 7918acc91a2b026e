"""MMGCN (Hu et al., ACL 2021): a graph over the utterances' modality nodes, deep GCNII layers.

    text  ─ 2-layer BiLSTM (packed) ─┐
    audio ─ Linear ──────────────────┼─ + speaker embedding ─► one node per (utterance, modality)
    visual ─ Linear ─────────────────┘
    edges, weighted by similarity  w(x, y) = 1 - arccos(cos(x, y)) / π :
        within a modality: every pair of the dialogue's utterances (self included)
        across modalities: the nodes of the same utterance
    Â = D^-1/2 A D^-1/2;  h0 = ReLU(W_in x);  for l = 1..L (GCNII, θ_l = log(λ / l + 1)):
        s = (1 - α) Â h + α h0;   h = ReLU(θ_l s W_l + (1 - θ_l) s)
    per utterance: concat over modalities of [x ; h]  ─ ReLU, dropout ─ Linear ─► logits

With one modality the graph is the fully connected utterance graph (the paper's unimodal setting).
A node whose modality is missing (and every padded utterance) has no edges and contributes zeros.
Dense form: ``[B, M·N, M·N]`` adjacency per batch, built without Python loops.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

from .data import Batch
from .registry import ModelConfig, register_model

__all__ = ["MMGCN", "MMGCNConfig", "similarity_graph"]


@dataclass
class MMGCNConfig(ModelConfig):
    """Settings of the authors' run script: 4 GCNII layers, α 0.1, λ 0.5, dropout 0.4, speaker embedding."""

    node_dim: int = 200           # 2·D_e: the BiLSTM's output, and the a/v linear layers'
    graph_hidden: int = 100
    layers: int = 4               # Deep_GCN_nlayers
    alpha: float = 0.1
    lamda: float = 0.5
    use_speaker: bool = True
    use_residue: bool = True
    text_lstm: bool = True        # False: a Linear layer for text too
    dropout: float = 0.4

    default_lr: ClassVar[float] = 3e-4
    default_weight_decay: ClassVar[float] = 3e-5

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.node_dim % 2:
            raise ValueError(f"MMGCN: node_dim must be even (a BiLSTM's two directions), got {self.node_dim}")


def _angular_similarity(cos: torch.Tensor) -> torch.Tensor:
    """1 - arccos(cos)/π, with the authors' ×0.99999 that keeps arccos away from ±1."""
    return 1 - torch.acos((cos * 0.99999).clamp(-1, 1)) / math.pi


def similarity_graph(nodes: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """Normalised adjacency ``[B, M·N, M·N]`` from nodes ``[B, M, N, D]`` and ``valid [B, M, N]``."""
    b, m, n, _ = nodes.shape
    unit = F.normalize(nodes, dim=-1, eps=1e-8)
    within = _angular_similarity(unit @ unit.transpose(-1, -2))                      # [B, M, N, N]
    across = _angular_similarity(torch.einsum("bmnd,bknd->bmkn", unit, unit))        # [B, M, M, N]
    eye_n = torch.eye(n, dtype=nodes.dtype, device=nodes.device)
    eye_m = torch.eye(m, dtype=torch.bool, device=nodes.device)
    blocks = torch.where(eye_m[None, :, :, None, None], within[:, :, None].expand(b, m, m, n, n),
                         across[..., None] * eye_n)                            # [B, M, M, N, N]
    adjacency = blocks.permute(0, 1, 3, 2, 4).reshape(b, m * n, m * n)
    flat = valid.reshape(b, m * n)
    adjacency = adjacency * (flat[:, :, None] & flat[:, None, :]).to(adjacency.dtype)
    degree = adjacency.sum(-1)
    scale = torch.where(degree > 0, degree.clamp(min=1e-12).rsqrt(), torch.zeros_like(degree))
    return scale[:, :, None] * adjacency * scale[:, None, :]


class GCNIILayer(nn.Module):
    def __init__(self, dim: int):
        super().__init__()
        self.weight = nn.Parameter(torch.empty(dim, dim))
        bound = 1.0 / math.sqrt(dim)
        nn.init.uniform_(self.weight, -bound, bound)

    def forward(self, h: torch.Tensor, adjacency: torch.Tensor, h0: torch.Tensor, alpha: float,
                theta: float) -> torch.Tensor:
        support = (1 - alpha) * (adjacency @ h) + alpha * h0
        return theta * (support @ self.weight) + (1 - theta) * support


@register_model("mmgcn", config=MMGCNConfig, tiny={"node_dim": 32, "graph_hidden": 32, "layers": 2, "dropout": 0.1})
class MMGCN(nn.Module):
    """MMGCN: modality nodes, similarity-weighted edges, speaker embedding, GCNII layers."""

    def __init__(self, config: MMGCNConfig):
        super().__init__()
        self.config = config
        c = config
        self.encoders = nn.ModuleDict()
        for m, dim in c.input_dims.items():
            if m == "l" and c.text_lstm:
                self.encoders[m] = nn.LSTM(dim, c.node_dim // 2, num_layers=2, batch_first=True,
                                           bidirectional=True, dropout=c.dropout)
            else:
                self.encoders[m] = nn.Linear(dim, c.node_dim)
        self.speaker_embedding = nn.Embedding(c.num_speakers, c.node_dim) if c.use_speaker else None
        self.graph_in = nn.Linear(c.node_dim, c.graph_hidden)
        self.convs = nn.ModuleList(GCNIILayer(c.graph_hidden) for _ in range(c.layers))
        self.dropout = nn.Dropout(c.dropout)
        per_node = c.graph_hidden + (c.node_dim if c.use_residue else 0)
        self.head = nn.Linear(per_node * len(c.input_dims), c.num_classes)

    def encode(self, m: str, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        encoder = self.encoders[m]
        if isinstance(encoder, nn.LSTM):
            lengths = mask.sum(1).clamp(min=1).cpu()
            packed = pack_padded_sequence(x, lengths, batch_first=True, enforce_sorted=False)
            out, _ = encoder(packed)
            return pad_packed_sequence(out, batch_first=True, total_length=x.shape[1])[0]
        return encoder(x)

    def forward_features(self, batch: Batch) -> torch.Tensor:
        c = self.config
        if c.use_speaker and int(batch.speakers.max()) >= c.num_speakers:
            raise ValueError(f"MMGCN: a dialogue has more than num_speakers={c.num_speakers} speakers; "
                             f"build the model with a larger num_speakers")
        nodes = []
        for m in c.modalities:
            x = self.encode(m, batch.features[m], batch.mask)
            if self.speaker_embedding is not None:
                x = x + self.speaker_embedding(batch.speakers)
            nodes.append(x)
        nodes = torch.stack(nodes, 1)                                             # [B, M, N, D]
        valid = torch.stack([batch.present[m] & batch.mask for m in c.modalities], 1)
        b, k, n, d = nodes.shape
        adjacency = similarity_graph(nodes, valid)
        x = self.dropout(nodes.reshape(b, k * n, d))
        h0 = F.relu(self.graph_in(x))
        h = h0
        for layer, conv in enumerate(self.convs, 1):
            theta = math.log(c.lamda / layer + 1)
            h = F.relu(conv(self.dropout(h), adjacency, h0, c.alpha, theta))
        h = self.dropout(h)
        if c.use_residue:
            h = torch.cat([x, h], -1)
        h = h * valid.reshape(b, k * n, 1).to(h.dtype)                             # missing nodes: zeros
        return h.view(b, k, n, -1).permute(0, 2, 1, 3).reshape(b, n, -1)

    def forward_head(self, features: torch.Tensor) -> torch.Tensor:
        return self.head(self.dropout(F.relu(features)))

    def forward(self, batch: Batch) -> torch.Tensor:
        return self.forward_head(self.forward_features(batch))
