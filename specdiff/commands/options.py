"""Options and steps that several commands share: the model a command runs, its sampler settings,
precision and device (``specdiff synth``, ``evaluate`` and ``serve`` each load a model this way).

Light at import (no torch): torch is imported inside the functions that need it.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from specdiff.constants import DEFAULT_PRECISION, OFFICIAL_MODEL_ID, PRECISIONS
from specdiff.errors import SpecdiffError
from specdiff.pipeline.default_model import precision_dtype

PROG = "specdiff"


def one_line(message: object) -> str:
    """Error text on one line, whatever the raiser put in it."""
    return "; ".join(line.strip() for line in str(message).splitlines() if line.strip()) or "unknown error"


class UsageError(SpecdiffError):
    """The command cannot run as given (e.g. no model to use); exits with status 2."""


#: An option as ``(flags, add_argument keywords)``: commands list theirs in tables, in --help order.
Option = tuple[tuple[str, ...], dict[str, Any]]


def add_options(parser: argparse.ArgumentParser | argparse._ArgumentGroup, options: tuple[Option, ...]) -> None:
    """Add each ``(flags, keywords)`` option; a list default is copied, so no two parsers share one."""
    for flags, keywords in options:
        default = keywords.get("default")
        parser.add_argument(*flags, **{**keywords, **({"default": list(default)} if isinstance(default, list) else {})})


def add_precision_argument(p: argparse.ArgumentParser) -> None:
    """``--precision`` (synth, evaluate, serve)."""
    p.add_argument(
        "--precision",
        choices=("auto", *PRECISIONS),
        default="auto",
        help=f"precision of the networks (default: auto = the model's own setting where it is fast, else "
        f"{DEFAULT_PRECISION}). fp32 is the reference; bf16 runs ~1.7x faster on CPUs with native bf16 "
        "matmuls (AVX512-BF16, AMX) and on GPUs, with slightly different output; fp16 is for GPUs. The "
        "sampler's own arithmetic always stays fp32.",
    )


def resolve_model_dir(model: str | Path | None) -> Path:
    """The ``--model`` folder (a path, or a Hugging Face Hub id ``ORG/NAME[@REVISION]``, fetched into
    the Hub cache once, see :mod:`specdiff.pipeline.hub`), else the bundled one; UsageError when there is neither."""
    if model is not None:
        from specdiff.pipeline.hub import resolve_model_path

        model = resolve_model_path(model)
        if not model.exists():
            raise SpecdiffError(f"model folder not found: {model}")
        if not model.is_dir():
            raise SpecdiffError(f"--model must be a folder (diffusers layout), got a file: {model}")
        return model
    from specdiff.pipeline.default_model import default_model_path

    bundled = default_model_path()
    if bundled is None:
        raise UsageError(
            "no default model is bundled yet; pass --model DIR, a pipeline folder in diffusers layout "
            f"(with model_index.json), or a Hugging Face Hub id such as --model {OFFICIAL_MODEL_ID}, or a "
            "trained checkpoint written by `specdiff export CHECKPOINT DIR`"
        )
    return bundled


def resolve_sampling(args: argparse.Namespace, model_dir: Path) -> None:
    """Fill ``args.scheduler`` / ``args.steps`` / ``args.guidance`` left unset (None) on the command
    line, and ``args.precision_recommended`` for ``--precision auto``, by
    :func:`specdiff.pipeline.sampling_settings.resolve_sampling` (the flag, else the model folder's
    ``sampling.json``, else the library default): the commands decide nothing themselves."""
    from specdiff.pipeline.sampling_settings import resolve_sampling as resolve

    precision = getattr(args, "precision", None)
    chosen = resolve(
        model_dir,
        scheduler=getattr(args, "scheduler", None),
        num_inference_steps=getattr(args, "steps", None),
        guidance_scale=getattr(args, "guidance", None),
        precision=None if precision in (None, "auto") else precision,
    )
    if precision in (None, "auto"):  # resolve_precision weighs the recommendation against the device
        args.precision_recommended = chosen.precision
    args.scheduler, args.steps, args.guidance = chosen.scheduler, chosen.num_inference_steps, chosen.guidance_scale


def resolve_precision(args: argparse.Namespace, device: str) -> Any:
    """The torch dtype of the networks for ``args.precision`` on ``device`` (sets ``args.precision``
    to the name used). ``auto`` takes the model folder's recommendation (see resolve_sampling) where
    it pays: bf16 on a GPU or a CPU with native bf16 matmuls, fp16 on a GPU; otherwise fp32."""
    from specdiff.hardware import cpu_has_native_bf16

    name = getattr(args, "precision", None) or "auto"
    if name == "auto":
        name = getattr(args, "precision_recommended", DEFAULT_PRECISION)
        if device == "cpu" and (name == "fp16" or (name == "bf16" and not cpu_has_native_bf16())):
            name = "fp32"
    elif name == "fp16" and device == "cpu":
        raise SpecdiffError("--precision fp16 is for GPUs (float16 matmuls are slow on a CPU); use bf16 or fp32")
    args.precision = name
    return precision_dtype(name)


def resolve_device(name: str) -> str:
    """``auto`` -> cuda / mps / cpu; an explicit accelerator that is not there is an error."""
    import torch

    has_mps = getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available()
    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "mps" if has_mps else "cpu"
    if name == "cuda" and not torch.cuda.is_available():
        raise SpecdiffError("--device cuda: no CUDA GPU is available to PyTorch here (try --device cpu)")
    if name == "mps" and not has_mps:
        raise SpecdiffError("--device mps: Apple MPS is not available here (try --device cpu)")
    return name


def resolve_model(args: argparse.Namespace) -> Path:
    """The model folder of ``--model`` (else the bundled one), with ``args.scheduler`` / ``steps`` /
    ``guidance`` left unset on the command line filled from its ``sampling.json``. Cheap (no torch):
    commands call it before any slow step."""
    model_dir = resolve_model_dir(args.model)
    resolve_sampling(args, model_dir)
    return model_dir


def load_pipeline(args: argparse.Namespace, model_dir: Path) -> tuple[Any, str]:
    """The pipeline of ``model_dir`` on ``--device`` in ``--precision`` with ``--inverter``, and the
    device used (``args.precision`` is set to the precision chosen)."""
    from specdiff.pipeline.pipeline import SpectrogramDiffusionPipeline

    device = resolve_device(args.device)
    dtype = resolve_precision(args, device)
    pipe = SpectrogramDiffusionPipeline.from_pretrained(model_dir, device=device, dtype=dtype, inverter=args.inverter)
    if getattr(args, "timbre", None):
        pipe.timbre = args.timbre  # an unknown name: SpecdiffError naming the model's timbres
    return pipe, device


#: ``--model``'s help, shared by the commands that load a pipeline.
MODEL_HELP = (
    "the model: a pipeline folder in diffusers layout (model_index.json, notes_encoder/, continuous_encoder/, "
    "decoder/, scheduler/, optionally melgan/model.onnx or vocoder/), e.g. one written by `specdiff export`, "
    f"or a Hugging Face Hub id such as {OFFICIAL_MODEL_ID} (ORG/NAME[@REVISION]; downloaded once into the "
    "Hugging Face cache, HF_HOME, and used offline afterwards; needs the hub extra). Default: the model "
    "bundled with the package"
)


def add_timbre_argument(parser: argparse.ArgumentParser) -> None:
    """``--timbre NAME``: which of the model's timbres to synthesize (``specdiff info`` lists them)."""
    parser.add_argument(
        "--timbre", default=None, metavar="NAME",
        help="the sound to synthesize, for models trained on several SoundFonts (e.g. TimGM6mb, FluidR3_GM; "
        "`specdiff info` lists the model's timbres; default: the model's first)",
    )  # fmt: skip
