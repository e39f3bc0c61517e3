"""``specdiff info``: what a bug report needs, one ``key: value`` line each (or JSON).

Versions (specdiff, Python, torch), platform, the model folder in use and its sampler settings
(``sampling.json``), the inverter ``--inverter auto`` picks for it, the device and precision that
``--device auto`` / ``--precision auto`` pick on this machine and why, and which optional extras are
installed. Fast: torch is imported (the device check needs it) and the inverter is loaded, but no
diffusion model is loaded and nothing is synthesized. A problem found on the way (a broken sampling.json,
inverter files that do not load) is reported in its line, not raised: the rest is still useful.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import importlib.util
import json
import logging
import os
import platform
import sys
from pathlib import Path

from specdiff import __version__
from specdiff.commands.options import UsageError, one_line, resolve_device, resolve_model_dir, resolve_precision
from specdiff.errors import ModelError, SpecdiffError

#: pyproject.toml's extras (those a user installs; not ``all``/``test``) -> the modules they provide.
EXTRAS: dict[str, tuple[str, ...]] = {
    "onnx": ("onnxruntime",),
    "plot": ("matplotlib",),
    "render": ("pretty_midi", "tinysoundfont"),
    "eval": ("basic_pitch", "mir_eval"),
    "train": ("tensorboard",),
    "serve": ("fastapi", "uvicorn"),
    "hub": ("huggingface_hub",),
    "parity": ("diffusers", "transformers"),
}


def add_info_arguments(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Add the ``info`` subcommand (``set_defaults(func=run_info)``)."""
    p = subparsers.add_parser(
        "info",
        help="print what a bug report needs: versions, model, device and precision, installed extras",
        description="Print what a bug report needs: specdiff, Python and torch versions, the platform, "
        "the model folder in use and its sampler settings, the spectrogram inverter, the device and "
        "precision that `auto` picks on this machine (and why), and the optional extras installed. "
        "No audio is synthesized.",
    )
    p.add_argument(
        "--model",
        metavar="DIR|ORG/NAME",
        help="the model folder or Hugging Face Hub id to report on, as for synth (default: the bundled model)",
    )
    p.add_argument("--json", action="store_true", help="one JSON object instead of key: value lines")
    p.set_defaults(func=run_info)
    return p


def _version(distribution: str) -> str | None:
    try:
        return importlib.metadata.version(distribution)
    except importlib.metadata.PackageNotFoundError:
        return None


def module_installed(name: str) -> bool:
    """Whether ``name`` can be imported (found without importing it: a cheap check)."""
    try:
        return importlib.util.find_spec(name) is not None
    except (ImportError, ValueError):  # a parent package is missing, or a broken __spec__
        return False


def extras_status() -> dict[str, str]:
    """Each extra: ``yes`` and the versions when all its modules are importable, else which are
    missing and how to get them."""
    status = {}
    for extra, modules in EXTRAS.items():
        missing = [m for m in modules if not module_installed(m)]
        if not missing:
            versions = ", ".join(f"{m} {_version(m) or '(version unknown)'}" for m in modules)
            status[extra] = f"yes ({versions})"
        else:
            status[extra] = f"no ({', '.join(missing)} missing: pip install 'specdiff[{extra}]')"
    return status


def decoder_extensions_line(decoder: dict) -> str:
    """The decoder options of a ``decoder/config.json`` beyond the original architecture
    (:data:`specdiff.constants.DECODER_EXTENSIONS`), as one line: switches by name, values after ``=``."""
    from specdiff.constants import DECODER_EXTENSIONS

    parts = []
    for key, original in DECODER_EXTENSIONS.items():
        value = decoder.get(key, original)
        if value == original or key == "timbres":  # the timbres have their own line
            continue
        if value is True:
            parts.append(key)
        elif isinstance(value, list):
            parts.append(f"{key}={','.join(f'{v:g}' if isinstance(v, float) else str(v) for v in value)}")
        else:
            parts.append(f"{key}={value}")
    return ", ".join(parts) + " (extensions)" if parts else "the original architecture (no extensions)"


def _model_lines(model: Path | None) -> tuple[Path | None, dict[str, str]]:
    """The model folder in use and its lines (model, sampling)."""
    from specdiff.pipeline.folder import SAMPLING_FILE
    from specdiff.pipeline.sampling_settings import resolve_sampling

    try:
        model_dir = resolve_model_dir(model)
    except UsageError as err:  # no bundled model and no --model: say so, keep reporting the rest
        return None, {"model": f"none ({one_line(err)})"}
    lines = {"model": f"{model_dir.resolve()}" + (" (bundled)" if model is None else "")}
    try:
        s = resolve_sampling(model_dir)  # what a command with no sampler flags uses
    except SpecdiffError as err:
        lines["sampling"] = f"error: {one_line(err)}"
        return model_dir, lines
    try:
        decoder = json.loads((model_dir / "decoder" / "config.json").read_text())
        timbres = decoder.get("timbres", [])
        lines["timbres"] = (", ".join(timbres) + " (--timbre NAME; the first is the default)") if timbres else "none"
        lines["programs"] = ("General MIDI (all 128 programs, gm_programs)" if decoder.get("gm_programs")
                             else "Slakh classes (34, as the original)")  # fmt: skip
        lines["decoder"] = decoder_extensions_line(decoder)
    except (OSError, ValueError):
        pass
    source = SAMPLING_FILE if (model_dir / SAMPLING_FILE).is_file() else f"library defaults, no {SAMPLING_FILE}"
    steps = f"{s.num_inference_steps} step" + ("" if s.num_inference_steps == 1 else "s")
    ends = f" (more end at noise time {s.final_noise_time:g})" if s.final_noise_time > 0 else ""
    ceiling = "" if s.guidance_ceiling is None else f" capped at {s.guidance_ceiling:g} (guidance_ceiling)"
    if s.guidance_lift is not None:
        ceiling += f", lift at most {s.guidance_lift:g} (guidance_lift)"
    if s.guidance_schedule != "every":
        ceiling += f", at the {s.guidance_schedule} step only (guidance_schedule)"
    lines["sampling"] = (
        f"{s.scheduler}, {steps}{ends}, guidance {s.guidance_scale:g}{ceiling}, precision {s.precision} where fast"
        f" ({source})"
    )
    return model_dir, lines


def _inverter_line(model_dir: Path | None) -> str:
    """The inverter ``--inverter auto`` loads for the model folder; its log messages (e.g. "skipping
    the onnx inverter: onnxruntime is not installed") go into the line instead of onto stderr."""
    from specdiff.audio.inverters import load_auto_inverter

    messages: list[str] = []

    class _Collect(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            if record.levelno >= logging.WARNING:
                messages.append(one_line(record.getMessage()))

    logger = logging.getLogger("specdiff.audio.inverters")
    handler, propagate = _Collect(), logger.propagate
    logger.addHandler(handler)
    logger.propagate = False
    try:
        name, inverter = load_auto_inverter(model_dir)
    except ModelError as err:
        return f"error: {one_line(err)}"
    except Exception as err:  # whatever else broke, a bug report needs it here, and the lines after it
        return f"error: {type(err).__name__}: {one_line(err)}"
    finally:
        logger.removeHandler(handler)
        logger.propagate = propagate
    details = getattr(inverter, "description", None)
    return f"{name}" + (f": {details}" if details else "") + (f" ({'; '.join(messages)})" if messages else "")


def _device_line() -> tuple[str, str]:
    """The device ``--device auto`` picks, and the line that says why."""
    import torch

    device = resolve_device("auto")
    if device == "cuda":
        why = f"{torch.cuda.get_device_name(0)}, CUDA {torch.version.cuda}"
    elif device == "mps":
        why = "Apple MPS"
    else:
        why = "no CUDA GPU or Apple MPS visible to PyTorch"
    return device, f"{device} ({why})"


def _precision_line(recommended: str, device: str) -> str:
    """The precision ``--precision auto`` picks for the model's recommendation on ``device``, and why
    (the same choice as the commands make: ``resolve_precision``)."""
    from specdiff.hardware import cpu_has_native_bf16

    args = argparse.Namespace(precision="auto", precision_recommended=recommended)
    resolve_precision(args, device)
    chosen = args.precision
    native = "this CPU multiplies bf16 natively (avx512_bf16 or amx_bf16)"
    if device != "cpu":
        why = f"the model's recommendation, on {device}"
    elif chosen == "bf16":
        why = f"the model's recommendation: {native}"
    elif recommended == "bf16":
        why = "the model recommends bf16, but this CPU has no native bf16 matmuls (avx512_bf16, amx_bf16)"
    elif recommended == "fp16":
        why = "the model recommends fp16, which is for GPUs"
    else:
        why = "the model's recommendation" + (f"; {native}" if cpu_has_native_bf16() else "")
    return f"{chosen} ({why})"


def collect_info(model: Path | None = None) -> dict[str, str]:
    """Everything ``specdiff info`` prints, in its order."""
    import torch

    from specdiff.constants import DEFAULT_PRECISION
    from specdiff.pipeline.sampling_settings import resolve_sampling

    info = {
        "specdiff": f"{__version__} ({Path(__file__).resolve().parents[1]})",
        "python": f"{platform.python_version()} ({sys.executable})",
        "platform": f"{platform.platform()} ({platform.machine()}, {os.cpu_count()} CPUs)",
        "torch": f"{torch.__version__} (CUDA build: {torch.version.cuda or 'none'}, {torch.get_num_threads()} threads)",
    }
    model_dir, model_lines = _model_lines(model)
    info.update(model_lines)
    info["inverter"] = _inverter_line(model_dir) if model_dir is not None else "none (no model folder)"
    device, info["device"] = _device_line()
    try:
        recommended = resolve_sampling(model_dir).precision
    except SpecdiffError:
        recommended = DEFAULT_PRECISION
    info["precision"] = _precision_line(recommended, device)
    for extra, status in extras_status().items():
        info[f"extra {extra}"] = status
    return info


def run_info(args: argparse.Namespace) -> int:
    """``specdiff info``: print :func:`collect_info` on stdout."""
    info = collect_info(args.model)
    if args.json:
        print(json.dumps(info, indent=2))
    else:
        width = max(len(key) for key in info) + 1
        for key, value in info.items():
            print(f"{key + ':':<{width}} {value}")
    return 0
