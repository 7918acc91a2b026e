"""Host work in worker processes (``--workers N``): decoding, shots, detection, crops, MFCC.

A stage's large models stay in the main process, one replica per device; what a stage can do
without them (:meth:`m3ed.stage.Stage.host_work`: for the asd stage everything before scoring) runs
for the next dialogues in a pool of worker processes while the main process runs the models on the
current one. The pool hands results back in dialogue order, at most ``lookahead`` dialogues ahead
(memory: each holds a dialogue's crops). A dialogue's host work depends on that dialogue alone and
each worker runs it on one torch thread, so the output is the same bytes for any N (tested).

Workers are started with ``spawn`` (a fork would copy the parent's threads and CUDA state) and
import torch once; a stage run with a single dialogue to do does its work in place.
"""
from __future__ import annotations

import multiprocessing
import os
from collections import deque
from concurrent.futures import Future, ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from typing import Any, Callable, Iterable, Iterator

from ..corpus import Dialogue
from ..locate import MediaSource

_work: Callable[[Dialogue, MediaSource], Any] | None = None   # a worker process's copy of the stage's host work


def usable_cores() -> int:
    """The cores this process may run on (its CPU affinity, e.g. a container's cpuset)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:   # not Linux
        return os.cpu_count() or 1


def default_workers(device: str) -> int:
    """``--workers`` when not given: on a GPU machine every core but the main process's (the host
    work is what limits it); on CPU one, the work done in place (the networks need the cores as
    torch threads, and MTCNN already spreads over them)."""
    return max(1, usable_cores() - 1) if device.startswith("cuda") else 1


class WorkerDied(RuntimeError):
    """A worker process ended without a result (killed, out of memory); the run stops and resumes when re-run."""


class HostPool:
    """``work(dialogue, media)`` for a sequence of dialogues in ``workers`` processes, results in order."""

    def __init__(self, work: Callable[[Dialogue, MediaSource], Any], media: MediaSource, workers: int,
                 lookahead: int | None = None):
        self.media = media
        self.lookahead = lookahead or 2 * workers
        self._pool = ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn"),
                                         initializer=_start_worker, initargs=(work,))

    def results(self, dialogues: Iterable[Dialogue]) -> Iterator[tuple[str, Any]]:
        """``(dialogue id, result)`` in the order given; a dialogue's error is its result (an exception)."""
        queue: deque[tuple[str, Future]] = deque()
        upcoming = iter(dialogues)

        def submit() -> None:
            dialogue = next(upcoming, None)
            if dialogue is not None:
                queue.append((dialogue.id, self._pool.submit(_run, dialogue, self.media)))

        for _ in range(self.lookahead):
            submit()
        while queue:
            dialogue_id, future = queue.popleft()
            submit()
            try:
                result = future.result()
            except BrokenProcessPool as e:
                raise WorkerDied(f"dialogue {dialogue_id}: a worker process of --workers died ({e}); "
                                 f"re-run the same command to resume") from e
            except Exception as e:  # this dialogue's own error, reported by the stage
                result = e
            yield dialogue_id, result

    def close(self, abandon: bool = False) -> None:
        """Stop the workers; ``abandon``: at once, without their results (the run is stopping)."""
        if abandon:   # a SIGTERM or an error: the work in hand is not waited for (a re-run redoes it)
            for process in list(getattr(self._pool, "_processes", {}).values()):
                process.terminate()
        self._pool.shutdown(wait=True, cancel_futures=True)

    def __enter__(self) -> "HostPool":
        return self

    def __exit__(self, kind, error, traceback) -> None:
        self.close(abandon=kind is not None)


def _start_worker(work: Callable[[Dialogue, MediaSource], Any]) -> None:
    import cv2
    import torch

    global _work
    _work = work
    torch.set_num_threads(1)   # one core a worker; the pool is the parallelism
    cv2.setNumThreads(1)


def _run(dialogue: Dialogue, media: MediaSource) -> Any:
    import torch

    with torch.inference_mode():
        return _work(dialogue, media)
