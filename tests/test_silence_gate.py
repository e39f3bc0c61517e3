"""The silence gate: rests the mel asks for come out silent, everything else untouched."""

from __future__ import annotations

import math

import pytest
import torch

from specdiff.audio import mel
from specdiff.audio.silence_gate import frame_gains_to_samples, frame_levels, silence_gate

SR = 16000


def tone_then_rest(noise_db: float | None = None) -> torch.Tensor:
    """1 s of a 440 Hz tone, then 1 s of silence (or of white noise at ``noise_db`` dB re full scale)."""
    t = torch.arange(2 * SR, dtype=torch.float64) / SR
    audio = 0.5 * torch.sin(2 * math.pi * 440 * t) * (t < 1.0)
    if noise_db is not None:
        noise = torch.randn(audio.shape, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
        audio = audio + (t >= 1.0) * noise * 10 ** (noise_db / 20)
    return audio[None].float()


def test_frame_gains_interpolate_geometrically_between_frame_centres():
    gains = torch.tensor([[1.0, 0.0625, 1.0]])
    samples = frame_gains_to_samples(gains, 4 * 320)
    # centres at 320, 640, 960: flat before the first, geometric between, flat after the last
    assert torch.allclose(samples[0, :321], torch.ones(321))
    halfway = float(samples[0, 480])  # the geometric mean of 1 and 1/16 (a linear ramp would give 0.53)
    assert abs(halfway - 0.25) < 1e-6 and abs(float(samples[0, 640]) - 0.0625) < 1e-7
    assert abs(float(samples[0, 800]) - 0.25) < 1e-6 and abs(float(samples[0, 560]) - 0.125) < 1e-6
    assert torch.allclose(samples[0, 960:], torch.ones(320))
    assert bool((samples[0].diff().abs() < 0.01).all())  # continuous: no step between samples


def test_frame_gains_linear_ramp_for_comparison_and_unknown_ramp_refused():
    samples = frame_gains_to_samples(torch.tensor([[1.0, 0.0, 1.0]]), 4 * 320, interpolation="linear")
    assert float(samples[0, 480]) == 0.5 and float(samples[0, 640]) == 0.0 and float(samples[0, 800]) == 0.5
    with pytest.raises(ValueError, match="interpolation"):
        frame_gains_to_samples(torch.ones(1, 3), 960, interpolation="cubic")


def test_geometric_ramp_leaks_less_of_a_loud_frame_into_the_rest_beside_it():
    # a tone for 0.5 s, then a rest the mel asks to be silent; the "smear" is a -30 dB copy of the tone in the rest
    t = torch.arange(SR, dtype=torch.float64) / SR
    tone = 0.5 * torch.sin(2 * math.pi * 440 * t)
    clean = (tone * (t < 0.5))[None].float()
    smeared = (tone * ((t < 0.5) + (t >= 0.5) * 10 ** (-30 / 20)))[None].float()
    target = mel.log_mel(clean)
    first_rest = int((frame_levels(target)[0] < -5).nonzero()[0])  # the frame after the tone's last window
    levels = {}
    for ramp in ("geometric", "linear"):
        gated = silence_gate(smeared, target, interpolation=ramp)
        levels[ramp] = float(frame_levels(mel.log_mel(gated))[0, first_rest])
    # measured: -2.7 against +0.1 (the rest asks for -6.7): the linear ramp lets half the loud frame's gain in
    assert levels["geometric"] < levels["linear"] - 2.0


def test_gate_silences_a_noisy_rest_and_keeps_the_tone():
    clean, noisy = tone_then_rest(), tone_then_rest(noise_db=-40)
    target = mel.log_mel(clean)  # what the mel asks for: silence after 1 s
    gated = silence_gate(noisy, target)
    rest = slice(SR + 1280, None)  # past the tone's last window
    before = float(noisy[0, rest].pow(2).mean().sqrt())
    after = float(gated[0, rest].pow(2).mean().sqrt())
    assert after < before / 100  # the -40 dB noise bed is gone (>= 40 dB lower)
    tone = slice(0, SR - 640)
    assert torch.allclose(gated[0, tone], noisy[0, tone])  # the tone the mel asks for is untouched
    # no click: the gain is continuous and at most 1, so no sample jumps more than in the input
    assert float(gated[0].diff().abs().max()) <= float(noisy[0].diff().abs().max()) + 1e-6
    level = frame_levels(mel.log_mel(gated))[0, 60:]
    assert float((level - frame_levels(target)[0, 60:]).max()) < 0.5 + 1e-3


def test_gate_never_raises_a_frame_and_leaves_a_matching_signal_alone():
    clean = tone_then_rest()
    quiet_target = mel.log_mel(clean * 10)  # the mel asks for more than the audio has
    assert torch.equal(silence_gate(clean, quiet_target), clean)
    assert torch.equal(silence_gate(clean, mel.log_mel(clean)), clean)


def test_silent_frames_get_their_own_margin():
    """The whole signal 0.3 nat louder than its mel: the tone's frames are within the 0.5 nat margin and stay
    as they are, the rest's frames (mel mean under -8 nat: noise at -110 dB) have no margin and come down to the
    mel's level; with ``quiet_margin=None`` the one margin leaves everything alone."""
    from specdiff.audio.silence_gate import SILENT_FRAME_NAT

    asked = tone_then_rest(noise_db=-110)
    target = mel.log_mel(asked)
    assert float(target[0, 60:].mean(-1).max()) < SILENT_FRAME_NAT < float(target[0, 5:45].mean(-1).min())
    louder = asked * math.exp(0.3)
    gated = silence_gate(louder, target)
    tone = slice(0, SR - 640)
    assert torch.allclose(gated[0, tone], louder[0, tone])
    excess = frame_levels(mel.log_mel(gated))[0, 60:] - frame_levels(target)[0, 60:]
    assert float(excess.abs().max()) < 0.05, excess
    assert torch.equal(silence_gate(louder, target, quiet_margin=None), louder)
