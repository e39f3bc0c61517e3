"""Griffin-Lim spectrogram inversion: natural-log mel ``[B, T, 128]`` -> 16 kHz audio (ORIGINAL.md §6).

The weight-free fallback inverter and the exact least-squares inverse of the front end's STFT. It
sits below :mod:`specdiff.audio.inverters` (which offers it by name) and :mod:`specdiff.audio.vocoder` (whose
output it refines), so neither of those has to import the other.
"""

from __future__ import annotations

import numpy as np
import torch

from specdiff.audio import mel
from specdiff.constants import HOP_LENGTH, N_MELS, SAMPLE_RATE

#: Smallest overlap-add window envelope :func:`istft` divides by (the periodic Hann window's squares
#: sum to 0.5..1 after the first frame; 0.1 is reached 122 samples in).
ENVELOPE_FLOOR = 0.1


def check_features(log_mel: np.ndarray) -> np.ndarray:
    """``log_mel`` as a C-contiguous float32 ``[B, T, 128]`` array; ValueError for another shape."""
    features = np.ascontiguousarray(log_mel, dtype=np.float32)
    if features.ndim != 3 or features.shape[-1] != N_MELS:
        raise ValueError(f"expected log-mel features [batch, frames, {N_MELS}], got shape {list(features.shape)}")
    return features


class GriffinLimInverter:
    """Mel -> linear magnitude (non-negative least squares) -> fast Griffin-Lim phase recovery.

    Low quality, needs no weights. It uses exactly the front end's STFT (spec §1: periodic Hann 640,
    hop 320, FFT 1024, not centred, end padding), so re-analysing its output with
    :func:`specdiff.audio.mel.log_mel` gives a spectrogram close to the input.

    Args:
        n_iter: Griffin-Lim iterations (each is one STFT and one inverse STFT).
        momentum: "fast Griffin-Lim" momentum (Perraudin et al. 2013); 0 gives plain Griffin-Lim.
        nnls_iter: multiplicative-update iterations for the mel -> linear magnitude step.
        seed: seed of the random initial phase (the output is deterministic).
        device: torch device to run on.
    """

    sample_rate = SAMPLE_RATE

    def __init__(
        self, n_iter: int = 32, momentum: float = 0.99, nnls_iter: int = 30, seed: int = 0, device: str = "cpu"
    ):
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
    """Least-squares inverse of :func:`specdiff.audio.mel.stft`: ``[..., T, 513]`` -> ``[..., length]``.

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
