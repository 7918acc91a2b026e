"""`HH:MM:SS:FF` timecodes as they appear in the M3ED release.

The public release files contain anomalies: stray spaces (``"00:01: 02:03"``) and frame
fields at or above the frame rate (seen up to 142 at 25 fps). Policy, chosen to match the
authors' own cutting arithmetic (seconds = ... + FF * frame_duration): an oversized frame
field *carries* into the seconds (FF=30 at 25 fps is 1.2 s), spaces are removed. Each
anomaly is reported once with its location; ``strict=True`` turns anomalies into errors.
"""
from __future__ import annotations

import logging
import math
import re
from dataclasses import dataclass, field

log = logging.getLogger(__name__)

DEFAULT_FPS = 25.0
_TIMECODE = re.compile(r"^(\d+):(\d{1,2}):(\d{1,2})(?:[:;](\d+)|\.(\d+))?$")


class TimecodeError(ValueError):
    """A timecode that cannot be parsed, or an anomaly under ``strict``."""


@dataclass
class TimecodeParser:
    """Parses timecodes, remembering the anomalies it met (one warning per location)."""

    fps: float = DEFAULT_FPS
    strict: bool = False
    anomalies: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        if not (isinstance(self.fps, (int, float)) and math.isfinite(self.fps) and self.fps > 0):
            raise TimecodeError(f"frame rate {self.fps!r}: timecodes need a positive number of frames per second "
                                f"(the M3ED release uses {DEFAULT_FPS:g})")

    def __call__(self, text: str | float | int, where: str = "") -> float:
        """Seconds for ``text`` (``HH:MM:SS:FF``, ``HH:MM:SS.mmm`` or a number of seconds)."""
        if isinstance(text, bool) or not isinstance(text, (str, int, float)):
            raise TimecodeError(f"{where}: {text!r} is not a timecode HH:MM:SS:FF (a {type(text).__name__})")
        if isinstance(text, (int, float)):
            if not math.isfinite(text):
                raise TimecodeError(f"{where}: {text!r} is not a finite number of seconds")
            return float(text)
        raw = text
        cleaned = re.sub(r"\s+", "", raw)
        if cleaned != raw.strip():
            self._anomaly(f"{where}: timecode {raw!r} contains spaces; read as {cleaned!r}")
        match = _TIMECODE.match(cleaned)
        if not match:
            raise TimecodeError(f"{where}: {raw!r} is not a timecode HH:MM:SS:FF (or HH:MM:SS.mmm)")
        hours, minutes, seconds, frames, fraction = match.groups()
        total = int(hours) * 3600 + int(minutes) * 60 + int(seconds)
        if int(minutes) >= 60 or int(seconds) >= 60:
            self._anomaly(f"{where}: timecode {raw!r} has minutes or seconds >= 60; carried over")
        if fraction is not None:
            return total + float("0." + fraction)
        frame = int(frames or 0)
        if frame >= self.fps:
            self._anomaly(
                f"{where}: timecode {raw!r} has frame field {frame} >= {self.fps:g} fps; "
                f"carried into seconds ({frame / self.fps:.2f} s)"
            )
        return total + frame / self.fps

    def _anomaly(self, message: str) -> None:
        if self.strict:
            raise TimecodeError(message + " (strict mode)")
        self.anomalies.append(message)
        log.warning(message)


def parse_timecode(text: str | float, fps: float = DEFAULT_FPS, strict: bool = False, where: str = "") -> float:
    """Seconds for one timecode; see :class:`TimecodeParser` for the anomaly policy."""
    return TimecodeParser(fps=fps, strict=strict)(text, where)


def format_timecode(seconds: float, fps: float = DEFAULT_FPS) -> str:
    """``HH:MM:SS:FF`` for ``seconds`` (frames rounded to the nearest)."""
    frames_total = round(seconds * fps)
    frames = int(frames_total % fps)
    whole = int(frames_total // fps)
    return f"{whole // 3600:02d}:{whole // 60 % 60:02d}:{whole % 60:02d}:{frames:02d}"
