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


#: glibc's own limits once its dynamic threshold has grown: buffers over 32 MB are unmapped when
#: freed, and the heap's top is trimmed past 64 MB.
_GLIBC_MMAP_MAX, _GLIBC_TRIM_MAX = 32 * 2 ** 20, 64 * 2 ** 20
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3   # mallopt's parameter numbers (malloc.h)
_INT_MAX = 2 ** 31 - 1


@contextlib.contextmanager
def freed_buffers_kept(limit_mb: int = 1024):
    """Within the block, glibc keeps freed buffers of up to ``limit_mb`` in its heap for the next
    allocation instead of unmapping them; afterwards its usual limits return and the heap is trimmed.

    glibc maps every allocation over 32 MB afresh and unmaps it when freed, so the next tensor of
    that size page-faults its way through new zeroed memory. Light-ASD's activations (400 MB for
    250 frames) spent a third of their time in the kernel doing that (its front-end: 3.4 -> 2.1 s
    with the buffers kept). Use it around one bounded step, such as one model call (the sample's
    ASD scoring: 7.0 -> 6.1 s): kept for a whole run, the heap's fragments raised the 9.8-minute
    dialogue's asd peak from 4 to 6 GB. torch allocates with ``posix_memalign``, whose chunks glibc
    reuses less reliably than ``malloc``'s, so part of the faults remain. Process-wide and not
    reentrant; elsewhere than glibc, nothing changes."""
    if _MALLOPT is None:
        yield
        return
    limit = min(limit_mb * 2 ** 20, _INT_MAX // 2)   # mallopt takes a C int
    _MALLOPT(_M_MMAP_THRESHOLD, limit)
    _MALLOPT(_M_TRIM_THRESHOLD, 2 * limit)
    try:
        yield
    finally:
        _MALLOPT(_M_MMAP_THRESHOLD, _GLIBC_MMAP_MAX)
        _MALLOPT(_M_TRIM_THRESHOLD, _GLIBC_TRIM_MAX)
        trim_heap()


def _glibc(name: str):
    libc = ctypes.util.find_library("c")
    return getattr(ctypes.CDLL(libc), name, None) if libc else None   # glibc only


_MALLOC_TRIM, _MALLOPT = _glibc("malloc_trim"), _glibc("mallopt")
