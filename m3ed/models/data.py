"""Feature directories as training data: modalities, feature sets, splits and dialogue batches.

A feature directory (``OUT/manifest.jsonl`` + ``OUT/features/{set}.h5``, see :mod:`m3ed.store`) is
read into a :class:`DialogueData`: the corpus with its TV-independent ``train``/``val``/``test``
split, and for each chosen modality (``l`` text, ``a`` audio, ``v`` visual) one feature set.

* Utterance-level sets (``[D]`` per utterance) are loaded into memory once, as one ``[U, D]``
  array per modality (all of M3ED: 24k utterances, about 0.2 GB with the default sets).
* Frame-level sets (``[T, D]`` per utterance, for MultiEnc) can be too large for that (M3ED's
  ``wav2vec2_frame`` alone is tens of GB): a file up to ``frame_cache_bytes`` (2 GiB) is held in
  memory, a larger one is read batch by batch; either way optionally thinned to at most
  ``max_frames`` evenly spaced frames per utterance.

**Missing modalities.** The store never writes zeros for a missing modality: the utterance just
has no key (DESIGN §5). Here the rule is: a missing modality is a zero vector in
``Batch.features[m]`` *and* ``False`` in ``Batch.present[m]``; every model is given the presence
mask. Early-fusion models (MDI, DialogueRNN, DialogueGCN) append the presence flags to the fused
vector (:func:`early_fusion`), so a zero vector is never mistaken for a real one; MMGCN removes the
missing node from its graph; MultiEnc zeroes that modality's embedding. An utterance is still
classified (and scored) when all of its modalities are missing.

Batches hold whole dialogues of similar length (:func:`length_bucketed_batches`), padded by the one
collate function :meth:`DialogueData.collate`: features, presence, speaker indices, the padding
mask and the labels (``-100`` for padding and for utterances without a known emotion).
"""
from __future__ import annotations

import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator, Mapping, Sequence

import h5py
import numpy as np
import torch

from ..catalogue import downstream_sets
from ..corpus import SPLITS, Corpus, Dialogue
from ..store import FeatureReader, FeatureStore, pad_frames

__all__ = [
    "DEFAULT_FEATURE_SETS",
    "FRAME_FEATURE_SETS",
    "IGNORE_INDEX",
    "MODALITIES",
    "MODALITY_NAMES",
    "Batch",
    "DialogueData",
    "available_feature_sets",
    "early_fusion",
    "length_bucketed_batches",
    "modality_combinations",
    "parse_features_map",
    "parse_modalities",
    "resolve_feature_sets",
]

#: Modalities in their canonical order (the order of concatenation and of the paper's tables).
MODALITIES: tuple[str, ...] = ("l", "a", "v")
MODALITY_NAMES: dict[str, str] = {"l": "text", "a": "audio", "v": "visual"}
#: Utterance-level defaults per modality, first present wins (the paper's "Utt_ft" features first).
DEFAULT_FEATURE_SETS: dict[str, tuple[str, ...]] = {m: downstream_sets(m, "utterance") for m in MODALITIES}
#: Frame-level defaults per modality (the paper's "Frm" features).
FRAME_FEATURE_SETS: dict[str, tuple[str, ...]] = {m: downstream_sets(m, "frame") for m in MODALITIES}
#: Label of padding and of utterances without a known emotion (what ``cross_entropy`` ignores).
IGNORE_INDEX = -100
LEVELS = ("utterance", "frame")


# ---- choosing modalities and feature sets -----------------------------------------------------
def parse_modalities(text: str | Sequence[str]) -> tuple[str, ...]:
    """``"l,a,v"``, ``"lav"`` or ``["a", "l"]`` -> modalities in canonical order (``("l", "a")``)."""
    items = [c for c in text if c not in ", "] if isinstance(text, str) else list(text)
    unknown = [m for m in items if m not in MODALITIES]
    if unknown or not items:
        raise ValueError(
            f"modalities {text!r}: expected a non-empty subset of l (text), a (audio), v (visual), "
            f"e.g. 'l,a,v'" + (f"; unknown: {', '.join(map(repr, unknown))}" if unknown else "")
        )
    if len(set(items)) != len(items):
        raise ValueError(f"modalities {text!r}: a modality is named twice")
    return tuple(m for m in MODALITIES if m in items)


def modality_combinations() -> list[tuple[str, ...]]:
    """The seven modality sets of the paper's tables: {l}, {a}, {v}, {l,a}, {l,v}, {a,v}, {l,a,v}."""
    return [("l",), ("a",), ("v",), ("l", "a"), ("l", "v"), ("a", "v"), ("l", "a", "v")]


def parse_features_map(text: str | Mapping[str, str] | None) -> dict[str, str]:
    """``"l=roberta_mean,a=wav2vec2_mean"`` -> ``{"l": "roberta_mean", "a": "wav2vec2_mean"}``."""
    if text is None:
        return {}
    if isinstance(text, Mapping):
        pairs = list(text.items())
    else:
        pairs = []
        for item in filter(None, (s.strip() for s in text.split(","))):
            if "=" not in item:
                raise ValueError(f"features map item {item!r}: expected MODALITY=FEATURE_SET, e.g. l=roberta_mean")
            key, value = (s.strip() for s in item.split("=", 1))
            pairs.append((key, value))
    mapping: dict[str, str] = {}
    for key, value in pairs:
        if key not in MODALITIES:
            raise ValueError(f"features map: unknown modality {key!r} (use l, a or v)")
        if not value:
            raise ValueError(f"features map: empty feature set name for modality {key!r}")
        mapping[key] = value
    return mapping


def available_feature_sets(features_dir: str | Path) -> list[str]:
    """Names of the published feature sets of an output directory, sorted."""
    folder = FeatureStore(features_dir).features_dir
    return sorted(p.stem for p in folder.glob("*.h5")) if folder.is_dir() else []


def resolve_feature_sets(features_dir: str | Path, modalities: Sequence[str],
                         features_map: Mapping[str, str] | None = None,
                         level: str = "utterance") -> dict[str, str]:
    """The feature set to read for each modality: the explicit mapping, else the first default
    present. Raises ``FileNotFoundError`` naming what is missing and what the directory holds."""
    if level not in LEVELS:
        raise ValueError(f"level {level!r}: expected one of {LEVELS}")
    present = available_feature_sets(features_dir)
    defaults = DEFAULT_FEATURE_SETS if level == "utterance" else FRAME_FEATURE_SETS
    chosen: dict[str, str] = {}
    for m in modalities:
        candidates = (features_map[m],) if features_map and m in features_map else defaults[m]
        found = next((name for name in candidates if name in present), None)
        if found is None:
            listed = ", ".join(present) if present else "none"
            raise FileNotFoundError(
                f"no {level}-level feature set for modality {m} ({MODALITY_NAMES[m]}) in "
                f"{FeatureStore(features_dir).features_dir}: looked for {' or '.join(candidates)}; "
                f"present: {listed}. Extract it, or choose another with --features-map {m}=NAME"
            )
        chosen[m] = found
    return chosen


# ---- batches ------------------------------------------------------------------------------------
@dataclass
class Batch:
    """Padded dialogues. B dialogues, N utterances (the longest), T frames (frame level only).

    features[m]   float [B, N, D_m] (utterance level) or [B, N, T, D_m] (frame level), zeros where absent
    frame_mask[m] bool [B, N, T], real frames (frame level only)
    present[m]    bool [B, N], the utterance has features of modality m
    speakers      long [B, N], speaker index within the dialogue (0 for padding)
    mask          bool [B, N], real utterances
    labels        long [B, N], class index in EMOTIONS, -100 for padding / unknown emotion
    """

    features: dict[str, torch.Tensor]
    present: dict[str, torch.Tensor]
    speakers: torch.Tensor
    mask: torch.Tensor
    labels: torch.Tensor
    dialogue_ids: list[str]
    utterance_ids: list[list[str]]
    frame_mask: dict[str, torch.Tensor] = field(default_factory=dict)

    @property
    def lengths(self) -> torch.Tensor:
        return self.mask.sum(1)

    def to(self, device: torch.device | str) -> "Batch":
        move = lambda d: {k: v.to(device, non_blocking=True) for k, v in d.items()}  # noqa: E731
        return Batch(move(self.features), move(self.present), self.speakers.to(device),
                     self.mask.to(device), self.labels.to(device), self.dialogue_ids,
                     self.utterance_ids, move(self.frame_mask))


def early_fusion(batch: Batch, modalities: Sequence[str]) -> torch.Tensor:
    """Concatenate the modalities' features and their presence flags: ``[B, N, sum(D_m) + M]``.

    The input of the early-fusion models (the paper's ``u = concat(u[a], u[v], u[l])``, in our
    canonical order), with one 0/1 flag per modality appended (see the module docstring).
    """
    parts = [batch.features[m] for m in modalities]
    flags = [batch.present[m].unsqueeze(-1).to(parts[0].dtype) for m in modalities]
    return torch.cat(parts + flags, dim=-1)


def speaker_indices(dialogue: Dialogue) -> dict[str, int]:
    """Speaker key -> index within the dialogue, in sorted key order ("A" 0, "B" 1, ...)."""
    keys = set(dialogue.speakers) | {u.speaker for u in dialogue.utterances}
    return {key: i for i, key in enumerate(sorted(keys))}


def length_bucketed_batches(dialogues: Sequence[Dialogue], batch_size: int, *, shuffle: bool,
                            seed: int = 0, bucket_batches: int = 50) -> list[list[Dialogue]]:
    """Group dialogues into batches of similar length (little padding).

    Without shuffling: sorted by length, cut into batches, in that order (deterministic).
    With shuffling: the dialogues are shuffled, cut into buckets of ``bucket_batches`` batches, each
    bucket sorted by length and cut into batches, and the batches shuffled; the same ``seed`` gives
    the same batches.
    """
    if batch_size < 1:
        raise ValueError(f"batch size must be at least 1, got {batch_size}")
    items = list(dialogues)
    if not shuffle:
        items.sort(key=lambda d: (len(d.utterances), d.id))
        return [items[i:i + batch_size] for i in range(0, len(items), batch_size)]
    rng = random.Random(seed)
    rng.shuffle(items)
    bucket = batch_size * bucket_batches
    batches: list[list[Dialogue]] = []
    for start in range(0, len(items), bucket):
        chunk = sorted(items[start:start + bucket], key=lambda d: len(d.utterances))
        batches += [chunk[i:i + batch_size] for i in range(0, len(chunk), batch_size)]
    rng.shuffle(batches)
    return batches


# ---- the data -----------------------------------------------------------------------------------
class _UtteranceLevelSet:
    """One utterance-level feature set in memory: ``[U + 1, D]`` rows, the last row all zeros."""

    def __init__(self, path: Path, corpus: Corpus):
        with FeatureReader(path) as reader:
            self.dim = reader.dim
            self.attrs = reader.attrs
            ids = [u.id for u in corpus.utterances()]
            self.row = {}
            rows = []
            for utt_id in ids:
                array = reader.get(utt_id)
                if array is None:
                    continue
                if array.ndim != 1:
                    raise ValueError(
                        f"{path}: utterance {utt_id!r} has shape {list(array.shape)}; an utterance-level "
                        f"set has one vector [D] per utterance (frame-level sets are for MultiEnc)")
                if array.shape[0] != self.dim:
                    raise ValueError(f"{path}: utterance {utt_id!r} has dim {array.shape[0]}, file says {self.dim}")
                self.row[utt_id] = len(rows)
                rows.append(array)
        self.values = np.zeros((len(rows) + 1, self.dim), np.float32)
        if rows:
            self.values[:-1] = np.stack(rows)
        self.missing_row = len(rows)

    def gather(self, utterance_ids: list[list[str]], n: int) -> tuple[np.ndarray, np.ndarray]:
        index = np.full((len(utterance_ids), n), self.missing_row, np.int64)
        for i, row in enumerate(utterance_ids):
            index[i, :len(row)] = [self.row.get(u, self.missing_row) for u in row]
        return self.values[index], index != self.missing_row


class _FrameLevelSet:
    """One frame-level feature set: in memory when the file is at most ``cache_bytes``, else read
    from its HDF5 file batch by batch."""

    def __init__(self, path: Path, max_frames: int | None, cache_bytes: int):
        self.path = path
        self._h5 = h5py.File(path, "r")
        with FeatureReader(path) as reader:
            self.dim = reader.dim
            self.attrs = reader.attrs
        self.max_frames = max_frames
        first = next(iter(self._h5.keys()), None)
        if first is not None and self._h5[first].ndim != 2:
            raise ValueError(f"{path}: utterance {first!r} has shape {list(self._h5[first].shape)}; "
                             f"a frame-level set has [T, D] per utterance")
        self._cache = ({key: self._h5[key][()] for key in self._h5.keys()}
                       if path.stat().st_size <= cache_bytes else None)

    def read(self, utt_id: str) -> np.ndarray | None:
        if self._cache is not None:
            array = self._cache.get(utt_id)
        elif utt_id in self._h5:
            array = self._h5[utt_id][()]
        else:
            array = None
        if array is None:
            return None
        if self.max_frames is not None and len(array) > self.max_frames:
            keep = np.linspace(0, len(array) - 1, self.max_frames).round().astype(np.int64)
            array = array[keep]
        return array if len(array) else None

    def gather(self, utterance_ids: list[list[str]], n: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        x, frames = pad_frames([[self.read(u) for u in row] for row in utterance_ids], self.dim, n)
        return x, frames, frames.any(-1)

    def close(self) -> None:
        self._h5.close()


class DialogueData:
    """A feature directory's dialogues, splits and features for chosen modalities.

    Args:
        features_dir: the output directory (``manifest.jsonl`` and ``features/``).
        modalities: e.g. ``"l,a,v"``.
        features_map: modality -> feature set name, overriding the defaults of ``level``.
        level: ``"utterance"`` (defaults ``roberta_ft_cls``/``roberta_mean``,
            ``wav2vec2_ft_last``/``wav2vec2_mean``, ``denseface_mean``) or ``"frame"``
            (``roberta_frame``, ``wav2vec2_frame``, ``denseface_frame``).
        max_frames: frame level only, keep at most this many evenly spaced frames per utterance.
        frame_cache_bytes: frame level only, a feature file up to this size is held in memory.
    """

    def __init__(self, features_dir: str | Path, modalities: str | Sequence[str],
                 features_map: Mapping[str, str] | str | None = None, level: str = "utterance",
                 max_frames: int | None = None, frame_cache_bytes: int = 2 << 30):
        self.root = Path(features_dir)
        manifest = FeatureStore(self.root).manifest_path
        if not manifest.is_file():
            raise FileNotFoundError(
                f"{manifest} not found: --features must be an output directory of `m3ed extract` "
                f"(or `m3ed make-synthetic`) holding manifest.jsonl and features/")
        self.corpus = Corpus.from_jsonl(manifest)
        self.modalities = parse_modalities(modalities)
        self.level = level
        self.feature_sets = resolve_feature_sets(self.root, self.modalities,
                                                 parse_features_map(features_map), level)
        store = FeatureStore(self.root)
        self._sets: dict[str, _UtteranceLevelSet | _FrameLevelSet] = {}
        for m, name in self.feature_sets.items():
            path = store.feature_path(name)
            self._sets[m] = (_UtteranceLevelSet(path, self.corpus) if level == "utterance"
                             else _FrameLevelSet(path, max_frames, frame_cache_bytes))
        self.dims = {m: s.dim for m, s in self._sets.items()}
        self._speakers = {d.id: speaker_indices(d) for d in self.corpus}
        self.num_speakers = max((len(s) for s in self._speakers.values()), default=2)
        self._check_splits()

    def _check_splits(self) -> None:
        unknown = sorted({str(d.split) for d in self.corpus if d.split not in SPLITS})
        if unknown:
            raise ValueError(f"{self.root}/manifest.jsonl: dialogues with split {', '.join(unknown)}; "
                             f"every dialogue needs split train, val or test (TV-independent)")
        for name in SPLITS:
            if not any(d.split == name for d in self.corpus):
                raise ValueError(f"{self.root}/manifest.jsonl: no dialogue in split {name!r}")
        shows = {name: {d.show for d in self.corpus if d.split == name} for name in SPLITS}
        shared = (shows["train"] & shows["test"]) | (shows["train"] & shows["val"]) | (shows["val"] & shows["test"])
        self.tv_independent = not shared

    def split(self, name: str) -> list[Dialogue]:
        if name not in SPLITS:
            raise ValueError(f"split {name!r}: expected one of {SPLITS}")
        return [d for d in self.corpus if d.split == name]

    def labels(self, name: str) -> np.ndarray:
        """Class indices of the split's utterances with a known emotion."""
        return np.array([u.label for d in self.split(name) for u in d.utterances if u.label >= 0], np.int64)

    def collate(self, dialogues: Sequence[Dialogue]) -> Batch:
        """The one collate function: features, presence, speakers, mask, labels (-100 padded)."""
        if not dialogues:
            raise ValueError("cannot collate an empty list of dialogues")
        ids = [[u.id for u in d.utterances] for d in dialogues]
        n = max(len(row) for row in ids)
        mask = np.zeros((len(dialogues), n), bool)
        labels = np.full((len(dialogues), n), IGNORE_INDEX, np.int64)
        speakers = np.zeros((len(dialogues), n), np.int64)
        for i, d in enumerate(dialogues):
            index = self._speakers.get(d.id) or speaker_indices(d)
            mask[i, :len(d.utterances)] = True
            labels[i, :len(d.utterances)] = [u.label for u in d.utterances]
            speakers[i, :len(d.utterances)] = [index[u.speaker] for u in d.utterances]
        features, present, frames = {}, {}, {}
        for m, source in self._sets.items():
            if isinstance(source, _UtteranceLevelSet):
                x, has = source.gather(ids, n)
            else:
                x, frame_mask, has = source.gather(ids, n)
                frames[m] = torch.from_numpy(frame_mask)
            features[m], present[m] = torch.from_numpy(x), torch.from_numpy(has & mask)
        return Batch(features, present, torch.from_numpy(speakers), torch.from_numpy(mask),
                     torch.from_numpy(labels), [d.id for d in dialogues], ids, frames)

    def batches(self, split: str, batch_size: int, *, shuffle: bool = False, seed: int = 0) -> Iterator[Batch]:
        for group in length_bucketed_batches(self.split(split), batch_size, shuffle=shuffle, seed=seed):
            yield self.collate(group)

    def coverage(self) -> dict[str, float]:
        """Fraction of the corpus's utterances that have features, per modality (utterance level)."""
        total = max(sum(len(d.utterances) for d in self.corpus), 1)
        return {m: len(s.row) / total for m, s in self._sets.items() if isinstance(s, _UtteranceLevelSet)}

    def describe(self) -> str:
        sizes = ", ".join(f"{name} {len(self.split(name))}" for name in SPLITS)
        coverage = self.coverage()
        sets = ", ".join(f"{m}={name} ({self.dims[m]}-d" + (f", {100 * coverage[m]:.0f}% of utterances)"
                                                             if m in coverage else ")")
                         for m, name in self.feature_sets.items())
        return f"{self.root}: dialogues {sizes}; features {sets}"

    def close(self) -> None:
        for source in self._sets.values():
            if isinstance(source, _FrameLevelSet):
                source.close()

    def __enter__(self) -> "DialogueData":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

