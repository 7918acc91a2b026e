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
    ``target/1/{trn,val,tst}_label.npy`` and ``..._int2name.npy`` and an ``M3ED_config.json`` whose
    paths are relative to the export directory (see :data:`MMIN_USAGE`).
``--format utt_baseline``  the MEmoConv ``codes/utt_baseline`` layout (``prepare_fts.py``,
    ``data/chmed_dataset.py``): ``{train,val,test}/label.npy``, ``int2name.npy`` and
    ``{speech,text,visual}_{feature_set}_ft.npy``, one row per utterance in label order; frame-level
    sets cut or zero-padded to the lengths of their M3ED runs (audio 150, visual 70, text 30), which
    their loader then reads as is; ``ef_m3ed_config.py`` holds ``ft_dir``/``target_dir`` relative to itself.

Pickles use protocol 4 and hold only dicts, lists, str, int and NumPy float32 arrays that are
rebuilt through ``numpy.ndarray`` itself, so NumPy 1.x loads them (NumPy 2's default array pickling
names ``numpy._core``, which NumPy 1.x lacks; :func:`check_pickle_portable` verifies it).

These layouts have no way to say "missing": where an utterance lacks a modality the export writes
zeros, prints how many, and writes the counts in a notes file next to the output. Utterances without
a known emotion are counted the same way and kept (label -100) or dropped (``--unlabelled``). A
feature file's ``model`` attribute names the model id; a local model directory goes to ``model_path``.
"""
from __future__ import annotations

import argparse
import io
import json
import os
import pickle
import pickletools
import sys
from pathlib import Path
from typing import Any, Mapping

import h5py
import numpy as np

from ..catalogue import letter_of
from ..files import atomic_h5, atomic_write_bytes, atomic_write_text, require_room
from ..corpus import EMOTIONS, Corpus, Utterance
from ..models.data import MODALITIES, MODALITY_NAMES, DialogueData, parse_features_map
from ..store import FeatureReader, FeatureStore

__all__ = ["FORMATS", "add_export_parser", "check_pickle_portable", "export"]

FORMATS = ("dialoguernn", "iemocap", "mmin", "utt_baseline")
UNLABELLED = ("drop", "keep")
# Keep by default where the dialogue is the unit (the label -100 is ignored by their losses, the
# utterance keeps its place in the dialogue); drop where utterances are classified alone.
DEFAULT_UNLABELLED = {"dialoguernn": "keep", "iemocap": "keep", "mmin": "drop", "utt_baseline": "drop"}
NO_LABEL = -100
UNLABELLED_HELP = (
    "utterances without a known emotion: keep them with label -100, or drop them (default: keep for dialoguernn "
    "and iemocap, drop for mmin and utt_baseline). dialoguernn/iemocap: DialogueRNN's, DialogueGCN's and MMGCN's "
    "NLLLoss ignore -100 in the loss, but their sklearn scores count it as an eighth class, so keep them only with "
    "a scorer that masks -100; dropping removes the utterance from its dialogue (its neighbours become adjacent). "
    "mmin: MMIN's CrossEntropyLoss ignores -100 in training, its evaluation scores it as a wrong answer. "
    "utt_baseline: their CrossEntropyLoss ignores -100, their f1_score counts it as a class.")
MMIN_USAGE = ("MMIN reads data/config/M3ED_config.json and resolves its relative paths from the working "
              "directory: cp {out}/M3ED_config.json MMIN/data/config/ && cd {out} && python MMIN/train_baseline.py "
              "--dataset_mode=multimodal --model=utt_fusion --corpus_name=M3ED --cvNo=1 --output_dim=7 "
              "--A_type={A} --input_dim_a={a_dim} --V_type={V} --input_dim_v={v_dim} --L_type={L} "
              "--input_dim_l={l_dim} ... (train_miss.py: --dataset_mode=multimodal_miss --model=mmin, the same "
              "types and --corpus_name=M3ED)")
UTT_BASELINE_TOKENS = {"a": 150, "v": 70, "l": 30}   # run.sh at HEAD: --max_{acoustic,visual,text}_tokens
UTT_BASELINE_FILES = {"a": "speech", "v": "visual", "l": "text"}
UTT_BASELINE_FLAGS = {"a": ("--a_ft_type", "--a_input_size", "--max_acoustic_tokens"),
                      "v": ("--v_ft_type", "--v_input_size", "--max_visual_tokens"),
                      "l": ("--l_ft_type", "--l_input_size", "--max_text_tokens")}
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
def _dialogue_dicts(data: DialogueData, keep_unlabelled: bool) -> tuple[dict[str, dict], dict[str, int]]:
    """The per-dialogue dicts of the DialogueRNN layouts (unlabelled utterances kept with -100 or left
    out), and the count of zero-filled utterances per modality."""
    keys = ("videoIDs", "videoSpeakers", "videoLabels", "videoText", "videoAudio", "videoVisual", "videoSentence")
    out: dict[str, dict] = {k: {} for k in keys}
    missing = {m: 0 for m in MODALITIES}
    array_key = {"l": "videoText", "a": "videoAudio", "v": "videoVisual"}
    for dialogue in data.corpus:
        rows = [i for i, u in enumerate(dialogue.utterances) if keep_unlabelled or u.label >= 0]
        if not rows:
            continue
        utterances = [dialogue.utterances[i] for i in rows]
        batch = data.collate([dialogue])
        out["videoIDs"][dialogue.id] = [u.id for u in utterances]
        out["videoSpeakers"][dialogue.id] = [u.speaker for u in utterances]
        out["videoLabels"][dialogue.id] = [int(u.label) if u.label >= 0 else NO_LABEL for u in utterances]
        out["videoSentence"][dialogue.id] = [u.text for u in utterances]
        for m in MODALITIES:
            out[array_key[m]][dialogue.id] = np.ascontiguousarray(batch.features[m][0, rows].numpy(), np.float32)
            missing[m] += int((~batch.present[m][0, rows]).sum())
    return out, missing


def _split_ids(data: DialogueData, split: str, dicts: Mapping[str, dict]) -> list[str]:
    return [d.id for d in data.split(split) if d.id in dicts["videoIDs"]]


def _export_dialoguernn(data: DialogueData, out: Path, notes: list[str], keep_unlabelled: bool) -> None:
    dicts, missing = _dialogue_dicts(data, keep_unlabelled)
    _note_missing(missing, data, notes)
    record = [dicts["videoIDs"], dicts["videoSpeakers"], dicts["videoLabels"], dicts["videoText"],
              dicts["videoAudio"], dicts["videoVisual"], dicts["videoSentence"],
              *(_split_ids(data, split, dicts) for split in ("train", "val", "test"))]
    dump_portable(record, out)
    notes.append("layout: [videoIDs, videoSpeakers, videoLabels, videoText, videoAudio, videoVisual, "
                 "videoSentence, trainVid, valVid, testVid]; speakers are the dialogue's keys (A/B)")


def _export_iemocap(data: DialogueData, out: Path, notes: list[str], keep_unlabelled: bool) -> None:
    others = sorted({u.speaker for u in data.corpus.utterances()} - set(IEMOCAP_SPEAKERS))
    if others:
        raise ValueError(f"the IEMOCAP layout has two speakers (M/F); this corpus also has speaker keys "
                         f"{others}. Use --format dialoguernn, which keeps the keys")
    dicts, missing = _dialogue_dicts(data, keep_unlabelled)
    _note_missing(missing, data, notes)
    dicts["videoSpeakers"] = {k: [IEMOCAP_SPEAKERS[s] for s in v] for k, v in dicts["videoSpeakers"].items()}
    record = (dicts["videoIDs"], dicts["videoSpeakers"], dicts["videoLabels"], dicts["videoText"],
              dicts["videoAudio"], dicts["videoVisual"], dicts["videoSentence"],
              _split_ids(data, "train", dicts), _split_ids(data, "test", dicts))
    dump_portable(record, out)
    notes.append("layout: (videoIDs, videoSpeakers, videoLabels, videoText, videoAudio, videoVisual, "
                 "videoSentence, trainVid, testVid); speakers A -> 'M', B -> 'F'")
    notes.append(f"the {len(_split_ids(data, 'val', dicts))} val dialogues are in the dicts but in neither trainVid "
                 f"nor testVid (the IEMOCAP layout has no val list); select them from videoIDs if needed")


def _note_missing(missing: Mapping[str, int], data: DialogueData, notes: list[str]) -> None:
    total = sum(len(d.utterances) for d in data.corpus)
    for m, count in missing.items():
        if count:
            notes.append(f"ZERO-FILLED: {count} of {total} utterances have no {MODALITY_NAMES[m]} features "
                         f"({data.feature_sets[m]}); the export holds zeros for them")


def _note_unlabelled(corpus: Corpus, keep: bool, notes: list[str]) -> None:
    total = sum(len(d.utterances) for d in corpus)
    count = sum(u.label < 0 for d in corpus for u in d.utterances)
    if count:
        action = f"kept with label {NO_LABEL}" if keep else "dropped (--unlabelled keep keeps them)"
        notes.append(f"UNLABELLED: {count} of {total} utterances have no known emotion; {action}")


def _utterances(corpus: Corpus, split: str, keep_unlabelled: bool) -> list[Utterance]:
    return [u for d in corpus if d.split == split for u in d.utterances if keep_unlabelled or u.label >= 0]


def _labels(utterances: list[Utterance]) -> np.ndarray:
    return np.array([u.label if u.label >= 0 else NO_LABEL for u in utterances], np.int64)


# ---- provenance -----------------------------------------------------------------------------------
def model_provenance(attrs: Mapping[str, Any]) -> dict[str, Any]:
    """Feature-file attributes with ``model`` the model id and a local directory in ``model_path``.

    A fine-tuned checkpoint (``finetune.json``) is named by its base model, marked fine-tuned; another
    local directory by its ``config.json`` ``_name_or_path`` when that is not a path, else its name."""
    out = {k: _plain(v) for k, v in attrs.items()}
    model = out.get("model")
    if not isinstance(model, str) or not model or not os.path.isdir(model):
        return out
    directory = Path(model)
    out["model_path"] = str(directory.resolve())
    out["model"] = directory.name
    for name, key in (("finetune.json", "base_model"), ("config.json", "_name_or_path")):
        try:
            named = json.loads((directory / name).read_text(encoding="utf-8")).get(key)
        except (OSError, ValueError):
            continue
        if isinstance(named, str) and named and not os.path.isdir(named) and not os.path.isabs(named):
            out["model"] = named + (" (fine-tuned)" if name == "finetune.json" else "")
            break
    return out


def _plain(value: Any) -> Any:
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    return value.item() if isinstance(value, np.generic) else value


# ---- MMIN -----------------------------------------------------------------------------------------
def _utterance_sets(features_dir: Path, features_map: Mapping[str, str], notes: list[str]) -> dict[str, list[str]]:
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


def _store_corpus(features_dir: Path) -> tuple[FeatureStore, Corpus]:
    store = FeatureStore(features_dir)
    corpus = store.corpus()
    if corpus is None:
        raise FileNotFoundError(f"{store.manifest_path}: not found; is {features_dir} the output of m3ed-extract?")
    return store, corpus


def _require_room_for_sources(store: FeatureStore, chosen: Mapping[str, list[str]], out: Path) -> None:
    """Room for every file first (about the sources' size): a disk too small leaves an earlier export whole."""
    require_room(out, sum(store.feature_path(name).stat().st_size for names in chosen.values() for name in names))


def _export_mmin(features_dir: Path, features_map: Mapping[str, str], out: Path, notes: list[str],
                 keep_unlabelled: bool) -> None:
    store, corpus = _store_corpus(features_dir)
    ids = [u.id for u in corpus.utterances()]
    chosen = _utterance_sets(features_dir, features_map, notes)
    _require_room_for_sources(store, chosen, out)
    dims = {}
    for m, names in chosen.items():
        for name in names:
            folder = out / MMIN_FOLDERS[m]
            filled, dims[name] = _copy_h5_dense(store.feature_path(name), folder / f"{name}.h5", ids)
            if filled:
                notes.append(f"ZERO-FILLED: {filled} of {len(ids)} utterances have no {name} features; "
                             f"{MMIN_FOLDERS[m]}/{name}.h5 holds zeros for them")
    _note_unlabelled(corpus, keep_unlabelled, notes)
    target = out / "target" / "1"
    for mmin_name, split in MMIN_SET_NAMES.items():
        utterances = _utterances(corpus, split, keep_unlabelled)
        _save_npy(target / f"{mmin_name}_label.npy", _labels(utterances))
        _save_npy(target / f"{mmin_name}_int2name.npy", np.array([u.id for u in utterances], dtype=str))
    # Relative to the export directory, where this file is written: MMIN resolves them from its working directory.
    config = {"data_root": ".", "feature_root": ".", "target_root": "target", "total_cv": 1}
    atomic_write_text(out / "M3ED_config.json", json.dumps(config, indent=2) + "\n")
    notes.append("layout: {A,V,L}/{feature_set}.h5, target/1/{trn,val,tst}_label.npy (EMOTIONS order) and "
                 "_int2name.npy (utterance ids), M3ED_config.json (paths relative to this directory)")
    first = {m: names[0] for m, names in chosen.items() if names}
    if set(first) == set(MODALITIES):
        notes.append(MMIN_USAGE.format(out=out, A=first["a"], V=first["v"], L=first["l"], a_dim=dims[first["a"]],
                                       v_dim=dims[first["v"]], l_dim=dims[first["l"]]))
    else:
        notes.append("MMIN opens an A, a V and an L file for every run; this export lacks "
                     + ", ".join(MMIN_FOLDERS[m] for m in MODALITIES if m not in first))


def _save_npy(path: Path, array: np.ndarray) -> None:
    buffer = io.BytesIO()
    np.save(buffer, array, allow_pickle=False)
    atomic_write_bytes(path, buffer.getvalue())


def _copy_h5_dense(source: Path, destination: Path, ids: list[str]) -> tuple[int, int]:
    """Copy a feature file, writing zeros ([D], or [1, D] for frame-level sets) for missing ids;
    returns (utterances zero-filled, feature dimension)."""
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
        for key, value in model_provenance(raw.attrs).items():
            out.attrs[key] = value
        out.attrs["zero_filled"] = filled
        return filled, reader.dim


# ---- MEmoConv utt_baseline ------------------------------------------------------------------------
def _export_utt_baseline(features_dir: Path, features_map: Mapping[str, str], out: Path, notes: list[str],
                         keep_unlabelled: bool) -> None:
    store, corpus = _store_corpus(features_dir)
    chosen = {m: names for m, names in _utterance_sets(features_dir, features_map, notes).items() if names}
    _require_room_for_sources(store, chosen, out)
    _note_unlabelled(corpus, keep_unlabelled, notes)
    provenance: dict[str, Any] = {}
    flags: list[str] = []
    for split in ("train", "val", "test"):
        utterances = _utterances(corpus, split, keep_unlabelled)
        _save_npy(out / split / "label.npy", _labels(utterances))
        _save_npy(out / split / "int2name.npy", np.array([u.id for u in utterances], dtype=str))
        for m, names in chosen.items():
            for name in names:
                filled, info = _write_utt_rows(store.feature_path(name), m, utterances,
                                               out / split / f"{UTT_BASELINE_FILES[m]}_{name}_ft.npy")
                provenance[name] = info
                if filled:
                    notes.append(f"ZERO-FILLED: {filled} of {len(utterances)} {split} utterances have no {name} "
                                 f"features; {split}/{UTT_BASELINE_FILES[m]}_{name}_ft.npy holds zeros for them")
    atomic_write_text(out / "features.json", json.dumps(provenance, indent=2, ensure_ascii=False) + "\n")
    for m, names in chosen.items():
        ft_flag, dim_flag, tokens_flag = UTT_BASELINE_FLAGS[m]
        info = provenance[names[0]]
        flags += [f"{ft_flag} {names[0]}", f"{dim_flag} {info['dim']}"]
        if info["frames"]:
            flags.append(f"{tokens_flag} {info['frames']}")
    atomic_write_text(out / "ef_m3ed_config.py", _UTT_BASELINE_CONFIG)
    notes.append("layout: {train,val,test}/label.npy (EMOTIONS order), int2name.npy (utterance ids), "
                 "{speech,text,visual}_{feature_set}_ft.npy (float32, one row per utterance, in int2name order); "
                 "features.json: each set's attributes; ef_m3ed_config.py: ft_dir and target_dir (this directory)")
    notes.append("MEmoConv codes/utt_baseline: import ef_m3ed_config as run_baseline.py's config module and run "
                 "run_baseline.py --dataset_mode chmed --modality " + "".join(m.upper() for m in chosen)
                 + " " + " ".join(flags) + " (their run_baseline.py at 2935007 reads sets trn/val/tst: rename "
                 "train and test, or pass the names prepare_fts.py writes)")


def _write_utt_rows(source: Path, modality: str, utterances: list[Utterance], path: Path) -> tuple[int, dict]:
    """One split's rows of one set: ``[N, D]``, or ``[N, T, D]`` with T the authors' limit (first
    frames kept, zeros after, as their loader pads); zeros for utterances without features."""
    with FeatureReader(source) as reader, h5py.File(source, "r") as raw:
        first = next(reader.keys(), None)
        frames = UTT_BASELINE_TOKENS[modality] if first is not None and reader[first].ndim == 2 else 0
        rows = np.zeros((len(utterances), frames, reader.dim) if frames else (len(utterances), reader.dim), np.float32)
        filled = 0
        for i, u in enumerate(utterances):
            array = reader.get(u.id)
            if array is None:
                filled += 1
            elif frames:
                rows[i, :min(frames, len(array))] = array[:frames]
            else:
                rows[i] = array
        info = {**model_provenance(raw.attrs), "dim": reader.dim, "frames": frames}
    _save_npy(path, rows)
    return filled, info


_UTT_BASELINE_CONFIG = '''"""Paths of an m3ed utt_baseline export, for MEmoConv codes/utt_baseline/run_baseline.py."""
import os

ft_dir = os.path.dirname(os.path.abspath(__file__))     # {train,val,test}/*_ft.npy
target_dir = ft_dir                                       # {train,val,test}/label.npy
result_dir = os.path.join(ft_dir, "results")
model_cfg = {"model_name": "early_fusion_multi", "dataset_mode": "chmed", "output_dim": 7}
'''


# ---- entry point ----------------------------------------------------------------------------------
def export(features_dir: str | Path, fmt: str, out: str | Path, features_map: Mapping[str, str] | str | None = None,
           *, unlabelled: str | None = None, verbose: bool = True) -> dict[str, Any]:
    """Write ``features_dir`` in ``fmt`` to ``out``; returns ``{"format", "out", "notes", "notes_path"}``.

    ``unlabelled``: ``"keep"`` (label -100) or ``"drop"`` utterances without a known emotion
    (None: :data:`DEFAULT_UNLABELLED`). The notes (what was zero-filled or unlabelled, the layout, how
    the consumer reads it) are also printed and written to ``{out}.notes.txt`` (pickles) or
    ``{out}/NOTES.txt`` (directories).
    """
    if fmt not in FORMATS:
        raise ValueError(f"unknown export format {fmt!r}; choose one of {', '.join(FORMATS)}")
    unlabelled = unlabelled or DEFAULT_UNLABELLED[fmt]
    if unlabelled not in UNLABELLED:
        raise ValueError(f"--unlabelled {unlabelled!r}: use {' or '.join(UNLABELLED)}")
    keep = unlabelled == "keep"
    features_dir, out = Path(features_dir), Path(out)
    mapping = parse_features_map(features_map)
    notes: list[str] = [f"source: {features_dir.resolve()}",
                        "labels: " + ", ".join(f"{e} {i}" for i, e in enumerate(EMOTIONS)) + f"; unknown {NO_LABEL}"]
    if fmt in ("mmin", "utt_baseline"):
        (_export_mmin if fmt == "mmin" else _export_utt_baseline)(features_dir, mapping, out, notes, keep)
        notes_path = out / "NOTES.txt"
    else:
        with DialogueData(features_dir, MODALITIES, mapping) as data:
            notes.insert(1, "features: " + ", ".join(f"{m}={n}" for m, n in data.feature_sets.items()))
            _note_unlabelled(data.corpus, keep, notes)
            (_export_dialoguernn if fmt == "dialoguernn" else _export_iemocap)(data, out, notes, keep)
        notes_path = out.with_name(out.name + ".notes.txt")
    atomic_write_text(notes_path, "\n".join(notes) + "\n")
    if verbose:
        print(f"wrote {out} ({fmt})")
        for line in notes:
            print(f"  {line}")
    return {"format": fmt, "out": str(out), "notes": notes, "notes_path": str(notes_path)}


def add_export_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Add ``m3ed export`` to a CLI's subparsers."""
    parser = subparsers.add_parser("export", help="write features for DialogueRNN/DialogueGCN/MMGCN, MMIN or "
                                                  "MEmoConv's utt_baseline", description=__doc__.split("\n\n")[0])
    parser.add_argument("--features", required=True, type=Path, help="feature directory (manifest.jsonl + features/)")
    parser.add_argument("--format", required=True, choices=FORMATS, help="output layout")
    parser.add_argument("--out", required=True, type=Path, help="output file (pickles) or directory (mmin, utt_baseline)")
    parser.add_argument("--features-map", default=None,
                        help="modality=feature_set pairs, e.g. l=roberta_mean (default: the training defaults; "
                             "mmin and utt_baseline: every text/audio/visual set)")
    parser.add_argument("--unlabelled", choices=UNLABELLED, default=None, help=UNLABELLED_HELP)
    parser.add_argument("--quiet", action="store_true", help="print nothing")
    parser.set_defaults(func=_run)
    return parser


def _run(args: argparse.Namespace) -> int:
    try:
        export(args.features, args.format, args.out, args.features_map, unlabelled=args.unlabelled,
               verbose=not args.quiet)
    except (FileNotFoundError, ValueError) as e:
        print(f"m3ed export: {e}", file=sys.stderr)
        return 1
    return 0
