"""The FiLM decoder (spec §3), in the diffusers ``T5FilmDecoder`` layout, and its options beyond the
original (score roll, score prior, prediction type, timbres, input skip)."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from specdiff.constants import DECODER_EXTENSIONS
from specdiff.models.config import ConfigMixin, register_to_config
from specdiff.models.initialisation import init_weights
from specdiff.models.layers import (
    DECODER_MASK_VALUE,
    EncodingAndMask,
    GatedGeluFeedForward,
    RMSNorm,
    SequenceDropout,
    attend,
    merge_heads,
    split_heads,
)
from specdiff.models.low_noise_expert import EXPERT_ANCHORS, SCORE_PLANES, LowNoiseExpert, score_planes
from specdiff.sampling.diffusion import alpha_sigma, edm_prior_weight

# ---------------------------------------------------------------------------------------------
# FiLM decoder (diffusers T5FilmDecoder layout)
# ---------------------------------------------------------------------------------------------


FilmParams = tuple[Tensor, Tensor]  # (scale, shift), each [B or 1, 1, D]


class FiLMLayer(nn.Module):
    """``x * (1 + scale) + shift`` with ``[scale | shift] = Linear(4D -> 2D)(cond)`` (spec §3.4).

    ``params`` depends on the noise time only, so a sampler computes it once per step (or once
    per distinct time for a whole song, :meth:`FilmDecoder.film_conditioning`) and ``apply`` uses it
    at every position. ``forward`` is the two together.
    """

    def __init__(self, in_features: int, out_features: int) -> None:
        super().__init__()
        self.scale_bias = nn.Linear(in_features, out_features * 2, bias=False)

    def params(self, cond: Tensor) -> FilmParams:
        scale, shift = self.scale_bias(cond).chunk(2, dim=-1)
        return scale, shift

    @staticmethod
    def apply(x: Tensor, params: FilmParams) -> Tensor:
        scale, shift = params
        return x * (1 + scale) + shift

    def forward(self, x: Tensor, cond: Tensor) -> Tensor:
        return self.apply(x, self.params(cond))


class Attention(nn.Module):
    """diffusers ``Attention(scale_qk=False, out_bias=False)``: ``to_q, to_k, to_v, to_out.0``."""

    def __init__(self, d_model: int, num_heads: int, d_kv: int, dropout_rate: float) -> None:
        super().__init__()
        inner = num_heads * d_kv
        self.num_heads = num_heads
        self.to_q = nn.Linear(d_model, inner, bias=False)
        self.to_k = nn.Linear(d_model, inner, bias=False)
        self.to_v = nn.Linear(d_model, inner, bias=False)
        self.to_out = nn.ModuleList([nn.Linear(inner, d_model, bias=False), nn.Identity()])
        self.dropout_rate = dropout_rate

    def keys_values(self, source: Tensor) -> tuple[Tensor, Tensor]:
        return split_heads(self.to_k(source), self.num_heads), split_heads(self.to_v(source), self.num_heads)

    def forward(self, x: Tensor, keys_values: tuple[Tensor, Tensor] | None = None, bias: Tensor | None = None):
        k, v = keys_values if keys_values is not None else self.keys_values(x)
        p = self.dropout_rate if self.training else 0.0
        out = attend(split_heads(self.to_q(x), self.num_heads), k, v, bias, p)
        return self.to_out[0](merge_heads(out))


class T5LayerSelfAttentionCond(nn.Module):
    def __init__(self, d_model: int, num_heads: int, d_kv: int, dropout_rate: float) -> None:
        super().__init__()
        self.layer_norm = RMSNorm(d_model)
        self.FiLMLayer = FiLMLayer(d_model * 4, d_model)
        self.attention = Attention(d_model, num_heads, d_kv, dropout_rate)
        self.dropout = SequenceDropout(dropout_rate)

    def forward(self, y: Tensor, film: FilmParams) -> Tensor:
        # The decoder's self-attention is unmasked and not causal (spec §3.4).
        return y + self.dropout(self.attention(FiLMLayer.apply(self.layer_norm(y), film)))


class T5LayerCrossAttention(nn.Module):
    def __init__(self, d_model: int, num_heads: int, d_kv: int, dropout_rate: float) -> None:
        super().__init__()
        self.attention = Attention(d_model, num_heads, d_kv, dropout_rate)
        self.layer_norm = RMSNorm(d_model)
        self.dropout = SequenceDropout(dropout_rate)

    def forward(self, y: Tensor, keys_values: tuple[Tensor, Tensor], bias: Tensor, rows: Tensor | None) -> Tensor:
        """``rows``: the batch rows that have at least one valid key (None: all of them).

        MSD's zero_activations_if_masked: a row whose keys are all masked (the unconditional pass
        of classifier-free guidance, spec §3.4) gets no attention output at all, so it is not
        computed for those rows: exactly the same result, and half the cross-attention under CFG.
        """
        if rows is None:
            out = self.attention(self.layer_norm(y), keys_values, bias)
        else:
            out = y.new_zeros(y.shape)
            if rows.numel():
                some = self.attention(self.layer_norm(y.index_select(0, rows)), keys_values, bias)
                out = out.to(some.dtype).index_copy(0, rows, some)
        return y + self.dropout(out)


class T5LayerFFCond(nn.Module):
    def __init__(self, d_model: int, d_ff: int, dropout_rate: float) -> None:
        super().__init__()
        self.DenseReluDense = GatedGeluFeedForward(d_model, d_ff, dropout_rate)
        self.film = FiLMLayer(d_model * 4, d_model)
        self.layer_norm = RMSNorm(d_model)
        self.dropout = SequenceDropout(dropout_rate)

    def forward(self, y: Tensor, film: FilmParams) -> Tensor:
        return y + self.dropout(self.DenseReluDense(FiLMLayer.apply(self.layer_norm(y), film)))


class DecoderLayer(nn.Module):
    """``layer.0`` FiLM self-attention, ``layer.1`` cross-attention, ``layer.2`` FiLM feed-forward."""

    def __init__(self, d_model: int, num_heads: int, d_kv: int, d_ff: int, dropout_rate: float) -> None:
        super().__init__()
        self.layer = nn.ModuleList(
            [
                T5LayerSelfAttentionCond(d_model, num_heads, d_kv, dropout_rate),
                T5LayerCrossAttention(d_model, num_heads, d_kv, dropout_rate),
                T5LayerFFCond(d_model, d_ff, dropout_rate),
            ]
        )

    def forward(self, y: Tensor, film: LayerFilm, keys_values: tuple[Tensor, Tensor], bias: Tensor,
                rows: Tensor | None) -> Tensor:  # fmt: skip
        y = self.layer[0](y, film[0])
        y = self.layer[1](y, keys_values, bias, rows)
        return self.layer[2](y, film[1])

    def film_params(self, cond: Tensor) -> LayerFilm:
        return self.layer[0].FiLMLayer.params(cond), self.layer[2].film.params(cond)


LayerFilm = tuple[FilmParams, FilmParams]  # (self-attention FiLM, feed-forward FiLM) of one layer


@dataclass
class CrossAttentionCache:
    """Cross-attention keys/values of every decoder layer for one set of encodings.

    They depend only on the encodings, so a sampler computes them once per segment instead of once
    per denoising step. Only what can matter is kept (spec §9.4 masking; exact, not approximate):

    - rows: batch rows with no valid key at all (the unconditional half of CFG) get zero
      cross-attention output, so they hold no keys and are skipped (``rows`` lists the others);
    - keys: positions masked in every kept row get weight exp(-1e10 - max) = 0 exactly, so they are
      dropped (e.g. the empty first-segment context, the PAD tail of a batch).
    """

    keys_values: list[tuple[Tensor, Tensor]]  # per layer, each [R, H, K, d_kv] for the R kept rows
    bias: Tensor  # [R, 1, 1, K] additive mask, 0 or -1e10
    rows: Tensor | None  # [R] batch indices of the rows with a valid key; None: every row
    batch: int  # B, the decoder batch the cache serves
    # [B, T, D]: the projected score roll added to the decoder input (score conditioning only)
    frame_conditioning: Tensor | None = None
    # [B, T, input_dims]: the score prior's x0 estimate (decoders with score_prior only)
    frame_prior: Tensor | None = None
    # [B, T, input_dims, planes]: the low-noise expert's score planes (low_noise_expert_planes only)
    expert_planes: Tensor | None = None
    # [B', T, input_dims]: what an "estimate"-anchored low-noise expert denoises around; a sampler sets it
    # from its first step (B' = the conditional rows)
    expert_anchor: Tensor | None = None

    @property
    def batch_size(self) -> int:
        return self.batch

    @property
    def any_key(self) -> Tensor:
        """``[B, 1, 1]``: 1.0 where a row has at least one valid key, else 0.0."""
        flags = torch.ones(self.batch, dtype=self.bias.dtype, device=self.bias.device)
        if self.rows is not None:
            flags = torch.zeros_like(flags).index_fill(0, self.rows, 1.0)
        return flags[:, None, None]

    @property
    def num_keys(self) -> int:
        return self.bias.shape[-1]

    def _row_indices(self) -> Tensor:
        if self.rows is None:
            return torch.arange(self.batch, device=self.bias.device)
        return self.rows

    def repeat(self, n: int) -> CrossAttentionCache:
        """The same cache for ``n`` times the batch (e.g. several noise samples of one segment)."""
        rows = None
        if self.rows is not None:
            rows = torch.cat([self.rows + i * self.batch for i in range(n)])
        frames = None if self.frame_conditioning is None else self.frame_conditioning.repeat(n, 1, 1)
        prior = None if self.frame_prior is None else self.frame_prior.repeat(n, 1, 1)
        planes = None if self.expert_planes is None else self.expert_planes.repeat(n, 1, 1, 1)
        return CrossAttentionCache(
            [(k.repeat(n, 1, 1, 1), v.repeat(n, 1, 1, 1)) for k, v in self.keys_values],
            self.bias.repeat(n, 1, 1, 1),
            rows,
            self.batch * n,
            frames,
            prior,
            planes,
        )

    def first_rows(self, n: int) -> CrossAttentionCache:
        """The cache of the batch's first ``n`` rows (the conditional half of a guided batch, whose
        unconditional half a sampler no longer runs)."""
        if not 0 < n <= self.batch:
            raise ValueError(f"first_rows needs 0 < n <= {self.batch}, got {n}")
        kept = slice(None, n) if self.rows is None else self.rows < n  # keys_values / bias hold the kept rows
        cut = [None if x is None else x[:n] for x in (self.frame_conditioning, self.frame_prior, self.expert_planes)]
        return CrossAttentionCache(
            [(k[kept], v[kept]) for k, v in self.keys_values],
            self.bias[kept],
            None if self.rows is None else self.rows[kept],
            n,
            *cut,
            expert_anchor=self.expert_anchor,
        )

    @staticmethod
    def cat(caches: Sequence[CrossAttentionCache]) -> CrossAttentionCache:
        """Concatenate caches along the batch; shorter key sets are padded with masked keys (exact)."""
        keys = max(c.num_keys for c in caches)

        layers = []
        for kv in zip(*(c.keys_values for c in caches)):
            layers.append(
                (
                    torch.cat([F.pad(k, (0, 0, 0, keys - k.shape[2])) for k, _ in kv]),
                    torch.cat([F.pad(v, (0, 0, 0, keys - v.shape[2])) for _, v in kv]),
                )
            )
        bias = torch.cat([F.pad(c.bias, (0, keys - c.num_keys), value=DECODER_MASK_VALUE) for c in caches])
        offsets, rows, all_rows = 0, [], True
        for c in caches:
            rows.append(c._row_indices() + offsets)
            offsets += c.batch
            all_rows &= c.rows is None
        joined = []
        parts_by_field = ([c.frame_conditioning for c in caches], [c.frame_prior for c in caches],
                          [c.expert_planes for c in caches])  # fmt: skip
        for parts in parts_by_field:
            if any(p is None for p in parts) and not all(p is None for p in parts):
                raise ValueError("cannot concatenate caches with and without score conditioning")
            joined.append(None if parts[0] is None else torch.cat(parts))
        return CrossAttentionCache(layers, bias, None if all_rows else torch.cat(rows), offsets, *joined)


def timestep_embedding(time: Tensor, dim: int, max_period: float) -> Tensor:
    """T2T sinusoid ``[sin(s * inv), cos(s * inv)]`` with ``inv_i = exp(-i ln(max_period) / (dim/2 - 1))``.

    Equals diffusers' ``get_timestep_embedding(s, dim, max_period, downscale_freq_shift=1)`` (spec §3.4).
    """
    half = dim // 2
    exponent = -math.log(max_period) * torch.arange(half, dtype=torch.float32, device=time.device) / (half - 1)
    angles = time.float()[:, None] * torch.exp(exponent)[None, :]
    return torch.cat([torch.sin(angles), torch.cos(angles)], dim=-1)


#: What the decoder's output means (diffusers' ``prediction_type`` names). The original predicts
#: the noise; the others are training-time choices of an extension (``specdiff.sampling.diffusion``).
PREDICTION_TYPES = ("epsilon", "v_prediction", "sample", "edm")

#: Noise times at which the ``input_skip`` extension holds one local linear map each; between two
#: knots the maps are blended linearly in ``t``. Denser at low noise, where the best map changes fastest.
INPUT_SKIP_KNOTS: tuple[float, ...] = (0.0, 0.1, 0.2, 0.35, 0.5, 0.65, 0.8, 0.9, 1.0)

#: Decoder parameters that extensions add zero-initialised, so a warm start from a folder without
#: them keeps that folder's output (train.Trainer's warm start accepts their absence).
ZERO_STARTED_DECODER_PARAMETERS = ("timbre_embedding", "timbre_prior", "input_context", "input_skip",
                                   "additive_prior.program_colours", "additive_prior.timbre_drum_decays",
                                   "additive_prior.timbre_release_decays",
                                   "additive_prior.timbre_release_gains",
                                   "additive_prior.program_release_gains",
                                   "additive_prior.program_release_decays",
                                   "additive_prior.timbre_program_colours")  # fmt: skip
#: Decoder parameters that extensions add and that must be fitted before training continues from a model
#: without them (``specdiff.training.prior_fit.fit_additive_prior``, run by ``score_prior_fit``).
FITTED_DECODER_PARAMETERS = ("additive_prior",)


def _check_extensions(
    prediction_type: str,
    score_roll_features: int,
    score_prior: bool,
    input_context_frames: int,
    input_skip_frames: int,
    timbres: Sequence[str],
    additive_prior: bool = False,
    drum_decay_powers: Sequence[float] = (),
    timbre_drum_decays: bool = False,
    drum_decay_gates: Sequence[int] = (),
    roll_carry_in: bool = False,
    release_decay_powers: Sequence[float] = (),
    release_gain_frames: int = 0,
    program_release_gains: bool = False,
    program_release_decays: bool = False,
    timbre_program_colours: bool = False,
) -> None:
    """Raise ValueError for a :class:`FilmDecoder` configuration whose extensions do not fit together."""
    if prediction_type not in PREDICTION_TYPES:
        raise ValueError(f"unknown prediction_type {prediction_type!r}; choose one of {', '.join(PREDICTION_TYPES)}")
    if int(score_roll_features) < 0:
        raise ValueError(f"score_roll_features must be >= 0, got {score_roll_features}")
    if roll_carry_in and not int(score_roll_features):
        raise ValueError("roll_carry_in needs score_roll_features > 0")
    if score_prior and not (int(score_roll_features) and prediction_type == "edm"):
        raise ValueError("score_prior needs score_roll_features > 0 and prediction_type 'edm'")
    if additive_prior:
        from specdiff.midi.score_roll import EXTENDED_ROLL_FEATURES

        if not score_prior or int(score_roll_features) < EXTENDED_ROLL_FEATURES:
            raise ValueError(
                "additive_prior needs score_prior and an extended roll layout (score_roll_features >= 7121)"
            )
    if drum_decay_powers:
        if not additive_prior:
            raise ValueError("drum_decay_powers needs additive_prior")
        from specdiff.models.additive_prior import check_drum_decay_powers

        check_drum_decay_powers(drum_decay_powers)
    if release_decay_powers:
        if not additive_prior:
            raise ValueError("release_decay_powers needs additive_prior")
        from specdiff.models.additive_prior import check_drum_decay_powers

        check_drum_decay_powers(release_decay_powers, "release_decay_powers")
    if release_gain_frames:
        if not additive_prior:
            raise ValueError("release_gain_frames needs additive_prior")
        from specdiff.models.additive_prior import check_release_gain_frames

        check_release_gain_frames(release_gain_frames)
    _check_program_extensions(int(score_roll_features), {
        "program_release_gains": (program_release_gains, bool(release_gain_frames), "release_gain_frames"),
        "program_release_decays": (program_release_decays, additive_prior, "additive_prior"),
        "timbre_program_colours": (timbre_program_colours, additive_prior and bool(timbres), "additive_prior, timbres"),
    })  # fmt: skip
    if drum_decay_gates:
        if not additive_prior:
            raise ValueError("drum_decay_gates needs additive_prior")
        from specdiff.models.additive_prior import check_drum_decay_gates

        check_drum_decay_gates(drum_decay_gates)
    if timbre_drum_decays and not (additive_prior and timbres):
        raise ValueError("timbre_drum_decays needs additive_prior and timbres")
    for key, frames in (("input_context_frames", int(input_context_frames)),
                        ("input_skip_frames", int(input_skip_frames))):  # fmt: skip
        if frames < 0 or (frames and frames % 2 == 0):
            raise ValueError(f"{key} must be 0 or odd, got {frames}")
    if input_skip_frames and prediction_type != "edm":
        raise ValueError("input_skip_frames needs prediction_type 'edm'")
    if len(set(timbres)) != len(timbres):
        raise ValueError(f"timbre names must be unique, got {timbres}")


def _check_program_extensions(score_roll_features: int, options: dict[str, tuple[bool, bool, str]]) -> None:
    """Raise ValueError for an extension of the program roll layout that is on (``options``: name -> (on, its other
    needs met, what they are)) without that layout or its other needs."""
    from specdiff.midi.score_roll import PROGRAM_ROLL_FEATURES

    for name, (on, needs_met, needs) in options.items():
        if on and (not needs_met or score_roll_features != PROGRAM_ROLL_FEATURES):
            raise ValueError(f"{name} needs {needs} and the program roll layout "
                             f"(score_roll_features = {PROGRAM_ROLL_FEATURES})")  # fmt: skip


def _additive_prior(config: Any, bins: int) -> nn.Module:
    """The ``additive_prior`` extension's module for a decoder ``config`` (imported only by decoders that
    have one): its roll layout, drum envelopes and, with ``timbre_drum_decays``, one offset set per timbre."""
    from specdiff.models.additive_prior import AdditivePrior

    timbres = len(config.get("timbres", [])) if config.get("timbre_drum_decays") else 0
    powers, gates = config.get("drum_decay_powers", []), config.get("drum_decay_gates", [])
    releases, gain_frames = config.get("release_decay_powers", []), int(config.get("release_gain_frames", 0))
    return AdditivePrior(int(config["score_roll_features"]), bins, powers, timbres, gates, releases, gain_frames,
                         bool(config.get("program_release_gains", False)),
                         bool(config.get("program_release_decays", False)),
                         len(config.get("timbres", [])) if config.get("timbre_program_colours") else 0)  # fmt: skip


class FilmDecoder(ConfigMixin, nn.Module):
    """FiLM-conditioned, non-causal T5 decoder that predicts the noise (spec §3.4; ``T5FilmDecoder``).

    ``forward(encodings_and_masks, z_t [B, T, 128], noise_time [B] in [0, 1)) -> eps [B, T, 128]``.

    Extensions, all off by default (then the module is exactly the original, key for key):

    - ``score_roll_features > 0``: frame-aligned score conditioning. A per-frame piano roll
      (``specdiff.midi.score_roll``; the value names the layout, ``score_roll.ROLL_LAYOUTS``: 6832 base,
      7121 extended, 7250 plus the context level, 7268 plus the notes' relative velocities, 7396 plus the
      sounding programs) enters the
      decoder input through ``score_projection`` (a sparse embedding sum: roll @ W^T), added to
      ``continuous_inputs_projection``'s output.
    - ``prediction_type``: ``"epsilon"`` (the original), ``"v_prediction"``, ``"sample"`` (x0) or
      ``"edm"`` (x0 with the EDM skip preconditioning, ``specdiff.sampling.diffusion.edm_coefficients``);
      samplers convert any of them to eps with :func:`specdiff.sampling.diffusion.eps_from_prediction`.
    - ``spec_out_bias``: a bias on the output layer (the original's head has none).
    - ``score_prior`` (needs the roll and ``prediction_type="edm"``): a linear map of each frame's
      roll to a log-mel estimate ``p`` (``score_prior_projection``: a sparse sum like
      ``score_projection``, plus a bias; an all-zero roll, as in the null condition of CFG, gives
      the bias), added to the output with the weight of
      :func:`specdiff.sampling.diffusion.edm_prior_weight`, so the network refines ``p`` at high noise
      instead of having to build the roll -> spectrogram map through all its layers (a closed-form
      linear fit of that map scores far above a decoder trained for hundreds of steps:
      ``benchmarks/results/trainability.md``).
    - ``additive_prior`` (needs ``score_prior`` and an extended roll layout): a second prior term, an
      additive synthesiser that sums each sounding note's power spectrum
      (:class:`specdiff.models.additive_prior.AdditivePrior`), added to the linear one. Why: the linear
      map adds the notes' *log* spectra, which overshoots dense frames and undershoots sparse ones
      (``benchmarks/results/additive_prior.md``).
    - ``drum_decay_powers`` (needs ``additive_prior``; empty = off): powers ``k > 1`` of the roll's drum
      decay envelope that the additive prior gives templates of their own, so a drum hit can fade as
      fast as a SoundFont's does (``benchmarks/results/drum_decay_idioms_0130.md``).
    - ``drum_decay_gates`` (needs ``additive_prior``; empty = off): frame counts k; a drum hit also drives a
      box over its first k frames with its own template per drum pitch, as TimGM6mb's drums are gated samples
      that fall silent within a frame (``benchmarks/results/drum_decay_idioms_0130.md``).
    - ``timbre_drum_decays`` (needs ``additive_prior`` and ``timbres``): each timbre gets a zero-started
      log offset on every drum decay template of the additive prior, as SoundFonts' drums ring for
      different times (TimGM6mb's stop dead, FluidR3_GM's ring: ``benchmarks/results/drum_decay_idioms_0130.md``).
    - ``release_decay_powers`` (needs ``additive_prior``; empty = off): powers ``k > 1`` of the roll's release
      decays that the additive prior gives templates of their own (with per-timbre offsets on all release
      templates when it has ``timbre_drum_decays``), so a chord's release can fall as fast as a SoundFont's
      does (``benchmarks/results/release_tails.md``).
    - ``release_gain_frames`` (needs ``additive_prior``; 0 = off): for that many frames after a note ends, the
      additive prior keeps the note's held spectrum under a fitted gain per family and frame (per timbre with
      ``timbre_drum_decays``), so a piano rings on and a brass chord falls to silence as the SoundFont's do
      (``benchmarks/results/release_tails_bundled.md``).
    - ``program_release_gains`` (needs ``release_gain_frames`` and the program layout): those gains also get a
      log offset per GM program and frame, read for a family from the programs of it heard so far in the
      segment: one family's programs release very differently (TimGM6mb's drawbar organ falls to silence in 12
      frames, its church organ in 33; ``benchmarks/results/program_release_lengths.md``).
    - ``program_release_decays`` (needs ``additive_prior`` and the program layout): the per-family release
      decay templates also get a log offset per GM program and release time constant (the mean over the
      family's programs heard so far in the segment), so each program mixes the fast and the slow decay in its
      own proportion: one fade per family carried the church organ's long release into a percussive organ's
      short notes.
    - ``timbre_program_colours`` (needs ``additive_prior``, ``timbres`` and the program layout): each timbre gets
      its own log offsets on the additive prior's program colours, per tonal kind (onset, sustain, decay), so two
      SoundFonts' pianos need not share one spectrum and envelope (``benchmarks/results/timbre_bands_colours.md``).
    - ``roll_carry_in`` (needs the roll): the roll also reads the previous segment's tokens, so notes and
      drum hits that ring into a segment keep their decay and release there (a tied note's decay from its
      true onset; :func:`specdiff.midi.score_roll.add_carried_notes`). Without it a segment's first frames
      are drawn as if the music started there (``benchmarks/results/segment_seams_idioms_val.md``). Training
      windows and the pipeline both know the previous tokens; the decoder itself only reads the flag.
    - ``gm_programs``: the notes keep their General MIDI program where the original maps each to its
      Slakh class (34 classes; every program from 88 up is 88: ORIGINAL.md §2.5 step 3); the vocabulary
      has all 128 program tokens, so only the reading of the MIDI file changes (``slakh_programs=False``
      in ``specdiff.midi``; the pipeline and the training data follow this flag). Why: the programs of
      one class sound unlike each other; TimGM6mb, a sustained chord, each program's band levels lie
      1.6 nat (mean over four band groups) from its class's mean (``benchmarks/results/program_colours_timgm6mb.md``).
      The decoder itself does not use it.
    - ``timbres`` (a list of names, e.g. SoundFont names): timbre conditioning. A learned vector
      per timbre (``timbre_embedding``) is added to every frame of the decoder input, and with
      the score prior a learned log-mel offset per timbre (``timbre_prior``) to the prior, so
      training on renders with several SoundFonts teaches each sound instead of blurring them
      (a "version" embedding, as Maman et al. 2025 condition on the recording). Both start at
      zero; the first name is the default. The null condition of guidance keeps the timbre.
    - ``input_context_frames`` (odd, 0 = off): a zero-started 1-D convolution over time
      (``input_context``: ``input_dims`` -> ``d_model``, that many frames wide) of the noisy input,
      added to its per-frame projection. The original sees each noisy frame alone and can only
      find its neighbours through attention over fixed, permuted position codes; a measured
      warm-started decoder used none of them (its output did not respond to the input's noise,
      so a multi-step sampler drew the prior plus white noise: ``benchmarks/results/noise_response.md``). The
      convolution hands every frame its neighbourhood, the local smoothness a denoiser needs.
    - ``input_skip_frames`` (odd, 0 = off; needs ``prediction_type="edm"``): a zero-started local
      linear denoiser beside the network. A 1-D convolution (``input_skip``) of the noisy residual
      ``z - alpha_t p`` (``p``: the score prior, 0 without it), that many frames wide, holds one
      ``input_dims -> input_dims`` map per noise time of :data:`INPUT_SKIP_KNOTS`; the maps of the
      two knots around ``t`` are blended and added to the output. Why: the network's last hidden
      state carries too little of the noisy input for its output layer to cancel the noise the EDM
      skip passes through (a ridge read-out of it reaches a noise leak of 0.12 at t = 0.5 where 0.2
      means no denoising), while a 9-frame linear map of the input removes most of it
      (``benchmarks/results/noise_response.md``). ``specdiff.training.train.fit_input_skip`` fits it in
      closed form; training refines it with the rest.
    - ``low_noise_expert_channels`` (0 = off) and ``low_noise_expert_below`` (a noise time; needs
      ``score_prior``): rows whose noise time is below it are denoised by a small 2-D convolutional
      network (``low_noise_expert``, :class:`specdiff.models.low_noise_expert.LowNoiseExpert`, that many
      channels) around the score prior instead of by the transformer, which then does not run at all
      when a whole batch is below. The transformer's estimate leaves temporal roughness that an
      iterated sampler accumulates; the expert's does not (``benchmarks/results/low_noise_expert.md``).
      Trained on its own with the rest frozen (``specdiff train-expert``).
      ``low_noise_expert_anchor`` says what it denoises around: ``"prior"`` (the score prior) or
      ``"estimate"`` (the network's estimate at the sampler's first step, which the sampler keeps in the
      cache's ``expert_anchor``); ``low_noise_expert_planes`` gives it the score's onset, drum and silence
      planes (:func:`specdiff.models.low_noise_expert.score_planes`).
    """

    #: JSON forms of the extensions' arguments (``config`` holds them as config.json will).
    config_casts = {
        "score_roll_features": int,
        "spec_out_bias": bool,
        "score_prior": bool,
        "additive_prior": bool,
        "timbres": lambda names: [str(name) for name in names],
        "input_context_frames": int,
        "input_skip_frames": int,
        "drum_decay_powers": lambda powers: [float(power) for power in powers],
        "drum_decay_gates": lambda gates: [int(gate) for gate in gates],
        "gm_programs": bool,
        "timbre_drum_decays": bool,
        "roll_carry_in": bool,
        "release_decay_powers": lambda powers: [float(power) for power in powers],
        "release_gain_frames": int,
        "program_release_gains": bool,
        "program_release_decays": bool,
        "timbre_program_colours": bool,
        "low_noise_expert_channels": int,
        "low_noise_expert_below": float,
        "low_noise_expert_anchor": str,
        "low_noise_expert_planes": bool,
    }
    #: The extensions appear in ``config`` only when on, so an original folder's config is unchanged.
    config_optional = frozenset(DECODER_EXTENSIONS)

    @register_to_config
    def __init__(
        self,
        input_dims: int = 128,
        targets_length: int = 256,
        max_decoder_noise_time: float = 20000.0,  # diffusers' default is 2000.0, the checkpoint's 20000.0 (spec §9.1)
        d_model: int = 768,
        num_layers: int = 12,
        num_heads: int = 12,
        d_kv: int = 64,
        d_ff: int = 2048,
        dropout_rate: float = 0.1,
        score_roll_features: int = 0,
        prediction_type: str = "epsilon",
        spec_out_bias: bool = False,
        score_prior: bool = False,
        timbres: Sequence[str] = (),
        input_context_frames: int = 0,
        input_skip_frames: int = 0,
        additive_prior: bool = False,
        drum_decay_powers: Sequence[float] = (),
        gm_programs: bool = False,
        timbre_drum_decays: bool = False,
        drum_decay_gates: Sequence[int] = (),
        roll_carry_in: bool = False,
        release_decay_powers: Sequence[float] = (),
        release_gain_frames: int = 0,
        program_release_gains: bool = False,
        program_release_decays: bool = False,
        timbre_program_colours: bool = False,
        low_noise_expert_channels: int = 0,
        low_noise_expert_below: float = 0.0,
        low_noise_expert_anchor: str = "prior",
        low_noise_expert_planes: bool = False,
    ) -> None:
        super().__init__()
        _check_extensions(prediction_type, score_roll_features, score_prior, input_context_frames, input_skip_frames,
                          self.timbres, additive_prior, drum_decay_powers, timbre_drum_decays, drum_decay_gates,
                          roll_carry_in, release_decay_powers, release_gain_frames, program_release_gains,
                          program_release_decays, timbre_program_colours)  # fmt: skip
        self.conditioning_emb = nn.Sequential(nn.Linear(d_model, d_model * 4, bias=False), nn.SiLU(),
                                              nn.Linear(d_model * 4, d_model * 4, bias=False), nn.SiLU())  # fmt: skip
        self.position_encoding = nn.Embedding(targets_length, d_model).requires_grad_(False)  # fixed, not learnt
        self.continuous_inputs_projection = nn.Linear(input_dims, d_model, bias=False)
        self.dropout = SequenceDropout(dropout_rate)
        self.decoders = nn.ModuleList(
            [DecoderLayer(d_model, num_heads, d_kv, d_ff, dropout_rate) for _ in range(num_layers)]
        )
        self.decoder_norm = RMSNorm(d_model)
        self.post_dropout = SequenceDropout(dropout_rate)
        self.spec_out = nn.Linear(d_model, input_dims, bias=bool(spec_out_bias))
        self.score_projection = None
        if score_roll_features:
            self.score_projection = nn.Linear(int(score_roll_features), d_model, bias=False)
        self.score_prior_projection = None
        if score_prior:
            self.score_prior_projection = nn.Linear(int(score_roll_features), input_dims)
        self.timbre_embedding = self.timbre_prior = None
        if timbres:
            self.timbre_embedding = nn.Embedding(len(timbres), d_model)
            if score_prior:
                self.timbre_prior = nn.Embedding(len(timbres), input_dims)
        self.input_context = None
        if input_context_frames:
            self.input_context = nn.Conv1d(
                input_dims, d_model, int(input_context_frames), padding=int(input_context_frames) // 2, bias=False
            )
        self.input_skip = None
        if input_skip_frames:
            self.input_skip = nn.Conv1d(input_dims, input_dims * len(INPUT_SKIP_KNOTS), int(input_skip_frames),
                                        padding=int(input_skip_frames) // 2, bias=False)  # fmt: skip
        init_weights(self)
        for table in (self.timbre_embedding, self.timbre_prior, self.input_context, self.input_skip):
            if table is not None:  # start as the model without them (warm starts keep their output)
                nn.init.zeros_(table.weight)
        # built after init_weights, which would redraw its context-level gain (it starts at 0 dB)
        self.additive_prior = None
        if additive_prior:
            self.additive_prior = _additive_prior(self.config, input_dims)
        self.low_noise_expert = _low_noise_expert(self.config)

    @property
    def prediction_type(self) -> str:
        return self.config.get("prediction_type", "epsilon")

    @property
    def score_roll_features(self) -> int:
        return int(self.config.get("score_roll_features", 0))

    @property
    def roll_carry_in(self) -> bool:
        """Whether the roll also reads what rings in from the previous segment (the ``roll_carry_in`` option)."""
        return bool(self.config.get("roll_carry_in", False))

    @property
    def timbres(self) -> list[str]:
        """The timbre names this decoder is conditioned on (empty: no timbre conditioning)."""
        return list(self.config.get("timbres", []))

    def timbre_index(self, name: str | None) -> int:
        """The index of timbre ``name`` (None: the default, index 0); a clear error for unknown names."""
        names = self.timbres
        if name is None:
            return 0
        if not names:
            raise ValueError(f"this model has no timbre conditioning (asked for timbre {name!r})")
        if name not in names:
            raise ValueError(f"unknown timbre {name!r}; this model knows {', '.join(names)}")
        return names.index(name)

    def project_score_roll(self, score_roll: Tensor, weight: Tensor | None = None) -> Tensor:
        """``[B, T, F]`` roll -> ``[B, T, D]``: ``roll @ W^T`` as a sum of the W columns of its
        nonzero entries (a roll is >99% zeros; same values as the dense product). ``weight``:
        ``[D, F]``, default ``score_projection``'s."""
        weight = self.score_projection.weight if weight is None else weight  # [D, F]
        batch, frames, features = score_roll.shape
        if features != weight.shape[1]:
            raise ValueError(f"score roll has {features} features, the decoder expects {weight.shape[1]}")
        flat = score_roll.reshape(batch * frames, features)
        row, col = flat.nonzero(as_tuple=True)
        contributions = weight.t()[col] * flat[row, col].to(weight.dtype)[:, None]
        out = weight.new_zeros(batch * frames, weight.shape[0]).index_add(0, row, contributions)
        return out.reshape(batch, frames, -1)

    def time_conditioning(self, decoder_noise_time: Tensor) -> Tensor:
        """Noise time ``[B]`` in [0, 1) -> FiLM conditioning ``[B, 1, 4D]``."""
        max_time = float(self.config["max_decoder_noise_time"])
        emb = timestep_embedding(decoder_noise_time * max_time, self.config["d_model"], max_time)
        dtype = self.continuous_inputs_projection.weight.dtype
        return self.conditioning_emb(emb.to(dtype)).unsqueeze(1)

    def film_conditioning(self, decoder_noise_time: Tensor) -> list[LayerFilm]:
        """Noise time ``[B]`` -> every layer's FiLM ``(scale, shift)`` pairs, each ``[B, 1, D]``.

        The time-dependent part of a step: its matrix-vector products read 2 x 4D x 2D weights per
        layer (113 M of the base decoder's ~190 M parameters). A sampler computes it once per step
        time, with batch 1 when every row shares the time (broadcasting does the rest), and can keep
        it for later segments, which run the same times.
        """
        cond = self.time_conditioning(decoder_noise_time)
        return [layer.film_params(cond) for layer in self.decoders]

    def prepare_cross_attention(
        self,
        encodings_and_masks: Sequence[EncodingAndMask],
        score_roll: Tensor | None = None,
        timbre: Tensor | None = None,
    ) -> CrossAttentionCache:
        """Concatenate the encodings along the sequence (spec §9.4) and project keys/values per layer.

        Rows without any valid key and keys masked in every row are left out (see
        :class:`CrossAttentionCache`): the decoder output is the same up to float rounding.
        ``score_roll`` ``[B, T, F]`` (score-conditioned decoders only; None: all zeros, as in the
        unconditional pass of classifier-free guidance) is projected here, once per segment.
        ``timbre`` ``[B]`` (or ``[1]``, broadcast) holds timbre indices (decoders with ``timbres``;
        None: the default, 0).
        """
        encoded = torch.cat([enc for enc, _ in encodings_and_masks], dim=1)
        mask = torch.cat([m.bool() for _, m in encodings_and_masks], dim=1)
        batch = encoded.shape[0]
        has_key = mask.any(dim=1)
        rows = None
        if not bool(has_key.all()):  # one host sync per segment, not per step
            rows = has_key.nonzero().flatten()
            encoded, mask = encoded.index_select(0, rows), mask.index_select(0, rows)
        used = mask.any(dim=0)
        if not bool(used.all()):
            keep = used.nonzero().flatten()
            encoded, mask = encoded.index_select(1, keep), mask.index_select(1, keep)
        bias = torch.zeros(mask.shape, dtype=encoded.dtype, device=encoded.device)
        bias = bias.masked_fill(~mask, DECODER_MASK_VALUE)[:, None, None, :]
        keys_values = [layer.layer[1].attention.keys_values(encoded) for layer in self.decoders]
        frames = prior = None
        if self.timbre_embedding is not None:
            if timbre is None:
                timbre = torch.zeros(1, dtype=torch.long, device=encoded.device)
            timbre = timbre.to(device=self.timbre_embedding.weight.device, dtype=torch.long).reshape(-1)
        if self.score_projection is not None and score_roll is not None:
            if self.score_prior_projection is None:
                frames = self.project_score_roll(score_roll)
            else:  # one sparse pass for both projections
                prior_layer, weights = self.score_prior_projection, self.score_projection.weight
                both = self.project_score_roll(score_roll, torch.cat([weights, prior_layer.weight]))
                frames, prior = both.split([weights.shape[0], prior_layer.out_features], dim=-1)
                prior = prior + prior_layer.bias
                if self.additive_prior is not None:
                    prior = prior + self.additive_prior(score_roll, timbre).to(prior.dtype)
        elif score_roll is not None:
            raise ValueError("this decoder has no score conditioning (score_roll_features = 0)")
        if self.timbre_embedding is not None:
            length = int(self.config["targets_length"])
            vectors = self.timbre_embedding(timbre)[:, None, :].expand(batch, length, -1)
            frames = vectors if frames is None else frames + vectors
            if prior is not None and self.timbre_prior is not None:
                prior = prior + self.timbre_prior(timbre)[:, None, :]
        elif timbre is not None and bool((timbre != 0).any()):
            raise ValueError("this decoder has no timbre conditioning (timbres is empty)")
        planes = None
        if self.low_noise_expert is not None and self.low_noise_expert.planes and score_roll is not None:
            planes = score_planes(score_roll)
        return CrossAttentionCache(keys_values, bias, rows, batch, frames, prior, planes)

    def forward(
        self,
        encodings_and_masks: Sequence[EncodingAndMask] | None,
        decoder_input_tokens: Tensor,
        decoder_noise_time: Tensor,
        cross_cache: CrossAttentionCache | None = None,
        film: Sequence[LayerFilm] | None = None,
        score_roll: Tensor | None = None,
        timbre: Tensor | None = None,
    ) -> Tensor:
        """``eps`` (or the configured ``prediction_type``) for ``z_t``. ``cross_cache`` (from
        :meth:`prepare_cross_attention`) replaces ``encodings_and_masks`` and ``score_roll``;
        ``film`` (from :meth:`film_conditioning`, for these times) skips the time conditioning."""
        batch, length, _ = decoder_input_tokens.shape
        if decoder_noise_time.shape != (batch,):
            raise ValueError(f"decoder_noise_time must have shape ({batch},), got {tuple(decoder_noise_time.shape)}")
        if cross_cache is None:
            if encodings_and_masks is None:
                raise ValueError("pass encodings_and_masks or a cross_cache")
            cross_cache = self.prepare_cross_attention(encodings_and_masks, score_roll, timbre)
        if cross_cache.batch_size != batch:
            raise ValueError(f"the cross-attention cache is for batch {cross_cache.batch_size}, got {batch}")
        expert_rows = self.low_noise_expert_rows(decoder_noise_time)
        if expert_rows is not None and bool(expert_rows.all()):  # the transformer is not needed at all
            return self._low_noise_expert_output(decoder_input_tokens, decoder_noise_time, cross_cache)
        if film is None:
            film = self.film_conditioning(decoder_noise_time)
        positions = torch.arange(length, device=decoder_input_tokens.device)
        y = self.continuous_inputs_projection(decoder_input_tokens) + self.position_encoding(positions)
        if self.input_context is not None:
            y = y + self.input_context(decoder_input_tokens.to(y.dtype).transpose(1, 2)).transpose(1, 2)
        if cross_cache.frame_conditioning is not None:
            y = y + cross_cache.frame_conditioning.to(y.dtype)
        y = self.dropout(y)
        for layer, layer_film, keys_values in zip(self.decoders, film, cross_cache.keys_values):
            y = layer(y, layer_film, keys_values, cross_cache.bias, cross_cache.rows)
        y = self.post_dropout(self.decoder_norm(y))
        out = self.spec_out(y)
        if cross_cache.frame_prior is not None:
            weight = edm_prior_weight(decoder_noise_time).to(out.dtype)[:, None, None]
            out = out + weight * cross_cache.frame_prior.to(out.dtype)
        if self.input_skip is not None:
            out = out + self.input_skip_output(decoder_input_tokens, decoder_noise_time, cross_cache.frame_prior)
        if expert_rows is not None and bool(expert_rows.any()):
            expert = self._low_noise_expert_output(decoder_input_tokens, decoder_noise_time, cross_cache)
            out = torch.where(expert_rows[:, None, None], expert, out)
        return out

    def low_noise_expert_rows(self, noise_time: Tensor) -> Tensor | None:
        """Which rows of a batch at ``noise_time`` ``[B]`` the ``low_noise_expert`` denoises (bool ``[B]``);
        None without the extension."""
        if self.low_noise_expert is None:
            return None
        return noise_time < float(self.config["low_noise_expert_below"])

    @property
    def low_noise_expert_anchor(self) -> str:
        """What the low-noise expert denoises around: ``"prior"`` or ``"estimate"``."""
        return str(self.config.get("low_noise_expert_anchor", "prior"))

    def low_noise_expert_inputs(self, cache: CrossAttentionCache, rows: int) -> tuple[Tensor, Tensor | None]:
        """The anchor and score planes of the first ``rows`` rows of ``cache`` for the low-noise expert (its
        ``low_noise_expert_anchor``); ValueError when the cache lacks the anchor."""
        if self.low_noise_expert_anchor == "estimate":
            if cache.expert_anchor is None:
                raise ValueError("an estimate-anchored low-noise expert needs the cache's expert_anchor "
                                 "(the sampler sets it from its first step, above the expert's time)")  # fmt: skip
            anchor = cache.expert_anchor
        elif cache.frame_prior is None:
            raise ValueError("the low-noise expert needs the score prior (a cross_cache with a frame_prior)")
        else:
            anchor = cache.frame_prior
        planes = cache.expert_planes  # None without planes (the expert says so if it reads them)
        return anchor[:rows], None if planes is None else planes[:rows]

    def _low_noise_expert_output(self, z: Tensor, noise_time: Tensor, cross_cache: CrossAttentionCache) -> Tensor:
        anchor, planes = self.low_noise_expert_inputs(cross_cache, z.shape[0])
        return self.low_noise_expert_prediction(z, noise_time, anchor, planes)

    def low_noise_expert_prediction(self, z: Tensor, noise_time: Tensor, anchor: Tensor,
                                    planes: Tensor | None = None) -> Tensor:  # fmt: skip
        """The ``low_noise_expert``'s output (in this decoder's "edm" prediction) for ``z`` ``[B, T, C]`` at
        ``noise_time`` ``[B]`` around ``anchor`` ``[B, T, C]`` (the score prior or the network's estimate,
        :meth:`low_noise_expert_inputs`), with its score ``planes`` when it reads them."""
        if self.low_noise_expert is None:
            raise ValueError("this decoder has no low_noise_expert")
        dtype = self.low_noise_expert.output.weight.dtype
        # Its output is added to the state almost unscaled at low noise: no mixed precision here.
        with torch.autocast(device_type=z.device.type, enabled=False):
            return self.low_noise_expert.edm_output(z.to(dtype), noise_time, anchor.to(dtype), planes).to(z.dtype)

    def input_skip_output(self, z: Tensor, noise_time: Tensor, prior: Tensor | None) -> Tensor:
        """The ``input_skip`` extension's share of the output: its knot maps of the noisy residual
        ``z - alpha_t p``, blended at ``noise_time`` (:func:`knot_weights`). ``[B, T, input_dims]``."""
        if self.input_skip is None:
            raise ValueError("this decoder has no input_skip extension")
        residual = noisy_residual(z, noise_time, prior).to(self.input_skip.weight.dtype)
        maps = self.input_skip(residual.transpose(1, 2))  # [B, knots * C, T]
        maps = maps.unflatten(1, (len(INPUT_SKIP_KNOTS), z.shape[-1]))
        weights = knot_weights(noise_time).to(maps.dtype)
        return torch.einsum("bk,bkct->btc", weights, maps).to(z.dtype)


def _low_noise_expert(config: Any) -> LowNoiseExpert | None:
    """The ``low_noise_expert`` extension's network for a decoder ``config`` (None when off); ValueError for a
    bad setting."""
    channels, below = config.get("low_noise_expert_channels", 0), config.get("low_noise_expert_below", 0.0)
    anchor, planes = config.get("low_noise_expert_anchor", "prior"), config.get("low_noise_expert_planes", False)
    score_prior = config.get("score_prior", False)
    if anchor not in EXPERT_ANCHORS:
        raise ValueError(f"low_noise_expert_anchor must be one of {EXPERT_ANCHORS}, got {anchor!r}")
    if not int(channels) and not float(below):
        if anchor != "prior" or planes:
            raise ValueError("low_noise_expert_anchor / low_noise_expert_planes need low_noise_expert_channels")
        return None
    if int(channels) <= 0 or not 0.0 < float(below) <= 1.0:
        raise ValueError(
            "low_noise_expert needs low_noise_expert_channels > 0 and 0 < low_noise_expert_below <= 1, "
            f"got {channels} and {below}"
        )
    if not score_prior:
        raise ValueError("low_noise_expert needs score_prior (it denoises around the score prior)")
    return LowNoiseExpert(int(channels), planes=SCORE_PLANES if planes else 0)


def noisy_residual(z: Tensor, noise_time: Tensor, prior: Tensor | None) -> Tensor:
    """``z - alpha_t p``: the noisy input less the (scaled) score prior ``p``; ``z`` without a prior."""
    if prior is None:
        return z
    alpha, _ = alpha_sigma(noise_time.double())
    return z - alpha.to(z.dtype)[:, None, None] * prior.to(z.dtype)


def knot_weights(noise_time: Tensor, knots: Sequence[float] = INPUT_SKIP_KNOTS) -> Tensor:
    """``[B, K]`` piecewise-linear ("hat") weights of ``noise_time`` on ``knots``: two neighbouring
    knots share each time, and a time on a knot gives that knot weight 1."""
    grid = torch.tensor(knots, dtype=torch.float64, device=noise_time.device)
    t = noise_time.double().clamp(grid[0], grid[-1])[:, None]
    upper = torch.searchsorted(grid, t, right=True).clamp(1, len(knots) - 1)
    lo, hi = grid[upper - 1], grid[upper]
    frac = (t - lo) / (hi - lo)
    weights = torch.zeros(t.shape[0], len(knots), dtype=torch.float64, device=noise_time.device)
    weights.scatter_(1, upper - 1, 1 - frac)
    weights.scatter_add_(1, upper, frac)
    return weights
