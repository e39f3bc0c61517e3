"""Why the FiLM decoder learns frame-local structure slowly: scales and gradients at initialisation.

For one real training batch (a feature cache) or a synthetic one, and a few decoder set-ups, it
prints the RMS of each part of the decoder's input (the projected noisy spectrogram, the frozen
position table, the projected score roll), the RMS of the residual stream before the final
RMSNorm, the RMS of the output, and the gradient norm that the training objective sends to the
output layer, the input projection and the score projection after a first optimiser step (at
step 0 a zero-initialised output layer passes no gradient back).

Usage:
  python benchmarks/trainability.py [--data CACHE] [--prediction-type sample]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from specdiff.midi.score_roll import ROLL_FEATURES  # noqa: E402
from specdiff.models.presets import build_models  # noqa: E402
from specdiff.training.batches import SyntheticDataset, collate_counted
from specdiff.training.objective import (
    SpectrogramDiffusionModel,
    diffusion_loss,
    draw_diffusion_inputs,
    initialise_output,
)

SETUPS = {
    # name: (decoder options, output init, score projection std or None for T5X fan-in)
    "original (eps, fan-in head)": (dict(), "default", None),
    "roll, fan-in roll init (eps)": (dict(score_roll_features=ROLL_FEATURES), "default", "fan_in"),
    "roll, roll std 0.3, zero head + bias (x0)": (
        dict(score_roll_features=ROLL_FEATURES, prediction_type="sample", spec_out_bias=True),
        "zero",
        None,
    ),
}


def rms(x: torch.Tensor) -> float:
    return float(x.float().pow(2).mean().sqrt())


def measure(options: dict, output_init: str, roll_init, batch, seed: int = 0) -> dict[str, float]:
    model = SpectrogramDiffusionModel(*build_models("tiny", seed=0, dropout_rate=0.0, **options))
    decoder = model.decoder
    if roll_init == "fan_in" and decoder.score_projection is not None:
        with torch.no_grad():
            decoder.score_projection.weight.normal_(0.0, ROLL_FEATURES**-0.5)
    initialise_output(decoder, output_init)
    t, noise, keep = draw_diffusion_inputs(batch["index"], seed, 0.0)
    captured = {}
    handles = [
        decoder.continuous_inputs_projection.register_forward_hook(lambda m, i, o: captured.__setitem__("z_proj", o)),
        decoder.decoder_norm.register_forward_hook(lambda m, i, o: captured.__setitem__("stream", i[0])),
        decoder.spec_out.register_forward_hook(lambda m, i, o: captured.__setitem__("out", o)),
    ]
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    for step in range(2):  # step 0 moves a zero head; step 1's gradients reach the inputs
        out = diffusion_loss(model, batch, t, noise, keep)
        optimizer.zero_grad()
        out.loss_sum.backward()
        if step == 0:
            row = {
                "input: projected z_t": rms(captured["z_proj"]),
                "input: position table": rms(decoder.position_encoding.weight),
                "stream before final norm": rms(captured["stream"]),
                "output": rms(captured["out"]),
            }
            if decoder.score_projection is not None:
                roll = model.score_roll(batch["tokens"])
                row["input: projected roll"] = rms(decoder.project_score_roll(roll))
            optimizer.step()
    grads = {"grad: output layer": decoder.spec_out.weight.grad,
             "grad: input projection": decoder.continuous_inputs_projection.weight.grad}  # fmt: skip
    if decoder.score_projection is not None:
        grads["grad: score projection"] = decoder.score_projection.weight.grad
    row.update({k: float(g.norm()) for k, g in grads.items()})
    for h in handles:
        h.remove()
    return row


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", help="feature cache (default: the synthetic data set)")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    if args.data:
        from specdiff.data.cache import open_training_datasets

        dataset, _ = open_training_datasets(args.data)
    else:
        dataset = SyntheticDataset()
    batch = collate_counted([(i, dataset[i]) for i in range(8)])
    for name, (options, output_init, roll_init) in SETUPS.items():
        row = measure(options, output_init, roll_init, batch)
        print(json.dumps({"setup": name, **{k: round(v, 4) for k, v in row.items()}}), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
