"""The bundled model's training curve: a chain of warm-started runs drawn end to end.

Each run's ``metrics.jsonl`` (written by ``specdiff train``) is read up to the step the next run
started from, and its steps are laid after the previous run's, so the x axis counts optimiser steps
since the first run of the chain. Drawn: the training loss (the logged mean per element) and the
validation loss of the EMA weights. A run's losses are comparable within the run only where its
objective changed (``mask_padding``, ``min_noise_time``: noted in the legend), so each run gets its
own colour.

Usage:
  python benchmarks/training_curve.py B=runs/b/metrics.jsonl:1150 C=runs/c/metrics.jsonl \\
      --note "C: input-skip fit" --name bundled
A run whose metrics file was lost with its machine is ``LABEL=-:STEPS``: it keeps its place (STEPS
steps) on the axis and a row in the table, with no points.
Writes benchmarks/results/training_curve_NAME.png and .md, and copies the metrics files beside them
(benchmarks/results/training_curve_NAME/) so the figure can be redrawn from the repo.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"


def read_run(path: Path, stop: int | None) -> tuple[list[tuple[int, float]], list[tuple[int, float]]]:
    """(train loss points, EMA validation loss points) of one run, up to step ``stop``."""
    train, val = [], []
    for line in path.read_text().splitlines():
        if not line.strip():
            continue
        row = json.loads(line)
        step = int(row.get("step", 0))
        if stop is not None and step > stop:
            continue
        if "train/loss" in row:
            train.append((step, float(row["train/loss"])))
        if "val/loss_ema" in row:
            val.append((step, float(row["val/loss_ema"])))
    return train, val


def parse_run(text: str) -> tuple[str, Path, int | None]:
    label, _, rest = text.partition("=")
    path, _, stop = rest.partition(":")
    if not label or not path:
        raise SystemExit(f"expected LABEL=PATH[:STOP], got {text!r}")
    return label, Path(path), int(stop) if stop else None


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("runs", nargs="+", help="LABEL=PATH/metrics.jsonl[:STOP_STEP], in chain order")
    parser.add_argument("--name", required=True)
    parser.add_argument("--note", action="append", default=[], help="a line for the .md (repeatable)")
    args = parser.parse_args()

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    copies = RESULTS / f"training_curve_{args.name}"
    copies.mkdir(parents=True, exist_ok=True)
    fig, (ax_train, ax_val) = plt.subplots(2, 1, figsize=(9, 6), sharex=True)
    offset, rows = 0, []
    for label, path, stop in map(parse_run, args.runs):
        if str(path) == "-":  # metrics lost: the run keeps its steps on the axis
            rows.append((label, offset, offset + (stop or 0), None, None))
            offset += stop or 0
            continue
        train, val = read_run(path, stop)
        shutil.copyfile(path, copies / f"{label}.jsonl")
        last = max([s for s, _ in train + val], default=0)
        if train:
            ax_train.plot([offset + s for s, _ in train], [v for _, v in train], label=label, lw=1)
        if val:
            ax_val.plot([offset + s for s, _ in val], [v for _, v in val], "o-", label=label, ms=3)
        rows.append((label, offset, offset + last, val[0][1] if val else None, val[-1][1] if val else None))
        offset += last
    ax_train.set_ylabel("train loss")
    ax_val.set_ylabel("val loss (EMA)")
    ax_val.set_xlabel("optimiser steps since the first run of the chain")
    for ax in (ax_train, ax_val):
        ax.set_yscale("log")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle(f"training curve: {args.name}")
    fig.tight_layout()
    fig.savefig(RESULTS / f"training_curve_{args.name}.png", dpi=110)
    lines = [f"# Training curve: {args.name}", "", f"![curve](training_curve_{args.name}.png)", "",
             "| run | steps (chain) | first val loss (EMA) | last val loss (EMA) |", "|---|---|---|---|"]  # fmt: skip
    for label, start, end, first, last in rows:
        cells = ["" if v is None else f"{v:.4f}" for v in (first, last)]
        lines.append(f"| {label} | {start}-{end} | {cells[0]} | {cells[1]} |")
    lines += [""] + [f"- {note}" for note in args.note]
    (RESULTS / f"training_curve_{args.name}.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
