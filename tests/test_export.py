"""``m3ed export``: each layout loads back with the shapes, order and labels of the corpus."""
from __future__ import annotations

import argparse
import json
import os
import pickle
import pickletools
import runpy
import shutil
from pathlib import Path

import h5py
import numpy as np
import pytest

from m3ed.corpus import Corpus
from m3ed.pipelines.export import add_export_parser, check_pickle_portable, export, model_provenance
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
    assert not Path(config["feature_root"]).is_absolute() and (out / config["target_root"] / "1").is_dir()
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


# ---- unlabelled utterances, consumers' loaders, provenance ---------------------------------------------
@pytest.fixture(scope="module")
def partly_labelled(features_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, set[str]]:
    """The fixture's features with every fourth utterance's emotion unknown (as in an unfinished annotation)."""
    out = tmp_path_factory.mktemp("partly") / "features"
    shutil.copytree(features_dir, out)
    blanked: set[str] = set()
    lines = []
    for line in (out / "manifest.jsonl").read_text().splitlines():
        record = json.loads(line)
        for u in record["utterances"][::4]:
            u["emotion"], u["emotions"] = "", []
            blanked.add(u["id"])
        lines.append(json.dumps(record, ensure_ascii=False))
    (out / "manifest.jsonl").write_text("\n".join(lines) + "\n")
    return out, blanked


def test_dialogue_pickle_keeps_or_drops_unlabelled(partly_labelled, tmp_path: Path, capsys) -> None:
    source, blanked = partly_labelled
    export(source, "dialoguernn", tmp_path / "keep.pkl")
    printed = capsys.readouterr().out
    assert f"UNLABELLED: {len(blanked)} of" in printed and "kept with label -100" in printed
    ids, _, labels = pickle.loads((tmp_path / "keep.pkl").read_bytes())[:3]
    for d, utterances in ids.items():
        assert [lab == -100 for lab in labels[d]] == [u in blanked for u in utterances]
    result = export(source, "dialoguernn", tmp_path / "drop.pkl", unlabelled="drop", verbose=False)
    ids, _, labels, text = pickle.loads((tmp_path / "drop.pkl").read_bytes())[:4]
    assert not blanked & {u for v in ids.values() for u in v}
    assert all(0 <= lab < 7 for v in labels.values() for lab in v)
    assert all(len(text[d]) == len(ids[d]) == len(labels[d]) for d in ids)
    assert "dropped" in Path(result["notes_path"]).read_text()


def load_like_mmin(mmin_root: Path, a: str, v: str, lab: str, set_name: str) -> tuple[np.ndarray, list]:
    """MMIN's MultimodalDataset.__init__/__getitem__ with --corpus_name M3ED --cvNo 1, run from mmin_root."""
    config = json.load(open(mmin_root / "config" / "M3ED_config.json"))
    files = [h5py.File(os.path.join(config["feature_root"], folder, f"{kind}.h5"), "r")
             for folder, kind in (("A", a), ("V", v), ("L", lab))]
    label = np.load(os.path.join(config["target_root"], "1", f"{set_name}_label.npy"))
    int2name = np.load(os.path.join(config["target_root"], "1", f"{set_name}_int2name.npy"))
    items = [[f[name][()] for f in files] for name in int2name]
    for f in files:
        f.close()
    return label, items


@pytest.mark.parametrize("unlabelled", ["drop", "keep"])
def test_mmin_export_loads_as_mmin_reads_it(partly_labelled, tmp_path: Path, monkeypatch, unlabelled: str) -> None:
    source, blanked = partly_labelled
    out = tmp_path / "export"
    result = export(source, "mmin", out, unlabelled=unlabelled, verbose=False)
    mmin_data = tmp_path / "MMIN" / "data"
    (mmin_data / "config").mkdir(parents=True)
    shutil.copy(out / "M3ED_config.json", mmin_data / "config")      # as the notes say
    monkeypatch.chdir(out)                                             # ... and run from the export
    corpus = Corpus.from_jsonl(source / "manifest.jsonl")
    for set_name, split in (("trn", "train"), ("val", "val"), ("tst", "test")):
        label, items = load_like_mmin(mmin_data, "wav2vec2_frame", "denseface_frame", "roberta_frame", set_name)
        expected = [u for d in corpus if d.split == split for u in d.utterances
                    if unlabelled == "keep" or u.id not in blanked]
        assert label.dtype == np.int64 and len(label) == len(items) == len(expected) > 0
        if unlabelled == "drop":
            assert label.min() >= 0 and label.max() < 7                # --output_dim 7
        else:
            assert sorted(set(label.tolist()) - set(range(7))) == [-100]
        assert all(a.ndim == 2 and v.ndim == 2 and lab.ndim == 2 for a, v, lab in items)
    notes = Path(result["notes_path"]).read_text()
    assert "--corpus_name=M3ED" in notes and "--A_type=" in notes and "UNLABELLED" in notes


def test_utt_baseline_export_loads_as_their_loader_reads_it(partly_labelled, tmp_path: Path) -> None:
    """MEmoConv utt_baseline/data/chmed_dataset.py: join(ft_dir, setname, "speech_{a_ft_type}_ft.npy"),
    join(target_dir, setname, "label.npy"); sequences cut or padded to --max_*_tokens."""
    source, blanked = partly_labelled
    out = tmp_path / "utt"
    result = export(source, "utt_baseline", out, verbose=False)
    config = runpy.run_path(str(out / "ef_m3ed_config.py"))
    assert Path(config["ft_dir"]) == out.resolve() and config["model_cfg"]["output_dim"] == 7
    corpus = Corpus.from_jsonl(source / "manifest.jsonl")
    with FeatureReader.open(source, "wav2vec2_frame") as frames:
        for split in ("train", "val", "test"):
            label = np.load(os.path.join(config["target_dir"], split, "label.npy"), allow_pickle=True)
            names = np.load(os.path.join(config["target_dir"], split, "int2name.npy"))
            audio = np.load(os.path.join(config["ft_dir"], split, "speech_wav2vec2_frame_ft.npy"), allow_pickle=True)
            text = np.load(os.path.join(config["ft_dir"], split, "text_roberta_mean_ft.npy"), allow_pickle=True)
            expected = [u.id for d in corpus if d.split == split for u in d.utterances if u.id not in blanked]
            assert names.tolist() == expected and label.min() >= 0 and label.max() < 7
            assert audio.shape == (len(expected), 150, DIMS[1]) and text.shape == (len(expected), DIMS[0])
            for i, utt_id in enumerate(expected):
                real = frames[utt_id][:150]
                np.testing.assert_array_equal(audio[i, :len(real)], real)
                assert not audio[i, len(real):].any()
    notes = Path(result["notes_path"]).read_text()
    assert "--a_ft_type wav2vec2_frame" in notes and "--max_acoustic_tokens 150" in notes
    assert "--max_visual_tokens 70" in notes and "--max_text_tokens 30" in notes


def test_model_attribute_is_the_id_and_the_path_its_own(features_dir: Path, tmp_path: Path) -> None:
    checkpoint = tmp_path / "roberta_ft"
    checkpoint.mkdir()
    (checkpoint / "finetune.json").write_text(json.dumps({"base_model": "hfl/chinese-roberta-wwm-ext"}))
    assert model_provenance({"model": "hfl/chinese-roberta-wwm-ext", "revision": "main"}) == {
        "model": "hfl/chinese-roberta-wwm-ext", "revision": "main"}
    source = tmp_path / "features"
    shutil.copytree(features_dir, source)
    with h5py.File(source / "features" / "roberta_ft_cls.h5", "a") as h5:
        h5.attrs["model"] = str(checkpoint)
    export(source, "mmin", tmp_path / "mmin", verbose=False)
    with h5py.File(tmp_path / "mmin" / "L" / "roberta_ft_cls.h5", "r") as h5:
        assert h5.attrs["model"] == "hfl/chinese-roberta-wwm-ext (fine-tuned)"
        assert h5.attrs["model_path"] == str(checkpoint.resolve())


def test_help_says_what_each_consumer_does_with_unlabelled(capsys) -> None:
    parser = argparse.ArgumentParser()
    add_export_parser(parser.add_subparsers())
    with pytest.raises(SystemExit):
        parser.parse_args(["export", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    for consumer in ("DialogueRNN", "MMIN", "utt_baseline", "-100"):
        assert consumer in text
