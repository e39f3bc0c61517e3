"""Each spectral peak's frequency for the phase vocoder, predicted from the mel (``peak_frequency: predicted``).

Why. The phase vocoder (specdiff/audio/phase_vocoder.py) advances each peak's phase by the peak's
frequency over one hop, and takes that frequency from a parabola through the magnitude. On the network's
magnitude the parabola misplaces the partials: its lobes are misshapen, not merely blurred (a symmetric
blur of the true magnitude keeps the parabola's centres). Measured on 24 held-out idioms clips
(benchmarks/results/vocoder_peak_frequency.md): the true instantaneous frequency at the network's own
peaks keeps 0.98x of the onsets, the parabola 0.80x; true frequencies plus noise of 0.1 / 0.2 / 0.3 bins
(standard deviation) keep 0.93 / 0.86 / 0.83.

What. A small network along the *frequency* axis, frame by frame: a partial's exact frequency shows in
how its energy splits between neighbouring mel bands, a local pattern that repeats at every frequency,
which convolutions over frequency learn and the vocoder's backbone (frequency as channels, convolutions
over time) does not (its own extra output, trained the same way, reached a weighted error of 0.25 bins at
the peaks; this network, bundled, 0.17). Inputs per linear bin of the synthesis STFT (1280 points, 12.5 Hz):
the log-mel of the frame and its two neighbours (which the 1280-sample window spans) interpolated onto the
bin's frequency, the head's log-magnitude, and the bin's position. Output: the bin's instantaneous
frequency minus its index, in bins, bounded to +-1 by a tanh; trained on the true STFT's phase advance
(specdiff.training.vocoder_losses.frequency_offset_loss). It covers the lowest ``bins`` bins only (the
rest keep the parabola, marked NaN): the cost grows with them, and the mel bands above a few kHz are
wider than the harmonic spacing, so they hold little of a partial's exact frequency. With ``band_inputs``
(config ``frequency_inputs: "mel+bands"``) it also reads the two mel bands around each bin and the bin's place
between their centres: on renders the weighted error at the peaks falls from 0.172 to 0.159 bins, but on the
diffusion model's own mels it kept fewer onsets (0.83 against 0.89 of the render's), so it is not bundled.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from specdiff.audio import mel as front_end

#: Bound of a predicted frequency offset, in bins (a peak's partial lies within a bin of it).
MAX_FREQUENCY_OFFSET = 1.0
KERNEL = 9
DILATIONS = (2, 4, 1)  # after the first layer; receptive field 65 bins (810 Hz): a few harmonics


#: Inputs per bin: the interpolated log-mel of the frame before, the frame and the frame after, the head's
#: log-magnitude, the bin's position; with band inputs also the two mel bands around the bin (upper minus
#: lower), where the bin lies between their centres, their spacing and the product of the first two.
MEL_INPUTS = 5
BAND_INPUTS = 4


class PeakFrequencyNet(nn.Module):
    """``(log-mel [B, T, 128], head log-magnitude [B, n_fft/2 + 1, T])`` -> frequency offsets
    ``[B, n_fft/2 + 1, T]`` in bins, NaN on the bins above ``bins`` (see the module doc).

    ``band_inputs`` (config ``frequency_inputs: "mel+bands"``) adds what decodes a lone partial's place
    between two mel band centres: with triangular filters, the log ratio of the two bands is a monotone
    function of where the partial lies between their centres, so the network is given that difference, the
    bin's own place there (0 at the lower centre, 1 at the upper) and the centres' spacing in bins. On the
    interpolated log-mel alone it has to infer the bin's place from a sawtooth whose period changes along
    the axis."""

    def __init__(self, channels: int, bins: int, n_fft: int, sample_rate: int, band_inputs: bool = False):
        super().__init__()
        n_bins = n_fft // 2 + 1
        if not 3 <= bins <= n_bins:
            raise ValueError(f"peak frequency bins must be in 3..{n_bins}, got {bins}")
        self.bins, self.n_bins, self.band_inputs = bins, n_bins, band_inputs
        self.inp = nn.Conv1d(MEL_INPUTS + BAND_INPUTS * band_inputs, channels, KERNEL, padding=KERNEL // 2)
        self.layers = nn.ModuleList(
            nn.Conv1d(channels, channels, KERNEL, padding=d * (KERNEL // 2), dilation=d) for d in DILATIONS
        )
        self.out = nn.Conv1d(channels, 1, 1)
        # Each covered bin's position on the mel axis (band centres: the filterbank's triangle peaks).
        centres = front_end.mel_band_edges()[1:-1]
        bin_mel = front_end.hertz_to_mel(np.arange(bins) * sample_rate / n_fft)
        position = np.clip(np.interp(bin_mel, centres, np.arange(front_end.N_MELS)), 0, front_end.N_MELS - 1)
        lower = np.floor(position).astype(np.int64)
        upper = np.minimum(lower + 1, front_end.N_MELS - 1)
        self.register_buffer("lower", torch.from_numpy(lower), persistent=False)
        self.register_buffer("upper", torch.from_numpy(upper), persistent=False)
        self.register_buffer("fraction", torch.from_numpy(position - lower).float(), persistent=False)
        # The centres' spacing around each bin, in synthesis bins, as log2 / 3 (about 0 to 1 from 1 to 8 bins).
        gaps = np.diff(front_end.mel_to_hertz(centres))[np.minimum(lower, front_end.N_MELS - 2)]
        spacing = gaps * n_fft / sample_rate
        self.register_buffer("spacing", torch.from_numpy(np.log2(spacing) / 3.0).float(), persistent=False)

    def inputs(self, log_mel: torch.Tensor, log_magnitude: torch.Tensor) -> torch.Tensor:
        """The per-bin inputs ``[B, T, channels, bins]`` (see :data:`MEL_INPUTS`, :data:`BAND_INPUTS`)."""
        frames = log_mel.shape[1]
        on_bins = log_mel[..., self.lower] * (1 - self.fraction) + log_mel[..., self.upper] * self.fraction
        here = ((on_bins + 4.0) / 4.0).transpose(1, 2)  # [B, bins, T], about [-2, 2] (natural-log units)
        before = torch.cat([here[..., :1], here[..., :-1]], -1)
        after = torch.cat([here[..., 1:], here[..., -1:]], -1)
        level = (log_magnitude[:, : self.bins, :frames] + 4.0) / 4.0
        where = torch.linspace(0.0, 1.0, self.bins, device=log_mel.device)[None, :, None].expand_as(here)
        channels = [before, here, after, level, where]
        if self.band_inputs:
            difference = ((log_mel[..., self.upper] - log_mel[..., self.lower]) / 4.0).transpose(1, 2)
            place = (2 * self.fraction - 1)[None, :, None].expand_as(here)
            channels += [difference, place, self.spacing[None, :, None].expand_as(here), difference * place]
        return torch.stack(channels, 1).permute(0, 3, 1, 2)  # [B, T, channels, bins]

    def forward(self, log_mel: torch.Tensor, log_magnitude: torch.Tensor) -> torch.Tensor:
        batch, frames = log_mel.shape[0], log_mel.shape[1]
        x = self.inputs(log_mel, log_magnitude)
        x = x.reshape(batch * frames, x.shape[2], self.bins)  # one frame at a time
        h = F.gelu(self.inp(x))
        for layer in self.layers:
            h = h + F.gelu(layer(h))
        offset = MAX_FREQUENCY_OFFSET * torch.tanh(self.out(h))  # [B*T, 1, bins]
        offset = offset.reshape(batch, frames, self.bins).transpose(1, 2)
        rest = offset.new_full((batch, self.n_bins - self.bins, frames), float("nan"))
        return torch.cat([offset, rest], 1)


def widen_inputs(state: dict[str, torch.Tensor], net: PeakFrequencyNet, prefix: str) -> dict[str, torch.Tensor]:
    """``state`` with the first layer of a peak-frequency network (keys under ``prefix``) given zero weights
    for the inputs ``net`` reads and it did not (``frequency_inputs`` "mel" -> "mel+bands"), so ``net``
    loaded with it computes what the old network did. Other states are returned as they are."""
    key = prefix + "inp.weight"
    old, new = state.get(key), net.inp.weight
    if old is None or old.shape == new.shape or old.shape[0] != new.shape[0] or old.shape[1] > new.shape[1]:
        return state
    return {**state, key: torch.cat([old, old.new_zeros(old.shape[0], new.shape[1] - old.shape[1], old.shape[2])], 1)}
