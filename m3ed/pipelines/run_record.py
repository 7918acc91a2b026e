"""What a run writes about itself: ``run.json``, ``failures.jsonl`` and ``notes.jsonl`` of a whole run
(:class:`RunRecord`), or a shard's ``shards/run-I-of-N.json`` (:class:`ShardRecord`).

The job (:mod:`m3ed.pipelines.extract`) tells a record when the cut starts and ends and when each
stage is done; the record decides which stage cannot run (what it reads was produced by no
dialogue) and what ends up on file.
"""
from __future__ import annotations

import dataclasses
import json
import platform
import time

from .. import __version__
from ..config import ExtractConfig
from ..corpus import Corpus
from ..device import peak_rss_mb
from ..errors import ConfigurationError
from ..files import atomic_write_text
from ..media import ffmpeg_version
from ..screening import Screening
from ..stage import RunContext, Stage, stage_class
from ..store import Failure, FeatureStore
from .cut import CutJob
from .runner import StageReport, clip_notes, publish_attrs, recorded_failures
from .shard import Shard


class RunRecord:
    """The record of a whole run: its stages, then its failures and notes, written at the end."""

    shard: Shard | None = None   # a whole run: every group, and the files published

    def __init__(self, context: RunContext, work: Corpus, config: ExtractConfig, screening: Screening, *,
                 read_only: bool):
        self.context, self.work, self.config, self.screening, self.read_only = context, work, config, screening, read_only
        self.started = time.perf_counter()
        self.record = {"package_version": __version__, "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                       "config": config.to_dict(), "versions": versions(), "stages": {}, "complete": False}
        self.previous = context.store.read_failures()
        self.previous_notes = context.store.read_notes()
        self.failures: list[Failure] = []
        self.notes: list[Failure] = []
        self.produced: set[str] = set()
        self.cut_at = 0   # where the cut's failures go once it is done

    def cut_started(self, cut: CutJob | None) -> None:
        if cut is None:
            return
        self.produced.add("cut")
        work_ids = {d.id for d in self.work}
        self.failures += [f for f in self.previous if f.feature_set == "cut" and f.dialogue_id not in work_ids]
        self.cut_at = len(self.failures)
        self.notes += clip_notes("cut", self.screening)
        self.record["stages"]["cut"] = {}   # filled in once it is done

    def skips(self, name: str) -> bool:
        """True for a stage whose input, made by an earlier stage of this run, was produced by no
        dialogue: each dialogue fails with its own reason, none stops the run."""
        stages = self.record["stages"]
        idle = [n for n in stage_class(name).needs if n in stages and not stages[n].get("feature_files")]
        if not idle:
            return False
        self.failures += self._fail_without_input(name, idle[0])
        self.produced.update(stage_class(name).feature_sets)
        stages[name] = {"skipped": f"the {idle[0]} stage produced nothing to read"}
        return True

    def stage_done(self, stage: Stage, report: StageReport) -> None:
        store = self.context.store
        self.produced.update(stage.feature_sets)
        for fs in stage.feature_sets:
            self.failures += recorded_failures(store, fs, self.context.corpus, self.screening, self.previous)
            if stage.uses_media:
                self.notes += clip_notes(fs, self.screening)
            if not self.config.run.keep_parts and not report.dialogues_failed and not self.read_only:
                store.remove_parts(fs)
        self.record["stages"][stage.name] = stage_record(report, stage)
        if self.read_only and not report.reused:
            raise ConfigurationError(f"{store.root}: not writable, and stage {stage.name} has work to do there")

    def cut_done(self, cut: CutJob, failures: list[Failure]) -> None:
        self.failures[self.cut_at:self.cut_at] = failures
        self.record["stages"]["cut"] = cut_record(cut, failures, self.context.store)

    def finish(self) -> dict:
        store, record = self.context.store, self.record
        # Failures and notes of feature sets this run did not touch stay recorded.
        failures = [f for f in self.previous if f.feature_set not in self.produced] + self.failures
        notes = [n for n in self.previous_notes if n.feature_set not in self.produced] + self.notes
        record["failures"] = len(failures)
        record["failed_dialogues"] = sorted({f.dialogue_id for f in failures if f.utterance_id is None})
        record["refused_utterances"] = sorted(self.screening.bad_times)
        record["complete"] = True
        record["finished"] = time.strftime("%Y-%m-%dT%H:%M:%S%z")
        record["seconds"] = round(time.perf_counter() - self.started, 3)   # the stages' wall time (the cut overlaps)
        if self.read_only:
            if failures != self.previous:
                raise ConfigurationError(f"{store.root}: not writable, and this run's failures differ from failures.jsonl")
            record["read_only"] = True
            return record
        store.write_failures(failures)
        store.write_notes(notes)
        store.write_run(record)
        store.remove_scratch()   # what a stage left for a later one (e.g. the visual stage's crops) is spent
        return record

    def _fail_without_input(self, name: str, needed: str) -> list[Failure]:
        """Record each dialogue of stage ``name`` as failed because stage ``needed``, which ran before it
        in this run, published nothing; the reason repeats ``needed``'s failure of that dialogue."""
        store, feature_sets = self.context.store, stage_class(name).feature_sets
        inputs = stage_class(needed).feature_sets
        reasons = {f.dialogue_id: f.reason for f in self.failures if f.feature_set in inputs and f.utterance_id is None}
        for dialogue in self.work:
            if dialogue.id in self.screening.refused:
                continue
            why = reasons.get(dialogue.id, "it found nothing (see its failures)")
            for fs in feature_sets:
                store.write_dialogue_failure(fs, dialogue.id, f"no input: the {needed} stage failed for this "
                                                              f"dialogue: {why}")
        return [f for fs in feature_sets
                for f in recorded_failures(store, fs, self.context.corpus, self.screening, self.previous)]


class ShardRecord:
    """The record of one shard: its stages and what ``m3ed merge`` needs to publish them."""

    def __init__(self, context: RunContext, config: ExtractConfig, screening: Screening, shard: Shard):
        self.context, self.screening, self.shard = context, screening, shard
        self.record = {"package_version": __version__, "shard": shard.label,
                       "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "versions": versions(),
                       "config": config.to_dict(), "stages": {},
                       "refused": screening.refused, "clipped": {u: list(v) for u, v in screening.clipped.items()},
                       "publish": {}, "cut_failures": [], "complete": False}

    def cut_started(self, cut: CutJob | None) -> None:
        if cut is not None:
            self.record["stages"]["cut"] = {}   # filled in once it is done

    def skips(self, name: str) -> bool:
        return False   # a shard's stage reads the parts of the stages before it, whatever they hold

    def stage_done(self, stage: Stage, report: StageReport) -> None:
        self.record["publish"][stage.name] = {"attrs": publish_attrs(stage, self.context.corpus, self.screening),
                                              "uses_media": stage.uses_media, "group_size": stage.group_size}
        self.record["stages"][stage.name] = stage_record(report, stage)

    def cut_done(self, cut: CutJob, failures: list[Failure]) -> None:
        self.record["cut_failures"] = [dataclasses.asdict(f) for f in failures]
        self.record["stages"]["cut"] = cut_record(cut, failures, None)

    def finish(self) -> dict:
        record, shard = self.record, self.shard
        record["complete"] = True
        record["finished"] = time.strftime("%Y-%m-%dT%H:%M:%S%z")
        atomic_write_text(self.context.store.root / "shards" / f"run-{shard.index}-of-{shard.count}.json",
                          json.dumps(record, indent=2, ensure_ascii=False, default=str) + "\n")
        record["failed_dialogues"] = sorted({d for fs in record["stages"].values() for d in fs.get("dialogues_failed", [])}
                                            | set(self.screening.refused))
        record["refused_utterances"] = sorted(self.screening.bad_times)
        record["sharded"] = True
        return record


def cut_record(cut: CutJob, failures: list[Failure], store: FeatureStore | None) -> dict:
    entry = {"seconds": round(cut.seconds, 3), "failed": len(failures), "beside_other_stages": cut.beside,
             "peak_rss_mb": round(peak_rss_mb())}
    return {**entry, "clips": str(store.clips_dir)} if store else entry


def stage_record(report: StageReport, stage: Stage) -> dict:
    """A stage's entry in the run record; ``peak_rss_mb``: the process's peak up to the stage's end."""
    return {**vars(report), "seconds": round(report.seconds, 3), "provenance": stage.provenance(),
            "peak_rss_mb": round(peak_rss_mb())}


def versions() -> dict:
    import h5py
    import numpy
    import torch

    found = {"python": platform.python_version(), "numpy": numpy.__version__, "torch": torch.__version__,
             "h5py": h5py.__version__, "platform": platform.platform(), "decoder": ffmpeg_version()}
    try:
        import transformers

        found["transformers"] = transformers.__version__
    except ImportError:
        pass
    return found
