"""One command on a GPU machine: the feature stages at × real time, the GPU's busy share, the cores used.

    python bench/bench_gpu.py [--device cuda] [--precision bf16] [--copies 20] [--shards 1,4,8,16]

The four feature stages (text, audio, asd, visual; no cut: users who want features only do not pay
for re-encoded clips) over the sample repeated ``--copies`` times under new ids (``paper-random``
models, Light-ASD's shipped weights), as ``bench_pipeline.py`` builds it:

- one process with ``--workers`` at its default (every core but one on CUDA), and with ``--workers 1``;
- ``--shards`` N processes side by side (``--shard I/N``, ``--workers 1``, ``cores // N`` threads
  each), then ``m3ed merge``: the hand-made way to use a machine's idle capacity, for comparison.

Each row gives the wall seconds of the whole command (start-up and model loading included), × real
time (footage seconds / wall seconds), and from the one-process runs' ``run.json`` (``m3ed.usage``)
the cores kept busy and the GPU's busy share (NVML) in the asd and visual stages and the peak GPU
memory; the corpus projection is M3ED's 14.8 hours at that speed. On CUDA it writes
``bench/results.json`` key ``end_to_end_cuda`` (``realtime_x`` of the one-process run with workers);
on a CPU it only prints (a check that the script runs; ``bench_pipeline.py`` owns the CPU figures).
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench_pipeline import EXTRACT, run_process, write_manifest
from common import device_key, merge_results, subprocess_env, table

STAGES = "text,audio,asd,visual"
M3ED_HOURS = 14.8   # the corpus's dialogue footage (paper, Table 2)


def one_process(manifest: Path, out: Path, device: str, precision: str, env: dict, *extra: str) -> dict:
    cmd = [*EXTRACT, "--annotations", str(manifest), "--out", str(out), "--stages", STAGES, "--profile",
           "paper-random", "--asd-model", "light-asd", "--device", device, "--precision", precision,
           "--no-report", "--no-progress", *extra]
    wall, _ = run_process(cmd, env)
    record = json.loads((out / "run.json").read_text())
    stages = record["stages"]
    usage = {name: stages[name].get("usage", {}) for name in ("asd", "visual")}
    return {"wall_s": round(wall, 1), "workers": record["config"]["run"]["workers"],
            "stage_s": {name: round(entry["seconds"], 1) for name, entry in stages.items()},
            "cores_busy": {name: u.get("cores_busy") for name, u in usage.items()},
            "gpu_busy_pct": {name: u.get("gpu_busy_pct") for name, u in usage.items()},
            "gpu_peak_memory_mb": max((u["gpu_peak_memory_mb"] for u in usage.values() if "gpu_peak_memory_mb" in u),
                                      default=None)}


def sharded(manifest: Path, out: Path, shards: int, device: str, precision: str, env: dict) -> dict:
    threads = max(1, (os.cpu_count() or 1) // shards)
    cmd = [*EXTRACT, "--annotations", str(manifest), "--out", str(out), "--stages", STAGES, "--profile",
           "paper-random", "--asd-model", "light-asd", "--device", device, "--precision", precision,
           "--threads", str(threads), "--workers", "1", "--no-report", "--no-progress"]
    started = time.perf_counter()
    running = [subprocess.Popen(cmd + ["--shard", f"{i}/{shards}"], env=env, stdout=subprocess.DEVNULL,
                                stderr=subprocess.PIPE, text=True) for i in range(shards)]
    for process in running:
        _, err = process.communicate()
        if process.returncode not in (0, 1):
            raise SystemExit(f"shard failed (exit {process.returncode}):\n{err[-3000:]}")
    run_process([sys.executable, "-c", "import sys; from m3ed.pipelines.cli import main; sys.exit(main())",
                 "merge", str(out), "--no-report"], env)
    return {"wall_s": round(time.perf_counter() - started, 1), "threads_each": threads}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--precision", default="bf16")
    parser.add_argument("--copies", type=int, default=20, help="copies of the sample (20: 15.4 min of footage)")
    parser.add_argument("--shards", default="1,4,8,16", help="shard counts to compare (comma-separated; '' for none)")
    parser.add_argument("--work", type=Path, default=None, help="working folder (default: a temporary one)")
    args = parser.parse_args()
    precision = args.precision if args.device.startswith("cuda") else "fp32"
    work = args.work or Path(tempfile.mkdtemp(prefix="m3ed-bench-gpu-"))
    work.mkdir(parents=True, exist_ok=True)
    env = subprocess_env()
    footage, _ = write_manifest(work / "manifest.csv", args.copies)

    runs = {"one process, default workers": one_process(work / "manifest.csv", work / "workers", args.device, precision, env),
            "one process, --workers 1": one_process(work / "manifest.csv", work / "in-place", args.device, precision, env,
                                                    "--workers", "1")}
    for n in [int(v) for v in args.shards.split(",") if v.strip()]:
        runs[f"{n} shards side by side"] = sharded(work / "manifest.csv", work / f"shards-{n}", n, args.device, precision, env)
    rows = []
    for name, run in runs.items():
        realtime = footage / run["wall_s"]
        run.update(realtime_x=round(realtime, 1), corpus_hours=round(M3ED_HOURS / realtime, 2))
        rows.append({"run": name, "wall_s": run["wall_s"], "realtime_x": run["realtime_x"],
                     "corpus_hours": run["corpus_hours"], "workers": run.get("workers", 1),
                     "asd_gpu_busy_pct": run.get("gpu_busy_pct", {}).get("asd"),
                     "visual_gpu_busy_pct": run.get("gpu_busy_pct", {}).get("visual"),
                     "asd_cores_busy": run.get("cores_busy", {}).get("asd"),
                     "gpu_peak_memory_mb": run.get("gpu_peak_memory_mb")})
    print(f"{footage:.0f} s of footage, stages {STAGES}, {args.device} {precision}, {os.cpu_count()} cores, "
          f"load {os.getloadavg()[0]:.2f}")
    print(table(rows, list(rows[0])))
    best = runs["one process, default workers"]
    result = {"footage_s": round(footage, 1), "stages": STAGES, "device": args.device, "precision": precision,
              "cpus": os.cpu_count(), "realtime_x": best["realtime_x"], "runs": runs,
              "target_realtime_x": 90, "load_average_1min": round(os.getloadavg()[0], 2)}
    if args.device.startswith("cuda"):
        merge_results(device_key("end_to_end", args.device), result)


if __name__ == "__main__":
    main()
