"""``m3ed merge OUT``: publish the feature files of a sharded run once every shard has finished.

Each shard (``m3ed-extract --shard I/N``) leaves its parts in ``OUT/.parts`` and its record in
``OUT/shards/run-I-of-N.json``: which stages it ran, with the attributes their files get, and what
it refused or clipped. The merge checks that every shard ran the same configuration and that every
dialogue is finished (else it names the shards still to run), then publishes every feature file,
``failures.jsonl``, ``notes.jsonl`` and ``run.json`` as one unsharded run would.
"""
from __future__ import annotations

import json
import time
from pathlib import Path

from .. import __version__
from ..corpus import Corpus
from ..errors import ConfigurationError
from ..files import sweep_temporaries
from ..lock import OutputLock
from ..screening import Screening
from ..store import Failure, FeatureStore, dialogue_hash
from .runner import StageReport, clip_notes, publish_stage, recorded_failures
from .shard import Shard


def merge(out_dir: str | Path) -> dict:
    """Publish the feature files of a sharded run once every shard has finished (``m3ed merge OUT``)."""
    store = FeatureStore(out_dir)
    records = _shard_records(store)
    count = int(records[0]["shard"].split("/")[1])
    corpus = store.corpus()
    if corpus is None:
        raise ConfigurationError(f"{store.root}: no manifest.jsonl; run the shards first")
    with OutputLock(store.root):
        sweep_temporaries(store.root)   # what a killed merge (or shard) left behind
        stages = _stages_run(store, records)
        refused = {d: reason for r in records for d, reason in r.get("refused", {}).items()}
        finished = {r["shard"] for r in records if r.get("complete")}
        _check_finished(store, corpus, stages, refused, count, finished)
        screening = Screening(refused=refused,
                              clipped={u: tuple(v) for r in records for u, v in r.get("clipped", {}).items()})
        return _publish(store, corpus, records, stages, screening, finished)


def _shard_records(store: FeatureStore) -> list[dict]:
    """The shards' records, all of one shard count."""
    records = [json.loads(p.read_text(encoding="utf-8")) for p in sorted((store.root / "shards").glob("run-*-of-*.json"))]
    if not records:
        raise ConfigurationError(f"{store.root}: no shard records (shards/run-I-of-N.json); run the shards first "
                                 f"(m3ed-extract --shard I/N --out {store.root})")
    counts = {int(r["shard"].split("/")[1]) for r in records}
    if len(counts) != 1:
        raise ConfigurationError(f"{store.root}: shard records of different shard counts {sorted(counts)}; "
                                 f"remove the stale ones under {store.root / 'shards'}")
    return records


def _stages_run(store: FeatureStore, records: list[dict]) -> dict[str, dict]:
    """Stage name -> what its files get published with; every shard must have run it alike."""
    stages: dict[str, dict] = {}
    for r in records:
        for name, entry in r.get("publish", {}).items():
            if name in stages and stages[name]["attrs"] != entry["attrs"]:
                raise ConfigurationError(f"{store.root}: shards ran stage {name} with different configurations "
                                         f"(config hash {_hash_of(stages[name])} vs {_hash_of(entry)}); re-run the "
                                         f"shards with the same options")
            stages[name] = entry
    return stages


def _check_finished(store: FeatureStore, corpus: Corpus, stages: dict[str, dict], refused: dict[str, str],
                    count: int, finished: set[str]) -> None:
    """Every dialogue of every stage has a part, a recorded failure or a published entry; else name
    the shards to run (and a part made with another configuration, the shard to re-run)."""
    hashes = {d.id: dialogue_hash(d) for d in corpus}
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


def _publish(store: FeatureStore, corpus: Corpus, records: list[dict], stages: dict[str, dict],
             screening: Screening, finished: set[str]) -> dict:
    """Publish every stage's files, then the failures, notes and run record; returns the merge's record."""
    hashes = {d.id: dialogue_hash(d) for d in corpus}
    failures: list[Failure] = []
    notes: list[Failure] = []
    previous = store.read_failures()
    if any(r["stages"].get("cut") for r in records):
        failures += [Failure(**f) for r in sorted(records, key=lambda r: int(r["shard"].split("/")[0]))
                     for f in r.get("cut_failures", [])]
        notes += clip_notes("cut", screening)
    report = StageReport("merge")
    for entry in stages.values():
        publish_stage(store, corpus, entry["attrs"], hashes, report)
        for fs in entry["attrs"]:
            failures += recorded_failures(store, fs, corpus, screening, previous)
            if entry.get("uses_media"):
                notes += clip_notes(fs, screening)
            store.remove_parts(fs)
    store.remove_scratch()   # every shard is done: what one stage left for a later one is spent
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
