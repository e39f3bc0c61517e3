"""specdiff.evaluation.plotting: PNGs of the requested pixel size, real content, atomic writes, and a clear
error when matplotlib is missing."""

from __future__ import annotations

import struct
import sys
from pathlib import Path

import numpy as np
import pytest

from specdiff.errors import SpecdiffError
from specdiff.evaluation import plotting
from specdiff.midi.reader import Note

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def png_size(path: Path) -> tuple[int, int]:
    """(width, height) from the PNG's IHDR chunk, read by hand (independent of matplotlib)."""
    data = path.read_bytes()
    assert data[:8] == PNG_SIGNATURE
    assert data[12:16] == b"IHDR"
    return struct.unpack(">II", data[16:24])


def pixels(path: Path) -> np.ndarray:
    image = pytest.importorskip("matplotlib.image")
    return image.imread(path)[..., :3]


def test_spectrogram_png_has_the_requested_size_and_content(tmp_path):
    pytest.importorskip("matplotlib")
    # Left half silence (ln 1e-5), right half loud (4.0): the picture must show two colours there.
    mel = np.full((100, 128), plotting.LOG_MEL_RANGE[0], np.float32)
    mel[50:] = 4.0
    path = plotting.save_spectrogram_png(mel, tmp_path / "mel.png", title="test", size=(640, 320), dpi=80)
    assert path == tmp_path / "mel.png"
    assert png_size(path) == (640, 320)
    image = pixels(path)
    # Sample one row across the middle of the plot area, inside the axes' left and right quarters.
    row = image[160]
    dark, bright = row[int(640 * 0.25)], row[int(640 * 0.6)]
    assert dark.sum() < 0.3, "silence should be drawn dark (bottom of magma)"
    assert bright.sum() > 2.0, "4.0 (top of the range) should be drawn bright"
    assert {p.name for p in tmp_path.iterdir()} == {"mel.png"}  # no temp file left


def test_spectrogram_png_accepts_torch_and_batched_input(tmp_path):
    pytest.importorskip("matplotlib")
    torch = pytest.importorskip("torch")
    mel = torch.linspace(-11.5, 4.0, 20 * 128).reshape(1, 20, 128)
    plotting.save_spectrogram_png(mel, tmp_path / "a.png", value_range=plotting.LOG_MEL_RANGE)
    assert png_size(tmp_path / "a.png") == (1000, 400)  # the default size
    with pytest.raises(ValueError, match="128"):
        plotting.save_spectrogram_png(np.zeros((20, 80)), tmp_path / "b.png")
    assert not (tmp_path / "b.png").exists()


def test_scaled_range_changes_the_colour_scale(tmp_path):
    pytest.importorskip("matplotlib")
    mel = np.zeros((50, 128), np.float32)  # 0.0: mid/upper range in log-mel, the middle in [-1, 1]
    a = plotting.save_spectrogram_png(mel, tmp_path / "a.png", size=(300, 200))
    b = plotting.save_spectrogram_png(mel, tmp_path / "b.png", size=(300, 200), value_range=plotting.SCALED_RANGE)
    assert not np.array_equal(pixels(a), pixels(b))


def test_replaces_an_existing_file_atomically(tmp_path):
    pytest.importorskip("matplotlib")
    target = tmp_path / "mel.png"
    target.write_bytes(b"old")
    plotting.save_spectrogram_png(np.zeros((10, 128)), target, size=(200, 100))
    assert target.read_bytes()[:8] == PNG_SIGNATURE
    assert {p.name for p in tmp_path.iterdir()} == {"mel.png"}


def test_unwritable_path_is_a_one_line_specdiff_error(tmp_path):
    pytest.importorskip("matplotlib")
    with pytest.raises(SpecdiffError, match="cannot write"):
        plotting.save_spectrogram_png(np.zeros((10, 128)), tmp_path / "missing" / "mel.png")
    assert list(tmp_path.iterdir()) == []


NOTES = [
    Note(pitch=60, start=0.0, end=1.0, velocity=100, program=0, is_drum=False),
    Note(pitch=67, start=0.5, end=2.0, velocity=40, program=40, is_drum=False),
    Note(pitch=36, start=1.0, end=1.0, velocity=127, program=0, is_drum=True),  # zero-length drum hit
]


def test_piano_roll_draws_one_bar_per_note():
    pytest.importorskip("matplotlib")
    from matplotlib.figure import Figure

    ax = Figure().add_subplot()
    plotting.plot_piano_roll(ax, NOTES)
    (collection,) = ax.collections
    paths = collection.get_paths()
    assert len(paths) == len(NOTES)
    for path, note in zip(paths, NOTES):
        (x0, y0), (x1, y1) = path.vertices.min(0), path.vertices.max(0)
        assert x0 == pytest.approx(note.start) and y0 < note.pitch < y1
        assert x1 == pytest.approx(max(note.end, note.start + 0.02))  # drum hits get a visible width
    colours = collection.get_facecolors()
    assert tuple(colours[2][:3]) == pytest.approx((0.45, 0.45, 0.45))  # drums grey
    assert colours[0][3] > colours[1][3]  # louder is more opaque
    low, high = ax.get_ylim()
    assert low < 36 and high > 67


def test_comparison_png_size_and_piano_roll_panel(tmp_path):
    pytest.importorskip("matplotlib")
    rng = np.random.default_rng(0)
    reference = rng.uniform(-11.5, 4.0, (150, 128)).astype(np.float32)
    generated = rng.uniform(-11.5, 4.0, (100, 128)).astype(np.float32)  # lengths may differ
    with_notes = plotting.save_comparison_png(
        tmp_path / "a.png", reference, generated, NOTES, title="song.mid", size=(600, 500), dpi=100
    )
    without = plotting.save_comparison_png(tmp_path / "b.png", reference, generated, None, size=(600, 500), dpi=100)
    empty_roll = plotting.save_comparison_png(tmp_path / "c.png", reference, generated, [], size=(600, 500), dpi=100)
    for path in (with_notes, without, empty_roll):
        assert png_size(path) == (600, 500)
        assert path.stat().st_size > 5000
    assert not np.array_equal(pixels(with_notes), pixels(without))
    # The default size, as evaluate.py calls it: positional notes, keyword title.
    plotting.save_comparison_png(tmp_path / "d.png", reference, generated, NOTES, title="x")
    assert png_size(tmp_path / "d.png") == (1200, 800)
    assert {p.name for p in tmp_path.iterdir()} == {"a.png", "b.png", "c.png", "d.png"}


def test_missing_matplotlib_is_a_clear_error(tmp_path, monkeypatch):
    # None in sys.modules makes `import matplotlib...` raise ImportError, as if it were not installed.
    for name in [m for m in sys.modules if m == "matplotlib" or m.startswith("matplotlib.")]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    monkeypatch.setitem(sys.modules, "matplotlib.figure", None)
    with pytest.raises(SpecdiffError, match="pip install matplotlib") as caught:
        plotting.save_spectrogram_png(np.zeros((10, 128)), tmp_path / "a.png")
    assert isinstance(caught.value, ImportError)  # "plot if you can" callers catch ImportError
    assert "\n" not in str(caught.value)
    with pytest.raises(plotting.PlottingUnavailable):
        plotting.save_comparison_png(tmp_path / "b.png", np.zeros((10, 128)), np.zeros((10, 128)))
    assert list(tmp_path.iterdir()) == []
