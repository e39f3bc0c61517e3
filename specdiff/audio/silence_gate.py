"""A gate that keeps the mel's silences silent in an inverter's audio.

An inverter's frames overlap (the front end's 640-sample windows at a 320-sample hop, and wider
synthesis windows), so a loud frame leaks into the quiet frames beside it, and a magnitude network
rarely reaches the front end's floor: a rest comes out as a decaying smear or a noise bed. The gate
measures the audio's own log-mel with the front end (:func:`specdiff.audio.mel.log_mel`), compares each
frame's total level with the mel it was asked for, and where the audio is louder by more than
``margin`` (natural log) it scales the samples down by the difference. The frame gains are
interpolated between frame centres in the log domain (geometrically), so the gain is continuous (no
clicks) and falls as fast towards a quiet frame as it rises out of it; it is only ever lowered, so
attacks the mel asks for are never raised or smeared. Why geometric: a linear ramp from a loud frame's
gain 1 to a rest's gain of e^-4 is still at 0.5 halfway, and that half hop of the loud frame's smear is
inside the rest's analysis window; the geometric ramp is at e^-2 there. Measured on the held-out band
music (the bundled model's own mels, 2 passes): the silence gap of the test piece with drum gaps
2.31 -> 1.87 nat, on the validation pieces with silent frames 2.24 / 2.27 / 3.61 -> 2.20 / 2.11 / 3.46,
onset F1 unchanged (``benchmarks/results/silence_gate_interpolation.md``, ``..._validation.md``). It
sharpens attacks too: the pre-echo a synthesis window spreads before an onset sits in frames the mel
says are quiet.
"""

from __future__ import annotations

import torch

from specdiff.audio import mel

#: A frame whose audio is louder than its mel by less than this (natural log) is left alone.
DEFAULT_GATE_MARGIN = 0.5
#: ... unless its mel says it is silent (mean log-mel under :data:`SILENT_FRAME_NAT`): then this margin.
DEFAULT_QUIET_MARGIN = 0.0
#: A mel frame whose mean over the bands is under this (natural log) is a silent frame for the gate; the
#: front end's floor is ln 1e-5 = -11.5, and renders of rests and drum gaps sit there.
SILENT_FRAME_NAT = -8.0
#: Measure-and-scale passes: a second one catches what the first one's neighbours still leaked.
DEFAULT_GATE_ITERS = 2
#: Gains are clamped to this before their logarithm is taken (the gate's own gains are exp(-excess) > 0).
_SMALLEST_GAIN = 1e-12
#: How :func:`frame_gains_to_samples` ramps between frame centres (the first is the default).
GAIN_INTERPOLATIONS = ("geometric", "linear")


def frame_levels(log_mel: torch.Tensor) -> torch.Tensor:
    """Total level of each frame, ``log(sum_bands exp(log_mel))``: ``[..., T, 128]`` -> ``[..., T]``."""
    return torch.logsumexp(log_mel, dim=-1)


def frame_gains_to_samples(
    gains: torch.Tensor, num_samples: int, interpolation: str = GAIN_INTERPOLATIONS[0]
) -> torch.Tensor:
    """Per-frame gains ``[B, T]`` (positive) -> per-sample gains ``[B, num_samples]``, ``"geometric"``
    between the frame centres (linear in log gain) or ``"linear"`` (the gate before the geometric ramp was
    measured, kept for comparison); frame ``t`` covers samples ``[320 t, 320 t + 640)``, centre
    ``320 t + 320``; held flat before the first centre and after the last."""
    if interpolation not in GAIN_INTERPOLATIONS:
        raise ValueError(f"interpolation must be one of {GAIN_INTERPOLATIONS}, got {interpolation!r}")
    hop = mel.HOP_LENGTH
    centres = torch.arange(gains.shape[-1], dtype=gains.dtype, device=gains.device) * hop + hop
    position = torch.arange(num_samples, dtype=gains.dtype, device=gains.device)
    # index of the centre at or before each sample, and the fraction of the way to the next one
    left = ((position - hop) / hop).floor().clamp(0, gains.shape[-1] - 1).long()
    right = (left + 1).clamp(max=gains.shape[-1] - 1)
    fraction = ((position - centres[left]) / hop).clamp(0.0, 1.0)
    if interpolation == "linear":
        return gains[:, left] * (1 - fraction) + gains[:, right] * fraction
    log_gains = torch.log(gains.clamp_min(_SMALLEST_GAIN))
    return torch.exp(log_gains[:, left] * (1 - fraction) + log_gains[:, right] * fraction)


def silence_gate(
    audio: torch.Tensor,
    log_mel: torch.Tensor,
    margin: float = DEFAULT_GATE_MARGIN,
    iterations: int = DEFAULT_GATE_ITERS,
    interpolation: str = GAIN_INTERPOLATIONS[0],
    quiet_margin: float | None = DEFAULT_QUIET_MARGIN,
) -> torch.Tensor:
    """``audio`` ``[B, N]`` with every frame that is louder than ``log_mel`` ``[B, T, 128]`` asks for
    (by more than ``margin``; by more than ``quiet_margin`` where the mel's frame is silent, its mean under
    :data:`SILENT_FRAME_NAT`; None: ``margin`` everywhere) scaled down to it; frames at or below their mel's
    level are untouched. ``interpolation``: the ramp of the gains between frame centres
    (:func:`frame_gains_to_samples`). Why a margin of its own for silent frames: the half nat that spares an
    attack's frame is, in a rest, a bed of smear; on the bundled model's own mels of the band-music test pieces
    the one with drum gaps went +1.02 -> +0.99 nat over the render there, onsets and L1 unchanged."""
    if iterations <= 0 or audio.shape[-1] == 0:
        return audio
    target = frame_levels(log_mel.float())
    margins = torch.full_like(target, float(margin))
    if quiet_margin is not None:
        margins = torch.where(log_mel.float().mean(dim=-1) < SILENT_FRAME_NAT, float(quiet_margin), margins)
    for _ in range(iterations):
        current = frame_levels(mel.log_mel(audio.float()))
        n = min(current.shape[-1], target.shape[-1])
        excess = (current[:, :n] - target[:, :n]).clamp(min=0.0)
        gains = torch.where(excess > margins[:, :n], torch.exp(-excess), torch.ones_like(excess))
        if bool((gains == 1).all()):
            break
        audio = audio * frame_gains_to_samples(gains.to(audio.dtype), audio.shape[-1], interpolation)
    return audio
