"""Shards of one run for cluster arrays (Slurm, Kubernetes Indexed Jobs): which dialogues are whose.

The split is deterministic and balanced by duration: items in order of decreasing duration (then
position) each go to the shard with the least total so far. Stages split their fixed dialogue
groups this way (so every batch is the one an unsharded run computes, and the merged files are
byte-identical to it); the cut stage splits dialogues. Every shard computes the same split from the
same corpus, so shards need no coordination; ``m3ed merge`` recomputes it to say which shard a
missing dialogue belongs to.
"""
from __future__ import annotations

import os
from dataclasses import dataclass

from ..corpus import Corpus
from ..errors import ConfigurationError


@dataclass(frozen=True)
class Shard:
    index: int   # 0-based
    count: int

    @property
    def label(self) -> str:
        return f"{self.index}/{self.count}"

    @staticmethod
    def balance(durations: list[float], count: int) -> list[int]:
        """Shard index of each item: longest first, each to the shard with the least total so far."""
        totals = [0.0] * count
        owner = [0] * len(durations)
        for position in sorted(range(len(durations)), key=lambda k: (-durations[k], k)):
            owner[position] = min(range(count), key=lambda i: (totals[i], i))
            totals[owner[position]] += durations[position]
        return owner

    @staticmethod
    def assignment(corpus: Corpus, count: int) -> dict[str, int]:
        """Dialogue id -> shard index."""
        dialogues = list(corpus)
        return {d.id: i for d, i in zip(dialogues, Shard.balance([d.duration for d in dialogues], count))}

    def select(self, corpus: Corpus) -> Corpus:
        owner = self.assignment(corpus, self.count)
        return corpus.select(d.id for d in corpus if owner[d.id] == self.index)

    def groups(self, groups: list[list]) -> list[list]:
        """This shard's share of a stage's dialogue groups."""
        owner = self.balance([sum(d.duration for d in g) for g in groups], self.count)
        return [g for g, i in zip(groups, owner) if i == self.index]

    @staticmethod
    def group_owners(dialogues: list, group_size: int, count: int) -> dict[str, int]:
        """Dialogue id -> shard index, for a stage that groups ``group_size`` dialogues."""
        groups = [dialogues[i:i + group_size] for i in range(0, len(dialogues), group_size)]
        owner = Shard.balance([sum(d.duration for d in g) for g in groups], count)
        return {d.id: i for g, i in zip(groups, owner) for d in g}


def shard_from(option: str | None, shards: int | None, environ=os.environ) -> Shard | None:
    """``--shard I/N``; else Slurm's array variables; else Kubernetes' ``JOB_COMPLETION_INDEX`` with ``--shards N``."""
    if shards is not None and shards < 1:   # 0 must not quietly mean "no sharding"
        raise ConfigurationError(f"--shards {shards}: the number of shards must be at least 1")
    if option is not None:
        index, _, count = option.partition("/")
        if not (index.isdigit() and count.isdigit()):
            raise ConfigurationError(f"--shard {option!r}: expected I/N, e.g. 0/8 (I counts from 0)")
        return _checked(int(index), int(count), f"--shard {option}")
    if environ.get("SLURM_ARRAY_TASK_ID") and environ.get("SLURM_ARRAY_TASK_COUNT"):
        first = int(environ.get("SLURM_ARRAY_TASK_MIN", "0"))
        return _checked(int(environ["SLURM_ARRAY_TASK_ID"]) - first, int(environ["SLURM_ARRAY_TASK_COUNT"]),
                        "SLURM_ARRAY_TASK_ID/SLURM_ARRAY_TASK_COUNT")
    if shards:
        if "JOB_COMPLETION_INDEX" not in environ:
            raise ConfigurationError("--shards N needs --shard I/N, Slurm's array variables, or JOB_COMPLETION_INDEX "
                                     "(set by a Kubernetes Indexed Job)")
        index = environ["JOB_COMPLETION_INDEX"]
        if not index.strip().isdigit():
            raise ConfigurationError(f"JOB_COMPLETION_INDEX={index!r}: expected the job's index, a whole number")
        return _checked(int(index), shards, "JOB_COMPLETION_INDEX with --shards")
    return None


def _checked(index: int, count: int, where: str) -> Shard:
    if count < 1 or not 0 <= index < count:
        raise ConfigurationError(f"{where}: shard {index} of {count} does not exist (0 <= I < N)")
    return Shard(index, count)
