"""The configuration of an extraction run: one dataclass tree, the same from Python and the command line.

    from m3ed.config import ExtractConfig
    from m3ed.pipelines.extract import extract

    config = ExtractConfig()                 # the bundled sample, every stage, the paper profile
    config.run.out, config.run.profile = "out/sample", "tiny"
    config.asd.model = "light-asd"
    record = extract(config)                 # what run.json holds

``m3ed-extract`` fills the same tree from its options (:mod:`m3ed.pipelines.arguments` generates them
from the fields below and the stages' option classes). ``OUT/run.json`` stores
``dataclasses.asdict(config)`` under ``"config"``; :meth:`ExtractConfig.from_dict` reads it back.
"""
from __future__ import annotations

import dataclasses
import logging
import math
import os
from dataclasses import dataclass, field
from pathlib import Path

from .asd.options import AsdOptions
from .asd.presets import PRESETS
from .corpus import Corpus
from .errors import ConfigurationError
from .extract.options import AudioOptions, TextOptions, VisualOptions
from .locate import MediaSource, Timing
from .options import from_dict, option
from .profiles import PROFILES
from .screening import OVERHANG_POLICIES
from .stage import stage_names
from .timecode import DEFAULT_FPS

ENGINES = ("local", "ray")
PRECISIONS = ("fp32", "bf16", "fp16")   # as m3ed.device.PRECISIONS, which imports torch (a test keeps them equal)
log = logging.getLogger(__name__)


def sample_dir() -> Path:
    """The bundled sample (``M3ED_SAMPLE_DIR``, else ``samples/`` of the source tree)."""
    return Path(os.environ.get("M3ED_SAMPLE_DIR", Path(__file__).resolve().parents[1] / "samples"))


def _comma_list(value: str) -> tuple[str, ...]:
    return tuple(item.strip() for item in value.split(",") if item.strip())


@dataclass
class CorpusOptions:
    """Which annotation to read, and which of its dialogues."""

    annotations: str | None = option(None, "M3ED annotation.json, a generic manifest (.jsonl/.csv), or a corpus "
                                           "JSONL such as OUT/manifest.jsonl (default: the bundled sample)",
                                     flag="--annotations", metavar="FILE")
    relation: str | None = option(None, "M3ED relation_annotation_release.json: where each dialogue sits in its "
                                        "episode", flag="--relation", metavar="FILE")
    splits: str | None = option(None, "folder with movie_list_{train,val,test}.txt", flag="--splits", metavar="DIR")
    fps: float = option(DEFAULT_FPS, "frame rate of the timecodes (default %(default)s)", flag="--fps")
    strict: bool = option(False, "treat timecode anomalies and annotation problems as errors", flag="--strict")
    dialogues: tuple[str, ...] | None = option(None, "comma-separated dialogue ids to process (default: all)",
                                               flag="--dialogues", type=_comma_list, metavar="IDS")

    def __post_init__(self):
        if not (isinstance(self.fps, (int, float)) and math.isfinite(self.fps) and self.fps > 0):
            raise ConfigurationError(f"--fps {self.fps}: the frame rate must be a positive number (the M3ED "
                                     f"release's timecodes are {DEFAULT_FPS:g} fps)")

    def resolved(self) -> "CorpusOptions":
        """Without ``annotations``: the bundled sample's files."""
        if self.annotations is not None:
            return self
        sample = sample_dir() / "annotations"
        return dataclasses.replace(self, annotations=str(sample / "annotation.json"),
                                   relation=self.relation or str(sample / "relation_annotation_release.json"),
                                   splits=self.splits or str(sample / "splitInfo"))


@dataclass
class MediaOptions:
    """Where the videos are and the time conventions of cutting them (``fps`` is the corpus's)."""

    videos: str | None = option(None, "folder of episode videos or pre-cut dialogue clips (default: the bundled "
                                      "sample)", flag="--videos", metavar="DIR")
    video_pattern: str | None = option(None, "file name pattern inside --videos, e.g. '{show}/{episode:02d}.mkv' "
                                             "(fields: show, episode, dialogue, ext); common layouts are tried after it",
                                       flag="--video-pattern")
    dialogue_offset_frames: int = option(Timing.dialogue_offset_frames, "frames added to dialogue timecodes when "
                                         "cutting from episodes (default %(default)s, as the authors' release)",
                                         flag="--dialogue-offset-frames")
    audio_shift: float = option(Timing.audio_shift, "seconds added to utterance times for audio (default %(default)s, "
                                                    "as the authors' release)", flag="--audio-shift")

    def timing(self, fps: float) -> Timing:
        return Timing(fps=fps, dialogue_offset_frames=self.dialogue_offset_frames, audio_shift=self.audio_shift)


@dataclass
class RunOptions:
    """Where the output goes, which stages and models, on what hardware."""

    out: str = option("m3ed_features", "output directory (default: %(default)s)", flag="--out", metavar="DIR")
    stages: tuple[str, ...] | None = option(None, f"comma-separated stages, from {','.join(stage_names())}; they run "
                                                  "in this order (default: all)", flag="--stages", type=_comma_list)
    profile: str = option("paper", "model weights: paper (released weights), paper-random (same sizes, random "
                                   "weights: benchmarks), tiny (small random models: tests and the offline demo); "
                                   "default: %(default)s", flag="--profile",
                          choices=tuple(sorted(PROFILES)))
    preset: str = option("fast", "fast: our asd front end (MTCNN on every 5th frame, one scoring pass, sparse "
                                 "embeddings); authors: the M3ED authors' (S3FD on every frame, the demo's six-duration "
                                 "scoring, SENet-50 on every face, their utterance frames and rules). Options given "
                                 "explicitly win over it (default: %(default)s)", flag="--preset", choices=PRESETS)
    device: str | None = option(None, "cpu, cuda or cuda:N (default: cuda when available)", flag="--device")
    precision: str = option("fp32", "autocast precision on CUDA (default: %(default)s)", flag="--precision",
                            choices=PRECISIONS)
    threads: int | None = option(None, "torch threads of every stage's models (default: torch's, i.e. "
                                       "OMP_NUM_THREADS or all cores; recorded in run.json). On a machine shared "
                                       "with other work, fewer threads than cores run faster (README, Benchmarks). "
                                       "MTCNN always uses one", flag="--threads", metavar="N")
    workers: int | None = option(None, "processes doing the host work of the asd stage (decoding, shots, face "
                                       "detection, crops, MFCC) for the next dialogues while the models run on this "
                                       "one; the output is the same for any N (default: every core but one with "
                                       "--device cuda, else 1: in place; recorded in run.json)",
                                 flag="--workers", metavar="N")
    cut_workers: int = option(2, "parallel ffmpeg processes for the cut stage (default: %(default)s). Followed by "
                                 "other stages, the cut runs beside them at the lowest CPU priority",
                              flag="--cut-workers", metavar="N")
    keep_parts: bool = option(False, "keep per-dialogue part files after publishing", flag="--keep-parts")
    overhang: str = option("fail", "an utterance that runs past its dialogue's end: fail (recorded in "
                                   "failures.jsonl; default) or clip it to the part inside (recorded in notes.jsonl "
                                   "and the files' attributes)", flag="--overhang", choices=OVERHANG_POLICIES)
    report: bool = option(True, "do not write OUT/report.html at the end", flag="--no-report")
    progress: bool = option(True, "no progress bars", flag="--no-progress")
    engine: str = option("local", "local: this process (default); ray: each stage's dialogue groups on a pool of Ray "
                                  "actors, one model replica per GPU (pip install 'm3ed[ray]')", flag="--engine",
                         choices=ENGINES)
    ray_address: str | None = option(None, "a running Ray cluster (default: RAY_ADDRESS; else start Ray on this "
                                           "machine with all its GPUs)", flag="--ray-address", metavar="ADDR")
    shard: str | None = option(None, "process shard I of N (0-based) of a cluster array job; nothing is published "
                                     "until `m3ed merge OUT` (read from SLURM_ARRAY_TASK_ID/SLURM_ARRAY_TASK_COUNT "
                                     "when set)", flag="--shard", metavar="I/N")
    shards: int | None = option(None, "number of shards, with the index from JOB_COMPLETION_INDEX (a Kubernetes "
                                      "Indexed Job)", flag="--shards", metavar="N")

    def __post_init__(self):
        if self.threads is not None and self.threads < 1:
            raise ConfigurationError(f"--threads {self.threads}: must be >= 1")
        if self.preset not in PRESETS:
            raise ConfigurationError(f"--preset {self.preset}: choose one of {', '.join(PRESETS)}")
        if self.workers is not None and self.workers < 1:
            raise ConfigurationError(f"--workers {self.workers}: must be >= 1")
        if self.cut_workers < 1:
            raise ConfigurationError(f"--cut-workers {self.cut_workers}: must be >= 1")
        if self.stages is not None and not self.stages:   # `--stages ''` must not mean every stage
            raise ConfigurationError(f"--stages names no stage; choose from {','.join(stage_names())} "
                                     f"(or leave the option out for all)")


def check_device(device: str) -> str:
    """``device`` when this machine has it; else a configuration error saying what it has."""
    import torch

    try:
        parsed = torch.device(device)
    except (RuntimeError, ValueError) as e:
        raise ConfigurationError(f"--device {device!r}: not a device ({e}); use cpu, cuda or cuda:N") from e
    if parsed.type not in ("cpu", "cuda"):
        raise ConfigurationError(f"--device {device!r}: use cpu, cuda or cuda:N")
    count = torch.cuda.device_count() if parsed.type == "cuda" and torch.cuda.is_available() else 0
    if parsed.type == "cuda" and count == 0:
        why = "this torch is built without CUDA" if torch.version.cuda is None else "no CUDA device is visible"
        raise ConfigurationError(f"--device {device}: CUDA is not available on this machine ({why}); use --device cpu")
    if parsed.type == "cuda" and parsed.index is not None and parsed.index >= count:
        raise ConfigurationError(f"--device {device}: this machine has {count} CUDA device(s), cuda:0 to cuda:{count - 1}")
    return device


@dataclass
class ExtractConfig:
    """Everything an extraction run is told. The stage sections are named like the stages."""

    corpus: CorpusOptions = field(default_factory=CorpusOptions)
    media: MediaOptions = field(default_factory=MediaOptions)
    run: RunOptions = field(default_factory=RunOptions)
    text: TextOptions = field(default_factory=TextOptions)
    audio: AudioOptions = field(default_factory=AudioOptions)
    asd: AsdOptions = field(default_factory=AsdOptions)
    visual: VisualOptions = field(default_factory=VisualOptions)

    @property
    def timing(self) -> Timing:
        return self.media.timing(self.corpus.fps)

    def stage_options(self, name: str):
        """The options of stage ``name`` (``None`` for a stage without a section: its defaults)."""
        section = getattr(self, name, None) if name in STAGE_SECTIONS else None
        if getattr(section, "preset", "") is None:   # a section the run's --preset shapes (asd)
            section = dataclasses.replace(section, preset=self.run.preset)
        return section

    def resolved(self) -> "ExtractConfig":
        """The bundled sample's files where no annotation was given (and its videos, if none were)."""
        corpus = self.corpus.resolved()
        media = self.media
        if self.corpus.annotations is None and media.videos is None:
            media = dataclasses.replace(media, videos=str(sample_dir() / "videos"))
        return dataclasses.replace(self, corpus=corpus, media=media)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict | None) -> "ExtractConfig":
        return from_dict(cls, data)


# The stages' sections, named like the stages: every section but the run's own.
STAGE_SECTIONS = tuple(f.name for f in dataclasses.fields(ExtractConfig) if f.name not in ("corpus", "media", "run"))


def load_corpus(options: CorpusOptions, *, log_problems: bool = True, refuse_broken_files: bool = True) -> Corpus:
    """The corpus the options name (the bundled sample without ``annotations``), only the chosen
    ``dialogues``; annotation problems are logged, and stop here under ``strict``. Rows that belong
    to no dialogue (broken JSON, an unterminated quote) stop here unless ``refuse_broken_files`` is
    False (``m3ed validate`` lists them with the rest)."""
    from .loaders import load_corpus as load
    from .validate import validate

    options = options.resolved()
    path = Path(options.annotations)
    corpus = load(path, _path(options.relation), _path(options.splits), fps=options.fps, strict=options.strict)
    broken = [p for p in corpus.problems if p.blocking and p.dialogue_id is None]
    if broken and refuse_broken_files:   # rows of no dialogue: what they held would be lost unnoticed
        raise ConfigurationError(f"{path}: {len(broken)} row(s) cannot be read, so no dialogue can be trusted "
                                 f"whole; fix them and re-run:\n" + "\n".join(f"  {p}" for p in broken[:20]))
    if options.dialogues:
        missing = [d for d in options.dialogues if d not in {x.id for x in corpus}]
        if missing:
            raise ConfigurationError(f"--dialogues: not in {path}: {', '.join(missing)}")
        corpus = corpus.select(list(options.dialogues))
    problems = validate(corpus, require_split=options.splits is not None)
    if log_problems:
        for problem in problems:
            log.warning("annotation problem: %s", problem)
    if problems and options.strict:
        raise ConfigurationError(f"{len(problems)} annotation problem(s) in {path}"
                                 + (" (see above)" if log_problems else "") + "; --strict stops here")
    return corpus


def media_source(config: ExtractConfig) -> MediaSource:
    media = config.resolved().media
    return MediaSource(_path(media.videos), media.video_pattern, config.timing)


def _path(value: str | Path | None) -> Path | None:
    return None if value is None else Path(value)
