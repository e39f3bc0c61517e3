"""``specdiff evaluate``: score a model on MIDI files against reference audio (the work is
:func:`specdiff.evaluation.evaluate.evaluate`)."""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

from specdiff.commands import validators
from specdiff.commands.options import (
    MODEL_HELP,
    PROG,
    add_precision_argument,
    add_timbre_argument,
    resolve_device,
    resolve_model,
    resolve_precision,
)
from specdiff.constants import (
    DEFAULT_GUIDANCE,
    DEFAULT_NUM_STEPS,
    DEFAULT_SCHEDULER,
    DEVICES,
    EMBEDDINGS,
    INVERTERS,
    SCHEDULERS,
)
from specdiff.errors import SpecdiffError
from specdiff.evaluation import evaluate as evaluation


def add_evaluate_arguments(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Add the ``evaluate`` subcommand (``set_defaults(func=run_evaluate)``)."""
    p = subparsers.add_parser(
        "evaluate",
        help="score a model on MIDI files against reference audio",
        description="Synthesize MIDI files and compare them with reference audio (a folder of "
        "<midi stem>.wav files, else SoundFont renders made on the fly): basic-pitch note-onset F1 "
        "of ours and of the reference and their ratio, log-mel L1, multi-resolution STFT distance, "
        "Fréchet distance of audio embeddings, speed. Writes evaluation.json and evaluation.md.",
    )
    p.add_argument("midi", nargs="*", type=Path, metavar="MIDI", help="MIDI files or folders of them")
    p.add_argument("--demo-split", choices=("train", "validation", "test"),
                   help="evaluate the bundled demo corpus's pieces of this split (test = held out)")  # fmt: skip
    p.add_argument("--idioms-split", choices=("train", "validation", "test"),
                   help="evaluate the generated band-music pieces (data/idioms.py) of this split (test = held out; "
                   "their MIDI files are written to OUT/midi)")  # fmt: skip
    p.add_argument("--idioms-count", type=validators.positive_int, default=None, metavar="N",
                   help="--idioms-split takes its pieces among the first N generated (default: the 1600 the bundled "
                   "model's data drew from)")  # fmt: skip
    p.add_argument("--max-files", type=validators.positive_int, metavar="N", help="evaluate at most N files")
    p.add_argument("--model", metavar="DIR|ORG/NAME", help=MODEL_HELP)
    p.add_argument(
        "--reference-dir",
        type=Path,
        metavar="DIR",
        help="reference audio named <midi stem>.wav/.flac (pieces without one: SoundFont render)",
    )
    p.add_argument("--soundfont", metavar="SF2", help="SoundFont for rendered references (default: TimGM6mb.sf2)")
    p.add_argument(
        "--out", type=Path, default=Path("evaluation"), metavar="DIR", help="output folder (default: ./evaluation)"
    )
    p.add_argument(
        "--steps",
        type=validators.positive_int,
        default=None,
        metavar="N",
        help=f"denoising steps per segment (default: the model's sampling.json, else {DEFAULT_NUM_STEPS})",
    )
    p.add_argument("--scheduler", choices=SCHEDULERS, default=None,
                   help=f"sampler (default: the model's sampling.json, else {DEFAULT_SCHEDULER})")  # fmt: skip
    p.add_argument(
        "--guidance",
        type=float,
        default=None,
        metavar="W",
        help=f"classifier-free guidance weight (default: the model's sampling.json, else {DEFAULT_GUIDANCE})",
    )
    p.add_argument("--seed", type=validators.seed, default=0, help="random seed, the same for every piece (default: 0)")
    p.add_argument(
        "--max-seconds",
        type=validators.positive_float,
        metavar="S",
        help="evaluate only the first S seconds of each piece",
    )
    p.add_argument("--embedding", choices=EMBEDDINGS, default="mfcc-stats",
                   help="embedding of the Fréchet distance (default: mfcc-stats; see embeddings.py)")  # fmt: skip
    p.add_argument("--no-transcription", action="store_true", help="skip the basic-pitch note-onset metrics")
    p.add_argument(
        "--png", action="store_true", help="one PNG per piece: reference vs generated spectrogram, piano roll"
    )
    p.add_argument("--no-audio", action="store_true", help="do not write the generated audio")
    p.add_argument("--inverter", default="auto", choices=INVERTERS, help="spectrogram inverter (default: auto)")
    p.add_argument("--device", default="auto", choices=DEVICES, help="default: auto (cuda, else mps, else cpu)")
    add_precision_argument(p)
    p.add_argument("-q", "--quiet", action="store_true", help="no progress; print only the final table")
    add_timbre_argument(p)
    p.set_defaults(func=run_evaluate)
    return p


def run_evaluate(args: argparse.Namespace) -> int:
    """``specdiff evaluate``; returns the exit status."""
    if args.guidance is not None and (args.guidance < 0 or not math.isfinite(args.guidance)):
        raise SpecdiffError(f"--guidance must be a finite number >= 0, got {args.guidance}")
    if sum(bool(x) for x in (args.midi, args.demo_split, args.idioms_split)) > 1:
        raise SpecdiffError("give MIDI files, --demo-split or --idioms-split, not several")
    if args.midi:
        midi_files = evaluation.collect_midi_files(args.midi)
    elif args.demo_split:
        from specdiff.data.corpus import demo_midi_files

        midi_files = demo_midi_files(args.demo_split)
    elif args.idioms_split:
        import tempfile

        from specdiff.data.idioms import write_split

        folder = Path(args.out) / "midi" if args.out is not None else Path(tempfile.mkdtemp(prefix="specdiff-idioms-"))
        from specdiff.data.idioms import DEFAULT_COUNT

        midi_files = write_split(folder, args.idioms_split, args.idioms_count or DEFAULT_COUNT)
    else:
        raise SpecdiffError("nothing to evaluate: give MIDI files or folders, --demo-split test or --idioms-split test")
    if args.max_files is not None:
        midi_files = midi_files[: args.max_files]
    model = resolve_model(args)
    device = resolve_device(args.device)
    dtype = resolve_precision(args, device)
    results = evaluation.evaluate(
        model,
        midi_files,
        reference_audio=args.reference_dir,
        steps=args.steps,
        scheduler=args.scheduler,
        guidance=args.guidance,
        seed=args.seed,
        out_dir=args.out,
        max_seconds=args.max_seconds,
        embedding=args.embedding,
        transcription=not args.no_transcription,
        plots=args.png,
        save_audio=not args.no_audio,
        inverter=args.inverter,
        device=device,
        soundfont=args.soundfont,
        verbose=not args.quiet,
        dtype=dtype,
        timbre=args.timbre,
    )
    if args.quiet:
        print(evaluation.markdown_report(results), flush=True)
    skipped = results.get("skipped") or []
    summary = f"{PROG}: evaluated {len(results.get('pieces') or [])} piece(s)"
    if skipped:
        summary += f"; skipped {len(skipped)}: " + "; ".join(f"{s['piece']} ({s['reason']})" for s in skipped)
    print(summary, file=sys.stderr, flush=True)
    return 0
