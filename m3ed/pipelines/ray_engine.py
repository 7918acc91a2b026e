"""``--engine ray``: a stage's dialogue groups run on a pool of Ray actors (one model replica each).

Each actor builds the stage once (its models load once per replica), processes whole dialogue
groups exactly as the local engine does, and writes their part files into ``OUT``, which every node
must see (checked at start with a probe file). The driver only schedules, counts and publishes.
GPU stages take one GPU per actor. Every actor runs its models at the run's thread count (``--threads``,
or torch's default on the driver), whatever Ray's ``OMP_NUM_THREADS`` says: the same kernels as
the local engine, so the same bytes. On CPU an actor reserves that many CPUs of the cluster.
The actors are the parallelism: each does its stage's host work in place (``--workers`` is the
local engine's, :mod:`m3ed.pipelines.host_pool`).

Ray's own fault tolerance covers lost workers: an actor whose process dies (machine lost,
OOM-killed) is restarted and its group runs again (``max_restarts``/``max_task_retries``). A data
error in a dialogue is not an actor failure: it is recorded in ``failures.jsonl`` like locally.
"""
from __future__ import annotations

import dataclasses
import os
import secrets
from typing import Any, Callable, Iterator

from ..corpus import Dialogue
from ..errors import ConfigurationError
from ..stage import RunContext, Stage, build_stage
from .runner import Outcome, StageRun, process_group

RESTARTS = 3   # restarts of a dead actor (and retries of its group) before the run gives up


def _ray():
    try:
        import ray
    except ImportError as e:
        raise ConfigurationError("--engine ray needs Ray: pip install 'm3ed[ray]'") from e
    return ray


def connect(address: str | None) -> None:
    """Join the cluster at ``address`` (or ``RAY_ADDRESS``); without one, start Ray on this machine
    with every CPU and GPU it has. A Ray instance this process already started is used as it is."""
    ray = _ray()
    if ray.is_initialized():
        return
    address = address or os.environ.get("RAY_ADDRESS") or None
    try:
        ray.init(address=address, include_dashboard=False, log_to_driver=False, configure_logging=False)
    except ConnectionError as e:
        raise ConfigurationError(f"--ray-address {address}: no Ray cluster there ({e})") from e


def _worker_class():
    ray = _ray()

    @ray.remote(max_restarts=RESTARTS, max_task_retries=RESTARTS)
    class StageWorker:
        """One replica of a stage: built once, then fed whole dialogue groups."""

        def __init__(self, name: str, options: Any, context: RunContext, threads: int):
            import torch

            torch.set_num_threads(threads)
            self.context = context
            self.stage = build_stage(name, options, context)

        def read_probe(self, path: str) -> str | None:
            try:
                with open(path, encoding="utf-8") as f:
                    return f.read()
            except OSError:
                return None

        def run(self, group_ids: list[str], run: StageRun) -> list[Outcome]:
            return process_group(self.stage, self.context, [self.context.corpus[d] for d in group_ids], run)

    return StageWorker


class RayEngine:
    """The :class:`m3ed.pipelines.runner.Engine` of ``--engine ray``: each stage's groups on a pool of
    actors built with that stage's options, at the run's thread count."""

    def __init__(self, address: str | None, threads: int | None, stage_options: Callable[[str], Any]):
        connect(address)
        self.threads = threads or 1   # resolved by the driver: the local engine's count
        self.stage_options = stage_options

    def run_groups(self, stage: Stage, context: RunContext, groups: list[list[Dialogue]],
                   run: StageRun) -> Iterator[Outcome]:
        pool = RayGroups(stage.name, self.stage_options(stage.name), context, self.threads, len(groups))
        try:
            yield from pool.run(groups, run)
        finally:
            pool.close()


class RayGroups:
    """Runs a stage's groups on actors; :meth:`run` yields ``(dialogue id, error)`` as groups finish."""

    def __init__(self, name: str, options: Any, context: RunContext, threads: int, groups: int):
        ray = _ray()
        resources = ray.cluster_resources()
        gpus, cpus = int(resources.get("GPU", 0)), max(1, int(resources.get("CPU", 1)))
        on_gpu = str(context.device).startswith("cuda") and gpus > 0
        reserved = 1 if on_gpu else min(threads, cpus)
        size = max(1, min(groups, gpus if on_gpu else cpus // reserved))
        resources_each = {"num_gpus": 1, "num_cpus": 1} if on_gpu else {"num_cpus": reserved}
        if on_gpu:
            context = dataclasses.replace(context, device="cuda")   # each actor sees its one GPU as cuda:0
        worker = _worker_class()
        self.actors = [worker.options(**resources_each).remote(name, options, context, threads) for _ in range(size)]
        self._check_shared(context)

    def _check_shared(self, context: RunContext) -> None:
        """OUT must be one filesystem for the driver and every actor: write a probe, read it back there."""
        ray = _ray()
        probe = context.store.root / f".probe-{secrets.token_hex(8)}"
        token = secrets.token_hex(16)
        probe.write_text(token, encoding="utf-8")
        try:
            seen = ray.get([a.read_probe.remote(str(probe)) for a in self.actors])
        finally:
            probe.unlink(missing_ok=True)
        if any(s != token for s in seen):
            raise ConfigurationError(f"{context.store.root}: the Ray workers do not see this output directory; "
                                     f"--engine ray needs OUT on a filesystem every node mounts at the same path "
                                     f"(NFS, Lustre, CephFS, a ReadWriteMany volume)")

    def run(self, groups: list[list[Dialogue]], run: StageRun) -> Iterator[Outcome]:
        ray = _ray()
        shared = ray.put(run)   # stored once, read by every task
        pending = {}
        queue = list(groups)
        idle = list(self.actors)

        def submit(actor) -> None:
            group = queue.pop(0)
            ref = actor.run.remote([d.id for d in group], shared)
            pending[ref] = actor

        while queue and idle:
            submit(idle.pop())
        while pending:
            done, _ = ray.wait(list(pending), num_returns=1)
            actor = pending.pop(done[0])
            try:
                outcome = ray.get(done[0])
            except ray.exceptions.RayTaskError as e:
                raise e.as_instanceof_cause() from None   # a configuration error or a full disk: stop
            yield from outcome
            if queue:
                submit(actor)

    def close(self) -> None:
        ray = _ray()
        for actor in self.actors:
            ray.kill(actor)

