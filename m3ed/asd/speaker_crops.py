"""The visual stage's face crops, cut by the asd stage while it has the frames.

The visual stage crops the speaker's face out of every utterance frame where the asd stage found it.
Decoding the dialogue again for that was a tenth of the host work per second of video
(``bench/bench_host.py``). When a run has both stages, the asd stage cuts the FER crops of every
track inside an utterance from the frames it decodes anyway (:class:`m3ed.asd.crop.TrackCrops`),
keeps those of the speaker's face once assignment has chosen it, and leaves them in one file per
dialogue under ``OUT/.parts/.scratch/speaker_crops/``: per utterance, the frames, boxes and crops of its
``speaker_faces`` rows with a face, in frame order. The visual stage takes them when the frames,
the boxes and the crop settings are exactly what it would cut from (the same crops, bit for bit:
the same function on the same decoded frame), and otherwise decodes; then it removes the file.
What is left when the run ends (a dialogue the visual stage did not reach) is removed with it.
"""
from __future__ import annotations

import io
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..catalogue import BOX, COLUMN
from ..files import atomic_write_bytes
from .crop import FER_FACE_SIZE, TrackCrops, index_of
from .track import Track



def crops_path(store, dialogue_id: str) -> Path:
    """Where the asd stage leaves a dialogue's speaker crops in ``store`` (:class:`m3ed.store.FeatureStore`)."""
    return store.scratch_path("speaker_crops", dialogue_id, ".npz")


@dataclass
class SpeakerCrops:
    """One dialogue's speaker crops: utterance id -> (frames [n] int64, boxes [n, 4] float32, crops [n, 64, 64])."""

    crop: str
    scale: float
    utterances: dict[str, tuple[np.ndarray, np.ndarray, np.ndarray]]

    def save(self, path: Path) -> None:
        ids = list(self.utterances)
        arrays = {"crop": np.array(self.crop), "scale": np.array(self.scale, np.float64), "ids": np.array(ids, str),
                  "counts": np.array([len(self.utterances[u][0]) for u in ids], np.int64)}
        for name, k in (("frames", 0), ("boxes", 1), ("crops", 2)):
            parts = [self.utterances[u][k] for u in ids]
            arrays[name] = np.concatenate(parts) if parts else np.zeros((0,), np.int64)
        buffer = io.BytesIO()
        np.savez(buffer, **arrays)
        atomic_write_bytes(path, buffer.getvalue())

    @classmethod
    def load(cls, path: Path) -> "SpeakerCrops":
        with np.load(path, allow_pickle=False) as data:
            ends = np.cumsum(data["counts"])
            starts = ends - data["counts"]
            frames, boxes, crops = data["frames"], data["boxes"], data["crops"]
            utterances = {str(u): (frames[a:b], boxes[a:b], crops[a:b])
                          for u, a, b in zip(data["ids"], starts, ends)}
            return cls(str(data["crop"]), float(data["scale"]), utterances)

    def matching(self, wanted: dict[str, np.ndarray], crop: str, scale: float) -> dict[str, list[np.ndarray]] | None:
        """Utterance id -> crops of ``wanted`` (its ``speaker_faces`` rows with a face, in frame order)
        when every row's frame and box are those these crops were cut from with the same settings; else None."""
        if crop != self.crop or (crop == "square" and scale != self.scale):
            return None
        out = {}
        for utt_id, rows in wanted.items():
            if utt_id not in self.utterances:
                return None
            frames, boxes, crops = self.utterances[utt_id]
            if not (np.array_equal(frames, rows[:, COLUMN["frame"]].astype(np.int64))
                    and np.array_equal(boxes, np.asarray(rows[:, BOX], np.float32))):
                return None
            out[utt_id] = list(crops)
        return out


def face_rows(rows: np.ndarray) -> np.ndarray:
    """An utterance's ``speaker_faces`` rows with a face, in frame order (the order crops are cut in)."""
    rows = rows[rows[:, COLUMN["track"]] >= 0]
    return rows[np.argsort(rows[:, COLUMN["frame"]], kind="stable")]


def speaker_crops(speaker_faces: dict[str, np.ndarray], tracks: list[Track], crops: TrackCrops,
                  crop: str, scale: float) -> SpeakerCrops | None:
    """The crops of the speaker's face in every utterance frame that has one, taken from ``crops``
    (cut with ``fer``); None when one of them is missing (its box holds no pixel: the visual stage says so)."""
    index = {t.track_id: i for i, t in enumerate(tracks)}
    utterances = {}
    for utt_id, rows in speaker_faces.items():
        rows = face_rows(np.asarray(rows, np.float32))
        frames = rows[:, COLUMN["frame"]].astype(np.int64)
        out = np.zeros((len(rows), FER_FACE_SIZE, FER_FACE_SIZE), np.uint8)
        for n, (frame, track_id) in enumerate(zip(frames, rows[:, COLUMN["track"]].astype(np.int64))):
            i = index[int(track_id)]
            k = int(frame) - tracks[i].first
            j = index_of(crops.fer_positions[i], k)
            if j is None or k in crops.fer_missing[i]:
                return None
            out[n] = crops.fer[i][j]
        utterances[utt_id] = (frames, np.ascontiguousarray(rows[:, BOX]), out)
    return SpeakerCrops(crop, scale, utterances)
