#!/usr/bin/env python
"""Training throughput (segments/s) of the training presets on this machine.

    python benchmarks/train_benchmark.py --preset tiny --threads 1 --steps 10
    python benchmarks/train_benchmark.py --preset small --batch-size 4 --data runs/cache_demo

One "segment" is one training example: 256 target frames (5.12 s of audio) with its notes and
context (ORIGINAL.md §4.2). Each measured step is a full optimiser step (forward, backward, Adafactor,
EMA) through ``specdiff.training.loop.Trainer``, after ``--warmup`` unmeasured steps. On a shared machine
the wall-clock rate understates the speed; ``segments_per_cpu_s`` (per second of this process's CPU
time) is what one idle core gives with ``--threads 1``. With ``--data`` the
examples come from a feature cache (real token counts); otherwise from ``SyntheticDataset``
(up to 256 note tokens, similar to real segments). Prints one JSON line per preset.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def measure(preset: str, batch_size: int, steps: int, warmup: int, threads: int, data: str | None) -> dict:
    import torch

    from specdiff.models.presets import count_parameters
    from specdiff.training.config import TrainConfig
    from specdiff.training.loop import Trainer

    torch.set_num_threads(threads)
    with tempfile.TemporaryDirectory() as out:
        config = TrainConfig.from_preset(
            preset, batch_size=batch_size, micro_batch_size=0, steps=10**9, data=data or "synthetic", out_dir=out,
            device="cpu", tensorboard=False, val_every=0, sample_every=0, ckpt_every=10**9, num_workers=0,
            val_examples=1,
        )  # fmt: skip
        trainer = Trainer(config)
        for _ in range(warmup):
            trainer.train_step()
        times, cpu_times, losses = [], [], []
        for _ in range(steps):
            t0, c0 = time.perf_counter(), time.process_time()
            losses.append(trainer.train_step().loss)
            times.append(time.perf_counter() - t0)
            cpu_times.append(time.process_time() - c0)
        params = count_parameters(trainer.model)
    mean = sum(times) / len(times)
    return {
        "preset": preset, "params_M": round(params / 1e6, 2), "threads": threads, "batch_size": batch_size,
        "data": data or "synthetic", "seconds_per_step": round(mean, 3),
        "segments_per_s": round(batch_size / mean, 3), "best_segments_per_s": round(batch_size / min(times), 3),
        # per second of this process's CPU time: the rate on an otherwise idle machine (shared CPUs)
        "segments_per_cpu_s": round(batch_size * len(cpu_times) / sum(cpu_times), 3),
        "final_loss": round(losses[-1], 4),
    }  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", action="append", help="tiny, small or base (repeatable; default tiny and small)")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--steps", type=int, default=5, help="measured optimiser steps")
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads")
    parser.add_argument("--data", default=None, help="feature cache folder (default: synthetic examples)")
    args = parser.parse_args()
    for preset in args.preset or ["tiny", "small"]:
        print(
            json.dumps(measure(preset, args.batch_size, args.steps, args.warmup, args.threads, args.data)), flush=True
        )


if __name__ == "__main__":
    main()
