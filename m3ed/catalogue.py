"""Every feature set the pipeline writes, named once: modality, level, size and rate.

The stages write them, the store checks every part against its entry (an utterance-level set holds
``[D]`` arrays, a frame-level set ``[T, D]``; one ``D`` throughout a file), and downstream training,
the exports and ``m3ed make-synthetic`` read names and sizes from here. ``dim`` is the size with the
paper's models; other models (the ``tiny`` profile, a user's checkpoint) give their own, recorded
in each file's ``dim`` attribute.
"""
from __future__ import annotations

from dataclasses import dataclass

from .timecode import DEFAULT_FPS

MODALITIES = ("text", "audio", "visual", "asd")
LEVELS = ("utterance", "frame")
# Downstream models name the modalities by letter, as the paper's tables (l, a, v).
LETTERS = {"text": "l", "audio": "a", "visual": "v"}


@dataclass(frozen=True)
class FeatureSetSpec:
    name: str
    modality: str            # one of MODALITIES
    level: str               # "utterance": [D] per utterance; "frame": [T, D]
    dim: int                 # D with the paper's models
    frame_rate: float | None = None   # frames per second for frame-level sets (None: tokens)
    dtype: str = "float32"
    finetuned: bool = False  # from an encoder fine-tuned on the emotions (the paper's "Utt_ft")

    @property
    def letter(self) -> str | None:
        """The modality's letter for downstream models (None: not an input of theirs)."""
        return LETTERS.get(self.modality)

    @property
    def ndim(self) -> int:
        return 1 if self.level == "utterance" else 2

    def check(self, key: str, shape: tuple[int, ...]) -> None:
        """Raise when an array of this set has the wrong number of axes."""
        if len(shape) != self.ndim:
            want = "[D]" if self.level == "utterance" else "[T, D]"
            raise ValueError(f"{self.name}/{key}: an array of shape {list(shape)}; this {self.level}-level set "
                             f"holds {want} arrays")

    def attrs(self) -> dict:
        return {"modality": self.modality, "level": self.level,
                **({"frame_rate": self.frame_rate} if self.frame_rate else {})}


# The columns of speaker_faces, one row per utterance frame (see m3ed.asd.assign for their meaning).
SPEAKER_FACE_COLUMNS: tuple[str, ...] = ("frame", "track", "x1", "y1", "x2", "y2", "asd_prob", "stage", "similarity")
COLUMN: dict[str, int] = {name: i for i, name in enumerate(SPEAKER_FACE_COLUMNS)}   # speaker_faces column -> index
BOX = slice(COLUMN["x1"], COLUMN["y2"] + 1)                                         # x1, y1, x2, y2

CATALOGUE: dict[str, FeatureSetSpec] = {spec.name: spec for spec in (
    FeatureSetSpec("roberta_frame", "text", "frame", 768),
    FeatureSetSpec("roberta_mean", "text", "utterance", 768),
    FeatureSetSpec("roberta_ft_cls", "text", "utterance", 768, finetuned=True),
    FeatureSetSpec("wav2vec2_frame", "audio", "frame", 1024, 50.0),
    FeatureSetSpec("wav2vec2_mean", "audio", "utterance", 1024),
    FeatureSetSpec("wav2vec2_ft_last", "audio", "utterance", 1024, finetuned=True),
    FeatureSetSpec("speaker_faces", "asd", "frame", len(SPEAKER_FACE_COLUMNS), DEFAULT_FPS),
    FeatureSetSpec("denseface_frame", "visual", "frame", 342, DEFAULT_FPS),
    FeatureSetSpec("denseface_mean", "visual", "utterance", 342),
)}


def spec(name: str) -> FeatureSetSpec | None:
    return CATALOGUE.get(name)


def downstream_sets(letter: str, level: str) -> tuple[str, ...]:
    """The feature sets of modality ``letter`` at ``level``, fine-tuned first (the paper's order of
    preference: "Utt_ft" before the pooled sets)."""
    specs = [s for s in CATALOGUE.values() if s.letter == letter and s.level == level]
    return tuple(s.name for s in sorted(specs, key=lambda s: not s.finetuned))


def letter_of(name: str) -> str | None:
    """The modality letter of a feature set: the catalogue's, or for another set (a user's, e.g.
    ``roberta_layer8``) that of the catalogued sets sharing its first word."""
    if name in CATALOGUE:
        return CATALOGUE[name].letter
    family = {s.name.split("_")[0]: s.letter for s in CATALOGUE.values()}
    return family.get(name.split("_")[0])
