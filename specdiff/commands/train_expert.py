"""``specdiff train-expert``: train a model folder's low-noise expert (specdiff/models/low_noise_expert.py).

Light to import (the parser is built without torch); :func:`run_train_expert` imports the training code.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from specdiff.errors import SpecdiffError


def add_train_expert_arguments(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """The ``train-expert`` subcommand."""
    parser = subparsers.add_parser(
        "train-expert",
        help="train a model folder's low-noise expert denoiser (the rest frozen)",
        description=(
            "Train the small convolutional denoiser that takes over from the decoder's transformer below a "
            "noise time (decoder options low_noise_expert_channels / low_noise_expert_below), with the "
            "model's networks frozen, on the training split of a feature cache, and write MODEL with the "
            "expert as a new model folder. The run folder keeps the priors of the training windows and a "
            "checkpoint written atomically; run the same command again to resume."
        ),
    )
    parser.add_argument("model", help="model folder to add the expert to (e.g. the bundled one)")
    parser.add_argument("cache", help="feature cache (specdiff prepare); its train split is used")
    parser.add_argument("--run-dir", required=True, help="run folder (pairs, checkpoint, settings)")
    parser.add_argument("-o", "--out", required=True, help="model folder to write (MODEL with the expert)")
    parser.add_argument("--steps", type=int, default=3000, help="training steps (default 3000)")
    parser.add_argument("--windows", type=int, default=1024, help="training windows (default 1024)")
    parser.add_argument("--channels", type=int, default=32, help="conv channels (default 32)")
    parser.add_argument("--below", type=float, default=0.9,
                        help="noise time below which the expert denoises (default 0.9)")  # fmt: skip
    parser.add_argument("--lr", type=float, default=2e-3, help="peak learning rate (one-cycle; default 2e-3)")
    parser.add_argument("--anchor", choices=("prior", "estimate"), default="prior",
                        help="what the expert denoises around: the score prior (default) or the network's own "
                             "estimate at the sampler's first step")  # fmt: skip
    parser.add_argument(
        "--score-planes",
        action="store_true",
        help="give the expert the score's onset (on the notes' harmonics), drum and silence planes",
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.set_defaults(func=run_train_expert)
    return parser


def run_train_expert(args: argparse.Namespace) -> int:
    """Train, then write the model folder with the expert (float32 weights, the source's sampling settings)."""
    from specdiff.data.cache import open_training_datasets
    from specdiff.pipeline.folder import is_model_folder
    from specdiff.pipeline.pipeline import SpectrogramDiffusionPipeline
    from specdiff.training.batches import decoder_dataset_options
    from specdiff.training.low_noise_expert import ExpertTrainSettings, decoder_with_expert, train_low_noise_expert
    from specdiff.training.objective import SpectrogramDiffusionModel

    if not is_model_folder(args.model):
        raise SpecdiffError(f"not a model folder: {args.model}")
    if args.steps <= 0 or args.windows <= 0 or args.channels <= 0 or not 0.0 < args.below <= 1.0:
        raise SpecdiffError("--steps, --windows and --channels must be > 0 and --below in (0, 1]")
    settings = ExpertTrainSettings(channels=args.channels, below=args.below, steps=args.steps,
                                   windows=args.windows, learning_rate=args.lr, seed=args.seed,
                                   anchor=args.anchor, planes=args.score_planes)  # fmt: skip
    pipe = SpectrogramDiffusionPipeline.from_pretrained(args.model, inverter=None)
    model = SpectrogramDiffusionModel(pipe.notes_encoder, pipe.continuous_encoder, pipe.decoder).eval()
    for parameter in model.parameters():
        parameter.requires_grad_(False)
    train_set, _ = open_training_datasets(args.cache, **decoder_dataset_options(pipe.decoder))
    expert = train_low_noise_expert(model, train_set, settings, args.run_dir)
    pipe.decoder = decoder_with_expert(pipe.decoder, expert, args.below, args.anchor)
    out = pipe.save_pretrained(Path(args.out))
    print(f"wrote {out}")
    return 0
