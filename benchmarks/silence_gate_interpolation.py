"""Does the silence gate's ramp between frame centres matter? Linear vs geometric, same mels, per piece.

Why: the gate (``specdiff/audio/silence_gate.py``) scales each frame that comes out louder than its mel
asks for, and ramps the gain between frame centres. A loud frame's synthesis window smears it into the
rest beside it; with a linear ramp half a hop of that smear still has gain above 0.5 inside the rest's
analysis window, with a geometric ramp (linear in log gain) it falls as fast as the gains do.

For each piece the bundled model's mel is made once (its sampling.json, seed 0), inverted once by the
bundled vocoder without the gate, then gated each way (and with more passes); the rows give each piece's
silence gap (ours minus the render on the render's frames under -8 nat; pieces without such frames are left
out) and the onset F1 ratio against the TimGM6mb render, as ``specdiff evaluate`` scores them.

Usage: python benchmarks/silence_gate_interpolation.py [--split validation] [--name NAME]
Writes benchmarks/results/silence_gate_interpolation[_NAME].md (and .json).
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

from benchmarks.steps_table import midi_files  # noqa: E402
from specdiff.atomic import atomic_write_text  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results"
#: label: (ramp, passes)
SETTINGS = {"linear, 2 passes (before)": ("linear", 2), "geometric, 2 passes (default)": ("geometric", 2),
            "geometric, 4 passes": ("geometric", 4)}  # fmt: skip


def pieces_of(split: str, tmp: Path) -> list[tuple[Path, float]]:
    """The pieces (and seconds) the steps tables score: 8 (test) or 16 (validation) generated band pieces of
    20 s, and the demo corpus's pieces of 15 s that have silent frames in their render (test: monteverdi 4.10;
    validation: every piece, those without silent frames drop out of the gap)."""
    idioms = midi_files("idioms", 8 if split == "test" else 16, tmp, split)
    demo = midi_files("demo", 17, tmp, split)
    if split == "test":
        demo = [p for p in demo if p.name == "monteverdi__madrigal.4.10.mid"]
    return [(p, 20.0) for p in idioms] + [(p, 15.0) for p in demo]


def score_piece(pipe, vocoder, midi: Path, seconds: float) -> dict[str, dict[str, float]]:
    """Silence gap and onset F1s of one piece under each of :data:`SETTINGS`."""
    import torch

    from specdiff.audio.silence_gate import silence_gate
    from specdiff.evaluation import metrics
    from specdiff.evaluation.evaluate import find_reference, load_reference, prepare_piece

    piece = prepare_piece(midi, max_seconds=seconds, slakh_programs=pipe.slakh_programs)
    mel = np.asarray(pipe(piece.tokenized, generator=torch.Generator().manual_seed(0), output_type="mel",
                          progress=False).mels[0])[None].astype(np.float32)  # fmt: skip
    raw = torch.from_numpy(vocoder(mel))
    reference, _ = load_reference(midi, find_reference(midi, None), None)
    reference = reference[: int(seconds * 16000)]
    rows = {}
    for label, (ramp, passes) in SETTINGS.items():
        audio = silence_gate(raw, torch.from_numpy(mel), iterations=passes, interpolation=ramp)[0].numpy()
        ours, ref = metrics.crop_to_common_length(audio, reference)
        onsets = metrics.transcription_scores(ours, ref, piece.notes)
        rows[label] = {"silence_gap": metrics.silence_scores(ours, ref)["silence_gap"],
                       "generated_f1": onsets["generated_f1"], "reference_f1": onsets["reference_f1"]}  # fmt: skip
    return rows


def table(per_piece: dict[str, dict[str, dict[str, float]]]) -> list[str]:
    """Markdown: one row per setting, the pieces with silent frames as columns, then the pooled onset ratio."""
    silent = [name for name, rows in per_piece.items() if np.isfinite(next(iter(rows.values()))["silence_gap"])]
    lines = ["| gate | " + " | ".join(f"silence gap {name}" for name in silent) + " | onset F1 ratio (pooled) |",
             "|---" * (len(silent) + 2) + "|"]  # fmt: skip
    for label in SETTINGS:
        gaps = [f"{per_piece[name][label]['silence_gap']:+.2f}" for name in silent]
        generated = np.mean([rows[label]["generated_f1"] for rows in per_piece.values()])
        reference = np.mean([rows[label]["reference_f1"] for rows in per_piece.values()])
        lines.append(f"| {label} | " + " | ".join(gaps) + f" | {generated / reference:.3f} |")
    return lines


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default=None, help="model folder (default: the bundled model)")
    parser.add_argument("--split", choices=("test", "validation"), default="test")
    parser.add_argument("--name", default=None, help="suffix of the result files")
    args = parser.parse_args()

    import torch

    from specdiff.audio.vocoder import load_vocoder
    from specdiff.pipeline.default_model import DEFAULT_MODEL_DIR
    from specdiff.pipeline.pipeline import SpectrogramDiffusionPipeline

    torch.set_num_threads(2)
    model = args.model or str(DEFAULT_MODEL_DIR)
    pipe = SpectrogramDiffusionPipeline.from_pretrained(model, inverter=None)
    vocoder = load_vocoder(model, gate_iters=0)
    per_piece = {}
    with tempfile.TemporaryDirectory() as tmp:
        for midi, seconds in pieces_of(args.split, Path(tmp)):
            per_piece[midi.stem] = score_piece(pipe, vocoder, midi, seconds)
            print(midi.stem, {k: round(v["silence_gap"], 2) for k, v in per_piece[midi.stem].items()}, flush=True)
    stem = "silence_gate_interpolation" + (f"_{args.name}" if args.name else "") + ("" if args.split == "test"
                                                                                  else f"_{args.split}")  # fmt: skip
    header = [f"# Silence gate ramp, {args.split} pieces (`benchmarks/silence_gate_interpolation.py`)", "",
              f"Model `{Path(model).name}`, its own mels (sampling.json, seed 0), bundled vocoder; silence gap in "
              "natural-log mel (ours minus the TimGM6mb render on its frames under -8 nat), onset F1 ratio "
              "pooled over all pieces.", ""]  # fmt: skip
    atomic_write_text(RESULTS / f"{stem}.md", "\n".join(header + table(per_piece)) + "\n")
    atomic_write_text(RESULTS / f"{stem}.json", json.dumps(per_piece, indent=1) + "\n")
    print("\n".join(table(per_piece)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
