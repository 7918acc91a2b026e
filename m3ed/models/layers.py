"""Layers shared by the downstream models."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def matching_attention(transform: nn.Module, features: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Every utterance attends over its dialogue's utterances (``[B, N, D]``, ``mask`` ``[B, N]``):
    scores ``tanh(transform(x_i) . x_j)`` (DialogueRNN's "general2" matching attention, also
    DialogueGCN's nodal attention), padded utterances never attended to."""
    scores = torch.tanh(torch.einsum("bid,bjd->bij", transform(features), features))
    scores = scores.masked_fill(~mask[:, None, :], float("-inf"))
    return torch.einsum("bij,bjd->bid", F.softmax(scores, dim=-1), features)
