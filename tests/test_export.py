"""``m3ed export``: each layout loads back with the shapes, order and labels of the corpus."""
from __future__ import annotations

import argparse
import json
import pickle
import pickletools
from pathlib import Path

import h5py
import numpy as np
import pytest

from m3ed.corpus import Corpus
from m3ed.pipelines.export import add_export_parser, check_pickle_portable, export
from m3ed.store import FeatureReader, FeatureStore
from m3ed.synthetic import SyntheticConfig, make_synthetic

DIMS = (12, 10, 6)


@pytest.fixture(scope="module")
def features_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("synthetic")
    make_synthetic(out, SyntheticConfig(dialogues=9, seed=5, dims=DIMS, min_utterances=2, max_utterances=12,
                                        dialogues_per_show=2, visual_missing=0.25))
    return out


@pytest.fixture(scope="module")
def corpus(features_dir: Path) -> Corpus:
    return Corpus.from_jsonl(features_dir / "manifest.jsonl")


def pickle_strings(path: Path) -> list[str]:
    return [arg for op, arg, _ in pickletools.genops(path.read_bytes()) if isinstance(arg, str)]


def check_dialogue_dicts(record, corpus: Corpus, features_dir: Path, speakers: dict[str, str]) -> None:
    ids, spk, labels, text, audio, visual, sentences = record[:7]
    assert list(ids) == [d.id for d in corpus]
    missing_visual = 0
    with FeatureReader.open(features_dir, "roberta_ft_cls") as l_set, \
            FeatureReader.open(features_dir, "denseface_mean") as v_set:
        for d in corpus:
            n = len(d.utterances)
            assert ids[d.id] == [u.id for u in d.utterances]
            assert spk[d.id] == [speakers[u.speaker] for u in d.utterances]
            assert labels[d.id] == [u.label for u in d.utterances] and all(type(x) is int for x in labels[d.id])
            assert sentences[d.id] == [u.text for u in d.utterances]
            for array, dim in ((text[d.id], DIMS[0]), (audio[d.id], DIMS[1]), (visual[d.id], DIMS[2])):
                assert isinstance(array, np.ndarray) and array.dtype == np.float32 and array.shape == (n, dim)
            for i, u in enumerate(d.utterances):
                np.testing.assert_array_equal(text[d.id][i], l_set[u.id])
                expected = v_set.get(u.id)
                if expected is None:
                    missing_visual += 1
                    assert not visual[d.id][i].any()
                else:
                    np.testing.assert_array_equal(visual[d.id][i], expected)
    assert missing_visual > 0, "the fixture should have utterances without visual features"


def test_dialoguernn_pickle(features_dir: Path, corpus: Corpus, tmp_path: Path) -> None:
    out = tmp_path / "M3ED_features.pkl"
    result = export(features_dir, "dialoguernn", out, verbose=False)
    record = pickle.loads(out.read_bytes())
    assert isinstance(record, list) and len(record) == 10
    check_dialogue_dicts(record, corpus, features_dir, {"A": "A", "B": "B"})
    train, val, test = record[7:]
    for ids, split in ((train, "train"), (val, "val"), (test, "test")):
        assert ids == [d.id for d in corpus if d.split == split] and ids
    assert not any(s.startswith("numpy._core") for s in pickle_strings(out))
    assert pickletools.genops(out.read_bytes()).__next__()[1] == 4          # protocol 4
    notes = Path(result["notes_path"]).read_text()
    assert "ZERO-FILLED" in notes and "denseface_mean" in notes


def test_iemocap_tuple(features_dir: Path, corpus: Corpus, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    out = tmp_path / "iemocap_style.pkl"
    export(features_dir, "iemocap", out)
    assert "ZERO-FILLED" in capsys.readouterr().out
    with open(out, "rb") as f:
        record = pickle.load(f, encoding="latin1")      # as DialogueGCN / MMGCN load it
    assert isinstance(record, tuple) and len(record) == 9
    check_dialogue_dicts(record, corpus, features_dir, {"A": "M", "B": "F"})
    assert record[7] == [d.id for d in corpus if d.split == "train"]
    assert record[8] == [d.id for d in corpus if d.split == "test"]
    assert not any(s.startswith("numpy._core") for s in pickle_strings(out))


def test_mmin_layout(features_dir: Path, corpus: Corpus, tmp_path: Path) -> None:
    out = tmp_path / "mmin"
    export(features_dir, "mmin", out, verbose=False)
    ids = [u.id for u in corpus.utterances()]
    for folder, name, dim in (("L", "roberta_frame", DIMS[0]), ("A", "wav2vec2_ft_last", DIMS[1]),
                              ("V", "denseface_mean", DIMS[2]), ("V", "denseface_frame", DIMS[2])):
        with h5py.File(out / folder / f"{name}.h5", "r") as h5, \
                FeatureReader(FeatureStore(features_dir).feature_path(name)) as source:
            assert sorted(h5.keys()) == sorted(ids)
            for utt_id in ids:
                expected = source.get(utt_id)
                if expected is None:
                    assert not h5[utt_id][()].any() and h5[utt_id].shape[-1] == dim
                else:
                    np.testing.assert_array_equal(h5[utt_id][()], expected)
    for mmin_name, split in (("trn", "train"), ("val", "val"), ("tst", "test")):
        names = np.load(out / "target" / "1" / f"{mmin_name}_int2name.npy")       # no pickle needed
        labels = np.load(out / "target" / "1" / f"{mmin_name}_label.npy")
        utterances = [u for d in corpus if d.split == split for u in d.utterances]
        assert names.tolist() == [u.id for u in utterances]
        assert labels.tolist() == [u.label for u in utterances]
    config = json.loads((out / "M3ED_config.json").read_text())
    assert Path(config["feature_root"]) == out.resolve()
    assert "ZERO-FILLED" in (out / "NOTES.txt").read_text()


def test_portability_check_catches_numpy2_pickles() -> None:
    plain = pickle.dumps(np.zeros(3, np.float32), protocol=4)
    if np.__version__.startswith("1."):
        pytest.skip("NumPy 1.x pickles name numpy.core")
    with pytest.raises(ValueError, match="numpy._core"):
        check_pickle_portable(plain)


def test_cli_names_a_missing_feature_set(features_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    parser = argparse.ArgumentParser()
    add_export_parser(parser.add_subparsers())
    args = parser.parse_args(["export", "--features", str(features_dir), "--format", "dialoguernn",
                              "--out", str(tmp_path / "x.pkl"), "--features-map", "l=bert_cls"])
    assert args.func(args) == 1
    error = capsys.readouterr().err
    assert "bert_cls" in error and "roberta_mean" in error
