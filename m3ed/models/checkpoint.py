"""Reading checkpoint files and loading them strictly into our modules.

Every model in the project is checkpoint-compatible with its authors' release: the names and shapes
of its ``state_dict()`` are theirs. Loading is therefore strict — any missing or unexpected key, or
any shape mismatch, is an error that lists exactly what differs and names the checkpoint, rather
than the silent partial load the reference code does (TalkNet's ``loadParameters`` skips unknown
names and mismatched shapes without a word).
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping
from pathlib import Path

import torch
from torch import nn

__all__ = [
    "CheckpointError",
    "CheckpointNotFoundError",
    "load_checkpoint_file",
    "load_state_dict_strict",
]

# Entries under which training scripts commonly nest the weights (the authors' DenseNet among them).
_NESTED_STATE_DICT_KEYS = ("state_dict", "model")

# How many offending keys an error message lists before summarising the rest.
_MAX_LISTED = 20


class CheckpointError(ValueError):
    """A checkpoint cannot be read, or does not fit the module it is loaded into."""


class CheckpointNotFoundError(CheckpointError, FileNotFoundError):
    """The checkpoint file does not exist (also a ``FileNotFoundError``)."""


def load_checkpoint_file(path: str | os.PathLike[str]) -> dict[str, torch.Tensor]:
    """Read a torch checkpoint file and return its state dict, on CPU.

    Accepts a plain state dict (``torch.save(model.state_dict(), path)``: the official TalkNet and
    Light-ASD files) and a dict that nests it under ``"state_dict"`` or ``"model"`` (common for
    training scripts). Loading uses ``weights_only=True``: no code from the file is executed.

    Raises:
        CheckpointNotFoundError: ``path`` does not exist.
        CheckpointError: the file is not a readable torch file (corrupt, truncated, another format),
            or holds no state dict.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointNotFoundError(
            f"checkpoint file not found: {path} (download it or pass the path of a local copy)"
        )
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # torch raises many types here: RuntimeError, UnpicklingError, EOFError...
        raise CheckpointError(
            f"cannot read checkpoint {path}: not a readable torch file, possibly truncated or "
            f"corrupt ({type(error).__name__}: {_first_line(error)}); download it again"
        ) from error
    return _extract_state_dict(obj, source=str(path))


def load_state_dict_strict(
    module: nn.Module,
    state_dict: Mapping[str, torch.Tensor],
    *,
    ignore_prefixes: Iterable[str] = (),
    strip_prefixes: Iterable[str] = ("module.",),
    source: str = "state dict",
) -> list[str]:
    """Load ``state_dict`` into ``module``, requiring an exact match of names and shapes.

    Keys are first stripped of any of ``strip_prefixes`` (``"module."`` is what ``DataParallel``
    adds); keys that then start with one of ``ignore_prefixes`` are dropped (e.g. training-only
    heads). Everything else must match ``module.state_dict()`` one to one, with equal shapes.

    Returns:
        The dropped keys (after prefix stripping), sorted, so callers can report them.

    Raises:
        CheckpointError: listing the missing keys, the unexpected keys and the shape mismatches
            (name, expected shape, shape in the checkpoint), and naming ``source``.
    """
    strip_prefixes = tuple(strip_prefixes)
    ignore_prefixes = tuple(ignore_prefixes)

    renamed: dict[str, torch.Tensor] = {}
    for key, value in state_dict.items():
        name = _strip(key, strip_prefixes)
        if name in renamed:
            raise CheckpointError(f"{source}: key {name!r} occurs twice (with and without a prefix)")
        renamed[name] = value

    ignored = sorted(name for name in renamed if name.startswith(ignore_prefixes))
    kept = {name: value for name, value in renamed.items() if not name.startswith(ignore_prefixes)}

    expected = module.state_dict()
    missing = [name for name in expected if name not in kept]
    unexpected = [name for name in kept if name not in expected]
    mismatched = [
        (name, tuple(expected[name].shape), tuple(value.shape))
        for name, value in kept.items()
        if name in expected and tuple(value.shape) != tuple(expected[name].shape)
    ]
    if missing or unexpected or mismatched:
        raise CheckpointError(
            _mismatch_message(type(module).__name__, source, missing, unexpected, mismatched)
        )
    module.load_state_dict(kept, strict=True)
    return ignored


def _extract_state_dict(obj: object, *, source: str) -> dict[str, torch.Tensor]:
    """The state dict inside a loaded checkpoint object (plain, or nested one level)."""
    if _is_state_dict(obj):
        return dict(obj)  # type: ignore[arg-type]
    if isinstance(obj, Mapping):
        for key in _NESTED_STATE_DICT_KEYS:
            if _is_state_dict(obj.get(key)):
                return dict(obj[key])
        found = ", ".join(repr(k) for k in list(obj)[:10])
        raise CheckpointError(
            f"{source}: no state dict found; expected a mapping of parameter names to tensors, or "
            f"one nested under {' or '.join(map(repr, _NESTED_STATE_DICT_KEYS))} (top-level keys: {found})"
        )
    raise CheckpointError(
        f"{source}: no state dict found; the file holds a {type(obj).__name__}, not a mapping"
    )


def _is_state_dict(obj: object) -> bool:
    return (
        isinstance(obj, Mapping)
        and len(obj) > 0
        and all(isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in obj.items())
    )


def _strip(key: str, prefixes: tuple[str, ...]) -> str:
    for prefix in prefixes:
        if prefix and key.startswith(prefix):
            return key[len(prefix) :]
    return key


def _mismatch_message(
    module_name: str,
    source: str,
    missing: list[str],
    unexpected: list[str],
    mismatched: list[tuple[str, tuple[int, ...], tuple[int, ...]]],
) -> str:
    lines = [f"checkpoint {source} does not fit {module_name}:"]
    if missing:
        lines.append(f"  missing keys ({len(missing)}): {_listing(missing)}")
    if unexpected:
        lines.append(f"  unexpected keys ({len(unexpected)}): {_listing(unexpected)}")
    if mismatched:
        shown = [f"{name} (expected {list(want)}, got {list(got)})" for name, want, got in mismatched]
        lines.append(f"  shape mismatches ({len(mismatched)}): {_listing(shown)}")
    lines.append("  is this the right checkpoint file for this model?")
    return "\n".join(lines)


def _listing(items: list[str]) -> str:
    shown = ", ".join(items[:_MAX_LISTED])
    rest = len(items) - _MAX_LISTED
    return shown + (f", ... and {rest} more" if rest > 0 else "")


def _first_line(error: BaseException) -> str:
    text = str(error).strip()
    return text.splitlines()[0] if text else "no message"
