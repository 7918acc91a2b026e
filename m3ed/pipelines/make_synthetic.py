"""``m3ed make-synthetic``: the command line of :mod:`m3ed.synthetic`."""
from __future__ import annotations

import argparse
from pathlib import Path

from .. import synthetic
from ..synthetic import SyntheticConfig, make_synthetic


def _dims(text: str) -> tuple[int, int, int]:
    try:
        values = tuple(int(x) for x in text.split(","))
    except ValueError:
        values = ()
    if len(values) != 3:
        raise argparse.ArgumentTypeError(f"--dims {text!r}: expected three integers TEXT,AUDIO,VISUAL, e.g. 768,1024,342")
    return values  # type: ignore[return-value]


def add_synthetic_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Add ``m3ed make-synthetic`` to a CLI's subparsers."""
    parser = subparsers.add_parser(
        "make-synthetic", help="write a synthetic feature directory (tests, demos, benchmarks)",
        description=synthetic.__doc__.split("\n\n")[0])
    defaults = SyntheticConfig()
    parser.add_argument("--out", required=True, type=Path, help="output directory")
    parser.add_argument("--dialogues", type=int, default=defaults.dialogues, help="number of dialogues (default %(default)s)")
    parser.add_argument("--seed", type=int, default=defaults.seed, help="random seed (default %(default)s)")
    parser.add_argument("--dims", type=_dims, default=defaults.dims,
                        help="feature dimensions TEXT,AUDIO,VISUAL (default 64,64,32; M3ED: 768,1024,342)")
    parser.add_argument("--no-frames", action="store_true", help="write only the utterance-level sets")
    parser.add_argument("--inertia", type=float, default=defaults.inertia,
                        help="probability that a speaker keeps their previous emotion (default %(default)s)")
    parser.set_defaults(func=_run)
    return parser


def _run(args: argparse.Namespace) -> int:
    config = SyntheticConfig(dialogues=args.dialogues, seed=args.seed, dims=args.dims,
                             frames=not args.no_frames, inertia=args.inertia)
    make_synthetic(args.out, config, verbose=True)
    return 0
