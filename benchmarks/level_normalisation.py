"""Does the renders' per-song peak normalisation explain the model's level errors?

Every training and reference render is peak-normalised per song (``specdiff.data.render.PEAK``), so the same
notes sit at a level that depends on the loudest moment of the whole song, which a 5.12 s segment cannot see
(and the first segment has no context to take it from). For each held-out piece this benchmark records the
normalisation gain (dB the raw render was scaled by) and the model's RMS level error (ours minus the render,
dB) on the first segment and, averaged, on the later ones, at the model's own sampling settings. A slope of
the error against the gain near -1 means the model ignores the song's gain; 0 means it finds it. It also
asks whether the notes alone could tell the model the gain: the song's peak summed note power
(:func:`note_power_db`) and how much of the gain's spread a line through it leaves.

Usage:
  python benchmarks/level_normalisation.py MODEL --set demo --split validation --pieces 24 --name demo_val
Writes benchmarks/results/level_normalisation_<name>.md and .json.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.steps_table import midi_files, split_label  # noqa: E402
from specdiff.atomic import atomic_write_text  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results"


def piece_levels(pipe, path: Path, max_seconds: float, segment_samples: int) -> dict:
    """The normalisation gain of ``path``'s render and the model's RMS errors, first segment and later."""
    import torch

    from specdiff.data.render import PEAK, render_midi
    from specdiff.evaluation.evaluate import prepare_piece
    from specdiff.evaluation.metrics import rms_db
    from specdiff.midi.tokenizer import midi_to_segments

    raw = render_midi(path, peak=None)
    scale = PEAK / max(float(np.abs(raw).max()), 1e-9)
    reference = (raw * scale)[: int(max_seconds * 16000)]
    piece = prepare_piece(path, max_seconds, slakh_programs=pipe.slakh_programs)
    generator = torch.Generator().manual_seed(0)
    ours = pipe(piece.tokenized, generator=generator, show_progress=False).audios.reshape(-1)[: len(reference)]
    starts = range(0, len(reference) - segment_samples // 2, segment_samples)
    errors = [rms_db(ours[i : i + segment_samples]) - rms_db(reference[i : i + segment_samples]) for i in starts]
    later = [e for e in errors[1:] if np.isfinite(e)]
    return {"piece": path.name, "gain_db": 20 * float(np.log10(scale)), "first_error_db": errors[0],
            "later_error_db": float(np.mean(later)) if later else float("nan"),
            "note_power_db": note_power_db(midi_to_segments(path).notes)}  # fmt: skip


def note_power_db(notes) -> float:
    """The song's loudest moment as its notes give it: the maximum over 20 ms frames of the summed
    ``(velocity / 127) ** 2`` of the notes in their first 0.5 s, in dB (a candidate for a song-level
    loudness feature computed from the MIDI alone)."""
    if notes is None or len(notes) == 0:
        return float("nan")
    starts = np.floor(np.asarray(notes.start) * 50).astype(int)
    stops = np.maximum(starts + 1, np.floor(np.minimum(notes.end, notes.start + 0.5) * 50).astype(int))
    power = np.zeros(int(stops.max()) + 1)
    for a, b, v in zip(starts, stops, np.asarray(notes.velocity)):
        power[a:b] += (v / 127.0) ** 2
    return 10 * float(np.log10(power.max()))


def predictability(rows: list[dict]) -> dict:
    """How well the note power predicts the gain: the leave-one-out residual spread of a line through
    (note power, gain) against the gain's own spread, and the R^2 that gives."""
    pairs = np.array([(r["note_power_db"], r["gain_db"]) for r in rows if np.isfinite(r["note_power_db"])])
    if len(pairs) < 4:
        return {"pieces": len(pairs), "gain_std_db": float("nan"), "residual_std_db": float("nan"), "r2": float("nan")}
    residuals = []
    for i in range(len(pairs)):
        keep = np.arange(len(pairs)) != i
        slope, intercept = np.polyfit(pairs[keep, 0], pairs[keep, 1], 1)
        residuals.append(pairs[i, 1] - (slope * pairs[i, 0] + intercept))
    spread, residual = float(pairs[:, 1].std()), float(np.std(residuals))
    return {"pieces": len(pairs), "gain_std_db": spread, "residual_std_db": residual, "r2": 1 - residual**2 / spread**2}


def fit(rows: list[dict], key: str) -> tuple[float, float, int]:
    """Correlation and slope of ``key`` against the gain over the rows where both are finite."""
    pairs = np.array([(r["gain_db"], r[key]) for r in rows if np.isfinite(r[key]) and np.isfinite(r["gain_db"])])
    if len(pairs) < 3:
        return float("nan"), float("nan"), len(pairs)
    return float(np.corrcoef(pairs.T)[0, 1]), float(np.polyfit(pairs[:, 0], pairs[:, 1], 1)[0]), len(pairs)


def report(result: dict, name: str, max_seconds: float) -> str:
    """The markdown of a result: the fit per error kind, then one row per piece."""
    rows, summary = result["rows"], result["summary"]
    lines = [
        f"# Level error against the renders' per-song normalisation gain (`level_normalisation_{name}`)",
        "",
        f"Model `{Path(result['model']).name}`, {result['set']}, {len(rows)} pieces, first {max_seconds:g} s, seed 0,"
        " its own sampling settings. Gain: dB the raw TimGM6mb render was scaled by to reach the -3 dBFS peak;"
        " errors: RMS dB of ours minus the render's per 5.12 s segment.",
        "",
        "| error | correlation with the gain | slope (dB per dB) | pieces | mean error dB |",
        "|---|---|---|---|---|",
    ]
    for key, label in (("first_error_db", "first segment"), ("later_error_db", "later segments (mean)")):
        values, fitted = [r[key] for r in rows if np.isfinite(r[key])], summary[key]
        lines.append(f"| {label} | {fitted['correlation']:+.2f} | {fitted['slope']:+.2f} | {fitted['pieces']} "
                     f"| {np.mean(values):+.1f} |")  # fmt: skip
    power = summary["note_power"]
    lines += ["", f"The gain from the notes alone (`note_power_db`, a line through (note power, gain), leave one out): "
              f"residual spread {power['residual_std_db']:.1f} dB against the gain's {power['gain_std_db']:.1f} dB "
              f"(R^2 {power['r2']:.2f}, {power['pieces']} pieces)."]  # fmt: skip
    lines += ["", "| piece | gain dB | first segment error dB | later segments error dB |", "|---|---|---|---|"]
    for r in rows:
        lines.append(
            f"| {r['piece']} | {r['gain_db']:+.1f} | {r['first_error_db']:+.1f} | {r['later_error_db']:+.1f} |"
        )
    return "\n".join(lines) + "\n"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("model", help="a pipeline folder")
    parser.add_argument("--set", choices=("idioms", "demo"), default="demo")
    parser.add_argument("--split", choices=("test", "validation"), default="validation")
    parser.add_argument("--pieces", type=int, default=24)
    parser.add_argument("--max-seconds", type=float, default=15.0)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--name", required=True, help="results file: level_normalisation_<name>.md/.json")
    args = parser.parse_args()
    import torch

    from specdiff.pipeline.pipeline import SpectrogramDiffusionPipeline

    torch.set_num_threads(args.threads)
    started = time.time()
    pipe = SpectrogramDiffusionPipeline.from_pretrained(args.model)
    segment_samples = int(pipe.decoder.config["targets_length"]) * 320
    with tempfile.TemporaryDirectory() as tmp:
        files = midi_files(args.set, args.pieces, Path(tmp), args.split)
        rows = [piece_levels(pipe, Path(f), args.max_seconds, segment_samples) for f in files]
    summary = {key: dict(zip(("correlation", "slope", "pieces"), fit(rows, key)))
               for key in ("first_error_db", "later_error_db")}  # fmt: skip
    summary["note_power"] = predictability(rows)
    result = {"model": str(args.model), "set": split_label(args.set, args.split), "rows": rows, "summary": summary}
    atomic_write_text(RESULTS / f"level_normalisation_{args.name}.json", json.dumps(result, indent=1))
    text = report(result, args.name, args.max_seconds) + "\nMade by `python benchmarks/level_normalisation.py` in "
    atomic_write_text(RESULTS / f"level_normalisation_{args.name}.md", text + f"{time.time() - started:.0f} s.\n")
    first = summary["first_error_db"]
    print(f"first segment: r {first['correlation']:+.2f}, slope {first['slope']:+.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
