"""``m3ed train``: train and evaluate the downstream models like Tables 5 and 6 of the paper.

Reads a feature directory (``manifest.jsonl`` with the TV-independent split + ``features/``),
trains one registered model on chosen modalities once per seed, and reports weighted-F1 on val and
test (sklearn ``f1_score(average="weighted")`` over real, labelled utterances), macro-F1 and
accuracy, as mean ± std over the seeds, and separately under the "authors' protocol" of their
``get_results.py``: of the seeds' runs, the one with the worst validation weighted-F1 is dropped and
the others averaged (the best 2 of 3).

Per seed: everything seeded (``random``, NumPy, torch) and deterministic algorithms on; AdamW with
the model's authors' settings unless given (learning rate, weight decay, class weights, batch size,
epochs, learning-rate schedule, early stop: the ``default_*`` attributes of its config); one epoch =
the train dialogues in length-bucketed batches; after each epoch the validation weighted-F1 decides,
alone, which epoch's weights are kept and, where early stopping is on, when to stop (``patience``
epochs without improvement). The test split is evaluated once, with
the kept weights (no early stop before ``min_epochs``: at the authors' small learning rates
models sit at the majority class for the first epochs, and a flat val score there means nothing).
Mixed precision (bf16, else fp16 with loss scaling) on CUDA.

Outputs in ``--out``: ``results.json`` (config, per-seed metrics and histories, summary),
``results.md`` (the paper's table layout), ``confusion.png`` (test confusion matrix, all seeds
summed, rows normalised) and ``checkpoints/seed{N}.pt`` (model name + config + weights + metrics;
``m3ed.models.registry.load_trained_model`` rebuilds it and loads it strictly). ``--grid`` runs
every model on every modality combination and writes the full table.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import random
import sys
import time
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from sklearn.metrics import accuracy_score, confusion_matrix, f1_score

from .. import __version__
from ..corpus import EMOTIONS
from ..models.data import (IGNORE_INDEX, DialogueData, length_bucketed_batches, modality_combinations,
                              parse_features_map, parse_modalities)
from ..models.registry import SIZES, create_model, get_model_entry, list_models
from ..files import atomic_open, atomic_write_text, make_folder

__all__ = ["TrainConfig", "add_train_parser", "evaluate", "train", "write_table"]

DISPLAY_NAMES = {"multienc": "MultiEnc (Frm)", "multienc_pooled": "UttBaseline (MultiEnc, Utt)",
                 "dialoguernn": "DialogueRNN", "dialoguegcn": "DialogueGCN", "mmgcn": "MMGCN", "mdi": "MDI"}
BASELINE = "multienc_pooled"   # the row that Table 6's (+x.x) differences refer to
SCHEDULES = ("constant", "cosine")
MDI_VERSIONS = ("v1", "v2")
# The two MDI versions of the authors' history (MEmoConv codes/mdi/run_htrm.sh, run_htrm.py):
# v1 (452bbfd-ba3f3dc): one dialogue per batch, 15 epochs, dialogues in a fixed length-sorted order;
# v2 (e75d7dd, HEAD): batch 32, 50 epochs, shuffled, and unimodal runs under global attention only.
_MDI_V2 = {"batch_size": 32, "epochs": 50}


@dataclass
class TrainConfig:
    features: Path
    model: str = "mdi"
    modalities: tuple[str, ...] = ("l", "a", "v")
    seeds: tuple[int, ...] = (0, 1, 2)
    out: Path | None = None                  # default: runs/{model}_{modalities}
    epochs: int | None = None                # None (here and below): the model's authors' setting
    batch_size: int | None = None            # dialogues per batch
    lr: float | None = None
    weight_decay: float | None = None
    class_weights: bool | None = None        # loss weighted by 1/prior of the train labels
    schedule: str | None = None              # "constant" or "cosine" (per step, to 0 at the last epoch)
    early_stop: bool | None = None           # False: run every epoch (the best val epoch is still kept)
    patience: int = 10                       # epochs without a better val weighted-F1
    min_epochs: int = 20                     # no early stop before (slow starters sit at the majority class)
    device: str = "auto"                     # auto, cpu, cuda, cuda:1, ...
    features_map: dict[str, str] = field(default_factory=dict)
    model_config: dict[str, Any] = field(default_factory=dict)   # overrides of the model's config
    size: str = "paper"                      # "paper": the authors' sizes; "tiny": small (tests, demos)
    max_frames: int | None = None            # frame-level models: frames kept per utterance
    grad_clip: float | None = 5.0
    shuffle: bool | None = None              # train order shuffled per epoch (None: True, MDI v1 False)
    mdi_version: str = "v1"                  # MDI_VERSIONS; see the module constants
    mdi_frozen_fusion: bool = False          # MDI: leave the early-fusion Linear untrained, as their runs
    grid: bool = False
    grid_models: tuple[str, ...] = ()        # --grid: these models (default: all)
    verbose: bool = True

    def __post_init__(self) -> None:
        self.features = Path(self.features)
        self.out = Path(self.out) if self.out is not None else None
        self.modalities = parse_modalities(self.modalities)
        self.seeds = tuple(int(s) for s in self.seeds)
        self.features_map = parse_features_map(self.features_map)
        if not self.seeds:
            raise ValueError("give at least one seed")
        if min(self.epochs or 1, self.batch_size or 1, self.patience) < 1:
            raise ValueError(f"epochs ({self.epochs}), batch size ({self.batch_size}) and patience "
                             f"({self.patience}) must be at least 1")
        if self.schedule not in (None, *SCHEDULES):
            raise ValueError(f"schedule {self.schedule!r}: use {' or '.join(SCHEDULES)}")
        if self.mdi_version not in MDI_VERSIONS:
            raise ValueError(f"MDI version {self.mdi_version!r}: use {' or '.join(MDI_VERSIONS)}")

    def resolved(self) -> "TrainConfig":
        """This config with every unset training setting taken from the model's authors' defaults."""
        c = get_model_entry(self.model).config_cls
        chosen = {"epochs": c.default_epochs, "batch_size": c.default_batch_size, "lr": c.default_lr,
                  "weight_decay": c.default_weight_decay, "class_weights": c.default_class_weights,
                  "schedule": c.default_schedule, "early_stop": c.default_early_stop, "shuffle": True}
        if self.is_mdi:
            chosen.update(_MDI_V2 if self.mdi_version == "v2" else {"shuffle": False})
        return replace(self, **{k: v for k, v in chosen.items() if getattr(self, k) is None})

    @property
    def is_mdi(self) -> bool:
        return get_model_entry(self.model).name == "mdi"

    def to_json(self) -> dict[str, Any]:
        record = asdict(self)
        record["features"], record["out"] = str(self.features), str(self.out) if self.out else None
        return record


# ---- helpers --------------------------------------------------------------------------------------
def _log(config: TrainConfig, text: str) -> None:
    if config.verbose:
        print(text, flush=True)


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"--device {name}: CUDA is not available here (torch {torch.__version__}); use --device cpu")
    return device


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    torch.cuda.manual_seed_all(seed)


class _Deterministic:
    """Deterministic algorithms while training; the previous setting is restored afterwards."""

    def __enter__(self) -> None:
        self.previous = (torch.are_deterministic_algorithms_enabled(),
                         torch.is_deterministic_algorithms_warn_only_enabled(),
                         torch.backends.cudnn.benchmark, torch.backends.cudnn.deterministic)
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True, warn_only=True)
        torch.backends.cudnn.benchmark, torch.backends.cudnn.deterministic = False, True

    def __exit__(self, *exc) -> None:
        enabled, warn_only, benchmark, deterministic = self.previous
        torch.use_deterministic_algorithms(enabled, warn_only=warn_only)
        torch.backends.cudnn.benchmark, torch.backends.cudnn.deterministic = benchmark, deterministic


def _autocast(device: torch.device):
    if device.type != "cuda":
        return torch.autocast("cpu", enabled=False)
    dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return torch.autocast("cuda", dtype=dtype)


def metrics(y_true: np.ndarray, y_pred: np.ndarray) -> dict[str, float]:
    """Weighted-F1 (the paper's WF1), macro-F1 and accuracy, as fractions."""
    return {
        "weighted_f1": float(f1_score(y_true, y_pred, average="weighted", zero_division=0)),
        "macro_f1": float(f1_score(y_true, y_pred, average="macro", labels=range(len(EMOTIONS)), zero_division=0)),
        "accuracy": float(accuracy_score(y_true, y_pred)),
    }


@torch.no_grad()
def predict(model: torch.nn.Module, data: DialogueData, split: str, batch_size: int,
            device: torch.device) -> tuple[np.ndarray, np.ndarray]:
    """Labels and predictions of the split's real, labelled utterances, in a fixed order."""
    model.eval()
    truth, predictions = [], []
    for batch in data.batches(split, batch_size, shuffle=False):
        batch = batch.to(device)
        with _autocast(device):
            logits = model(batch)
        keep = batch.mask & (batch.labels != IGNORE_INDEX)
        truth.append(batch.labels[keep].cpu().numpy())
        predictions.append(logits.float().argmax(-1)[keep].cpu().numpy())
    return np.concatenate(truth), np.concatenate(predictions)


def evaluate(model: torch.nn.Module, data: DialogueData, split: str, batch_size: int,
             device: torch.device) -> tuple[dict[str, float], np.ndarray]:
    y_true, y_pred = predict(model, data, split, batch_size, device)
    return metrics(y_true, y_pred), confusion_matrix(y_true, y_pred, labels=range(len(EMOTIONS)))


def majority_floor(data: DialogueData) -> dict[str, float]:
    """Weighted-F1 of always predicting the most frequent train emotion (the floor to beat)."""
    majority = int(np.bincount(data.labels("train"), minlength=len(EMOTIONS)).argmax())
    return {split: metrics(y, np.full_like(y, majority))["weighted_f1"]
            for split in ("val", "test") for y in [data.labels(split)]}


def _class_weights(data: DialogueData) -> torch.Tensor:
    counts = np.bincount(data.labels("train"), minlength=len(EMOTIONS)).astype(np.float64)
    weights = np.where(counts > 0, counts.sum() / (len(EMOTIONS) * np.maximum(counts, 1)), 0.0)
    return torch.tensor(weights, dtype=torch.float32)


def _model_overrides(entry_name: str, overrides: dict[str, Any], strict: bool) -> dict[str, Any]:
    """``field=value`` (every model that has the field) and ``model.field=value`` (that model only)."""
    entry = get_model_entry(entry_name)
    known = {f.name for f in fields(entry.config_cls)}
    chosen = {}
    for key, value in overrides.items():
        target, _, name = key.rpartition(".")
        if target and get_model_entry(target).name != entry.name:
            continue
        if name in known:
            chosen[name] = value
        elif strict or target:
            raise ValueError(f"--model-config {key}: {entry.config_cls.__name__} has no field {name!r}; "
                             f"its fields: {', '.join(sorted(known))}")
    return chosen


# ---- one model, one modality set -----------------------------------------------------------------
@dataclass
class _Run:
    """What one seed's training needs besides the data."""

    model: torch.nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    scaler: torch.amp.GradScaler
    class_weights: torch.Tensor | None
    lr: float
    weight_decay: float


def _build(config: TrainConfig, data: DialogueData, seed: int, device: torch.device) -> _Run:
    entry = get_model_entry(config.model)
    seed_everything(seed)
    overrides = _model_overrides(entry.name, config.model_config, strict=not config.grid)
    if config.is_mdi and config.mdi_version == "v2" and len(data.dims) == 1:
        overrides.setdefault("interactions", ("global",))   # their v2 unimodal runs: --attn_type global
    model = create_model(entry.name, size=config.size, input_dims=data.dims,
                         num_speakers=max(2, data.num_speakers), **overrides).to(device)
    optimizer = torch.optim.AdamW(_trained_parameters(model, config), lr=config.lr, weight_decay=config.weight_decay)
    use_fp16 = device.type == "cuda" and not torch.cuda.is_bf16_supported()
    return _Run(model, optimizer, _scheduler(optimizer, config, data),
                torch.amp.GradScaler("cuda", enabled=use_fp16),
                _class_weights(data).to(device) if config.class_weights else None, config.lr, config.weight_decay)


def _trained_parameters(model: torch.nn.Module, config: TrainConfig) -> list[torch.nn.Parameter]:
    """What the optimiser updates. ``--mdi-frozen-fusion``: all but MDI's early-fusion Linear, as
    the authors' ``--bert_frozen`` name filter (run_htrm.py ``build_optimizer_and_scheduler``) leaves
    out ``bert_encoder.fc``. That layer still requires grad, so, as in their trainer.py, its gradient
    is never zeroed (``zero_grad`` reaches the optimiser's parameters only), accumulates over the
    steps and counts in ``clip_grad_norm_`` over all the model's parameters."""
    if not config.mdi_frozen_fusion or (config.grid and not config.is_mdi):
        return list(model.parameters())
    if not config.is_mdi:
        raise ValueError(f"--mdi-frozen-fusion applies to MDI only, not {config.model!r}")
    return [p for name, p in model.named_parameters() if not name.startswith("embed.")]


def _scheduler(optimizer: torch.optim.Optimizer, config: TrainConfig,
               data: DialogueData) -> torch.optim.lr_scheduler.LRScheduler:
    """``constant``, or ``cosine``: per optimiser step from the full rate down to 0 over all epochs,
    no warm-up (``transformers.get_scheduler("cosine")`` as the MDI authors ran it)."""
    if config.schedule == "constant":
        return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0)
    steps = config.epochs * len(length_bucketed_batches(data.split("train"), config.batch_size, shuffle=False))
    return torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: max(0.0, 0.5 * (1.0 + math.cos(math.pi * min(step, steps) / max(steps, 1)))))


def _train_epoch(run: _Run, config: TrainConfig, data: DialogueData, device: torch.device, seed: int) -> float:
    """One pass over the train dialogues (length-bucketed, shuffled per seed and epoch); mean loss."""
    run.model.train()
    total, count = 0.0, 0
    for batch in data.batches("train", config.batch_size, shuffle=config.shuffle, seed=seed):
        batch = batch.to(device)
        with _autocast(device):
            logits = run.model(batch)
        loss = F.cross_entropy(logits.float().flatten(0, 1), batch.labels.flatten(),
                               weight=run.class_weights, ignore_index=IGNORE_INDEX)
        run.optimizer.zero_grad(set_to_none=True)
        run.scaler.scale(loss).backward()
        if config.grad_clip:   # over every parameter, a frozen one's stale gradient included (see above)
            run.scaler.unscale_(run.optimizer)
            torch.nn.utils.clip_grad_norm_(run.model.parameters(), config.grad_clip)
        run.scaler.step(run.optimizer)
        run.scaler.update()
        run.scheduler.step()
        n = int((batch.labels != IGNORE_INDEX).sum())
        total, count = total + float(loss.detach()) * n, count + n
    return total / max(count, 1)


def _save_checkpoint(path: Path, record: dict[str, Any]) -> None:
    with atomic_open(path) as f:   # torch.save given a path hides a full disk behind "unexpected pos"
        torch.save(record, f)


def _train_seed(config: TrainConfig, data: DialogueData, seed: int, device: torch.device,
                out: Path, tag: str) -> dict[str, Any]:
    """Train with early stopping on val weighted-F1; evaluate the kept weights on val and test."""
    run = _build(config, data, seed, device)
    best: dict[str, Any] = {"score": -1.0, "epoch": 0, "state": None}
    history = []
    for epoch in range(1, config.epochs + 1):
        started = time.perf_counter()
        loss = _train_epoch(run, config, data, device, seed=seed * 100_003 + epoch)
        train_seconds = time.perf_counter() - started
        val, _ = evaluate(run.model, data, "val", config.batch_size, device)
        if val["weighted_f1"] > best["score"]:
            best = {"score": val["weighted_f1"], "epoch": epoch,
                    "state": {k: v.detach().cpu().clone() for k, v in run.model.state_dict().items()}}
        history.append({"epoch": epoch, "loss": loss, "val_weighted_f1": val["weighted_f1"],
                        "lr": run.optimizer.param_groups[0]["lr"],
                        "train_seconds": train_seconds, "seconds": time.perf_counter() - started})
        _log(config, f"[{tag} seed {seed}] epoch {epoch:3d}/{config.epochs}  loss {loss:.4f}  "
                     f"val WF1 {100 * val['weighted_f1']:5.2f}  best {100 * best['score']:5.2f} @ {best['epoch']}"
                     f"  {history[-1]['seconds']:.1f}s")
        if config.early_stop and epoch >= config.min_epochs and epoch - best["epoch"] >= config.patience:
            _log(config, f"[{tag} seed {seed}] early stop: no better val WF1 for {config.patience} epochs")
            break

    run.model.load_state_dict(best["state"])
    val, _ = evaluate(run.model, data, "val", config.batch_size, device)
    test, confusion = evaluate(run.model, data, "test", config.batch_size, device)
    checkpoint = out / "checkpoints" / f"seed{seed}.pt"
    _save_checkpoint(checkpoint, {
        "model_name": run.model.model_name, "model_config": asdict(run.model.config), "state_dict": best["state"],
        "feature_sets": dict(data.feature_sets), "modalities": list(data.modalities), "seed": seed,
        "best_epoch": best["epoch"], "metrics": {"val": val, "test": test}, "emotions": list(EMOTIONS),
        "train_config": config.to_json(), "package_version": __version__,
    })
    _log(config, f"[{tag} seed {seed}] best epoch {best['epoch']}: val WF1 {100 * val['weighted_f1']:.2f}  "
                 f"test WF1 {100 * test['weighted_f1']:.2f}  (macro-F1 {100 * test['macro_f1']:.2f}, "
                 f"acc {100 * test['accuracy']:.2f})")
    return {"seed": seed, "best_epoch": best["epoch"], "epochs_run": len(history), "lr": run.lr,
            "weight_decay": run.weight_decay, "val": val, "test": test, "confusion_test": confusion.tolist(),
            "checkpoint": str(checkpoint.relative_to(out)), "history": history}


def _summary(runs: list[dict[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for split in ("val", "test"):
        out[split] = {}
        for key in ("weighted_f1", "macro_f1", "accuracy"):
            values = np.array([r[split][key] for r in runs])
            out[split][key] = {"mean": float(values.mean()),
                               "std": float(values.std(ddof=1)) if len(values) > 1 else 0.0}
    out["seeds"] = len(runs)
    out["authors_protocol"] = authors_protocol(runs)
    return out


def authors_protocol(runs: list[dict[str, Any]]) -> dict[str, Any] | None:
    """The M3ED authors' reporting (their ``get_results.py``): drop the run with the lowest validation
    weighted-F1 (the first of equals), average the rest. None with fewer than two runs."""
    if len(runs) < 2:
        return None
    worst = int(np.argmin([r["val"]["weighted_f1"] for r in runs]))
    kept = [r for i, r in enumerate(runs) if i != worst]
    out: dict[str, Any] = {split: {key: float(np.mean([r[split][key] for r in kept]))
                                   for key in ("weighted_f1", "macro_f1", "accuracy")} for split in ("val", "test")}
    out["seeds"] = [r["seed"] for r in kept]
    out["dropped_seed"] = runs[worst]["seed"]
    return out


def _run_one(config: TrainConfig, device: torch.device) -> dict[str, Any]:
    config = config.resolved()
    entry = get_model_entry(config.model)
    mods = ",".join(config.modalities)
    out = config.out or Path("runs") / f"{entry.name}_{''.join(config.modalities)}"
    make_folder(out)   # now: a folder that cannot be made stops the run before training
    tag = f"{entry.name} {{{mods}}}"
    with DialogueData(config.features, config.modalities, config.features_map, level=entry.input_level,
                      max_frames=config.max_frames) as data:
        _log(config, f"[{tag}] {data.describe()}")
        if not data.tv_independent:
            _log(config, f"[{tag}] warning: some show appears in two splits; the split is not TV-independent")
        runs = [_train_seed(config, data, seed, device, out, tag) for seed in config.seeds]
        floor = majority_floor(data)
        results = {
            "model": entry.name, "modalities": mods, "feature_sets": dict(data.feature_sets),
            "dims": dict(data.dims), "input_level": entry.input_level, "device": str(device),
            "tv_independent": data.tv_independent, "majority_floor_weighted_f1": floor,
            "summary": _summary(runs), "runs": runs, "train_config": config.to_json(),
            "package_version": __version__,
        }
    s = results["summary"]
    _log(config, f"[{tag}] over {len(runs)} seed(s): weighted-F1 val {_cell(s['val']['weighted_f1'])}  "
                 f"test {_cell(s['test']['weighted_f1'])}; test macro-F1 {_cell(s['test']['macro_f1'])}, "
                 f"accuracy {_cell(s['test']['accuracy'])} (majority-class floor: test WF1 {100 * floor['test']:.2f})")
    if s["authors_protocol"]:
        kept = s["authors_protocol"]
        _log(config, f"[{tag}] authors' protocol (seed {kept['dropped_seed']} dropped, lowest val): weighted-F1 "
                     f"val {100 * kept['val']['weighted_f1']:.2f}  test {100 * kept['test']['weighted_f1']:.2f}")
    _write_json(out / "results.json", results)
    write_table([results], out / "results.md")
    plot_confusion(np.sum([r["confusion_test"] for r in runs], axis=0),
                   out / "confusion.png", f"{DISPLAY_NAMES.get(entry.name, entry.name)} {{{mods}}}, test")
    return results


def train(config: TrainConfig) -> dict[str, Any]:
    """Train and evaluate; returns the results (also written to ``config.out``)."""
    device = resolve_device(config.device)
    with _Deterministic():
        if not config.grid:
            return _run_one(config, device)
        return _run_grid(config, device)


def _run_grid(config: TrainConfig, device: torch.device) -> dict[str, Any]:
    out = config.out or Path("runs") / "grid"
    models = [get_model_entry(m).name for m in config.grid_models] if config.grid_models else list_models()
    all_results, skipped = [], []
    for name in models:
        for mods in modality_combinations():
            sub = replace(config, model=name, modalities=mods, grid=True, out=out / name / "".join(mods))
            try:
                all_results.append(_run_one(sub, device))
            except FileNotFoundError as e:   # a feature set this model needs is not in the directory
                skipped.append({"model": name, "modalities": ",".join(mods), "reason": str(e)})
                _log(config, f"[grid] skipped {name} {{{','.join(mods)}}}: {e}")
    grid = {"results": [{k: r[k] for k in ("model", "modalities", "feature_sets", "summary",
                                           "majority_floor_weighted_f1")} for r in all_results],
            "skipped": skipped, "train_config": config.to_json(), "package_version": __version__}
    _write_json(out / "results.json", grid)
    write_table(all_results, out / "results.md")
    _log(config, f"[grid] {len(all_results)} runs, {len(skipped)} skipped; table: {out / 'results.md'}")
    return grid


# ---- outputs --------------------------------------------------------------------------------------
def _write_json(path: Path, record: dict) -> None:
    atomic_write_text(path, json.dumps(record, indent=2, ensure_ascii=False) + "\n")


def _cell(stat: dict[str, float]) -> str:
    return f"{100 * stat['mean']:.2f} ± {100 * stat['std']:.2f}"


def write_table(results: Sequence[dict[str, Any]], path: Path) -> str:
    """Markdown tables in the paper's layouts: Table 6 (model × split rows, modality columns,
    weighted-F1 mean ± std, (+x.x) against the utterance baseline), the same under the authors'
    protocol (mean of the best 2 of 3 runs by validation score) when there are several seeds and,
    when both MultiEnc variants are present, Table 5 (modality rows, Frm/Utt × val/test columns)."""
    combos = [",".join(c) for c in modality_combinations()]
    cells = {(r["model"], r["modalities"]): r["summary"] for r in results}
    used = [c for c in combos if any(m == c for _, m in cells)]
    models = [m for m in list_models() if any(k[0] == m for k in cells)]
    seeds = sorted({r["summary"]["seeds"] for r in results})
    lines = [f"Weighted-F1 (%) mean ± std over {'/'.join(map(str, seeds))} seed(s); "
             f"(+x.x): difference of the mean from the utterance baseline ({DISPLAY_NAMES[BASELINE]}).", ""]
    lines += _table6(cells, used, models, lambda stat, split: (
        _cell(stat[split]["weighted_f1"]), stat[split]["weighted_f1"]["mean"]))
    if any(stat.get("authors_protocol") for stat in cells.values()):
        lines += ["", "Authors' protocol (their `get_results.py`): of the seeds' runs, the one with the lowest "
                      "validation weighted-F1 is dropped and the others averaged (the best 2 of 3); "
                      "weighted-F1 (%).", ""]

        def kept_mean(stat: dict, split: str) -> tuple[str, float] | None:
            kept = stat.get("authors_protocol")
            return (f"{100 * kept[split]['weighted_f1']:.2f}", kept[split]["weighted_f1"]) if kept else None

        lines += _table6(cells, used, models, kept_mean)
    if any(m == "multienc" for m, _ in cells) and any(m == BASELINE for m, _ in cells):
        lines += ["", "Utterance-level baseline (Table 5 layout): MultiEnc on frame-level (Frm) and "
                      "utterance-level (Utt) features, weighted-F1 (%).", "",
                  "| Modalities | Frm val | Frm test | Utt val | Utt test |", "|---|---|---|---|---|"]
        for combo in used:
            row = []
            for model in ("multienc", BASELINE):
                stat = cells.get((model, combo))
                row += [_cell(stat[s]["weighted_f1"]) if stat else "" for s in ("val", "test")]
            lines.append("| {" + combo + "} | " + " | ".join(row) + " |")
    text = "\n".join(lines) + "\n"
    atomic_write_text(path, text)
    return text


def _table6(cells: dict, used: list[str], models: list[str], value) -> list[str]:
    """Table 6 rows; ``value(summary, split)`` gives the cell's text and the mean it compares."""
    lines = ["| Model | Metric | " + " | ".join("{" + c + "}" for c in used) + " |",
             "|---|---|" + "---|" * len(used)]
    for model in models:
        for split in ("val", "test"):
            row = []
            for combo in used:
                stat = cells.get((model, combo))
                got = value(stat, split) if stat is not None else None
                if got is None:
                    row.append("")
                    continue
                text, mean = got
                base = cells.get((BASELINE, combo))
                base_got = value(base, split) if base is not None else None
                if base_got is not None and model != BASELINE:
                    text += f" ({100 * (mean - base_got[1]):+.1f})"
                row.append(text)
            label = DISPLAY_NAMES.get(model, model) if split == "val" else ""
            lines.append(f"| {label} | {split} | " + " | ".join(row) + " |")
    return lines


def plot_confusion(matrix: np.ndarray, path: Path, title: str) -> None:
    """Row-normalised confusion matrix (true emotion rows, predicted columns) as a PNG."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    matrix = np.asarray(matrix, dtype=np.float64)
    rates = matrix / np.maximum(matrix.sum(1, keepdims=True), 1)
    fig, ax = plt.subplots(figsize=(6.4, 5.6))
    image = ax.imshow(rates, cmap="Blues", vmin=0, vmax=1)
    ax.set_xticks(range(len(EMOTIONS)), EMOTIONS, rotation=45, ha="right")
    ax.set_yticks(range(len(EMOTIONS)), EMOTIONS)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(title)
    for i in range(len(EMOTIONS)):
        for j in range(len(EMOTIONS)):
            ax.text(j, i, f"{100 * rates[i, j]:.0f}", ha="center", va="center", fontsize=8,
                    color="white" if rates[i, j] > 0.5 else "black")
    fig.colorbar(image, ax=ax, fraction=0.046, pad=0.04)
    fig.tight_layout()
    try:
        with atomic_open(path) as f:
            fig.savefig(f, format="png", dpi=120)
    finally:
        plt.close(fig)


# ---- CLI ------------------------------------------------------------------------------------------
def _key_values(items: Sequence[str]) -> dict[str, Any]:
    values = {}
    for item in items:
        if "=" not in item:
            raise argparse.ArgumentTypeError(f"--model-config {item!r}: expected FIELD=VALUE or MODEL.FIELD=VALUE")
        key, raw = item.split("=", 1)
        try:
            values[key.strip()] = json.loads(raw)
        except json.JSONDecodeError:
            values[key.strip()] = raw
    return values


def add_train_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Add ``m3ed train`` to a CLI's subparsers."""
    parser = subparsers.add_parser("train", help="train and evaluate a downstream model (Tables 5/6)",
                                   description=__doc__.split("\n\n")[0])
    defaults = TrainConfig(features=Path("."))
    parser.add_argument("--features", required=True, type=Path, help="feature directory (manifest.jsonl + features/)")
    parser.add_argument("--model", help=f"model name ({', '.join(list_models())}); not needed with --grid")
    parser.add_argument("--modalities", default="l,a,v", help="subset of l,a,v (default %(default)s)")
    parser.add_argument("--seeds", default="0,1,2", help="comma-separated seeds (default %(default)s)")
    parser.add_argument("--out", type=Path, help="output directory (default runs/MODEL_MODALITIES, runs/grid)")
    parser.add_argument("--epochs", type=int, help="maximum epochs (default: the model's authors', e.g. MDI 15)")
    parser.add_argument("--batch-size", type=int, help="dialogues per batch (default: the model's authors', e.g. MDI 1)")
    parser.add_argument("--lr", type=float, help="learning rate (default: the model's authors')")
    parser.add_argument("--weight-decay", type=float, help="AdamW weight decay (default: the model's authors')")
    parser.add_argument("--class-weights", action=argparse.BooleanOptionalAction, default=None,
                        help="weight the loss by 1/prior of the train labels (default: as the model's authors: "
                             "on for DialogueRNN and DialogueGCN)")
    parser.add_argument("--schedule", choices=SCHEDULES,
                        help="learning-rate schedule (default: the model's authors': cosine for MDI, else constant)")
    parser.add_argument("--early-stop", action=argparse.BooleanOptionalAction, default=None,
                        help="stop on validation patience (default: as the model's authors: off for MDI)")
    parser.add_argument("--patience", type=int, default=defaults.patience,
                        help="stop after this many epochs without a better val weighted-F1 (default %(default)s)")
    parser.add_argument("--min-epochs", type=int, default=defaults.min_epochs,
                        help="never stop before this epoch (default %(default)s)")
    parser.add_argument("--device", default="auto", help="auto, cpu or cuda (default %(default)s)")
    parser.add_argument("--features-map", default=None,
                        help="modality=feature_set pairs, e.g. l=roberta_mean,a=wav2vec2_mean "
                             "(default l=roberta_ft_cls|roberta_mean, a=wav2vec2_ft_last|wav2vec2_mean, v=denseface_mean)")
    parser.add_argument("--model-config", nargs="*", default=[], metavar="FIELD=VALUE",
                        help="override model config fields, e.g. hidden=256 mdi.fusion=per_block")
    parser.add_argument("--size", choices=SIZES, default="paper",
                        help="model sizes: the authors' (paper) or small ones for a quick check (tiny)")
    parser.add_argument("--max-frames", type=int, help="frame-level models: keep at most this many frames per utterance")
    parser.add_argument("--mdi-version", choices=MDI_VERSIONS, default="v1",
                        help="MDI: v1 (default), one dialogue per batch, 15 epochs, length-sorted order; v2, batch 32, "
                             "50 epochs, global attention only for unimodal runs (the authors' later version)")
    parser.add_argument("--mdi-frozen-fusion", action="store_true",
                        help="MDI: leave the early-fusion Linear untrained (its stale gradient still counted in the "
                             "clip norm), as every M3ED run of the authors' code did")
    parser.add_argument("--grid", action="store_true", help="every model on every modality combination")
    parser.add_argument("--models", default="", help="with --grid: comma-separated subset of models")
    parser.add_argument("--quiet", action="store_true", help="no per-epoch progress")
    parser.set_defaults(func=_run)
    return parser


def _run(args: argparse.Namespace) -> int:
    if not args.grid and not args.model:
        print("m3ed train: give --model NAME (or --grid); models: " + ", ".join(list_models()), file=sys.stderr)
        return 2
    try:
        config = TrainConfig(
            features=args.features, model=args.model or "mdi", modalities=args.modalities,
            seeds=tuple(int(s) for s in args.seeds.split(",") if s.strip()), out=args.out, epochs=args.epochs,
            batch_size=args.batch_size, lr=args.lr, weight_decay=args.weight_decay, patience=args.patience,
            min_epochs=args.min_epochs,
            device=args.device, features_map=args.features_map, model_config=_key_values(args.model_config),
            size=args.size, class_weights=args.class_weights, schedule=args.schedule,
            early_stop=args.early_stop, max_frames=args.max_frames, grid=args.grid,
            mdi_version=args.mdi_version, mdi_frozen_fusion=args.mdi_frozen_fusion,
            grid_models=tuple(m for m in args.models.split(",") if m.strip()), verbose=not args.quiet)
        train(config)
    except (FileNotFoundError, ValueError, KeyError, argparse.ArgumentTypeError) as e:
        print(f"m3ed train: {e.args[0] if isinstance(e, KeyError) else e}", file=sys.stderr)
        return 1
    return 0

