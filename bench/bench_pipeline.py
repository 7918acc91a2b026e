"""The whole pipeline, every stage doing its real work, against the naive approach in the same run.

    python bench/bench_pipeline.py [--copies 7] [--naive-copies 1]

Data: the bundled sample's three dialogues (46 s) repeated ``--copies`` times under new ids
(7 copies: 5.4 minutes of footage, 126 utterances; faces on screen throughout), written as a
generic manifest over the sample's episodes. Profile ``paper-random`` (paper-size models, random
weights) except ASD, which uses Light-ASD's shipped real weights (``--asd-model light-asd``), so
that speakers are found and the visual stage has faces to process. CPU unless ``--device``.

Ours: one ``m3ed-extract`` with its defaults, every stage (cut, text, audio, asd, visual), as a
user runs it: end to end is that process's wall time and peak RSS (start-up and model loading
included); per stage, the seconds and the process's peak RSS up to the stage's end, from run.json.

Naive, on the first ``--naive-copies`` copies (the same footage, so real-time factors compare):
text and audio with one model call per utterance (model loading not timed), audio decoded from
each utterance's clip file;
asd with face detection on every frame at native size, the reference's six-duration scoring of
every track frame, unfused (``NAIVE_ASD``); cut alone (ours runs beside the later stages, so its
seconds overlap theirs);
visual as ours (no naive variant). Per stage, ``speedup_vs_naive`` compares the stages' own
seconds; end to end, ours counts whole processes (start-up and model loading included) and naive
only its compute, which favours naive.

The floor, on the naive's copy with our settings (``bench/model_time.py``): per stage, our
networks' calls replayed back to back with nothing else running (``floor_rtf``); for the cut,
the CPU seconds of its ffmpeg processes spread over the machine's cores. The stages' floors add
up to the time the networks alone need, one stage after another; the cut is left out of that sum
(it can run in the cycles the networks leave idle). The sum estimates the floor of the whole run,
and ``max_speedup_vs_naive`` (naive's real-time factor over it) the ceiling on the speed-up; an
estimate, not a bound: it is measured on one copy, and batching over more dialogues (ours) can
go a little under it, and it moves with the machine's load like every other figure.

Writes ``bench/results.json`` key ``end_to_end`` (other keys kept) and prints the table.
"""
from __future__ import annotations

import argparse
import csv
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from common import REPO, device_key, merge_results, subprocess_env, table

STAGES = ("cut", "text", "audio", "asd", "visual")
# The reference's ASD settings: detection on every frame at native size with MTCNN's own pyramid,
# six-duration scoring of every track frame with the model as trained; embeddings as before our
# speed-ups (every 5th frame of every track; the reference demo embeds nothing).
NAIVE_ASD = ["--detect-every", "1", "--detect-height", "0", "--asd-mode", "multi",
             "--asd-frames", "all", "--asd-unfused", "--embed-frames", "track", "--embed-every", "5"]
EXTRACT = [sys.executable, "-m", "m3ed.pipelines.cli_extract"]
MODEL_TIME = [sys.executable, str(REPO / "bench" / "model_time.py")]


def write_manifest(path: Path, copies: int) -> tuple[float, int]:
    """The sample repeated ``copies`` times with new show and dialogue ids; (seconds of dialogue, utterances)."""
    source = REPO / "samples" / "annotations" / "manifest.csv"
    with source.open(encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    out, spans = [], {}
    for k in range(copies):
        for row in rows:
            show = f"{row['show']}x{k}"
            dialogue = row["dialogue_id"].replace(row["show"], show, 1)
            video = (source.parent / row["video"]).resolve()
            out.append({**row, "show": show, "dialogue_id": dialogue,
                        "utterance_id": row["utterance_id"].replace(row["show"], show, 1), "video": str(video)})
            spans[dialogue] = float(row["video_end"]) - float(row["video_start"])
    with path.open("w", encoding="utf-8", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(out)
    return sum(spans.values()), len(out)


def run_process(cmd: list[str], env: dict) -> tuple[float, float]:
    """Run ``cmd``; (wall seconds, its peak RSS in MB). Fails loudly with the tail of its output."""
    started = time.perf_counter()
    process = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env)
    output = process.stdout.read()
    _, status, usage = os.wait4(process.pid, 0)
    process.returncode = os.waitstatus_to_exitcode(status)
    wall = time.perf_counter() - started
    if process.returncode not in (0, 1):
        raise SystemExit(f"{' '.join(cmd)} failed (exit {process.returncode}):\n{output.decode()[-3000:]}")
    return wall, usage.ru_maxrss / 1024


def extract(manifest: Path, out: Path, stages: str, device: str, extra: list[str], env: dict,
            launcher: list[str] = EXTRACT) -> dict:
    """One ``m3ed-extract`` process: its wall seconds and peak RSS, and per stage its seconds and
    the process's peak RSS up to the stage's end (run.json)."""
    cmd = [*launcher, "--annotations", str(manifest), "--out", str(out), "--stages", stages, "--profile", "paper-random",
           "--device", device, "--asd-model", "light-asd", "--no-report", "--no-progress", *extra]
    wall, rss = run_process(cmd, env)
    record = json.loads((out / "run.json").read_text())
    return {"wall_s": round(wall, 1), "peak_rss_mb": round(rss),
            "stages": {name: {"stage_s": round(entry["seconds"], 1), "peak_rss_mb": entry["peak_rss_mb"]}
                       for name, entry in record["stages"].items()}}


def naive_text_audio(manifest: Path, clips: Path, env: dict) -> dict:
    """One model call per utterance (text), and per utterance clip file decoded by ffmpeg (audio)."""
    script = f"""
import json, time, torch
from m3ed.loaders import load_manifest
from m3ed.extract.hf_models import model_spec
from m3ed.extract.text import TextConfig, TextStage
from m3ed.extract.audio import AudioConfig, AudioStage
from m3ed.media import decode_audio, probe
from m3ed.profiles import get_profile
corpus = load_manifest({str(manifest)!r})
profile = get_profile("paper-random")
out = {{}}
with torch.inference_mode():
    encoder = TextStage(TextConfig(model_spec(profile, "text"))).encoder("base")
    started = time.perf_counter()
    for u in corpus.utterances():
        inputs = encoder.tokenizer(u.text, return_tensors="pt", truncation=True, max_length=512)
        encoder.model(**inputs).last_hidden_state[0, 1:-1].numpy()
    out["text"] = time.perf_counter() - started
    del encoder
    encoder = AudioStage(AudioConfig(model_spec(profile, "audio"))).encoder("base")
    started = time.perf_counter()
    for u in corpus.utterances():
        clip = next(__import__("pathlib").Path({str(clips)!r}).rglob(u.id + ".wav"))
        wave = decode_audio(clip, 0.0, probe(clip).duration)
        inputs = encoder.features(wave, sampling_rate=16000, return_tensors="pt")
        encoder.model(**inputs).last_hidden_state[0].numpy()
    out["audio"] = time.perf_counter() - started
print("RESULT " + json.dumps(out))
"""
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env)
    line = next((r for r in result.stdout.splitlines() if r.startswith("RESULT ")), None)
    if result.returncode or line is None:
        raise SystemExit(f"naive text/audio failed (exit {result.returncode}):\n{result.stderr[-3000:]}")
    return json.loads(line[len("RESULT "):])


def floor(manifest: Path, work: Path, device: str, extra: list[str], env: dict) -> tuple[dict, dict]:
    """Per stage, the floor estimate of ``bench/model_time.py`` (the networks' calls replayed alone;
    for the cut, its ffmpeg CPU seconds over the cores), and the replay's seconds per network."""
    stages = ",".join(s for s in STAGES if s != "cut")
    extract(manifest, work / "floor", stages, device, extra, env, [*MODEL_TIME, str(work / "floor.json")])
    models = json.loads((work / "floor.json").read_text())
    extract(manifest, work / "floor-cut", "cut", device, extra, env, [*MODEL_TIME, str(work / "floor-cut.json")])
    cut = json.loads((work / "floor-cut.json").read_text())
    return {"cut": cut["cut_cpu_s"] / os.cpu_count(), **models["floor_s"]}, models["floor_by_network_s"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--copies", type=int, default=7, help="copies of the sample (7: 5.4 min of footage)")
    parser.add_argument("--naive-copies", type=int, default=1, help="copies the naive approach runs on")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--precision", default="fp32")
    parser.add_argument("--work", type=Path, default=None, help="working folder (default: a temporary one)")
    args = parser.parse_args()
    work = args.work or Path(tempfile.mkdtemp(prefix="m3ed-bench-pipeline-"))
    work.mkdir(parents=True, exist_ok=True)
    env = subprocess_env()
    device = ["--precision", args.precision]

    seconds, utterances = write_manifest(work / "manifest.csv", args.copies)
    run = extract(work / "manifest.csv", work / "ours", ",".join(STAGES), args.device, device, env)
    ours = run["stages"]
    naive_seconds, naive_utterances = write_manifest(work / "naive.csv", args.naive_copies)
    # the clips the naive text/audio read, cut alone (ours cuts beside the other stages)
    naive = {"cut": extract(work / "naive.csv", work / "naive", "cut", args.device, device, env)["stages"]["cut"]["stage_s"]}
    naive.update(naive_text_audio(work / "naive.csv", work / "naive" / "clips", env))
    naive["asd"] = extract(work / "naive.csv", work / "naive", "asd", args.device,
                           [*device, *NAIVE_ASD], env)["stages"]["asd"]["stage_s"]
    naive["visual"] = ours["visual"]["stage_s"] * naive_seconds / seconds
    floors, floors_by_network = floor(work / "naive.csv", work, args.device, device, env)

    rows = []
    for stage in STAGES:
        entry = ours[stage]
        rtf = entry["stage_s"] / seconds
        naive_rtf = naive[stage] / naive_seconds
        entry.update(rtf=round(rtf, 3), utterances_per_s=round(utterances / max(entry["stage_s"], 1e-9), 2),
                     naive_rtf=round(naive_rtf, 3), speedup_vs_naive=round(naive_rtf / max(rtf, 1e-9), 2),
                     floor_rtf=round(floors[stage] / naive_seconds, 3))
        rows.append({"stage": stage, **entry})
    total = run["wall_s"]
    naive_total_rtf = sum(naive.values()) / naive_seconds
    floor_rtf = sum(v for k, v in floors.items() if k != "cut") / naive_seconds
    result = {
        "footage_s": round(seconds, 1), "dialogues": 3 * args.copies, "utterances": utterances,
        "wall_s": round(total, 1), "rtf": round(total / seconds, 3), "utterances_per_s": round(utterances / total, 3),
        "peak_rss_mb": run["peak_rss_mb"],
        "naive_footage_s": round(naive_seconds, 1), "naive_rtf": round(naive_total_rtf, 3),
        "speedup_vs_naive": round(naive_total_rtf / (total / seconds), 2),
        "floor_rtf": round(floor_rtf, 3), "max_speedup_vs_naive": round(naive_total_rtf / floor_rtf, 2),
        "floor_by_network_s": floors_by_network,
        "stages": ours, "profile": "paper-random (ASD: Light-ASD shipped weights)", "device": args.device,
        "precision": args.precision, "cpus": os.cpu_count(), "load_average_1min": round(os.getloadavg()[0], 2),
    }
    rows.append({"stage": "end to end", "wall_s": result["wall_s"], "rtf": result["rtf"],
                 "utterances_per_s": result["utterances_per_s"], "peak_rss_mb": result["peak_rss_mb"],
                 "naive_rtf": result["naive_rtf"], "speedup_vs_naive": result["speedup_vs_naive"],
                 "floor_rtf": result["floor_rtf"]})
    print(f"{seconds:.0f} s of footage, {utterances} utterances, {args.device}, load {result['load_average_1min']}")
    print(table(rows, ["stage", "stage_s", "wall_s", "rtf", "utterances_per_s", "peak_rss_mb", "naive_rtf",
                       "speedup_vs_naive", "floor_rtf"]))
    print("stage rows: the stage's own seconds; peak_rss_mb: the process's peak up to the stage's end. "
          "cut runs beside the later stages at idle priority, so its seconds overlap theirs; naive cuts alone. "
          "End to end: the whole process (start-up and model loading included). "
          f"floor_rtf: our networks' calls replayed alone (cut: its ffmpeg CPU over the cores); end to end, "
          f"the stages' floors without the cut's: the speed-up over naive is at most {result['max_speedup_vs_naive']}x "
          f"without computing less.")
    merge_results(device_key("end_to_end", args.device), result)


if __name__ == "__main__":
    main()
