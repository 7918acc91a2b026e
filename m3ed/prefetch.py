"""Fetch a profile's model weights ahead of a run: ``python -m m3ed.prefetch paper``.

For machines that have no network at run time: the Docker image (``--build-arg PREFETCH=paper``)
and a shared cache volume filled once before a cluster job. Every model is loaded through the
functions a run uses (:func:`m3ed.extract.hf_models.load_text`, :func:`~m3ed.asd.score.build_scorer`,
:func:`~m3ed.asd.embed.build_embedder`, all built on :func:`m3ed.profiles.load_pretrained` and
:func:`m3ed.profiles.fetch_checkpoint`), so the files land where a run looks them up
(``HF_HOME``, ``TORCH_HOME``, ``M3ED_CACHE``) and a checkpoint that does not load fails here, not
hours into a job.

Hub revisions: ``--text-revision``/``--audio-revision``, by default ``$M3ED_TEXT_REVISION`` /
``$M3ED_AUDIO_REVISION`` as a run reads them (:func:`m3ed.profiles.get_profile`; the image sets
both). With ``HF_HUB_OFFLINE=1`` the hub models are only looked up in the cache (a quick check that
it is complete). Exit status: 0 everything is here, 2 something is missing (the message names it
and how to provide it).
"""
from __future__ import annotations

import argparse
import os
import sys
from dataclasses import dataclass
from typing import Callable

from .errors import EXIT_OK, EXIT_USAGE
from .profiles import PROFILES, ModelUnavailable, Profile, cache_dir, get_profile
from .weights import WeightsError

ASD_CHOICES = ("talknet", "light-asd")


@dataclass(frozen=True)
class Step:
    what: str                    # printed before the step, e.g. "text model hfl/...@5c58d0b"
    load: Callable[[], object]   # the run's own loading function; raises ModelUnavailable


def with_revisions(profile: Profile, text: str | None = None, audio: str | None = None) -> Profile:
    """The profile with explicit hub revisions, if given (else what :func:`get_profile` resolved)."""
    if profile.random_init:
        return profile  # built locally; a revision means nothing
    return profile.with_overrides(text_revision=text, audio_revision=audio)


def plan(profile: Profile, asd_models: list[str], fer_checkpoint: str | None = None) -> list[Step]:
    """What a run with ``profile`` loads, in the order a run loads it. Imports are deferred so that
    ``--help`` does not import torch."""
    from .asd.embed import build_embedder
    from .asd.score import build_scorer
    from .extract.face import resolve_checkpoint
    from .extract.hf_models import load_audio, load_text, model_spec

    def hub(name: str, revision: str | None) -> str:
        return name if profile.random_init else f"{name}@{revision or 'main (unpinned)'}"

    steps = [
        Step(f"text model {hub(profile.text_model, profile.text_revision)}",
             lambda: load_text(model_spec(profile, "text"))),
        Step(f"audio model {hub(profile.audio_model, profile.audio_revision)}",
             lambda: load_audio(model_spec(profile, "audio"))),
    ]
    steps += [Step(f"ASD model {name}", lambda name=name: build_scorer(profile, "cpu", model=name))
              for name in asd_models]
    steps.append(Step(f"face embedder InceptionResnetV1 ({profile.face_embedder or 'random'})",
                      lambda: build_embedder(profile)))
    if fer_checkpoint:
        steps.append(Step(f"DenseNet FER checkpoint {fer_checkpoint}",
                          lambda: resolve_checkpoint(profile, fer_checkpoint)))
    return steps


def prefetch(steps: list[Step], out=sys.stdout) -> None:
    """Run every step; the first model that cannot be had raises :class:`ModelUnavailable`."""
    for i, step in enumerate(steps, 1):
        print(f"[{i}/{len(steps)}] {step.what}", file=out, flush=True)
        step.load()


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m m3ed.prefetch",
        description="Download the weights a run of m3ed-extract with "
                    "PROFILE loads, into HF_HOME, TORCH_HOME and M3ED_CACHE, so that the run needs no network. "
                    "With HF_HUB_OFFLINE=1, hub models are only looked up in the cache.",
        epilog="The paper profile's DenseNet FER checkpoint is not public: pass it to m3ed-extract with "
               "--fer-checkpoint (m3ed train-fer makes one), or give its URL here to cache it.")
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


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    asd_models = [m.strip() for m in args.asd_models.split(",") if m.strip()]
    unknown = sorted(set(asd_models) - set(ASD_CHOICES))
    if unknown:
        parser.error(f"--asd-models: unknown {unknown}; choose from {', '.join(ASD_CHOICES)}")
    profile = with_revisions(get_profile(args.profile), args.text_revision, args.audio_revision)
    from .models.checkpoint import CheckpointError  # imports torch: not for --help

    try:
        prefetch(plan(profile, asd_models, args.fer_checkpoint))
    except (ModelUnavailable, WeightsError) as e:
        print(f"m3ed.prefetch: {e}", file=sys.stderr)
        return EXIT_USAGE
    except CheckpointError as e:  # downloaded, but not the expected weights (e.g. an HTML error page)
        print(f"m3ed.prefetch: {e}\n  Delete the file and run again, or provide the file by hand.", file=sys.stderr)
        return EXIT_USAGE
    print(f"profile {profile.name}: every model is cached (HF_HOME={os.environ.get('HF_HOME', 'default')}, "
          f"TORCH_HOME={os.environ.get('TORCH_HOME', 'default')}, M3ED_CACHE={cache_dir()})")
    return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
