"""``m3ed viz-asd DIALOGUE --features OUT --out FILE.mp4``: watch what the asd stage decided.

Renders the dialogue's video (25 fps, native size) with its sound and, per frame:

- every face track's box with its speaking probability (green when >= 0.5, red below; from
  ``OUT/asd/{dialogue}.json``, written by the asd stage);
- the box chosen as the current utterance's speaker thick yellow, labelled with the rule that
  chose it (``m3ed.asd.assign.RULE_NAMES``: ``asd``, ``match``, ``single_face``, ...; with the
  similarity where the rule used one) -- from the ``speaker_faces`` feature file;
- a caption: utterance id, speaker key and name, emotion, and the text (drawn with a CJK font
  when one is installed: ``M3ED_FONT`` or a common Noto/WenQuanYi path; otherwise the text is
  left out and the caption says so).

The frames are piped to ffmpeg (``m3ed.media.ffmpeg_exe``), encoded H.264 + AAC, written to a
temporary name and renamed when complete.
"""
from __future__ import annotations

import argparse
import os
import subprocess
from pathlib import Path

import cv2
import numpy as np

from ..asd.assign import RULE_NAMES
from ..catalogue import BOX, COLUMN
from ..asd.faces import FEATURE_SET, read_dialogue_faces
from ..corpus import Corpus, Dialogue
from ..locate import MediaSource
from ..media import MediaError, ffmpeg_exe
from ..store import FeatureReader
from ..timecode import DEFAULT_FPS
from .extract import media_of_run

FONT_CANDIDATES = (
    "/usr/share/fonts/opentype/noto/NotoSansCJK-Regular.ttc", "/usr/share/fonts/noto-cjk/NotoSansCJK-Regular.ttc",
    "/usr/share/fonts/truetype/wqy/wqy-microhei.ttc", "/usr/share/fonts/truetype/wqy/wqy-zenhei.ttc",
    "/System/Library/Fonts/PingFang.ttc", "C:/Windows/Fonts/msyh.ttc",
)
GREEN, RED, YELLOW, WHITE = (0, 200, 0), (220, 0, 0), (255, 220, 0), (255, 255, 255)


def add_viz_parser(subparsers) -> argparse.ArgumentParser:
    p = subparsers.add_parser("viz-asd", help="render a dialogue with its face tracks, ASD scores and chosen speaker faces")
    p.add_argument("dialogue", help="dialogue id")
    p.add_argument("--features", type=Path, required=True, metavar="OUT", help="output directory of m3ed-extract (asd stage run)")
    p.add_argument("--videos", type=Path,
                   help="folder of episode videos or dialogue clips (default: the one the run used, from OUT/run.json)")
    p.add_argument("--video-pattern", help="file name pattern inside --videos (see m3ed-extract --help)")
    p.add_argument("--out", type=Path, required=True, metavar="FILE.mp4")
    p.set_defaults(func=run_viz)
    return p


def run_viz(args: argparse.Namespace) -> int:
    corpus = Corpus.from_jsonl(args.features / "manifest.jsonl")
    dialogue = corpus[args.dialogue]
    render(dialogue, args.features, media_of_run(args.features, args.videos, args.video_pattern), args.out)
    print(f"wrote {args.out}")
    return 0


def render(dialogue: Dialogue, out_dir: Path, media: MediaSource, target: Path) -> Path:
    """Write the annotated video of one dialogue to ``target`` (mp4 with sound)."""
    record = read_dialogue_faces(out_dir, dialogue.id)
    overlays = _track_overlays(record)
    chosen = _speaker_rows(dialogue, out_dir)
    captions = _captions(dialogue)
    font = _cjk_font()
    span = media.locate(dialogue)
    target = Path(target)
    tmp = target.with_name(f".{target.stem}.{os.getpid()}.tmp.mp4")
    process = None
    try:
        index = 0
        for chunk in media.frames(span, fps=DEFAULT_FPS):
            if process is None:
                process = _encoder(chunk.shape[2], chunk.shape[1], span, tmp)
            for frame in chunk:
                image = frame.copy()  # decoded frames are read-only
                _draw_frame(image, overlays.get(index, ()), chosen.get(index), captions.get(index), font)
                process.stdin.write(image.tobytes())
                index += 1
        if process is None:
            raise MediaError(f"dialogue {dialogue.id}: no video frames decoded from {span.path}")
        process.stdin.close()
        stderr = process.stderr.read().decode(errors="replace")
        if process.wait() != 0:
            raise MediaError(f"{target}: ffmpeg encoding failed: {stderr.strip()[-500:]}")
        tmp.replace(target)
    finally:
        if process is not None and process.poll() is None:
            process.kill()
        tmp.unlink(missing_ok=True)
    return target


def _encoder(width: int, height: int, span, tmp: Path) -> subprocess.Popen:
    cmd = [ffmpeg_exe(), "-v", "error", "-y", "-f", "rawvideo", "-pix_fmt", "rgb24", "-s", f"{width}x{height}",
           "-r", str(DEFAULT_FPS), "-i", "-", "-ss", f"{span.start:.6f}", "-t", f"{span.duration:.6f}", "-i", str(span.path),
           "-map", "0:v", "-map", "1:a?", "-c:v", "libx264", "-preset", "veryfast", "-crf", "20",
           "-pix_fmt", "yuv420p", "-c:a", "aac", "-shortest", "-movflags", "+faststart", str(tmp)]
    return subprocess.Popen(cmd, stdin=subprocess.PIPE, stderr=subprocess.PIPE)


def _track_overlays(record: dict) -> dict[int, list[tuple[int, np.ndarray, float]]]:
    """Frame -> [(track id, box, probability)] from the asd stage's track file."""
    out: dict[int, list] = {}
    for track in record["tracks"]:
        for frame, box, prob in zip(track["frames"], track["boxes"], track["asd_prob"]):
            out.setdefault(int(frame), []).append((track["track_id"], np.asarray(box), np.nan if prob is None else prob))
    return out


def _speaker_rows(dialogue: Dialogue, out_dir: Path) -> dict[int, np.ndarray]:
    """Frame -> the ``speaker_faces`` row choosing a face there (from the published feature file)."""
    path = out_dir / "features" / f"{FEATURE_SET}.h5"
    out: dict[int, np.ndarray] = {}
    if not path.exists():
        return out
    with FeatureReader(path) as reader:
        for u in dialogue.utterances:
            rows = reader.get(u.id)
            if rows is not None:
                for row in rows[rows[:, COLUMN["track"]] >= 0]:
                    out[int(row[COLUMN["frame"]])] = row
    return out


def _captions(dialogue: Dialogue) -> dict[int, tuple[str, str]]:
    """Frame -> (plain caption: id, speaker key, emotion; full caption with name and text)."""
    out = {}
    for u in dialogue.utterances:
        name = dialogue.speaker_name(u.speaker)
        plain = f"{u.id}  {u.speaker}  [{u.emotion or '-'}]"
        full = f"{u.id}  {u.speaker}" + (f" ({name})" if name != u.speaker else "") + f"  [{u.emotion or '-'}]  {u.text}"
        for frame in range(int(np.ceil(u.start * DEFAULT_FPS)), int(np.ceil(u.end * DEFAULT_FPS))):
            out[frame] = (plain, full)
    return out


def _cjk_font(size: int = 20):
    try:
        from PIL import ImageFont
    except ImportError:
        return None
    for path in (os.environ.get("M3ED_FONT"), *FONT_CANDIDATES):
        if path and Path(path).exists():
            return ImageFont.truetype(path, size)
    return None


def _draw_frame(image: np.ndarray, faces, chosen: np.ndarray | None, caption: tuple[str, str] | None, font) -> None:
    for track_id, box, prob in faces:
        colour = GREEN if prob >= 0.5 else RED
        x1, y1, x2, y2 = (int(round(v)) for v in box)
        cv2.rectangle(image, (x1, y1), (x2, y2), colour, 2)
        cv2.putText(image, f"#{track_id} {prob:.2f}", (x1, max(y1 - 5, 12)), cv2.FONT_HERSHEY_SIMPLEX, 0.5, colour, 1,
                    cv2.LINE_AA)
    if chosen is not None:
        x1, y1, x2, y2 = (int(round(v)) for v in chosen[BOX])
        stage = int(chosen[COLUMN["stage"]])
        similarity = chosen[COLUMN["similarity"]]
        label = f"speaker {RULE_NAMES.get(stage, stage)}" + ("" if np.isnan(similarity) else f" sim {similarity:.2f}")
        cv2.rectangle(image, (x1, y1), (x2, y2), YELLOW, 4)
        cv2.putText(image, label, (x1, min(y2 + 18, image.shape[0] - 4)), cv2.FONT_HERSHEY_SIMPLEX, 0.55, YELLOW, 2, cv2.LINE_AA)
    if caption:
        _caption(image, caption, font)


def _caption(image: np.ndarray, caption: tuple[str, str], font) -> None:
    plain, text = caption
    height = 30
    image[-height:] = (image[-height:] * 0.4).astype(np.uint8)
    if font is not None:
        from PIL import Image, ImageDraw

        strip = Image.fromarray(image[-height:])
        ImageDraw.Draw(strip).text((6, 4), text, font=font, fill=WHITE)
        image[-height:] = np.asarray(strip)
        return
    if not text.isascii():
        text = plain + "  (text: set M3ED_FONT to a CJK font)"
    cv2.putText(image, text, (6, image.shape[0] - 10), cv2.FONT_HERSHEY_SIMPLEX, 0.5, WHITE, 1, cv2.LINE_AA)
