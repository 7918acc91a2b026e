"""Hugging Face models of the text and audio stages, by profile.

- ``paper``: the hub ids of :mod:`m3ed.profiles` (with their revisions), downloaded on first use.
- ``paper-random``: the same architectures and sizes (the configs below copy the hub checkpoints'
  ``config.json``), random weights with a fixed seed.
- ``tiny``: the same architectures shrunk to two layers (tests, offline demo).

Random models are built once, saved with ``save_pretrained`` into ``cache_dir()/{profile}/{text|audio}``
(temporary directory, then an atomic rename) and ALWAYS loaded back through
:func:`m3ed.profiles.load_pretrained`: the same code path as a hub id or a user's directory.
"""
from __future__ import annotations

import contextlib
import unicodedata
from dataclasses import dataclass
from pathlib import Path

import torch
import transformers
from transformers import (AutoConfig, AutoFeatureExtractor, AutoModel, AutoTokenizer, BertConfig, BertModel,
                          BertTokenizer, Wav2Vec2Config, Wav2Vec2FeatureExtractor, Wav2Vec2ForCTC)

from ..files import atomic_dir
from ..media import SAMPLE_RATE
from ..device import autocast  # noqa: F401  (the text and audio stages' precision)
from ..profiles import Profile, cache_dir, check_pretrained, load_pretrained

# hfl/chinese-roberta-wwm-ext: a BERT (not a RoBERTa) architecture with a character-level vocabulary.
BERT_CHINESE = dict(vocab_size=21128, hidden_size=768, num_hidden_layers=12, num_attention_heads=12,
                    intermediate_size=3072, max_position_embeddings=512, type_vocab_size=2,
                    hidden_act="gelu", layer_norm_eps=1e-12, pad_token_id=0)
BERT_TINY = dict(BERT_CHINESE, hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64)

# jonatasgrosman/wav2vec2-large-xlsr-53-chinese-zh-cn: XLSR-53 large (pre-layer-norm, "stable") + a CTC
# head over 3503 characters. The head is never computed by the extractor (it loads Wav2Vec2Model).
XLSR_LARGE = dict(vocab_size=3503, hidden_size=1024, num_hidden_layers=24, num_attention_heads=16,
                  intermediate_size=4096, conv_dim=(512,) * 7, conv_kernel=(10, 3, 3, 3, 3, 2, 2),
                  conv_stride=(5, 2, 2, 2, 2, 2, 2), conv_bias=True, feat_extract_norm="layer",
                  feat_extract_activation="gelu", do_stable_layer_norm=True, num_conv_pos_embeddings=128,
                  num_conv_pos_embedding_groups=16, layer_norm_eps=1e-5, hidden_act="gelu",
                  mask_time_prob=0.05, pad_token_id=0, ctc_loss_reduction="mean")
# The conv front end keeps its kernels and strides (400-sample receptive field, 50 Hz frames).
XLSR_TINY = dict(XLSR_LARGE, vocab_size=64, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                 intermediate_size=64, conv_dim=(32,) * 7, num_conv_pos_embeddings=16, num_conv_pos_embedding_groups=2)

# The XLSR checkpoints' preprocessor_config.json.
XLSR_FEATURES = dict(feature_size=1, sampling_rate=SAMPLE_RATE, padding_value=0.0, do_normalize=True,
                     return_attention_mask=True)

SPECIAL_TOKENS = ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]")
CHINESE_PUNCTUATION = "，。！？：；、（）《》“”‘’…—·【】「」『』～"


@dataclass(frozen=True)
class ModelSpec:
    """Where a stage's model comes from: a hub id or directory, and its revision."""

    name: str
    revision: str | None = None

    def provenance(self) -> dict:
        return {"model": self.name, "revision": self.revision}


def chinese_vocab(size: int = BERT_CHINESE["vocab_size"]) -> list[str]:
    """A character-level Chinese BERT vocabulary from Unicode data, exactly ``size`` entries.

    Like the real one: special tokens, lower-case ASCII (BertTokenizer lower-cases) with ``##``
    continuations so that Latin words split into characters, Chinese punctuation, and every
    assigned character of the CJK Unified Ideographs block (U+4E00–U+9FFF); ``[unusedN]`` fill the rest.
    """
    ascii_chars = [chr(c) for c in range(33, 127) if not chr(c).isupper()]
    continuations = [f"##{c}" for c in "abcdefghijklmnopqrstuvwxyz0123456789"]
    cjk = [chr(c) for c in range(0x4E00, 0xA000) if unicodedata.name(chr(c), "")]
    tokens = list(SPECIAL_TOKENS) + ascii_chars + continuations + list(CHINESE_PUNCTUATION) + cjk
    if len(tokens) > size:
        raise ValueError(f"the Chinese vocabulary has {len(tokens)} entries, more than vocab_size {size}")
    return tokens + [f"[unused{i}]" for i in range(1, size - len(tokens) + 1)]


def _build_text(directory: Path, tiny: bool) -> None:
    config = BertConfig(**(BERT_TINY if tiny else BERT_CHINESE))
    BertModel(config).save_pretrained(directory)
    vocab = directory / "vocab.txt"
    vocab.write_text("\n".join(chinese_vocab(config.vocab_size)) + "\n", encoding="utf-8")
    save_tokenizer(BertTokenizer(str(vocab), do_lower_case=True, model_max_length=config.max_position_embeddings), directory)


def save_tokenizer(tokenizer, directory: Path) -> None:
    """``save_pretrained``, plus ``vocab.txt`` for BERT tokenizers: transformers 5 writes only
    ``tokenizer.json``, and older readers (and the hfl model card's BertTokenizer) want the vocabulary."""
    tokenizer.save_pretrained(directory)
    if isinstance(tokenizer, BertTokenizer) and not (Path(directory) / "vocab.txt").exists():
        tokens = sorted(tokenizer.get_vocab().items(), key=lambda item: item[1])
        (Path(directory) / "vocab.txt").write_text("".join(t + "\n" for t, _ in tokens), encoding="utf-8")


def _build_audio(directory: Path, tiny: bool) -> None:
    Wav2Vec2ForCTC(Wav2Vec2Config(**(XLSR_TINY if tiny else XLSR_LARGE))).save_pretrained(directory)
    Wav2Vec2FeatureExtractor(**XLSR_FEATURES).save_pretrained(directory)


BUILDERS = {"text": _build_text, "audio": _build_audio}


def local_model_dir(profile: Profile, what: str) -> Path:
    """The saved random model of a profile (``what`` is "text" or "audio"), built on first use."""
    target = cache_dir() / profile.name / what
    if (target / "config.json").exists():
        return target
    with atomic_dir(target, replace=False) as tmp:   # a concurrent builder that won the race keeps its copy
        with torch.random.fork_rng():
            torch.manual_seed(profile.seed)
            BUILDERS[what](tmp, profile.tiny)
    return target


def model_spec(profile: Profile, what: str, override: str | None = None) -> ModelSpec:
    """The model a stage loads: ``override`` (an id or path) if given, else the profile's."""
    if override:
        return ModelSpec(override)
    if profile.random_init:
        return ModelSpec(str(local_model_dir(profile, what)))
    name, revision = ((profile.text_model, profile.text_revision) if what == "text"
                      else (profile.audio_model, profile.audio_revision))
    return ModelSpec(name, revision)


def check_model(spec: ModelSpec, stage: str) -> None:
    """Before any work: raise :class:`m3ed.profiles.ModelUnavailable` when the model of stage ``stage``
    (``--{stage}-model``) cannot be had."""
    check_pretrained(spec.name, f"{stage} model", f"--{stage}-model", spec.revision)


@contextlib.contextmanager
def quiet_transformers():
    """Hide transformers' load report (e.g. the CTC head that the encoder-only load leaves out) and
    its per-load progress bars (our own bars report the work)."""
    level = transformers.logging.get_verbosity()
    bars = transformers.utils.logging.is_progress_bar_enabled()
    transformers.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
    try:
        yield
    finally:
        transformers.logging.set_verbosity(level)
        if bars:
            transformers.utils.logging.enable_progress_bar()


def load_text(spec: ModelSpec, option: str = "--text-model"):
    """``(tokenizer, encoder)``. BERT checkpoints load with the Bert classes (as the hfl model card
    requires: its name says RoBERTa, its architecture is BERT), others with the Auto classes."""
    with quiet_transformers():
        config = load_pretrained(AutoConfig, spec.name, "text model", option, spec.revision)
        if config.model_type == "bert":
            tokenizer = load_pretrained(BertTokenizer, spec.name, "text tokenizer", option, spec.revision)
            model = load_pretrained(BertModel, spec.name, "text model", option, spec.revision, add_pooling_layer=False)
        else:
            tokenizer = load_pretrained(AutoTokenizer, spec.name, "text tokenizer", option, spec.revision)
            model = load_pretrained(AutoModel, spec.name, "text model", option, spec.revision)
    return tokenizer, model.eval()


def load_audio(spec: ModelSpec, option: str = "--audio-model"):
    """``(feature_extractor, encoder)``; a CTC checkpoint loads as its encoder (no CTC head)."""
    with quiet_transformers():
        features = load_pretrained(AutoFeatureExtractor, spec.name, "audio feature extractor", option, spec.revision)
        model = load_pretrained(AutoModel, spec.name, "audio model", option, spec.revision)
    if getattr(features, "sampling_rate", SAMPLE_RATE) != SAMPLE_RATE:
        raise ValueError(f"audio model {spec.name}: expects {features.sampling_rate} Hz input; "
                         f"the pipeline decodes at {SAMPLE_RATE} Hz")
    return features, model.eval()

