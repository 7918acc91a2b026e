"""Checks a corpus at the stage boundary and reports every problem at once, each with its location."""
from __future__ import annotations

import math
from collections import Counter
from pathlib import Path

from .corpus import EMOTIONS, SPLITS, Corpus, Dialogue, Problem, dialogue_problems
from .locate import VIDEO_EXTENSIONS

ANNOTATOR_EXTRA_LABELS = ("other",)  # annotators could also answer "Other"
TIME_TOLERANCE = 0.5  # seconds an utterance may overhang its dialogue (timecodes are frame-rounded)


class CorpusError(ValueError):
    """Raised with every problem listed, one per line."""

    def __init__(self, problems: list[Problem]):
        self.problems = problems
        super().__init__(f"{len(problems)} problem(s) in the annotations:\n" + "\n".join(f"  {p}" for p in problems))


def validate(corpus: Corpus, *, require_split: bool = False, emotions: tuple[str, ...] = EMOTIONS,
             media=None) -> list[Problem]:
    """All problems found: times, ids, labels, speakers, (optionally) splits and, with ``media``
    (a :class:`m3ed.locate.MediaSource`), that every dialogue's video exists."""
    problems: list[Problem] = list(corpus.problems)
    # The loaders check each record (m3ed.corpus.dialogue_problems); a corpus built in code is checked here.
    loaded = {p.dialogue_id for p in corpus.problems}
    problems += [p for d in corpus if d.id not in loaded for p in dialogue_problems(d)]
    unreadable = {p.where for p in problems if p.blocking}   # no further checks of what could not be read
    dialogue_counts = Counter(d.id for d in corpus)
    utterance_counts = Counter(u.id for u in corpus.utterances())
    for dialogue_id, count in dialogue_counts.items():
        if count > 1:
            problems.append(Problem(dialogue_id, f"dialogue id appears {count} times"))
    reported = set()
    for dialogue in corpus:
        if require_split and dialogue.split is None:
            problems.append(Problem(dialogue.id, f"show {dialogue.show!r} is in no split list"))
        if dialogue.split is not None and dialogue.split not in SPLITS:
            problems.append(Problem(dialogue.id, f"split {dialogue.split!r} is not one of {list(SPLITS)}"))
        if not dialogue.utterances and dialogue.id not in unreadable:
            problems.append(Problem(dialogue.id, "the dialogue has no utterances"))
        span = None
        if _finite(dialogue.start) and _finite(dialogue.end):
            span = dialogue.end - dialogue.start
            if span <= 0:
                problems.append(Problem(dialogue.id, f"ends ({dialogue.end:.2f} s) before it starts ({dialogue.start:.2f} s)"))
        for u in dialogue.utterances:
            where = f"{dialogue.id}/{u.id}"
            if utterance_counts[u.id] > 1 and u.id not in reported:
                reported.add(u.id)
                problems.append(Problem(where, f"utterance id appears {utterance_counts[u.id]} times"))
            if where not in unreadable:
                problems += _time_problems(u, where, span)
            unknown = [e for e in u.emotions if e not in emotions]
            if u.emotion is not None and u.emotion not in emotions:
                unknown.insert(0, u.emotion)
            if unknown:
                problems.append(Problem(where, f"unknown emotion label(s) {sorted(set(unknown))}; known: {list(emotions)}"))
            unknown_votes = sorted({e for a in u.annotations for e in a if e not in emotions + ANNOTATOR_EXTRA_LABELS})
            if unknown_votes:
                problems.append(Problem(where, f"annotators used unknown label(s) {unknown_votes}"))
            if dialogue.speakers and u.speaker not in dialogue.speakers:
                problems.append(Problem(where, f"speaker {u.speaker!r} is not in SpeakerInfo {sorted(dialogue.speakers)}"))
    if media is not None:
        problems += [p for d in corpus if (p := _video_problem(d, media))]
    return problems


def _finite(value) -> bool:
    return value is not None and math.isfinite(value)


def _time_problems(u, where: str, span: float | None) -> list[Problem]:
    if not (_finite(u.start) and _finite(u.end)):
        return []   # reported by dialogue_problems
    if u.end <= u.start:
        return [Problem(where, f"end {u.end:.2f} s is not after start {u.start:.2f} s")]
    if u.start < -TIME_TOLERANCE or (span is not None and u.end > span + TIME_TOLERANCE):
        bound = f"0–{span:.2f} s" if span is not None else "from 0 s"
        return [Problem(where, f"{u.start:.2f}–{u.end:.2f} s lies outside its dialogue ({bound})")]
    return []


def _video_problem(dialogue: Dialogue, media) -> Problem | None:
    """A problem when none of the places the dialogue's video could be holds a file (nothing is decoded)."""
    tried = media.candidates(dialogue)
    if not tried or any(path.is_file() for path in tried):
        return None
    # One entry per layout, extensions folded ("videos/show01.{mp4,mkv,...}"); a file the dialogue names as it is.
    named = Path(dialogue.video) if dialogue.video else None
    stems = list(dict.fromkeys(str(p.with_suffix("")) + ".{" + ",".join(VIDEO_EXTENSIONS) + "}"
                               if p.suffix[1:] in VIDEO_EXTENSIONS and p != named else str(p) for p in tried))
    more = f" and {len(stems) - 3} other layout(s) (--video-pattern for yours)" if len(stems) > 3 else ""
    return Problem(dialogue.id, f"no video found: tried {', '.join(stems[:3])}{more}")


def check(corpus: Corpus, **kwargs) -> Corpus:
    """The corpus itself when valid; otherwise :class:`CorpusError` listing every problem."""
    problems = validate(corpus, **kwargs)
    if problems:
        raise CorpusError(problems)
    return corpus
