"""Command-line arguments of ``specdiff prepare``, ``specdiff train`` and ``specdiff export``.

Kept apart from ``specdiff.training`` and ``specdiff.data.cache`` (which import torch) so that building the
``specdiff`` parser stays light: the ``run_*`` functions import the heavy modules when a command runs.
Imports run one way: this module uses ``specdiff.training``, never the reverse.
Each ``add_*_arguments(subparsers)`` adds one subcommand and sets ``func`` to its ``run_*``.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
from pathlib import Path

from specdiff.constants import TRAIN_PRESET_NAMES
from specdiff.errors import ModelError, SpecdiffError

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
    "init_from": (
        "--init-from",
        str,
        "warm start a new run from a checkpoint's weights and EMA, or from a pipeline "
        "folder's weights (specdiff export, or the official model in diffusers layout) or a Hugging Face "
        "Hub id (e.g. google/music-spectrogram-diffusion); new optimiser, step 0; ignored once --out has "
        "checkpoints",
    ),
}


def add_train_arguments(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Add ``train`` (single process, or under torchrun for DDP)."""
    parser = subparsers.add_parser(
        "train",
        help="train a model (single process, or under torchrun for DDP)",
        description="Train Spectrogram Diffusion on a feature cache (specdiff prepare). Any TrainConfig field "
        "can be set with --set key=value (model sizes with --set model.d_model=64). Resumes from the newest "
        "checkpoint in --out by default, with the run's saved config.json (flags given again override it). "
        "Data-parallel: torchrun --nproc_per_node N -m specdiff train ...",
    )
    parser.add_argument(
        "--preset",
        default=None,
        choices=TRAIN_PRESET_NAMES,
        help="training preset (default: tiny; a resumed run keeps its own)",
    )
    for dest, (flag, kind, text) in TRAIN_FLAGS.items():
        parser.add_argument(flag, dest=dest, type=kind, default=None, help=text)
    parser.add_argument("--set", dest="assignments", action="append", default=[], metavar="KEY=VALUE",
                        help="override any config field (repeatable)")  # fmt: skip
    parser.add_argument("--resume", default="auto", help="auto (default), no, or a checkpoint path")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.set_defaults(func=run_train)
    return parser


def config_from_args(args: argparse.Namespace):
    """The TrainConfig of parsed ``specdiff train`` arguments (preset, then flags, then ``--set``)."""
    from specdiff.training.config import TrainConfig, apply_overrides
    from specdiff.training.export import with_folder_decoder_options

    explicit = {dest: getattr(args, dest) for dest in TRAIN_FLAGS if getattr(args, dest, None) is not None}
    config = TrainConfig.from_preset(args.preset or "tiny")
    out_dir = explicit.get("out_dir", config.out_dir)
    saved = _saved_run_config(out_dir, getattr(args, "resume", "auto"))
    if saved is not None and args.preset in (None, saved.preset):
        # Resuming: the run's own recipe, not the preset's defaults (a different recipe would not even
        # load its optimiser state, e.g. other parameter groups). Flags given again still win.
        overridden = sorted(k for k in explicit if k != "out_dir") + list(args.assignments)
        print(
            f"continuing the run in {out_dir} with its config.json"
            + (f" (overridden: {', '.join(overridden)})" if overridden else "")
        )
        config = saved
    config = apply_overrides(config.replace(**explicit), args.assignments)
    if config.init_from and saved is None:
        from specdiff.pipeline.hub import resolve_model_path

        # A Hub id (ORG/NAME[@REVISION]) becomes its folder in the Hugging Face cache; the run's
        # config.json records that folder.
        config = config.replace(init_from=str(resolve_model_path(config.init_from)))
    return with_folder_decoder_options(config)


def _saved_run_config(out_dir: str, resume: str | None):
    """The config.json of a run folder that ``--resume`` will continue, else None."""
    from specdiff.training.checkpoints import list_checkpoints
    from specdiff.training.config import TrainConfig
    from specdiff.training.loop import NO_RESUME

    if resume in NO_RESUME or not list_checkpoints(out_dir):
        return None
    path = Path(out_dir) / "config.json"
    if not path.exists():
        return None
    try:
        saved = json.loads(path.read_text())
        known = {f.name for f in dataclasses.fields(TrainConfig)}
        return TrainConfig(**{k: v for k, v in saved.items() if k in known})
    except (ValueError, TypeError) as exc:
        raise SpecdiffError(f"{path} is not a readable training config: {exc}") from None


def run_train(args: argparse.Namespace) -> int:
    """``specdiff train``: train (or resume) the configured run."""
    import torch.distributed as dist

    from specdiff.training.loop import train

    config = config_from_args(args)
    try:
        records = train(config, resume=args.resume, progress=not args.no_progress)
    except BaseException:
        if dist.is_initialized():
            dist.destroy_process_group()  # no barrier: the other ranks may never reach it
        raise
    if dist.is_initialized():
        # Why the barrier: a rank that tears its gloo group down while another still has collectives
        # in flight can abort at exit ("terminate called without an active exception", seen once in
        # tests/test_train.py's two-process run under a loaded CPU).
        dist.barrier()
        dist.destroy_process_group()
    if records and int(os.environ.get("RANK", "0")) == 0:
        print(f"step {records[-1].step}: loss {records[-1].loss:.5f}; run folder {config.out_dir}")
    return 0


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
    parser.add_argument(
        "--half", action="store_true", help="store the weights as float16 (half the size; they load as float32)"
    )
    parser.set_defaults(func=run_export)
    return parser


def run_export(args: argparse.Namespace) -> int:
    """``specdiff export``: a checkpoint (or a run folder's newest) -> pipeline folder."""
    from specdiff.training.checkpoints import list_checkpoints
    from specdiff.training.export import export_pipeline

    checkpoint = Path(args.checkpoint)
    if checkpoint.is_dir():
        found = list_checkpoints(checkpoint)
        if not found:
            raise ModelError(f"no checkpoints in {checkpoint}")
        checkpoint = found[-1]
    out = export_pipeline(checkpoint, args.out, use_ema=not args.no_ema, vocoder=getattr(args, "vocoder", None),
                          half=getattr(args, "half", False))  # fmt: skip
    print(f"wrote {out} from {checkpoint}")
    return 0


def add_prepare_arguments(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Add ``prepare`` (song pairs -> feature cache)."""
    parser = subparsers.add_parser(
        "prepare",
        help="build a training feature cache from (MIDI, audio) pairs or MIDI files to render",
        description="Cache log-mel features and notes of training songs (resumable; bad files are skipped "
        "and listed in failures.json). SOURCE: 'demo' (the bundled corpus, rendered), 'maestro:PATH', "
        "'slakh:PATH', 'folder:PATH' (x.mid + x.wav/flac), 'render:PATH' (MIDI files), 'idioms[:N]' (N "
        "generated band-music pieces, specdiff.data.idioms, default 400, with their own fixed split), 'breaks[:N]' "
        "(N generated drum breaks: the kit mostly alone, stop-time hits, lone hits decaying into silence), or a "
        "bare path (the kind is detected).",
    )
    parser.add_argument(
        "source", help="demo, idioms[:N], breaks[:N], maestro:PATH, slakh:PATH, folder:PATH, render:PATH or PATH"
    )
    parser.add_argument("cache_dir", help="output feature cache folder")
    parser.add_argument("--workers", type=int, default=None, help="worker processes (default: all cores)")
    parser.add_argument(
        "--variants",
        type=int,
        default=1,
        help="renders per MIDI file; all but the first re-assign programs at random (render, demo)",
    )
    parser.add_argument("--seed", type=int, default=0, help="seed of program re-assignment / Slakh sub-mixes")
    parser.add_argument(
        "--soundfont",
        action="append",
        default=None,
        metavar="SF2_OR_NAME",
        help=".sf2/.sf3 file or timbre name (TimGM6mb, FluidR3_GM, MuseScore_General; default: pretty_midi's "
        "TimGM6mb.sf2). Repeat it to render every piece with each SoundFont; the cache records each song's "
        "timbre, so a model with timbres can be conditioned on it",
    )
    parser.add_argument("--backend", default="auto", help="renderer: auto, tinysoundfont or fluidsynth")
    parser.add_argument("--subsets-per-song", type=int, default=10, help="Slakh sub-mixes per track (ORIGINAL.md §4.4)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.set_defaults(func=run_prepare)  # fmt: skip
    return parser


def run_prepare(args: argparse.Namespace) -> int:
    from specdiff.data.cache import build_cache
    from specdiff.data.render import find_soundfont
    from specdiff.data.songs import discover_with_options, with_soundfonts

    soundfonts = [str(find_soundfont(s)) for s in args.soundfont] if args.soundfont else [None]
    pairs = discover_with_options(
        args.source, variants=args.variants, seed=args.seed, soundfont=soundfonts[0], backend=args.backend,
        subsets_per_song=args.subsets_per_song,
    )  # fmt: skip
    pairs = with_soundfonts(pairs, soundfonts)
    counts = build_cache(pairs, args.cache_dir, workers=args.workers, progress=not args.no_progress)
    print(", ".join(f"{k} {v}" for k, v in counts.items()) + f"; cache {args.cache_dir}")
    return 0


#: Everything this module adds to a CLI.
SUBCOMMANDS = (add_prepare_arguments, add_train_arguments, add_export_arguments)
