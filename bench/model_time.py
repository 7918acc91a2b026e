"""The floor under each stage: its networks' arithmetic alone, replayed after a real run.

    python bench/model_time.py RECORD.json [m3ed-extract arguments ...]

Runs ``m3ed-extract`` in this process after wrapping every entry point into a network: MTCNN's P-,
R- and O-nets, the ASD model (TalkNet or Light-ASD, plain or fused), the face embedders, the FER
DenseNet, and the Hugging Face text and audio encoders. Per stage, RECORD.json gets:

- ``model_s``: wall seconds during which at least one of those calls was running (calls side by
  side on several threads count once, even while the other thread does other work);
- ``floor_s``: the same calls replayed back to back once the run is over, on copies of their
  inputs (random inputs of the same shapes ran up to 40 % slower: the values matter to the
  kernels' speed), network by network (``floor_by_network_s``), the fastest of two replays,
  with the same threads: calls that ran side by side on one torch thread each are replayed side
  by side, the others one after another on the run's threads. Nothing else runs: no decoding,
  rescaling, cropping, tracking, MFCC, batching, writing or Python between calls. A schedule
  that hid every other step behind the networks would still take this long; going under it
  means computing less, or the same on other kernels (other rounding, other outputs).

For the cut, ``cut_cpu_s``: the CPU seconds of its ffmpeg processes (the cut's floor is that spread
over the machine's cores).

The run itself is timed as usual (the wrappers cost a lock, two clock reads and a copy of the
inputs per call); the networks and every call's inputs stay in memory until the replay (about
1.5 GB for the sample's 46 s), so run it on short footage and do not read its memory.
"""
from __future__ import annotations

import json
import resource
import sys
import threading
import time
from collections import defaultdict
from pathlib import Path

import torch

REPEAT = 2   # replays per network; the floor is the fastest

class ModelClock:
    """Wall seconds with at least one model call running, per stage."""

    def __init__(self):
        self.stage = "(none)"
        self.seconds: dict[str, float] = defaultdict(float)
        self.calls: dict[str, int] = defaultdict(int)
        self._lock = threading.Lock()
        self._running = 0
        self._since = 0.0
        self.cut_children_cpu_s = 0.0
        self.recorded: list[tuple[str, object, tuple, dict, int]] = []   # (stage, function, args, kwargs, threads)

    def enter(self) -> None:
        with self._lock:
            if self._running == 0:
                self._since = time.perf_counter()
            self._running += 1
            self.calls[self.stage] += 1

    def leave(self) -> None:
        with self._lock:
            self._running -= 1
            if self._running == 0:
                self.seconds[self.stage] += time.perf_counter() - self._since

    def record(self, function, args: tuple, kwargs: dict) -> None:
        with self._lock:
            self.recorded.append((self.stage, function, _copy(args), _copy(kwargs), torch.get_num_threads()))

    def call(self, function, args: tuple, kwargs: dict):
        """``function(*args, **kwargs)``, recorded for the replay and timed."""
        self.record(function, args, kwargs)
        self.enter()
        try:
            return function(*args, **kwargs)
        finally:
            self.leave()


def route_network_calls(through) -> None:
    """Send every call into a network through ``through(function, args, kwargs)``: the entry points the
    stages call (MTCNN's nets, the face detectors and embedders, the HF encoders as modules; the ASD
    models and the FER DenseNet by their methods), not their inner layers. Also used by bench_host.py."""
    from facenet_pytorch.models.inception_resnet_v1 import InceptionResnetV1
    from facenet_pytorch.models.mtcnn import ONet, PNet, RNet
    from transformers import PreTrainedModel

    from m3ed.models.densenet_fer import DenseNetFER
    from m3ed.models.light_asd import LightASD
    from m3ed.models.s3fd import S3FDNet
    from m3ed.models.senet50 import SENet50
    from m3ed.models.talknet import AudioVisualASD

    roots = (PNet, RNet, ONet, S3FDNet, InceptionResnetV1, SENet50, PreTrainedModel)
    module_call = torch.nn.Module.__call__

    def call(module, *args, **kwargs):
        if not isinstance(module, roots):
            return module_call(module, *args, **kwargs)
        return through(module_call, (module, *args), kwargs)

    torch.nn.Module.__call__ = call
    for owner, name in ((AudioVisualASD, "logits"), (LightASD, "fused_logits"), (DenseNetFER, "forward_features")):
        method = getattr(owner, name)

        def wrapper(*args, _method=method, **kwargs):
            return through(_method, args, kwargs)
        wrapper.__wrapped__ = method
        setattr(owner, name, wrapper)


def instrument(clock: ModelClock) -> None:
    """Time and record the networks' calls (:func:`route_network_calls`) and the cut's ffmpeg CPU, by stage."""
    import m3ed.pipelines.cut as cut
    import m3ed.pipelines.extract as extract

    route_network_calls(clock.call)

    run_stage = extract.run_stage

    def staged(stage, *args, **kwargs):
        clock.stage = stage.name
        try:
            return run_stage(stage, *args, **kwargs)
        finally:
            clock.stage = "(none)"

    extract.run_stage = staged

    # the cut's ffmpeg processes: CPU seconds of the children reaped between its start and its end
    init, wait = cut.CutJob.__init__, cut.CutJob.wait

    def started(job, *args, **kwargs):
        clock.cut_children_cpu_s -= _children_cpu()
        init(job, *args, **kwargs)

    def waited(job, *args, **kwargs):
        try:
            return wait(job, *args, **kwargs)
        finally:
            clock.cut_children_cpu_s += _children_cpu()

    cut.CutJob.__init__, cut.CutJob.wait = started, waited


def _children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def _copy(value):
    """The call's inputs as they were (a later in-place change must not alter what is replayed)."""
    if isinstance(value, torch.Tensor):
        return value.clone()
    if isinstance(value, (tuple, list)):
        return type(value)(_copy(v) for v in value)
    if isinstance(value, dict):
        return {k: _copy(v) for k, v in value.items()}
    return value


def replay(clock: ModelClock, threads: int) -> tuple[dict[str, float], dict[str, dict[str, float]]]:
    """Per stage, the seconds of its recorded calls replayed with nothing else running, and the
    same per network (by class name)."""
    from m3ed.device import freed_buffers_kept, side_by_side, torch_threads
    from m3ed.models.talknet import AudioVisualASD

    def run(call) -> None:
        function, args, kwargs = call
        if isinstance(args[0], AudioVisualASD):
            with freed_buffers_kept():   # as the asd stage's scoring runs its calls
                function(*args, **kwargs)
        else:
            function(*args, **kwargs)

    groups: dict[str, dict[str, list]] = defaultdict(lambda: defaultdict(list))
    for stage, function, args, kwargs, used in clock.recorded:
        groups[stage][_network(args)].append(((function, args, kwargs), used))
    floor: dict[str, float] = {}
    parts: dict[str, dict[str, float]] = {}
    with torch.inference_mode(), torch_threads(threads):
        for stage, networks in groups.items():
            parts[stage] = {}
            for network, calls in networks.items():
                alone = [c for c, used in calls if used > 1 or threads == 1]
                beside = [c for c, used in calls if used == 1 and threads > 1]
                best = float("inf")
                for _ in range(REPEAT):
                    started = time.perf_counter()
                    for call in alone:
                        run(call)
                    side_by_side(run, beside, "cpu")
                    if torch.cuda.is_available():
                        torch.cuda.synchronize()   # CUDA calls return before their kernels finish
                    best = min(best, time.perf_counter() - started)
                parts[stage][network] = round(best, 3)
            floor[stage] = round(sum(parts[stage].values()), 3)
    return floor, parts


def _network(args: tuple) -> str:
    """The class of the module a call runs (its first argument: the module or ``self``)."""
    return type(args[0]).__name__ if args else "?"


def main() -> None:
    if len(sys.argv) < 2:
        raise SystemExit(__doc__)
    record = Path(sys.argv[1])
    clock = ModelClock()
    instrument(clock)
    from m3ed.pipelines.cli import extract_main

    code = extract_main(sys.argv[2:])
    threads = max((used for *_, used in clock.recorded), default=1)   # the run's torch threads
    clock.stage = "(replay)"
    floor, by_network = replay(clock, threads)
    result = {"model_s": {k: round(v, 3) for k, v in clock.seconds.items()}, "model_calls": dict(clock.calls),
              "floor_s": floor, "floor_by_network_s": by_network, "threads": threads,
              # the cut's ffmpeg processes: CPU seconds (spread over the cores, the cut's floor)
              "cut_cpu_s": round(clock.cut_children_cpu_s, 3)}
    record.write_text(json.dumps(result, indent=1))
    sys.exit(code)


if __name__ == "__main__":
    main()
