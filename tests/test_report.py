"""``m3ed report`` on a real run of the sample (tiny profile, shipped Light-ASD, one dialogue, the
text, audio, asd and visual stages): every number of report.json is recomputed here from the
feature files, run.json, manifest.jsonl, failures.jsonl and OUT/asd/*.json with h5py and numpy;
the HTML is self-contained and headless Chromium shows it without console errors, with the
per-stage table and its images decoded."""
from __future__ import annotations

import base64
import io
import json
import re
import shutil
import subprocess
from collections import Counter
from pathlib import Path

import h5py
import numpy as np
import pytest
from PIL import Image

from m3ed.asd.assign import COLUMNS, RULE_NAMES
from m3ed.pipelines.cli import main

pytestmark = pytest.mark.usefixtures("one_torch_thread")
DIALOGUE = "sampleval_1"
STAGES = ("text", "audio", "asd", "visual")
CHROMIUM_NAMES = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")


@pytest.fixture(scope="module")
def run_out(tmp_path_factory, models_cache):
    out = tmp_path_factory.mktemp("report-run")
    code = main(["extract", "--stages", ",".join(STAGES), "--profile", "tiny", "--device", "cpu", "--no-progress",
                 "--asd-model", "light-asd", "--dialogues", DIALOGUE, "--out", str(out),
                 "--detect-every", "5", "--detect-height", "144", "--embed-every", "25"])
    assert code == 0
    return out


@pytest.fixture(scope="module")
def report(run_out):
    assert main(["report", str(run_out)]) == 0
    html = (run_out / "report.html").read_text(encoding="utf-8")
    return json.loads((run_out / "report.json").read_text(encoding="utf-8")), html


def _manifest(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "manifest.jsonl").read_text(encoding="utf-8").splitlines() if line]


def _failures(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "failures.jsonl").read_text(encoding="utf-8").splitlines() if line]


def _utterance_ids(out: Path) -> list[str]:
    return [u["id"] for d in _manifest(out) for u in d["utterances"]]


def test_feature_numbers_match_the_files(run_out, report):
    data, _ = report
    files = sorted((run_out / "features").glob("*.h5"))
    expected = {"roberta_mean", "wav2vec2_frame", "speaker_faces", "denseface_mean"}
    assert {p.stem for p in files} == set(data["features"]) >= expected
    ids = _utterance_ids(run_out)
    failures = _failures(run_out)
    for path in files:
        got = data["features"][path.stem]
        with h5py.File(path, "r") as h5:
            arrays = {k: h5[k][()] for k in h5.keys()}
            dim = int(h5.attrs["dim"])
        values = np.concatenate([a.ravel() for a in arrays.values()]).astype(np.float64)
        finite = values[np.isfinite(values)]
        missing = [u for u in ids if u not in arrays]
        assert got["dim"] == dim and got["keys"] == len(arrays) and got["utterances"] == len(ids)
        assert got["covered"] == len(ids) - len(missing) and got["missing"] == len(missing)
        explained = {f["utterance_id"] for f in failures if f["feature_set"] == path.stem}
        assert sum(got["missing_reasons"].values()) == len(missing)
        assert got["missing_reasons"].get("no failure recorded", 0) == len(set(missing) - explained)
        v = got["values"]
        assert (v["values"], v["nan"], v["inf"]) == (values.size, int(np.isnan(values).sum()), int(np.isinf(values).sum()))
        assert v["min"] == pytest.approx(finite.min()) and v["max"] == pytest.approx(finite.max())
        assert v["mean"] == pytest.approx(finite.mean(), rel=1e-9, abs=1e-9)
        assert v["std"] == pytest.approx(finite.std(), rel=1e-9)
        frame_level = next(iter(arrays.values())).ndim == 2
        assert got["level"] == ("frame" if frame_level else "utterance")
        if frame_level:
            assert got["frames"]["total"] == sum(len(a) for a in arrays.values())
        else:
            assert got["pca"]["utterances"] == len(arrays)


def test_asd_numbers_match_speaker_faces_and_tracks(run_out, report):
    data, _ = report
    asd = data["asd"]
    with h5py.File(run_out / "features" / "speaker_faces.h5", "r") as h5:
        stages = np.concatenate([h5[k][()][:, COLUMNS.index("stage")] for k in h5.keys()])
        tracks_chosen = np.concatenate([h5[k][()][:, COLUMNS.index("track")] for k in h5.keys()])
    counts = {name: int((stages == code).sum()) for code, name in RULE_NAMES.items()}
    assert asd["frames"] == len(stages) and asd["by_stage"] == counts
    assert asd["share_with_face"] == pytest.approx(float((tracks_chosen >= 0).mean()), abs=1e-4)
    assert asd["dialogues"][DIALOGUE]["by_stage"] == counts
    tracks = json.loads((run_out / "asd" / f"{DIALOGUE}.json").read_text(encoding="utf-8"))["tracks"]
    scores = [p for t in tracks for p in t["asd_prob"] if p is not None]
    histogram = asd["score_histogram"]
    assert histogram["scores"] == len(scores)
    assert histogram["counts"] == np.histogram(scores, bins=np.linspace(0, 1, 21))[0].tolist()


def test_run_corpus_and_failure_numbers_match_their_files(run_out, report):
    data, _ = report
    record = json.loads((run_out / "run.json").read_text(encoding="utf-8"))
    stages = {s["stage"]: s for s in data["run"]["stages"]}
    assert list(stages) == list(record["stages"]) == list(STAGES)
    dialogues = _manifest(run_out)
    media = sum(d["end"] - d["start"] for d in dialogues)
    utterances = sum(len(d["utterances"]) for d in dialogues)
    assert data["run"]["total_seconds"] == record["seconds"]   # the run's wall time, not a sum
    for name, stage in stages.items():
        seconds = record["stages"][name]["seconds"]
        assert stage["seconds"] == seconds
        assert stage["real_time_factor"] == pytest.approx(seconds / media, abs=1e-4)
        assert stage["utterances_per_second"] == pytest.approx(utterances / seconds, abs=1e-3)
    assert data["run"]["config"] == record["config"] and data["run"]["versions"] == record["versions"]
    emotions = Counter(u["emotion"] for d in dialogues for u in d["utterances"])
    assert {e: n for e, n in data["corpus"]["total"]["emotions"].items() if n} == dict(emotions)
    assert data["corpus"]["total"]["utterances"] == utterances and data["corpus"]["total"]["dialogues"] == 1
    failures = _failures(run_out)
    assert sum(g["count"] for g in data["failures"]) == len(failures)
    reasons = Counter(f["reason"].splitlines()[0] for f in failures)
    assert {g["reason"]: g["count"] for g in data["failures"]} == dict(reasons)


def test_html_is_self_contained_with_stage_table_and_images(run_out, report):
    data, html = report
    assert not re.search(r"""(src|href)\s*=\s*["']?(https?:|//)""", html) and "<script" not in html
    table = re.search(r'<table id="stages">(.*?)</table>', html, re.S)
    assert table and all(f'<td class="l">{s}</td>' in table.group(1) for s in STAGES)
    images = re.findall(r'<img src="data:image/png;base64,([A-Za-z0-9+/=]+)"', html)
    assert len(images) >= 5
    for encoded in images:
        with Image.open(io.BytesIO(base64.b64decode(encoded))) as image:
            image.verify()
    if not data["cjk_font"]:
        assert "No font covering Chinese was found" in html


def _chromium() -> str:
    for name in CHROMIUM_NAMES:
        if shutil.which(name):
            return shutil.which(name)
    pytest.skip("headless Chromium is not installed (Debian: apt-get install chromium; .ci/run installs it when it can)")


def _chromium_run(binary: str, page: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([binary, "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                           "--enable-logging=stderr", "--v=0", "--virtual-time-budget=5000", *args, page.as_uri()],
                          capture_output=True, text=True, timeout=120)


def _console(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if ":CONSOLE" in line or "Uncaught" in line]


def test_chromium_shows_the_report_without_console_errors(run_out, report, tmp_path):
    binary = _chromium()
    # The console check must be able to fail: a page with an error is seen as one.
    probe = tmp_path / "probe.html"
    probe.write_text('<html><body><script>throw new Error("probe error")</script></body></html>')
    assert any("probe error" in line for line in _console(_chromium_run(binary, probe, "--dump-dom").stderr))

    page = run_out / "report.html"
    shot = tmp_path / "report.png"
    done = _chromium_run(binary, page, f"--screenshot={shot}", "--window-size=1280,2400", "--hide-scrollbars")
    assert shot.exists(), done.stderr[-2000:]
    assert _console(done.stderr) == []
    with Image.open(shot) as image:
        pixels = np.asarray(image.convert("L"), np.float32)
    assert pixels.shape == (2400, 1280) and pixels.std() > 10     # not a blank page

    # The DOM as Chromium built it, with a counter of decoded images appended to a copy of the page.
    counted = tmp_path / "counted.html"
    counted.write_text(page.read_text(encoding="utf-8").replace(
        "</body>", "<script>onload=()=>console.log('decoded images: '+[...document.images]"
                   ".filter(i=>i.complete&&i.naturalWidth>0).length)</script></body>"), encoding="utf-8")
    dom = _chromium_run(binary, counted, "--dump-dom")
    stage_rows = re.search(r'<table id="stages">.*?</table>', dom.stdout, re.S)
    assert stage_rows and stage_rows.group(0).count("<tr>") == 1 + len(STAGES)
    decoded = [int(m) for m in re.findall(r"decoded images: (\d+)", dom.stderr)]
    assert decoded and decoded[0] >= 5 and decoded[0] == dom.stdout.count("<img ")


def test_a_cut_beside_the_stages_is_labelled_and_not_added_to_the_run_time():
    from m3ed.corpus import Corpus
    from m3ed.pipelines.report import _run_html, run_section

    record = {"seconds": 30.0, "started": "s", "finished": "f", "package_version": "0", "config": {}, "versions": {},
              "stages": {"cut": {"seconds": 29.0, "beside_other_stages": True},
                         "text": {"seconds": 20.0, "dialogues_done": 0}}}
    run = run_section(record, Corpus(()))
    assert [(s["stage"], s["beside_other_stages"]) for s in run["stages"]] == [("cut", True), ("text", False)]
    assert run["total_seconds"] == 30.0
    html = _run_html(run)
    assert "cut (beside the others)" in html and "text (beside" not in html and "30.0 s in all" in html
