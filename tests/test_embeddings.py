"""Audio embeddings of the Fréchet distance: window layout, hand-computable values, the registry."""

from __future__ import annotations

import math

import numpy as np
import pytest

from specdiff.errors import SpecdiffError
from specdiff.evaluation import embeddings
from specdiff.evaluation.embeddings import (
    available_embeddings,
    dct_matrix,
    embed,
    get_embedding,
    pool_windows,
    register_embedding,
    window_starts,
)

torch = pytest.importorskip("torch")
torch.set_num_threads(1)

SR = 16000
LN_FLOOR = math.log(1e-5)  # log-mel of silence (ORIGINAL.md §1)


@pytest.fixture
def registry(monkeypatch):
    """Registrations made by a test stay in that test."""
    monkeypatch.setattr(embeddings, "_REGISTRY", dict(embeddings._REGISTRY))


def white_noise(seconds: float, amplitude: float, seed: int = 0) -> np.ndarray:
    return (np.random.default_rng(seed).standard_normal(int(seconds * SR)) * amplitude).astype(np.float32)


def test_dct_matrix_is_scipys_orthonormal_dct():
    from scipy.fft import dct

    x = np.random.default_rng(5).standard_normal(128)
    assert np.allclose(dct_matrix(128, 20) @ x, dct(x, type=2, norm="ortho")[:20])


def test_window_layout():
    assert window_starts(0, 48, 24) == []
    assert window_starts(10, 48, 24) == [0]  # a short clip still gives one window
    assert window_starts(500, 48, 24) == list(range(0, 453, 24))  # 10 s: 19 windows


def test_pool_windows_hand_values():
    frames = np.arange(100, dtype=np.float64)[:, None]  # 2 s at 50 frames/s: windows of 48, hop 24
    out = pool_windows(frames, 50, ("mean", "std"))
    assert out.shape == (3, 2)
    assert out[:, 0].tolist() == [23.5, 47.5, 71.5]  # means of 0..47, 24..71, 48..95
    assert np.allclose(out[:, 1], math.sqrt((48**2 - 1) / 12))  # std of 48 consecutive integers


def test_silence_is_hand_computable():
    silence = np.zeros(SR * 10, np.float32)
    mfcc = embed(silence, "mfcc-stats")
    assert mfcc.shape == (19, 40)
    # The orthonormal DCT of a constant c over 128 bins is c * sqrt(128) in coefficient 0 and 0
    # elsewhere; the spread over frames is 0.
    assert np.allclose(mfcc[:, 0], LN_FLOOR * math.sqrt(128), atol=1e-4)
    assert np.allclose(mfcc[:, 1:], 0.0, atol=1e-4)
    logmel = embed(silence, "logmel-mean")
    assert logmel.shape == (19, 128) and np.allclose(logmel, LN_FLOOR, atol=1e-5)


def test_a_gain_moves_only_the_first_mfcc_mean():
    # Loud white noise fills every mel band far above the floor, so a gain g adds ln g to every
    # log-mel value: MFCC 0 grows by ln(g) * sqrt(128), nothing else changes.
    x = white_noise(3.0, 0.2)
    a, b = embed(x, "mfcc-stats"), embed(4 * x, "mfcc-stats")
    assert np.allclose(b[:, 0] - a[:, 0], math.log(4) * math.sqrt(128), atol=1e-3)
    assert np.allclose(b[:, 1:], a[:, 1:], atol=1e-3)


def test_embeddings_tell_a_tone_from_noise():
    t = np.arange(3 * SR) / SR
    low = (0.3 * np.sin(2 * np.pi * 220 * t)).astype(np.float32)
    low_again = (0.3 * np.sin(2 * np.pi * 220 * t + 1.0)).astype(np.float32)  # another phase
    noise = white_noise(3.0, 0.1)
    for name in ("mfcc-stats", "logmel-mean"):
        same = np.abs(embed(low, name) - embed(low_again, name)).mean()
        different = np.abs(embed(low, name) - embed(noise, name)).mean()
        assert different > 20 * same, name


def test_registry(registry):
    assert {"mfcc-stats", "logmel-mean", "basic-pitch"} <= set(available_embeddings())
    assert get_embedding().name == embeddings.DEFAULT_EMBEDDING == "mfcc-stats"
    with pytest.raises(SpecdiffError, match="unknown embedding 'vggish'"):
        get_embedding("vggish")
    register_embedding("test-peak", lambda audio: np.abs(audio).reshape(-1, SR).max(axis=1, keepdims=True))
    assert embed(np.full(2 * SR, -0.5, np.float32), "test-peak").tolist() == [[0.5], [0.5]]
    with pytest.raises(ValueError, match="already registered"):
        register_embedding("test-peak", np.abs)
    register_embedding("test-peak", lambda audio: audio, overwrite=True)  # 1-D: not [windows, dim]
    with pytest.raises(ValueError, match="expected \\[windows, dim\\]"):
        embed(np.zeros(SR, np.float32), "test-peak")


def test_basic_pitch_embedding_layout():
    from specdiff.evaluation import transcription

    reason = transcription.transcription_unavailable()
    if reason:
        pytest.skip(reason)
    t = np.arange(3 * SR) / SR
    out = embed((0.3 * np.sin(2 * np.pi * 440 * t)).astype(np.float32), "basic-pitch")
    # 3 s at 22050/256 frames/s = 258 frames; windows of round(0.96 * 86.13) = 83, hop 41.
    assert out.shape == (len(range(0, 258 - 83 + 1, 41)), 88 + 88) == (5, 176)
    assert out.min() >= 0.0 and out.max() <= 1.0  # posteriorgram means
    # A4 (MIDI 69) is basic-pitch's note bin 69 - 21 = 48: the strongest note activation.
    assert int(np.argmax(out[:, :88].mean(axis=0))) == 48
