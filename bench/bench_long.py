"""Memory against video length: one long dialogue through the stages that hold media in memory.

    python bench/bench_long.py [--minutes 10] [--stages audio,asd,visual]

Data: the sample's main episode looped to ``--minutes`` at its own size (640x360), one dialogue
over all of it whose utterances are the episode's, repeated at their real times in every loop
(faces and speech throughout). Each stage runs in its own process (``m3ed-extract``, defaults,
``paper-random`` with Light-ASD's shipped weights, as ``bench_pipeline.py``), so each peak RSS is
that stage's alone. The goal: peak RSS does not grow with the dialogue (compare ``end_to_end`` of
``bench_pipeline.py``, whose dialogues last 15 s each).

Writes ``bench/results.json`` key ``long_dialogue`` and prints a table.
"""
from __future__ import annotations

import argparse
import csv
import os
import tempfile
from pathlib import Path

from bench_pipeline import extract
from common import REPO, long_episode, merge_results, subprocess_env, table


def write_manifest(path: Path, minutes: float) -> tuple[float, int]:
    """A generic manifest of one dialogue over the looped episode; (seconds, utterances)."""
    from m3ed.loaders import load_m3ed
    from m3ed.media import probe

    annotations = REPO / "samples" / "annotations"
    sample = load_m3ed(annotations / "annotation.json", annotations / "relation_annotation_release.json",
                       annotations / "splitInfo")
    main = max(sample, key=lambda d: len(d.utterances))
    source = REPO / "samples" / "videos" / f"{main.show}{main.episode:02d}.mp4"
    loop, seconds = probe(source).duration, minutes * 60
    episode = long_episode(path.parent / "longshow01.mp4", seconds=seconds, height=probe(source).height)
    end = seconds - 10.0   # a looped episode's audio ends seconds before its picture
    rows = []
    for k in range(max(1, int(seconds // loop))):
        for u in main.utterances:
            start = k * loop + main.start + u.start
            if start + u.duration > end:
                continue
            rows.append({"dialogue_id": "longshow_1", "utterance_id": f"longshow_1_{len(rows) + 1}",
                         "speaker": u.speaker, "start": f"{start:.3f}", "end": f"{start + u.duration:.3f}",
                         "text": u.text, "emotion": "neutral", "video": episode.name,
                         "video_start": "0", "video_end": f"{end:.3f}"})
    with path.open("w", encoding="utf-8", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return end, len(rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=float, default=10.0)
    parser.add_argument("--stages", default="audio,asd,visual")
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="m3ed-bench-long-"))
    env = subprocess_env()
    seconds, utterances = write_manifest(work / "manifest.csv", args.minutes)
    stages = {}
    for stage in args.stages.split(","):
        process = extract(work / "manifest.csv", work / "out", stage, args.device, [], env)   # one stage: its own peak
        entry = {"wall_s": process["wall_s"], "stage_s": process["stages"][stage]["stage_s"],
                 "peak_rss_mb": process["peak_rss_mb"]}
        stages[stage] = {**entry, "rtf": round(entry["stage_s"] / seconds, 3)}
    result = {"footage_s": round(seconds, 1), "dialogues": 1, "utterances": utterances, "stages": stages,
              "peak_rss_mb": max(e["peak_rss_mb"] for e in stages.values()), "device": args.device,
              "cpus": os.cpu_count(), "load_average_1min": round(os.getloadavg()[0], 2)}
    print(f"one dialogue of {seconds / 60:.1f} min, {utterances} utterances, {args.device}")
    print(table([{"stage": k, **v} for k, v in stages.items()], ["stage", "wall_s", "stage_s", "rtf", "peak_rss_mb"]))
    merge_results("long_dialogue", result)


if __name__ == "__main__":
    main()
