"""The downstream model registry: ``@register_model("mdi")``, ``create_model(name, **config)``.

Every model is an ``nn.Module`` built from one config dataclass (a subclass of
:class:`ModelConfig`), with ``forward(batch) -> logits [B, N, 7]``. The config is plain data
(``dataclasses.asdict``), saved inside every checkpoint, so ``create_model(name, **saved)`` rebuilds
the exact architecture and the weights load strictly (:func:`load_trained_model`).

Each model declares the level of its inputs: ``"utterance"`` (one vector per utterance per modality)
or ``"frame"`` (a sequence per utterance: MultiEnc).
"""
from __future__ import annotations

import importlib
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Callable, ClassVar

import torch
from torch import nn

from ..corpus import EMOTIONS

__all__ = ["ModelConfig", "ModelEntry", "create_model", "get_model_entry", "list_models",
           "load_trained_model", "register_model"]

# Modules that register models when imported, in the order of the paper's tables.
_MODEL_MODULES = ("multienc", "dialogue_rnn", "dialogue_gcn", "mmgcn", "mdi")
_ALIASES = {"dialogue_rnn": "dialoguernn", "dialogue_gcn": "dialoguegcn", "multi_enc": "multienc",
            "uttbaseline": "multienc_pooled"}


@dataclass
class ModelConfig:
    """What every downstream model needs; architectures subclass it with their own fields.

    ``input_dims`` maps each modality used (``l``, ``a``, ``v``) to its feature dimension; its keys
    are the model's modalities. The ``default_*`` class attributes are the training settings of the
    model's authors on M3ED, used by ``m3ed train`` unless overridden (not saved: they are not part
    of the architecture): learning rate, AdamW weight decay, loss weighted by 1/prior of the train
    labels, dialogues per batch, epochs, learning-rate schedule (``constant`` or ``cosine``: per step
    from the full rate to 0 over all epochs) and whether validation may stop training early.
    """

    input_dims: dict[str, int] = field(default_factory=dict)
    num_classes: int = len(EMOTIONS)
    num_speakers: int = 2

    default_lr: ClassVar[float] = 1e-4
    default_weight_decay: ClassVar[float] = 1e-5
    default_class_weights: ClassVar[bool] = False
    default_batch_size: ClassVar[int] = 16
    default_epochs: ClassVar[int] = 60
    default_schedule: ClassVar[str] = "constant"
    default_early_stop: ClassVar[bool] = True

    def __post_init__(self) -> None:
        if not self.input_dims:
            raise ValueError(f"{type(self).__name__}: input_dims is empty; give each modality's feature "
                             f"dimension, e.g. input_dims={{'l': 768}}")
        unknown = [m for m in self.input_dims if m not in ("l", "a", "v")]
        if unknown:
            raise ValueError(f"{type(self).__name__}: unknown modalities {unknown} in input_dims (use l, a, v)")
        # Canonical order l, a, v whatever order the caller used (and JSON round trips keep).
        self.input_dims = {m: int(self.input_dims[m]) for m in ("l", "a", "v") if m in self.input_dims}

    @property
    def modalities(self) -> tuple[str, ...]:
        return tuple(self.input_dims)


@dataclass(frozen=True)
class ModelEntry:
    name: str
    model_cls: type[nn.Module]
    config_cls: type[ModelConfig]
    input_level: str
    description: str
    tiny: dict[str, Any] = field(default_factory=dict)   # config overrides of the "tiny" size (tests)


_REGISTRY: dict[str, ModelEntry] = {}


def register_model(name: str, *, config: type[ModelConfig], input_level: str = "utterance",
                   tiny: dict[str, Any] | None = None) -> Callable[[type[nn.Module]], type[nn.Module]]:
    """Class decorator: make ``model_cls(config_cls(...))`` available as ``create_model(name)``.

    ``tiny`` holds the config overrides of the model's "tiny" size (small and fast, for tests).
    """
    if input_level not in ("utterance", "frame"):
        raise ValueError(f"register_model({name!r}): input_level must be 'utterance' or 'frame'")

    def decorate(model_cls: type[nn.Module]) -> type[nn.Module]:
        if name in _REGISTRY and _REGISTRY[name].model_cls is not model_cls:
            raise ValueError(f"model name {name!r} is registered twice "
                             f"({_REGISTRY[name].model_cls.__qualname__} and {model_cls.__qualname__})")
        doc = (model_cls.__doc__ or "").strip().splitlines()
        _REGISTRY[name] = ModelEntry(name, model_cls, config, input_level, doc[0] if doc else "", dict(tiny or {}))
        model_cls.model_name = name
        return model_cls

    return decorate


def _load_all() -> None:
    for module in _MODEL_MODULES:
        importlib.import_module(f"m3ed.models.{module}")


def list_models() -> list[str]:
    """Registered model names, utterance-level baselines first, then the dialogue models."""
    _load_all()
    return list(_REGISTRY)


def get_model_entry(name: str) -> ModelEntry:
    _load_all()
    key = _ALIASES.get(name.lower(), name.lower())
    if key not in _REGISTRY:
        raise KeyError(f"unknown model {name!r}; available: {', '.join(_REGISTRY)}")
    return _REGISTRY[key]


SIZES = ("paper", "tiny")   # model sizes: the authors', or small ones for tests


def create_model(name: str, size: str = "paper", **config: Any) -> nn.Module:
    """Build a registered model from its config fields (unknown fields are an error).

    ``size="tiny"`` starts from the model's tiny sizes; explicit fields still win.
    """
    entry = get_model_entry(name)
    if size not in SIZES:
        raise ValueError(f"size {size!r}: use 'paper' (the authors' sizes) or 'tiny' (tests)")
    if size == "tiny":
        config = {**entry.tiny, **config}
    known = {f.name for f in fields(entry.config_cls)}
    unknown = sorted(set(config) - known)
    if unknown:
        raise TypeError(f"model {entry.name!r}: unknown config fields {unknown}; "
                        f"{entry.config_cls.__name__} has {sorted(known)}")
    return entry.model_cls(entry.config_cls(**config))


def load_trained_model(path: str | Path, map_location: str | torch.device = "cpu") -> tuple[nn.Module, dict]:
    """Rebuild a model from a training checkpoint and load its weights strictly.

    Returns the model (in eval mode) and the checkpoint's record (config, metrics, feature sets).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {path} not found")
    record = torch.load(path, map_location=map_location, weights_only=True)
    for key in ("model_name", "model_config", "state_dict"):
        if key not in record:
            raise ValueError(f"{path}: not an m3ed training checkpoint (no {key!r}; keys: {sorted(record)})")
    model = create_model(record["model_name"], **record["model_config"])
    try:
        model.load_state_dict(record["state_dict"], strict=True)
    except RuntimeError as e:
        raise ValueError(f"{path}: weights do not fit {record['model_name']} built from the saved config "
                         f"({e}); was the checkpoint written by another version of the model?") from e
    return model.eval(), record
