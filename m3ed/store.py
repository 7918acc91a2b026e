"""The feature store: one HDF5 file per feature set, written crash-safely and resumably.

Layout of an output directory::

    OUT/manifest.jsonl            the corpus (splits, labels, times), one dialogue per line
    OUT/features/{set}.h5         flat keys = utterance ids; float32 [T, D] or [D]; provenance attrs
    OUT/failures.jsonl            what could not be produced, and why
    OUT/notes.jsonl               what was produced differently from the annotation (e.g. clipped), and why
    OUT/run.json                  configuration, versions, timings
    OUT/.parts/{set}/{dialogue}.h5           one finished work unit (a dialogue)
    OUT/.parts/{set}/{dialogue}.failed.json  a dialogue that failed as a whole (retried on re-run)

A killed h5py writer leaves a file that will not open, so nothing is ever written in place:
each dialogue's results go to a part file under a temporary name that is renamed when complete,
and a finished feature file is assembled from the parts in corpus order and published by an
atomic rename. Re-running the same command skips finished dialogues and assembles the same bytes.

A dialogue is *current* for a feature set when a finished part, or the published file, holds it
with this configuration and this very dialogue record (``dialogue_hash``): so a run on a subset of
dialogues adds or replaces them and carries every other published dialogue over unchanged.
"""
from __future__ import annotations

import hashlib
import json
import shutil
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Iterable, Iterator, Mapping
from urllib.parse import quote

import h5py
import numpy as np

from . import __version__
from .catalogue import spec as catalogue_spec
from .corpus import Corpus, Dialogue, dialogue_to_dict
from .files import DiskFull, atomic_h5, atomic_write_text

__all__ = ["Failure", "FeatureStore", "FeatureReader", "config_hash", "dialogue_hash", "atomic_write_text",
           "DiskFull", "pad_frames"]

FORMAT_NAME = "m3ed-features"
FORMAT_VERSION = 1


@dataclass(frozen=True)
class Failure:
    """One thing that could not be produced. ``utterance_id`` is None for a whole dialogue."""

    feature_set: str
    dialogue_id: str
    utterance_id: str | None
    reason: str

    def to_json(self) -> str:
        return json.dumps(asdict(self), ensure_ascii=False)


def config_hash(config: Mapping) -> str:
    """A short, stable digest of a configuration (what makes two runs' outputs comparable)."""
    return hashlib.sha256(json.dumps(config, sort_keys=True, default=str).encode()).hexdigest()[:16]


def dialogue_hash(dialogue: Dialogue) -> str:
    """A digest of everything the annotation says about a dialogue (times, texts, speakers...)."""
    return config_hash(dialogue_to_dict(dialogue))


def _write_failures_file(path: Path, failures: Iterable[Failure]) -> None:
    atomic_write_text(path, "".join(f.to_json() + "\n" for f in failures))


def _read_failures_file(path: Path) -> list[Failure]:
    if not path.exists():
        return []
    lines = path.read_text(encoding="utf-8").splitlines()
    return [Failure(**json.loads(line)) for line in lines if line.strip()]


def _file_name(dialogue_id: str) -> str:
    """A file name for any dialogue id (slashes, non-ASCII), reversible and collision-free."""
    return quote(dialogue_id, safe="")


def _set_attrs(h5: h5py.File, attrs: Mapping) -> None:
    for key in sorted(attrs):
        value = attrs[key]
        h5.attrs[key] = json.dumps(value, sort_keys=True) if isinstance(value, (dict, list, tuple)) else value


class FeatureStore:
    """Writes the output directory; see the module docstring for the layout."""

    def __init__(self, out_dir: str | Path):
        self.root = Path(out_dir)
        self.features_dir = self.root / "features"
        self.parts_dir = self.root / ".parts"
        self.manifest_path = self.root / "manifest.jsonl"
        self.failures_path = self.root / "failures.jsonl"
        self.notes_path = self.root / "notes.jsonl"
        self.run_path = self.root / "run.json"
        self.clips_dir = self.root / "clips"

    def feature_path(self, feature_set: str) -> Path:
        return self.features_dir / f"{feature_set}.h5"

    def feature_sets(self) -> list[str]:
        """The published feature sets, by name."""
        return sorted(p.stem for p in self.features_dir.glob("*.h5")) if self.features_dir.exists() else []

    def reader(self, feature_set: str) -> "FeatureReader":
        """The published file of ``feature_set``; a clear error names the sets there are."""
        path = self.feature_path(feature_set)
        if not path.exists():
            raise FileNotFoundError(f"feature set {feature_set!r} not in {self.features_dir}; present: "
                                    f"{', '.join(self.feature_sets()) or 'none'}")
        return FeatureReader(path)

    def part_path(self, feature_set: str, dialogue_id: str) -> Path:
        return self.parts_dir / feature_set / f"{_file_name(dialogue_id)}.h5"

    def scratch_path(self, folder: str, dialogue_id: str, suffix: str) -> Path:
        """A file one stage leaves for a later one of the same run about one dialogue: not output, and
        removed when the run ends (:meth:`remove_scratch`)."""
        return self.parts_dir / ".scratch" / folder / f"{_file_name(dialogue_id)}{suffix}"

    def remove_scratch(self) -> None:
        shutil.rmtree(self.parts_dir / ".scratch", ignore_errors=True)

    def _failed_path(self, feature_set: str, dialogue_id: str) -> Path:
        return self.parts_dir / feature_set / f"{_file_name(dialogue_id)}.failed.json"

    # ---- work units -------------------------------------------------------------------------
    def is_done(self, feature_set: str, dialogue_id: str, config: str, dialogue: str | None = None) -> bool:
        """A unit is done when its part exists, opens, is marked complete and has this config (and,
        when ``dialogue`` is given, was made from the dialogue record with this hash)."""
        path = self.part_path(feature_set, dialogue_id)
        if not path.exists():
            return False
        try:
            with h5py.File(path, "r") as h5:
                return (bool(h5.attrs.get("complete", False)) and h5.attrs.get("config_hash") == config
                        and (dialogue is None or h5.attrs.get("dialogue_hash") == dialogue))
        except OSError:
            return False

    def write_part(self, feature_set: str, dialogue_id: str, arrays: Mapping[str, np.ndarray],
                   failures: Iterable[Failure] = (), *, config: str, dialogue: str | None = None) -> Path:
        """Write one dialogue's results for one feature set: temporary name, then atomic rename."""
        bad = [key for key in arrays if "/" in key or key in (".", "")]
        if bad:
            raise ValueError(f"dialogue {dialogue_id}: utterance id {bad[0]!r} cannot be an HDF5 key "
                             f"(no '/' allowed); rename it in the annotations")
        _check_arrays(feature_set, dialogue_id, arrays)
        path = self.part_path(feature_set, dialogue_id)
        size = sum(np.asarray(a).size * 4 for a in arrays.values())
        with atomic_h5(path, size_hint=size) as h5:
            for key, array in arrays.items():
                h5.create_dataset(key, data=np.asarray(array, dtype=np.float32), track_times=False)
            h5.attrs["dialogue_id"] = dialogue_id
            h5.attrs["config_hash"] = config
            if dialogue is not None:
                h5.attrs["dialogue_hash"] = dialogue
            h5.attrs["failures"] = json.dumps([asdict(f) for f in failures], ensure_ascii=False)
            h5.attrs["complete"] = True
        self._failed_path(feature_set, dialogue_id).unlink(missing_ok=True)
        return path

    def is_failed(self, feature_set: str, dialogue_id: str) -> bool:
        return self._failed_path(feature_set, dialogue_id).exists()

    def part_config(self, feature_set: str, dialogue_id: str) -> str | None:
        """The configuration hash a dialogue's part was made with (None: no readable part)."""
        try:
            with h5py.File(self.part_path(feature_set, dialogue_id), "r") as h5:
                return str(h5.attrs.get("config_hash"))
        except (OSError, FileNotFoundError):
            return None

    def write_dialogue_failure(self, feature_set: str, dialogue_id: str, reason: str) -> None:
        """Record that a whole dialogue failed; it is not done, so a re-run tries it again."""
        path = self._failed_path(feature_set, dialogue_id)
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(path, Failure(feature_set, dialogue_id, None, reason).to_json() + "\n")

    def failures(self, feature_set: str, corpus: Corpus, previous: Iterable[Failure] = ()) -> list[Failure]:
        """Failures recorded for ``feature_set``, in corpus order: from the parts, and from ``previous``
        (failures.jsonl) for dialogues without a part (carried over from the published file)."""
        earlier: dict[str, list[Failure]] = {}
        for f in previous:
            if f.feature_set == feature_set:
                earlier.setdefault(f.dialogue_id, []).append(f)
        found: list[Failure] = []
        for dialogue in corpus:
            failed = self._failed_path(feature_set, dialogue.id)
            part = self.part_path(feature_set, dialogue.id)
            if failed.exists():
                found.append(Failure(**json.loads(failed.read_text(encoding="utf-8"))))
            elif part.exists():
                with h5py.File(part, "r") as h5:
                    found += [Failure(**f) for f in json.loads(h5.attrs["failures"])]
            else:
                found += earlier.get(dialogue.id, [])
        return found

    # ---- publishing -------------------------------------------------------------------------
    def publish(self, feature_set: str, corpus: Corpus, attrs: Mapping, *,
                dialogue_hashes: Mapping[str, str] | None = None) -> Path | None:
        """Assemble ``features/{set}.h5`` atomically, in corpus order, from the finished parts and,
        for dialogues without a part, from the published file when it holds them with this
        configuration and the same dialogue record. Returns None (and writes nothing) when there is
        nothing to publish: an empty feature file is never written.

        ``dialogue_hashes`` (dialogue id -> :func:`dialogue_hash`) is recorded in the file so that a
        later run knows which dialogues it holds; without it, only parts are used.
        """
        path = self.feature_path(feature_set)
        config = attrs.get("config_hash")
        carried = self.published_dialogues(feature_set, config) if dialogue_hashes is not None else {}
        sources: list[tuple[Dialogue, Path]] = []
        for dialogue in corpus:
            part = self.part_path(feature_set, dialogue.id)
            record = dialogue_hashes.get(dialogue.id) if dialogue_hashes is not None else None
            if part.exists() and (config is None or self.is_done(feature_set, dialogue.id, config, record)):
                sources.append((dialogue, part))
            elif record is not None and carried.get(dialogue.id) == record:
                sources.append((dialogue, path))
        size = sum(p.stat().st_size for p in {p for _, p in sources})
        try:
            self._assemble(path, sources, attrs, dialogue_hashes, size)
        except _NothingToPublish:
            return None
        return path

    def _assemble(self, path, sources, attrs, dialogue_hashes, size) -> None:
        feature_set = attrs.get("feature_set", path.stem)
        dims: set[int] = set()
        held: dict[str, str] = {}
        with atomic_h5(path, size_hint=size) as out:
            for dialogue, source in sources:
                with h5py.File(source, "r") as h5:
                    for utterance in dialogue.utterances:
                        if utterance.id in h5:
                            if utterance.id in out:
                                raise ValueError(f"{path}: utterance id {utterance.id!r} of dialogue {dialogue.id} "
                                                 f"is published twice (ids must be unique in the corpus)")
                            data = h5[utterance.id][()]
                            dims.add(int(data.shape[-1]) if data.ndim else 1)
                            out.create_dataset(utterance.id, data=data, track_times=False)
                if dialogue_hashes is not None:
                    held[dialogue.id] = dialogue_hashes[dialogue.id]
            if not len(out):
                raise _NothingToPublish
            if len(dims) > 1:   # parts of one set must agree: a mixed file would break every reader
                raise ValueError(f"{path}: the parts hold arrays of sizes {sorted(dims)}; they come from different "
                                 f"models or options. Remove {self.parts_dir / feature_set} and re-run")
            extra = {"dialogue_hashes": held} if dialogue_hashes is not None else {}
            known = catalogue_spec(feature_set)
            _set_attrs(out, {
                "format": FORMAT_NAME, "format_version": FORMAT_VERSION, "feature_set": feature_set,
                "package_version": __version__, "dim": dims.pop() if dims else 0,
                **(known.attrs() if known else {}), **attrs, **extra,
            })

    def _published_attrs(self, feature_set: str) -> dict:
        """The attributes of ``features/{set}.h5`` ({} when it is missing or unreadable)."""
        path = self.feature_path(feature_set)
        if not path.exists():
            return {}
        try:
            with h5py.File(path, "r") as h5:
                return dict(h5.attrs)
        except OSError:
            return {}

    def published_dialogues(self, feature_set: str, config: str | None) -> dict[str, str]:
        """``{dialogue id: dialogue hash}`` of the published file when it has configuration ``config``."""
        attrs = self._published_attrs(feature_set) if config is not None else {}
        if attrs.get("config_hash") != config:
            return {}
        try:
            return json.loads(attrs.get("dialogue_hashes", "{}"))
        except json.JSONDecodeError:
            return {}

    def published_config(self, feature_set: str) -> str | None:
        value = self._published_attrs(feature_set).get("config_hash")
        return None if value is None else str(value)

    def is_published(self, feature_set: str, config: str, corpus: str | None = None) -> bool:
        """Whether ``features/{set}.h5`` exists with this configuration (and this corpus digest)."""
        attrs = self._published_attrs(feature_set)
        return attrs.get("config_hash") == config and (corpus is None or attrs.get("corpus_hash") == corpus)

    def write_manifest(self, corpus: Corpus) -> None:
        """The corpus as ``manifest.jsonl``; an identical manifest is left untouched."""
        if self.manifest_path.exists() and self.manifest_path.read_text(encoding="utf-8") == corpus.jsonl_text():
            return
        self.root.mkdir(parents=True, exist_ok=True)
        corpus.to_jsonl(self.manifest_path)

    def corpus(self) -> Corpus | None:
        """The corpus of ``manifest.jsonl``, or None when there is none yet."""
        return Corpus.from_jsonl(self.manifest_path) if self.manifest_path.exists() else None

    def write_failures(self, failures: Iterable[Failure]) -> None:
        _write_failures_file(self.failures_path, failures)

    def write_notes(self, notes: Iterable[Failure]) -> None:
        """Records of the failures' shape for data kept with a change (e.g. a clipped utterance)."""
        notes = list(notes)
        if notes or self.notes_path.exists():
            _write_failures_file(self.notes_path, notes)

    def read_notes(self) -> list[Failure]:
        return _read_failures_file(self.notes_path)

    def write_run(self, record: Mapping) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        atomic_write_text(self.run_path, json.dumps(record, indent=2, ensure_ascii=False, default=str) + "\n")

    def read_failures(self) -> list[Failure]:
        return _read_failures_file(self.failures_path)

    def remove_parts(self, feature_set: str) -> None:
        """Delete a feature set's parts once its file is published (they hold the same data)."""
        folder = self.parts_dir / feature_set
        if folder.exists():
            for item in folder.iterdir():
                item.unlink()
            folder.rmdir()


class _NothingToPublish(Exception):
    """Raised inside :meth:`FeatureStore.publish` to abandon an empty file."""


def _check_arrays(feature_set: str, dialogue_id: str, arrays: Mapping[str, np.ndarray]) -> None:
    """Every array of a known set has its level's axes, and one dialogue's arrays share one size."""
    known = catalogue_spec(feature_set)
    dims = set()
    for key, array in arrays.items():
        shape = np.shape(array)
        if known:
            known.check(key, shape)
        dims.add(shape[-1] if shape else 1)
    if len(dims) > 1:
        raise ValueError(f"{feature_set}: dialogue {dialogue_id}: arrays of different sizes {sorted(dims)}")


class FeatureReader:
    """Reads one feature file: arrays by utterance id, and padded dialogue batches with masks."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        try:
            self._h5 = h5py.File(self.path, "r")
        except OSError as e:
            raise OSError(f"{self.path}: cannot open feature file ({e})") from e
        self.attrs = {k: _decode_attr(v) for k, v in self._h5.attrs.items()}

    @classmethod
    def open(cls, out_dir: str | Path, feature_set: str) -> "FeatureReader":
        return FeatureStore(out_dir).reader(feature_set)

    @property
    def feature_set(self) -> str:
        return str(self.attrs.get("feature_set", self.path.stem))

    @property
    def dim(self) -> int:
        return int(self.attrs["dim"])

    def __getitem__(self, utterance_id: str) -> np.ndarray:
        try:
            return self._h5[utterance_id][()]
        except KeyError:
            raise KeyError(f"{self.path}: no features for utterance {utterance_id!r}") from None

    def get(self, utterance_id: str) -> np.ndarray | None:
        return self._h5[utterance_id][()] if utterance_id in self._h5 else None

    def __contains__(self, utterance_id: str) -> bool:
        return utterance_id in self._h5

    def keys(self) -> Iterator[str]:
        return iter(self._h5.keys())

    def __len__(self) -> int:
        return len(self._h5)

    def dialogue_batch(self, dialogues: list[Dialogue]) -> tuple[np.ndarray, np.ndarray]:
        """Features of whole dialogues, zero-padded, with a mask of what is real.

        Utterance-level sets give ``x [B, N, D]`` and ``mask [B, N]``; frame-level sets give
        ``x [B, N, T, D]`` and ``mask [B, N, T]``. An utterance without features is all-masked.
        """
        arrays = [[self.get(u.id) for u in d.utterances] for d in dialogues]
        present = [a for row in arrays for a in row if a is not None]
        frame_level = bool(present) and present[0].ndim == 2
        n = max((len(row) for row in arrays), default=0)
        if not frame_level:
            x = np.zeros((len(dialogues), n, self.dim), np.float32)
            mask = np.zeros((len(dialogues), n), bool)
            for i, row in enumerate(arrays):
                for j, a in enumerate(row):
                    if a is not None:
                        x[i, j], mask[i, j] = a, True
            return x, mask
        return pad_frames(arrays, self.dim)

    def close(self) -> None:
        self._h5.close()

    def __enter__(self) -> "FeatureReader":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class PartsReader:
    """A feature set's finished parts read like a published file (``get``, ``attrs``): a shard's
    results, which ``m3ed merge`` publishes only once every shard is done, for the stages after it
    in the same shard (the visual stage reads the asd stage's speaker faces)."""

    def __init__(self, store: "FeatureStore", feature_set: str):
        self.feature_set = feature_set
        self._parts: dict[str, Path] = {}   # utterance id -> its dialogue's part
        configs = set()
        for path in sorted((store.parts_dir / feature_set).glob("*.h5")):
            with h5py.File(path, "r") as h5:
                if not h5.attrs.get("complete", False):
                    continue
                configs.add(_decode_attr(h5.attrs["config_hash"]))
                self._parts.update(dict.fromkeys(h5.keys(), path))
        if len(configs) > 1:
            raise ValueError(f"{store.parts_dir / feature_set}: unpublished parts of {feature_set} from {len(configs)} "
                             f"configurations; run that stage again with one configuration for every shard")
        self.attrs = {"feature_set": feature_set, "config_hash": configs.pop()} if configs else {}

    def __len__(self) -> int:
        return len(self._parts)

    def get(self, utterance_id: str) -> np.ndarray | None:
        path = self._parts.get(utterance_id)
        if path is None:
            return None
        with h5py.File(path, "r") as h5:
            return h5[utterance_id][()]

    def close(self) -> None:
        pass

    def __enter__(self) -> "PartsReader":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def pad_frames(rows: list[list[np.ndarray | None]], dim: int, n: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Frame-level arrays ``[T, D]`` (None: missing) per dialogue row -> zero-padded ``x [B, N, T, D]``
    and ``mask [B, N, T]`` of the real frames."""
    n = max((len(row) for row in rows), default=0) if n is None else n
    t = max((len(a) for row in rows for a in row if a is not None), default=1)
    x = np.zeros((len(rows), n, t, dim), np.float32)
    mask = np.zeros((len(rows), n, t), bool)
    for i, row in enumerate(rows):
        for j, a in enumerate(row):
            if a is not None:
                x[i, j, : len(a)], mask[i, j, : len(a)] = a, True
    return x, mask


def _decode_attr(value):
    if isinstance(value, bytes):
        value = value.decode()
    if isinstance(value, str) and value[:1] in "[{":
        try:
            return json.loads(value)
        except json.JSONDecodeError:
            return value
    return value.item() if isinstance(value, np.generic) else value
