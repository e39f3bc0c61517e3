"""Samplers: the original cosine log-SNR DDPM sampler (spec §4.1), diffusers schedulers, and CFG.

Every sampler has the shape of a diffusers scheduler, so the pipeline drives them all alike::

    sampler.set_timesteps(n)
    x = randn(...) * sampler.init_noise_sigma
    for t in sampler.timesteps:
        eps = denoiser(x, sampler.noise_time(t))            # decoder_noise_time in [0, 1]
        x = sampler.step(eps, t, x, generator=g).prev_sample

``noise_time`` is the one thing diffusers' schedulers lack: the decoder takes continuous time in
[0, 1] (spec §3.4), the diffusers pipeline feeds it ``t / num_train_timesteps`` (spec §5.1).

Choices (:func:`make_scheduler`):

- ``"original"`` (default): :class:`CosineLogSNRSampler`, the paper's ancestral sampler on the
  schedule the model was trained with (spec §4.1).
- ``"ddpm"``: diffusers' ``DDPMScheduler`` with the official checkpoint config (spec §3.5), i.e.
  exactly what diffusers' ``SpectrogramDiffusionPipeline`` runs (Nichol cosine, "leading" steps).
- ``"ddim"``, ``"dpmsolver++"`` (2nd-order multistep), ``"unipc"``: diffusers' few-step solvers on the
  model's own noise schedule (:func:`model_schedule_betas`), with "trailing" timesteps so the first
  step starts from pure noise (t=999), each ending on its x0 prediction. ``"ddim"`` runs
  :class:`DDIMSampler`, our copy of diffusers' DDIM step (same numbers, no diffusers import).

Why the solvers get the model's schedule: the network was trained on the continuous cosine log-SNR
schedule (spec §4.1, alpha_bar(t) = cos^2(a t + b)), while the checkpoint's scheduler config is
Nichol's ``squaredcos_cap_v2`` (0.008 offset, spec §5.1). A deterministic solver turns every eps
prediction into an x0 prediction with *its* alpha_bar, so a schedule that differs from the one the
network was trained on biases every step (up to 25% in alpha_bar near t=1); the ancestral DDPM
sampler re-noises and forgives it, few-step ODE solvers do not. With
``trained_betas = model_schedule_betas()`` the table satisfies alpha_bar[t] = alpha_bar(t / 1000)
exactly (to float32), and the network keeps getting noise time t / 1000, as in training.
``"ddpm"`` keeps the checkpoint config, so it stays diffusers' pipeline step for step.

diffusers is optional: only the diffusers-backed choices (ddpm, dpmsolver++, unipc) import it.
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import torch
from torch import Tensor

from specdiff.audio.mel import NAT_PER_UNIT
from specdiff.sampling import diffusion

EncodingAndMask = tuple[Tensor, Tensor]

# Defaults (the values live in specdiff.pipeline.default_model, which the light CLI reads too; a model
# folder's sampling.json overrides them for that model). The model was trained on the continuous
# log-SNR schedule, so the original sampler is the faithful one. The paper's colab ran 1000 steps
# with w = 2.0 (the conversion script also used 2.0; the gin default was 5.0, spec §4.1);
# diffusers' pipeline runs 100 steps with no CFG (w = 1, spec §5.1). We keep diffusers' 100 steps
# (10x cheaper than 1000; the diffusers pipeline shows 100 ancestral steps give clean
# spectrograms) and the colab's guidance 2.0, which costs a second decoder pass per step (batched
# with the conditional one) and sharpens note adherence.
from specdiff.constants import DEFAULT_GUIDANCE, DEFAULT_NUM_STEPS, DEFAULT_SCHEDULER, GUIDANCE_SCHEDULES, SCHEDULERS  # noqa: E402

#: The official scheduler config of ``google/music-spectrogram-diffusion`` (spec §3.5). Keys the
#: checkpoint leaves out take the diffusers v0.20 defaults (timestep_spacing "leading", ...).
OFFICIAL_SCHEDULER_CONFIG: dict[str, Any] = {
    "_class_name": "DDPMScheduler",
    "num_train_timesteps": 1000,
    "beta_schedule": "squaredcos_cap_v2",
    "beta_start": 0.0001,
    "beta_end": 0.02,
    "clip_sample": True,
    "clip_sample_range": 1.0,
    "prediction_type": "epsilon",
    "variance_type": "fixed_large",
    "trained_betas": None,
}


# ---------------------------------------------------------------------------------------------
# The common shape
# ---------------------------------------------------------------------------------------------


@dataclass
class SamplerOutput:
    """What ``step`` returns (the fields of diffusers' ``DDPMSchedulerOutput``)."""

    prev_sample: Tensor
    pred_original_sample: Tensor | None = None


class Sampler(Protocol):
    init_noise_sigma: float

    def set_timesteps(self, num_inference_steps: int) -> None: ...

    @property
    def timesteps(self) -> Tensor: ...

    def noise_time(self, timestep: Tensor | float) -> Tensor: ...

    def step(self, model_output: Tensor, timestep: Tensor | float, sample: Tensor,
             generator: torch.Generator | None = None) -> SamplerOutput: ...  # fmt: skip


Generators = torch.Generator | Sequence[torch.Generator] | None


def randn(shape: Sequence[int], generator: Generators, device: torch.device | str,
          dtype: torch.dtype = torch.float32) -> Tensor:  # fmt: skip
    """Gaussian noise drawn like diffusers' ``randn_tensor``: on the generator's device, then moved.

    A CPU generator therefore gives the same numbers whatever device the model runs on. A list of
    generators draws batch row ``i`` from ``generator[i]`` (as diffusers does), so a song batched
    with others gets exactly the noise it would get alone.
    """
    if generator is None:
        return torch.randn(tuple(shape), device=device, dtype=dtype)
    if isinstance(generator, (list, tuple)):
        if len(generator) != shape[0]:
            raise ValueError(f"{len(generator)} generators for a batch of {shape[0]}")
        row = (1, *shape[1:])
        return torch.cat([randn(row, g, device, dtype) for g in generator])
    return torch.randn(tuple(shape), generator=generator, device=generator.device, dtype=dtype).to(device)


# ---------------------------------------------------------------------------------------------
# The original sampler (spec §4.1)
# ---------------------------------------------------------------------------------------------

# The schedule itself is shared with the training objective (specdiff.sampling.diffusion).
logsnr = diffusion.logsnr
alpha_sigma = diffusion.alpha_sigma


def check_num_inference_steps(num_inference_steps: int, num_train_timesteps: int | None = None) -> None:
    """Raise ValueError unless a sampler can take ``num_inference_steps`` steps: at least one, and
    no more than the ``num_train_timesteps`` of a discrete schedule (None: no such limit)."""
    if num_inference_steps < 1:
        raise ValueError(f"num_inference_steps must be >= 1, got {num_inference_steps}")
    if num_train_timesteps is not None and num_inference_steps > num_train_timesteps:
        raise ValueError(
            f"num_inference_steps={num_inference_steps} exceeds this scheduler's "
            f"{num_train_timesteps} training timesteps"
        )


def _alpha_sigma_float(t: float) -> tuple[float, float]:
    """``(cos(a t + b), sin(a t + b))`` as Python floats (:func:`specdiff.sampling.diffusion.alpha_sigma`)."""
    angle = diffusion.SCHEDULE_A * t + diffusion.SCHEDULE_B
    return math.cos(angle), math.sin(angle)


def model_schedule_betas(num_train_timesteps: int = 1000) -> list[float]:
    """diffusers ``trained_betas`` for the model's own schedule: ``alpha_bar[t] = alpha_bar(t / N)``.

    ``alpha_bar(u) = cos^2(a u + b)`` is the continuous cosine log-SNR schedule the network was
    trained on (spec §4.1); the decoder is fed ``t / N`` by :class:`DiffusersSampler`, so the
    scheduler's alpha_bar and the network's noise level agree at every integer timestep.
    ``beta_t = 1 - alpha_bar[t] / alpha_bar[t - 1]`` (``alpha_bar[-1] = 1``), computed in float64.
    One exception: ``beta_0 = 1 - alpha_bar(0) = 2e-9`` would round ``alpha_bar[0]`` to exactly 1 in
    diffusers' float32 tables (sigma 0: 0/0 in DDPM's t=0 step, log 0 in DPM-Solver), so it is
    raised to 2^-23, the smallest beta float32 keeps below 1 (logSNR 15.9 instead of 20 at t=0);
    :func:`model_schedule_noise_times` feeds the network the matching time there.
    """
    t = torch.arange(num_train_timesteps, dtype=torch.float64) / num_train_timesteps
    alpha_bar = diffusion.alpha_sigma(t)[0] ** 2
    previous = torch.cat([torch.ones(1, dtype=torch.float64), alpha_bar[:-1]])
    betas = 1.0 - alpha_bar / previous
    betas[0] = max(float(betas[0]), MIN_BETA)
    return betas.tolist()


MIN_BETA = 2.0**-23


def model_schedule_noise_times(num_train_timesteps: int = 1000) -> Tensor:
    """Decoder noise time per integer timestep of :func:`model_schedule_betas`: ``t / N``, except
    at ``t = 0`` the continuous time whose alpha_bar is the table's ``1 - beta_0`` (float32)."""
    times = torch.arange(num_train_timesteps, dtype=torch.float64) / num_train_timesteps
    alpha_bar0 = 1.0 - max(1.0 - math.cos(diffusion.SCHEDULE_B) ** 2, MIN_BETA)
    times[0] = (math.acos(math.sqrt(alpha_bar0)) - diffusion.SCHEDULE_B) / diffusion.SCHEDULE_A
    return times.to(torch.float32)


class CosineLogSNRSampler:
    """The original DDPM sampler of Spectrogram Diffusion (MSD ``SamplerConfig``, spec §4.1).

    Continuous time: with ``N`` steps, step ``i = N-1 .. 0`` goes from ``t = (i+1)/N`` to
    ``s = i/N``. The noise time fed to the decoder is ``t`` itself. Each step predicts
    ``x0 = (z - sigma_t eps) / alpha_t``, clips it to [-1, 1], recomputes eps from the clipped x0
    (which only matters for callers that read it), and samples ``z_s`` from the posterior
    ``q(z_s | z_t, x0)`` with the "large" variance ``(1 - r) sigma_t^2``, ``r = SNR_t / SNR_s``.
    The last step (``s = 0``) returns the clipped x0 without noise.

    ``timesteps`` are float64 times ``[1, (N-1)/N, ..., 1/N]``.
    """

    init_noise_sigma = 1.0

    def __init__(self, clip_x0: bool = True) -> None:
        self.clip_x0 = clip_x0
        self.num_inference_steps: int | None = None
        self._timesteps = torch.empty(0, dtype=torch.float64)

    @property
    def config(self) -> dict[str, Any]:
        return {"_class_name": type(self).__name__, "clip_x0": self.clip_x0}

    def set_timesteps(self, num_inference_steps: int, device: torch.device | str | None = None) -> None:
        check_num_inference_steps(num_inference_steps)  # continuous time: no count of training timesteps
        self.num_inference_steps = int(num_inference_steps)
        n = self.num_inference_steps
        self._timesteps = torch.arange(n, 0, -1, dtype=torch.float64) / n

    @property
    def timesteps(self) -> Tensor:
        return self._timesteps

    def noise_time(self, timestep: Tensor | float) -> Tensor:
        """``decoder_noise_time`` for this step: the continuous time ``t`` itself (spec §4.1)."""
        return torch.as_tensor(timestep, dtype=torch.float64).to(torch.float32)

    def scale_model_input(self, sample: Tensor, timestep: Tensor | float | None = None) -> Tensor:
        return sample

    def _step_index(self, timestep: Tensor | float) -> int:
        """``i`` with ``t = (i+1)/N`` (steps are identified by their time, like diffusers' ints)."""
        if self.num_inference_steps is None:
            raise RuntimeError("call set_timesteps(n) before step()")
        n = self.num_inference_steps
        i = round(float(timestep) * n) - 1
        if not 0 <= i < n or abs((i + 1) / n - float(timestep)) > 1e-9:
            raise ValueError(f"timestep {float(timestep)!r} is not one of this sampler's {n} timesteps")
        return i

    def step(
        self,
        model_output: Tensor,
        timestep: Tensor | float,
        sample: Tensor,
        generator: Generators = None,
        return_dict: bool = True,
    ) -> SamplerOutput | tuple[Tensor, Tensor]:
        """One ancestral step ``z_t -> z_s`` given the (guided) eps prediction ``model_output``."""
        n = self.num_inference_steps
        i = self._step_index(timestep)
        # Every row shares the step's time, so the schedule coefficients are Python floats (float64
        # math, the same formulas as specdiff.sampling.diffusion): no per-step tensors to build or move to
        # the device (CUDA/MPS), and no float64 tensor ever meets an MPS tensor.
        alpha_t, sigma_t = _alpha_sigma_float((i + 1) / n)
        z = sample
        eps = model_output.to(z.dtype)
        x0 = (z - sigma_t * eps) / alpha_t
        if self.clip_x0:
            x0 = x0.clamp(-1.0, 1.0)
        if i == 0:
            prev = x0  # the last step returns the x0 prediction (spec §4.1)
        else:
            # With the clipped x0, eps_hat = (z - alpha_t x0) / sigma_t; the posterior mean below is
            # written in (z, x0) directly, which is the same thing (spec §4.1, MSD diffusion_utils;
            # diffusion.posterior is the tensor version). r = SNR_t / SNR_s.
            alpha_s, sigma_s = _alpha_sigma_float(i / n)
            r = (alpha_t * sigma_s / (sigma_t * alpha_s)) ** 2
            mean = (r * alpha_s / alpha_t) * z + ((1.0 - r) * alpha_s) * x0
            std = math.sqrt((1.0 - r) * sigma_t**2)
            noise = randn(z.shape, generator, z.device, z.dtype)
            prev = mean + std * noise
        if not return_dict:
            return prev, x0
        return SamplerOutput(prev_sample=prev, pred_original_sample=x0)


# ---------------------------------------------------------------------------------------------
# diffusers schedulers
# ---------------------------------------------------------------------------------------------


def _import_diffusers():
    try:
        import diffusers
    except ImportError as err:  # pragma: no cover - depends on the environment
        from specdiff.errors import SpecdiffError

        raise SpecdiffError(
            f"this scheduler needs diffusers ({err}); pip install diffusers, or use scheduler='original'"
        ) from None
    return diffusers


class DiffusersSampler:
    """Any diffusers scheduler in our sampler shape.

    The decoder's noise time is ``t / num_train_timesteps`` (the diffusers pipeline's "rescale to
    [0, 1)", computed in float32 exactly as it does). ``generator`` is passed to ``step`` only when
    the scheduler's ``step`` takes one (UniPC and DPM-Solver++ are deterministic ODE solvers).
    ``final_x0``: make the last step return the scheduler's x0 prediction. DDIM with "trailing"
    timesteps ends on t=0, whose sample still holds sqrt(1 - alphabar_0) ~ 0.006 of noise; the
    original sampler and DPM-Solver/UniPC (``final_sigmas_type="zero"``) end on x0.
    """

    def __init__(self, scheduler: Any, final_x0: bool = False, noise_times: Tensor | None = None) -> None:
        self.scheduler = scheduler
        self.noise_times = noise_times  # per integer timestep; None: t / num_train_timesteps
        self.num_train_timesteps = int(scheduler.config.num_train_timesteps)
        self.final_x0 = final_x0
        self._takes_generator = "generator" in inspect.signature(scheduler.step).parameters

    @property
    def config(self) -> Any:
        return self.scheduler.config

    @property
    def init_noise_sigma(self) -> float:
        return float(self.scheduler.init_noise_sigma)

    def set_timesteps(self, num_inference_steps: int, device: torch.device | str | None = None) -> None:
        check_num_inference_steps(num_inference_steps, self.num_train_timesteps)
        self.scheduler.set_timesteps(num_inference_steps)

    @property
    def timesteps(self) -> Tensor:
        return self.scheduler.timesteps

    def noise_time(self, timestep: Tensor | float) -> Tensor:
        if self.noise_times is not None:
            return self.noise_times[int(timestep)]
        return torch.as_tensor(timestep).to(torch.float32) / self.num_train_timesteps

    def scale_model_input(self, sample: Tensor, timestep: Tensor | float | None = None) -> Tensor:
        return self.scheduler.scale_model_input(sample, timestep)

    def step(
        self,
        model_output: Tensor,
        timestep: Tensor | float,
        sample: Tensor,
        generator: torch.Generator | None = None,
    ) -> SamplerOutput:
        kwargs = {"generator": generator} if self._takes_generator else {}
        out = self.scheduler.step(model_output, timestep, sample, **kwargs)
        x0 = getattr(out, "pred_original_sample", None)
        if self.final_x0 and x0 is not None and int(timestep) == int(self.timesteps[-1]):
            return SamplerOutput(x0, x0)
        return SamplerOutput(out.prev_sample, x0)


class DDIMSampler:
    """Deterministic DDIM (eta = 0) with "trailing" timesteps, step for step diffusers'
    ``DDIMScheduler`` with the config :func:`make_scheduler` gives it (same float32 tables and
    arithmetic, so the same numbers), without importing diffusers.

    Why it exists: the bundled model samples with one DDIM step, and importing diffusers (which
    imports ``torch._dynamo``) costs several times that step on a CPU; it also lets a minimal install
    run the bundled model. ``tests/test_sampler.py`` checks it against diffusers' scheduler.
    ``config``: a diffusers scheduler config (``num_train_timesteps``, ``trained_betas`` (required),
    ``clip_sample``, ``clip_sample_range``, ``set_alpha_to_one``). The model output is epsilon. The last
    step returns the (clipped) x0 prediction, as :class:`DiffusersSampler` with ``final_x0`` does.

    ``final_noise_time`` (0 = off, diffusers' grid): the n steps are spread evenly over noise times
    from 1 down to this value, and the x0 prediction made there is the sample. A model whose one-step
    estimates are good at high noise but leave white-noise texture behind at low noise (measured in
    ``benchmarks/results/steps_table_*.md``) then refines its coarse structure with every extra step
    and never hands the result to its weak low-noise regime. A model folder recommends it in
    ``sampling.json`` (:class:`specdiff.pipeline.sampling_settings.SamplingSettings`).
    """

    init_noise_sigma = 1.0

    def __init__(
        self, config: dict[str, Any], noise_times: Tensor | None = None, final_noise_time: float = 0.0
    ) -> None:
        import types

        if not 0.0 <= float(final_noise_time) < 1.0:
            raise ValueError(f"final_noise_time must be in [0, 1), got {final_noise_time!r}")
        self.final_noise_time = float(final_noise_time)

        if config.get("trained_betas") is None:
            raise ValueError("DDIMSampler needs trained_betas (the model's schedule)")
        self.config = types.SimpleNamespace(**{**config, "timestep_spacing": "trailing"})
        self.num_train_timesteps = int(config.get("num_train_timesteps", 1000))
        betas = torch.tensor(config["trained_betas"], dtype=torch.float32)
        self.alphas_cumprod = torch.cumprod(1.0 - betas, dim=0)
        set_alpha_to_one = config.get("set_alpha_to_one", True)
        self.final_alpha_cumprod = torch.tensor(1.0) if set_alpha_to_one else self.alphas_cumprod[0]
        self.clip_sample = bool(config.get("clip_sample", True))
        self.clip_sample_range = float(config.get("clip_sample_range", 1.0))
        self.noise_times = noise_times
        self.num_inference_steps: int | None = None
        self._timesteps = torch.empty(0, dtype=torch.int64)

    def set_timesteps(self, num_inference_steps: int, device: torch.device | str | None = None) -> None:
        import numpy as np

        check_num_inference_steps(num_inference_steps, self.num_train_timesteps)
        self.num_inference_steps = int(num_inference_steps)
        if self.final_noise_time > 0:
            times = np.linspace(1.0, self.final_noise_time, self.num_inference_steps)
            # Noise times under 1 / (2 num_train_timesteps) would round to index -1, which indexes the
            # schedule's *last* entry (t = 1); the smallest trained time step is index 0.
            timesteps = np.maximum(np.round(times * self.num_train_timesteps).astype(np.int64) - 1, 0)
            if len(np.unique(timesteps)) < len(timesteps):
                from specdiff.errors import SpecdiffError

                most = int(round((1.0 - self.final_noise_time) * self.num_train_timesteps)) + 1
                raise SpecdiffError(
                    f"DDIM ending at noise time {self.final_noise_time:g} (the model's sampling.json) takes at "
                    f"most {most} steps, got {num_inference_steps}; use fewer steps or another scheduler"
                )
        else:
            ratio = self.num_train_timesteps / self.num_inference_steps
            timesteps = np.round(np.arange(self.num_train_timesteps, 0, -ratio)).astype(np.int64) - 1
        self._timesteps = torch.from_numpy(timesteps)

    @property
    def timesteps(self) -> Tensor:
        return self._timesteps

    def noise_time(self, timestep: Tensor | float) -> Tensor:
        if self.noise_times is not None:
            return self.noise_times[int(timestep)]
        return torch.as_tensor(timestep).to(torch.float32) / self.num_train_timesteps

    def scale_model_input(self, sample: Tensor, timestep: Tensor | float | None = None) -> Tensor:
        return sample

    def step(
        self,
        model_output: Tensor,
        timestep: Tensor | float,
        sample: Tensor,
        generator: Generators = None,
    ) -> SamplerOutput:
        """One DDIM step ``x_t -> x_prev`` from the eps prediction ``model_output`` (no noise drawn)."""
        if self.num_inference_steps is None:
            raise RuntimeError("call set_timesteps(n) before step()")
        t = int(timestep)
        prev_t = t - self.num_train_timesteps // self.num_inference_steps
        if self.final_noise_time > 0 and t != int(self._timesteps[-1]):
            prev_t = int(self._timesteps[int((self._timesteps == t).nonzero()[0, 0]) + 1])
        alpha_prod_t = self.alphas_cumprod[t]
        alpha_prod_prev = self.alphas_cumprod[prev_t] if prev_t >= 0 else self.final_alpha_cumprod
        beta_prod_t = 1 - alpha_prod_t
        x0 = (sample - beta_prod_t ** (0.5) * model_output) / alpha_prod_t ** (0.5)
        if self.clip_sample:
            x0 = x0.clamp(-self.clip_sample_range, self.clip_sample_range)
        if t == int(self._timesteps[-1]):
            return SamplerOutput(x0, x0)
        prev = alpha_prod_prev ** (0.5) * x0 + (1 - alpha_prod_prev) ** (0.5) * model_output
        return SamplerOutput(prev, x0)


# name -> (diffusers class name, config overrides on top of the official config, final_x0)
# The original clips every x0 prediction to [-1, 1] (spec §4.1); DDPM and DDIM do so through
# ``clip_sample`` of the official config. The ODE solvers have no such flag, but their "dynamic
# thresholding" with ``sample_max_value=1`` is exactly that clip (the threshold s is clamped to
# [1, sample_max_value] = 1). Without it, an x0 predicted near t = 1, where alpha ~ 4.5e-5 on the
# model's schedule, amplifies any eps error ~20000x and the solvers diverge.
_CLIP_X0: dict[str, Any] = {"thresholding": True, "sample_max_value": 1.0}

_DIFFUSERS_CHOICES: dict[str, tuple[str, dict[str, Any], bool]] = {
    "ddpm": ("DDPMScheduler", {}, False),
    "ddim": ("DDIMScheduler", {"timestep_spacing": "trailing"}, True),
    "dpmsolver++": (
        "DPMSolverMultistepScheduler",
        {"algorithm_type": "dpmsolver++", "solver_order": 2, "timestep_spacing": "trailing", **_CLIP_X0},
        False,
    ),
    "unipc": ("UniPCMultistepScheduler", {"timestep_spacing": "trailing", **_CLIP_X0}, False),
}


def make_scheduler(name: str = DEFAULT_SCHEDULER, config: dict[str, Any] | None = None,
                   model_schedule: bool | None = None, final_noise_time: float = 0.0) -> Sampler:  # fmt: skip
    """A sampler by name: ``original`` | ``ddpm`` | ``ddim`` | ``dpmsolver++`` | ``unipc``.

    ``config`` is a diffusers scheduler config (e.g. a model folder's ``scheduler_config.json``);
    it defaults to the official one (spec §3.5) and is ignored by ``original``, whose schedule is
    fixed by the training objective. For ``ddpm`` it is used as is; the solvers apply their
    overrides (``timestep_spacing="trailing"``, DPM-Solver++ order 2) on top of it.
    ``model_schedule`` (default: True for the solvers, False for ``ddpm``) replaces the config's
    betas by :func:`model_schedule_betas`, the schedule the network was trained on (see the
    module docstring for why). ``final_noise_time`` (``ddim`` only; 0 = off): see :class:`DDIMSampler`;
    the other samplers ignore it, as they run their own grids down to t = 0.
    """
    if name == "original":
        return CosineLogSNRSampler()
    if name not in _DIFFUSERS_CHOICES:
        from specdiff.errors import SpecdiffError

        raise SpecdiffError(f"unknown scheduler {name!r}; choose one of {', '.join(SCHEDULERS)}")
    class_name, overrides, final_x0 = _DIFFUSERS_CHOICES[name]
    base = dict(OFFICIAL_SCHEDULER_CONFIG if config is None else config)
    base = {k: v for k, v in base.items() if not k.startswith("_")}
    noise_times = None
    if model_schedule if model_schedule is not None else name != "ddpm":
        steps = int(base.get("num_train_timesteps", 1000))
        base["trained_betas"] = model_schedule_betas(steps)
        noise_times = model_schedule_noise_times(steps)
    if name == "ddim" and _native_ddim_fits(base):
        return DDIMSampler(base, noise_times=noise_times, final_noise_time=final_noise_time)
    if name == "ddim" and final_noise_time:
        raise ValueError("final_noise_time needs the model's schedule and an epsilon DDIM config")
    diffusers = _import_diffusers()
    cls = getattr(diffusers, class_name)
    accepted = set(inspect.signature(cls.__init__).parameters)
    # DDPM-only keys (variance_type, clip_sample on DPM, ...) would only raise warnings elsewhere.
    kwargs = {k: v for k, v in {**base, **overrides}.items() if k in accepted}
    return DiffusersSampler(cls(**kwargs), final_x0=final_x0, noise_times=noise_times)


def _native_ddim_fits(config: dict[str, Any]) -> bool:
    """Whether :class:`DDIMSampler` computes what diffusers' ``DDIMScheduler`` would with ``config``."""
    return (
        config.get("trained_betas") is not None
        and config.get("prediction_type", "epsilon") == "epsilon"
        and not config.get("thresholding", False)
        and not config.get("rescale_betas_zero_snr", False)
    )


def as_sampler(scheduler: Any) -> Sampler:
    """A name, one of our samplers, or a bare diffusers scheduler -> a :class:`Sampler`."""
    if isinstance(scheduler, str):
        return make_scheduler(scheduler)
    if isinstance(scheduler, (CosineLogSNRSampler, DDIMSampler, DiffusersSampler)):
        return scheduler
    if hasattr(scheduler, "step") and hasattr(getattr(scheduler, "config", None), "num_train_timesteps"):
        return DiffusersSampler(scheduler)
    if hasattr(scheduler, "step") and hasattr(scheduler, "noise_time"):
        return scheduler
    raise TypeError(f"not a sampler or diffusers scheduler: {type(scheduler).__name__}")


# ---------------------------------------------------------------------------------------------
# Classifier-free guidance
# ---------------------------------------------------------------------------------------------


def unconditional(encodings_and_masks: Sequence[EncodingAndMask]) -> list[EncodingAndMask]:
    """The CFG "null" conditioning: every encoding and mask multiplied by zero (spec §4.1).

    With all keys masked the decoder zeroes its cross-attention output (MSD
    ``zero_activations_if_masked``, spec §9.6), so the prediction sees no notes and no context.
    """
    return [(torch.zeros_like(enc), torch.zeros_like(mask)) for enc, mask in encodings_and_masks]


def combine_guidance(eps_cond: Tensor, eps_uncond: Tensor, guidance_scale: float) -> Tensor:
    """``w eps_cond + (1 - w) eps_uncond`` (spec §4.1)."""
    return guidance_scale * eps_cond + (1.0 - guidance_scale) * eps_uncond


def cap_guided_x0(x0_guided: Tensor, x0_cond: Tensor, ceiling: float | None, lift: float | None = None) -> Tensor:
    """Level-safe guidance (our extension, off in the original): the guided x0 estimate
    ``[B, frames, bins]`` may not rise above the conditional estimate's loudest value of the same
    mel bin in the segment plus ``ceiling`` (in the model's feature units; negative: below it).

    Guidance pushes away from the unconditional estimate, which puts back the frame-to-frame and
    segment-to-segment spread that the conditional estimate regresses towards the mean, but it also
    raises attacks past anything the conditional estimate holds (raw audio peaks 0.70 -> 1.52 at
    w = 1.25 on the bundled model's validation pieces). Capping each bin at the conditional
    estimate's own maximum keeps the spread below the loudest moments and stops the overshoot.
    Lowering (guidance into quieter values) is never capped. ``lift`` (same units; None: off) also
    caps each element at the conditional estimate's own value plus ``lift``: where the unconditional
    estimate is far below the conditional one (a song's first segment, with no context), guidance
    would otherwise lift every frame up to that ceiling. ``ceiling`` None: only the lift applies.
    """
    if ceiling is not None:
        x0_guided = torch.minimum(x0_guided, x0_cond.clamp(-1.0, 1.0).amax(dim=-2, keepdim=True) + ceiling)
    if lift is not None:
        x0_guided = torch.minimum(x0_guided, x0_cond + lift)
    return x0_guided


class GuidedDenoiser:
    """``eps(z, noise_time)`` for one segment's conditioning, with classifier-free guidance.

    Built once per segment: when the decoder offers ``prepare_cross_attention`` (ours does), the
    cross-attention keys/values are computed here once instead of at every step. With
    ``guidance_scale != 1`` the conditional and unconditional passes run as one batch of ``2B``.
    The state ``z`` stays in its own dtype (float32; bf16 sampling was "much worse" in the
    original); only the decoder's input is cast to the decoder's dtype.
    """

    def __init__(self, decoder: torch.nn.Module, encodings_and_masks: Sequence[EncodingAndMask],
                 guidance_scale: float = 1.0, film_cache: dict[float, Any] | None = None,
                 score_roll: Tensor | None = None, timbre: Tensor | None = None,
                 guidance_ceiling: float | None = None, guidance_lift: float | None = None,
                 guidance_schedule: str = "every") -> None:  # fmt: skip
        if guidance_schedule not in GUIDANCE_SCHEDULES:
            raise ValueError(f"guidance_schedule must be one of {GUIDANCE_SCHEDULES}, got {guidance_schedule!r}")
        self.decoder = decoder
        # A decoder trained to predict v or x0 (FilmDecoder.prediction_type) is turned into an
        # eps predictor here, so every sampler serves it unchanged.
        self.prediction_type = getattr(decoder, "prediction_type", "epsilon")
        # FiLM parameters per noise time (ours: FilmDecoder.film_conditioning): computed once per
        # step time with batch 1 and broadcast over the batch; a dict shared by the segments of a
        # song (they run the same times) computes them once per song. Each entry is small
        # (2 x 2 x D floats per layer).
        self.film_cache = film_cache if film_cache is not None else {}
        self._film = hasattr(decoder, "film_conditioning")
        self.guidance_scale = float(guidance_scale)
        self.guided = self.guidance_scale != 1.0
        #: :func:`cap_guided_x0`'s ceiling in natural-log mel (None: plain CFG, as the original).
        self.guidance_ceiling = None if guidance_ceiling is None else float(guidance_ceiling)
        #: :func:`cap_guided_x0`'s per-element lift in natural-log mel (None: off).
        self.guidance_lift = None if guidance_lift is None else float(guidance_lift)
        #: ``"every"``: guidance at every call; ``"first"``: at the first call only, its x0 offset held after.
        self.guidance_schedule = guidance_schedule
        #: ``"first"``: the first call's guided minus conditional x0 estimate ``[B, T, C]``, once it is known.
        self.guidance_offset: Tensor | None = None
        conditions = list(encodings_and_masks)
        if self.guided:
            uncond = unconditional(conditions)
            conditions = [(torch.cat([e, ue]), torch.cat([m, um])) for (e, m), (ue, um) in zip(conditions, uncond)]
            if score_roll is not None:  # the null condition drops the roll with the tokens
                score_roll = torch.cat([score_roll, torch.zeros_like(score_roll)])
            if timbre is not None:  # ... but keeps the timbre (it is not dropped in training either)
                timbre = torch.cat([timbre, timbre])
        self.batch = conditions[0][0].shape[0]  # 2B when guided
        self.dtype = next(decoder.parameters()).dtype
        self.cache = None
        self.encodings_and_masks = conditions
        if hasattr(decoder, "prepare_cross_attention"):
            roll = {} if score_roll is None else {"score_roll": score_roll}
            if timbre is not None:
                roll["timbre"] = timbre
            self.cache = decoder.prepare_cross_attention(conditions, **roll)
            self.encodings_and_masks = None
        elif score_roll is not None or timbre is not None:
            raise ValueError("score and timbre conditioning need a decoder with prepare_cross_attention")

    def prepare_times(self, noise_times: Sequence[Tensor]) -> None:
        """Compute the FiLM parameters of all these step times in one batched pass.

        One time at a time, FiLM is a matrix-vector product per layer that reads ~2 x 4D x 2D
        weights (memory-bound, ~4% of a base step on a CPU); all of a run's times together make it
        one matrix product per layer. Same values up to float rounding.
        """
        if not self._film:
            return
        keys = [float(time.reshape(-1)[0]) for time in noise_times]
        todo = sorted({key for key in keys if key not in self.film_cache})
        if len(todo) < 2:
            return  # nothing to batch: __call__ computes it as usual
        device = next(self.decoder.parameters()).device
        layers = self.decoder.film_conditioning(torch.tensor(todo, dtype=torch.float32, device=device))
        for row, key in enumerate(todo):
            self.film_cache[key] = [
                tuple(tuple(t[row : row + 1] for t in params) for params in layer) for layer in layers
            ]

    def __call__(self, sample: Tensor, noise_time: Tensor) -> Tensor:
        x = torch.cat([sample, sample]) if self.guided else sample
        time = noise_time.to(x.device, torch.float32).reshape(-1).expand(self.batch)
        if self._expert_only(time):
            return self._expert_eps(sample, time[: sample.shape[0]])
        kwargs: dict[str, Any] = {"cross_cache": self.cache} if self.cache is not None else {}
        time_value = float(noise_time.reshape(-1)[0])  # the sampler's CPU value: no device sync
        if self._film:
            if time_value not in self.film_cache:
                self.film_cache[time_value] = self.decoder.film_conditioning(time[:1])
            kwargs["film"] = self.film_cache[time_value]
        eps = self.decoder(
            encodings_and_masks=self.encodings_and_masks,
            decoder_input_tokens=x.to(self.dtype),
            decoder_noise_time=time,
            **kwargs,
        ).to(sample.dtype)
        if self.prediction_type != "epsilon":
            eps = diffusion.eps_from_prediction(eps, x, time.to(x.dtype), self.prediction_type)
        if self.guided:
            eps_cond, eps_uncond = eps.chunk(2)
            if self.guidance_ceiling is None and self.guidance_lift is None:
                eps = combine_guidance(eps_cond, eps_uncond, self.guidance_scale)
            else:
                eps = self._capped_guidance(sample, time_value, eps_cond, eps_uncond)
            if self.guidance_schedule == "first":
                self._hold_guidance(time_value, eps, eps_cond)
        elif self.guidance_offset is not None:
            eps = self._held_guidance(time_value, eps)
        self._remember_expert_anchor(sample, time_value, eps)
        return eps

    def _hold_guidance(self, noise_time: float, eps_guided: Tensor, eps_cond: Tensor) -> None:
        """``guidance_schedule="first"``: keep this step's guidance as an x0 offset, ``x0_guided - x0_cond =
        sigma (eps_cond - eps_guided) / alpha``, and run only the conditional rows from now on.

        Why: the output is the last step's estimate, and guidance computed afresh there decides it (guided at
        the last step only equals guided at every step); held from pure noise, where the conditional and
        unconditional estimates differ most, it lets the later steps refine the conditional estimate. The
        bundled model on the demo corpus's test split, 4 steps: Frechet 11.20 guided at every step, 10.25
        held (one step 9.85); on band music 23.87 and 24.11 (``benchmarks/results/guidance_schedule.md``).
        Later steps cost half as much."""
        alpha, sigma = _alpha_sigma_float(noise_time)
        if sigma < 1e-6:  # t ~ 0: nothing left to hold
            return
        self.guidance_offset = (sigma / alpha) * (eps_cond - eps_guided)
        half = self.batch // 2
        self.guided, self.batch = False, half
        if self.cache is not None:
            self.cache = self.cache.first_rows(half)
        else:
            self.encodings_and_masks = [(e[:half], m[:half]) for e, m in self.encodings_and_masks]

    def _held_guidance(self, noise_time: float, eps_cond: Tensor) -> Tensor:
        """The conditional estimate plus the held x0 offset, as eps (:meth:`_hold_guidance`)."""
        alpha, sigma = _alpha_sigma_float(noise_time)
        if sigma < 1e-6:
            return eps_cond
        return eps_cond - (alpha / sigma) * self.guidance_offset.to(eps_cond.dtype)

    def _remember_expert_anchor(self, sample: Tensor, noise_time: float, eps: Tensor) -> None:
        """Keep the first step's (guided) x0 estimate as the anchor of an "estimate"-anchored low-noise
        expert (``FilmDecoder.low_noise_expert_anchor``): the conditional mean the network learnt, around
        which the expert adds what one estimate cannot (``benchmarks/results/low_noise_expert.md``)."""
        if self.cache is None or self.cache.expert_anchor is not None:
            return
        if (
            getattr(self.decoder, "low_noise_expert", None) is None
            or self.decoder.low_noise_expert_anchor != "estimate"
        ):
            return
        alpha, sigma = _alpha_sigma_float(noise_time)
        self.cache.expert_anchor = ((sample - sigma * eps) / alpha).clamp(-1.0, 1.0)

    def _expert_only(self, time: Tensor) -> bool:
        """Whether the decoder's low-noise expert (``FilmDecoder.low_noise_expert_rows``) takes these rows."""
        rows = getattr(self.decoder, "low_noise_expert_rows", None)
        if rows is None or self.cache is None or (self.cache.frame_prior is None and self.cache.expert_anchor is None):
            return False
        below = rows(time[:1])
        return below is not None and bool(below.all())

    def _expert_eps(self, sample: Tensor, time: Tensor) -> Tensor:
        """eps from the decoder's low-noise expert on the conditional rows only: it denoises around the
        conditional score prior (or the first step's guided estimate), so there is nothing to guide (and no
        unconditional half to run)."""
        anchor, planes = self.decoder.low_noise_expert_inputs(self.cache, sample.shape[0])
        out = self.decoder.low_noise_expert_prediction(sample.to(self.dtype), time, anchor, planes).to(sample.dtype)
        return diffusion.eps_from_prediction(out, sample, time.to(sample.dtype), self.prediction_type)

    def _capped_guidance(self, sample: Tensor, noise_time: float, eps_cond: Tensor, eps_uncond: Tensor) -> Tensor:
        """CFG combined in x0 space, capped by :func:`cap_guided_x0` (this denoiser's ceiling and lift,
        in natural-log mel), returned as eps.

        The combination is affine with weights summing to 1, so in x0 space it is the same mix as
        in eps space; only the cap needs x0. ``x0 = (z - sigma eps) / alpha`` on the model's
        schedule (:func:`specdiff.sampling.diffusion.alpha_sigma`).
        """
        alpha, sigma = _alpha_sigma_float(noise_time)
        if sigma < 1e-6:  # t ~ 0: eps is not recoverable from x0; nothing left to guide
            return combine_guidance(eps_cond, eps_uncond, self.guidance_scale)
        x0_cond = (sample - sigma * eps_cond) / alpha
        x0_uncond = (sample - sigma * eps_uncond) / alpha
        x0 = combine_guidance(x0_cond, x0_uncond, self.guidance_scale)
        ceiling, lift = self.guidance_ceiling, self.guidance_lift
        x0 = cap_guided_x0(x0, x0_cond, None if ceiling is None else ceiling / NAT_PER_UNIT,
                           None if lift is None else lift / NAT_PER_UNIT)  # fmt: skip
        return (sample - alpha * x0) / sigma


def sample_loop(
    sampler: Sampler,
    denoise: Callable[[Tensor, Tensor], Tensor],
    noise: Tensor,
    num_inference_steps: int,
    generator: Generators = None,
    on_step: Callable[[], None] | None = None,
    on_step_end: Callable[[int, Any, Tensor], Tensor] | None = None,
) -> Tensor:
    """Run a whole reverse process from ``noise`` (already drawn, unit variance).

    ``generator`` may be a list with one generator per batch row (see :func:`randn`).
    ``on_step_end(step_index, timestep, x)`` runs after each step and returns the ``x`` to go on
    with (the one it was given, or a replacement); raising from it stops the loop. ``on_step()``
    (a progress bar's update) runs after it.
    """
    sampler.set_timesteps(num_inference_steps)
    prepare = getattr(denoise, "prepare_times", None)
    if prepare is not None:  # e.g. GuidedDenoiser: FiLM for every step time at once
        prepare([sampler.noise_time(t) for t in sampler.timesteps])
    x = noise * sampler.init_noise_sigma
    for i, t in enumerate(sampler.timesteps):
        eps = denoise(sampler.scale_model_input(x, t), sampler.noise_time(t))
        x = sampler.step(eps, t, x, generator=generator).prev_sample
        if on_step_end is not None:
            x = on_step_end(i, t, x)
        if on_step is not None:
            on_step()
    return x


__all__ = [
    "DEFAULT_GUIDANCE", "DEFAULT_NUM_STEPS", "DEFAULT_SCHEDULER", "OFFICIAL_SCHEDULER_CONFIG", "SCHEDULERS",
    "CosineLogSNRSampler", "DDIMSampler", "DiffusersSampler", "GuidedDenoiser", "Sampler", "SamplerOutput",
    "alpha_sigma", "as_sampler", "cap_guided_x0", "combine_guidance", "logsnr",
    "make_scheduler", "model_schedule_betas", "model_schedule_noise_times", "randn",
    "sample_loop",
    "unconditional",
]  # fmt: skip
