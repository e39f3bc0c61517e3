"""Bundled examples: the demo corpus's MIDI files by name, for ``specdiff synth --example NAME``.

An example's name is its file name in ``specdiff/assets/demo_midi/`` without ``.mid`` (e.g.
``bach__bwv318``), so that a newcomer hears the model before finding a MIDI file of their own.
:data:`FEATURED` is the short list ``specdiff examples`` shows first: held-out (test split) pieces
of about half a minute with varied instruments. Light: no torch, and the manifest is read only when
an example is looked up.
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass
from pathlib import Path

from specdiff.data.corpus import DEMO_MIDI_DIR, load_manifest
from specdiff.errors import SpecdiffError

#: The README's quick-start example.
DEFAULT_EXAMPLE = "bach__bwv318"

#: Shown by ``specdiff examples`` and ``specdiff synth --help``: short test-split pieces (the
#: bundled model never trained on them), solo piano first, then strings, brass, synths, a mixed band.
FEATURED: tuple[str, ...] = (
    DEFAULT_EXAMPLE,
    "bach__bwv113.8",
    "bach__bwv90.5",
    "bach__bwv297",
    "palestrina__Credo_55_d",
)

#: At most this many names are suggested for an unknown one.
MAX_SUGGESTIONS = 5


@dataclass(frozen=True)
class Example:
    """One bundled MIDI file and what its manifest entry says about it."""

    name: str
    path: Path
    composer: str
    work: str
    instruments: tuple[str, ...]
    drums: bool
    duration_s: float
    split: str

    def describe(self) -> str:
        """One line: duration, instruments (with drums), composer and work."""
        band = ", ".join(self.instruments) + (" + drums" if self.drums else "")
        return f"{self.duration_s:5.1f} s  {band}  ({self.composer}, {self.work})"


def _example(entry: dict) -> Example:
    file = entry["file"]
    return Example(
        name=file.removesuffix(".mid"),
        path=DEMO_MIDI_DIR / file,
        # Some scores' composer fields run over several lines; a listing needs one line per example.
        composer=" ".join(str(entry.get("composer", "")).split()),
        work=" ".join(str(entry.get("work", "")).split()),
        # The distinct instruments in their order of appearance (a chorale's four parts may share one).
        instruments=tuple(dict.fromkeys(entry.get("program_names", []))),
        drums=bool(entry.get("drums")),
        duration_s=float(entry.get("duration_s", 0.0)),
        split=entry.get("split", ""),
    )


def all_examples() -> list[Example]:
    """Every bundled example, in manifest order."""
    return [_example(entry) for entry in load_manifest()["files"]]


def featured_examples() -> list[Example]:
    """The :data:`FEATURED` examples, in that order."""
    return [find_example(name) for name in FEATURED]


def suggestions(query: str, names: list[str]) -> list[str]:
    """Names close to ``query``: those containing it (so ``bwv318`` or ``mozart`` find theirs), then
    those difflib finds similar (typos), at most :data:`MAX_SUGGESTIONS`."""
    lowered = query.lower()
    containing = [n for n in names if lowered and lowered in n.lower()]
    similar = difflib.get_close_matches(lowered, [n.lower() for n in names], n=MAX_SUGGESTIONS, cutoff=0.6)
    by_lower = {n.lower(): n for n in names}
    return list(dict.fromkeys([*containing, *(by_lower[s] for s in similar)]))[:MAX_SUGGESTIONS]


def find_example(name: str) -> Example:
    """The example called ``name`` (case-insensitive; a trailing ``.mid`` is allowed).

    Raises :class:`SpecdiffError` with a one-line message listing close matches when there is none.
    """
    examples = {e.name.lower(): e for e in all_examples()}
    wanted = name.strip()
    wanted = wanted[: -len(".mid")] if wanted.lower().endswith(".mid") else wanted
    found = examples.get(wanted.lower())
    if found is not None:
        return found
    close = suggestions(wanted, [e.name for e in examples.values()])
    hint = f"close matches: {', '.join(close)}; " if close else ""
    raise SpecdiffError(f"unknown example {name!r}; {hint}`specdiff examples --all` lists all {len(examples)}")
