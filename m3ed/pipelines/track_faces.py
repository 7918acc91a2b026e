"""``m3ed faces VIDEO``: face detection and tracking alone, on any video.

Runs the first steps of the asd stage (shots -> MTCNN or S3FD -> IoU tracks) over ``--start``..``--end``
of a video and writes the tracks as JSON (per track: dialogue-relative frame indices at 25 fps,
boxes x1, y1, x2, y2 in native pixels, which frames were detected) and prints a summary.
"""
from __future__ import annotations

import argparse
import json
import time
from dataclasses import asdict
from pathlib import Path

from ..asd.detect import Detections
from ..asd.detectors import build_detector, detector_provenance
from ..asd.options import DETECTORS, AsdConfig, with_flags
from ..asd.params import DetectionParams, S3FDParams
from ..asd.shots import ShotDetector
from ..asd.track import track_faces
from ..errors import ConfigurationError
from ..media import iter_frames, probe
from ..profiles import PROFILES, get_profile
from ..store import atomic_write_text
from ..timecode import DEFAULT_FPS

#: This command's flag of each configuration field it sets, for its messages.
FLAGS = {"DetectionParams.every": "--every", "S3FDParams.every": "--every", "DetectionParams.height": "--height",
         "DetectionParams.min_face_size": "--min-face-size", "S3FDParams.scale": "--detect-scale",
         "AsdConfig.detector": "--detector", "AsdConfig.detector_checkpoint": "--detector-checkpoint"}


def add_faces_parser(subparsers) -> argparse.ArgumentParser:
    p = subparsers.add_parser("faces", help="detect and track faces in a video (the asd stage's first steps)",
                              formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("video", type=Path, help="any video file ffmpeg reads")
    p.add_argument("--start", type=float, default=0.0, help="seconds into the video")
    p.add_argument("--end", type=float, default=None, help="seconds into the video (default: its end)")
    p.add_argument("--detector", choices=DETECTORS, default="mtcnn", help="face detector")
    p.add_argument("--every", type=int, default=None, metavar="K",
                   help=f"detect every K-th frame (default: {DetectionParams.every} with mtcnn, "
                        f"{S3FDParams.every} with s3fd)")
    p.add_argument("--height", type=int, default=None, metavar="H",
                   help=f"MTCNN: detection height in pixels, 0: native (default: {DetectionParams.height})")
    p.add_argument("--min-face-size", type=int, default=DetectionParams.min_face_size,
                   help="MTCNN: smallest face, pixels at the detection height")
    p.add_argument("--detect-scale", type=float, default=S3FDParams.scale, metavar="F",
                   help="S3FD: detection size per frame size (the authors')")
    p.add_argument("--detector-checkpoint", default=None, metavar="FILE",
                   help="S3FD weights, sfd_face.pth (default: $TORCH_HOME/checkpoints/sfd_face.pth)")
    p.add_argument("--profile", choices=sorted(PROFILES), default="paper",
                   help="paper: S3FD's released weights; paper-random/tiny: random S3FD weights (speed only)")
    p.add_argument("--device", default="cpu", help="torch device for the detector")
    p.add_argument("--json", type=Path, required=True, metavar="FILE", help="write the tracks here")
    p.set_defaults(func=run_faces)
    return p


def detection_config(args: argparse.Namespace) -> AsdConfig:
    """The detector's part of an :class:`AsdConfig` from this command's flags; errors name the flags."""
    try:
        every = {} if args.every is None else {"every": args.every}
        height = {} if args.height is None else {"height": args.height or None}
        return AsdConfig(detector=args.detector, detector_checkpoint=args.detector_checkpoint,
                         detection=DetectionParams(**every, **height, min_face_size=args.min_face_size)
                         if args.detector == "mtcnn" else DetectionParams(),
                         s3fd=S3FDParams(**every, scale=args.detect_scale) if args.detector == "s3fd" else S3FDParams())
    except ValueError as e:
        raise ConfigurationError(with_flags(str(e), FLAGS)) from e


def run_faces(args: argparse.Namespace) -> int:
    config = detection_config(args)
    profile = get_profile(args.profile)
    info = probe(args.video)
    end = args.end if args.end is not None else info.duration
    try:
        detector = build_detector(config, profile, args.device)
    except ConfigurationError as e:
        raise type(e)(with_flags(str(e), FLAGS)) from e
    shots, detections = ShotDetector(config.shots), Detections(config.detector_params.every)
    started = time.perf_counter()
    for chunk in iter_frames(args.video, args.start, end, DEFAULT_FPS, info=info):
        shots.update(chunk)
        detections.add_chunk(detector, chunk)
    seconds = time.perf_counter() - started
    tracks = track_faces(detections, shots.boundaries(), config.tracking)
    record = {"video": str(args.video), "start": args.start, "end": end, "fps": DEFAULT_FPS,
              "frame_count": detections.frame_count, "frame_height": info.height, "frame_width": info.width,
              **detector_provenance(config, profile), "detection": asdict(config.detector_params),
              "tracking": asdict(config.tracking), "shots_params": asdict(config.shots),
              "shots": shots.boundaries().tolist(), "tracks": [t.to_dict() for t in tracks]}
    args.json.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(args.json, json.dumps(record, ensure_ascii=False))
    print(f"{args.video}: {detections.frame_count} frames ({end - args.start:.2f} s), "
          f"{len(record['shots'])} shot(s), {detections.count()} faces on {len(detections.faces)} detected frames "
          f"({len(detections.faces) / max(seconds, 1e-9):.1f} frames/s, {record['detector']}), {len(tracks)} track(s)")
    for t in tracks:
        side = (t.boxes[:, 2:] - t.boxes[:, :2]).max(axis=1).mean()
        print(f"  track {t.track_id}: frames {t.first}-{t.last} ({len(t) / DEFAULT_FPS:.2f} s, shot {t.shot}), "
              f"mean face {side:.0f} px, {int(t.detected.sum())} detections")
    print(f"tracks written to {args.json}")
    return 0
