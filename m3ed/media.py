"""ffmpeg: probe a file, decode a time span into audio samples or video frames, cut clips.

The ffmpeg binary is the one named by ``M3ED_FFMPEG``, else a system ``ffmpeg``, else the one
that the imageio-ffmpeg wheel ships (so a fresh machine needs no system package). Every failure
raises :class:`MediaError` carrying the file, the command and the tail of ffmpeg's stderr.
"""
from __future__ import annotations

import functools
import os
import re
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import ffmpeg
import numpy as np

from .files import atomic_path

SAMPLE_RATE = 16000
# Decoded AAC runs ~10 ms past the video, and timecodes are frame-rounded: spans may overhang
# the end of a file by this much before we call them out of range.
END_TOLERANCE = 0.25
# A decode that delivers less than the requested span by more than this is a truncated file.
SHORTFALL_TOLERANCE = 0.2
# Decoded chunks hold at most this many bytes. Larger arrays are fresh memory from the kernel each
# time (glibc maps anything over 32 MiB anew), whose page faults cost more than the decoding: 720p
# at 64 frames a chunk took 8.6 CPU-s a minute of video, at 4 frames 5.4 (bench/bench_decode.py).
CHUNK_BYTES = 12 * 2 ** 20


class MediaError(RuntimeError):
    """A media file that cannot be decoded or cut; the message names the file and what is wrong."""


@functools.cache
def ffmpeg_exe() -> str:
    explicit = os.environ.get("M3ED_FFMPEG")
    if explicit:
        return explicit
    system = shutil.which("ffmpeg")
    if system:
        return system
    import imageio_ffmpeg

    return imageio_ffmpeg.get_ffmpeg_exe()


@functools.cache
def ffmpeg_version() -> str:
    """The decoder the stages use, as ``run.json`` records it: ffmpeg's version line and binary."""
    try:
        first = subprocess.run([ffmpeg_exe(), "-version"], capture_output=True, text=True, timeout=30).stdout
        version = first.splitlines()[0].split(" Copyright")[0] if first else "unknown version"
    except (OSError, subprocess.SubprocessError) as e:
        version = f"not runnable ({e})"
    return f"{version} ({ffmpeg_exe()}, piped)"


def _run(cmd: list[str], path: Path | str, what: str, **kwargs) -> subprocess.CompletedProcess:
    result = subprocess.run(cmd, capture_output=True, **kwargs)
    if result.returncode != 0:
        raise MediaError(f"{path}: {what} failed (ffmpeg exit {result.returncode})\n"
                         f"  command: {' '.join(map(str, cmd))}\n  stderr: {_tail(result.stderr)}")
    return result


def _tail(stderr: bytes, lines: int = 6) -> str:
    return " | ".join(stderr.decode(errors="replace").strip().splitlines()[-lines:])


@dataclass(frozen=True)
class MediaInfo:
    path: Path
    duration: float
    has_video: bool
    has_audio: bool
    fps: float | None
    width: int | None
    height: int | None


_DURATION = re.compile(r"Duration: (\d+):(\d+):(\d+(?:\.\d+)?)")
_VIDEO = re.compile(r"Stream #\S+.*?: Video: .*?(\d{2,5})x(\d{2,5}).*?(?:(\d+(?:\.\d+)?) fps|(\d+(?:\.\d+)?) tbr)")


def probe(path: str | Path) -> MediaInfo:
    """Duration and streams of a media file (parsed from ``ffmpeg -i``; no ffprobe needed)."""
    path = Path(path)
    if not path.exists():
        raise MediaError(f"{path}: file not found")
    result = subprocess.run([ffmpeg_exe(), "-hide_banner", "-i", str(path)], capture_output=True)
    text = result.stderr.decode(errors="replace")
    match = _DURATION.search(text)
    if not match or "Invalid data found" in text or "moov atom not found" in text:
        raise MediaError(f"{path}: not a readable media file\n  stderr: {_tail(result.stderr)}")
    hours, minutes, seconds = match.groups()
    video = _VIDEO.search(text)
    return MediaInfo(
        path=path, duration=int(hours) * 3600 + int(minutes) * 60 + float(seconds),
        has_video=video is not None, has_audio=bool(re.search(r"Stream #\S+.*?: Audio: ", text)),
        fps=float(video.group(3) or video.group(4)) if video else None,
        width=int(video.group(1)) if video else None, height=int(video.group(2)) if video else None,
    )


def _check_span(info: MediaInfo, start: float, end: float) -> None:
    if end <= start:
        raise MediaError(f"{info.path}: empty span {start:.3f}–{end:.3f} s")
    if start < 0 or end > info.duration + END_TOLERANCE:
        raise MediaError(f"{info.path}: span {start:.3f}–{end:.3f} s lies beyond the file (duration {info.duration:.3f} s)")


def _checked(path: str | Path, info: MediaInfo | None, stream: str, start: float, end: float) -> MediaInfo:
    """``path``'s probe, checked to have an ``audio``/``video`` stream covering ``start``–``end``."""
    info = info or probe(path)
    if not getattr(info, f"has_{stream}"):
        raise MediaError(f"{path}: has no {stream} stream")
    _check_span(info, start, end)
    return info


def decode_audio(path: str | Path, start: float, end: float, sample_rate: int = SAMPLE_RATE,
                 info: MediaInfo | None = None) -> np.ndarray:
    """Mono float32 samples in [-1, 1] for ``start``–``end`` seconds, exactly round(duration·rate) long."""
    info = _checked(path, info, "audio", start, end)
    cmd = [ffmpeg_exe(), "-v", "error", "-ss", f"{start:.6f}", "-t", f"{end - start:.6f}", "-i", str(path),
           "-vn", "-ac", "1", "-ar", str(sample_rate), "-f", "f32le", "-"]
    samples = np.frombuffer(_run(cmd, path, "audio decode").stdout, dtype=np.float32)
    expected = round((min(end, info.duration) - start) * sample_rate)
    if len(samples) < expected - SHORTFALL_TOLERANCE * sample_rate:
        raise MediaError(f"{path}: audio ends early: {len(samples) / sample_rate:.3f} s decoded of "
                         f"{expected / sample_rate:.3f} s requested from {start:.3f} s (truncated file?)")
    wanted = round((end - start) * sample_rate)
    return np.pad(samples[:wanted], (0, max(0, wanted - len(samples)))).copy()


def iter_frames(path: str | Path, start: float, end: float, fps: float = 25.0, height: int | None = None,
                chunk: int = 64, info: MediaInfo | None = None) -> Iterator[np.ndarray]:
    """RGB uint8 frames ``[n, H, W, 3]`` of ``start``–``end`` at ``fps``, in chunks of at most ``chunk``
    frames and :data:`CHUNK_BYTES` bytes (at least one frame).

    ``height`` rescales keeping the aspect ratio (None: native size). Memory stays bounded by one
    chunk however long the span. Frame i shows time ``start + i / fps``.
    """
    info = _checked(path, info, "video", start, end)
    width, out_height = info.width, info.height
    if height:
        width, out_height = 2 * round(info.width * height / info.height / 2), height
    expected = round((end - start) * fps)
    stream = ffmpeg.input(str(path), ss=f"{start:.6f}").video.filter("fps", fps=fps)
    if height:
        stream = stream.filter("scale", width, out_height)
    cmd = stream.output("pipe:", t=f"{end - start:.6f}", format="rawvideo", pix_fmt="rgb24",
                        loglevel="error").compile(cmd=ffmpeg_exe())
    frame_bytes = width * out_height * 3
    chunk = max(1, min(chunk, CHUNK_BYTES // frame_bytes))
    process = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    delivered = 0
    try:
        while delivered < expected:
            want = min(chunk, expected - delivered)
            data = process.stdout.read(want * frame_bytes)
            n = len(data) // frame_bytes
            if n == 0:
                break
            delivered += n
            yield np.frombuffer(data[: n * frame_bytes], np.uint8).reshape(n, out_height, width, 3)
    finally:
        process.stdout.close()
        stderr = process.stderr.read()
        process.kill()
        process.wait()
    if delivered < expected - SHORTFALL_TOLERANCE * fps:
        raise MediaError(f"{path}: video ends early: {delivered} frames decoded of {expected} requested "
                         f"from {start:.3f} s (truncated file?) {_tail(stderr)}")


class FrameCache:
    """Consecutive decoded frame chunks held for a later step, up to about ``limit_bytes``.

    The owner adds chunks in order (:meth:`add`) and drops what it no longer needs
    (:meth:`drop_before`); it checks :attr:`over_limit` and decides what to give up. Frames
    ``first .. end - 1`` of the stream are held.
    """

    def __init__(self, limit_bytes: int):
        if limit_bytes < 0:
            raise ValueError(f"frame cache limit {limit_bytes} bytes: must be >= 0")
        self.limit_bytes = limit_bytes
        self._chunks: list[tuple[int, np.ndarray]] = []   # (index of its first frame, frames)
        self.first = self.end = 0
        self.nbytes = 0

    @property
    def over_limit(self) -> bool:
        return self.nbytes > self.limit_bytes

    def add(self, frames: np.ndarray) -> None:
        if len(frames):
            self._chunks.append((self.end, frames))
            self.nbytes += frames.nbytes
        self.end += len(frames)
        if not self._chunks:
            self.first = self.end

    def drop_before(self, frame: int) -> None:
        """Forget frames before ``frame`` (whole chunks; a chunk that reaches past it is cut)."""
        kept = []
        for first, frames in self._chunks:
            if first + len(frames) <= frame:
                continue
            if first < frame:
                frames, first = frames[frame - first:].copy(), frame   # a copy lets the chunk go
            kept.append((first, frames))
        self._chunks = kept
        self.nbytes = sum(frames.nbytes for _, frames in kept)
        self.first = max(self.first, min(frame, self.end))

    def chunks(self) -> Iterator[tuple[int, np.ndarray]]:
        """``(index of the first frame, frames)`` of every chunk held, in order."""
        return iter(list(self._chunks))


def decode_frames(path: str | Path, start: float, end: float, fps: float = 25.0, height: int | None = None,
                  info: MediaInfo | None = None) -> np.ndarray:
    """All frames of a span as one array (see :func:`iter_frames`)."""
    chunks = list(iter_frames(path, start, end, fps, height, info=info))
    return np.concatenate(chunks) if chunks else np.zeros((0, 0, 0, 3), np.uint8)


def cut_video(src: str | Path, dst: str | Path, start: float, end: float, *, preset: str = "veryfast",
              crf: int = 18) -> Path:
    """Frame-accurate clip (H.264 + AAC), re-encoded; written to a temporary name, then renamed."""
    dst = Path(dst)
    if end <= start:
        raise MediaError(f"{src}: empty span {start:.3f}–{end:.3f} s; no clip written for {dst.name}")
    with atomic_path(dst) as tmp:
        cmd = (ffmpeg.input(str(src), ss=f"{start:.6f}")
               .output(str(tmp), t=f"{end - start:.6f}", vcodec="libx264", preset=preset, crf=crf,
                       pix_fmt="yuv420p", acodec="aac", movflags="+faststart", loglevel="error")
               .overwrite_output().compile(cmd=ffmpeg_exe()))
        _run(cmd, src, f"cutting {start:.3f}–{end:.3f} s to {dst.name}")
    return dst


def write_wav(samples: np.ndarray, dst: str | Path, sample_rate: int = SAMPLE_RATE) -> Path:
    """16-bit PCM mono WAV from float samples, atomically."""
    import wave

    dst = Path(dst)
    if len(samples) == 0:
        raise MediaError(f"{dst.name}: no audio samples (empty span); no wav written")
    pcm = (np.clip(samples, -1.0, 1.0) * 32767).astype("<i2")
    with atomic_path(dst, size_hint=pcm.nbytes) as tmp, wave.open(str(tmp), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(sample_rate)
        w.writeframes(pcm.tobytes())
    return dst
