"""Every command that writes stops cleanly on a full disk, as ``m3ed-extract`` does: exit 4, one
``error:`` line naming the file, no traceback, no partial or temporary file, and every file written
before untouched. Each test runs the real command with its output on a small tmpfs (we run as root)."""
from __future__ import annotations

import csv
import re
import shutil
from pathlib import Path

import h5py
import numpy as np
import pytest

from m3ed.errors import EXIT_RESOURCES
from m3ed.files import DiskFull, atomic_h5
from m3ed.pipelines.cli import main
from m3ed.store import Failure
from m3ed.synthetic import SyntheticConfig, make_synthetic

try:
    from tests.cli_runs import mounted_tmpfs
except ImportError:  # tests/ itself on sys.path
    from cli_runs import mounted_tmpfs

pytestmark = [pytest.mark.usefixtures("one_torch_thread"),
              # h5py's late complaints about a failed file ("Exception ignored in ...") count as failures
              pytest.mark.filterwarnings("error::pytest.PytestUnraisableExceptionWarning")]
TEXT_LINES = [("你好，今天天气很好。", "happy"), ("我们去公园吧。", "neutral"), ("我不想去。", "sad"),
              ("你怎么又迟到了！", "anger")]


@pytest.fixture
def disk(tmp_path):
    """An 8 MB file system of its own: room for one earlier output, then filled up by :func:`fill`."""
    with mounted_tmpfs(tmp_path / "disk", "8m") as path:
        yield path


def fill(disk: Path, keep_kb: int = 4) -> None:
    """Leave ``keep_kb`` KB free: too little for any output of these commands."""
    free = shutil.disk_usage(disk).free
    (disk / "filler").write_bytes(b"\0" * max(0, free - keep_kb * 1024))


def snapshot(folder: Path) -> dict[Path, bytes]:
    return {p: p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def run(argv: list[str], capfd) -> tuple[int, str]:
    capfd.readouterr()
    code = main(argv)
    return code, capfd.readouterr().err


def check_clean_stop(code: int, err: str, disk: Path, named: str, before: dict[Path, bytes]) -> list[Path]:
    """Exit 4; one error line naming the file (a regular expression); nothing half-written; nothing lost.
    Returns the files written before the disk filled up (complete ones: the caller checks them)."""
    assert code == EXIT_RESOURCES, err
    errors = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, err
    assert re.search(f"^error: disk full writing {named} \\(", errors[0]), errors[0]
    assert "Traceback" not in err and "Exception ignored" not in err, err
    assert [p for p in disk.rglob("*") if ".tmp" in p.name] == []
    assert {p: p.read_bytes() for p in before} == before
    return sorted(p for p in disk.rglob("*") if p.is_file() and p not in before and p.name != "filler")


@pytest.fixture(scope="module")
def features(tmp_path_factory) -> Path:
    """A small synthetic feature directory (utterance-level sets only), off the small disk."""
    out = tmp_path_factory.mktemp("features")
    make_synthetic(out, SyntheticConfig(dialogues=6, dims=(6, 6, 4), frames=False, min_utterances=3,
                                        max_utterances=6, dialogues_per_show=2))
    return out


def test_make_synthetic(disk, capfd):
    out = disk / "out"
    argv = ["make-synthetic", "--out", str(out), "--dialogues", "3", "--dims", "4,4,2"]
    assert run([*argv, "--no-frames"], capfd)[0] == 0
    before = snapshot(out)
    fill(disk)
    code, err = run(argv, capfd)   # the same corpus, now with frame-level sets: new parts
    parts = check_clean_stop(code, err, disk, re.escape(str(out / ".parts")) + r"/\w+/synshow\d+_1\.h5", before)
    for part in parts:   # whole dialogues, kept for the re-run
        assert part.parent.parent == out / ".parts"
        with h5py.File(part, "r") as h5:
            assert h5.attrs["complete"]
    (disk / "filler").unlink()
    assert run(argv, capfd)[0] == 0   # resumes once there is room
    assert (out / "features" / "roberta_frame.h5").exists()


@pytest.mark.parametrize("fmt, target", [("dialoguernn", "m3ed.pkl"), ("mmin", "mmin")])
def test_export(disk, features, tmp_path, capfd, fmt, target):
    """A pickle, or MMIN's folder of HDF5 and NumPy files (named: the folder, or the file of it that failed)."""
    out = disk / target
    argv = ["export", "--features", str(features), "--format", fmt, "--out", str(out), "--quiet"]
    assert run(argv, capfd)[0] == 0
    before = snapshot(disk)
    other = tmp_path / "other"   # other features: every output file would change
    make_synthetic(other, SyntheticConfig(dialogues=6, seed=1, dims=(6, 6, 4), frames=False, min_utterances=3,
                                          max_utterances=6, dialogues_per_show=2))
    fill(disk)
    code, err = run([*argv[:2], str(other), *argv[3:]], capfd)
    assert check_clean_stop(code, err, disk, re.escape(str(out)) + r"(/\S+)?", before) == []


def test_train(disk, features, capfd):
    out = disk / "run"
    argv = ["train", "--features", str(features), "--model", "multienc_pooled", "--modalities", "l,a",
            "--seeds", "0", "--epochs", "1", "--size", "tiny", "--out", str(out), "--quiet"]
    assert run(argv, capfd)[0] == 0
    before = snapshot(out)
    fill(disk)
    code, err = run([*argv, "--lr", "0.01"], capfd)   # another run into the same folder
    assert check_clean_stop(code, err, disk, re.escape(str(out / "checkpoints" / "seed0.pt")), before) == []


@pytest.fixture(scope="module")
def text_corpus(tmp_path_factory) -> Path:
    """Three dialogues (train, val, test) of four labelled lines, in the generic CSV format."""
    path = tmp_path_factory.mktemp("text") / "manifest.csv"
    with open(path, "w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(["dialogue_id", "utterance_id", "speaker", "start", "end", "text", "emotion", "split"])
        for split in ("train", "val", "test"):
            for i, (text, emotion) in enumerate(TEXT_LINES, 1):
                writer.writerow([split, f"{split}_{i}", "AB"[i % 2], i, i + 0.5, text, emotion, split])
    return path


def test_finetune(disk, text_corpus, models_cache, capfd):
    out = disk / "finetuned"
    argv = ["finetune", "text", "--annotations", str(text_corpus), "--profile", "tiny", "--out", str(out),
            "--epochs", "1", "--max-steps", "1", "--batch-size", "4", "--device", "cpu", "--no-progress"]
    assert run(argv, capfd)[0] == 0
    before = snapshot(out)
    fill(disk)
    code, err = run([*argv, "--seed", "1"], capfd)
    assert check_clean_stop(code, err, disk, re.escape(str(out)), before) == []


@pytest.fixture(scope="module")
def ferplus(tmp_path_factory) -> list[str]:
    """fer2013.csv + fer2013new.csv: eight training faces (one per class), two validation faces."""
    root = tmp_path_factory.mktemp("ferplus")
    rng = np.random.default_rng(0)
    usages = ["Training"] * 8 + ["PublicTest"] * 2
    with open(root / "fer2013.csv", "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["emotion", "pixels", "Usage"])
        writer.writerows([0, " ".join(map(str, rng.integers(0, 256, 48 * 48))), usage] for usage in usages)
    with open(root / "fer2013new.csv", "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["Usage", "Image name", "neutral", "happiness", "surprise", "sadness", "anger", "disgust",
                         "fear", "contempt", "unknown", "NF"])
        for i, usage in enumerate(usages):
            votes = [0] * 10
            votes[i % 8] = 10
            writer.writerow([usage, f"fer{i:07d}.png", *votes])
    return ["--ferplus-csv", str(root / "fer2013.csv"), "--ferplus-labels", str(root / "fer2013new.csv")]


def test_train_fer(disk, ferplus, capfd):
    out = disk / "fer"
    argv = ["train-fer", *ferplus, "--out", str(out), "--epochs", "1", "--batch-size", "4", "--max-steps", "1"]
    assert run(argv, capfd)[0] == 0
    before = snapshot(out)
    fill(disk)
    code, err = run([*argv, "--seed", "1"], capfd)
    assert check_clean_stop(code, err, disk, re.escape(str(out / "densenet_fer.pt")), before) == []


def test_report(disk, capfd):
    out = disk / "out"
    make_synthetic(out, SyntheticConfig(dialogues=3, dims=(4, 4, 2), frames=False, min_utterances=3, max_utterances=6))
    assert run(["report", str(out)], capfd)[0] == 0
    with open(out / "failures.jsonl", "a", encoding="utf-8") as f:   # something new to report
        f.write(Failure("roberta_mean", "synshow00_1", "synshow00_1_1", "a new failure").to_json() + "\n")
    before = snapshot(out)
    fill(disk)
    code, err = run(["report", str(out)], capfd)
    assert check_clean_stop(code, err, disk, re.escape(str(out / "report.html")), before) == []


def test_an_hdf5_file_that_fills_the_disk_midway(disk):
    """No room check beforehand. Written by path, h5py met the full disk while freeing each small
    dataset ("Can't decrement id ref count", printed, not raised), then crashed closing the file."""
    fill(disk, keep_kb=16)
    with pytest.raises(DiskFull, match="disk full writing .*small.h5"):
        with atomic_h5(disk / "small.h5") as h5:
            for i in range(50):
                h5.create_dataset(f"u{i}", data=np.ones(500, np.float32))   # 2 KB each
    assert sorted(p.name for p in disk.iterdir()) == ["filler"]
