"""Pictures of spectrograms and piano rolls as PNG files (matplotlib, an optional dependency).

matplotlib is imported only when a picture is drawn, and only through its object-oriented API
(``matplotlib.figure.Figure``, which renders PNGs with the Agg canvas): no pyplot, so nothing here
changes the caller's backend or global figure state, and it works on machines with no display.
Without matplotlib every function raises :class:`PlottingUnavailable`, a ``SpecdiffError`` (the CLI
prints it as one line) that is also an ``ImportError`` (so "plot if you can" callers can skip).

Spectrograms are ``[frames, 128]`` log-mel arrays at 50 frames/s (ORIGINAL.md §1). By default the colour
scale spans the natural-log feature range [ln 1e-5, 4.0]; pass ``value_range=(-1, 1)`` for features
already scaled into the diffusion range (ORIGINAL.md §1.1).
"""

from __future__ import annotations

import io
import math
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from specdiff.atomic import atomic_write_bytes
from specdiff.constants import FRAMES_PER_SECOND, N_MELS
from specdiff.errors import SpecdiffError

#: The natural-log feature range of ORIGINAL.md §1: silence (ln 1e-5) to "largest value for most examples".
LOG_MEL_RANGE = (math.log(1e-5), 4.0)
#: The diffusion range of ORIGINAL.md §1.1.
SCALED_RANGE = (-1.0, 1.0)
COLORMAP = "magma"
DEFAULT_DPI = 100


class PlottingUnavailable(SpecdiffError, ImportError):
    """matplotlib is not installed."""


def _figure(width_px: int, height_px: int, dpi: int) -> Any:
    """A pyplot-free matplotlib Figure of exactly ``width_px`` x ``height_px`` pixels at ``dpi``."""
    try:
        from matplotlib.figure import Figure
    except ImportError:
        raise PlottingUnavailable(
            "drawing pictures needs matplotlib: pip install matplotlib (or specdiff[plot])"
        ) from None
    if width_px < 1 or height_px < 1 or dpi < 1:
        raise ValueError(f"picture size must be positive, got {width_px}x{height_px} px at {dpi} dpi")
    return Figure(figsize=(width_px / dpi, height_px / dpi), dpi=dpi, layout="constrained")


def _as_mel(mel: Any, what: str = "mel") -> np.ndarray:
    """``[frames, 128]`` float array from numpy or torch, ``[frames, 128]`` or ``[1, frames, 128]``."""
    if hasattr(mel, "detach"):  # a torch tensor, without importing torch here
        mel = mel.detach().float().cpu().numpy()
    array = np.asarray(mel, dtype=np.float32)
    while array.ndim > 2 and array.shape[0] == 1:
        array = array[0]
    if array.ndim != 2 or array.shape[1] != N_MELS:
        raise ValueError(f"{what}: expected a log-mel spectrogram [frames, {N_MELS}], got shape {list(np.shape(mel))}")
    return array


def plot_spectrogram(
    ax: Any, mel: Any, value_range: tuple[float, float] = LOG_MEL_RANGE, frame_rate: float = FRAMES_PER_SECOND
) -> Any:
    """Draw a ``[frames, 128]`` spectrogram on a matplotlib Axes: time (s) across, mel bin up.

    Returns the image (for a colour bar). Non-finite values are drawn as the bottom of the range.
    """
    array = _as_mel(mel)
    low, high = value_range
    array = np.nan_to_num(array, nan=low, posinf=high, neginf=low)
    seconds = max(len(array), 1) / frame_rate
    image = ax.imshow(
        array.T,
        origin="lower",
        aspect="auto",
        interpolation="nearest",
        cmap=COLORMAP,
        vmin=low,
        vmax=high,
        extent=(0.0, seconds, 0, N_MELS),
    )
    ax.set_ylabel("mel bin")
    return image


def plot_piano_roll(ax: Any, notes: Sequence[Any]) -> None:
    """Draw notes (objects with ``pitch``, ``start``, ``end``, ``velocity``, ``program``, ``is_drum``,
    e.g. :class:`specdiff.midi.tokenizer.Note`) as bars: time (s) across, MIDI pitch up.

    One colour per General MIDI instrument family (program // 8), drums grey; louder notes are more
    opaque. Drum hits (which have no real duration) are drawn at least 20 ms long so they show.
    """
    from matplotlib import colormaps
    from matplotlib.collections import PolyCollection

    palette = colormaps["tab20"]
    polygons, colours = [], []
    for note in notes:
        start = float(note.start)
        end = max(float(note.end), start + 0.02)
        low, high = note.pitch - 0.4, note.pitch + 0.4
        polygons.append([(start, low), (end, low), (end, high), (start, high)])
        rgb = (0.45, 0.45, 0.45) if getattr(note, "is_drum", False) else palette((int(note.program) // 8) % 20)[:3]
        colours.append((*rgb, 0.35 + 0.65 * min(max(int(note.velocity), 0), 127) / 127))
    if polygons:
        ax.add_collection(PolyCollection(polygons, facecolors=colours, edgecolors="none"))
        pitches = [n.pitch for n in notes]
        ax.set_ylim(min(pitches) - 2, max(pitches) + 2)
        ax.set_xlim(0.0, max(max(float(n.end), float(n.start) + 0.02) for n in notes))
    else:
        ax.set_ylim(0, 128)
        ax.text(0.5, 0.5, "no notes", transform=ax.transAxes, ha="center", va="center")
    ax.set_ylabel("MIDI pitch")


def save_spectrogram_png(
    mel: Any,
    path: str | os.PathLike,
    title: str | None = None,
    *,
    value_range: tuple[float, float] = LOG_MEL_RANGE,
    frame_rate: float = FRAMES_PER_SECOND,
    size: tuple[int, int] = (1000, 400),
    dpi: int = DEFAULT_DPI,
) -> Path:
    """Save a log-mel spectrogram ``[frames, 128]`` as a PNG of exactly ``size`` = (width, height) pixels.

    ``value_range`` is the colour scale (default: the natural-log feature range of ORIGINAL.md §1; use
    :data:`SCALED_RANGE` for [-1, 1] diffusion features). Written atomically; returns the path.
    """
    array = _as_mel(mel)
    fig = _figure(*size, dpi)
    ax = fig.add_subplot()
    image = plot_spectrogram(ax, array, value_range, frame_rate)
    ax.set_xlabel("time (s)")
    fig.colorbar(image, ax=ax, label="log magnitude" if value_range == LOG_MEL_RANGE else None)
    if title:
        ax.set_title(title)
    return _save_figure(fig, path)


def save_comparison_png(
    path: str | os.PathLike,
    reference_mel: Any,
    generated_mel: Any,
    notes: Sequence[Any] | None = None,
    title: str | None = None,
    titles: tuple[str, str] = ("reference", "generated"),
    *,
    value_range: tuple[float, float] = LOG_MEL_RANGE,
    frame_rate: float = FRAMES_PER_SECOND,
    size: tuple[int, int] = (1200, 800),
    dpi: int = DEFAULT_DPI,
) -> Path:
    """Reference and generated spectrograms stacked on one time axis, plus a piano roll of ``notes``.

    ``title`` heads the figure; ``titles`` names the two spectrogram panels. The spectrograms may
    differ in length. Without ``notes`` (None) the piano-roll panel is left out; an empty list draws
    an empty roll. The PNG is exactly ``size`` pixels and written atomically; returns the path.
    """
    panels = [
        (_as_mel(reference_mel, "reference_mel"), titles[0]),
        (_as_mel(generated_mel, "generated_mel"), titles[1]),
    ]
    fig = _figure(*size, dpi)
    rows = len(panels) + (notes is not None)
    axes = fig.subplots(rows, 1, sharex=True, squeeze=False)[:, 0]
    for ax, (array, name) in zip(axes, panels):
        image = plot_spectrogram(ax, array, value_range, frame_rate)
        ax.set_title(name, fontsize="medium")
    if notes is not None:
        plot_piano_roll(axes[-1], list(notes))
        axes[-1].set_title("notes", fontsize="medium")
    seconds = max(len(array) for array, _ in panels) / frame_rate
    if notes:
        seconds = max(seconds, max(float(n.end) for n in notes))
    axes[-1].set_xlim(0.0, max(seconds, 1.0 / frame_rate))
    axes[-1].set_xlabel("time (s)")
    fig.colorbar(image, ax=list(axes), label="log magnitude" if value_range == LOG_MEL_RANGE else None)
    if title:
        fig.suptitle(title)
    return _save_figure(fig, path)


def _save_figure(fig: Any, path: str | os.PathLike) -> Path:
    """Render ``fig`` to PNG in memory, then write it atomically (temp file + ``os.replace``).

    A file that cannot be written raises ``SpecdiffError`` ("cannot write PATH: reason").
    Rendering first means a drawing error never leaves a temp file; the figure keeps its own size
    (no tight bounding box), so the PNG is exactly the size the figure was made with.
    """
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png")
    path = Path(path)
    if not path.parent.is_dir():  # this writer never creates folders
        raise SpecdiffError(f"cannot write {path}: No such file or directory")
    try:
        atomic_write_bytes(path, buffer.getvalue())
    except OSError as err:
        raise SpecdiffError(f"cannot write {path}: {err.strerror or err}") from None
    return path


__all__ = [
    "LOG_MEL_RANGE", "PlottingUnavailable", "SCALED_RANGE", "plot_piano_roll", "plot_spectrogram",
    "save_comparison_png", "save_spectrogram_png",
]  # fmt: skip
