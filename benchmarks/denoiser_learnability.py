"""Can the decoder learn to denoise at all? Decoder-only training on frozen encodings.

The bundled decoder's output does not respond to its noisy input (``steps_probe.py
--noise-response``: its one-step noise leak equals ``c_skip sigma``, what ignoring the input gives).
This script isolates why. It encodes ``--train`` windows of a feature cache once (notes and context
encoders frozen), then trains only the decoder for ``--steps`` steps on the training objective of
:func:`specdiff.training.objective.diffusion_loss` (``prediction_target``, summed L1 by default) under one of
several variants, printing the validation leak at t = 0.1, 0.3, 0.5 and the x0 L1 as it goes:

- ``warm``: the model's decoder as loaded (the bundled one by default);
- ``fresh``: the decoder re-initialised (T5X init, the score prior kept), a smaller-scale check that
  the architecture and objective can learn the noise response from scratch;
- ``--loss l2``: squared error instead of L1;
- ``--t-max``: draw t only from ``[0, t_max)``, where denoising matters most.

Usage:
  python benchmarks/denoiser_learnability.py CACHE [--model FOLDER] [--init warm|fresh]
      [--steps 300] [--lr 5e-4] [--loss l1|l2] [--t-max 1.0] [--bf16]
"""

from __future__ import annotations

import argparse
import contextlib
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from specdiff.data.cache import ChunkDataset  # noqa: E402
from specdiff.models.initialisation import init_weights  # noqa: E402
from specdiff.sampling.diffusion import alpha_sigma, edm_coefficients, prediction_target, q_sample, x0_from_prediction  # noqa: E402
from specdiff.training.batches import collate_counted  # noqa: E402
from specdiff.training.export import model_from_path  # noqa: E402
from specdiff.training.objective import trim_token_padding  # noqa: E402

PROBE_TIMES = (0.1, 0.3, 0.5)


def encode_batches(model, dataset, count: int, batch_size: int) -> list[dict]:
    """Frozen encoder outputs, score rolls and targets for ``count`` windows."""
    batches = []
    for start in range(0, count, batch_size):
        batch = collate_counted([(i, dataset[i]) for i in range(start, min(start + batch_size, count))])
        tokens = trim_token_padding(batch["tokens"])
        with torch.no_grad():
            encodings = model.encode(tokens, batch["context"], batch["context_mask"])
            roll = model.score_roll(tokens)
        timbre = batch.get("timbre") if model.decoder.timbres else None
        batches.append(dict(encodings=encodings, roll=roll, timbre=timbre, target=batch["target"]))
    return batches


@torch.no_grad()
def leak_and_l1(decoder, batch: dict, noise: torch.Tensor) -> list[tuple[float, float]]:
    """Per probe time: (leak, x0 L1); leak is the regression coefficient of the x0 error on the noise."""
    x0 = batch["target"]
    rows = []
    for value in PROBE_TIMES:
        t = torch.full((x0.shape[0],), value)
        z = q_sample(x0, t, noise)
        out = decoder(batch["encodings"], z, t, score_roll=batch["roll"], timbre=batch["timbre"]).float()
        error = x0_from_prediction(out, z, t, decoder.prediction_type) - x0
        rows.append((float((error * noise).sum() / (noise * noise).sum()), float(error.abs().mean())))
    return rows


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("cache")
    parser.add_argument("--model", default=str(ROOT / "specdiff" / "assets" / "default_model"))
    parser.add_argument("--init", choices=("warm", "fresh"), default="warm")
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--every", type=int, default=50)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--train", type=int, default=128)
    parser.add_argument("--lr", type=float, default=5e-4)
    parser.add_argument("--loss", choices=("l1", "l2"), default="l1")
    parser.add_argument("--t-max", type=float, default=1.0)
    parser.add_argument("--bf16", action="store_true", help="bf16 autocast, as training uses on CPUs that have it")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    model = model_from_path(args.model).eval()
    decoder = model.decoder
    if args.init == "fresh":
        prior = None if decoder.score_prior_projection is None else decoder.score_prior_projection.state_dict()
        init_weights(decoder, torch.Generator().manual_seed(0))
        if prior is not None:
            decoder.score_prior_projection.load_state_dict(prior)
    train_set = ChunkDataset(args.cache, seed=1_000_003, split="train")
    valid_set = ChunkDataset(args.cache, seed=1_000_003, split="validation")
    started = time.perf_counter()
    train_batches = encode_batches(model, train_set, args.train, args.batch_size)
    valid = encode_batches(model, valid_set, 16, 16)[0]
    print(f"encoded {args.train} + 16 windows in {time.perf_counter() - started:.0f} s", flush=True)
    valid_noise = torch.randn(valid["target"].shape, generator=torch.Generator().manual_seed(1))
    ignore = [float(edm_coefficients(torch.tensor(t))[0] * alpha_sigma(torch.tensor(t, dtype=torch.float64))[1])
              for t in PROBE_TIMES]  # fmt: skip
    print(f"variant: init={args.init} loss={args.loss} t_max={args.t_max} lr={args.lr} bf16={args.bf16}")
    print("ignore-the-input leak: " + ", ".join(f"t={t} {v:.3f}" for t, v in zip(PROBE_TIMES, ignore)))
    decoder.train()
    for module in decoder.modules():  # dropout off: the measured runs train without it
        if isinstance(module, torch.nn.Dropout):
            module.p = 0.0
    optimizer = torch.optim.AdamW([p for p in decoder.parameters() if p.requires_grad], lr=args.lr, weight_decay=0.0)
    generator = torch.Generator().manual_seed(2)
    autocast = torch.autocast("cpu", dtype=torch.bfloat16) if args.bf16 else contextlib.nullcontext()
    for step in range(args.steps + 1):
        if step % args.every == 0:
            decoder.eval()
            cells = [f"t={t}: leak {leak:.3f} L1 {l1:.3f}" for t, (leak, l1) in
                     zip(PROBE_TIMES, leak_and_l1(decoder, valid, valid_noise))]  # fmt: skip
            print(f"step {step:4d} ({time.perf_counter() - started:5.0f} s) | " + " | ".join(cells), flush=True)
            decoder.train()
        if step == args.steps:
            break
        batch = train_batches[step % len(train_batches)]
        x0 = batch["target"]
        t = torch.rand(x0.shape[0], generator=generator) * args.t_max
        noise = torch.randn(x0.shape, generator=generator)
        z = q_sample(x0, t, noise)
        with autocast:
            out = decoder(batch["encodings"], z, t, score_roll=batch["roll"], timbre=batch["timbre"])
        error = out.float() - prediction_target(x0, noise, t, decoder.prediction_type, z).float()
        loss = error.abs().sum() if args.loss == "l1" else error.square().sum()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    return 0


if __name__ == "__main__":
    sys.exit(main())
