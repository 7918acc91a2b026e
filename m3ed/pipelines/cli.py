"""Command line: ``m3ed-extract`` (the main job) and ``m3ed`` (subcommands).

The CLI only fills configuration and calls the library; everything it does is also a function.
"""
from __future__ import annotations

import argparse
import contextlib
import gc
import importlib
import importlib.util
import json
import logging
import signal
import sys
import threading
import typing
from collections import Counter
from pathlib import Path

from ..config import STAGE_SECTIONS, ExtractConfig, RunOptions, media_source
from ..errors import EXIT_DATA_FAILURES, EXIT_INTERNAL, EXIT_OK, EXIT_RESOURCES, EXIT_USAGE, ConfigurationError
from ..files import DiskFull, quiet_disk_full_cleanup
from ..lock import LockError
from ..media import MediaError
from ..stage import stage_names
from ..stats import format_tables, split_stats
from ..store import FeatureStore
from ..validate import validate
from .arguments import (add_corpus_arguments, add_media_arguments, add_options, config_from_args, load_corpus_from_args,
                        media_from_args)

log = logging.getLogger(__name__)


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
    add_options(parser, RunOptions, "run", "run")
    add_debug_argument(parser)
    sections = typing.get_type_hints(ExtractConfig)   # a stage's options class, without importing the stage
    for name in stage_names():
        if name in STAGE_SECTIONS:
            add_options(parser, sections[name], name, f"{name} stage")
    return parser


def run_extract(args: argparse.Namespace) -> int:
    from .extract import extract_resolved, resolve, run_context

    config = resolve(config_from_args(args))
    print("m3ed-extract configuration:\n" + json.dumps(config.to_dict(), indent=2, ensure_ascii=False, default=str))
    context = run_context(config)
    record = extract_resolved(context, config)
    store = context.store
    if record.get("sharded"):
        print(f"shard {record['shard']} done; publish with `m3ed merge {store.root}` once every shard is")
        return EXIT_DATA_FAILURES if record["failed_dialogues"] or record["refused_utterances"] else EXIT_OK
    code = report_run(store, record)
    if config.run.report and not record.get("read_only"):
        _write_report(store.root)
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


class Terminated(BaseException):
    """SIGTERM (a scheduler's time limit, ``kill``): unwinds like Ctrl-C, so that the cleanup runs."""


def _terminate(signum, frame) -> None:
    raise Terminated


@contextlib.contextmanager
def _sigterm_unwinds():
    if threading.current_thread() is not threading.main_thread():
        yield   # signal handlers belong to the main thread
        return
    previous = signal.signal(signal.SIGTERM, _terminate)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def run_command(func, args: argparse.Namespace) -> int:
    """Run a command with the exit-code policy of :mod:`m3ed.errors`: 0 done, 1 done with data
    failures, 2 usage or configuration error, 3 internal error, 4 out of resources; 130 and 143
    when interrupted (SIGINT, SIGTERM)."""
    with quiet_disk_full_cleanup(), _sigterm_unwinds():
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
    except Terminated:
        print("terminated (SIGTERM); re-run the same command to resume", file=sys.stderr)
        return 128 + signal.SIGTERM
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
    from .merge import merge

    record = merge(args.out)
    code = report_run(FeatureStore(args.out), record)
    if not args.no_report:
        _write_report(args.out)
    return code


def _run_validate(args: argparse.Namespace) -> int:
    corpus = load_corpus_from_args(args, log_problems=False, refuse_broken_files=False)
    config = config_from_args(args).resolved()
    videos = config.media.videos
    if videos is not None and not Path(videos).is_dir():
        raise ConfigurationError(f"--videos {videos}: no such folder")
    problems = validate(corpus, require_split=config.corpus.splits is not None, media=media_source(config))
    print(f"{len(corpus)} dialogues, {sum(len(d.utterances) for d in corpus)} utterances, {len(problems)} problem(s)")
    for problem in problems:
        print(f"  {problem}")
    return 1 if problems else 0


# Subcommands of other modules, imported only when named (so that `m3ed --help` loads no model code):
# name -> (module, function adding its subparser, the help line `m3ed --help` shows).
SUBCOMMANDS = {
    "finetune": ("m3ed.pipelines.finetune", "add_finetune_parser",
                 "fine-tune the text or audio encoder on the emotions (checkpoints for roberta_ft_cls / wav2vec2_ft_last)"),
    "faces": ("m3ed.pipelines.track_faces", "add_faces_parser",
              "detect and track faces in a video (the asd stage's first steps)"),
    "viz-asd": ("m3ed.pipelines.viz", "add_viz_parser",
                "render a dialogue with its face tracks, ASD scores and chosen speaker faces"),
    "train-fer": ("m3ed.pipelines.train_fer", "add_train_fer_parser",
                  "train the DenseNet FER model (FER+ and/or AffectNet) for the visual stage"),
    "train": ("m3ed.pipelines.train", "add_train_parser", "train and evaluate a downstream model (Tables 5/6)"),
    "export": ("m3ed.pipelines.export", "add_export_parser",
               "write features for DialogueRNN/DialogueGCN/MMGCN, MMIN or MEmoConv's utt_baseline"),
    "make-synthetic": ("m3ed.pipelines.make_synthetic", "add_synthetic_parser",
                       "write a synthetic feature directory (tests, demos, benchmarks)"),
    "prefetch": ("m3ed.pipelines.prefetch", "add_prefetch_parser", "download a profile's weights for offline runs"),
    "report": ("m3ed.pipelines.report", "add_report_parser",
               "write OUT/report.html (plots, tables) and OUT/report.json for a run"),
    "inspect": ("m3ed.pipelines.inspect_h5", "add_inspect_parser", "summarise a feature file (.h5), or one key of it"),
}


def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    """The ``m3ed`` parser; of the :data:`SUBCOMMANDS`, only ``command``'s module is imported (the
    others are listed by name and help)."""
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
    validate_cmd = sub.add_parser("validate", help="report every problem in an annotation (and, with --videos or "
                                                   "a manifest's video column, every missing video)")
    add_corpus_arguments(validate_cmd)
    add_media_arguments(validate_cmd)
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
    for name, (module, function, help_line) in SUBCOMMANDS.items():
        if importlib.util.find_spec(module) is None:
            continue   # a module left out of this installation
        if name == command:
            getattr(importlib.import_module(module), function)(sub)
        else:
            sub.add_parser(name, help=help_line, add_help=False)
    return parser


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    argv = sys.argv[1:] if argv is None else argv
    command = next((a for a in argv if not a.startswith("-")), None)   # the only other options are flags
    args = build_parser(command).parse_args(argv)
    return run_command(args.func, args)
