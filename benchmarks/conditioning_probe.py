"""How fast does the notes -> spectrogram pathway learn? A synthetic probe of the conditioning.

``conditioning_gap.py`` says whether a trained model uses its notes. This probe asks the question
before any real training: on a synthetic task whose spectrogram follows from the notes alone, how
many optimiser steps does a freshly initialised model need before the notes help?

Task: 2-6 random piano notes (pitches 48-84) per 5.12 s segment, tokenized with the real codec
(``specdiff.midi.tokenizer.notes_to_segments``); the target log-mel is a piano roll in mel space: the
fundamental and two harmonics of each note on a silent (-1) floor.

- ``--task static``: every note's harmonics span the whole segment at a constant level (a bag of
  pitches: no alignment between frames and tokens is needed, only which pitches are present);
- ``--task timed``: each note sounds from its onset to its release (the real problem: a frame
  must find the tokens of the notes sounding then).

Objective ``direct`` (default): regress the target (MSE) from pure noise at t = 0.99 through the
whole model (notes encoder + decoder; empty context). The noisy input carries nothing, so only the
notes can lower the error: it isolates the conditioning pathway from denoising. ``diffusion`` uses
the training objective itself (``specdiff.training.objective.diffusion_loss``, eps L1, uniform t, CFG drop 0.1).

The fix of ``benchmarks/results/trainability.md``: ``--output-init zero --out-bias`` starts the
decoder's output layer at zero with a bias at the silent floor (for ``direct``; under ``diffusion``
the bias starts at the floor only for ``--prediction-type sample``). ``--aligned`` adds the
frame-aligned score roll (``specdiff.midi.score_roll``, computed from the same tokens) to the decoder
input: the answer frame by frame, so it measures how fast the decoder can use aligned input.

Every ``--every`` steps it reports the held-out error with the notes and with no notes (all PAD),
and for ``direct`` the floor (the error of the best note-blind prediction: the mean target of each
frame and bin) and the gain ``(floor - error) / floor``: 0 = the notes are not used, 1 = perfect. For
``static``, a linear regressor on token counts (bag of tokens, the same batches, starting from the
silent floor, AdamW at 10x the LR) calibrates what "learnable" means here.

Usage:
  python benchmarks/conditioning_probe.py --task static --steps 1500
  python benchmarks/conditioning_probe.py --task timed --preset tiny --steps 1500 --out results.json
  python benchmarks/conditioning_probe.py --task timed --aligned --output-init zero --out-bias --steps 500
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from specdiff.audio.mel import MEL_FMAX, hertz_to_mel  # noqa: E402
from specdiff.constants import FRAMES_PER_SECOND, N_MELS, SEGMENT_FRAMES, SEGMENT_SECONDS  # noqa: E402
from specdiff.midi.pitch import midi_to_hz  # noqa: E402
from specdiff.midi.reader import Note  # noqa: E402
from specdiff.midi.score_roll import ROLL_FEATURES  # noqa: E402
from specdiff.midi.tokenizer import INPUT_LENGTH, NUM_EMBEDDINGS, SHIFT_ID, STEPS_PER_FRAME, notes_to_segments  # noqa: E402
from specdiff.models.presets import build_models  # noqa: E402
from specdiff.training.guided_attention import CrossAttentionRecorder, guided_attention_penalty  # noqa: E402
from specdiff.training.objective import (
    OUTPUT_INITS,
    SpectrogramDiffusionModel,
    diffusion_loss,
    initialise_output,
    trim_token_padding,
)
from specdiff.training.optim import build_optimizer  # noqa: E402

#: (harmonic, level above the -1 floor at the onset)
HARMONICS = ((1, 1.6), (2, 1.2), (3, 0.9))
DECAY_FRAMES = 40.0
DIRECT_TIME = 0.99  # the decoder's noise time for the direct objective (its input is pure noise)

_MEL_EDGES = np.linspace(hertz_to_mel(0.0), hertz_to_mel(MEL_FMAX), N_MELS + 2)


def mel_bin(hertz: float) -> int:
    """The mel bin whose band holds ``hertz`` (triangular filter centres, approximately)."""
    return int(np.clip(np.searchsorted(_MEL_EDGES, hertz_to_mel(hertz)) - 1, 0, N_MELS - 1))


def make_example(index: int, task: str) -> tuple[torch.Tensor, torch.Tensor]:
    """``(tokens [2048], target [256, 128])`` of synthetic segment ``index`` (deterministic)."""
    rng = np.random.default_rng(1_000 + index)
    notes = []
    for _ in range(int(rng.integers(2, 7))):
        onset = float(rng.uniform(0.0, 4.6))
        notes.append(Note(int(rng.integers(48, 85)), onset, onset + float(rng.uniform(0.2, 1.2)), 100, 0, False))
    tokens = np.zeros(INPUT_LENGTH, np.int64)
    segment = notes_to_segments(notes, SEGMENT_SECONDS)[0]
    tokens[: len(segment)] = segment
    target = np.full((SEGMENT_FRAMES, N_MELS), -1.0, np.float32)
    for note in notes:
        start, end = 0, SEGMENT_FRAMES
        if task == "timed":
            start = int(round(note.start * FRAMES_PER_SECOND))
            end = min(SEGMENT_FRAMES, int(round(note.end * FRAMES_PER_SECOND)))
        f0 = float(midi_to_hz([note.pitch])[0])
        # Static notes hold their level (a frame-independent target); timed ones decay from the onset.
        envelope = np.exp(-np.arange(end - start) / DECAY_FRAMES) if task == "timed" else np.ones(end - start)
        for harmonic, level in HARMONICS:
            k = mel_bin(f0 * harmonic)
            target[start:end, k] = np.maximum(target[start:end, k], -1.0 + level * envelope)
    return torch.from_numpy(tokens), torch.from_numpy(target)


def make_batch(indices, task: str) -> dict[str, torch.Tensor]:
    tokens, targets = zip(*(make_example(i, task) for i in indices))
    n = len(indices)
    return {
        "tokens": torch.stack(tokens),
        "target": torch.stack(targets),
        "context": torch.zeros(n, SEGMENT_FRAMES, N_MELS),
        "context_mask": torch.zeros(n, SEGMENT_FRAMES, dtype=torch.bool),
    }


class BagOfTokens(torch.nn.Module):
    """The calibration baseline: token counts -> one linear map -> a static [256, 128] target."""

    def __init__(self) -> None:
        super().__init__()
        self.linear = torch.nn.Linear(NUM_EMBEDDINGS, N_MELS)
        with torch.no_grad():
            self.linear.weight.zero_()
            self.linear.bias.fill_(-1.0)  # the silent floor

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        counts = torch.zeros(tokens.shape[0], NUM_EMBEDDINGS).scatter_add_(
            1, tokens, torch.ones_like(tokens, dtype=torch.float32)
        )
        counts[:, 0] = 0  # PAD
        return self.linear(counts)[:, None, :].expand(-1, SEGMENT_FRAMES, -1)


def floor_error(task: str, val: dict[str, torch.Tensor], examples: int = 512) -> float:
    """Held-out MSE of the best prediction that ignores the notes: the mean training target of each
    (frame, bin), over ``examples`` training segments. A model beats it only by using the notes."""
    mean = torch.stack([make_example(i, task)[1] for i in range(examples)]).mean(0)
    return float(((mean - val["target"]) ** 2).mean())


@torch.no_grad()
def init_shift_embeddings(model: SpectrogramDiffusionModel) -> None:
    """Shift token ``k`` (absolute time ``k`` x 10 ms) starts as the decoder's position row of frame
    ``k // 2``: the frames and the tokens of one instant then begin with the same code."""
    table = model.decoder.position_encoding.weight
    embeddings = model.notes_encoder.token_embedder.weight
    steps = torch.arange(SEGMENT_FRAMES * STEPS_PER_FRAME)
    embeddings[SHIFT_ID + steps] = table[steps // STEPS_PER_FRAME]


def direct_prediction(
    model: SpectrogramDiffusionModel, batch, tokens: torch.Tensor, noise: torch.Tensor
) -> torch.Tensor:
    """The model's output from pure noise at ``DIRECT_TIME`` for ``tokens`` (trimmed by the caller)."""
    t = torch.full((tokens.shape[0],), DIRECT_TIME)
    return model(tokens, batch["context"], batch["context_mask"], noise, t)


@torch.no_grad()
def held_out_errors(model, val, noise, times, objective: str) -> tuple[float, float]:
    """(error with the notes, error with no notes) on the held-out batch."""
    model.eval()
    errors = []
    for keep in (True, False):
        tokens = val["tokens"] * int(keep)
        if objective == "direct":
            tokens = trim_token_padding(tokens)
            errors.append(float(((direct_prediction(model, val, tokens, noise) - val["target"]) ** 2).mean()))
        else:
            keeps = torch.full((tokens.shape[0],), keep)
            errors.append(float(diffusion_loss(model, val, times, noise, keeps).loss_mean))
    model.train()
    return errors[0], errors[1]


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--task", choices=("static", "timed"), default="static")
    parser.add_argument("--objective", choices=("direct", "diffusion"), default="direct")
    parser.add_argument("--preset", default="tiny", help="model preset (default tiny)")
    parser.add_argument("--d-model", type=int, default=128, help="override d_model (0: the preset's; default 128)")
    parser.add_argument("--layers", type=int, default=2, help="override num_layers (0: the preset's; default 2)")
    parser.add_argument("--steps", type=int, default=1500)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--lr", type=float, default=1e-3, help="AdamW learning rate (default 1e-3)")
    parser.add_argument("--embedding-lr-scale", type=float, default=20.0)
    parser.add_argument("--every", type=int, default=250)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--val", type=int, default=32, help="held-out segments (default 32)")
    parser.add_argument(
        "--shift-init",
        choices=("random", "position"),
        default="random",
        help="position: start each shift token's embedding at the decoder's position row of its frame",
    )
    parser.add_argument(
        "--guide",
        type=float,
        default=0.0,
        help="direct objective: add this weight x the guided cross-attention penalty per frame "
        "(specdiff.training.guided_attention, first head, onsets)",
    )
    parser.add_argument(
        "--aligned",
        action="store_true",
        help="frame-aligned score conditioning: the decoder also gets the roll of the tokens",
    )
    parser.add_argument(
        "--output-init",
        choices=OUTPUT_INITS,
        default="default",
        help="zero: the decoder's output layer starts at zero (default: T5X fan-in, the original)",
    )
    parser.add_argument("--out-bias", action="store_true", help="a bias on the decoder's output layer")
    parser.add_argument(
        "--prediction-type",
        choices=("epsilon", "v_prediction", "sample"),
        default="epsilon",
        help="diffusion objective: what the decoder predicts (direct always regresses the target)",
    )
    parser.add_argument("--out", type=Path, help="write the curve as JSON")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)

    overrides = {}
    if args.d_model:
        overrides.update(d_model=args.d_model, num_heads=max(1, args.d_model // 64), d_ff=2 * args.d_model)
    if args.layers:
        overrides["num_layers"] = args.layers
    if args.aligned:
        overrides["score_roll_features"] = ROLL_FEATURES
    # The direct objective regresses the target itself: the decoder's output is an x0 ("sample").
    overrides["prediction_type"] = "sample" if args.objective == "direct" else args.prediction_type
    overrides["spec_out_bias"] = args.out_bias
    model = SpectrogramDiffusionModel(*build_models(args.preset, seed=0, dropout_rate=0.0, **overrides))
    initialise_output(model.decoder, args.output_init)
    if args.shift_init == "position":
        init_shift_embeddings(model)
    optimizer = build_optimizer(model, "adamw", lr=args.lr, embedding_lr_scale=args.embedding_lr_scale)
    baseline = BagOfTokens() if args.task == "static" and args.objective == "direct" else None
    # The linear baseline starts at the silent floor and gets 10x the LR (one layer, no depth to tame).
    baseline_opt = torch.optim.AdamW(baseline.parameters(), lr=10 * args.lr) if baseline is not None else None

    val = make_batch(range(10_000_000, 10_000_000 + args.val), args.task)
    generator = torch.Generator().manual_seed(12345)
    val_noise = torch.randn(val["target"].shape, generator=generator)
    val_times = torch.linspace(0.3, 0.8, args.val)
    floor = floor_error(args.task, val) if args.objective == "direct" else None
    if floor is not None:
        print(f"floor (per-pixel mean target, ignores the notes): MSE {floor:.5f}", flush=True)
    curve = []
    started = time.perf_counter()
    for step in range(1, args.steps + 1):
        batch = make_batch(range(step * args.batch, (step + 1) * args.batch), args.task)
        generator = torch.Generator().manual_seed(step)
        noise = torch.randn(batch["target"].shape, generator=generator)
        if args.objective == "direct":
            tokens = trim_token_padding(batch["tokens"])
            recorder = CrossAttentionRecorder(model) if args.guide > 0 else None
            with recorder.recording() if recorder is not None else contextlib.nullcontext():
                loss = ((direct_prediction(model, batch, tokens, noise) - batch["target"]) ** 2).mean()
            if recorder is not None:  # the penalty is a sum over examples and frames: per frame here
                penalty = guided_attention_penalty(model, recorder, tokens, batch["context_mask"])
                loss = loss + args.guide * penalty / (tokens.shape[0] * SEGMENT_FRAMES)
        else:
            t = torch.rand(args.batch, generator=generator)
            keep = torch.rand(args.batch, generator=generator) >= 0.1
            loss = diffusion_loss(model, batch, t, noise, keep).loss_sum
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        if baseline is not None:
            baseline_loss = ((baseline(batch["tokens"]) - batch["target"]) ** 2).mean()
            baseline_opt.zero_grad(set_to_none=True)
            baseline_loss.backward()
            baseline_opt.step()
        if step % args.every == 0 or step == args.steps:
            with_notes, without = held_out_errors(model, val, val_noise, val_times, args.objective)
            row = {
                "step": step,
                "with_notes": with_notes,
                "no_notes": without,
                "seconds": time.perf_counter() - started,
            }
            if floor is not None:  # the share of the note-blind error that the notes removed
                row.update(floor=floor, gain=(floor - with_notes) / floor)
            if baseline is not None:
                with torch.no_grad():
                    row["bag_of_tokens"] = float(((baseline(val["tokens"]) - val["target"]) ** 2).mean())
            curve.append(row)
            print(json.dumps({k: round(v, 5) if isinstance(v, float) else v for k, v in row.items()}), flush=True)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps({"args": {k: str(v) for k, v in vars(args).items()}, "curve": curve}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
