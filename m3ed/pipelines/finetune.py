"""``m3ed finetune text|audio``: the command line of :mod:`m3ed.extract.finetune`."""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from ..extract.audio import receptive_field
from ..extract.finetune import (DEFAULTS, PAPER_WEIGHTED_F1, FinetuneConfig, Split, Trainer, audio_examples, format_table,
                                input_rule, text_examples)
from ..device import default_device
from ..files import atomic_write_text
from ..profiles import PROFILES
from .arguments import add_corpus_arguments, add_media_arguments, load_corpus_from_args, media_from_args


def run_finetune(args: argparse.Namespace) -> int:
    modality = args.modality
    corpus = load_corpus_from_args(args)
    config = FinetuneConfig(
        modality=modality, out=args.out, profile=args.profile, model=args.model, epochs=args.epochs,
        lr=args.lr or DEFAULTS[modality]["lr"], batch_size=args.batch_size or DEFAULTS[modality]["batch_size"],
        class_weighted=args.class_weighted, device=args.device or default_device(),
        max_steps=args.max_steps, audio_ft_seconds=args.audio_ft_seconds, max_seconds=args.max_seconds,
        seed=args.seed, progress=not args.no_progress)
    started = time.perf_counter()
    trainer = Trainer(config)
    if modality == "text":
        examples = text_examples(corpus)
    else:
        examples = audio_examples(corpus, media_from_args(args), input_rule(config), trainer.processor,
                                  receptive_field(trainer.model.encoder.config))
    split_of = {u.id: d.split for d in corpus for u in d.utterances}
    splits = {name: Split([e for e in examples if split_of[e.id] == name]) for name in ("train", "val", "test")}
    print(f"finetune {modality}: {', '.join(f'{k} {len(v.examples)}' for k, v in splits.items())} labelled utterances")
    result = trainer.fit(splits)
    atomic_write_text(Path(config.out) / "metrics.json",
                      json.dumps({"modality": modality, "best_epoch": result["best"]["epoch"],
                                  "val": result["best"]["val"], "test": result["best"]["test"],
                                  "paper_weighted_f1": PAPER_WEIGHTED_F1[modality],
                                  "seconds": round(time.perf_counter() - started, 1)}, indent=2) + "\n")
    print(format_table(modality, result["best"]))
    print(f"checkpoint: {config.out} (use it with --{modality}-finetuned {config.out})")
    return 0



def add_finetune_parser(subparsers) -> None:
    parser = subparsers.add_parser("finetune", help="fine-tune the text or audio encoder on the emotions "
                                   "(checkpoints for roberta_ft_cls / wav2vec2_ft_last)")
    modalities = parser.add_subparsers(dest="modality", required=True)
    for modality in ("text", "audio"):
        p = modalities.add_parser(modality, formatter_class=argparse.ArgumentDefaultsHelpFormatter,
                                  help=f"fine-tune the {modality} encoder + a linear classifier")
        add_corpus_arguments(p)
        if modality == "audio":
            add_media_arguments(p)
            p.add_argument("--audio-ft-seconds", type=float, default=4.0,
                           help="input: each utterance normalised, then zero-padded or clipped to this length (the "
                                "authors' 4 s); 0: variable length up to --max-seconds. Recorded in finetune.json, "
                                "and the extractor feeds wav2vec2_ft_last the same input")
            p.add_argument("--max-seconds", type=float, default=10.0,
                           help="with --audio-ft-seconds 0: utterances are clipped to this length (memory)")
        p.add_argument("--out", type=Path, required=True, help="checkpoint directory to write")
        p.add_argument("--profile", choices=sorted(PROFILES), default="paper", help="base encoder weights")
        p.add_argument("--model", help="another base encoder (hub id or directory) than the profile's")
        p.add_argument("--epochs", type=int, help="epochs (default: the authors' recipe, text 6, audio 10)")
        p.add_argument("--lr", type=float, help=f"learning rate (default {DEFAULTS[modality]['lr']})")
        p.add_argument("--batch-size", type=int, help=f"utterances per step (default {DEFAULTS[modality]['batch_size']})")
        p.add_argument("--class-weighted", action="store_true", help="weight the loss by inverse class frequency")
        p.add_argument("--device", help="cpu, cuda or cuda:N (default: cuda when available); bf16 autocast on CUDA")
        p.add_argument("--max-steps", type=int, help="stop after this many optimizer steps")
        p.add_argument("--seed", type=int, default=0)
        p.add_argument("--no-progress", action="store_true", help="no progress bars")
        p.set_defaults(func=run_finetune, modality=modality, max_seconds=10.0, audio_ft_seconds=4.0)
