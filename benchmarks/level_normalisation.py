"""Does the renders' per-song peak normalisation explain the model's level errors?

Every training and reference render is peak-normalised per song (``specdiff.data.render.PEAK``), so the same
notes sit at a level that depends on the loudest moment of the whole song, which a 5.12 s segment cannot see
(and the first segment has no context to take it from). For each held-out piece this benchmark records the
normalisation gain (dB the raw render was scaled by) and the model's RMS level error (ours minus the render,
dB) on the first segment and, averaged, on the later ones, at the model's own sampling settings. A slope of
the error against the gain near -1 means the model ignores the song's gain; 0 means it finds it.

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
            "later_error_db": float(np.mean(later)) if later else float("nan")}  # fmt: skip


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
    result = {"model": str(args.model), "set": split_label(args.set, args.split), "rows": rows, "summary": summary}
    atomic_write_text(RESULTS / f"level_normalisation_{args.name}.json", json.dumps(result, indent=1))
    text = report(result, args.name, args.max_seconds) + "\nMade by `python benchmarks/level_normalisation.py` in "
    atomic_write_text(RESULTS / f"level_normalisation_{args.name}.md", text + f"{time.time() - started:.0f} s.\n")
    first = summary["first_error_db"]
    print(f"first segment: r {first['correlation']:+.2f}, slope {first['slope']:+.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
