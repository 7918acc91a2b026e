"""What a run can process, decided before any work: refused dialogues and unusable utterance times.

A per-dialogue problem must be found here, never while publishing: a dialogue whose utterance ids
collide (within it, or with an earlier dialogue: the feature files are keyed by utterance id), or
whose rows lack required fields, is refused as a whole and recorded; the rest of the batch goes on.

Utterance times are checked against the dialogue's real span (from the relation file, or the
clip's duration): an empty span (``end <= start``) is always a failure; an utterance that runs
past its dialogue by more than :data:`OVERHANG_TOLERANCE` is a failure by default (``overhang="fail"``)
or, with ``overhang="clip"``, is cut to the part inside and recorded in ``notes.jsonl`` and in the
feature files' attributes. Overhangs within the tolerance are the timecodes' frame rounding
(and the +50 ms audio shift) and are clipped silently.
"""
from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

from .corpus import Corpus, Dialogue

OVERHANG_TOLERANCE = 0.5   # seconds; the same tolerance as `m3ed validate`
OVERHANG_POLICIES = ("fail", "clip")


@dataclass
class Screening:
    refused: dict[str, str] = field(default_factory=dict)                # dialogue id -> reason
    bad_times: dict[str, tuple[str, str]] = field(default_factory=dict)  # utterance id -> (dialogue id, reason)
    clipped: dict[str, tuple[str, str]] = field(default_factory=dict)    # utterance id -> (dialogue id, note)


def refused_dialogues(corpus: Corpus) -> dict[str, str]:
    """Dialogues that cannot be processed at all, with the reason (naming the rows involved)."""
    refused: dict[str, str] = {}
    for problem in corpus.problems:
        if problem.blocking and problem.dialogue_id is not None:
            refused.setdefault(problem.dialogue_id, str(problem))
    first_owner: dict[str, tuple[str, int]] = {}
    for dialogue in corpus:
        positions = Counter(u.id for u in dialogue.utterances)
        for utterance_id, count in positions.items():
            if count > 1:
                rows = [i + 1 for i, u in enumerate(dialogue.utterances) if u.id == utterance_id]
                times = ", ".join(f"#{i}: {dialogue.utterances[i - 1].start:.2f}–{dialogue.utterances[i - 1].end:.2f} s"
                                  for i in rows)
                refused.setdefault(dialogue.id, f"utterance id {utterance_id!r} appears {count} times in dialogue "
                                                f"{dialogue.id} (utterances {times}); make the ids unique")
        for number, utterance in enumerate(dialogue.utterances, 1):
            owner = first_owner.setdefault(utterance.id, (dialogue.id, number))
            if owner[0] != dialogue.id and dialogue.id not in refused:
                refused[dialogue.id] = (f"utterance id {utterance.id!r} (#{number} of dialogue {dialogue.id}) is "
                                        f"already used by utterance #{owner[1]} of dialogue {owner[0]}; "
                                        f"utterance ids must be unique in the corpus")
    return refused


def screen_times(dialogue: Dialogue, duration: float, overhang: str = "fail",
                 tolerance: float = OVERHANG_TOLERANCE) -> tuple[dict[str, str], dict[str, str]]:
    """``(failures, clipped)``: utterance id -> reason, for the utterances of ``dialogue`` whose
    times do not fit its ``duration`` seconds."""
    if overhang not in OVERHANG_POLICIES:
        raise ValueError(f"overhang={overhang!r}: choose one of {OVERHANG_POLICIES}")
    failures: dict[str, str] = {}
    clipped: dict[str, str] = {}
    for u in dialogue.utterances:
        span = f"{u.start:.2f}–{u.end:.2f} s"
        if u.end <= u.start:
            failures[u.id] = f"empty time span {span} (end is not after start); fix the annotation"
        elif u.start >= duration:
            failures[u.id] = f"{span} starts after its dialogue ends ({duration:.2f} s); fix the annotation"
        elif u.end > duration + tolerance or u.start < -tolerance:
            inside = f"{max(u.start, 0.0):.2f}–{min(u.end, duration):.2f} s"
            if overhang == "clip":
                clipped[u.id] = f"clipped to {inside}: {span} lies partly outside its dialogue (0–{duration:.2f} s)"
            else:
                failures[u.id] = (f"{span} lies partly outside its dialogue (0–{duration:.2f} s); fix the "
                                  f"annotation, or pass --overhang clip to keep the part inside ({inside})")
    return failures, clipped
