"""specdiff.audio.inverters: the ONNX interface of ORIGINAL.md §6 against hand-built graphs, Griffin-Lim against
re-analysis with our own front end, and how load_inverter chooses (and falls back)."""

from __future__ import annotations

import logging
import sys

import numpy as np
import pytest
import torch
from conftest import write_onnx

from specdiff.audio import griffin_lim, inverters, mel
from specdiff.audio.griffin_lim import GriffinLimInverter
from specdiff.audio.inverters import Inverter, InverterUnavailable, OnnxInverter, load_inverter
from specdiff.errors import ModelError

torch.set_num_threads(1)
HOP = 320


# ---------------------------------------------------------------------------------------------
# ONNX graphs built by hand: audio = reshape(features @ W, [B, T * W.cols])
# ---------------------------------------------------------------------------------------------


def projection(samples_per_frame: int = HOP, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).normal(0, 0.01, (mel.N_MELS, samples_per_frame)).astype(np.float32)


@pytest.fixture
def onnxruntime():
    return pytest.importorskip("onnxruntime")


def test_onnx_inverter_computes_the_graph(tmp_path, onnxruntime):
    weights = projection()
    inverter = OnnxInverter(write_onnx(tmp_path / "model.onnx", weights), num_threads=1)
    assert isinstance(inverter, Inverter) and inverter.sample_rate == 16000
    features = np.random.default_rng(1).uniform(mel.MIN_VALUE, 4.0, (2, 7, mel.N_MELS))  # float64 in
    audio = inverter(features)
    assert audio.dtype == np.float32 and audio.shape == (2, 7 * HOP)
    expected = (features.astype(np.float32) @ weights).reshape(2, -1)  # numpy, frame by frame
    np.testing.assert_allclose(audio, expected, rtol=1e-5, atol=1e-6)
    assert inverter(np.zeros((1, 0, mel.N_MELS))).shape == (1, 0)


def test_onnx_wrong_output_length_is_a_model_error(tmp_path, onnxruntime):
    inverter = OnnxInverter(write_onnx(tmp_path / "model.onnx", projection(160)))
    with pytest.raises(ModelError, match=r"\[1, 1600\].*\[1, 3200\]"):
        inverter(np.zeros((1, 10, mel.N_MELS), np.float32))


@pytest.mark.parametrize("kind", ["wrong_input_name", "extra_input", "garbage", "missing"])
def test_onnx_bad_files_are_model_errors(kind, tmp_path, onnxruntime):
    path = tmp_path / "model.onnx"
    if kind == "wrong_input_name":
        write_onnx(path, projection(), input_name="mel")
    elif kind == "extra_input":
        write_onnx(path, projection(), extra_input=True)
    elif kind == "garbage":
        path.write_bytes(b"\x08\x07not a protobuf at all" * 10)
    with pytest.raises(ModelError) as caught:
        OnnxInverter(path)
    assert "\n" not in str(caught.value)
    if kind in ("wrong_input_name", "extra_input"):
        assert "input_features" in str(caught.value)


def test_onnx_features_of_the_wrong_shape_are_rejected(tmp_path, onnxruntime):
    inverter = OnnxInverter(write_onnx(tmp_path / "model.onnx", projection()))
    with pytest.raises(ValueError, match="128"):
        inverter(np.zeros((1, 10, 80), np.float32))
    with pytest.raises(ValueError):
        inverter(np.zeros((10, 128), np.float32))  # no batch axis


def test_missing_onnxruntime_is_inverter_unavailable(tmp_path, monkeypatch):
    path = write_onnx(tmp_path / "model.onnx", projection())
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # import now raises ImportError
    with pytest.raises(InverterUnavailable, match="pip install onnxruntime"):
        OnnxInverter(path)


# ---------------------------------------------------------------------------------------------
# Griffin-Lim
# ---------------------------------------------------------------------------------------------


def harmonic_tone(seconds: float = 1.0, f0: float = 220.0) -> np.ndarray:
    """A 220 Hz tone with 1/k harmonics up to 7.9 kHz and 50 ms fades, peak well below 1."""
    t = np.arange(int(seconds * 16000)) / 16000
    tone = sum((0.5 / k) * np.sin(2 * np.pi * f0 * k * t + k) for k in range(1, 40) if f0 * k < 7900)
    fade = np.clip(np.minimum(t, seconds - t) / 0.05, 0, 1)
    return (tone * fade).astype(np.float32)


def mel_convergence(reference_log_mel: np.ndarray, log_mel: np.ndarray) -> float:
    """||M' - M|| / ||M|| on linear mel magnitudes (spectral convergence)."""
    a, b = np.exp(reference_log_mel), np.exp(log_mel)
    return float(np.linalg.norm(b - a) / np.linalg.norm(a))


def test_griffin_lim_reanalysis_matches_the_input_mel():
    features = mel.log_mel(harmonic_tone()).numpy()[None]  # [1, 50, 128]
    audio = GriffinLimInverter()(features)
    assert audio.shape == (1, features.shape[1] * HOP) and audio.dtype == np.float32
    again = mel.log_mel(audio).numpy()
    # Measured: 0.056 spectral convergence and 0.19 median |log error| on the bins above the floor
    # with the default 32 iterations, vs 0.57 / 0.84 for the random initial phase (n_iter=0).
    converged = mel_convergence(features, again)
    assert converged < 0.1
    loud = features > mel.MIN_VALUE + 1
    assert np.median(np.abs(again - features)[loud]) < 0.3
    unconverged = mel_convergence(features, mel.log_mel(GriffinLimInverter(n_iter=0)(features)).numpy())
    assert converged < unconverged / 4, "phase recovery should beat a random phase by far"
    # The level is right, not just the shape (RMS: the peak depends on the harmonics' phases), and
    # no click at the start, where frame 0 alone covers the audio (it used to peak at ~40 there).
    rms = lambda x: float(np.sqrt(np.mean(np.square(x))))  # noqa: E731
    assert rms(audio) == pytest.approx(rms(harmonic_tone()), rel=0.15)
    assert np.abs(audio[0, :HOP]).max() < np.abs(audio).max() / 2  # the tone fades in over 50 ms


def test_mel_to_magnitude_fits_the_mel_projection():
    spectrum = mel.stft(torch.from_numpy(harmonic_tone())).abs()  # [50, 513]
    fb = mel.mel_filterbank()
    target = spectrum @ fb
    magnitude = GriffinLimInverter().mel_to_magnitude(torch.log(target.clamp_min(mel.CLIP_VALUE_MIN)))
    assert magnitude.shape == spectrum.shape and bool((magnitude >= 0).all())
    # Measured 0.007 relative error of the mel projection (30 NNLS updates).
    assert float((magnitude @ fb - target).norm() / target.norm()) < 0.02
    # A flat spectrum is recovered exactly by the initial guess (the triangles sum to one per bin).
    flat = torch.full((1, 513), 0.5)
    flat[:, 0] = 0  # the DC bin, which no mel band sees
    guess = GriffinLimInverter(nnls_iter=0).mel_to_magnitude(torch.log(flat @ fb))
    # ... up to the top band's centre (~7.6 kHz); above it the last triangle's slope covers less.
    inside = fb.sum(1) > 0.999
    assert int(inside.sum()) > 490
    torch.testing.assert_close(guess[:, inside], flat[:, inside], rtol=1e-4, atol=1e-6)


def test_griffin_lim_silence_gives_silence():
    silence = np.full((1, 20, mel.N_MELS), mel.MIN_VALUE, np.float32)
    assert not np.any(GriffinLimInverter()(silence))


def test_griffin_lim_is_deterministic_and_batch_independent():
    rng = np.random.default_rng(0)
    features = rng.uniform(-8, 2, (2, 12, mel.N_MELS)).astype(np.float32)
    inverter = GriffinLimInverter(n_iter=8)
    first, second = inverter(features), inverter(features)
    assert np.array_equal(first, second)
    np.testing.assert_allclose(inverter(features[:1]), first[:1], rtol=1e-4, atol=1e-5)
    assert not np.array_equal(GriffinLimInverter(n_iter=8, seed=1)(features), first)
    assert inverter(np.zeros((3, 0, mel.N_MELS))).shape == (3, 0)


def test_istft_inverts_stft():
    audio = torch.from_numpy(np.random.default_rng(0).uniform(-1, 1, 4800).astype(np.float32))
    rebuilt = griffin_lim.istft(mel.stft(audio), len(audio))
    assert rebuilt.shape == audio.shape
    # Exact from where frame 0's squared window reaches the envelope floor (sample 122) on ...
    torch.testing.assert_close(rebuilt[122:], audio[122:], rtol=0, atol=1e-5)
    # ... and a fade-in before it: the audio times w(n)^2 / floor, never amplified.
    window = mel.hann_window()
    expected = audio[:122] * window[:122] ** 2 / griffin_lim.ENVELOPE_FLOOR
    torch.testing.assert_close(rebuilt[:122], expected, rtol=0, atol=1e-5)


def test_istft_of_an_inconsistent_spectrum_does_not_click():
    # Random phases are far from any signal's STFT; the first samples must stay at the level of
    # the rest, where frame 0's squared window alone is tiny.
    rng = np.random.default_rng(0)
    magnitude = torch.full((25, 513), 1.0)
    phase = torch.from_numpy(rng.uniform(0, 2 * np.pi, (25, 513)).astype(np.float32))
    audio = griffin_lim.istft(torch.polar(magnitude, phase), 25 * HOP)
    # Measured: 0.31 in the first 320 samples vs 0.19 later (one frame there, two averaged later);
    # without the floor it was 204.
    assert audio[:HOP].abs().max() <= 3 * audio[HOP:].abs().max()


# ---------------------------------------------------------------------------------------------
# load_inverter and the registry
# ---------------------------------------------------------------------------------------------


@pytest.fixture
def registry(monkeypatch):
    """A private copy of the registry, so registrations in a test do not leak."""
    monkeypatch.setattr(inverters, "_REGISTRY", dict(inverters._REGISTRY))
    monkeypatch.setattr(inverters, "_AUTO_ORDER", list(inverters._AUTO_ORDER))
    return inverters


def test_auto_prefers_the_model_folders_onnx_file(tmp_path, onnxruntime):
    write_onnx(tmp_path / "melgan" / "model.onnx", projection())
    assert isinstance(load_inverter(tmp_path), OnnxInverter)
    assert isinstance(load_inverter(tmp_path, "onnx"), OnnxInverter)
    assert isinstance(load_inverter(tmp_path / "melgan" / "model.onnx", "onnx"), OnnxInverter)  # the file itself
    assert isinstance(load_inverter(tmp_path, "griffinlim"), GriffinLimInverter)


def test_auto_falls_back_to_griffin_lim_with_a_warning(tmp_path, caplog):
    with caplog.at_level(logging.WARNING, logger="specdiff.audio.inverters"):
        inverter = load_inverter(tmp_path)
    assert isinstance(inverter, GriffinLimInverter)
    assert any("Griffin-Lim" in r.getMessage() and "low-quality" in r.getMessage() for r in caplog.records)
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="specdiff.audio.inverters"):
        assert isinstance(load_inverter(None), GriffinLimInverter)
    assert caplog.records


def test_auto_skips_onnx_without_onnxruntime(tmp_path, monkeypatch, caplog):
    write_onnx(tmp_path / "melgan" / "model.onnx", projection())
    monkeypatch.setitem(sys.modules, "onnxruntime", None)
    with caplog.at_level(logging.WARNING, logger="specdiff.audio.inverters"):
        assert isinstance(load_inverter(tmp_path), GriffinLimInverter)
    assert any("skipping the onnx inverter" in r.getMessage() for r in caplog.records)
    with pytest.raises(InverterUnavailable):
        load_inverter(tmp_path, "onnx")  # asked for by name: no silent fallback


def test_a_broken_onnx_file_is_an_error_not_a_fallback(tmp_path, onnxruntime):
    (tmp_path / "melgan").mkdir()
    (tmp_path / "melgan" / "model.onnx").write_bytes(b"broken")
    with pytest.raises(ModelError, match="cannot load"):
        load_inverter(tmp_path)


def test_named_inverters_that_are_not_there(tmp_path):
    with pytest.raises(ModelError, match="onnx inverter needs files"):
        load_inverter(tmp_path, "onnx")
    with pytest.raises(ModelError, match="vocoder inverter needs files"):
        load_inverter(tmp_path, "vocoder")
    with pytest.raises(ModelError, match="unknown inverter 'melgan'.*griffinlim"):
        load_inverter(tmp_path, "melgan")


def test_auto_order_onnx_then_vocoder_then_registered(tmp_path, registry, onnxruntime):
    made = []

    def factory(name):
        def make(model_dir):
            made.append(name)
            return GriffinLimInverter(seed=len(made)) if (model_dir / name).exists() else None

        return make

    registry.register_inverter("first", factory("first"))
    registry.register_inverter("second", factory("second"))
    registry.register_inverter("manual", factory("manual"), auto=False)
    assert registry.available_inverters()[0] == "auto"
    assert {"onnx", "vocoder", "griffinlim", "first", "second", "manual"} <= set(registry.available_inverters())

    (tmp_path / "second").mkdir()
    (tmp_path / "manual").mkdir()
    chosen = load_inverter(tmp_path)
    assert made == ["first", "second"] and chosen.seed == 2  # "manual" is never tried automatically

    (tmp_path / "first").mkdir()
    made.clear()
    load_inverter(tmp_path)
    assert made == ["first"]

    write_onnx(tmp_path / "melgan" / "model.onnx", projection())  # the official file beats them all
    made.clear()
    assert isinstance(load_inverter(tmp_path), OnnxInverter) and made == []

    made.clear()
    assert load_inverter(tmp_path, "manual").seed == 1 and made == ["manual"]


def test_registering_with_auto_false_removes_from_the_auto_order(tmp_path, registry):
    registry.register_inverter("mine", lambda model_dir: GriffinLimInverter(seed=5))
    assert load_inverter(tmp_path).seed == 5
    registry.register_inverter("mine", lambda model_dir: GriffinLimInverter(seed=5), auto=False)
    assert load_inverter(tmp_path).seed == 0  # back to the fallback
    assert load_inverter(tmp_path, "mine").seed == 5


def test_a_trained_vocoder_folder_is_found(tmp_path):
    vocoder = pytest.importorskip("specdiff.audio.vocoder")
    torch.manual_seed(0)
    model = vocoder.Vocoder(vocoder.VocoderConfig(dim=16, intermediate_dim=32, num_layers=1))
    model.save_pretrained(tmp_path / "vocoder")
    chosen = load_inverter(tmp_path)
    assert isinstance(chosen, vocoder.VocoderInverter)
    assert chosen(np.zeros((1, 5, mel.N_MELS), np.float32)).shape == (1, 5 * HOP)
    assert isinstance(load_inverter(tmp_path, "vocoder"), vocoder.VocoderInverter)
