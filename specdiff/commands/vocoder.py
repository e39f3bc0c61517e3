"""Command-line definitions of ``specdiff train-vocoder`` and ``specdiff vocode``.

Only argparse lives here, so that building the ``specdiff`` parser imports nothing heavy; the work
is done by :func:`specdiff.vocoder_train.run_train_vocoder` / :func:`~specdiff.vocoder_train.run_vocode`,
imported when the command runs. Defaults of ``None`` mean "the default of
``vocoder_train.TrainConfig`` / ``vocoder.VocoderConfig``" (kept in one place).
"""

from __future__ import annotations

import argparse
from pathlib import Path


def _run_train_vocoder(args: argparse.Namespace) -> int:
    from specdiff.vocoder_train import run_train_vocoder

    return run_train_vocoder(args)


def _run_vocode(args: argparse.Namespace) -> int:
    from specdiff.vocoder_train import run_vocode

    return run_vocode(args)


def add_vocoder_arguments(subparsers) -> argparse.ArgumentParser:
    """Add ``train-vocoder`` to an argparse subparsers object (``args.func`` runs the training)."""
    p = subparsers.add_parser(
        "train-vocoder",
        help="train the neural vocoder (log-mel -> 16 kHz audio) on audio, MIDI renders or a feature cache",
        description="Train the Vocos-style vocoder for the log-mel front end (reconstruction losses, then "
        "multi-period + multi-resolution adversarial losses). Sources can be combined. Resumes from "
        "RUN_DIR/checkpoint.pt when it exists; the latest weights are kept in RUN_DIR/vocoder/ "
        "(copy that folder into a model folder to use it).",
    )
    src = p.add_argument_group("training audio (at least one)")
    src.add_argument(
        "--audio-dir", type=Path, action="append", help="folder of audio (any rate; made 16 kHz mono); repeatable"
    )
    src.add_argument(
        "--midi-dir",
        type=Path,
        action="append",
        help="folder of MIDI files, rendered once into RUN_DIR/rendered/; repeatable",
    )
    src.add_argument(
        "--demo-corpus",
        action="store_true",
        help="the bundled demo corpus: train split rendered for training, validation split for validation",
    )
    src.add_argument(
        "--cache-dir",
        type=Path,
        help="a training feature cache (specdiff.data): its train songs' audio is "
        "re-read or re-rendered from the sources in its index",
    )
    p.add_argument("--run-dir", type=Path, required=True, help="checkpoints, logs and the exported vocoder/")
    p.add_argument("--val-dir", type=Path, help="held-out audio for validation (default: the demo validation split "
                   "with --demo-corpus, else every 20th training file)")  # fmt: skip
    p.add_argument("--soundfont", help="SoundFont for rendering MIDI (default: the renderer's)")
    t = p.add_argument_group("training (defaults: vocoder_train.TrainConfig)")
    t.add_argument("--max-steps", type=int, help="total steps (default 100000)")
    t.add_argument(
        "--warmup-steps", type=int, help="reconstruction-only steps before the GAN losses start (default 3000)"
    )
    t.add_argument("--batch-size", type=int, help="segments per step (default 8)")
    t.add_argument("--gan-batch-size", type=int, help="segments of each batch the discriminators see (default: all)")
    t.add_argument("--segment-frames", type=int, help="frames per segment (default 32 = 0.64 s)")
    t.add_argument("--lr", type=float, help="peak learning rate (default 5e-4)")
    t.add_argument("--seed", type=int, help="random seed (default 0)")
    v = p.add_argument_group("architecture (new runs only; defaults: vocoder.VocoderConfig)")
    v.add_argument("--dim", type=int, help="backbone width (default 192)")
    v.add_argument("--intermediate-dim", type=int, help="ConvNeXt MLP width (default 576)")
    v.add_argument("--num-layers", type=int, help="ConvNeXt blocks (default 8)")
    p.add_argument("--checkpoint-every", type=int, default=500, help="steps between checkpoints (default 500)")
    p.add_argument("--checkpoint-minutes", type=float, help="also checkpoint when this many minutes have passed")
    p.add_argument("--validate-every", type=int, default=2000, help="steps between validations (default 2000)")
    p.add_argument("--keep-every", type=int, default=0, help="also keep RUN_DIR/vocoder_stepN/ every N steps")
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads (default 1: the CPU is shared)")
    p.add_argument("--device", default="cpu", help="torch device (default cpu)")
    p.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    p.set_defaults(func=_run_train_vocoder)
    return p


def add_vocode_arguments(subparsers) -> argparse.ArgumentParser:
    """Add ``vocode`` to an argparse subparsers object (``args.func`` runs the re-synthesis)."""
    p = subparsers.add_parser(
        "vocode",
        help="log-mel (.npy) or audio (analysis-resynthesis) -> wav with the neural vocoder",
        description="Turn a log-mel .npy ([T,128] or [1,T,128], natural log, ORIGINAL.md §1) into audio, or "
        "resynthesise an audio file through the log-mel front end and the vocoder.",
    )
    p.add_argument("input", type=Path, help="mel.npy or an audio file")
    p.add_argument("-o", "--output", type=Path, required=True, help="output .wav (16 kHz)")
    p.add_argument("--vocoder", type=Path, required=True, help="model folder with vocoder/, or a vocoder folder")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    p.add_argument("--refine-iters", type=int, default=None, metavar="N",
                   help="Griffin-Lim iterations that refine the network's output against the mel (default 32; "
                   "0: the network alone, as in the ONNX export)")  # fmt: skip
    p.set_defaults(func=_run_vocode)
    return p


def _run_export_vocoder(args: argparse.Namespace) -> int:
    from specdiff.vocoder_train import run_export_vocoder

    return run_export_vocoder(args)


def add_export_vocoder_arguments(subparsers) -> argparse.ArgumentParser:
    """Add ``export-vocoder`` to an argparse subparsers object (``args.func`` runs the export)."""
    p = subparsers.add_parser(
        "export-vocoder",
        help="copy a trained vocoder into a model folder (OUT/vocoder/), optionally with an ONNX export",
        description="Write the vocoder of a training run (RUN_DIR/vocoder/), a model folder or a vocoder folder "
        "into OUT/vocoder/ (config.json + model.safetensors, what the pipeline loads). With --onnx, also "
        "OUT/vocoder/model.onnx with the official inverter's interface (input_features [B, T, 128] log-mel -> "
        "audio [B, T*320]), loadable by specdiff.inverters.OnnxInverter.",
    )
    p.add_argument("source", type=Path, help="run folder, model folder or vocoder folder")
    p.add_argument("-o", "--output", type=Path, required=True, help="model folder to write vocoder/ into")
    p.add_argument("--onnx", action="store_true", help="also write vocoder/model.onnx")
    p.set_defaults(func=_run_export_vocoder)
    return p
