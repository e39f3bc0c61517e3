"""A small convolutional denoiser for low noise times, beside the T5 decoder (decoder extension).

Why: the T5 decoder learns the conditional mean at high noise but not the noise response a denoiser needs
at mid and low noise; its fitted local linear map (``input_skip``) removes most of the noise, but an
iterated sampler accumulates what it leaves: 8 DDIM steps from pure noise raise the estimate's
frame-to-frame roughness from 0.041 to 0.073 (data 0.055), and onsets and Fréchet distance get worse
with every step (``benchmarks/results/low_noise_expert.md``). A 2-D convolution over (frame, mel bin)
is the classic image denoiser (DnCNN); it learns this job in minutes of CPU training. Below a noise
time the decoder hands its rows to this network instead ("expert denoisers" for noise ranges, as in
eDiff-I, Balaji et al. 2022): it reads the noisy residual ``z - alpha_t a`` around an anchor ``a`` and
the anchor itself (so it knows where notes sound), and predicts the residual ``x0 - a``.

The anchor is the score prior (``low_noise_expert_anchor="prior"``) or the network's own estimate at
pure noise (``"estimate"``: the sampler's first step, the conditional mean the transformer learnt; an
expert around the prior loses a third of the network's correction to it in its chains). With
``low_noise_expert_planes`` it also reads three planes of the score (:func:`score_planes`): where notes
start, on the mel bands of their harmonics, where drums hit and where nothing sounds, so the texture it
adds can follow the attacks (``benchmarks/results/low_noise_expert.md``).
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence

import torch
from torch import Tensor, nn

from specdiff.sampling.diffusion import alpha_sigma, edm_coefficients

#: What the expert denoises around (the decoder's ``low_noise_expert_anchor``).
EXPERT_ANCHORS = ("prior", "estimate")

#: Dilations over time of the residual conv layers (frequency dilation 1): a receptive field of
#: +-47 frames (~0.94 s), enough for a held note's level, at 3 x 3 kernels.
EXPERT_DILATIONS: tuple[int, ...] = (1, 2, 4, 8, 1, 2, 4, 1)
#: Standard deviation the preconditioning assumes for the residual ``x0 - p`` in the diffusion's
#: [-1, 1] units (measured 0.29-0.37 on the generated-idioms cache for the bundled prior).
RESIDUAL_SCALE = 0.35
#: Sinusoidal features of the noise time fed to the FiLM layer (half sines, half cosines).
TIME_FEATURES = 16
#: Score planes the expert reads with ``low_noise_expert_planes`` (:func:`score_planes`).
SCORE_PLANES = 3
#: Harmonics of a starting note marked on the onset plane (1 / k weighted; 10 reach 2.6 kHz from middle C).
ONSET_HARMONICS = 10


class LowNoiseExpert(nn.Module):
    """Residual conv denoiser: ``(z - alpha p, p, t) -> x0 - p`` estimate, ``[B, T, C]``.

    EDM preconditioning around the prior (Karras et al. 2022, with the residual's scale
    :data:`RESIDUAL_SCALE`): ``r = c_skip y + c_out F(y / scale, p, t)``, ``F``'s output layer starts at
    zero, so an untrained expert is per-pixel shrinkage towards the prior.
    """

    def __init__(self, channels: int, dilations: Sequence[int] = EXPERT_DILATIONS, planes: int = 0):
        super().__init__()
        if channels <= 0:
            raise ValueError(f"channels must be > 0, got {channels}")
        self.dilations = tuple(int(d) for d in dilations)
        self.planes = int(planes)
        self.inputs = nn.Conv2d(3 + self.planes, channels, 3, padding=1)
        self.layers = nn.ModuleList(
            nn.Conv2d(channels, channels, 3, padding=(d, 1), dilation=(d, 1)) for d in self.dilations
        )
        self.film = nn.Linear(TIME_FEATURES, 2 * channels * len(self.dilations))
        self.output = nn.Conv2d(channels, 1, 3, padding=1)
        nn.init.zeros_(self.output.weight)
        nn.init.zeros_(self.output.bias)

    def forward(
        self, noisy_residual: Tensor, prior: Tensor, noise_time: Tensor, planes: Tensor | None = None
    ) -> Tensor:
        """The residual estimate ``[B, T, C]`` from ``noisy_residual = z - alpha_t p`` and the anchor ``p``
        (both ``[B, T, C]``) at ``noise_time`` ``[B]`` (in (0, 1]); ``planes`` ``[B, T, C, SCORE_PLANES]``
        (:func:`score_planes`) for an expert built with them."""
        alpha, sigma, c_in, c_skip, c_out = (c.to(noisy_residual.dtype) for c in preconditioning(noise_time))
        log_snr_plane = (torch.log(alpha / sigma.clamp_min(1e-8)) / 4).expand_as(prior)
        inputs = [noisy_residual * c_in, prior, log_snr_plane]
        if self.planes:
            if planes is None or planes.shape[-1] != self.planes:
                raise ValueError(f"this expert reads {self.planes} score planes ([B, T, C, {self.planes}], "
                                 "score_planes of the score roll; a decoder's cache holds them)")  # fmt: skip
            inputs += list(planes.to(prior.dtype).unbind(-1))
        h = self.inputs(torch.stack(inputs, 1))
        scale_shift = self.film(time_features(noise_time).to(h.dtype))
        scale_shift = scale_shift.view(h.shape[0], len(self.layers), 2, -1, 1, 1)
        for k, layer in enumerate(self.layers):
            h = h + layer(nn.functional.gelu(h)) * (1 + scale_shift[:, k, 0]) + scale_shift[:, k, 1]
        return c_skip * noisy_residual + c_out * self.output(nn.functional.gelu(h))[:, 0]

    def edm_output(self, z: Tensor, noise_time: Tensor, prior: Tensor, planes: Tensor | None = None) -> Tensor:
        """The decoder's "edm" output ``F`` whose ``x0 = c_skip z + c_out F`` is ``p + forward(...)``
        (:func:`specdiff.sampling.diffusion.edm_coefficients`), so samplers need not know the expert."""
        alpha, _ = alpha_sigma(noise_time.double())
        alpha = alpha.to(z.dtype)[:, None, None]
        x0 = prior + self(z - alpha * prior, prior, noise_time, planes)
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


def score_planes(score_roll: Tensor) -> Tensor:
    """``[B, T, F]`` frame-aligned roll (``specdiff.midi.score_roll``) -> ``[B, T, 128, SCORE_PLANES]``:

    0. tonal onsets on the mel bands of their first :data:`ONSET_HARMONICS` harmonics (1 / k weighted,
       each pitch's map scaled to a peak of 1, the sum over notes clipped at 1);
    1. drum onsets (any drum pitch), the same on every band;
    2. the roll's ``silent`` feature (extended layouts; 0 for the base layout), the same on every band.
    """
    from specdiff.midi.score_roll import EXTENDED_ROLL_FEATURES, SILENT_FEATURE, drum_feature, pitch_feature

    roll = score_roll.float()
    onsets = roll[..., pitch_feature("onset", 0) : pitch_feature("onset", 0) + 128]
    tonal = (onsets @ _harmonic_bands().to(roll.device)).clamp(max=1.0)
    drums = roll[..., drum_feature("onset", 0) : drum_feature("onset", 0) + 128].amax(-1, keepdim=True)
    extended = roll.shape[-1] >= EXTENDED_ROLL_FEATURES
    silent = roll[..., SILENT_FEATURE : SILENT_FEATURE + 1] if extended else torch.zeros_like(drums)
    return torch.stack([tonal, drums.clamp(max=1.0).expand_as(tonal), silent.expand_as(tonal)], -1)


@functools.lru_cache(maxsize=1)
def _harmonic_bands() -> Tensor:
    """``[128 pitches, 128 mel bands]``: each MIDI pitch's harmonics (equal temperament, A4 = 440 Hz) on
    the front end's mel filters, the k-th weighted 1 / k, each row scaled to a peak of 1."""
    from specdiff.audio.mel import N_FREQS, mel_filterbank_on
    from specdiff.constants import SAMPLE_RATE
    from specdiff.midi.pitch import midi_to_hz

    filters = torch.as_tensor(mel_filterbank_on(N_FREQS), dtype=torch.float64)  # [N_FREQS, 128]
    bands = torch.zeros(128, filters.shape[1], dtype=torch.float64)
    nyquist = SAMPLE_RATE / 2
    for pitch, fundamental in enumerate(midi_to_hz(range(128))):
        for k in range(1, ONSET_HARMONICS + 1):
            if k * fundamental >= nyquist:
                break
            response = filters[round(k * fundamental / nyquist * (N_FREQS - 1))]
            bands[pitch] += response / response.max().clamp_min(1e-12) / k
    return (bands / bands.amax(1, keepdim=True).clamp_min(1e-12)).float()
