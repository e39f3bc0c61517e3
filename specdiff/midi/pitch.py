"""MIDI pitch numbers as frequencies (equal temperament, A4 = pitch 69 = 440 Hz)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def midi_to_hz(pitch: np.ndarray | Sequence[float]) -> np.ndarray:
    """Frequencies in Hz of MIDI pitch numbers (float64)."""
    return 440.0 * 2.0 ** ((np.asarray(pitch, dtype=np.float64) - 69.0) / 12.0)
