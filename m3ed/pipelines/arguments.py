"""Command-line options generated from the configuration dataclasses (:mod:`m3ed.config`), and back.

Each field made with :func:`m3ed.options.option` becomes one option, stored as ``section.field``;
:func:`options_from` rebuilds the dataclass from the parsed arguments. Every command that reads a
corpus or videos (``m3ed-extract``, ``m3ed stats``, ``m3ed finetune``...) takes its options from here.
"""
from __future__ import annotations

import argparse
import dataclasses
import typing

from ..config import CorpusOptions, ExtractConfig, MediaOptions, load_corpus, media_source
from ..corpus import Corpus
from ..locate import MediaSource


def add_options(parser: argparse.ArgumentParser, cls: type, section: str, title: str) -> None:
    """One option per field of ``cls`` that has help (:func:`m3ed.options.option`), stored as
    ``section.field``: flag ``--{section}-{field}`` unless the field names its own."""
    group = parser.add_argument_group(title)
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        if "help" not in f.metadata:
            continue
        cli = {k: v for k, v in f.metadata.items() if k not in ("help", "flag")}
        flag = f.metadata.get("flag") or f"--{section}-{f.name.replace('_', '-')}"
        kind = _base_type(hints[f.name])
        if kind is bool:   # a switch: --strict sets True; --no-report sets report False
            cli["action"] = "store_false" if f.default else "store_true"
        else:
            cli.setdefault("type", kind)
            if "choices" not in cli:
                cli.setdefault("metavar", f.name.upper())
        group.add_argument(flag, dest=f"{section}.{f.name}", default=f.default, help=f.metadata["help"], **cli)


def options_from(args: argparse.Namespace, cls: type, section: str):
    """The ``cls`` dataclass of the options :func:`add_options` added (defaults for those it did not)."""
    values = {f.name: getattr(args, f"{section}.{f.name}") for f in dataclasses.fields(cls)
              if hasattr(args, f"{section}.{f.name}")}
    return cls(**values)


def _base_type(hint):
    """``int`` of ``int | None``; ``str`` for anything else that is not a plain scalar."""
    args = [a for a in typing.get_args(hint) if a is not type(None)]
    hint = args[0] if len(args) == 1 else hint
    return hint if hint in (bool, int, float, str) else str


def add_corpus_arguments(parser: argparse.ArgumentParser) -> None:
    add_options(parser, CorpusOptions, "corpus", "annotations")


def add_media_arguments(parser: argparse.ArgumentParser) -> None:
    add_options(parser, MediaOptions, "media", "videos")


def config_from_args(args: argparse.Namespace) -> ExtractConfig:
    """The :class:`ExtractConfig` of a command's options (defaults for the sections it lacks)."""
    sections = typing.get_type_hints(ExtractConfig)
    return ExtractConfig(**{name: options_from(args, cls, name) for name, cls in sections.items()})


def load_corpus_from_args(args: argparse.Namespace, *, log_problems: bool = True, refuse_broken_files: bool = True) -> Corpus:
    return load_corpus(options_from(args, CorpusOptions, "corpus"), log_problems=log_problems,
                       refuse_broken_files=refuse_broken_files)


def media_from_args(args: argparse.Namespace) -> MediaSource:
    return media_source(config_from_args(args))
