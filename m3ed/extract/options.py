"""The options of the text, audio and visual stages, as a user gives them (``--text-*``, ``--audio-*``, ``--fer-*``).

They live apart from the stages so that the configuration and the command line can be built
without importing torch or transformers (``m3ed --help`` stays fast): this module imports neither.
Each stage resolves its options into its own config when it is built (``Stage.from_config``).
"""
from __future__ import annotations

from dataclasses import dataclass

from ..options import option

SPECIAL_TOKEN_CHOICES = ("keep", "drop")
MEAN_CLIPS = ("before", "after")
CROPS = ("tight", "square")  # the authors' stretched detector box; our 1.2x square
#: ``square`` crops: side relative to the detector box's longer side (MTCNN boxes are tight,
#: FER+/AffectNet training faces show a little forehead and chin around them).
DEFAULT_CROP_SCALE = 1.2
#: Gray-value normalisation of the authors' M3ED feature extraction: the values of
#: ``m3ed.models.densenet_fer.M3ED_FACE_MEAN``/``_STD``, which imports torch (a test keeps them equal).
AUTHORS_FACE_MEAN = 89.936089
AUTHORS_FACE_STD = 45.954746


def _comma_list(text: str) -> tuple[str, ...]:
    return tuple(item.strip() for item in text.split(",") if item.strip())


@dataclass
class TextOptions:
    """The text stage's options (``ExtractConfig.text``; ``--text-*``)."""

    model: str | None = option(None, "another Hugging Face encoder (hub id or local directory) instead of the "
                                     "profile's", metavar="ID|PATH")
    layer: int | None = option(None, "hidden layer to use: 0 = embeddings, -1 = last (default: last)", metavar="N")
    batch_tokens: int = option(8192, "padded tokens per batch (default: %(default)s)", metavar="N")
    finetuned: str | None = option(None, "checkpoint of `m3ed finetune text`; adds the roberta_ft_cls feature set",
                                   metavar="DIR")
    special_tokens: str = option("keep", "roberta_frame with [CLS] and [SEP] (keep: as the authors stored it) or "
                                         "without them (drop); roberta_mean never includes them (default: %(default)s)",
                                 choices=SPECIAL_TOKEN_CHOICES)


@dataclass
class AudioOptions:
    """The audio stage's options (``ExtractConfig.audio``; ``--audio-*``)."""

    model: str | None = option(None, "another Wav2Vec2-style encoder (hub id or local directory) instead of the "
                                     "profile's", metavar="ID|PATH")
    finetuned: str | None = option(None, "checkpoint of `m3ed finetune audio`; adds the wav2vec2_ft_last feature set",
                                   metavar="DIR")
    mean_max_seconds: float = option(10.0, "wav2vec2_mean averages the first S seconds, as the authors "
                                           "(default: %(default)s; 0: the whole utterance)", metavar="S")
    mean_clip: str = option("before", "before: clip the waveform to S seconds and encode the clip (the authors); "
                                      "after: average the first S seconds of the whole utterance's frames "
                                      "(default: %(default)s)", choices=MEAN_CLIPS)
    ft_seconds: float | None = option(None, "the fine-tuned model's input: the utterance normalised, then zero-padded "
                                            "or clipped to S seconds (0: the whole utterance). Default: the rule the "
                                            "checkpoint was trained with (m3ed finetune audio records it), else 4, "
                                            "the authors'", metavar="S")
    chunk_seconds: float = option(30.0, "longer utterances are encoded in overlapping windows of S seconds "
                                        "(default: %(default)s)", metavar="S")
    batch_seconds: float = option(60.0, "padded audio per batch (default: %(default)s)", metavar="S")
    sets: tuple[str, ...] | None = option(None, "comma-separated feature sets to write, of wav2vec2_frame, "
                                                "wav2vec2_mean, wav2vec2_ft_last (default: all that the options "
                                                "allow); without wav2vec2_frame, only the audio the others read is "
                                                "encoded (wav2vec2_mean: the first --audio-mean-max-seconds)",
                                          type=_comma_list, metavar="SETS")


@dataclass
class VisualOptions:
    """The visual stage's options (``ExtractConfig.visual``; ``--fer-*``)."""

    checkpoint: str | None = option(None, "DenseNet FER state dict (features.*, classifier.*), e.g. from "
                                          "`m3ed train-fer`; required by the paper profile", flag="--fer-checkpoint",
                                    metavar="PATH")
    mean: float = option(AUTHORS_FACE_MEAN, "gray-value mean for (x - mean) / std (default: the authors' %(default)s)",
                         flag="--fer-mean")
    std: float = option(AUTHORS_FACE_STD, "gray-value std (default: the authors' %(default)s)", flag="--fer-std")
    crop: str = option("tight", "tight: the detector box stretched to 64x64, as the authors (their normalisation "
                                "constants come from such crops); square: a square around the box, --fer-crop-scale "
                                "times its longer side (default: %(default)s)", flag="--fer-crop", choices=CROPS)
    crop_scale: float = option(DEFAULT_CROP_SCALE, "square crops: side relative to the box's longer side "
                                                   "(default: %(default)s)", flag="--fer-crop-scale")

    #: The run's ``--preset``, handed over by :meth:`m3ed.config.ExtractConfig.stage_options`: the
    #: preset of the speaker faces when a shard reads its own unpublished parts (which carry no attributes).
    preset: str | None = None
