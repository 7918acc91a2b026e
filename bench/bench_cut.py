"""Media throughput on this machine: decoding a dialogue span (audio, frames) and cutting clips.

Writes ``bench/results.json`` key ``media``. Run with ``make bench``.
"""
from __future__ import annotations

import tempfile
import time
from pathlib import Path

from common import long_episode, merge_results, table

from m3ed.device import peak_rss_mb

from m3ed.corpus import Corpus, Dialogue, Utterance
from m3ed.locate import MediaSource
from m3ed.media import decode_audio, iter_frames, probe
from m3ed.pipelines.cut import cut_corpus


def timed(fn):
    start = time.perf_counter()
    result = fn()
    return result, time.perf_counter() - start


def main() -> None:
    work = Path(tempfile.mkdtemp(prefix="m3ed-bench-cut-"))
    episode = long_episode(work / "episode01.mp4", seconds=60.0, height=720)
    info = probe(episode)
    span = info.duration - 0.5
    _, audio_s = timed(lambda: decode_audio(episode, 0.0, span))
    frames, native_s = timed(lambda: sum(len(c) for c in iter_frames(episode, 0.0, span)))
    frames_360, small_s = timed(lambda: sum(len(c) for c in iter_frames(episode, 0.0, span, height=360)))
    # 6 dialogues of 8 s with 4 utterances each, cut from the episode with 2 ffmpeg workers.
    dialogues = []
    for k in range(6):
        utterances = tuple(Utterance(f"episode_{k}_{i + 1}", f"episode_{k}", "AB"[i % 2], 2.0 * i, 2.0 * i + 2.0)
                           for i in range(4))
        dialogues.append(Dialogue(f"episode_{k}", "episode", utterances, episode=1, start=8.0 * k, end=8.0 * k + 8.0))
    corpus = Corpus(tuple(dialogues))
    failures, cut_s = timed(lambda: cut_corpus(corpus, MediaSource(work), work / "clips", workers=2, progress=False))
    assert not failures, failures
    clips = 6 + 6 * 4
    result = {
        "video": f"{info.width}x{info.height} H.264 {info.fps:g} fps, {info.duration:.1f} s",
        "audio_decode_x_realtime": round(span / audio_s, 1),
        "frames_decode_fps_native": round(frames / native_s, 1),
        "frames_decode_fps_360p": round(frames_360 / small_s, 1),
        "cut_clips_per_s": round(clips / cut_s, 2),
        "cut_media_x_realtime": round(2 * 48.0 / cut_s, 2),   # dialogue + utterance seconds written
        "peak_rss_mb": round(peak_rss_mb(), 1),
    }
    merge_results("media", result)
    print(table([result], list(result)))


if __name__ == "__main__":
    main()
