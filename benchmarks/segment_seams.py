"""Segment seams: how a model's level follows the render through each 5.12 s segment.

The pipeline draws a song segment by segment (ORIGINAL.md §5.1 in ``docs/``). A segment's tokens say
nothing of the notes ringing into it from the one before, so a model can draw every segment's first
frames as if the music started there: an audible dip every 5.12 s. For each model this benchmark
synthesizes the first ``--max-seconds`` of held-out pieces (the model's own log-mel, no inverter) and
reports the mean offset ours minus the TimGM6mb render, on frames where the render sounds (mean log-mel
above ``SOUNDING_NAT``), by frame position within the segment, for the song's first segment and for
the later ones. The ``seam dip`` is the later segments' first 5 frames against their frames 50-255.

Usage:
  python benchmarks/segment_seams.py MODEL [MODEL ...] --set idioms --split validation --pieces 16 \\
      --name NAME [--prior-alone]
MODEL: a pipeline folder (its own sampling settings) or a training checkpoint (exported on the fly with the
bundled vocoder and the bundled model's sampling settings).
Writes benchmarks/results/segment_seams_<name>.md and .json (rows appended).
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.steps_table import load_results, midi_files, model_folder, run_label, split_label  # noqa: E402
from specdiff.atomic import atomic_write_text  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results"
#: Frames whose render's mean log-mel is above this count as sounding (natural log).
SOUNDING_NAT = -6.0
#: Frame-position buckets within a segment: [start, stop).
BUCKETS = ((0, 5), (5, 10), (10, 25), (25, 50), (50, 128), (128, 256))


def offsets_by_position(model: Path, files: list[Path], max_seconds: float, threads: int) -> dict[str, Any]:
    """Per bucket, the mean of (ours - render) mean log-mel over sounding frames, first segment and later."""
    import torch

    from specdiff.audio.mel import log_mel
    from specdiff.data.render import render_midi
    from specdiff.evaluation.evaluate import prepare_piece
    from specdiff.pipeline.pipeline import SpectrogramDiffusionPipeline

    torch.set_num_threads(threads)
    pipe = SpectrogramDiffusionPipeline.from_pretrained(model)
    frames = int(pipe.decoder.config["targets_length"])
    sums = {"first": np.zeros(frames), "later": np.zeros(frames)}
    counts = {"first": np.zeros(frames), "later": np.zeros(frames)}
    for path in files:
        piece = prepare_piece(Path(path), max_seconds, slakh_programs=pipe.slakh_programs)
        reference = render_midi(path)[: int(max_seconds * 16000)]
        generator = torch.Generator().manual_seed(0)
        ours = pipe(piece.tokenized, generator=generator, show_progress=False, output_type="mel").audios[0]
        ref = log_mel(torch.from_numpy(reference)).numpy()
        n = min(len(ref), len(ours))
        difference, sounding = (ours[:n] - ref[:n]).mean(-1), ref[:n].mean(-1) > SOUNDING_NAT
        for t in np.flatnonzero(sounding):
            which = "first" if t < frames else "later"
            sums[which][t % frames] += difference[t]
            counts[which][t % frames] += 1
    row: dict[str, Any] = {}
    for which in ("first", "later"):
        for start, stop in BUCKETS:
            n = counts[which][start:stop].sum()
            row[f"{which}_{start}_{stop}"] = float(sums[which][start:stop].sum() / n) if n else float("nan")
            row[f"{which}_{start}_{stop}_frames"] = int(n)
    row["seam_dip"] = row["later_0_5"] - (sums["later"][50:].sum() / max(counts["later"][50:].sum(), 1))
    return row


def table(rows: list[dict[str, Any]]) -> str:
    buckets = " | ".join(f"{a}-{b - 1}" for a, b in BUCKETS)
    lines = [
        "| model | set | pieces | segment | " + buckets + " | seam dip |",
        "|---|---|---|---|" + "---|" * len(BUCKETS) + "---|",
    ]
    for row in rows:
        for which, label in (("first", "first"), ("later", "2nd on")):
            cells = " | ".join(f"{row[f'{which}_{a}_{b}']:+.2f}" for a, b in BUCKETS)
            dip = f"{row['seam_dip']:+.2f}" if which == "later" else ""
            lines.append(f"| {row['model']} | {row['set']} | {row['pieces']} | {label} | {cells} | {dip} |")
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("models", nargs="+", help="pipeline folders or training checkpoints")
    parser.add_argument("--set", choices=("idioms", "demo"), default="idioms")
    parser.add_argument("--split", choices=("test", "validation"), default="validation")
    parser.add_argument("--pieces", type=int, default=16)
    parser.add_argument("--max-seconds", type=float, default=20.0)
    parser.add_argument("--prior-alone", action="store_true", help="also rows with the decoder's output layer zeroed")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--name", required=True, help="results file: segment_seams_<name>.md/.json")
    args = parser.parse_args()
    started = time.time()
    with tempfile.TemporaryDirectory() as tmp:
        files = midi_files(args.set, args.pieces, Path(tmp), args.split)
        results = RESULTS / f"segment_seams_{args.name}.json"
        rows = load_results(results)
        for model in args.models:
            for prior in [False, True] if args.prior_alone else [False]:
                folder = model_folder(model, Path(tmp), prior_alone=prior)
                if not (folder / "sampling.json").exists():  # a checkpoint: the bundled model's settings
                    from specdiff.pipeline.default_model import DEFAULT_MODEL_DIR

                    shutil.copy(DEFAULT_MODEL_DIR / "sampling.json", folder / "sampling.json")
                row = offsets_by_position(folder, files, args.max_seconds, args.threads)
                label = run_label(Path(model)) + (" (prior alone)" if prior else "")
                row.update(model=label, set=split_label(args.set, args.split), pieces=len(files))
                rows.append(row)
                print(f"{label}: seam dip {row['seam_dip']:+.2f}", flush=True)
    import json

    atomic_write_text(results, json.dumps(rows, indent=1))
    text = (
        f"# Segment seams: ours minus the render by frame position within a segment (`segment_seams_{args.name}`)\n\n"
        f"Mean log-mel offset (natural log) on frames where the TimGM6mb render sounds (above {SOUNDING_NAT:g}), "
        f"first {args.max_seconds:g} s of each piece, seed 0, each model's own sampling settings; columns: frames "
        "within a 256-frame segment. Seam dip: the later segments' frames 0-4 against their frames 50-255.\n\n"
        + table(rows)
        + f"\n\nMade by `python benchmarks/segment_seams.py` ({time.time() - started:.0f} s for the last call).\n"
    )
    atomic_write_text(RESULTS / f"segment_seams_{args.name}.md", text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
