"""The device, the numeric precision and the CPU threads, resolved in one place for every stage and trainer."""
from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import gc
import resource
import sys
from concurrent.futures import ThreadPoolExecutor
from typing import Callable, Iterable, TypeVar

import torch

PRECISIONS = ("fp32", "bf16", "fp16")
Item, Result = TypeVar("Item"), TypeVar("Result")


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


def side_by_side(call: Callable[[Item], Result], items: Iterable[Item], device: str | torch.device) -> list[Result]:
    """``[call(item) for item in items]`` for inference. On CPU the calls run in one worker thread per
    torch thread of the run (torch releases the GIL), each call on one torch thread and in inference
    mode (grad mode is per thread): small models use the cores better so than with intra-op threads
    (MTCNN 1.8x, DenseNet pieces 1.2-1.4x on 2 cores). Elsewhere, and with one thread, one after another."""
    items = list(items)
    workers = min(len(items), side_by_side_workers(device))
    if workers < 2:
        return [call(item) for item in items]

    def work(item: Item) -> Result:
        with torch.inference_mode():
            return call(item)

    with torch_threads(1), ThreadPoolExecutor(workers, thread_name_prefix="m3ed-cpu") as pool:
        return list(pool.map(work, items))


def side_by_side_workers(device: str | torch.device) -> int:
    """How many calls :func:`side_by_side` runs at once: one per torch thread on CPU, else one."""
    return max(1, torch.get_num_threads()) if torch.device(device).type == "cpu" else 1


def peak_rss_mb() -> float:
    """This process's peak resident memory so far, in MiB."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / 2 ** 20 if sys.platform == "darwin" else peak / 1024   # bytes on macOS, KiB elsewhere


def release_memory() -> None:
    """Give freed memory back to the system, between stages and between the asd stage's steps:
    Python's cycles, PyTorch's CUDA cache, and glibc's heaps, which otherwise keep what a stage
    freed (measured: a process running the audio, asd and visual stages peaked at 3.5 GB without
    this, 2.6 GB with it)."""
    gc.collect()
    if torch.cuda.is_initialized():
        torch.cuda.empty_cache()
    trim_heap()


def trim_heap() -> None:
    """Hand the C heap's free pages back to the system (glibc's ``malloc_trim``; elsewhere nothing)."""
    if _MALLOC_TRIM is not None:
        _MALLOC_TRIM(0)


def _malloc_trim():
    libc = ctypes.util.find_library("c")
    return getattr(ctypes.CDLL(libc), "malloc_trim", None) if libc else None   # glibc only


_MALLOC_TRIM = _malloc_trim()
