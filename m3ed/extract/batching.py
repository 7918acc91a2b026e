"""Length-sorted batching under a budget, shared by the text and audio stages.

Items (tokens of a sentence, samples of an utterance) are sorted by length, longest first (a batch
that does not fit in memory fails at once, not after an hour), and cut into batches whose padded
size ``len(batch) * longest`` stays within ``max_padded`` and whose count stays within ``max_items``.
Batches hold indices into the caller's list, so results go back to the original order.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Callable, Sequence, TypeVar

import torch

T = TypeVar("T")
log = logging.getLogger(__name__)


@dataclass(frozen=True)
class BatchBudget:
    max_items: int = 64
    max_padded: int = 8192          # tokens (text) or samples (audio) in one padded batch
    equal_length_only: bool = False  # for models whose output depends on padding: never mix lengths

    def __post_init__(self) -> None:
        if self.max_items < 1 or self.max_padded < 1:
            raise ValueError(f"batch budget must be positive, got {self}")


def plan_batches(lengths: Sequence[int], budget: BatchBudget) -> list[list[int]]:
    """Indices of ``lengths`` grouped into batches; every index appears exactly once.

    An item longer than ``max_padded`` gets a batch of its own (the caller chunks or truncates it).
    """
    order = sorted(range(len(lengths)), key=lambda i: (-lengths[i], i))
    batches: list[list[int]] = []
    current: list[int] = []
    longest = 0
    for i in order:
        fits = (current and len(current) < budget.max_items and (len(current) + 1) * longest <= budget.max_padded
                and (not budget.equal_length_only or lengths[i] == longest))
        if current and not fits:
            batches.append(current)
            current = []
        if not current:
            longest = lengths[i]
        current.append(i)
    if current:
        batches.append(current)
    return batches


def restore_order(batches: list[list[int]], results: list[list[T]]) -> list[T]:
    """Per-batch results back into the order of the original items."""
    out: list = [None] * sum(len(b) for b in batches)
    for batch, batch_results in zip(batches, results):
        for i, result in zip(batch, batch_results):
            out[i] = result
    return out


def split_on_oom(run: Callable[[list], list[T]], items: list) -> list[T]:
    """``run(items)``; when the accelerator runs out of memory, each half again, down to one item.

    A batch that does not fit is thus retried smaller before a dialogue fails; an item that does not
    fit alone raises the error (and its dialogue is recorded as failed).
    """
    try:
        return run(items)
    except torch.OutOfMemoryError:
        if len(items) <= 1:
            raise
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
        half = len(items) // 2
        log.warning("out of accelerator memory on a batch of %d; retrying as %d + %d", len(items), half,
                    len(items) - half)
        return split_on_oom(run, items[:half]) + split_on_oom(run, items[half:])
