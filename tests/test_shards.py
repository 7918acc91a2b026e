"""Shards of one run (Slurm arrays, Kubernetes Indexed Jobs) and `m3ed merge`: same output as one run."""
import dataclasses
import os
import subprocess
import sys

import pytest

from conftest import REPO
from m3ed.corpus import Corpus, utterance_id
from m3ed.errors import ConfigurationError
from m3ed.pipelines.cli import extract_main, main
from m3ed.pipelines.shard import Shard, shard_from

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("same_threads_as_the_workers")]


def _corpus(sample_corpus, videos, copies=2) -> Corpus:
    dialogues = []
    for k in range(copies):
        for d in sample_corpus:
            new = f"{d.id}-{k}"
            dialogues.append(dataclasses.replace(
                d, id=new, video=str(next(videos.glob(f"{d.show}{d.episode:02d}.mp4"))),
                utterances=tuple(dataclasses.replace(u, id=utterance_id(new, i + 1), dialogue_id=new)
                                 for i, u in enumerate(d.utterances))))
    return Corpus(tuple(dialogues))


def test_split_is_deterministic_balanced_and_complete(sample_corpus, sample_paths):
    corpus = _corpus(sample_corpus, sample_paths["videos"], copies=3)
    owner = Shard.assignment(corpus, 3)
    assert owner == Shard.assignment(Corpus(tuple(corpus.dialogues)), 3)
    totals = [sum(d.duration for d in corpus if owner[d.id] == i) for i in range(3)]
    assert max(totals) - min(totals) <= max(d.duration for d in corpus)
    chosen = [d.id for i in range(3) for d in Shard(i, 3).select(corpus)]
    assert sorted(chosen) == sorted(d.id for d in corpus)


def test_shard_from_options_and_environments():
    assert shard_from("1/4", None, {}) == Shard(1, 4)
    assert shard_from(None, None, {"SLURM_ARRAY_TASK_ID": "3", "SLURM_ARRAY_TASK_COUNT": "4"}) == Shard(3, 4)
    assert shard_from(None, None, {"SLURM_ARRAY_TASK_ID": "5", "SLURM_ARRAY_TASK_COUNT": "4",
                                   "SLURM_ARRAY_TASK_MIN": "2"}) == Shard(3, 4)
    assert shard_from(None, 8, {"JOB_COMPLETION_INDEX": "7"}) == Shard(7, 8)
    assert shard_from(None, None, {}) is None
    for bad, shards, env in (("4/4", None, {}), ("x", None, {}), (None, 8, {})):
        with pytest.raises(ConfigurationError):
            shard_from(bad, shards, env)


def test_three_shards_then_merge_equal_one_run(tmp_path, sample_corpus, sample_paths, models_cache, capsys,
                                                published_outputs):
    corpus_path = tmp_path / "corpus.jsonl"
    # 36 dialogues: two text groups (32 dialogues each) and three audio groups (16) to share among 3 shards.
    _corpus(sample_corpus, sample_paths["videos"], copies=12).to_jsonl(corpus_path)
    # The same command and threads in every process: the same computation, so the same bytes.
    base = ["--annotations", str(corpus_path), "--stages", "text,audio", "--profile", "tiny", "--device", "cpu",
            "--threads", "1", "--no-progress", "--no-report"]
    assert extract_main(base + ["--out", str(tmp_path / "one")]) == 0
    sharded = tmp_path / "sharded"
    assert extract_main(base + ["--out", str(sharded), "--shard", "0/3"]) == 0
    assert not (sharded / "features").exists()                       # shards never publish
    assert main(["merge", str(sharded), "--no-report"]) == 2           # shards 1 and 2 are missing
    err = capsys.readouterr().err
    assert "shard 1/3 (not finished)" in err and "shard 2/3 (not finished)" in err
    # Two shards at once, as two real processes on one OUT.
    # One thread, as in this process: the same kernels, so the same bytes.
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "M3ED_CACHE": str(models_cache), "PYTHONPATH": str(REPO),
           "OMP_NUM_THREADS": "1"}
    command = [sys.executable, "-m", "m3ed.pipelines.cli_extract", *base, "--out", str(sharded)]
    running = [subprocess.Popen(command + ["--shard", f"{i}/3"], env=env, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True) for i in (1, 2)]
    for process in running:
        _, err = process.communicate(timeout=900)
        assert process.returncode == 0, err[-2000:]
    assert main(["merge", str(sharded), "--no-report"]) == 0
    assert published_outputs(sharded) == published_outputs(tmp_path / "one")


def test_merge_refuses_shards_of_different_configurations(tmp_path, sample_corpus, sample_paths, models_cache, capsys):
    corpus_path = tmp_path / "corpus.jsonl"
    _corpus(sample_corpus, sample_paths["videos"], copies=1).to_jsonl(corpus_path)
    base = ["--annotations", str(corpus_path), "--stages", "text", "--profile", "tiny", "--device", "cpu",
            "--no-progress", "--no-report", "--out", str(tmp_path / "out")]
    assert extract_main(base + ["--shard", "0/2"]) == 0
    assert extract_main(base + ["--shard", "1/2", "--text-layer", "0"]) == 0
    assert main(["merge", str(tmp_path / "out"), "--no-report"]) == 2
    assert "different configurations" in capsys.readouterr().err


def test_a_shard_runs_the_visual_stage_on_its_own_speaker_faces(tmp_path, sample_corpus, sample_paths, models_cache,
                                                                  published_outputs):
    """Every stage in one shard command (the deploy scripts' way): the visual stage reads the speaker
    faces its shard's asd stage left unpublished, and the merge equals one run."""
    corpus_path = tmp_path / "corpus.jsonl"
    short = [d for d in _corpus(sample_corpus, sample_paths["videos"], copies=1) if d.duration < 20]
    assert len(short) == 2
    Corpus(tuple(short)).to_jsonl(corpus_path)
    base = ["--annotations", str(corpus_path), "--stages", "asd,visual", "--profile", "tiny", "--device", "cpu",
            "--asd-model", "light-asd", "--no-progress", "--no-report"]
    assert extract_main(base + ["--out", str(tmp_path / "one")]) == 0
    sharded = tmp_path / "sharded"
    for i in range(2):
        assert extract_main(base + ["--out", str(sharded), "--shard", f"{i}/2"]) == 0
    assert main(["merge", str(sharded), "--no-report"]) == 0
    outputs = published_outputs(sharded)
    assert {"speaker_faces.h5", "denseface_frame.h5", "denseface_mean.h5"} <= outputs.keys()
    assert outputs == published_outputs(tmp_path / "one")
