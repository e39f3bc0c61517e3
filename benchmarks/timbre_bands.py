"""Does each timbre sound like its own SoundFont? Band levels of the model against each timbre's render.

A model conditioned on several SoundFonts (``timbres``) should draw TimGM6mb's piano when asked for TimGM6mb and
FluidR3_GM's when asked for FluidR3_GM. Where the additive prior's colours are shared by the timbres, each
program's spectrum is fitted to both SoundFonts at once and lands between them; this script shows where.

For each MIDI file and each timbre it synthesizes the first ``--seconds`` with the model (its folder's sampling
settings, seed 0) and with its score prior alone (``steps_table.model_folder(prior_alone=True)``), renders the
file with that timbre's SoundFont, and reports per group of 32 mel bins (low to high) the difference of the
power-mean log-mel (natural log), ours minus the render's, and the log-mel L1 on the frames where the render is
above -8 nat: a timbre blended with another shows offsets of opposite sign on the two timbres.

Usage: python benchmarks/timbre_bands.py [MODEL ...] [--midi FILE ...] [--seconds 15] --name NAME
(default MIDI: lone piano, organ, strings and brass lines and chords made here, and three demo-corpus test files).
Writes benchmarks/results/timbre_bands_<name>.md.
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

BAND_WIDTH = 32
LOUD_NAT = -8.0
#: (label, GM program) of the lines and chords made here: a melody, then four-note chords, 0.5 s per step.
MADE = (("piano (0)", 0), ("organ (19)", 19), ("guitar (24)", 24), ("strings (48)", 48), ("brass (61)", 61))
DEMO_FILES = ("mozart__k458__movement3.mid", "monteverdi__madrigal.3.7.mid", "bach__bwv413.mid")


def made_midi(program: int, path: Path) -> None:
    """A line of ten notes, then the same steps as four-note chords, velocity 90, 0.5 s each."""
    import pretty_midi

    midi = pretty_midi.PrettyMIDI()
    instrument = pretty_midi.Instrument(program)
    line = [62, 64, 66, 67, 69, 67, 66, 64, 62, 64]
    for i, pitch in enumerate(line):
        instrument.notes.append(pretty_midi.Note(90, pitch, 0.5 * i, 0.5 * i + 0.5))
        for key in (pitch - 12, pitch - 5, pitch, pitch + 4):
            instrument.notes.append(pretty_midi.Note(90, key, 5.0 + 0.5 * i, 5.5 + 0.5 * i))
    midi.instruments.append(instrument)
    midi.write(str(path))


def band_offsets(ours: np.ndarray, render: np.ndarray) -> tuple[list[float], float]:
    """Per band group, power-mean log-mel (nat) ours - render, and the L1 on the render's loud frames."""
    frames = min(len(ours), len(render))
    ours, render = ours[:frames], render[:frames]

    def level(mel: np.ndarray, start: int) -> float:
        return float(np.log(np.exp(2.0 * mel[:, start : start + BAND_WIDTH]).mean()) / 2.0)

    offsets = [level(ours, k) - level(render, k) for k in range(0, ours.shape[1], BAND_WIDTH)]
    loud = render.mean(axis=1) > LOUD_NAT
    return offsets, float(np.abs(ours - render)[loud].mean()) if loud.any() else float("nan")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("models", nargs="*", default=[str(ROOT / "specdiff" / "assets" / "default_model")])
    parser.add_argument("--midi", nargs="*", default=None, help="MIDI files (default: made lines + demo files)")
    parser.add_argument("--seconds", type=float, default=15.0)
    parser.add_argument("--name", required=True)
    args = parser.parse_args()

    import torch

    from specdiff.audio.mel import log_mel
    from specdiff.constants import SAMPLE_RATE
    from specdiff.data.corpus import DEMO_MIDI_DIR
    from specdiff.data.render import find_soundfont, render_midi
    from specdiff.evaluation.evaluate import prepare_piece

    torch.set_num_threads(2)
    header = "| music | timbre | model | " + " | ".join(f"bins {k}-{k + BAND_WIDTH - 1}" for k in range(0, 128, 32))
    lines = [header + " | L1 |", "|---" * 8 + "|"]
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        files = [(Path(f).stem, Path(f)) for f in args.midi] if args.midi else []
        if args.midi is None:
            for label, program in MADE:
                made_midi(program, tmp / f"{program}.mid")
                files.append((f"{label}: line, then chords", tmp / f"{program}.mid"))
            files += [(name.removesuffix(".mid"), DEMO_MIDI_DIR / name) for name in DEMO_FILES]
        pipes = model_and_prior_pipelines(args.models, tmp)
        timbres = next(iter(pipes.values())).timbres or [None]
        for label, path in files:
            for timbre in timbres:
                audio = render_midi(path, SAMPLE_RATE, soundfont=find_soundfont(timbre) if timbre else None)
                render = log_mel(torch.from_numpy(audio[: int(args.seconds * SAMPLE_RATE)].astype(np.float32))[None])
                for name, pipe in pipes.items():
                    pipe.timbre = timbre
                    piece = prepare_piece(path, args.seconds, slakh_programs=pipe.slakh_programs)
                    out = pipe(piece.tokenized, generator=torch.Generator().manual_seed(0), output_type="mel",
                               show_progress=False)  # fmt: skip
                    offsets, l1 = band_offsets(np.asarray(out.mels[0]), render.numpy()[0])
                    cells = " | ".join(f"{v:+.2f}" for v in offsets)
                    lines.append(f"| {label} | {timbre or 'default'} | {name} | {cells} | {l1:.3f} |")
                    print(lines[-1], flush=True)
    title = "# Band levels per timbre: ours - the timbre's own render (power-mean log-mel, nat; L1 on loud frames)"
    print(write_probe_report("timbre_bands", args.name, title, lines, args.models))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
