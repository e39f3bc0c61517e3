"""Spectrogram inverters: natural-log mel ``[B, T, 128]`` -> 16 kHz audio ``[B, T * 320]`` (spec §6).

- :class:`OnnxInverter` runs the official inverter's ONNX export (``melgan/model.onnx`` in the
  diffusers model folder): a SoundStream-style GAN decoder, the best quality, weights needed.
- :class:`GriffinLimInverter` needs no weights: it estimates a linear magnitude spectrogram from the
  mel one and recovers a phase with fast Griffin-Lim. It always works but sounds phasey and dull;
  it is the documented low-quality fallback.
- Trained vocoders plug in through :func:`register_inverter`. ``"vocoder"`` is registered here
  for ``specdiff.vocoder`` (our own vocoder for this front end, in a model folder's ``vocoder/``).

:func:`load_inverter` picks one for a model folder.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from pathlib import Path
from typing import Protocol, runtime_checkable

import numpy as np
import torch

from specdiff import mel
from specdiff.errors import ModelError

logger = logging.getLogger(__name__)

SAMPLE_RATE = mel.SAMPLE_RATE
HOP_LENGTH = mel.HOP_LENGTH
N_MELS = mel.N_MELS
ONNX_SUBPATH = Path("melgan") / "model.onnx"  # diffusers' folder layout (spec §6)
ONNX_INPUT_NAME = "input_features"
#: Smallest overlap-add window envelope :func:`istft` divides by (the periodic Hann window's squares
#: sum to 0.5..1 after the first frame; 0.1 is reached 122 samples in).
ENVELOPE_FLOOR = 0.1


@runtime_checkable
class Inverter(Protocol):
    """Turns natural-log mel features into audio.

    ``inverter(log_mel)`` takes float ``[B, T, 128]`` features in the log-mel feature space of
    spec §1 (not the [-1, 1] diffusion range) and returns float32 audio ``[B, T * 320]`` at
    ``inverter.sample_rate`` Hz.
    """

    sample_rate: int

    def __call__(self, log_mel: np.ndarray) -> np.ndarray: ...


class InverterUnavailable(ModelError):
    """An inverter's optional runtime (onnxruntime, ...) is not installed."""


def check_features(log_mel: np.ndarray) -> np.ndarray:
    """``log_mel`` as a C-contiguous float32 ``[B, T, 128]`` array; ValueError for another shape."""
    features = np.ascontiguousarray(log_mel, dtype=np.float32)
    if features.ndim != 3 or features.shape[-1] != N_MELS:
        raise ValueError(f"expected log-mel features [batch, frames, {N_MELS}], got shape {list(features.shape)}")
    return features


# ---- the official ONNX inverter -------------------------------------------------------------------


class OnnxInverter:
    """The official spectrogram inverter's ONNX export (spec §6).

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
            raise ModelError(f"{self.path}: expected an input named {ONNX_INPUT_NAME!r} (spec §6), found {inputs}")
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
                f"({HOP_LENGTH} samples per frame, spec §6)"
            )
        return audio

    def __repr__(self) -> str:
        return f"OnnxInverter({str(self.path)!r})"


# ---- Griffin-Lim fallback -------------------------------------------------------------------------


class GriffinLimInverter:
    """Mel -> linear magnitude (non-negative least squares) -> fast Griffin-Lim phase recovery.

    Low quality, needs no weights. It uses exactly the front end's STFT (spec §1: periodic Hann 640,
    hop 320, FFT 1024, not centred, end padding), so re-analysing its output with
    :func:`specdiff.mel.log_mel` gives a spectrogram close to the input.

    Args:
        n_iter: Griffin-Lim iterations (each is one STFT and one inverse STFT).
        momentum: "fast Griffin-Lim" momentum (Perraudin et al. 2013); 0 gives plain Griffin-Lim.
        nnls_iter: multiplicative-update iterations for the mel -> linear magnitude step.
        seed: seed of the random initial phase (the output is deterministic).
        device: torch device to run on.
    """

    sample_rate = SAMPLE_RATE

    def __init__(self, n_iter: int = 32, momentum: float = 0.99, nnls_iter: int = 30, seed: int = 0,
                 device: str = "cpu"):
        if n_iter < 0 or nnls_iter < 0 or not 0.0 <= momentum < 1.0:
            raise ValueError("n_iter and nnls_iter must be >= 0 and momentum in [0, 1)")
        self.n_iter, self.momentum, self.nnls_iter, self.seed, self.device = n_iter, momentum, nnls_iter, seed, device

    def __call__(self, log_mel: np.ndarray) -> np.ndarray:
        features = check_features(log_mel)
        batch, frames, _ = features.shape
        if frames == 0:
            return np.zeros((batch, 0), np.float32)
        with torch.inference_mode():
            magnitude = self.mel_to_magnitude(torch.from_numpy(features).to(self.device))
            audio = self.griffin_lim(magnitude)
        return audio.float().cpu().numpy()

    def mel_to_magnitude(self, log_mel: torch.Tensor, init: torch.Tensor | None = None) -> torch.Tensor:
        """Non-negative linear magnitudes ``[..., T, 513]`` whose mel projection fits ``exp(log_mel)``.

        Least squares under S >= 0 by multiplicative updates (Lee & Seung), started from ``init`` when
        given (e.g. a neural vocoder's magnitudes, whose detail within each band the updates keep),
        else from each bin's triangle-weighted mean of its bands' per-bin level, which is already exact
        for a flat spectrum (up to the top band's centre, where the triangles stop summing to one).
        """
        fb = mel.mel_filterbank(log_mel.device, torch.float32)  # [513, 128]
        # Values at the clip floor mean "nothing there": do not spread 1e-5 over every bin.
        target = torch.exp(log_mel.float()) * (log_mel > mel.MIN_VALUE + 1e-3)
        if init is None:
            width = fb.sum(0).clamp_min(1e-8)  # bins under each triangle
            magnitude = (target / width) @ fb.T  # 0 for the DC bin, which no band sees
        else:
            magnitude = init.float()
        numerator = target @ fb.T
        unseen = fb.sum(1) == 0  # the DC bin: no band constrains it, so an init value stays as it is
        for _ in range(self.nnls_iter):
            update = numerator / ((magnitude @ fb) @ fb.T + 1e-12)
            magnitude = magnitude * (update.masked_fill(unseen, 1.0) if init is not None else update)
        return magnitude

    def griffin_lim(self, magnitude: torch.Tensor, angles: torch.Tensor | None = None) -> torch.Tensor:
        """Audio ``[..., T * 320]`` whose STFT magnitude approximates ``magnitude`` ``[..., T, 513]``.

        ``angles``: initial unit phasors ``[..., T, 513]`` (default: random phases from ``seed``). Given
        ones are trusted for frame 0: its first 320 samples are seen by no other frame and come out
        of :func:`istft` faded in, so re-analysing them would shift frame 0's phase a little at every
        iteration and carry that error one frame further each time; frame 0 keeps its initial phase.
        """
        frames = magnitude.shape[-2]
        length = frames * HOP_LENGTH
        first_frame = angles[..., :1, :] if angles is not None and frames > 0 else None
        if angles is None:
            generator = torch.Generator(device="cpu").manual_seed(self.seed)
            phase = torch.rand(magnitude.shape, generator=generator, dtype=torch.float32) * (2 * torch.pi)
            angles = torch.polar(torch.ones_like(phase), phase).to(magnitude.device)
        previous = torch.zeros_like(angles)
        for _ in range(self.n_iter):
            rebuilt = mel.stft(istft(magnitude * angles, length))
            # Fast Griffin-Lim: extrapolate the projection along its last step.
            angles = rebuilt - previous * (self.momentum / (1 + self.momentum))
            angles = angles / angles.abs().clamp_min(1e-16)
            if first_frame is not None:
                angles = torch.cat([first_frame, angles[..., 1:, :]], dim=-2)
            previous = rebuilt
        return istft(magnitude * angles, length)

    def __repr__(self) -> str:
        return f"GriffinLimInverter(n_iter={self.n_iter}, momentum={self.momentum})"


def istft(spectrum: torch.Tensor, length: int) -> torch.Tensor:
    """Least-squares inverse of :func:`specdiff.mel.stft`: ``[..., T, 513]`` -> ``[..., length]``.

    Each frame's 1024-point inverse FFT is cut to the 640 analysed samples, windowed again and
    overlap-added with hop 320, then divided by the summed squared window (Griffin & Lim 1984).
    Samples past ``length`` (the end padding) are dropped.

    The analysis is not centred (spec §1), so the first 320 samples are seen by frame 0 alone, whose
    squared window rises from 0. Dividing by it there would multiply any inconsistency of a
    Griffin-Lim spectrum by up to ~1e8 (a loud click at the start). The envelope is therefore
    floored at :data:`ENVELOPE_FLOOR`: the first ~7 ms come out faded in, all later samples are the
    exact least-squares inverse (where the envelope is between 0.5 and 1).
    """
    window = mel.hann_window(spectrum.device, spectrum.real.dtype)
    frames = torch.fft.irfft(spectrum, n=mel.N_FFT)[..., : mel.WIN_LENGTH] * window
    signal = _overlap_add_halves(frames)
    envelope = _overlap_add_halves((window**2).expand(spectrum.shape[-2], -1))
    signal = signal / envelope.clamp_min(ENVELOPE_FLOOR)
    return signal[..., :length]


def _overlap_add_halves(frames: torch.Tensor) -> torch.Tensor:
    """Overlap-add ``[..., T, 640]`` frames at hop 320 (= half a frame): ``[..., (T + 1) * 320]``."""
    half = HOP_LENGTH
    assert frames.shape[-1] == 2 * half
    first, second = frames[..., :half], frames[..., half:]
    pad_first = torch.nn.functional.pad(first, (0, 0, 0, 1))  # block j gets frame j's first half
    pad_second = torch.nn.functional.pad(second, (0, 0, 1, 0))  # ... and frame j-1's second half
    blocks = pad_first + pad_second
    return blocks.reshape(*blocks.shape[:-2], -1)


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
    This is the hook for trained vocoders (see ``specdiff/vocoder.py``).
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
    for name in _AUTO_ORDER:
        try:
            inverter = _REGISTRY[name](model_dir)
        except InverterUnavailable as err:
            logger.warning("skipping the %s inverter: %s", name, err)
            continue
        if inverter is not None:
            logger.info("spectrogram inverter: %s", name)
            return inverter
    logger.warning(
        "no neural spectrogram inverter in %s: using Griffin-Lim, a low-quality fallback "
        "(add melgan/model.onnx or a trained vocoder/ for good audio)", model_dir or "(no model folder)"
    )
    return GriffinLimInverter()


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
    from specdiff import vocoder  # torch model; imported only when a folder may hold one

    if vocoder.find_vocoder_dir(model_dir) is None:
        return None
    return vocoder.load_vocoder(model_dir)


def _griffinlim_factory(model_dir: Path | None) -> Inverter:
    return GriffinLimInverter()


register_inverter("onnx", _onnx_factory)
register_inverter("vocoder", _vocoder_factory)
register_inverter("griffinlim", _griffinlim_factory, auto=False)
