"""Checks a corpus at the stage boundary and reports every problem at once, each with its location."""
from __future__ import annotations

from collections import Counter

from .corpus import EMOTIONS, Corpus, Problem

ANNOTATOR_EXTRA_LABELS = ("other",)  # annotators could also answer "Other"
TIME_TOLERANCE = 0.5  # seconds an utterance may overhang its dialogue (timecodes are frame-rounded)


class CorpusError(ValueError):
    """Raised with every problem listed, one per line."""

    def __init__(self, problems: list[Problem]):
        self.problems = problems
        super().__init__(f"{len(problems)} problem(s) in the annotations:\n" + "\n".join(f"  {p}" for p in problems))


def validate(corpus: Corpus, *, require_split: bool = False, emotions: tuple[str, ...] = EMOTIONS) -> list[Problem]:
    """All problems found: times, ids, labels, speakers and (optionally) splits."""
    problems: list[Problem] = list(corpus.problems)
    dialogue_counts = Counter(d.id for d in corpus)
    utterance_counts = Counter(u.id for u in corpus.utterances())
    for dialogue_id, count in dialogue_counts.items():
        if count > 1:
            problems.append(Problem(dialogue_id, f"dialogue id appears {count} times"))
    reported = set()
    for dialogue in corpus:
        if require_split and dialogue.split is None:
            problems.append(Problem(dialogue.id, f"show {dialogue.show!r} is in no split list"))
        if dialogue.start is not None and dialogue.end is not None and dialogue.end <= dialogue.start:
            problems.append(Problem(dialogue.id, f"ends ({dialogue.end:.2f} s) before it starts ({dialogue.start:.2f} s)"))
        span = dialogue.end - dialogue.start if dialogue.start is not None and dialogue.end is not None else None
        for u in dialogue.utterances:
            where = f"{dialogue.id}/{u.id}"
            if utterance_counts[u.id] > 1 and u.id not in reported:
                reported.add(u.id)
                problems.append(Problem(where, f"utterance id appears {utterance_counts[u.id]} times"))
            if "/" in u.id:
                problems.append(Problem(where, "utterance id contains '/', which cannot be an HDF5 key"))
            if u.end <= u.start:
                problems.append(Problem(where, f"end {u.end:.2f} s is not after start {u.start:.2f} s"))
            if u.start < -TIME_TOLERANCE or (span is not None and u.end > span + TIME_TOLERANCE):
                bound = f"0–{span:.2f} s" if span is not None else "from 0 s"
                problems.append(Problem(where, f"{u.start:.2f}–{u.end:.2f} s lies outside its dialogue ({bound})"))
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
    return problems


def check(corpus: Corpus, **kwargs) -> Corpus:
    """The corpus itself when valid; otherwise :class:`CorpusError` listing every problem."""
    problems = validate(corpus, **kwargs)
    if problems:
        raise CorpusError(problems)
    return corpus
