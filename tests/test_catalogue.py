"""The feature-set catalogue: every stage's sets are in it, and the store holds parts to it."""
import numpy as np
import pytest

from m3ed.catalogue import CATALOGUE
from m3ed.corpus import Corpus, Dialogue, Utterance
from m3ed.stage import stage_registry
from m3ed.store import FeatureReader, FeatureStore

CORPUS = Corpus((Dialogue("d", "s", (Utterance("d_1", "d", "A", 0, 1), Utterance("d_2", "d", "B", 1, 2))),
                 Dialogue("e", "s", (Utterance("e_1", "e", "A", 0, 1),))))


def _arrays(spec, dialogue, dim=None):
    dim = dim or spec.dim
    shape = (dim,) if spec.level == "utterance" else (3, dim)
    return {u.id: np.full(shape, 0.5, np.float32) for u in dialogue.utterances}


@pytest.mark.parametrize("stage", sorted(stage_registry()))
def test_every_stage_feature_set_is_catalogued(stage):
    cls = stage_registry()[stage]
    names = set(cls.feature_sets)
    names |= {"roberta_ft_cls"} if stage == "text" else set()
    names |= {"wav2vec2_ft_last"} if stage == "audio" else set()
    assert names <= set(CATALOGUE), names - set(CATALOGUE)
    assert all(CATALOGUE[n].modality in ("text", "audio", "visual", "asd") for n in names)


@pytest.mark.parametrize("name", sorted(CATALOGUE))
def test_store_round_trip_per_catalogued_set(name, tmp_path):
    spec = CATALOGUE[name]
    store = FeatureStore(tmp_path)
    for dialogue in CORPUS:
        store.write_part(name, dialogue.id, _arrays(spec, dialogue), config="c")
    with FeatureReader(store.publish(name, CORPUS, {"config_hash": "c"})) as reader:
        assert reader.dim == spec.dim and reader.attrs["level"] == spec.level
        assert reader.attrs["modality"] == spec.modality and len(reader) == 3
        assert reader["d_1"].ndim == spec.ndim


def test_a_part_of_the_wrong_level_is_refused(tmp_path):
    with pytest.raises(ValueError, match="roberta_mean/d_1: an array of shape \\[3, 768\\]"):
        FeatureStore(tmp_path).write_part("roberta_mean", "d", {"d_1": np.zeros((3, 768))}, config="c")


def test_parts_of_different_sizes_are_never_published(tmp_path):
    spec = CATALOGUE["wav2vec2_mean"]
    store = FeatureStore(tmp_path)
    store.write_part(spec.name, "d", _arrays(spec, CORPUS["d"], 1024), config="c")
    store.write_part(spec.name, "e", _arrays(spec, CORPUS["e"], 32), config="c")
    with pytest.raises(ValueError, match="sizes \\[32, 1024\\]"):
        store.publish(spec.name, CORPUS, {"config_hash": "c"})
    assert not store.feature_path(spec.name).exists()
