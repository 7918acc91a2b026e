"""Where the asd stage's time goes: seconds per step of :class:`m3ed.asd.pipeline.AsdPipeline`.

    python bench/bench_asd_profile.py [--model light-asd] [--threads 1] [--repeat 1] [--set embed_every=5 ...]

Runs the stage's pipeline (``paper-random`` profile: paper-size models, random weights; Light-ASD
loads its shipped real weights) on the bundled sample's three dialogues and prints, per step,
the seconds spent: decode, shots, detection (rescale + MTCNN), tracking, crops, scoring (MFCC +
model), embedding, assignment. ``--set`` overrides config fields (``embed_every=5``,
``detection.min_face_size=40``, ``scoring.mode=multi``, ...) so that variants can be timed in
one process (``--variants`` alternates them, best of ``--repeat``). The load average is recorded:
absolute seconds on a shared machine are only comparable within one run.
"""
from __future__ import annotations

import argparse
import ast
import dataclasses
import os
import time
from collections import defaultdict
from contextlib import contextmanager

import torch

from common import REPO

from m3ed.asd import crop as crop_mod
from m3ed.asd import detect as detect_mod
from m3ed.asd import pipeline as pipeline_mod
from m3ed.asd.pipeline import AsdConfig, AsdPipeline
from m3ed.loaders import load_m3ed
from m3ed.locate import MediaSource
from m3ed.profiles import get_profile

PARTS = ("decode", "shots", "detect", "track", "crop", "score", "embed", "assign")


class Timers:
    def __init__(self):
        self.seconds: dict[str, float] = defaultdict(float)
        self._stack: list[str] = []

    @contextmanager
    def part(self, name: str):
        # nested parts are charged to the inner one only
        started = time.perf_counter()
        self._stack.append(name)
        try:
            yield
        finally:
            self._stack.pop()
            elapsed = time.perf_counter() - started
            self.seconds[name] += elapsed
            if self._stack:
                self.seconds[self._stack[-1]] -= elapsed


TIMERS = Timers()


def wrap(owner, name: str, part: str) -> None:
    original = getattr(owner, name)

    def wrapped(*args, **kwargs):
        with TIMERS.part(part):
            return original(*args, **kwargs)
    setattr(owner, name, wrapped)


def instrument() -> None:
    wrap(pipeline_mod.ShotDetector, "update", "shots")
    wrap(detect_mod.Detections, "add_chunk", "detect")
    wrap(detect_mod.Detections, "flush", "detect")
    wrap(pipeline_mod, "track_shots", "track")
    wrap(crop_mod.TrackCrops, "add_chunk", "crop")
    wrap(pipeline_mod.AsdPipeline, "score", "score")
    wrap(pipeline_mod.AsdPipeline, "embed", "embed")
    wrap(pipeline_mod, "assign_speakers", "assign")


def timed_decode(media, span, fps, chunk):
    frames = media.frames(span, fps=fps, chunk=chunk)
    while True:
        with TIMERS.part("decode"):
            try:
                item = next(frames)
            except StopIteration:
                return
        yield item


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


def run_once(pipeline: AsdPipeline, corpus, media) -> tuple[dict[str, float], float, dict]:
    TIMERS.seconds.clear()
    outputs = {}
    started = time.perf_counter()
    for dialogue in corpus:
        span = media.locate(dialogue)
        audio = media.audio(span)
        decode = lambda: timed_decode(media, span, pipeline.config.fps, pipeline_mod.CHUNK_FRAMES)  # noqa: E731
        faces, crops = pipeline.find_faces(dialogue.id, decode)
        faces.scores, faces.demo_scores = pipeline.score(faces.tracks, crops, audio,
                                                         pipeline.needed_frames(dialogue, faces.tracks))
        read = (pipeline.utterance_rows(dialogue, faces.tracks)
                if pipeline.config.embed_frames == "utterances" else None)
        embeddings = pipeline.embed(faces.tracks, crops, read)
        outputs[dialogue.id] = (faces, pipeline_mod.assign_speakers(
            dialogue, faces.tracks, faces.scores, embeddings, pipeline.config.fps, pipeline.config.assign,
            stage1_scores=faces.demo_scores))
    total = time.perf_counter() - started
    return dict(TIMERS.seconds), total, outputs


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
    corpus = load_m3ed(annotations / "annotation.json", annotations / "relation_annotation_release.json")
    media = MediaSource(REPO / "samples" / "videos")
    profile = get_profile(args.profile)
    instrument()
    pipelines = []
    for variant in args.variants:
        config = override(AsdConfig(model=args.model), args.set + [v for v in variant.split(";") if v])
        pipelines.append((variant or "default", AsdPipeline(config, profile, "cpu")))
    best: dict[str, tuple[float, dict]] = {}
    for r in range(args.repeat):
        for name, pipeline in pipelines:
            load = os.getloadavg()[0]
            parts, total, _ = run_once(pipeline, list(corpus), media)
            print(f"[{r}] {name}: total {total:.1f} s, load {load:.2f}: "
                  + ", ".join(f"{p} {parts.get(p, 0.0):.1f}" for p in PARTS), flush=True)
            if name not in best or total < best[name][0]:
                best[name] = (total, parts)
    print("best of", args.repeat)
    for name, (total, parts) in best.items():
        print(f"{name}: total {total:.1f} s: " + ", ".join(f"{p} {parts.get(p, 0.0):.1f}" for p in PARTS))


if __name__ == "__main__":
    main()
