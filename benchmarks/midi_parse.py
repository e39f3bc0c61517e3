"""Parse time of pathological MIDI files (the service probe's files, full sizes), CLI and server.

    python benchmarks/midi_parse.py

The files are written by the generators in ``tests/conftest.py`` (the same ones the tests use at
small sizes): a sustain-pedal storm over held notes, many short notes under one pedal press, and
notes stacked on a few keys with one press. For each, it records the size, notes and pedal events,
and the wall time of

- ``specdiff synth``'s path (``midi_to_segments`` with the library's limits), and
- the service's path (``specdiff.server.synth.read_midi`` with ``ServeConfig``'s limits: 30k notes,
  200k events, a 5 s wall-clock backstop), which must parse or refuse within 1 s.

Before: the probe's measurements of the old parser (the issue's numbers; the old module took
minutes per file, so it is not re-run here). Writes ``results/midi_parse.md`` and ``.json``.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT))

from conftest import held_under_one_pedal_midi, pedal_storm_midi, stacked_notes_one_press_midi  # noqa: E402

from specdiff.errors import MidiError  # noqa: E402
from specdiff.midi.tokenizer import midi_to_segments  # noqa: E402
from specdiff.server.config import ServeConfig  # noqa: E402
from specdiff.server.synth import read_midi  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results"

#: (name, bytes, notes, pedal events, the probe's seconds with the old parser or None)
CASES = [
    ("pedal storm", lambda: pedal_storm_midi(29_000, 615_000), 29_000, 615_002, 350.0),
    ("stacked notes, one press", lambda: stacked_notes_one_press_midi(177_000), 177_000, 2, 60.0),
    ("short notes under one pedal", lambda: held_under_one_pedal_midi(38_500), 38_500, 2, 4.4),
]


def timed(function) -> tuple[float, str]:
    started = time.perf_counter()
    try:
        function()
        outcome = "parsed"
    except MidiError as err:
        outcome = "refused: " + str(err).split(": ", 1)[-1][:70]
    return time.perf_counter() - started, outcome


def main() -> int:
    config = ServeConfig()
    limits = (config.max_midi_seconds, config.max_upload_bytes, config.max_notes, config.max_events)
    rows = []
    for name, make, notes, pedal, before in CASES:
        data = make()
        cli_s, cli_outcome = timed(lambda data=data: midi_to_segments(data, max_seconds=1e9))
        server_s, server_outcome = timed(lambda data=data: read_midi(data, "upload.mid", *limits))
        rows.append(dict(file=name, bytes=len(data), notes=notes, pedal_events=pedal, before_s=before))
        rows[-1].update(cli_s=round(cli_s, 3), cli=cli_outcome, server_s=round(server_s, 3), server=server_outcome)
        print(rows[-1], flush=True)
    lines = [
        "# Parse time of pathological MIDI files",
        "",
        "`python benchmarks/midi_parse.py`, one run, on the 2-core CI-class machine (seconds of wall time).",
        "Before: the service probe's measurements of the old parser (cost notes x pedal events).",
        "CLI: `midi_to_segments` with the library's limits; server: `read_midi` with `ServeConfig`'s",
        "(30k notes, 200k events of any kind, 5 s wall-clock backstop).",
        "",
        "| file | size | notes | pedal events | before (s) | CLI (s) | CLI outcome | server (s) | server outcome |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        size = f"{r['bytes'] / 1e6:.2f} MB"
        lines.append(
            f"| {r['file']} | {size} | {r['notes']} | {r['pedal_events']} | {r['before_s']:g} | "
            f"{r['cli_s']:.2f} | {r['cli']} | {r['server_s']:.2f} | {r['server']} |"
        )
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "midi_parse.md").write_text("\n".join(lines) + "\n")
    (RESULTS / "midi_parse.json").write_text(json.dumps(rows, indent=2) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
