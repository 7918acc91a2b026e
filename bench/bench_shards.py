"""Throughput of several extraction processes side by side on one machine: one output, ``--shard I/N``
each, then ``m3ed merge`` (the way a GPU machine's idle capacity is used; see the README's Scale).

    python bench/bench_shards.py --device cuda --precision bf16 --shards 4 [--copies 14]

Data and models as ``bench_pipeline.py`` (the sample repeated under new ids, ``paper-random`` with
Light-ASD's shipped weights), every stage. Each shard gets ``cpus // shards`` torch threads. On a
machine with ``nvidia-smi``, the GPU memory in use is sampled every 0.5 s. Writes
``bench/results.json`` key ``shards_{device}`` (other keys kept) and prints the figures.
"""
from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import tempfile
import threading
import time
from pathlib import Path

from bench_pipeline import EXTRACT, write_manifest
from common import merge_results, subprocess_env


class GpuMemory(threading.Thread):
    """The peak of ``nvidia-smi``'s memory in use (MiB) while running; None without nvidia-smi."""

    def __init__(self):
        super().__init__(daemon=True)
        self.peak: int | None = None
        self.done = threading.Event()

    def run(self) -> None:
        if not shutil.which("nvidia-smi"):
            return
        while not self.done.wait(0.5):
            out = subprocess.run(["nvidia-smi", "--query-gpu=memory.used", "--format=csv,noheader,nounits"],
                                 capture_output=True, text=True).stdout.split()
            if out:
                self.peak = max(self.peak or 0, max(int(v) for v in out))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shards", type=int, default=4)
    parser.add_argument("--copies", type=int, default=14, help="copies of the sample (14: 10.8 min of footage)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--precision", default="fp32")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="m3ed-bench-shards-"))
    env = subprocess_env()
    seconds, utterances = write_manifest(work / "manifest.csv", args.copies)
    threads = max(1, (os.cpu_count() or 1) // args.shards)
    options = ["--annotations", str(work / "manifest.csv"), "--out", str(work / "out"), "--profile", "paper-random",
              "--device", args.device, "--precision", args.precision, "--asd-model", "light-asd",
              "--threads", str(threads), "--no-report", "--no-progress"]
    memory = GpuMemory()
    memory.start()
    started = time.perf_counter()
    logs = [open(work / f"shard-{i}.log", "wb") for i in range(args.shards)]
    processes = [subprocess.Popen([*EXTRACT, *options, "--shard", f"{i}/{args.shards}"], stdout=log,
                                  stderr=subprocess.STDOUT, env=env) for i, log in enumerate(logs)]
    codes = [p.wait() for p in processes]
    for log in logs:
        log.close()
    shards_s = time.perf_counter() - started
    merge = f"import sys; from m3ed.pipelines.cli import main; sys.argv = ['m3ed', 'merge', {str(work / 'out')!r}]; main()"
    merged = subprocess.run([EXTRACT[0], "-c", merge], env=env, capture_output=True, text=True)
    wall = time.perf_counter() - started
    memory.done.set()
    memory.join()
    if any(codes) or merged.returncode:
        tails = "\n".join((work / f"shard-{i}.log").read_text(errors="replace")[-1500:] for i in range(args.shards))
        raise SystemExit(f"shards exited {codes}, merge {merged.returncode}:\n{tails}\n{merged.stderr[-1500:]}")
    result = {"footage_s": round(seconds, 1), "utterances": utterances, "shards": args.shards,
              "threads_per_shard": threads, "shards_wall_s": round(shards_s, 1), "wall_s": round(wall, 1),
              "rtf": round(wall / seconds, 4), "times_real_time": round(seconds / wall, 1),
              "peak_gpu_memory_mib": memory.peak, "device": args.device, "precision": args.precision,
              "cpus": os.cpu_count()}
    print(f"{seconds:.0f} s of footage in {args.shards} shards x {threads} threads on {args.device}: "
          f"{wall:.1f} s with the merge ({result['times_real_time']}x real time), peak GPU memory {memory.peak} MiB")
    merge_results(f"shards_{args.device.split(':')[0]}", result)


if __name__ == "__main__":
    main()
