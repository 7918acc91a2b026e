"""Deterministic "parity" weights, computed from a state-dict manifest alone.

The reference implementations produced ``tests/data/parity_io.npz`` with these weights; loading the
same weights into our models must reproduce those outputs. The rule (shared with the reference):
for the k-th manifest entry (k = 0, 1, ...), shape S, n = prod(S) values, i = 0..n-1, a splitmix64
hash of ``i + (k + 1) * 0x9E3779B97F4A7C15`` (uint64, wrapping) gives ``base`` uniform in [-1, 1),
which is mapped by the entry's role:

    *num_batches_tracked        -> 0 (int64)
    *running_var                -> 1 + 0.5 |base|
    *running_mean               -> 0.1 base
    1-D *weight                 -> 1 + 0.1 base
    other 1-D and 0-D tensors   -> 0.1 base
    tensors of 2+ dims          -> base * sqrt(6 / fan_in),  fan_in = n / S[0]
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import torch

_GOLDEN_GAMMA = 0x9E3779B97F4A7C15
_MIX_1 = 0xBF58476D1CE4E5B9
_MIX_2 = 0x94D049BB133111EB


def _uniform(k: int, n: int) -> np.ndarray:
    """n values in [-1, 1) from splitmix64 of the indices, seeded by the entry's position k."""
    u64 = np.uint64
    with np.errstate(over="ignore"):  # uint64 arithmetic wraps modulo 2**64 by design
        z = np.arange(n, dtype=u64) + u64((k + 1) * _GOLDEN_GAMMA % 2**64)
        z = (z ^ (z >> u64(30))) * u64(_MIX_1)
        z = (z ^ (z >> u64(27))) * u64(_MIX_2)
        z = z ^ (z >> u64(31))
    return (z >> u64(11)).astype(np.float64) / float(2**53) * 2.0 - 1.0


def parity_tensor(k: int, name: str, shape: list[int]) -> torch.Tensor:
    """The parity value of the k-th state-dict entry ``name`` of ``shape``."""
    if name.endswith("num_batches_tracked"):
        return torch.zeros(shape, dtype=torch.int64)
    n = math.prod(shape)
    base = _uniform(k, n)
    if name.endswith("running_var"):
        values = 1.0 + 0.5 * np.abs(base)
    elif name.endswith("running_mean"):
        values = 0.1 * base
    elif len(shape) == 1 and name.endswith("weight"):
        values = 1.0 + 0.1 * base
    elif len(shape) >= 2:
        values = base * math.sqrt(6.0 / (n / shape[0]))
    else:
        values = 0.1 * base
    return torch.from_numpy(values.reshape(shape).astype(np.float32))


def parity_state_dict(manifest_path: str | Path) -> dict[str, torch.Tensor]:
    """Parity weights for every entry of a manifest (``{"state_dict": {name: {"shape": ...}}}``)."""
    manifest = json.loads(Path(manifest_path).read_text())
    entries = manifest.get("state_dict", manifest)
    return {name: parity_tensor(k, name, spec["shape"]) for k, (name, spec) in enumerate(entries.items())}
