"""Where a dialogue's picture and sound are: find its video file and its span inside it.

Videos are episodes (the dialogue is cut out by the relation file's times) or clips already cut
per dialogue. A configurable pattern comes first, then the common layouts; when nothing matches,
the error lists every path that was tried.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import numpy as np

from .corpus import Dialogue, Utterance
from .timecode import DEFAULT_FPS
from .media import SAMPLE_RATE, MediaError, MediaInfo, decode_audio, iter_frames, probe

VIDEO_EXTENSIONS = ("mp4", "mkv", "rmvb", "avi", "mov", "webm", "flv")
# Episode layouts seen in the wild; {show}{episode:02d} is the M3ED authors' own.
EPISODE_PATTERNS = (
    "{show}{episode:02d}.{ext}", "{show}/{show}{episode:02d}.{ext}", "{show}/{episode:02d}.{ext}",
    "{show}/{episode}.{ext}", "{show}_{episode:02d}.{ext}", "{show}_{episode}.{ext}", "{show}{episode}.{ext}",
)
CLIP_PATTERNS = ("{dialogue}.{ext}", "{show}/{dialogue}.{ext}")


class VideoNotFound(MediaError):
    """No video for a dialogue; the message lists the paths tried."""


@dataclass(frozen=True)
class Timing:
    """Time conventions. Defaults reproduce the M3ED authors' release.

    ``dialogue_offset_frames``: their cutting script read a dialogue timecode's frame field as
    FF + 1, i.e. every dialogue span starts and ends one frame later than the timecode says.
    ``audio_shift``: they cut utterance audio 50 ms later than the annotated times.
    """

    fps: float = DEFAULT_FPS
    dialogue_offset_frames: int = 1
    audio_shift: float = 0.05


@dataclass(frozen=True)
class DialogueSpan:
    """The dialogue's part of a video file: ``start``–``end`` seconds of ``path``."""

    dialogue_id: str
    path: Path
    start: float
    end: float
    info: MediaInfo

    @property
    def duration(self) -> float:
        return self.end - self.start


class MediaSource:
    """Locates and decodes dialogues. Decoding is per dialogue span; utterances are slices of it."""

    def __init__(self, videos_dir: str | Path | None, pattern: str | None = None, timing: Timing = Timing()):
        self.videos_dir = Path(videos_dir) if videos_dir else None
        self.pattern = pattern
        self.timing = timing
        self._spans: dict[str, DialogueSpan] = {}   # located once per dialogue (a probe each)

    def candidates(self, dialogue: Dialogue) -> list[Path]:
        """Every path that could hold this dialogue, in the order they are tried."""
        paths: list[Path] = []
        if dialogue.video:
            paths.append(Path(dialogue.video))
        if self.videos_dir is None:
            return paths
        patterns = ([self.pattern] if self.pattern else []) + list(CLIP_PATTERNS)
        if dialogue.episode is not None:
            patterns += list(EPISODE_PATTERNS)
        for pattern in patterns:
            for ext in VIDEO_EXTENSIONS:
                try:
                    name = pattern.format(show=dialogue.show, episode=dialogue.episode if dialogue.episode is not None else 0,
                                          dialogue=dialogue.id, ext=ext)
                except (KeyError, ValueError) as e:
                    raise ValueError(f"video pattern {pattern!r}: {e}; use {{show}}, {{episode}}, {{dialogue}}, {{ext}}") from e
                path = self.videos_dir / name
                if path not in paths:
                    paths.append(path)
        return paths

    def locate(self, dialogue: Dialogue) -> DialogueSpan:
        cached = self._spans.get(dialogue.id)
        if cached is not None and cached.path == self._first_existing(dialogue):
            return cached
        tried = self.candidates(dialogue)
        for path in tried:
            if path.is_file():
                self._spans[dialogue.id] = span = self._span(dialogue, path)
                return span
        # One line per location, extensions folded: "videos/show01.{mp4,mkv,...}".
        stems = dict.fromkeys(str(p.with_suffix("")) if p.suffix[1:] in VIDEO_EXTENSIONS else str(p) for p in tried)
        shown = "\n".join(f"  {stem}.{{{','.join(VIDEO_EXTENSIONS)}}}" for stem in stems)
        raise VideoNotFound(f"dialogue {dialogue.id}: no video found; tried:\n{shown}\n"
                            f"  (set --videos, or --video-pattern for another layout)")

    def _first_existing(self, dialogue: Dialogue) -> Path | None:
        return next((p for p in self.candidates(dialogue) if p.is_file()), None)

    def _span(self, dialogue: Dialogue, path: Path) -> DialogueSpan:
        info = probe(path)
        is_clip = dialogue.start is None or path.stem == dialogue.id
        if is_clip:
            return DialogueSpan(dialogue.id, path, 0.0, info.duration, info)
        offset = self.timing.dialogue_offset_frames / self.timing.fps
        return DialogueSpan(dialogue.id, path, dialogue.start + offset, dialogue.end + offset, info)

    def audio(self, span: DialogueSpan, sample_rate: int = SAMPLE_RATE) -> np.ndarray:
        """The dialogue's audio, mono float32, decoded once; slice utterances with :meth:`utterance_audio`."""
        try:
            return decode_audio(span.path, span.start, span.end, sample_rate, info=span.info)
        except MediaError as e:
            raise MediaError(f"dialogue {span.dialogue_id}: {e}") from e

    def utterance_audio(self, dialogue_audio: np.ndarray, utterance: Utterance, sample_rate: int = SAMPLE_RATE) -> np.ndarray:
        """An utterance's samples within the decoded dialogue audio (with the audio shift applied)."""
        shift = self.timing.audio_shift
        first = max(0, round((utterance.start + shift) * sample_rate))
        last = min(len(dialogue_audio), round((utterance.end + shift) * sample_rate))
        return dialogue_audio[first:max(first, last)]

    def frames(self, span: DialogueSpan, fps: float | None = None, height: int | None = None,
               chunk: int = 64) -> Iterator[np.ndarray]:
        """RGB frame chunks of the dialogue (frame i at ``i / fps`` s from the dialogue start)."""
        return iter_frames(span.path, span.start, span.end, fps or self.timing.fps, height, chunk, info=span.info)
