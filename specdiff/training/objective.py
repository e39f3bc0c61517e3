"""The training objective (ORIGINAL.md §4.1-4.2): the three networks as one module (so DDP sees one
forward), the per-example diffusion inputs drawn from the sample counter, rollouts and the loss."""

from __future__ import annotations

import contextlib
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from specdiff.audio.mel import MAX_VALUE, MIN_VALUE
from specdiff.constants import N_MELS
from specdiff.errors import SpecdiffError
from specdiff.midi.decoder_roll import decoder_roll
from specdiff.midi.score_roll import CarryIn
from specdiff.models.decoder import FilmDecoder
from specdiff.models.encoders import ContinuousEncoder, NotesEncoder
from specdiff.sampling.diffusion import (
    alpha_sigma,
    eps_from_prediction,
    logsnr,
    prediction_target,
    q_sample,
    x0_from_prediction,
)
from specdiff.training.config import TARGET_FRAMES

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
        timbre: Tensor | None = None, velocity: Tensor | None = None, carry: CarryIn | None = None,
    ) -> Tensor:  # fmt: skip
        """The decoder's output (its ``prediction_type``) for ``z_t``; a score-conditioned decoder
        gets the roll of these ``tokens`` (all-PAD rows, CFG-dropped, get an all-zero roll; a velocity
        layout's columns from ``velocity`` ``[B, T, 18]``, a batch's ``velocity``), a
        timbre-conditioned one the ``timbre`` indices ``[B]`` (None: the default timbre); ``carry``: what
        rings into each row (a ``roll_carry_in`` decoder's roll reads it)."""
        encodings = self.encode(tokens, context, context_mask)
        roll = self.score_roll(tokens, context, context_mask, velocity, carry)
        return self.decoder(encodings, z_t, t, score_roll=roll, timbre=timbre)

    def score_roll(self, tokens: Tensor, context: Tensor | None = None, context_mask: Tensor | None = None,
                   velocity: Tensor | None = None, carry: CarryIn | None = None) -> Tensor | None:  # fmt: skip
        """The frame-aligned roll of a token batch (with the context-level columns of a
        context-level layout, ``specdiff.midi.score_roll.add_context_level``, and the velocity columns of
        the velocity layout, ``specdiff.midi.velocity_roll.add_velocity_levels``), or None for the
        original architecture."""
        return decoder_score_roll(self.decoder, tokens, context, context_mask, velocity, carry)

    def batch_roll(self, batch: Mapping[str, Tensor]) -> Tensor | None:
        """The frame-aligned roll of a collated batch, with the batch's roll inputs (None: original architecture)."""
        tokens = trim_token_padding(batch["tokens"])
        return self.score_roll(tokens, batch["context"], batch["context_mask"], **roll_inputs(batch))

    def batch_cross_cache(self, batch: Mapping[str, Tensor], roll: Tensor | None = None) -> Any:
        """The decoder's ``CrossAttentionCache`` for a collated batch: its encodings, its roll (``roll``, or
        :meth:`batch_roll`) and, for a timbre-conditioned decoder, its timbres. Its ``frame_prior`` is the score
        prior."""
        encodings = self.encode(trim_token_padding(batch["tokens"]), batch["context"], batch["context_mask"])
        roll = self.batch_roll(batch) if roll is None else roll
        timbre = batch.get("timbre") if self.decoder.timbres else None
        return self.decoder.prepare_cross_attention(encodings, roll, timbre)


def decoder_score_roll(decoder: FilmDecoder, tokens: Tensor, context: Tensor | None = None,
                       context_mask: Tensor | None = None, velocity: Tensor | None = None,
                       carry: CarryIn | None = None) -> Tensor | None:  # fmt: skip
    """The frame-aligned roll ``decoder`` takes for a token batch (its layout, the context-level columns
    filled from ``context`` when given, the velocity columns from ``velocity`` ``[B, T, 18]`` when given,
    what rings in from ``carry`` when the decoder has ``roll_carry_in``; all-PAD rows keep zeros), or None
    for the original architecture."""
    carry = carry if decoder.roll_carry_in else None
    return decoder_roll(tokens, decoder.config["targets_length"], decoder.score_roll_features, context, context_mask,
                        velocity, carry=carry)  # fmt: skip


def roll_inputs(batch: Mapping[str, Tensor]) -> dict[str, Any]:
    """The model's ``velocity`` and ``carry`` keywords for a batch: its velocity columns and its carry-in
    tokens where it has them (feature caches), else nothing (the model's defaults, None)."""
    inputs: dict[str, Any] = {}
    if batch.get("velocity") is not None:
        inputs["velocity"] = batch["velocity"]
    if batch.get("carry_tokens") is not None and batch.get("carry_frames") is not None:
        inputs["carry"] = CarryIn(batch["carry_tokens"], batch["carry_frames"])
    return inputs


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


def example_uniforms(counters: Sequence[int] | Tensor, seed: int) -> Tensor:
    """Per example: one float64 draw from U[0, 1), from that example's own generator
    (``example_seed(seed, counter)``), so a draw does not depend on how the batch is split."""
    draws = []
    for counter in [int(c) for c in counters]:
        gen = torch.Generator().manual_seed(example_seed(seed, counter))
        draws.append(torch.rand(1, generator=gen, dtype=torch.float64)[0])
    return torch.stack(draws) if draws else torch.zeros(0, dtype=torch.float64)


def draw_context_drops(counters: Sequence[int] | Tensor, seed: int, prob: float) -> Tensor:
    """Per example: True (with probability ``prob``) where the context is emptied
    (:attr:`TrainConfig.context_drop_prob`); each example draws from its own generator."""
    return example_uniforms(counters, seed ^ 0xC0_47E7) < prob


def empty_context(batch: dict[str, Tensor], drop: Tensor) -> dict[str, Tensor]:
    """``batch`` with the context of the ``drop`` rows emptied as the pipeline's first segment has it:
    zeros in feature space and an all-False mask (ORIGINAL.md §9.6)."""
    keep = ~drop
    return {**batch, "context": batch["context"] * keep[:, None, None].to(batch["context"].dtype),
            "context_mask": batch["context_mask"].bool() & keep[:, None]}  # fmt: skip


def draw_context_gains(counters: Sequence[int] | Tensor, seed: int, jitter_db: float, salt: int = 0x6A_1E77) -> Tensor:
    """Per example: a gain in dB drawn uniformly from ``[-jitter_db, jitter_db]``
    (:attr:`TrainConfig.context_gain_jitter_db`; another ``salt`` for :attr:`TrainConfig.song_gain_jitter_db`);
    each example draws from its own generator."""
    return (jitter_db * (2.0 * example_uniforms(counters, seed ^ salt) - 1.0)).float()


#: Salt of the song-gain draws (:func:`jitter_song_gain`), apart from the context-gain draws.
SONG_GAIN_SALT = 0x50_6A1E


def louder_features(features: Tensor, gains_db: Tensor, where: Tensor) -> Tensor:
    """``features`` ``[B, T, C]`` (scaled to [-1, 1], :func:`specdiff.audio.mel.scale_features`) made louder or
    quieter by ``gains_db`` ``[B]`` where ``where`` holds: a gain of ``g`` dB is an offset of ``g ln(10) / 20`` on
    the natural-log mel times ``2 / (MAX_VALUE - MIN_VALUE)``; values stay in [-1, 1]."""
    per_db = (math.log(10.0) / 20.0) * 2.0 / (MAX_VALUE - MIN_VALUE)
    offset = (gains_db.to(features.dtype) * per_db)[:, None, None]
    return torch.where(where, (features + offset).clamp(-1.0, 1.0), features)


def jitter_context_gain(batch: dict[str, Tensor], gains_db: Tensor) -> dict[str, Tensor]:
    """``batch`` with each row's context made louder or quieter by ``gains_db`` (:func:`louder_features`).
    Frames at the floor (-1, silence) and masked frames stay as they are, so the context still looks like
    a real spectrogram."""
    context = batch["context"]
    sounding = (context > -1.0 + 1e-3) & batch["context_mask"].bool()[:, :, None]
    return {**batch, "context": louder_features(context, gains_db, sounding)}


def jitter_song_gain(batch: dict[str, Tensor], gains_db: Tensor) -> dict[str, Tensor]:
    """``batch`` with each row's context *and* target made louder or quieter by ``gains_db`` together, as if
    the whole song had been rendered at another level (:func:`jitter_context_gain` on both; frames at the
    floor stay silent). Rows without a context (an empty mask: a song's first segment) keep their level:
    nothing in them could tell the model the gain."""
    has_context = batch["context_mask"].bool().any(dim=1)
    gains_db = torch.where(has_context, gains_db.to(batch["context"].dtype), torch.zeros_like(gains_db))
    shifted = jitter_context_gain(batch, gains_db)
    target = batch["target"]
    shifted["target"] = louder_features(target, gains_db, target > -1.0 + 1e-3)
    return shifted


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
    out = inner(tokens, batch["context"], context_mask, z_prev, t_prev, batch.get("timbre"), **roll_inputs(batch))
    out = out.float()
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
        sub = {key: value.index_select(0, rows) for key, value in batch.items()
               if key in ("context", "timbre", "velocity")}  # fmt: skip
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
        prediction = model(tokens, batch["context"], context_mask, z_t, t, batch.get("timbre"), **roll_inputs(batch))
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
