"""Model profiles: which weights every stage uses.

- ``paper``: the models of the M3ED paper, by Hugging Face id or checkpoint URL, downloaded on
  first use into the usual caches (``HF_HOME``, ``TORCH_HOME``) or given as local paths.
- ``paper-random``: the same architectures and sizes with random weights, built locally. Features
  are meaningless; compute cost is real (for benchmarks on machines without the weights).
- ``tiny``: small random models built from configs with a fixed seed, saved once under the cache
  directory and loaded back through the same ``from_pretrained`` path (tests, offline demo).
"""
from __future__ import annotations

import os
from dataclasses import dataclass, replace
from pathlib import Path

from .errors import ConfigurationError

TEXT_MODEL_ID = "hfl/chinese-roberta-wwm-ext"
AUDIO_MODEL_ID = "jonatasgrosman/wav2vec2-large-xlsr-53-chinese-zh-cn"


class ModelUnavailable(ConfigurationError, RuntimeError):
    """A model's weights are not here and cannot be fetched; the message says how to provide them."""


@dataclass(frozen=True)
class Profile:
    name: str
    text_model: str            # Hugging Face id or local directory
    audio_model: str
    random_init: bool          # build the architecture from its config with random weights
    tiny: bool                 # shrink every architecture (tests and the offline demo)
    asd_model: str = "talknet"  # "talknet" or "light-asd"
    asd_checkpoint: str | None = None     # local path or URL; None: the model's released checkpoint
    face_embedder: str | None = "vggface2"  # facenet-pytorch InceptionResnetV1 weights; None: random
    fer_checkpoint: str | None = None       # DenseNet FER checkpoint (m3ed train-fer writes one)
    text_revision: str | None = None
    audio_revision: str | None = None
    seed: int = 0

    def with_overrides(self, **overrides) -> "Profile":
        return replace(self, **{k: v for k, v in overrides.items() if v is not None})


PROFILES: dict[str, Profile] = {
    "paper": Profile("paper", TEXT_MODEL_ID, AUDIO_MODEL_ID, random_init=False, tiny=False),
    "paper-random": Profile("paper-random", TEXT_MODEL_ID, AUDIO_MODEL_ID, random_init=True, tiny=False,
                            face_embedder=None),
    "tiny": Profile("tiny", "tiny-bert-chinese", "tiny-wav2vec2", random_init=True, tiny=True, face_embedder=None),
}


def get_profile(name: str) -> Profile:
    """The profile ``name``; hub revisions pinned by ``M3ED_TEXT_REVISION``/``M3ED_AUDIO_REVISION``
    (the Docker image sets them to what ``m3ed.prefetch`` fetched, so an offline run finds them)."""
    try:
        profile = PROFILES[name]
    except KeyError:
        raise ValueError(f"unknown profile {name!r}; choose one of {sorted(PROFILES)}") from None
    if profile.random_init:
        return profile
    return profile.with_overrides(text_revision=os.environ.get("M3ED_TEXT_REVISION") or None,
                                  audio_revision=os.environ.get("M3ED_AUDIO_REVISION") or None)


def cache_dir() -> Path:
    """Where locally built models live (``M3ED_CACHE``, default ``~/.cache/m3ed``)."""
    return Path(os.environ.get("M3ED_CACHE", Path.home() / ".cache" / "m3ed"))


def unavailable(what: str, name: str, how: str, cause: Exception | None = None) -> ModelUnavailable:
    """The error for a model that is neither cached nor downloadable, with the way to provide it."""
    detail = f" ({type(cause).__name__}: {str(cause).splitlines()[0] if str(cause) else ''})" if cause else ""
    return ModelUnavailable(f"{what} {name!r} is not available here{detail}.\n  To provide it: {how}")


def load_pretrained(cls, name: str, what: str, option: str, revision: str | None = None, **kwargs):
    """``cls.from_pretrained(name)`` with a clear error when the weights cannot be had.

    ``option`` is the command-line option that takes a local path instead (e.g. ``--text-model``).
    """
    local = Path(name).expanduser()
    if local.exists():
        try:
            return cls.from_pretrained(str(local), **kwargs)
        except (OSError, ValueError, RuntimeError) as e:
            raise ModelUnavailable(f"{what} at {local} could not be loaded: {e}\n"
                                   f"  Expected a directory written by save_pretrained (config.json + weights).") from e
    try:
        return cls.from_pretrained(name, revision=revision, **kwargs)
    except OSError as e:
        how = (f"looked in the Hugging Face cache {hf_cache_dir()} (set HF_HOME to use another); download it "
               f"where the hub is reachable (`hf download {name}`"
               + (f" --revision {revision}" if revision else "") + f") and copy that cache here, "
               f"or pass a local directory with {option} PATH")
        raise unavailable(what, name, how, e) from e


def hf_cache_dir() -> Path:
    """Where ``from_pretrained`` looks for hub models (``HF_HUB_CACHE``, else ``HF_HOME/hub``)."""
    if os.environ.get("HF_HUB_CACHE"):
        return Path(os.environ["HF_HUB_CACHE"])
    home = os.environ.get("HF_HOME") or Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "huggingface"
    return Path(home) / "hub"


def check_pretrained(name: str, what: str, option: str, revision: str | None = None) -> None:
    """Raise :class:`ModelUnavailable` now, before any work, when ``name`` cannot be loaded."""
    from transformers import AutoConfig

    load_pretrained(AutoConfig, name, what, option, revision)


def fetch_checkpoint(url_or_path: str, what: str, option: str) -> Path:
    """A checkpoint file by local path, or downloaded once from ``url`` into ``TORCH_HOME``."""
    path = Path(url_or_path).expanduser()
    if path.exists():
        return path
    if "://" not in url_or_path:
        raise unavailable(what, url_or_path, f"the file does not exist; pass an existing file with {option} PATH")
    import torch.hub

    target = Path(torch.hub.get_dir()) / "checkpoints" / "m3ed" / url_or_path.rstrip("/").split("/")[-1]
    return download_once(url_or_path, target, what, f"download it from {url_or_path} to {target}, or pass a local file "
                                                    f"with {option} PATH")


def download_once(url: str, target: Path, what: str, how: str, *, name: str | None = None,
                  progress: bool = True) -> Path:
    """``target``, downloaded from ``url`` the first time; where it cannot be downloaded,
    :class:`ModelUnavailable` for ``what`` (called ``name``, default the URL) saying ``how`` to provide it."""
    if target.is_file():
        return target
    import torch.hub

    target.parent.mkdir(parents=True, exist_ok=True)
    try:
        torch.hub.download_url_to_file(url, str(target), progress=progress)
    except Exception as e:  # urllib/socket raise many kinds; all mean "not downloadable here"
        raise unavailable(what, name or url, how, e) from e
    return target
