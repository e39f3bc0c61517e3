"""Does a model use its conditioning? The eps error with and without the notes and the context.

A diffusion model that ignores its conditioning has the same denoising error whatever it is
given: the eps L1 error on held-out segments is measured at a few noise times with the real notes
and context, with no notes (the context kept), and with neither (the classifier-free guidance
"null" input). The gaps are what the notes and the context are worth; a model that plays the
right notes needs a clearly positive notes gap. Also reported: how far the first cross-attention
head of each decoder layer is from attending to the note events of its frame (the penalty of
``specdiff.training.guided_attention``, 0 = as aligned as possible, 1 = as far as possible).

Usage:
  python benchmarks/conditioning_gap.py MODEL [MODEL ...] --data CACHE
MODEL: a training run folder (its newest checkpoint, EMA weights) or a pipeline folder.
CACHE: a feature cache (specdiff prepare); its validation split is used. Prints a table.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from specdiff.data.cache import open_training_datasets  # noqa: E402
from specdiff.sampling.diffusion import eps_from_prediction, predict_x0, q_sample  # noqa: E402
from specdiff.training.batches import collate_counted
from specdiff.training.export import model_from_path
from specdiff.training.guided_attention import (  # noqa: E402
    CrossAttentionRecorder,
    alignment_penalty_weights,
    guided_attention_penalty,
    token_frames,
)
from specdiff.training.objective import SpectrogramDiffusionModel, trim_token_padding

TIMES = (0.3, 0.5, 0.7, 0.9)


@torch.no_grad()
def measure(
    model: SpectrogramDiffusionModel, batch: dict[str, torch.Tensor], seed: int = 0, times: tuple[float, ...] = TIMES
) -> dict[str, float]:
    tokens = trim_token_padding(batch["tokens"])
    context, context_mask, x0 = batch["context"], batch["context_mask"], batch["target"]
    generator = torch.Generator().manual_seed(seed)
    out: dict[str, float] = {}
    for t_value in times:
        t = torch.full((x0.shape[0],), t_value)
        noise = torch.randn(x0.shape, generator=generator)
        z = q_sample(x0, t, noise)
        kind = model.decoder.prediction_type  # a v / x0 / edm output is compared as the eps it implies

        def errors(tok, mask, z=z, t=t, noise=noise, kind=kind):
            eps = eps_from_prediction(model(tok, context, mask, z, t), z, t, kind)
            x0_hat = predict_x0(z, t, eps).clamp(-1, 1)
            return float((eps - noise).abs().mean()), float((x0_hat - x0).abs().mean())

        (full, x0_full), (no_notes, x0_no_notes), (neither, x0_neither) = (
            errors(tokens, context_mask),
            errors(tokens * 0, context_mask),
            errors(tokens * 0, context_mask & False),
        )
        out[f"t={t_value}"] = full
        out[f"notes gap t={t_value}"] = no_notes - full
        out[f"context gap t={t_value}"] = neither - no_notes
        # The same in x0 (the spectrogram itself): at high noise an eps gap is the x0 gap x alpha/sigma.
        out[f"x0 L1 t={t_value}"] = x0_full
        out[f"x0 notes gap t={t_value}"] = x0_no_notes - x0_full
        out[f"x0 null gap t={t_value}"] = x0_neither - x0_full  # no notes and no context
    recorder = CrossAttentionRecorder(model)
    t = torch.full((x0.shape[0],), 0.5)
    with recorder.recording():
        model(tokens, context, context_mask, q_sample(x0, t, torch.randn(x0.shape, generator=generator)), t)
    penalty = float(guided_attention_penalty(model, recorder, tokens, context_mask, heads=1))
    rows = torch.isfinite(token_frames(tokens)).any(dim=1)
    weights = alignment_penalty_weights(tokens[rows], context.shape[1], x0.shape[1], 4.0)
    best, worst = float(weights.min(dim=2).values.sum()), float(weights.max(dim=2).values.sum())
    out["alignment (0 best, 1 worst)"] = (penalty - best) / max(worst - best, 1e-9)
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("models", nargs="+", type=Path)
    ap.add_argument("--data", type=Path, required=True, help="feature cache (its validation split is used)")
    ap.add_argument("--examples", type=int, default=16)
    ap.add_argument("--times", type=float, nargs="+", default=list(TIMES), help="noise times (default: %(default)s)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument(
        "--raw",
        action="store_true",
        help="a checkpoint's raw weights instead of its EMA (short A/B runs: the EMA still remembers the start)",
    )
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    _, val = open_training_datasets(args.data)
    batch = collate_counted([(i, val[i]) for i in range(min(args.examples, len(val)))])
    rows = {
        str(path): measure(model_from_path(path, use_ema=not args.raw), batch, times=tuple(args.times))
        for path in args.models
    }
    keys = list(next(iter(rows.values())))
    print("| model | " + " | ".join(keys) + " |")
    print("|---" * (len(keys) + 1) + "|")
    for name, values in rows.items():
        print(f"| {name} | " + " | ".join(f"{values[k]:.4f}" for k in keys) + " |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
