"""`--engine ray`: the same bytes as the local engine, even when an actor is killed mid-stage.

Same-path comparisons (the same command, machine and threads), so exact: the local run and every
actor use the run's thread count, here torch's default (no ``--threads``) as a user's run would."""
import dataclasses
import os
import signal
import threading
import time
from pathlib import Path

import pytest

from m3ed.corpus import Corpus, utterance_id
from m3ed.pipelines.cli import extract_main

ray = pytest.importorskip("ray")
pytestmark = pytest.mark.slow
THREADS = 2   # the run's default thread count here: torch's, set for this module


@pytest.fixture(scope="module", autouse=True)
def default_threads():
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(THREADS)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def local_ray():
    # four CPUs of Ray's accounting: two actors of two threads each share the work
    ray.init(num_cpus=2 * THREADS, include_dashboard=False, log_to_driver=False, configure_logging=False)
    yield
    ray.shutdown()


@pytest.fixture(scope="module")
def corpus_path(tmp_path_factory, sample_corpus, sample_paths):
    """36 dialogues: two text groups and three audio groups, so that actors share the work."""
    dialogues = []
    for k in range(12):
        for d in sample_corpus:
            new = f"{d.id}-{k}"
            dialogues.append(dataclasses.replace(
                d, id=new, video=str(next(sample_paths["videos"].glob(f"{d.show}{d.episode:02d}.mp4"))),
                utterances=tuple(dataclasses.replace(u, id=utterance_id(new, i + 1), dialogue_id=new)
                                 for i, u in enumerate(d.utterances))))
    path = tmp_path_factory.mktemp("ray") / "corpus.jsonl"
    Corpus(tuple(dialogues)).to_jsonl(path)
    return path


def _argv(corpus_path: Path, out: Path, *extra: str) -> list[str]:
    return ["--annotations", str(corpus_path), "--out", str(out), "--stages", "text,audio", "--profile", "tiny",
            "--device", "cpu", "--no-progress", "--no-report", *extra]


@pytest.fixture(scope="module")
def reference(tmp_path_factory, corpus_path, models_cache, published_outputs):
    out = tmp_path_factory.mktemp("local") / "out"
    assert extract_main(_argv(corpus_path, out)) == 0
    return published_outputs(out)


def test_ray_engine_writes_what_the_local_engine_writes(tmp_path, corpus_path, reference, local_ray, published_outputs):
    out = tmp_path / "out"
    # --workers is the local engine's: the actors are the parallelism, each doing its host work in place
    assert extract_main(_argv(corpus_path, out, "--engine", "ray", "--workers", "2")) == 0
    assert published_outputs(out) == reference
    assert len(reference) == 6


def _actor_pids() -> list[int]:
    pids = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if (entry / "cmdline").read_bytes().startswith(b"ray::StageWorker"):
                    pids.append(int(entry.name))
            except OSError:
                continue
    return pids


def test_a_killed_actor_is_replaced_and_the_output_is_the_same(tmp_path, corpus_path, reference, local_ray,
                                                                   published_outputs):
    out = tmp_path / "out"
    killed: list[int] = []

    def kill_one_actor_mid_audio() -> None:
        deadline = time.monotonic() + 600
        while time.monotonic() < deadline and not killed:
            parts = out / ".parts" / "wav2vec2_frame"
            if parts.exists() and any(parts.glob("*.h5")):
                for pid in _actor_pids():
                    os.kill(pid, signal.SIGKILL)
                    killed.append(pid)
                    break
            time.sleep(0.05)

    killer = threading.Thread(target=kill_one_actor_mid_audio, daemon=True)
    killer.start()
    assert extract_main(_argv(corpus_path, out, "--engine", "ray")) == 0
    killer.join(timeout=5)
    assert killed, "no actor was running mid-stage to be killed"
    assert published_outputs(out) == reference
