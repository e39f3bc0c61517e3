"""Why the model does not go silent, measured on held-out windows of a feature cache.

    python benchmarks/silence_probe.py --data CACHE                       # the closed-form prior fits
    python benchmarks/silence_probe.py --data CACHE --models A.pt B.pt    # and checkpoints' outputs

Part 1 fits the score prior in closed form (ridge regression of the target log-mel on the roll's
shared columns, ``specdiff.training.prior_fit.fit_score_prior``) on the first ``--fit-windows`` training windows
with each roll layout, with and without the padding past piece ends, and reports on
``--windows`` validation windows: the mean frame level (natural-log mel) of the prior and of the
target on quiet frames (target mean below -8) and on the others, and the log-mel L1 on real
(non-padding) frames.

Part 2 runs each checkpoint's sampler (DDIM from pure noise, 1/4/16 steps, as
``benchmarks/steps_table.py``) on the same windows and reports its level per frame class:
silent (the extended roll's ``silent`` feature: no note sounds) or sounding, times quiet or loud
target. Writes ``results/silence.md`` (appends part 2 rows per model).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from steps_probe import ddim_x0, segment_cache  # noqa: E402

from specdiff.audio.mel import scale_to_features  # noqa: E402
from specdiff.data.cache import ChunkDataset  # noqa: E402
from specdiff.midi.score_roll import (  # noqa: E402
    EXTENDED_ROLL_FEATURES,
    ROLL_FEATURES,
    SILENT_FEATURE,
    TONAL_FEATURES,
    batch_rolls,
)
from specdiff.training.export import model_from_path  # noqa: E402
from specdiff.training.objective import padding_mask  # noqa: E402
from specdiff.training.prior_fit import collated_windows, ridge_regression  # noqa: E402

QUIET = -8.0  # natural-log mel: a frame whose mean is below this is quiet (the floor is -11.5)
RESULTS = ROOT / "benchmarks" / "results"


#: The fits of part 1: (name, roll layout, base + only the silent feature, padding left out).
FITS = [
    ("base (6832)", ROLL_FEATURES, False, False),
    ("base + silent", EXTENDED_ROLL_FEATURES, True, False),
    ("extended (7121)", EXTENDED_ROLL_FEATURES, False, False),
    ("extended (7121)", EXTENDED_ROLL_FEATURES, False, True),
]


def roll_columns(tokens: torch.Tensor, features: int, silent_only: bool) -> torch.Tensor:
    """The roll columns a prior fit uses (the shared ones; see ``specdiff.training.prior_fit.fit_score_prior``)."""
    roll = batch_rolls(tokens, 256, features)[..., TONAL_FEATURES:]
    if silent_only:
        keep = list(range(ROLL_FEATURES - TONAL_FEATURES)) + [SILENT_FEATURE - TONAL_FEATURES]
        roll = roll[..., keep]
    return roll


def fit_pairs(train: ChunkDataset, fit_windows: int, features: int, silent_only: bool, mask: bool):
    for b in collated_windows(train, range(fit_windows), 64):
        x, y = roll_columns(b["tokens"], features, silent_only).flatten(0, 1), b["target"].flatten(0, 1)
        if mask:
            keep = padding_mask(b["target_valid"], 256).flatten()
            x, y = x[keep], y[keep]
        yield x, y


def prior_fits(train: ChunkDataset, val: dict[str, torch.Tensor], fit_windows: int) -> list[str]:
    nat = scale_to_features(val["target"])
    level = nat.mean(-1)
    real = padding_mask(val["target_valid"], level.shape[1])
    quiet = (level < QUIET) & real
    rows = [
        "| roll layout | padding in the fit | prior on quiet frames | prior on loud frames | log-mel L1, real frames |",
        "|---|---|---|---|---|",
    ]
    for name, features, silent_only, mask in FITS:
        solution = ridge_regression(fit_pairs(train, fit_windows, features, silent_only, mask), 10.0).float()
        prior = (roll_columns(val["tokens"], features, silent_only) @ solution[:-1] + solution[-1]).clamp(-1, 1)
        prior_nat = scale_to_features(prior)
        prior_level = prior_nat.mean(-1)
        l1 = float((prior_nat - nat).abs().mean(-1)[real].mean())
        padding = "no" if mask else "yes (the original)"
        rows.append(f"| {name} | {padding} | {float(prior_level[quiet].mean()):.2f} | "
                    f"{float(prior_level[~quiet & real].mean()):.2f} | {l1:.3f} |")  # fmt: skip
        print(rows[-1], flush=True)
    rows.append(f"| target | | {float(level[quiet].mean()):.2f} | {float(level[~quiet & real].mean()):.2f} | |")
    return rows


def sample(model, batch: dict[str, torch.Tensor], steps: int) -> torch.Tensor:
    """DDIM from pure noise (seed 0) to an x0 estimate, as ``steps_probe`` runs it from ``t0 = 1``."""
    noise = torch.randn(batch["target"].shape, generator=torch.Generator().manual_seed(0))
    return ddim_x0(model, segment_cache(model, batch), noise, 1.0, steps)


def model_rows(path: str, val: dict[str, torch.Tensor]) -> list[str]:
    model = model_from_path(path).eval()
    level = scale_to_features(val["target"]).mean(-1)
    real = padding_mask(val["target_valid"], level.shape[1])
    silent = batch_rolls(val["tokens"], 256, EXTENDED_ROLL_FEATURES)[..., SILENT_FEATURE] > 0
    quiet = level < QUIET
    classes = [("silent, quiet", silent & quiet & real), ("silent, loud", silent & ~quiet & real),
               ("sounding, quiet", ~silent & quiet & real), ("sounding, loud", ~silent & ~quiet & real)]  # fmt: skip
    rows = []
    for steps in (1, 4, 16):
        ours = scale_to_features(sample(model, val, steps)).mean(-1)
        cells = [f"{float(ours[m].mean()):.2f} ({float(level[m].mean()):.2f})" for _, m in classes]
        rows.append(f"| {Path(path).name} | {steps} | " + " | ".join(cells) + " |")
        print(rows[-1], flush=True)
    return rows


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", required=True, help="feature cache (specdiff prepare) with train/validation splits")
    parser.add_argument("--windows", type=int, default=64, help="validation windows")
    parser.add_argument("--fit-windows", type=int, default=512, help="training windows for the prior fits")
    parser.add_argument("--models", nargs="*", default=[], help="checkpoints or model folders for part 2")
    parser.add_argument("--skip-fits", action="store_true", help="part 2 only")
    args = parser.parse_args()
    torch.set_num_threads(1)
    val_set = ChunkDataset(args.data, seed=1_000_003, split="validation")
    val = next(collated_windows(val_set, range(args.windows), args.windows))
    out = RESULTS / "silence.md"
    lines = out.read_text().splitlines() if out.exists() else []
    if not args.skip_fits:
        head = [f"# Silence: where the level of quiet frames is lost ({args.data}, {args.windows} validation windows)",
                "", "`python benchmarks/silence_probe.py --data CACHE [--models ...]`. Levels are frame means of",
                "the natural-log mel (floor -11.5); quiet frames: target mean below -8.", "",
                f"## 1. Closed-form score prior, fitted on {args.fit_windows} training windows", ""]  # fmt: skip
        lines = head + prior_fits(ChunkDataset(args.data, seed=0, split="train"), val, args.fit_windows)
        lines += ["", "## 2. Checkpoints: level per frame class, ours (target)", "",
                  "| model | DDIM steps | silent, quiet | silent, loud | sounding, quiet | sounding, loud |",
                  "|---|---|---|---|---|---|"]  # fmt: skip
    for path in args.models:
        lines += model_rows(path, val)
    out.write_text("\n".join(lines) + "\n")
    print(out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
