"""The training configuration: ``TrainConfig``, its presets and ``--set KEY=VALUE`` parsing."""

from __future__ import annotations

import dataclasses
import types
import typing
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from specdiff.constants import SEGMENT_FRAMES
from specdiff.errors import SpecdiffError

TARGET_FRAMES = SEGMENT_FRAMES

# ---------------------------------------------------------------------------------------------
# Configuration
# ---------------------------------------------------------------------------------------------


@dataclass
class TrainConfig:
    """Everything that defines a run. Every field can be set from the command line (``--set key=value``)."""

    # model (sizes from specdiff.models.presets.PRESETS; `model` holds build_models overrides such as d_model)
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
    # decoders with model.additive_prior=true: score_prior_fit fits the additive prior and the linear one
    # together by Adam (prior_fit.fit_additive_prior) instead of the ridge fit, on the first
    # min(score_prior_fit, additive_prior_fit_windows) windows (their rolls are held in memory, ~3.7 MB
    # each), for additive_prior_fit_steps steps of 4096 frames.
    additive_prior_fit_windows: int = 600
    additive_prior_fit_steps: int = 400
    # 0: every frame weighs the same in that fit; 1: every kind of frame (tonal, release tail, drums
    # alone, silent: prior_fit.frame_kinds) weighs the same, whatever its share of the frames.
    additive_prior_fit_balance: float = 0.0
    # N > 0 (decoders with model.additive_prior=true; new runs and warm starts): after any prior fit, refit
    # only the drum decay templates for N Adam steps on frames where drums play alone and frames with drums
    # (prior_fit.fit_drum_templates), on additive_prior_fit_windows windows; the network is then trained on it.
    drum_template_fit_steps: int = 0
    # The share of that fit's rows drawn from drums-alone frames (the rest: any frame with a drum). Why: the
    # frames where tonal notes mask a drum's tail do not constrain it (benchmarks/results/drum_decay_idioms_0130.md).
    drum_template_fit_alone: float = 0.5
    # N > 0 (decoders with model.release_decay_powers or model.release_gain_frames): then refit only the release
    # decay templates and gains (and their per-timbre offsets) for N Adam steps (prior_fit.fit_release_templates),
    # release_template_fit_quiet of each step's rows from frames where a release rings and no tonal note or drum
    # sounds, the rest from any frame with a release. Why: where other notes sound they mask the tail
    # (benchmarks/results/release_tails.md).
    release_template_fit_steps: int = 0
    release_template_fit_quiet: float = 0.5
    # > 0 (decoders with model.program_release_gains): that fit also pulls each GM program's release offsets towards
    # its family's gains, this weight times their sum of squares (log power) added to each step's loss; a program
    # heard releasing alone in few of the fit's windows keeps its family's fade (prior_fit.fit_release_templates).
    release_template_fit_program_shrink: float = 0.0
    # The kinds of release columns ("pitch", "family", comma-separated; "" for none) whose templates that fit keeps;
    # the others it switches off (no power), leaving the release to the rest and to the release gains: a per-pitch
    # column knows no instrument and a per-family one no program, so each drew one slow fade for several
    # (prior_fit.fit_release_templates).
    release_template_fit_columns: str = "pitch,family"
    # N > 0 (decoders with model.timbre_program_colours): refit only the per-timbre program colours for N Adam steps
    # on frames where a tonal note sounds (prior_fit.fit_colour_templates), before the drum and release fits.
    colour_template_fit_steps: int = 0
    # True: that fit gives each timbre and program one offset for the onset, sustain and decay kinds alike.
    colour_template_fit_tied: bool = False
    # > 0: that fit adds this weight times the offsets' sum of squares (log power) to each step's loss.
    colour_template_fit_shrink: float = 0.0
    # N > 0: those template fits leave out the frames N frames or fewer before a note or drum onset, which
    # already hold its attack (the log-mel frame i is centred on sample 320 (i + 1); prior_fit.frames_before_onsets).
    template_fit_onset_guard: int = 0
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
    # > 0: each example's context is made louder or quieter by a gain drawn from [-x, x] dB (silent frames
    # stay silent). At synthesis the context is the model's own previous segment, whose level drifts
    # (measured: later segments 2.5-10 dB under the render); the jitter teaches the decoder to take its
    # level from the notes and only continuity from the context. 0 = the original (exact context).
    context_gain_jitter_db: float = 0.0
    # > 0: each example's context and target are made louder or quieter *together* by a gain drawn from
    # [-x, x] dB (rows with an empty context keep theirs). Renders are peak-normalised per song, so a
    # segment's level is not known from its notes alone; this teaches the decoder to take the song's level
    # from the context, as the original's context encoder is meant to (measured: the bundled model's level
    # follows a context 2.2 dB louder by 0.2 dB). The opposite of context_gain_jitter_db. 0 = off.
    song_gain_jitter_db: float = 0.0
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
    lists = {"drum_decay_powers": (float, "numbers: 3,10"), "drum_decay_gates": (int, "frame counts: 4,8"),
             "release_decay_powers": (float, "numbers: 3,10")}  # fmt: skip
    if key in lists:  # a list of numbers
        cast, expected = lists[key]
        try:
            return [cast(part) for part in text.split(",") if part.strip()]
        except ValueError:
            raise SpecdiffError(f"bad value {text!r} for model.{key} (expected {expected})") from None
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
