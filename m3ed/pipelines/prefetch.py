"""``m3ed prefetch PROFILE`` (also ``python -m m3ed.pipelines.prefetch``): the command line of
:mod:`m3ed.prefetch`. Exit status: 0 everything is here, 2 something is missing (the message names
it and how to provide it)."""
from __future__ import annotations

import argparse
import os
import sys

from ..errors import EXIT_OK, EXIT_USAGE
from ..prefetch import ASD_CHOICES, plan, prefetch, with_revisions
from ..profiles import PROFILES, ModelUnavailable, cache_dir, get_profile
from ..weights import WeightsError


DESCRIPTION = ("Download the weights a run of m3ed-extract with PROFILE loads, into HF_HOME, TORCH_HOME and "
               "M3ED_CACHE, so that the run needs no network. With HF_HUB_OFFLINE=1, hub models are only looked up "
               "in the cache.")
EPILOG = ("The paper profile's DenseNet FER checkpoint is not public: pass it to m3ed-extract with "
          "--fer-checkpoint (m3ed train-fer makes one), or give its URL here to cache it.")


def add_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    parser.add_argument("profile", choices=sorted(PROFILES), help="the profile whose weights to fetch")
    parser.add_argument("--text-revision", help="hub revision of the text model (default: $M3ED_TEXT_REVISION, "
                                                "else the profile's)")
    parser.add_argument("--audio-revision", help="hub revision of the audio model (default: $M3ED_AUDIO_REVISION, "
                                                 "else the profile's)")
    parser.add_argument("--asd-models", default="talknet",
                        help=f"comma-separated ASD scorers to fetch, from {', '.join(ASD_CHOICES)} "
                             "(default: %(default)s; Light-ASD's weights ship in the package)")
    parser.add_argument("--fer-checkpoint", help="a DenseNet FER checkpoint URL (or file) to cache and check")
    return parser


def add_prefetch_parser(subparsers) -> None:
    parser = subparsers.add_parser("prefetch", help="download a profile's weights for offline runs",
                                   description=DESCRIPTION, epilog=EPILOG)
    add_arguments(parser).set_defaults(func=run_prefetch)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="m3ed prefetch", description=DESCRIPTION, epilog=EPILOG)
    return run_prefetch(add_arguments(parser).parse_args(argv))


def run_prefetch(args: argparse.Namespace) -> int:
    asd_models = [m.strip() for m in args.asd_models.split(",") if m.strip()]
    unknown = sorted(set(asd_models) - set(ASD_CHOICES))
    if unknown:
        print(f"m3ed prefetch: --asd-models: unknown {unknown}; choose from {', '.join(ASD_CHOICES)}", file=sys.stderr)
        return EXIT_USAGE
    profile = with_revisions(get_profile(args.profile), args.text_revision, args.audio_revision)
    from ..models.checkpoint import CheckpointError  # imports torch: not for --help

    try:
        prefetch(plan(profile, asd_models, args.fer_checkpoint))
    except (ModelUnavailable, WeightsError) as e:
        print(f"m3ed prefetch: {e}", file=sys.stderr)
        return EXIT_USAGE
    except CheckpointError as e:  # downloaded, but not the expected weights (e.g. an HTML error page)
        print(f"m3ed prefetch: {e}\n  Delete the file and run again, or provide the file by hand.", file=sys.stderr)
        return EXIT_USAGE
    print(f"profile {profile.name}: every model is cached (HF_HOME={os.environ.get('HF_HOME', 'default')}, "
          f"TORCH_HOME={os.environ.get('TORCH_HOME', 'default')}, M3ED_CACHE={cache_dir()})")
    return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
