"""Face model throughput on this machine, random weights (same cost as the real ones):

- ``face_embed``: facenet-pytorch InceptionResnetV1 identity embeddings, 160x160 RGB (asd stage 2);
- ``fer``: the authors' DenseNet-BC-100 FER features, 64x64 gray (visual stage).

Writes ``bench/results.json`` keys ``face_embed`` and ``fer``. Run with ``python bench/bench_visual.py``.
Faces are real (the astronaut photo, shifted); batches are timed after one warm-up batch.
``fer_stage_batch_per_s``: FER on one batch of the stage's size (256 faces, which the stage runs in
pieces of ``CPU_PIECE`` on CPU; bench/bench_visual_parts.py times the stage's parts on the sample).
"""
from __future__ import annotations

import argparse
import os
import time

import cv2
import numpy as np
import skimage.data
import torch
from common import merge_results, table

from m3ed.device import peak_rss_mb

from m3ed.asd.embed import EMBED_SIZE, FaceEmbedder
from m3ed.extract.face import FaceConfig, FaceStage
from m3ed.profiles import get_profile


def faces(n: int, size: int, gray: bool) -> np.ndarray:
    image = skimage.data.astronaut()
    crops = [cv2.resize(np.ascontiguousarray(image[20 + i % 9:220 + i % 9, 150:350]), (size, size)) for i in range(n)]
    out = np.stack(crops)
    return np.stack([cv2.cvtColor(c, cv2.COLOR_RGB2GRAY) for c in out]) if gray else out


def throughput(fn, batch: np.ndarray, repeats: int) -> float:
    fn(batch)  # warm-up: first calls pay for kernel selection
    start = time.perf_counter()
    for _ in range(repeats):
        fn(batch)
    return repeats * len(batch) / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    default_threads = torch.get_num_threads()
    common = {"device": "cpu", "cpus": os.cpu_count(), "batch": args.batch, "weights": "random (paper-random profile)",
              "load_average_1min": round(os.getloadavg()[0], 2)}

    embedder = FaceEmbedder(get_profile("paper-random"), "cpu", batch_size=args.batch)
    fer = FaceStage(FaceConfig(batch_size=args.batch))
    stage_batch = FaceConfig().batch_size
    stage_fer = FaceStage(FaceConfig())
    embed_input, fer_input = faces(args.batch, EMBED_SIZE, gray=False), faces(args.batch, 64, gray=True)
    rows = []
    # torch's default thread count, and one thread: on a busy machine, spinning threads can cost several times.
    for threads in dict.fromkeys((default_threads, 1)):
        torch.set_num_threads(threads)
        embed_fps = throughput(embedder.embed, embed_input, args.repeats)
        fer_fps = throughput(lambda b: fer.features({"u": list(b)}), fer_input, args.repeats)
        stage_fps = throughput(lambda b: stage_fer.features({"u": list(b)}), faces(stage_batch, 64, gray=True), 1)
        rows.append({"threads": threads, "face_embed_per_s": round(embed_fps, 1), "fer_per_s": round(fer_fps, 1),
                     "fer_stage_batch_per_s": round(stage_fps, 1)})
    print(table(rows, ["threads", "face_embed_per_s", "fer_per_s", "fer_stage_batch_per_s"]))
    by_threads = {str(r["threads"]): r for r in rows}
    merge_results("face_embed", {**common, "model": "facenet-pytorch InceptionResnetV1", "input": "160x160x3",
                                 "faces_per_s": rows[0]["face_embed_per_s"], "threads": default_threads,
                                 "faces_per_s_by_threads": {t: r["face_embed_per_s"] for t, r in by_threads.items()},
                                 "peak_rss_mb": round(peak_rss_mb(), 1)})
    merge_results("fer", {**common, "model": "DenseNet-BC-100 (768,044 parameters)", "input": "64x64x1",
                          "faces_per_s": rows[0]["fer_per_s"], "threads": default_threads,
                          "faces_per_s_by_threads": {t: r["fer_per_s"] for t, r in by_threads.items()},
                          "stage_batch": stage_batch,
                          "stage_batch_faces_per_s_by_threads": {t: r["fer_stage_batch_per_s"]
                                                                 for t, r in by_threads.items()},
                          "peak_rss_mb": round(peak_rss_mb(), 1)})


if __name__ == "__main__":
    main()
