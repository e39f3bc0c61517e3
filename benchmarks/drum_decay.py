"""How fast does a drum hit fade? Mean log-mel after drum hits: the render, the model, its score prior alone.

On one held-out piece (default: idioms test ``idioms_0130``, the piece whose gaps between drum hits make
the whole silence gap of the idioms test table), frames where no tonal note sounds (a tonal note's
frames and 0.2 s after it are left out) are grouped by the frames since the last onset, and each group's
mean log-mel (over the 128 bins, natural log) is reported for the TimGM6mb render, the model at its
folder's sampling settings, the model unguided and the score prior alone (the decoder's output layer
zeroed, ``steps_table.model_folder(prior_alone=True)``), all seed 0.

Why: the score roll's drum decay feature is ``exp(-t / 5 frames)`` (``specdiff.midi.score_roll``) and the
additive prior weights each template's *power* by it, so its log-mel falls by 0.1 nat per frame; a
TimGM6mb drum hit falls about ten times faster.

Usage: python benchmarks/drum_decay.py [MODEL] [--piece idioms_0130.mid] [--seconds 20] --name NAME
Writes benchmarks/results/drum_decay_<name>.md.
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

from steps_table import midi_files, model_folder  # noqa: E402

from specdiff.atomic import atomic_write_text  # noqa: E402

FRAMES_PER_SECOND = 50  # 20 ms log-mel frames (ORIGINAL.md §1)
GROUPS = ((0, 2), (2, 5), (5, 10), (10, 15), (15, 25), (25, 10**6))
TONAL_TAIL_FRAMES = 10


def frames_since_onset(onsets: list[float], frames: int) -> np.ndarray:
    """For each frame, the frames since the latest onset at or before it (large before the first)."""
    since = np.full(frames, 10**6)
    for t in onsets:
        start = int(round(t * FRAMES_PER_SECOND))
        if start < frames:
            since[start:] = np.minimum(since[start:], np.arange(frames - start))
    return since


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("model", nargs="?", default=str(ROOT / "specdiff" / "assets" / "default_model"))
    parser.add_argument("--piece", default="idioms_0130.mid", help="a file of the idioms test split")
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--name", required=True)
    args = parser.parse_args()

    import pretty_midi
    import torch

    from specdiff.audio.mel import log_mel
    from specdiff.constants import SAMPLE_RATE
    from specdiff.data.render import find_soundfont, render_midi
    from specdiff.evaluation.evaluate import prepare_piece
    from specdiff.pipeline.pipeline import SpectrogramDiffusionPipeline

    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        path = next(p for p in midi_files("idioms", 10**6, tmp, "test") if p.name == args.piece)
        midi = pretty_midi.PrettyMIDI(str(path))
        frames = int(args.seconds * FRAMES_PER_SECOND)
        onsets = sorted(n.start for inst in midi.instruments for n in inst.notes if n.start < args.seconds)
        tonal = np.zeros(frames, bool)
        for inst in midi.instruments:
            for n in [] if inst.is_drum else inst.notes:
                tonal[int(n.start * FRAMES_PER_SECOND) : int(n.end * FRAMES_PER_SECOND) + TONAL_TAIL_FRAMES] = True
        audio = render_midi(path, SAMPLE_RATE, soundfont=find_soundfont("TimGM6mb"))[: int(args.seconds * SAMPLE_RATE)]
        mels = {"TimGM6mb render": log_mel(torch.from_numpy(audio.astype(np.float32))[None]).numpy()[0]}
        for label, prior_alone, guidance in (
            ("model (its sampling.json)", False, None),
            ("model, guidance 1", False, 1.0),
            ("score prior alone, guidance 1", True, 1.0),
        ):
            folder = model_folder(args.model, tmp, prior_alone)
            pipe = SpectrogramDiffusionPipeline.from_pretrained(folder, inverter=None)
            piece = prepare_piece(path, args.seconds, slakh_programs=pipe.slakh_programs)
            out = pipe(piece.tokenized, generator=torch.Generator().manual_seed(0), guidance_scale=guidance,
                       output_type="mel", show_progress=False)  # fmt: skip
            mels[label] = np.asarray(out.mels[0])
    frames = min([frames, *(len(m) for m in mels.values())])
    since, level = frames_since_onset(onsets, frames), {k: m[:frames].mean(axis=1) for k, m in mels.items()}
    lines = ["| frames since the last onset | frames | " + " | ".join(mels) + " |", "|---" * (2 + len(mels)) + "|"]
    for lo, hi in GROUPS:
        chosen = ~tonal[:frames] & (since >= lo) & (since < hi)
        if chosen.any():
            span = f"{lo}-{hi - 1}" if hi < 10**6 else f"{lo}+"
            lines.append(
                f"| {span} | {int(chosen.sum())} | "
                + " | ".join(f"{v[chosen].mean():.2f}" for v in level.values())
                + " |"
            )
    title = (
        "# Drum decays: mean log-mel after the last onset, no tonal note sounding"
        f" ({args.piece}, first {args.seconds:g} s)"
    )
    text = "\n".join(
        [title, "", *lines, "", "Made by `benchmarks/drum_decay.py`; natural-log mel, mean over the 128 bins."]
    )
    out_path = ROOT / "benchmarks" / "results" / f"drum_decay_{args.name}.md"
    atomic_write_text(out_path, text + "\n")
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
