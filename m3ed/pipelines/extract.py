"""The main job: run the stages over a corpus and write the output directory.

Stages run one after another (one large model resident at a time; :mod:`m3ed.pipelines.runner`
runs each); the cut, which loads no model, runs beside the stages after it at the lowest CPU
priority (:class:`m3ed.pipelines.cut.CutJob`) and is waited for before the run is recorded. Before
any work the run takes the output directory's lock, removes what killed writers left behind, and
screens the corpus (:mod:`m3ed.screening`): refused dialogues and unusable utterance times are
recorded, never processed. A whole run then publishes and records itself
(:class:`m3ed.pipelines.run_record.RunRecord`); a shard records what ``m3ed merge``
(:mod:`m3ed.pipelines.merge`) needs (:class:`m3ed.pipelines.run_record.ShardRecord`).
"""
from __future__ import annotations

import dataclasses
import errno
import json
from contextlib import nullcontext

import torch

from ..config import ExtractConfig, check_device, load_corpus, media_source
from ..corpus import Corpus
from ..device import default_device, release_memory, torch_threads
from ..errors import ConfigurationError
from ..files import DiskFull, is_disk_full, sweep_temporaries
from ..locate import MediaSource
from ..lock import OutputLock
from ..media import MediaError
from ..profiles import get_profile
from ..screening import Screening, refused_dialogues, screen_times
from ..stage import CUT, RunContext, build_stage, stage_class, stage_names
from ..store import FeatureStore
from .cut import CutJob
from .host_pool import default_workers
from .ray_engine import RayEngine
from .run_record import RunRecord, ShardRecord
from .runner import Engine, LocalEngine, run_stage
from .shard import Shard, shard_from


def resolve(config: ExtractConfig) -> ExtractConfig:
    """``config`` with every choice made that a run records: the bundled sample's files where none
    were given, the device, the thread count, and the stages in pipeline order (checked)."""
    config = config.resolved()
    order = stage_names()
    stages = config.run.stages or order
    unknown = [s for s in stages if s not in order]
    if unknown:
        raise ConfigurationError(f"--stages: unknown {unknown}; choose from {', '.join(order)}")
    device = check_device(config.run.device) if config.run.device else default_device()
    run = dataclasses.replace(config.run, stages=tuple(s for s in order if s in stages),  # asd before visual
                              device=device, threads=config.run.threads or torch.get_num_threads(),
                              workers=config.run.workers or default_workers(device))
    return dataclasses.replace(config, run=run)


def run_context(config: ExtractConfig) -> RunContext:
    """The corpus, media, output store and models a run of the resolved ``config`` works with."""
    return RunContext(corpus=load_corpus(config.corpus), media=media_source(config), store=FeatureStore(config.run.out),
                      profile=get_profile(config.run.profile), device=config.run.device, precision=config.run.precision)


def extract(config: ExtractConfig) -> dict:
    """The main job (``m3ed-extract``): read the corpus, run the stages into ``config.run.out``;
    returns the run record (also written to ``OUT/run.json``)."""
    config = resolve(config)
    return extract_resolved(run_context(config), config)


def run_extraction(corpus: Corpus, context: RunContext, config: ExtractConfig) -> dict:
    """:func:`extract` with a context of the caller's, over its ``corpus``."""
    return extract_resolved(context, resolve(config), work=corpus)


def extract_resolved(context: RunContext, config: ExtractConfig, work: Corpus | None = None) -> dict:
    """Run ``config.run.stages`` (``config`` as :func:`resolve` returns it) in order over ``work``
    (default: the context's corpus); returns the run record also written to ``run.json``.

    With ``config.corpus.dialogues``, ``work`` holds the chosen dialogues: they are added to, or
    replace their earlier selves in, an existing output; every other published dialogue stays.
    With a shard (``config.run.shard``/``shards`` or the scheduler's variables), only that shard's
    dialogues are processed, nothing is published, and the record goes to ``OUT/shards/``;
    ``m3ed merge`` publishes once every shard is done. With ``engine="ray"`` the stages' dialogue
    groups run on Ray actors (same output).
    """
    store, run = context.store, config.run
    work = context.corpus if work is None else work
    shard = shard_from(run.shard, run.shards)
    if shard and config.corpus.dialogues:
        raise ConfigurationError("--dialogues and --shard exclude each other: a shard's dialogues follow from the corpus")
    engine = _engine(config)
    lock = OutputLock(store.root, shard=shard.label if shard else None)
    read_only = _lock_output(lock, store)
    try:
        with torch_threads(run.threads):
            return _run_locked(context, work, config, engine, lock, shard, read_only=read_only)
    except OSError as e:
        if e.errno in (errno.EROFS, errno.EACCES, errno.EPERM) and not isinstance(e, DiskFull):
            raise ConfigurationError(f"{store.root}: not writable ({e.strerror}: {e.filename}), and this run has "
                                     f"work to do there; fix its permissions or choose another --out") from e
        raise
    finally:
        lock.release()


def _engine(config: ExtractConfig) -> Engine:
    if config.run.engine == "ray":
        return RayEngine(config.run.ray_address, config.run.threads, config.stage_options)
    if config.run.engine != "local":
        raise ConfigurationError(f"--engine {config.run.engine!r}: choose local or ray")
    return LocalEngine(config.run.workers)


def _lock_output(lock: OutputLock, store: FeatureStore) -> bool:
    """Take the output directory's lock; True when it cannot be written (fine as long as everything
    is already there: checked at the end)."""
    try:
        store.root.mkdir(parents=True, exist_ok=True)
        lock.acquire()
        return False
    except OSError as e:
        if isinstance(e, DiskFull):   # out of resources (exit 4), not a configuration error
            raise
        if is_disk_full(e):
            raise DiskFull(store.root) from e
        if e.errno not in (errno.EROFS, errno.EACCES, errno.EPERM) or not store.root.is_dir():
            raise ConfigurationError(f"{store.root}: cannot create the output directory ({e.strerror}); "
                                     f"choose another --out") from e
        return True


def _run_locked(context: RunContext, work: Corpus, config: ExtractConfig, engine: Engine, lock: OutputLock,
                shard: Shard | None, *, read_only: bool) -> dict:
    store, run = context.store, config.run
    preflight(config, context)
    if not read_only:
        sweep_temporaries(store.root)
    # The run's context describes the whole output: for a subset run, the dialogues already there too.
    context = dataclasses.replace(context, corpus=output_corpus(store, work, subset=bool(config.corpus.dialogues)),
                                  sharded=shard is not None, fer_crop=_fer_crop(config))
    with nullcontext() if read_only else lock.critical():   # shards all write the same manifest
        store.write_manifest(context.corpus)
    screening = screen(context.corpus, work, context.media, run.overhang)
    if shard:
        record = ShardRecord(context, config, screening, shard)
    else:
        record = RunRecord(context, work, config, screening, read_only=read_only)
    cut = CutJob(shard.select(work) if shard else work, context.media, store.clips_dir, workers=run.cut_workers,
                 progress=run.progress, screening=screening, beside=run.stages[-1] != CUT) if CUT in run.stages else None
    try:
        record.cut_started(cut)
        for name in run.stages:
            if name != CUT and not record.skips(name):
                _run_one(name, context, work, config, screening, engine, record)
        if cut:
            record.cut_done(cut, cut.wait())
    finally:
        if cut:
            cut.cancel()   # after a stage's error: the dialogues being cut finish, no others start
    return record.finish()


def _fer_crop(config: ExtractConfig) -> tuple[str, float] | None:
    """The visual stage's crop when the asd stage runs before it: the asd stage then cuts its crops."""
    if not {"asd", "visual"} <= set(config.run.stages):
        return None
    visual = config.stage_options("visual")
    return visual.crop, visual.crop_scale


def _run_one(name: str, context: RunContext, work: Corpus, config: ExtractConfig, screening: Screening,
             engine: Engine, record: RunRecord | ShardRecord) -> None:
    """Build stage ``name``, run it, record it, and release its models before the next stage loads its own."""
    stage = build_stage(name, config.stage_options(name), context)
    try:
        report = run_stage(stage, context, config.run.progress, work=work, screening=screening,
                           publish=record.shard is None, shard=record.shard, engine=engine)
        record.stage_done(stage, report)
    finally:
        stage.close()
    del stage
    release_memory()


def preflight(config: ExtractConfig, context: RunContext) -> None:
    """Build every stage once and check its models before any work: a model that cannot be had
    is a configuration error, never an empty feature file. A stage that reads the output of an
    earlier stage of this run is checked when its turn comes."""
    stages = config.run.stages
    for name in stages:
        if name == CUT or set(stage_class(name).needs) & set(stages):
            continue
        stage = build_stage(name, config.stage_options(name), context)
        try:
            stage.preflight()
        finally:
            stage.close()
        del stage
        release_memory()


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
