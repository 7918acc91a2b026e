"""`m3ed finetune text|audio` on a small real corpus, and its checkpoints back in the extractors."""
from __future__ import annotations

import argparse
import csv
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from m3ed.corpus import EMOTIONS
from m3ed.extract.audio import FT_LAST, AudioConfig, AudioStage, InputRule, decode_dialogue
from m3ed.extract.finetune import audio_examples, load_classifier
from m3ed.pipelines.finetune import add_finetune_parser
from m3ed.extract.hf_models import model_spec
from m3ed.extract.text import FT_CLS, TextConfig, TextEncoder, TextStage
from m3ed.loaders import load_corpus
from m3ed.locate import MediaSource
from m3ed.stage import RunContext
from m3ed.profiles import get_profile
from m3ed.store import FeatureStore

SPEECH = Path(__file__).parent / "data" / "mandarin_16k.wav"
LINES = [("你好，今天天气很好。", "happy"), ("我们去公园吧。", "neutral"), ("我不想去。", "sad"),
         ("你怎么又迟到了！", "anger"), ("好可怕啊。", "fear"), ("真的吗？", "surprise")]


@pytest.fixture(scope="module")
def manifest(tmp_path_factory) -> Path:
    """Three dialogues (train, val, test) over the bundled Mandarin speech, in the generic CSV format."""
    path = tmp_path_factory.mktemp("corpus") / "manifest.csv"
    with open(path, "w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(["dialogue_id", "utterance_id", "speaker", "start", "end", "text", "emotion", "video", "split"])
        for split in ("train", "val", "test"):
            for i, (text, emotion) in enumerate(LINES, 1):
                start = 0.7 * (i - 1)
                writer.writerow([split, f"{split}_{i}", "AB"[i % 2], f"{start:.2f}", f"{start + 0.6:.2f}", text,
                                 emotion, str(SPEECH), split])
    return path


def finetune(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="m3ed")
    add_finetune_parser(parser.add_subparsers(dest="command"))
    args = parser.parse_args(argv)
    return args.func(args)


def test_text_finetune_checkpoint_feeds_the_extractor(models_cache, manifest, tmp_path):
    out = tmp_path / "text"
    assert finetune(["finetune", "text", "--annotations", str(manifest), "--profile", "tiny", "--out", str(out),
                     "--epochs", "2", "--max-steps", "3", "--batch-size", "4", "--lr", "1e-3",
                     "--class-weighted", "--device", "cpu", "--no-progress"]) == 0
    record = json.loads((out / "finetune.json").read_text())
    assert record["labels"] == list(EMOTIONS) and record["metrics"]["val"]["n"] == len(LINES)
    metrics = json.loads((out / "metrics.json").read_text())
    assert {"weighted_f1", "macro_f1"} <= set(metrics["test"]) and (out / "vocab.txt").exists()

    stage = TextStage(TextConfig(model_spec(get_profile("tiny"), "text"), finetuned=str(out)))
    corpus = load_corpus(manifest)
    result = next(stage.process([corpus["test"]], context=None))
    cls = result.features[FT_CLS]["test_1"]
    base_cls = TextEncoder(model_spec(get_profile("tiny"), "text")).encode([LINES[0][0]], ["x"])[0].hidden[0]
    assert cls.shape == (32,) and not np.allclose(cls, base_cls, atol=1e-4)  # the fine-tuned weights are used
    # The saved head classifies the very feature the extractor wrote.
    classifier = load_classifier(out, "text")
    tokens = TextEncoder(model_spec(get_profile("tiny"), "text")).tokenizer([LINES[0][0]], return_tensors="pt")
    with torch.inference_mode():
        np.testing.assert_allclose(classifier.pooled(dict(tokens))[0].numpy(), cls, rtol=1e-4, atol=1e-5)


def test_audio_finetune_checkpoint_feeds_the_extractor(models_cache, manifest, tmp_path):
    out = tmp_path / "audio"
    assert finetune(["finetune", "audio", "--annotations", str(manifest), "--profile", "tiny", "--out", str(out),
                     "--epochs", "1", "--max-steps", "2", "--batch-size", "3", "--device", "cpu", "--no-progress"]) == 0
    assert (out / "preprocessor_config.json").exists() and (out / "classifier.pt").exists()
    corpus = load_corpus(manifest)
    context = RunContext(corpus, MediaSource(None), FeatureStore(tmp_path / "features"), get_profile("tiny"))
    stage = AudioStage(AudioConfig(model_spec(get_profile("tiny"), "audio"), finetuned=str(out)))
    result = next(stage.process([corpus["val"]], context))
    stage.close()
    assert not result.error and set(result.features[FT_LAST]) == {f"val_{i}" for i in range(1, len(LINES) + 1)}
    assert result.features[FT_LAST]["val_1"].shape == (32,)

    # Training input = the authors' rule (normalise the whole utterance, then zero-pad to 4 s) = extraction input.
    assert json.loads((out / "finetune.json").read_text())["input"] == {"seconds": 4.0, "max_seconds": 0.0}
    assert stage.ft_rule == InputRule(4.0)
    classifier = load_classifier(out, "audio")
    raw = decode_dialogue(context.media, corpus["val"]).waves["val_1"]
    example, = [e for e in audio_examples(corpus, context.media, InputRule(4.0), classifier_features(out), 400)
                if e.id == "val_1"]
    authors = np.concatenate([(raw - raw.mean()) / np.sqrt(raw.var() + 1e-7), np.zeros(4 * 16000 - len(raw))])
    np.testing.assert_allclose(example.data, authors, rtol=1e-4, atol=1e-4)
    inputs = classifier_features(out).pad({"input_values": [example.data]}, return_attention_mask=True, return_tensors="pt")
    with torch.inference_mode():
        trained_on = classifier.pooled(dict(inputs))[0].numpy()
    np.testing.assert_allclose(result.features[FT_LAST]["val_1"], trained_on, rtol=1e-4, atol=1e-5)
    with pytest.raises(ValueError, match="--audio-ft-seconds 0.*trained on input normalised, then zero-padded or clipped to 4 s"):
        AudioStage(AudioConfig(model_spec(get_profile("tiny"), "audio"), finetuned=str(out), ft_seconds=0))


def classifier_features(directory: Path):
    from transformers import AutoFeatureExtractor

    return AutoFeatureExtractor.from_pretrained(directory)


def test_audio_finetune_with_variable_length_records_its_rule(models_cache, manifest, tmp_path):
    out = tmp_path / "audio_var"
    assert finetune(["finetune", "audio", "--annotations", str(manifest), "--profile", "tiny", "--out", str(out),
                     "--epochs", "1", "--max-steps", "1", "--batch-size", "3", "--device", "cpu", "--no-progress",
                     "--audio-ft-seconds", "0", "--max-seconds", "0.3"]) == 0
    stage = AudioStage(AudioConfig(model_spec(get_profile("tiny"), "audio"), finetuned=str(out)))
    assert stage.ft_rule == InputRule(0.0, 0.3) and stage.provenance()["ft_input"] == {"seconds": 0.0, "max_seconds": 0.3}
    corpus = load_corpus(manifest)
    context = RunContext(corpus, MediaSource(None), FeatureStore(tmp_path / "features"), get_profile("tiny"))
    result = next(stage.process([corpus["val"]], context))
    stage.close()
    raw = decode_dialogue(context.media, corpus["val"]).waves["val_2"]
    classifier = load_classifier(out, "audio")
    clipped = ((raw - raw.mean()) / np.sqrt(raw.var() + 1e-7))[: round(0.3 * 16000)]
    with torch.inference_mode():
        hidden = classifier.encoder(torch.tensor(clipped, dtype=torch.float32)[None]).last_hidden_state[0]
    np.testing.assert_allclose(result.features[FT_LAST]["val_2"], hidden[-1].numpy(), rtol=1e-4, atol=1e-4)
