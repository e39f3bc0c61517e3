"""The peak-frequency network's band inputs (``frequency_inputs: "mel+bands"``) and the widening warm start."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
import torch

from specdiff.audio import mel as front_end
from specdiff.audio.peak_frequency import BAND_INPUTS, MEL_INPUTS, PeakFrequencyNet, widen_inputs
from specdiff.audio.vocoder import Vocoder, VocoderConfig
from specdiff.errors import ModelError

TINY = VocoderConfig(dim=16, intermediate_dim=32, num_layers=1, synthesis="phase_vocoder", peak_frequency="predicted")


def test_frequency_inputs_config_key():
    old = {k: v for k, v in TINY.to_dict().items() if k != "frequency_inputs"}
    assert VocoderConfig.from_dict(old).frequency_inputs == "mel" == VocoderConfig().frequency_inputs
    assert VocoderConfig.from_dict({**old, "frequency_inputs": "mel+bands"}).frequency_inputs == "mel+bands"
    with pytest.raises(ModelError, match="frequency_inputs"):
        VocoderConfig.from_dict({**old, "frequency_inputs": "bands"})
    assert Vocoder(TINY).peak_frequency.inp.in_channels == MEL_INPUTS
    assert Vocoder(replace(TINY, frequency_inputs="mel+bands")).peak_frequency.inp.in_channels == MEL_INPUTS + 4


def test_band_inputs_hand_values():
    """On a log-mel that rises by 0.2 nat per band, every bin's band difference is 0.2 / 4; a bin's place runs
    from -1 at the lower band's centre towards +1 at the upper one's; the spacing is the centres' distance in
    synthesis bins (log2 / 3), here derived from the mel formula m = 1127 ln(1 + f / 700) on its own."""
    net = PeakFrequencyNet(4, 321, 1280, 16000, band_inputs=True)
    log_mel = (0.2 * torch.arange(128.0) - 12.0)[None, None, :].expand(1, 3, 128)
    x = net.inputs(log_mel, torch.zeros(1, 641, 3))
    assert x.shape == (1, 3, MEL_INPUTS + BAND_INPUTS, 321)
    difference, place, spacing, product = (x[0, 1, MEL_INPUTS + i] for i in range(BAND_INPUTS))
    torch.testing.assert_close(difference, torch.full((321,), 0.05))
    torch.testing.assert_close(product, difference * place)
    # Bin 240 (3 kHz): its mel position, the centres around it, its place between them.
    step = 1127.0 * np.log(1 + 8000.0 / 700.0) / 129  # mel between centres (128 bands: 130 edges)
    position = 1127.0 * np.log(1 + 3000.0 / 700.0) / step - 1  # in band indices (band 0's centre is edge 1)
    assert place[240].item() == pytest.approx(2 * (position - np.floor(position)) - 1, abs=1e-4)
    centre_hz = [700.0 * (np.exp((np.floor(position) + k + 1) * step / 1127.0) - 1) for k in (0, 1)]
    gap_bins = (centre_hz[1] - centre_hz[0]) / 12.5
    assert spacing[240].item() == pytest.approx(np.log2(gap_bins) / 3, abs=1e-4)
    assert 5 < gap_bins < 7  # ~80 Hz between mel centres at 3 kHz
    assert front_end.N_MELS == 128


def test_widening_keeps_the_networks_output_and_then_trains_the_new_inputs():
    torch.manual_seed(0)
    model = Vocoder(TINY).eval()
    with torch.no_grad():
        model.peak_frequency.out.bias.fill_(0.3)
    wide = model.with_config(replace(TINY, frequency_inputs="mel+bands")).eval()
    weight = wide.peak_frequency.inp.weight
    assert weight.shape[1] == MEL_INPUTS + BAND_INPUTS and not weight[:, MEL_INPUTS:].any()
    torch.testing.assert_close(weight[:, :MEL_INPUTS], model.peak_frequency.inp.weight)
    mel = torch.randn(1, 20, 128) - 4.0
    with torch.no_grad():
        before, after = model.phase_vocoder_inputs(mel)[1], wide.phase_vocoder_inputs(mel)[1]
    torch.testing.assert_close(before, after, equal_nan=True)
    # The new inputs get gradients (they are used), the state of a same-shaped network passes unchanged.
    wide.train()
    wide.phase_vocoder_inputs(mel)[1][:, :50].nansum().backward()
    assert wide.peak_frequency.inp.weight.grad[:, MEL_INPUTS:].abs().sum() > 0
    state = model.state_dict()
    assert widen_inputs(state, model.peak_frequency, "peak_frequency.") is state
    # Narrowing is not a widening: the old network's extra weights would be lost, so with_config refuses.
    with pytest.raises(ModelError, match="more than"):
        wide.with_config(TINY)
