"""The bundled demo corpus: small MIDI files made offline from music21's corpus.

``tools/build_demo_corpus.py`` made them (music21 is not needed at run time): Bach chorales,
string-quartet movements and Renaissance/medieval polyphony with varied General MIDI programs,
some with a generated drum track on channel 10. ``manifest.json`` records each file's source
work, programs and its fixed split (train / validation / test, assigned by work, so the
movements of one quartet never straddle splits).
"""

from __future__ import annotations

import json
from functools import lru_cache
from pathlib import Path

from specdiff.errors import SpecdiffError

DEMO_MIDI_DIR = Path(__file__).resolve().parents[1] / "assets" / "demo_midi"
SPLITS = ("train", "validation", "test")


@lru_cache(maxsize=1)
def load_manifest() -> dict:
    """The demo corpus manifest: ``{"files": [{"file", "source", "work", "split", "programs",
    "drums", "duration_s", ...}], ...}``."""
    path = DEMO_MIDI_DIR / "manifest.json"
    if not path.is_file():
        raise SpecdiffError(f"the demo corpus is missing ({path}); reinstall specdiff")
    return json.loads(path.read_text(encoding="utf-8"))


def demo_midi_files(split: str | None = None) -> list[Path]:
    """Paths of the demo MIDI files, all of them or those of one split, in manifest order."""
    if split is not None and split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; choose from {SPLITS}")
    return [DEMO_MIDI_DIR / e["file"] for e in load_manifest()["files"]
            if split is None or e["split"] == split]  # fmt: skip


def split_of(path: str | Path) -> str:
    """The split of a demo MIDI file (by file name)."""
    name = Path(path).name
    for entry in load_manifest()["files"]:
        if entry["file"] == name:
            return entry["split"]
    raise KeyError(f"{name} is not in the demo corpus")
