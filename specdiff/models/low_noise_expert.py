"""A small convolutional denoiser for low noise times, beside the T5 decoder (decoder extension).

Why: the T5 decoder learns the conditional mean at high noise but not the noise response a denoiser needs
at mid and low noise; its fitted local linear map (``input_skip``) removes most of the noise, but an
iterated sampler accumulates what it leaves: 8 DDIM steps from pure noise raise the estimate's
frame-to-frame roughness from 0.041 to 0.073 (data 0.055), and onsets and Fréchet distance get worse
with every step (``benchmarks/results/low_noise_expert.md``). A 2-D convolution over (frame, mel bin)
is the classic image denoiser (DnCNN); it learns this job in minutes of CPU training. Below a noise
time the decoder hands its rows to this network instead ("expert denoisers" for noise ranges, as in
eDiff-I, Balaji et al. 2022): it reads the noisy residual ``z - alpha_t p`` around the score prior
``p`` and the prior itself (so it knows where notes sound), and predicts the residual ``x0 - p``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor, nn

from specdiff.sampling.diffusion import alpha_sigma, edm_coefficients

#: Dilations over time of the residual conv layers (frequency dilation 1): a receptive field of
#: +-47 frames (~0.94 s), enough for a held note's level, at 3 x 3 kernels.
EXPERT_DILATIONS: tuple[int, ...] = (1, 2, 4, 8, 1, 2, 4, 1)
#: Standard deviation the preconditioning assumes for the residual ``x0 - p`` in the diffusion's
#: [-1, 1] units (measured 0.29-0.37 on the generated-idioms cache for the bundled prior).
RESIDUAL_SCALE = 0.35
#: Sinusoidal features of the noise time fed to the FiLM layer (half sines, half cosines).
TIME_FEATURES = 16


class LowNoiseExpert(nn.Module):
    """Residual conv denoiser: ``(z - alpha p, p, t) -> x0 - p`` estimate, ``[B, T, C]``.

    EDM preconditioning around the prior (Karras et al. 2022, with the residual's scale
    :data:`RESIDUAL_SCALE`): ``r = c_skip y + c_out F(y / scale, p, t)``, ``F``'s output layer starts at
    zero, so an untrained expert is per-pixel shrinkage towards the prior.
    """

    def __init__(self, channels: int, dilations: Sequence[int] = EXPERT_DILATIONS):
        super().__init__()
        if channels <= 0:
            raise ValueError(f"channels must be > 0, got {channels}")
        self.dilations = tuple(int(d) for d in dilations)
        self.inputs = nn.Conv2d(3, channels, 3, padding=1)
        self.layers = nn.ModuleList(
            nn.Conv2d(channels, channels, 3, padding=(d, 1), dilation=(d, 1)) for d in self.dilations
        )
        self.film = nn.Linear(TIME_FEATURES, 2 * channels * len(self.dilations))
        self.output = nn.Conv2d(channels, 1, 3, padding=1)
        nn.init.zeros_(self.output.weight)
        nn.init.zeros_(self.output.bias)

    def forward(self, noisy_residual: Tensor, prior: Tensor, noise_time: Tensor) -> Tensor:
        """The residual estimate ``[B, T, C]`` from ``noisy_residual = z - alpha_t p`` and ``prior`` ``p``
        (both ``[B, T, C]``) at ``noise_time`` ``[B]`` (in (0, 1])."""
        alpha, sigma, c_in, c_skip, c_out = (c.to(noisy_residual.dtype) for c in preconditioning(noise_time))
        log_snr_plane = (torch.log(alpha / sigma.clamp_min(1e-8)) / 4).expand_as(prior)
        h = self.inputs(torch.stack([noisy_residual * c_in, prior, log_snr_plane], 1))
        scale_shift = self.film(time_features(noise_time).to(h.dtype))
        scale_shift = scale_shift.view(h.shape[0], len(self.layers), 2, -1, 1, 1)
        for k, layer in enumerate(self.layers):
            h = h + layer(nn.functional.gelu(h)) * (1 + scale_shift[:, k, 0]) + scale_shift[:, k, 1]
        return c_skip * noisy_residual + c_out * self.output(nn.functional.gelu(h))[:, 0]

    def edm_output(self, z: Tensor, noise_time: Tensor, prior: Tensor) -> Tensor:
        """The decoder's "edm" output ``F`` whose ``x0 = c_skip z + c_out F`` is ``p + forward(...)``
        (:func:`specdiff.sampling.diffusion.edm_coefficients`), so samplers need not know the expert."""
        alpha, _ = alpha_sigma(noise_time.double())
        alpha = alpha.to(z.dtype)[:, None, None]
        x0 = prior + self(z - alpha * prior, prior, noise_time)
        c_skip, c_out = (c.to(z.dtype)[:, None, None] for c in edm_coefficients(noise_time.double()))
        return (x0 - c_skip * z) / c_out.clamp_min(1e-8)


def preconditioning(noise_time: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    """``alpha, sigma, c_in, c_skip, c_out`` at ``noise_time`` ``[B]``, each float32 ``[B, 1, 1]``: the schedule and
    EDM's preconditioning of the residual (scale :data:`RESIDUAL_SCALE`), computed in float64. The expert scales its
    input by ``c_in`` and outputs ``c_skip y + c_out F``; its loss weights errors by ``1 / c_out^2``."""
    alpha, sigma = alpha_sigma(noise_time.double())
    norm = torch.sqrt(alpha**2 * RESIDUAL_SCALE**2 + sigma**2)
    coefficients = (alpha, sigma, 1 / norm, alpha * RESIDUAL_SCALE**2 / norm**2, sigma * RESIDUAL_SCALE / norm)
    return tuple(c.float()[:, None, None] for c in coefficients)  # type: ignore[return-value]


def time_features(noise_time: Tensor) -> Tensor:
    """``[B]`` noise times -> ``[B, TIME_FEATURES]`` sines and cosines at octave frequencies."""
    octaves = 2.0 ** torch.arange(TIME_FEATURES // 2, device=noise_time.device, dtype=torch.float32)
    angles = noise_time.float()[:, None] * octaves * math.pi
    return torch.cat([torch.sin(angles), torch.cos(angles)], 1)
