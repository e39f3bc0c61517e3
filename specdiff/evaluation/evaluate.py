"""Evaluate a model on MIDI files: synthesize, compare with reference audio, write a report.

For every MIDI file the pipeline synthesizes audio (same seed, steps, sampler and guidance for
every piece, so a piece's result does not depend on the others). The reference audio comes from
``reference_audio`` (a folder of ``<midi stem>.wav/.flac/...`` files, or a dict from MIDI path /
name / stem to a file or a 16 kHz array); a piece without one is rendered from its MIDI with a
General MIDI SoundFont (:mod:`specdiff.data.render`). Metrics (:mod:`specdiff.evaluation.metrics`):

- note-onset precision/recall/F1 (mir_eval, 50 ms, offsets ignored, drums excluded) of
  basic-pitch's transcription of the generated audio and of the reference audio against the MIDI
  notes, and their ratio (skipped, with a message, when basic-pitch is not installed);
- log-mel L1 and the multi-resolution STFT distance between generated and reference audio;
- the Fréchet distance between the window embeddings of all generated and all reference audio
  (embedding: :mod:`specdiff.evaluation.embeddings`, ``mfcc-stats`` by default);
- synthesis speed (audio seconds per wall-clock second; a by-product, not a benchmark).

Writes ``evaluation.json`` and ``evaluation.md`` (the table, also printed), the generated (and
rendered reference) audio, and optionally one PNG per piece: reference vs generated log-mel and
the piano roll.

This module imports only numpy at import time: building the ``specdiff evaluate`` parser must
not load torch.
"""

from __future__ import annotations

import json
import math
import os
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from specdiff.atomic import atomic_write_text
from specdiff.constants import SAMPLE_RATE
from specdiff.errors import AudioError, MidiError, SpecdiffError
from specdiff.evaluation.report import TABLE_COLUMNS, format_cell, json_safe, markdown_report
from specdiff.pipeline.sampling_settings import resolve_sampling

if TYPE_CHECKING:
    from specdiff.pipeline.pipeline import SpectrogramDiffusionPipeline

AUDIO_SUFFIXES = (".wav", ".flac", ".ogg", ".mp3", ".aiff", ".aif")
MIDI_SUFFIXES = (".mid", ".midi")
RESULT_JSON = "evaluation.json"
RESULT_MARKDOWN = "evaluation.md"

# Columns of the per-piece table: (result key, header, format).
TRANSCRIPTION_METHOD = "basic-pitch 0.4 (ONNX) + mir_eval note onsets, 50 ms, offsets ignored, drums excluded"


def _log(message: str, verbose: bool) -> None:
    if verbose:
        print(message, file=sys.stderr, flush=True)


# ---------------------------------------------------------------------------------------------
# Inputs
# ---------------------------------------------------------------------------------------------


def collect_midi_files(paths: Sequence[str | os.PathLike]) -> list[Path]:
    """MIDI files from files and folders (a folder gives its ``*.mid``/``*.midi``, sorted, not
    recursive), in the order given; duplicates are dropped."""
    files: list[Path] = []
    for item in map(Path, paths):
        if item.is_dir():
            found = sorted(p for p in item.iterdir() if p.is_file() and p.suffix.lower() in MIDI_SUFFIXES)
            if not found:
                raise MidiError(f"no .mid/.midi files in folder {item}")
            files += found
        elif item.is_file():
            files.append(item)
        else:
            raise MidiError(f"MIDI file not found: {item}")
    unique = list(dict.fromkeys(files))
    if not unique:
        raise SpecdiffError("no MIDI files to evaluate")
    return unique


def find_reference(midi: Path, reference_audio: Mapping[Any, Any] | str | os.PathLike | None) -> Any:
    """The reference for ``midi``: an array, a file path, or None (render it).

    A dict is looked up by the MIDI path, then its file name, then its stem; a folder by
    ``<stem><audio suffix>``.
    """
    if reference_audio is None:
        return None
    if isinstance(reference_audio, Mapping):
        for key in (midi, str(midi), midi.name, midi.stem):
            if key in reference_audio:
                return reference_audio[key]
        return None
    folder = Path(reference_audio)
    if not folder.is_dir():
        raise AudioError(f"reference audio folder not found: {folder}")
    for suffix in AUDIO_SUFFIXES:
        for candidate in (folder / f"{midi.stem}{suffix}", folder / f"{midi.stem}{suffix.upper()}"):
            if candidate.is_file():
                return candidate
    return None


def load_reference(midi: Path, found: Any, soundfont: str | os.PathLike | None = None) -> tuple[np.ndarray, str]:
    """``(16 kHz mono audio, where it came from)`` for a :func:`find_reference` result."""
    if found is None:
        from specdiff.data.render import default_soundfont, render_midi

        audio = render_midi(midi, sample_rate=SAMPLE_RATE, soundfont=soundfont)
        return audio, f"rendered ({Path(soundfont).name if soundfont else default_soundfont().name})"
    if isinstance(found, (str, os.PathLike)):
        from specdiff.audio.files import load_audio

        return np.asarray(load_audio(found), np.float32).reshape(-1), str(found)
    return np.asarray(found, np.float32).reshape(-1), "given array"


@dataclass
class Piece:
    """One MIDI file as the evaluation sees it: its notes (sustain applied, cut at
    ``max_seconds``) and their token segments."""

    midi: Path
    notes: list  # list[specdiff.midi.tokenizer.Note], drums included
    tokenized: Any  # specdiff.midi.tokenizer.TokenizedMidi
    cut: float | None  # seconds the piece was cut at (None: whole piece)


def prepare_piece(midi: Path, max_seconds: float | None = None, slakh_programs: bool = True) -> Piece:
    """Read and tokenize ``midi``; with ``max_seconds`` keep only the notes that start before it,
    ending any still sounding there (the notes the transcription is scored against), and the whole
    song's first segments up to it (what the model plays; its output is cropped there).

    Why the whole song's tokens and not those of the cut notes: the token codec keeps an MT3 quirk
    (docs/ORIGINAL.md §2.3): a segment that starts after the song's last event lists, in its tie
    section, the notes that ended at that last event, as if they were still held. Tokenizing the cut
    notes made every segment after a long rest before the cut such a segment, and the model played
    the phantom ties where the reference (the whole song's render, cut) is silent (a 20 s idioms
    validation piece whose notes resume at 24.6 s: -2 nat where the render is at the floor, -11.5).
    In the whole song later events exist, so the tie sections are the notes really sounding."""
    from specdiff.constants import SEGMENT_FRAMES
    from specdiff.midi.reader import midi_to_notes
    from specdiff.midi.tokenizer import TokenizedMidi, notes_to_segments, num_frames_for

    notes, total_time = midi_to_notes(midi, slakh_programs=slakh_programs)
    segments = notes_to_segments(notes, total_time)
    cut = None
    if max_seconds is not None and total_time > max_seconds:
        notes = [replace(n, end=min(n.end, max_seconds)) for n in notes if n.start < max_seconds]
        total_time = cut = float(max_seconds)
        segments = segments[: -(-num_frames_for(total_time) // SEGMENT_FRAMES)]
    return Piece(midi, notes, TokenizedMidi(segments, total_time, notes, slakh_programs), cut)


def _prepare_pieces(
    midi_paths: Sequence[Path], max_seconds: float | None, verbose: bool
) -> tuple[list[Piece], list[dict[str, str]]]:
    """The pieces that can be synthesized, and ``{"piece", "midi", "reason"}`` for each that cannot
    (a ``MidiError``: no notes, not a MIDI file, truncated, ...). Raises ``MidiError`` naming the
    reasons when no piece is left."""
    pieces: list[Piece] = []
    skipped: list[dict[str, str]] = []
    for path in midi_paths:
        try:
            pieces.append(prepare_piece(path, max_seconds))
        except MidiError as err:
            reason = " ".join(str(err).split()).removeprefix(f"{path}: ").removeprefix(f"{path.name}: ")
            skipped.append({"piece": path.name, "midi": str(path), "reason": reason})
            _log(f"skipping {path.name}: {reason}", verbose)
    if not pieces:
        listed = "; ".join(f"{s['piece']}: {s['reason']}" for s in skipped[:3])
        more = f" (and {len(skipped) - 3} more)" if len(skipped) > 3 else ""
        raise MidiError(
            f"nothing to evaluate: none of the {len(skipped)} MIDI file(s) can be synthesized ({listed}{more})"
        )
    return pieces, skipped


def _load_pipeline(model: Any, inverter: str, device: str, dtype: Any = None):
    if not isinstance(model, (str, os.PathLike)):
        return model  # already a pipeline (anything with __call__ and sample_rate)
    from specdiff.pipeline.hub import resolve_model_path
    from specdiff.pipeline.pipeline import SpectrogramDiffusionPipeline

    path = resolve_model_path(model)
    if not path.is_dir():
        raise SpecdiffError(f"model folder not found: {path}")
    import torch

    return SpectrogramDiffusionPipeline.from_pretrained(
        path, device=device, inverter=inverter, dtype=dtype if dtype is not None else torch.float32
    )


# ---------------------------------------------------------------------------------------------
# The evaluation
# ---------------------------------------------------------------------------------------------


def evaluate(
    model: str | os.PathLike | SpectrogramDiffusionPipeline,
    midi_files: Sequence[str | os.PathLike],
    reference_audio: Mapping[Any, Any] | str | os.PathLike | None = None,
    steps: int | None = None,
    scheduler: str | None = None,
    guidance: float | None = None,
    seed: int = 0,
    out_dir: str | os.PathLike | None = None,
    *,
    max_seconds: float | None = None,
    embedding: str = "mfcc-stats",
    transcription: bool = True,
    plots: bool = False,
    save_audio: bool = True,
    inverter: str = "auto",
    device: str = "cpu",
    soundfont: str | os.PathLike | None = None,
    verbose: bool = True,
    dtype: Any = None,
    timbre: str | None = None,
) -> dict[str, Any]:
    """Synthesize every MIDI file with ``model`` and score it against reference audio.

    ``model``: a pipeline folder (diffusers layout) or a ``SpectrogramDiffusionPipeline`` (any object with
    ``sample_rate`` and ``__call__(tokenized, ...) -> .audios [1, N]``). ``midi_files``: files and/or folders.
    ``max_seconds`` keeps only the first seconds of each piece (notes and reference audio are cut to match), for
    quick checks. Every piece uses the same ``seed``. ``dtype``: the networks' dtype for a folder (default float32).
    ``timbre``: synthesize this timbre of a timbre-conditioned model; rendered references then
    use that timbre's SoundFont (``specdiff.data.render.find_soundfont``) unless ``soundfont`` is given.
    ``steps``, ``scheduler`` and ``guidance`` left None take the model's ``sampling.json`` (its
    :attr:`sampling`), else the library defaults, as a call of the pipeline does.
    Returns the result dict that is also written to ``out_dir/evaluation.json``
    (when ``out_dir`` is given); the table goes to stdout when ``verbose``.
    """
    from specdiff.evaluation import metrics
    from specdiff.evaluation.embeddings import get_embedding

    started_all = time.perf_counter()
    if steps is not None and steps < 1:
        raise SpecdiffError(f"steps must be at least 1, got {steps}")
    if max_seconds is not None and not (max_seconds > 0 and math.isfinite(max_seconds)):
        raise SpecdiffError(f"max_seconds must be a positive number, got {max_seconds}")
    embedder = get_embedding(embedding)  # unknown name: SpecdiffError before any work
    midi_paths = _midi_paths(midi_files, reference_audio, out_dir is not None and (save_audio or plots))
    # Cheap checks first: every MIDI file is read before the model loads. One that cannot be
    # synthesized (no notes, not a MIDI file, ...) is skipped and listed; none left is an error.
    pieces, skipped_files = _prepare_pieces(midi_paths, max_seconds, verbose)
    skipped = _transcription_skipped(transcription, embedding, verbose)
    out = _output_folder(out_dir)
    pipe = _load_pipeline(model, inverter, device, dtype)
    pieces = _as_the_model_reads(pipe, pieces, max_seconds)
    # Unset settings: the model's sampling.json, else the library defaults, so the report names what was run.
    chosen = resolve_sampling(getattr(pipe, "sampling", None), scheduler=scheduler, num_inference_steps=steps,
                              guidance_scale=guidance)  # fmt: skip
    steps, scheduler, guidance = chosen.num_inference_steps, chosen.scheduler, chosen.guidance_scale
    soundfont = _set_timbre(pipe, timbre, soundfont, reference_audio)

    run = _Run(pipe, reference_audio, soundfont, steps, scheduler, guidance, seed, not skipped, verbose)
    rows, generated_clips, reference_clips = _score_pieces(run, pieces, out, save_audio, plots)
    summary = _summarize(rows)
    summary["skipped"] = len(skipped_files)
    summary.update(metrics.frechet_audio_distance(generated_clips, reference_clips, embedding=embedding))
    settings = _settings_record(pipe, dtype, reference_audio, steps=steps, scheduler=scheduler, guidance=guidance,
                                seed=seed, max_seconds=max_seconds, embedding=embedding, inverter=inverter,
                                timbre=timbre, soundfont=soundfont, device=device)  # fmt: skip
    results: dict[str, Any] = {
        "model": str(model) if isinstance(model, (str, os.PathLike)) else type(model).__name__,
        "settings": settings,
        "transcription": skipped or TRANSCRIPTION_METHOD,
        "embedding": embedder.description,
        "summary": summary,
        "pieces": rows,
        "skipped": skipped_files,
        "environment": _environment(),
        "wall_seconds": time.perf_counter() - started_all,
    }
    _write_report(results, out, verbose)
    return results


def _output_folder(out_dir: str | os.PathLike | None) -> Path | None:
    """The report folder (created), or None."""
    if out_dir is None:
        return None
    Path(out_dir).mkdir(parents=True, exist_ok=True)
    return Path(out_dir)


def _as_the_model_reads(pipe: Any, pieces: list[Piece], max_seconds: float | None) -> list[Piece]:
    """The pieces tokenized again with General MIDI programs when the model reads them (``gm_programs``)."""
    if getattr(pipe, "slakh_programs", True):
        return pieces
    return [prepare_piece(piece.midi, max_seconds, slakh_programs=False) for piece in pieces]


def _settings_record(
    pipe: SpectrogramDiffusionPipeline, dtype: Any, reference_audio: Any, **settings: Any
) -> dict[str, Any]:
    """The settings of a run as the report records them, in the order given and then ``dtype`` (the
    pipeline's own) and ``reference_audio`` (a folder, "given", or None); a SoundFont as a string."""
    soundfont = settings.get("soundfont")
    return {
        **settings,
        "soundfont": str(soundfont) if soundfont is not None else None,  # keeps its place in the order
        "dtype": str(getattr(pipe, "dtype", dtype)).replace("torch.", ""),
        "reference_audio": str(reference_audio)
        if isinstance(reference_audio, (str, os.PathLike))
        else ("given" if reference_audio is not None else None),
    }


def _midi_paths(midi_files: Sequence[str | os.PathLike], reference_audio: Any, writes_per_piece: bool) -> list[Path]:
    """The MIDI files to evaluate; outputs named after each file's stem must not collide, and a
    reference folder must exist."""
    midi_paths = collect_midi_files(midi_files)
    if len({p.stem for p in midi_paths}) < len(midi_paths) and writes_per_piece:
        raise SpecdiffError("two MIDI files share a file name stem; their outputs would overwrite each other")
    if isinstance(reference_audio, (str, os.PathLike)) and not Path(reference_audio).is_dir():
        raise AudioError(f"reference audio folder not found: {reference_audio}")
    return midi_paths


def _transcription_skipped(transcription: bool, embedding: str, verbose: bool) -> str | None:
    """Why the transcription metrics are skipped (disabled, basic-pitch missing), or None; the
    basic-pitch embedding cannot do without it."""
    from specdiff.evaluation import transcription as basic_pitch

    skipped = basic_pitch.transcription_unavailable() if transcription else "transcription metrics skipped (disabled)"
    if embedding == "basic-pitch" and basic_pitch.transcription_unavailable():
        raise SpecdiffError(f"the basic-pitch embedding needs basic-pitch: {basic_pitch.BASIC_PITCH_INSTALL}")
    if skipped and transcription:
        _log(f"note: {skipped}", verbose)
    return skipped


def _set_timbre(pipe: SpectrogramDiffusionPipeline, timbre: str | None, soundfont: Any, reference_audio: Any) -> Any:
    """Point the pipeline at ``timbre`` and check its sample rate; returns the SoundFont rendered
    references use (the timbre's own when neither a SoundFont nor references are given)."""
    if timbre is not None:
        pipe.timbre = timbre
        if soundfont is None and reference_audio is None:
            from specdiff.data.render import find_soundfont

            soundfont = find_soundfont(timbre)
    sample_rate = int(getattr(pipe, "sample_rate", SAMPLE_RATE))
    if sample_rate != SAMPLE_RATE:
        raise SpecdiffError(f"the pipeline produces {sample_rate} Hz audio; evaluation expects {SAMPLE_RATE} Hz")
    return soundfont


@dataclass(frozen=True)
class _Run:
    """What every piece of one evaluation is synthesized and scored with."""

    pipe: SpectrogramDiffusionPipeline
    reference_audio: Any
    soundfont: Any
    steps: int
    scheduler: str
    guidance: float
    seed: int
    transcription: bool
    verbose: bool


def _score_pieces(
    run: _Run, pieces: list, out: Path | None, save_audio: bool, plots: bool
) -> tuple[list[dict[str, Any]], list[np.ndarray], list[np.ndarray]]:
    """Synthesize and score each piece (writing its audio and plot under ``out`` when asked):
    the rows, the generated clips and the reference clips."""
    rows: list[dict[str, Any]] = []
    generated_clips: list[np.ndarray] = []
    reference_clips: list[np.ndarray] = []
    for index, piece in enumerate(pieces):
        _log(f"[{index + 1}/{len(pieces)}] {piece.midi.name}: synthesizing "
             f"{len(piece.tokenized.segments)} segment(s)", run.verbose)  # fmt: skip
        row, generated, reference = _evaluate_piece(
            run.pipe, piece, run.reference_audio, run.soundfont, run.steps, run.scheduler, run.guidance, run.seed,
            transcription=run.transcription, verbose=run.verbose,
        )  # fmt: skip
        if out is not None and save_audio:
            row["audio"] = _save_audio(out / "audio" / f"{piece.midi.stem}.wav", row.pop("_full_audio"))
            if row["reference"].startswith("rendered"):
                row["reference_audio"] = _save_audio(out / "audio" / f"{piece.midi.stem}.reference.wav", reference)
        row.pop("_full_audio", None)
        if out is not None and plots:
            row["plot"] = save_comparison_png(
                out / "plots" / f"{piece.midi.stem}.png", reference, generated, piece.notes, title=piece.midi.name
            )
        rows.append(row)
        generated_clips.append(generated)
        reference_clips.append(reference)
        _log("    " + ", ".join(f"{header.split(' ↑')[0].split(' ↓')[0]} {format_cell(row.get(key), fmt)}"
                                for key, header, fmt in TABLE_COLUMNS[1:] if key in row), run.verbose)  # fmt: skip
    return rows, generated_clips, reference_clips


def _write_report(results: dict[str, Any], out: Path | None, verbose: bool) -> None:
    """The results as JSON and Markdown under ``out`` (their paths go into ``results["files"]``),
    and the table on stdout when ``verbose``."""
    table = markdown_report(results)
    if out is not None:
        atomic_write_text(out / RESULT_JSON, json.dumps(json_safe(results), indent=2, ensure_ascii=False) + "\n")
        atomic_write_text(out / RESULT_MARKDOWN, table)
        results["files"] = {"json": str(out / RESULT_JSON), "markdown": str(out / RESULT_MARKDOWN)}
    if verbose:
        print(table, flush=True)


def _evaluate_piece(
    pipe: SpectrogramDiffusionPipeline,
    piece: Piece,
    reference_audio: Any,
    soundfont: Any,
    steps: int,
    scheduler: str,
    guidance: float,
    seed: int,
    transcription: bool,
    verbose: bool,
) -> tuple[dict[str, Any], np.ndarray, np.ndarray]:
    """One piece: synthesize, load/render the reference, crop both to a common length, score."""
    import torch

    from specdiff.evaluation import metrics

    generator = torch.Generator().manual_seed(seed)  # CPU generator: same noise on every device
    started = time.perf_counter()
    output = pipe(
        piece.tokenized, num_inference_steps=steps, scheduler=scheduler, guidance_scale=guidance,
        generator=generator, progress=verbose,
    )  # fmt: skip
    synthesis_seconds = time.perf_counter() - started
    full = np.asarray(output.audios[0], np.float32).reshape(-1)
    # A diverged sampler (e.g. an ODE solver on an untrained model: no x0 clipping) can give
    # inf/NaN audio. Score those samples as silence instead of poisoning every metric; say so.
    nonfinite = int(np.count_nonzero(~np.isfinite(full)))
    if nonfinite:
        print(
            f"warning: {piece.midi.name}: {nonfinite} non-finite generated samples, scored as silence", file=sys.stderr
        )
        full = np.nan_to_num(full, nan=0.0, posinf=0.0, neginf=0.0)

    reference, source = load_reference(piece.midi, find_reference(piece.midi, reference_audio), soundfont)
    if piece.cut is not None:
        reference = reference[: int(round(piece.cut * SAMPLE_RATE))]
    # The pipeline stops 0.5 s after the music, a render 1 s after it, a recording wherever it
    # does: compare over the common span.
    generated, reference = metrics.crop_to_common_length(full, reference)
    if len(generated) == 0:
        raise AudioError(f"{piece.midi.name}: the reference audio is empty")

    row: dict[str, Any] = {
        "piece": piece.midi.name,
        "midi": str(piece.midi),
        "reference": source,
        "segments": len(piece.tokenized.segments),
        "notes": sum(not n.is_drum for n in piece.notes),
        "seconds": len(generated) / SAMPLE_RATE,
        "generated_seconds": len(full) / SAMPLE_RATE,
        "synthesis_seconds": synthesis_seconds,
        "x_real_time": len(full) / SAMPLE_RATE / max(synthesis_seconds, 1e-9),
        "nonfinite_samples": nonfinite,
        "_full_audio": full,
    }
    row.update(metrics.reconstruction_scores(generated, reference))
    # Level: the full generated audio (before any limiter: the pipeline returns it raw) and the
    # reference over the common span.
    row.update(metrics.level_comparison(full[: len(generated)], reference))
    row.update(metrics.rest_scores(generated, reference, piece.notes))
    if transcription:
        _log("    transcribing with basic-pitch", verbose)
        row.update(metrics.transcription_scores(generated, reference, piece.notes))
    return row, generated, reference


def _summarize(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Means over pieces; the F1 ratio of the means (steadier than a mean of ratios); overall speed."""
    from specdiff.evaluation import metrics

    summary: dict[str, Any] = {"pieces": len(rows), "total_seconds": float(sum(r["seconds"] for r in rows))}
    keys = [key for key, _, _ in TABLE_COLUMNS if key not in ("f1_ratio", "x_real_time")]
    keys += ["generated_precision", "generated_recall", "reference_precision", "reference_recall"]
    keys += ["silence_level", "reference_silence_level", "silence_gap", "rest_level", "reference_rest_level",
             "rest_gap", "peak", "reference_peak",
             "max_segment_jump_db", "reference_max_segment_jump_db", "loudness_diff_db",
             *metrics.BAND_OFFSET_KEYS]  # fmt: skip
    for key in keys:
        values = [r[key] for r in rows if isinstance(r.get(key), float) and math.isfinite(r[key])]
        if values:
            summary[key] = float(np.mean(values))
    if "generated_f1" in summary and "reference_f1" in summary:
        ref = summary["reference_f1"]
        summary["f1_ratio"] = summary["generated_f1"] / ref if ref > 0 else math.nan
    synthesis = sum(r["synthesis_seconds"] for r in rows)
    summary["x_real_time"] = sum(r["generated_seconds"] for r in rows) / max(synthesis, 1e-9)
    return summary


def _environment() -> dict[str, Any]:
    from importlib import metadata

    versions = {}
    for name in ("specdiff", "torch", "basic-pitch", "mir_eval", "onnxruntime"):
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    return {"python": sys.version.split()[0], "packages": versions}


def _save_audio(path: Path, audio: np.ndarray) -> str:
    from specdiff.audio.files import save_wav

    path.parent.mkdir(parents=True, exist_ok=True)
    save_wav(path, audio, SAMPLE_RATE)
    return str(path)


# ---------------------------------------------------------------------------------------------
# Picture
# ---------------------------------------------------------------------------------------------


def save_comparison_png(
    path: Path, reference: np.ndarray, generated: np.ndarray, notes: Sequence, title: str = ""
) -> str | None:
    """Reference and generated log-mel with the piano roll (specdiff.evaluation.plotting); atomic.
    Returns the path, or None (with a message) when matplotlib is missing."""
    import torch

    from specdiff.audio.mel import log_mel
    from specdiff.evaluation import plotting

    with torch.no_grad():
        mels = [log_mel(torch.from_numpy(np.ascontiguousarray(a, np.float32))).numpy() for a in (reference, generated)]
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        plotting.save_comparison_png(path, mels[0], mels[1], notes=list(notes), title=title)
    except plotting.PlottingUnavailable:
        print("note: --png needs matplotlib (pip install matplotlib); no picture written", file=sys.stderr)
        return None
    return str(path)
