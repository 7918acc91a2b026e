"""One stage over a corpus: fixed dialogue groups, parts of the finished dialogues, published files.

A stage sees fixed groups of consecutive dialogues (``stage.group_size``) whatever is already done,
so that a resumed or sharded run computes the batches an uninterrupted run computes. Finished
dialogues are skipped (or, inside a group with work left, recomputed and not written again),
failed ones are retried, and each feature file is assembled from the finished parts and the
dialogues already published. An :class:`Engine` runs the groups: here (:class:`LocalEngine`) or on
Ray actors (:class:`m3ed.pipelines.ray_engine.RayEngine`), with the same :func:`process_group`.
"""
from __future__ import annotations

import json
import sys
import time
from dataclasses import dataclass, field
from typing import Iterable, Iterator, Protocol

from tqdm import tqdm

from ..corpus import Corpus, Dialogue
from ..errors import ConfigurationError
from ..files import DiskFull
from ..lock import LockError
from ..media import MediaError
from ..screening import Screening
from ..stage import DialogueResult, RunContext, Stage, failed_dialogue
from ..store import Failure, FeatureStore, config_hash, dialogue_hash
from ..usage import Usage
from .host_pool import HostPool
from .shard import Shard

# Errors that concern the whole run, not one dialogue: they stop it instead of being recorded.
FATAL = (ConfigurationError, DiskFull, LockError)

Outcome = tuple[str, str | None]   # (dialogue id, error of the whole dialogue or None)


@dataclass
class StageReport:
    name: str
    seconds: float = 0.0
    dialogues_done: int = 0
    dialogues_skipped: int = 0
    dialogues_failed: list[str] = field(default_factory=list)
    feature_files: list[str] = field(default_factory=list)
    empty_sets: list[str] = field(default_factory=list)   # nothing to publish: no file written
    reused: bool = False   # the published files of an earlier complete run were kept as they are
    usage: dict = field(default_factory=dict)   # what the stage used of the machine (m3ed.usage.Usage.record)


@dataclass(frozen=True)
class StageRun:
    """What processing any group of one stage needs besides the stage and the context; the same
    object goes to every Ray actor."""

    digest: str                 # the configuration hash of the stage's provenance
    hashes: dict[str, str]      # dialogue id -> hash of its record (a changed dialogue is new work)
    screening: Screening        # refused dialogues, unusable utterance times
    done: frozenset[str]        # dialogues finished before: recomputed only for their group's batches


class Engine(Protocol):
    def run_groups(self, stage: Stage, context: RunContext, groups: list[list[Dialogue]],
                   run: StageRun) -> Iterable[Outcome]:
        """:func:`process_group` for each group; ``(dialogue id, error)`` as they finish."""


class LocalEngine:
    """The groups one after another, in this process; with ``workers`` > 1 the stage's host work
    (:meth:`Stage.host_work`) runs ahead in that many worker processes (:class:`HostPool`)."""

    def __init__(self, workers: int = 1):
        self.workers = workers

    def run_groups(self, stage: Stage, context: RunContext, groups: list[list[Dialogue]],
                   run: StageRun) -> Iterator[Outcome]:
        work = stage.host_work(context) if self.workers > 1 and sum(map(len, groups)) > 1 else None
        if work is None:
            for group in groups:
                yield from process_group(stage, context, group, run)
            return
        with HostPool(work, context.media, self.workers) as pool:
            ahead = pool.results(d for group in groups for d in group)
            for group in groups:
                prepared = dict(next(ahead) for _ in group)
                yield from process_group(stage, context, group, run, prepared)


def run_stage(stage: Stage, context: RunContext, progress: bool = True, *, work: Corpus | None = None,
              screening: Screening | None = None, publish: bool = True, shard: Shard | None = None,
              engine: Engine | None = None) -> StageReport:
    """Run one stage over ``work`` (default: the whole corpus), resuming from finished parts and
    from dialogues already published; publish its feature files for the whole corpus. With a
    ``shard``, only that shard's groups run."""
    store, corpus = context.store, context.corpus
    work = corpus if work is None else work
    screening = screening or Screening()
    report = StageReport(stage.name)
    started = time.perf_counter()
    hashes = {d.id: dialogue_hash(d) for d in corpus}
    digest = config_hash(stage.provenance())
    published = {fs: store.published_dialogues(fs, digest) for fs in stage.feature_sets}
    dialogues = [d for d in work if d.id not in screening.refused]
    if _published_whole(stage, store, corpus, screening, hashes, published):
        # A previous run finished this stage for exactly this corpus and tidied its parts away.
        report.dialogues_skipped, report.reused = len(dialogues), True
        report.feature_files = [str(store.feature_path(fs)) for fs in stage.feature_sets]
        return report
    done = {d.id for d in dialogues if all(published[fs].get(d.id) == hashes[d.id]
                                           or store.is_done(fs, d.id, digest, hashes[d.id]) for fs in stage.feature_sets)}
    report.dialogues_skipped = len(done)
    groups = [dialogues[i:i + stage.group_size] for i in range(0, len(dialogues), stage.group_size)]
    if shard:   # whole groups, so that every batch is the one an unsharded run computes
        groups = shard.groups(groups)
        dialogues = [d for group in groups for d in group]
        done &= {d.id for d in dialogues}
    todo = [group for group in groups if not all(d.id in done for d in group)]
    run = StageRun(digest, hashes, screening, frozenset(done))
    with Usage(context.device) as usage, tqdm(total=len(dialogues), desc=f"{stage.name:>6}", unit="dlg",
                                              disable=not progress, initial=len(done)) as bar:
        outcomes = (engine or LocalEngine()).run_groups(stage, context, todo, run) if todo else ()
        for dialogue_id, error in outcomes:
            if dialogue_id in done:
                continue  # recomputed only so that the group's batches match an uninterrupted run
            if error:
                report.dialogues_failed.append(dialogue_id)
            else:
                report.dialogues_done += 1
            bar.update(1)
    report.usage = usage.record()
    if publish:
        publish_stage(store, corpus, publish_attrs(stage, corpus, screening), hashes, report)
    report.seconds = time.perf_counter() - started
    return report


def _published_whole(stage: Stage, store: FeatureStore, corpus: Corpus, screening: Screening,
                     hashes: dict[str, str], published: dict[str, dict]) -> bool:
    """Every feature file of the stage holds every dialogue of ``corpus`` as it is now, and no parts are left."""
    if any((store.parts_dir / fs).exists() for fs in stage.feature_sets) or not all(published.values()):
        return False
    return all(published[fs].get(d.id) == hashes[d.id] for fs in stage.feature_sets for d in corpus
               if d.id not in screening.refused)


def process_group(stage: Stage, context: RunContext, group: list[Dialogue], run: StageRun,
                  prepared: dict | None = None) -> list[Outcome]:
    """Process one group (here, or on a Ray actor) and write the parts of its dialogues that are not
    ``run.done``; ``(dialogue id, error)`` of each. ``prepared``: the host work done ahead for them."""
    outcome = []
    for result in _process_group(stage, group, context, prepared):
        if result.dialogue_id not in run.done:
            _save(context.store, stage, _screened(stage, result, run.screening), run.digest, run.hashes[result.dialogue_id])
        outcome.append((result.dialogue_id, result.error))
    return outcome


def _process_group(stage: Stage, group: list[Dialogue], context: RunContext,
                   prepared: dict | None = None) -> list[DialogueResult]:
    """All results of a group; if the group as a whole breaks, each dialogue is retried alone."""
    def process(dialogues: list[Dialogue]) -> list[DialogueResult]:
        return list(stage.process(dialogues, context) if prepared is None else stage.process(dialogues, context, prepared))

    try:
        return process(group)
    except FATAL:
        raise
    except Exception:
        if len(group) == 1:
            return [failed_dialogue(group[0], _describe(sys.exc_info()[1]))]
    results = []
    for dialogue in group:
        try:
            results += process([dialogue])
        except FATAL:
            raise
        except Exception as e:  # one bad dialogue must not stop the batch; the reason is recorded
            results.append(failed_dialogue(dialogue, _describe(e)))
    return results


def _describe(error: BaseException) -> str:
    """The recorded reason: a media or value error's message says it all; anything else names its kind."""
    return str(error) if isinstance(error, (MediaError, ValueError)) else f"{type(error).__name__}: {error}"


def _screened(stage: Stage, result: DialogueResult, screening: Screening) -> DialogueResult:
    """Drop the features of utterances whose times are unusable, and record why."""
    if not stage.uses_media or result.error:
        return result
    bad = {u: reason for u, (d, reason) in screening.bad_times.items() if d == result.dialogue_id}
    if not bad:
        return result
    features = {fs: {u: a for u, a in arrays.items() if u not in bad} for fs, arrays in result.features.items()}
    failures = [f for f in result.failures if f.utterance_id not in bad]
    failures += [Failure(fs, result.dialogue_id, u, reason) for fs in stage.feature_sets for u, reason in bad.items()]
    return DialogueResult(result.dialogue_id, features, failures)


def _save(store: FeatureStore, stage: Stage, result: DialogueResult, digest: str, record: str) -> None:
    for fs in stage.feature_sets:
        if result.error:
            store.write_dialogue_failure(fs, result.dialogue_id, result.error)
        elif not store.is_done(fs, result.dialogue_id, digest, record):
            failures = [f for f in result.failures if f.feature_set == fs]
            store.write_part(fs, result.dialogue_id, result.features.get(fs, {}), failures, config=digest,
                             dialogue=record)


# ---- publishing ---------------------------------------------------------------------------------
def publish_attrs(stage: Stage, corpus: Corpus, screening: Screening) -> dict[str, dict]:
    """Feature set -> the attributes its published file gets (all a later ``m3ed merge`` needs)."""
    provenance = stage.provenance()
    clipped = {u: note for u, (d, note) in screening.clipped.items()} if stage.uses_media else {}
    common = {"config_hash": config_hash(provenance), "corpus_hash": config_hash([d.id for d in corpus]),
              "stage": stage.name, **_flat(provenance), **({"clipped_utterances": clipped} if clipped else {})}
    return {fs: {**common, **stage.attrs(fs)} for fs in stage.feature_sets}


def publish_stage(store: FeatureStore, corpus: Corpus, attrs: dict[str, dict], hashes: dict[str, str],
                  report: StageReport) -> None:
    for fs, fs_attrs in attrs.items():
        path = store.publish(fs, corpus, fs_attrs, dialogue_hashes=hashes)
        if path is None:
            report.empty_sets.append(fs)
        else:
            report.feature_files.append(str(path))


def _flat(provenance: dict) -> dict:
    """HDF5 attributes take scalars and strings; nested values are stored as JSON."""
    return {k: (v if isinstance(v, (str, int, float, bool)) else json.dumps(v, sort_keys=True, default=str))
            for k, v in provenance.items() if v is not None}


def recorded_failures(store: FeatureStore, feature_set: str, corpus: Corpus, screening: Screening,
                      previous: list[Failure]) -> list[Failure]:
    """A feature set's failures: its refused dialogues, then what its parts (or, for dialogues
    carried over, ``previous``) record."""
    refusals = [Failure(feature_set, d.id, None, f"dialogue refused: {screening.refused[d.id]}")
                for d in corpus if d.id in screening.refused]
    return refusals + [f for f in store.failures(feature_set, corpus, previous) if f.dialogue_id not in screening.refused]


def clip_notes(feature_set: str, screening: Screening) -> list[Failure]:
    """The notes of the utterances clipped to their dialogue (``--overhang clip``)."""
    return [Failure(feature_set, d, u, note) for u, (d, note) in screening.clipped.items()]
