"""``m3ed faces VIDEO``: face detection and tracking alone, on any video.

Runs the first steps of the asd stage (shots -> MTCNN -> IoU tracks) over ``--start``..``--end``
of a video and writes the tracks as JSON (per track: dialogue-relative frame indices at 25 fps,
boxes x1, y1, x2, y2 in native pixels, which frames were detected) and prints a summary.
"""
from __future__ import annotations

import argparse
import json
import time
from dataclasses import asdict
from pathlib import Path

from ..asd.detect import DetectionParams, Detections, FaceDetector
from ..asd.shots import ShotDetector, ShotParams
from ..asd.track import TrackingParams, track_faces
from ..media import iter_frames, probe
from ..timecode import DEFAULT_FPS
from ..store import atomic_write_text



def add_faces_parser(subparsers) -> argparse.ArgumentParser:
    p = subparsers.add_parser("faces", help="detect and track faces in a video (the asd stage's first steps)",
                              formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("video", type=Path, help="any video file ffmpeg reads")
    p.add_argument("--start", type=float, default=0.0, help="seconds into the video")
    p.add_argument("--end", type=float, default=None, help="seconds into the video (default: its end)")
    p.add_argument("--every", type=int, default=DetectionParams.every, metavar="K", help="detect every K-th frame")
    p.add_argument("--height", type=int, default=DetectionParams.height, metavar="H",
                   help="detection height in pixels (0: native)")
    p.add_argument("--min-face-size", type=int, default=DetectionParams.min_face_size,
                   help="smallest face, pixels at the detection height")
    p.add_argument("--device", default="cpu", help="torch device for MTCNN")
    p.add_argument("--json", type=Path, required=True, metavar="FILE", help="write the tracks here")
    p.set_defaults(func=run_faces)
    return p


def run_faces(args: argparse.Namespace) -> int:
    info = probe(args.video)
    end = args.end if args.end is not None else info.duration
    detection = DetectionParams(every=args.every, height=args.height or None, min_face_size=args.min_face_size)
    tracking, shot_params = TrackingParams(), ShotParams()
    if detection.every > tracking.max_gap:
        raise ValueError(f"--every {detection.every}: must be <= {tracking.max_gap} (the tracker's max_gap)")
    detector = FaceDetector(detection, args.device)
    shots, detections = ShotDetector(shot_params), Detections(detection.every)
    started = time.perf_counter()
    for chunk in iter_frames(args.video, args.start, end, DEFAULT_FPS, info=info):
        shots.update(chunk)
        detections.add_chunk(detector, chunk)
    seconds = time.perf_counter() - started
    tracks = track_faces(detections, shots.boundaries(), tracking)
    record = {"video": str(args.video), "start": args.start, "end": end, "fps": DEFAULT_FPS,
              "frame_count": detections.frame_count, "frame_height": info.height, "frame_width": info.width,
              "detection": asdict(detection), "tracking": asdict(tracking), "shots_params": asdict(shot_params),
              "shots": shots.boundaries().tolist(), "tracks": [t.to_dict() for t in tracks]}
    args.json.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(args.json, json.dumps(record, ensure_ascii=False))
    print(f"{args.video}: {detections.frame_count} frames ({end - args.start:.2f} s), "
          f"{len(record['shots'])} shot(s), {detections.count()} faces on {len(detections.faces)} detected frames "
          f"({len(detections.faces) / max(seconds, 1e-9):.1f} frames/s), {len(tracks)} track(s)")
    for t in tracks:
        side = (t.boxes[:, 2:] - t.boxes[:, :2]).max(axis=1).mean()
        print(f"  track {t.track_id}: frames {t.first}-{t.last} ({len(t) / DEFAULT_FPS:.2f} s, shot {t.shot}), "
              f"mean face {side:.0f} px, {int(t.detected.sum())} detections")
    print(f"tracks written to {args.json}")
    return 0
