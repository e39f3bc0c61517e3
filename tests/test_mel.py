"""The log-mel front end (ORIGINAL.md §1) against TensorFlow's own values and hand-derived properties.

tests/data/mel/*.npz were written by tools/make_mel_fixtures.py with TensorFlow 2.21
(``tf.signal.stft`` + ``linear_to_mel_weight_matrix``, exactly MSD's MelGAN front end).
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch

from specdiff import constants
from specdiff.audio import mel

torch.set_num_threads(1)

DATA = Path(__file__).parent / "data" / "mel"
# Signals whose quiet bins sit far above float32 FFT rounding (noise, chirp + noise, silence).
BROADBAND = ["chirp_noise", "noise_319", "noise_321", "batch", "silence", "one_sample"]
# Pure and harmonic tones: their leakage bins are ~1e-7 of the peak, where float32 FFT rounding
# (TF's and ours alike) decides the value; TF float32 vs TF float64 differ there by up to 1 nat.
TONAL = ["sine_1k", "tone", "loud"]


@pytest.fixture(scope="module")
def tf_fixtures():
    return np.load(DATA / "log_mel.npz")


def test_constants():
    assert (mel.SAMPLE_RATE, mel.HOP_LENGTH, mel.WIN_LENGTH, mel.N_FFT, mel.N_MELS) == (16000, 320, 640, 1024, 128)
    assert constants.FRAMES_PER_SECOND == 50
    assert mel.MIN_VALUE == pytest.approx(-11.5129254650, abs=1e-9)
    assert mel.MAX_VALUE == 4.0
    assert mel.ADDITIONAL_FRAMES_FOR_ENCODING == 16


# ---- filterbank -------------------------------------------------------------------------------


def test_filterbank_matches_tensorflow():
    expected = np.load(DATA / "filterbank.npz")["filterbank"]
    ours = mel.mel_filterbank().numpy()
    assert ours.shape == expected.shape == (513, 128) and ours.dtype == np.float32
    # TF computes the matrix in float32 with its own float32 log; mel values near 2840 have a float32
    # ulp of 2.4e-4 mel, over triangles 22 mel wide, so TF sits ~1e-5 from the exact matrix
    # (measured: max |ours - TF| = 1.67e-5). Same zero pattern, same peaks.
    assert np.abs(ours - expected).max() < 2e-5
    assert np.array_equal(ours == 0, expected == 0)


def test_filterbank_matches_an_independent_float64_derivation():
    # Written per band in Hz, then evaluated in mel: a different route to the same triangles.
    top = 1127.0 * math.log(1.0 + 8000.0 / 700.0)
    assert top == pytest.approx(2840.0377, abs=1e-4)
    expected = np.zeros((513, 128))
    for band in range(128):
        lo, centre, hi = (top * (band + j) / 129 for j in range(3))
        for k in range(1, 513):  # the DC row stays zero (HTK)
            m = 1127.0 * math.log(1.0 + (k * 8000.0 / 512) / 700.0)
            expected[k, band] = max(0.0, min((m - lo) / (centre - lo), (hi - m) / (hi - centre)))
    np.testing.assert_allclose(mel.mel_filterbank(dtype=torch.float64).numpy(), expected, rtol=0, atol=1e-12)
    np.testing.assert_allclose(mel.mel_filterbank().numpy(), expected, rtol=0, atol=1e-7)


def test_filterbank_hand_checked_properties():
    fb = mel.mel_filterbank(dtype=torch.float64).numpy()
    assert not fb[0].any()  # DC excluded
    assert fb.max() <= 1.0
    # Adjacent triangles share edges in the mel domain, so every bin between the first band's
    # centre (13.81 Hz) and the last band's centre (7831.7 Hz) is split between two bands summing to 1.
    freqs = np.arange(513) * 8000 / 512
    inside = (freqs > 13.81) & (freqs < 7831.69)
    np.testing.assert_allclose(fb[inside].sum(axis=1), 1.0, atol=1e-12)
    assert fb[-1].sum() == 0.0  # 8 kHz is the last band's upper edge
    # HTK mel(1000 Hz) = 999.99 mel ~ 1000 mel; bands are 2840.0377 / 129 = 22.0158 mel apart, so FFT
    # bin 64 (exactly 1000 Hz) lies between the centres of band 44 (990.71 mel) and 45 (1012.73 mel).
    step = 2840.0377117 / 129
    assert fb[64, 44] == pytest.approx((45 * step + step - 999.99070) / step, abs=1e-6)
    assert fb[64, 45] == pytest.approx((999.99070 - 45 * step) / step, abs=1e-6)


def test_filterbank_and_window_are_cached_per_device_and_dtype():
    assert mel.mel_filterbank() is mel.mel_filterbank("cpu", torch.float32)
    assert mel.mel_filterbank(dtype=torch.float64).dtype == torch.float64
    assert mel.hann_window() is mel.hann_window("cpu")


# ---- log_mel against TensorFlow -------------------------------------------------------------------


@pytest.mark.parametrize("name", BROADBAND + TONAL)
def test_log_mel_float64_matches_tensorflow_float64(tf_fixtures, name):
    """The algorithm itself: framing, window, FFT size, magnitude, mel, clip, log (measured 4e-10)."""
    audio = tf_fixtures[f"{name}/audio"].astype(np.float64)
    expected = tf_fixtures[f"{name}/log_mel_f64"]
    ours = mel.log_mel(audio)
    assert ours.dtype == torch.float64 and ours.shape == expected.shape
    np.testing.assert_allclose(ours.numpy(), expected, rtol=0, atol=1e-8)


@pytest.mark.parametrize("name", BROADBAND)
def test_log_mel_float32_matches_tensorflow_float32(tf_fixtures, name):
    """What MSD produced, float32 end to end (measured max 2.2e-5)."""
    expected = tf_fixtures[f"{name}/log_mel"]
    ours = mel.log_mel(tf_fixtures[f"{name}/audio"])
    assert ours.dtype == torch.float32 and ours.shape == expected.shape
    np.testing.assert_allclose(ours.numpy(), expected, rtol=0, atol=5e-5)


@pytest.mark.parametrize("name", TONAL)
def test_log_mel_float32_matches_tensorflow_float32_on_tones(tf_fixtures, name):
    # Away from the float32 rounding floor: bins within 8 nats (a factor 3000) of the signal's
    # loudest bin (measured max 1e-4).
    expected = tf_fixtures[f"{name}/log_mel"]
    ours = mel.log_mel(tf_fixtures[f"{name}/audio"]).numpy()
    loud = expected > expected.max() - 8.0
    assert loud.mean() > 0.15
    np.testing.assert_allclose(ours[loud], expected[loud], rtol=0, atol=2e-4)


def test_top_clip_at_1e8(tf_fixtures):
    out = mel.log_mel(tf_fixtures["loud/audio"]).numpy()
    assert out.max() == pytest.approx(math.log(1e8), abs=1e-5)  # 18.420681


# ---- framing, shapes, hand values --------------------------------------------------------------------


@pytest.mark.parametrize("n", [0, 1, 319, 320, 321, 640, 8123, 81920])
def test_frame_count_is_ceil_n_over_hop(n):
    out = mel.log_mel(torch.zeros(n))
    assert out.shape == (math.ceil(n / 320), 128) == (mel.num_frames(n), 128)


def test_frames_are_not_centred():
    """Frame i covers samples [320 i, 320 i + 640): an impulse at sample s reaches only the frames
    floor(s/320) - 1 and floor(s/320). A centred STFT would shift it by half a window."""
    for s in (0, 319, 320, 1000, 2879):
        x = torch.zeros(3200)
        x[s] = 1.0
        if s % 320 == 0:  # the Hann window is 0 at its first sample: only frame s/320 - 1 hears it
            expected = {s // 320 - 1} - {-1}
        else:
            expected = {s // 320 - 1, s // 320} - {-1}
        loud = {int(i) for i in torch.nonzero((mel.log_mel(x) > mel.MIN_VALUE + 1e-3).any(-1))}
        assert loud == expected, s


def test_silence_is_min_value():
    out = mel.log_mel(np.zeros(1234, np.float32))
    assert out.shape == (4, 128)
    torch.testing.assert_close(out, torch.full_like(out, -11.512925), rtol=0, atol=1e-6)


def test_sine_on_a_bin_centre_hand_values():
    # 1 kHz = FFT bin 64 exactly (16000/1024 = 15.625 Hz), and 640 samples hold 40 whole cycles, so
    # the periodic Hann window passes amplitude A/2 * sum(w) = A/2 * 320 = 80 at A = 0.5, and the
    # negative-frequency image is exactly cancelled.
    x = 0.5 * np.sin(2 * np.pi * 1000 * np.arange(3200) / 16000)
    spectrum = mel.stft(torch.from_numpy(x)).abs()
    assert spectrum.shape == (10, 513)
    torch.testing.assert_close(spectrum[2:8, 64], torch.full((6,), 80.0, dtype=torch.float64), rtol=1e-9, atol=0)
    features = mel.log_mel(x)
    # Band 44 (centre 986 Hz) weights bin 64 by 0.577 and gets most of the sine.
    assert int(features[4].argmax()) == 44
    assert mel.mel_to_hertz(45 * 2840.0377117 / 129) == pytest.approx(986.06, abs=0.01)


def test_batched_input_matches_per_item_and_numpy_is_accepted():
    rng = np.random.default_rng(0)
    audio = rng.standard_normal((2, 3, 1000)).astype(np.float32)
    batched = mel.log_mel(audio)
    assert isinstance(batched, torch.Tensor) and batched.shape == (2, 3, 4, 128)
    for i in range(2):
        for j in range(3):
            torch.testing.assert_close(batched[i, j], mel.log_mel(torch.from_numpy(audio[i, j])), rtol=0, atol=1e-5)


def test_non_float_input_becomes_float32_and_scalars_are_rejected():
    assert mel.log_mel(np.zeros(640, np.int16)).dtype == torch.float32
    with pytest.raises(ValueError):
        mel.log_mel(torch.tensor(1.0))


# ---- scaling (ORIGINAL.md §1.1) -----------------------------------------------------------------------------


def test_scale_features_hand_values():
    assert float(mel.scale_features(0.0)) == pytest.approx(0.484301, abs=1e-6)
    assert float(mel.scale_features(mel.MIN_VALUE)) == pytest.approx(-1.0, abs=1e-12)
    assert float(mel.scale_features(4.0)) == pytest.approx(1.0, abs=1e-12)
    # 2 (x + 11.5129) / 15.5129 - 1 at x = -3.756463 is the midpoint 0.
    assert float(mel.scale_features((mel.MIN_VALUE + 4.0) / 2)) == pytest.approx(0.0, abs=1e-12)
    assert float(mel.scale_features(0.0, output_range=(0.0, 1.0))) == pytest.approx(0.742150, abs=1e-6)


def test_scale_round_trips_for_torch_and_numpy():
    x = torch.linspace(-11.5, 4.0, 50, dtype=torch.float64)
    torch.testing.assert_close(mel.scale_to_features(mel.scale_features(x)), x)
    y = np.linspace(-1, 1, 9)
    np.testing.assert_allclose(mel.scale_features(mel.scale_to_features(y)), y, atol=1e-12)
    z = np.linspace(0, 1, 9)
    np.testing.assert_allclose(
        mel.scale_features(mel.scale_to_features(z, input_range=(0, 1)), output_range=(0, 1)), z, atol=1e-12
    )


def test_scale_clipping():
    x = torch.tensor([-20.0, 0.0, 10.0])
    assert mel.scale_features(x)[0] < -1 and mel.scale_features(x)[2] > 1  # no clip by default
    torch.testing.assert_close(mel.scale_features(x, clip=True), torch.tensor([-1.0, 0.484301, 1.0]), atol=1e-6, rtol=0)
    y = np.array([-1.5, 0.0, 1.5])
    np.testing.assert_allclose(mel.scale_to_features(y, clip=True), [mel.MIN_VALUE, -3.7564627, 4.0], atol=1e-6)
    assert mel.scale_to_features(y)[2] > 4.0


def test_cached_tables_made_in_inference_mode_still_work_with_autograd():
    # The window and filterbank are cached; if the first call happens under inference_mode (as in
    # the Griffin-Lim inverter), a later differentiable call (vocoder training losses) must still work.
    mel._cached_window.cache_clear()
    mel._cached_filterbank.cache_clear()
    with torch.inference_mode():
        mel.log_mel(torch.zeros(1600))
    audio = torch.randn(1600, requires_grad=True)
    mel.log_mel(audio).sum().backward()
    assert audio.grad is not None and torch.isfinite(audio.grad).all()


def test_mel_filterbank_on_other_bins_is_the_same_triangles():
    """On the front end's own 513 bins it is the front end's matrix; on the vocoder's 641 bins
    (12.5 Hz apart) every band is the same triangle, sampled 1.25x more densely."""
    np.testing.assert_array_equal(mel.mel_filterbank_on(513).astype(np.float32), mel.mel_filterbank().numpy())
    fine = mel.mel_filterbank_on(641)
    assert fine.shape == (641, 128) and (fine[0] == 0).all()
    coarse = mel.mel_filterbank_on(513)
    np.testing.assert_allclose(fine.sum(0) / 1.25, coarse.sum(0), rtol=0.25)  # same area per Hz
