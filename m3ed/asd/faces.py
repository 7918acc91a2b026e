"""What the asd stage keeps of a dialogue besides its feature set: ``OUT/asd/{dialogue}.json``.

Every face track with its frames, boxes and speaking probabilities, and the shot boundaries, for
``m3ed viz-asd``, the report and inspection. Written atomically by the stage; read with
:func:`read_dialogue_faces`. This module loads neither torch nor OpenCV.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import quote

import numpy as np

from .options import VIDEO_FPS

if TYPE_CHECKING:
    from .track import Track

FEATURE_SET = "speaker_faces"
TRACKS_DIR = "asd"      # OUT/asd/{dialogue}.json


@dataclass
class DialogueFaces:
    """Every intermediate result of one dialogue (what ``OUT/asd/{dialogue}.json`` holds)."""

    dialogue_id: str
    frame_count: int
    frame_size: tuple[int, int]             # (height, width) of the video
    shots: np.ndarray
    tracks: list[Track]
    scores: list[np.ndarray] = field(default_factory=list)
    demo_scores: list[np.ndarray] = field(default_factory=list)   # the ASD demo's rounded class-1 score

    def to_json(self) -> str:
        return json.dumps({
            "dialogue_id": self.dialogue_id, "fps": VIDEO_FPS, "frame_count": self.frame_count,
            "frame_height": self.frame_size[0], "frame_width": self.frame_size[1],
            "shots": self.shots.tolist(),
            "tracks": [{**t.to_dict(), "asd_prob": [None if np.isnan(p) else round(float(p), 4) for p in s]}
                       for t, s in zip(self.tracks, self.scores)],
        }, ensure_ascii=False)


def tracks_path(out_dir: str | Path, dialogue_id: str) -> Path:
    return Path(out_dir) / TRACKS_DIR / f"{quote(dialogue_id, safe='')}.json"


def read_dialogue_faces(out_dir: str | Path, dialogue_id: str) -> dict:
    """The JSON record the asd stage wrote for a dialogue (tracks, scores, shots)."""
    path = tracks_path(out_dir, dialogue_id)
    if not path.exists():
        raise FileNotFoundError(f"{path}: no ASD tracks for dialogue {dialogue_id}; run the asd stage "
                                f"(m3ed-extract --stages asd --out {out_dir}) first")
    return json.loads(path.read_text(encoding="utf-8"))
