"""Configuration fields that know how the command line shows them, and dataclasses from plain dicts.

The library is configured with dataclasses (:mod:`m3ed.config`); the command line is generated
from them (:mod:`m3ed.pipelines.arguments`), so each option is named, defaulted and explained once, here
beside the code it configures. ``run.json`` stores a configuration with :func:`dataclasses.asdict`
and :func:`from_dict` reads it back.
"""
from __future__ import annotations

import dataclasses
import types
import typing
from typing import Any, TypeVar

T = TypeVar("T")


def option(default: Any, help: str, *, flag: str | None = None, **cli: Any) -> Any:
    """A dataclass field with its command-line form: ``help`` (may use ``%(default)s``), the flag
    (default ``--{section}-{name}``, see :mod:`m3ed.pipelines.arguments`) and other argparse keywords
    (``choices``, ``metavar``, ``type``)."""
    return dataclasses.field(default=default, metadata={"help": help, "flag": flag, **cli})


def from_dict(cls: type[T], data: dict | None) -> T:
    """``cls`` built from a dict such as :func:`dataclasses.asdict` makes: nested dataclasses are
    rebuilt, lists become tuples where the field is a tuple, unknown keys are ignored (a newer
    version's record still reads), missing keys take their defaults."""
    data = data or {}
    hints = typing.get_type_hints(cls)
    values = {}
    for f in dataclasses.fields(cls):
        if f.name not in data or not f.init:
            continue
        values[f.name] = _value(hints[f.name], data[f.name])
    return cls(**values)


def _value(hint: Any, value: Any) -> Any:
    if value is None:
        return None
    candidates = [a for a in typing.get_args(hint) if a is not type(None)] if _is_union(hint) else [hint]
    for candidate in candidates:
        if dataclasses.is_dataclass(candidate) and isinstance(value, dict):
            return from_dict(candidate, value)
        if (typing.get_origin(candidate) is tuple or candidate is tuple) and isinstance(value, (list, tuple)):
            return tuple(value)
    return value


def _is_union(hint: Any) -> bool:
    return typing.get_origin(hint) in (typing.Union, types.UnionType)
