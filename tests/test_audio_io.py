"""load_audio / save_wav on real files written in tmp_path."""

from __future__ import annotations

import logging
import os

import numpy as np
import pytest
import soundfile

from specdiff.audio.files import load_audio, save_wav, soft_limit
from specdiff.constants import LIMITER_THRESHOLD
from specdiff.errors import AudioError


def sine(freq: float, rate: int, seconds: float, amplitude: float = 0.5) -> np.ndarray:
    return amplitude * np.sin(2 * np.pi * freq * np.arange(int(rate * seconds)) / rate)


def peak_frequency(audio: np.ndarray, rate: int) -> float:
    # Zero-padded FFT (0.1 Hz resolution) of a Hann-windowed signal: the main lobe's peak.
    n = 10 * rate
    spectrum = np.abs(np.fft.rfft(audio * np.hanning(audio.size), n=n))
    return float(np.argmax(spectrum) * rate / n)


def test_mono_16k_round_trip_is_exact_in_float(tmp_path):
    x = sine(440, 16000, 0.5).astype(np.float32)
    path = save_wav(tmp_path / "a.wav", x, subtype="FLOAT")
    y = load_audio(path)
    assert y.dtype == np.float32 and y.shape == x.shape
    np.testing.assert_array_equal(y, x)


def test_default_pcm16_round_trip_within_one_lsb(tmp_path):
    x = sine(440, 16000, 0.25).astype(np.float32)
    y = load_audio(save_wav(tmp_path / "a.wav", x))
    assert soundfile.info(str(tmp_path / "a.wav")).subtype == "PCM_16"
    assert np.abs(y - x).max() <= 1 / 32768 + 1e-7


@pytest.mark.parametrize("rate", [44100, 48000, 22050, 8000])
def test_resampled_stereo_sine_keeps_frequency_length_and_level(tmp_path, rate):
    seconds = 1.0
    left, right = sine(1000, rate, seconds, 0.6), sine(1000, rate, seconds, 0.2)
    path = tmp_path / f"stereo_{rate}.wav"
    soundfile.write(str(path), np.stack([left, right], axis=1), rate, subtype="FLOAT")
    y = load_audio(path)
    assert y.dtype == np.float32 and y.ndim == 1
    assert y.size == int(np.ceil(left.size * 16000 / rate)) == 16000
    assert peak_frequency(y, 16000) == pytest.approx(1000.0, abs=0.2)
    # The mix-down is the channel mean: amplitude (0.6 + 0.2) / 2 = 0.4, so RMS 0.4 / sqrt(2),
    # measured away from the resampling filter's edge transients.
    assert np.sqrt(np.mean(y[1600:-1600] ** 2)) == pytest.approx(0.4 / np.sqrt(2), rel=2e-3)


def test_content_above_8khz_is_removed_when_downsampling(tmp_path):
    # A 10 kHz tone at 44.1 kHz cannot exist at 16 kHz: the anti-aliasing filter must remove it
    # (a naive decimator would fold it to 6 kHz; scipy's default filter leaves it at -57 dB).
    x = sine(10000, 44100, 0.5, 0.5) + sine(3000, 44100, 0.5, 0.5)
    soundfile.write(str(tmp_path / "a.wav"), x, 44100, subtype="FLOAT")
    y = load_audio(tmp_path / "a.wav")
    spectrum = np.abs(np.fft.rfft(y * np.hanning(y.size)))
    freqs = np.fft.rfftfreq(y.size, 1 / 16000)
    assert spectrum[np.abs(freqs - 6000) < 50].max() < 1e-5 * spectrum.max()  # > 100 dB down
    assert peak_frequency(y, 16000) == pytest.approx(3000.0, abs=0.5)


def test_opposite_channels_cancel(tmp_path):
    x = sine(300, 16000, 0.2)
    soundfile.write(str(tmp_path / "a.flac"), np.stack([x, -x], axis=1), 16000)
    assert np.abs(load_audio(tmp_path / "a.flac")).max() < 1e-4


def test_other_target_rate(tmp_path):
    soundfile.write(str(tmp_path / "a.wav"), sine(500, 16000, 0.5), 16000, subtype="FLOAT")
    y = load_audio(tmp_path / "a.wav", sample_rate=22050)
    assert y.size == 11025 and peak_frequency(y, 22050) == pytest.approx(500.0, abs=0.5)


# ---- load errors -----------------------------------------------------------------------------------


def test_missing_and_directory_paths(tmp_path):
    with pytest.raises(AudioError, match="no such file"):
        load_audio(tmp_path / "nope.wav")
    with pytest.raises(AudioError, match="not a file"):
        load_audio(tmp_path)


def test_unreadable_file(tmp_path):
    path = tmp_path / "junk.wav"
    path.write_bytes(b"this is not audio at all" * 10)
    with pytest.raises(AudioError, match="cannot read audio") as info:
        load_audio(path)
    assert "\n" not in str(info.value)


def test_empty_file_and_empty_audio(tmp_path):
    (tmp_path / "zero.wav").write_bytes(b"")
    with pytest.raises(AudioError):
        load_audio(tmp_path / "zero.wav")
    soundfile.write(str(tmp_path / "nosamples.wav"), np.zeros(0), 16000)
    with pytest.raises(AudioError, match="no audio samples"):
        load_audio(tmp_path / "nosamples.wav")


def test_absurd_sample_rates(tmp_path):
    soundfile.write(str(tmp_path / "slow.wav"), np.zeros(100), 100)
    with pytest.raises(AudioError, match="100 Hz"):
        load_audio(tmp_path / "slow.wav")
    soundfile.write(str(tmp_path / "ok.wav"), np.zeros(100), 16000)
    for bad in (0, -16000, 10**7, "16000"):
        with pytest.raises(AudioError, match="requested sample rate"):
            load_audio(tmp_path / "ok.wav", sample_rate=bad)
    assert load_audio(tmp_path / "ok.wav", sample_rate=16000.0).size == 100


def test_non_finite_samples_are_rejected(tmp_path):
    x = np.zeros(100, np.float32)
    x[5] = np.nan
    soundfile.write(str(tmp_path / "nan.wav"), x, 16000, subtype="FLOAT")
    with pytest.raises(AudioError, match="NaN"):
        load_audio(tmp_path / "nan.wav")


# ---- save_wav ---------------------------------------------------------------------------------------


def test_save_creates_folders_accepts_batch_of_one_and_sets_normal_permissions(tmp_path):
    path = save_wav(tmp_path / "a" / "b" / "out.wav", np.zeros((1, 320), np.float32), 16000)
    info = soundfile.info(str(path))
    assert (info.samplerate, info.channels, info.frames) == (16000, 1, 320)
    umask = os.umask(0)
    os.umask(umask)
    assert os.stat(path).st_mode & 0o777 == 0o666 & ~umask
    with pytest.raises(ValueError):
        save_wav(tmp_path / "x.wav", np.zeros((2, 320)))


def test_save_soft_limits_loud_audio_with_a_warning(tmp_path, caplog):
    with caplog.at_level(logging.WARNING, logger="specdiff.audio.files"):
        y = load_audio(save_wav(tmp_path / "loud.wav", np.array([0.0, 1.5, -2.0, 0.5, 0.95])))
    assert "limiter" in caplog.text
    # It names the likely cause and the fix: a gain that brings the 2.0 peak under the knee, or less guidance.
    assert "usually loud onsets" in caplog.text and "--guidance" in caplog.text
    assert "`specdiff synth --gain -7` (dB)" in caplog.text  # 20 log10(0.9 / 2) = -6.9 -> -7
    # Below the knee unchanged; above it bent below full scale, in order, never clipped flat.
    knee = lambda x: 0.9 + 0.09 * np.tanh((x - 0.9) / 0.09)  # noqa: E731
    expected = [0.0, knee(1.5), -knee(2.0), 0.5, knee(0.95)]
    np.testing.assert_allclose(y, expected, atol=2 / 32768)
    assert np.abs(y).max() < 1.0


def test_soft_limit_is_continuous_monotonic_and_bounded():
    x = np.linspace(-5, 5, 20001, dtype=np.float32)
    y = soft_limit(x)
    assert np.all(np.diff(y) >= 0) and np.abs(y).max() <= 0.99
    assert np.array_equal(y[np.abs(x) <= LIMITER_THRESHOLD], x[np.abs(x) <= LIMITER_THRESHOLD])
    assert np.abs(np.diff(y)).max() <= np.abs(np.diff(x)).max() + 1e-6  # slope <= 1: no jump at the knee


def test_save_format_follows_extension(tmp_path):
    x = sine(440, 16000, 0.1)
    assert soundfile.info(str(save_wav(tmp_path / "a.flac", x))).format == "FLAC"
    assert soundfile.info(str(save_wav(tmp_path / "a.ogg", x))).subtype == "VORBIS"
    with pytest.raises(AudioError, match="unsupported"):
        save_wav(tmp_path / "a.xyz", x)


def test_failed_write_leaves_old_file_and_no_temp_file(tmp_path, monkeypatch):
    target = save_wav(tmp_path / "out.wav", sine(440, 16000, 0.1))
    before = target.read_bytes()

    def broken_write(handle, *args, **kwargs):
        handle.write(b"RIFF partial")
        raise soundfile.LibsndfileError(0, "simulated failure")

    monkeypatch.setattr(soundfile, "write", broken_write)
    with pytest.raises(AudioError, match="cannot write"):
        save_wav(target, np.zeros(1000))
    assert target.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.wav"]


def test_unwritable_destination(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("a file, not a folder")
    with pytest.raises(AudioError, match="cannot write"):
        save_wav(blocker / "out.wav", np.zeros(10))
    (tmp_path / "d.wav").mkdir()  # the destination is a folder: os.replace fails
    with pytest.raises(AudioError, match="cannot write"):
        save_wav(tmp_path / "d.wav", np.zeros(10))
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]


@pytest.mark.skipif(os.name != "posix" or os.geteuid() == 0, reason="root ignores folder permissions")
def test_read_only_folder(tmp_path):
    folder = tmp_path / "ro"
    folder.mkdir()
    folder.chmod(0o500)
    try:
        with pytest.raises(AudioError, match="cannot write"):
            save_wav(folder / "out.wav", np.zeros(10))
    finally:
        folder.chmod(0o700)


def test_nan_audio_is_not_written(tmp_path):
    with pytest.raises(AudioError, match="NaN"):
        save_wav(tmp_path / "out.wav", np.array([0.0, np.inf]))
    assert not list(tmp_path.iterdir())
