"""``m3ed inspect`` on real feature files of the sample (tiny profile), on one key, on a missing
key, on HDF5 that is not ours, and on a file with NaN/Inf. Expected numbers are computed here
with h5py and numpy, not by the code under test."""
from __future__ import annotations

import json

import h5py
import numpy as np
import pytest

from m3ed.corpus import Corpus
from m3ed.pipelines.cli import main
from m3ed.store import FeatureStore

pytestmark = pytest.mark.usefixtures("one_torch_thread")
DIALOGUE = "sampleval_1"


@pytest.fixture(scope="module")
def run_out(tmp_path_factory, models_cache):
    out = tmp_path_factory.mktemp("inspect-run")
    code = main(["extract", "--stages", "text", "--profile", "tiny", "--device", "cpu", "--no-progress",
                 "--dialogues", DIALOGUE, "--out", str(out)])
    assert code == 0
    return out


def _inspect_json(capsys, *args) -> dict:
    capsys.readouterr()
    assert main(["inspect", *map(str, args), "--json"]) == 0
    return json.loads(capsys.readouterr().out)


@pytest.mark.parametrize("feature_set", ["roberta_frame", "roberta_mean"])
def test_summary_matches_the_file(run_out, capsys, feature_set):
    path = run_out / "features" / f"{feature_set}.h5"
    got = _inspect_json(capsys, path)
    with h5py.File(path, "r") as h5:
        arrays = {k: h5[k][()] for k in h5.keys()}
        attrs = dict(h5.attrs)
    values = np.concatenate([a.ravel() for a in arrays.values()]).astype(np.float64)
    assert got["format"] == "m3ed-features" and got["format_version"] == attrs["format_version"]
    assert got["feature_set"] == feature_set and got["dim"] == attrs["dim"]
    assert got["config_hash"] == attrs["config_hash"] and got["model"] == attrs["model"]
    assert got["keys"] == len(arrays) == len(Corpus.from_jsonl(run_out / "manifest.jsonl")[DIALOGUE].utterances)
    assert got["shapes"] == {k: list(arrays[k].shape) for k in list(arrays)[:5]}
    stats = got["stats"]
    assert stats["values"] == values.size and stats["nan"] == 0 and stats["inf"] == 0
    assert stats["min"] == pytest.approx(values.min()) and stats["max"] == pytest.approx(values.max())
    assert stats["mean"] == pytest.approx(values.mean(), abs=1e-9)
    assert stats["std"] == pytest.approx(values.std(), rel=1e-9)
    if feature_set == "roberta_frame":
        lengths = [len(a) for a in arrays.values()]
        assert got["level"] == "frame"
        assert got["frames"] == {"total": sum(lengths), "min": min(lengths), "max": max(lengths),
                                 "mean": pytest.approx(np.mean(lengths))}
    else:
        assert got["level"] == "utterance" and "frames" not in got


def test_one_key(run_out, capsys):
    path = run_out / "features" / "roberta_frame.h5"
    key = f"{DIALOGUE}_2"
    got = _inspect_json(capsys, path, key)
    with h5py.File(path, "r") as h5:
        array = h5[key][()]
    assert got["shape"] == list(array.shape) and got["dtype"] == "float32"
    assert np.array_equal(np.array(got["first_rows"], np.float32), array[:5])
    assert got["stats"]["max"] == pytest.approx(float(array.max()))
    assert main(["inspect", str(path), key]) == 0
    text = capsys.readouterr().out
    assert key in text and f"shape {array.shape}" in text and "first 5 row(s)" in text


def test_text_summary_names_what_matters(run_out, capsys):
    path = run_out / "features" / "roberta_mean.h5"
    capsys.readouterr()
    assert main(["inspect", str(path)]) == 0
    text = capsys.readouterr().out
    with h5py.File(path, "r") as h5:
        config_hash, keys, dim = h5.attrs["config_hash"], len(h5), h5.attrs["dim"]
    needles = ("m3ed-features", "roberta_mean", f"utterance level, dim {dim}", config_hash, f"keys            {keys}", "NaN 0")
    for needle in needles:
        assert needle in text


def test_missing_key_is_a_clear_error(run_out, capsys):
    path = run_out / "features" / "roberta_mean.h5"
    capsys.readouterr()
    assert main(["inspect", str(path), f"{DIALOGUE}_99"]) == 2
    err = capsys.readouterr().err
    assert f"no key '{DIALOGUE}_99'" in err and str(path) in err and f"{DIALOGUE}_1" in err and "failures.jsonl" in err


def test_hdf5_that_is_not_ours_is_a_clear_error(tmp_path, capsys):
    foreign = tmp_path / "foreign.h5"
    with h5py.File(foreign, "w") as h5:
        h5["x"] = np.zeros((3, 4), np.float32)
        h5.attrs["format"] = "something-else"
    assert main(["inspect", str(foreign)]) == 2
    err = capsys.readouterr().err
    assert str(foreign) in err and "not an m3ed feature file" in err and "'something-else'" in err
    text = tmp_path / "notes.h5"
    text.write_text("not hdf5 at all")
    assert main(["inspect", str(text), "--json"]) == 2
    assert "not an HDF5 file" in capsys.readouterr().err
    assert main(["inspect", str(tmp_path / "absent.h5")]) == 2
    assert "no such file" in capsys.readouterr().err


def test_nan_and_inf_are_counted(tmp_path, capsys, sample_corpus):
    corpus = sample_corpus.select([DIALOGUE])
    ids = [u.id for u in corpus[DIALOGUE].utterances]
    arrays = {uid: np.arange(6, dtype=np.float32).reshape(2, 3) + i for i, uid in enumerate(ids)}
    arrays[ids[0]][0, 0], arrays[ids[1]][1, 2], arrays[ids[2]][0, 1] = np.nan, np.inf, -np.inf
    store = FeatureStore(tmp_path)
    store.write_part("demo_set", DIALOGUE, arrays, config="c0")
    path = store.publish("demo_set", corpus, {"config_hash": "c0"})
    stats = _inspect_json(capsys, path)["stats"]
    finite = np.concatenate([a.ravel() for a in arrays.values()])
    finite = finite[np.isfinite(finite)].astype(np.float64)
    assert (stats["nan"], stats["inf"], stats["values"]) == (1, 2, 6 * len(ids))
    assert stats["min"] == finite.min() and stats["max"] == finite.max()
    assert stats["mean"] == pytest.approx(finite.mean()) and stats["std"] == pytest.approx(finite.std())
