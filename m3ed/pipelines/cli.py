"""Command line: ``m3ed-extract`` (the main job) and ``m3ed`` (subcommands).

The CLI only fills configuration and calls the library; everything it does is also a function.
"""
from __future__ import annotations

import argparse
import gc
import importlib
import json
import logging
import os
import sys
from collections import Counter
from pathlib import Path

from ..corpus import Corpus
from ..errors import EXIT_DATA_FAILURES, EXIT_INTERNAL, EXIT_OK, EXIT_RESOURCES, EXIT_USAGE, ConfigurationError
from ..files import DiskFull, quiet_disk_full_cleanup
from ..locate import MediaSource, Timing
from ..lock import LockError
from ..media import MediaError
from ..profiles import PROFILES, get_profile
from ..screening import OVERHANG_POLICIES
from ..stats import format_tables, split_stats
from ..store import FeatureStore
from ..timecode import DEFAULT_FPS
from ..validate import validate
from ..stage import RunContext, stage_names, stage_registry

log = logging.getLogger("m3ed")


def sample_dir() -> Path:
    """The bundled sample (``M3ED_SAMPLE_DIR``, else ``samples/`` of the source tree)."""
    return Path(os.environ.get("M3ED_SAMPLE_DIR", Path(__file__).resolve().parents[2] / "samples"))


# ---- shared options -----------------------------------------------------------------------------
def add_corpus_arguments(parser: argparse.ArgumentParser, *, sample_default: bool = True) -> None:
    g = parser.add_argument_group("annotations")
    default = " (default: the bundled sample)" if sample_default else ""
    g.add_argument("--annotations", type=Path, help="M3ED annotation.json, a generic manifest (.jsonl/.csv), "
                   "or a corpus JSONL such as OUT/manifest.jsonl" + default)
    g.add_argument("--relation", type=Path, help="M3ED relation_annotation_release.json: where each dialogue sits in its episode")
    g.add_argument("--splits", type=Path, help="folder with movie_list_{train,val,test}.txt")
    g.add_argument("--fps", type=float, default=DEFAULT_FPS, help="frame rate of the timecodes (default %(default)s)")
    g.add_argument("--strict", action="store_true", help="treat timecode anomalies and annotation problems as errors")
    g.add_argument("--dialogues", help="comma-separated dialogue ids to process (default: all)")


def add_media_arguments(parser: argparse.ArgumentParser) -> None:
    g = parser.add_argument_group("videos")
    g.add_argument("--videos", type=Path, help="folder of episode videos or pre-cut dialogue clips (default: the bundled sample)")
    g.add_argument("--video-pattern", help="file name pattern inside --videos, e.g. '{show}/{episode:02d}.mkv' "
                   "(fields: show, episode, dialogue, ext); common layouts are tried after it")
    g.add_argument("--dialogue-offset-frames", type=int, default=Timing.dialogue_offset_frames,
                   help="frames added to dialogue timecodes when cutting from episodes "
                        "(default %(default)s, as the authors' release)")
    g.add_argument("--audio-shift", type=float, default=Timing.audio_shift,
                   help="seconds added to utterance times for audio (default %(default)s, as the authors' release)")


def load_corpus_from_args(args: argparse.Namespace, *, log_problems: bool = True) -> Corpus:
    from ..loaders import load_corpus

    if args.annotations is None:
        sample = sample_dir() / "annotations"
        args.annotations = sample / "annotation.json"
        args.relation = args.relation or sample / "relation_annotation_release.json"
        args.splits = args.splits or sample / "splitInfo"
        if getattr(args, "videos", None) is None and hasattr(args, "videos"):
            args.videos = sample_dir() / "videos"
    corpus = load_corpus(args.annotations, args.relation, args.splits, fps=args.fps, strict=args.strict)
    if args.dialogues:
        wanted = [d.strip() for d in args.dialogues.split(",") if d.strip()]
        missing = [d for d in wanted if d not in {x.id for x in corpus}]
        if missing:
            raise ConfigurationError(f"--dialogues: not in {args.annotations}: {', '.join(missing)}")
        corpus = corpus.select(wanted)
    problems = validate(corpus, require_split=args.splits is not None)
    if log_problems:
        for problem in problems:
            log.warning("annotation problem: %s", problem)
    if problems and args.strict:
        raise ConfigurationError(f"{len(problems)} annotation problem(s) in {args.annotations}"
                                 + (" (see above)" if log_problems else "") + "; --strict stops here")
    return corpus


def media_from_args(args: argparse.Namespace) -> MediaSource:
    timing = Timing(fps=args.fps, dialogue_offset_frames=args.dialogue_offset_frames, audio_shift=args.audio_shift)
    return MediaSource(args.videos, args.video_pattern, timing)


# ---- m3ed-extract -------------------------------------------------------------------------------
def build_extract_parser(parser: argparse.ArgumentParser | None = None) -> argparse.ArgumentParser:
    parser = parser or argparse.ArgumentParser(
        prog="m3ed-extract",
        description="Extract multimodal features (text, audio, speaker faces, facial expression) for every "
                    "utterance of a dialogue corpus into HDF5 files. Without --videos/--annotations it runs on "
                    "the bundled sample. Re-running the same command resumes where a previous run stopped.",
        epilog="Outputs: OUT/manifest.jsonl, OUT/features/{set}.h5, OUT/failures.jsonl, OUT/run.json, OUT/clips/. "
               "Exit codes: 0 done; 1 done with data failures (see failures.jsonl); 2 usage or configuration "
               "error; 3 internal error; 4 out of resources (disk full). "
               "Fine-tuned feature sets (roberta_ft_cls, wav2vec2_ft_last) need checkpoints from "
               "`m3ed finetune text|audio`, passed with --text-finetuned / --audio-finetuned.")
    add_corpus_arguments(parser)
    add_media_arguments(parser)
    g = parser.add_argument_group("run")
    g.add_argument("--out", type=Path, default=Path("m3ed_features"), help="output directory (default: %(default)s)")
    g.add_argument("--stages", default=",".join(stage_names()),
                   help=f"comma-separated, from {', '.join(stage_names())} (default: all)")
    g.add_argument("--profile", choices=sorted(PROFILES), default="paper",
                   help="model weights: paper (released weights), paper-random (same sizes, random weights: "
                        "benchmarks), tiny (small random models: tests and the offline demo); default: %(default)s")
    g.add_argument("--device", default=None, help="cpu, cuda or cuda:N (default: cuda when available)")
    g.add_argument("--precision", choices=("fp32", "bf16", "fp16"), default="fp32",
                   help="autocast precision on CUDA (default: %(default)s)")
    g.add_argument("--cut-workers", type=int, default=2,
                   help="parallel ffmpeg processes for the cut stage (default: %(default)s)")
    g.add_argument("--keep-parts", action="store_true", help="keep per-dialogue part files after publishing")
    g.add_argument("--overhang", choices=OVERHANG_POLICIES, default="fail",
                   help="an utterance that runs past its dialogue's end: fail (recorded in failures.jsonl; "
                        "default) or clip it to the part inside (recorded in notes.jsonl and the files' attributes)")
    g.add_argument("--no-report", action="store_true", help="do not write OUT/report.html at the end")
    g.add_argument("--engine", choices=("local", "ray"), default="local",
                   help="local: this process (default); ray: each stage's dialogue groups on a pool of Ray actors, "
                        "one model replica per GPU (pip install 'm3ed[ray]')")
    g.add_argument("--ray-address", metavar="ADDR", help="a running Ray cluster (default: RAY_ADDRESS; else start "
                   "Ray on this machine with all its GPUs)")
    g.add_argument("--shard", metavar="I/N", help="process shard I of N (0-based) of a cluster array job; nothing is "
                   "published until `m3ed merge OUT` (read from SLURM_ARRAY_TASK_ID/SLURM_ARRAY_TASK_COUNT when set)")
    g.add_argument("--shards", type=int, metavar="N", help="number of shards, with the index from JOB_COMPLETION_INDEX "
                   "(a Kubernetes Indexed Job)")
    g.add_argument("--no-progress", action="store_true", help="no progress bars")
    add_debug_argument(parser)
    for stage in stage_registry().values():
        stage.add_arguments(parser)
    return parser


def run_extract(args: argparse.Namespace) -> int:
    stages = [s.strip() for s in args.stages.split(",") if s.strip()]
    order = stage_names()
    unknown = [s for s in stages if s not in order]
    if unknown:
        raise ConfigurationError(f"--stages: unknown {unknown}; choose from {', '.join(order)}")
    stages = [s for s in order if s in stages]  # dependencies run first (asd before visual)
    corpus = load_corpus_from_args(args)
    from ..device import default_device

    args.device = args.device or default_device()
    profile = get_profile(args.profile)
    context = RunContext(corpus=corpus, media=media_from_args(args), store=FeatureStore(args.out),
                         profile=profile, device=args.device, precision=args.precision)
    resolved = {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items() if k != "func"}
    print("m3ed-extract configuration:\n" + json.dumps(resolved, indent=2, ensure_ascii=False, default=str))
    print(f"{len(corpus)} dialogues, {sum(len(d.utterances) for d in corpus)} utterances; stages: {', '.join(stages)}")
    from .extract import run_extraction

    from .shard import shard_from

    shard = shard_from(args.shard, args.shards)
    if shard and args.dialogues:
        raise ConfigurationError("--dialogues and --shard exclude each other: a shard's dialogues follow from the corpus")
    record = run_extraction(corpus, context, stages, args, cut_workers=args.cut_workers,
                            keep_parts=args.keep_parts, progress=not args.no_progress,
                            subset=bool(args.dialogues), overhang=args.overhang, shard=shard,
                            engine=args.engine, ray_address=args.ray_address)
    if shard:
        print(f"shard {shard.label} done; publish with `m3ed merge {context.store.root}` once every shard is")
        return EXIT_DATA_FAILURES if record["failed_dialogues"] or record["refused_utterances"] else EXIT_OK
    code = report_run(context.store, record)
    if not args.no_report and not record.get("read_only"):
        _write_report(context.store.root)
    return code


def _write_report(out_dir: Path) -> None:
    from .report import write_report

    try:
        print(f"report: {write_report(out_dir)}")
    except Exception as e:  # the features are written; a report problem must not hide that
        log.warning("could not write the report (%s: %s); `m3ed report %s` retries it", type(e).__name__, e, out_dir)


def report_run(store: FeatureStore, record: dict) -> int:
    print(f"\nwrote {store.root}:")
    for path in sorted(store.features_dir.glob("*.h5")) if store.features_dir.exists() else []:
        print(f"  {path.relative_to(store.root)}  ({path.stat().st_size / 1e6:.2f} MB)")
    for name in ("manifest.jsonl", "failures.jsonl", "run.json"):
        print(f"  {name}")
    failures = store.read_failures()
    if failures:
        by_set = Counter(f.feature_set for f in failures)
        print(f"{len(failures)} failure(s) recorded in failures.jsonl: "
              + ", ".join(f"{k}: {v}" for k, v in sorted(by_set.items())))
        for failure in failures[:10]:
            where = failure.utterance_id or failure.dialogue_id
            print(f"  [{failure.feature_set}] {where}: {failure.reason.splitlines()[0]}")
    failed = record.get("failed_dialogues", [])
    refused = record.get("refused_utterances", [])
    if record.get("read_only"):
        print(f"{store.root} is read-only and already up to date; nothing was written")
    if failed:
        print(f"{len(failed)} dialogue(s) failed: {', '.join(failed[:20])}; fix what failures.jsonl says "
              f"(or, for passing errors, just re-run the same command to retry them)")
    if refused:
        print(f"{len(refused)} utterance(s) refused for their times: {', '.join(refused[:20])} (see failures.jsonl)")
    return EXIT_DATA_FAILURES if failed or refused else EXIT_OK


def add_debug_argument(parser: argparse.ArgumentParser) -> None:
    # SUPPRESS: `m3ed --debug extract ...` must not be reset by the subcommand's own default.
    parser.add_argument("--debug", action="store_true", default=argparse.SUPPRESS, help="print Python tracebacks of errors")


# Mistakes of the user or of the data given: one "error:" line, no traceback.
USER_ERRORS = (ConfigurationError, LockError, MediaError, ValueError, OSError, KeyError, json.JSONDecodeError)


def run_command(func, args: argparse.Namespace) -> int:
    """Run a command with the exit-code policy of :mod:`m3ed.errors`: 0 done, 1 done with data
    failures, 2 usage or configuration error, 3 internal error, 4 out of resources."""
    with quiet_disk_full_cleanup():
        code = _run_command(func, args)
        gc.collect()   # h5py objects of a failed write go now, while their noise is filtered
    return code


def _run_command(func, args: argparse.Namespace) -> int:
    debug = getattr(args, "debug", False)
    try:
        return int(func(args) or 0)
    except KeyboardInterrupt:
        print("interrupted; re-run the same command to resume", file=sys.stderr)
        return 130
    except Exception as e:
        if isinstance(e, DiskFull):
            code, message = EXIT_RESOURCES, str(e.strerror or e)
        elif isinstance(e, USER_ERRORS):
            code, message = EXIT_USAGE, _user_message(e)
        else:  # a bug: say so, and how to get the details
            code, message = EXIT_INTERNAL, (f"internal error: {type(e).__name__}: {e}"
                                            + ("" if debug else " (re-run with --debug for the traceback)"))
        if debug:
            import traceback

            traceback.print_exception(e)
        print(f"error: {message}", file=sys.stderr)
        return code


def _user_message(error: BaseException) -> str:
    if isinstance(error, KeyError):
        return str(error.args[0]) if error.args else "missing key"
    if isinstance(error, OSError) and error.filename and str(error.filename) not in str(error):
        return f"{error.filename}: {error.strerror or error}"
    return str(error)


def extract_main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    args = build_extract_parser().parse_args(argv)
    return run_command(run_extract, args)


# ---- m3ed subcommands ---------------------------------------------------------------------------
def _run_stats(args: argparse.Namespace) -> int:
    stats = split_stats(load_corpus_from_args(args), definitions=args.definitions)
    print(format_tables(stats))
    if args.json:
        args.json.write_text(json.dumps(stats, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
        print(f"wrote {args.json}")
    return 0


def _run_cut(args: argparse.Namespace) -> int:
    from .cut import cut_corpus

    corpus = load_corpus_from_args(args)
    failures = cut_corpus(corpus, media_from_args(args), args.out / "clips", workers=args.workers,
                          progress=not args.no_progress)
    for failure in failures:
        print(f"failed: {failure.utterance_id or failure.dialogue_id}: {failure.reason}", file=sys.stderr)
    print(f"clips under {args.out / 'clips'}; {len(failures)} failure(s)")
    return 1 if failures else 0


def _run_merge(args: argparse.Namespace) -> int:
    from .extract import merge

    record = merge(args.out)
    code = report_run(FeatureStore(args.out), record)
    if not args.no_report:
        _write_report(args.out)
    return code


def _run_validate(args: argparse.Namespace) -> int:
    corpus = load_corpus_from_args(args, log_problems=False)
    problems = validate(corpus, require_split=args.splits is not None)
    print(f"{len(corpus)} dialogues, {sum(len(d.utterances) for d in corpus)} utterances, {len(problems)} problem(s)")
    for problem in problems:
        print(f"  {problem}")
    return 1 if problems else 0


# Subcommands contributed by other modules: (module, function adding the subparser).
SUBCOMMANDS = (
    ("m3ed.pipelines.finetune", "add_finetune_parser"),
    ("m3ed.pipelines.track_faces", "add_faces_parser"),
    ("m3ed.pipelines.viz", "add_viz_parser"),
    ("m3ed.pipelines.train_fer", "add_train_fer_parser"),
    ("m3ed.pipelines.train", "add_train_parser"),
    ("m3ed.pipelines.export", "add_export_parser"),
    ("m3ed.synthetic", "add_synthetic_parser"),
    ("m3ed.pipelines.report", "add_report_parser"),
    ("m3ed.pipelines.inspect_h5", "add_inspect_parser"),
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="m3ed", description="Multimodal emotion-recognition-in-conversation toolkit.",
                                     epilog="Exit codes: 0 done; 1 done with data failures (see failures.jsonl); "
                                            "2 usage or configuration error; 3 internal error; 4 out of resources.")
    add_debug_argument(parser)
    sub = parser.add_subparsers(dest="command", required=True)
    extract = sub.add_parser("extract", help="the main job (same as m3ed-extract)")
    build_extract_parser(extract)
    extract.set_defaults(func=run_extract)
    stats = sub.add_parser("stats", help="Tables 2, 3 and 4 of the paper for an annotation")
    add_corpus_arguments(stats)
    stats.add_argument("--json", type=Path, help="also write {train,val,test,total} statistics here")
    stats.add_argument("--definitions", choices=("authors", "clean"), default="authors",
                       help="authors: as the paper's own script counted (default); clean: exact counts (README)")
    stats.set_defaults(func=_run_stats)
    validate_cmd = sub.add_parser("validate", help="report every problem in an annotation")
    add_corpus_arguments(validate_cmd)
    validate_cmd.set_defaults(func=_run_validate)
    merge_cmd = sub.add_parser("merge", help="publish the feature files of a sharded run (after every --shard I/N)")
    merge_cmd.add_argument("out", type=Path, help="the output directory the shards wrote")
    merge_cmd.add_argument("--no-report", action="store_true", help="do not write OUT/report.html")
    merge_cmd.set_defaults(func=_run_merge)
    cut = sub.add_parser("cut", help="cut dialogue and utterance clips (mp4 + 16 kHz wav)")
    add_corpus_arguments(cut)
    add_media_arguments(cut)
    cut.add_argument("--out", type=Path, default=Path("m3ed_features"), help="output directory (clips go to OUT/clips)")
    cut.add_argument("--workers", type=int, default=2, help="parallel ffmpeg processes")
    cut.add_argument("--no-progress", action="store_true")
    cut.set_defaults(func=_run_cut)
    for module, function in SUBCOMMANDS:
        try:
            getattr(importlib.import_module(module), function)(sub)
        except ModuleNotFoundError as e:
            if e.name != module:
                raise
    return parser


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    args = build_parser().parse_args(argv)
    return run_command(args.func, args)
