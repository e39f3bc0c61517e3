"""Audio embeddings for the Fréchet distance: a small registry of offline feature extractors.

The paper computes Fréchet distances on VGGish and TRILL embeddings (ORIGINAL.md §4.5). Both are
TF-Hub models that would have to be downloaded, which this project never does, so they are not
available here. Instead every embedding below ships with the code (or with an installed wheel)
and needs no download:

- ``mfcc-stats`` (the default): per 0.96 s window (VGGish's example length, 50% overlap), the
  mean and standard deviation over frames of the first 20 MFCCs of *our* log-mel front end
  (ORIGINAL.md §1; MFCC = orthonormal DCT-II of the 128 natural-log mel bins). 40 dimensions. Mean
  MFCCs describe the spectral envelope (timbre, loudness), their spread the movement inside a
  window (onsets, vibrato, note changes). It is deterministic, fast, and low-dimensional, so the
  covariance is well estimated from a few minutes of audio. Its blind spot: it knows nothing
  about pitch beyond the envelope, so it rewards "sounds like an orchestra" more than "plays
  the right notes" (the transcription metrics cover that).
- ``logmel-mean``: per window, the mean of the 128 log-mel bins (128 dimensions): the raw
  spectral envelope, more detailed but needs more windows for a stable covariance.
- ``basic-pitch``: per window, the mean of basic-pitch's note and onset posteriorgrams (88 + 88
  dimensions; needs the optional basic-pitch wheel). A pitch-aware embedding from a network
  trained on real recordings, the closest thing to a learned embedding we can run offline.

An embedding maps 16 kHz mono float audio ``[N]`` to ``[windows, dim]``. Register more with
:func:`register_embedding` (any callable of that shape, e.g. a local VGGish port).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from specdiff.constants import FRAMES_PER_SECOND, SAMPLE_RATE
from specdiff.errors import SpecdiffError

WINDOW_SECONDS = 0.96  # VGGish's example length
HOP_SECONDS = 0.48
N_MFCC = 20

EmbeddingFn = Callable[[np.ndarray], np.ndarray]


@dataclass(frozen=True)
class Embedding:
    name: str
    fn: EmbeddingFn
    description: str

    def __call__(self, audio: np.ndarray) -> np.ndarray:
        out = np.asarray(self.fn(np.asarray(audio, dtype=np.float32).reshape(-1)), dtype=np.float64)
        if out.ndim != 2:
            raise ValueError(f"embedding {self.name!r} returned shape {out.shape}, expected [windows, dim]")
        return out


_REGISTRY: dict[str, Embedding] = {}
DEFAULT_EMBEDDING = "mfcc-stats"


def register_embedding(name: str, fn: EmbeddingFn, description: str = "", overwrite: bool = False) -> Embedding:
    """Add an embedding ``fn(audio [N] at 16 kHz) -> [windows, dim]`` under ``name``."""
    if name in _REGISTRY and not overwrite:
        raise ValueError(f"embedding {name!r} is already registered")
    _REGISTRY[name] = Embedding(name, fn, description)
    return _REGISTRY[name]


def get_embedding(name: str = DEFAULT_EMBEDDING) -> Embedding:
    """The registered embedding ``name`` (SpecdiffError for an unknown name)."""
    try:
        return _REGISTRY[name]
    except KeyError:
        raise SpecdiffError(f"unknown embedding {name!r}; choose one of {', '.join(available_embeddings())}") from None


def available_embeddings() -> list[str]:
    return sorted(_REGISTRY)


def embed(audio: np.ndarray, name: str = DEFAULT_EMBEDDING) -> np.ndarray:
    """``[windows, dim]`` embedding of 16 kHz mono audio."""
    return get_embedding(name)(audio)


# ---------------------------------------------------------------------------------------------
# Building blocks
# ---------------------------------------------------------------------------------------------


def window_starts(num_frames: int, window: int, hop: int) -> list[int]:
    """Start frames of the analysis windows: full windows every ``hop`` frames; a clip shorter than
    one window still gives one (shorter) window so that no audio is silently dropped."""
    if num_frames <= 0:
        return []
    if num_frames <= window:
        return [0]
    return list(range(0, num_frames - window + 1, hop))


def pool_windows(frames: np.ndarray, frames_per_second: float, stats: tuple[str, ...] = ("mean",)) -> np.ndarray:
    """``[F, C]`` frame features -> ``[W, C * len(stats)]`` per-window statistics ("mean", "std")."""
    window = max(1, round(WINDOW_SECONDS * frames_per_second))
    hop = max(1, round(HOP_SECONDS * frames_per_second))
    rows = []
    for start in window_starts(len(frames), window, hop):
        chunk = frames[start : start + window]
        parts = [chunk.mean(axis=0) if s == "mean" else chunk.std(axis=0) for s in stats]
        rows.append(np.concatenate(parts))
    return np.stack(rows) if rows else np.zeros((0, frames.shape[1] * len(stats)))


def dct_matrix(n_in: int, n_out: int) -> np.ndarray:
    """Orthonormal DCT-II ``[n_out, n_in]`` (scipy.fft.dct(type=2, norm="ortho") as a matrix)."""
    n = np.arange(n_in)
    k = np.arange(n_out)[:, None]
    basis = np.cos(math.pi / n_in * (n + 0.5) * k) * math.sqrt(2.0 / n_in)
    basis[0] /= math.sqrt(2.0)
    return basis


def log_mel_frames(audio: np.ndarray) -> np.ndarray:
    """``[F, 128]`` natural-log mel frames of our front end (ORIGINAL.md §1)."""
    import torch

    from specdiff.audio.mel import log_mel

    with torch.no_grad():
        return log_mel(torch.from_numpy(np.ascontiguousarray(audio, dtype=np.float32))).double().numpy()


# ---------------------------------------------------------------------------------------------
# The built-in embeddings
# ---------------------------------------------------------------------------------------------


def mfcc_stats(audio: np.ndarray) -> np.ndarray:
    frames = log_mel_frames(audio)
    mfcc = frames @ dct_matrix(frames.shape[1], N_MFCC).T
    return pool_windows(mfcc, FRAMES_PER_SECOND, ("mean", "std"))


def logmel_mean(audio: np.ndarray) -> np.ndarray:
    return pool_windows(log_mel_frames(audio), FRAMES_PER_SECOND, ("mean",))


def basic_pitch_activations(audio: np.ndarray) -> np.ndarray:
    from specdiff.evaluation.transcription import BASIC_PITCH_FRAMES_PER_SECOND, basic_pitch_output

    out = basic_pitch_output(audio, SAMPLE_RATE)
    frames = np.concatenate([out["note"], out["onset"]], axis=1)
    return pool_windows(frames, BASIC_PITCH_FRAMES_PER_SECOND, ("mean",))


register_embedding(
    "mfcc-stats",
    mfcc_stats,
    "mean and std of 20 MFCCs of our log-mel front end per 0.96 s window (40 dims; offline, default)",
)
register_embedding("logmel-mean", logmel_mean, "mean of the 128 log-mel bins per 0.96 s window (128 dims; offline)")
register_embedding(
    "basic-pitch",
    basic_pitch_activations,
    "mean of basic-pitch's note and onset posteriorgrams per 0.96 s window (176 dims; needs basic-pitch)",
)
