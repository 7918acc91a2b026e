"""Video decoding on the CPU: ffmpeg's binary through a pipe (what the stages use) against in-process
decoders (PyAV, torchcodec), to RGB uint8 frames at the video's native size and 25 fps.

    python bench/bench_decode.py [--seconds 60] [--repeat 3]

On a 720p episode made from the sample (``common.long_episode``: H.264, 25 fps) and on the sample's
own 360p episode. Per decoder, the best of ``--repeat`` runs: wall seconds, CPU seconds (the
process's and, for the pipe, ffmpeg's), frames per wall second, and how many frames differ from
the pipe's and by how much (different FFmpeg builds may convert YUV to RGB with other rounding).
A decoder that is not installed is skipped (``pip install av torchcodec``; torchcodec also needs
FFmpeg's shared libraries). Writes ``bench/results.json`` key ``decode``.
"""
from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

import numpy as np

from common import SAMPLE_VIDEOS, long_episode, merge_results, table

from m3ed.media import iter_frames, probe
from m3ed.usage import cpu_seconds


def pipe(path: Path, seconds: float):
    info = probe(path)
    yield from iter_frames(path, 0.0, min(seconds, info.duration), fps=25.0, info=info)


def pyav(path: Path, seconds: float):
    import av

    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"   # frame and slice threads, as ffmpeg's binary decodes
        for frame in container.decode(stream):
            if frame.time is not None and frame.time >= seconds - 1e-6:
                break
            yield frame.to_ndarray(format="rgb24")[None]


def torchcodec_cpu(path: Path, seconds: float):
    from torchcodec.decoders import VideoDecoder

    decoder = VideoDecoder(str(path), device="cpu", dimension_order="NHWC")
    batch = decoder.get_frames_played_in_range(0.0, seconds)
    for first in range(0, len(batch.data), 64):
        yield batch.data[first:first + 64].numpy()


def pipe_large_chunks(path: Path, seconds: float):
    """The pipe as it read before chunks were bounded in bytes (``m3ed.media.CHUNK_BYTES``): 64 frames."""
    import m3ed.media

    bound, m3ed.media.CHUNK_BYTES = m3ed.media.CHUNK_BYTES, 2 ** 40
    try:
        yield from pipe(path, seconds)
    finally:
        m3ed.media.CHUNK_BYTES = bound


DECODERS = {"ffmpeg pipe": pipe, "ffmpeg pipe, 64-frame chunks": pipe_large_chunks, "pyav": pyav,
            "torchcodec (cpu)": torchcodec_cpu}


def measure(decode, path: Path, seconds: float, repeat: int, keep: int = 250) -> tuple[dict, np.ndarray]:
    """The best of ``repeat`` decodes; the first ``keep`` frames of the last (for the comparison)."""
    best, kept = None, None
    for _ in range(repeat):
        wall0, cpu0 = time.perf_counter(), cpu_seconds()
        count, first = 0, []
        for chunk in decode(path, seconds):   # frames are dropped as they come: memory stays small
            if count < keep:
                first.append(np.array(chunk[:keep - count]))
            count += len(chunk)
        wall, cpu = time.perf_counter() - wall0, cpu_seconds() - cpu0
        kept = np.concatenate(first)
        if best is None or wall < best["wall_s"]:
            best = {"wall_s": round(wall, 3), "cpu_s": round(cpu, 3), "frames": count,
                    "frames_per_s": round(count / wall, 1)}
    return best, kept


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=60.0)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--work", type=Path, default=Path("/tmp/m3ed-bench-decode"))
    args = parser.parse_args()
    args.work.mkdir(parents=True, exist_ok=True)
    videos = {"720p": long_episode(args.work / "episode-720p.mp4", args.seconds),
              "360p (sample)": max(SAMPLE_VIDEOS.glob("*.mp4"), key=lambda p: p.stat().st_size)}
    rows, result = [], {"cpus": os.cpu_count(), "load_average_1min": None, "videos": {}}
    for label, path in videos.items():
        reference = None
        result["videos"][label] = {}
        for name, decode in DECODERS.items():
            try:
                entry, frames = measure(decode, path, args.seconds, args.repeat)
            except (ImportError, RuntimeError, OSError) as e:
                print(f"{name}: skipped ({type(e).__name__}: {str(e).splitlines()[0][:120]})")
                continue
            if reference is None:
                reference = frames
            else:
                n = min(len(frames), len(reference))
                diff = np.abs(frames[:n].astype(np.int16) - reference[:n].astype(np.int16))
                entry.update(frames_differing=int((diff.reshape(n, -1).max(axis=1) > 0).sum()),
                             max_abs_diff=int(diff.max()) if n else None, mean_abs_diff=round(float(diff.mean()), 4))
            result["videos"][label][name] = entry
            rows.append({"video": label, "decoder": name, **entry})
    result["load_average_1min"] = round(os.getloadavg()[0], 2)
    print(table(rows, ["video", "decoder", "frames", "wall_s", "cpu_s", "frames_per_s", "frames_differing",
                       "max_abs_diff", "mean_abs_diff"]))
    merge_results("decode", result)


if __name__ == "__main__":
    main()
