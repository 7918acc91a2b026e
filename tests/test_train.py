"""``m3ed train`` end to end on synthetic dialogues with emotional inertia.

The synthetic labels persist within a speaker's turns, so a model that reads the dialogue should
clearly beat the utterance-level baseline (MultiEnc), and every model the majority-class floor.
"""
from __future__ import annotations

import argparse
import json
import math
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

from m3ed.models.data import DialogueData
from m3ed.models.registry import load_trained_model
from m3ed.pipelines.train import TrainConfig, add_train_parser, authors_protocol, metrics, predict, train
from m3ed.pipelines.make_synthetic import add_synthetic_parser
from m3ed.synthetic import SyntheticConfig, make_synthetic

DIALOGUE_MODELS = ("dialoguernn", "dialoguegcn", "mmgcn", "mdi")
BASELINE = "multienc_pooled"
MARGIN = 0.03      # weighted-F1, averaged over val and test
pytestmark = pytest.mark.usefixtures("one_torch_thread")   # tiny models: threads only cost


@pytest.fixture(scope="module")
def features_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("inertia")
    make_synthetic(out, SyntheticConfig(dialogues=120, seed=0, dims=(16, 16, 8), min_utterances=8,
                                        max_utterances=16))
    return out


@pytest.fixture(scope="module")
def trained(features_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, dict]:
    runs = tmp_path_factory.mktemp("runs")
    results = {}
    for name in (BASELINE, "multienc") + DIALOGUE_MODELS:
        config = TrainConfig(features=features_dir, model=name, modalities="l,a,v", seeds=(0,),
                             out=runs / name, epochs=20, patience=20, batch_size=16, lr=3e-3,
                             size="tiny", verbose=False)
        results[name] = train(config)
    return results


def score(results: dict) -> float:
    s = results["summary"]
    return (s["val"]["weighted_f1"]["mean"] + s["test"]["weighted_f1"]["mean"]) / 2


def test_the_synthetic_split_is_tv_independent(features_dir: Path) -> None:
    with DialogueData(features_dir, "l,a,v") as data:
        assert data.tv_independent
        shows = {split: {d.show for d in data.split(split)} for split in ("train", "val", "test")}
        assert all(shows.values()) and not (shows["train"] & shows["test"])


@pytest.mark.parametrize("name", DIALOGUE_MODELS)
def test_dialogue_models_beat_the_utterance_baseline(trained: dict, name: str) -> None:
    assert score(trained[name]) >= score(trained[BASELINE]) + MARGIN, (
        f"{name} {score(trained[name]):.3f} vs utterance baseline {score(trained[BASELINE]):.3f}")


@pytest.mark.parametrize("name", (BASELINE, "multienc") + DIALOGUE_MODELS)
def test_every_model_beats_the_majority_floor(trained: dict, name: str) -> None:
    floor = trained[name]["majority_floor_weighted_f1"]
    summary = trained[name]["summary"]
    for split in ("val", "test"):
        assert summary[split]["weighted_f1"]["mean"] >= floor[split] + 0.1, (name, split)


@pytest.mark.parametrize("name", (BASELINE, "mdi", "multienc"))
def test_outputs_are_written_and_the_checkpoint_loads_strictly(trained: dict, features_dir: Path, name: str) -> None:
    results = trained[name]
    out = Path(results["train_config"]["out"])
    on_disk = json.loads((out / "results.json").read_text())
    assert on_disk["summary"] == results["summary"] and on_disk["feature_sets"] == results["feature_sets"]
    table = (out / "results.md").read_text()
    assert "| Model | Metric | {l,a,v} |" in table and "± " in table
    assert (out / "confusion.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    run = results["runs"][0]
    model, record = load_trained_model(out / run["checkpoint"])
    assert record["model_name"] == name and record["best_epoch"] == run["best_epoch"]
    with DialogueData(features_dir, record["modalities"], record["feature_sets"],
                      level="frame" if name == "multienc" else "utterance") as data:
        y_true, y_pred = predict(model, data, "test", 16, torch.device("cpu"))
    assert metrics(y_true, y_pred)["weighted_f1"] == pytest.approx(run["test"]["weighted_f1"], abs=1e-9)
    assert np.array(run["confusion_test"]).sum() == len(y_true)


def test_seeds_are_reproducible_and_summarised(features_dir: Path, tmp_path: Path) -> None:
    config = TrainConfig(features=features_dir, model=BASELINE, modalities="a,v", seeds=(0, 1, 0), out=tmp_path,
                         epochs=3, patience=3, lr=3e-3, size="tiny", verbose=False)
    results = train(config)
    first, second, again = results["runs"]
    assert first["val"] == again["val"] and first["test"] == again["test"]
    assert first["history"][-1]["loss"] == again["history"][-1]["loss"]
    values = [r["test"]["weighted_f1"] for r in results["runs"]]
    assert results["summary"]["test"]["weighted_f1"]["mean"] == pytest.approx(np.mean(values))
    assert results["summary"]["test"]["weighted_f1"]["std"] == pytest.approx(np.std(values, ddof=1))
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == ["seed0.pt", "seed1.pt"]


def test_cli_trains_and_reports_missing_feature_sets(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    parser = argparse.ArgumentParser()
    sub = parser.add_subparsers()
    add_synthetic_parser(sub)
    add_train_parser(sub)
    data = tmp_path / "data"
    args = parser.parse_args(["make-synthetic", "--out", str(data), "--dialogues", "20", "--dims", "6,6,4", "--no-frames"])
    assert args.func(args) == 0
    args = parser.parse_args(["train", "--features", str(data), "--model", "dialoguegcn", "--modalities", "l",
                              "--seeds", "0", "--epochs", "2", "--out", str(tmp_path / "run"), "--size", "tiny",
                              "--model-config", "graph_hidden=8", "--quiet"])
    assert args.func(args) == 0
    record = json.loads((tmp_path / "run" / "results.json").read_text())
    assert record["model"] == "dialoguegcn" and record["runs"][0]["epochs_run"] == 2
    assert torch.load(tmp_path / "run" / "checkpoints" / "seed0.pt", weights_only=True)["model_config"]["graph_hidden"] == 8
    args = parser.parse_args(["train", "--features", str(data), "--model", "multienc", "--modalities", "l",
                              "--out", str(tmp_path / "frames"), "--quiet"])
    assert args.func(args) == 1
    error = capsys.readouterr().err
    assert "roberta_frame" in error and "present: " in error and "roberta_mean" in error


def test_grid_writes_the_table(features_dir: Path, tmp_path: Path) -> None:
    config = TrainConfig(features=features_dir, seeds=(0,), out=tmp_path, epochs=1, patience=1, lr=3e-3,
                         size="tiny", grid=True, grid_models=(BASELINE,), verbose=False)
    grid = train(config)
    assert len(grid["results"]) == 7 and not grid["skipped"]
    table = (tmp_path / "results.md").read_text()
    for combo in ("{l}", "{a}", "{v}", "{l,a}", "{l,v}", "{a,v}", "{l,a,v}"):
        assert combo in table


def _run(seed: int, val: float, test: float) -> dict:
    return {"seed": seed, "val": {"weighted_f1": val, "macro_f1": val / 2, "accuracy": val},
            "test": {"weighted_f1": test, "macro_f1": test / 2, "accuracy": test}}


def test_authors_protocol_drops_the_worst_validation_run() -> None:
    # get_results.py: np.argmin over the validation WF1, pop that run from val and test, average the rest.
    runs = [_run(0, 0.50, 0.60), _run(1, 0.30, 0.90), _run(2, 0.40, 0.50)]
    kept = authors_protocol(runs)
    assert kept["dropped_seed"] == 1 and kept["seeds"] == [0, 2]
    assert kept["val"]["weighted_f1"] == pytest.approx(0.45) and kept["test"]["weighted_f1"] == pytest.approx(0.55)
    assert kept["test"]["macro_f1"] == pytest.approx(0.275)
    # Ties: np.argmin drops the first of the equal runs.
    assert authors_protocol([_run(5, 0.3, 0.1), _run(6, 0.3, 0.2), _run(7, 0.4, 0.3)])["dropped_seed"] == 5
    assert authors_protocol([_run(0, 0.5, 0.5)]) is None


def test_results_report_both_summaries(features_dir: Path, tmp_path: Path) -> None:
    config = TrainConfig(features=features_dir, model=BASELINE, modalities="l", seeds=(0, 1, 2), out=tmp_path,
                         epochs=2, lr=3e-3, size="tiny", verbose=False)
    results = train(config)
    val = [r["val"]["weighted_f1"] for r in results["runs"]]
    test = [r["test"]["weighted_f1"] for r in results["runs"]]
    worst = int(np.argmin(val))
    expected = np.mean([t for i, t in enumerate(test) if i != worst])
    on_disk = json.loads((tmp_path / "results.json").read_text())["summary"]
    assert on_disk["authors_protocol"]["test"]["weighted_f1"] == pytest.approx(expected)
    assert on_disk["test"]["weighted_f1"]["mean"] == pytest.approx(np.mean(test))
    table = (tmp_path / "results.md").read_text()
    assert "Authors' protocol" in table and f"{100 * expected:.2f}" in table


def test_mdi_trains_with_the_authors_schedule_by_default(features_dir: Path, tmp_path: Path) -> None:
    """run_htrm.py: get_scheduler("cosine", warm-up 0) over epochs x batches, one dialogue per batch,
    no early stop. The learning rate after epoch e of E is lr0 * (1 + cos(pi * e / E)) / 2."""
    config = TrainConfig(features=features_dir, model="mdi", modalities="l", seeds=(0,), out=tmp_path,
                         epochs=4, size="tiny", verbose=False)
    run = train(config)["runs"][0]
    resolved = json.loads((tmp_path / "results.json").read_text())["train_config"]
    assert (resolved["batch_size"], resolved["lr"], resolved["weight_decay"]) == (1, 3e-5, 0.0)
    assert resolved["schedule"] == "cosine" and resolved["early_stop"] is False
    assert [h["lr"] for h in run["history"]] == pytest.approx(
        [3e-5 * (1 + math.cos(math.pi * e / 4)) / 2 for e in (1, 2, 3, 4)], abs=1e-12)
    assert run["epochs_run"] == 4


def test_class_weights_are_one_over_the_prior(features_dir: Path) -> None:
    """train_chmed.py: loss_weights = 1 / prior of each emotion in train (any common factor cancels in
    their weighted mean, so only the ratios matter)."""
    from m3ed.pipelines.train import _class_weights

    with DialogueData(features_dir, "l") as data:
        labels = data.labels("train")
        weights = _class_weights(data).numpy()
    prior = np.bincount(labels, minlength=7) / len(labels)
    seen = prior > 0
    products = weights[seen] * prior[seen]
    assert products == pytest.approx(np.full(seen.sum(), products[0]))


def test_mdi_frozen_fusion_keeps_the_input_layer_and_clips_its_stale_gradient(features_dir: Path) -> None:
    """run_htrm.py --bert_frozen: bert_encoder.fc is not in the optimiser; trainer.py zeroes the
    optimiser's gradients only and clips over model.parameters(), the stale fc gradient included."""
    from m3ed.pipelines.train import _build, _train_epoch

    config = TrainConfig(features=features_dir, model="mdi", modalities="l,a", seeds=(0,), size="tiny",
                         grad_clip=1e-3, mdi_frozen_fusion=True, batch_size=8, verbose=False).resolved()
    with DialogueData(features_dir, "l,a") as data:
        run = _build(config, data, 0, torch.device("cpu"))
        trained = {id(p) for group in run.optimizer.param_groups for p in group["params"]}
        assert id(run.model.embed.weight) not in trained and id(run.model.head.weight) in trained
        embed, head = run.model.embed.weight.detach().clone(), run.model.head.weight.detach().clone()
        _train_epoch(run, config, data, torch.device("cpu"), seed=1)
    assert torch.equal(run.model.embed.weight, embed) and not torch.equal(run.model.head.weight, head)
    stale = run.model.embed.weight.grad
    assert stale is not None and stale.abs().sum() > 0            # never zeroed
    total = torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(p.grad)
                                                  for p in run.model.parameters() if p.grad is not None]))
    assert float(total) <= 1e-3 * 1.001                           # the clip saw (and scaled) it too


def test_mdi_versions(features_dir: Path) -> None:
    """v1 (452bbfd-ba3f3dc): batch 1, 15 epochs, length-sorted order; v2 (e75d7dd, HEAD): batch 32,
    50 epochs, shuffled, global attention only for unimodal runs; given values still win."""
    from m3ed.pipelines.train import _build

    v1 = TrainConfig(features=features_dir, model="mdi", modalities="l").resolved()
    v2 = TrainConfig(features=features_dir, model="mdi", modalities="l", mdi_version="v2").resolved()
    assert (v1.batch_size, v1.epochs, v1.shuffle) == (1, 15, False)
    assert (v2.batch_size, v2.epochs, v2.shuffle) == (32, 50, True)
    assert TrainConfig(features=features_dir, model="mdi", mdi_version="v2", epochs=3).resolved().epochs == 3
    assert TrainConfig(features=features_dir, model="dialoguegcn", mdi_version="v2").resolved().batch_size == 16
    v2 = replace(v2, size="tiny")
    with DialogueData(features_dir, "l") as data:
        assert _build(v2, data, 0, torch.device("cpu")).model.config.interactions == ("global",)
    with DialogueData(features_dir, "l,a") as data:
        assert len(_build(replace(v2, modalities="l,a"), data, 0, torch.device("cpu")).model.config.interactions) == 4
    with pytest.raises(ValueError, match="v3"):
        TrainConfig(features=features_dir, model="mdi", mdi_version="v3")
    with pytest.raises(ValueError, match="MDI only"):
        with DialogueData(features_dir, "l") as data:
            _build(replace(v1, model="dialoguegcn", mdi_frozen_fusion=True, size="tiny"), data, 0, torch.device("cpu"))
