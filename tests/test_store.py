"""The feature store: parts, publishing, failures, the reader."""
import h5py
import numpy as np
import pytest

from m3ed.corpus import Corpus, Dialogue, Utterance
from m3ed.store import Failure, FeatureReader, FeatureStore, config_hash


def _corpus():
    d1 = Dialogue("d:1", "s", tuple(Utterance(f"d:1_{i}", "d:1", "AB"[i % 2], i, i + 1) for i in range(1, 4)))
    d2 = Dialogue("对话2", "s", (Utterance("对话2_1", "对话2", "A", 0, 1),))
    return Corpus((d1, d2))


def test_parts_publish_and_read(tmp_path):
    corpus, store = _corpus(), FeatureStore(tmp_path)
    rng = np.random.default_rng(0)
    d1 = {"d:1_1": rng.normal(size=(5, 4)), "d:1_3": rng.normal(size=(2, 4))}
    store.write_part("frames", "d:1", d1, [Failure("frames", "d:1", "d:1_2", "no face")], config="c1")
    assert store.is_done("frames", "d:1", "c1") and not store.is_done("frames", "d:1", "other-config")
    assert not store.is_done("frames", "对话2", "c1")
    store.write_dialogue_failure("frames", "对话2", "video not found")
    path = store.publish("frames", corpus, {"config_hash": "c1", "model_id": "m"})
    with FeatureReader(path) as reader:
        assert sorted(reader.keys()) == ["d:1_1", "d:1_3"]
        assert reader["d:1_1"].dtype == np.float32
        np.testing.assert_allclose(reader["d:1_3"], d1["d:1_3"].astype(np.float32))
        assert reader.dim == 4 and reader.attrs["model_id"] == "m" and reader.attrs["format"] == "m3ed-features"
        x, mask = reader.dialogue_batch(list(corpus))
        assert x.shape == (2, 3, 5, 4) and mask.shape == (2, 3, 5)
        assert mask[0, 0].sum() == 5 and mask[0, 1].sum() == 0 and mask[0, 2].sum() == 2 and not mask[1].any()
        with pytest.raises(KeyError, match="d:1_2"):
            reader["d:1_2"]
    failures = store.failures("frames", corpus)
    assert [(f.dialogue_id, f.utterance_id, f.reason) for f in failures] == [
        ("d:1", "d:1_2", "no face"), ("对话2", None, "video not found")]
    assert store.is_published("frames", "c1") and not store.is_published("frames", "c2")


def test_utterance_level_batch(tmp_path):
    corpus, store = _corpus(), FeatureStore(tmp_path)
    store.write_part("mean", "d:1", {"d:1_2": np.ones(3)}, config="c")
    store.write_part("mean", "对话2", {"对话2_1": np.full(3, 2.0)}, config="c")
    with FeatureReader(store.publish("mean", corpus, {})) as reader:
        x, mask = reader.dialogue_batch(list(corpus))
    assert x.shape == (2, 3, 3) and mask.tolist() == [[False, True, False], [True, False, False]]
    assert x[1, 0].tolist() == [2, 2, 2] and x[0, 0].tolist() == [0, 0, 0]


def test_a_torn_part_is_not_done(tmp_path):
    store = FeatureStore(tmp_path)
    path = store.write_part("x", "d", {"d_1": np.ones(3)}, config="c")
    path.write_bytes(path.read_bytes()[:100])            # what a crash mid-write would leave
    assert not store.is_done("x", "d", "c")
    with h5py.File(store.write_part("x", "d", {"d_1": np.ones(3)}, config="c")) as h5:
        assert h5["d_1"].shape == (3,)


def test_publish_is_byte_identical_across_runs(tmp_path):
    corpus = _corpus()
    digests = []
    for run in ("a", "b"):
        store = FeatureStore(tmp_path / run)
        store.write_part("x", "对话2", {"对话2_1": np.arange(4.0)}, config="c")   # order of writing differs
        store.write_part("x", "d:1", {"d:1_1": np.ones((2, 4))}, config="c")
        digests.append(store.publish("x", corpus, {"config_hash": "c"}).read_bytes())
    assert digests[0] == digests[1]


def test_config_hash_is_stable_and_sensitive():
    assert config_hash({"a": 1, "b": [1, 2]}) == config_hash({"b": [1, 2], "a": 1})
    assert config_hash({"a": 1}) != config_hash({"a": 2})


def test_reader_error_names_the_file(tmp_path):
    bad = tmp_path / "broken.h5"
    bad.write_bytes(b"not hdf5")
    with pytest.raises(OSError, match="broken.h5"):
        FeatureReader(bad)


def test_slash_in_an_utterance_id_is_refused(tmp_path):
    with pytest.raises(ValueError, match="'a/b_1'.*HDF5"):
        FeatureStore(tmp_path).write_part("x", "a/b", {"a/b_1": np.ones(2)}, config="c")
