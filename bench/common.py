"""Helpers shared by the benchmark scripts: results file, child environment, a longer test video."""
from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

BENCH_DIR = Path(__file__).resolve().parent
REPO = BENCH_DIR.parent
RESULTS = BENCH_DIR / "results.json"
SAMPLE_VIDEOS = REPO / "samples" / "videos"


def subprocess_env(**extra: str) -> dict:
    """This environment for a child Python that imports the repository's package (ahead of any
    PYTHONPATH already set, which may hold dependencies installed elsewhere), offline, with the
    locally built models in ``M3ED_CACHE`` (default: the repository's ``.cache/m3ed``)."""
    path = os.pathsep.join(p for p in (str(REPO), os.environ.get("PYTHONPATH", "")) if p)
    return {"M3ED_CACHE": str(REPO / ".cache" / "m3ed"), **os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": path,
            **extra}


def merge_results(key: str, value) -> None:
    """Store ``value`` under ``key`` in bench/results.json, keeping the other benchmarks' keys."""
    data = json.loads(RESULTS.read_text()) if RESULTS.exists() else {}
    data[key] = value
    RESULTS.write_text(json.dumps(data, indent=2) + "\n")


def device_key(name: str, device: str) -> str:
    """The results key of a benchmark run on ``device``: ``name`` on the CPU, ``name_cuda`` on a GPU."""
    return name if device == "cpu" else f"{name}_{device.split(':')[0]}"


def long_episode(path: Path, seconds: float = 60.0, height: int = 720) -> Path:
    """A longer episode at a realistic resolution: the sample's main episode looped and upscaled."""
    from m3ed.media import ffmpeg_exe

    if path.exists():
        return path
    source = max(SAMPLE_VIDEOS.glob("*.mp4"), key=lambda p: p.stat().st_size)
    subprocess.run([ffmpeg_exe(), "-y", "-v", "error", "-stream_loop", "-1", "-i", str(source), "-t", str(seconds),
                    "-vf", f"scale=-2:{height}", "-af", "aresample=async=1,apad",   # no gaps where the loop joins
                    "-c:v", "libx264", "-preset", "veryfast", "-g", "250",
                    "-c:a", "aac", str(path)], check=True)
    return path


def table(rows: list[dict], columns: list[str]) -> str:
    widths = [max(len(c), *(len(f"{r.get(c, '')}") for r in rows)) for c in columns]
    lines = ["  ".join(c.ljust(w) for c, w in zip(columns, widths))]
    lines += ["  ".join(f"{r.get(c, '')}".ljust(w) for c, w in zip(columns, widths)) for r in rows]
    return "\n".join(lines)
