"""DialogueRNN (Majumder et al., AAAI 2019), bidirectional, with emotion attention ("BiModel").

For each utterance u_t of speaker s, in order (early fusion: u_t is the concatenated modalities):

    g_t     = GRU_G([u_t ; q_{s,t-1}], g_{t-1})                  global state
    c_t     = attention(g_1..g_{t-1}, u_t)                       context ("general" or "simple")
    q_{s,t} = GRU_P([u_t ; c_t], q_{s,t-1})                      speaker's party state
    q_{l,t} = GRU_L([u_t ; q_{s,t}], q_{l,t-1}) if listener_state else q_{l,t-1}   listeners
    e_t     = GRU_E(q_{s,t}, e_{t-1})                            emotion state

run forwards and, on each dialogue reversed within its length, backwards; the two emotion
sequences are concatenated, attended over the whole (real) dialogue ("att2"), and classified by
Linear-ReLU-dropout-Linear. All dialogues of a batch advance together; party states are a
``[B, num_speakers, D_p]`` tensor updated where the speaker one-hot says.

With ``input_projection`` (their ``--use_input_project``) u_t is first mapped by a Linear layer to
``global_size`` dimensions, so the GRU sizes do not grow with the concatenated features (2,137 for
{l, a, v} with the presence flags). Their model code for this option is not in the public history;
a single Linear layer is our reading of the flag.

Defaults: the authors' M3ED runs (``codes/get_results.py`` run names, ``codes/dialogrnn``):
D_g = D_p = 512 multimodal, 256 unimodal; D_e = D_h = D_a = 128; active listener; input projection;
loss weighted by 1/prior; lr 2e-4; dropout 0.1 inside the cells and 0.1 + 0.15 on the emotion states
(their BiModel's ``dropout_rec``); the classifier's hidden layer is 2 · D_h wide.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from .data import Batch, early_fusion
from .layers import matching_attention
from .registry import ModelConfig, register_model

__all__ = ["DialogueRNN", "DialogueRNNConfig"]


@dataclass
class DialogueRNNConfig(ModelConfig):
    """The authors' M3ED sizes: G512 P512 E128 H128 A128 multimodal, G256 P256 unimodal."""

    global_size: int | None = None       # D_g; None: 512 multimodal, 256 unimodal
    party_size: int | None = None        # D_p; None: as global_size
    emotion_size: int = 128              # D_e
    hidden: int = 256                    # the classifier's hidden layer: 2 · D_h as their BiModel
    attention_size: int = 128            # D_a, for context_attention="concat"
    context_attention: str = "general"   # "simple", "general" or "concat"
    listener_state: bool = True          # their --active_listener
    input_projection: bool = True        # their --use_input_project: Linear to global_size first
    bidirectional: bool = True
    emotion_attention: bool = True       # "att2": attention over all emotion states
    dropout: float = 0.1
    rec_dropout: float = 0.25            # on the emotion states: their dropout + 0.15

    default_lr: ClassVar[float] = 2e-4
    default_weight_decay: ClassVar[float] = 1e-5
    default_class_weights: ClassVar[bool] = True
    default_batch_size: ClassVar[int] = 32
    default_epochs: ClassVar[int] = 80         # their run.sh: --max_epoch 80

    def __post_init__(self) -> None:
        super().__post_init__()
        self.global_size = self.global_size or (512 if len(self.input_dims) > 1 else 256)
        self.party_size = self.party_size or self.global_size
        if self.context_attention not in ("simple", "general", "concat"):
            raise ValueError(f"DialogueRNN: context_attention {self.context_attention!r}; "
                             f"use 'simple', 'general' or 'concat'")


class ContextAttention(nn.Module):
    """Attention of the current utterance over the past global states."""

    def __init__(self, mem_dim: int, query_dim: int, kind: str, attention_size: int):
        super().__init__()
        self.kind = kind
        if kind == "simple":
            self.score = nn.Linear(mem_dim, 1, bias=False)
        elif kind == "general":
            self.transform = nn.Linear(query_dim, mem_dim, bias=False)
        else:
            self.transform = nn.Linear(query_dim + mem_dim, attention_size, bias=False)
            self.vector = nn.Linear(attention_size, 1, bias=False)

    def forward(self, memory: torch.Tensor, query: torch.Tensor) -> torch.Tensor:
        """memory [B, t, D_g], query [B, D_m] -> context [B, D_g]."""
        if self.kind == "simple":
            scores = self.score(memory).squeeze(-1)
        elif self.kind == "general":
            scores = torch.einsum("btd,bd->bt", memory, self.transform(query))
        else:
            joined = torch.cat([memory, query[:, None].expand(-1, memory.shape[1], -1)], -1)
            scores = self.vector(torch.tanh(self.transform(joined))).squeeze(-1)
        return torch.einsum("bt,btd->bd", F.softmax(scores, dim=-1), memory)


class DialogueRNNCell(nn.Module):
    """One direction: runs the global, party and emotion GRUs over the utterances."""

    def __init__(self, config: DialogueRNNConfig, input_size: int):
        super().__init__()
        c = config
        self.config = c
        self.g_cell = nn.GRUCell(input_size + c.party_size, c.global_size)
        self.p_cell = nn.GRUCell(input_size + c.global_size, c.party_size)
        self.e_cell = nn.GRUCell(c.party_size, c.emotion_size)
        self.l_cell = nn.GRUCell(input_size + c.party_size, c.party_size) if c.listener_state else None
        self.attention = ContextAttention(c.global_size, input_size, c.context_attention, c.attention_size)
        self.dropout = nn.Dropout(c.dropout)

    def forward(self, u: torch.Tensor, speaker: torch.Tensor) -> torch.Tensor:
        """u [B, N, D_m], speaker one-hot [B, N, P] -> emotion states [B, N, D_e]."""
        b, n, _ = u.shape
        p = speaker.shape[-1]
        party = u.new_zeros(b, p, self.config.party_size)
        g_prev = u.new_zeros(b, self.config.global_size)
        e_prev = u.new_zeros(b, self.config.emotion_size)
        history, emotions = [], []
        rows = torch.arange(b, device=u.device)
        for t in range(n):
            u_t, q_t = u[:, t], speaker[:, t]                      # [B, D_m], [B, P]
            who = q_t.argmax(-1)
            g_t = self.dropout(self.g_cell(torch.cat([u_t, party[rows, who]], -1), g_prev))
            context = (self.attention(torch.stack(history, 1), u_t) if history
                       else u.new_zeros(b, self.config.global_size))
            speaker_in = torch.cat([u_t, context], -1)[:, None].expand(b, p, -1).reshape(b * p, -1)
            spoken = self.dropout(self.p_cell(speaker_in, party.reshape(b * p, -1))).view(b, p, -1)
            if self.l_cell is not None:
                listener_in = torch.cat([u_t[:, None].expand(b, p, -1),
                                         spoken[rows, who][:, None].expand(b, p, -1)], -1)
                listened = self.dropout(self.l_cell(listener_in.reshape(b * p, -1),
                                                    party.reshape(b * p, -1))).view(b, p, -1)
            else:
                listened = party
            party = listened * (1 - q_t[..., None]) + spoken * q_t[..., None]
            e_t = self.dropout(self.e_cell(party[rows, who], e_prev))
            history.append(g_t)
            emotions.append(e_t)
            g_prev, e_prev = g_t, e_t
        return torch.stack(emotions, 1)


def reverse_within_length(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Reverse each sequence's real part, keeping the padding at the end. x [B, N, ...]."""
    n = mask.shape[1]
    lengths = mask.sum(1, keepdim=True)
    position = torch.arange(n, device=x.device)[None]
    index = torch.where(position < lengths, lengths - 1 - position, position)
    return x.gather(1, index.view(*index.shape, *([1] * (x.dim() - 2))).expand_as(x))


@register_model("dialoguernn", config=DialogueRNNConfig, tiny={
    "global_size": 32, "party_size": 32, "emotion_size": 32, "hidden": 32, "attention_size": 32,
    "rec_dropout": 0.1})
class DialogueRNN(nn.Module):
    """DialogueRNN: global, party and emotion GRUs (bidirectional, emotion attention)."""

    def __init__(self, config: DialogueRNNConfig):
        super().__init__()
        self.config = config
        input_size = sum(config.input_dims.values()) + len(config.input_dims)
        self.input_projection = None
        if config.input_projection:
            self.input_projection = nn.Linear(input_size, config.global_size)
            input_size = config.global_size
        self.forward_rnn = DialogueRNNCell(config, input_size)
        self.backward_rnn = DialogueRNNCell(config, input_size) if config.bidirectional else None
        states = config.emotion_size * (2 if config.bidirectional else 1)
        self.rec_dropout = nn.Dropout(config.rec_dropout)
        self.emotion_transform = nn.Linear(states, states) if config.emotion_attention else None
        self.linear = nn.Linear(states, config.hidden)
        self.dropout = nn.Dropout(config.dropout)
        self.head = nn.Linear(config.hidden, config.num_classes)

    def forward_features(self, batch: Batch) -> torch.Tensor:
        u = early_fusion(batch, self.config.modalities)
        if self.input_projection is not None:
            u = self.input_projection(u)
        if int(batch.speakers.max()) >= self.config.num_speakers:
            raise ValueError(f"DialogueRNN: a dialogue has more than num_speakers={self.config.num_speakers} "
                             f"speakers; build the model with a larger num_speakers")
        speaker = F.one_hot(batch.speakers, self.config.num_speakers).to(u.dtype)
        emotions = self.forward_rnn(u, speaker)
        if self.backward_rnn is not None:
            backward = self.backward_rnn(reverse_within_length(u, batch.mask),
                                         reverse_within_length(speaker, batch.mask))
            emotions = torch.cat([emotions, reverse_within_length(backward, batch.mask)], -1)
        emotions = self.rec_dropout(emotions)
        if self.emotion_transform is not None:
            emotions = matching_attention(self.emotion_transform, emotions, batch.mask)
        return self.dropout(F.relu(self.linear(emotions)))

    def forward_head(self, features: torch.Tensor) -> torch.Tensor:
        return self.head(features)

    def forward(self, batch: Batch) -> torch.Tensor:
        return self.forward_head(self.forward_features(batch))
