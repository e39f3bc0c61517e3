"""Do a model's *samples* follow the notes? A cheap spectrogram-level check for training recipes.

The training loss says little about what a sampler draws (benchmarks/results/trainability.md): two
recipes with similar eps errors can give very different spectrograms. This probe samples held-out
validation segments (real tokens and real previous-segment context, as in training) with a
sampler of the pipeline, and compares each sample with the segment's true log-mel:

- ``mel_l1``: mean |sample - target| in the model's scaled [-1, 1] log-mel space;
- ``level``: mean sample minus mean target (scaled units; < 0 is too quiet);
- ``flux_corr``: correlation over frames of the two spectral fluxes (sum over bins of the positive
  frame-to-frame increase): how well the sample's attacks line up with the target's onsets.
  This is the attack structure that onset F1 on audio later rewards; 0 = unrelated, 1 = same.

Usage:
  python benchmarks/sample_probe.py RUN_OR_FOLDER [...] --data CACHE [--segments 16]
         [--scheduler dpmsolver++] [--steps 20] [--guidance 2.0]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from specdiff.data.cache import open_training_datasets  # noqa: E402
from specdiff.sampling import sampler as samplers  # noqa: E402
from specdiff.training.batches import collate_counted
from specdiff.training.export import model_from_path
from specdiff.training.objective import SpectrogramDiffusionModel, trim_token_padding


def spectral_flux(mel: torch.Tensor) -> torch.Tensor:
    """``[B, T, F]`` -> ``[B, T - 1]``: summed positive increase of each bin from frame to frame."""
    return (mel[:, 1:] - mel[:, :-1]).clamp(min=0).sum(-1)


def correlation(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.flatten() - a.mean(), b.flatten() - b.mean()
    return float((a * b).sum() / (a.norm() * b.norm()).clamp(min=1e-12))


@torch.no_grad()
def sample(
    model: SpectrogramDiffusionModel, batch: dict, scheduler: str, steps: int, guidance: float, seed: int
) -> torch.Tensor:
    tokens = trim_token_padding(batch["tokens"])
    encodings = model.encode(tokens, batch["context"], batch["context_mask"])
    denoise = samplers.GuidedDenoiser(model.decoder, encodings, guidance, score_roll=model.score_roll(tokens))
    sampler = samplers.make_scheduler(scheduler)
    generator = torch.Generator().manual_seed(seed)
    noise = samplers.randn(tuple(batch["target"].shape), generator, "cpu", torch.float32)
    return samplers.sample_loop(sampler, denoise, noise, steps, generator).clamp(-1, 1)


def measure(model, batches, scheduler: str, steps: int, guidance: float) -> dict[str, float]:
    samples, targets = [], []
    for k, batch in enumerate(batches):
        samples.append(sample(model, batch, scheduler, steps, guidance, seed=k))
        targets.append(batch["target"])
    x, y = torch.cat(samples), torch.cat(targets)
    return {
        "mel_l1": float((x - y).abs().mean()),
        "level": float(x.mean() - y.mean()),
        "flux_corr": correlation(spectral_flux(x), spectral_flux(y)),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("models", nargs="+", type=Path)
    parser.add_argument("--data", required=True, help="feature cache; its validation split is sampled")
    parser.add_argument("--segments", type=int, default=16)
    parser.add_argument("--scheduler", default="dpmsolver++")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--guidance", type=float, default=2.0)
    parser.add_argument("--threads", type=int, default=0)
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    _, val = open_training_datasets(args.data)
    items = [(i, val[i]) for i in range(args.segments)]
    batches = [collate_counted(items[i : i + 8]) for i in range(0, len(items), 8)]
    for path in args.models:
        row = measure(model_from_path(path), batches, args.scheduler, args.steps, args.guidance)
        print(
            json.dumps(
                {
                    "model": str(path),
                    "scheduler": args.scheduler,
                    "steps": args.steps,
                    "guidance": args.guidance,
                    **{k: round(v, 4) for k, v in row.items()},
                }
            ),
            flush=True,
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
