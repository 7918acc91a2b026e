"""The main job end to end: kill -9 at any moment and resume to identical files; bad videos fail alone."""
import dataclasses
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

from conftest import REPO
from m3ed.corpus import Corpus, utterance_id

pytestmark = pytest.mark.slow   # end to end: real processes, real models
STAGES = "text,audio"


def _copies(corpus: Corpus, videos: Path, copies: int) -> Corpus:
    """``copies`` renamed copies of every sample dialogue, each pointing at its episode file."""
    dialogues = []
    for k in range(copies):
        for d in corpus:
            new_id = f"{d.id}-{k}"
            utterances = tuple(dataclasses.replace(u, id=utterance_id(new_id, i + 1), dialogue_id=new_id)
                               for i, u in enumerate(d.utterances))
            video = next(videos.glob(f"{d.show}{d.episode:02d}.mp4"))
            dialogues.append(dataclasses.replace(d, id=new_id, utterances=utterances, video=str(video)))
    return Corpus(tuple(dialogues))


def _command(corpus_path: Path, out: Path) -> list[str]:
    return [sys.executable, "-m", "m3ed.pipelines.cli_extract", "--annotations", str(corpus_path),
            "--out", str(out), "--stages", STAGES, "--profile", "tiny", "--device", "cpu", "--no-progress"]


def _env(cache: Path) -> dict:
    return {**os.environ, "HF_HUB_OFFLINE": "1", "M3ED_CACHE": str(cache), "PYTHONPATH": str(REPO)}


def _parts(out: Path) -> int:
    return len(list((out / ".parts").rglob("*.h5"))) if (out / ".parts").exists() else 0


@pytest.fixture(scope="module")
def big_corpus(tmp_path_factory, sample_corpus, sample_paths):
    path = tmp_path_factory.mktemp("corpus") / "corpus.jsonl"
    _copies(sample_corpus, sample_paths["videos"], copies=6).to_jsonl(path)   # 18 dialogues: text in one group, audio in two
    return path


def test_killed_run_resumes_to_identical_output(big_corpus, tmp_path, models_cache, published_outputs):
    env = _env(models_cache)
    reference = tmp_path / "reference"
    done = subprocess.run(_command(big_corpus, reference), env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    expected = published_outputs(reference)
    assert {"roberta_frame.h5", "roberta_mean.h5", "wav2vec2_frame.h5", "wav2vec2_mean.h5"} <= set(expected)

    out = tmp_path / "killed"
    kills = 0
    # Kill at an early moment, then each time new finished parts have appeared.
    for attempt in range(6):
        process = subprocess.Popen(_command(big_corpus, out), env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        seen = _parts(out)
        deadline = time.monotonic() + 120
        while process.poll() is None and time.monotonic() < deadline:
            if (attempt == 0 and time.monotonic() > deadline - 118) or _parts(out) > seen:
                os.kill(process.pid, signal.SIGKILL)
                kills += 1
                break
            time.sleep(0.05)
        process.wait()
        if process.returncode == 0:
            break
    assert kills >= 2, "the run finished before it could be interrupted twice"
    final = subprocess.run(_command(big_corpus, out), env=env, capture_output=True, text=True)
    assert final.returncode == 0, final.stderr[-2000:]
    assert published_outputs(out) == expected
    run = json.loads((out / "run.json").read_text())
    assert run["complete"] and not (out / ".parts").exists() or not list((out / ".parts").rglob("*.h5"))


def test_bad_videos_fail_alone(tmp_path, sample_corpus, sample_paths, models_cache):
    videos = tmp_path / "videos"
    videos.mkdir()
    good = sample_corpus["sampletest_1"]
    episode = next(sample_paths["videos"].glob(f"{good.show}{good.episode:02d}.mp4"))
    shutil.copy(episode, videos / "good.mp4")
    (videos / "truncated.mp4").write_bytes(episode.read_bytes()[: episode.stat().st_size // 4])
    subprocess.run([_ffmpeg(), "-v", "error", "-i", str(episode), "-an", "-c:v", "copy", str(videos / "silent.mp4")], check=True)
    dialogues = []
    for name in ("good", "truncated", "silent"):
        new_id = f"{name}_1"
        utterances = tuple(dataclasses.replace(u, id=utterance_id(new_id, i + 1), dialogue_id=new_id)
                           for i, u in enumerate(good.utterances))
        dialogues.append(dataclasses.replace(good, id=new_id, show=name, utterances=utterances,
                                             video=str(videos / f"{name}.mp4")))
    corpus_path = tmp_path / "corpus.jsonl"
    Corpus(tuple(dialogues)).to_jsonl(corpus_path)
    out = tmp_path / "out"
    result = subprocess.run(_command(corpus_path, out), env=_env(models_cache), capture_output=True, text=True)
    assert result.returncode == 1, result.stderr[-2000:]
    assert "2 dialogue(s) failed" in result.stdout
    with h5py.File(out / "features" / "wav2vec2_mean.h5") as h5:
        assert sorted(h5) == [u.id for u in dialogues[0].utterances]
    with h5py.File(out / "features" / "roberta_mean.h5") as h5:     # text needs no video: all three done
        assert len(h5) == 3 * len(good.utterances)
    failures = [json.loads(line) for line in (out / "failures.jsonl").read_text().splitlines()]
    reasons = {(f["feature_set"], f["dialogue_id"]): f["reason"] for f in failures}
    assert "truncated.mp4" in reasons[("wav2vec2_mean", "truncated_1")]
    assert "silent.mp4: has no audio stream" in reasons[("wav2vec2_mean", "silent_1")]
    assert ("wav2vec2_mean", "good_1") not in reasons


def _ffmpeg() -> str:
    from m3ed.media import ffmpeg_exe

    return ffmpeg_exe()


def test_rerun_of_a_finished_run_keeps_everything(tmp_path, sample_corpus, models_cache, published_outputs):
    """A second identical run reuses the published files and keeps the failures already recorded."""
    from m3ed.pipelines.cli import extract_main

    d = sample_corpus["sampleval_1"]
    silent = dataclasses.replace(d.utterances[0], text="  ")           # an utterance with no text
    corpus = Corpus((dataclasses.replace(d, utterances=(silent,) + d.utterances[1:]),))
    corpus_path = tmp_path / "corpus.jsonl"
    corpus.to_jsonl(corpus_path)
    argv = ["--annotations", str(corpus_path), "--out", str(tmp_path / "out"), "--stages", "text",
            "--profile", "tiny", "--device", "cpu", "--no-progress"]
    assert extract_main(argv) == 0
    first = published_outputs(tmp_path / "out")
    assert b"empty text" in first["failures.jsonl"]
    assert extract_main(argv) == 0
    assert published_outputs(tmp_path / "out") == first
    run = json.loads((tmp_path / "out" / "run.json").read_text())
    assert run["stages"]["text"]["reused"] is True
    # A run of another stage keeps the text stage's failures on record.
    assert extract_main(argv[:5] + ["cut"] + argv[6:] + ["--videos", str(REPO / "samples" / "videos")]) == 0
    assert b"empty text" in (tmp_path / "out" / "failures.jsonl").read_bytes()


def test_cut_runs_beside_the_stages_after_it(tmp_path, sample_corpus, models_cache):
    """Followed by other stages, the cut overlaps them and is waited for before the run is recorded."""
    from m3ed.media import probe
    from m3ed.pipelines.cli import extract_main

    d = sample_corpus["sampleval_1"]
    corpus_path = tmp_path / "corpus.jsonl"
    Corpus((d,)).to_jsonl(corpus_path)
    common = ["--annotations", str(corpus_path), "--profile", "tiny", "--device", "cpu", "--no-progress",
              "--videos", str(REPO / "samples" / "videos")]
    assert extract_main(common + ["--out", str(tmp_path / "both"), "--stages", "cut,text"]) == 0
    assert extract_main(common + ["--out", str(tmp_path / "alone"), "--stages", "cut"]) == 0
    both = json.loads((tmp_path / "both" / "run.json").read_text())
    alone = json.loads((tmp_path / "alone" / "run.json").read_text())
    assert list(both["stages"]) == ["cut", "text"]
    assert both["stages"]["cut"]["beside_other_stages"] is True and alone["stages"]["cut"]["beside_other_stages"] is False
    assert both["seconds"] >= max(both["stages"]["text"]["seconds"], both["stages"]["cut"]["seconds"])
    clips = sorted(p.relative_to(tmp_path / "both") for p in (tmp_path / "both" / "clips").rglob("*.*"))
    assert clips == sorted(p.relative_to(tmp_path / "alone") for p in (tmp_path / "alone" / "clips").rglob("*.*"))
    assert len(clips) == 1 + 2 * len(d.utterances)   # the dialogue, and each utterance's .mp4 and .wav
    for utterance in d.utterances:
        clip = tmp_path / "both" / "clips" / "utterances" / d.show / f"{utterance.id}.mp4"
        assert abs(probe(clip).duration - utterance.duration) < 0.1


@pytest.mark.parametrize("stage, hub_id", [("text", "hfl/chinese-roberta-wwm-ext"),
                                           ("audio", "jonatasgrosman/wav2vec2-large-xlsr-53-chinese-zh-cn")])
def test_each_stage_checks_its_model_before_any_work(tmp_path, capfd, monkeypatch, stage, hub_id):
    """The text and audio stages load their models lazily; their preflight finds an unavailable one first."""
    from m3ed.pipelines.cli import extract_main

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    out = tmp_path / "out"
    argv = ["--out", str(out), "--stages", stage, "--profile", "paper", "--device", "cpu", "--no-progress", "--no-report"]
    assert extract_main(argv) == 2
    err = capfd.readouterr().err
    assert hub_id in err and f"--{stage}-model PATH" in err and "Traceback" not in err
    assert not (out / "manifest.jsonl").exists(), "stopped before the run began, not when the stage loaded it"
