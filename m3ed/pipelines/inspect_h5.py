"""``m3ed inspect FILE.h5 [KEY] [--json]``: what a feature file holds, without writing code.

Without a key: format, version, feature set, dim, model and revision, config hash, number of
keys, the shapes of the first keys, frame counts, and statistics over every value of the file
(NaN/Inf counts, range, mean, standard deviation). With a key: that array's shape, dtype,
statistics and first rows. ``--json`` prints the same as one JSON object for scripts.

The statistics (:class:`ValueStats`, :func:`summarize_file`) are also the numbers of
``m3ed report``. Files are read through :class:`m3ed.store.FeatureReader`; a file that is not an
m3ed feature file, or a key it does not have, is an error (exit code 2) that says what to do.
"""
from __future__ import annotations

import argparse
import json
from dataclasses import dataclass
from pathlib import Path

import h5py
import numpy as np

from ..store import FORMAT_NAME, FeatureReader

SHOWN_SHAPES = 5     # keys whose shapes the summary lists
SHOWN_ROWS = 5       # rows printed for one key


class InspectError(ValueError):
    """The file or key cannot be inspected; the message says why and what to do (exit code 2)."""


@dataclass
class ValueStats:
    """Streaming statistics over many arrays: counts of NaN/Inf, and range, mean and standard
    deviation of the finite values (merged per array with Chan's formula, exact in float64)."""

    values: int = 0
    nan: int = 0
    inf: int = 0
    finite: int = 0
    minimum: float = np.inf
    maximum: float = -np.inf
    mean: float = 0.0
    _m2: float = 0.0

    def add(self, array: np.ndarray) -> None:
        a = np.asarray(array, np.float64).ravel()
        self.values += a.size
        self.nan += int(np.isnan(a).sum())
        self.inf += int(np.isinf(a).sum())
        a = a[np.isfinite(a)]
        if a.size == 0:
            return
        n, mean = a.size, float(a.mean())
        m2 = float(((a - mean) ** 2).sum())
        total = self.finite + n
        delta = mean - self.mean
        self.mean += delta * n / total
        self._m2 += m2 + delta * delta * self.finite * n / total
        self.finite = total
        self.minimum = min(self.minimum, float(a.min()))
        self.maximum = max(self.maximum, float(a.max()))

    def to_dict(self) -> dict:
        empty = self.finite == 0
        return {"values": self.values, "nan": self.nan, "inf": self.inf,
                "min": None if empty else self.minimum, "max": None if empty else self.maximum,
                "mean": None if empty else self.mean,
                "std": None if empty else float(np.sqrt(self._m2 / self.finite))}


def open_feature_file(path: str | Path) -> FeatureReader:
    """A :class:`FeatureReader` on ``path``, or an :class:`InspectError` when it is not ours."""
    path = Path(path)
    if not path.is_file():
        raise InspectError(f"{path}: no such file; feature files are OUT/features/{{set}}.h5 of an m3ed-extract run")
    if not h5py.is_hdf5(path):
        raise InspectError(f"{path}: not an HDF5 file; m3ed feature files are OUT/features/{{set}}.h5")
    reader = FeatureReader(path)
    if reader.attrs.get("format") != FORMAT_NAME:
        found = reader.attrs.get("format")
        reader.close()
        raise InspectError(f"{path}: an HDF5 file, but not an m3ed feature file (root attribute format is "
                           f"{found!r}, expected {FORMAT_NAME!r}); open it with h5py, or inspect a file "
                           f"written by m3ed-extract (OUT/features/{{set}}.h5)")
    return reader


def summarize_file(path: str | Path) -> dict:
    """The summary of one feature file (what ``m3ed inspect FILE`` shows)."""
    with open_feature_file(path) as reader:
        attrs = reader.attrs
        stats, lengths, shapes, ndims = ValueStats(), [], {}, set()
        for key in reader.keys():
            array = reader[key]
            stats.add(array)
            ndims.add(array.ndim)
            lengths.append(len(array) if array.ndim == 2 else 1)
            if len(shapes) < SHOWN_SHAPES:
                shapes[key] = list(array.shape)
        level = {frozenset({1}): "utterance", frozenset({2}): "frame"}.get(frozenset(ndims), "mixed" if ndims else "empty")
        summary = {
            "path": str(path), "format": attrs.get("format"), "format_version": attrs.get("format_version"),
            "feature_set": reader.feature_set, "dim": attrs.get("dim"),
            "model": attrs.get("model", attrs.get("asd_model")), "revision": attrs.get("revision"),
            "config_hash": attrs.get("config_hash"), "package_version": attrs.get("package_version"),
            "keys": len(lengths), "level": level, "shapes": shapes, "stats": stats.to_dict(),
        }
        if level == "frame":
            summary["frames"] = {"total": int(sum(lengths)), "min": int(min(lengths)),
                                 "mean": float(np.mean(lengths)), "max": int(max(lengths))}
        summary["attrs"] = {k: _plain(v) for k, v in sorted(attrs.items())}
        return summary


def describe_key(path: str | Path, key: str) -> dict:
    """One array of a feature file: shape, dtype, statistics and first rows."""
    with open_feature_file(path) as reader:
        if key not in reader:
            keys = list(reader.keys())
            close = [k for k in keys if k.startswith(key.rsplit("_", 1)[0])][:5] or keys[:5]
            raise InspectError(f"{path}: no key {key!r} ({len(keys)} keys, e.g. {', '.join(close)}); a missing "
                               f"utterance is explained in OUT/failures.jsonl; `m3ed inspect {path}` lists the file")
        array = reader[key]
        columns = reader.attrs.get("columns")
    stats = ValueStats()
    stats.add(array)
    rows = array[:SHOWN_ROWS] if array.ndim == 2 else array[None]
    result = {"path": str(path), "key": key, "shape": list(array.shape), "dtype": str(array.dtype),
              "stats": stats.to_dict(), "first_rows": _plain(rows)}
    if isinstance(columns, list) and len(columns) == array.shape[-1]:
        result["columns"] = columns   # named columns (speaker_faces)
    return result


def _plain(value):
    """JSON-ready: arrays to lists, non-finite floats to None."""
    if isinstance(value, np.ndarray):
        return [_plain(v) for v in value.tolist()]
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, float) and not np.isfinite(value):
        return None
    return value.item() if isinstance(value, np.generic) else value


# ---- command line -------------------------------------------------------------------------------
def add_inspect_parser(subparsers) -> argparse.ArgumentParser:
    p = subparsers.add_parser("inspect", help="summarise a feature file (.h5), or one key of it")
    p.add_argument("file", type=Path, metavar="FILE.h5", help="a feature file, e.g. OUT/features/roberta_mean.h5")
    p.add_argument("key", nargs="?", help="an utterance id: show this array")
    p.add_argument("--json", action="store_true", help="print one JSON object instead of text")
    p.set_defaults(func=run_inspect)
    return p


def run_inspect(args: argparse.Namespace) -> int:
    result = describe_key(args.file, args.key) if args.key else summarize_file(args.file)
    if args.json:
        print(json.dumps(result, indent=2, ensure_ascii=False))
    else:
        print(format_key(result) if args.key else format_summary(result))
    return 0


def format_summary(s: dict) -> str:
    lines = [f"{s['path']}",
             f"  format          {s['format']} v{s['format_version']} (package {s['package_version']})",
             f"  feature set     {s['feature_set']}  ({s['level']} level, dim {s['dim']})",
             f"  model           {s['model']}" + (f" @ {s['revision']}" if s.get("revision") else ""),
             f"  config hash     {s['config_hash']}",
             f"  keys            {s['keys']}"]
    if "frames" in s:
        f = s["frames"]
        lines.append(f"  frames          {f['total']} (per key {f['min']}-{f['max']}, mean {f['mean']:.1f})")
    lines.append("  shapes          " + ", ".join(f"{k} {tuple(v)}" for k, v in s["shapes"].items())
                 + (" ..." if s["keys"] > len(s["shapes"]) else ""))
    lines.append("  values          " + _format_stats(s["stats"]))
    return "\n".join(lines)


def format_key(k: dict) -> str:
    with np.printoptions(precision=4, suppress=True, linewidth=110, threshold=200, edgeitems=4):
        rows = np.array([[np.nan if v is None else v for v in row] for row in k["first_rows"]], np.float32)
        return "\n".join([f"{k['path']} [{k['key']}]",
                          f"  shape {tuple(k['shape'])}, {k['dtype']}",
                          "  values " + _format_stats(k["stats"]),
                          f"  first {len(rows)} row(s)" + (f", columns {', '.join(k['columns'])}:" if "columns" in k else ":"),
                          str(rows)])


def _format_stats(st: dict) -> str:
    if st["min"] is None:
        return f"{st['values']} values, none finite (NaN {st['nan']}, Inf {st['inf']})"
    return (f"{st['values']} values, NaN {st['nan']}, Inf {st['inf']}, range [{st['min']:.4g}, {st['max']:.4g}], "
            f"mean {st['mean']:.4g}, std {st['std']:.4g}")
