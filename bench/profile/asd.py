"""Where the asd stage's time goes: seconds per step of :class:`m3ed.asd.pipeline.AsdPipeline`.

    python bench/profile/asd.py [--model light-asd] [--threads 1] [--repeat 1] [--set embed_every=5 ...]

Runs the stage's pipeline (``paper-random`` profile: paper-size models, random weights; Light-ASD
loads its shipped real weights) on the bundled sample's three dialogues and prints, per step of
:meth:`AsdPipeline.run` (its ``hook``), the seconds spent: audio, decode, shots, detections, tracks,
crops, faces, scores, embeddings, speaker_faces. ``--set`` overrides config fields (``embed_every=5``,
``detection.min_face_size=40``, ``scoring.mode=multi``, ``detector=s3fd``...) so that variants can be
timed in one process (``--variants`` alternates them, best of ``--repeat``). The load average is
recorded: absolute seconds on a shared machine are only comparable within one run.
"""
from __future__ import annotations

import argparse
import ast
import dataclasses
import os
import sys
import time
from collections import defaultdict
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))   # bench/common.py
from common import REPO  # noqa: E402

from m3ed.asd.options import AsdConfig  # noqa: E402
from m3ed.asd.pipeline import AsdPipeline  # noqa: E402
from m3ed.loaders import load_m3ed  # noqa: E402
from m3ed.locate import MediaSource  # noqa: E402
from m3ed.profiles import get_profile  # noqa: E402

STEPS = ("audio", "decode", "shots", "detections", "tracks", "crops", "faces", "scores", "embeddings", "speaker_faces")


class StepTimer:
    """A pipeline hook: the time since the previous step's end goes to the step that just ended."""

    def __init__(self):
        self.seconds: dict[str, float] = defaultdict(float)
        self._last = time.perf_counter()

    def start(self) -> None:
        self._last = time.perf_counter()

    def __call__(self, step: str, artifact) -> None:
        now = time.perf_counter()
        self.seconds[step] += now - self._last
        self._last = now


def override(config: AsdConfig, assignments: list[str]) -> AsdConfig:
    for item in assignments:
        key, _, text = item.partition("=")
        try:
            value = ast.literal_eval(text)
        except (ValueError, SyntaxError):
            value = text
        path = key.split(".")
        if len(path) == 1:
            config = dataclasses.replace(config, **{key: value})
        else:
            inner = dataclasses.replace(getattr(config, path[0]), **{path[1]: value})
            config = dataclasses.replace(config, **{path[0]: inner})
    return config


def run_once(pipeline: AsdPipeline, corpus, media) -> tuple[dict[str, float], float]:
    timer = StepTimer()
    started = time.perf_counter()
    for dialogue in corpus:
        timer.start()
        pipeline.run(dialogue, media, hook=timer)
    return dict(timer.seconds), time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="light-asd")
    parser.add_argument("--profile", default="paper-random")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--repeat", type=int, default=1)
    parser.add_argument("--set", nargs="*", default=[], help="config overrides for every variant")
    parser.add_argument("--variants", nargs="*", default=[""],
                        help="each a ';'-separated list of overrides (empty: the defaults); alternated")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    annotations = REPO / "samples" / "annotations"
    corpus = list(load_m3ed(annotations / "annotation.json", annotations / "relation_annotation_release.json"))
    media = MediaSource(REPO / "samples" / "videos")
    profile = get_profile(args.profile)
    pipelines = []
    for variant in args.variants:
        config = override(AsdConfig(model=args.model), args.set + [v for v in variant.split(";") if v])
        pipelines.append((variant or "default", AsdPipeline(config, profile, "cpu")))
    best: dict[str, tuple[float, dict]] = {}
    for r in range(args.repeat):
        for name, pipeline in pipelines:
            load = os.getloadavg()[0]
            steps, total = run_once(pipeline, corpus, media)
            print(f"[{r}] {name}: total {total:.1f} s, load {load:.2f}: "
                  + ", ".join(f"{s} {steps.get(s, 0.0):.1f}" for s in STEPS), flush=True)
            if name not in best or total < best[name][0]:
                best[name] = (total, steps)
    print("best of", args.repeat)
    for name, (total, steps) in best.items():
        print(f"{name}: total {total:.1f} s: " + ", ".join(f"{s} {steps.get(s, 0.0):.1f}" for s in STEPS))


if __name__ == "__main__":
    main()
