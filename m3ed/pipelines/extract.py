"""The main job: run the stages over a corpus and write the output directory.

Stages run one after another (one large model resident at a time). Each stage sees fixed groups of
consecutive dialogues; finished dialogues are skipped on a re-run, failed ones are retried, and the
feature files are assembled from the finished parts when the stage ends.
"""
from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from dataclasses import dataclass, field

from tqdm import tqdm

from .. import __version__
from ..corpus import Corpus
from ..locate import MediaSource, Timing
from ..store import Failure, FeatureStore, config_hash
from .cut import cut_corpus
from .stage import DialogueResult, RunContext, Stage, failed_dialogue, stage_class


@dataclass
class StageReport:
    name: str
    seconds: float = 0.0
    dialogues_done: int = 0
    dialogues_skipped: int = 0
    dialogues_failed: list[str] = field(default_factory=list)
    feature_files: list[str] = field(default_factory=list)
    reused: bool = False   # the published files of an earlier complete run were kept as they are


def run_stage(stage: Stage, context: RunContext, progress: bool = True) -> StageReport:
    """Run one stage over the corpus, resuming from finished parts; publish its feature files."""
    store, corpus = context.store, context.corpus
    provenance = stage.provenance()
    digest = config_hash(provenance)
    report = StageReport(stage.name)
    started = time.perf_counter()
    dialogues = list(corpus)
    done = {d.id for d in dialogues if all(store.is_done(fs, d.id, digest) for fs in stage.feature_sets)}
    corpus_digest = config_hash([d.id for d in dialogues])
    published = all(store.is_published(fs, digest, corpus_digest) for fs in stage.feature_sets)
    parts_left = (store.parts_dir / stage.feature_sets[0]).exists() if stage.feature_sets else False
    if published and not parts_left:
        # A previous run finished this stage completely and tidied its parts away.
        report.dialogues_skipped = len(dialogues)
        report.reused = True
        report.feature_files = [str(store.feature_path(fs)) for fs in stage.feature_sets]
        return report
    report.dialogues_skipped = len(done)
    groups = [dialogues[i:i + stage.group_size] for i in range(0, len(dialogues), stage.group_size)]
    bar = tqdm(total=len(dialogues), desc=f"{stage.name:>6}", unit="dlg", disable=not progress, initial=len(done))
    for group in groups:
        if all(d.id in done for d in group):
            continue
        for result in _process_group(stage, group, context):
            if result.dialogue_id in done:
                continue  # recomputed only so that the group's batches match an uninterrupted run
            _save(store, stage, result, digest)
            if result.error:
                report.dialogues_failed.append(result.dialogue_id)
            else:
                report.dialogues_done += 1
            bar.update(1)
    bar.close()
    for fs in stage.feature_sets:
        attrs = {"config_hash": digest, "corpus_hash": corpus_digest, "stage": stage.name, **_flat(provenance), **stage.attrs(fs)}
        report.feature_files.append(str(store.publish(fs, corpus, attrs)))
    report.seconds = time.perf_counter() - started
    return report


def _process_group(stage: Stage, group, context: RunContext) -> list[DialogueResult]:
    """All results of a group; if the group as a whole breaks, each dialogue is retried alone."""
    try:
        return list(stage.process(group, context))
    except Exception:
        if len(group) == 1:
            return [failed_dialogue(group[0], sys.exc_info()[1])]
    results = []
    for dialogue in group:
        try:
            results += list(stage.process([dialogue], context))
        except Exception as e:  # one bad dialogue must not stop the batch; the reason is recorded
            results.append(failed_dialogue(dialogue, f"{type(e).__name__}: {e}"))
    return results


def _save(store: FeatureStore, stage: Stage, result: DialogueResult, digest: str) -> None:
    for fs in stage.feature_sets:
        if result.error:
            store.write_dialogue_failure(fs, result.dialogue_id, result.error)
        elif not store.is_done(fs, result.dialogue_id, digest):
            failures = [f for f in result.failures if f.feature_set == fs]
            store.write_part(fs, result.dialogue_id, result.features.get(fs, {}), failures, config=digest)


def _flat(provenance: dict) -> dict:
    """HDF5 attributes take scalars and strings; nested values are stored as JSON."""
    return {k: (v if isinstance(v, (str, int, float, bool)) else json.dumps(v, sort_keys=True, default=str))
            for k, v in provenance.items() if v is not None}


def run_extraction(corpus: Corpus, context: RunContext, stages: list[str], args: argparse.Namespace,
                   *, cut_workers: int = 2, keep_parts: bool = False, progress: bool = True) -> dict:
    """Run ``stages`` in order; returns the run record also written to ``run.json``."""
    store = context.store
    store.write_manifest(corpus)
    record = {
        "package_version": __version__, "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "config": {k: v for k, v in vars(args).items() if k != "func"}, "versions": _versions(),
        "stages": {}, "complete": False,
    }
    previous = store.read_failures()
    failures: list[Failure] = []
    produced: set[str] = set()
    for name in stages:
        if name == "cut":
            produced.add("cut")
            started = time.perf_counter()
            cut_failures = cut_corpus(corpus, context.media, store.root / "clips", workers=cut_workers, progress=progress)
            failures += cut_failures
            record["stages"]["cut"] = {"seconds": round(time.perf_counter() - started, 3),
                                       "failed": len(cut_failures), "clips": str(store.root / "clips")}
            continue
        stage = stage_class(name).from_args(args, context)
        try:
            report = run_stage(stage, context, progress)
        finally:
            stage.close()
        produced.update(stage.feature_sets)
        for fs in stage.feature_sets:
            # A reused stage has no parts left: its failures are those the earlier run recorded.
            failures += [f for f in previous if f.feature_set == fs] if report.reused else store.failures(fs, corpus)
            if not keep_parts and not report.dialogues_failed:
                store.remove_parts(fs)
        record["stages"][name] = {**vars(report), "seconds": round(report.seconds, 3), "provenance": stage.provenance()}
    # Failures of feature sets this run did not touch stay recorded.
    failures = [f for f in previous if f.feature_set not in produced] + failures
    store.write_failures(failures)
    record["failures"] = len(failures)
    record["failed_dialogues"] = sorted({f.dialogue_id for f in failures if f.utterance_id is None})
    record["complete"] = True
    record["finished"] = time.strftime("%Y-%m-%dT%H:%M:%S%z")
    store.write_run(record)
    return record


def _versions() -> dict:
    import h5py
    import numpy
    import torch

    versions = {"python": platform.python_version(), "numpy": numpy.__version__, "torch": torch.__version__,
                "h5py": h5py.__version__, "platform": platform.platform()}
    try:
        import transformers

        versions["transformers"] = transformers.__version__
    except ImportError:
        pass
    return versions


def media_of_run(out_dir, videos=None, pattern: str | None = None) -> MediaSource:
    """The media source a finished run used (videos folder, pattern, time conventions), from its
    ``run.json``; ``videos``/``pattern`` override it."""
    store = FeatureStore(out_dir)
    config = json.loads(store.run_path.read_text(encoding="utf-8")).get("config", {}) if store.run_path.exists() else {}
    timing = Timing(fps=config.get("fps", Timing.fps),
                    dialogue_offset_frames=config.get("dialogue_offset_frames", Timing.dialogue_offset_frames),
                    audio_shift=config.get("audio_shift", Timing.audio_shift))
    return MediaSource(videos or config.get("videos"), pattern or config.get("video_pattern"), timing)
