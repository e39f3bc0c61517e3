"""What explains a segment's level beyond the score roll: velocities, or the context? A closed-form probe.

The original codec has one velocity bin (note on/off, ORIGINAL.md §2): the tokens, and so the
score roll computed from them, carry no velocity. Renders of real MIDI do: a SoundFont plays a
velocity-30 note ~20 dB under a velocity-110 one. This probe fits, in closed form (ridge regression
on the training split of a feature cache, as ``specdiff.training.prior_fit`` fits the score prior),
each frame's log-mel from

- ``roll``: the roll's shared columns (per pitch, per family, drums, releases, silent), what the
  score prior sees today;
- ``roll + velocity``: the same plus, per instrument family and for drums and overall, the
  log-velocity ``ln(v / 127)`` of the notes sounding in that frame (the loudest one);
- ``roll + context level``: the roll plus the context-level columns of the
  ``CONTEXT_ROLL_FEATURES`` layout (each band's mean level over the context's last frames above
  -8 nat, an empty-context flag: ``specdiff.midi.score_roll.add_context_level``),
- ``roll + context level, no floor``: the same with the plain level (the first version of the
  layout: every value above ln 1e-5 counts),
- ``roll + relative velocity``: as ``roll + velocity`` with ``ln(v / v_max)``, the velocity relative to
  the piece's loudest note (the velocity columns of the ``VELOCITY_ROLL_FEATURES`` layout,
  ``specdiff.midi.velocity_roll.velocity_block``). Why: renders are peak-normalised per piece
  (``specdiff.data.render.PEAK``), so what sets a frame's level is its velocity against the piece's
  loudest moment, not the absolute velocity; the pipeline knows the whole piece, so this is
  computable at synthesis;
- ``roll + context level + relative velocity``: both;
- ``... + piece loudness``: one more column, the same on every frame of a piece: ``ln`` of its loudest
  moment's summed ``(v / 127)^2`` (:func:`piece_loudness`). Why: renders are peak-normalised, so a solo
  line is lifted far more than a full band; does the decoder need to know how far? (Refuted: no gain,
  ``benchmarks/results/level_probe_idioms_guard.md``);
- ``roll + gated context level``: the same columns multiplied, frame by frame, by 1 - the roll's
  ``silent`` feature, so they speak only where a note sounds (where none does, the render sits at its
  floor whatever the context's level was),

and scores them on validation windows: x0 L1, the *level* error (the frame's mean over the 128
bands, ours minus the truth), per frame and per window, and the *quiet gap* (ours minus the truth,
mean over the frames whose true mean log-mel is below -8 natural-log units, the issue's silence
measure), in natural-log units (the scaled [-1, 1] features times (MAX_VALUE - MIN_VALUE) / 2).

Usage:
  python benchmarks/level_probe.py --data CACHE [--train 600] [--val 96] [--timbre TimGM6mb] [--name NAME]
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
from specdiff.audio.mel import MIN_VALUE, NAT_PER_UNIT  # noqa: E402
from specdiff.data.cache import ChunkDataset  # noqa: E402
from specdiff.midi.score_roll import (  # noqa: E402
    CONTEXT_LEVEL_FLOOR_NAT,
    CONTEXT_ROLL_FEATURES,
    EXTENDED_ROLL_FEATURES,
    SILENT_FEATURE,
    TONAL_FEATURES,
    add_context_level,
    batch_rolls,
)
from specdiff.midi.velocity_roll import (  # noqa: E402
    DEFAULT_MAX_VELOCITY,
    VelocitySpans,
    velocity_block,
    velocity_spans,
)
from specdiff.training.prior_fit import ridge_regression  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results"
LABELS = {"roll": "", "roll + velocity": "velocity", "roll + context level": "context level",
          "roll + context level, no floor": "unfloored context level",
          "roll + relative velocity": "relative velocity",
          "roll + context level + relative velocity": "context level + relative velocity",
          "roll + gated context level": "gated context level",
          "roll + relative velocity + piece loudness": "relative velocity + piece loudness",
          "roll + context level + relative velocity + piece loudness":
              "context level + relative velocity + piece loudness"}  # fmt: skip
QUIET_NAT = -8.0  # frames whose true mean log-mel is below this count as quiet (the measure)


def piece_loudness(spans: VelocitySpans) -> float:
    """The piece's loudest moment as its notes tell it: ``ln`` of the largest, over frames, sum of
    ``(v / 127)^2`` of the notes sounding in a frame (a drum hit for ``DRUM_DECAY_SPAN`` frames);
    0 for no notes. Why: renders are peak-normalised per piece, so one note of a solo line comes out
    much louder than the same note in a full band; a decoder sees one segment, and this one number
    of the whole piece says how far the normalisation lifted it. ``spans``: the song's
    :func:`velocity_spans` (their velocities are absolute; the reference only matters to the columns)."""
    if len(spans.first) == 0:
        return 0.0
    origin = int(spans.first.min())
    power = np.zeros(int(spans.stop.max()) - origin + 1, np.float64)
    weight = (spans.velocity.astype(np.float64) / DEFAULT_MAX_VELOCITY) ** 2
    np.add.at(power, spans.first - origin, weight)
    np.add.at(power, spans.stop - origin, -weight)
    return float(np.log(max(float(np.cumsum(power).max()), 1e-6)))


def window_indices(dataset: ChunkDataset, count: int, timbre: str | None) -> list[int]:
    """The first ``count`` items of ``dataset`` whose song has ``timbre`` (any when None)."""
    chosen, i = [], 0
    while len(chosen) < count:
        if timbre is None or dataset.songs[dataset.window(i)[0]].get("timbre") == timbre:
            chosen.append(i)
        i += 1
    return chosen


def windows(dataset: ChunkDataset, indices: list[int], extra: str):
    """``(x [rows, D], y [rows, 128], lengths)`` batches of the windows' valid frames."""
    spans_cache: dict[int, VelocitySpans] = {}
    loudness_cache: dict[int, float] = {}
    for start in range(0, len(indices), 32):
        rolls, velocities, targets = [], [], []
        items = indices[start : start + 32]
        examples = [dataset[i] for i in items]
        tokens = torch.stack([e.tokens for e in examples])
        floor = MIN_VALUE if extra == "unfloored context level" else CONTEXT_LEVEL_FLOOR_NAT
        roll = add_context_level(batch_rolls(tokens, 256, CONTEXT_ROLL_FEATURES),
                                 torch.stack([e.context for e in examples]),
                                 torch.stack([e.context_mask for e in examples]), tokens, floor)  # fmt: skip
        if extra == "gated context level":
            sounding = 1.0 - roll[..., SILENT_FEATURE : SILENT_FEATURE + 1]
            roll = torch.cat([roll[..., :EXTENDED_ROLL_FEATURES], roll[..., EXTENDED_ROLL_FEATURES:] * sounding], -1)
        elif not extra.startswith("context level") and extra != "unfloored context level":
            roll = roll[..., :EXTENDED_ROLL_FEATURES]
        for row, (i, example) in enumerate(zip(items, examples)):
            k, _, target_start, valid = dataset.window(i)
            if k not in spans_cache:
                spans_cache[k] = velocity_spans(dataset.notes(k))
                loudness_cache[k] = piece_loudness(spans_cache[k])
            spans = spans_cache[k]  # relative: to the piece's loudest note (the library's velocity columns)
            reference = None if "relative" in extra else 127
            rolls.append(roll[row, :valid, TONAL_FEATURES:])
            block = torch.from_numpy(velocity_block(spans, target_start, reference, 256)[:valid])
            if "piece loudness" in extra:
                block = torch.cat([block, torch.full((valid, 1), loudness_cache[k])], 1)
            velocities.append(block)
            targets.append(example.target[:valid])
        x = torch.cat(rolls)
        if "velocity" in extra:
            x = torch.cat([x, torch.cat(velocities)], dim=1)
        lengths = [len(t) for t in targets]
        yield x, torch.cat(targets), lengths


def score(weights: torch.Tensor, dataset: ChunkDataset, indices: list[int], extra: str) -> dict[str, float]:
    l1 = frame_level = window_level = quiet_sum = 0.0
    rows = windows_seen = quiet_rows = 0
    for x, y, lengths in windows(dataset, indices, extra):
        pred = torch.cat([x.double(), torch.ones(len(x), 1, dtype=torch.float64)], 1) @ weights
        diff = pred - y.double()
        l1 += float(diff.abs().sum()) / diff.shape[1]
        level = diff.mean(dim=1)
        frame_level += float(level.abs().sum())
        quiet = MIN_VALUE + (y.double().mean(dim=1) + 1.0) * NAT_PER_UNIT < QUIET_NAT
        quiet_sum += float(level[quiet].sum())
        quiet_rows += int(quiet.sum())
        for part in torch.split(level, lengths):
            window_level += float(part.mean().abs())
            windows_seen += 1
        rows += len(x)
    return {
        "x0_l1_nat": l1 / rows * NAT_PER_UNIT,
        "frame_level_error_nat": frame_level / rows * NAT_PER_UNIT,
        "window_level_error_nat": window_level / windows_seen * NAT_PER_UNIT,
        "quiet_gap_nat": quiet_sum / max(quiet_rows, 1) * NAT_PER_UNIT,
        "quiet_frames": quiet_rows,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", required=True)
    parser.add_argument("--train", type=int, default=600)
    parser.add_argument("--val", type=int, default=96)
    parser.add_argument("--ridge", type=float, default=10.0)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--timbre", default=None, help="only windows of songs rendered with this SoundFont")
    parser.add_argument("--name", default="idioms")
    parser.add_argument("--variants", nargs="+", choices=list(LABELS), default=list(LABELS), metavar="LABEL",
                        help="feature sets to fit (default: all)")  # fmt: skip
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    train = ChunkDataset(args.data, seed=0, split="train")
    val = ChunkDataset(args.data, seed=1, split="validation")
    result: dict = {"data": args.data, "train_windows": args.train, "val_windows": args.val, "ridge": args.ridge,
                    "timbre": args.timbre}  # fmt: skip
    train_items = window_indices(train, args.train, args.timbre)
    val_items = window_indices(val, args.val, args.timbre)
    for label in args.variants:
        extra = LABELS[label]
        started = time.time()
        weights = ridge_regression(((x, y) for x, y, _ in windows(train, train_items, extra)), args.ridge)
        result[label] = score(weights, val, val_items, extra)
        result[label]["features"] = int(weights.shape[0] - 1)
        result[label]["seconds"] = time.time() - started
        print(label, result[label], flush=True)
    out = RESULTS / f"level_probe_{args.name}"
    atomic_write_text(out.with_suffix(".json"), json.dumps(result, indent=1))
    lines = ["| features | columns | x0 L1 (nat) | frame level error (nat) | window level error (nat) "
             "| quiet gap (nat) |", "|---|---|---|---|---|---|"]  # fmt: skip
    for label in args.variants:
        r = result[label]
        lines.append(f"| {label} | {r['features']} | {r['x0_l1_nat']:.3f} | {r['frame_level_error_nat']:.3f} | "
                     f"{r['window_level_error_nat']:.3f} | {r['quiet_gap_nat']:+.2f} "
                     f"({r['quiet_frames']} frames) |")  # fmt: skip
    atomic_write_text(out.with_suffix(".md"), "\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
