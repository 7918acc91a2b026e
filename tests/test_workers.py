"""``--workers``: the asd stage's host work in worker processes, and the visual stage's crops cut
while the asd stage has the frames. Same-path comparisons on one machine, so exact."""
from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import h5py
import pytest

import m3ed.locate
from cli_runs import BASE
from conftest import REPO
from m3ed.pipelines.cli import extract_main

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("same_threads_as_the_workers")]

DIALOGUES = "sampleval_1,sampletest_1"   # the two short dialogues of the sample: a pool needs two to share


def _argv(sample_paths, out, stages: str, *extra: str) -> list[str]:
    return ["--out", str(out), "--stages", stages, "--dialogues", DIALOGUES, "--asd-model", "light-asd",
            "--threads", "1", *BASE, *extra]


def _count_decodes(patch: pytest.MonkeyPatch) -> list[str]:
    """The path of every video decode this process starts from now on (the real decoder runs)."""
    seen: list[str] = []
    real = m3ed.locate.iter_frames

    def counted(path, *args, **kwargs):
        seen.append(str(path))
        return real(path, *args, **kwargs)

    patch.setattr(m3ed.locate, "iter_frames", counted)
    return seen


@pytest.fixture
def decodes(monkeypatch) -> list[str]:
    return _count_decodes(monkeypatch)


def _outputs(out) -> dict[str, bytes]:
    files = sorted((out / "features").glob("*.h5")) + sorted((out / "asd").glob("*.json"))
    files += [out / "failures.jsonl"]
    return {p.name: p.read_bytes() for p in files}


@pytest.fixture(scope="module")
def in_place(tmp_path_factory, sample_paths, models_cache):
    """asd and visual with the host work in this process (``--workers 1``); the decodes it started."""
    out = tmp_path_factory.mktemp("workers") / "in-place"
    patch = pytest.MonkeyPatch()
    seen = _count_decodes(patch)
    try:
        assert extract_main(_argv(sample_paths, out, "asd,visual", "--workers", "1")) == 0
    finally:
        patch.undo()
    return out, seen


def test_the_visual_stage_decodes_no_frames_of_its_own(in_place, tmp_path, sample_paths, decodes):
    out, seen = in_place
    # one decode per dialogue, the asd stage's: the visual stage took the crops it cut
    assert len(seen) == 2 and len(set(seen)) == 2
    assert not list(out.rglob("*.npz"))   # taken, then removed
    # The visual stage alone, after the asd stage's run, decodes each dialogue itself ...
    again = tmp_path / "again"
    shutil.copytree(out, again)
    (again / "features" / "denseface_frame.h5").unlink()
    (again / "features" / "denseface_mean.h5").unlink()
    assert extract_main(_argv(sample_paths, again, "visual")) == 0
    assert len(decodes) == 2
    # ... and computes the same features from its own crops: bit for bit, the same crops
    for name in ("denseface_frame.h5", "denseface_mean.h5"):
        with h5py.File(out / "features" / name) as a, h5py.File(again / "features" / name) as b:
            assert sorted(a) == sorted(b) and len(a) > 0
            for key in a:
                assert a[key][()].tobytes() == b[key][()].tobytes(), key


def test_two_workers_write_the_bytes_one_writes(in_place, tmp_path, sample_paths, decodes):
    out, _ = in_place
    pooled = tmp_path / "pooled"
    assert extract_main(_argv(sample_paths, pooled, "asd,visual", "--workers", "2")) == 0
    assert decodes == []   # every decode ran in a worker process
    assert _outputs(pooled) == _outputs(out)
    config = json.loads((pooled / "run.json").read_text())["config"]["run"]
    assert config["workers"] == 2
    assert json.loads((out / "run.json").read_text())["config"]["run"]["workers"] == 1
    record = json.loads((pooled / "run.json").read_text())
    assert record["versions"]["decoder"].startswith("ffmpeg version ")   # which decoder ran
    assert record["stages"]["asd"]["usage"]["cpu_s"] > 0 and record["stages"]["asd"]["usage"]["cores_busy"] > 0


def test_a_dialogue_that_fails_in_a_worker_is_recorded_and_the_rest_go_on(tmp_path, sample_paths, sample_corpus):
    """A worker's error is its dialogue's failure, as in place; the other dialogue is published."""
    videos = tmp_path / "videos"
    shutil.copytree(sample_paths["videos"], videos)
    (videos / "sampleval01.mp4").write_bytes(b"not a video")
    out = tmp_path / "out"
    argv = _argv(sample_paths, out, "asd", "--workers", "2", "--videos", str(videos))
    assert extract_main(argv) == 1
    failed = [json.loads(line) for line in (out / "failures.jsonl").read_text().splitlines()]
    assert {f["dialogue_id"] for f in failed if f.get("utterance_id") is None} == {"sampleval_1"}
    assert any("sampleval01.mp4" in f["reason"] for f in failed)
    with h5py.File(out / "features" / "speaker_faces.h5") as h5:
        assert any(key.startswith("sampletest_1") for key in h5)


def _children(pid: int) -> list[int]:
    """The live child processes of ``pid`` (from /proc)."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            fields = stat.rsplit(")", 1)[1].split()
            if int(fields[1]) == pid and fields[0] != "Z":
                found.append(int(entry.name))
    return found


def _alive(pid: int) -> bool:
    try:
        return (Path("/proc") / str(pid) / "stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def test_sigterm_stops_the_workers_and_a_rerun_resumes(in_place, tmp_path, sample_paths, models_cache):
    out, _ = in_place
    resumed = tmp_path / "resumed"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "M3ED_CACHE": str(models_cache), "PYTHONPATH": str(REPO),
           "OMP_NUM_THREADS": "1"}
    command = [sys.executable, "-m", "m3ed.pipelines.cli_extract", *_argv(sample_paths, resumed, "asd", "--workers", "2")]
    run = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    while len(_children(run.pid)) < 2 and time.monotonic() < deadline and run.poll() is None:
        time.sleep(0.05)   # the pool's workers (and the resource tracker) have started
    workers = _children(run.pid)
    run.send_signal(signal.SIGTERM)
    _, err = run.communicate(timeout=60)
    assert run.returncode == 143, err[-2000:]
    # No child outlives the run for long: the workers are terminated; multiprocessing's resource
    # tracker, also a child, leaves on its own once the run has closed its pipe.
    deadline = time.monotonic() + 10
    while [pid for pid in workers if _alive(pid)] and time.monotonic() < deadline:
        time.sleep(0.05)
    assert len(workers) >= 2 and not [pid for pid in workers if _alive(pid)]
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    assert (resumed / "features" / "speaker_faces.h5").read_bytes() == (out / "features" / "speaker_faces.h5").read_bytes()
