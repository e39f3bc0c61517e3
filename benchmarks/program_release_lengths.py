"""How long does each General MIDI program ring after its note-off? Renders only, per SoundFont.

Why: the additive prior's release gains (``release_gain_frames``) are per instrument *family* (``program // 8``),
but the programs of one family release very differently (a drawbar organ stops dead, a church organ rings on), so
a family's fitted gain is a compromise that leaves some programs' rests filled and cuts others' tails short. This
script measures the spread, which is what ``program_release_gains`` is for.

For each of the 128 programs: a G major triad (G3 B3 D4, velocity 90) held 1 s, rendered alone, then the number
of 20 ms frames from its note-off until the render's frame-mean log-mel (natural log, 128 bins) first falls under
-7 and under -9 (the silence metric's threshold is -8; the mel floor is -11.5). Per family the table gives each
program's two counts and the family's spread (largest minus smallest count to -9). 100: still above at 2 s; 0:
already under at the note-off.

Usage: python benchmarks/program_release_lengths.py [--soundfont TimGM6mb --soundfont FluidR3_GM]
Writes benchmarks/results/program_release_lengths.md (and .json).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from specdiff.atomic import atomic_write_text  # noqa: E402

FRAMES_PER_SECOND = 50  # 20 ms log-mel frames (ORIGINAL.md §1)
START, HELD, TAIL = 0.2, 1.0, 2.0  # seconds: silence before, chord, measured after the note-off
CHORD = (55, 59, 62)
THRESHOLDS = (-7.0, -9.0)


def release_frames(program: int, soundfont: str | None, folder: Path) -> tuple[int, ...]:
    """Frames after the chord's note-off until the render's frame-mean log-mel falls under each threshold."""
    import pretty_midi
    import torch

    from specdiff.audio.mel import log_mel
    from specdiff.data.render import find_soundfont, render_midi

    midi = pretty_midi.PrettyMIDI()
    instrument = pretty_midi.Instrument(program=program)
    instrument.notes += [pretty_midi.Note(velocity=90, pitch=p, start=START, end=START + HELD) for p in CHORD]
    midi.instruments.append(instrument)
    path = folder / f"program_{program}.mid"
    midi.write(str(path))
    audio = render_midi(path, soundfont=find_soundfont(soundfont) if soundfont else None, tail=TAIL)
    level = log_mel(torch.as_tensor(audio[None]).float())[0].numpy().mean(axis=1)
    after = level[int(round((START + HELD) * FRAMES_PER_SECOND)) :][: int(TAIL * FRAMES_PER_SECOND)]
    return tuple(int(np.argmax(after < t)) if (after < t).any() else len(after) for t in THRESHOLDS)


def table(lengths: dict[str, dict[int, tuple[int, ...]]]) -> str:
    """Markdown: per SoundFont, one row per family with each program's counts and the family's spread."""
    lines = ["# How long each General MIDI program rings after its note-off (renders)", ""]
    lines += [f"G major triad (G3 B3 D4, velocity 90) held {HELD:g} s, rendered alone; frames (20 ms) from the "
              f"note-off until the frame-mean log-mel falls under {THRESHOLDS[0]:g} / {THRESHOLDS[1]:g} nat "
              f"({int(TAIL * FRAMES_PER_SECOND)}: still above after {TAIL:g} s; 0: already under at the note-off, "
              "a sound that decays within the held second). Made by "
              "benchmarks/program_release_lengths.py.", ""]  # fmt: skip
    for soundfont, per_program in lengths.items():
        lines += [f"## {soundfont}", "", "| family | programs: frames to -7 / -9 | spread to -9 |", "|---|---|---|"]
        spreads = []
        for family in range(16):
            programs = range(8 * family, 8 * family + 8)
            cells = " ".join(f"{p}: {per_program[p][0]}/{per_program[p][1]}" for p in programs)
            to_nine = [per_program[p][1] for p in programs]
            spreads.append(max(to_nine) - min(to_nine))
            lines.append(f"| {family} | {cells} | {spreads[-1]} |")
        lines += ["", f"Median spread within a family: {float(np.median(spreads)):g} frames.", ""]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--soundfont", action="append", help="SoundFont name or path (repeatable; default TimGM6mb)")
    parser.add_argument("--name", default="program_release_lengths")
    args = parser.parse_args(argv)
    lengths: dict[str, dict[int, tuple[int, ...]]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for soundfont in args.soundfont or ["TimGM6mb"]:
            lengths[soundfont] = {p: release_frames(p, soundfont, Path(tmp)) for p in range(128)}
    results = ROOT / "benchmarks" / "results"
    atomic_write_text(results / f"{args.name}.md", table(lengths))
    atomic_write_text(results / f"{args.name}.json", json.dumps(lengths, indent=1))
    print(table(lengths))


if __name__ == "__main__":
    main()
