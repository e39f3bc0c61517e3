"""Where does the score prior miss? Its mean log-mel against the target's on training windows, per kind
of frame, per timbre, and after drum hits by the frames since the hit.

The rows are the frames the additive prior's fit sees (``specdiff.training.prior_fit._prior_fit_rows``:
the first N windows of the cache's training split, padding left out). Each frame gets its kind from its
roll (``prior_fit.frame_kinds``: a tonal note sounds / one ended within 10 frames / a drum hit decays and
no tonal note is near / silent); "drums alone" frames are also grouped by the frames since the latest hit
(read off the drum decay envelope ``exp(-t / 5)``). For each group: how many frames, the target's mean
log-mel (natural log, over the 128 bins) and the model's score prior there (linear + additive + timbre
offset, the decoder's own ``prepare_cross_attention`` sum).

Why: an L1 fit over all frames weighs each kind by its share of the frames; drums alone are 0.5% of them,
and the prior there can sit far from the target without moving the fit's error
(``benchmarks/results/drum_decay_idioms_0130.md``).

Usage: python benchmarks/prior_frame_kinds.py MODEL_FOLDER --data CACHE [--windows 1500] --name NAME
Writes benchmarks/results/prior_frame_kinds_<name>.md.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from specdiff.atomic import atomic_write_text  # noqa: E402

SINCE_GROUPS = ((0, 2), (2, 5), (5, 10), (10, 15), (15, 21))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("model", help="a pipeline folder whose decoder has an additive score prior")
    parser.add_argument("--data", required=True, help="the feature cache (specdiff prepare)")
    parser.add_argument("--windows", type=int, default=1500)
    parser.add_argument("--seed", type=int, default=7, help="the training run's seed (which windows)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--name", required=True)
    args = parser.parse_args()

    import torch

    from specdiff.audio.mel import scale_to_features
    from specdiff.midi.score_roll import NUM_PITCHES, TONAL_FEATURES
    from specdiff.pipeline.pipeline import SpectrogramDiffusionPipeline
    from specdiff.training.batches import open_datasets
    from specdiff.training.config import TrainConfig
    from specdiff.training.prior_fit import FRAME_KINDS, _prior_fit_rows, frame_kinds

    torch.set_num_threads(args.threads)
    decoder = SpectrogramDiffusionPipeline.from_pretrained(args.model, inverter=None).decoder.float()
    if decoder.additive_prior is None:
        raise SystemExit(f"{args.model}: its decoder has no additive score prior")
    config = TrainConfig(data=args.data, seed=args.seed, steps=1, model={"timbres": decoder.timbres})
    train_set, _ = open_datasets(config)
    rolls, targets, timbres = _prior_fit_rows(decoder, train_set, args.windows, 64, True)
    kinds = frame_kinds(rolls)
    decay = rolls[:, TONAL_FEATURES + NUM_PITCHES : TONAL_FEATURES + 2 * NUM_PITCHES].float().amax(dim=1)
    since = (-5.0 * torch.log(decay.clamp(min=1e-9))).round()  # frames since the latest drum hit
    prior, target = torch.empty(len(rolls)), scale_to_features(targets).mean(dim=1)
    with torch.no_grad():
        linear, timbre_prior = decoder.score_prior_projection, decoder.timbre_prior
        for part in torch.arange(len(rolls)).split(8192):
            roll = rolls[part].float()
            estimate = roll @ linear.weight.float().T + linear.bias.float() + decoder.additive_prior(roll)
            if timbre_prior is not None:
                estimate = estimate + timbre_prior(timbres[part]).float()
            prior[part] = scale_to_features(estimate.clamp(-1.0, 1.0)).mean(dim=1)
    names = decoder.timbres or ["default"]
    lines = ["| frames | timbre | count | share | target | prior | prior - target |", "|---" * 7 + "|"]

    def add(label: str, chosen: torch.Tensor) -> None:
        for index, timbre in enumerate(names):
            rows = chosen & (timbres == index)
            if rows.any():
                t, p = float(target[rows].mean()), float(prior[rows].mean())
                lines.append(f"| {label} | {timbre} | {int(rows.sum())} | {float(rows.float().mean()):.2%} | "
                             f"{t:.2f} | {p:.2f} | {p - t:+.2f} |")  # fmt: skip

    for k, kind in enumerate(FRAME_KINDS):
        add(kind, kinds == k)
    alone = kinds == FRAME_KINDS.index("drums alone")
    for lo, hi in SINCE_GROUPS:
        add(f"drums alone, {lo}-{hi - 1} frames after the hit", alone & (since >= lo) & (since < hi))
    title = f"# The score prior per kind of frame: {Path(args.model).name} on {args.windows} training windows"
    note = (f"Made by `benchmarks/prior_frame_kinds.py {Path(args.model).name} --data CACHE --windows {args.windows}`; "
            "mean log-mel over the 128 bins, natural log; share: of all the frames.")  # fmt: skip
    text = "\n".join([title, "", *lines, "", note])
    atomic_write_text(ROOT / "benchmarks" / "results" / f"prior_frame_kinds_{args.name}.md", text + "\n")
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
