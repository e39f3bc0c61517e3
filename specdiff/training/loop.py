"""The training loop: the `Trainer` (configs, the objective, checkpoints, DDP and export live beside it).

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
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor, nn

from specdiff.atomic import atomic_write_text
from specdiff.errors import ModelError, SpecdiffError
from specdiff.models.decoder import FITTED_DECODER_PARAMETERS, ZERO_STARTED_DECODER_PARAMETERS
from specdiff.models.presets import build_models
from specdiff.training.batches import ShardedCounterSampler, _CounterDataset, collate_counted, open_datasets
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
from specdiff.training.config import TrainConfig
from specdiff.training.distributed import _all_reduce_sum, init_distributed
from specdiff.training.log import MetricsLog, save_spectrogram_comparison
from specdiff.training.objective import (
    SONG_GAIN_SALT,
    GuidedAttention,
    SpectrogramDiffusionModel,
    diffusion_loss,
    draw_context_drops,
    draw_context_gains,
    draw_diffusion_inputs,
    draw_rollout_times,
    empty_context,
    example_seed,
    initialise_output,
    jitter_context_gain,
    jitter_song_gain,
    loss_weights,
    parse_rollout_steps,
)
from specdiff.training.optim import EMA, build_optimizer
from specdiff.training.prior_fit import (
    fit_additive_prior,
    fit_colour_templates,
    fit_drum_templates,
    fit_input_skip,
    fit_release_templates,
    fit_score_prior,
    prior_fit_rows,
)
from specdiff.training.validation import _autocast, _to_device, sample_spectrogram, validation_loss
from specdiff.training.warm_start import (
    _widen_roll_weights,
    add_drum_envelopes,
    pipeline_folder_state_dict,
    reads_gm_programs,
    slakh_to_gm_programs,
)

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
        if resume_path is None:  # after a warm start, which they refit; never on resume
            self._fit_closed_forms(train_set)

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
            self._open_run_folder(val_set)

    # -- setup -----------------------------------------------------------------------------------

    def _fit_closed_forms(self, train_set: torch.utils.data.Dataset) -> None:
        """The closed-form fits the config asks for, the prior first, since the input skip sees the
        noisy input less the prior; the EMA restarts from each fit."""
        config = self.config
        if config.score_prior_fit > 0 and self.model.decoder.additive_prior is not None:
            windows = min(config.score_prior_fit, config.additive_prior_fit_windows)
            before, after = fit_additive_prior(self.model.decoder, train_set, windows, config.additive_prior_fit_steps,
                                               mask_padding=config.mask_padding, seed=config.seed,
                                               balance=config.additive_prior_fit_balance)  # fmt: skip
            self.ema = EMA(self.model, config.ema_decay, config.ema_warmup)  # the EMA starts from the fit
            if self.ctx.is_main:
                print(f"additive + linear score prior fitted on {windows} windows: L1 {before:.4f} -> {after:.4f}",
                      flush=True)  # fmt: skip
        elif config.score_prior_fit > 0:
            error = fit_score_prior(
                self.model.decoder, train_set, config.score_prior_fit, mask_padding=config.mask_padding
            )
            self.ema = EMA(self.model, config.ema_decay, config.ema_warmup)  # the EMA starts from the fit
            if self.ctx.is_main:
                print(f"score prior fitted on {config.score_prior_fit} windows: L1 {error:.4f}", flush=True)
        self._fit_prior_templates(train_set)
        if config.input_skip_fit > 0:
            report = fit_input_skip(self.model, train_set, config.input_skip_fit, mask_padding=config.mask_padding)
            self.ema = EMA(self.model, config.ema_decay, config.ema_warmup)  # the EMA starts from the fit
            if self.ctx.is_main:
                cells = ", ".join(f"t={t:.2f} {before:.3f}->{after:.3f}" for t, before, after in report)
                print(f"input skip fitted on {config.input_skip_fit} windows (output L1): {cells}", flush=True)

    def _fit_prior_templates(self, train_set: torch.utils.data.Dataset) -> None:
        """The additive prior's template refits the config asks for (per-timbre colours, drum decays, releases),
        each from the one before; the EMA restarts from each."""
        config = self.config
        common = {"mask_padding": config.mask_padding, "seed": config.seed,
                  "onset_guard": config.template_fit_onset_guard}  # fmt: skip
        steps = (config.colour_template_fit_steps, config.drum_template_fit_steps, config.release_template_fit_steps)
        if sum(n > 0 for n in steps) >= 2:  # the template fits read the same windows' rolls: collect them once
            common["rows"] = prior_fit_rows(self.model.decoder, train_set, config.additive_prior_fit_windows, 64,
                                            config.mask_padding, config.template_fit_onset_guard)  # fmt: skip
        fits = []
        if config.colour_template_fit_steps > 0:
            fits.append(("per-timbre program colours refitted: L1 on tonal frames", fit_colour_templates,
                         config.colour_template_fit_steps,
                         {"tie_kinds": config.colour_template_fit_tied,
                          "shrink": config.colour_template_fit_shrink}))  # fmt: skip
        if config.drum_template_fit_steps > 0:
            fits.append(("drum decay templates refitted: L1 on drums-alone frames", fit_drum_templates,
                         config.drum_template_fit_steps, {"alone_share": config.drum_template_fit_alone}))  # fmt: skip
        if config.release_template_fit_steps > 0:
            columns = tuple(kind for kind in config.release_template_fit_columns.split(",") if kind)
            fits.append(("release decay templates refitted: L1 on quiet release frames", fit_release_templates,
                         config.release_template_fit_steps,
                         {"quiet_share": config.release_template_fit_quiet, "columns": columns,
                          "program_shrink": config.release_template_fit_program_shrink}))  # fmt: skip
        for label, fit, fit_steps, options in fits:
            before, after = fit(self.model.decoder, train_set, config.additive_prior_fit_windows, fit_steps,
                                **common, **options)  # fmt: skip
            self.ema = EMA(self.model, config.ema_decay, config.ema_warmup)  # the EMA starts from the fit
            if self.ctx.is_main:
                print(f"{label} {before:.4f} -> {after:.4f}", flush=True)

    def _open_run_folder(self, val_set: torch.utils.data.Dataset) -> None:
        """On the main rank: the run folder with its config.json, the metrics log, and the fixed
        validation batches."""
        config = self.config
        self.out_dir.mkdir(parents=True, exist_ok=True)
        atomic_write_text(self.out_dir / "config.json", json.dumps(dataclasses.asdict(config), indent=2) + "\n")
        self.metrics = MetricsLog(self.out_dir, self.step, config.tensorboard)
        n_val = min(config.val_examples, len(val_set))  # type: ignore[arg-type]
        items = [(i, val_set[i]) for i in range(n_val)]
        self.val_batches = [collate_counted(items[i : i + self.micro_batch]) for i in range(0, n_val, self.micro_batch)]

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
        # Added drum envelopes start near-silent (before the checks below, so they count as present).
        state, extended = add_drum_envelopes(state, self.model.state_dict())
        # A model that adds zero-started extensions (timbres, input context) to a model without them
        # keeps their zero start, so it begins with the folder's output.
        prefixes = tuple(f"decoder.{name}." for name in ZERO_STARTED_DECODER_PARAMETERS)
        names = {f"decoder.{name}" for name in ZERO_STARTED_DECODER_PARAMETERS}  # a bare Parameter's own key
        added = {k for k in self.model.state_dict() if k.startswith(prefixes) or k in names}
        # Extensions that are fitted before step 1 (the additive prior) may be absent too, if they are fitted.
        fitted = tuple(f"decoder.{name}." for name in FITTED_DECODER_PARAMETERS)
        added_fitted = {k for k in self.model.state_dict() if k.startswith(fitted)} - set(state["model"]) - added
        if added_fitted and self.config.score_prior_fit <= 0:
            raise ModelError(f"{path} has no additive prior: fit one with --set score_prior_fit=N")
        added |= added_fitted
        missing = added - set(state["model"])
        state, widened = _widen_roll_weights(state, self.model.state_dict())
        widened |= extended
        if self.config.model.get("gm_programs") and not reads_gm_programs(path, state):
            # the source read Slakh classes: start each program as its class (the same output)
            state, widened = {**state, "model": slakh_to_gm_programs(state["model"])}, widened | {"programs"}
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
            if config.context_gain_jitter_db > 0:
                gains = draw_context_gains(batch["index"], config.seed, config.context_gain_jitter_db)
                batch = jitter_context_gain(batch, gains)
            if config.song_gain_jitter_db > 0:
                gains = draw_context_gains(batch["index"], config.seed, config.song_gain_jitter_db, SONG_GAIN_SALT)
                batch = jitter_song_gain(batch, gains)
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
