"""Text stage: real tiny BERT models saved with save_pretrained and loaded back (offline)."""
from __future__ import annotations

import logging

import numpy as np
import pytest
import torch
from transformers import BertModel, BertTokenizer

from m3ed.corpus import Corpus, Dialogue, Utterance
from m3ed.errors import ConfigurationError
from m3ed.extract.hf_models import BERT_CHINESE, ModelSpec, chinese_vocab, local_model_dir, model_spec
from m3ed.extract.text import EMPTY_TEXT, FRAME, MEAN, TextConfig, TextEncoder, TextStage
from m3ed.profiles import ModelUnavailable, get_profile

SENTENCES = ["你怎么才回来？都快十点了。", "对不起", "今天……啊！是你的生日！OK 2024", "算了吧，你每次都这么说。我真的忘了。"]


def relative_error(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.abs(a - b).max() / max(np.abs(b).max(), 1e-12))


@pytest.fixture(scope="module")
def tiny_text(models_cache) -> ModelSpec:
    return model_spec(get_profile("tiny"), "text")


@pytest.fixture(scope="module")
def encoder(tiny_text) -> TextEncoder:
    return TextEncoder(tiny_text)


def dialogue(texts: list[str], dialogue_id: str = "d1") -> Dialogue:
    utterances = tuple(Utterance(f"{dialogue_id}_{i}", dialogue_id, "A", i, i + 1.0, text) for i, text in enumerate(texts, 1))
    return Dialogue(dialogue_id, "show", utterances)


def test_chinese_vocabulary_is_character_level():
    vocab = chinese_vocab()
    assert len(vocab) == BERT_CHINESE["vocab_size"] == len(set(vocab))
    assert vocab[:5] == ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    assert {"你", "龘", "，", "a", "##b"} <= set(vocab)


def test_saved_tiny_model_loads_with_bert_tokenizer(tiny_text):
    directory = local_model_dir(get_profile("tiny"), "text")
    assert str(directory) == tiny_text.name and (directory / "vocab.txt").exists()
    tokenizer = BertTokenizer.from_pretrained(directory)
    tokens = tokenizer.tokenize(SENTENCES[0])
    assert tokens == list("你怎么才回来？都快十点了。") and "[UNK]" not in tokens


def test_batched_equals_one_by_one(encoder):
    batched = encoder.encode(SENTENCES, ["a", "b", "c", "d"])
    for text, together in zip(SENTENCES, batched):
        alone = encoder.encode([text], ["x"])[0]
        assert together.hidden.shape == alone.hidden.shape
        assert relative_error(together.hidden, alone.hidden) < 1e-4


def test_stage_features_truncation_and_empty_text(tiny_text, caplog):
    long_text = "好" * 600
    stage = TextStage(TextConfig(tiny_text, batch_tokens=256))
    dialogues = [dialogue(SENTENCES[:2] + ["", "   "]), dialogue([long_text, SENTENCES[2]], "d2")]
    with caplog.at_level(logging.WARNING):
        results = list(stage.process(dialogues, context=None))
    assert [r.dialogue_id for r in results] == ["d1", "d2"]
    frames = results[0].features[FRAME]
    assert frames["d1_1"].shape == (len(SENTENCES[0]) + 2, 32)   # one token per character, plus [CLS] and [SEP]
    np.testing.assert_allclose(results[0].features[MEAN]["d1_1"], frames["d1_1"][1:-1].mean(axis=0), rtol=1e-6)
    assert "d1_3" not in frames and "d1_4" not in frames
    assert {(f.feature_set, f.utterance_id, f.reason) for f in results[0].failures} == {
        (s, u, EMPTY_TEXT) for s in (FRAME, MEAN) for u in ("d1_3", "d1_4")}
    assert results[1].features[FRAME]["d2_1"].shape == (512, 32)  # the model limit, [CLS] and [SEP] included
    assert "d2_1" in caplog.text and "truncated" in caplog.text


def authors_word_features(directory: str, sentence: str) -> np.ndarray:
    """The authors' ``BertExtractor.extract_sentence``: ``tokenizer.encode`` adds [CLS] and [SEP], the
    model runs on that one sentence, and its last hidden state is stored whole."""
    tokenizer, model = BertTokenizer.from_pretrained(directory), BertModel.from_pretrained(directory).eval()
    ids = torch.tensor(tokenizer.encode(sentence)).unsqueeze(0)
    with torch.no_grad():
        return model(ids)[0].squeeze(0).numpy()


def test_default_features_are_the_authors(tiny_text):
    stage = TextStage(TextConfig(tiny_text))
    result, = stage.process([dialogue(SENTENCES)], context=None)
    for i, sentence in enumerate(SENTENCES, 1):
        theirs = authors_word_features(tiny_text.name, sentence)
        ours = result.features[FRAME][f"d1_{i}"]
        assert ours.shape == theirs.shape
        assert relative_error(ours, theirs) < 1e-4                       # [CLS] ... [SEP], stored whole
        np.testing.assert_allclose(result.features[MEAN][f"d1_{i}"], np.mean(theirs[1:-1], axis=0),
                                   rtol=1e-4, atol=1e-6)                # their sent_avg: ft[1:-1]


def test_special_tokens_can_be_dropped_from_the_frames(tiny_text):
    keep, = TextStage(TextConfig(tiny_text)).process([dialogue(SENTENCES[:1])], context=None)
    drop_stage = TextStage(TextConfig(tiny_text, special_tokens="drop"))
    drop, = drop_stage.process([dialogue(SENTENCES[:1])], context=None)
    frames = drop.features[FRAME]["d1_1"]
    assert frames.shape == (len(SENTENCES[0]), 32)                       # the sentence's own tokens only
    # Exact: the same arithmetic. Both run the model on the same tokens; drop only leaves rows out.
    np.testing.assert_array_equal(frames, keep.features[FRAME]["d1_1"][1:-1])
    np.testing.assert_array_equal(drop.features[MEAN]["d1_1"], keep.features[MEAN]["d1_1"])  # the mean never had them
    assert drop_stage.provenance()["special_tokens"] == "drop" and "except special" in drop_stage.attrs(FRAME)["tokens"]
    with pytest.raises(ValueError, match="--text-special-tokens"):
        TextConfig(tiny_text, special_tokens="strip")


def test_other_layer_and_its_validation(tiny_text, encoder):
    first = TextEncoder(tiny_text, layer=1).encode(SENTENCES[:1], ["a"])[0]
    last = encoder.encode(SENTENCES[:1], ["a"])[0]
    assert first.hidden.shape == last.hidden.shape and relative_error(first.hidden, last.hidden) > 1e-3
    np.testing.assert_allclose(TextEncoder(tiny_text, layer=-1).encode(SENTENCES[:1], ["a"])[0].hidden, last.hidden, rtol=1e-5)
    with pytest.raises(ConfigurationError, match="7: .* has layers 0"):   # refused before any work
        TextEncoder(tiny_text, layer=7)


def test_provenance_names_model_and_layer(tiny_text):
    stage = TextStage(TextConfig(tiny_text, layer=1))
    assert stage.provenance()["model"] == tiny_text.name and stage.provenance()["layer"] == 1
    assert stage.feature_sets == (FRAME, MEAN)


def test_corrupted_checkpoint_gives_clear_error(tmp_path):
    (tmp_path / "config.json").write_text("{not json")
    with pytest.raises(ModelUnavailable, match=str(tmp_path)):
        TextEncoder(ModelSpec(str(tmp_path)))


def test_offline_uncached_hub_id_gives_documented_error(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ModelUnavailable, match="--text-model"):
        TextEncoder(ModelSpec("m3ed-tests/never-cached-model"))


def test_batches_respect_the_budget_and_cover_every_item():
    from m3ed.extract.batching import BatchBudget, plan_batches, restore_order

    lengths = [5, 300, 17, 17, 2, 90, 1000, 17]
    batches = plan_batches(lengths, BatchBudget(max_items=3, max_padded=200))
    assert sorted(i for b in batches for i in b) == list(range(len(lengths)))
    assert batches[0] == [6]   # longest first; an over-budget item gets a batch of its own
    assert all(len(b) <= 3 and (len(b) == 1 or len(b) * max(lengths[i] for i in b) <= 200) for b in batches)
    equal = plan_batches(lengths, BatchBudget(8, 10_000, equal_length_only=True))
    assert all(len({lengths[i] for i in b}) == 1 for b in equal)
    assert restore_order(batches, [[lengths[i] for i in b] for b in batches]) == lengths


def test_command_line_options_reach_the_stage(tmp_path, models_cache):
    from m3ed.locate import MediaSource
    from m3ed.stage import RunContext
    from m3ed.store import FeatureStore

    from m3ed.pipelines.cli import build_extract_parser, config_from_args
    from m3ed.stage import build_stage

    parser = build_extract_parser()
    assert config_from_args(parser.parse_args([])).text.special_tokens == "keep"
    args = parser.parse_args(["--text-layer", "1", "--text-batch-tokens", "512", "--text-finetuned", str(tmp_path),
                              "--text-special-tokens", "drop"])
    context = RunContext(Corpus(()), MediaSource(None), FeatureStore(tmp_path), get_profile("tiny"))
    stage = build_stage("text", config_from_args(args).text, context)
    assert (stage.config.layer, stage.config.batch_tokens, stage.config.special_tokens) == (1, 512, "drop")
    assert stage.feature_sets == (FRAME, MEAN, "roberta_ft_cls")
