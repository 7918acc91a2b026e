"""Seconds per training epoch of every downstream model on an M3ED-sized synthetic feature set.

    python bench/bench_train.py [--data DIR] [--epochs 2] [--models mdi,dialoguernn] [--device cpu]

Builds (once; reused when ``--data`` already holds it) a synthetic directory shaped like M3ED:
990 dialogues of 9-40 utterances (mean ~24.5; M3ED: 24.7), feature dimensions 768 / 1024 / 342,
all utterance-level sets and short frame-level sets (4-16 tokens, 6-24 audio frames, 3-12 face
frames per utterance; real wav2vec2 frames are ~50 per second, so MultiEnc's real cost is higher).
Each model is trained for ``--epochs`` epochs at its paper sizes and default batch size, and the
train time per epoch (without validation) and the validation time are written to
``bench/train_results.json``. Features are meaningless here; speed is real. Not part of the tests.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from m3ed.corpus import Corpus  # noqa: E402
from m3ed.models.registry import list_models  # noqa: E402
from m3ed.pipelines.train import TrainConfig, train  # noqa: E402
from m3ed.synthetic import SyntheticConfig, make_synthetic  # noqa: E402

M3ED_SHAPE = SyntheticConfig(dialogues=990, seed=0, dims=(768, 1024, 342), min_utterances=9, max_utterances=40)


def ensure_data(path: Path) -> tuple[Path, float | None]:
    if (path / "manifest.jsonl").is_file() and (path / "features" / "wav2vec2_frame.h5").is_file():
        return path, None
    started = time.perf_counter()
    make_synthetic(path, M3ED_SHAPE, verbose=True)
    return path, time.perf_counter() - started


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, default=Path(tempfile.gettempdir()) / "m3ed_bench_train_data")
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--models", default=",".join(list_models()))
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--batch-size", type=int, help="dialogues per batch (default: each model's authors')")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch CPU threads (default 1: on a shared 2-core machine two threads ran 5-20x slower)")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "train_results.json")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    data, generation_seconds = ensure_data(args.data)
    corpus = Corpus.from_jsonl(data / "manifest.jsonl")
    utterances = sum(len(d.utterances) for d in corpus)
    record = {
        "what": "seconds per training epoch, paper-size models, M3ED-sized synthetic features",
        "machine": {"platform": platform.platform(), "python": platform.python_version(),
                    "torch": torch.__version__, "threads": torch.get_num_threads(), "cpus": os.cpu_count(),
                    "load_average": os.getloadavg(), "device": args.device},
        "data": {"dialogues": len(corpus), "utterances": utterances,
                 "utterances_per_dialogue": round(utterances / len(corpus), 2),
                 "train_dialogues": sum(d.split == "train" for d in corpus),
                 "dims": dict(zip("lav", M3ED_SHAPE.dims)), "generation_seconds": generation_seconds},
        "batch_size": args.batch_size, "epochs": args.epochs, "models": {},
    }
    for name in args.models.split(","):
        with tempfile.TemporaryDirectory() as out:
            config = TrainConfig(features=data, model=name, modalities="l,a,v", seeds=(0,), out=Path(out),
                                 epochs=args.epochs, patience=args.epochs, batch_size=args.batch_size,
                                 device=args.device, verbose=True)
            started = time.perf_counter()
            results = train(config)
            total = time.perf_counter() - started
        history = results["runs"][0]["history"]
        batch_size = results["train_config"]["batch_size"]
        per_epoch = [h["train_seconds"] for h in history]
        record["models"][name] = {
            "train_seconds_per_epoch": round(statistics.mean(per_epoch), 2),
            "train_seconds_each_epoch": [round(s, 2) for s in per_epoch],
            "val_seconds_per_epoch": round(statistics.mean(h["seconds"] - h["train_seconds"] for h in history), 2),
            "wall_seconds_total": round(total, 1), "input_level": results["input_level"], "batch_size": batch_size,
            "feature_sets": results["feature_sets"],
        }
        print(f"{name}: {record['models'][name]['train_seconds_per_epoch']} s per train epoch", flush=True)
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(record, indent=2) + "\n", encoding="utf-8")
    print(json.dumps(record["models"], indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
