"""Train a decoder's low-noise expert (specdiff/models/low_noise_expert.py) with the rest of a model frozen.

The expert sees only its anchor ``p`` (the score prior, or the network's own estimate at pure noise), the
noisy residual and optionally the score's planes, so its training data is targets ``x0`` with the model's
anchor (and planes) for them, computed once (``pairs.pt`` in the run folder). An "estimate" anchor is the
network's unguided x0 estimate at noise time 1 from one seeded noise draw per window (the sampler anchors on
its first step's guided estimate). Each
step draws random crops of ``crop_frames`` frames (the expert is convolutional: a crop trains it as well
as a whole segment, at a fraction of the cost), noise times uniform in ``(0, below)``, and minimises the
EDM-weighted squared error of the residual (the error of ``F``, Karras et al. 2022). The run folder holds
``expert.pt`` (weights, optimiser, step; written atomically every ``checkpoint_every`` steps), so a killed
run resumes where it stopped.
"""

from __future__ import annotations

import functools
import json
import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch

from specdiff.atomic import atomic_write
from specdiff.errors import SpecdiffError
from specdiff.models.decoder import FilmDecoder
from specdiff.models.low_noise_expert import EXPERT_ANCHORS, SCORE_PLANES, LowNoiseExpert, preconditioning, score_planes
from specdiff.sampling.diffusion import x0_from_prediction
from specdiff.training.objective import SpectrogramDiffusionModel
from specdiff.training.prior_fit import collated_windows

PAIRS_NAME = "pairs.pt"
CHECKPOINT_NAME = "expert.pt"
SETTINGS_NAME = "settings.json"


@dataclass
class ExpertTrainSettings:
    """What :func:`train_low_noise_expert` does (saved as ``settings.json`` in the run folder)."""

    channels: int = 32
    below: float = 0.9  # the decoder's low_noise_expert_below: train on noise times under it
    steps: int = 3000
    windows: int = 1024  # training windows whose priors are computed (spread over the train split)
    batch_size: int = 16
    crop_frames: int = 64
    learning_rate: float = 2e-3
    seed: int = 0
    checkpoint_every: int = 200
    anchor: str = "prior"  # the decoder's low_noise_expert_anchor
    planes: bool = False  # the decoder's low_noise_expert_planes


@torch.no_grad()
def residual_pairs(model: SpectrogramDiffusionModel, dataset: Any, windows: int, batch_size: int = 16,
                   anchor: str = "prior", planes: bool = False) -> dict[str, torch.Tensor]:  # fmt: skip
    """``targets`` ``[N, T, C]`` and the model's ``anchors`` for them (its score prior, or with
    ``anchor="estimate"`` its unguided x0 estimate at noise time 1, noise seeded per batch), and with
    ``planes`` their ``planes`` ``[N, T, C, SCORE_PLANES]`` (float16), for ``windows`` items spread evenly
    over ``dataset`` (each item's own context, roll inputs and timbre)."""
    if model.decoder.score_prior_projection is None:
        raise SpecdiffError("a low-noise expert needs a model with a score prior (decoder option score_prior)")
    if anchor not in EXPERT_ANCHORS:
        raise SpecdiffError(f"anchor must be one of {EXPERT_ANCHORS}, got {anchor!r}")
    stride = max(1, len(dataset) // max(1, windows))
    indices = range(0, stride * min(windows, len(dataset)), stride)
    found: dict[str, list[torch.Tensor]] = {"targets": [], "anchors": [], "planes": []}
    for number, batch in enumerate(collated_windows(dataset, indices, batch_size)):
        roll = model.batch_roll(batch)
        cache = model.batch_cross_cache(batch, roll)
        found["targets"].append(batch["target"].float())
        found["anchors"].append(_anchor(model, cache, batch["target"], anchor, seed=number))
        if planes:
            found["planes"].append(score_planes(roll).half())
    return {name: torch.cat(parts) for name, parts in found.items() if parts}


def _anchor(model: SpectrogramDiffusionModel, cache: Any, target: torch.Tensor, anchor: str, seed: int) -> torch.Tensor:
    if anchor == "prior":
        return cache.frame_prior.float()
    noise = torch.randn(target.shape, generator=torch.Generator().manual_seed(seed))
    time = torch.ones(target.shape[0])
    decoder = model.decoder
    output = decoder(None, noise.to(next(decoder.parameters()).dtype), time, cross_cache=cache)
    return x0_from_prediction(output.float(), noise, time, decoder.prediction_type).clamp(-1.0, 1.0)


def warmup_cosine(step: int, steps: int, warmup_fraction: float = 0.05) -> float:
    """Learning-rate factor at ``step`` of ``steps``: a linear warm-up over the first 5%, then a cosine to 0."""
    warmup = max(1.0, warmup_fraction * steps)
    return min(1.0, (step + 1) / warmup) * 0.5 * (1.0 + math.cos(math.pi * min(step, steps) / steps))


def expert_loss(
    expert: LowNoiseExpert,
    targets: torch.Tensor,
    priors: torch.Tensor,
    noise_time: torch.Tensor,
    generator: torch.Generator | None = None,
    planes: torch.Tensor | None = None,
) -> torch.Tensor:
    """EDM-weighted squared error of the expert's residual estimate around the anchors ``priors`` at
    ``noise_time`` ``[B]`` (``planes``: the score planes, for an expert that reads them)."""
    alpha, sigma, _, _, c_out = preconditioning(noise_time)
    residual = targets - priors
    noise = torch.randn(residual.shape, generator=generator)
    estimate = expert(alpha * residual + sigma * noise, priors, noise_time, planes)
    return (((estimate - residual) / c_out) ** 2).mean()


def train_low_noise_expert(
    model: SpectrogramDiffusionModel,
    dataset: Any,
    settings: ExpertTrainSettings,
    run_dir: str | Path,
    log: Callable[[str], None] = print,
) -> LowNoiseExpert:
    """Train (or resume, from ``run_dir``) a :class:`LowNoiseExpert` for ``model``; returns it trained."""
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    _check_settings(run_dir, settings)
    pairs = _cached_pairs(model, dataset, settings, run_dir, log)
    targets, priors, planes = pairs["targets"], pairs["anchors"], pairs.get("planes")
    if targets.shape[1] < settings.crop_frames:
        raise SpecdiffError(f"crop_frames {settings.crop_frames} exceeds the windows' {targets.shape[1]} frames")
    torch.manual_seed(settings.seed)
    expert = LowNoiseExpert(settings.channels, planes=SCORE_PLANES if settings.planes else 0)
    optimiser = torch.optim.AdamW(expert.parameters(), lr=settings.learning_rate, weight_decay=0.0)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimiser, functools.partial(warmup_cosine, steps=settings.steps))
    generator = torch.Generator().manual_seed(settings.seed)
    step = _resume(run_dir / CHECKPOINT_NAME, expert, optimiser, schedule, generator)
    if step:
        log(f"resumed at step {step}")
    started, recent = time.monotonic(), []
    while step < settings.steps:
        rows = torch.randint(0, targets.shape[0], (settings.batch_size,), generator=generator)
        first = int(torch.randint(0, targets.shape[1] - settings.crop_frames + 1, (1,), generator=generator))
        crop = slice(first, first + settings.crop_frames)
        noise_time = 0.005 + torch.rand(settings.batch_size, generator=generator) * (settings.below - 0.005)
        crop_planes = None if planes is None else planes[rows, crop].float()
        loss = expert_loss(expert, targets[rows, crop], priors[rows, crop], noise_time, generator, crop_planes)
        optimiser.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(expert.parameters(), 1.0)
        optimiser.step()
        schedule.step()
        step += 1
        recent.append(float(loss.detach()))
        if step % settings.checkpoint_every == 0 or step == settings.steps:
            _save(run_dir / CHECKPOINT_NAME, expert, optimiser, schedule, generator, step)
            log(f"step {step}/{settings.steps}  loss {sum(recent) / len(recent):.4f}  "
                f"{(time.monotonic() - started) / max(1, len(recent)):.2f} s/step")  # fmt: skip
            started, recent = time.monotonic(), []
    return expert.eval()


def decoder_with_expert(decoder: FilmDecoder, expert: LowNoiseExpert, below: float,
                        anchor: str = "prior") -> FilmDecoder:  # fmt: skip
    """A copy of ``decoder`` with the ``low_noise_expert`` extension on and ``expert``'s weights
    (``anchor``: what it was trained around; its planes follow from ``expert``)."""
    config = {k: v for k, v in dict(decoder.config).items() if not k.startswith("_")}
    channels = expert.output.in_channels
    config.update(low_noise_expert_channels=channels, low_noise_expert_below=float(below))
    config.update(low_noise_expert_anchor=anchor, low_noise_expert_planes=bool(expert.planes))
    merged = FilmDecoder(**config)
    state = {k: v for k, v in decoder.state_dict().items() if not k.startswith("low_noise_expert.")}
    state.update({f"low_noise_expert.{k}": v for k, v in expert.state_dict().items()})
    merged.load_state_dict(state, strict=True)
    return merged.eval()


def _check_settings(run_dir: Path, settings: ExpertTrainSettings) -> None:
    """Write ``settings.json``, or refuse to resume a run made with other settings."""
    path = run_dir / SETTINGS_NAME
    wanted, defaults = asdict(settings), asdict(ExpertTrainSettings())
    if path.is_file():
        found = json.loads(path.read_text())  # a folder from before a setting existed had its default
        changed = {k for k in wanted if found.get(k, defaults[k]) != wanted[k]}
        if changed:
            raise SpecdiffError(f"{run_dir} holds a run with other settings ({sorted(changed)}); use a new run folder")
    atomic_write(path, lambda tmp: tmp.write_text(json.dumps(wanted, indent=2)))


def _cached_pairs(model, dataset, settings: ExpertTrainSettings, run_dir: Path, log) -> dict[str, torch.Tensor]:
    path = run_dir / PAIRS_NAME
    if path.is_file():
        pairs = torch.load(path)
        if "priors" in pairs:  # a run folder from before the anchor option: its anchors are the priors
            pairs["anchors"] = pairs.pop("priors")
        return pairs
    log(f"computing the {settings.anchor} anchors of {settings.windows} training windows")
    pairs = residual_pairs(model, dataset, settings.windows, anchor=settings.anchor, planes=settings.planes)
    atomic_write(path, lambda tmp: torch.save(pairs, tmp))
    return pairs


def _save(path: Path, expert, optimiser, schedule, generator: torch.Generator, step: int) -> None:
    state = {"expert": expert.state_dict(), "optimiser": optimiser.state_dict(), "schedule": schedule.state_dict(),
             "generator": generator.get_state(), "step": step}  # fmt: skip
    atomic_write(path, lambda tmp: torch.save(state, tmp))


def _resume(path: Path, expert, optimiser, schedule, generator: torch.Generator) -> int:
    if not path.is_file():
        return 0
    state = torch.load(path)
    expert.load_state_dict(state["expert"])
    optimiser.load_state_dict(state["optimiser"])
    schedule.load_state_dict(state["schedule"])
    generator.set_state(state["generator"])
    return int(state["step"])
