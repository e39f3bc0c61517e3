"""Command-line arguments of ``specdiff prepare``, ``specdiff train`` and ``specdiff export``.

Kept apart from ``specdiff.train`` and ``specdiff.data`` (which import torch) so that building the
``specdiff`` parser stays light: the ``run_*`` functions import the heavy modules when a command runs.
Each ``add_*_arguments(subparsers)`` adds one subcommand and sets ``func`` to its ``run_*``.
"""

from __future__ import annotations

import argparse

#: Training presets (``specdiff.train.TRAIN_PRESETS``; a test keeps the two in sync).
TRAIN_PRESET_NAMES = ("base", "small", "tiny")

#: Explicit ``specdiff train`` flags -> TrainConfig fields (every other field: ``--set key=value``).
TRAIN_FLAGS: dict[str, tuple[str, type, str]] = {
    "data": ("--data", str, "feature cache folder (specdiff prepare) or 'synthetic' for a smoke test"),
    "val_data": ("--val-data", str, "held-out feature cache (default: the validation split of --data)"),
    "out_dir": ("--out", str, "run folder: checkpoints/, metrics.jsonl, samples/, tensorboard/"),
    "steps": ("--steps", int, "total optimiser steps"),
    "batch_size": ("--batch-size", int, "global batch (all processes and micro-batches)"),
    "micro_batch_size": ("--micro-batch-size", int, "per-process batch per forward pass (0: no accumulation)"),
    "lr": ("--lr", float, "learning rate (constant)"),
    "optimizer": ("--optimizer", str, "adafactor (the original) or adamw"),
    "device": ("--device", str, "auto, cpu, cuda or cuda:N"),
    "seed": ("--seed", int, "run seed"),
    "num_workers": ("--num-workers", int, "DataLoader worker processes"),
    "num_threads": ("--threads", int, "torch intra-op threads (0: torch's default)"),
    "init_from": ("--init-from", str, "warm start a new run from a checkpoint's weights and EMA, or from a pipeline "
                  "folder's weights (specdiff export, or the official model in diffusers layout); new optimiser, "
                  "step 0; ignored once --out has checkpoints"),
}


def add_train_arguments(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Add ``train`` (single process, or under torchrun for DDP)."""
    parser = subparsers.add_parser(
        "train",
        help="train a model (single process, or under torchrun for DDP)",
        description="Train Spectrogram Diffusion on a feature cache (specdiff prepare). Any TrainConfig field "
        "can be set with --set key=value (model sizes with --set model.d_model=64). Resumes from the newest "
        "checkpoint in --out by default, with the run's saved config.json (flags given again override it). "
        "Data-parallel: torchrun --nproc_per_node N -m specdiff.train train ...",
    )
    parser.add_argument("--preset", default=None, choices=TRAIN_PRESET_NAMES,
                        help="training preset (default: tiny; a resumed run keeps its own)")
    for dest, (flag, kind, text) in TRAIN_FLAGS.items():
        parser.add_argument(flag, dest=dest, type=kind, default=None, help=text)
    parser.add_argument("--set", dest="assignments", action="append", default=[], metavar="KEY=VALUE",
                        help="override any config field (repeatable)")  # fmt: skip
    parser.add_argument("--resume", default="auto", help="auto (default), no, or a checkpoint path")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.set_defaults(func=run_train)
    return parser


def run_train(args: argparse.Namespace) -> int:
    from specdiff import train

    return train.run_train(args)


def add_export_arguments(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Add ``export`` (training checkpoint -> pipeline folder)."""
    parser = subparsers.add_parser(
        "export",
        help="write a training checkpoint as a pipeline folder",
        description="Export a training checkpoint (a .pt file, or a run folder: its newest checkpoint) to the "
        "diffusers folder layout that SpectrogramDiffusionPipeline.from_pretrained loads (EMA weights).",
    )
    parser.add_argument("checkpoint", help="checkpoint file or run folder")
    parser.add_argument("out", help="output folder")
    parser.add_argument("--no-ema", action="store_true", help="export the raw weights instead of the EMA")
    parser.add_argument("--vocoder", default=None, help="trained vocoder folder to copy in (vocoder/)")
    parser.add_argument("--half", action="store_true", help="store the weights as float16 (half the size; they load as float32)")
    parser.set_defaults(func=run_export)
    return parser


def run_export(args: argparse.Namespace) -> int:
    from specdiff import train

    return train.run_export(args)


def add_prepare_arguments(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Add ``prepare`` (song pairs -> feature cache)."""
    parser = subparsers.add_parser(
        "prepare",
        help="build a training feature cache from (MIDI, audio) pairs or MIDI files to render",
        description="Cache log-mel features and notes of training songs (resumable; bad files are skipped "
        "and listed in failures.json). SOURCE: 'demo' (the bundled corpus, rendered), 'maestro:PATH', "
        "'slakh:PATH', 'folder:PATH' (x.mid + x.wav/flac), 'render:PATH' (MIDI files), or a bare path "
        "(the kind is detected).",
    )
    parser.add_argument("source", help="demo, maestro:PATH, slakh:PATH, folder:PATH, render:PATH or PATH")
    parser.add_argument("cache_dir", help="output feature cache folder")
    parser.add_argument("--workers", type=int, default=None, help="worker processes (default: all cores)")
    parser.add_argument("--variants", type=int, default=1,
                        help="renders per MIDI file; all but the first re-assign programs at random (render, demo)")
    parser.add_argument("--seed", type=int, default=0, help="seed of program re-assignment / Slakh sub-mixes")
    parser.add_argument("--soundfont", default=None, help=".sf2/.sf3 file (default: pretty_midi's TimGM6mb.sf2)")
    parser.add_argument("--backend", default="auto", help="renderer: auto, tinysoundfont or fluidsynth")
    parser.add_argument("--subsets-per-song", type=int, default=10, help="Slakh sub-mixes per track (spec §4.4)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.set_defaults(func=run_prepare)  # fmt: skip
    return parser


def run_prepare(args: argparse.Namespace) -> int:
    from specdiff import data

    pairs = data.discover_with_options(
        args.source, variants=args.variants, seed=args.seed, soundfont=args.soundfont, backend=args.backend,
        subsets_per_song=args.subsets_per_song,
    )  # fmt: skip
    counts = data.build_cache(pairs, args.cache_dir, workers=args.workers, progress=not args.no_progress)
    print(", ".join(f"{k} {v}" for k, v in counts.items()) + f"; cache {args.cache_dir}")
    return 0


#: Everything this module adds to a CLI.
SUBCOMMANDS = (add_prepare_arguments, add_train_arguments, add_export_arguments)
