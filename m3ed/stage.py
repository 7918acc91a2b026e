"""What an extraction stage is, and the registry that finds stages by name.

This contract sits below the stages (``m3ed.extract``, ``m3ed.asd``) and the runner that drives
them (``m3ed.pipelines``). A stage class joins the registry with ``@register_stage``; its options
are a dataclass (``options``, a section of :class:`m3ed.config.ExtractConfig` named like the stage),
and ``from_config(options, context)`` builds it, loading its models.

A stage turns dialogues into features. The runner (:mod:`m3ed.pipelines.runner`) hands it fixed
groups of consecutive dialogues (``group_size``), so that it can batch across dialogues; the group
boundaries never depend on what is already done, so a resumed run computes exactly what an
uninterrupted run computes. A stage reports per dialogue: features per feature set, utterance-level
failures, or an error for the whole dialogue. One bad dialogue never stops the others.
"""
from __future__ import annotations

import importlib
from dataclasses import dataclass, field
from typing import Any, Callable, ClassVar, Iterator, Mapping

import numpy as np

from .corpus import Corpus, Dialogue
from .locate import MediaSource
from .profiles import Profile
from .store import Failure, FeatureStore


@dataclass
class RunContext:
    """What every stage may use: where media comes from, where features go, which models, which device."""

    corpus: Corpus
    media: MediaSource
    store: FeatureStore
    profile: Profile
    device: str = "cpu"
    precision: str = "fp32"   # "fp32", "bf16" or "fp16" (autocast; CUDA only)
    sharded: bool = False     # one shard of a run: results stay unpublished parts until ``m3ed merge``
    # The visual stage's crop (mode, scale) when it follows the asd stage in this run: the asd stage
    # cuts its crops from the frames it decodes anyway (m3ed.asd.speaker_crops).
    fer_crop: tuple[str, float] | None = None


@dataclass
class DialogueResult:
    dialogue_id: str
    features: dict[str, dict[str, np.ndarray]] = field(default_factory=dict)  # set -> utterance id -> array
    failures: list[Failure] = field(default_factory=list)                      # utterance-level
    error: str | None = None                                                   # the whole dialogue failed


class Stage:
    """Base class. Subclasses set ``name`` and ``feature_sets`` and implement ``process``."""

    name: ClassVar[str]
    feature_sets: tuple[str, ...] = ()
    group_size: int = 1
    uses_media: bool = True   # reads picture or sound, so utterance times matter (m3ed.screening)
    needs: tuple[str, ...] = ()   # stages whose published output this one reads when it is built
    options: ClassVar[type] = type(None)   # the dataclass of its options (m3ed.options.option fields)

    @classmethod
    def from_config(cls, options: Any, context: RunContext) -> "Stage":
        """Build the stage from its options: resolve them against the profile and load the models.
        Raise :class:`m3ed.errors.ConfigurationError` (or ``ModelUnavailable``) for a configuration
        that cannot work; per-dialogue problems belong to :meth:`process`."""
        raise NotImplementedError

    def preflight(self) -> None:
        """Check, before any work, that the stage's models can be had; raise
        :class:`m3ed.profiles.ModelUnavailable` (a configuration error) when they cannot. A stage
        that loads its models when built (``from_config``) has nothing more to check."""

    def provenance(self) -> dict:
        """Everything that determines the output (model id, revision, options). Hashed, and stored
        in each feature file's attributes."""
        raise NotImplementedError

    def attrs(self, feature_set: str) -> dict:
        """Extra attributes of one feature file (frame rate, normalisation constants...)."""
        return {}

    def process(self, dialogues: list[Dialogue], context: RunContext,
                prepared: Mapping[str, Any] | None = None) -> Iterator[DialogueResult]:
        """Each dialogue's result. ``prepared``: dialogue id -> what :meth:`host_work` returned for it
        in a worker process (or the exception it raised), for the dialogues done ahead so."""
        raise NotImplementedError

    def host_work(self, context: RunContext) -> Callable[[Dialogue, MediaSource], Any] | None:
        """The part of :meth:`process` that needs none of the stage's large models (decoding, shots,
        crops...), as a picklable ``work(dialogue, media)`` that worker processes run ahead
        (``--workers``, :mod:`m3ed.pipelines.host_pool`); None when the stage has no such part."""
        return None

    def close(self) -> None:
        """Release models (one large model resident at a time)."""


_REGISTRY: dict[str, type[Stage]] = {}
# The built-in stages in run order (a stage's ``needs`` come before it) and the module that registers
# each: imported only when the stage is wanted, so that the command line starts without torch.
BUILTIN_STAGES = {"text": "m3ed.extract.text", "audio": "m3ed.extract.audio", "asd": "m3ed.asd.stage",
                  "visual": "m3ed.extract.face"}
CUT = "cut"   # writes clips for other tools rather than features; the runner calls it directly


def register_stage(cls: type[Stage]) -> type[Stage]:
    """Class decorator: make a stage available by its ``name`` (``--stages``, the runner)."""
    if cls.name in _REGISTRY and _REGISTRY[cls.name] is not cls:
        raise ValueError(f"two stages are named {cls.name!r}: {_REGISTRY[cls.name].__module__} and {cls.__module__}")
    _REGISTRY[cls.name] = cls
    return cls


def stage_registry() -> dict[str, type[Stage]]:
    """Every registered stage, in run order: the built-in ones as listed, then others as registered
    (whatever order modules happened to be imported in). Imports every built-in stage."""
    for name in BUILTIN_STAGES:
        stage_class(name)
    return {name: _REGISTRY[name] for name in stage_names()[1:]}


def stage_names() -> tuple[str, ...]:
    """What ``--stages`` accepts, in run order (imports no stage)."""
    return (CUT, *BUILTIN_STAGES, *(name for name in _REGISTRY if name not in BUILTIN_STAGES))


def stage_class(name: str) -> type[Stage]:
    """The stage class of ``name``, its module imported on first use."""
    if name in BUILTIN_STAGES and name not in _REGISTRY:
        importlib.import_module(BUILTIN_STAGES[name])
        if name not in _REGISTRY:
            raise ValueError(f"{BUILTIN_STAGES[name]} registers no stage named {name!r} (m3ed.stage.BUILTIN_STAGES)")
    if name not in _REGISTRY:
        raise ValueError(f"unknown stage {name!r}; choose from {', '.join(stage_names())}")
    return _REGISTRY[name]


def build_stage(name: str, options: Any, context: RunContext) -> Stage:
    """The stage ``name`` built from its options (``None``: the stage's defaults)."""
    cls = stage_class(name)
    return cls.from_config(options if options is not None else cls.options(), context)


def failed_dialogue(dialogue: Dialogue, error: BaseException | str) -> DialogueResult:
    return DialogueResult(dialogue.id, error=str(error))
