"""Text features: RoBERTa (``hfl/chinese-roberta-wwm-ext``, a BERT architecture) hidden states.

Feature sets (DESIGN §4):

- ``roberta_frame`` ``[T_tokens, 768]``: the last hidden state (or ``--text-layer N``) of every token,
  [CLS] and [SEP] included, as the authors stored it (``extract_text_ft.py``);
  ``--text-special-tokens drop`` keeps only the sentence's own tokens;
- ``roberta_mean`` ``[768]``: the mean over the sentence's own tokens, without [CLS]/[SEP] (the
  authors' ``ft[1:-1]``), whichever ``--text-special-tokens`` says;
- ``roberta_ft_cls`` ``[768]``: the [CLS] state of a fine-tuned checkpoint (``--text-finetuned DIR``,
  written by ``m3ed finetune text``); produced only when that option is given.

Utterances of many dialogues go through the model together in length-sorted batches. Rules:

- text longer than the model's limit (512 tokens with [CLS]/[SEP]) is truncated to it, with a
  warning that names the utterance;
- an utterance whose text is empty (or only blanks) gets no key in any text feature set and a
  failure line "empty text": there is nothing to encode, and zeros would pass for a sentence.
"""
from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import numpy as np
import torch

from ..corpus import Dialogue, Utterance
from ..errors import ConfigurationError
from ..stage import DialogueResult, RunContext, Stage, register_stage
from ..store import Failure
from .batching import BatchBudget, plan_batches, restore_order, split_on_oom
from .hf_models import ModelSpec, autocast, check_model, load_text, model_spec, quiet_transformers
from .options import SPECIAL_TOKEN_CHOICES, TextOptions

log = logging.getLogger(__name__)

FRAME, MEAN, FT_CLS = "roberta_frame", "roberta_mean", "roberta_ft_cls"
EMPTY_TEXT = "empty text"


@dataclass(frozen=True)
class Encoded:
    """One utterance through one model: hidden states of all its tokens, and which are special."""

    hidden: np.ndarray    # [n_tokens, D] float32, special tokens included
    special: np.ndarray   # [n_tokens] bool

    @property
    def content(self) -> np.ndarray:
        return self.hidden[~self.special]


def layer_index(layer: int, num_layers: int, model: str) -> int:
    """The index into hidden_states of ``--text-layer`` (negative: from the last); a layer the model
    lacks is a mistake of the whole run's configuration."""
    index = layer + num_layers + 1 if layer < 0 else layer
    if not 0 <= index <= num_layers:
        raise ConfigurationError(f"--text-layer {layer}: {model} has layers 0 (embeddings) to {num_layers} "
                                 f"(or -1 to -{num_layers + 1} from the last)")
    return index


class TextEncoder:
    """A tokenizer and an encoder on a device; encodes sentences in budgeted, length-sorted batches."""

    def __init__(self, spec: ModelSpec, device: str = "cpu", precision: str = "fp32", layer: int | None = None,
                 budget: BatchBudget = BatchBudget(64, 8192), option: str = "--text-model"):
        self.spec, self.device, self.precision, self.budget = spec, device, precision, budget
        self.tokenizer, self.model = load_text(spec, option)
        self.model.to(device)
        self.num_layers = int(self.model.config.num_hidden_layers)
        self.layer = self._resolve_layer(layer)
        self.max_length = self._max_length()

    def _resolve_layer(self, layer: int | None) -> int | None:
        """None for the last layer; else an index into hidden_states (0: embeddings, L: last)."""
        if layer is None:
            return None
        index = layer_index(layer, self.num_layers, self.spec.name)
        return None if index == self.num_layers else index

    def _max_length(self) -> int:
        limits = [int(getattr(self.model.config, "max_position_embeddings", 512))]
        if self.tokenizer.model_max_length < 1_000_000:  # "no limit" is stored as a huge number
            limits.append(int(self.tokenizer.model_max_length))
        return min(limits)

    def tokenize(self, texts: list[str], names: list[str]) -> dict[str, list[list[int]]]:
        with quiet_transformers():  # the untruncated pass warns about lengths; we warn by name below
            full = self.tokenizer(texts)["input_ids"]
        for name, ids in zip(names, full):
            if len(ids) > self.max_length:
                log.warning("utterance %s: %d tokens, truncated to the model limit of %d (%s)",
                            name, len(ids), self.max_length, self.spec.name)
        return self.tokenizer(texts, truncation=True, max_length=self.max_length, return_special_tokens_mask=True)

    def encode(self, texts: list[str], names: list[str]) -> list[Encoded]:
        if not texts:
            return []
        encoding = self.tokenize(texts, names)
        keys = [k for k in ("input_ids", "attention_mask", "token_type_ids") if k in encoding]
        lengths = [len(ids) for ids in encoding["input_ids"]]
        batches = plan_batches(lengths, self.budget)

        def run(batch: list[int]) -> list[Encoded]:
            padded = self.tokenizer.pad([{k: encoding[k][i] for k in keys} for i in batch], return_tensors="pt")
            hidden = self._forward({k: v.to(self.device) for k, v in padded.items()})
            return [Encoded(hidden[j, : lengths[i]], np.asarray(encoding["special_tokens_mask"][i], bool))
                    for j, i in enumerate(batch)]

        return restore_order(batches, [split_on_oom(run, batch) for batch in batches])

    def _forward(self, inputs: dict[str, torch.Tensor]) -> np.ndarray:
        # Hidden states of every layer only when a layer other than the last is asked for.
        want_layer = self.layer is not None
        with torch.inference_mode(), autocast(self.device, self.precision):
            out = self.model(**inputs, output_hidden_states=want_layer)
        hidden = out.hidden_states[self.layer] if want_layer else out.last_hidden_state
        return hidden.float().cpu().numpy()

    def close(self) -> None:
        del self.model


@dataclass(frozen=True)
class TextConfig:
    """What the stage runs with: the options with the model resolved against the profile."""

    model: ModelSpec
    layer: int | None = None
    batch_tokens: int = TextOptions.batch_tokens
    batch_items: int = 64
    finetuned: str | None = None
    special_tokens: str = TextOptions.special_tokens

    def __post_init__(self) -> None:
        if self.special_tokens not in SPECIAL_TOKEN_CHOICES:
            raise ValueError(f"--text-special-tokens {self.special_tokens!r}: choose keep or drop")

    def provenance(self) -> dict:
        return {**self.model.provenance(), "layer": "last" if self.layer is None else self.layer,
                "finetuned": _fingerprint(self.finetuned), "special_tokens": self.special_tokens}


def _fingerprint(directory: str | None) -> dict | None:
    """A fine-tuned checkpoint by path and content (its config and metrics), not by modification time."""
    if not directory:
        return None
    digest = hashlib.sha256()
    for name in ("config.json", "finetune.json"):
        path = Path(directory) / name
        if path.exists():
            digest.update(path.read_bytes())
    return {"path": str(Path(directory).resolve()), "sha256": digest.hexdigest()[:16]}


@register_stage
class TextStage(Stage):
    name = "text"
    feature_sets = (FRAME, MEAN)
    group_size = 32  # dialogues per call: batches span dialogues
    options = TextOptions
    uses_media = False  # text only: utterance times do not matter

    def __init__(self, config: TextConfig, device: str = "cpu", precision: str = "fp32"):
        self.config, self.device, self.precision = config, device, precision
        if config.finetuned:
            self.feature_sets = (FRAME, MEAN, FT_CLS)
        self._encoders: dict[str, TextEncoder] = {}

    @classmethod
    def from_config(cls, options: TextOptions, context: RunContext) -> "TextStage":
        config = TextConfig(model=model_spec(context.profile, "text", options.model), layer=options.layer,
                            batch_tokens=options.batch_tokens, finetuned=options.finetuned,
                            special_tokens=options.special_tokens)
        return cls(config, context.device, context.precision)

    def preflight(self) -> None:
        check_model(self.config.model, self.name)
        if self.config.layer is not None:   # found before any work, from the model's config alone
            from transformers import AutoConfig

            from ..profiles import load_pretrained

            spec = self.config.model
            model_config = load_pretrained(AutoConfig, spec.name, "text model", "--text-model", spec.revision)
            layer_index(self.config.layer, int(model_config.num_hidden_layers), spec.name)

    def provenance(self) -> dict:
        return {"stage": self.name, **self.config.provenance()}

    def attrs(self, feature_set: str) -> dict:
        spec = self.config.model
        if feature_set == FT_CLS:
            return {"model": str(self.config.finetuned), "tokens": "[CLS] of the fine-tuned encoder"}
        if feature_set == MEAN:
            tokens = "mean over tokens except special ones ([CLS], [SEP])"
        elif self.config.special_tokens == "keep":
            tokens = "all tokens, [CLS] first and [SEP] last"
        else:
            tokens = "all tokens except special ones ([CLS], [SEP])"
        return {"model": spec.name, "revision": spec.revision or "",
                "layer": "last" if self.config.layer is None else self.config.layer, "tokens": tokens}

    def encoder(self, key: str) -> TextEncoder:
        if key not in self._encoders:
            budget = BatchBudget(self.config.batch_items, self.config.batch_tokens)
            if key == "base":
                self._encoders[key] = TextEncoder(self.config.model, self.device, self.precision,
                                                  self.config.layer, budget)
            else:
                self._encoders[key] = TextEncoder(ModelSpec(self.config.finetuned), self.device, self.precision,
                                                  None, budget, option="--text-finetuned")
        return self._encoders[key]

    def process(self, dialogues: list[Dialogue], context: RunContext) -> Iterator[DialogueResult]:
        utterances = [u for d in dialogues for u in d.utterances if u.text.strip()]
        texts, names = [u.text.strip() for u in utterances], [u.id for u in utterances]
        base = dict(zip(names, self.encoder("base").encode(texts, names)))
        tuned = dict(zip(names, self.encoder("ft").encode(texts, names))) if self.config.finetuned else {}
        for dialogue in dialogues:
            yield self._result(dialogue, base, tuned)

    def _result(self, dialogue: Dialogue, base: dict[str, Encoded], tuned: dict[str, Encoded]) -> DialogueResult:
        result = DialogueResult(dialogue.id, {name: {} for name in self.feature_sets})
        for utterance in dialogue.utterances:
            encoded = base.get(utterance.id)
            if encoded is None or len(encoded.content) == 0:
                result.failures += self._failures(dialogue, utterance, EMPTY_TEXT)
                continue
            keep = self.config.special_tokens == "keep"
            result.features[FRAME][utterance.id] = encoded.hidden if keep else encoded.content
            result.features[MEAN][utterance.id] = encoded.content.mean(axis=0)
            if self.config.finetuned:
                result.features[FT_CLS][utterance.id] = tuned[utterance.id].hidden[0]  # [CLS] comes first
        return result

    def _failures(self, dialogue: Dialogue, utterance: Utterance, reason: str) -> list[Failure]:
        return [Failure(name, dialogue.id, utterance.id, reason) for name in self.feature_sets]

    def close(self) -> None:
        for encoder in self._encoders.values():
            encoder.close()
        self._encoders.clear()
