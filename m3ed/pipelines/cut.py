"""Clip cutting: episodes -> dialogue clips -> utterance clips (``.mp4``) and audio (16 kHz mono ``.wav``).

Output, under ``OUT/clips``::

    dialogues/{show}/{dialogue_id}.mp4
    utterances/{show}/{utterance_id}.mp4
    utterances/{show}/{utterance_id}.wav

Cuts are frame-accurate (re-encoded; stream copy snaps to keyframes, seen off by seconds). An output
that exists and probes with the expected duration is kept; everything is written under a temporary
name and renamed. ffmpeg processes run in parallel (``workers``).
"""
from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from tqdm import tqdm

from ..corpus import Corpus, Dialogue
from ..locate import MediaSource
from ..media import SAMPLE_RATE, MediaError, cut_video, decode_audio, probe, write_wav
from ..store import Failure

DURATION_TOLERANCE = 0.1  # seconds between a clip's probed duration and the span it should hold


def _valid(path: Path, duration: float) -> bool:
    if not path.exists():
        return False
    try:
        return abs(probe(path).duration - duration) <= DURATION_TOLERANCE + 1 / 25
    except MediaError:
        return False


def cut_dialogue(dialogue: Dialogue, media: MediaSource, clips_dir: Path) -> list[Failure]:
    """Cut one dialogue and its utterances; utterance-level failures are returned, not raised."""
    span = media.locate(dialogue)
    dialogue_clip = clips_dir / "dialogues" / dialogue.show / f"{dialogue.id}.mp4"
    dialogue_clip.parent.mkdir(parents=True, exist_ok=True)
    if span.path.resolve() != dialogue_clip.resolve() and not _valid(dialogue_clip, span.duration):
        cut_video(span.path, dialogue_clip, span.start, span.end)
    utterance_dir = clips_dir / "utterances" / dialogue.show
    utterance_dir.mkdir(parents=True, exist_ok=True)
    audio = None
    failures = []
    for utterance in dialogue.utterances:
        try:
            start, end = max(0.0, utterance.start), min(utterance.end, span.duration)
            video_out = utterance_dir / f"{utterance.id}.mp4"
            if not _valid(video_out, end - start):
                cut_video(dialogue_clip, video_out, start, end)
            wav_out = utterance_dir / f"{utterance.id}.wav"
            if not wav_out.exists():
                if audio is None:
                    audio = decode_audio(dialogue_clip, 0.0, span.duration)
                write_wav(media.utterance_audio(audio, utterance), wav_out, SAMPLE_RATE)
        except MediaError as e:
            failures.append(Failure("cut", dialogue.id, utterance.id, str(e)))
    return failures


def cut_corpus(corpus: Corpus, media: MediaSource, clips_dir: str | Path, *, workers: int = 2,
               progress: bool = True) -> list[Failure]:
    """Cut every dialogue (``workers`` dialogues at a time); returns the failures in corpus order."""
    clips_dir = Path(clips_dir)

    def one(dialogue: Dialogue) -> list[Failure]:
        try:
            return cut_dialogue(dialogue, media, clips_dir)
        except (MediaError, OSError) as e:
            return [Failure("cut", dialogue.id, None, str(e))]

    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        results = list(tqdm(pool.map(one, corpus), total=len(corpus), desc="   cut", unit="dlg", disable=not progress))
    return [f for failures in results for f in failures]
