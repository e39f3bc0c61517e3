"""The log-mel front end of Spectrogram Diffusion (ORIGINAL.md §1), in PyTorch.

It reproduces MSD's ``audio_codecs.MelGAN`` features, which are computed in TensorFlow as

    stft = tf.signal.stft(audio, frame_length=640, frame_step=320, fft_length=1024, pad_end=True)
    mel = tf.tensordot(tf.abs(stft), tf.signal.linear_to_mel_weight_matrix(128, 513, 16000, 0, 8000), 1)
    log_mel = tf.math.log(tf.clip_by_value(mel, 1e-5, 1e8))

so that features, models and the official spectrogram inverter (ORIGINAL.md §6) agree with the original.
``tests/test_mel.py`` checks both pieces against values that TensorFlow itself produced.
"""

from __future__ import annotations

import math
from functools import cache, lru_cache
from typing import Any

import numpy as np
import torch

from specdiff.constants import HOP_LENGTH, N_MELS, SAMPLE_RATE

WIN_LENGTH = 640
N_FFT = 1024  # each 640-sample frame is zero-padded to 1024 samples: 513 bins
N_FREQS = N_FFT // 2 + 1
MEL_FMIN = 0.0
MEL_FMAX = 8000.0
CLIP_VALUE_MIN = 1e-5
CLIP_VALUE_MAX = 1e8
MIN_VALUE = math.log(CLIP_VALUE_MIN)  # -11.512925...: silence; also the pad value (ORIGINAL.md §1)
MAX_VALUE = 4.0  # "largest value for most examples" (ORIGINAL.md §1), the top of the scaling range
#: Natural-log mel units per unit of the model's scaled [-1, 1] features (:func:`scale_features`).
NAT_PER_UNIT = (MAX_VALUE - MIN_VALUE) / 2.0
ADDITIONAL_FRAMES_FOR_ENCODING = 16  # extra frames fed to the STFT when making training features

# The HTK mel scale in TensorFlow's natural-log form: mel = 1127 ln(1 + f / 700).
_MEL_BREAK_FREQUENCY_HERTZ = 700.0
_MEL_HIGH_FREQUENCY_Q = 1127.0


def num_frames(num_samples: int) -> int:
    """Frames that :func:`log_mel` makes from ``num_samples`` samples: ceil(N / 320) (ORIGINAL.md §1, pad_end)."""
    return -(-int(num_samples) // HOP_LENGTH)


def hertz_to_mel(hertz: Any) -> np.ndarray:
    """HTK mel of a frequency in Hz, float64: 1127 ln(1 + f / 700)."""
    return _MEL_HIGH_FREQUENCY_Q * np.log1p(np.asarray(hertz, dtype=np.float64) / _MEL_BREAK_FREQUENCY_HERTZ)


def mel_to_hertz(mel: Any) -> np.ndarray:
    """Inverse of :func:`hertz_to_mel`, float64."""
    return _MEL_BREAK_FREQUENCY_HERTZ * np.expm1(np.asarray(mel, dtype=np.float64) / _MEL_HIGH_FREQUENCY_Q)


@cache
def mel_band_edges() -> np.ndarray:
    """The ``N_MELS + 2`` equally spaced mel-scale edges of the filterbank's triangles: band k rises from
    edge k, peaks at edge k + 1 (its centre) and falls to edge k + 2."""
    return np.linspace(hertz_to_mel(MEL_FMIN), hertz_to_mel(MEL_FMAX), N_MELS + 2)


def _mel_filterbank_float64(n_freqs: int = N_FREQS) -> np.ndarray:
    """``tf.signal.linear_to_mel_weight_matrix(128, 513, 16000, 0.0, 8000.0)`` as float64 ``[513, 128]``
    (with ``n_freqs``: the same triangles on that many linear bins from 0 to 8 kHz).

    Same steps as TF's ``mel_ops.py``. TF runs them in float32 with its own (not correctly rounded)
    float32 log, which puts its matrix within ~2e-5 of the exact one; a float32 replica with numpy's
    log lands no closer (TF's log and numpy's differ in the last bit), so we compute the exact matrix
    in float64 and round once. tests/test_mel.py measures the distance to TF's own matrix.
    """
    # HTK excludes the DC bin: its row stays zero.
    linear_frequencies = np.linspace(0.0, SAMPLE_RATE / 2, n_freqs)[1:]
    bins_mel = hertz_to_mel(linear_frequencies)[:, None]
    # Band k is the triple (edge k, edge k+1, edge k+2).
    edges = mel_band_edges()
    lower, center, upper = edges[None, :-2], edges[None, 1:-1], edges[None, 2:]
    # Triangles are straight lines in the mel domain, peaking at 1.0 (no area normalisation).
    lower_slopes = (bins_mel - lower) / (center - lower)
    upper_slopes = (upper - bins_mel) / (upper - center)
    weights = np.maximum(0.0, np.minimum(lower_slopes, upper_slopes))
    return np.concatenate([np.zeros((1, N_MELS)), weights])


def mel_filterbank(device: torch.device | str | None = None, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """The ``[513, 128]`` mel weight matrix (ORIGINAL.md §1) on ``device`` (cached per device and dtype).

    Multiply a magnitude spectrogram ``[..., 513]`` by it on the right to get mel magnitudes.
    """
    return _cached_filterbank(torch.device(device or "cpu"), dtype)


def mel_filterbank_on(n_freqs: int) -> np.ndarray:
    """The 128 mel triangles of :func:`mel_filterbank` laid on ``n_freqs`` linear bins from 0 to 8 kHz
    (float64 ``[n_freqs, 128]``), e.g. on the bins of another STFT size (the vocoder's 1280 samples)."""
    return _mel_filterbank_float64(n_freqs)


@lru_cache(maxsize=16)
def _cached_filterbank(device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    # float64 math, one rounding to the target dtype (float32 like TF's default). Built outside
    # inference mode: a cached inference tensor could not be used later in autograd (vocoder losses).
    with torch.inference_mode(False):
        return torch.from_numpy(_mel_filterbank_float64()).to(device=device, dtype=dtype)


@lru_cache(maxsize=16)
def _cached_window(device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    # tf.signal.hann_window is periodic by default: 0.5 - 0.5 cos(2 pi n / 640), n = 0..639.
    with torch.inference_mode(False):  # see _cached_filterbank
        return torch.hann_window(WIN_LENGTH, periodic=True, dtype=torch.float64).to(device=device, dtype=dtype)


def hann_window(device: torch.device | str | None = None, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """The periodic 640-sample Hann analysis window (cached per device and dtype)."""
    return _cached_window(torch.device(device or "cpu"), dtype)


def stft_frames(audio: torch.Tensor) -> torch.Tensor:
    """Frame ``[..., N]`` audio the way ``tf.signal.frame(..., pad_end=True)`` does: ``[..., ceil(N/320), 640]``.

    Frame i covers samples [320 i, 320 i + 640); the signal is zero-padded at the end only (ORIGINAL.md §1,
    *not* centred like ``torch.stft(center=True)``).
    """
    n = audio.shape[-1]
    frames = num_frames(n)
    padded_length = max((frames - 1) * HOP_LENGTH + WIN_LENGTH, WIN_LENGTH)
    audio = torch.nn.functional.pad(audio, (0, padded_length - n))
    return audio.unfold(-1, WIN_LENGTH, HOP_LENGTH)[..., :frames, :]


def stft(audio: torch.Tensor) -> torch.Tensor:
    """Complex STFT ``[..., frames, 513]`` with our convention (periodic Hann 640, hop 320, FFT 1024, pad_end)."""
    frames = stft_frames(audio) * hann_window(audio.device, audio.dtype)
    if frames.shape[-2] == 0:  # no samples: FFT back ends reject empty batches
        return torch.zeros((*frames.shape[:-1], N_FREQS), dtype=frames.dtype.to_complex(), device=audio.device)
    return torch.fft.rfft(frames, n=N_FFT)  # rfft zero-pads each 640-sample frame to 1024 at the end


def log_mel(audio: torch.Tensor | np.ndarray) -> torch.Tensor:
    """Natural-log mel spectrogram (ORIGINAL.md §1): ``[..., N]`` audio at 16 kHz -> ``[..., ceil(N/320), 128]``.

    Accepts a torch tensor (any device; float64 stays float64, other dtypes become float32) or a
    numpy array, and returns a torch tensor. Silence gives ``MIN_VALUE`` = ln(1e-5).
    """
    if not isinstance(audio, torch.Tensor):
        audio = torch.from_numpy(np.ascontiguousarray(audio))
    if audio.ndim == 0:
        raise ValueError("log_mel expects audio of shape [..., num_samples], got a scalar")
    if audio.dtype != torch.float64:
        audio = audio.to(torch.float32)
    magnitude = stft(audio).abs()
    mel = magnitude @ mel_filterbank(audio.device, audio.dtype)
    return torch.log(torch.clamp(mel, CLIP_VALUE_MIN, CLIP_VALUE_MAX))


def scale_features(x: Any, output_range: tuple[float, float] = (-1.0, 1.0), clip: bool = False) -> Any:
    """Linearly map log-mel features from [MIN_VALUE, MAX_VALUE] to ``output_range`` (ORIGINAL.md §1.1).

    With ``clip``, the features are first clipped to [MIN_VALUE, MAX_VALUE]. Works on torch tensors
    and numpy arrays. Feature 0.0 maps to 0.484301 (the value of diffusers' all-zero first context).
    """
    lo, hi = output_range
    if clip:
        x = _clip(x, MIN_VALUE, MAX_VALUE)
    zero_one = (x - MIN_VALUE) / (MAX_VALUE - MIN_VALUE)
    return zero_one * (hi - lo) + lo


def scale_to_features(y: Any, input_range: tuple[float, float] = (-1.0, 1.0), clip: bool = False) -> Any:
    """Inverse of :func:`scale_features`: map ``input_range`` back to [MIN_VALUE, MAX_VALUE] (ORIGINAL.md §1.1).

    With ``clip``, ``y`` is first clipped to ``input_range``.
    """
    lo, hi = input_range
    if clip:
        y = _clip(y, lo, hi)
    zero_one = (y - lo) / (hi - lo)
    return zero_one * (MAX_VALUE - MIN_VALUE) + MIN_VALUE


def _clip(x: Any, lo: float, hi: float) -> Any:
    if isinstance(x, torch.Tensor):
        return torch.clamp(x, lo, hi)
    return np.clip(x, lo, hi)
