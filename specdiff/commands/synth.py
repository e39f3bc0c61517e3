"""``specdiff synth``: MIDI file(s) -> WAV (and optionally a spectrogram PNG).

``specdiff synth song.mid -o song.wav``, or several songs in one batch: ``specdiff synth a.mid b.mid
-o OUTDIR/``. Everything cheap that can fail (output folder writable, MIDI readable, model folder
present, device available) is checked before the slow synthesis starts, and outputs are written
atomically, so a failed run leaves no partial file behind. Heavy libraries (torch, the pipeline) are
imported only when the command runs, so ``specdiff --help`` stays fast.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import secrets
import sys
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from specdiff.commands import validators
from specdiff.commands.options import (
    MODEL_HELP,
    PROG,
    Option,
    UsageError,
    add_options,
    add_precision_argument,
    add_timbre_argument,
    load_pipeline,
    one_line,
    resolve_model,
)
from specdiff.constants import (
    DEFAULT_GUIDANCE,
    DEFAULT_NUM_STEPS,
    DEFAULT_SCHEDULER,
    DEVICES,
    INVERTERS,
    LIMITER_THRESHOLD,
    MAX_GAIN_DB,
    NATIVE_SCHEDULERS,
    SCHEDULERS,
)
from specdiff.errors import SpecdiffError
from specdiff.midi.examples import DEFAULT_EXAMPLE, FEATURED, find_example

if TYPE_CHECKING:
    from specdiff.pipeline.pipeline import SpectrogramDiffusionPipeline

_SYNTH_DESCRIPTION = """\
Synthesize audio from a MIDI file with a Spectrogram Diffusion model.

The MIDI file is tokenized into 5.12 s segments; each segment's log-mel spectrogram is generated
by the diffusion model, conditioned on the notes and on the previous segment's spectrogram, and
the whole spectrogram is turned into 16 kHz mono audio by a spectrogram inverter.

Without --model, the model bundled with the package is used. --scheduler, --steps and --guidance
default to the settings the model folder recommends in its sampling.json (the bundled model's were
chosen by measured quality and speed, see its MODEL_CARD.md); a folder without one gets the
original sampler, 100 steps and guidance 2.

Several MIDI files are synthesized together: segment i of every song goes through the model in one
batch (--batch-size songs at a time), which fills a GPU better than one run per song. Then -o
and --mel-png name folders (created if missing) and song a.mid is written as a.wav / a.png in them.
Every file is read before the model loads, so one bad MIDI file stops the whole run before any
output is written. Each output appears atomically (never half-written); if the run fails while the
outputs are being written, the songs already written stay and the others are not written.
"""

_SYNTH_EPILOG = f"""\
examples:
  specdiff synth --example {DEFAULT_EXAMPLE} -o {DEFAULT_EXAMPLE}.wav   # a bundled example, the bundled model
  specdiff synth song.mid --model google/music-spectrogram-diffusion   # the official model (Hugging Face Hub)
  specdiff synth song.mid --model ./music-spectrogram-diffusion   # a local folder
  specdiff synth song.mid -o out.wav --model DIR --scheduler dpmsolver++ --steps 20 --seed 1
  specdiff synth song.mid --model DIR --mel-png song.png --device cuda
  specdiff synth long_song.mid --model DIR --stream --scheduler dpmsolver++ --steps 20
  specdiff synth a.mid b.mid c.mid -o renders/ --model DIR --seed 5 --batch-size 2
"""

_SCHEDULER_HELP = f"""\
sampler (default: the model's own setting, else {DEFAULT_SCHEDULER}).
original: the paper's continuous-time cosine log-SNR DDPM sampler with x0 clipping (the schedule
the model was trained with; ancestral, best with many steps, e.g. 100-1000).
ddpm: diffusers' DDPMScheduler exactly as the Hugging Face pipeline uses it (100 steps reproduce
its output).
ddim: deterministic given the seed's start noise; usable from about 50 steps.
dpmsolver++ / unipc: multistep ODE solvers; good quality at 10-25 steps, so several times faster.
"""


def _gain_db(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not -MAX_GAIN_DB <= value <= MAX_GAIN_DB:  # rejects nan and inf too
        raise argparse.ArgumentTypeError(f"must be between -{MAX_GAIN_DB:g} and {MAX_GAIN_DB:g} dB, got {text}")
    return value


#: What to synthesize, where it goes, and how it is sampled, in --help order (``--precision`` follows).
INPUT_OPTIONS: tuple[Option, ...] = (
    (("midi",), dict(type=Path, nargs="*", metavar="MIDI",
                     help="input Standard MIDI File(s) (.mid/.midi); several files are synthesized in one batch "
                     "(or none, with --example)")),
    (("--example",), dict(metavar="NAME",
                          help=f"synthesize a MIDI file bundled with specdiff instead of your own (default output: "
                          f"./NAME.wav). A few: {', '.join(FEATURED)}; `specdiff examples` describes them and "
                          "`specdiff examples --all` lists them all.")),
    (("-o", "--output"), dict(type=Path, metavar="WAV",
                              help="output audio file, 16 kHz mono (default: the MIDI file's path with .wav instead "
                              "of its extension). The extension picks the format: .wav (16-bit PCM), .flac, .ogg, "
                              "... An existing file is replaced, only once synthesis has succeeded. With several "
                              "MIDI files: a folder (created if missing) that receives one <MIDI name>.wav per song "
                              "(default: each WAV next to its MIDI file).")),
    (("--model",), dict(metavar="DIR|ORG/NAME", help=MODEL_HELP)),
    (("--steps",), dict(type=validators.positive_int, default=None, metavar="N",
                        help=f"denoising steps per 5.12 s segment (default: the model's own setting, see below; "
                        f"else {DEFAULT_NUM_STEPS}). Run time grows linearly with N; fewer steps are faster but "
                        "noisier, the multistep schedulers (dpmsolver++, unipc) tolerate far fewer steps than "
                        "original/ddpm.")),
    (("--scheduler",), dict(choices=SCHEDULERS, default=None, help=" ".join(_SCHEDULER_HELP.split()))),
    (("--guidance",), dict(type=validators.non_negative_float, default=None, metavar="W",
                           help=f"classifier-free guidance weight w: eps = w*eps_cond + (1-w)*eps_uncond (default: "
                           f"the model's own setting, else {DEFAULT_GUIDANCE}, the paper's colab; its training "
                           "default was 5). w = 1 turns guidance off and halves the decoder work; larger w follows "
                           "the notes more closely but can sound harsher. A model whose sampling.json sets "
                           "guidance_ceiling (the bundled one does) keeps guidance from raising any mel band above "
                           "the unguided estimate's loudest value, whatever w; one that sets guidance_lift keeps "
                           "it from raising any frame more than that over the unguided estimate.")),
    (("--seed",), dict(type=validators.seed, default=None, metavar="N",
                       help="random seed of the start noise and sampler noise; the same seed, model, options and "
                       "device give the same audio (default: a fresh random seed, printed in the summary). With "
                       "several MIDI files, the k-th file (counting from 0) uses seed N+k, so it sounds exactly as "
                       "a run of that file alone with --seed N+k (up to float rounding); without --seed each song "
                       "gets its own random seed, all printed in the summary.")),
    (("--batch-size",), dict(type=validators.positive_int, default=None, metavar="N",
                             help="with several MIDI files: how many songs go through the model together (default: "
                             "all of them). Larger batches are faster on a GPU but need more memory (with guidance, "
                             "the decoder batch is 2N). The audio does not depend on N.")),
    (("--device",), dict(choices=DEVICES, default="auto",
                         help="where to run the model (default: auto = cuda if available, else mps, else cpu). A "
                         "GPU is many times faster; results can differ slightly between devices.")),
)  # fmt: skip
#: How the model and the inverter run and what is written besides the audio, after ``--precision``.
RUN_OPTIONS: tuple[Option, ...] = (
    (("--threads",), dict(type=int, default=None, metavar="N",
                          help="CPU threads for PyTorch (default: PyTorch's own choice, one per core). On a busy "
                          "machine fewer threads can be faster.")),
    (("--inverter",), dict(choices=INVERTERS, default="auto",
                           help="spectrogram-to-audio inverter (default: auto = the model folder's own inverter: "
                           "melgan/model.onnx when onnxruntime is installed, else a trained vocoder/, else "
                           "griffinlim with a warning). onnx: the official neural inverter (needs onnxruntime and "
                           "the ONNX file; best quality). vocoder: our trained vocoder in the model folder's vocoder/ "
                           "(needs its weights). griffinlim: phase reconstruction with no learned weights; always "
                           "available but audibly phasey.")),
    (("--refine-iters",), dict(type=int, default=None, metavar="N",
                               help="with our trained vocoder: iterations that refine its output against the "
                               "spectrogram: gain corrections for a phase-vocoder vocoder such as the bundled one "
                               "(default 1), Griffin-Lim iterations for one that makes its own phase (default 32); "
                               "0: none. More cost speed and onsets")),
    (("--gain",), dict(type=_gain_db, default=0.0, metavar="DB",
                       help="scale the audio by DB decibels before it is written (default 0; e.g. -6 halves the "
                       f"amplitude). Audio louder than full scale is shaped by a soft limiter above "
                       f"{LIMITER_THRESHOLD:g} of full scale (with a warning that suggests a gain); a negative --gain "
                       "leaves the waveform unshaped")),
    (("--stream",), dict(action="store_true",
                         help="write the audio segment by segment, as soon as each 5.12 s segment is generated, "
                         "printing a line per segment (default: off: the whole song's spectrogram is inverted at "
                         "once). Each segment is inverted on its own, so the audio can differ slightly near segment "
                         "boundaries. The output file still appears only when the song is finished (until then the "
                         "audio grows in a hidden temporary file next to it). Only for a single MIDI file.")),
    (("--mel-png",), dict(type=Path, metavar="PATH",
                          help="also save a picture of the generated log-mel spectrogram as PNG (needs matplotlib; "
                          "default: no picture). With several MIDI files: a folder (created if missing) that "
                          "receives one <MIDI name>.png per song.")),
    (("-q", "--quiet"), dict(action="store_true",
                             help="no progress bar, summary or warnings on stderr; errors are still printed "
                             "(default: off)")),
)  # fmt: skip


def add_synth_arguments(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Add the ``synth`` subcommand (``set_defaults(func=run_synth)``)."""
    p = subparsers.add_parser(
        "synth", help="render a MIDI file to a WAV file", description=_SYNTH_DESCRIPTION, epilog=_SYNTH_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )  # fmt: skip
    add_options(p, INPUT_OPTIONS)
    add_precision_argument(p)
    add_options(p, RUN_OPTIONS)
    add_timbre_argument(p)
    p.set_defaults(func=run_synth)
    return p


def apply_gain(audio: Any, gain_db: float) -> Any:
    """``audio`` (float samples) scaled by ``gain_db`` decibels; unchanged for 0 dB."""
    if not gain_db:
        return audio
    import numpy as np

    return (np.asarray(audio, dtype=np.float32) * np.float32(10.0 ** (gain_db / 20.0))).astype(np.float32)


def default_output_path(midi: Path) -> Path:
    """``song.mid`` -> ``song.wav`` next to it."""
    return midi.with_suffix(".wav")


def check_writable(path: Path, what: str) -> None:
    """Fail now, not after minutes of synthesis, if ``path`` cannot be (re)placed.

    Atomic writes create a temp file in the same folder and rename it over ``path``, so what must
    work is exactly that: creating a file in the folder. We try it.
    """
    if path.is_dir():
        raise SpecdiffError(f"{what} {path} is a directory")
    folder = path.parent
    if not folder.is_dir():
        raise SpecdiffError(f"cannot write {what} {path}: folder {folder} does not exist")
    try:
        with tempfile.NamedTemporaryFile(dir=folder, prefix=f".{path.name}.", suffix=".check"):
            pass
    except OSError as err:
        raise SpecdiffError(f"cannot write {what} {path}: {err.strerror or err}") from None


def _set_refine_iters(pipe: SpectrogramDiffusionPipeline, refine_iters: int | None) -> None:
    """``--refine-iters``: applies to our trained vocoder only (other inverters have no such setting)."""
    if refine_iters is None:
        return
    if refine_iters < 0:
        raise SpecdiffError(f"--refine-iters must be >= 0, got {refine_iters}")
    if hasattr(pipe.inverter, "refine_iters"):
        pipe.inverter.refine_iters = refine_iters


def check_steps(pipe: SpectrogramDiffusionPipeline, scheduler: str, steps: int) -> None:
    """diffusers schedulers cannot take more steps than their discrete training timesteps."""
    limit = pipe.max_steps(scheduler)
    if limit is not None and steps > limit:
        raise SpecdiffError(
            f"--steps {steps} is more than --scheduler {scheduler} allows for this model "
            f"({limit} training timesteps); use at most {limit} or --scheduler original"
        )


def _same_file(a: Path, b: Path) -> bool:
    try:
        return a.exists() and b.exists() and os.path.samefile(a, b)
    except OSError:
        return False


def _log(args: argparse.Namespace, message: str) -> None:
    if not args.quiet:
        print(f"{PROG}: {message}", file=sys.stderr)


def check_audio_extension(path: Path) -> None:
    """The output's extension must name a container soundfile can write (.wav, .flac, .ogg...)."""
    import soundfile

    extension = path.suffix.lstrip(".").upper() or "WAV"
    if extension not in soundfile.available_formats():
        raise SpecdiffError(
            f"cannot write {path}: unsupported audio file extension .{extension.lower()} (use .wav or .flac)"
        )


def _segments_used(pipe: SpectrogramDiffusionPipeline, tokenized: Any) -> int:
    """How many 5.12 s segments the pipeline will generate (those after the release tail are skipped)."""
    return pipe.plan(tokenized).segments


def _synthesize_streaming(
    args: argparse.Namespace, pipe: Any, tokenized: Any, generator: Any, output: Path, started: float
) -> tuple[int, Any]:
    """``--stream``: write each segment's audio as soon as it is done; returns (samples, log-mel)."""
    import numpy as np

    total = _segments_used(pipe, tokenized)
    mels = []
    from specdiff.audio.files import StreamingAudioFile

    with StreamingAudioFile(output, pipe.sample_rate) as sink:
        for segment in pipe.segments(
            tokenized,
            generator=generator,
            num_inference_steps=args.steps,
            guidance_scale=args.guidance,
            scheduler=args.scheduler,
            show_progress=False,
        ):
            sink.write(apply_gain(segment.audio, getattr(args, "gain", 0.0)))
            mels.append(segment.mel)
            end = sink.num_samples / pipe.sample_rate
            _log(
                args,
                f"segment {segment.index + 1}/{total}: {segment.start_time:.2f}-{end:.2f} s written "
                f"({time.perf_counter() - started:.1f} s elapsed)",
            )
        mel = np.concatenate(mels) if mels else np.zeros((0, 128), np.float32)
        _save_png(args, mel)  # before the rename: a failed picture leaves no audio file either
        sink.commit()
    return sink.num_samples, mel


def _save_png(args: argparse.Namespace, mel: Any) -> None:
    if args.mel_png is not None:
        from specdiff.evaluation.plotting import save_spectrogram_png

        save_spectrogram_png(mel, args.mel_png, title=args.midi.name)


def _write_song(wav: Path, png: Path | None, audio: Any, mel: Any, title: str, sample_rate: int) -> None:
    """The picture, then the audio, each atomically; a failed WAV takes its new picture with it."""
    from specdiff.audio.files import save_wav

    png_existed = png is not None and png.exists()
    if png is not None:
        from specdiff.evaluation.plotting import save_spectrogram_png

        save_spectrogram_png(mel, png, title=title)
    try:
        save_wav(wav, audio, sample_rate)
    except BaseException:
        if png is not None and not png_existed:
            png.unlink(missing_ok=True)  # all outputs of a song or none
        raise


def _use_example(args: argparse.Namespace, midis: list[Path]) -> list[Path]:
    """``--example NAME``: the bundled MIDI file to synthesize; ``-o`` defaults to ``./NAME.wav``
    (next to the MIDI file, the usual default, would be inside the installed package)."""
    if midis:
        raise UsageError(f"give MIDI files or --example, not both (got {len(midis)} MIDI file(s) and --example)")
    example = find_example(args.example)
    if args.output is None:
        args.output = Path(f"{example.name}.wav")
    return [example.path]


def _check_optional_dependencies(args: argparse.Namespace) -> None:
    """What the chosen options need beyond the core install, checked before anything slow runs."""
    if args.mel_png is not None and importlib.util.find_spec("matplotlib") is None:
        raise SpecdiffError("--mel-png needs matplotlib: pip install matplotlib (or specdiff[plot])")
    if args.scheduler not in NATIVE_SCHEDULERS and importlib.util.find_spec("diffusers") is None:
        raise SpecdiffError(
            f"--scheduler {args.scheduler} needs diffusers: pip install diffusers (or use --scheduler original or ddim)"
        )


def _load_model(args: argparse.Namespace, model_dir: Path) -> tuple[Any, str]:
    """The pipeline on its device, with the threads, vocoder refinement and steps of ``args`` checked
    against it; ``--threads`` was already checked to be >= 1."""
    import torch

    if args.threads is not None:
        torch.set_num_threads(args.threads)
    pipe, device = load_pipeline(args, model_dir)
    _set_refine_iters(pipe, args.refine_iters)
    check_steps(pipe, args.scheduler, args.steps)
    return pipe, device


def run_synth(args: argparse.Namespace) -> int:
    """``specdiff synth``: MIDI file(s) -> WAV (and optionally spectrogram PNGs)."""
    midis = list(args.midi) if isinstance(args.midi, (list, tuple)) else [args.midi]
    if getattr(args, "example", None) is not None:
        midis = _use_example(args, midis)
    elif not midis:
        raise UsageError(
            "no MIDI file given: specdiff synth song.mid, or a bundled one: specdiff synth --example "
            f"{DEFAULT_EXAMPLE} (`specdiff examples` lists them)"
        )
    if len(midis) > 1:
        return run_synth_many(args, midis)
    return _run_synth_one(argparse.Namespace(**{**vars(args), "midi": midis[0]}))


def _run_synth_one(args: argparse.Namespace) -> int:
    """One MIDI file (``args.midi`` is a Path): -o is a file, --stream is allowed."""
    started = time.perf_counter()
    midi: Path = args.midi
    output: Path = args.output if args.output is not None else default_output_path(midi)

    # 1. Everything cheap first (no torch yet): model folder, output paths, optional dependency.
    model_dir = resolve_model(args)
    if not midi.exists():
        raise SpecdiffError(f"MIDI file not found: {midi}")
    for path, what in ((output, "output"), (args.mel_png, "--mel-png")):
        if path is None:
            continue
        if _same_file(path, midi):
            raise SpecdiffError(f"{what} {path} is the input MIDI file; choose another name with -o")
        check_writable(path, f"{what} file" if what == "output" else f"{what} picture")
    check_audio_extension(output)
    if args.mel_png is not None and output.resolve() == args.mel_png.resolve():
        raise SpecdiffError(f"the WAV and the --mel-png picture would both be written to {output}")
    _check_optional_dependencies(args)

    # 2. Read the MIDI before loading a model: a bad file fails in milliseconds.
    from specdiff.midi.tokenizer import midi_to_segments

    tokenized = midi_to_segments(midi)

    # 3. Model, device, sampler.
    import torch

    if args.threads is not None and args.threads < 1:
        raise SpecdiffError(f"--threads must be >= 1, got {args.threads}")
    seed = args.seed if args.seed is not None else secrets.randbelow(2**31)
    pipe, device = _load_model(args, model_dir)
    if not pipe.slakh_programs:  # the model reads General MIDI programs (its decoder's gm_programs)
        tokenized = pipe.tokenize(midi)
    # A CPU generator: the same seed gives the same start noise on every device (sampler.randn).
    generator = torch.Generator(device="cpu").manual_seed(seed)
    sample_rate = pipe.sample_rate

    # 4. Synthesis (the slow part) and the outputs, atomically: a failure or Ctrl-C leaves no new
    # file behind and any previous file untouched.
    if args.stream:
        num_samples, _ = _synthesize_streaming(args, pipe, tokenized, generator, output, started)
    else:
        result = pipe(
            tokenized,
            num_inference_steps=args.steps,
            scheduler=args.scheduler,
            guidance_scale=args.guidance,
            generator=generator,
            show_progress=not args.quiet,
        )
        audio = apply_gain(result.audios[0], getattr(args, "gain", 0.0))  # before the limiter of save_wav
        num_samples = len(audio)
        _write_song(output, args.mel_png, audio, result.mels[0], midi.name, sample_rate)

    wall = time.perf_counter() - started
    seconds = num_samples / sample_rate
    written = f"{output}" + (f" and {args.mel_png}" if args.mel_png is not None else "")
    _log(
        args,
        f"wrote {written}: {seconds:.2f} s of audio in {wall:.1f} s (real-time factor "
        f"{wall / max(seconds, 1e-9):.2f}; {_segments_used(pipe, tokenized)} segments, {args.scheduler} "
        f"x {args.steps} steps, guidance {args.guidance:g}, seed {seed}, {device}, {args.precision})",
    )
    return 0


# ---------------------------------------------------------------------------------------------
# synth with several MIDI files: one batch
# ---------------------------------------------------------------------------------------------


def _check_folder_option(path: Path | None, option: str, extensions: set[str]) -> None:
    """With several inputs, -o / --mel-png name a folder: refuse a file, or what looks like one."""
    if path is None:
        return
    if path.exists() and not path.is_dir():
        raise UsageError(
            f"{option} must be a folder when several MIDI files are given (each song is "
            f"written as FOLDER/<MIDI name>); {path} is a file"
        )
    if not path.exists() and path.suffix.lower() in extensions:
        # A folder named out.wav is almost surely a mistake, not a wish.
        raise UsageError(
            f"{option} must be a folder when several MIDI files are given (each song is "
            f"written as FOLDER/<MIDI name>), not a file name like {path}"
        )


def _audio_extensions() -> set[str]:
    import soundfile

    return {f".{name.lower()}" for name in soundfile.available_formats()} | {".mp3", ".m4a", ".aac"}


def _output_paths(midis: list[Path], out_dir: Path | None, png_dir: Path | None) -> list[tuple[Path, Path | None]]:
    """(WAV, PNG or None) per song: FOLDER/<stem>.wav, or next to the MIDI file without -o."""
    targets = [
        (
            (out_dir if out_dir is not None else midi.parent) / f"{midi.stem}.wav",
            png_dir / f"{midi.stem}.png" if png_dir is not None else None,
        )
        for midi in midis
    ]
    owner: dict[Path, Path] = {}
    for midi, paths in zip(midis, targets):
        for path in paths:
            if path is None:
                continue
            key = path.resolve()
            if key in owner:
                raise UsageError(
                    f"{owner[key]} and {midi} would both be written to {path}; give each "
                    "MIDI file a different name (or synthesize them in separate runs)"
                )
            owner[key] = midi
            if any(_same_file(path, m) for m in midis):
                raise SpecdiffError(f"output {path} would replace an input MIDI file")
    return targets


def _make_folders(folders: list[Path]) -> list[Path]:
    """Create the missing output folders; returns those it created (to remove on a later failure)."""
    created = []
    for folder in dict.fromkeys(folders):
        missing = [f for f in (folder, *folder.parents) if not f.exists()]
        try:
            folder.mkdir(parents=True, exist_ok=True)
        except OSError as err:
            raise SpecdiffError(f"cannot create folder {folder}: {err.strerror or err}") from None
        created.extend(missing)
    return sorted(created, key=lambda f: len(f.absolute().parts), reverse=True)  # deepest first, for rmdir


def _read_midis(midis: list[Path]) -> list[Any]:
    """Tokenize every file; the first bad one fails with one line that names it."""
    from specdiff.midi.tokenizer import midi_to_segments

    tokenized = []
    for midi in midis:
        try:
            tokenized.append(midi_to_segments(midi))
        except SpecdiffError as err:
            if str(midi) in str(err):
                raise
            raise type(err)(f"{midi}: {one_line(err)}") from None
    return tokenized


def _check_many(args: argparse.Namespace, midis: list[Path]) -> tuple[Path, list[tuple[Path, Path | None]]]:
    """The command line and everything cheap for several songs (no torch, nothing created yet):
    returns the model folder and each song's ``(wav, png)`` outputs."""
    if args.stream:
        raise UsageError(
            f"--stream takes a single MIDI file, got {len(midis)}; drop --stream to synthesize "
            "them in one batch, or run them one at a time"
        )
    model_dir = resolve_model(args)
    _check_folder_option(args.output, "-o/--output", _audio_extensions())
    _check_folder_option(args.mel_png, "--mel-png", {".png", ".jpg", ".jpeg", ".svg", ".pdf"})
    for midi in midis:
        if not midi.exists():
            raise SpecdiffError(f"MIDI file not found: {midi}")
    targets = _output_paths(midis, args.output, args.mel_png)
    _check_optional_dependencies(args)
    if args.threads is not None and args.threads < 1:
        raise SpecdiffError(f"--threads must be >= 1, got {args.threads}")
    return model_dir, targets


def _prepare_outputs(targets: list[tuple[Path, Path | None]]) -> None:
    """Create the output folders and test-write every output; if one fails, remove the folders this
    created, so that a refused run leaves nothing behind."""
    created = _make_folders([p.parent for wav_png in targets for p in wav_png if p is not None])
    try:
        for wav, png in targets:
            check_writable(wav, "output file")
            if png is not None:
                check_writable(png, "--mel-png picture")
    except BaseException:
        for folder in created:
            try:
                folder.rmdir()
            except OSError:
                pass
        raise


def _write_songs(
    args: argparse.Namespace, midis: list[Path], targets: list, results: list, seeds: list[int], sample_rate: int
) -> int:
    """Each song's outputs, one song at a time and each atomically; returns the samples written."""
    total_samples = 0
    for midi, (wav, png), result, seed in zip(midis, targets, results, seeds):
        audio = apply_gain(result.audios[0], getattr(args, "gain", 0.0))
        _write_song(wav, png, audio, result.mels[0], midi.name, sample_rate)
        total_samples += len(audio)
        written = f"{wav}" + (f" and {png}" if png is not None else "")
        _log(args, f"wrote {written}: {len(audio) / sample_rate:.2f} s of audio, seed {seed}")
    return total_samples


def run_synth_many(args: argparse.Namespace, midis: list[Path]) -> int:
    """``specdiff synth a.mid b.mid ... [-o FOLDER]``: the songs in batches, one WAV (and PNG) each.

    Song ``k`` gets seed ``--seed + k`` (random ones without --seed), so it comes out as a
    single-file run with that seed would (``SpectrogramDiffusionPipeline.synthesize_many``).
    """
    started = time.perf_counter()
    # 1. The command line and everything cheap.
    model_dir, targets = _check_many(args, midis)
    # 2. Every MIDI file before the model: one bad file fails the run in milliseconds, before any
    # folder or file is created.
    tokenized = _read_midis(midis)
    # 3. Output folders, and a real write test of every output.
    _prepare_outputs(targets)

    # 4. Model, device, one seeded CPU generator per song (same noise on every device).
    import torch

    if args.seed is not None:
        seeds = [args.seed + k for k in range(len(midis))]
    else:
        seeds = [secrets.randbelow(2**31) for _ in midis]
    pipe, device = _load_model(args, model_dir)
    if not pipe.slakh_programs:  # the model reads General MIDI programs (its decoder's gm_programs)
        tokenized = [pipe.tokenize(midi) for midi in midis]
    generators = [torch.Generator(device="cpu").manual_seed(seed) for seed in seeds]

    # 5. All songs (the slow part), then the outputs.
    results = pipe.synthesize_many(
        tokenized,
        generators=generators,
        num_inference_steps=args.steps,
        guidance_scale=args.guidance,
        scheduler=args.scheduler,
        batch_size=args.batch_size,
        show_progress=not args.quiet,
    )
    sample_rate = pipe.sample_rate
    total_samples = _write_songs(args, midis, targets, results, seeds, sample_rate)

    wall = time.perf_counter() - started
    seconds = total_samples / sample_rate
    batch = min(args.batch_size or len(midis), len(midis))
    _log(
        args,
        f"{len(midis)} songs, {seconds:.2f} s of audio in {wall:.1f} s (real-time factor "
        f"{wall / max(seconds, 1e-9):.2f}; batches of {batch}, {args.scheduler} x {args.steps} steps, "
        f"guidance {args.guidance:g}, {device}, {args.precision})",
    )
    return 0
