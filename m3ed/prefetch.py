"""Fetch a profile's model weights ahead of a run (``m3ed prefetch paper``, :mod:`m3ed.pipelines.prefetch`).

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

import sys
from dataclasses import dataclass
from typing import Callable

from .profiles import Profile

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
