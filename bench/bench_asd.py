"""Throughput of the asd stage's steps with the paper-random profile on the bundled sample.

    python bench/bench_asd.py [--seconds 5] [--frames 100]

Measures, on the sample's two-shot dialogue (640x360, two faces):
- shots + MTCNN detection: frames/s at detection heights 360 (native) and 240, every frame;
- S3FD detection (random weights, the authors' scale 0.25): frames/s, every frame;
- the cropping pass: frames/s;
- ASD scoring, seconds of compute per second of face track: TalkNet single, TalkNet multi
  (the reference's six passes), Light-ASD single and multi (first ``--seconds`` of each track);
- face embedding (InceptionResnetV1, random weights): faces/s;
- TalkNet multi-mode at 250 and 1,500 frames per forward, and single pass at 1 and 2 threads.
Writes them to bench/results.json under "asd" -> "threads_N" (N = torch threads). Timings on a
shared CPU are noisy: compare ratios measured in one run (the load average is recorded).
"""
from __future__ import annotations

import argparse
import os
import time

import numpy as np
import torch

from common import REPO, merge_results, table

from m3ed.device import peak_rss_mb

from m3ed.asd.crop import TrackCrops
from m3ed.asd.detect import DetectionParams, Detections, FaceDetector
from m3ed.asd.detectors import build_detector
from m3ed.asd.options import AsdConfig
from m3ed.asd.embed import FaceEmbedder
from m3ed.asd.score import ScoreParams, build_scorer, dialogue_mfcc, score_tracks
from m3ed.asd.shots import ShotDetector
from m3ed.asd.track import Track, track_faces
from m3ed.loaders import load_m3ed
from m3ed.locate import MediaSource
from m3ed.profiles import get_profile

DIALOGUE = "sampleval_1"


def timed(fn, *args, **kwargs):
    started = time.perf_counter()
    out = fn(*args, **kwargs)
    return out, time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=5.0, help="seconds of each face track to score")
    parser.add_argument("--frames", type=int, default=100, help="frames to run the detector on")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    annotations = REPO / "samples" / "annotations"
    corpus = load_m3ed(annotations / "annotation.json", annotations / "relation_annotation_release.json")
    media = MediaSource(REPO / "samples" / "videos")
    span = media.locate(corpus[DIALOGUE])
    frames = np.concatenate(list(media.frames(span)))
    audio = media.audio(span)
    profile = get_profile("paper-random")
    result: dict = {"profile": "paper-random", "device": "cpu", "threads": torch.get_num_threads(),
                    "video": f"{span.info.width}x{span.info.height}", "load_average_1min": round(os.getloadavg()[0], 2)}

    for height in (360, 240):
        detector = FaceDetector(DetectionParams(height=height))
        detector.detect(frames[:4])  # warm-up
        shots, found = ShotDetector(), Detections(1)
        _, seconds = timed(lambda: ([(shots.update(c), found.add_chunk(detector, c))
                                     for c in np.array_split(frames[:args.frames], max(1, args.frames // 32))],
                                    found.flush()))
        result[f"detect_fps_h{height}"] = round(args.frames / seconds, 2)
    s3fd = build_detector(AsdConfig(detector="s3fd"), profile)   # paper-random: random weights, real cost
    s3fd.detect(frames[:2])  # warm-up
    found = Detections(1)
    _, seconds = timed(lambda: (found.add_chunk(s3fd, frames[:args.frames]), found.flush()))
    result["detect_fps_s3fd"] = round(args.frames / seconds, 2)
    _, seconds = timed(lambda: [ShotDetector().update(frames)])
    result["shots_fps"] = round(len(frames) / seconds, 1)

    detector = FaceDetector(DetectionParams(every=5, height=240))
    every5 = Detections(5)
    _, seconds = timed(lambda: (every5.add_chunk(detector, frames), every5.flush()))
    result["detect_every5_fps_h240"] = round(len(frames) / seconds, 2)
    tracks = track_faces(every5, np.array([0]))
    crops, seconds = timed(lambda: _crop(tracks, frames))
    result["crop_fps"] = round(len(frames) / seconds, 1)
    result["tracks"] = len(tracks)

    keep = int(args.seconds * 25)
    short = [Track(t.frames[:keep], t.boxes[:keep], t.track_id) for t in tracks]
    short_crops = [c[:keep] for c in crops.asd]
    track_seconds = sum(len(t) for t in short) / 25
    features = dialogue_mfcc(audio)
    rows = []
    for model in ("light-asd", "talknet"):
        scorer = build_scorer(profile, "cpu", model)
        score_tracks(scorer, features, short[:1], [short_crops[0][:25]])  # warm-up
        for mode in ("single", "multi"):
            _, seconds = timed(score_tracks, scorer, features, short, short_crops, ScoreParams(mode=mode))
            key = f"{model.replace('-', '_')}_{mode}_s_per_track_s"
            result[key] = round(seconds / track_seconds, 3)
            rows.append({"model": model, "mode": mode, "track_seconds": track_seconds, "s_per_track_s": result[key]})
    result["track_seconds_scored"] = track_seconds
    result.update(_batches_and_threads(profile, features, short, short_crops, track_seconds))

    embedder = FaceEmbedder(profile, "cpu")
    faces = np.concatenate(crops.faces)[:32]
    embedder.embed(faces[:4])
    _, seconds = timed(embedder.embed, faces)
    result["embed_faces_per_s"] = round(len(faces) / seconds, 1)
    result["peak_rss_mb"] = round(peak_rss_mb(), 1)
    # one entry per thread count: on a loaded machine 1 thread can beat 2 by several times
    merged = _previous_runs()
    merged[f"threads_{result['threads']}"] = result
    merge_results("asd", merged)
    print(table(rows, ["model", "mode", "track_seconds", "s_per_track_s"]))
    print({k: v for k, v in result.items()})


def _batches_and_threads(profile, features, tracks, crops, track_seconds: float) -> dict:
    """Multi-mode TalkNet at 250 and 1,500 frames per forward, and TalkNet single at 1 and 2 torch
    threads, alternated three times (best of each): the defaults of ScoreParams.batch_frames and
    of --threads come from these ratios."""
    scorer = build_scorer(profile, "cpu", "talknet")
    threads = torch.get_num_threads()
    variants = {
        "talknet_multi_batch250": lambda: score_tracks(scorer, features, tracks, crops, ScoreParams("multi", 250)),
        "talknet_multi_batch1500": lambda: score_tracks(scorer, features, tracks, crops, ScoreParams("multi", 1500)),
        "talknet_single_threads1": lambda: _with_threads(1, score_tracks, scorer, features, tracks, crops),
        "talknet_single_threads2": lambda: _with_threads(2, score_tracks, scorer, features, tracks, crops),
    }
    best = {name: float("inf") for name in variants}
    for _ in range(3):
        for name, run in variants.items():
            best[name] = min(best[name], timed(run)[1])
    torch.set_num_threads(threads)
    return {f"{name}_s_per_track_s": round(seconds / track_seconds, 3) for name, seconds in best.items()}


def _with_threads(count: int, fn, *args):
    torch.set_num_threads(count)
    return fn(*args)


def _previous_runs() -> dict:
    import json

    from common import RESULTS

    previous = json.loads(RESULTS.read_text()).get("asd", {}) if RESULTS.exists() else {}
    return {k: v for k, v in previous.items() if k.startswith("threads_")}


def _crop(tracks, frames):
    crops = TrackCrops(tracks, embed_every=5)
    for first in range(0, len(frames), 64):
        crops.add_chunk(frames[first:first + 64])
    return crops


if __name__ == "__main__":
    main()
