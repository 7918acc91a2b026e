"""Every registered downstream model: output shape, padding invariance, and that it can learn."""
from __future__ import annotations

from dataclasses import asdict
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from m3ed.models.data import IGNORE_INDEX, DialogueData
from m3ed.models.registry import create_model, get_model_entry, list_models
from m3ed.synthetic import SyntheticConfig, make_synthetic

MODELS = list_models()
pytestmark = pytest.mark.usefixtures("one_torch_thread")   # tiny models: threads only cost


@pytest.fixture(scope="module")
def features_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("synthetic")
    make_synthetic(out, SyntheticConfig(dialogues=12, seed=3, dims=(12, 10, 6), min_utterances=3,
                                        max_utterances=14, dialogues_per_show=2, visual_missing=0.2))
    return out


def load(features_dir: Path, name: str, modalities: str = "l,a,v") -> DialogueData:
    return DialogueData(features_dir, modalities, level=get_model_entry(name).input_level)


def build(name: str, data: DialogueData, **overrides) -> torch.nn.Module:
    torch.manual_seed(0)
    return create_model(name, profile="tiny", input_dims=data.dims, num_speakers=2, **overrides)


def test_the_registry_lists_all_architectures() -> None:
    assert {"mdi", "dialoguernn", "dialoguegcn", "mmgcn", "multienc", "multienc_pooled"} <= set(MODELS)
    with pytest.raises(KeyError, match="available"):
        get_model_entry("no_such_model")
    with pytest.raises(TypeError, match="unknown config fields"):
        create_model("mdi", input_dims={"l": 4}, hiden=3)


@pytest.mark.parametrize("name", MODELS)
@pytest.mark.parametrize("modalities", ["l,a,v", "v"])
def test_logits_shape(features_dir: Path, name: str, modalities: str) -> None:
    with load(features_dir, name, modalities) as data:
        dialogues = data.split("train")[:3]
        batch = data.collate(dialogues)
        model = build(name, data).eval()
        logits = model(batch)
    n = max(len(d.utterances) for d in dialogues)
    assert logits.shape == (3, n, 7)
    assert torch.isfinite(logits[batch.mask]).all()


@pytest.mark.parametrize("name", MODELS)
def test_predictions_do_not_depend_on_batch_padding(features_dir: Path, name: str) -> None:
    with load(features_dir, name) as data:
        dialogues = sorted(data.corpus, key=lambda d: len(d.utterances))
        short, long = dialogues[0], dialogues[-1]
        assert len(short.utterances) < len(long.utterances)
        model = build(name, data).eval()
        with torch.no_grad():
            alone = model(data.collate([short]))[0]
            padded = model(data.collate([long, short]))[1, : len(short.utterances)]
            others = model(data.collate([dialogues[1], long, short, dialogues[2]]))[2, : len(short.utterances)]
    torch.testing.assert_close(padded, alone, atol=1e-5, rtol=0)
    torch.testing.assert_close(others, alone, atol=1e-5, rtol=0)


@pytest.mark.parametrize("name", MODELS)
def test_each_model_overfits_a_few_dialogues(features_dir: Path, name: str) -> None:
    with load(features_dir, name) as data:
        batch = data.collate(data.split("train")[:3])
        model = build(name, data)
        model.eval()     # no dropout: the question is only whether the model can fit its input
        optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
        labels = batch.labels.flatten()
        for _ in range(150):
            loss = F.cross_entropy(model(batch).flatten(0, 1), labels, ignore_index=IGNORE_INDEX)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
        with torch.no_grad():
            predictions = model(batch).argmax(-1).flatten()
    real = labels != IGNORE_INDEX
    accuracy = (predictions[real] == labels[real]).float().mean().item()
    assert accuracy >= 0.9, f"{name} fits only {accuracy:.0%} of {int(real.sum())} training utterances"


@pytest.mark.parametrize("name", MODELS)
def test_missing_modality_is_marked_and_handled(features_dir: Path, name: str) -> None:
    with load(features_dir, name) as data:
        batch = data.collate(list(data.corpus))
        absent = batch.mask & ~batch.present["v"]
        assert absent.any(), "the fixture should have utterances without visual features"
        assert (batch.features["v"][absent] == 0).all()
        model = build(name, data).eval()
        with torch.no_grad():
            assert torch.isfinite(model(batch)[batch.mask]).all()


def test_config_round_trips_through_a_plain_dict(features_dir: Path) -> None:
    for name in MODELS:
        with load(features_dir, name) as data:
            model = build(name, data)
        rebuilt = create_model(name, **asdict(model.config))
        assert asdict(rebuilt.config) == asdict(model.config)
        rebuilt.load_state_dict(model.state_dict(), strict=True)


@pytest.mark.parametrize("fusion", ["final", "per_block"])
def test_mdi_fusion_points(features_dir: Path, fusion: str) -> None:
    with load(features_dir, "mdi") as data:
        model = build("mdi", data, fusion=fusion).eval()
        batch = data.collate(data.split("train")[:2])
        assert model(batch).shape[-1] == 7
    assert (model.block_norms is None) == (fusion == "final")


def test_mdi_defaults_follow_the_paper() -> None:
    unimodal = create_model("mdi", input_dims={"l": 768}).config
    multimodal = create_model("mdi", input_dims={"l": 768, "a": 1024, "v": 342}).config
    assert (unimodal.hidden, unimodal.layers, unimodal.heads, unimodal.ffn) == (384, 4, 6, 1024)
    assert (multimodal.hidden, multimodal.layers, multimodal.heads, multimodal.ffn) == (512, 4, 8, 1536)
    assert multimodal.dropout == 0.1 and multimodal.fusion == "final"
    assert get_model_entry("mdi").config_cls.default_lr == 3e-5
