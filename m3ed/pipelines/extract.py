"""The main job: run the stages over a corpus and write the output directory.

Stages run one after another (one large model resident at a time); the cut, which loads no model,
runs beside the stages after it at the lowest CPU priority (:class:`m3ed.pipelines.cut.CutJob`)
and is waited for before the run is recorded. Each stage sees fixed groups of
consecutive dialogues; finished dialogues are skipped on a re-run, failed ones are retried, and the
feature files are assembled from the finished parts (and the dialogues already published) when the
stage ends. Before any work the run takes the output directory's lock, removes what killed writers
left behind, and screens the corpus (:mod:`m3ed.screening`): refused dialogues and unusable
utterance times are recorded, never processed.
"""
from __future__ import annotations

import dataclasses
import errno
import json
import platform
import sys
import time
from contextlib import nullcontext
from dataclasses import dataclass, field

import torch
from tqdm import tqdm

from .. import __version__
from ..config import ExtractConfig, check_device, load_corpus, media_source
from ..corpus import Corpus
from ..device import default_device, peak_rss_mb, release_memory, torch_threads
from ..errors import ConfigurationError
from ..files import DiskFull, atomic_write_text, is_disk_full, sweep_temporaries
from ..locate import MediaSource
from ..lock import LockError, OutputLock
from ..media import MediaError
from ..screening import Screening, refused_dialogues, screen_times
from ..store import Failure, FeatureStore, config_hash, dialogue_hash
from .cut import CutJob
from .shard import Shard, shard_from
from ..profiles import get_profile
from ..stage import DialogueResult, RunContext, Stage, build_stage, failed_dialogue, stage_class, stage_names

# Errors that concern the whole run, not one dialogue: they stop it instead of being recorded.
FATAL = (ConfigurationError, DiskFull, LockError)


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


def run_stage(stage: Stage, context: RunContext, progress: bool = True, *, work: Corpus | None = None,
              screening: Screening | None = None, publish: bool = True, shard: Shard | None = None,
              ray_config: ExtractConfig | None = None) -> StageReport:
    """Run one stage over ``work`` (default: the whole corpus), resuming from finished parts and
    from dialogues already published; publish its feature files for the whole corpus. With
    ``ray_config``, its groups run on Ray actors that build the stage from that configuration."""
    store, corpus = context.store, context.corpus
    work = corpus if work is None else work
    screening = screening or Screening()
    provenance = stage.provenance()
    digest = config_hash(provenance)
    report = StageReport(stage.name)
    started = time.perf_counter()
    hashes = {d.id: dialogue_hash(d) for d in corpus}
    published = {fs: store.published_dialogues(fs, digest) for fs in stage.feature_sets}

    def current(dialogue_id: str) -> bool:
        return all(published[fs].get(dialogue_id) == hashes[dialogue_id]
                   or store.is_done(fs, dialogue_id, digest, hashes[dialogue_id]) for fs in stage.feature_sets)

    dialogues = [d for d in work if d.id not in screening.refused]
    done = {d.id for d in dialogues if current(d.id)}
    parts_left = any((store.parts_dir / fs).exists() for fs in stage.feature_sets)
    everything_published = all(all(published[fs].get(d.id) == hashes[d.id] for d in corpus if d.id not in
                                   screening.refused) for fs in stage.feature_sets)
    if everything_published and not parts_left and all(published.values()):
        # A previous run finished this stage for exactly this corpus and tidied its parts away.
        report.dialogues_skipped = len(dialogues)
        report.reused = True
        report.feature_files = [str(store.feature_path(fs)) for fs in stage.feature_sets]
        return report
    report.dialogues_skipped = len(done)
    groups = [dialogues[i:i + stage.group_size] for i in range(0, len(dialogues), stage.group_size)]
    if shard:   # whole groups, so that every batch is the one an unsharded run computes
        groups = shard.groups(groups)
        dialogues = [d for group in groups for d in group]
        done &= {d.id for d in dialogues}
    bar = tqdm(total=len(dialogues), desc=f"{stage.name:>6}", unit="dlg", disable=not progress, initial=len(done))
    todo = [group for group in groups if not all(d.id in done for d in group)]
    if ray_config is not None and todo:
        outcomes = _on_ray(stage.name, ray_config, context, todo, digest, hashes, screening, done)
    else:
        outcomes = (o for group in todo for o in process_group(stage, context, group, digest, hashes, screening, done))
    for dialogue_id, error in outcomes:
        if dialogue_id in done:
            continue  # recomputed only so that the group's batches match an uninterrupted run
        if error:
            report.dialogues_failed.append(dialogue_id)
        else:
            report.dialogues_done += 1
        bar.update(1)
    bar.close()
    if publish:
        publish_stage(store, corpus, publish_attrs(stage, corpus, screening), hashes, report)
    report.seconds = time.perf_counter() - started
    return report


def process_group(stage, context, group, digest, hashes, screening, done) -> list[tuple[str, str | None]]:
    """Process one group (here, or on a Ray actor) and write the parts of its dialogues that are not
    ``done``; ``(dialogue id, error)`` of each."""
    outcome = []
    for result in _process_group(stage, group, context):
        if result.dialogue_id not in done:
            _save(context.store, stage, _screened(stage, result, screening), digest, hashes[result.dialogue_id])
        outcome.append((result.dialogue_id, result.error))
    return outcome


def _on_ray(name, config, context, groups, digest, hashes, screening, done):
    """:func:`process_group` for every group, on a pool of Ray actors (:mod:`m3ed.pipelines.ray_engine`)."""
    from .ray_engine import RayGroups

    pool = RayGroups(name, config, context, len(groups))
    try:
        yield from pool.run(groups, digest, hashes, screening, done)
    finally:
        pool.close()


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


def _process_group(stage: Stage, group, context: RunContext) -> list[DialogueResult]:
    """All results of a group; if the group as a whole breaks, each dialogue is retried alone."""
    try:
        return list(stage.process(group, context))
    except FATAL:
        raise
    except Exception:
        if len(group) == 1:
            return [failed_dialogue(group[0], _describe(sys.exc_info()[1]))]
    results = []
    for dialogue in group:
        try:
            results += list(stage.process([dialogue], context))
        except FATAL:
            raise
        except Exception as e:  # one bad dialogue must not stop the batch; the reason is recorded
            results.append(failed_dialogue(dialogue, _describe(e)))
    return results


def _describe(error: BaseException) -> str:
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


def _flat(provenance: dict) -> dict:
    """HDF5 attributes take scalars and strings; nested values are stored as JSON."""
    return {k: (v if isinstance(v, (str, int, float, bool)) else json.dumps(v, sort_keys=True, default=str))
            for k, v in provenance.items() if v is not None}


def screen(corpus: Corpus, work: Corpus, media: MediaSource, overhang: str = "fail") -> Screening:
    """Refused dialogues (of the whole corpus) and the utterance-time verdicts of ``work``."""
    screening = Screening(refused=refused_dialogues(corpus))
    for dialogue in work:
        if dialogue.id in screening.refused:
            continue
        if dialogue.start is not None and dialogue.end is not None:
            duration = dialogue.end - dialogue.start
        else:
            try:
                duration = media.locate(dialogue).duration
            except (MediaError, ValueError):
                continue  # the stages record the missing video for this dialogue
        failures, clipped = screen_times(dialogue, duration, overhang)
        screening.bad_times.update({u: (dialogue.id, reason) for u, reason in failures.items()})
        screening.clipped.update({u: (dialogue.id, note) for u, note in clipped.items()})
    return screening


def output_corpus(store: FeatureStore, work: Corpus, subset: bool) -> Corpus:
    """The corpus an output directory describes after this run: ``work`` itself, or for a subset
    run, the dialogues already there with the subset's added or replaced."""
    existing = store.corpus() if subset else None
    if existing is None:
        return work
    chosen = {d.id: d for d in work}
    merged = [chosen.pop(d.id, d) for d in existing]
    return Corpus(tuple(merged) + tuple(chosen.values()), work.problems)


def resolve(config: ExtractConfig) -> ExtractConfig:
    """``config`` with every choice made that a run records: the bundled sample's files where none
    were given, the device, the thread count, and the stages in pipeline order (checked)."""
    config = config.resolved()
    order = stage_names()
    stages = config.run.stages or order
    unknown = [s for s in stages if s not in order]
    if unknown:
        raise ConfigurationError(f"--stages: unknown {unknown}; choose from {', '.join(order)}")
    run = dataclasses.replace(config.run, stages=tuple(s for s in order if s in stages),  # asd before visual
                              device=check_device(config.run.device) if config.run.device else default_device(),
                              threads=config.run.threads or torch.get_num_threads())
    return dataclasses.replace(config, run=run)


def extract(config: ExtractConfig) -> dict:
    """The main job (``m3ed-extract``): read the corpus, run the stages into ``config.run.out``;
    returns the run record (also written to ``OUT/run.json``)."""
    config = resolve(config)
    corpus = load_corpus(config.corpus)
    context = RunContext(corpus=corpus, media=media_source(config), store=FeatureStore(config.run.out),
                         profile=get_profile(config.run.profile), device=config.run.device,
                         precision=config.run.precision)
    return run_extraction(corpus, context, config)


def run_extraction(corpus: Corpus, context: RunContext, config: ExtractConfig) -> dict:
    """Run ``config.run.stages`` in order over ``corpus``; returns the run record also written to
    ``run.json``.

    With ``config.corpus.dialogues``, ``corpus`` holds the chosen dialogues: they are added to, or
    replace their earlier selves in, an existing output; every other published dialogue stays.
    With a shard (``config.run.shard``/``shards`` or the scheduler's variables), only that shard's
    dialogues are processed, nothing is published, and the record goes to ``OUT/shards/``;
    ``m3ed merge`` publishes once every shard is done. With ``engine="ray"`` the stages' dialogue
    groups run on Ray actors (same output).
    """
    config = resolve(config)
    store, run = context.store, config.run
    shard = shard_from(run.shard, run.shards)
    if shard and config.corpus.dialogues:
        raise ConfigurationError("--dialogues and --shard exclude each other: a shard's dialogues follow from the corpus")
    if run.engine == "ray":
        from .ray_engine import connect

        connect(run.ray_address)
    elif run.engine != "local":
        raise ConfigurationError(f"--engine {run.engine!r}: choose local or ray")
    lock = OutputLock(store.root, shard=shard.label if shard else None)
    try:
        store.root.mkdir(parents=True, exist_ok=True)
        lock.acquire()
        read_only = False
    except OSError as e:
        if isinstance(e, DiskFull):   # out of resources (exit 4), not a configuration error
            raise
        if is_disk_full(e):
            raise DiskFull(store.root) from e
        if e.errno not in (errno.EROFS, errno.EACCES, errno.EPERM) or not store.root.is_dir():
            raise ConfigurationError(f"{store.root}: cannot create the output directory ({e.strerror}); "
                                     f"choose another --out") from e
        read_only = True   # fine as long as everything is already there; checked at the end
    try:
        with torch_threads(run.threads):
            return _run_locked(corpus, context, config, read_only=read_only, shard=shard, lock=lock)
    except OSError as e:
        if e.errno in (errno.EROFS, errno.EACCES, errno.EPERM) and not isinstance(e, DiskFull):
            raise ConfigurationError(f"{store.root}: not writable ({e.strerror}: {e.filename}), and this run has "
                                     f"work to do there; fix its permissions or choose another --out") from e
        raise
    finally:
        lock.release()


def _run_locked(corpus: Corpus, context: RunContext, config: ExtractConfig, *, read_only: bool,
                shard: Shard | None, lock: OutputLock) -> dict:
    store, work, run = context.store, corpus, config.run
    stages = list(run.stages)
    preflight(config, context)
    if not read_only:
        sweep_temporaries(store.root)
    context.corpus = output_corpus(store, work, subset=bool(config.corpus.dialogues))
    with nullcontext() if read_only else lock.critical():   # shards all write the same manifest
        store.write_manifest(context.corpus)
    screening = screen(context.corpus, work, context.media, run.overhang)
    if shard:
        return _run_shard(context, work, config, screening, shard)
    started = time.perf_counter()
    record = {
        "package_version": __version__, "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "config": config.to_dict(), "versions": _versions(), "stages": {}, "complete": False,
    }
    previous = store.read_failures()
    previous_notes = store.read_notes()
    failures: list[Failure] = []
    notes: list[Failure] = []
    produced: set[str] = set()
    work_ids = {d.id for d in work}
    cut, cut_at = None, 0
    try:
        for name in stages:
            if name == "cut":
                produced.add("cut")
                cut = _start_cut(work, context, config, screening, beside=name != stages[-1])
                failures += [f for f in previous if f.feature_set == "cut" and f.dialogue_id not in work_ids]
                cut_at = len(failures)   # where its failures go once it is done
                notes += _clip_notes("cut", screening)
                record["stages"]["cut"] = {}   # filled in once it is done
                continue
            idle = [n for n in stage_class(name).needs if n in record["stages"] and not record["stages"][n]["feature_files"]]
            if idle:   # what it reads was produced by no dialogue: each fails with its own reason, none stops the run
                failures += _fail_without_input(context, name, idle[0], work, screening, failures, previous)
                produced.update(stage_class(name).feature_sets)
                record["stages"][name] = {"skipped": f"the {idle[0]} stage produced nothing to read"}
                continue
            stage = build_stage(name, config.stage_options(name), context)
            try:
                report = run_stage(stage, context, run.progress, work=work, screening=screening,
                                   ray_config=_on_ray_engine(config))
            finally:
                stage.close()
            produced.update(stage.feature_sets)
            for fs in stage.feature_sets:
                failures += _recorded_failures(store, fs, context.corpus, screening, previous)
                if stage.uses_media:
                    notes += _clip_notes(fs, screening)
                if not run.keep_parts and not report.dialogues_failed and not read_only:
                    store.remove_parts(fs)
            record["stages"][name] = _stage_record(report, stage)
            del stage   # its models go before the next stage loads its own
            release_memory()
            if read_only and not report.reused:
                raise ConfigurationError(f"{store.root}: not writable, and stage {name} has work to do there")
        if cut:
            cut_failures = cut.wait()
            failures[cut_at:cut_at] = cut_failures
            record["stages"]["cut"] = _cut_record(cut, cut_failures, store)
    finally:
        if cut:
            cut.cancel()   # after a stage's error: the dialogues being cut finish, no others start
    # Failures and notes of feature sets this run did not touch stay recorded.
    failures = [f for f in previous if f.feature_set not in produced] + failures
    notes = [n for n in previous_notes if n.feature_set not in produced] + notes
    record["failures"] = len(failures)
    record["failed_dialogues"] = sorted({f.dialogue_id for f in failures if f.utterance_id is None})
    record["refused_utterances"] = sorted(screening.bad_times)
    record["complete"] = True
    record["finished"] = time.strftime("%Y-%m-%dT%H:%M:%S%z")
    record["seconds"] = round(time.perf_counter() - started, 3)   # the stages' wall time (the cut overlaps)
    if read_only:
        if failures != previous:
            raise ConfigurationError(f"{store.root}: not writable, and this run's failures differ from failures.jsonl")
        record["read_only"] = True
        return record
    store.write_failures(failures)
    store.write_notes(notes)
    store.write_run(record)
    return record


def _run_shard(context: RunContext, work: Corpus, config: ExtractConfig, screening: Screening, shard: Shard) -> dict:
    """Process one shard's dialogues into parts; record what ``m3ed merge`` needs to publish."""
    context = dataclasses.replace(context, sharded=True)
    store, run = context.store, config.run
    record = {"package_version": __version__, "shard": shard.label,
              "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "versions": _versions(),
              "config": config.to_dict(), "stages": {},
              "refused": screening.refused, "clipped": {u: list(v) for u, v in screening.clipped.items()},
              "publish": {}, "cut_failures": [], "complete": False}
    cut = None
    try:
        for name in run.stages:
            if name == "cut":
                cut = _start_cut(shard.select(work), context, config, screening, beside=name != run.stages[-1])
                record["stages"]["cut"] = {}   # filled in once it is done
                continue
            stage = build_stage(name, config.stage_options(name), context)
            try:
                report = run_stage(stage, context, run.progress, work=work, screening=screening, publish=False,
                                   shard=shard, ray_config=_on_ray_engine(config))
                record["publish"][name] = {"attrs": publish_attrs(stage, context.corpus, screening),
                                           "uses_media": stage.uses_media, "group_size": stage.group_size}
            finally:
                stage.close()
            record["stages"][name] = _stage_record(report, stage)
            del stage
            release_memory()
        if cut:
            failures = cut.wait()
            record["cut_failures"] = [dataclasses.asdict(f) for f in failures]
            record["stages"]["cut"] = _cut_record(cut, failures, None)
    finally:
        if cut:
            cut.cancel()
    record["complete"] = True
    record["finished"] = time.strftime("%Y-%m-%dT%H:%M:%S%z")
    atomic_write_text(store.root / "shards" / f"run-{shard.index}-of-{shard.count}.json",
                      json.dumps(record, indent=2, ensure_ascii=False, default=str) + "\n")
    record["failed_dialogues"] = sorted({d for fs in record["stages"].values() for d in fs.get("dialogues_failed", [])}
                                        | set(screening.refused))
    record["refused_utterances"] = sorted(screening.bad_times)
    record["sharded"] = True
    return record


def merge(out_dir) -> dict:
    """Publish the feature files of a sharded run once every shard has finished (``m3ed merge OUT``)."""
    store = FeatureStore(out_dir)
    records = [json.loads(p.read_text(encoding="utf-8")) for p in sorted((store.root / "shards").glob("run-*-of-*.json"))]
    if not records:
        raise ConfigurationError(f"{store.root}: no shard records (shards/run-I-of-N.json); run the shards first "
                                 f"(m3ed-extract --shard I/N --out {store.root})")
    counts = {int(r["shard"].split("/")[1]) for r in records}
    if len(counts) != 1:
        raise ConfigurationError(f"{store.root}: shard records of different shard counts {sorted(counts)}; "
                                 f"remove the stale ones under {store.root / 'shards'}")
    count = counts.pop()
    corpus = store.corpus()
    if corpus is None:
        raise ConfigurationError(f"{store.root}: no manifest.jsonl; run the shards first")
    with OutputLock(store.root):
        return _merge_locked(store, corpus, records, count)


def _merge_locked(store: FeatureStore, corpus: Corpus, records: list[dict], count: int) -> dict:
    sweep_temporaries(store.root)   # what a killed merge (or shard) left behind
    finished = {r["shard"] for r in records if r.get("complete")}
    refused = {d: reason for r in records for d, reason in r.get("refused", {}).items()}
    hashes = {d.id: dialogue_hash(d) for d in corpus}
    stages: dict[str, dict] = {}
    for r in records:
        for name, entry in r.get("publish", {}).items():
            if name in stages and stages[name]["attrs"] != entry["attrs"]:
                raise ConfigurationError(f"{store.root}: shards ran stage {name} with different configurations "
                                         f"(config hash {_hash_of(stages[name])} vs {_hash_of(entry)}); re-run the "
                                         f"shards with the same options")
            stages[name] = entry
    missing: dict[str, list[str]] = {}
    for name, entry in stages.items():
        owner = Shard.group_owners([d for d in corpus if d.id not in refused], entry["group_size"], count)
        for fs, attrs in entry["attrs"].items():
            digest = attrs["config_hash"]
            published = store.published_dialogues(fs, digest)
            for d in corpus:
                if d.id in refused or store.is_done(fs, d.id, digest, hashes[d.id]) or store.is_failed(fs, d.id) \
                        or published.get(d.id) == hashes[d.id]:
                    continue
                other = store.part_config(fs, d.id)
                if other is not None and other != digest:
                    raise ConfigurationError(f"{store.part_path(fs, d.id)}: made with configuration {other}, not "
                                             f"{digest} like the other shards; re-run shard {owner[d.id] + 1}/{count}")
                missing.setdefault(f"{owner[d.id]}/{count}", []).append(f"{fs}:{d.id}")
    if missing:
        lines = "; ".join(f"shard {s} ({'finished' if s in finished else 'not finished'}): "
                          f"{', '.join(sorted({m.split(':', 1)[1] for m in items})[:10])}"
                          for s, items in sorted(missing.items()))
        raise ConfigurationError(f"{store.root}: not every dialogue is finished yet: {lines}. Run those shards "
                                 f"(m3ed-extract --shard I/N ...) and merge again")
    screening = Screening(refused=refused, clipped={u: tuple(v) for r in records for u, v in r.get("clipped", {}).items()})
    failures: list[Failure] = []
    notes: list[Failure] = []
    previous = store.read_failures()
    if any(r["stages"].get("cut") for r in records):
        failures += [Failure(**f) for r in sorted(records, key=lambda r: int(r["shard"].split("/")[0]))
                     for f in r.get("cut_failures", [])]
        notes += _clip_notes("cut", screening)
    report = StageReport("merge")
    for name, entry in stages.items():
        publish_stage(store, corpus, entry["attrs"], hashes, report)
        for fs in entry["attrs"]:
            failures += _recorded_failures(store, fs, corpus, screening, previous)
            if entry.get("uses_media"):
                notes += _clip_notes(fs, screening)
            store.remove_parts(fs)
    produced = {fs for entry in stages.values() for fs in entry["attrs"]} | {"cut"}
    failures = [f for f in previous if f.feature_set not in produced] + failures
    store.write_failures(failures)
    store.write_notes(notes)
    record = {"package_version": __version__, "merged_shards": sorted(finished), "feature_files": report.feature_files,
              "empty_sets": report.empty_sets, "failures": len(failures),
              "failed_dialogues": sorted({f.dialogue_id for f in failures if f.utterance_id is None}),
              "complete": True, "finished": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
    store.write_run({**records[0], "shard": None, "merge": record})
    return record


def _hash_of(entry: dict) -> str:
    return next(iter(entry["attrs"].values()))["config_hash"]


def preflight(config: ExtractConfig, context: RunContext) -> None:
    """Build every stage once and check its models before any work: a model that cannot be had
    is a configuration error, never an empty feature file. A stage that reads the output of an
    earlier stage of this run is checked when its turn comes."""
    stages = config.run.stages
    for name in stages:
        if name == "cut" or set(stage_class(name).needs) & set(stages):
            continue
        stage = build_stage(name, config.stage_options(name), context)
        try:
            stage.preflight()
        finally:
            stage.close()
        del stage
        release_memory()


def _on_ray_engine(config: ExtractConfig) -> ExtractConfig | None:
    return config if config.run.engine == "ray" else None


def _recorded_failures(store: FeatureStore, feature_set: str, corpus: Corpus, screening: Screening,
                       previous: list[Failure]) -> list[Failure]:
    """A feature set's failures: its refused dialogues, then what its parts (or, for dialogues
    carried over, ``previous``) record."""
    refusals = [Failure(feature_set, d.id, None, f"dialogue refused: {screening.refused[d.id]}")
                for d in corpus if d.id in screening.refused]
    return refusals + [f for f in store.failures(feature_set, corpus, previous) if f.dialogue_id not in screening.refused]


def _fail_without_input(context: RunContext, name: str, needed: str, work: Corpus, screening: Screening,
                        failures: list[Failure], previous: list[Failure]) -> list[Failure]:
    """Record each dialogue of stage ``name`` as failed because stage ``needed``, which ran before it
    in this run, published nothing; the reason repeats ``needed``'s failure of that dialogue."""
    inputs = stage_class(needed).feature_sets
    reasons = {f.dialogue_id: f.reason for f in failures if f.feature_set in inputs and f.utterance_id is None}
    for dialogue in work:
        if dialogue.id in screening.refused:
            continue
        why = reasons.get(dialogue.id, "it found nothing (see its failures)")
        for fs in stage_class(name).feature_sets:
            context.store.write_dialogue_failure(fs, dialogue.id, f"no input: the {needed} stage failed for this "
                                                                  f"dialogue: {why}")
    return [f for fs in stage_class(name).feature_sets
            for f in _recorded_failures(context.store, fs, context.corpus, screening, previous)]


def _clip_notes(feature_set: str, screening: Screening) -> list[Failure]:
    return [Failure(feature_set, d, u, note) for u, (d, note) in screening.clipped.items()]


def _start_cut(work: Corpus, context: RunContext, config: ExtractConfig, screening: Screening, *,
               beside: bool) -> CutJob:
    """Start cutting ``work``; with ``beside``, at the lowest priority beside the stages that follow."""
    return CutJob(work, context.media, context.store.clips_dir, workers=config.run.cut_workers,
                  progress=config.run.progress, screening=screening, beside=beside)


def _cut_record(cut: CutJob, failures: list[Failure], store: FeatureStore | None) -> dict:
    entry = {"seconds": round(cut.seconds, 3), "failed": len(failures), "beside_other_stages": cut.beside,
             "peak_rss_mb": round(peak_rss_mb())}
    return {**entry, "clips": str(store.clips_dir)} if store else entry


def _stage_record(report, stage: Stage) -> dict:
    """A stage's entry in the run record; ``peak_rss_mb``: the process's peak up to the stage's end."""
    return {**vars(report), "seconds": round(report.seconds, 3), "provenance": stage.provenance(),
            "peak_rss_mb": round(peak_rss_mb())}


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
    record = json.loads(store.run_path.read_text(encoding="utf-8")) if store.run_path.exists() else {}
    config = ExtractConfig.from_dict(record.get("config"))
    if videos is not None or pattern is not None:
        config.media = dataclasses.replace(config.media, videos=str(videos) if videos else config.media.videos,
                                           video_pattern=pattern or config.media.video_pattern)
    return media_source(config)
