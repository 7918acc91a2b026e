"""DialogueGCN (Ghosal et al., EMNLP 2019), written with dense masked tensors (no graph library).

    u (early fusion) ─ BiLSTM (packed: padding never enters) ─► g [B, N, 2·D_e]
    graph: utterance i receives from j when  i - past <= j <= i + future  (self included);
           relation r(j -> i) = (speaker of j, speaker of i, j <= i ?)  -> 2·S² relations
           edge weight α_ij = softmax over i's window of  g_i^T W_α g_j
    h1 = ReLU( Σ_r Σ_j [r(j->i) = r] α_ij g_j W_r  +  g_i W_0 )     relational GCN, W_r from bases
    h2 = ReLU( Σ_j A_ij h1_j W_2  +  h1_i W_1 )                     GCN layer (GraphConv, sum)
    [g ; h2] ─ (optional "nodal attention") ─ Linear-ReLU-dropout-Linear ─► logits

The authors' nodal attention replaces each node's features by an attention average over the
dialogue with scores squashed by tanh (so weights differ by at most e^2); it is available
(``nodal_attention=True``) but off by default: with it the model could not even fit four training
dialogues (every utterance of a dialogue gets nearly the same average), without it it does.

Dense form: the batch's relation graph is an ``[B, R, N, N]`` tensor of weights, so both layers are
two einsums; a padded utterance has no edges in or out.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

from .data import Batch, early_fusion
from .layers import matching_attention
from .registry import ModelConfig, register_model

__all__ = ["DialogueGCN", "DialogueGCNConfig", "relation_graph"]


@dataclass
class DialogueGCNConfig(ModelConfig):
    """The authors' M3ED runs (``codes/dialoggcn/run5.sh`` and ``train_chmed.py`` at MEmoConv ea97ac2,
    ``Dlggcn_*_BaseLSTME180WP10WF10dp0.4_lr0.0003`` in their ``get_results.py``): ``--emotion_dim 180``
    sets the BiLSTM (180 per direction) and the graph (their ``graph_h = D_e``); the classifier keeps
    ``--classifer_dim``'s default 100; ``--use_input_project`` maps the input to ``--global_dim``'s
    default 150 first; window 10/10, dropout 0.4, lr 3e-4, ``--l2 0.0``, loss weighted by 1/prior,
    ``--batch_size 16``, ``--max_epoch 60``, ``--patience 10``; 30 bases as DialogueGCN's code."""

    lstm_hidden: int = 180        # D_e per direction (their --emotion_dim 180)
    lstm_layers: int = 2
    graph_hidden: int = 180       # their graph_h = D_e
    hidden: int = 100             # D_h, classifier (their --classifer_dim default)
    input_projection: int | None = 150   # their --use_input_project, to --global_dim (default 150); None: off
    window_past: int = 10
    window_future: int = 10
    num_bases: int | None = 30    # basis decomposition of the relation weights; None: one per relation
    nodal_attention: bool = False # the authors' option; off by default, see the module docstring
    dropout: float = 0.4
    rec_dropout: float = 0.1

    default_lr: ClassVar[float] = 3e-4
    default_weight_decay: ClassVar[float] = 0.0
    default_class_weights: ClassVar[bool] = True
    default_batch_size: ClassVar[int] = 16     # run5.sh (ea97ac2): --batch_size 16
    default_epochs: ClassVar[int] = 60         # run5.sh (ea97ac2): --max_epoch 60 --patience 10

    @property
    def num_relations(self) -> int:
        return 2 * self.num_speakers ** 2


def relation_graph(speakers: torch.Tensor, mask: torch.Tensor, past: int, future: int,
                   num_speakers: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The window graph: ``edges [B, N, N]`` bool (target i, source j) and ``relation [B, N, N]``
    long, ``(speaker_j * S + speaker_i) * 2 + (1 if j > i else 0)``."""
    n = mask.shape[1]
    position = torch.arange(n, device=mask.device)
    offset = position[None, :] - position[:, None]                          # j - i
    window = (offset >= -past) & (offset <= future)
    edges = window[None] & mask[:, :, None] & mask[:, None, :]
    relation = (speakers[:, None, :] * num_speakers + speakers[:, :, None]) * 2 + (offset > 0).long()[None]
    return edges, relation


class RelationalGraphConv(nn.Module):
    """R-GCN layer on a dense weighted relation graph, with optional basis decomposition."""

    def __init__(self, in_dim: int, out_dim: int, num_relations: int, num_bases: int | None):
        super().__init__()
        self.num_relations = num_relations
        if num_bases:
            self.basis = nn.Parameter(torch.empty(num_bases, in_dim, out_dim))
            self.coefficients = nn.Parameter(torch.empty(num_relations, num_bases))
            nn.init.xavier_uniform_(self.coefficients)
        else:
            self.basis = nn.Parameter(torch.empty(num_relations, in_dim, out_dim))
            self.coefficients = None
        nn.init.xavier_uniform_(self.basis.view(-1, in_dim, out_dim).flatten(0, 1))
        self.root = nn.Linear(in_dim, out_dim)

    def forward(self, x: torch.Tensor, weights: torch.Tensor, relation: torch.Tensor) -> torch.Tensor:
        """x [B, N, D], weights [B, N, N] (0 off the graph), relation [B, N, N] -> [B, N, out]."""
        per_relation = F.one_hot(relation, self.num_relations).to(x.dtype) * weights[..., None]
        messages = torch.einsum("bijr,bjd->brid", per_relation, x)
        w = self.basis if self.coefficients is None else torch.einsum("rk,kde->rde", self.coefficients, self.basis)
        return torch.einsum("brid,rde->bie", messages, w) + self.root(x)


@register_model("dialoguegcn", config=DialogueGCNConfig, tiny={
    "lstm_hidden": 32, "graph_hidden": 32, "hidden": 32, "input_projection": 32, "num_bases": 4, "dropout": 0.1,
    "rec_dropout": 0.0})
class DialogueGCN(nn.Module):
    """DialogueGCN: BiLSTM context, speaker-by-direction relational graph, GCN, classifier."""

    def __init__(self, config: DialogueGCNConfig):
        super().__init__()
        self.config = config
        c = config
        input_size = sum(c.input_dims.values()) + len(c.input_dims)
        self.input_projection = None
        if c.input_projection:
            self.input_projection = nn.Linear(input_size, c.input_projection)
            input_size = c.input_projection
        context = 2 * c.lstm_hidden
        self.lstm = nn.LSTM(input_size, c.lstm_hidden, num_layers=c.lstm_layers, batch_first=True,
                            bidirectional=True, dropout=c.dropout if c.lstm_layers > 1 else 0.0)
        self.rec_dropout = nn.Dropout(c.rec_dropout)
        self.edge_attention = nn.Linear(context, context, bias=False)
        self.rgcn = RelationalGraphConv(context, c.graph_hidden, c.num_relations, c.num_bases)
        self.gcn_neighbours = nn.Linear(c.graph_hidden, c.graph_hidden)
        self.gcn_root = nn.Linear(c.graph_hidden, c.graph_hidden, bias=False)
        features = context + c.graph_hidden
        self.nodal_transform = nn.Linear(features, features) if c.nodal_attention else None
        self.linear = nn.Linear(features, c.hidden)
        self.dropout = nn.Dropout(c.dropout)
        self.head = nn.Linear(c.hidden, c.num_classes)

    def encode(self, u: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        lengths = mask.sum(1).clamp(min=1).cpu()
        packed = pack_padded_sequence(u, lengths, batch_first=True, enforce_sorted=False)
        out, _ = self.lstm(packed)
        out, _ = pad_packed_sequence(out, batch_first=True, total_length=u.shape[1])
        return self.rec_dropout(out)

    def forward_features(self, batch: Batch) -> torch.Tensor:
        c = self.config
        if int(batch.speakers.max()) >= c.num_speakers:
            raise ValueError(f"DialogueGCN: a dialogue has more than num_speakers={c.num_speakers} speakers; "
                             f"build the model with a larger num_speakers")
        u = early_fusion(batch, c.modalities)
        if self.input_projection is not None:
            u = self.input_projection(u)
        g = self.encode(u, batch.mask)
        edges, relation = relation_graph(batch.speakers, batch.mask, c.window_past, c.window_future,
                                         c.num_speakers)
        scores = torch.einsum("bid,bjd->bij", self.edge_attention(g), g).masked_fill(~edges, float("-inf"))
        alpha = torch.nan_to_num(F.softmax(scores, dim=-1))          # padded rows: no edges, zeros
        h1 = F.relu(self.rgcn(g, alpha, relation))
        adjacency = edges.to(h1.dtype)
        h2 = F.relu(self.gcn_neighbours(adjacency @ h1) + self.gcn_root(h1))
        features = torch.cat([g, h2], -1)
        if self.nodal_transform is not None:
            features = matching_attention(self.nodal_transform, features, batch.mask)
        return self.dropout(F.relu(self.linear(features)))

    def forward_head(self, features: torch.Tensor) -> torch.Tensor:
        return self.head(features)

    def forward(self, batch: Batch) -> torch.Tensor:
        return self.forward_head(self.forward_features(batch))
