"""Helpers shared by the tests that run the commands on real files: arguments, the outputs they
read back, the sample's dialogues pointing at their videos, and small real file systems."""
from __future__ import annotations

import dataclasses
import json
import os
import shutil
import subprocess
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import h5py
import pytest

from m3ed.corpus import Corpus

BASE = ["--profile", "tiny", "--device", "cpu", "--no-progress", "--no-report"]


def extract_argv(annotations: Path, out: Path, stages: str = "text", *extra: str) -> list[str]:
    return ["--annotations", str(annotations), "--out", str(out), "--stages", stages, *BASE, *extra]


def write_corpus(corpus: Corpus, path: Path) -> Path:
    corpus.to_jsonl(path)
    return path


def feature_keys(out: Path, feature_set: str) -> list[str]:
    with h5py.File(out / "features" / f"{feature_set}.h5") as h5:
        return sorted(h5)


def failures(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "failures.jsonl").read_text().splitlines()]


def with_video(corpus: Corpus, videos: Path) -> Corpus:
    """The sample's dialogues pointing at their episode files (as a corpus JSONL needs)."""
    return Corpus(tuple(dataclasses.replace(d, video=str(next(videos.glob(f"{d.show}{d.episode:02d}.mp4"))))
                        for d in corpus))


@contextmanager
def mounted_tmpfs(path: Path, size: str) -> Iterator[Path]:
    """A real file system of ``size`` at ``path`` while the block runs, unmounted after (skips where
    mounting needs root we lack)."""
    if os.geteuid() != 0 or shutil.which("mount") is None:
        pytest.skip("mounting a small tmpfs needs root")
    path.mkdir(parents=True, exist_ok=True)
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)], capture_output=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.decode().strip()}")
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], check=False)
