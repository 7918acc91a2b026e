"""The data model that every stage passes along: Corpus -> Dialogue -> Utterance.

Objects are immutable; stages read them and never change them. Ids are the only join key.
A corpus saves to and loads from JSONL (one dialogue per line), which is also the format of
an output directory's ``manifest.jsonl``.
"""
from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Iterable, Iterator

# The seven emotions of M3ED in the release's label order (Happy 0, Neutral 1, ..., Surprise 6).
EMOTIONS: tuple[str, ...] = ("happy", "neutral", "sad", "disgust", "anger", "fear", "surprise")
SPLITS: tuple[str, ...] = ("train", "val", "test")


def utterance_id(dialogue_id: str, number: int) -> str:
    """The release's utterance id: ``{dialogue_id}_{n}`` with n counting from 1."""
    return f"{dialogue_id}_{number}"


def utterance_number(utt_id: str, dialogue_id: str) -> int | None:
    """Inverse of :func:`utterance_id`; None when the id does not follow the pattern."""
    prefix = dialogue_id + "_"
    if utt_id.startswith(prefix) and utt_id[len(prefix):].isdigit():
        return int(utt_id[len(prefix):])
    return None


@dataclass(frozen=True)
class Problem:
    """Something wrong in the annotations, with its place. A ``blocking`` problem means that the
    dialogue cannot be processed at all (e.g. a row with missing fields)."""

    where: str     # "dialogue_id" or "dialogue_id/utterance_id"
    message: str
    dialogue_id: str | None = None
    blocking: bool = False

    def __str__(self) -> str:
        return f"{self.where}: {self.message}"


def dialogue_problems(dialogue: "Dialogue", located=lambda utterance: "") -> list[Problem]:
    """What no stage can process in a dialogue's records, each a blocking problem: an utterance id
    that cannot be a feature-file key, a time that is not a finite number, an empty speaker.
    ``located(utterance)`` prefixes each message with where the record is (``"file:line: "``)."""
    problems = []
    for name, value in (("start", dialogue.start), ("end", dialogue.end)):
        if value is not None and not _finite(value):
            problems.append(Problem(dialogue.id, f"dialogue {name} {value!r} is not a finite number of seconds",
                                    dialogue_id=dialogue.id, blocking=True))
    for u in dialogue.utterances:
        messages = []
        if not u.id.strip() or "/" in u.id or u.id == ".":
            messages.append(f"utterance id {u.id!r} cannot be a feature-file key (HDF5: no '/', not empty)")
        messages += [f"{name} {value!r} is not a finite number of seconds"
                     for name, value in (("start", u.start), ("end", u.end)) if not _finite(value)]
        if not str(u.speaker).strip():
            messages.append("the speaker is empty; every utterance needs one (its key or name)")
        problems += [Problem(f"{dialogue.id}/{u.id}", located(u) + m, dialogue_id=dialogue.id, blocking=True)
                     for m in messages]
    return problems


def _finite(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


@dataclass(frozen=True)
class Speaker:
    key: str                 # "A", "B", ... within a dialogue
    name: str = ""
    gender: str = ""
    age: str = ""
    other_name: str = ""


@dataclass(frozen=True)
class Utterance:
    id: str
    dialogue_id: str
    speaker: str             # key into Dialogue.speakers
    start: float             # seconds from the dialogue's start
    end: float
    text: str = ""
    emotion: str | None = None                     # main emotion, lower-case
    emotions: tuple[str, ...] = ()                 # all final emotions, main first
    annotations: tuple[tuple[str, ...], ...] = ()  # each annotator's labels, in their order

    @property
    def duration(self) -> float:
        return self.end - self.start

    @property
    def label(self) -> int:
        """Class index in :data:`EMOTIONS`, or -100 when the utterance has no known emotion."""
        return EMOTIONS.index(self.emotion) if self.emotion in EMOTIONS else -100


@dataclass(frozen=True)
class Dialogue:
    id: str
    show: str
    utterances: tuple[Utterance, ...]
    speakers: dict[str, Speaker] = field(default_factory=dict)
    split: str | None = None
    episode: int | None = None
    start: float | None = None   # seconds in the episode (None: a pre-cut clip)
    end: float | None = None
    video: str | None = None     # explicit video file (pre-cut clip or episode), if known

    @property
    def duration(self) -> float:
        if self.start is not None and self.end is not None:
            return self.end - self.start
        return max((u.end for u in self.utterances), default=0.0)

    def speaker_name(self, key: str) -> str:
        """Show-wide identity of a speaker key (the name when known, else the key)."""
        speaker = self.speakers.get(key)
        return speaker.name if speaker and speaker.name else key


@dataclass(frozen=True)
class Corpus:
    dialogues: tuple[Dialogue, ...]
    problems: tuple[Problem, ...] = ()   # found while loading (not saved with the corpus)

    def __iter__(self) -> Iterator[Dialogue]:
        return iter(self.dialogues)

    def __len__(self) -> int:
        return len(self.dialogues)

    def __getitem__(self, dialogue_id: str) -> Dialogue:
        for dialogue in self.dialogues:
            if dialogue.id == dialogue_id:
                return dialogue
        raise KeyError(f"no dialogue {dialogue_id!r} in the corpus")

    def utterances(self) -> Iterator[Utterance]:
        for dialogue in self.dialogues:
            yield from dialogue.utterances

    def split(self, name: str) -> "Corpus":
        return self._keep({d.id for d in self.dialogues if d.split == name})

    def select(self, dialogue_ids: Iterable[str]) -> "Corpus":
        return self._keep(set(dialogue_ids))

    def _keep(self, wanted: set[str]) -> "Corpus":
        return Corpus(tuple(d for d in self.dialogues if d.id in wanted),
                      tuple(p for p in self.problems if p.dialogue_id in wanted))

    def jsonl_text(self) -> str:
        return "".join(json.dumps(dialogue_to_dict(d), ensure_ascii=False) + "\n" for d in self.dialogues)

    def to_jsonl(self, path: str | Path) -> None:
        """Write one dialogue per line (atomically: temporary name, then rename)."""
        from .files import atomic_write_text

        atomic_write_text(path, self.jsonl_text())

    @classmethod
    def from_jsonl(cls, path: str | Path) -> "Corpus":
        """Read what :meth:`to_jsonl` wrote; records that no stage can process become blocking problems."""
        dialogues, problems = [], []
        with open(path, encoding="utf-8") as f:
            for line_number, line in enumerate(f, 1):
                if line.strip():
                    try:
                        dialogue = dialogue_from_dict(json.loads(line))
                    except (AttributeError, KeyError, TypeError, ValueError) as e:
                        raise ValueError(f"{path}:{line_number}: not a dialogue record ({type(e).__name__}: {e})") from e
                    dialogues.append(dialogue)
                    problems += dialogue_problems(dialogue, lambda u, n=line_number: f"{Path(path).name}:{n}: ")
        return cls(tuple(dialogues), tuple(problems))


def dialogue_to_dict(dialogue: Dialogue) -> dict:
    record = asdict(dialogue)
    record["speakers"] = list(record["speakers"].values())
    return record


def dialogue_from_dict(record: dict) -> Dialogue:
    utterances = tuple(
        Utterance(
            **{**u, "start": float(u["start"]), "end": float(u["end"]), "emotions": tuple(u.get("emotions", ())),
               "annotations": tuple(tuple(a) for a in u.get("annotations", ()))}
        )
        for u in record["utterances"]
    )
    speakers = {s["key"]: Speaker(**s) for s in record.get("speakers", [])}
    times = {k: None if record.get(k) is None else float(record[k]) for k in ("start", "end")}
    return Dialogue(**{**record, **times, "utterances": utterances, "speakers": speakers})
