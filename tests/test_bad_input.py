"""Bad input as a new user gives it: each case is refused alone, before any work, with its place named."""
import csv
import dataclasses
import io
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from conftest import REPO
from m3ed.corpus import Corpus
from m3ed.loaders import load_manifest
from m3ed.pipelines.cli import extract_main, main
from m3ed.screening import refused_dialogues

try:
    from tests.cli_runs import failures as _failures, feature_keys as _keys, mounted_tmpfs, with_video as _with_video
    from tests.cli_runs import extract_argv as _argv, write_corpus as _write
except ImportError:  # tests/ itself on sys.path
    from cli_runs import failures as _failures, feature_keys as _keys, mounted_tmpfs, with_video as _with_video
    from cli_runs import extract_argv as _argv, write_corpus as _write

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture
def manifest_rows(sample_paths) -> list[dict]:
    """The bundled CSV manifest's rows, their videos given by absolute path (the file moves to tmp_path)."""
    with open(sample_paths["manifest"], encoding="utf-8", newline="") as f:
        rows = list(csv.DictReader(f))
    for row in rows:
        row["video"] = str((sample_paths["manifest"].parent / row["video"]).resolve())
    return rows


def _csv(rows: list[dict], path: Path) -> Path:
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=list(rows[0]), lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    path.write_text(out.getvalue(), encoding="utf-8")
    return path


def _jsonl(rows: list, path: Path) -> Path:
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    return path


def _release(sample_paths, tmp_path: Path, change=None, name: str = "annotation.json") -> Path:
    data = json.loads(sample_paths["annotations"].read_text(encoding="utf-8"))
    if change:
        data = change(data) or data
    path = tmp_path / name
    path.write_text(json.dumps(data, ensure_ascii=False), encoding="utf-8")
    return path


def _damage_line(path: Path, line: int, damage) -> Path:
    lines = path.read_text(encoding="utf-8").split("\n")
    lines[line - 1] = damage(lines[line - 1])
    path.write_text("\n".join(lines), encoding="utf-8")
    return path


# ---- silent wrong: an unterminated quote in a CSV manifest ------------------------------------------
def test_an_unterminated_quote_in_the_last_column_is_refused_naming_the_line(tmp_path, manifest_rows, capsys):
    path = _damage_line(_csv(manifest_rows, tmp_path / "m.csv"), 2, lambda text: text.rsplit(",", 1)[0] + ',"林晓雨')
    assert main(["validate", "--annotations", str(path)]) == 1
    assert "m.csv:2: a field runs over lines 2–19" in capsys.readouterr().out
    out = tmp_path / "out"
    assert extract_main(_argv(path, out)) == 2
    err = capsys.readouterr().err
    assert "m.csv: 1 row(s) cannot be read" in err and "m.csv:2: a field runs over lines" in err
    assert not out.exists()   # before any work


def test_an_unterminated_quote_mid_row_is_blamed_on_its_own_line(tmp_path, manifest_rows, capsys):
    path = _damage_line(_csv(manifest_rows, tmp_path / "m.csv"), 4, lambda text: text.replace(",你又", ',"你又'))
    assert main(["validate", "--annotations", str(path)]) == 1
    printed = capsys.readouterr().out
    assert "m.csv:4: a field runs over lines 4–19" in printed and "missing value" not in printed


def test_an_overlong_field_refuses_its_dialogue(tmp_path, manifest_rows):
    manifest_rows[10]["text"] = "啊" * 20_000
    corpus = load_manifest(_csv(manifest_rows, tmp_path / "m.csv"))
    assert "m.csv:12: text (20000 characters) longer than any sane value" in refused_dialogues(corpus)["sampleval_1"]


# ---- crashes: refused per dialogue, or before any work -----------------------------------------------
def test_a_slash_in_an_utterance_id_refuses_its_dialogue_only(tmp_path, sample_corpus, models_cache):
    d = sample_corpus["sampleval_1"]
    slashed = dataclasses.replace(d, utterances=(dataclasses.replace(d.utterances[0], id="sampleval_1/1"),)
                                  + d.utterances[1:])
    path = _write(Corpus((sample_corpus["sampleshow_1"], slashed, sample_corpus["sampletest_1"])), tmp_path / "c.jsonl")
    out = tmp_path / "out"
    assert extract_main(_argv(path, out)) == 1
    others = sorted(u.id for name in ("sampleshow_1", "sampletest_1") for u in sample_corpus[name].utterances)
    assert _keys(out, "roberta_mean") == others
    reason = next(f["reason"] for f in _failures(out) if f["dialogue_id"] == "sampleval_1")
    assert "c.jsonl:2: utterance id 'sampleval_1/1' cannot be a feature-file key" in reason


def _dialog_list(data):
    data["sampleval"]["sampleval_1"]["Dialog"] = [1]


def _speakers_list(data):
    data["sampleval"]["sampleval_1"]["SpeakerInfo"] = ["A", "B"]


def _utterance_list(data):
    data["sampleval"]["sampleval_1"]["Dialog"]["sampleval_1_2"] = ["00:00:01:00"]


def _emotions_list(data):
    data["sampleval"]["sampleval_1"]["Dialog"]["sampleval_1_2"]["EmoAnnotation"] = ["Happy"]


@pytest.mark.parametrize("change, where, what", [
    (_dialog_list, "sampleval/sampleval_1", "'Dialog' a list"),
    (_speakers_list, "sampleval/sampleval_1", "'SpeakerInfo' is a list"),
    (_utterance_list, "sampleval/sampleval_1/sampleval_1_2", "is a list"),
    (_emotions_list, "sampleval/sampleval_1/sampleval_1_2", "'EmoAnnotation' is a list"),
])
def test_a_release_record_of_the_wrong_shape_is_named(tmp_path, sample_paths, capsys, change, where, what):
    path = _release(sample_paths, tmp_path, change)
    assert main(["validate", "--annotations", str(path), "--relation", str(sample_paths["relation"])]) == 1
    problems = [line for line in capsys.readouterr().out.splitlines() if line.startswith("  ")]
    assert len(problems) == 1 and f"annotation.json: {where}" in problems[0] and what in problems[0]


def test_a_release_dialogue_of_the_wrong_shape_fails_alone(tmp_path, sample_paths, sample_corpus, models_cache):
    path = _release(sample_paths, tmp_path, _utterance_list)
    out = tmp_path / "out"
    argv = _argv(path, out, "text", "--relation", str(sample_paths["relation"]), "--splits", str(sample_paths["splits"]))
    assert extract_main(argv) == 1
    assert _keys(out, "roberta_mean") == sorted(u.id for d in sample_corpus if d.id != "sampleval_1" for u in d.utterances)
    assert {f["dialogue_id"] for f in _failures(out)} == {"sampleval_1"}


def test_files_of_the_wrong_shape_stop_before_any_work(tmp_path, sample_paths, manifest_rows, capsys):
    top = tmp_path / "top.json"
    top.write_text("[]", encoding="utf-8")
    assert extract_main(_argv(top, tmp_path / "out")) == 2
    assert "top.json: the top level is a list" in capsys.readouterr().err
    shows = _release(sample_paths, tmp_path, lambda data: {**data, "sampleval": [1, 2]})
    assert extract_main(_argv(shows, tmp_path / "out")) == 2
    assert "annotation.json: show 'sampleval' is a list" in capsys.readouterr().err
    rows = _jsonl([manifest_rows[0], ["not", "a", "row"]], tmp_path / "m.jsonl")
    assert extract_main(_argv(rows, tmp_path / "out")) == 2
    assert "m.jsonl:2: is a list; expected a JSON object" in capsys.readouterr().err
    assert main(["validate", "--fps", "0"]) == 2
    assert extract_main(_argv(top, tmp_path / "out", "text", "--fps", "0")) == 2
    err = capsys.readouterr().err
    assert err.count("--fps 0.0: the frame rate must be a positive number") == 2 and "internal error" not in err
    assert not (tmp_path / "out").exists()


# ---- every dialogue's media unusable ------------------------------------------------------------------
def test_when_no_dialogue_has_usable_media_each_fails_with_its_reason(tmp_path, sample_corpus, models_cache):
    missing = Corpus(tuple(dataclasses.replace(d, video=str(tmp_path / f"{d.id}.mp4")) for d in sample_corpus))
    out = tmp_path / "out"
    assert extract_main(_argv(_write(missing, tmp_path / "c.jsonl"), out, "text,asd,visual")) == 1
    failures = _failures(out)
    for feature_set in ("speaker_faces", "denseface_mean"):
        failed = {f["dialogue_id"]: f["reason"] for f in failures if f["feature_set"] == feature_set}
        assert sorted(failed) == sorted(d.id for d in sample_corpus)
        assert all("no video found" in reason for reason in failed.values())
    assert _keys(out, "roberta_mean") == sorted(u.id for u in sample_corpus.utterances())


# ---- configuration errors found before any work ----------------------------------------------------------
@pytest.mark.parametrize("extra, message", [
    (("--device", "cuda"), "--device cuda: CUDA is not available on this machine"),
    (("--device", "cuda:7"), "--device cuda:7: "),
    (("--text-layer", "99"), "--text-layer 99: "),
    (("--stages", ""), "--stages names no stage"),
    (("--shards", "0"), "--shards 0: the number of shards must be at least 1"),
])
def test_configuration_mistakes_stop_before_any_work(tmp_path, sample_corpus, capfd, models_cache, extra, message):
    if extra[0] == "--device" and torch.cuda.is_available() and torch.cuda.device_count() > (7 if ":" in extra[1] else 0):
        pytest.skip("this machine has the device")
    out = tmp_path / "out"
    assert extract_main(_argv(_write(sample_corpus, tmp_path / "c.jsonl"), out, "text") + list(extra)) == 2
    err = capfd.readouterr().err
    assert message in err and "internal error" not in err
    assert not (out / "features").exists() and not (out / "failures.jsonl").exists()


# ---- NaN and inf -------------------------------------------------------------------------------------------
def test_non_finite_times_are_refused_at_load_and_by_validate(tmp_path, manifest_rows, capfd, models_cache):
    manifest_rows[11]["start"] = "nan"
    manifest_rows[12]["end"] = "inf"
    path = _jsonl(manifest_rows, tmp_path / "m.jsonl")
    assert main(["validate", "--annotations", str(path)]) == 1
    printed = capfd.readouterr().out
    assert "m.jsonl:12: start 'nan' is not a finite number of seconds" in printed
    assert "m.jsonl:13: end 'inf' is not a finite number of seconds" in printed
    out = tmp_path / "out"
    assert extract_main(_argv(path, out, "text,audio")) == 1
    failed = [f for f in _failures(out) if f["feature_set"] == "wav2vec2_mean"]
    assert [f["dialogue_id"] for f in failed] == ["sampleval_1"] and "not a finite number" in failed[0]["reason"]
    assert "cannot convert" not in (out / "failures.jsonl").read_text()
    assert len(_keys(out, "wav2vec2_mean")) == len(manifest_rows) - 4   # the other dialogues


def test_non_finite_release_times_are_named(tmp_path, sample_paths, capsys):
    def nan_start(data):
        data["sampleval"]["sampleval_1"]["Dialog"]["sampleval_1_3"]["StartTime"] = float("nan")

    path = _release(sample_paths, tmp_path, nan_start)
    assert main(["validate", "--annotations", str(path)]) == 1
    assert "sampleval/sampleval_1/sampleval_1_3 StartTime: nan is not a finite number" in capsys.readouterr().out


# ---- full disk, leftovers ---------------------------------------------------------------------------------------
def test_a_full_disk_at_the_start_is_out_of_resources(tmp_path, sample_corpus, capfd, models_cache):
    with mounted_tmpfs(tmp_path / "disk", "1m") as disk:
        filler = disk / "filler"
        with open(filler, "wb") as f:   # fill it to the last byte
            try:
                while True:
                    f.write(b"\0" * 65536)
                    f.flush()
            except OSError:
                pass
        out = disk / "out"
        assert extract_main(_argv(_write(sample_corpus, tmp_path / "c.jsonl"), out)) == 4
        err = capfd.readouterr().err
        assert "error: disk full writing" in err and "Traceback" not in err
        assert list((out / ".locks").glob("*.json")) == []   # no empty holder file left


def test_a_later_merge_sweeps_what_a_killed_merge_left(tmp_path, sample_corpus, models_cache, same_threads_as_the_workers):
    path = _write(sample_corpus, tmp_path / "c.jsonl")
    out = tmp_path / "out"
    for index in range(2):
        assert extract_main(_argv(path, out, "text", "--shard", f"{index}/2")) == 0
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    leftover = out / "features" / f".roberta_mean.{int(dead.stdout)}@{socket.gethostname()}.tmp.h5"
    leftover.parent.mkdir(parents=True, exist_ok=True)
    leftover.write_bytes(b"half an HDF5 file")   # what `m3ed merge`, killed while publishing, leaves
    assert main(["merge", str(out), "--no-report"]) == 0
    assert not leftover.exists()
    assert _keys(out, "roberta_mean") == sorted(u.id for u in sample_corpus.utterances())


# ---- validate reports everything ----------------------------------------------------------------------------------
def test_validate_reports_every_planted_problem(tmp_path, manifest_rows, capsys):
    rows = [dict(r) for r in manifest_rows]
    rows[1]["start"] = "abc"                                    # 1 not a number (line 3)
    rows[2]["end"] = "0.1"                                      # 2 end before start (line 4)
    rows[3]["emotion"] = "joy"                                  # 3 unknown label
    rows[4]["utterance_id"] = rows[5]["utterance_id"]           # 4 duplicate id
    rows[6]["utterance_id"] = "sampleshow_1/7"                  # 5 '/' in the id
    rows[7]["speaker"] = ""                                     # 6 empty speaker (line 9)
    rows[10]["video_start"] = "2,6"                             # 7 not a number (line 12), and 8: a field too many
    rows[11]["start"] = "nan"                                   # 9 not finite (line 13)
    rows[14]["split"] = "training"                              # 10 not a split
    for row in rows[14:]:
        row["video"] = str(tmp_path / "gone.mp4")               # 11 the video is missing
    path = _csv(rows, tmp_path / "m.csv")
    _damage_line(path, 12, lambda text: text.replace('"2,6"', "2,6"))
    _damage_line(path, 2, lambda text: ",".join(text.split(",")[:5]))   # 12 a short row: missing values (line 2)
    assert main(["validate", "--annotations", str(path)]) == 1
    printed = capsys.readouterr().out
    expected = ["m.csv:2: missing value(s) for ['text', 'emotion']", "m.csv:3: start 'abc' is not a number",
                "sampleshow_1_3: end 0.10 s",
                "unknown emotion label(s) ['joy']", "sampleshow_1_6: utterance id appears 2 times",
                "utterance id 'sampleshow_1/7' cannot be a feature-file key", "m.csv:9: the speaker is empty",
                "m.csv:12: 14 fields, but the header has 13", "m.csv:13: start 'nan' is not a finite number",
                "split 'training' is not one of", "sampletest_1: no video found: tried", "gone.mp4"]
    missing = [e for e in expected if e not in printed]
    assert not missing, printed


def test_validate_reports_every_bad_timecode_and_missing_video(tmp_path, sample_paths, capsys):
    def bad_times(data):
        dialog = data["sampleval"]["sampleval_1"]["Dialog"]
        dialog["sampleval_1_1"]["StartTime"] = "bad"
        dialog["sampleval_1_2"]["EndTime"] = "00:00:0x:00"
        dialog["sampleval_1_4"]["StartTime"] = "1:2"

    path = _release(sample_paths, tmp_path, bad_times)
    videos = tmp_path / "videos"
    videos.mkdir()
    argv = ["validate", "--annotations", str(path), "--relation", str(sample_paths["relation"]), "--videos", str(videos)]
    assert main(argv) == 1
    printed = capsys.readouterr().out
    for utterance, field in (("sampleval_1_1", "StartTime"), ("sampleval_1_2", "EndTime"), ("sampleval_1_4", "StartTime")):
        assert f"sampleval/sampleval_1/{utterance} {field}:" in printed
    assert printed.count("no video found: tried") == 3 and "videos/sampleshow03.{mp4,mkv" in printed
    assert main(["validate", "--annotations", str(path), "--videos", str(tmp_path / "nowhere")]) == 2


# ---- error lines name the file and the row ---------------------------------------------------------------------------
def test_error_lines_name_the_file_and_the_row(tmp_path, sample_paths, manifest_rows, capsys):
    manifest_rows[10]["video_start"] = "two"
    assert main(["validate", "--annotations", str(_jsonl(manifest_rows, tmp_path / "m.jsonl"))]) == 1
    assert "sampleval_1: m.jsonl:11: video_start 'two' is not a number of seconds" in capsys.readouterr().out

    gbk = tmp_path / "gbk" / "annotation.json"
    gbk.parent.mkdir()
    gbk.write_bytes(sample_paths["annotations"].read_text(encoding="utf-8").encode("gbk"))
    assert extract_main(_argv(gbk, tmp_path / "out")) == 2
    assert f"{gbk}: not UTF-8 text" in capsys.readouterr().err

    relation = json.loads(sample_paths["relation"].read_text(encoding="utf-8"))
    del relation["sampleval"]["sampleval_1"]["start_time"]
    relation["sampletest"]["sampletest_1"]["episode"] = "twelve"
    relation_path = tmp_path / "relation.json"
    relation_path.write_text(json.dumps(relation), encoding="utf-8")
    assert main(["validate", "--annotations", str(sample_paths["annotations"]), "--relation", str(relation_path)]) == 1
    printed = capsys.readouterr().out
    assert "relation.json: sampleval/sampleval_1: missing field 'start_time'" in printed
    assert "relation.json: sampletest/sampletest_1: episode 'twelve' is not a whole number" in printed

    broken = tmp_path / "broken.jsonl"
    broken.write_text(json.dumps(manifest_rows[0], ensure_ascii=False) + "\n\n{broken\n", encoding="utf-8")
    assert extract_main(_argv(broken, tmp_path / "out")) == 2
    assert "broken.jsonl:3: not valid JSON" in capsys.readouterr().err


# ---- minor ------------------------------------------------------------------------------------------------------------
def test_sigterm_ends_the_run_with_a_message(tmp_path, sample_corpus, sample_paths, models_cache):
    path = _write(_with_video(sample_corpus, sample_paths["videos"]), tmp_path / "c.jsonl")
    out = tmp_path / "out"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "M3ED_CACHE": str(models_cache), "PYTHONPATH": str(REPO)}
    run = subprocess.Popen([sys.executable, "-m", "m3ed.pipelines.cli_extract", *_argv(path, out, "text,audio")],
                           env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    while not list((out / ".locks").glob("*.json")) and time.monotonic() < deadline and run.poll() is None:
        time.sleep(0.02)
    run.send_signal(signal.SIGTERM)
    _, err = run.communicate(timeout=120)
    assert run.returncode == 143, err[-2000:]
    assert "terminated (SIGTERM); re-run the same command to resume" in err and "Traceback" not in err
    assert list((out / ".locks").glob("*.json")) == []


def test_an_empty_speaker_refuses_its_dialogue(tmp_path, manifest_rows):
    manifest_rows[11]["speaker"] = " "
    corpus = load_manifest(_csv(manifest_rows, tmp_path / "m.csv"))
    assert "m.csv:13: the speaker is empty" in refused_dialogues(corpus)["sampleval_1"]
    assert set(refused_dialogues(corpus)) == {"sampleval_1"}


def test_built_models_are_readable_by_other_users(tmp_path, monkeypatch):
    from m3ed.extract.hf_models import local_model_dir
    from m3ed.profiles import get_profile

    monkeypatch.setenv("M3ED_CACHE", str(tmp_path / "cache"))
    previous = os.umask(0o022)
    try:
        built = local_model_dir(get_profile("tiny"), "text")
    finally:
        os.umask(previous)
    assert (built / "model.safetensors").exists()
    for item in (built, *built.rglob("*")):
        wanted = 0o055 if item.is_dir() else 0o044
        assert item.stat().st_mode & wanted == wanted, f"{item}: {oct(item.stat().st_mode)}"
