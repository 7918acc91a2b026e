"""Decoding spans and cutting clips with the real ffmpeg, checked against ffmpeg's own frame count."""
import os
import shutil
import subprocess
import sys
import time

import numpy as np
import pytest

from conftest import count_frames, make_numbered_video, read_frame_code
from m3ed.corpus import Dialogue, Utterance
from m3ed.locate import MediaSource, Timing, VideoNotFound
from m3ed.media import MediaError, cut_video, decode_audio, decode_frames, iter_frames, probe
from m3ed.pipelines import cut as cut_module
from m3ed.pipelines.cut import CutJob, cut_corpus
from m3ed.corpus import Corpus


@pytest.fixture(scope="module")
def speech_wav(sample_paths, tmp_path_factory):
    """Real Mandarin speech: the sample episode's audio track."""
    path = tmp_path_factory.mktemp("audio") / "speech.wav"
    episode = sorted(sample_paths["videos"].glob("*.mp4"), key=lambda p: p.stat().st_size)[-1]
    from m3ed.media import write_wav

    write_wav(decode_audio(episode, 3.0, 11.0), path)
    return path


@pytest.fixture(scope="module")
def numbered(tmp_path_factory, speech_wav):
    return make_numbered_video(tmp_path_factory.mktemp("video") / "numbered.mp4", frames=200, audio_from=speech_wav)


def test_probe(numbered):
    info = probe(numbered)
    assert info.has_video and info.has_audio and info.fps == 25 and (info.width, info.height) == (160, 120)
    assert info.duration == pytest.approx(8.0, abs=0.1)


def test_decode_span_is_frame_accurate(numbered):
    frames = decode_frames(numbered, 2.36, 3.0)          # frame 59 onwards; no keyframe near it
    assert frames.shape == (16, 120, 160, 3)
    assert [read_frame_code(f) for f in frames] == list(range(59, 75))


def test_decode_streams_in_bounded_chunks(numbered):
    chunks = list(iter_frames(numbered, 0.0, 6.0, chunk=16))
    assert max(len(c) for c in chunks) == 16 and sum(len(c) for c in chunks) == 150
    assert read_frame_code(chunks[-1][-1]) == 149


def test_decode_rescaled(numbered):
    frames = decode_frames(numbered, 0.0, 0.4, fps=10, height=60)
    assert frames.shape == (4, 60, 80, 3)
    # 10 fps samples of 25 fps: every 2.5th frame (ffmpeg's fps filter rounds to a neighbour).
    assert all(abs(read_frame_code(f) - 2.5 * i) <= 1 for i, f in enumerate(frames))


def test_decode_audio_span(numbered, speech_wav):
    full = decode_audio(speech_wav, 0.0, 8.0)
    part = decode_audio(numbered, 1.0, 2.5)
    assert part.dtype == np.float32 and len(part) == 24000
    assert np.abs(part).max() > 0.01                               # speech, not silence
    # The AAC round trip keeps the waveform: strongly correlated with the source span.
    ref = full[16000:40000]
    assert np.corrcoef(part, ref)[0, 1] > 0.9


def test_span_beyond_end_no_audio_truncated(numbered, tmp_path, sample_paths):
    with pytest.raises(MediaError, match="beyond the file"):
        decode_audio(numbered, 5.0, 20.0)
    silent = make_numbered_video(tmp_path / "silent.mp4", frames=50)
    with pytest.raises(MediaError, match="silent.mp4: has no audio stream"):
        decode_audio(silent, 0.0, 1.0)
    truncated = tmp_path / "truncated.mp4"
    truncated.write_bytes(numbered.read_bytes()[: numbered.stat().st_size // 3])
    with pytest.raises(MediaError, match="truncated.mp4"):
        decode_frames(truncated, 0.0, 7.0)


def test_cut_is_frame_accurate(numbered, tmp_path):
    clip = cut_video(numbered, tmp_path / "clip.mp4", 2.36, 4.36)
    assert count_frames(clip) == 50
    frames = decode_frames(clip, 0.0, 2.0)
    assert read_frame_code(frames[0]) == 59 and read_frame_code(frames[-1]) == 108
    assert not list(tmp_path.glob(".*tmp*"))                        # no temporary left behind


def test_locate_patterns_and_error(tmp_path, numbered):
    (tmp_path / "剧集").mkdir()
    shutil.copy(numbered, tmp_path / "剧集" / "07.mp4")            # {show}/{episode:02d}.mp4, non-ASCII
    d = Dialogue("剧集_1", "剧集", (Utterance("剧集_1_1", "剧集_1", "A", 0.0, 1.0),), episode=7, start=1.0, end=3.0)
    span = MediaSource(tmp_path).locate(d)
    assert span.path.name == "07.mp4" and span.start == pytest.approx(1.04) and span.end == pytest.approx(3.04)
    assert MediaSource(tmp_path, timing=Timing(dialogue_offset_frames=0)).locate(d).start == 1.0
    with pytest.raises(VideoNotFound) as error:
        MediaSource(tmp_path / "nowhere").locate(d)
    message = str(error.value)
    assert "剧集_1" in message and "nowhere/剧集07.{mp4," in message and "nowhere/剧集/07.{mp4," in message


def test_cut_corpus_episode_to_utterances(numbered, tmp_path):
    videos = tmp_path / "videos"
    videos.mkdir()
    shutil.copy(numbered, videos / "show01.mp4")
    utts = (Utterance("show_1_1", "show_1", "A", 0.0, 1.0), Utterance("show_1_2", "show_1", "B", 1.0, 2.4))
    good = Dialogue("show_1", "show", utts, episode=1, start=2.0, end=4.4)
    missing = Dialogue("other_1", "other", (Utterance("other_1_1", "other_1", "A", 0, 1),), episode=2, start=0, end=1)
    media = MediaSource(videos)
    failures = cut_corpus(Corpus((good, missing)), media, tmp_path / "clips", progress=False)
    assert [(f.dialogue_id, f.utterance_id) for f in failures] == [("other_1", None)]
    dialogue_clip = tmp_path / "clips" / "dialogues" / "show" / "show_1.mp4"
    assert count_frames(dialogue_clip) == 60
    # +1 frame offset: the dialogue clip starts at frame 51 of the episode.
    assert read_frame_code(decode_frames(dialogue_clip, 0, 0.04)[0]) == 51
    second = tmp_path / "clips" / "utterances" / "show" / "show_1_2.mp4"
    assert count_frames(second) == 35
    wav = tmp_path / "clips" / "utterances" / "show" / "show_1_2.wav"
    # Audio shifted by +50 ms and clipped at the dialogue's end: 1.05 s .. 2.40 s.
    assert probe(wav).duration == pytest.approx(1.35, abs=0.01)
    before = {p: p.stat().st_mtime_ns for p in (tmp_path / "clips").rglob("*.*")}
    assert cut_corpus(Corpus((good,)), media, tmp_path / "clips", progress=False) == []
    assert {p: p.stat().st_mtime_ns for p in (tmp_path / "clips").rglob("*.*")} == before   # valid outputs kept


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="SCHED_IDLE is Linux's")
def test_cut_beside_other_stages_runs_idle_and_writes_the_same_clips(numbered, tmp_path, monkeypatch):
    videos = tmp_path / "videos"
    videos.mkdir()
    shutil.copy(numbered, videos / "show01.mp4")
    utts = (Utterance("show_1_1", "show_1", "A", 0.0, 1.0), Utterance("show_1_2", "show_1", "B", 1.0, 2.4))
    corpus = Corpus((Dialogue("show_1", "show", utts, episode=1, start=2.0, end=4.4),))
    media = MediaSource(videos)
    assert cut_corpus(corpus, media, tmp_path / "front", progress=False) == []

    seen: list[tuple[int, int]] = []   # per clip: (the cutting thread's policy, a child process's)
    original = cut_module.cut_video

    def spying_cut(*args, **kwargs):
        child = subprocess.Popen(["sleep", "0.1"])   # started from the thread that starts ffmpeg next
        seen.append((os.sched_getscheduler(0), os.sched_getscheduler(child.pid)))
        child.wait()
        return original(*args, **kwargs)

    monkeypatch.setattr(cut_module, "cut_video", spying_cut)
    job = CutJob(corpus, media, tmp_path / "beside", progress=False, beside=True)
    deadline = time.monotonic() + 60
    while len(seen) < 3 and time.monotonic() < deadline:   # the stages would run here meanwhile
        time.sleep(0.05)
    assert job.wait() == []
    assert len(seen) == 3 and set(seen) == {(os.SCHED_IDLE, os.SCHED_IDLE)}
    assert os.sched_getscheduler(0) == os.SCHED_OTHER   # the caller keeps its own priority
    front = sorted(p.relative_to(tmp_path / "front") for p in (tmp_path / "front").rglob("*.*"))
    beside = sorted(p.relative_to(tmp_path / "beside") for p in (tmp_path / "beside").rglob("*.*"))
    assert front == beside and len(front) == 5
    # Exact: the same computation. The same encoder and settings on the same machine; x264's threads
    # give the same bitstream whatever the scheduling, and only the priority differs.
    for relative in front:
        assert (tmp_path / "front" / relative).read_bytes() == (tmp_path / "beside" / relative).read_bytes()
