"""Benchmark: our neural vocoder vs Griffin-Lim, analysis-resynthesis of held-out rendered audio.

For every held-out demo-corpus MIDI file (rendered with specdiff.data.render), the audio goes through the
log-mel front end (ORIGINAL.md §1) and back through each inverter. Reported per inverter:
- log-mel L1 between the resynthesis and the original (natural-log units, our front end);
- multi-resolution STFT distance: mean L1 of log magnitudes and spectral convergence over
  4 resolutions (FFT 256/512/1024/2048, hop = FFT/4);
- note-onset F1 (mir_eval, 50 ms, offsets ignored) of basic-pitch's transcription of the
  resynthesis against basic-pitch's transcription of the original audio, when basic-pitch is
  installed (and, for reference, of each against the MIDI file itself);
- CPU speed as x real time (audio seconds per compute second) on 1 and 2 threads.
Rows: Griffin-Lim (32 fast iterations from random phase), and the vocoder three ways (see
specdiff.audio.vocoder.VocoderInverter): its head's magnitude and phase alone (what its ONNX export
computes), the same + refinement iterations, and its magnitude with the phase vocoder's phase
(specdiff.audio.phase_vocoder), alone and with the default mel-fit corrections. The row the pipeline uses
with this vocoder folder is marked. ``--transients`` adds rows of the phase vocoder's transient phase
reset (thresholds and rules; the mel fit and the silence gate of the pipeline's row); ``--rows`` keeps
only some rows (screening).

Held-out music unlike the demo corpus (``--set idioms``): the generated band-music test split
(``specdiff.data.idioms``, never trained on) rendered with each of ``--soundfonts``, plus
``--quiet-copies`` of the first clips at -20 dB. Extra columns there: the silence gap (mean log-mel of
the resynthesis minus the original's on frames where the original is silent, its frame mean below
``SILENT_LOG_MEL``: an inverter must not add noise into rests) and "onsets kept" (onset F1 vs the MIDI
of the resynthesis over the original's), with one row per clip in the .md.

Usage:
  python benchmarks/vocoder_benchmark.py --vocoder runs/vocoder/export [--split test]
  python benchmarks/vocoder_benchmark.py --vocoder specdiff/assets/default_model --set idioms \
      --max-files 8 --name idioms
Writes benchmarks/results/vocoder_benchmark[_NAME].json and .md.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from specdiff.audio.mel import log_mel  # noqa: E402

RESOLUTIONS = ((256, 64), (512, 128), (1024, 256), (2048, 512))
#: A frame whose mean log-mel (natural log) is below this is silent (the front end's floor is -11.5).
SILENT_LOG_MEL = -8.0
QUIET_GAIN_DB = -20.0


def idiom_clips(max_files: int, seconds: float, soundfonts: list[str], quiet_copies: int, tmp: Path,
                sparse_files: int = 0, sparse_pool: int = 40):  # fmt: skip
    """[(name, 16 kHz audio, midi path)]: the first ``max_files`` pieces of the generated-idioms test
    split and the ``sparse_files`` of its first ``sparse_pool`` pieces with the most silent frames in
    their TimGM6mb render (rests, gaps between hits), rendered with each SoundFont, then the first
    ``quiet_copies`` clips at -20 dB."""
    from specdiff.data.idioms import write_split
    from specdiff.data.render import find_soundfont, render_midi

    pool = write_split(tmp / "idioms_midi", "test")[: max(max_files, sparse_pool)]
    files = pool[:max_files]
    if sparse_files:
        reference = find_soundfont(soundfonts[0])

        def silent_share(path: Path) -> float:
            audio = render_midi(path, 16000, soundfont=reference)[: int(seconds * 16000)].astype(np.float32)
            frames = log_mel(torch.from_numpy(audio)[None])[0].mean(dim=-1)
            return float((frames < SILENT_LOG_MEL).float().mean())

        candidates = sorted(pool[max_files:], key=silent_share, reverse=True)
        files += sorted(candidates[:sparse_files])
    clips = []
    for name in soundfonts:
        soundfont = find_soundfont(name)
        for path in files:
            audio = render_midi(path, 16000, soundfont=soundfont)[: int(seconds * 16000)].astype(np.float32)
            clips.append((f"{path.stem} [{name}]", audio, path))
    gain = 10 ** (QUIET_GAIN_DB / 20)
    clips += [(f"{n} {QUIET_GAIN_DB:+.0f} dB", a * gain, m) for n, a, m in clips[:quiet_copies]]
    return clips


def silence_gap(original_mel: torch.Tensor, resynthesis_mel: torch.Tensor) -> dict[str, float]:
    """Mean log-mel (``[1, T, 128]``) of the resynthesis minus the original's on the original's silent
    frames (NaN when it has none) and the share of such frames."""
    a, b = original_mel[0], resynthesis_mel[0]
    n = min(len(a), len(b))
    silent = a[:n].mean(dim=-1) < SILENT_LOG_MEL
    if not bool(silent.any()):
        return {"silence_gap": float("nan"), "silent_fraction": 0.0}
    gap = float((b[:n][silent] - a[:n][silent]).mean())
    return {"silence_gap": gap, "silent_fraction": float(silent.float().mean())}


def held_out_clips(split: str, max_files: int, seconds: float, audio_dir: Path | None, midi_dir: Path | None = None):
    """[(name, 16 kHz audio, midi path or None)] from the demo corpus split, a MIDI folder (rendered
    with specdiff.data.render) or audio files."""
    clips = []
    if audio_dir is not None:
        from specdiff.audio.files import load_audio

        for path in sorted(p for p in Path(audio_dir).iterdir() if p.suffix.lower() in {".wav", ".flac"})[:max_files]:
            clips.append((path.name, np.asarray(load_audio(path), np.float32)[: int(seconds * 16000)], None))
        return clips
    from specdiff.data.render import render_midi

    if midi_dir is not None:
        midi_files = sorted(p for p in Path(midi_dir).iterdir() if p.suffix.lower() in {".mid", ".midi"})
    else:
        from specdiff.data.corpus import demo_midi_files

        midi_files = list(demo_midi_files(split))
    for midi in midi_files[:max_files]:
        clips.append((Path(midi).name, render_midi(midi)[: int(seconds * 16000)], Path(midi)))
    return clips


def _magnitude(audio: torch.Tensor, n_fft: int, hop: int) -> torch.Tensor:
    window = torch.hann_window(n_fft)
    return torch.stft(audio, n_fft, hop, window=window, return_complex=True).abs()


def distances(
    original: np.ndarray, resynthesis: np.ndarray, original_mel: torch.Tensor, resynthesis_mel: torch.Tensor
) -> dict[str, float]:
    """Log-mel L1 (of the given log-mels of both) and the multi-resolution STFT distances."""
    a, b = torch.from_numpy(original)[None], torch.from_numpy(resynthesis)[None]
    log_l1, convergence = [], []
    for n_fft, hop in RESOLUTIONS:
        ma, mb = _magnitude(a, n_fft, hop), _magnitude(b, n_fft, hop)
        log_l1.append((ma.clamp_min(1e-5).log() - mb.clamp_min(1e-5).log()).abs().mean().item())
        convergence.append((torch.linalg.norm(ma - mb) / torch.linalg.norm(ma).clamp_min(1e-8)).item())
    mel_l1 = (original_mel - resynthesis_mel).abs().mean().item()
    return {
        "log_mel_l1": mel_l1,
        "mr_stft_log_l1": float(np.mean(log_l1)),
        "spectral_convergence": float(np.mean(convergence)),
    }


class OnsetScorer:
    """basic-pitch transcription + mir_eval onset F1 (None when basic-pitch is not installed)."""

    def __init__(self):
        import warnings

        warnings.filterwarnings("ignore")
        from basic_pitch import ICASSP_2022_MODEL_PATH
        from basic_pitch.inference import Model, predict

        self.model, self.predict = Model(ICASSP_2022_MODEL_PATH), predict

    def notes(self, audio: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        import soundfile as sf

        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / "a.wav"
            sf.write(path, audio, 16000)
            _, _, events = self.predict(path, self.model)
        intervals = np.array([[s, max(e, s + 1e-3)] for s, e, *_ in events]).reshape(-1, 2)
        pitches = np.array([440.0 * 2 ** ((p - 69) / 12) for _, _, p, *_ in events])
        return intervals, pitches

    @staticmethod
    def f1(reference, estimate) -> float:
        import mir_eval

        if len(reference[1]) == 0 or len(estimate[1]) == 0:
            return float(len(reference[1]) == len(estimate[1]))
        _, _, f, _ = mir_eval.transcription.precision_recall_f1_overlap(
            reference[0], reference[1], estimate[0], estimate[1], onset_tolerance=0.05, offset_ratio=None
        )
        return float(f)


def midi_notes(path: Path, seconds: float) -> tuple[np.ndarray, np.ndarray]:
    import pretty_midi

    notes = [n for inst in pretty_midi.PrettyMIDI(str(path)).instruments if not inst.is_drum for n in inst.notes]
    notes = [n for n in notes if n.start < seconds]
    intervals = np.array([[n.start, max(n.end, n.start + 1e-3)] for n in notes]).reshape(-1, 2)
    return intervals, np.array([440.0 * 2 ** ((n.pitch - 69) / 12) for n in notes])


def speed(inverter, mel: np.ndarray, threads: int, repeats: int = 3) -> float:
    """x real time: seconds of audio per second of compute."""
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        inverter(mel)  # warm-up
        start = time.perf_counter()
        for _ in range(repeats):
            inverter(mel)
        elapsed = (time.perf_counter() - start) / repeats
    finally:
        torch.set_num_threads(previous)
    return mel.shape[1] * 320 / 16000 / elapsed


class OnnxRunner:
    """The exported vocoder.onnx under onnxruntime, with a fixed number of intra-op threads."""

    def __init__(self, path: Path, threads: int):
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        self.session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])

    def __call__(self, mel: np.ndarray) -> np.ndarray:
        return self.session.run(None, {"input_features": mel.astype(np.float32)})[0]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--vocoder", type=Path, required=True, help="model folder with vocoder/, or a vocoder folder")
    parser.add_argument("--split", default="test", help="demo corpus split (default: test, never trained on)")
    parser.add_argument("--audio-dir", type=Path, help="use these audio files instead of the demo corpus")
    parser.add_argument("--midi-dir", type=Path, help="render these MIDI files instead of the demo corpus split")
    parser.add_argument(
        "--set",
        choices=("demo", "idioms"),
        default="demo",
        help="demo: the demo corpus split (default); idioms: the generated-idioms test split",
    )
    parser.add_argument(
        "--soundfonts",
        nargs="+",
        default=["TimGM6mb", "FluidR3_GM"],
        help="--set idioms: render with each of these SoundFonts",
    )
    parser.add_argument("--quiet-copies", type=int, default=2, help="--set idioms: clips also scored at -20 dB")
    parser.add_argument(
        "--sparse-files",
        type=int,
        default=4,
        help="--set idioms: also the pieces with the most silent frames among the first 40",
    )
    parser.add_argument("--name", default="", help="results file suffix: vocoder_benchmark_NAME.{json,md}")
    parser.add_argument("--max-files", type=int, default=12)
    parser.add_argument("--seconds", type=float, default=20.0, help="crop each clip to this length")
    parser.add_argument("--onnx", type=Path, help="also time this exported vocoder.onnx under onnxruntime")
    parser.add_argument("--note", default="", help="free text recorded with the results (e.g. the training step)")
    parser.add_argument("--no-onsets", action="store_true", help="skip the basic-pitch onset F1")
    parser.add_argument(
        "--refine-iters", type=int, default=32, help="refinement iterations of the refined row (default 32)"
    )
    parser.add_argument(
        "--mel-fit-iters",
        nargs="+",
        type=int,
        default=[],
        metavar="N",
        help="extra rows: the phase vocoder with N mel-fit corrections and the silence gate",
    )
    parser.add_argument(
        "--transients",
        nargs="+",
        default=[],
        metavar="DB[:ALIGN]",
        help="extra rows: the pipeline's phase-vocoder row with the transient phase reset at DB dB and the rule "
        "ALIGN (centre, onset or envelope; default envelope), e.g. 6:envelope 10:centre; 'off' = no reset",
    )
    parser.add_argument(
        "--threads", type=int, nargs="*", default=[1, 2], help="time on these torch thread counts (none: no timing)"
    )
    parser.add_argument(
        "--rows", nargs="+", default=[], metavar="TEXT", help="keep only the rows whose label contains one of these"
    )
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results")
    args = parser.parse_args()

    from specdiff.audio.griffin_lim import GriffinLimInverter
    from specdiff.audio.silence_gate import DEFAULT_GATE_ITERS
    from specdiff.audio.vocoder import DEFAULT_MEL_FIT_ITERS, load_vocoder

    torch.set_num_threads(1)
    default = load_vocoder(args.vocoder)  # what the pipeline uses: the folder's synthesis and its default refinement
    fit = f"{DEFAULT_MEL_FIT_ITERS} mel-fit correction(s)"
    folder = (default.transient_db, default.transient_align)  # the folder's transient reset
    rows = {  # label: (synthesis, refinement iterations, silence-gate passes)
        "vocoder, network phase alone (ONNX export)": ("network", 0, 0),
        "vocoder, network phase + silence gate": ("network", 0, DEFAULT_GATE_ITERS),
        f"vocoder, network phase + {args.refine_iters} refinement iterations": ("network", args.refine_iters, 0),
        "vocoder, phase vocoder alone": ("phase_vocoder", 0, 0),
        f"vocoder, phase vocoder + {fit} (previous default)": ("phase_vocoder", DEFAULT_MEL_FIT_ITERS, 0),
        f"vocoder, phase vocoder + {fit} + silence gate": ("phase_vocoder", DEFAULT_MEL_FIT_ITERS, DEFAULT_GATE_ITERS),
    }
    for count in args.mel_fit_iters:
        rows[f"vocoder, phase vocoder + {count} mel-fit correction(s) + silence gate"] = (
            "phase_vocoder",
            count,
            DEFAULT_GATE_ITERS,
        )
    transients = dict.fromkeys(rows, folder)  # label: (transient_db, transient_align)
    for spec in args.transients:
        transient = transient_option(spec)
        rule = "no transient reset" if transient[0] is None else f"transient reset {transient[0]:g} dB, {transient[1]}"
        label = f"vocoder, phase vocoder + {fit} + silence gate, {rule}"
        rows[label], transients[label] = ("phase_vocoder", DEFAULT_MEL_FIT_ITERS, DEFAULT_GATE_ITERS), transient
    inverters = {"griffin-lim": GriffinLimInverter()}
    pipeline = (default.synthesis, default.refine_iters, default.gate_iters)
    marked = [name for name in rows if rows[name] == pipeline and transients[name] == folder][:1]
    for label, (synthesis, refine_iters, gate_iters) in rows.items():
        transient = transients[label]
        if label in marked:
            label += " (pipeline default)"
        inverters[label] = load_vocoder(args.vocoder, refine_iters=refine_iters, synthesis=synthesis,
                                        gate_iters=gate_iters)  # fmt: skip
        inverters[label].transient_db, inverters[label].transient_align = transient
    if args.rows:
        inverters = {label: inv for label, inv in inverters.items() if any(text in label for text in args.rows)}
    tmp_dir = tempfile.TemporaryDirectory()
    if args.set == "idioms":
        clips = idiom_clips(args.max_files, args.seconds, args.soundfonts, args.quiet_copies, Path(tmp_dir.name),
                            args.sparse_files)  # fmt: skip
    else:
        clips = held_out_clips(args.split, args.max_files, args.seconds, args.audio_dir, args.midi_dir)
    if not clips:
        raise SystemExit("no held-out clips")

    # Speed first (on a 10 s excerpt, or the longest clip when shorter), so that a shared machine's
    # other jobs can be paused for just this part; "speed done" is printed when it is over.
    longest = max(clips, key=lambda c: len(c[1]))[1][: 10 * 16000]
    mel = log_mel(torch.from_numpy(longest)[None]).numpy()
    speeds = {label: {f"{t}_thread": speed(inv, mel, t) for t in args.threads} for label, inv in inverters.items()}
    if args.onnx is not None:
        speeds["vocoder, network alone, onnxruntime"] = {
            f"{t}_thread": speed(OnnxRunner(args.onnx, t), mel, 1) for t in (1, 2)
        }
    print("speed done", json.dumps(speeds), flush=True)

    scorer, onset_note = None, ""
    if not args.no_onsets:
        try:
            scorer = OnsetScorer()
        except ImportError as err:
            onset_note = f"onset F1 skipped: basic-pitch not installed ({err})"
            print(onset_note)

    per_clip = []
    for name, audio, midi in clips:
        reference_mel = log_mel(torch.from_numpy(audio)[None])
        mel = reference_mel.numpy()
        row = {"clip": name, "seconds": len(audio) / 16000}
        reference_notes = scorer.notes(audio) if scorer else None
        truth = midi_notes(midi, args.seconds) if (scorer and midi is not None) else None
        if truth is not None:
            row["original/onset_f1_vs_midi"] = scorer.f1(truth, reference_notes)
        for label, inverter in inverters.items():
            resynthesis = inverter(mel)[0, : len(audio)].astype(np.float32)
            ours_mel = log_mel(torch.from_numpy(resynthesis)[None])
            scores = {**distances(audio, resynthesis, reference_mel, ours_mel), **silence_gap(reference_mel, ours_mel)}
            for key, value in scores.items():
                row[f"{label}/{key}"] = value
            if scorer:
                notes = scorer.notes(resynthesis)
                row[f"{label}/onset_f1_vs_original"] = scorer.f1(reference_notes, notes)
                if truth is not None:
                    row[f"{label}/onset_f1_vs_midi"] = scorer.f1(truth, notes)
                    original_f1 = row["original/onset_f1_vs_midi"]
                    if original_f1 > 0:
                        row[f"{label}/onsets_kept"] = row[f"{label}/onset_f1_vs_midi"] / original_f1
        per_clip.append(row)
        print(name, {k: round(v, 4) for k, v in row.items() if isinstance(v, float)})

    keys = sorted({k.split("/", 1)[1] for row in per_clip for k in row if "/" in k})
    summary = {}
    for label in ["original", *inverters]:
        values = {
            k: float(np.nanmean([r[f"{label}/{k}"] for r in per_clip if f"{label}/{k}" in r]))
            for k in keys
            if any(f"{label}/{k}" in r for r in per_clip)
        }
        if values:
            summary[label] = values
    result = {
        "split": (
            "generated-idioms test split, "
            + " + ".join(args.soundfonts)
            + (f" (+{args.quiet_copies} clips at {QUIET_GAIN_DB:+.0f} dB)" if args.quiet_copies else "")
            if args.set == "idioms"
            else (args.audio_dir or args.midi_dir).as_posix()
            if (args.audio_dir or args.midi_dir)
            else args.split
        ),
        "clips": len(clips),
        "seconds_per_clip_max": args.seconds,
        "vocoder": str(args.vocoder),
        "note": args.note,
        "summary": summary,
        "speed_x_real_time": speeds,
        "speed_excerpt_seconds": len(longest) / 16000,
        "onset_note": onset_note,
        "machine": (
            f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs (shared), torch {torch.__version__}"
        ),
        "per_clip": per_clip,
    }
    args.out.mkdir(parents=True, exist_ok=True)
    stem = "vocoder_benchmark" + (f"_{args.name}" if args.name else "")
    _write_atomic(args.out / f"{stem}.json", json.dumps(result, indent=2) + "\n")
    _write_atomic(args.out / f"{stem}.md", markdown(result, keys))
    tmp_dir.cleanup()
    print(markdown(result, keys))


def transient_option(spec: str) -> tuple[float | None, str]:
    """``--transients`` item -> (transient_db, transient_align): "10", "10:centre", or "off"."""
    if spec == "off":
        return None, "envelope"
    db, _, align = spec.partition(":")
    return float(db), align or "envelope"


def _write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def _cell(key: str, value: float | None) -> str:
    if value is None or value != value:
        return "-"
    return f"{value:+.2f}" if key == "silence_gap" else f"{value:.2f}"


def markdown(result: dict, keys: list[str]) -> str:
    order = ["log_mel_l1", "mr_stft_log_l1", "spectral_convergence", "silence_gap", "onset_f1_vs_original",
             "onset_f1_vs_midi", "onsets_kept"]  # fmt: skip
    names = {
        "silence_gap": "silence gap ↓",
        "onsets_kept": "onsets kept ↑",
        "log_mel_l1": "log-mel L1 ↓",
        "mr_stft_log_l1": "MR-STFT log-mag L1 ↓",
        "spectral_convergence": "MR spectral convergence ↓",
        "onset_f1_vs_original": "onset F1 vs original ↑",
        "onset_f1_vs_midi": "onset F1 vs MIDI ↑",
    }
    cols = [k for k in order if k in keys]
    lines = [
        f"# Vocoder benchmark: analysis-resynthesis of {result['clips']} held-out clips ({result['split']})",
        "",
        "| inverter | " + " | ".join(names[k] for k in cols) + " | x real time, 1 thread | 2 threads |",
        "|---" * (len(cols) + 3) + "|",
    ]
    for label, values in result["summary"].items():
        cells = [f"{values[k]:.4f}" if k in values else "" for k in cols]
        sp = result["speed_x_real_time"].get(label, {})
        speed_cells = [f"{sp[t]:.1f}" if t in sp else "" for t in ("1_thread", "2_thread")]
        lines.append(f"| {label} | " + " | ".join(cells + speed_cells) + " |")
    for label, sp in result["speed_x_real_time"].items():
        if label not in result["summary"]:
            lines.append(
                f"| {label} | " + " | ".join([""] * len(cols)) + f" | {sp['1_thread']:.1f} | {sp['2_thread']:.1f} |"
            )
    if any("silence_gap" in k for row in result["per_clip"] for k in row):
        labels = [label for label in result["summary"] if label != "original"]
        short = {"silence_gap": "silence gap", "log_mel_l1": "log-mel L1", "onsets_kept": "onsets kept"}
        lines += ["", "Per clip (silence gap / log-mel L1 / onsets kept; the columns follow the rows above):", "",
                  "| clip | original onset F1 vs MIDI | " + " | ".join(labels) + " |",
                  "|---" * (len(labels) + 2) + "|"]  # fmt: skip
        for row in result["per_clip"]:
            cells = []
            for label in labels:
                parts = [row.get(f"{label}/{k}") for k in short]
                cells.append(" / ".join(_cell(k, v) for k, v in zip(short, parts)))
            f1 = row.get("original/onset_f1_vs_midi")
            lines.append(f"| {row['clip']} | {'' if f1 is None else f'{f1:.2f}'} | " + " | ".join(cells) + " |")
    lines += ["", f"Vocoder: {result['vocoder']}" + (f" ({result['note']})" if result.get("note") else "") + "."]
    lines += [f"Speed: {result['speed_excerpt_seconds']:.1f} s excerpt, {result['machine']}."]
    if result["onset_note"]:
        lines.append(result["onset_note"])
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
