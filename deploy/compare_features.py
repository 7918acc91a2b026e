"""Compare two folders of m3ed feature files (``OUT/features``): the same runs on two installations.

    python deploy/compare_features.py REFERENCE/features OTHER/features

Passes when both hold the same feature sets, every set the same utterance keys and shapes, and the values
agree within the same-results tolerances: rtol 1e-4 and atol 1e-4 of each dataset's scale (its largest
magnitude in the reference). ``speaker_faces`` rows are choices, not measurements: the same track and stage
on at least 99.5 % of its rows. Exits 1 with every mismatch named, 0 with a line per set.
"""
from __future__ import annotations

import argparse
import json
import sys
from dataclasses import dataclass, field
from pathlib import Path

import h5py
import numpy as np

RTOL = 1e-4
ATOL_OF_SCALE = 1e-4
MIN_SAME_CHOICE = 0.995
CHOICE_COLUMNS = ("track", "stage")


@dataclass
class SetResult:
    name: str
    keys: int = 0
    max_abs: float = 0.0          # the largest |a - b| over the set
    max_of_scale: float = 0.0     # the same, divided by its dataset's scale
    same_choice: float | None = None  # speaker_faces: share of rows with the same track and stage
    problems: list[str] = field(default_factory=list)


def scale_of(values: np.ndarray) -> float:
    finite = np.abs(values[np.isfinite(values)])
    return float(finite.max()) if finite.size and finite.max() > 0 else 1.0


def compare_values(result: SetResult, key: str, ref: np.ndarray, other: np.ndarray) -> None:
    if not np.array_equal(np.isnan(ref), np.isnan(other)):
        result.problems.append(f"{result.name}/{key}: NaN in different places")
        return
    ref, other = np.nan_to_num(ref), np.nan_to_num(other)
    scale = scale_of(ref)
    diff = np.abs(ref - other)
    result.max_abs = max(result.max_abs, float(diff.max(initial=0.0)))
    result.max_of_scale = max(result.max_of_scale, float(diff.max(initial=0.0)) / scale)
    if not np.allclose(other, ref, rtol=RTOL, atol=ATOL_OF_SCALE * scale):
        worst = np.unravel_index(int(np.argmax(diff - RTOL * np.abs(ref))), diff.shape)
        result.problems.append(f"{result.name}/{key}: differs beyond rtol {RTOL}, atol {ATOL_OF_SCALE} x scale {scale:.4g}; "
                               f"at {tuple(map(int, worst))}: {float(ref[worst]):.6g} vs {float(other[worst]):.6g}")


def compare_choices(result: SetResult, columns: list[str], rows: list[tuple[np.ndarray, np.ndarray]]) -> None:
    picked = [columns.index(c) for c in CHOICE_COLUMNS]
    same = total = 0
    for ref, other in rows:
        a, b = ref[:, picked], other[:, picked]
        same += int(np.all((a == b) | (np.isnan(a) & np.isnan(b)), axis=1).sum())
        total += len(ref)
    result.same_choice = same / total if total else 1.0
    if result.same_choice < MIN_SAME_CHOICE:
        result.problems.append(f"{result.name}: the same {' and '.join(CHOICE_COLUMNS)} on {same} of {total} rows "
                               f"({result.same_choice:.2%} < {MIN_SAME_CHOICE:.1%})")


def compare_set(name: str, ref_path: Path, other_path: Path) -> SetResult:
    result = SetResult(name)
    with h5py.File(ref_path, "r") as ref, h5py.File(other_path, "r") as other:
        missing, extra = sorted(set(ref) - set(other)), sorted(set(other) - set(ref))
        if missing or extra:
            result.problems.append(f"{name}: keys only in {ref_path}: {missing[:5]}, only in {other_path}: {extra[:5]}")
        columns = json.loads(ref.attrs["columns"]) if "columns" in ref.attrs else None
        choice_rows = []
        for key in sorted(set(ref) & set(other)):
            a, b = np.asarray(ref[key][()], dtype=np.float64), np.asarray(other[key][()], dtype=np.float64)
            result.keys += 1
            if a.shape != b.shape:
                result.problems.append(f"{name}/{key}: shape {a.shape} vs {b.shape}")
            elif columns and all(c in columns for c in CHOICE_COLUMNS):
                choice_rows.append((a, b))
            else:
                compare_values(result, key, a, b)
        if choice_rows:
            compare_choices(result, columns, choice_rows)
    return result


def compare(ref_dir: Path, other_dir: Path) -> list[SetResult]:
    for folder in (ref_dir, other_dir):
        if not folder.is_dir():
            raise SystemExit(f"compare_features: {folder}: no such folder")
    ref_sets = {p.stem: p for p in ref_dir.glob("*.h5")}
    other_sets = {p.stem: p for p in other_dir.glob("*.h5")}
    if not ref_sets:
        raise SystemExit(f"compare_features: {ref_dir} holds no feature files (*.h5)")
    results = []
    if ref_sets.keys() != other_sets.keys():
        mismatch = SetResult("(feature sets)")
        mismatch.problems.append(f"only in {ref_dir}: {sorted(ref_sets.keys() - other_sets.keys())}; "
                                 f"only in {other_dir}: {sorted(other_sets.keys() - ref_sets.keys())}")
        results.append(mismatch)
    for name in sorted(ref_sets.keys() & other_sets.keys()):
        results.append(compare_set(name, ref_sets[name], other_sets[name]))
    return results


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("reference", type=Path, help="the reference run's OUT/features")
    parser.add_argument("other", type=Path, help="the other run's OUT/features")
    args = parser.parse_args(argv)
    results = compare(args.reference, args.other)
    for r in results:
        if r.same_choice is not None:
            print(f"{r.name:24s} {r.keys:4d} keys  same track and stage on {r.same_choice:.2%} of rows")
        elif r.keys:
            print(f"{r.name:24s} {r.keys:4d} keys  max |diff| {r.max_abs:.3g}  ({r.max_of_scale:.3g} of scale)")
    problems = [p for r in results for p in r.problems]
    for p in problems:
        print(f"MISMATCH {p}", file=sys.stderr)
    compared = sum(1 for r in results if r.keys)
    print(f"{compared} feature files compared: {'OK' if not problems else f'{len(problems)} mismatches'}")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
