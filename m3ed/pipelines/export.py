"""``m3ed export``: a feature directory in the layouts that other ERC code reads.

``--format dialoguernn``  the M3ED release's pickle (the authors' DialogueRNN-style loader): a
    10-item list ``[videoIDs, videoSpeakers, videoLabels, videoText, videoAudio, videoVisual,
    videoSentence, trainVid, valVid, testVid]``. The first seven are dicts keyed by dialogue id:
    utterance ids, speaker keys ("A"/"B"), labels (the release's map = EMOTIONS order: happy 0,
    neutral 1, sad 2, disgust 3, anger 4, fear 5, surprise 6; -100 where unknown, which
    ``nn.NLLLoss`` ignores), float32 ``[N, D]`` arrays per modality, and the texts; the last three
    are lists of dialogue ids (TV-independent split).
``--format iemocap``  the 9-item tuple that DialogueGCN's and MMGCN's IEMOCAP loaders unpack:
    ``(videoIDs, videoSpeakers, videoLabels, videoText, videoAudio, videoVisual, videoSentence,
    trainVid, testVid)``, speakers as "M"/"F" (A -> M, B -> F, what their loaders one-hot). Those
    loaders draw validation dialogues from ``trainVid``; our val dialogues are in the dicts but in
    neither list, so the test split stays unseen and the val split stays out of training.
``--format mmin``  MMIN's layout: ``{A,V,L}/{feature_set}.h5`` (flat utterance-id keys, like ours),
    ``target/1/{trn,val,tst}_label.npy`` and ``..._int2name.npy`` and an ``M3ED_config.json``.

Pickles use protocol 4 and hold only dicts, lists, str, int and NumPy float32 arrays that are
rebuilt through ``numpy.ndarray`` itself, so NumPy 1.x loads them (NumPy 2's default array pickling
names ``numpy._core``, which NumPy 1.x lacks; :func:`check_pickle_portable` verifies it).

These layouts have no way to say "missing": where an utterance lacks a modality the export writes
zeros, prints how many, and writes the counts in a notes file next to the output.
"""
from __future__ import annotations

import argparse
import io
import json
import pickle
import pickletools
import sys
from pathlib import Path
from typing import Any, Mapping

import h5py
import numpy as np

from ..catalogue import letter_of
from ..files import atomic_h5, atomic_write_bytes, atomic_write_text, require_room
from ..corpus import EMOTIONS
from ..models.data import MODALITIES, MODALITY_NAMES, DialogueData, parse_features_map
from ..store import FeatureReader, FeatureStore

__all__ = ["FORMATS", "add_export_parser", "check_pickle_portable", "export"]

FORMATS = ("dialoguernn", "iemocap", "mmin")
IEMOCAP_SPEAKERS = {"A": "M", "B": "F"}
MMIN_FOLDERS = {"l": "L", "a": "A", "v": "V"}
MMIN_SET_NAMES = {"trn": "train", "val": "val", "tst": "test"}


# ---- portable pickles -----------------------------------------------------------------------------
class _PortablePickler(pickle.Pickler):
    """Arrays as ``numpy.ndarray(shape, dtype, buffer)``: no ``numpy._core`` reference."""

    def reducer_override(self, obj: Any) -> Any:
        if isinstance(obj, np.ndarray):
            array = np.ascontiguousarray(obj)
            if array.dtype.hasobject:
                raise TypeError("object arrays cannot be exported portably")
            return np.ndarray, (array.shape, array.dtype.str, bytearray(array.tobytes()))
        if isinstance(obj, np.generic):
            raise TypeError(f"NumPy scalar {obj!r} in an export; convert it with .item() first")
        return NotImplemented


def dump_portable(obj: Any, path: Path) -> None:
    """Pickle (protocol 4) atomically and check that NumPy 1.x can load it."""
    buffer = io.BytesIO()
    _PortablePickler(buffer, protocol=4).dump(obj)
    data = buffer.getvalue()
    check_pickle_portable(data)
    atomic_write_bytes(path, data)


def check_pickle_portable(data: bytes) -> None:
    """Raise if the pickle names a module that NumPy 1.x lacks (``numpy._core``)."""
    for opcode, arg, _ in pickletools.genops(data):
        if opcode.name in ("GLOBAL", "SHORT_BINUNICODE", "BINUNICODE", "UNICODE") and isinstance(arg, str) \
                and arg.startswith("numpy._core"):
            raise ValueError(f"pickle references {arg!r}, which NumPy 1.x cannot load")


# ---- dialogue pickles -----------------------------------------------------------------------------
def _dialogue_dicts(data: DialogueData) -> tuple[dict[str, dict], dict[str, int]]:
    """The per-dialogue dicts of the DialogueRNN layouts, and the count of zero-filled utterances."""
    keys = ("videoIDs", "videoSpeakers", "videoLabels", "videoText", "videoAudio", "videoVisual", "videoSentence")
    out: dict[str, dict] = {k: {} for k in keys}
    missing = {m: 0 for m in MODALITIES}
    array_key = {"l": "videoText", "a": "videoAudio", "v": "videoVisual"}
    for dialogue in data.corpus:
        batch = data.collate([dialogue])
        out["videoIDs"][dialogue.id] = [u.id for u in dialogue.utterances]
        out["videoSpeakers"][dialogue.id] = [u.speaker for u in dialogue.utterances]
        out["videoLabels"][dialogue.id] = [int(u.label) for u in dialogue.utterances]
        out["videoSentence"][dialogue.id] = [u.text for u in dialogue.utterances]
        for m in MODALITIES:
            out[array_key[m]][dialogue.id] = np.ascontiguousarray(batch.features[m][0].numpy(), np.float32)
            missing[m] += int((~batch.present[m][0]).sum())
    return out, missing


def _split_ids(data: DialogueData, split: str) -> list[str]:
    return [d.id for d in data.split(split)]


def _export_dialoguernn(data: DialogueData, out: Path, notes: list[str]) -> None:
    dicts, missing = _dialogue_dicts(data)
    _note_missing(missing, data, notes)
    record = [dicts["videoIDs"], dicts["videoSpeakers"], dicts["videoLabels"], dicts["videoText"],
              dicts["videoAudio"], dicts["videoVisual"], dicts["videoSentence"],
              _split_ids(data, "train"), _split_ids(data, "val"), _split_ids(data, "test")]
    dump_portable(record, out)
    notes.append("layout: [videoIDs, videoSpeakers, videoLabels, videoText, videoAudio, videoVisual, "
                 "videoSentence, trainVid, valVid, testVid]; speakers are the dialogue's keys (A/B)")


def _export_iemocap(data: DialogueData, out: Path, notes: list[str]) -> None:
    others = sorted({u.speaker for u in data.corpus.utterances()} - set(IEMOCAP_SPEAKERS))
    if others:
        raise ValueError(f"the IEMOCAP layout has two speakers (M/F); this corpus also has speaker keys "
                         f"{others}. Use --format dialoguernn, which keeps the keys")
    dicts, missing = _dialogue_dicts(data)
    _note_missing(missing, data, notes)
    dicts["videoSpeakers"] = {k: [IEMOCAP_SPEAKERS[s] for s in v] for k, v in dicts["videoSpeakers"].items()}
    record = (dicts["videoIDs"], dicts["videoSpeakers"], dicts["videoLabels"], dicts["videoText"],
              dicts["videoAudio"], dicts["videoVisual"], dicts["videoSentence"],
              _split_ids(data, "train"), _split_ids(data, "test"))
    dump_portable(record, out)
    notes.append("layout: (videoIDs, videoSpeakers, videoLabels, videoText, videoAudio, videoVisual, "
                 "videoSentence, trainVid, testVid); speakers A -> 'M', B -> 'F'")
    notes.append(f"the {len(_split_ids(data, 'val'))} val dialogues are in the dicts but in neither trainVid "
                 f"nor testVid (the IEMOCAP layout has no val list); select them from videoIDs if needed")


def _note_missing(missing: Mapping[str, int], data: DialogueData, notes: list[str]) -> None:
    total = sum(len(d.utterances) for d in data.corpus)
    for m, count in missing.items():
        if count:
            notes.append(f"ZERO-FILLED: {count} of {total} utterances have no {MODALITY_NAMES[m]} features "
                         f"({data.feature_sets[m]}); the export holds zeros for them")


# ---- MMIN -----------------------------------------------------------------------------------------
def _mmin_sets(features_dir: Path, features_map: Mapping[str, str], notes: list[str]) -> dict[str, list[str]]:
    store = FeatureStore(features_dir)
    present = store.feature_sets()
    chosen: dict[str, list[str]] = {m: [] for m in MODALITIES}
    if features_map:
        for m, name in features_map.items():
            if name not in present:
                raise FileNotFoundError(f"feature set {name!r} (--features-map {m}={name}) not in "
                                        f"{store.features_dir}; present: {', '.join(present) or 'none'}")
            chosen[m].append(name)
        return chosen
    for name in present:
        m = letter_of(name)
        if m is None:
            notes.append(f"skipped feature set {name!r}: not a text, audio or visual set")
        else:
            chosen[m].append(name)
    if not any(chosen.values()):
        raise FileNotFoundError(f"no feature sets in {store.features_dir} to export")
    return chosen


def _export_mmin(features_dir: Path, features_map: Mapping[str, str], out: Path, notes: list[str]) -> None:
    store = FeatureStore(features_dir)
    corpus = store.corpus()
    if corpus is None:
        raise FileNotFoundError(f"{store.manifest_path}: not found; is {features_dir} the output of m3ed-extract?")
    ids = [u.id for u in corpus.utterances()]
    chosen = _mmin_sets(features_dir, features_map, notes)
    # Room for every file first (about the sources' size): a disk too small leaves an earlier export whole.
    require_room(out, sum(store.feature_path(name).stat().st_size for names in chosen.values() for name in names))
    for m, names in chosen.items():
        for name in names:
            folder = out / MMIN_FOLDERS[m]
            filled = _copy_h5_dense(store.feature_path(name), folder / f"{name}.h5", ids)
            if filled:
                notes.append(f"ZERO-FILLED: {filled} of {len(ids)} utterances have no {name} features; "
                             f"{MMIN_FOLDERS[m]}/{name}.h5 holds zeros for them")
    target = out / "target" / "1"
    unlabelled = 0
    for mmin_name, split in MMIN_SET_NAMES.items():
        utterances = [u for d in corpus if d.split == split for u in d.utterances]
        labelled = [u for u in utterances if u.label >= 0]
        unlabelled += len(utterances) - len(labelled)
        _save_npy(target / f"{mmin_name}_label.npy", np.array([u.label for u in labelled], np.int64))
        _save_npy(target / f"{mmin_name}_int2name.npy", np.array([u.id for u in labelled], dtype=str))
    if unlabelled:
        notes.append(f"{unlabelled} utterances without a known emotion are left out of target/")
    config = {"feature_root": str(out.resolve()), "target_root": str((out / "target").resolve()), "total_cv": 1}
    atomic_write_text(out / "M3ED_config.json", json.dumps(config, indent=2) + "\n")
    notes.append("layout: {A,V,L}/{feature_set}.h5, target/1/{trn,val,tst}_label.npy (EMOTIONS order) and "
                 "_int2name.npy (utterance ids), M3ED_config.json (copy it to MMIN's data/config/; cvNo 1)")


def _save_npy(path: Path, array: np.ndarray) -> None:
    buffer = io.BytesIO()
    np.save(buffer, array)
    atomic_write_bytes(path, buffer.getvalue())


def _copy_h5_dense(source: Path, destination: Path, ids: list[str]) -> int:
    """Copy a feature file, writing zeros ([D], or [1, D] for frame-level sets) for missing ids."""
    filled = 0
    with FeatureReader(source) as reader, h5py.File(source, "r") as raw, \
            atomic_h5(destination, size_hint=source.stat().st_size) as out:
        first = next(reader.keys(), None)
        frame_level = first is not None and reader[first].ndim == 2
        for utt_id in ids:
            array = reader.get(utt_id)
            if array is None:
                array = np.zeros((1, reader.dim) if frame_level else (reader.dim,), np.float32)
                filled += 1
            out.create_dataset(utt_id, data=array, track_times=False)
        for key, value in raw.attrs.items():
            out.attrs[key] = value
        out.attrs["zero_filled"] = filled
    return filled


# ---- entry point ----------------------------------------------------------------------------------
def export(features_dir: str | Path, fmt: str, out: str | Path, features_map: Mapping[str, str] | str | None = None,
           *, verbose: bool = True) -> dict[str, Any]:
    """Write ``features_dir`` in ``fmt`` to ``out``; returns ``{"format", "out", "notes"}``.

    The notes (what was zero-filled, the layout) are also printed and written to
    ``{out}.notes.txt`` (pickles) or ``{out}/NOTES.txt`` (MMIN).
    """
    if fmt not in FORMATS:
        raise ValueError(f"unknown export format {fmt!r}; choose one of {', '.join(FORMATS)}")
    features_dir, out = Path(features_dir), Path(out)
    mapping = parse_features_map(features_map)
    notes: list[str] = [f"source: {features_dir.resolve()}",
                        "labels: " + ", ".join(f"{e} {i}" for i, e in enumerate(EMOTIONS))]
    if fmt == "mmin":
        _export_mmin(features_dir, mapping, out, notes)
        notes_path = out / "NOTES.txt"
    else:
        with DialogueData(features_dir, MODALITIES, mapping) as data:
            notes.insert(1, "features: " + ", ".join(f"{m}={n}" for m, n in data.feature_sets.items()))
            (_export_dialoguernn if fmt == "dialoguernn" else _export_iemocap)(data, out, notes)
        notes_path = out.with_name(out.name + ".notes.txt")
    atomic_write_text(notes_path, "\n".join(notes) + "\n")
    if verbose:
        print(f"wrote {out} ({fmt})")
        for line in notes:
            print(f"  {line}")
    return {"format": fmt, "out": str(out), "notes": notes, "notes_path": str(notes_path)}


def add_export_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Add ``m3ed export`` to a CLI's subparsers."""
    parser = subparsers.add_parser("export", help="write features as a DialogueRNN/IEMOCAP pickle or MMIN files",
                                   description=__doc__.split("\n\n")[0])
    parser.add_argument("--features", required=True, type=Path, help="feature directory (manifest.jsonl + features/)")
    parser.add_argument("--format", required=True, choices=FORMATS, help="output layout")
    parser.add_argument("--out", required=True, type=Path, help="output file (pickles) or directory (mmin)")
    parser.add_argument("--features-map", default=None,
                        help="modality=feature_set pairs, e.g. l=roberta_mean (default: the training defaults; "
                             "mmin: every text/audio/visual set)")
    parser.add_argument("--quiet", action="store_true", help="print nothing")
    parser.set_defaults(func=_run)
    return parser


def _run(args: argparse.Namespace) -> int:
    try:
        export(args.features, args.format, args.out, args.features_map, verbose=not args.quiet)
    except (FileNotFoundError, ValueError) as e:
        print(f"m3ed export: {e}", file=sys.stderr)
        return 1
    return 0
