"""``specdiff train-vocoder``, ``vocode`` and ``export-vocoder``: the neural vocoder's command line.

Building the ``specdiff`` parser imports nothing heavy: the ``run_*`` functions import torch and the
training code (:mod:`specdiff.training.vocoder`) when the command runs. Defaults of ``None`` mean "the
default of ``training.vocoder.VocoderTrainConfig`` / ``vocoder.VocoderConfig``" (kept in one place).
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import TYPE_CHECKING

from specdiff.constants import PEAK_FREQUENCY_INPUTS, PEAK_FREQUENCY_RULES, VOCODER_SYNTHESES
from specdiff.errors import AudioError, SpecdiffError

#: The architecture options of the peak-frequency network (VocoderConfig fields; --init-from may change them).
PEAK_FREQUENCY_OPTIONS = ("peak_frequency", "frequency_channels", "frequency_bins", "frequency_inputs")

if TYPE_CHECKING:  # the commands import no torch until they run
    from specdiff.audio.vocoder import Vocoder, VocoderConfig


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
    _add_source_arguments(p)
    p.add_argument("--run-dir", type=Path, required=True, help="checkpoints, logs and the exported vocoder/")
    p.add_argument("--val-dir", type=Path, help="held-out audio for validation (default: the demo validation split "
                   "with --demo-corpus, else every 20th training file)")  # fmt: skip
    p.add_argument("--soundfont", help="SoundFont for rendering MIDI (default: the renderer's)")
    p.add_argument("--init-from", type=Path, help="warm start (new runs only): the generator's weights and "
                   "architecture from a model folder with vocoder/ or a vocoder folder, a new optimiser, step 0 "
                   "(e.g. to continue the bundled vocoder: --init-from specdiff/assets/default_model)")  # fmt: skip
    t = p.add_argument_group("training (defaults: training.vocoder.VocoderTrainConfig)")
    t.add_argument("--max-steps", type=int, help="total steps (default 100000)")
    t.add_argument(
        "--warmup-steps", type=int, help="reconstruction-only steps before the GAN losses start (default 3000)"
    )
    t.add_argument("--batch-size", type=int, help="segments per step (default 8)")
    t.add_argument("--gan-batch-size", type=int, help="segments of each batch the discriminators see (default: all)")
    t.add_argument("--segment-frames", type=int, help="frames per segment (default 32 = 0.64 s)")
    t.add_argument("--paired-share", type=float, help="share of each batch from --paired-dir pairs (default 0.5)")
    t.add_argument("--lr", type=float, help="peak learning rate (default 5e-4)")
    t.add_argument("--mel-weight", type=float, help="weight of the log-mel L1 (default 45)")
    t.add_argument("--stft-weight", type=float, help="weight of the multi-resolution STFT loss (default 15)")
    t.add_argument("--magnitude-weight", type=float, help="weight of the head's log-magnitude L1 (default 0: off)")
    t.add_argument(
        "--rise-weight",
        type=float,
        help="weight of an L1 between the rises (positive frame-to-frame steps) of the head's log-magnitude and "
        "of the true one, for attacks as sharp as the true ones, i.e. crisper note onsets with the phase "
        "vocoder (default 0: off)",
    )
    t.add_argument(
        "--frequency-weight",
        type=float,
        help="weight of a magnitude-weighted L1 between the peak-frequency network's instantaneous frequencies and "
        "the true ones (vocoders with --peak-frequency predicted; default 0: off)",
    )
    t.add_argument("--seed", type=int, help="random seed (default 0)")
    _add_architecture_arguments(p)
    p.add_argument("--checkpoint-every", type=int, default=500, help="steps between checkpoints (default 500)")
    p.add_argument("--checkpoint-minutes", type=float, help="also checkpoint when this many minutes have passed")
    p.add_argument("--validate-every", type=int, default=2000, help="steps between validations (default 2000)")
    p.add_argument("--keep-every", type=int, default=0, help="also keep RUN_DIR/vocoder_stepN/ every N steps")
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads (default 1: the CPU is shared)")
    p.add_argument("--device", default="cpu", help="torch device (default cpu)")
    p.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    p.set_defaults(func=run_train_vocoder)
    return p


def _add_source_arguments(p: argparse.ArgumentParser) -> None:
    """``train-vocoder``'s training audio options."""
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
        help="a training feature cache (specdiff.data.cache): its train songs' audio is "
        "re-read or re-rendered from the sources in its index",
    )
    src.add_argument(
        "--paired-dir",
        type=Path,
        action="append",
        help="folder of (NAME.npy log-mel, NAME.wav audio) pairs, e.g. a model's own mels and the renders of the "
        "same pieces from `specdiff prepare-vocoder-pairs`: they make --paired-share of every batch (the vocoder "
        "learns to invert the mels it will be given); repeatable; with at least one other source",
    )


def _add_architecture_arguments(p: argparse.ArgumentParser) -> None:
    """``train-vocoder``'s architecture options (VocoderConfig fields)."""
    v = p.add_argument_group("architecture (new runs only; defaults: vocoder.VocoderConfig)")
    v.add_argument("--dim", type=int, help="backbone width (default 192)")
    v.add_argument("--intermediate-dim", type=int, help="ConvNeXt MLP width (default 576)")
    v.add_argument("--num-layers", type=int, help="ConvNeXt blocks (default 8)")
    v.add_argument(
        "--synthesis",
        choices=VOCODER_SYNTHESES,
        help="how the vocoder makes audio, in training and in use: the head's own phase (default, as in Vocos) "
        "or a phase built from its magnitude (specdiff.audio.phase_vocoder); also applies with --init-from",
    )
    v.add_argument(
        "--peak-frequency",
        choices=PEAK_FREQUENCY_RULES,
        help="with --synthesis phase_vocoder: each spectral peak's frequency from a parabola through the magnitude "
        "(default) or from a small network that predicts each bin's instantaneous frequency (specdiff.audio."
        "peak_frequency; train it with --frequency-weight); also applies with --init-from (switching to "
        "'predicted' adds that network, freshly initialised)",
    )
    v.add_argument("--frequency-channels", type=int, help="width of the peak-frequency network (default 16)")
    v.add_argument(
        "--frequency-bins",
        type=int,
        help="synthesis bins the peak-frequency network covers from DC (default 321: 4 kHz)",
    )
    v.add_argument(
        "--frequency-inputs",
        choices=PEAK_FREQUENCY_INPUTS,
        help="what the peak-frequency network reads per bin: the log-mel interpolated onto it (default) or that "
        "plus the two mel bands around it and its place between their centres; with --init-from, 'mel+bands' "
        "widens a trained network (the new inputs start at zero)",
    )


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
    p.add_argument("--vocoder", default=None, metavar="DIR|ORG/NAME",
                   help="model folder with vocoder/, a vocoder folder, or a Hugging Face Hub id of either "
                   "(default: the vocoder of the model bundled with the package)")  # fmt: skip
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    p.add_argument("--refine-iters", type=int, default=None, metavar="N",
                   help="iterations that refine the vocoder's output against the mel: gain corrections for a "
                   "phase-vocoder vocoder (default 1), Griffin-Lim iterations for one that makes its own phase "
                   "(default 32); 0: none")  # fmt: skip
    p.add_argument("--gate-iters", type=int, default=None, metavar="N",
                   help="passes of the silence gate, which scales down frames that come out louder than the mel "
                   "asks for (rests stay silent; default 2); 0: off, e.g. for the network alone, as its ONNX "
                   "export computes it")  # fmt: skip
    p.set_defaults(func=run_vocode)
    return p


def add_export_vocoder_arguments(subparsers) -> argparse.ArgumentParser:
    """Add ``export-vocoder`` to an argparse subparsers object (``args.func`` runs the export)."""
    p = subparsers.add_parser(
        "export-vocoder",
        help="copy a trained vocoder into a model folder (OUT/vocoder/), optionally with an ONNX export",
        description="Write the vocoder of a training run (RUN_DIR/vocoder/), a model folder or a vocoder folder "
        "into OUT/vocoder/ (config.json + model.safetensors, what the pipeline loads). With --onnx, also "
        "OUT/vocoder/model.onnx with the official inverter's interface (input_features [B, T, 128] log-mel -> "
        "audio [B, T*320]), loadable by specdiff.audio.inverters.OnnxInverter.",
    )
    p.add_argument("source", type=Path, help="run folder, model folder or vocoder folder")
    p.add_argument("-o", "--output", type=Path, required=True, help="model folder to write vocoder/ into")
    p.add_argument("--onnx", action="store_true", help="also write vocoder/model.onnx")
    p.set_defaults(func=run_export_vocoder)
    return p


def add_vocoder_pairs_arguments(subparsers) -> argparse.ArgumentParser:
    """Add ``prepare-vocoder-pairs`` to an argparse subparsers object (``args.func`` writes the pairs)."""
    p = subparsers.add_parser(
        "prepare-vocoder-pairs",
        help="render MIDI files and generate a model's mels for them: pairs for train-vocoder --paired-dir",
        description="For each MIDI file and SoundFont, write OUT/<timbre>/<name>.wav (the render) and "
        "OUT/<timbre>/<name>.npy (the log-mel [frames, 128] the model generates for the piece with its own "
        "sampling settings, in the SoundFont's timbre when the model knows it). Train the vocoder on them with "
        "`specdiff train-vocoder --paired-dir OUT ...`, so that it learns to invert the mels it will be given. "
        "Pairs already written are kept (rerun to continue). Use training music, never evaluation pieces.",
    )
    p.add_argument("midi", type=Path, nargs="+", help="MIDI files or folders of them")
    p.add_argument("-o", "--output", type=Path, required=True, help="folder to write the pairs into")
    p.add_argument("--model", help="the model whose mels to pair (default: the bundled one)")
    p.add_argument(
        "--soundfont",
        action="append",
        help="SoundFont to render with (a name such as FluidR3_GM or a path); repeatable (default: each timbre "
        "the model knows, else the renderer's default)",
    )
    p.add_argument("--seed", type=int, default=0, help="the noise of file i is seeded SEED + i (default 0)")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    p.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    p.set_defaults(func=run_prepare_vocoder_pairs)
    return p


def run_prepare_vocoder_pairs(args: argparse.Namespace) -> int:
    """``specdiff prepare-vocoder-pairs``: :func:`~specdiff.training.vocoder_pairs.write_vocoder_pairs`."""
    import torch

    from specdiff.commands.options import resolve_model_dir
    from specdiff.data.render import default_soundfont
    from specdiff.evaluation.evaluate import collect_midi_files
    from specdiff.pipeline.pipeline import SpectrogramDiffusionPipeline
    from specdiff.training.vocoder_pairs import write_vocoder_pairs

    if args.threads:
        torch.set_num_threads(args.threads)
    midi_files = collect_midi_files(args.midi)
    pipe = SpectrogramDiffusionPipeline.from_pretrained(resolve_model_dir(args.model), inverter=None)
    soundfonts = args.soundfont or pipe.timbres or [str(default_soundfont())]
    written = write_vocoder_pairs(pipe, midi_files, soundfonts, args.output, args.seed, not args.no_progress)
    print(f"{len(written)} (mel, audio) pairs in {args.output}")
    return 0


def _gather_audio(args: argparse.Namespace, run_dir: Path) -> tuple[list[Path], list[Path]]:
    """The training and validation audio files the options name (MIDI and caches rendered into
    ``run_dir/rendered``); without a validation set, every 20th file (at most 8) is held out."""
    from specdiff.training.vocoder_data import (
        AUDIO_SUFFIXES,
        MIDI_SUFFIXES,
        cache_audio,
        demo_corpus_audio,
        list_files,
        render_midi_files,
    )

    files: list[Path] = []
    val_files: list[Path] = []
    for folder in args.audio_dir or []:
        files += list_files(folder, AUDIO_SUFFIXES)
    for folder in args.midi_dir or []:
        midi_files = list_files(folder, MIDI_SUFFIXES)
        files += render_midi_files(midi_files, run_dir / "rendered" / Path(folder).resolve().name, args.soundfont)
    if args.cache_dir is not None:
        files += cache_audio(Path(args.cache_dir), run_dir / "rendered" / "cache")
    if args.demo_corpus:
        files += demo_corpus_audio("train", run_dir / "rendered" / "demo_train", args.soundfont)
        if args.val_dir is None:
            val_files = demo_corpus_audio("validation", run_dir / "rendered" / "demo_validation", args.soundfont)
    if not files:
        raise SpecdiffError("no training audio: give --audio-dir, --midi-dir, --demo-corpus or --cache-dir")
    if args.val_dir is not None:
        val_files = list_files(args.val_dir, AUDIO_SUFFIXES)
    elif not val_files and len(files) >= 20:  # hold out every 20th file (at most 8)
        val_files = files[::20][:8]
        files = [f for f in files if f not in set(val_files)]
    return files, val_files


def _vocoder_architecture(args: argparse.Namespace, checkpoint: Path) -> tuple[VocoderConfig, Vocoder | None]:
    """``(VocoderConfig, vocoder to start from or None)``: a resumed run keeps the architecture it
    started with, ``--init-from`` takes the given vocoder's, else the options' (None: the default)."""
    from dataclasses import replace

    import torch

    from specdiff.audio.vocoder import VocoderConfig

    if checkpoint.exists():
        saved = torch.load(checkpoint, map_location="cpu", weights_only=False)["vocoder_config"]
        return VocoderConfig.from_dict(saved), None
    if getattr(args, "init_from", None) is not None:
        from specdiff.audio.vocoder import Vocoder, find_vocoder_dir

        folder = find_vocoder_dir(args.init_from)
        if folder is None:
            raise SpecdiffError(f"--init-from: no vocoder in {args.init_from}")
        init_from = Vocoder.from_pretrained(folder)
        vocoder_config = init_from.config
        if getattr(args, "synthesis", None):
            vocoder_config = replace(vocoder_config, synthesis=args.synthesis)
        # The peak-frequency network may be added, dropped or resized on a trained vocoder.
        peak_options = {k: getattr(args, k, None) for k in PEAK_FREQUENCY_OPTIONS}
        peak_options = {k: v for k, v in peak_options.items() if v is not None}
        if peak_options and replace(vocoder_config, **peak_options) != vocoder_config:
            vocoder_config = replace(vocoder_config, **peak_options)
            init_from = init_from.with_config(vocoder_config)
        return vocoder_config, init_from
    architecture = {
        "dim": args.dim,
        "intermediate_dim": args.intermediate_dim,
        "num_layers": args.num_layers,
        "synthesis": getattr(args, "synthesis", None),
        **{k: getattr(args, k, None) for k in PEAK_FREQUENCY_OPTIONS},
    }
    return VocoderConfig(**{k: v for k, v in architecture.items() if v is not None}), None


def run_train_vocoder(args: argparse.Namespace) -> int:
    """``specdiff train-vocoder``: gather the audio, then :func:`~specdiff.training.vocoder.train_vocoder`
    (resuming if possible)."""
    from dataclasses import fields

    import torch

    from specdiff.pipeline.folder import VOCODER_FOLDER
    from specdiff.training.vocoder import VocoderTrainConfig, train_vocoder

    torch.set_num_threads(args.threads)
    run_dir = Path(args.run_dir)
    files, val_files = _gather_audio(args, run_dir)
    vocoder_config, init_from = _vocoder_architecture(args, run_dir / "checkpoint.pt")
    # Every VocoderTrainConfig field that has a command-line option the user set.
    overrides = {
        f.name: getattr(args, f.name) for f in fields(VocoderTrainConfig) if getattr(args, f.name, None) is not None
    }
    train_config = VocoderTrainConfig(**overrides)
    if train_config.frequency_weight and vocoder_config.peak_frequency != "predicted":
        # The loss trains the peak-frequency network; a parabola vocoder has none, so the weight would do nothing.
        raise SpecdiffError(
            f"--frequency-weight {train_config.frequency_weight:g} trains the peak-frequency network, but this "
            f"vocoder's peak_frequency is {vocoder_config.peak_frequency!r}: add --peak-frequency predicted"
        )
    pairs = None
    if getattr(args, "paired_dir", None):
        from specdiff.training.vocoder_data import load_pairs

        pairs = load_pairs(args.paired_dir)
        print(f"{len(pairs)} (mel, audio) pairs make {train_config.paired_share:g} of every batch")
    print(f"training on {len(files)} files, validating on {len(val_files)}; run folder {run_dir}")
    train_vocoder(
        files,
        val_files,
        run_dir,
        vocoder_config,
        train_config,
        checkpoint_every=args.checkpoint_every,
        checkpoint_minutes=args.checkpoint_minutes,
        validate_every=args.validate_every,
        keep_every=args.keep_every,
        device=args.device,
        init_from=init_from,
        progress=not args.no_progress,
        pairs=pairs,
    )
    print(f"vocoder saved to {run_dir / VOCODER_FOLDER}")
    return 0


def run_vocode(args: argparse.Namespace) -> int:
    """``specdiff vocode``: a log-mel ``.npy``, or an audio file through the front end, to a WAV."""
    import numpy as np
    import torch

    from specdiff.audio.files import save_wav
    from specdiff.audio.mel import log_mel
    from specdiff.audio.vocoder import load_vocoder
    from specdiff.training.vocoder_data import load_audio_file

    if args.threads:
        torch.set_num_threads(args.threads)
    refine = getattr(args, "refine_iters", None)
    if refine is not None and refine < 0:
        raise SpecdiffError(f"--refine-iters must be >= 0, got {refine}")
    gate = getattr(args, "gate_iters", None)
    if gate is not None and gate < 0:
        raise SpecdiffError(f"--gate-iters must be >= 0, got {gate}")
    path = Path(args.input)
    if not path.is_file():
        raise AudioError(f"no such file: {path}")
    source_vocoder = args.vocoder
    if source_vocoder is None:
        from specdiff.pipeline.default_model import default_model_path

        source_vocoder = default_model_path()
        if source_vocoder is None:
            raise SpecdiffError("no model is bundled with this installation: pass --vocoder DIR (or a Hub id)")
    inverter = load_vocoder(source_vocoder, refine_iters=refine, gate_iters=gate)
    if path.suffix.lower() == ".npy":
        try:
            mel = np.load(path)
        except (OSError, ValueError) as err:
            raise AudioError(f"cannot read {path}: {err}") from None
        if mel.ndim == 2:
            mel = mel[None]
        if mel.ndim != 3 or mel.shape[0] != 1 or mel.shape[-1] != 128:
            raise AudioError(f"{path}: expected a log-mel of shape [T, 128] or [1, T, 128], got {list(mel.shape)}")
    else:
        source = load_audio_file(path)
        mel = log_mel(torch.from_numpy(source)[None]).numpy()
    audio = inverter(mel.astype(np.float32))[0]
    if path.suffix.lower() != ".npy":
        audio = audio[: len(source)]  # the front end's last frame is end-padded (ORIGINAL.md §1)
    save_wav(args.output, audio, inverter.sample_rate)
    print(f"wrote {args.output} ({audio.size / inverter.sample_rate:.2f} s)")
    return 0


def run_export_vocoder(args: argparse.Namespace) -> int:
    """``specdiff export-vocoder``: OUT/vocoder/ (and OUT/vocoder/model.onnx with ``--onnx``)."""
    from specdiff.audio.vocoder import Vocoder, find_vocoder_dir
    from specdiff.audio.vocoder_onnx import export_onnx
    from specdiff.pipeline.folder import VOCODER_FOLDER

    source = find_vocoder_dir(args.source)
    if source is None:
        raise SpecdiffError(
            f"no vocoder in {args.source} (expected {VOCODER_FOLDER}/config.json and model.safetensors)"
        )
    model = Vocoder.from_pretrained(source)
    if args.onnx and model.config.synthesis != "network":
        raise SpecdiffError(
            f"--onnx: {source} uses synthesis {model.config.synthesis!r} (phase from its magnitude, computed "
            "outside the network), which an ONNX graph cannot hold; nothing was written"
        )
    target = model.save_pretrained(Path(args.output) / VOCODER_FOLDER)
    print(f"wrote {target}")
    if args.onnx:
        path = export_onnx(model, target / "model.onnx")
        print(f"wrote {path}")
    return 0
