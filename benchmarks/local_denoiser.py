"""How much could a denoiser gain from the data's local smoothness? A closed-form yardstick.

The decoder's "edm" skip path alone is per-pixel shrinkage towards the score prior ``p``:
``x0 = p + c_skip (z - alpha p)``, the best estimate if the residual ``x0 - p`` were white. This
script fits, per noise time ``t`` and by ridge regression on training windows of a feature cache, a
*linear* estimate of the residual from a ``--frames``-wide window of the noisy residual
``z - alpha p`` (all 128 bins), and scores it on validation windows against shrinkage and
against the prior alone (x0 L1, scaled log-mel units). A trained denoiser should beat the linear
one; the bundled network sits between shrinkage and it (``steps_probe.py --noise-response``).

Usage:
  python benchmarks/local_denoiser.py CACHE [--model FOLDER] [--frames 9] [--train 96] [--test 16]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from specdiff.data.cache import ChunkDataset  # noqa: E402
from specdiff.sampling.diffusion import SIGMA_DATA, alpha_sigma  # noqa: E402
from specdiff.training.batches import collate_counted  # noqa: E402
from specdiff.training.export import model_from_path  # noqa: E402
from specdiff.training.objective import trim_token_padding  # noqa: E402


def windows_and_prior(model, dataset, indices) -> tuple[torch.Tensor, torch.Tensor]:
    """Targets ``[B, T, 128]`` and the model's score prior for them (same shape)."""
    batch = collate_counted([(i, dataset[i]) for i in indices])
    tokens = trim_token_padding(batch["tokens"])
    with torch.no_grad():
        encodings = model.encode(tokens, batch["context"], batch["context_mask"])
        cache = model.decoder.prepare_cross_attention(encodings, model.score_roll(tokens), None)
    return batch["target"], cache.frame_prior.float()


def local_features(noisy: torch.Tensor, frames: int) -> torch.Tensor:
    """``[B, T, C]`` -> ``[B * T, C * frames]``: each frame with its neighbours (zero padded)."""
    padded = torch.nn.functional.pad(noisy.transpose(1, 2), (frames // 2, frames // 2))
    return padded.unfold(2, frames, 1).permute(0, 2, 1, 3).reshape(-1, noisy.shape[2] * frames)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("cache")
    parser.add_argument("--model", default=str(ROOT / "specdiff" / "assets" / "default_model"))
    parser.add_argument("--frames", type=int, default=9)
    parser.add_argument("--train", type=int, default=96)
    parser.add_argument("--test", type=int, default=16)
    parser.add_argument("--times", type=float, nargs="+", default=[0.1, 0.3, 0.5, 0.7, 0.9])
    args = parser.parse_args()
    torch.set_num_threads(1)
    model = model_from_path(args.model).eval()
    if model.decoder.score_prior_projection is None:
        raise SystemExit("the model has no score prior (decoder extension score_prior)")
    train = ChunkDataset(args.cache, seed=1_000_003, split="train", timbres=[])
    valid = ChunkDataset(args.cache, seed=1_000_003, split="validation", timbres=[])
    train_batches = [
        windows_and_prior(model, train, range(i, min(i + 16, args.train))) for i in range(0, args.train, 16)
    ]
    x0, prior = windows_and_prior(model, valid, range(args.test))
    width = x0.shape[2] * args.frames
    generator = torch.Generator().manual_seed(0)
    print(f"| t | prior alone | per-pixel shrinkage (edm skip) | local linear, {args.frames} frames |")
    print("|---|---|---|---|")
    for t in args.times:
        alpha, sigma = (float(v) for v in alpha_sigma(torch.tensor(t)))
        c_skip = alpha * SIGMA_DATA**2 / (alpha**2 * SIGMA_DATA**2 + sigma**2)
        gram = torch.zeros(width, width, dtype=torch.float64)
        cross = torch.zeros(width, x0.shape[2], dtype=torch.float64)
        for target, p in train_batches:
            noisy = alpha * (target - p) + sigma * torch.randn(target.shape, generator=generator)
            features = local_features(noisy, args.frames).double()
            gram += features.T @ features
            cross += features.T @ (target - p).reshape(-1, x0.shape[2]).double()
        weights = torch.linalg.solve(gram + 1e-3 * torch.eye(width, dtype=torch.float64), cross)
        residual = x0 - prior
        noisy = alpha * residual + sigma * torch.randn(x0.shape, generator=generator)
        linear = (local_features(noisy, args.frames).double() @ weights).reshape(x0.shape).float()
        print(f"| {t} | {residual.abs().mean():.3f} | {(c_skip * noisy - residual).abs().mean():.3f} | "
              f"{(linear - residual).abs().mean():.3f} |", flush=True)  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
