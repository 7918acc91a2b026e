"""Host cost: CPU core-seconds per second of video spent outside the networks, per feature stage.

    python bench/bench_host.py [--copies 7] [--device cpu]

What limits a GPU machine is the host work around the networks (decoding, shot detection, MTCNN's
pre- and post-processing, crops, MFCC, batching, writing): on a GPU the networks take little, and
the host work of one process decides how fast it goes and how many cores it needs. This measures
that work without a GPU.

Text and audio each run in their own ``m3ed-extract`` process, asd and visual together in one (as a
whole run has them: the visual stage takes the crops the asd stage cut), all into one output, with
``--threads 1`` so that every network call runs on the thread that makes it and ``--workers 1`` so
that all of it runs in that process. Inside the child, every call into a network (the entry points
that ``bench/model_time.py``'s ``route_network_calls`` routes) is timed in that thread's CPU time;
a stage's host cost is the process's CPU time during the stage (its own and its ffmpeg children's)
minus its networks' CPU time. Start-up, imports and model loading cost the same for any length of
footage, so the figure is the slope between two runs: the sample's footage once (46 s) and
``--copies`` times (7: 5.4 minutes):
``core_s_per_video_s = (host(long) - host(short)) / (footage(long) - footage(short))``.

Writes ``bench/results.json`` key ``host`` (``host_cuda`` with ``--device cuda``): per stage and in
total the host core-seconds per second of video, the networks' core-seconds per second of video,
and ``projected_realtime_x_16_cores`` = 16 / host cost: how many times real time 16 cores could go
if the host work spread over them and the networks cost nothing (a ceiling, not a measurement).
``workers_speedup``: the asd stage's wall time on the long footage with ``--workers 1`` and
``--workers 2`` (on a 2-core machine the two workers share the cores with the main process's networks).
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from common import device_key, merge_results, subprocess_env, table
from model_time import route_network_calls

from m3ed.usage import cpu_seconds

STAGES = ("text", "audio", "asd", "visual")


# ---- the child: one stage, its networks' thread CPU time counted ---------------------------------
class NetworkCpu:
    """Thread CPU seconds inside network calls (outermost calls only, per thread)."""

    def __init__(self):
        self.seconds = 0.0
        self.calls = 0
        self._local = threading.local()
        self._lock = threading.Lock()

    def call(self, function, args: tuple, kwargs: dict):
        """``function(*args, **kwargs)``, its thread CPU time counted unless a network call is already running."""
        depth = getattr(self._local, "depth", 0)
        if depth:
            return function(*args, **kwargs)
        self._local.depth = 1
        started = time.thread_time()
        try:
            return function(*args, **kwargs)
        finally:
            spent = time.thread_time() - started
            self._local.depth = 0
            with self._lock:
                self.seconds += spent
                self.calls += 1


def child(record: Path, argv: list[str]) -> int:
    """One ``m3ed-extract`` run; per stage, the process's CPU time and its networks' thread CPU time."""
    clock = NetworkCpu()
    route_network_calls(clock.call)
    import m3ed.pipelines.extract as extract
    from m3ed.pipelines.cli import extract_main

    stages, run_stage = {}, extract.run_stage

    def counted(stage, *args, **kwargs):
        cpu, network, started = cpu_seconds(), clock.seconds, time.perf_counter()
        try:
            return run_stage(stage, *args, **kwargs)
        finally:
            stages[stage.name] = {"cpu_s": cpu_seconds() - cpu, "network_cpu_s": clock.seconds - network,
                                  "wall_s": time.perf_counter() - started}

    extract.run_stage = counted
    code = 3
    try:
        code = extract_main(argv)
    finally:
        record.write_text(json.dumps({"stages": stages, "exit": code}))
    return code


# ---- the driver --------------------------------------------------------------------------------
def write_manifest(path: Path, copies: int) -> float:
    from bench_pipeline import write_manifest as sample_manifest

    return sample_manifest(path, copies)[0]


def run_child(manifest: Path, out: Path, stages: str, device: str, env: dict, *extra: str) -> dict[str, dict]:
    """Per stage of one ``m3ed-extract`` process: its CPU seconds, its networks' CPU seconds, its wall seconds."""
    record = out.parent / f"{out.name}-{stages.replace(',', '-')}.json"
    cmd = [sys.executable, __file__, "--child", str(record), "--annotations", str(manifest), "--out", str(out),
           "--stages", stages, "--profile", "paper-random", "--asd-model", "light-asd", "--device", device,
           "--threads", "1", "--no-report", "--no-progress", *extra]
    record.unlink(missing_ok=True)
    done = subprocess.run(cmd, env=env, capture_output=True, text=True)
    if done.returncode not in (0, 1) or not record.exists():
        raise SystemExit(f"{stages} failed (exit {done.returncode}):\n{done.stderr[-3000:]}")
    return json.loads(record.read_text())["stages"]


def run_stages(manifest: Path, out: Path, device: str, env: dict) -> dict[str, dict]:
    """Text and audio each in a process of its own (one large model each), asd and visual in one, as a
    whole run has them (the visual stage takes the crops the asd stage cut); ``--workers 1``, so that
    every network call is timed in this process."""
    result = {}
    for stages in ("text", "audio", "asd,visual"):
        result.update(run_child(manifest, out, stages, device, env, "--workers", "1"))
    return result


def workers_speedup(manifest: Path, work: Path, device: str, env: dict) -> dict:
    """Wall seconds of the asd stage on the long footage with ``--workers 1`` and ``--workers 2``."""
    wall = {}
    for workers in (1, 2):
        out = work / f"workers-{workers}"
        wall[workers] = run_child(manifest, out, "asd", device, env, "--workers", str(workers))["asd"]["wall_s"]
    return {"asd_wall_s_workers_1": round(wall[1], 1), "asd_wall_s_workers_2": round(wall[2], 1),
            "speedup": round(wall[1] / wall[2], 2)}


def main() -> None:
    if len(sys.argv) > 2 and sys.argv[1] == "--child":
        sys.exit(child(Path(sys.argv[2]), sys.argv[3:]))
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--copies", type=int, default=7, help="copies of the sample in the long run (7: 5.4 min)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--work", type=Path, default=None, help="working folder (default: a temporary one)")
    parser.add_argument("--skip-workers", action="store_true", help="leave out the --workers 1 vs 2 comparison")
    args = parser.parse_args()
    work = args.work or Path(tempfile.mkdtemp(prefix="m3ed-bench-host-"))
    work.mkdir(parents=True, exist_ok=True)
    env = subprocess_env(OMP_NUM_THREADS="1")

    footage, runs = {}, {}
    for name, copies in (("short", 1), ("long", args.copies)):
        footage[name] = write_manifest(work / f"{name}.csv", copies)
        runs[name] = run_stages(work / f"{name}.csv", work / name, args.device, env)
    seconds = footage["long"] - footage["short"]

    def slope(stage: str, field: str) -> float:
        return (runs["long"][stage][field] - runs["short"][stage][field]) / seconds

    rows, total_host, total_network = [], 0.0, 0.0
    for stage in STAGES:
        cpu, network = slope(stage, "cpu_s"), slope(stage, "network_cpu_s")
        total_host += cpu - network
        total_network += network
        rows.append({"stage": stage, "host_core_s_per_video_s": round(cpu - network, 3),
                     "network_core_s_per_video_s": round(network, 3)})
    result = {
        "footage_s": {k: round(v, 1) for k, v in footage.items()}, "threads": 1, "cpus": os.cpu_count(),
        "core_s_per_video_s": round(total_host, 3), "network_core_s_per_video_s": round(total_network, 3),
        "by_stage": {r["stage"]: {k: v for k, v in r.items() if k != "stage"} for r in rows},
        "projected_realtime_x_16_cores": round(16 / max(total_host, 1e-9), 1),
        "target_core_s_per_video_s": 0.15,
        "workers_speedup": None if args.skip_workers else workers_speedup(work / "long.csv", work, args.device, env),
    }
    merge_results(device_key("host", args.device), result)
    rows.append({"stage": "total", "host_core_s_per_video_s": result["core_s_per_video_s"],
                 "network_core_s_per_video_s": result["network_core_s_per_video_s"]})
    print(table(rows, ["stage", "host_core_s_per_video_s", "network_core_s_per_video_s"]))
    print(f"host work projects to {result['projected_realtime_x_16_cores']}x real time on 16 cores "
          f"(target: <= 0.15 core-s per video-s, >= 100x)")
    if result["workers_speedup"]:
        print(f"asd stage, long footage: --workers 1 {result['workers_speedup']['asd_wall_s_workers_1']} s, "
              f"--workers 2 {result['workers_speedup']['asd_wall_s_workers_2']} s")


if __name__ == "__main__":
    main()
