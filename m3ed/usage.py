"""What a stage used of the machine: wall time, CPU time (this process and the worker and ffmpeg
processes it waited for), the cores that kept busy on average, and on CUDA the GPU's busy share and
peak memory. Recorded per stage in ``run.json`` (``usage``) and shown in the report, so that a
GPU run says whether the GPU or the host was the limit.

The GPU's busy share is NVML's utilisation (the share of time a kernel ran), sampled every
``interval`` seconds in a thread; it needs ``nvidia-ml-py`` and NVIDIA's driver, and is left out
where either is missing. The cut, when it runs beside the stages, adds its ffmpeg processes' CPU
time to the stage during which each finished.
"""
from __future__ import annotations

import logging
import resource
import threading
import time

import torch

log = logging.getLogger(__name__)


def cpu_seconds() -> float:
    """CPU seconds of this process and of the children it has waited for."""
    own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


class Usage:
    """A context manager measuring the block; :meth:`record` gives what it measured."""

    def __init__(self, device: str = "cpu", interval: float = 0.2):
        self.device = torch.device(device)
        self.interval = interval
        self._samples: list[int] = []
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.wall = self.cpu = 0.0

    def __enter__(self) -> "Usage":
        self._cpu0, self._wall0 = cpu_seconds(), time.perf_counter()
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.device)
            handle = _nvml_handle(self.device)
            if handle is not None:
                self._thread = threading.Thread(target=self._sample, args=(handle,), daemon=True,
                                                name="m3ed-gpu-usage")
                self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.wall = time.perf_counter() - self._wall0
        self.cpu = cpu_seconds() - self._cpu0
        self._stop.set()
        if self._thread is not None:
            self._thread.join()

    def _sample(self, handle) -> None:
        import pynvml

        while not self._stop.wait(self.interval):
            try:
                self._samples.append(pynvml.nvmlDeviceGetUtilizationRates(handle).gpu)
            except pynvml.NVMLError:
                return

    def record(self) -> dict:
        """``cpu_s``, ``cores_busy`` (CPU seconds per wall second); on CUDA ``gpu_peak_memory_mb`` and,
        with NVML, ``gpu_busy_pct`` (mean of the samples) and ``gpu_samples``."""
        out = {"cpu_s": round(self.cpu, 3), "cores_busy": round(self.cpu / self.wall, 2) if self.wall > 0 else None}
        if self.device.type == "cuda":
            out["gpu_peak_memory_mb"] = round(torch.cuda.max_memory_allocated(self.device) / 2 ** 20)
            if self._samples:
                out["gpu_busy_pct"] = round(sum(self._samples) / len(self._samples), 1)
                out["gpu_samples"] = len(self._samples)
        return out


def _nvml_handle(device: torch.device):
    """NVML's handle of the torch device (matched by UUID, so CUDA_VISIBLE_DEVICES cannot mix them
    up), or None without NVML."""
    try:
        import pynvml

        pynvml.nvmlInit()
        uuid = str(torch.cuda.get_device_properties(device).uuid)
        return pynvml.nvmlDeviceGetHandleByUUID(uuid if uuid.startswith("GPU-") else f"GPU-{uuid}")
    except Exception as e:  # no package, no driver, an old driver: the GPU share is left out
        log.info("GPU utilisation not sampled: %s", e)
        return None
