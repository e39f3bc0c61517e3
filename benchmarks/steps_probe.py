"""Does iterating the denoiser keep the data's statistics? A cheap monitor for training runs.

Validation targets x0 of a feature cache are noised to ``t0`` and denoised by a deterministic DDIM
loop (the model's own cosine schedule) with 1, 2, 4 and 8 steps down to t = 0. For each step count
it prints the L1 of the final x0 estimate against the truth and the estimate's standard deviation
against the data's. A denoiser that has learnt mid-noise denoising keeps the std near the data's
and its L1 falls (or holds) with more steps; one that passes noise through grows the std with every
step. From t0 = 1 the 1-step estimate is the conditional mean (smooth: std below the data's).

Usage:
  python benchmarks/steps_probe.py CACHE MODEL [MODEL ...] [--examples 16] [--t0 0.5 1.0]
MODEL: a training checkpoint (.pt, its EMA weights) or a pipeline folder.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from specdiff.data.cache import ChunkDataset  # noqa: E402
from specdiff.sampling.diffusion import alpha_sigma, q_sample, x0_from_prediction  # noqa: E402
from specdiff.training.batches import collate_counted  # noqa: E402
from specdiff.training.export import model_from_path  # noqa: E402
from specdiff.training.objective import trim_token_padding  # noqa: E402

NOISE_TIMES = [0.1, 0.3, 0.5, 0.7, 0.9]


@torch.no_grad()
def segment_cache(model, batch):
    """The decoder's cross-attention cache for a batch (notes, context, roll and timbre)."""
    tokens = trim_token_padding(batch["tokens"])
    timbre = batch.get("timbre") if model.decoder.timbres else None
    encodings = model.encode(tokens, batch["context"], batch["context_mask"])
    return model.decoder.prepare_cross_attention(encodings, model.score_roll(tokens), timbre)


@torch.no_grad()
def ddim_x0(model, cache, z: torch.Tensor, t0: float, steps: int) -> torch.Tensor:
    """The x0 estimate after ``steps`` deterministic DDIM steps from ``z`` at noise time ``t0`` down
    to 0, on the model's own (continuous) schedule."""
    n = z.shape[0]
    times = torch.linspace(t0, 0.0, steps + 1)
    x0_hat = z
    for k in range(steps):
        t = torch.full((n,), float(times[k]))
        out = model.decoder(None, z, t, cross_cache=cache).float()
        x0_hat = x0_from_prediction(out, z, t, model.decoder.prediction_type).clamp(-1, 1)
        a_k, s_k = alpha_sigma(times[k])
        eps = (z - a_k * x0_hat) / s_k
        a, s = alpha_sigma(times[k + 1])
        z = a * x0_hat + s * eps
    return x0_hat


@torch.no_grad()
def probe(model, batch, t0: float, steps: int, noise: torch.Tensor) -> tuple[float, float]:
    """(L1, std) of the x0 estimate after ``steps`` DDIM steps from ``x0`` noised to ``t0``."""
    x0 = batch["target"]
    z = q_sample(x0, torch.full((x0.shape[0],), t0), noise)
    x0_hat = ddim_x0(model, segment_cache(model, batch), z, t0, steps) if steps else x0
    return float((x0_hat - x0).abs().mean()), float(x0_hat.std(dim=(1, 2)).mean())


@torch.no_grad()
def noise_response(model, batch, times: list[float], noise: torch.Tensor) -> list[tuple[float, float, float]]:
    """Per ``t``: (x0 L1, leak, ignore). ``leak`` is the regression coefficient of the one-step x0
    error on the noise; ``ignore`` = ``c_skip sigma``, the leak of a network whose output does not
    respond to its noisy input (it then cancels none of the noise the "edm" skip path passes through:
    per-pixel shrinkage, and a multi-step sampler draws prior + white noise). A denoiser that uses
    the data's local smoothness has a leak well below ``ignore``."""
    from specdiff.sampling.diffusion import edm_coefficients

    x0 = batch["target"]
    cache = segment_cache(model, batch)
    rows = []
    for value in times:
        t = torch.full((x0.shape[0],), value)
        z = q_sample(x0, t, noise)
        out = model.decoder(None, z, t, cross_cache=cache).float()
        error = x0_from_prediction(out, z, t, model.decoder.prediction_type) - x0
        leak = float((error * noise).sum() / (noise * noise).sum())
        c_skip, _ = edm_coefficients(torch.tensor([value], dtype=torch.float64))
        ignore = float(c_skip * alpha_sigma(torch.tensor([value], dtype=torch.float64))[1])
        rows.append((float(error.abs().mean()), leak, ignore))
    return rows


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("cache")
    parser.add_argument("models", nargs="+")
    parser.add_argument("--examples", type=int, default=16)
    parser.add_argument("--t0", type=float, nargs="+", default=[0.5, 1.0])
    parser.add_argument("--steps", type=int, nargs="+", default=[1, 2, 4, 8])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--noise-response", action="store_true", help="also print the one-step noise leak")
    parser.add_argument("--raw", action="store_true", help="a checkpoint's raw weights instead of its EMA")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    for path in args.models:
        model = model_from_path(path, use_ema=not args.raw).eval()
        data = ChunkDataset(args.cache, seed=1_000_003, split="validation", timbres=model.decoder.timbres)
        batch = collate_counted([(i, data[i]) for i in range(args.examples)])
        std0 = float(batch["target"].std(dim=(1, 2)).mean())
        g = torch.Generator().manual_seed(0)
        if args.noise_response:
            noise = torch.randn(batch["target"].shape, generator=torch.Generator().manual_seed(1))
            response = noise_response(model, batch, NOISE_TIMES, noise)
            cells = [f"t={t}: L1 {l1:.3f} leak {leak:.3f} (ignore {ign:.3f})"
                     for t, (l1, leak, ign) in zip(NOISE_TIMES, response)]  # fmt: skip
            print(f"{Path(path).name} noise response | " + " | ".join(cells), flush=True)
        for t0 in args.t0:
            noise = torch.randn(batch["target"].shape, generator=g)
            cells = []
            for steps in args.steps:
                l1, std = probe(model, batch, t0, steps, noise)
                cells.append(f"{steps}: L1 {l1:.3f} std {std:.3f}")
            print(f"{Path(path).name} t0={t0} (data std {std0:.3f}) | " + " | ".join(cells), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
