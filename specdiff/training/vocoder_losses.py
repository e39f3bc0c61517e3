"""Losses and discriminators of the vocoder training (specdiff/training/vocoder.py runs the loop).

Reconstruction: log-mel L1 through our exact front end (ORIGINAL.md §1) plus a multi-resolution
STFT loss, and for a phase-vocoder vocoder an L1 on the head's own log-magnitude
(:func:`magnitude_l1`) and optionally one on its rises along time (:func:`magnitude_rise_loss`).
Adversarial: hinge losses with feature matching from a multi-period discriminator (MPD, HiFi-GAN)
and a multi-resolution spectrogram discriminator (MRD, UnivNet/Vocos), slimmer than the originals
so that a run fits a shared CPU.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from specdiff.audio.mel import log_mel

# ---- reconstruction losses -------------------------------------------------------------------------

STFT_RESOLUTIONS = ((256, 64), (512, 128), (1024, 256), (2048, 512))  # (n_fft = window, hop)


def stft_magnitude(audio: torch.Tensor, n_fft: int, hop: int) -> torch.Tensor:
    """|STFT| ``[B, n_fft/2 + 1, frames]`` with a Hann window of n_fft samples (centred frames)."""
    window = torch.hann_window(n_fft, device=audio.device)
    spec = torch.stft(audio, n_fft, hop, window=window, return_complex=True)
    return torch.sqrt(spec.real**2 + spec.imag**2 + 1e-9)  # the epsilon keeps the gradient finite at 0


def multi_resolution_stft_loss(fake: torch.Tensor, real: torch.Tensor) -> torch.Tensor:
    """Mean over resolutions of the L1 distances of log and of linear STFT magnitudes (as in DAC).

    No spectral-convergence term: its per-example normalisation explodes on silent segments.
    """
    total = fake.new_zeros(())
    for n_fft, hop in STFT_RESOLUTIONS:
        f, r = stft_magnitude(fake, n_fft, hop), stft_magnitude(real, n_fft, hop)
        total = total + F.l1_loss(torch.log(f.clamp_min(1e-5)), torch.log(r.clamp_min(1e-5))) + F.l1_loss(f, r)
    return total / len(STFT_RESOLUTIONS)


#: Magnitudes below this count as silence in :func:`magnitude_l1` (the loudest bins reach ~300; the
#: front end clips its mel at the same 1e-5).
MAGNITUDE_FLOOR = 1e-5


def floored_log_magnitudes(log_magnitude: torch.Tensor, target: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(the head's log-magnitude ``[B, bins, T]``, ``log |target|``), both floored at :data:`MAGNITUDE_FLOOR`;
    ``target`` is complex, the head's own framing (:meth:`specdiff.audio.vocoder.ISTFTHead.stft`).

    What :func:`magnitude_l1` and :func:`magnitude_rise_loss` compare (the trainer computes it once).
    """
    floor = math.log(MAGNITUDE_FLOOR)
    return log_magnitude.clamp_min(floor), torch.log(target.abs().clamp_min(MAGNITUDE_FLOOR))


def magnitude_l1(log_magnitude: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """L1 between the head's log-magnitude ``[B, bins, T]`` and ``log |target|`` (complex, the head's own
    framing, :meth:`specdiff.audio.vocoder.ISTFTHead.stft`), both floored at :data:`MAGNITUDE_FLOOR`.

    This trains the magnitude for the phase-vocoder synthesis (specdiff.audio.phase_vocoder), which takes
    the phase from the magnitude instead of the head; the floor keeps silent bins from dominating.
    """
    return F.l1_loss(*floored_log_magnitudes(log_magnitude, target))


def instantaneous_frequency_offset(spectrum: torch.Tensor, n_fft: int, hop_length: int) -> torch.Tensor:
    """Each bin's instantaneous frequency minus its index, in bins, ``[B, bins, T]``, from the phase advance
    between frames of ``spectrum`` (complex ``[B, bins, T]``, frames ``hop_length`` apart, each frame's phase
    referred to its first sample as :meth:`specdiff.audio.vocoder.ISTFTHead.stft` gives it).

    A sinusoid at ``k + d`` bins turns by ``2 pi (k + d) hop / n_fft`` from one frame to the next; the
    advance beyond the bin's own ``2 pi k hop / n_fft``, wrapped to ``(-pi, pi]``, gives ``d`` (unambiguous
    within ``+-n_fft / (2 hop)`` bins). Frame 0 has no previous frame: it takes frame 1's values.
    """
    bins, frames = spectrum.shape[-2], spectrum.shape[-1]
    if frames < 2:
        return torch.zeros(spectrum.shape, device=spectrum.device)
    k = torch.arange(bins, device=spectrum.device, dtype=torch.float64)[:, None]
    per_bin = 2 * math.pi * hop_length / n_fft
    advance = torch.angle(spectrum[..., 1:] * spectrum[..., :-1].conj()).double() - per_bin * k
    offset = (torch.remainder(advance + math.pi, 2 * math.pi) - math.pi) / per_bin
    return torch.cat([offset[..., :1], offset], -1).float()


def frequency_offset_loss(predicted: torch.Tensor, target: torch.Tensor, n_fft: int, hop_length: int) -> torch.Tensor:
    """Magnitude-weighted L1 between predicted frequency offsets ``predicted`` ``[B, bins, T]`` (NaN: a bin
    not predicted, left out) and the true ones of ``target`` (complex, the head's own framing;
    :func:`instantaneous_frequency_offset`, clipped to the prediction's bound
    :data:`specdiff.audio.peak_frequency.MAX_FREQUENCY_OFFSET`).

    Weighted by the true magnitude (normalised over the predicted bins): the phase vocoder reads the
    offsets at spectral peaks only, and the phase advance of a bin far below its neighbours is noise.
    """
    from specdiff.audio.peak_frequency import MAX_FREQUENCY_OFFSET

    with torch.no_grad():
        truth = instantaneous_frequency_offset(target, n_fft, hop_length)
        truth = truth.clamp(-MAX_FREQUENCY_OFFSET, MAX_FREQUENCY_OFFSET)
        predicted_bins = torch.isfinite(predicted)
        weight = target.abs() * predicted_bins
        weight = weight / weight.sum().clamp_min(1e-12)
    error = torch.where(predicted_bins, predicted - truth, torch.zeros_like(predicted))
    return (weight * error.abs()).sum()


def magnitude_rise_loss(log_mag_fake: torch.Tensor, log_mag_real: torch.Tensor) -> torch.Tensor:
    """L1 between the rises of two log-magnitudes ``[..., frames]`` (time last, e.g. ``[B, bins, T]``):
    the positive parts of their frame-to-frame differences, ``relu(x[..., 1:] - x[..., :-1])``, mean
    over elements (``T - 1`` differences per bin).

    Why: the network's magnitude attacks come out smoother than the true ones (a rise spread over
    several frames instead of one step), and the phase-vocoder synthesis turns that into soft note
    onsets. :func:`magnitude_l1` pays for a late frame only by its level; this loss pays for the size
    of each frame's jump, so it asks for attacks as sharp as the truth's. Falls (decays, releases) are
    ignored. Pass both sides floored like :func:`magnitude_l1` (:func:`floored_log_magnitudes`), so
    that rises out of silence count from the same floor.
    """
    rise_fake = F.relu(log_mag_fake[..., 1:] - log_mag_fake[..., :-1])
    rise_real = F.relu(log_mag_real[..., 1:] - log_mag_real[..., :-1])
    return F.l1_loss(rise_fake, rise_real)


def mel_l1(fake: torch.Tensor, real: torch.Tensor) -> torch.Tensor:
    """L1 between our log-mel features (ORIGINAL.md §1) of two waveforms."""
    return F.l1_loss(log_mel(fake), log_mel(real))


# ---- discriminators ---------------------------------------------------------------------------------


def _conv_stack(convs: nn.ModuleList, post: nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """A discriminator's 2-D convs (leaky ReLU) and its output conv on ``x`` ``[B, 1, H, W]``: the
    flattened scores and every layer's output (the features that feature matching compares)."""
    features = []
    for conv in convs:
        x = F.leaky_relu(conv(x), 0.1)
        features.append(x)
    x = post(x)
    features.append(x)
    return x.flatten(1), features


class PeriodDiscriminator(nn.Module):
    """HiFi-GAN period discriminator: the waveform folded to [T/p, p], 2-D convs along time."""

    def __init__(self, period: int, channels: tuple[int, ...] = (16, 32, 64, 128)):
        super().__init__()
        self.period = period
        norm = nn.utils.parametrizations.weight_norm
        chans = (1, *channels)
        self.convs = nn.ModuleList(
            norm(nn.Conv2d(chans[i], chans[i + 1], (5, 1), (3, 1), padding=(2, 0))) for i in range(len(channels))
        )
        self.convs.append(norm(nn.Conv2d(chans[-1], chans[-1], (5, 1), 1, padding=(2, 0))))
        self.post = norm(nn.Conv2d(chans[-1], 1, (3, 1), 1, padding=(1, 0)))

    def forward(self, audio: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        b, n = audio.shape
        if n % self.period:
            audio = F.pad(audio, (0, self.period - n % self.period), mode="reflect")
        return _conv_stack(self.convs, self.post, audio.view(b, 1, -1, self.period))


class ResolutionDiscriminator(nn.Module):
    """UnivNet/Vocos resolution discriminator: 2-D convs on a linear magnitude spectrogram."""

    def __init__(self, n_fft: int, hop: int, channels: int = 16):
        super().__init__()
        self.n_fft, self.hop = n_fft, hop
        norm = nn.utils.parametrizations.weight_norm
        # The first conv already strides along frequency: full-resolution 2-D convs dominate CPU time.
        self.convs = nn.ModuleList(
            [
                norm(nn.Conv2d(1, channels, (7, 5), (2, 1), padding=(3, 2))),
                norm(nn.Conv2d(channels, channels, (5, 3), (2, 1), padding=(2, 1))),
                norm(nn.Conv2d(channels, channels, (5, 3), (2, 1), padding=(2, 1))),
                norm(nn.Conv2d(channels, channels, (5, 3), (2, 1), padding=(2, 1))),
                norm(nn.Conv2d(channels, channels, (3, 3), padding=(1, 1))),
            ]
        )
        self.post = norm(nn.Conv2d(channels, 1, (3, 3), padding=(1, 1)))

    def forward(self, audio: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        return _conv_stack(self.convs, self.post, stft_magnitude(audio, self.n_fft, self.hop)[:, None])


class MultiPeriodDiscriminator(nn.ModuleList):
    def __init__(self, periods: tuple[int, ...] = (2, 3, 5, 7, 11), channels: tuple[int, ...] = (16, 32, 64, 128)):
        super().__init__(PeriodDiscriminator(p, channels) for p in periods)


class MultiResolutionDiscriminator(nn.ModuleList):
    def __init__(
        self, resolutions: tuple[tuple[int, int], ...] = ((256, 64), (512, 128), (1024, 256)), channels: int = 16
    ):
        super().__init__(ResolutionDiscriminator(n, h, channels) for n, h in resolutions)


def discriminator_loss(
    discriminators: nn.ModuleList, real: torch.Tensor, fake: torch.Tensor
) -> tuple[torch.Tensor, list[list[torch.Tensor]]]:
    """Hinge loss (push real scores above +1, fake ones below -1; mean over sub-discriminators) and
    each sub-discriminator's detached feature maps of ``real`` (reused for feature matching).

    Real and fake audio go through each sub-discriminator as one batch: on a CPU the per-call
    overhead of many small 2-D convolutions is a large part of the cost.
    """
    total = real.new_zeros(())
    real_features = []
    n = real.shape[0]
    for d in discriminators:
        scores, features = d(torch.cat([real, fake]))
        total = total + F.relu(1 - scores[:n]).mean() + F.relu(1 + scores[n:]).mean()
        real_features.append([f[:n].detach() for f in features])
    return total / len(discriminators), real_features


def generator_adversarial_loss(
    discriminators: nn.ModuleList, real_features: list[list[torch.Tensor]], fake: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """(hinge generator loss, feature-matching L1), each a mean over sub-discriminators.

    ``real_features`` are the real audio's feature maps from :func:`discriminator_loss` of the same
    step (computed just before the discriminator update, which saves one discriminator pass).
    """
    adversarial, matching = fake.new_zeros(()), fake.new_zeros(())
    for d, features_real in zip(discriminators, real_features):
        score_fake, features_fake = d(fake)
        adversarial = adversarial + F.relu(1 - score_fake).mean()
        matching = matching + sum(F.l1_loss(f, r) for f, r in zip(features_fake, features_real)) / len(features_real)
    return adversarial / len(discriminators), matching / len(discriminators)
