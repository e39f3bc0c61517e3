"""Sampler settings: what a model folder recommends (``sampling.json``) and what one call uses.

Any model folder may hold ``sampling.json``: the sampler, step count and guidance weight it was
evaluated with, e.g. ``{"scheduler": "dpmsolver++", "num_inference_steps": 20,
"guidance_scale": 2.0}``, plus the ``ddim`` end time, the guidance ceiling and a precision hint.
diffusers ignores the file.

Every setting of a call is decided here, by one rule (:func:`resolve_sampling`): the caller's
explicit value, else the model folder's ``sampling.json``, else the library default
(``specdiff.constants``: the original sampler, 100 steps, w = 2, fp32). ``None`` means "the
model's recommendation" in every caller: the pipeline's calls, ``specdiff synth`` / ``evaluate`` /
``serve`` (their unset flags) and ``specdiff.evaluation.evaluate.evaluate``.

Kept free of heavy imports so ``specdiff --help`` stays fast.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

from specdiff.constants import (
    DEFAULT_GUIDANCE,
    DEFAULT_NUM_STEPS,
    DEFAULT_PRECISION,
    DEFAULT_SCHEDULER,
    GUIDANCE_SCHEDULES,
    PRECISIONS,
    SCHEDULERS,
)
from specdiff.errors import ModelError
from specdiff.pipeline.folder import SAMPLING_FILE


@dataclass(frozen=True)
class SamplingSettings:
    """What a model recommends: sampler name, denoising steps per segment, classifier-free guidance
    weight, the ``ddim`` end time, and the precision of the networks (a hint for the command line:
    ``bf16`` is used only where it is fast, see ``specdiff.commands.options.resolve_precision``; the
    Python API loads float32 unless told otherwise). The defaults are the library's."""

    scheduler: str = DEFAULT_SCHEDULER
    num_inference_steps: int = DEFAULT_NUM_STEPS
    guidance_scale: float = DEFAULT_GUIDANCE
    precision: str = DEFAULT_PRECISION
    #: ``ddim`` only: the noise time whose x0 prediction ends the sampling (0 = run down to t = 0);
    #: see :class:`specdiff.sampling.sampler.DDIMSampler`.
    final_noise_time: float = 0.0
    #: Level-safe guidance (:func:`specdiff.sampling.sampler.cap_guided_x0`; our extension): with
    #: ``guidance_scale != 1`` the guided x0 estimate may not rise above the conditional estimate's
    #: loudest value of each mel bin in the segment plus this many natural-log mel units. None
    #: (default): plain classifier-free guidance, as the original.
    guidance_ceiling: float | None = None
    #: Level-safe guidance, frame by frame (:func:`specdiff.sampling.sampler.cap_guided_x0`; our
    #: extension): the guided x0 estimate may rise at most this many natural-log mel units above the
    #: conditional estimate in each frame and bin (0: guidance may only lower it). None (default): no
    #: such limit. Why: in a song's first segment the unconditional estimate (no notes, no context) is
    #: near silence, so guidance lifted every bin of the opening by ~0.4 nat and its attacks to twice the
    #: render's peak; the segment-wide ``guidance_ceiling`` does not stop a lift under the loudest frame.
    guidance_lift: float | None = None
    #: When guidance acts (our extension): ``"every"`` step (default, as the original), or the ``"first"``
    #: step only, whose x0 offset (guided minus conditional) the later steps add to their conditional
    #: estimate (:meth:`specdiff.sampling.sampler.GuidedDenoiser._hold_guidance`; with guidance at every
    #: step more steps raised the bundled model's Frechet distance on the demo corpus, held much less).
    guidance_schedule: str = "every"

    def __post_init__(self) -> None:
        if self.scheduler not in SCHEDULERS:
            raise ValueError(f"unknown scheduler {self.scheduler!r}; choose one of {', '.join(SCHEDULERS)}")
        if self.precision not in PRECISIONS:
            raise ValueError(f"unknown precision {self.precision!r}; choose one of {', '.join(PRECISIONS)}")
        steps = self.num_inference_steps
        if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
            raise ValueError(f"num_inference_steps must be a positive integer, got {steps!r}")
        f = self.final_noise_time
        if isinstance(f, bool) or not isinstance(f, (int, float)) or not 0.0 <= f < 1.0:
            raise ValueError(f"final_noise_time must be a number in [0, 1), got {f!r}")
        w = self.guidance_scale
        if isinstance(w, bool) or not isinstance(w, (int, float)) or not math.isfinite(w) or w < 0:
            raise ValueError(f"guidance_scale must be a finite number >= 0, got {w!r}")
        if self.guidance_schedule not in GUIDANCE_SCHEDULES:
            raise ValueError(f"unknown guidance_schedule {self.guidance_schedule!r}; choose one of "
                             f"{', '.join(GUIDANCE_SCHEDULES)}")  # fmt: skip
        for key in ("guidance_ceiling", "guidance_lift"):
            c = getattr(self, key)
            if c is not None and (isinstance(c, bool) or not isinstance(c, (int, float)) or not math.isfinite(c)):
                raise ValueError(f"{key} must be a finite number or null, got {c!r}")

    def to_json(self) -> dict[str, object]:
        """The settings as ``sampling.json`` holds them."""
        return {f.name: getattr(self, f.name) for f in fields(self)}

    def resolve(
        self,
        *,
        scheduler: Any = None,
        num_inference_steps: int | None = None,
        guidance_scale: float | None = None,
        final_noise_time: float | None = None,
        precision: str | None = None,
        guidance_ceiling: float | None = None,
        guidance_lift: float | None = None,
        guidance_schedule: str | None = None,
    ) -> ResolvedSampling:
        """The settings of one call: each argument that is not None, else this recommendation.

        The only place where an explicit value meets a recommendation (:func:`resolve_sampling`
        is the same for a folder). Explicit values are taken as given, not checked: the caller
        that accepted them (the pipeline's argument checks, the command line's parsers) reports a
        bad one in its own words, and ``scheduler`` may be a sampler object rather than a name.
        """
        explicit = {
            "scheduler": scheduler,
            "num_inference_steps": num_inference_steps,
            "guidance_scale": guidance_scale,
            "final_noise_time": final_noise_time,
            "precision": precision,
            "guidance_ceiling": guidance_ceiling,
            "guidance_lift": guidance_lift,
            "guidance_schedule": guidance_schedule,
        }
        return ResolvedSampling(**{k: getattr(self, k) if v is None else v for k, v in explicit.items()})


@dataclass(frozen=True)
class ResolvedSampling:
    """The settings one call runs with (:meth:`SamplingSettings.resolve`): no field but
    ``guidance_ceiling`` and ``guidance_lift`` is None."""

    scheduler: Any  # a name of specdiff.constants.SCHEDULERS, or a sampler / diffusers scheduler
    num_inference_steps: int
    guidance_scale: float
    final_noise_time: float
    precision: str
    guidance_ceiling: float | None  # None: plain guidance
    guidance_lift: float | None = None  # None: no per-frame limit
    guidance_schedule: str = "every"  # "every" step, or the "first" step's guidance held after


def read_sampling_settings(folder: str | Path | None) -> SamplingSettings:
    """The folder's ``sampling.json`` over the library defaults (the defaults alone without one,
    or for ``folder=None``).

    A file that is not valid JSON or holds bad values raises :class:`ModelError`; keys starting
    with ``_`` (comments) are ignored.
    """
    if folder is None:
        return SamplingSettings()
    path = Path(folder) / SAMPLING_FILE
    if not path.is_file():
        return SamplingSettings()
    try:
        data = json.loads(path.read_text())
        if not isinstance(data, dict):
            raise ValueError("expected a JSON object")
        known = {f.name for f in fields(SamplingSettings)}
        unknown = sorted(k for k in data if k not in known and not k.startswith("_"))
        if unknown:
            raise ValueError(f"unknown keys {unknown}; known: {sorted(known)}")
        return SamplingSettings(**{k: v for k, v in data.items() if k in known})
    except (ValueError, TypeError) as err:  # json.JSONDecodeError is a ValueError
        raise ModelError(f"bad sampler settings in {path}: {err}") from None


def resolve_sampling(
    model: SamplingSettings | str | Path | None,
    *,
    scheduler: Any = None,
    num_inference_steps: int | None = None,
    guidance_scale: float | None = None,
    final_noise_time: float | None = None,
    precision: str | None = None,
    guidance_ceiling: float | None = None,
    guidance_lift: float | None = None,
    guidance_schedule: str | None = None,
) -> ResolvedSampling:
    """Explicit value > the model folder's ``sampling.json`` > library default, for every key.

    ``model``: the recommendation itself (a pipeline's :attr:`sampling`), a model folder (its
    ``sampling.json`` is read; a broken one raises :class:`ModelError`), or None (the library
    defaults). Every other argument left None takes the recommendation.
    """
    recommended = model if isinstance(model, SamplingSettings) else read_sampling_settings(model)
    return recommended.resolve(
        scheduler=scheduler,
        num_inference_steps=num_inference_steps,
        guidance_scale=guidance_scale,
        final_noise_time=final_noise_time,
        precision=precision,
        guidance_ceiling=guidance_ceiling,
        guidance_lift=guidance_lift,
        guidance_schedule=guidance_schedule,
    )


def write_recommendation(folder: str | Path, settings: SamplingSettings) -> Path | None:
    """``sampling.json`` for a model folder being saved: written only when ``settings`` differ from
    the library defaults (a folder without the file means them), so a plain model's folder stays
    exactly the diffusers layout. Returns the file written, if any."""
    if settings == SamplingSettings():
        return None
    return write_sampling_settings(folder, settings)


def write_sampling_settings(folder: str | Path, settings: SamplingSettings, note: str | None = None) -> Path:
    """Write ``sampling.json`` into a model folder (``note``: a free-text ``_note`` entry)."""
    from specdiff.atomic import atomic_write_text

    data: dict[str, object] = settings.to_json()
    if note:
        data["_note"] = note
    path = Path(folder) / SAMPLING_FILE
    atomic_write_text(path, json.dumps(data, indent=2) + "\n")
    return path
