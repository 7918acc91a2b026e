"""The visual stage split into its parts on the sample: decode, crop, DenseNet forward, writing.

Needs an output directory where the asd stage has run on the sample (``speaker_faces``):

    HF_HUB_OFFLINE=1 python -m m3ed.pipelines.cli_extract --out /tmp/visprof --stages asd \\
        --profile paper-random --asd-model light-asd --device cpu --no-report
    python bench/profile/visual.py --out /tmp/visprof [--threads 1 2] [--repeats 2]

Variants alternate within one run (best of ``--repeats``), so that a shared machine's load hits them
alike; the load average is recorded. ``before``: one DenseNet call per batch of 256 faces and
out-of-place ReLU (the stage before this benchmark); ``after``: the stage as it is (pieces of
``CPU_PIECE`` faces, in-place ReLU). Every variant's features are compared bit for bit with
``before``'s. ``--sweep`` times DenseNet alone on the sample's crops against the batch size, the
memory format and the grad mode. Writes ``bench/bench_visual_parts.json``.
"""
from __future__ import annotations

import dataclasses
import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))   # bench/common.py
from common import BENCH_DIR, REPO, table  # noqa: E402

from m3ed.catalogue import COLUMN  # noqa: E402
from m3ed.extract.face import CPU_PIECE, FRAME_SET, MEAN_SET, FaceConfig, FaceStage, open_speaker_faces  # noqa: E402
from m3ed.loaders import load_m3ed  # noqa: E402
from m3ed.locate import MediaSource  # noqa: E402
from m3ed.models.densenet_fer import preprocess  # noqa: E402
from m3ed.profiles import get_profile  # noqa: E402
from m3ed.stage import RunContext  # noqa: E402
from m3ed.store import FeatureStore  # noqa: E402

SAMPLE = REPO / "samples"


def sample_context(out: Path) -> RunContext:
    a = SAMPLE / "annotations"
    corpus = load_m3ed(a / "annotation.json", a / "relation_annotation_release.json", a / "splitInfo")
    return RunContext(corpus=corpus, media=MediaSource(SAMPLE / "videos"), store=FeatureStore(out),
                      profile=get_profile("paper-random"))


def wanted_rows(dialogue, faces) -> dict[str, np.ndarray]:
    wanted = {}
    for u in dialogue.utterances:
        rows = faces.get(u.id)
        if rows is not None and (rows[:, COLUMN["track"]] >= 0).any():
            wanted[u.id] = rows[rows[:, COLUMN["track"]] >= 0]
    return wanted


def set_variant(stage: FaceStage, variant: str) -> None:
    """before: one DenseNet call per batch of 256, out-of-place ReLU; after: the stage as it is."""
    before = variant == "before"
    stage.config = dataclasses.replace(stage.config, cpu_piece=256 if before else CPU_PIECE)   # 256: as before
    for module in stage.model.modules():
        if isinstance(module, nn.ReLU):
            module.inplace = not before


def whole_stage(args, context: RunContext) -> tuple[list[dict], list[float]]:
    """Seconds of the stage's own ``process`` over the sample per variant (alternated, best of N)."""
    stage = FaceStage(FaceConfig(seed=context.profile.seed), "cpu", context.media.timing.fps)
    variants = [(v, t) for t in args.threads for v in ("before", "after")]
    best, identical, reference, loads = {}, {}, None, [os.getloadavg()[0]]
    for _ in range(args.repeats):
        for variant, threads in variants:
            torch.set_num_threads(threads)
            set_variant(stage, variant)
            t = time.perf_counter()
            results = list(stage.process(list(context.corpus), context))
            seconds = time.perf_counter() - t
            feats = {u: a for r in results for u, a in r.features.get(FRAME_SET, {}).items()}
            reference = reference or feats
            identical[(variant, threads)] = all(np.array_equal(feats[k], reference[k]) for k in reference) \
                and set(feats) == set(reference)
            best[(variant, threads)] = min(best.get((variant, threads), float("inf")), seconds)
            loads.append(os.getloadavg()[0])
            print(f"  process(): {variant:6s} {threads} thread(s) {seconds:.2f} s", flush=True)
    n_faces = sum(len(a) for a in reference.values())
    rows = [{"variant": v, "threads": t, "seconds": round(best[(v, t)], 2),
             "faces_per_s": round(n_faces / best[(v, t)], 1), "identical_to_before": identical[(v, t)]}
            for v, t in variants]
    print(f"whole stage, {n_faces} faces; load average (1 min): {[round(x, 2) for x in loads]}")
    print(table(rows, ["variant", "threads", "seconds", "faces_per_s", "identical_to_before"]))
    return rows, loads


def parts(stage: FaceStage, context: RunContext, work: list, store: FeatureStore) -> tuple[dict, dict]:
    """Seconds per part over the sample, and the features (utterance id -> [n, 342])."""
    seconds = dict.fromkeys(("decode", "crop", "model", "write"), 0.0)
    features: dict[str, np.ndarray] = {}
    for dialogue, wanted in work:
        last = max(int(r[:, 0].max()) for r in wanted.values())
        t = time.perf_counter()
        decoded = 0
        for chunk in context.media.frames(context.media.locate(dialogue), fps=stage.fps):
            decoded += len(chunk)
            if decoded > last:
                break
        seconds["decode"] += time.perf_counter() - t
        t = time.perf_counter()
        crops = stage.crops(dialogue, wanted, context)
        seconds["crop"] += time.perf_counter() - t   # decoding again, plus cutting: decode is taken off below
        t = time.perf_counter()
        feats = stage.features(crops)
        seconds["model"] += time.perf_counter() - t
        t = time.perf_counter()
        store.write_part(FRAME_SET, dialogue.id, feats, config="bench")
        store.write_part(MEAN_SET, dialogue.id, {u: f.mean(axis=0) for u, f in feats.items()}, config="bench")
        seconds["write"] += time.perf_counter() - t
        features.update(feats)
    seconds["crop"] = max(0.0, seconds["crop"] - seconds["decode"])
    return seconds, features


def max_diff(a: dict, b: dict) -> float:
    return max(float(np.abs(a[k] - b[k]).max()) for k in a)


def stage_parts(args, context: RunContext) -> tuple[list[dict], int, list[float]]:
    stage = FaceStage(FaceConfig(seed=context.profile.seed), "cpu", context.media.timing.fps)
    with open_speaker_faces(context) as faces:
        work = [(d, w) for d in context.corpus if (w := wanted_rows(d, faces))]
    n_faces = sum(len(r) for _, w in work for r in w.values())
    rows, reference, loads = [], None, [os.getloadavg()[0]]
    best: dict[tuple, dict] = {}
    identical: dict[tuple, str] = {}
    with tempfile.TemporaryDirectory() as tmp:
        store = FeatureStore(Path(tmp))
        for _ in range(args.repeats):
            for threads in args.threads:
                for variant in ("before", "after"):
                    torch.set_num_threads(threads)
                    set_variant(stage, variant)
                    seconds, feats = parts(stage, context, work, store)
                    if reference is None:
                        reference = feats
                    same = all(np.array_equal(feats[k], reference[k]) for k in reference)
                    identical[(variant, threads)] = "yes" if same else f"no (max abs {max_diff(feats, reference):.3g})"
                    key = (variant, threads)
                    if key not in best or seconds["model"] < best[key]["model"]:
                        best[key] = seconds
                    loads.append(os.getloadavg()[0])
                    print(f"  {variant:6s} {threads} thread(s): " + ", ".join(f"{k} {v:.2f} s" for k, v in seconds.items()),
                          flush=True)
    for (variant, threads), seconds in best.items():
        rows.append({"variant": variant, "threads": threads, **{k: round(v, 2) for k, v in seconds.items()},
                     "faces_per_s_model": round(n_faces / seconds["model"], 1),
                     "identical_to_before": identical[(variant, threads)]})
    print(f"{n_faces} faces, {len(work)} dialogues; load average (1 min) during the run: {[round(x, 2) for x in loads]}")
    print(table(rows, ["variant", "threads", "decode", "crop", "model", "write", "faces_per_s_model", "identical_to_before"]))
    return rows, n_faces, loads


def sweep(args, context: RunContext) -> tuple[list[dict], list[float]]:
    """DenseNet alone on the sample's crops: batch size x threads x memory format x grad mode."""
    stage = FaceStage(FaceConfig(seed=context.profile.seed), "cpu", context.media.timing.fps)
    with open_speaker_faces(context) as faces:
        work = [(d, w) for d in context.corpus if (w := wanted_rows(d, faces))][:1]
    crops = [c for d, w in work for cs in stage.crops(d, w, context).values() for c in cs][:args.sweep_faces]
    x = preprocess(np.stack(crops))
    model = stage.model
    torch.set_num_threads(1)
    with torch.inference_mode():
        reference = model.forward_features(x).numpy()

    def run(batch, threads, channels_last, grad_mode):
        torch.set_num_threads(threads)
        model.to(memory_format=torch.channels_last if channels_last else torch.contiguous_format)
        mode = torch.inference_mode() if grad_mode == "inference_mode" else torch.no_grad()
        with mode:
            t = time.perf_counter()
            outs = [model.forward_features(x[i:i + batch].contiguous(
                memory_format=torch.channels_last if channels_last else torch.contiguous_format))
                for i in range(0, len(x), batch)]
            seconds = time.perf_counter() - t
        return torch.cat(outs).numpy(), seconds

    variants = [(b, t, False, "inference_mode") for t in args.threads for b in args.batches]
    variants += [(b, 1, True, "inference_mode") for b in (32, max(args.batches))]
    variants += [(32, 1, False, "no_grad")]
    best, diffs, loads = {}, {}, [os.getloadavg()[0]]
    for _ in range(args.repeats):
        for v in variants:
            out, seconds = run(*v)
            best[v] = min(best.get(v, float("inf")), seconds)
            diffs[v] = float(np.abs(out - reference).max())
        loads.append(os.getloadavg()[0])
    model.to(memory_format=torch.contiguous_format)
    rows = [{"batch": b, "threads": t, "channels_last": cl, "mode": m, "faces_per_s": round(len(x) / best[(b, t, cl, m)], 1),
             "max_abs_diff_vs_one_batch": diffs[(b, t, cl, m)]} for (b, t, cl, m) in variants]
    print(f"{len(x)} faces; load average (1 min) during the sweep: {[round(v, 2) for v in loads]}")
    print(table(rows, ["batch", "threads", "channels_last", "mode", "faces_per_s", "max_abs_diff_vs_one_batch"]))
    return rows, loads


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, required=True, help="output directory holding the sample's speaker_faces")
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--sweep", action="store_true", help="also time DenseNet alone against batch size etc.")
    parser.add_argument("--sweep-faces", type=int, default=128)
    parser.add_argument("--stage", action="store_true", help="also time the stage's process() per variant")
    parser.add_argument("--no-parts", action="store_true", help="skip the per-part timing")
    parser.add_argument("--batches", type=int, nargs="+", default=[16, 32, 64, 128, 256])
    args = parser.parse_args()
    context = sample_context(args.out)
    result = {"cpus": os.cpu_count(), "torch": torch.__version__}
    if args.sweep:
        result["sweep"], result["sweep_load_average"] = sweep(args, context)
    if not args.no_parts:
        rows, n_faces, loads = stage_parts(args, context)
        result.update({"faces": n_faces, "parts_best_of": args.repeats, "parts": rows, "load_average_1min": loads})
    if args.stage:
        result["stage"], result["stage_load_average_1min"] = whole_stage(args, context)
    (BENCH_DIR / "bench_visual_parts.json").write_text(json.dumps(result, indent=2, default=str) + "\n")


if __name__ == "__main__":
    main()
