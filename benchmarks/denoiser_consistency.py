"""Does iterating a model's denoiser keep the data's statistics? Single-t estimates and DDIM chains.

For validation windows of a feature cache (true contexts, notes and timbres):

1. **One estimate per noise time**: the target noised to ``t``, denoised once. x0 L1 (the diffusion's
   [-1, 1] units) and the estimate's frame-to-frame roughness (mean |x[f+1] - x[f]| over frames) and
   roughness over mel bins. A posterior mean is smoother than the data; an estimate rougher than the
   data passes noise through.
2. **DDIM from pure noise** to t = 0 in 1, 2, 4, 8, 16 steps (no guidance): the final estimate's
   L1 against the window's truth, its standard deviation and its roughness. A consistent denoiser keeps
   them near the data's at every step count; one that leaks noise gets rougher with every step.

A decoder whose low-noise expert is anchored on the network's estimate (``low_noise_expert_anchor``) gets,
as in its training, the unguided estimate at t = 1 from one seeded noise draw for the single estimates,
and, as in the sampler, the chain's own first estimate for the chains.

Usage:
  python benchmarks/denoiser_consistency.py MODEL [MODEL ...] --data CACHE [--windows 16] --name NAME
MODEL: a model folder or a training run / checkpoint. Writes benchmarks/results/denoiser_consistency_NAME.md.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from specdiff.data.cache import open_training_datasets  # noqa: E402
from specdiff.sampling.diffusion import alpha_sigma, q_sample, x0_from_prediction  # noqa: E402
from specdiff.training.batches import collate_counted, decoder_dataset_options  # noqa: E402
from specdiff.training.export import model_from_path  # noqa: E402

TIMES = (0.1, 0.3, 0.5, 0.7, 0.8, 0.9, 0.97)
STEPS = (1, 2, 4, 8, 16)


def roughness(x: torch.Tensor) -> tuple[float, float]:
    """Mean absolute difference of neighbouring frames and of neighbouring mel bins of ``[B, T, C]``."""
    return float((x[:, 1:] - x[:, :-1]).abs().mean()), float((x[:, :, 1:] - x[:, :, :-1]).abs().mean())


class Windows:
    """A batch of validation windows and one model's x0 estimate for them."""

    def __init__(self, cache: str, count: int, decoder: Any):
        _, valid = open_training_datasets(cache, **decoder_dataset_options(decoder))  # as the models read it
        stride = max(1, len(valid) // count)
        self.batch = collate_counted([(i * stride, valid[i * stride]) for i in range(min(count, len(valid)))])
        self.target = self.batch["target"]

    def cache(self, model) -> Any:
        """The model's cross-attention cache for these windows (no expert anchor yet)."""
        return model.batch_cross_cache(self.batch)

    def estimate(self, model, z: torch.Tensor, t: float, cache: Any) -> torch.Tensor:
        times = torch.full((z.shape[0],), float(t))
        out = model.decoder(None, z, times, cross_cache=cache)
        return x0_from_prediction(out, z, times, model.decoder.prediction_type).clamp(-1, 1)

    def describe(self, x: torch.Tensor) -> list[str]:
        frames, bins = roughness(x)
        return [f"{float((x - self.target).abs().mean()):.3f}", f"{float(x.std(dim=(1, 2)).mean()):.3f}",
                f"{frames:.4f}", f"{bins:.4f}"]  # fmt: skip


@torch.no_grad()
def single_estimates(model, windows: Windows) -> list[str]:
    rows, cache = [], windows.cache(model)
    if estimate_anchored(model):
        noise = torch.randn(windows.target.shape, generator=torch.Generator().manual_seed(3))
        cache.expert_anchor = windows.estimate(model, noise, 1.0, cache)
    for t in TIMES:
        noise = torch.randn(windows.target.shape, generator=torch.Generator().manual_seed(1))
        z = q_sample(windows.target, torch.full((windows.target.shape[0],), t), noise)
        cells = windows.describe(windows.estimate(model, z, t, cache))
        rows.append(f"| {t} | {cells[0]} | {cells[2]} | {cells[3]} |")
    return rows


@torch.no_grad()
def ddim_chains(model, windows: Windows) -> list[str]:
    rows = []
    for steps in STEPS:
        z = torch.randn(windows.target.shape, generator=torch.Generator().manual_seed(2))
        times, cache = torch.linspace(1.0, 0.0, steps + 1), windows.cache(model)
        for k in range(steps):
            x0 = windows.estimate(model, z, float(times[k]), cache)
            if k == 0 and estimate_anchored(model):
                cache.expert_anchor = x0
            alpha, sigma = alpha_sigma(times[k])
            eps = (z - alpha * x0) / sigma
            alpha, sigma = alpha_sigma(times[k + 1])
            z = alpha * x0 + sigma * eps
        rows.append(f"| {steps} | " + " | ".join(windows.describe(x0)) + " |")
    return rows


def estimate_anchored(model) -> bool:
    return model.decoder.low_noise_expert is not None and model.decoder.low_noise_expert_anchor == "estimate"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("models", nargs="+")
    parser.add_argument("--data", required=True, help="feature cache (its validation split)")
    parser.add_argument("--windows", type=int, default=16)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--name", required=True)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    started = time.time()
    models = [model_from_path(path).eval() for path in args.models]
    options = [decoder_dataset_options(model.decoder) for model in models]
    if any(o != options[0] for o in options):
        raise SystemExit("the models read the cache differently (timbres or program codec): compare them apart")
    windows = Windows(args.data, args.windows, models[0].decoder)
    data = windows.describe(windows.target)
    lines = [f"# Denoiser consistency: {args.windows} validation windows of `{Path(args.data).name}`", "",
             f"Data: std {data[1]}, roughness over frames {data[2]}, over mel bins {data[3]}.", ""]  # fmt: skip
    for path, model in zip(args.models, models):
        lines += [f"## `{Path(path).name}`", "", "One estimate per noise time:", "",
                  "| t | x0 L1 | roughness, frames | roughness, bins |", "|---|---|---|---|"]  # fmt: skip
        lines += single_estimates(model, windows)
        lines += ["", "DDIM from pure noise to t = 0, no guidance:", "",
                  "| steps | x0 L1 | std | roughness, frames | roughness, bins |", "|---|---|---|---|---|"]  # fmt: skip
        lines += ddim_chains(model, windows) + [""]
        print("\n".join(lines[-20:]), flush=True)
    lines.append(f"Made by `benchmarks/denoiser_consistency.py` in {time.time() - started:.0f} s.")
    out = ROOT / "benchmarks" / "results" / f"denoiser_consistency_{args.name}.md"
    out.write_text("\n".join(lines) + "\n")
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
