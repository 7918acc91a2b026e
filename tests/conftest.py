"""Shared fixtures: the bundled sample, and small videos made with the ffmpeg that the package uses."""
from __future__ import annotations

import os
import subprocess
from pathlib import Path

import numpy as np
import pytest

from m3ed.media import ffmpeg_exe

REPO = Path(__file__).resolve().parents[1]
SAMPLE = REPO / "samples"
SHARED_REFERENCE = REPO.parent / "shared" / "reference"

# Tests never reach a model hub.
os.environ.setdefault("HF_HUB_OFFLINE", "1")


@pytest.fixture(scope="session")
def sample_paths() -> dict[str, Path]:
    annotations = SAMPLE / "annotations"
    return {
        "annotations": annotations / "annotation.json",
        "relation": annotations / "relation_annotation_release.json",
        "splits": annotations / "splitInfo",
        "manifest": annotations / "manifest.csv",
        "videos": SAMPLE / "videos",
    }


@pytest.fixture(scope="session")
def sample_corpus(sample_paths):
    from m3ed.loaders import load_m3ed

    return load_m3ed(sample_paths["annotations"], sample_paths["relation"], sample_paths["splits"])


@pytest.fixture(scope="module")
def one_torch_thread():
    """Tiny batches gain nothing from threads, and on a busy machine spinning threads cost several times.
    Modules opt in with ``pytestmark = pytest.mark.usefixtures("one_torch_thread")``.
    ``M3ED_TEST_TORCH_THREADS=2`` runs them at 2 threads instead (the suite must pass at both)."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(int(os.environ.get("M3ED_TEST_TORCH_THREADS", "1")))
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def same_threads_as_the_workers():
    """Byte-identical output needs the same kernels: this process runs at the one thread that the
    other processes (shards, Ray actors with one CPU each) use, whatever the suite's thread setting."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def models_cache(tmp_path_factory) -> Path:
    """One cache of locally built tiny models for the whole session."""
    path = tmp_path_factory.mktemp("m3ed-cache")
    os.environ["M3ED_CACHE"] = str(path)
    return path


def _published_outputs(out: Path) -> dict[str, bytes]:
    """The bytes of what an output directory publishes: every feature file, failures.jsonl, manifest.jsonl."""
    files = sorted((out / "features").glob("*.h5")) + [out / "failures.jsonl", out / "manifest.jsonl"]
    return {p.name: p.read_bytes() for p in files}


@pytest.fixture(scope="session")
def published_outputs():
    """``published_outputs(OUT)``: file name -> bytes of what OUT publishes, for runs that must write the
    same bytes (a resumed run, shards and their merge, the Ray engine)."""
    return _published_outputs


def frame_code_image(index: int, width: int = 160, height: int = 120) -> np.ndarray:
    """A frame that shows its own index as 8 black/white blocks (survives H.264 compression)."""
    image = np.full((height, width, 3), 128, np.uint8)
    block = width // 8
    for bit in range(8):
        image[: height // 2, bit * block:(bit + 1) * block] = 255 if (index >> bit) & 1 else 0
    return image


def read_frame_code(image: np.ndarray) -> int:
    block = image.shape[1] // 8
    top = image[: image.shape[0] // 2].mean(axis=2)
    return sum(1 << bit for bit in range(8) if top[:, bit * block + 2:(bit + 1) * block - 2].mean() > 128)


def make_numbered_video(path: Path, frames: int = 200, fps: int = 25, audio_from: Path | None = None,
                        gop: int = 250) -> Path:
    """An H.264 video whose frames carry their index, with keyframes only every ``gop`` frames
    (so that a stream-copy cut would visibly miss), and real speech audio when ``audio_from`` is given."""
    cmd = [ffmpeg_exe(), "-y", "-v", "error", "-f", "rawvideo", "-pix_fmt", "rgb24", "-s", "160x120",
           "-r", str(fps), "-i", "-"]
    if audio_from is not None:
        cmd += ["-i", str(audio_from), "-map", "0:v", "-map", "1:a", "-c:a", "aac", "-ar", "16000"]
    cmd += ["-c:v", "libx264", "-g", str(gop), "-pix_fmt", "yuv420p", "-t", f"{frames / fps}", str(path)]
    data = b"".join(frame_code_image(i).tobytes() for i in range(frames))
    subprocess.run(cmd, input=data, check=True)
    return path


def count_frames(path: Path) -> int:
    """Frames in a file, counted by ffmpeg itself (independent of our decoder)."""
    out = subprocess.run([ffmpeg_exe(), "-v", "info", "-i", str(path), "-map", "0:v:0", "-f", "null", "-"],
                         capture_output=True, text=True).stderr
    counts = [int(line.split("frame=")[1].split()[0]) for line in out.replace("\r", "\n").splitlines() if "frame=" in line]
    return counts[-1]
