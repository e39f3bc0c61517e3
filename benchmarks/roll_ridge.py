"""How far does the score roll alone carry on real spectrograms? A per-frame ridge regression probe.

The decoder's x0 estimate at high noise can only use the notes; with the frame-aligned roll
(``specdiff/midi/score_roll.py``) the simplest such estimate is a linear map of each frame's roll
features (plus the features of a few neighbouring frames, for attacks that straddle a frame
edge). This script fits that map in closed form (ridge regression on the training split of a
feature cache) and reports:

- its x0 L1 on validation segments (scaled [-1, 1] log-mel, the unit of
  ``benchmarks/conditioning_gap.py`` / trainability.md), beside the constant (mean-frame) floor;
- with ``--evaluate``, the model-quality metrics of the held-out test pieces when the ridge
  estimate *is* the spectrogram, through the bundled inverter (``specdiff.evaluation.evaluate``, as
  ``benchmarks/model_quality.py`` scores a model): a lower bound on what a decoder that has
  learned the frame-local roll -> mel map should reach, and a yardstick for its onset F1.

Usage:
  python benchmarks/roll_ridge.py --data CACHE [--segments 1500] [--evaluate] [--max-seconds 15]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from specdiff.atomic import atomic_write_text  # noqa: E402
from specdiff.midi.score_roll import TONAL_FEATURES, batch_rolls  # noqa: E402
from specdiff.training.prior_fit import collated_windows, ridge_regression  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results"
SHIFTS = (-2, -1, 1, 2)  # neighbouring frames whose onset features are also given


def frame_features(roll: torch.Tensor) -> torch.Tensor:
    """``[B, T, ROLL_FEATURES]`` -> ``[B, T, D]``: the shared per-pitch, per-family and drum
    columns (the per-(family, pitch) columns are too many for a closed-form fit) and the onset
    columns of the neighbouring frames."""
    shared = roll[..., TONAL_FEATURES:]  # drums (onset, decay), pitch (onset, sustain, decay), family
    onsets = torch.cat([shared[..., :128], shared[..., 256:384]], dim=-1)  # drum onsets, pitch onsets
    shifted = []
    for s in SHIFTS:
        moved = torch.zeros_like(onsets)
        if s > 0:
            moved[:, s:] = onsets[:, :-s]  # an onset s frames before this one
        else:
            moved[:, :s] = onsets[:, -s:]  # an onset -s frames after this one
        shifted.append(moved)
    return torch.cat([shared, *shifted], dim=-1)


def fit(train, segments: int, ridge: float) -> torch.Tensor:
    """Closed-form ridge weights ``[D + 1, 128]`` (the last row: the intercept) from ``segments``
    training windows (``specdiff.training.prior_fit.ridge_regression``, as ``train.fit_score_prior`` fits the
    bundled model's score prior)."""

    pairs = (
        (frame_features(batch_rolls(b["tokens"])).flatten(0, 1), b["target"].flatten(0, 1))
        for b in collated_windows(train, range(segments))
    )
    return ridge_regression(pairs, ridge).float()


def predict(weights: torch.Tensor, tokens) -> torch.Tensor:
    """Scaled log-mel ``[B, T, 128]`` of token rows, clamped to the model's [-1, 1] range."""
    return (frame_features(batch_rolls(tokens)) @ weights[:-1] + weights[-1]).clamp(-1.0, 1.0)


class RidgePipeline:
    """Stands in for a pipeline in ``specdiff.evaluation.evaluate``: each segment's mel is the ridge estimate."""

    def __init__(self, weights: torch.Tensor, inverter):
        from specdiff.constants import SAMPLE_RATE

        self.weights, self.inverter, self.sample_rate = weights, inverter, SAMPLE_RATE

    def __call__(self, tokenized, **_ignored):
        from specdiff.audio.mel import scale_to_features
        from specdiff.pipeline.inputs import frames_to_keep
        from specdiff.pipeline.outputs import AudioPipelineOutput

        segments = tokenized.segments
        mel = scale_to_features(predict(self.weights, segments)).reshape(1, -1, 128)
        keep = frames_to_keep(len(segments), 256, tokenized.duration)
        audio = np.asarray(self.inverter(mel[:, :keep].numpy()), np.float32)
        return AudioPipelineOutput(audios=audio, mels=mel[:, :keep].numpy())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", required=True, help="feature cache (specdiff prepare)")
    parser.add_argument("--segments", type=int, default=1500, help="training windows to fit on")
    parser.add_argument("--val-segments", type=int, default=64)
    parser.add_argument("--ridge", type=float, default=10.0)
    parser.add_argument("--evaluate", action="store_true", help="also score the test pieces through the inverter")
    parser.add_argument("--max-seconds", type=float, default=15.0)
    parser.add_argument("--model", default=str(ROOT / "specdiff" / "assets" / "default_model"),
                        help="folder whose inverter renders the estimate")  # fmt: skip
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--name", default="roll_ridge")
    parser.add_argument("--weights", help="a .pt file: load the fitted weights if it exists, else save them")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    from specdiff.data.cache import open_training_datasets

    train, val = open_training_datasets(args.data)
    started = time.perf_counter()
    if args.weights and Path(args.weights).exists():
        weights = torch.load(args.weights)
    else:
        weights = fit(train, args.segments, args.ridge)
        if args.weights:
            torch.save(weights, args.weights)
    fit_seconds = time.perf_counter() - started
    err = floor = 0.0
    mean_frame = None
    for batch in collated_windows(train, range(args.segments, args.segments + 256)):
        m = batch["target"].mean((0, 1))
        mean_frame = m if mean_frame is None else (mean_frame + m) / 2
    count = 0
    for batch in collated_windows(val, range(args.val_segments)):
        target = batch["target"]
        err += float((predict(weights, batch["tokens"]) - target).abs().mean()) * len(target)
        floor += float((mean_frame - target).abs().mean()) * len(target)
        count += len(target)
    result = {
        "data": str(args.data),
        "segments": args.segments,
        "ridge": args.ridge,
        "features": int(weights.shape[0]),
        "fit_seconds": fit_seconds,
        "val_segments": count,
        "val_x0_l1": err / count,
        "val_mean_frame_l1": floor / count,
    }
    print(json.dumps(result, indent=2), flush=True)
    if args.evaluate:
        from specdiff.evaluation.evaluate import evaluate
        from specdiff.pipeline.pipeline import SpectrogramDiffusionPipeline

        sys.path.insert(0, str(ROOT / "benchmarks"))
        from model_quality import held_out_pieces, summarise

        inverter = SpectrogramDiffusionPipeline.from_pretrained(args.model).inverter
        pieces = held_out_pieces()
        report = evaluate(RidgePipeline(weights, inverter), [p for p, _ in pieces], max_seconds=args.max_seconds,
                          save_audio=False, verbose=False)  # fmt: skip
        groups = dict(pieces)
        rows = report["pieces"]
        result["test"] = {"all": summarise(rows)}
        for group in sorted(set(groups.values())):
            result["test"][group] = summarise([r for r in rows if groups[Path(r["midi"])] == group])
        result["test"]["all"]["frechet"] = report["summary"].get("frechet_distance")
        print(json.dumps(result["test"], indent=2), flush=True)
    atomic_write_text(RESULTS / f"{args.name}.json", json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
