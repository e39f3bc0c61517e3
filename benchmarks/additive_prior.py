"""Linear or additive score prior? Both fitted on the same training windows, scored on validation windows.

The linear prior (``FilmDecoder``'s ``score_prior_projection``, ridge regression, ``prior_fit.fit_score_prior``)
adds the notes' log spectra; the additive one (``model.additive_prior``,
``specdiff.models.additive_prior``, fitted by ``prior_fit.fit_additive_prior``) sums their power
spectra and keeps a linear log-domain term beside it. Both fit the renders of every timbre together
(no per-timbre offsets) and see the roll of the bundled layout (shared
columns, context level, relative velocities). Scores, in natural-log mel units: x0 L1, the level error
(a frame's mean over the bands, ours minus the truth) per frame and per window, the quiet gap (that level
error on frames whose true mean is below -8 nat), and the level error on the *loud* frames (the 5% of
validation frames with the highest true mean level, and the 5% with the highest estimated level):
where a prior overshoots dense frames, the audio's peaks follow.

Usage:
  python benchmarks/additive_prior.py --data CACHE [--train 600] [--val 128] [--steps 400] [--name NAME]
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
from specdiff.audio.mel import scale_to_features  # noqa: E402
from specdiff.data.cache import ChunkDataset  # noqa: E402
from specdiff.midi.score_roll import VELOCITY_ROLL_FEATURES  # noqa: E402
from specdiff.models.decoder import FilmDecoder  # noqa: E402
from specdiff.training.batches import collate_counted  # noqa: E402
from specdiff.training.objective import _valid_rows, decoder_score_roll  # noqa: E402
from specdiff.training.prior_fit import fit_additive_prior, fit_score_prior  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results"
QUIET_NAT = -8.0
LOUD_SHARE = 0.05
SMALL = dict(d_model=32, num_layers=1, num_heads=2, d_kv=16, d_ff=48)  # the network is not used: priors only


def decoder(additive: bool, timbres: list[str]) -> FilmDecoder:
    return FilmDecoder(**SMALL, score_roll_features=VELOCITY_ROLL_FEATURES, prediction_type="edm", score_prior=True,
                       additive_prior=additive, timbres=timbres)  # fmt: skip


@torch.no_grad()
def estimates(model: FilmDecoder, dataset: ChunkDataset, count: int) -> tuple[torch.Tensor, torch.Tensor, list[int]]:
    """The prior's estimate and the target (natural-log mel) of the valid frames of ``count`` windows."""
    guesses, truths, lengths = [], [], []
    for start in range(0, count, 32):
        batch = collate_counted([(i, dataset[i]) for i in range(start, min(count, start + 32))])
        roll = decoder_score_roll(
            model, batch["tokens"], batch["context"], batch["context_mask"], batch.get("velocity")
        )
        layer = model.score_prior_projection
        prior = roll @ layer.weight.T + layer.bias
        if model.additive_prior is not None:
            prior = prior + model.additive_prior(roll)
        if model.timbre_prior is not None and "timbre" in batch:
            prior = prior + model.timbre_prior(batch["timbre"])[:, None, :]
        keep = _valid_rows(batch, True)
        guess, truth = prior.flatten(0, 1), batch["target"].flatten(0, 1)
        if keep is not None:
            guess, truth = guess[keep], truth[keep]
        guesses.append(scale_to_features(guess, clip=True))
        truths.append(scale_to_features(truth))
        valid = batch.get("target_valid")
        lengths += [int(v) for v in valid] if valid is not None else [batch["target"].shape[1]] * len(batch["target"])
    return torch.cat(guesses).double(), torch.cat(truths).double(), lengths


def scores(guess: torch.Tensor, truth: torch.Tensor, lengths: list[int]) -> dict[str, float]:
    level = (guess - truth).mean(dim=1)
    true_level, guess_level = truth.mean(dim=1), guess.mean(dim=1)
    loud = max(1, int(LOUD_SHARE * len(level)))
    quiet = true_level < QUIET_NAT
    return {
        "x0_l1_nat": float((guess - truth).abs().mean()),
        "frame_level_error_nat": float(level.abs().mean()),
        "window_level_error_nat": float(np.mean([float(p.mean().abs()) for p in torch.split(level, lengths)])),
        "quiet_gap_nat": float(level[quiet].mean()) if bool(quiet.any()) else float("nan"),
        "loud_true_gap_nat": float(level[true_level.topk(loud).indices].mean()),
        "loud_estimate_gap_nat": float(level[guess_level.topk(loud).indices].mean()),
        "frames": len(level),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", required=True)
    parser.add_argument("--train", type=int, default=600)
    parser.add_argument("--val", type=int, default=128)
    parser.add_argument("--steps", type=int, default=400, help="Adam steps of the additive fit")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--name", default="additive_prior")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    train = ChunkDataset(args.data, seed=0, split="train")
    val = ChunkDataset(args.data, seed=1, split="validation")
    timbres: list[str] = []  # both priors without the per-timbre offsets (the ridge fit has none): the same footing
    result: dict = {"data": args.data, "train_windows": args.train, "val_windows": args.val, "steps": args.steps}
    rows = []
    for label, additive in (("linear (ridge)", False), ("additive + linear", True)):
        torch.manual_seed(0)
        model = decoder(additive, timbres)
        started = time.time()
        if additive:
            fit_additive_prior(model, train, args.train, args.steps, mask_padding=True)
        else:
            fit_score_prior(model, train, args.train, mask_padding=True)
        seconds = time.time() - started
        result[label] = {**scores(*estimates(model, val, args.val)), "fit_seconds": seconds}
        print(label, result[label], flush=True)
        rows.append(label)
    atomic_write_text((RESULTS / args.name).with_suffix(".json"), json.dumps(result, indent=1))
    lines = [f"Score priors fitted on {args.train} training windows of `{args.data}` (validation: {args.val} windows; "
             f"`python benchmarks/additive_prior.py --data CACHE --train {args.train} --val {args.val} --steps "
             f"{args.steps}`), natural-log mel units.", "",
             "| prior | x0 L1 | frame level error | window level error | quiet gap | loudest 5% (truth) gap "
             "| loudest 5% (estimate) gap | fit s |", "|---|---|---|---|---|---|---|---|"]  # fmt: skip
    for label in rows:
        r = result[label]
        lines.append(f"| {label} | {r['x0_l1_nat']:.3f} | {r['frame_level_error_nat']:.3f} | "
                     f"{r['window_level_error_nat']:.3f} | {r['quiet_gap_nat']:+.2f} | {r['loud_true_gap_nat']:+.2f} | "
                     f"{r['loud_estimate_gap_nat']:+.2f} | {r['fit_seconds']:.0f} |")  # fmt: skip
    atomic_write_text((RESULTS / args.name).with_suffix(".md"), "\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
