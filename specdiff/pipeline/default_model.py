"""The model bundled with the package, and the sampler settings a model folder recommends.

A bundled model is a diffusers-layout pipeline folder (``model_index.json`` plus one subfolder per
network, ORIGINAL.md §3.5) shipped inside the package at ``specdiff/assets/default_model/``. The CLI uses
it when ``--model`` is not given.

Any model folder may also hold ``sampling.json``: the sampler, step count and guidance weight it
was evaluated with, e.g. ``{"scheduler": "dpmsolver++", "num_inference_steps": 20,
"guidance_scale": 2.0}``. They replace the library's defaults (the original sampler, 100 steps,
w = 2, see ``specdiff.sampling.sampler``) for that model wherever the caller leaves them unset; diffusers
ignores the file. Kept free of heavy imports so ``specdiff --help`` stays fast.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, fields
from pathlib import Path

from specdiff.constants import (
    DEFAULT_GUIDANCE,
    DEFAULT_NUM_STEPS,
    DEFAULT_PRECISION,
    DEFAULT_SCHEDULER,
    PRECISIONS,
    SCHEDULERS,
)
from specdiff.errors import ModelError
from specdiff.pipeline.folder import MODEL_INDEX, SAMPLING_FILE

#: The folder a bundled model is expected in, relative to the installed package.
DEFAULT_MODEL_DIR = Path(__file__).resolve().parents[1] / "assets" / "default_model"


def precision_dtype(name: str):
    """The torch dtype of a precision name of :data:`PRECISIONS` (imports torch only when called)."""
    import torch

    dtypes = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
    if name not in dtypes:
        raise ValueError(f"unknown precision {name!r}; choose one of {', '.join(PRECISIONS)}")
    return dtypes[name]


def default_model_path() -> Path | None:
    """The bundled model folder if the package ships one (it holds ``model_index.json``), else None."""
    if (DEFAULT_MODEL_DIR / MODEL_INDEX).is_file():
        return DEFAULT_MODEL_DIR
    return None


@dataclass(frozen=True)
class SamplingSettings:
    """Sampler name, denoising steps per segment, classifier-free guidance weight, and the
    precision of the networks (a hint for the command line: ``bf16`` is used only where it is fast,
    see ``specdiff.cli.resolve_precision``; the Python API loads float32 unless told otherwise)."""

    scheduler: str = DEFAULT_SCHEDULER
    num_inference_steps: int = DEFAULT_NUM_STEPS
    guidance_scale: float = DEFAULT_GUIDANCE
    precision: str = DEFAULT_PRECISION
    #: ``ddim`` only: the noise time whose x0 prediction ends the sampling (0 = run down to t = 0);
    #: see :class:`specdiff.sampling.sampler.DDIMSampler`.
    final_noise_time: float = 0.0

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

    def to_json(self) -> dict[str, object]:
        return {f.name: getattr(self, f.name) for f in fields(self)}


def read_sampling_settings(folder: str | Path | None) -> SamplingSettings:
    """The folder's ``sampling.json`` over the library defaults (the defaults alone without one).

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


def write_sampling_settings(folder: str | Path, settings: SamplingSettings, note: str | None = None) -> Path:
    """Write ``sampling.json`` into a model folder (``note``: a free-text ``_note`` entry)."""
    from specdiff.atomic import atomic_write_text

    data: dict[str, object] = settings.to_json()
    if note:
        data["_note"] = note
    path = Path(folder) / SAMPLING_FILE
    atomic_write_text(path, json.dumps(data, indent=2) + "\n")
    return path
