"""Tests of the peak-locked phase vocoder (specdiff/audio/phase_vocoder.py) and the vocoder's use of it."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from specdiff.audio.phase_vocoder import peak_locked_phase
from specdiff.audio.vocoder import ISTFTHead, Vocoder, VocoderConfig, VocoderInverter

torch.set_num_threads(1)

N_FFT, HOP = 1280, 320
HEAD = ISTFTHead(dim=4, n_fft=N_FFT, hop_length=HOP, max_log_magnitude=7.0)


def _sines(frequencies, frames: int = 60, amplitude: float = 0.2) -> torch.Tensor:
    t = torch.arange(frames * HOP, dtype=torch.float64) / 16000
    return sum(amplitude * torch.sin(2 * math.pi * f * t + 0.7 * i) for i, f in enumerate(frequencies)).float()[None]


def _resynthesise(audio: torch.Tensor) -> torch.Tensor:
    """The true magnitude of ``audio`` at the head's framing, with the phase vocoder's phase."""
    magnitude = HEAD.stft(audio).abs()
    phase = peak_locked_phase(magnitude[0].T.numpy(), N_FFT, HOP).T
    return HEAD.istft(magnitude, torch.from_numpy(phase).float()[None])


@pytest.mark.parametrize("frequency", [437.5, 443.75, 1006.25])  # bin centre, half-way between bins
def test_a_steady_sinusoid_comes_back_steady_at_its_level_and_pitch(frequency):
    """A sinusoid's true magnitude with a phase built from it is the same steady sinusoid: a phase that
    does not follow the partial's frequency between bins beats at the bin spacing (12.5 Hz)."""
    audio = _sines([frequency])
    out = _resynthesise(audio)[0, 2 * N_FFT : -2 * N_FFT].double()  # away from the edges
    envelope = out.abs().unfold(0, 1280, 320).amax(-1)  # peak per 80 ms: longer than one period
    assert envelope.std() / envelope.mean() < 0.03, envelope
    assert envelope.mean() == pytest.approx(0.2, rel=0.05)
    spectrum = torch.fft.rfft(out * torch.hann_window(out.shape[0], dtype=torch.float64)).abs()
    assert float(spectrum.argmax()) * 16000 / out.shape[0] == pytest.approx(frequency, abs=2.0)


def test_the_peaks_phase_advances_by_its_frequency_over_one_hop():
    """Hand-derived: a partial at k + d bins turns by 2 pi (k + d) hop / n_fft between frames; the
    conversion to the frame-start convention adds -pi k at bin k, the same in every frame."""
    k, d = 35, 0.5
    audio = _sines([(k + d) * 16000 / N_FFT])
    magnitude = HEAD.stft(audio).abs()[0].T.numpy()
    phase = peak_locked_phase(magnitude, N_FFT, HOP)
    peak = int(magnitude[10].argmax())
    assert peak in (k, k + 1)
    turn = np.angle(np.exp(1j * (phase[11, peak] - phase[10, peak])))
    expected = np.angle(np.exp(1j * 2 * np.pi * (k + d) * HOP / N_FFT))
    assert turn == pytest.approx(expected, abs=0.05)
    # Identity phase locking: the peak's neighbour (same main lobe) shares its centre-referenced phase.
    centre = phase[10] + np.pi * np.arange(magnitude.shape[1])
    assert np.angle(np.exp(1j * (centre[peak + 1] - centre[peak]))) == pytest.approx(0.0, abs=1e-9)


def test_a_chord_keeps_each_partials_level():
    audio = _sines([220.0, 277.2, 331.0, 1760.0], amplitude=0.1)
    out = _resynthesise(audio)[0, 2 * N_FFT : -2 * N_FFT].double()
    ours = HEAD.stft(out[None].float()).abs()[0].mean(-1)
    true = HEAD.stft(audio[:, 2 * N_FFT : -2 * N_FFT]).abs()[0].mean(-1)
    for f in (220.0, 277.2, 331.0, 1760.0):
        b = round(f * N_FFT / 16000)
        assert float(ours[b]) == pytest.approx(float(true[b]), rel=0.1), f


def test_silence_and_shape_errors():
    assert np.isfinite(peak_locked_phase(np.zeros((5, 641)), N_FFT, HOP)).all()
    with pytest.raises(ValueError):
        peak_locked_phase(np.zeros((5, 640)), N_FFT, HOP)


def test_synthesis_option_of_the_config_and_the_inverter(tmp_path):
    """Old config files (no key) keep the network's own phase and the refinement; a phase-vocoder
    folder uses the head's magnitude with the phase vocoder's phase, and no refinement by default."""
    tiny = VocoderConfig(dim=16, intermediate_dim=32, num_layers=2)
    old = {k: v for k, v in tiny.to_dict().items() if k != "synthesis"}
    assert VocoderConfig.from_dict(old).synthesis == "network"
    with pytest.raises(Exception, match="synthesis"):
        VocoderConfig.from_dict({**old, "synthesis": "magic"})
    torch.manual_seed(0)
    model = Vocoder(VocoderConfig.from_dict({**old, "synthesis": "phase_vocoder"}))
    model.save_pretrained(tmp_path)
    loaded = Vocoder.from_pretrained(tmp_path)
    assert loaded.config.synthesis == "phase_vocoder"
    assert VocoderInverter(loaded).synthesis == "phase_vocoder" and VocoderInverter(loaded).refine_iters == 1
    inverter = VocoderInverter(loaded, refine_iters=0, gate_iters=0)
    mel = np.random.default_rng(0).uniform(-11.5, 2.0, (2, 9, 128)).astype(np.float32)
    out = inverter(mel)
    assert out.shape == (2, 9 * 320) and np.isfinite(out).all()
    with torch.no_grad():
        log_magnitude, _ = loaded.spectrum(torch.from_numpy(mel))
    phase = peak_locked_phase(torch.exp(log_magnitude[1]).T.numpy(), 1280, 320).T
    expected = loaded.head.istft(torch.exp(log_magnitude[1:2]), torch.from_numpy(phase).float()[None])
    np.testing.assert_allclose(out[1], expected[0].numpy(), atol=1e-5)  # batch items are independent
    network = VocoderInverter(loaded, synthesis="network")
    assert network.refine_iters == 32
    with torch.no_grad():
        np.testing.assert_array_equal(
            VocoderInverter(loaded, synthesis="network", refine_iters=0, gate_iters=0)(mel),
            loaded(torch.from_numpy(mel)).numpy(),
        )


def test_onnx_export_refuses_a_phase_vocoder_vocoder(tmp_path):
    from specdiff.audio.vocoder_onnx import export_onnx
    from specdiff.errors import ModelError

    config = VocoderConfig.from_dict(
        {**VocoderConfig(dim=16, intermediate_dim=32, num_layers=2).to_dict(), "synthesis": "phase_vocoder"}
    )
    with pytest.raises(ModelError, match="phase_vocoder"):
        export_onnx(Vocoder(config), tmp_path / "v.onnx")
    assert not (tmp_path / "v.onnx").exists()


def test_the_mel_fit_corrects_a_level_error_and_keeps_the_phase():
    """A magnitude 14 dB too quiet (what the bundled head gave for a loud pure tone, far from its
    training data) comes back to the mel's level in one correction; the waveform keeps its phase."""
    from specdiff.audio.mel import log_mel

    audio = _sines([220.0, 331.0, 1760.0], amplitude=0.1)
    target = log_mel(audio)
    magnitude = HEAD.stft(audio).abs()
    phase = torch.from_numpy(peak_locked_phase(magnitude[0].T.numpy(), N_FFT, HOP).T).float()[None]
    model = Vocoder(VocoderConfig(dim=16, intermediate_dim=32, num_layers=2))
    inverter = VocoderInverter(model)
    quiet = 0.2 * magnitude
    before = inverter.fit_to_mel(quiet, phase, target, 0)
    after = inverter.fit_to_mel(quiet, phase, target, 1)
    inner = slice(2 * N_FFT, -2 * N_FFT)
    level = lambda x: 20 * math.log10(float(x[0, inner].pow(2).mean().sqrt()))  # noqa: E731
    assert level(before) - level(audio) == pytest.approx(-14.0, abs=0.2)
    assert abs(level(after) - level(audio)) < 0.5
    assert (log_mel(after) - target).abs().mean() < 0.3 * (log_mel(before) - target).abs().mean()
    correlation = torch.nn.functional.cosine_similarity(after[0, inner], 5 * before[0, inner], dim=0)
    assert correlation > 0.99  # the same waveform, louder: the phase did not move


# ---- transient phase reset ------------------------------------------------------------------------


def _reference_peak_locked_phase(magnitude: np.ndarray, n_fft: int, hop: int) -> np.ndarray:
    """The phase vocoder as it was before the transient reset existed (a copy of its loop)."""
    frames, bins = magnitude.shape
    k = np.arange(bins)
    log_magnitude = np.log(magnitude + 1e-12)
    phase, previous = np.empty((frames, bins)), np.zeros(bins)
    for i in range(frames):
        m, log_m = magnitude[i], log_magnitude[i]
        peaks = 1 + np.flatnonzero((m[1:-1] > m[:-2]) & (m[1:-1] >= m[2:]) & (m[1:-1] > 1e-4 * m.max()))
        if peaks.size == 0:
            current = previous + 2 * np.pi * hop / n_fft * k
        else:
            left, centre, right = log_m[peaks - 1], log_m[peaks], log_m[peaks + 1]
            curvature = left - 2 * centre + right
            safe = np.where(curvature < -1e-12, curvature, -1.0)
            offset = np.where(curvature < -1e-12, np.clip(0.5 * (left - right) / safe, -0.5, 0.5), 0.0)
            peak_phase = previous[peaks] + 2 * np.pi * hop / n_fft * (peaks + offset)
            current = peak_phase[np.searchsorted((peaks[:-1] + peaks[1:]) / 2, k)]
        phase[i] = previous = current
    return np.remainder(phase - np.pi * k, 2 * np.pi)


def test_without_a_transient_threshold_the_phase_is_the_same_as_before():
    magnitude = np.abs(np.random.default_rng(0).normal(size=(40, N_FFT // 2 + 1))) ** 3
    magnitude[10:14] = 0.0  # a silent stretch: no peaks
    expected = _reference_peak_locked_phase(magnitude, N_FFT, HOP)
    np.testing.assert_array_equal(peak_locked_phase(magnitude, N_FFT, HOP), expected)
    np.testing.assert_array_equal(peak_locked_phase(magnitude, N_FFT, HOP, transient_db=None), expected)
    with pytest.raises(ValueError, match="transient_align"):
        peak_locked_phase(magnitude, N_FFT, HOP, transient_db=6.0, transient_align="nowhere")


def _onset_magnitude(share: float) -> np.ndarray:
    """A steady partial at bin 40 in every frame; a new one at bin 101 from frame 5, at ``share`` of
    its full level in frame 5 (symmetric lobes: both peaks' frequencies are their bin centres)."""
    magnitude = np.full((10, N_FFT // 2 + 1), 1e-6)
    magnitude[:, 39:42] = [0.5, 1.0, 0.5]
    magnitude[5:, 100:103] = [0.5, 1.0, 0.5]
    magnitude[5, 100:103] *= share
    return magnitude


@pytest.mark.parametrize("align", ["centre", "onset", "envelope"])
def test_a_partial_that_appears_gets_the_reset_phase_and_a_steady_one_keeps_its_own(align):
    """Hand-derived. A partial that starts at sample u from a frame's centre holds, in that frame, the
    share of the Hann window's sum after u: (n/2 - u) / n - sin(2 pi u / n) / (2 pi); at u = n/4 that
    is 1/4 - 1/(2 pi). "centre": centre-referenced phase 0 at its peak; "onset": phase 0 at u, so
    -2 pi (k + d) u / n at the centre; "envelope": the same peak phase, and the lobe's other bins turn
    by -2 pi (bin - (k + d)) c / n, c the centroid of the window after u, for a Hann window from n/4 on
    n (1/4 - 1/(2 pi)^2 ... ) = 0.31516 n. Then propagation as usual. The steady partial is untouched."""
    n = N_FFT
    share = 0.25 - 1 / (2 * np.pi)
    magnitude = _onset_magnitude(share)
    phase = peak_locked_phase(magnitude, n, HOP, transient_db=10.0, transient_align=align)
    plain = peak_locked_phase(magnitude, n, HOP)
    centred = lambda frame, bin_: phase[frame, bin_] + np.pi * bin_  # noqa: E731  centre-referenced
    wrap = lambda x: np.angle(np.exp(1j * x))  # noqa: E731
    u = n / 4
    expected_peak = 0.0 if align == "centre" else -2 * np.pi * 101 * u / n
    assert wrap(centred(5, 101) - expected_peak) == pytest.approx(0.0, abs=0.02)
    x = np.array([0.25, 0.5])  # the centroid of the window after u, by hand (in units of n)
    numerator = np.diff(x**2 / 2 + x * np.sin(2 * np.pi * x) / (2 * np.pi) + np.cos(2 * np.pi * x) / (4 * np.pi**2))
    centroid = float(numerator[0] / share) * n
    assert centroid / n == pytest.approx(0.31516, abs=1e-4)
    slope = -2 * np.pi * centroid / n if align == "envelope" else 0.0
    assert wrap(centred(5, 100) - expected_peak + slope) == pytest.approx(0.0, abs=0.02)  # bin 100 = peak - 1
    assert wrap(centred(5, 102) - expected_peak - slope) == pytest.approx(0.0, abs=0.02)
    # The next frame: propagated from the reset (peak phase + one hop at its frequency).
    advance = 2 * np.pi * 101 * HOP / n
    assert wrap(centred(6, 101) - expected_peak - advance) == pytest.approx(0.0, abs=0.02)
    # The steady partial: the plain phase vocoder's phase (frame 0, where every partial starts, is a
    # reset too; here it lands on the same phase mod 2 pi), turning by its frequency every hop.
    np.testing.assert_allclose(wrap(phase[:, 35:46] - plain[:, 35:46]), 0.0, atol=1e-9)
    assert wrap(centred(6, 40) - centred(5, 40) - 2 * np.pi * 40 * HOP / n) == pytest.approx(0.0, abs=1e-9)


def test_the_envelope_reset_keeps_the_energy_after_the_onset():
    """A harmonic note that starts at a known sample after a quieter one: with its true magnitude,
    the plain phase vocoder spreads the new note over its frames' whole windows (pre-echo up to 40 ms
    before the onset); the envelope reset gives the frames that straddle the onset the phase of a
    partial cut at it, so less of the new note's energy comes before the onset."""
    sr, start = 16000, 14417
    t = np.arange(2 * sr) / sr
    rng = np.random.default_rng(1)
    audio = np.zeros_like(t)
    for onset, f0, level in ((0.1, 330.0, 0.02), (start / sr, 220.0, 0.1)):
        envelope = np.where(t >= onset, np.exp(-(t - onset) * 3), 0.0)
        for h in range(1, 8):
            audio += level / h * envelope * np.sin(2 * np.pi * f0 * h * (t - onset) + rng.uniform(0, 2 * np.pi))
    magnitude = HEAD.stft(torch.from_numpy(audio).float()[None]).abs()

    def pre_echo_db(**options) -> float:
        phase = peak_locked_phase(magnitude[0].T.numpy(), N_FFT, HOP, **options).T
        out = HEAD.istft(magnitude, torch.from_numpy(phase).float()[None])[0].double().numpy()
        before, after = out[start - 480 : start - 80], out[start : start + 400]
        return 10 * math.log10(np.mean(before**2) / np.mean(after**2))

    plain, reset = pre_echo_db(), pre_echo_db(transient_db=10.0, transient_align="envelope")
    assert reset < plain - 3.0, (plain, reset)


def test_the_inverter_passes_its_transient_reset_to_the_phase_vocoder():
    torch.manual_seed(0)
    model = Vocoder(VocoderConfig(dim=16, intermediate_dim=32, num_layers=2, synthesis="phase_vocoder"))
    inverter = VocoderInverter(model, refine_iters=0, gate_iters=0)
    assert inverter.transient_db is None  # off unless asked for
    mel = np.random.default_rng(0).uniform(-11.5, 2.0, (1, 12, 128)).astype(np.float32)
    with torch.no_grad():
        magnitude = torch.exp(model.spectrum(torch.from_numpy(mel))[0])
    for db, align in ((None, "envelope"), (6.0, "centre"), (6.0, "envelope")):
        inverter.transient_db, inverter.transient_align = db, align
        phase = peak_locked_phase(magnitude[0].T.numpy(), N_FFT, HOP, transient_db=db, transient_align=align).T
        expected = model.head.istft(magnitude, torch.from_numpy(phase).float()[None])
        np.testing.assert_allclose(inverter(mel), expected.numpy(), atol=1e-5)


def test_given_peak_frequencies_replace_the_parabola():
    """With ``frequency_offset`` a peak's phase advances by 2 pi (k + offset) hop / n_fft, whatever the
    magnitude's shape; without it (or with the parabola's own offsets) nothing changes."""
    k, d = 35, 0.3
    audio = _sines([(k + d) * 16000 / N_FFT])
    magnitude = HEAD.stft(audio).abs()[0].T.numpy()
    blurred = np.convolve(magnitude[10], np.ones(9) / 9, mode="same")  # a lobe whose parabola says ~0
    flat = np.tile(blurred, (magnitude.shape[0], 1))
    peak = int(blurred.argmax())
    given = np.full(flat.shape, 0.25)
    phase = peak_locked_phase(flat, N_FFT, HOP, frequency_offset=given)
    turn = np.angle(np.exp(1j * (phase[11, peak] - phase[10, peak])))
    assert turn == pytest.approx(np.angle(np.exp(1j * 2 * np.pi * (peak + 0.25) * HOP / N_FFT)), abs=1e-9)
    # Offsets beyond one bin are clipped to it.
    far = peak_locked_phase(flat, N_FFT, HOP, frequency_offset=np.full(flat.shape, 3.0))
    turn = np.angle(np.exp(1j * (far[11, peak] - far[10, peak])))
    assert turn == pytest.approx(np.angle(np.exp(1j * 2 * np.pi * (peak + 1.0) * HOP / N_FFT)), abs=1e-9)
    with pytest.raises(ValueError, match="shape"):
        peak_locked_phase(flat, N_FFT, HOP, frequency_offset=given[:, :10])


def test_true_instantaneous_frequency_restores_a_partial_from_a_misshapen_magnitude():
    """The case peak_frequency 'predicted' exists for: a network's magnitude whose lobe has lost its
    shape (here flattened over bins 35-37: the parabola then puts the peak at the first bin's centre)
    plays the partial at the wrong pitch; its true instantaneous frequency
    (training.vocoder_losses.instantaneous_frequency_offset) brings the pitch back. (A symmetric blur
    alone would not do it: the parabola still finds the centre of a symmetric lobe.)"""
    from specdiff.training.vocoder_losses import instantaneous_frequency_offset

    frequency = 35.3 * 16000 / N_FFT
    audio = _sines([frequency], frames=120)
    spectrum = HEAD.stft(audio)
    blurred = spectrum.abs().clone()
    blurred[:, 35:38] = blurred[:, 35:38].amax(1, keepdim=True)

    def pitch(offset) -> float:
        phase = HEAD.peak_locked_phase(blurred, frequency_offset=offset)
        out = HEAD.istft(blurred, phase)[0, 2 * N_FFT : -2 * N_FFT].double()
        spectrum = torch.fft.rfft(out * torch.hann_window(out.shape[0], dtype=torch.float64), n=8 * out.shape[0])
        return float(spectrum.abs().argmax()) * 16000 / (8 * out.shape[0])

    assert abs(pitch(None) - frequency) > 2.0  # measured: the bin centre, 3.75 Hz off
    assert pitch(instantaneous_frequency_offset(spectrum, N_FFT, HOP)) == pytest.approx(frequency, abs=0.5)
