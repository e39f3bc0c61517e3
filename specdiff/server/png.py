"""A spectrogram PNG without matplotlib: numpy + zlib, for when ``specdiff.evaluation.plotting`` cannot run.

The picture is a plain heat map of the log-mel (time left to right, low frequencies at the bottom)
in an approximation of matplotlib's magma map (the colours of ``specdiff.evaluation.plotting``), on the front
end's fixed log range (ORIGINAL.md §1: ``log(1e-5)`` .. 4), so pictures of different songs compare directly.
"""

from __future__ import annotations

import os
import struct
import zlib
from pathlib import Path

import numpy as np

from specdiff.atomic import atomic_write_bytes
from specdiff.audio.mel import MAX_VALUE, MIN_VALUE

#: magma at 0, 1/4, 1/2, 3/4, 1 (matplotlib's values, rounded); linear in between.
_MAGMA = np.array([[0, 0, 4], [81, 18, 124], [183, 55, 121], [252, 137, 97], [252, 253, 191]], np.float64)
#: Longer songs are averaged down in time to at most this many columns (the page scales it anyway).
MAX_WIDTH = 2000
#: Shorter ones have their columns repeated up to at least this width, so the picture keeps a
#: wide aspect like the piano roll beside it.
MIN_WIDTH = 1000
#: Each mel bin is drawn this many pixels tall.
BIN_HEIGHT = 2


def colorize(values: np.ndarray) -> np.ndarray:
    """``values`` in [0, 1] (any shape) -> uint8 RGB ``[..., 3]``."""
    x = np.clip(np.nan_to_num(values, nan=0.0), 0.0, 1.0) * (len(_MAGMA) - 1)
    low = np.minimum(np.floor(x).astype(np.int64), len(_MAGMA) - 2)
    frac = (x - low)[..., None]
    rgb = _MAGMA[low] * (1 - frac) + _MAGMA[low + 1] * frac
    return np.round(rgb).astype(np.uint8)


def spectrogram_image(mel: np.ndarray) -> np.ndarray:
    """Log-mel ``[frames, bins]`` -> RGB image ``[bins * BIN_HEIGHT, width, 3]`` (uint8), a whole
    number of columns per frame (or frames per column), ``MIN_WIDTH <= width < 2 * MAX_WIDTH``."""
    mel = np.asarray(mel, dtype=np.float64)
    if mel.ndim != 2 or mel.shape[0] == 0:
        raise ValueError(f"expected a log-mel [frames, bins] with frames > 0, got shape {mel.shape}")
    factor = -(-mel.shape[0] // MAX_WIDTH)  # ceil
    if factor > 1:
        padded = np.pad(mel, ((0, (-mel.shape[0]) % factor), (0, 0)), mode="edge")
        mel = padded.reshape(-1, factor, mel.shape[1]).mean(axis=1)
    scaled = (mel - MIN_VALUE) / (MAX_VALUE - MIN_VALUE)
    image = colorize(scaled.T[::-1])  # bins bottom-up, time across
    repeat = -(-MIN_WIDTH // image.shape[1])  # ceil; 1 once the song is wide enough
    return np.repeat(np.repeat(image, BIN_HEIGHT, axis=0), repeat, axis=1)


def encode_png(image: np.ndarray) -> bytes:
    """An RGB uint8 image ``[height, width, 3]`` as PNG bytes (8-bit truecolour, no filtering)."""
    image = np.ascontiguousarray(image, dtype=np.uint8)
    height, width, channels = image.shape
    if channels != 3:
        raise ValueError(f"expected an RGB image [h, w, 3], got shape {image.shape}")
    rows = np.concatenate([np.zeros((height, 1), np.uint8), image.reshape(height, width * 3)], axis=1)

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(rows.tobytes(), 6))
            + chunk(b"IEND", b""))  # fmt: skip


def write_spectrogram_png(mel: np.ndarray, path: str | os.PathLike) -> Path:
    """Write the heat map of ``mel [frames, bins]`` to ``path`` atomically (temp file + rename)."""
    path = Path(path)
    data = encode_png(spectrogram_image(mel))
    return atomic_write_bytes(path, data)
