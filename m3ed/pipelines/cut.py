"""Clip cutting: episodes -> dialogue clips -> utterance clips (``.mp4``) and audio (16 kHz mono ``.wav``).

Output, under ``OUT/clips``::

    dialogues/{show}/{dialogue_id}.mp4
    utterances/{show}/{utterance_id}.mp4
    utterances/{show}/{utterance_id}.wav

Cuts are frame-accurate (re-encoded; stream copy snaps to keyframes, seen off by seconds). An output
that exists and probes with the expected duration is kept; everything is written under a temporary
name and renamed, and a clip that does not probe with the expected duration is removed and reported
under its source. A source without a video stream gets audio clips only, and a failure line says so.
ffmpeg processes run in parallel (``workers``); followed by other stages, the cut runs beside
them at the lowest CPU priority (:class:`CutJob`).
"""
from __future__ import annotations

import os
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from tqdm import tqdm

from ..corpus import Corpus, Dialogue
from ..files import DiskFull
from ..locate import MediaSource
from ..media import SAMPLE_RATE, MediaError, cut_video, decode_audio, probe, write_wav
from ..screening import Screening
from ..store import Failure

DURATION_TOLERANCE = 0.1  # seconds between a clip's probed duration and the span it should hold


def _valid(path: Path, duration: float) -> bool:
    if not path.exists():
        return False
    try:
        return abs(probe(path).duration - duration) <= DURATION_TOLERANCE + 1 / 25
    except MediaError:
        return False


def _cut_checked(src: Path, dst: Path, start: float, end: float, source: Path) -> None:
    """Cut, then make sure the clip holds the span; a short clip is removed and blamed on ``source``."""
    cut_video(src, dst, start, end)
    if not _valid(dst, end - start):
        got = probe(dst).duration if dst.exists() else 0.0
        dst.unlink(missing_ok=True)
        raise MediaError(f"{source}: yields {got:.2f} s instead of {end - start:.2f} s for {dst.name} "
                         f"(the file is truncated or unreadable there); the broken clip was removed")


def cut_dialogue(dialogue: Dialogue, media: MediaSource, clips_dir: Path,
                 screening: Screening | None = None) -> list[Failure]:
    """Cut one dialogue and its utterances; utterance-level failures are returned, not raised."""
    screening = screening or Screening()
    span = media.locate(dialogue)
    failures = []
    has_video = span.info.has_video
    if not has_video:
        failures.append(Failure("cut", dialogue.id, None, f"{span.path}: has no video stream; only audio "
                                                          f"clips (.wav) were written"))
    dialogue_clip = clips_dir / "dialogues" / dialogue.show / f"{dialogue.id}.{'mp4' if has_video else 'wav'}"
    dialogue_clip.parent.mkdir(parents=True, exist_ok=True)
    utterance_dir = clips_dir / "utterances" / dialogue.show
    utterance_dir.mkdir(parents=True, exist_ok=True)
    if has_video:
        if span.path.resolve() != dialogue_clip.resolve() and not _valid(dialogue_clip, span.duration):
            _cut_checked(span.path, dialogue_clip, span.start, span.end, span.path)
        audio_source, audio_start = dialogue_clip, 0.0
    else:
        audio_source, audio_start = span.path, span.start
    audio = None
    for utterance in dialogue.utterances:
        bad = screening.bad_times.get(utterance.id)
        if bad:
            failures.append(Failure("cut", dialogue.id, utterance.id, bad[1]))
            continue
        try:
            start, end = max(0.0, utterance.start), min(utterance.end, span.duration)
            if has_video:
                video_out = utterance_dir / f"{utterance.id}.mp4"
                if not _valid(video_out, end - start):
                    _cut_checked(dialogue_clip, video_out, start, end, span.path)
            wav_out = utterance_dir / f"{utterance.id}.wav"
            if not wav_out.exists():
                if audio is None:
                    audio = decode_audio(audio_source, audio_start, audio_start + span.duration)
                write_wav(media.utterance_audio(audio, utterance), wav_out, SAMPLE_RATE)
        except MediaError as e:
            failures.append(Failure("cut", dialogue.id, utterance.id, str(e)))
    return failures


def cut_corpus(corpus: Corpus, media: MediaSource, clips_dir: str | Path, *, workers: int = 2,
               progress: bool = True, screening: Screening | None = None) -> list[Failure]:
    """Cut every dialogue (``workers`` dialogues at a time); returns the failures in corpus order."""
    return CutJob(corpus, media, clips_dir, workers=workers, progress=progress, screening=screening).wait()


class CutJob:
    """The cut of a corpus, started at once in worker threads; :meth:`wait` gives its failures.

    ``beside=True`` runs it beside the feature stages that follow: its threads, and the ffmpeg
    processes they start, take the lowest CPU priority (Linux's ``SCHED_IDLE``), so they use
    the cycles the models leave idle (decoding, tracking, Python between model calls) instead of
    taking cycles from them (the sample's whole run: 52 -> 46 s on 2 cores). Once waited for, the
    clips still to cut go at normal priority. No feature stage reads the clips."""

    def __init__(self, corpus: Corpus, media: MediaSource, clips_dir: str | Path, *, workers: int = 2,
                 progress: bool = True, screening: Screening | None = None, beside: bool = False):
        self.started = time.perf_counter()
        self.beside = beside
        self.seconds: float | None = None   # from the start to the last dialogue's end, once waited for
        clips_dir = Path(clips_dir)

        def one(dialogue: Dialogue) -> list[Failure]:
            try:
                if screening and dialogue.id in screening.refused:
                    return [Failure("cut", dialogue.id, None, f"dialogue refused: {screening.refused[dialogue.id]}")]
                return cut_dialogue(dialogue, media, clips_dir, screening)
            except DiskFull:
                raise
            except (MediaError, OSError) as e:
                return [Failure("cut", dialogue.id, None, str(e))]

        self._threads: list[int] = []
        self._waited = False
        self._lock = threading.Lock()

        def lowest_priority() -> None:
            with self._lock:
                if not self._waited:
                    self._threads.append(threading.get_native_id())
                    _set_priority(self._threads[-1], lowest=True)

        self._pool = ThreadPoolExecutor(max_workers=max(1, workers), thread_name_prefix="m3ed-cut",
                                        initializer=lowest_priority if beside else None)
        self._futures = [self._pool.submit(one, dialogue) for dialogue in corpus]
        self._finished = self.started
        for future in self._futures:
            future.add_done_callback(self._note_finish)
        self._progress = progress   # its bar appears once waited for: after the stages' own

    def wait(self) -> list[Failure]:
        """Block until every dialogue is cut; the failures in corpus order (DiskFull is raised)."""
        with self._lock:   # nothing left to yield to: the clips still to cut go at normal priority
            self._waited = True
            for thread_id in self._threads:
                _set_priority(thread_id, lowest=False)
        try:
            done = tqdm(self._futures, desc="   cut", unit="dlg", disable=not self._progress)
            results = [future.result() for future in done]
        finally:
            self.cancel()
        self.seconds = self._finished - self.started   # its own wall time, not the wait's
        return [f for failures in results for f in failures]

    def _note_finish(self, _future) -> None:
        self._finished = max(self._finished, time.perf_counter())

    def cancel(self) -> None:
        """Cut no more dialogues; wait for the ones in progress (their clips are whole or absent)."""
        self._pool.shutdown(wait=True, cancel_futures=True)


def _set_priority(thread_id: int, lowest: bool) -> None:
    """Linux: ``SCHED_IDLE`` for a thread (inherited by the processes it starts; it yields the moment
    a model's thread wakes, where nice 19 still slowed the stages beside it), or back to normal.
    Elsewhere nothing changes."""
    if sys.platform.startswith("linux"):
        try:
            os.sched_setscheduler(thread_id, os.SCHED_IDLE if lowest else os.SCHED_OTHER, os.sched_param(0))
        except OSError:
            pass
