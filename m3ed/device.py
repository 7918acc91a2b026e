"""The device, the numeric precision and the CPU threads, resolved in one place for every stage and trainer."""
from __future__ import annotations

import contextlib

import torch

PRECISIONS = ("fp32", "bf16", "fp16")


def default_device() -> str:
    """``cuda`` when a GPU is there, else ``cpu``."""
    return "cuda" if torch.cuda.is_available() else "cpu"


def autocast(device: str | torch.device, precision: str = "fp32"):
    """Mixed precision on CUDA only (``precision`` "bf16" or "fp16"); fp32 elsewhere."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision {precision!r}: choose {', '.join(PRECISIONS)}")
    if precision == "fp32" or not str(device).startswith("cuda"):
        return contextlib.nullcontext()
    return torch.autocast("cuda", dtype=torch.bfloat16 if precision == "bf16" else torch.float16)


@contextlib.contextmanager
def torch_threads(count: int | None):
    """Run the block with ``count`` torch threads (None: unchanged), then restore."""
    if not count:
        yield
        return
    before = torch.get_num_threads()
    torch.set_num_threads(count)
    try:
        yield
    finally:
        torch.set_num_threads(before)
