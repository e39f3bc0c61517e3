"""Spectrogram inverters: natural-log mel ``[B, T, 128]`` -> 16 kHz audio ``[B, T * 320]`` (ORIGINAL.md §6).

- :class:`OnnxInverter` runs the official inverter's ONNX export (``melgan/model.onnx`` in the
  diffusers model folder): a SoundStream-style GAN decoder, the best quality, weights needed.
- :class:`GriffinLimInverter` needs no weights: it estimates a linear magnitude spectrogram from the
  mel one and recovers a phase with fast Griffin-Lim. It always works but sounds phasey and dull;
  it is the documented low-quality fallback.
- Trained vocoders plug in through :func:`register_inverter`. ``"vocoder"`` is registered here
  for ``specdiff.audio.vocoder`` (our own vocoder for this front end, in a model folder's ``vocoder/``).

:func:`load_inverter` picks one for a model folder.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from pathlib import Path
from typing import Protocol, runtime_checkable

import numpy as np

from specdiff.audio.griffin_lim import (
    GriffinLimInverter,
    check_features,
)
from specdiff.constants import HOP_LENGTH, SAMPLE_RATE
from specdiff.errors import ModelError
from specdiff.pipeline.folder import ONNX_SUBPATH

logger = logging.getLogger(__name__)

ONNX_INPUT_NAME = "input_features"


@runtime_checkable
class Inverter(Protocol):
    """Turns natural-log mel features into audio.

    ``inverter(log_mel)`` takes float ``[B, T, 128]`` features in the log-mel feature space of
    ORIGINAL.md §1 (not the [-1, 1] diffusion range) and returns float32 audio ``[B, T * 320]`` at
    ``inverter.sample_rate`` Hz.
    """

    sample_rate: int

    def __call__(self, log_mel: np.ndarray) -> np.ndarray: ...


class InverterUnavailable(ModelError):
    """An inverter's optional runtime (onnxruntime, ...) is not installed."""


# ---- the official ONNX inverter -------------------------------------------------------------------


class OnnxInverter:
    """The official spectrogram inverter's ONNX export (ORIGINAL.md §6).

    Interface: input ``input_features`` float32 ``[B, T, 128]`` log-mel; output 0 (used by
    position, its name is not documented) float32 audio ``[B, T * 320]`` at 16 kHz.

    Args:
        path: the ``.onnx`` file (e.g. ``<model>/melgan/model.onnx``).
        num_threads: onnxruntime intra-op threads (None: onnxruntime's default, all cores).
        providers: onnxruntime execution providers (None: CPU).
    """

    sample_rate = SAMPLE_RATE

    def __init__(self, path: str | os.PathLike, num_threads: int | None = None, providers: list[str] | None = None):
        try:
            import onnxruntime
        except ImportError:
            raise InverterUnavailable(
                "the ONNX inverter needs onnxruntime: pip install onnxruntime (or use the griffinlim inverter)"
            ) from None
        self.path = Path(path)
        if not self.path.is_file():
            raise ModelError(f"{self.path}: no such ONNX file")
        options = onnxruntime.SessionOptions()
        if num_threads is not None:
            options.intra_op_num_threads = int(num_threads)
            options.inter_op_num_threads = 1
        try:
            self.session = onnxruntime.InferenceSession(
                str(self.path), sess_options=options, providers=providers or ["CPUExecutionProvider"]
            )
        except Exception as err:  # onnxruntime raises its own exception types for bad files
            message = " ".join(str(err).split())[:200]
            raise ModelError(f"{self.path}: cannot load the ONNX model ({message})") from None
        inputs = [i.name for i in self.session.get_inputs()]
        if ONNX_INPUT_NAME not in inputs:
            raise ModelError(
                f"{self.path}: expected an input named {ONNX_INPUT_NAME!r} (ORIGINAL.md §6), found {inputs}"
            )
        if len(inputs) != 1:
            raise ModelError(f"{self.path}: expected one input {ONNX_INPUT_NAME!r}, found {inputs}")

    def __call__(self, log_mel: np.ndarray) -> np.ndarray:
        features = check_features(log_mel)
        batch, frames, _ = features.shape
        if frames == 0:
            return np.zeros((batch, 0), np.float32)
        audio = self.session.run(None, {ONNX_INPUT_NAME: features})[0]
        audio = np.asarray(audio, dtype=np.float32)
        if audio.shape != (batch, frames * HOP_LENGTH):
            raise ModelError(
                f"{self.path}: output 0 has shape {list(audio.shape)}, expected [{batch}, {frames * HOP_LENGTH}] "
                f"({HOP_LENGTH} samples per frame, ORIGINAL.md §6)"
            )
        return audio

    def __repr__(self) -> str:
        return f"OnnxInverter({str(self.path)!r})"


# ---- choosing an inverter -------------------------------------------------------------------------

# name -> factory(model_dir) returning an Inverter, or None when model_dir holds nothing for it.
InverterFactory = Callable[[Path | None], "Inverter | None"]
_REGISTRY: dict[str, InverterFactory] = {}
# Names tried in order by load_inverter(prefer="auto"); griffinlim is the fallback after them.
_AUTO_ORDER: list[str] = []


def register_inverter(name: str, factory: InverterFactory, auto: bool = True) -> None:
    """Make an inverter selectable by name in :func:`load_inverter`.

    ``factory(model_dir)`` returns an :class:`Inverter` built from ``model_dir`` (which may be None),
    or None when the folder holds nothing for it; it raises ``ModelError`` when the folder has the
    inverter's files but they are broken, and :class:`InverterUnavailable` when a runtime is missing.
    With ``auto``, ``load_inverter(prefer="auto")`` tries it after the ones registered before it.
    This is the hook for trained vocoders (see ``specdiff/audio/vocoder.py``).
    """
    _REGISTRY[name] = factory
    if auto and name not in _AUTO_ORDER:
        _AUTO_ORDER.append(name)
    elif not auto and name in _AUTO_ORDER:
        _AUTO_ORDER.remove(name)


def available_inverters() -> list[str]:
    """Names accepted by ``load_inverter(prefer=...)``: "auto" and every registered inverter."""
    return ["auto", *_REGISTRY]


def load_inverter(model_dir: str | os.PathLike | None, prefer: str = "auto") -> Inverter:
    """The inverter to use for a model folder.

    ``prefer="auto"`` tries, in order: the official ONNX file ``model_dir/melgan/model.onnx`` (when
    onnxruntime is installed), a trained vocoder in ``model_dir/vocoder/``, any other registered
    inverter, and finally Griffin-Lim with a warning that it is the low-quality fallback. Naming
    one ("onnx", "vocoder", "griffinlim", ...) loads exactly that one or raises ``ModelError``.
    """
    model_dir = Path(model_dir) if model_dir is not None else None
    if prefer != "auto":
        factory = _REGISTRY.get(prefer)
        if factory is None:
            raise ModelError(f"unknown inverter {prefer!r}; choose one of {', '.join(available_inverters())}")
        inverter = factory(model_dir)
        if inverter is None:
            raise ModelError(f"the {prefer} inverter needs files that {model_dir or 'no model folder'} does not have")
        return inverter
    return load_auto_inverter(model_dir)[1]


def load_auto_inverter(model_dir: str | os.PathLike | None) -> tuple[str, Inverter]:
    """What ``load_inverter(model_dir, "auto")`` loads, with its registered name (``specdiff info``
    reports it)."""
    model_dir = Path(model_dir) if model_dir is not None else None
    for name in _AUTO_ORDER:
        try:
            inverter = _REGISTRY[name](model_dir)
        except InverterUnavailable as err:
            logger.warning("skipping the %s inverter: %s", name, err)
            continue
        if inverter is not None:
            logger.info("spectrogram inverter: %s", name)
            return name, inverter
    logger.warning(
        "no neural spectrogram inverter in %s: using Griffin-Lim, a low-quality fallback "
        "(add melgan/model.onnx or a trained vocoder/ for good audio)",
        model_dir or "(no model folder)",
    )
    return "griffinlim", GriffinLimInverter()


def _onnx_factory(model_dir: Path | None) -> Inverter | None:
    if model_dir is None:
        return None
    path = model_dir / ONNX_SUBPATH if model_dir.is_dir() else model_dir
    if path.suffix != ".onnx" or not path.is_file():
        return None
    return OnnxInverter(path)


def _vocoder_factory(model_dir: Path | None) -> Inverter | None:
    if model_dir is None:
        return None
    from specdiff.audio import vocoder  # torch model; imported only when a folder may hold one

    if vocoder.find_vocoder_dir(model_dir) is None:
        return None
    return vocoder.load_vocoder(model_dir)


def _griffinlim_factory(model_dir: Path | None) -> Inverter:
    return GriffinLimInverter()


register_inverter("onnx", _onnx_factory)
register_inverter("vocoder", _vocoder_factory)
register_inverter("griffinlim", _griffinlim_factory, auto=False)
