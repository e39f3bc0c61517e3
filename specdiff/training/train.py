"""Training: the diffusion objective (ORIGINAL.md §4.1-4.2), configs, the loop, checkpoints, DDP, export.

Run it as ``specdiff train --data CACHE_DIR --out runs/x`` (or ``python -m specdiff train ...``),
or under ``torchrun --nproc_per_node N -m specdiff train ...`` for data-parallel training (NCCL on
GPU, gloo on CPU). The command line (arguments, ``run_train``, ``run_export``) lives in the light
``specdiff.commands.train``, which imports this module (never the reverse).

Determinism. Training example number ``c`` (a global sample counter, advanced by the global batch each
step) reads dataset item ``c % len(dataset)`` and draws its diffusion time, noise and CFG drop from a
generator seeded by ``(seed, c)``. So the data and the objective's randomness depend only on the
counter, not on the number of processes or on gradient accumulation; only dropout uses the global
torch RNG (seeded per rank, saved in checkpoints). A run killed at any point and resumed from its last
checkpoint reproduces the uninterrupted loss curve (bit for bit on CPU with the same thread count).

Loss reduction (ORIGINAL.md §4.1). The original sums the L1 error over the batch, time and mel bins. We
optimise exactly that sum over the *global* batch: with gradient accumulation the micro-batch sums
are added, and under DDP (which averages gradients) the per-process loss is multiplied by the world
size. Adafactor and Adam normalise the gradient scale away, so the summed loss needs no LR change
(LR 1e-3 as in the original). For logging we also report the per-element mean.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import os
import sys
import time
import types
import typing
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor, nn

from specdiff.atomic import atomic_write_text
from specdiff.constants import N_MELS, SEGMENT_FRAMES, TOKENS_LENGTH
from specdiff.errors import ModelError, SpecdiffError
from specdiff.hardware import cpu_has_native_bf16
from specdiff.midi.score_roll import batch_rolls
from specdiff.models.networks import (
    INPUT_SKIP_KNOTS,
    ZERO_STARTED_DECODER_PARAMETERS,
    ContinuousEncoder,
    FilmDecoder,
    NotesEncoder,
    build_models,
    noisy_residual,
)
from specdiff.sampling.diffusion import (
    alpha_sigma,
    eps_from_prediction,
    logsnr,
    posterior,
    predict_x0,
    prediction_target,
    q_sample,
    x0_from_prediction,
)
from specdiff.training.checkpoints import (
    CHECKPOINT_FORMAT,
    capture_rng_state,
    checkpoint_dir,
    list_checkpoints,
    load_checkpoint,
    restore_rng_state,
    save_checkpoint,
    seed_everything,
)
from specdiff.training.distributed import _all_reduce_sum, init_distributed
from specdiff.training.log import MetricsLog, save_spectrogram_comparison
from specdiff.training.optim import EMA, build_optimizer

TARGET_FRAMES = SEGMENT_FRAMES

# ---------------------------------------------------------------------------------------------
# Configuration
# ---------------------------------------------------------------------------------------------


@dataclass
class TrainConfig:
    """Everything that defines a run. Every field can be set from the command line (``--set key=value``)."""

    # model (sizes from specdiff.models.networks.PRESETS; `model` holds build_models overrides such as d_model)
    preset: str = "tiny"
    model: dict[str, Any] = field(default_factory=dict)
    dropout: float = 0.1  # ORIGINAL.md §4.3
    # "default" (T5X fan-in, the original) or "zero": the decoder's output layer starts at zero (its
    # bias, with model.spec_out_bias=true, at the silence floor -1 for prediction_type "sample").
    # Initialisation only: benchmarks/results/trainability.md measures why it matters.
    output_init: str = "default"
    # N > 0 (decoders with model.score_prior=true; new runs and warm starts, which it refits): fit the
    # score prior in closed form (ridge regression of the target on the roll's shared columns) on N
    # training windows before step 1.
    score_prior_fit: int = 0
    # N > 0 (decoders with model.input_skip_frames, new runs and warm starts): fit the input_skip maps in
    # closed form on N training windows before step 1 (train.fit_input_skip).
    input_skip_fit: int = 0
    # data
    data: str | None = None  # feature cache folder for specdiff.data.cache.ChunkDataset, or "synthetic"
    val_data: str | None = None  # held-out cache; default: the validation split of `data`
    val_examples: int = 16
    num_workers: int = 0
    # objective (ORIGINAL.md §4.1)
    cfg_drop_prob: float = 0.1
    loss_weighting: str = "none"  # "none" (the original), "min_snr" or "x0" (see loss_weights)
    # True: target frames past the piece end (padding, -1) count in neither the loss nor the
    # closed-form fits. The original trains on them; but the tokens of such a window leave its notes
    # sounding to the window's end (no note-off before the cut), so the padding teaches "a held note
    # may be silent": 7.6% of validation frames, and the score prior's log-mel L1 on real frames
    # drops 1.77 -> 1.55 nat without them (benchmarks/results/silence.md).
    mask_padding: bool = False
    min_snr_gamma: float = 5.0  # min_snr: the SNR cap; x0: the cap of the weight sigma/alpha
    # > 0: add this times the guided cross-attention penalty (specdiff.training.guided_attention; 0 = original)
    guided_attention: float = 0.0
    guided_attention_heads: int = 1
    guided_attention_sigma: float = 4.0  # frames
    guided_attention_target: str = "onsets"  # "onsets" (events near the frame) or "notes" (notes sounding then)
    # > 0: this fraction of each batch is trained on the inputs the sampler itself produces (exposure
    # bias, Ning et al. 2023): t is a step time k/N of an N-step sampler (N from rollout_steps), and
    # z_t is one deterministic DDIM step of the model (no gradient) from the data noised to (k+1)/N,
    # instead of the data noised to t. The model so learns to correct its own previous step, which is
    # what makes more steps help (benchmarks/results/steps_recipe.md). 0 = the original objective.
    rollout_prob: float = 0.0
    rollout_steps: str = "4,16"  # comma-separated step counts whose time grids rolled-out rows use
    # > 0: train (and validate) only on noise times in [min_noise_time, 1), and roll out on the grids of
    # a DDIM sampler that ends there (sampling.json's final_noise_time, specdiff.sampling.sampler.DDIMSampler):
    # the model's capacity goes to the noise levels its shipped sampler visits. 0 = the original U[0, 1).
    min_noise_time: float = 0.0
    # > 0: this fraction of the examples (besides the CFG drop) trains with an empty context, as the first
    # segment of every song is synthesized. The original's windows (ORIGINAL.md §4.2) have an empty
    # context only when they start exactly at a piece start (~0.05% of them), so without this the
    # first segment is nearly unseen (measured: it comes out 2-6 dB louder than the render).
    context_drop_prob: float = 0.0
    trim_tokens: bool = True  # run the notes encoder only up to the batch's last real token (exact: PAD is masked)
    # optimisation (ORIGINAL.md §4.3)
    optimizer: str = "adafactor"  # or "adamw"
    lr: float = 1e-3
    # 0: constant LR (the original). N > 0: the LR falls linearly to 0 over the run's last N steps
    # (a cool-down; restarting a run with a larger `steps` and this set starts one from any point).
    lr_decay_steps: int = 0
    embedding_lr_scale: float = 1.0  # LR multiplier of the token embedding table (1 = the original)
    adam_beta1: float = 0.9
    adam_beta2: float = 0.999
    weight_decay: float = 0.0
    batch_size: int = 8  # global batch per optimiser step (all processes, all micro-batches)
    micro_batch_size: int = 0  # per process and forward pass; 0: batch_size // world_size (no accumulation)
    steps: int = 20_000
    ema_decay: float = 0.999
    ema_warmup: bool = True
    # hardware
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    bf16: bool = True  # bf16 autocast on CUDA and on CPUs with native bf16 matmuls (cpu_has_native_bf16)
    num_threads: int = 0  # torch intra-op threads; 0 leaves torch's default
    # bookkeeping
    out_dir: str = "runs/specdiff"
    seed: int = 0
    log_every: int = 10
    val_every: int = 500
    sample_every: int = 2000
    sample_steps: int = 50
    ckpt_every: int = 500
    keep_checkpoints: int = 3
    tensorboard: bool = True
    # warm start: a fresh run (no checkpoint to resume) starts from this checkpoint's weights and EMA
    # with a new optimiser and step 0, e.g. to switch optimiser or learning rate mid-way
    init_from: str | None = None

    @classmethod
    def from_preset(cls, name: str, **overrides: Any) -> TrainConfig:
        if name not in TRAIN_PRESETS:
            raise SpecdiffError(f"unknown training preset {name!r}; choose one of {sorted(TRAIN_PRESETS)}")
        return cls(**{**TRAIN_PRESETS[name], **overrides})

    def replace(self, **changes: Any) -> TrainConfig:
        return dataclasses.replace(self, **changes)


#: ``tiny`` trains on a 2-core laptop CPU; ``small`` and ``base`` are the released sizes with the
#: original optimisation (batch 256, 500k steps, ORIGINAL.md §4.3), split into micro-batches that fit one GPU.
TRAIN_PRESETS: dict[str, dict[str, Any]] = {
    "tiny": dict(preset="tiny", batch_size=8, steps=20_000, val_every=500, sample_every=2000, ckpt_every=500),
    "small": dict(
        preset="small", batch_size=256, micro_batch_size=64, steps=500_000, val_every=5000, sample_every=10_000,
        ckpt_every=2000, log_every=50, val_examples=64, num_workers=4,
    ),
    "base": dict(
        preset="base", batch_size=256, micro_batch_size=32, steps=500_000, val_every=5000, sample_every=10_000,
        ckpt_every=2000, log_every=50, val_examples=64, num_workers=4,
    ),
}  # fmt: skip


def _parse_value(text: str, annotation: Any, key: str) -> Any:
    """Parse ``text`` for a field annotated ``annotation`` (int, float, bool, str, optional str)."""
    origin = typing.get_origin(annotation)
    options = typing.get_args(annotation) if origin in (typing.Union, types.UnionType) else ()
    if options:
        if text.lower() in ("none", "null", "") and type(None) in options:
            return None
        annotation = next(t for t in options if t is not type(None))
    try:
        if annotation is bool:
            if text.lower() in ("1", "true", "yes", "on"):
                return True
            if text.lower() in ("0", "false", "no", "off"):
                return False
            raise ValueError(text)
        if annotation in (int, float, str):
            return annotation(text)
    except ValueError:
        raise SpecdiffError(f"bad value {text!r} for {key} (expected {annotation.__name__})") from None
    raise SpecdiffError(f"{key} cannot be set from the command line")


def _parse_model_value(text: str, key: str = "") -> Any:
    if key == "timbres":  # a list of names: "TimGM6mb,FluidR3_GM"
        return [name.strip() for name in text.split(",") if name.strip()]
    if text.lower() in ("true", "false"):
        return text.lower() == "true"
    for cast in (int, float):
        try:
            return cast(text)
        except ValueError:
            pass
    return text


def apply_overrides(config: TrainConfig, assignments: Sequence[str]) -> TrainConfig:
    """Apply ``key=value`` strings: a TrainConfig field, or ``model.<kwarg>`` for a build_models override."""
    hints = typing.get_type_hints(TrainConfig)
    changes: dict[str, Any] = {}
    model = dict(config.model)
    for item in assignments:
        key, sep, value = item.partition("=")
        key = key.strip().replace("-", "_")
        if not sep:
            raise SpecdiffError(f"--set expects key=value, got {item!r}")
        if key.startswith("model."):
            model[key[len("model.") :]] = _parse_model_value(value, key[len("model.") :])
        elif key in hints and key != "model":
            changes[key] = _parse_value(value, hints[key], key)
        else:
            raise SpecdiffError(f"unknown training setting {key!r}")
    return config.replace(model=model, **changes)


# ---------------------------------------------------------------------------------------------
# The model as one module (so DDP sees one forward) and the objective
# ---------------------------------------------------------------------------------------------


class SpectrogramDiffusionModel(nn.Module):
    """The three networks; ``forward`` runs both encoders and the decoder and returns the eps prediction."""

    def __init__(self, notes_encoder: NotesEncoder, continuous_encoder: ContinuousEncoder, decoder: FilmDecoder):
        super().__init__()
        self.notes_encoder = notes_encoder
        self.continuous_encoder = continuous_encoder
        self.decoder = decoder

    def configs(self) -> dict[str, dict[str, Any]]:
        return {name: dict(getattr(self, name).config) for name in ("notes_encoder", "continuous_encoder", "decoder")}

    @classmethod
    def from_configs(cls, configs: Mapping[str, Mapping[str, Any]]) -> SpectrogramDiffusionModel:
        return cls(
            NotesEncoder.from_config(dict(configs["notes_encoder"])),
            ContinuousEncoder.from_config(dict(configs["continuous_encoder"])),
            FilmDecoder.from_config(dict(configs["decoder"])),
        )

    def encode(self, tokens: Tensor, context: Tensor, context_mask: Tensor) -> list[tuple[Tensor, Tensor]]:
        # The notes mask is `tokens > 0` (ORIGINAL.md §3.2), so CFG-dropped examples (all PAD) are fully masked.
        return [self.notes_encoder(tokens, tokens > 0), self.continuous_encoder(context, context_mask)]

    def forward(
        self, tokens: Tensor, context: Tensor, context_mask: Tensor, z_t: Tensor, t: Tensor,
        timbre: Tensor | None = None,
    ) -> Tensor:  # fmt: skip
        """The decoder's output (its ``prediction_type``) for ``z_t``; a score-conditioned decoder
        gets the roll of these ``tokens`` (all-PAD rows, CFG-dropped, get an all-zero roll), a
        timbre-conditioned one the ``timbre`` indices ``[B]`` (None: the default timbre)."""
        encodings = self.encode(tokens, context, context_mask)
        return self.decoder(encodings, z_t, t, score_roll=self.score_roll(tokens), timbre=timbre)

    def score_roll(self, tokens: Tensor) -> Tensor | None:
        """The frame-aligned roll of a token batch, or None for the original architecture."""
        if not self.decoder.score_roll_features:
            return None
        return batch_rolls(tokens, self.decoder.config["targets_length"], self.decoder.score_roll_features)


OUTPUT_INITS = ("default", "zero")


@torch.no_grad()
def initialise_output(decoder: FilmDecoder, how: str) -> None:
    """``how="zero"``: zero the output layer, so the first updates fit the target's mean and
    structure instead of fighting a random initial output (benchmarks/results/trainability.md);
    a bias starts at the target's silence floor for an x0 ("sample") prediction, else at 0."""
    if how not in OUTPUT_INITS:
        raise SpecdiffError(f"unknown output_init {how!r}; choose one of {', '.join(OUTPUT_INITS)}")
    if how == "default":
        return
    decoder.spec_out.weight.zero_()
    if decoder.spec_out.bias is not None:
        decoder.spec_out.bias.fill_(-1.0 if decoder.prediction_type == "sample" else 0.0)


def padding_mask(target_valid: Tensor, frames: int) -> Tensor:
    """``[B, frames]`` bool: True on the target frames before the piece end (``target_valid`` [B])."""
    return torch.arange(frames, device=target_valid.device)[None, :] < target_valid[:, None]


def _valid_rows(batch: Mapping[str, Tensor], mask_padding: bool) -> Tensor | None:
    """The flattened ``[B * T]`` frame mask of a batch for the closed-form fits (None: every frame)."""
    if not mask_padding or "target_valid" not in batch:
        return None
    return padding_mask(batch["target_valid"], batch["target"].shape[1]).flatten()


def collated_windows(dataset: Any, indices: range, batch_size: int = 64) -> Iterator[dict[str, Tensor]]:
    """Items ``indices`` of ``dataset`` as collated batches (:func:`collate_counted`) of at most ``batch_size``."""
    for start in range(0, len(indices), batch_size):
        yield collate_counted([(i, dataset[i]) for i in indices[start : start + batch_size]])


@torch.no_grad()
def ridge_regression(pairs: Iterable[tuple[Tensor, Tensor]], ridge: float) -> Tensor:
    """Closed-form ridge fit of ``y`` on ``[x, 1]`` from batches of rows ``(x [N, D], y [N, K])``,
    accumulated as normal equations in float64. Returns ``[D + 1, K]``: the weights, then the
    intercept (which is not shrunk)."""
    gram = xty = None
    for x, y in pairs:
        x = torch.cat([x.double(), torch.ones(len(x), 1, dtype=torch.float64)], dim=1)
        y = y.double()
        gram = x.T @ x if gram is None else gram + x.T @ x
        xty = x.T @ y if xty is None else xty + x.T @ y
    if gram is None:
        raise SpecdiffError("ridge regression needs at least one row")
    shrink = torch.full((gram.shape[0],), float(ridge), dtype=gram.dtype)
    shrink[-1] = 0.0
    return torch.linalg.solve(gram + torch.diag(shrink), xty)


@torch.no_grad()
def fit_score_prior(
    decoder: FilmDecoder,
    dataset: Any,
    windows: int,
    ridge: float = 10.0,
    batch_size: int = 64,
    mask_padding: bool = False,
) -> float:
    """Set ``decoder.score_prior_projection`` to the ridge-regression fit of each frame's target log-mel
    on its roll, over the first ``windows`` items of ``dataset``. Only the roll's shared columns (per
    pitch, per family, drums: ~700) are fitted, the per-(family, pitch) ones stay at zero, so the
    normal equations stay small; the bias takes the intercept. Returns the fit's mean absolute error
    (scaled units) on the first (up to) 256 of those windows. Why: the decoder learns the frame-local
    roll -> spectrogram map slowly on real data, a closed-form fit of it is cheap
    (``benchmarks/roll_ridge.py``). ``mask_padding``: frames past the piece end are left out."""
    from specdiff.midi.score_roll import TONAL_FEATURES

    def rows(batch: Mapping[str, Tensor]) -> tuple[Tensor, Tensor]:
        x = batch_rolls(batch["tokens"], frames, features)[..., TONAL_FEATURES:].flatten(0, 1)
        y, keep = batch["target"].flatten(0, 1), _valid_rows(batch, mask_padding)
        return (x, y) if keep is None else (x[keep], y[keep])

    layer = decoder.score_prior_projection
    if layer is None:
        raise SpecdiffError("score_prior_fit needs a decoder with score_prior=true")
    frames, features = decoder.config["targets_length"], decoder.score_roll_features
    solution = ridge_regression(
        (rows(b) for b in collated_windows(dataset, range(windows), batch_size)), ridge
    )  # [shared columns + 1, 128]
    layer.weight.zero_()
    layer.weight[:, TONAL_FEATURES:] = solution[:-1].T.to(layer.weight.dtype)
    layer.bias.copy_(solution[-1].to(layer.bias.dtype))
    error, count = 0.0, 0
    for batch in collated_windows(dataset, range(min(windows, 4 * batch_size)), batch_size):
        prior = decoder.project_score_roll(batch_rolls(batch["tokens"], frames, features), layer.weight) + layer.bias
        difference, keep = (prior - batch["target"]).abs().flatten(0, 1), _valid_rows(batch, mask_padding)
        difference = difference if keep is None else difference[keep]
        error += float(difference.sum())
        count += difference.numel()
    return error / max(count, 1)


@torch.no_grad()
def fit_input_skip(
    model: SpectrogramDiffusionModel,
    dataset: Any,
    windows: int,
    ridge: float = 1.0,
    batch_size: int = 16,
    mask_padding: bool = False,
) -> list[tuple[float, float, float]]:
    """Fit the decoder's ``input_skip`` maps in closed form: per knot of
    :data:`specdiff.models.networks.INPUT_SKIP_KNOTS`, the ridge regression (no intercept) of what the rest of
    the network misses, ``prediction_target - F``, on a window of the noisy residual
    ``z - alpha_t p`` around each frame, over the first ``windows`` items of ``dataset`` (one noise
    draw each; knot 0 is fitted at t = 0.02, a knot at t = 1 stays zero). Returns, per knot, ``(t, L1 before,
    L1 after)`` of the output on those windows. Why: the network does not learn this map by gradient
    steps (``benchmarks/results/noise_response.md``), and the linear fit is cheap and exact.
    ``mask_padding``: frames past the piece end are left out."""
    decoder = model.decoder
    layer = decoder.input_skip
    if layer is None:
        raise SpecdiffError("input_skip_fit needs a decoder with input_skip_frames > 0")
    channels, width = decoder.config["input_dims"], layer.kernel_size[0]
    layer.weight.zero_()
    was_training = model.training
    model.eval()  # no dropout in the fitted network's output
    batches = []
    for batch in collated_windows(dataset, range(windows), batch_size):
        tokens = trim_token_padding(batch["tokens"])
        encodings = model.encode(tokens, batch["context"], batch["context_mask"])
        timbre = batch.get("timbre") if decoder.timbres else None
        cache = decoder.prepare_cross_attention(encodings, model.score_roll(tokens), timbre)
        batches.append((batch, cache))
    generator = torch.Generator().manual_seed(0)
    report = []
    for knot, knot_time in enumerate(INPUT_SKIP_KNOTS):
        if knot_time >= 1.0:
            continue  # pure noise says nothing about x0: that map stays zero
        fit_time = max(knot_time, 0.02)
        rows = []
        gram = torch.zeros(channels * width, channels * width, dtype=torch.float64)
        xty = torch.zeros(channels * width, channels, dtype=torch.float64)
        for batch, cache in batches:
            x0 = batch["target"]
            t = torch.full((x0.shape[0],), fit_time)
            noise = torch.randn(x0.shape, generator=generator)
            z = q_sample(x0, t, noise)
            miss = prediction_target(x0, noise, t, "edm", z) - decoder(None, z, t, cross_cache=cache).float()
            features = _frame_windows(noisy_residual(z, t, cache.frame_prior), width).double()
            miss = miss.reshape(-1, channels)
            keep = _valid_rows(batch, mask_padding)
            if keep is not None:
                features, miss = features[keep], miss[keep]
            gram += features.T @ features
            xty += features.T @ miss.double()
            rows.append((features, miss))
        solution = torch.linalg.solve(gram + ridge * torch.eye(gram.shape[0], dtype=torch.float64), xty)
        # feature index c * width + f is input channel c at offset f, as Conv1d's weight[out, c, f]
        block = solution.T.reshape(channels, channels, width)
        layer.weight[knot * channels : (knot + 1) * channels] = block.to(layer.weight.dtype)
        before = sum(float(miss.abs().sum()) for _, miss in rows) / sum(miss.numel() for _, miss in rows)
        after = sum(float((miss.double() - f @ solution).abs().sum()) for f, miss in rows)
        report.append((fit_time, before, after / sum(miss.numel() for _, miss in rows)))
    model.train(was_training)
    return report


def _frame_windows(x: Tensor, width: int) -> Tensor:
    """``[B, T, C]`` -> ``[B * T, C * width]``: each frame's window of ``width`` frames (zero padded),
    ordered channel-major as a Conv1d weight ``[out, C, width]`` reads it."""
    padded = torch.nn.functional.pad(x.transpose(1, 2), (width // 2, width // 2))
    return padded.unfold(2, width, 1).permute(0, 2, 1, 3).reshape(-1, x.shape[2] * width)


def _splitmix64(x: int) -> int:
    x = (x + 0x9E3779B97F4A7C15) & 0xFFFFFFFFFFFFFFFF
    x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & 0xFFFFFFFFFFFFFFFF
    x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & 0xFFFFFFFFFFFFFFFF
    return (x ^ (x >> 31)) & 0x7FFFFFFFFFFFFFFF


def example_seed(seed: int, counter: int) -> int:
    """A well-mixed 63-bit seed for training example ``counter`` of a run seeded ``seed``."""
    return _splitmix64(_splitmix64(seed) ^ counter)


def draw_diffusion_inputs(
    counters: Sequence[int] | Tensor,
    seed: int,
    drop_prob: float,
    shape: tuple[int, ...] = (TARGET_FRAMES, N_MELS),
    min_time: float = 0.0,
) -> tuple[Tensor, Tensor, Tensor]:
    """Per example: ``t ~ U[min_time, 1)`` (the original: ``U[0, 1)``), ``eps ~ N(0, I)`` of ``shape`` and
    ``keep`` (False with ``drop_prob``).

    Each example's draws come from its own generator seeded by ``(seed, counter)`` (ORIGINAL.md §4.1: one time
    per example; CFG drop probability 0.1), so they do not depend on how the batch is split.
    """
    times, noises, keeps = [], [], []
    for counter in [int(c) for c in counters]:
        gen = torch.Generator().manual_seed(example_seed(seed, counter))
        u = torch.rand(2, generator=gen, dtype=torch.float64)
        times.append(float(min_time + (1.0 - min_time) * u[0]))
        keeps.append(bool(u[1] >= drop_prob))
        noises.append(torch.randn(shape, generator=gen))
    return torch.tensor(times, dtype=torch.float32), torch.stack(noises), torch.tensor(keeps)


def draw_context_drops(counters: Sequence[int] | Tensor, seed: int, prob: float) -> Tensor:
    """Per example: True (with probability ``prob``) where the context is emptied
    (:attr:`TrainConfig.context_drop_prob`); each example draws from its own generator."""
    drops = []
    for counter in [int(c) for c in counters]:
        gen = torch.Generator().manual_seed(example_seed(seed ^ 0xC0_47E7, counter))
        drops.append(bool(torch.rand(1, generator=gen, dtype=torch.float64)[0] < prob))
    return torch.tensor(drops, dtype=torch.bool)


def empty_context(batch: dict[str, Tensor], drop: Tensor) -> dict[str, Tensor]:
    """``batch`` with the context of the ``drop`` rows emptied as the pipeline's first segment has it:
    zeros in feature space and an all-False mask (ORIGINAL.md §9.6)."""
    keep = ~drop
    return {**batch, "context": batch["context"] * keep[:, None, None].to(batch["context"].dtype),
            "context_mask": batch["context_mask"].bool() & keep[:, None]}  # fmt: skip


def parse_rollout_steps(text: str) -> list[int]:
    """``"4,16"`` -> ``[4, 16]``: the sampler step counts of :attr:`TrainConfig.rollout_steps` (each >= 2)."""
    try:
        counts = [int(part) for part in str(text).split(",") if part.strip()]
    except ValueError:
        raise SpecdiffError(f"rollout_steps must be comma-separated integers, got {text!r}") from None
    if not counts or any(n < 2 for n in counts):
        raise SpecdiffError(f"rollout_steps needs step counts >= 2, got {text!r}")
    return counts


def draw_rollout_times(counters: Sequence[int] | Tensor, seed: int, prob: float, step_counts: Sequence[int],
                       final_time: float = 0.0) -> tuple[Tensor, Tensor, Tensor]:  # fmt: skip
    """Per example: ``(rolled, t, t_prev)``. ``rolled`` is True with probability ``prob``; for those,
    ``t = k / N`` and ``t_prev = (k + 1) / N`` with N drawn from ``step_counts`` and k from
    ``1..N-1`` (the step times of an N-step "trailing" sampler, where one model step leads from
    ``t_prev`` to ``t``). Drawn from each example's own generator, like :func:`draw_diffusion_inputs`.
    ``final_time > 0``: the grid of a DDIM sampler with that ``final_noise_time`` instead, N times
    evenly from 1 down to ``final_time`` (``t`` is one of its later N - 1 times, ``t_prev`` the one before)."""
    rolled, times, previous = [], [], []
    for counter in [int(c) for c in counters]:
        gen = torch.Generator().manual_seed(example_seed(seed ^ 0x5EED_0F_D0, counter))
        u = torch.rand(3, generator=gen, dtype=torch.float64)
        n = int(step_counts[min(int(u[1] * len(step_counts)), len(step_counts) - 1)])
        k = 1 + min(int(u[2] * (n - 1)), n - 2)
        rolled.append(bool(u[0] < prob))
        if final_time > 0:
            grid = torch.linspace(1.0, final_time, n, dtype=torch.float64)
            j = n - k  # 1..n-1: the grid's later times
            times.append(float(grid[j]))
            previous.append(float(grid[j - 1]))
        else:
            times.append(k / n)
            previous.append((k + 1) / n)
    return torch.tensor(rolled), torch.tensor(times, dtype=torch.float32), torch.tensor(previous, dtype=torch.float32)


@torch.no_grad()
def rollout_inputs(model: nn.Module, tokens: Tensor, batch: Mapping[str, Tensor], context_mask: Tensor,
                   x0: Tensor, noise: Tensor, t: Tensor, t_prev: Tensor) -> Tensor:  # fmt: skip
    """``z_t`` as a deterministic DDIM step of ``model`` from ``q_sample(x0, t_prev, noise)`` to ``t``:
    the x0 estimate is clipped to [-1, 1] as the samplers do, its implied eps is recomputed, and
    ``z_t = alpha_t x0_hat + sigma_t eps_hat`` (no gradient flows through this step)."""
    inner = getattr(model, "module", model)  # through DDP's wrapper: no gradient sync needed here
    z_prev = q_sample(x0, t_prev, noise)
    out = inner(tokens, batch["context"], context_mask, z_prev, t_prev, batch.get("timbre")).float()
    x0_hat = x0_from_prediction(out, z_prev, t_prev, inner.decoder.prediction_type).clamp(-1.0, 1.0)
    alpha_prev, sigma_prev = alpha_sigma(t_prev)
    shape = (-1,) + (1,) * (x0.dim() - 1)
    eps_hat = (z_prev - alpha_prev.reshape(shape) * x0_hat) / sigma_prev.reshape(shape)
    alpha, sigma = alpha_sigma(t)
    return (alpha.reshape(shape) * x0_hat + sigma.reshape(shape) * eps_hat).to(x0.dtype)


def trim_token_padding(tokens: Tensor, multiple: int = 64) -> Tensor:
    """Cut trailing all-PAD token columns, keeping a multiple of ``multiple`` (at least one multiple).

    Exact: PAD keys get -inf-like attention biases in the encoder and the decoder, so the encodings
    of real tokens and the decoder output do not change; only the cost does (real segments hold
    ~100-500 of the 2048 tokens).
    """
    nonzero = (tokens != 0).any(dim=0).nonzero()
    length = int(nonzero.max()) + 1 if len(nonzero) else 1
    length = min(tokens.shape[1], -(-length // multiple) * multiple)
    return tokens[:, :length]


@dataclass
class LossOutput:
    loss_sum: Tensor  # the objective: (weighted) L1 error summed over batch, time and mel bins (ORIGINAL.md §4.1)
    loss_mean: Tensor  # the unweighted eps error per element, for logging (detached)
    error_sum: Tensor  # the unweighted eps error summed (detached): comparable across loss weightings
    # and prediction types (a v or x0 prediction is converted to the eps it implies)
    counted: int = 0  # elements in error_sum (fewer than the batch's with mask_padding)


#: Per-example weightings of the L1 eps loss: "none" is the original (ORIGINAL.md §4.1).
LOSS_WEIGHTINGS = ("none", "min_snr", "x0")


def loss_weights(t: Tensor, weighting: str = "none", gamma: float = 5.0) -> Tensor | None:
    """Per-example loss weights ``[B]`` for noise times ``t`` (None: all ones, the original objective).

    ``min_snr`` (Hang et al. 2023, "Efficient Diffusion Training via Min-SNR Weighting", for an eps
    prediction): ``min(1, gamma / SNR(t))``. Low-noise times, where predicting eps is hard and
    matters little for samples (an x0 error there is the eps error times sigma/alpha < 1), are
    down-weighted, so a short run spends its updates on the mid and high noise levels whose eps
    errors the sampler amplifies by sigma/alpha >> 1. The network and its output (eps) are
    unchanged, so every sampler and the checkpoint layout still apply.

    ``x0``: ``min(sigma / alpha, gamma)``, i.e. the L1 error of the implied ``x0 = (z_t - sigma eps)
    / alpha`` (capped where alpha -> 0). At high noise the spectrogram can only come from the notes
    and the context, but an eps error there is the x0 error times alpha/sigma << 1, so the original
    objective barely rewards using the conditioning; this weighting does (the samplers and the
    checkpoint layout are unchanged: the network still predicts eps).
    """
    if weighting == "none":
        return None
    if weighting == "min_snr":
        snr = torch.exp(logsnr(t.double()))
        return torch.clamp(gamma / snr, max=1.0).to(torch.float32)
    if weighting == "x0":
        snr = torch.exp(logsnr(t.double()))
        return torch.clamp(snr.rsqrt(), max=gamma).to(torch.float32)
    raise SpecdiffError(f"unknown loss weighting {weighting!r}; choose one of {', '.join(LOSS_WEIGHTINGS)}")


@dataclass(frozen=True)
class GuidedAttention:
    """The optional guided cross-attention loss (``specdiff.training.guided_attention``): ``weight`` times the
    penalty of the first ``heads`` heads of every decoder cross-attention layer."""

    weight: float
    heads: int = 1
    sigma: float = 4.0  # frames
    target: str = "onsets"  # or "notes" (specdiff.training.guided_attention.TARGETS)


def diffusion_loss(
    model: nn.Module,
    batch: Mapping[str, Tensor],
    t: Tensor,
    noise: Tensor,
    keep: Tensor,
    trim: bool = True,
    weights: Tensor | None = None,
    guide: GuidedAttention | None = None,
    rollout: tuple[Tensor, Tensor, Tensor] | None = None,
    mask_padding: bool = False,
) -> LossOutput:
    """The original objective (ORIGINAL.md §4.1-4.2) for a batch dict (tokens, context, context_mask, target).

    ``z_t = alpha_t x0 + sigma_t eps`` with ``x0 = target``; the model predicts eps from ``z_t`` and
    ``decoder_noise_time = t``; dropped examples (``keep`` False) get tokens * 0 (all PAD, so an
    all-False notes mask) and context mask * 0. The context itself is clean ground truth.
    ``weights``: optional per-example weights of the summed error (:func:`loss_weights`).
    ``guide``: add the guided cross-attention penalty to the objective (``loss_sum`` only).
    ``rollout``: ``(rolled [B], t [B], t_prev [B])`` from :func:`draw_rollout_times`: rolled rows
    train at that ``t`` on the model's own DDIM step from ``t_prev`` (:func:`rollout_inputs`). A
    batch with a ``timbre`` column conditions a timbre-conditioned decoder on it. ``mask_padding``
    (a batch with ``target_valid``): frames past the piece end are left out of the error.
    """
    x0 = batch["target"]
    prediction_type = getattr(model, "module", model).decoder.prediction_type  # through DDP's wrapper
    tokens = batch["tokens"] * keep[:, None].to(batch["tokens"].dtype)
    if trim:
        tokens = trim_token_padding(tokens)
    context_mask = batch["context_mask"].bool() & keep[:, None]
    z_t = q_sample(x0, t, noise)
    if rollout is not None and bool(rollout[0].any()):
        rows = rollout[0].to(x0.device).nonzero().flatten()
        sub = {key: value.index_select(0, rows) for key, value in batch.items() if key in ("context", "timbre")}
        t_roll, t_prev = rollout[1].to(x0.device)[rows], rollout[2].to(x0.device)[rows]
        z_roll = rollout_inputs(model, tokens.index_select(0, rows), sub, context_mask.index_select(0, rows),
                                x0.index_select(0, rows), noise.index_select(0, rows), t_roll, t_prev)  # fmt: skip
        z_t = z_t.index_copy(0, rows, z_roll)
        t = t.index_copy(0, rows, t_roll.to(t.dtype))
        # The eps these inputs imply, for the logged error (the target itself only needs z_t).
        alpha, sigma = alpha_sigma(t)
        noise = (z_t - alpha.reshape(-1, 1, 1) * x0) / sigma.reshape(-1, 1, 1)
    recorder = None
    if guide is not None and guide.weight > 0:
        from specdiff.training.guided_attention import CrossAttentionRecorder, guided_attention_penalty

        recorder = CrossAttentionRecorder(getattr(model, "module", model))  # through DDP's wrapper
    with recorder.recording() if recorder is not None else contextlib.nullcontext():
        prediction = model(tokens, batch["context"], context_mask, z_t, t, batch.get("timbre"))
    error = (prediction.float() - prediction_target(x0, noise, t, prediction_type, z_t).float()).abs()
    if prediction_type != "epsilon":  # log the eps error, comparable across prediction types
        eps_error = (eps_from_prediction(prediction.detach().float(), z_t, t, prediction_type) - noise.float()).abs()
    else:
        eps_error = error.detach()
    counted = eps_error.numel()
    if mask_padding and "target_valid" in batch:
        frames = padding_mask(batch["target_valid"], x0.shape[1]).to(error.device)[:, :, None]
        error, eps_error = error * frames, eps_error * frames
        counted = max(int(frames.sum()) * x0.shape[-1], 1)
    objective = error.sum() if weights is None else (error * weights.to(error.device)[:, None, None]).sum()
    if recorder is not None:
        penalty = guided_attention_penalty(
            recorder.model, recorder, tokens, context_mask, guide.heads, guide.sigma, guide.target
        )
        objective = objective + guide.weight * penalty
    return LossOutput(objective, eps_error.sum() / counted, eps_error.sum(), counted)


# ---------------------------------------------------------------------------------------------
# Data: batches, the counter sampler, a synthetic data set for smoke tests and benchmarks
# ---------------------------------------------------------------------------------------------

BATCH_KEYS = ("tokens", "context", "context_mask", "target")


def _as_mapping(item: Any) -> Mapping[str, Tensor]:
    if dataclasses.is_dataclass(item):
        return {f.name: getattr(item, f.name) for f in dataclasses.fields(item)}
    return item


def collate_counted(items: Sequence[tuple[int, Any]]) -> dict[str, Tensor]:
    """``(counter, example)`` pairs -> batch dict with ``index`` (the counters) and the BATCH_KEYS stacked."""
    examples = [_as_mapping(example) for _, example in items]
    batch = {key: torch.stack([torch.as_tensor(ex[key]) for ex in examples]) for key in BATCH_KEYS}
    if all(ex.get("timbre") is not None for ex in examples):  # timbre indices (feature caches); absent: the default
        batch["timbre"] = torch.stack([torch.as_tensor(ex["timbre"]) for ex in examples]).long()
    if all(ex.get("target_valid") is not None for ex in examples):  # frames before the piece end (caches)
        batch["target_valid"] = torch.stack([torch.as_tensor(ex["target_valid"]) for ex in examples]).long()
    batch["tokens"] = batch["tokens"].long()
    batch["context_mask"] = batch["context_mask"].bool()
    batch["index"] = torch.tensor([counter for counter, _ in items], dtype=torch.long)
    return batch


class _CounterDataset(torch.utils.data.Dataset):
    """Maps a global sample counter to ``(counter, dataset[counter % len(dataset)])``."""

    def __init__(self, dataset: torch.utils.data.Dataset) -> None:
        self.dataset = dataset
        self.size = len(dataset)  # type: ignore[arg-type]
        if self.size == 0:
            raise SpecdiffError("the training data set is empty")

    def __len__(self) -> int:
        return self.size

    def __getitem__(self, counter: int) -> tuple[int, Any]:
        return counter, self.dataset[counter % self.size]


class ShardedCounterSampler(torch.utils.data.Sampler):
    """Endless stream of this rank's sample counters, starting at the data position ``start``.

    Optimiser step k consumes the global counters ``[start + k G, start + (k+1) G)`` with
    ``G = micro_batch * accumulation * world_size``; micro-batch ``a`` of rank ``r`` takes the block
    ``(a * world_size + r) * micro_batch`` of that range.
    """

    def __init__(self, start: int, micro_batch: int, accumulation: int, rank: int = 0, world_size: int = 1):
        self.start, self.micro_batch, self.accumulation = start, micro_batch, accumulation
        self.rank, self.world_size = rank, world_size

    @property
    def global_batch(self) -> int:
        return self.micro_batch * self.accumulation * self.world_size

    def __iter__(self) -> Iterator[int]:
        position = self.start
        while True:
            for a in range(self.accumulation):
                first = position + (a * self.world_size + self.rank) * self.micro_batch
                yield from range(first, first + self.micro_batch)
            position += self.global_batch

    def __len__(self) -> int:  # endless; DataLoader only needs this for len(loader)
        return sys.maxsize


class SyntheticDataset(torch.utils.data.Dataset):
    """Random but learnable examples in the training batch format (for smoke tests and benchmarks).

    Item ``i`` is a deterministic function of ``(seed, i)``: a prefix of random note tokens (the
    rest PAD), a target made of horizontal mel bands whose bins and levels follow from the tokens (so
    the conditioning carries information), and a context of random valid length.
    """

    def __init__(self, size: int = 1024, seed: int = 0, max_tokens: int = 256) -> None:
        self.size, self.seed, self.max_tokens = size, seed, max_tokens

    def __len__(self) -> int:
        return self.size

    def __getitem__(self, i: int) -> dict[str, Tensor]:
        gen = torch.Generator().manual_seed(example_seed(self.seed + 7919, i))
        n_tokens = int(torch.randint(1, self.max_tokens + 1, (), generator=gen))
        tokens = torch.zeros(TOKENS_LENGTH, dtype=torch.long)
        tokens[:n_tokens] = torch.randint(1, 1536, (n_tokens,), generator=gen)
        bins = tokens[: min(n_tokens, 8)] % N_MELS
        level = torch.full((N_MELS,), -1.0)
        level[bins] = 0.5
        frames = torch.linspace(0, 1, TARGET_FRAMES)[:, None]
        target = (level[None, :] - 0.3 * frames * (level[None, :] > -1)).clamp(-1, 1)
        n_context = int(torch.randint(0, TARGET_FRAMES + 1, (), generator=gen))
        context = torch.zeros(TARGET_FRAMES, N_MELS)
        context[:n_context] = torch.rand(n_context, N_MELS, generator=gen) * 2 - 1
        context_mask = torch.arange(TARGET_FRAMES) < n_context
        return {"tokens": tokens, "context": context, "context_mask": context_mask, "target": target}


def _model_timbres(config: TrainConfig) -> list[str]:
    """The timbre names of the model ``config`` builds (``--set model.timbres=A,B``; empty: none)."""
    timbres = config.model.get("timbres", [])
    return [t for t in timbres.split(",") if t] if isinstance(timbres, str) else list(timbres)


def open_datasets(config: TrainConfig) -> tuple[torch.utils.data.Dataset, torch.utils.data.Dataset]:
    """The training and validation sets named by ``config.data`` / ``config.val_data``.

    A feature cache gives ``ChunkDataset``s (specdiff.data.cache): split "train" for training and split
    "validation" (of ``val_data``, default ``data``) for validation. A cache without a validation
    split falls back to training windows drawn with another seed (a fixed set, but not held out).
    """
    if config.data is None:
        raise SpecdiffError("no training data: pass --data CACHE_DIR (or --data synthetic for a smoke test)")
    if config.data == "synthetic":
        return SyntheticDataset(seed=config.seed), SyntheticDataset(
            size=max(config.val_examples, 1), seed=config.seed + 1
        )
    from specdiff.data import cache as data_module

    # Counters never wrap within the run, so no window is drawn twice (the cache's default epoch is 1M).
    epoch_size = max(1_000_000, config.steps * config.batch_size)
    val_source = config.val_data if config.val_data is not None else config.data
    timbres = _model_timbres(config)
    if not any(song["split"] == "validation" for song in data_module.load_index(val_source)):
        if config.val_data is not None:
            raise SpecdiffError(f"the feature cache {config.val_data} has no validation split")
        print(f"note: {config.data} has no validation split; validating on training windows drawn with another seed")
        train_set = data_module.ChunkDataset(config.data, seed=config.seed, split="train", epoch_size=epoch_size,
                                             timbres=timbres)  # fmt: skip
        return train_set, data_module.ChunkDataset(config.data, seed=config.seed + 1_000_003, split="train",
                                                   timbres=timbres)  # fmt: skip
    return data_module.open_training_datasets(config.data, config.val_data, seed=config.seed, epoch_size=epoch_size,
                                              timbres=timbres)  # fmt: skip


# ---------------------------------------------------------------------------------------------
# Warm starts
# ---------------------------------------------------------------------------------------------


def pipeline_folder_state_dict(folder: str | Path) -> dict[str, Tensor]:
    """The float32 state dict of :class:`SpectrogramDiffusionModel` held by a pipeline folder."""
    from specdiff.pipeline.pipeline import SpectrogramDiffusionPipeline

    pipe = SpectrogramDiffusionPipeline.from_pretrained(folder, inverter=None)
    model = SpectrogramDiffusionModel(pipe.notes_encoder, pipe.continuous_encoder, pipe.decoder)
    return {name: value.float() for name, value in model.state_dict().items()}


# ---------------------------------------------------------------------------------------------
# Evaluation: validation loss and samples
# ---------------------------------------------------------------------------------------------


def _to_device(batch: Mapping[str, Tensor], device: torch.device) -> dict[str, Tensor]:
    return {key: value.to(device, non_blocking=True) for key, value in batch.items()}


def _autocast(device: torch.device, enabled: bool):
    """bf16 autocast (weights, optimiser state and the loss stay float32) on CUDA, and on CPUs
    with native bf16 matmuls."""
    if enabled and device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    if enabled and device.type == "cpu" and cpu_has_native_bf16():  # ~1.8x faster steps there
        return torch.autocast("cpu", dtype=torch.bfloat16)
    return contextlib.nullcontext()


@torch.no_grad()
def validation_loss(
    model: nn.Module, batches: Sequence[Mapping[str, Tensor]], seed: int, config: TrainConfig, device
) -> float:
    """Mean per-element L1 eps error on the fixed validation batches (fixed t and noise, no CFG drop)."""
    was_training = model.training
    model.eval()
    total, count = 0.0, 0
    for batch in batches:
        t, noise, _ = draw_diffusion_inputs(batch["index"], seed, 0.0, tuple(batch["target"].shape[1:]),
                                            config.min_noise_time)  # fmt: skip
        keep = torch.ones(len(t), dtype=torch.bool)
        batch = _to_device(batch, device)
        with _autocast(device, config.bf16):
            out = diffusion_loss(model, batch, t.to(device), noise.to(device), keep.to(device), config.trim_tokens,
                                 mask_padding=config.mask_padding)  # fmt: skip
        total += float(out.error_sum)  # unweighted: comparable across loss weightings
        count += out.counted
    model.train(was_training)
    return total / max(count, 1)


@torch.no_grad()
def sample_spectrogram(
    model: SpectrogramDiffusionModel, batch: Mapping[str, Tensor], steps: int, generator: torch.Generator
) -> Tensor:
    """Ancestral DDPM sampling with the original schedule (ORIGINAL.md §4.1), ``steps`` uniform steps, no CFG.

    ``t_i = (i + 1) / steps``, ``s_i = i / steps``; x0 is predicted and clipped to [-1, 1]; the last
    step returns x0. Returns ``[B, T, 128]`` in the scaled range.
    """
    was_training = model.training
    model.eval()
    device = batch["target"].device
    tokens = trim_token_padding(batch["tokens"])
    encodings = model.encode(tokens, batch["context"], batch["context_mask"])
    cache = model.decoder.prepare_cross_attention(encodings, model.score_roll(tokens))
    z = torch.randn(batch["target"].shape, generator=generator).to(device)
    for i in reversed(range(steps)):
        t = torch.full((z.shape[0],), (i + 1) / steps, device=device)
        out = model.decoder(None, z, t, cross_cache=cache).float()
        eps = eps_from_prediction(out, z, t, model.decoder.prediction_type)
        x0 = predict_x0(z, t, eps).clamp(-1.0, 1.0)
        if i == 0:
            z = x0
        else:
            mean, variance = posterior(z, x0, t, torch.full_like(t, i / steps))
            z = mean + variance.sqrt() * torch.randn(z.shape, generator=generator).to(device)
    model.train(was_training)
    return z


# ---------------------------------------------------------------------------------------------
# The loop
# ---------------------------------------------------------------------------------------------


@dataclass
class StepRecord:
    step: int  # 1-based optimiser step
    loss_sum: float  # the objective over the global batch
    loss: float  # unweighted L1 error per element over the global batch


def _batch_plan(config: TrainConfig, world_size: int) -> tuple[int, int]:
    """(micro-batch per process, accumulation steps) for the configured global batch."""
    micro = config.micro_batch_size or max(config.batch_size // world_size, 1)
    per_step = micro * world_size
    if config.batch_size % per_step:
        raise SpecdiffError(
            f"batch_size {config.batch_size} is not a multiple of micro_batch_size x processes ({micro} x {world_size})"
        )
    return micro, config.batch_size // per_step


#: ``--resume`` values that start a fresh run.
NO_RESUME = (None, "no", "never", "none")


def _find_resume_checkpoint(config: TrainConfig, resume: str | None) -> Path | None:
    existing = list_checkpoints(config.out_dir)
    if resume in NO_RESUME:
        if existing:
            raise SpecdiffError(
                f"{config.out_dir} already holds checkpoints; resume it (--resume auto) or pick another --out"
            )
        return None
    if resume == "auto":
        return existing[-1] if existing else None
    return Path(resume)


#: Decoder weights whose columns are the score roll's features (``specdiff.midi.score_roll``).
ROLL_WEIGHTS = ("decoder.score_projection.weight", "decoder.score_prior_projection.weight")


def _widen_roll_weights(state: dict[str, Any], target: dict[str, Tensor]) -> tuple[dict[str, Any], set[str]]:
    """A warm start from a model on the base roll layout into one on the extended layout: the roll
    weights get zero columns for the added features (so the model starts with the old one's output).
    Returns the state and the keys widened."""
    from specdiff.midi.score_roll import EXTENDED_ROLL_FEATURES, ROLL_FEATURES

    model_state, widened = dict(state["model"]), set()
    for key in ROLL_WEIGHTS:
        old, new = model_state.get(key), target.get(key)
        if old is None or new is None or old.shape == new.shape:
            continue
        if old.shape[-1] == ROLL_FEATURES and new.shape == (*old.shape[:-1], EXTENDED_ROLL_FEATURES):
            model_state[key] = torch.cat([old, old.new_zeros(*old.shape[:-1], new.shape[-1] - old.shape[-1])], -1)
            widened.add(key)
    return {**state, "model": model_state}, widened


class Trainer:
    """One run: builds (or restores) model, optimiser, EMA and data stream; ``run()`` trains to ``config.steps``.

    ``resume``: ``"auto"`` continues from the newest checkpoint in ``out_dir`` if there is one, a path
    continues from that file, ``"no"`` insists on a fresh run.
    """

    def __init__(
        self,
        config: TrainConfig,
        train_set: torch.utils.data.Dataset | None = None,
        val_set: torch.utils.data.Dataset | None = None,
        resume: str | None = "auto",
    ) -> None:
        self.config = config
        self.ctx = init_distributed(config)
        if config.num_threads > 0:
            torch.set_num_threads(config.num_threads)
        if train_set is None or val_set is None:
            default_train, default_val = open_datasets(config)
            train_set = default_train if train_set is None else train_set
            val_set = default_val if val_set is None else val_set
        self.micro_batch, self.accumulation = _batch_plan(config, self.ctx.world_size)
        if not 0.0 <= config.min_noise_time < 1.0:
            raise SpecdiffError(f"min_noise_time must be in [0, 1), got {config.min_noise_time}")
        from specdiff.training.guided_attention import TARGETS

        if config.guided_attention_target not in TARGETS:
            raise SpecdiffError(f"unknown guided attention target {config.guided_attention_target!r}; "
                                f"choose one of {', '.join(TARGETS)}")  # fmt: skip
        self.guide = GuidedAttention(config.guided_attention, config.guided_attention_heads,
                                     config.guided_attention_sigma, config.guided_attention_target
                                     ) if config.guided_attention > 0 else None  # fmt: skip
        self.out_dir = Path(config.out_dir)
        resume_path = _find_resume_checkpoint(config, resume)

        # Same initial weights on every rank (build_models does not touch the global RNG).
        self.model = SpectrogramDiffusionModel(
            *build_models(config.preset, seed=config.seed, dropout_rate=config.dropout, **config.model)
        ).to(self.ctx.device)
        self.model.train()
        initialise_output(self.model.decoder, config.output_init)
        self.optimizer = build_optimizer(
            self.model,
            config.optimizer,
            config.lr,
            (config.adam_beta1, config.adam_beta2),
            config.weight_decay,
            config.embedding_lr_scale,
        )
        self.ema = EMA(self.model, config.ema_decay, config.ema_warmup)
        seed_everything(example_seed(config.seed, 1_000_003 + self.ctx.rank))  # dropout RNG, one stream per rank
        self.step, self.samples_seen = 0, 0
        if resume_path is not None:
            self._restore(resume_path)
        elif config.init_from:
            self._warm_start(Path(config.init_from))
        # Closed-form fits (after a warm start, which they refit; never on resume): the prior first,
        # since the input skip sees the noisy input less the prior.
        if config.score_prior_fit > 0 and resume_path is None:
            error = fit_score_prior(
                self.model.decoder, train_set, config.score_prior_fit, mask_padding=config.mask_padding
            )
            self.ema = EMA(self.model, config.ema_decay, config.ema_warmup)  # the EMA starts from the fit
            if self.ctx.is_main:
                print(f"score prior fitted on {config.score_prior_fit} windows: L1 {error:.4f}", flush=True)
        if config.input_skip_fit > 0 and resume_path is None:
            report = fit_input_skip(self.model, train_set, config.input_skip_fit, mask_padding=config.mask_padding)
            self.ema = EMA(self.model, config.ema_decay, config.ema_warmup)  # the EMA starts from the fit
            if self.ctx.is_main:
                cells = ", ".join(f"t={t:.2f} {before:.3f}->{after:.3f}" for t, before, after in report)
                print(f"input skip fitted on {config.input_skip_fit} windows (output L1): {cells}", flush=True)

        self.ddp_model: nn.Module = self.model
        if self.ctx.enabled:
            device_ids = [self.ctx.device.index] if self.ctx.device.type == "cuda" else None
            self.ddp_model = nn.parallel.DistributedDataParallel(self.model, device_ids=device_ids)
        self.batches = iter(self._loader(train_set))

        self.metrics: MetricsLog | None = None
        self.val_batches: list[dict[str, Tensor]] = []
        self.val_seed = example_seed(config.seed, 2_000_003)
        self._ema_model: SpectrogramDiffusionModel | None = None
        if self.ctx.is_main:
            self.out_dir.mkdir(parents=True, exist_ok=True)
            atomic_write_text(self.out_dir / "config.json", json.dumps(dataclasses.asdict(config), indent=2) + "\n")
            self.metrics = MetricsLog(self.out_dir, self.step, config.tensorboard)
            n_val = min(config.val_examples, len(val_set))  # type: ignore[arg-type]
            items = [(i, val_set[i]) for i in range(n_val)]
            self.val_batches = [
                collate_counted(items[i : i + self.micro_batch]) for i in range(0, n_val, self.micro_batch)
            ]

    # -- setup -----------------------------------------------------------------------------------

    def _restore(self, path: Path) -> None:
        state = load_checkpoint(path)
        try:
            self.model.load_state_dict(state["model"])
        except RuntimeError as exc:
            raise ModelError(f"{path} does not match the configured model: {str(exc).splitlines()[0]}") from None
        self.optimizer.load_state_dict(state["optimizer"])
        self.ema.load_state_dict(state["ema"])
        self.step, self.samples_seen = int(state["step"]), int(state["samples_seen"])
        if len(state["rng"]) == self.ctx.world_size:
            restore_rng_state(state["rng"][self.ctx.rank])
        else:  # another number of processes: the dropout streams cannot continue, start new ones
            seed_everything(example_seed(self.config.seed, 1_000_003 + self.ctx.rank + 7919 * self.step))
        if self.ctx.is_main:
            print(f"resuming from {path} at step {self.step} ({self.samples_seen} samples seen)")

    def _warm_start(self, path: Path) -> None:
        """Weights (and EMA) from a training checkpoint, or from a pipeline folder (``specdiff export``,
        the official checkpoint in diffusers layout): then its weights, exported from an EMA, start
        both the model and a fresh EMA."""
        if path.is_dir():
            state = {"model": pipeline_folder_state_dict(path), "ema": None, "step": "unknown (pipeline folder)"}
        else:
            state = load_checkpoint(path)
        # A model that adds zero-started extensions (timbres, input context) to a model without them
        # keeps their zero start, so it begins with the folder's output.
        prefixes = tuple(f"decoder.{name}." for name in ZERO_STARTED_DECODER_PARAMETERS)
        added = {k for k in self.model.state_dict() if k.startswith(prefixes)}
        missing = added - set(state["model"])
        state, widened = _widen_roll_weights(state, self.model.state_dict())
        try:
            result = self.model.load_state_dict(state["model"], strict=not missing)
        except RuntimeError as exc:
            raise ModelError(f"{path} does not match the configured model: {str(exc).splitlines()[0]}") from None
        if missing and (set(result.missing_keys) != missing or result.unexpected_keys):
            raise ModelError(f"{path} does not match the configured model: missing {result.missing_keys}, "
                             f"unexpected {result.unexpected_keys}")  # fmt: skip
        if (missing or widened) and state["ema"] is not None:
            state = {**state, "ema": None}  # the EMA restarts from these weights (it lacks the new tables)
        if state["ema"] is None:
            self.ema = EMA(self.model, self.config.ema_decay, self.config.ema_warmup)
        else:
            self.ema.load_state_dict(state["ema"])
        if self.ctx.is_main:
            print(f"warm start from {path} (its step {state['step']}): weights and EMA; new optimiser, step 0")

    def _loader(self, train_set: torch.utils.data.Dataset) -> torch.utils.data.DataLoader:
        sampler = ShardedCounterSampler(
            self.samples_seen, self.micro_batch, self.accumulation, self.ctx.rank, self.ctx.world_size
        )
        return torch.utils.data.DataLoader(
            _CounterDataset(train_set),
            batch_size=self.micro_batch,
            sampler=sampler,
            num_workers=self.config.num_workers,
            collate_fn=collate_counted,
            pin_memory=self.ctx.device.type == "cuda",
            generator=torch.Generator(),  # so the DataLoader never draws from the global RNG (resume)
            persistent_workers=self.config.num_workers > 0,
        )

    # -- one optimiser step ----------------------------------------------------------------------

    def learning_rate(self, step: int) -> float:
        """The LR of 0-based optimiser step ``step``: constant, then the linear cool-down (lr_decay_steps)."""
        config = self.config
        if config.lr_decay_steps <= 0:
            return config.lr
        return config.lr * min(1.0, max(config.steps - step, 0) / config.lr_decay_steps)

    def train_step(self) -> StepRecord:
        config, ctx = self.config, self.ctx
        lr = self.learning_rate(self.step)
        for group in self.optimizer.param_groups:
            group["lr"] = lr * group.get("lr_scale", 1.0)
        self.optimizer.zero_grad(set_to_none=True)
        totals = torch.zeros(3, dtype=torch.float64)  # objective, number of elements, unweighted L1 error
        for micro in range(self.accumulation):
            batch = next(self.batches)
            t, noise, keep = draw_diffusion_inputs(
                batch["index"],
                config.seed,
                config.cfg_drop_prob,
                tuple(batch["target"].shape[1:]),
                config.min_noise_time,
            )
            rollout = None
            if config.rollout_prob > 0:
                steps = parse_rollout_steps(config.rollout_steps)
                rollout = draw_rollout_times(batch["index"], config.seed, config.rollout_prob, steps,
                                             config.min_noise_time)  # fmt: skip
            if config.context_drop_prob > 0:
                batch = empty_context(batch, draw_context_drops(batch["index"], config.seed, config.context_drop_prob))
            batch = _to_device(batch, ctx.device)
            last = micro == self.accumulation - 1
            sync = self.ddp_model.no_sync() if ctx.enabled and not last else contextlib.nullcontext()
            with sync:
                with _autocast(ctx.device, config.bf16):
                    out = diffusion_loss(
                        self.ddp_model, batch, t.to(ctx.device), noise.to(ctx.device), keep.to(ctx.device),
                        config.trim_tokens, loss_weights(t, config.loss_weighting, config.min_snr_gamma),
                        self.guide, rollout, config.mask_padding,
                    )  # fmt: skip
                # DDP averages gradients over processes: scale so they are those of the global-batch sum.
                (out.loss_sum * ctx.world_size).backward()
            totals += torch.tensor(
                [float(out.loss_sum.detach()), out.counted, float(out.error_sum)], dtype=torch.float64
            )
        self.optimizer.step()
        self.ema.update(self.model)
        self.step += 1
        self.samples_seen += config.batch_size
        totals = _all_reduce_sum(totals, ctx)
        record = StepRecord(self.step, float(totals[0]), float(totals[2] / totals[1]))
        if not math.isfinite(record.loss_sum):
            raise FloatingPointError(f"loss is {record.loss_sum} at step {self.step}")
        return record

    # -- evaluation and checkpoints --------------------------------------------------------------

    def ema_model(self) -> SpectrogramDiffusionModel:
        """A copy of the model holding the EMA weights (for validation and samples)."""
        if self._ema_model is None:
            self._ema_model = SpectrogramDiffusionModel.from_configs(self.model.configs()).to(self.ctx.device)
        self._ema_model.load_state_dict(self.model.state_dict())
        self.ema.copy_to(self._ema_model)
        return self._ema_model

    def run_validation(self, loss: bool, sample: bool) -> None:
        """Validation losses (raw and EMA weights) and/or a sample PNG from the first validation segment."""
        assert self.metrics is not None and self.val_batches
        config, device = self.config, self.ctx.device
        ema_model = self.ema_model()
        if loss:
            self.metrics.log(self.step, {
                "val/loss": validation_loss(self.model, self.val_batches, self.val_seed, config, device),
                "val/loss_ema": validation_loss(ema_model, self.val_batches, self.val_seed, config, device),
            })  # fmt: skip
        if sample:
            first = _to_device({k: v[:1] for k, v in self.val_batches[0].items()}, device)
            with _autocast(device, config.bf16):
                mel = sample_spectrogram(
                    ema_model, first, config.sample_steps, torch.Generator().manual_seed(self.val_seed)
                )
            path = self.out_dir / "samples" / f"step_{self.step:08d}.png"
            save_spectrogram_comparison(path, first["target"][0], mel[0], f"step {self.step}: target | EMA sample")

    def checkpoint_state(self) -> dict[str, Any]:
        """Everything a resume needs. Collective under DDP: every rank contributes its RNG state."""
        rng = capture_rng_state()
        rng_all: list[Any] = [rng]
        if self.ctx.enabled:
            rng_all = [None] * self.ctx.world_size
            dist.all_gather_object(rng_all, rng)
        return {
            "format": CHECKPOINT_FORMAT,
            "step": self.step,
            "samples_seen": self.samples_seen,
            "config": dataclasses.asdict(self.config),
            "model_configs": self.model.configs(),
            "model": self.model.state_dict(),
            "ema": self.ema.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "rng": rng_all,
        }

    # -- the loop --------------------------------------------------------------------------------

    def run(self, progress: bool = True) -> list[StepRecord]:
        """Train until ``config.steps``; returns the records of the steps this call ran."""
        from tqdm.auto import tqdm

        config, is_main = self.config, self.ctx.is_main
        records: list[StepRecord] = []
        window: list[StepRecord] = []
        window_start = time.perf_counter()
        bar = tqdm(
            total=config.steps, initial=self.step, disable=not (progress and is_main), unit="step", dynamic_ncols=True
        )
        if self.metrics is not None:
            self.metrics.echo = not progress  # no bar: one line per logged entry instead
        try:
            while self.step < config.steps:
                record = self.train_step()
                records.append(record)
                window.append(record)
                bar.update(1)
                step = self.step
                if is_main and (step % config.log_every == 0 or step == config.steps):
                    seg_per_s = len(window) * config.batch_size / max(time.perf_counter() - window_start, 1e-9)
                    loss = sum(r.loss for r in window) / len(window)
                    self.metrics.log(step, {
                        "train/loss": loss,
                        "train/loss_sum": sum(r.loss_sum for r in window) / len(window),
                        "train/segments_per_s": seg_per_s,
                        "train/lr": self.learning_rate(step - 1),
                    })  # fmt: skip
                    bar.set_postfix(loss=f"{loss:.4f}", seg_s=f"{seg_per_s:.2f}")
                    window, window_start = [], time.perf_counter()
                validate = config.val_every > 0 and step % config.val_every == 0
                sample = config.sample_every > 0 and step % config.sample_every == 0
                if is_main and (validate or sample) and self.val_batches:
                    self.run_validation(validate, sample)
                if step % config.ckpt_every == 0 or step == config.steps:
                    state = self.checkpoint_state()
                    if is_main:
                        save_checkpoint(
                            checkpoint_dir(self.out_dir) / f"step_{step:08d}.pt", state, config.keep_checkpoints
                        )
                if validate or sample or step % config.ckpt_every == 0:
                    window_start = time.perf_counter()  # evaluation and saving are not training throughput
        finally:
            bar.close()
            if self.metrics is not None:
                self.metrics.close()
        return records


def train(
    config: TrainConfig,
    train_set: torch.utils.data.Dataset | None = None,
    val_set: torch.utils.data.Dataset | None = None,
    resume: str | None = "auto",
    progress: bool = True,
) -> list[StepRecord]:
    """Train (or resume, see ``Trainer``) a run; returns the records of the steps this call ran."""
    return Trainer(config, train_set, val_set, resume).run(progress)


# ---------------------------------------------------------------------------------------------
# Export to the diffusers folder layout
# ---------------------------------------------------------------------------------------------


def model_from_checkpoint(
    checkpoint: str | Path | Mapping[str, Any], use_ema: bool = True
) -> SpectrogramDiffusionModel:
    """The networks of a training checkpoint, with the EMA weights by default, in eval mode."""
    state = load_checkpoint(checkpoint) if not isinstance(checkpoint, Mapping) else checkpoint
    model = SpectrogramDiffusionModel.from_configs(state["model_configs"])
    model.load_state_dict(state["model"])
    if use_ema:
        ema = EMA(model, state["ema"]["decay"])
        ema.load_state_dict(state["ema"])
        ema.copy_to(model)
    return model.eval()


def model_from_path(path: str | Path, use_ema: bool = True) -> SpectrogramDiffusionModel:
    """The networks of a pipeline folder, a training checkpoint file or a run folder (its newest
    checkpoint; EMA weights unless ``use_ema`` is False), float32, in eval mode."""
    path = Path(path)
    if (path / "model_index.json").is_file():
        from specdiff.pipeline.pipeline import SpectrogramDiffusionPipeline

        pipe = SpectrogramDiffusionPipeline.from_pretrained(path, inverter=None)
        return SpectrogramDiffusionModel(pipe.notes_encoder, pipe.continuous_encoder, pipe.decoder).eval()
    if path.is_dir():
        found = list_checkpoints(path)
        if not found:
            raise ModelError(f"no checkpoints in {path}")
        path = found[-1]
    return model_from_checkpoint(path, use_ema=use_ema)


def copy_vocoder(vocoder_dir: str | Path, pipeline_dir: str | Path) -> Path:
    """Copy a trained vocoder folder (``specdiff.audio.vocoder``) into ``pipeline_dir/vocoder`` atomically.

    The folder is loaded first, so a broken vocoder raises ``ModelError`` before anything is copied.
    """
    import shutil
    import tempfile

    from specdiff.audio.vocoder import Vocoder

    source = Path(vocoder_dir)
    Vocoder.from_pretrained(source)  # validates config + weights
    target = Path(pipeline_dir) / "vocoder"
    tmp = Path(tempfile.mkdtemp(prefix=".vocoder.", suffix=".tmp", dir=pipeline_dir))
    try:
        shutil.copytree(source, tmp, dirs_exist_ok=True)
        if target.exists():
            shutil.rmtree(target)
        os.replace(tmp, target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return target


def export_pipeline(
    checkpoint: str | Path,
    out_dir: str | Path,
    use_ema: bool = True,
    vocoder: str | Path | None = None,
    half: bool = False,
) -> Path:
    """Write a training checkpoint as a ``SpectrogramDiffusionPipeline.from_pretrained`` folder.

    The layout is diffusers' (ORIGINAL.md §3.5, written by ``SpectrogramDiffusionPipeline.save_pretrained``):
    ``model_index.json``, the three network folders with the EMA weights (default) and ``scheduler/``.
    ``vocoder``: a trained vocoder folder to copy in as ``vocoder/`` (the pipeline's "auto" inverter
    picks it up). ``half``: store the weights as float16 (half the size; they load as float32).
    """
    from specdiff.pipeline.pipeline import SpectrogramDiffusionPipeline

    if vocoder is not None:  # refuse a broken vocoder before writing anything
        from specdiff.audio.vocoder import Vocoder

        Vocoder.from_pretrained(vocoder)
    model = model_from_checkpoint(checkpoint, use_ema=use_ema)
    pipe = SpectrogramDiffusionPipeline(model.notes_encoder, model.continuous_encoder, model.decoder)
    out = pipe.save_pretrained(out_dir, dtype=torch.float16 if half else torch.float32)
    if vocoder is not None:
        copy_vocoder(vocoder, out)
    return out


def with_folder_decoder_options(config: TrainConfig) -> TrainConfig:
    """A warm start from a pipeline folder whose decoder has extensions (score roll, prediction
    type, output bias) builds the same decoder: its options join ``config.model`` unless set there."""
    folder = Path(config.init_from) if config.init_from else None
    if folder is None or not (folder / "decoder" / "config.json").is_file():
        return config
    from specdiff.models.networks import DECODER_EXTENSIONS

    decoder = json.loads((folder / "decoder" / "config.json").read_text())
    found = {k: decoder[k] for k in DECODER_EXTENSIONS if k in decoder and k not in config.model}
    return config.replace(model={**config.model, **found}) if found else config
