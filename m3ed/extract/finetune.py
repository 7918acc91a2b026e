"""``m3ed finetune text|audio``: fine-tune an encoder + a linear classifier on the 7 emotions.

The checkpoint is what the extractor reads for ``roberta_ft_cls`` / ``wav2vec2_ft_last``: the encoder
(``save_pretrained``) with its tokenizer or feature extractor, ``classifier.pt`` (the linear head,
rows in :data:`m3ed.corpus.EMOTIONS` order) and ``finetune.json`` (configuration and metrics).

The classifier reads exactly the feature the extractor writes: the [CLS] state for text, the last
time step for audio (as the authors' ``finetune_cls_*`` features). Audio input follows one
:class:`~m3ed.extract.audio.InputRule` (default: the whole utterance normalised, then zero-padded or
clipped to 4 s, as the authors' ``chmed_wav2vec_dataset``); ``finetune.json`` records it and the
extractor applies the same rule to make ``wav2vec2_ft_last``. Training uses the train split;
the epoch with the best validation weighted-F1 is kept; val and test weighted-F1 and macro-F1 of
that epoch are reported (the paper: text 43.50 / 45.73, audio 48.56 / 45.92 weighted-F1 val / test).
"""
from __future__ import annotations

import json
import logging
from dataclasses import asdict, dataclass, field
from pathlib import Path
import numpy as np
import torch
from sklearn.metrics import f1_score
from torch import nn
from tqdm import tqdm

from ..corpus import EMOTIONS, Corpus
from ..files import atomic_dir
from ..locate import MediaSource
from ..profiles import get_profile
from .audio import InputRule, decode_dialogue, normalise
from .batching import BatchBudget, plan_batches
from .hf_models import load_audio, load_text, model_spec, save_tokenizer

log = logging.getLogger(__name__)

PAPER_WEIGHTED_F1 = {"text": {"val": 43.50, "test": 45.73}, "audio": {"val": 48.56, "test": 45.92}}
# The authors' recipes for the features behind the default ``l`` and ``a`` sets. Text (MEmoConv
# codes/unibert_finetune/finetune.sh, run_cls.py): max_length 20 tokens, batch 32, 6 epochs, patience 2,
# linear decay to 0, the sequence-classification head (pooler: Linear + tanh on [CLS], dropout, Linear).
# Audio (codes/uniwav2vec_finetune/wav2vec_dnn.sh, train_baseline.py): lr 2e-5, batch 8, 5 epochs at the
# full rate then 5 of linear decay, gradient norm clipped at 5, a linear head with no dropout.
RECIPES = {
    "text": dict(lr=2e-5, batch_size=32, epochs=6, patience=2, max_length=20, schedule="linear",
                 decay_after=0, grad_clip=None, head="pooler", head_dropout=0.1),
    "audio": dict(lr=2e-5, batch_size=8, epochs=10, patience=None, max_length=None, schedule="linear",
                  decay_after=5, grad_clip=5.0, head="linear", head_dropout=0.0),
}
DEFAULTS = {m: {"lr": r["lr"], "batch_size": r["batch_size"]} for m, r in RECIPES.items()}


@dataclass
class FinetuneConfig:
    modality: str                      # "text" or "audio"
    out: Path
    profile: str = "paper"
    model: str | None = None           # another encoder (hub id or directory) than the profile's
    epochs: int | None = None          # None (here and below): the modality's recipe (RECIPES)
    lr: float = 2e-5
    batch_size: int = 16
    patience: int | None = None        # stop after this many epochs without a better val weighted-F1
    max_length: int | None = None      # text: tokens kept
    decay_after: int | None = None     # epochs at the full rate before the linear decay to 0
    grad_clip: float | None = None
    head: str | None = None            # "pooler" (Linear + tanh, dropout, Linear) or "linear"
    head_dropout: float | None = None
    class_weighted: bool = False       # cross-entropy weighted by inverse class frequency
    device: str = "cpu"
    max_steps: int | None = None       # stop after this many optimizer steps (smoke runs)
    audio_ft_seconds: float = 4.0      # audio input: zero-pad or clip to this length (the authors' 4 s) ...
    max_seconds: float = 10.0          # ... or, when that is 0, clip to at most this length (memory)
    seed: int = 0
    progress: bool = True

    def __post_init__(self) -> None:
        if self.modality not in RECIPES:
            raise ValueError(f"finetune: modality {self.modality!r}; use text or audio")
        for key, value in RECIPES[self.modality].items():
            if key not in ("lr", "batch_size", "schedule") and getattr(self, key) is None:
                setattr(self, key, value)
        if self.head not in ("pooler", "linear"):
            raise ValueError(f"finetune: head {self.head!r}; use pooler or linear")


class EmotionClassifier(nn.Module):
    """Encoder + dropout + linear head on one vector per utterance ([CLS] or the last valid frame)."""

    def __init__(self, encoder: nn.Module, modality: str, dropout: float = 0.1, head: str = "linear"):
        super().__init__()
        self.encoder, self.modality = encoder, modality
        width = encoder.config.hidden_size
        # "pooler": the sequence-classification head of BERT-type models (dense + tanh on [CLS]).
        self.pooler = nn.Sequential(nn.Linear(width, width), nn.Tanh()) if head == "pooler" else nn.Identity()
        self.dropout = nn.Dropout(dropout)
        self.head = nn.Linear(width, len(EMOTIONS))

    def pooled(self, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
        hidden = self.encoder(**inputs).last_hidden_state
        if self.modality == "text":
            return hidden[:, 0]
        mask = inputs.get("attention_mask")
        if mask is None:
            return hidden[:, -1]
        lengths = self.encoder._get_feat_extract_output_lengths(mask.sum(-1)).long()
        return hidden[torch.arange(len(hidden)), lengths.clamp(min=1) - 1]

    def forward(self, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
        return self.head(self.dropout(self.pooler(self.pooled(inputs))))

    def head_state(self) -> dict[str, torch.Tensor]:
        return {**{f"pooler.{k}": v for k, v in self.pooler.state_dict().items()}, **self.head.state_dict()}

    def load_head_state(self, state: dict[str, torch.Tensor]) -> None:
        self.pooler.load_state_dict({k[7:]: v for k, v in state.items() if k.startswith("pooler.")}, strict=True)
        self.head.load_state_dict({k: v for k, v in state.items() if not k.startswith("pooler.")}, strict=True)


@dataclass
class Example:
    id: str
    data: object      # text (str) or waveform (np.ndarray)
    label: int
    length: int


@dataclass
class Split:
    examples: list[Example] = field(default_factory=list)

    @property
    def labels(self) -> np.ndarray:
        return np.array([e.label for e in self.examples])


def text_examples(corpus: Corpus) -> list[Example]:
    return [Example(u.id, u.text.strip(), u.label, len(u.text.strip())) for u in corpus.utterances()
            if u.label >= 0 and u.text.strip()]


def input_rule(config: FinetuneConfig) -> InputRule:
    return InputRule(config.audio_ft_seconds, 0.0 if config.audio_ft_seconds else config.max_seconds)


def audio_examples(corpus: Corpus, media: MediaSource, rule: InputRule, features, min_samples: int) -> list[Example]:
    """Utterance audio as the model's input (``rule`` applied after the checkpoint's normalisation, as the
    extractor does); each dialogue decoded once; dialogues whose media fail are named and skipped."""
    examples = []
    for dialogue in corpus:
        decoded = decode_dialogue(media, dialogue)
        if decoded.error:
            log.warning("finetune: skipping %s", decoded.error)
            continue
        for u in dialogue.utterances:
            raw = decoded.waves[u.id]
            if u.label >= 0 and len(raw):
                wave = rule.apply(normalise(features, raw))
                wave = np.pad(wave, (0, max(0, min_samples - len(wave))))  # one frame at least, as the extractor
                examples.append(Example(u.id, wave, u.label, len(wave)))
    return examples


class Trainer:
    """Builds batches, trains with early selection on validation weighted-F1, saves the best epoch."""

    def __init__(self, config: FinetuneConfig):
        self.config = config
        torch.manual_seed(config.seed)
        spec = model_spec(get_profile(config.profile), config.modality, config.model)
        option = "--model"
        if config.modality == "text":
            self.processor, encoder = load_text(spec, option)
        else:
            self.processor, encoder = load_audio(spec, option)
            if hasattr(encoder, "freeze_feature_encoder"):
                encoder.freeze_feature_encoder()  # the conv front end stays fixed, as in wav2vec2 fine-tuning
        self.spec = spec
        self.model = EmotionClassifier(encoder, config.modality, config.head_dropout, config.head).to(config.device)
        self.amp = torch.autocast("cuda", dtype=torch.bfloat16) if config.device.startswith("cuda") else None

    def inputs(self, batch: list[Example]) -> dict[str, torch.Tensor]:
        if self.config.modality == "text":
            encoded = self.processor([e.data for e in batch], padding=True, truncation=True,
                                     max_length=min(self.config.max_length or 512, self.processor.model_max_length),
                                     return_tensors="pt")
        else:  # normalised already (audio_examples): padding only, as the extractor's normalised path
            encoded = self.processor.pad({"input_values": [e.data for e in batch]}, padding=True,
                                         return_attention_mask=getattr(self.processor, "return_attention_mask", False),
                                         return_tensors="pt")
        return {k: v.to(self.config.device) for k, v in encoded.items()}

    def logits(self, batch: list[Example]) -> torch.Tensor:
        with self.amp if self.amp else torch.autocast("cpu", enabled=False):
            return self.model(self.inputs(batch)).float()

    def predict(self, split: Split) -> np.ndarray:
        self.model.eval()
        budget = BatchBudget(max_items=max(1, self.config.batch_size * 2), max_padded=10**12,
                             equal_length_only=self.config.modality == "audio" and not self._mask_invariant())
        predictions = np.zeros(len(split.examples), int)
        with torch.inference_mode():
            for batch in plan_batches([e.length for e in split.examples], budget):
                predictions[batch] = self.logits([split.examples[i] for i in batch]).argmax(-1).cpu().numpy()
        return predictions

    def _mask_invariant(self) -> bool:
        config = self.model.encoder.config
        return getattr(config, "feat_extract_norm", "") == "layer" and getattr(self.processor, "return_attention_mask", False)

    def evaluate(self, split: Split) -> dict[str, float]:
        if not split.examples:
            return {"weighted_f1": float("nan"), "macro_f1": float("nan"), "n": 0}
        predicted = self.predict(split)
        labels = list(range(len(EMOTIONS)))
        return {"weighted_f1": 100 * f1_score(split.labels, predicted, labels=labels, average="weighted", zero_division=0),
                "macro_f1": 100 * f1_score(split.labels, predicted, labels=labels, average="macro", zero_division=0),
                "n": len(split.examples)}

    def loss_function(self, train: Split) -> nn.Module:
        if not self.config.class_weighted:
            return nn.CrossEntropyLoss()
        counts = np.bincount(train.labels, minlength=len(EMOTIONS)).astype(np.float64)
        weights = np.where(counts > 0, counts.sum() / np.maximum(counts, 1) / len(EMOTIONS), 0.0)
        return nn.CrossEntropyLoss(weight=torch.tensor(weights, dtype=torch.float32, device=self.config.device))

    def fit(self, splits: dict[str, Split]) -> dict:
        c = self.config
        train = splits["train"]
        if not train.examples:
            raise ValueError("finetune: the train split has no labelled utterances (check --splits and the annotations)")
        optimizer = torch.optim.AdamW([p for p in self.model.parameters() if p.requires_grad], lr=c.lr)
        per_epoch = -(-len(train.examples) // c.batch_size)
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, _linear_decay(c.epochs, c.decay_after, per_epoch))
        criterion = self.loss_function(train)
        rng = np.random.default_rng(c.seed)
        best: dict | None = None
        history, step = [], 0
        for epoch in range(1, c.epochs + 1):
            self.model.train()
            order = rng.permutation(len(train.examples))
            batches = [order[i:i + c.batch_size] for i in range(0, len(order), c.batch_size)]
            losses = []
            for batch in tqdm(batches, desc=f"epoch {epoch}", disable=not c.progress, unit="batch"):
                examples = [train.examples[i] for i in batch]
                loss = criterion(self.logits(examples), torch.tensor([e.label for e in examples], device=c.device))
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                if c.grad_clip:
                    torch.nn.utils.clip_grad_norm_(self.model.parameters(), c.grad_clip)
                optimizer.step()
                scheduler.step()
                losses.append(loss.item())
                step += 1
                if c.max_steps and step >= c.max_steps:
                    break
            record = {"epoch": epoch, "steps": step, "train_loss": float(np.mean(losses)),
                      "val": self.evaluate(splits["val"]), "test": self.evaluate(splits["test"])}
            history.append(record)
            log.info("epoch %d: loss %.4f val wF1 %.2f", epoch, record["train_loss"], record["val"]["weighted_f1"])
            if best is None or _better(record["val"]["weighted_f1"], best["val"]["weighted_f1"]):
                best = record
                self.save(record, history)
            if c.max_steps and step >= c.max_steps:
                break
            if c.patience and epoch - best["epoch"] >= c.patience:
                log.info("no better val weighted-F1 for %d epochs: stopping", c.patience)
                break
        return {"best": best, "history": history}

    def save(self, best: dict, history: list[dict]) -> None:
        """The checkpoint directory, replaced whole (written beside it, then renamed)."""
        with atomic_dir(self.config.out) as tmp:
            self._save_to(tmp, best, history)

    def _save_to(self, tmp: Path, best: dict, history: list[dict]) -> None:
        self.model.encoder.save_pretrained(tmp)
        if self.config.modality == "text":
            save_tokenizer(self.processor, tmp)
        else:
            self.processor.save_pretrained(tmp)
        with open(tmp / "classifier.pt", "wb") as f:   # to a file, not a path: torch's own writer hides a full disk
            torch.save(self.model.head_state(), f)
        record = {"modality": self.config.modality, "base_model": self.spec.name, "base_revision": self.spec.revision,
                  "labels": list(EMOTIONS), "pooling": "[CLS]" if self.config.modality == "text" else "last time step",
                  "head": self.config.head,
                  "config": {k: str(v) if isinstance(v, Path) else v for k, v in asdict(self.config).items()},
                  "best_epoch": best["epoch"], "metrics": {"val": best["val"], "test": best["test"]}, "history": history}
        if self.config.modality == "audio":
            record["input"] = asdict(input_rule(self.config))  # the extractor reads it: same input as training
        (tmp / "finetune.json").write_text(json.dumps(record, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")


def _linear_decay(epochs: int, decay_after: int, steps_per_epoch: int):
    """Per step: the full rate for ``decay_after`` epochs, then linearly down to 0 at the last step."""
    start, end = decay_after * steps_per_epoch, max(epochs * steps_per_epoch, 1)
    return lambda step: 1.0 if step < start else max(0.0, (end - step) / max(end - start, 1))


def _better(value: float, best: float) -> bool:
    return not np.isnan(value) and (np.isnan(best) or value > best)


def load_classifier(directory: str | Path, modality: str) -> EmotionClassifier:
    """A saved checkpoint back as an :class:`EmotionClassifier` (encoder + head)."""
    from .hf_models import ModelSpec

    spec = ModelSpec(str(directory))
    load, option = (load_text, "--text-finetuned") if modality == "text" else (load_audio, "--audio-finetuned")
    _, encoder = load(spec, option)
    try:
        head = json.loads((Path(directory) / "finetune.json").read_text(encoding="utf-8")).get("head", "linear")
    except (OSError, ValueError):
        head = "linear"                       # checkpoints written before the head was recorded
    model = EmotionClassifier(encoder, modality, head=head)
    model.load_head_state(torch.load(Path(directory) / "classifier.pt", map_location="cpu", weights_only=True))
    return model.eval()


def format_table(modality: str, best: dict) -> str:
    paper = PAPER_WEIGHTED_F1[modality]
    rows = [f"{'split':<6} {'weighted-F1':>12} {'macro-F1':>9} {'paper wF1':>10} {'n':>6}"]
    for split in ("val", "test"):
        m = best[split]
        rows.append(f"{split:<6} {m['weighted_f1']:>12.2f} {m['macro_f1']:>9.2f} {paper[split]:>10.2f} {m['n']:>6}")
    return "\n".join(rows)
