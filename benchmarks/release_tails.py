"""How fast does a note's release fade, and a drum hit's tail? Lone sounds: the render, the model, its prior.

A fermata followed by a rest, or a drum hit with nothing after it, is where a SoundFont falls to digital silence and
a model that only knows slow decays leaves a wash (``benchmarks/results/silence.md``). This script synthesizes lone
events, each in a MIDI file of its own (velocity 90, the piece's loudest), and reports the mean log-mel (natural
log, over the 128 bins) frame by frame from the event's end (a chord: its note-off; a drum: its hit; for a chord
also its mean over the 10 frames before its end, "held") for the SoundFont's render, the model at its folder's
sampling settings and its score prior alone (the decoder's output layer zeroed,
``steps_table.model_folder(prior_alone=True)``), all seed 0:

- chords: a C major triad (C4 E4 G4) held 0.5 s, of several General MIDI programs;
- drums: one hit of several kit pieces.

Usage: python benchmarks/release_tails.py [MODEL ...] [--timbre TimGM6mb] [--frames 16] --name NAME
Writes benchmarks/results/release_tails_<name>.md.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from steps_table import model_and_prior_pipelines, write_probe_report  # noqa: E402

FRAMES_PER_SECOND = 50  # 20 ms log-mel frames (ORIGINAL.md §1)
START = 1.0  # seconds of silence before each event
CHORD_SECONDS = 0.5
#: (label, GM program or None for a drum, MIDI keys)
EVENTS = (
    ("piano chord (0)", 0, (60, 64, 67)),
    ("organ chord (19)", 19, (60, 64, 67)),
    ("guitar chord (24)", 24, (60, 64, 67)),
    ("strings chord (48)", 48, (60, 64, 67)),
    ("brass chord (61)", 61, (60, 64, 67)),
    ("bass note (33)", 33, (36,)),
    ("kick (36)", None, (36,)),
    ("snare (38)", None, (38,)),
    ("closed hat (42)", None, (42,)),
    ("pedal hat (44)", None, (44,)),
)


def event_midi(program: int | None, keys: tuple[int, ...], path: Path) -> int:
    """Write the event's MIDI file; returns the frame its tail starts on (the note-off, or the hit)."""
    import pretty_midi

    midi = pretty_midi.PrettyMIDI()
    instrument = pretty_midi.Instrument(program or 0, is_drum=program is None)
    end = START + (0.1 if program is None else CHORD_SECONDS)
    instrument.notes += [pretty_midi.Note(90, key, START, end) for key in keys]
    midi.instruments.append(instrument)
    midi.write(str(path))
    return int(round((START if program is None else end) * FRAMES_PER_SECOND))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("models", nargs="*", default=[str(ROOT / "specdiff" / "assets" / "default_model")])
    parser.add_argument("--timbre", default="TimGM6mb", help="the SoundFont of the render and the model's timbre")
    parser.add_argument("--frames", type=int, default=16, help="frames of the tail to report")
    parser.add_argument("--name", required=True)
    args = parser.parse_args()

    import torch

    from specdiff.audio.mel import log_mel
    from specdiff.constants import SAMPLE_RATE
    from specdiff.data.render import find_soundfont, render_midi
    from specdiff.evaluation.evaluate import prepare_piece

    torch.set_num_threads(2)
    lines = [
        f"| event | level | held | {' | '.join(str(f) for f in range(args.frames))} |",
        "|---" * (args.frames + 3) + "|",
    ]
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        pipes = model_and_prior_pipelines(args.models, tmp)
        for pipe in pipes.values():
            if args.timbre in pipe.timbres:
                pipe.timbre = args.timbre
        for label, program, keys in EVENTS:
            path = tmp / "event.mid"
            tail = event_midi(program, keys, path)
            audio = render_midi(path, SAMPLE_RATE, soundfont=find_soundfont(args.timbre))
            levels = {"render": log_mel(torch.from_numpy(audio.astype(np.float32))[None]).numpy()[0].mean(axis=1)}
            for name, pipe in pipes.items():
                piece = prepare_piece(path, START + 2.0, slakh_programs=pipe.slakh_programs)
                out = pipe(piece.tokenized, generator=torch.Generator().manual_seed(0), output_type="mel",
                           show_progress=False)  # fmt: skip
                levels[name] = np.asarray(out.mels[0]).mean(axis=1)
            for name, level in levels.items():
                cells = " | ".join(f"{v:.1f}" for v in level[tail : tail + args.frames])
                held = f"{level[tail - 10 : tail].mean():.1f}" if program is not None else ""
                lines.append(f"| {label} | {name} | {held} | {cells} |")
    title = f"# Release tails: mean log-mel from a lone event's end ({args.timbre}; frames of 20 ms)"
    print(write_probe_report("release_tails", args.name, title, lines, args.models))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
