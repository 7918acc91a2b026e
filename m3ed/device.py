"""The device, the numeric precision and the CPU threads, resolved in one place for every stage and trainer."""
from __future__ import annotations

import contextlib
import os
import time

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


def default_threads(window: float = 0.5) -> int:
    """Torch threads for a run: the cores not busy now, at least 1.

    Measured on 2 cores (README, Benchmarks): beside a busy process, two threads ran small models
    slower than one (threads wait for a core); on idle cores they help. "Now" is the CPU time spent
    over ``window`` seconds (``/proc/stat``), not the load average, which still counts for a minute
    the work of a process that has just ended (such as the previous stage of a pipeline)."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return max(1, cores - round(_busy_cores(window)))


def _busy_cores(window: float) -> float:
    def times() -> tuple[int, int] | None:
        try:
            with open("/proc/stat", encoding="ascii") as f:
                fields = [int(x) for x in f.readline().split()[1:]]
        except (OSError, ValueError):
            return None
        return sum(fields), fields[3] + fields[4]   # all, idle + iowait

    before = times()
    if before is None:   # not Linux: the load average
        return os.getloadavg()[0] if hasattr(os, "getloadavg") else 0.0
    time.sleep(window)
    after = times()
    total, idle = after[0] - before[0], after[1] - before[1]
    return (os.cpu_count() or 1) * (total - idle) / total if total else 0.0


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
