"""Write TensorFlow's reference values for the log-mel front end to tests/data/mel/.

Run with a TensorFlow environment kept outside the repo (TensorFlow is never a dependency of
specdiff), e.g.

    python -m venv venvs/tf && venvs/tf/bin/pip install tensorflow-cpu numpy
    venvs/tf/bin/python tools/make_mel_fixtures.py

It stores, as compressed .npz files:
- ``filterbank.npz``: ``tf.signal.linear_to_mel_weight_matrix(128, 513, 16000, 0.0, 8000.0)``;
- ``log_mel.npz``: a few deterministic test signals and MSD's log-mel of each (ORIGINAL.md §1), computed
  exactly as MSD's ``audio_codecs.MelGAN`` does it in TensorFlow (``NAME/log_mel``, float32), and the
  same computation in float64 (``NAME/log_mel_f64``). float32 FFT rounding (~1e-7 of a frame's
  peak) dominates the quiet bins of pure tones, so the float64 copy is what checks the algorithm
  there; the float32 copy checks what MSD actually produced.

The signals are stored too, so the test never has to regenerate them bit for bit.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import tensorflow as tf

SAMPLE_RATE = 16000


def tf_log_mel(audio: np.ndarray, dtype: tf.DType = tf.float32) -> np.ndarray:
    """MSD's MelGAN front end (ORIGINAL.md §1) in TensorFlow (MSD runs it in float32)."""
    stfts = tf.signal.stft(
        tf.constant(audio, dtype),
        frame_length=640,
        frame_step=320,
        fft_length=1024,
        window_fn=tf.signal.hann_window,
        pad_end=True,
    )
    mel_matrix = tf.signal.linear_to_mel_weight_matrix(
        num_mel_bins=128,
        num_spectrogram_bins=513,
        sample_rate=SAMPLE_RATE,
        lower_edge_hertz=0.0,
        upper_edge_hertz=8000.0,
        dtype=dtype,
    )
    mel = tf.tensordot(tf.abs(stfts), mel_matrix, 1)
    return tf.math.log(tf.clip_by_value(mel, 1e-5, 1e8)).numpy()


def test_signals() -> dict[str, np.ndarray]:
    """Short deterministic signals; the odd lengths exercise pad_end."""
    rng = np.random.default_rng(20220516)
    t = np.arange(8000) / SAMPLE_RATE  # 0.5 s: 25 frames exactly
    # Linear chirp 100 Hz -> 7 kHz plus white noise.
    chirp = 0.5 * np.sin(2 * np.pi * (100 * t + 0.5 * (6900 / 0.5) * t**2)) + 0.05 * rng.standard_normal(t.size)
    n = 8123  # ceil(8123 / 320) = 26 frames, the last one mostly padding
    t2 = np.arange(n) / SAMPLE_RATE
    sine = 0.5 * np.sin(2 * np.pi * 1000.0 * t2)
    # A harmonic tone with vibrato and a decaying envelope: a "musical" signal.
    t3 = np.arange(4321) / SAMPLE_RATE
    phase = 2 * np.pi * (220.0 * t3 + 3.0 * np.sin(2 * np.pi * 5 * t3) / (2 * np.pi * 5))
    tone = sum(0.3 / k * np.sin(k * phase) for k in range(1, 16)) * np.exp(-3 * t3)
    return {
        "chirp_noise": chirp,
        "sine_1k": sine,
        "tone": tone,
        "silence": np.zeros(1000),
        "one_sample": np.array([0.7]),
        "noise_319": 0.3 * rng.standard_normal(319),  # 1 frame
        "noise_321": 0.3 * rng.standard_normal(321),  # 2 frames: the second holds one sample
        "loud": 2e6 * np.sin(2 * np.pi * 440.0 * t[:2000]),  # mel magnitudes above 1e8: the top clip
        # Two signals of one length, to check batching ([2, N] -> [2, frames, 128]).
        "batch": 0.2 * rng.standard_normal((2, 1600)),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parents[1] / "tests/data/mel")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)

    matrix = tf.signal.linear_to_mel_weight_matrix(128, 513, SAMPLE_RATE, 0.0, 8000.0).numpy()
    np.savez_compressed(
        args.out / "filterbank.npz", filterbank=matrix.astype(np.float32), tf_version=np.array(tf.__version__)
    )

    arrays: dict[str, np.ndarray] = {"tf_version": np.array(tf.__version__)}
    for name, signal in test_signals().items():
        signal = signal.astype(np.float32)
        arrays[f"{name}/audio"] = signal
        arrays[f"{name}/log_mel"] = tf_log_mel(signal).astype(np.float32)
        arrays[f"{name}/log_mel_f64"] = tf_log_mel(signal.astype(np.float64), tf.float64)
    np.savez_compressed(args.out / "log_mel.npz", **arrays)
    for path in sorted(args.out.glob("*.npz")):
        print(f"wrote {path} ({path.stat().st_size / 1024:.0f} KiB)")


if __name__ == "__main__":
    main()
