"""Model weights shipped inside the package (no download, work offline).

``light_asd_finetuning_TalkSet.model``: Light-ASD's TalkSet-fine-tuned checkpoint
(``weight/finetuning_TalkSet.model`` of github.com/Junhua-Liao/Light-ASD, commit ed38c232),
MIT licence, text in ``LICENSE-light-asd.txt`` beside it. 4,175,289 bytes, 1.0 M parameters.
Its sha256 is checked every time it is handed out, so a truncated or altered copy (a broken
install, a Git LFS pointer) fails loudly instead of scoring faces with wrong weights.
"""
from __future__ import annotations

import hashlib
from pathlib import Path

WEIGHTS_DIR = Path(__file__).resolve().parent
LIGHT_ASD_FILE = "light_asd_finetuning_TalkSet.model"
LIGHT_ASD_LICENSE = "LICENSE-light-asd.txt"
LIGHT_ASD_SHA256 = "efc375833887eefa9d209dc92810e18519b04c3c73ea35a549f2a7f40b7d94d5"


class WeightsError(RuntimeError):
    """A shipped weight file is missing or is not the file the package was released with."""


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def verified(path: Path, expected: str) -> Path:
    """``path`` when its sha256 is ``expected``; otherwise a :class:`WeightsError` saying how to fix it."""
    if not path.is_file():
        raise WeightsError(f"{path}: shipped weight file is missing; reinstall the m3ed package "
                           f"(pip install --force-reinstall m3ed) or restore it from the repository")
    actual = sha256_of(path)
    if actual != expected:
        raise WeightsError(f"{path}: sha256 {actual} differs from the released file's {expected} "
                           f"({path.stat().st_size} bytes); the copy is damaged or replaced: reinstall the "
                           f"m3ed package or restore the file from the repository")
    return path


def light_asd_checkpoint() -> Path:
    """The shipped Light-ASD checkpoint (TalkSet fine-tuned), sha256-verified (about 10 ms)."""
    return verified(WEIGHTS_DIR / LIGHT_ASD_FILE, LIGHT_ASD_SHA256)


def light_asd_license() -> str:
    """The MIT licence text the checkpoint ships under."""
    return (WEIGHTS_DIR / LIGHT_ASD_LICENSE).read_text(encoding="utf-8")
