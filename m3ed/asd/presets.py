"""Named sets of asd settings (``--preset``): ``fast``, the defaults, and ``authors``, the M3ED authors' front end.

``authors`` is what their ``preprocess/extract_spk_faces.py`` ran on, TalkNet's demo: S3FD on every
frame at 0.25 scale (confidence 0.9), the demo's tracker and a 15-frame shortest shot (PySceneDetect's
``min_scene_len``), TalkNet scored over the six durations on every track frame but the last,
SENet-50 on every frame with their uint8 cast (which the authors' rules turn on), their utterance
frames (end frame included, an overlapping frame decided for one utterance) and their assignment rules.

A preset fills only what was not given: a flat option left ``None`` (:class:`m3ed.asd.options.AsdOptions`)
and a section field left at its default. So ``--preset authors --detector mtcnn`` runs MTCNN and
keeps the rest of the preset; a section field set from Python to its default value cannot be told
from one left alone, and takes the preset's value.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

PRESETS = ("fast", "authors")


@dataclass(frozen=True)
class Preset:
    """``flat``: values of :class:`m3ed.asd.options.AsdConfig` fields outside the sections;
    ``sections``: section name (``s3fd``, ``tracking``...) -> field -> value."""

    name: str
    flat: dict = field(default_factory=dict)
    sections: dict = field(default_factory=dict)

    def section(self, name: str, params):
        """``params`` with this preset's values for the fields still at their defaults."""
        default = type(params)()
        values = {k: v for k, v in self.sections.get(name, {}).items() if getattr(params, k) == getattr(default, k)}
        return dataclasses.replace(params, **values) if values else params


FAST = Preset("fast")   # the defaults of AsdConfig and of each section

AUTHORS = Preset(
    "authors",
    flat={"detector": "s3fd", "embed_every": 1, "embedder": "senet50-vggface2"},
    sections={
        "s3fd": {"every": 1, "scale": 0.25, "min_score": 0.9},
        # the demo's track_shot values (ours by default too), stated so that the preset keeps them
        "tracking": {"iou_threshold": 0.5, "max_gap": 10, "min_track": 10, "min_face_size": 1.0},
        "shots": {"min_shot_frames": 15},
        "scoring": {"mode": "multi", "frames": "all", "score_last_frame": False},
        "assign": {"rules": "authors", "end_inclusive": True, "one_utterance_per_frame": True},
    })

_BY_NAME = {p.name: p for p in (FAST, AUTHORS)}


def get_preset(name: str | None) -> Preset:
    """The preset called ``name`` (``None``: ``fast``)."""
    if name is None:
        return FAST
    if name not in _BY_NAME:
        raise ValueError(f"AsdConfig.preset={name!r}: choose one of {', '.join(PRESETS)}")
    return _BY_NAME[name]
