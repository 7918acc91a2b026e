"""No silent data loss, one clear error per mistake: each test reproduces a failure users met."""
import dataclasses
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import h5py
import numpy as np
import pytest

from conftest import REPO
from m3ed.corpus import Corpus, utterance_id
from m3ed.files import DiskFull, sweep_temporaries
from m3ed.lock import LockError, OutputLock
from m3ed.media import ffmpeg_exe
from m3ed.pipelines.cli import extract_main, main
from m3ed.store import FeatureStore

try:
    from tests.cli_runs import BASE, failures as _failures, feature_keys as _keys, mounted_tmpfs, with_video as _with_video
    from tests.cli_runs import extract_argv as _argv, write_corpus as _write
except ImportError:  # tests/ itself on sys.path
    from cli_runs import BASE, failures as _failures, feature_keys as _keys, mounted_tmpfs, with_video as _with_video
    from cli_runs import extract_argv as _argv, write_corpus as _write

pytestmark = pytest.mark.usefixtures("one_torch_thread")


# ---- two runs on one OUT -------------------------------------------------------------------------
@pytest.mark.slow
def test_a_second_run_on_the_same_output_stops_at_once_naming_the_first(tmp_path, sample_corpus, sample_paths,
                                                                         models_cache):
    copies = list(_with_video(sample_corpus, sample_paths["videos"]))
    corpus_path = _write(Corpus(tuple(copies)), tmp_path / "corpus.jsonl")
    out = tmp_path / "out"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "M3ED_CACHE": str(models_cache), "PYTHONPATH": str(REPO)}
    command = [sys.executable, "-m", "m3ed.pipelines.cli_extract", *_argv(corpus_path, out, "text,audio")]
    first = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    while not list((out / ".locks").glob("*.json")) and time.monotonic() < deadline and first.poll() is None:
        time.sleep(0.02)
    os.kill(first.pid, signal.SIGSTOP)    # hold the first mid-run while the second starts: a sure overlap
    try:
        second = subprocess.run(command, env=env, capture_output=True, text=True)
    finally:
        os.kill(first.pid, signal.SIGCONT)
    first_out, first_err = first.communicate(timeout=600)
    assert first.returncode == 0, first_err[-2000:]
    assert second.returncode == 2, second.stderr[-2000:]
    assert f"pid {first.pid} on {socket.gethostname()}" in second.stderr and "another run writes it" in second.stderr
    assert "Traceback" not in second.stderr
    # The first run's output is whole.
    expected = sorted(u.id for d in copies for u in d.utterances)
    assert _keys(out, "roberta_mean") == expected == _keys(out, "wav2vec2_mean")


def test_lock_modes(tmp_path):
    with OutputLock(tmp_path):
        with pytest.raises(LockError, match="another run writes it"):
            OutputLock(tmp_path).acquire()
        with pytest.raises(LockError):
            OutputLock(tmp_path, shard="0/2").acquire()
    with OutputLock(tmp_path, shard="0/2"), OutputLock(tmp_path, shard="1/2"):   # shards share
        with pytest.raises(LockError, match="shard 0/2 is already running"):
            OutputLock(tmp_path, shard="0/2").acquire()
        with pytest.raises(LockError, match="another run writes it"):
            OutputLock(tmp_path).acquire()
    OutputLock(tmp_path).acquire().release()   # all released


def test_a_killed_holder_leaves_no_stale_lock(tmp_path):
    code = f"from m3ed.lock import OutputLock; lock = OutputLock({str(tmp_path)!r}).acquire(); import time; time.sleep(60)"
    holder = subprocess.Popen([sys.executable, "-c", code], env={**os.environ, "PYTHONPATH": str(REPO)})
    deadline = time.monotonic() + 60
    while not list((tmp_path / ".locks").glob("*.json")) and time.monotonic() < deadline:
        time.sleep(0.05)
    with pytest.raises(LockError, match=f"pid {holder.pid}"):
        OutputLock(tmp_path).acquire()
    holder.kill()
    holder.wait()
    lock = OutputLock(tmp_path).acquire()      # the kernel released it; the dead holder's file is removed
    assert [h["pid"] for h in lock.holders()] == []
    lock.release()


# ---- --dialogues on an existing output -----------------------------------------------------------
def test_a_subset_run_adds_and_replaces_and_keeps_the_rest(tmp_path, sample_corpus, models_cache):
    corpus_path = _write(sample_corpus, tmp_path / "corpus.jsonl")
    out = tmp_path / "out"
    assert extract_main(_argv(corpus_path, out)) == 0
    everything = _keys(out, "roberta_mean")
    with h5py.File(out / "features" / "roberta_mean.h5") as h5:
        before = {k: h5[k][()] for k in h5}
    # Replace one dialogue's first text, and re-run only that dialogue.
    target = sample_corpus["sampleval_1"]
    changed = dataclasses.replace(target.utterances[0], text=target.utterances[0].text + "啊")
    edited = Corpus(tuple(dataclasses.replace(d, utterances=(changed,) + d.utterances[1:]) if d.id == target.id else d
                          for d in sample_corpus))
    _write(edited, corpus_path)
    assert extract_main(_argv(corpus_path, out, "text", "--dialogues", target.id)) == 0
    assert _keys(out, "roberta_mean") == everything
    with h5py.File(out / "features" / "roberta_mean.h5") as h5:
        for key in everything:
            if not key.startswith(target.id + "_"):
                assert np.array_equal(h5[key][()], before[key]), key          # carried over, untouched
            elif key != changed.id:
                np.testing.assert_allclose(h5[key][()], before[key], atol=1e-4)   # recomputed in another batch
        assert not np.allclose(h5[changed.id][()], before[changed.id], atol=1e-4)
    manifest = Corpus.from_jsonl(out / "manifest.jsonl")
    assert [d.id for d in manifest] == [d.id for d in sample_corpus]
    assert manifest[target.id].utterances[0].text == changed.text


def test_a_subset_run_into_an_output_of_another_configuration_keeps_nothing_stale(tmp_path, sample_corpus, models_cache):
    corpus_path = _write(sample_corpus, tmp_path / "corpus.jsonl")
    out = tmp_path / "out"
    assert extract_main(_argv(corpus_path, out)) == 0
    assert extract_main(_argv(corpus_path, out, "text", "--dialogues", "sampleval_1", "--text-layer", "0")) == 0
    with h5py.File(out / "features" / "roberta_mean.h5") as h5:    # only what this configuration made
        assert sorted(h5) == sorted(u.id for u in sample_corpus["sampleval_1"].utterances)


# ---- bad input fails alone -----------------------------------------------------------------------
def test_an_utterance_past_its_dialogue_is_recorded_not_truncated(tmp_path, sample_corpus, sample_paths, models_cache):
    d = sample_corpus["sampleval_1"]        # 9.72 s long
    late = dataclasses.replace(d.utterances[-1], start=7.36, end=15.0)
    corpus = _with_video(Corpus((dataclasses.replace(d, utterances=d.utterances[:-1] + (late,)),)), sample_paths["videos"])
    corpus_path = _write(corpus, tmp_path / "corpus.jsonl")
    out = tmp_path / "fail"
    assert extract_main(_argv(corpus_path, out, "text,audio")) == 1
    assert late.id not in _keys(out, "wav2vec2_mean") and late.id in _keys(out, "roberta_mean")
    reasons = {(f["feature_set"], f["utterance_id"]): f["reason"] for f in _failures(out)}
    assert "7.36–15.00 s lies partly outside its dialogue (0–9.72 s)" in reasons[("wav2vec2_mean", late.id)]
    clipped = tmp_path / "clip"
    assert extract_main(_argv(corpus_path, clipped, "text,audio", "--overhang", "clip")) == 0
    assert late.id in _keys(clipped, "wav2vec2_mean")
    notes = [json.loads(line) for line in (clipped / "notes.jsonl").read_text().splitlines()]
    assert {(n["feature_set"], n["utterance_id"]) for n in notes} >= {("wav2vec2_mean", late.id)}
    assert "clipped to 7.36–9.72 s" in notes[0]["reason"]
    with h5py.File(clipped / "features" / "wav2vec2_frame.h5") as h5:
        assert late.id in json.loads(h5.attrs["clipped_utterances"])


def test_duplicate_utterance_ids_refuse_their_dialogue_only(tmp_path, sample_corpus, models_cache):
    d = sample_corpus["sampleval_1"]
    twice = dataclasses.replace(d, utterances=d.utterances + (dataclasses.replace(d.utterances[1], start=9.0, end=9.5),))
    corpus_path = _write(Corpus((twice, sample_corpus["sampletest_1"])), tmp_path / "corpus.jsonl")
    out = tmp_path / "out"
    assert extract_main(_argv(corpus_path, out)) == 1
    assert _keys(out, "roberta_mean") == sorted(u.id for u in sample_corpus["sampletest_1"].utterances)
    reason = {f["feature_set"]: f["reason"] for f in _failures(out) if f["dialogue_id"] == d.id}["roberta_mean"]
    assert f"'{d.utterances[1].id}' appears 2 times" in reason and "#2" in reason and "#5" in reason
    assert json.loads((out / "run.json").read_text())["complete"]


def test_csv_rows_with_missing_fields_are_problems(tmp_path, capsys):
    csv = tmp_path / "m.csv"
    csv.write_text("dialogue_id,utterance_id,speaker,start,end,text,emotion,video\n"
                   "d1,d1_1,A,0,1,你好,happy,v.mp4\n"
                   "d1,d1_2,B,1,2\n"                       # a short row: text, emotion, video missing
                   "d2,d2_1,A,0,1,好,neutral,v.mp4\n", encoding="utf-8")
    assert main(["validate", "--annotations", str(csv)]) == 1
    printed = capsys.readouterr()
    assert "m.csv:3: missing value(s) for ['text', 'emotion']" in printed.out
    assert printed.out.count("missing value(s)") == 1 and "missing value" not in printed.err   # printed once


def test_validate_prints_each_problem_once(tmp_path, capsys):
    path = tmp_path / "m.jsonl"
    path.write_text(json.dumps({"dialogue_id": "d", "utterance_id": "d_1", "speaker": "A", "start": 2, "end": 1,
                                "text": "x", "emotion": "happy"}) + "\n", encoding="utf-8")
    assert main(["validate", "--annotations", str(path)]) == 1
    printed = capsys.readouterr()
    assert (printed.out + printed.err).count("is not after start") == 1


def test_timecode_warnings_name_the_relation_file(tmp_path, sample_paths, caplog):
    from m3ed.loaders import load_m3ed

    relation = json.loads(sample_paths["relation"].read_text(encoding="utf-8"))
    show = next(iter(relation))
    dialogue = next(iter(relation[show]))
    relation[show][dialogue]["start_time"] = "00:00:02:30"      # frame field >= 25
    path = tmp_path / "relation_annotation_release.json"
    path.write_text(json.dumps(relation), encoding="utf-8")
    load_m3ed(sample_paths["annotations"], path, sample_paths["splits"])
    warned = [r.getMessage() for r in caplog.records if "frame field" in r.getMessage()]
    assert warned and warned[0].startswith(f"relation_annotation_release.json: {show}/{dialogue} start_time")


# ---- clips -----------------------------------------------------------------------------------------
def _one_dialogue(sample_corpus, video: Path, name: str, **changes) -> Corpus:
    d = sample_corpus["sampletest_1"]
    utterances = tuple(dataclasses.replace(u, id=utterance_id(name, i + 1), dialogue_id=name)
                       for i, u in enumerate(d.utterances))
    return Corpus((dataclasses.replace(d, id=name, show=name, utterances=utterances, video=str(video), **changes),))


def test_clips_of_broken_sources_are_recorded_and_removed(tmp_path, sample_corpus, sample_paths):
    d = sample_corpus["sampletest_1"]
    episode = next(sample_paths["videos"].glob(f"{d.show}{d.episode:02d}.mp4"))
    videos = tmp_path / "videos"
    videos.mkdir()
    (videos / "truncated.mp4").write_bytes(episode.read_bytes()[: episode.stat().st_size * 2 // 5])
    subprocess.run([ffmpeg_exe(), "-v", "error", "-i", str(episode), "-vn", "-c:a", "aac", str(videos / "voice.mp4")],
                   check=True)
    corpus = Corpus(_one_dialogue(sample_corpus, videos / "truncated.mp4", "truncated").dialogues
                    + _one_dialogue(sample_corpus, videos / "voice.mp4", "voice").dialogues)
    empty = dataclasses.replace(corpus.dialogues[1].utterances[0], end=corpus.dialogues[1].utterances[0].start)
    corpus = Corpus((corpus.dialogues[0], dataclasses.replace(corpus.dialogues[1],
                                                              utterances=(empty,) + corpus.dialogues[1].utterances[1:])))
    out = tmp_path / "out"
    code = extract_main(_argv(_write(corpus, tmp_path / "c.jsonl"), out, "cut"))
    assert code == 1
    failures = _failures(out)
    truncated = [f for f in failures if f["dialogue_id"] == "truncated"]
    assert truncated and all("truncated.mp4" in f["reason"] for f in truncated)
    clips = out / "clips"
    for clip in clips.rglob("*.mp4"):   # no broken clip stays
        assert clip.stat().st_size > 1000, clip
    voice = [f for f in failures if f["dialogue_id"] == "voice"]
    assert any(f["utterance_id"] is None and "has no video stream" in f["reason"] for f in voice)
    assert any(f["utterance_id"] == empty.id and "empty time span" in f["reason"] for f in voice)
    assert not list((clips / "utterances" / "voice").glob("*.mp4"))
    assert not (clips / "utterances" / "voice" / f"{empty.id}.wav").exists()
    assert (clips / "utterances" / "voice" / "voice_2.wav").exists()


# ---- leftovers -------------------------------------------------------------------------------------
def test_only_dead_writers_temporaries_are_swept(tmp_path):
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    dead_pid = int(dead.stdout)
    host = socket.gethostname()
    (tmp_path / "features").mkdir()
    files = {
        "dead_new": tmp_path / "features" / f".roberta_mean.{dead_pid}@{host}.tmp.h5",
        "dead_old": tmp_path / ".parts" / "x" / f".d.h5.{dead_pid}.tmp",
        "dead_clip": tmp_path / "clips" / "dialogues" / "s" / f".d.{dead_pid}.tmp.mp4",
        "live": tmp_path / "features" / f".roberta_mean.{os.getpid()}@{host}.tmp.h5",
        "other_host": tmp_path / "features" / f".roberta_mean.{dead_pid}@elsewhere.tmp.h5",
    }
    for path in files.values():
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"x")
    removed = set(sweep_temporaries(tmp_path))
    assert removed == {files["dead_new"], files["dead_old"], files["dead_clip"]}
    assert files["live"].exists() and files["other_host"].exists()


# ---- errors a user can act on ------------------------------------------------------------------------
def test_user_mistakes_give_one_error_line_and_exit_2(tmp_path, capfd, models_cache):
    broken = tmp_path / "broken.json"
    broken.write_text("{not json", encoding="utf-8")
    assert extract_main(_argv(broken, tmp_path / "out")) == 2
    err = capfd.readouterr().err
    assert "error: " in err and "broken.json: not valid JSON" in err and "Traceback" not in err

    csv = tmp_path / "m.csv"
    csv.write_text("dialogue_id,speaker\nd1,A\n", encoding="utf-8")
    assert extract_main(_argv(csv, tmp_path / "out")) == 2
    assert "the header lacks columns" in capfd.readouterr().err

    checkpoint = tmp_path / "asd.model"
    checkpoint.write_bytes(b"not a checkpoint")
    sample_dir = REPO / "samples"
    argv = ["--out", str(tmp_path / "out2"), "--stages", "asd", *BASE, "--dialogues", "sampleval_1",
            "--asd-model", "light-asd", "--asd-checkpoint", str(checkpoint), "--videos", str(sample_dir / "videos")]
    assert extract_main(argv) == 2
    err = capfd.readouterr().err
    assert "asd.model" in err and "Traceback" not in err
    assert not (tmp_path / "out2" / "features").exists()


def test_an_unavailable_model_stops_before_any_work(tmp_path, capfd, sample_corpus, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    corpus_path = _write(sample_corpus, tmp_path / "corpus.jsonl")
    argv = ["--annotations", str(corpus_path), "--out", str(tmp_path / "out"), "--stages", "text,audio",
            "--profile", "paper", "--device", "cpu", "--no-progress", "--no-report"]
    assert extract_main(argv) == 2
    err = capfd.readouterr().err
    assert "hfl/chinese-roberta-wwm-ext" in err and str(tmp_path / "hf") in err and "--text-model PATH" in err
    assert not (tmp_path / "out" / "features").exists()   # nothing published, certainly nothing empty
    assert not (tmp_path / "out" / "failures.jsonl").exists()


def test_debug_shows_the_traceback(tmp_path, capfd):
    broken = tmp_path / "broken.json"
    broken.write_text("[", encoding="utf-8")
    assert extract_main(_argv(broken, tmp_path / "out", "text", "--debug")) == 2
    assert "Traceback" in capfd.readouterr().err


# ---- resources (real small filesystems; need root to mount) --------------------------------------------
@pytest.fixture
def small_disk(tmp_path):
    with mounted_tmpfs(tmp_path / "disk", "2m") as disk:
        yield disk


def test_a_full_disk_stops_the_run_cleanly(small_disk, tmp_path, sample_corpus, sample_paths, capfd, models_cache):
    corpus_path = _write(_with_video(sample_corpus, sample_paths["videos"]), tmp_path / "corpus.jsonl")
    out = small_disk / "out"
    assert extract_main(_argv(corpus_path, out)) == 0       # text fits
    published = (out / "features" / "roberta_mean.h5").read_bytes()
    filler = small_disk / "filler"
    free = shutil.disk_usage(small_disk).free
    filler.write_bytes(b"\0" * max(0, free - 48 * 1024))       # leave 48 KB: the audio stage cannot fit
    capfd.readouterr()
    assert extract_main(_argv(corpus_path, out, "text,audio")) == 4
    err = capfd.readouterr().err
    assert "error: disk full writing" in err and "free at least" in err and "Traceback" not in err
    assert (out / "features" / "roberta_mean.h5").read_bytes() == published   # kept
    leftovers = [p for p in out.rglob(".*tmp*")]
    assert leftovers == []
    filler.unlink()
    assert extract_main(_argv(corpus_path, out, "text,audio")) == 0   # resumes once space is free
    assert _keys(out, "wav2vec2_mean") == sorted(u.id for u in sample_corpus.utterances())


def test_disk_full_in_the_store_leaves_no_partial_file(small_disk):
    store = FeatureStore(small_disk / "out")
    with pytest.raises(DiskFull, match="disk full writing .*d.h5"):
        store.write_part("x", "d", {"d_1": np.ones((1000, 1000))}, config="c")   # 4 MB on a 2 MB disk
    assert list((small_disk / "out").rglob("*.h5*")) == []


def test_a_read_only_output_that_is_up_to_date_is_fine(tmp_path, sample_corpus, capfd, models_cache):
    with mounted_tmpfs(tmp_path / "ro", "20m") as disk:
        corpus_path = _write(sample_corpus, tmp_path / "corpus.jsonl")
        out = disk / "out"
        assert extract_main(_argv(corpus_path, out)) == 0
        subprocess.run(["mount", "-o", "remount,ro", str(disk)], check=True)
        capfd.readouterr()
        assert extract_main(_argv(corpus_path, out)) == 0
        assert "read-only and already up to date" in capfd.readouterr().out
        assert extract_main(_argv(corpus_path, out, "text,audio")) == 2
        err = capfd.readouterr().err
        assert "not writable" in err and "Traceback" not in err

