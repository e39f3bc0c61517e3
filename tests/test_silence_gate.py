"""The silence gate: rests the mel asks for come out silent, everything else untouched."""

from __future__ import annotations

import math

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


def test_frame_gains_interpolate_between_frame_centres():
    gains = torch.tensor([[1.0, 0.0, 1.0]])
    samples = frame_gains_to_samples(gains, 4 * 320)
    # centres at 320, 640, 960: flat before the first, linear between, flat after the last
    assert torch.allclose(samples[0, :321], torch.ones(321))
    assert float(samples[0, 480]) == 0.5 and float(samples[0, 640]) == 0.0 and float(samples[0, 800]) == 0.5
    assert torch.allclose(samples[0, 960:], torch.ones(320))


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
