"""Does a segment's level come from its context? Per-segment level of a model against the render.

For each held-out piece (the generated band music's or the demo corpus's ``--split``, first
``--max-seconds``), every 5.12 s segment is synthesized three ways with one DDIM step (guidance 1, seed 0):

- ``chain``: as the pipeline does, each segment's context is the model's own previous segment;
- ``alone``: every segment with the empty context of a first segment;
- ``teacher``: each segment's context is the *render's* previous segment (what training shows).

and its power (dB, from the log-mel: ``10 log10 mean exp(2 x)``) is compared with the render's over
the same frames. If ``teacher`` rows sit far from 0 dB, the model does not take its level from the
context even when the context is right; if ``chain`` drifts while ``teacher`` does not, the drift is
exposure to its own output. Also printed: the mean absolute offset per way, and the *within-song spread*
of the chain's offsets (their standard deviation about the piece's mean, segments after the first): a
level error that is the same all through a piece is a louder or quieter song; one that changes from
segment to segment is a level jump.

``--context-gain DB`` adds two ways, ``teacher +DB`` and ``teacher -DB`` (the render's previous segment
made louder / quieter by DB, silent frames kept), and the **context response**: how many dB the
segment's level moves per dB of its context's, mean over segments after the first (1: the model takes
the song's level from the context; 0: from the notes alone).

Usage:
  python benchmarks/segment_levels.py MODEL [MODEL ...] [--set demo] [--split validation] [--pieces 8]
      [--max-seconds 20] [--context-gain 4] --name NAME
MODEL: a pipeline folder or a training checkpoint (exported on the fly with the bundled vocoder).
Writes benchmarks/results/segment_levels_<name>.md.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from specdiff.atomic import atomic_write_text  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results"
WAYS = ("chain", "alone", "teacher")
#: Context frames at or under this natural-log mel are silence: a context gain leaves them as they are.
SILENT_NAT = -11.0


def power_db(log_mel: torch.Tensor) -> float:
    return float(10 * np.log10(np.mean(np.exp(2 * log_mel.double().numpy())) + 1e-20))


@torch.no_grad()
def segment_mels(pipe, tokens: list, reference_mel: torch.Tensor, way: str, notes=None) -> list[torch.Tensor]:
    """The log-mel ``[256, 128]`` of every segment, synthesized ``way`` (``"teacher +4"``: the teacher's
    context 4 dB louder); ``notes`` (the piece's, with velocities) fill the velocity columns of a
    velocity-layout decoder as the pipeline does."""
    from specdiff.audio.mel import scale_features, scale_to_features
    from specdiff.pipeline.inputs import segment_tensor, segment_velocity
    from specdiff.sampling import sampler as samplers

    velocity = segment_velocity(notes, len(tokens), 256) if notes is not None else None

    sampler = pipe._sampler(pipe.sampling_for("ddim", 1, 1.0))
    vocab, max_length = pipe.notes_encoder.config["vocab_size"], pipe.notes_encoder.config["max_length"]
    mels: list[torch.Tensor] = []
    for i, segment in enumerate(tokens):
        context, mask = torch.zeros(1, 256, 128), torch.zeros(1, 256, dtype=torch.bool)
        previous = None
        if i > 0 and way != "alone":
            previous = mels[-1] if way == "chain" else reference_mel[(i - 1) * 256 : i * 256]
            if way.startswith("teacher "):  # the render's previous segment at another level; silence kept
                gain = float(way.split()[1]) * np.log(10.0) / 20.0
                previous = torch.where(previous > SILENT_NAT, previous + gain, previous)
        if previous is not None:
            context[0, : len(previous)], mask[0, : len(previous)] = previous, True
        scaled = scale_features(context, clip=True)
        row = segment_tensor(segment, i, vocab, max_length)
        encodings = pipe.encode_batch([row], scaled, mask)
        roll = pipe._score_roll([row], [None if velocity is None else velocity[i]], scaled, mask)
        denoise = samplers.GuidedDenoiser(pipe.decoder, encodings, 1.0, {}, score_roll=roll,
                                          timbre=pipe._timbre_indices(1))  # fmt: skip
        noise = samplers.randn((1, 256, 128), torch.Generator().manual_seed(i), "cpu", torch.float32)
        x = samplers.sample_loop(sampler, denoise, noise, 1, None, None, None)
        mels.append(scale_to_features(x.float().clamp(-1.0, 1.0))[0])
    return mels


def piece_offsets(pipe, path: Path, reference: torch.Tensor, ways: tuple[str, ...], max_seconds: float) -> dict:
    """{way: [ours - render, dB, per segment of at least 64 frames]} for one piece."""
    from specdiff.evaluation.evaluate import prepare_piece

    piece = prepare_piece(path, max_seconds, slakh_programs=pipe.slakh_programs)
    tokens = pipe._song(piece.tokenized)[0]
    found = {}
    for way in ways:
        mels = segment_mels(pipe, tokens, reference, way, getattr(piece.tokenized, "notes", None))
        renders = [reference[i * 256 : (i + 1) * 256] for i in range(len(mels))]
        found[way] = [power_db(mel[: len(ref)]) - power_db(ref) for mel, ref in zip(mels, renders) if len(ref) >= 64]
    return found


def summary_row(label: str, offsets: dict[str, list[list[float]]], gain: float) -> str:
    """Mean absolute offset per way, the chain's within-song spread and (with a gain) the context response."""
    cells = [f"{np.mean(np.abs(np.concatenate(offsets[w]))):.1f}" for w in WAYS]
    spread = [np.std(np.array(p[1:]) - np.mean(p[1:])) for p in offsets["chain"] if len(p) > 2]
    cells.append(f"{np.mean(spread):.2f}")
    if gain:
        louder, quieter = offsets[f"teacher +{gain:g}"], offsets[f"teacher -{gain:g}"]
        moves = [(a - b) / (2 * gain) for up, down in zip(louder, quieter) for a, b in zip(up[1:], down[1:])]
        cells.append(f"{np.mean(moves):.2f}")
    return f"| {label} | **summary** | " + " | ".join(cells) + " |"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("models", nargs="+")
    parser.add_argument("--set", dest="which", choices=["idioms", "demo"], default="idioms")
    parser.add_argument("--split", choices=["validation", "test"], default="test")
    parser.add_argument("--pieces", type=int, default=8)
    parser.add_argument("--max-seconds", type=float, default=20.0)
    parser.add_argument("--context-gain", type=float, default=0.0, metavar="DB")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--name", required=True)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    from steps_table import midi_files, model_folder, run_label

    from specdiff.audio.mel import log_mel
    from specdiff.constants import SAMPLE_RATE
    from specdiff.data.render import render_midi
    from specdiff.pipeline.pipeline import SpectrogramDiffusionPipeline

    gain = args.context_gain
    ways = WAYS + ((f"teacher +{gain:g}", f"teacher -{gain:g}") if gain else ())
    header = "| model | piece | " + " | ".join(f"{w} (dB per segment)" for w in ways) + " |"
    lines = [header, "|---|---|" + "---|" * len(ways)]
    columns = [f"{w}: mean abs offset" for w in WAYS] + ["chain: within-song spread"]
    columns += ["context response (dB per dB)"] if gain else []
    summary = ["| model | | " + " | ".join(columns) + " |", "|---|---|" + "---|" * len(columns)]
    started = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        files = midi_files(args.which, args.pieces, tmp, args.split)
        references = {}
        for path in files:
            audio = render_midi(path, SAMPLE_RATE)[: int(args.max_seconds * SAMPLE_RATE)]
            references[path] = log_mel(torch.from_numpy(np.ascontiguousarray(audio, np.float32)))
        for model in args.models:
            pipe = SpectrogramDiffusionPipeline.from_pretrained(model_folder(model, tmp), inverter=None)
            label = run_label(Path(model))
            offsets: dict[str, list[list[float]]] = {w: [] for w in ways}
            for path in files:
                found = piece_offsets(pipe, path, references[path], ways, args.max_seconds)
                for way, row in found.items():
                    offsets[way].append(row)
                lines.append(f"| {label} | {path.stem} | "
                             + " | ".join(" ".join(f"{v:+.1f}" for v in found[w]) for w in ways) + " |")  # fmt: skip
                print(lines[-1], flush=True)
            summary.append(summary_row(label, offsets, gain))
            print(summary[-1], flush=True)
    title = (f"# Segment levels against the render: {args.which} ({args.split}), {len(files)} pieces, "
             f"first {args.max_seconds:g} s, one DDIM step, guidance 1")  # fmt: skip
    footer = f"Made by `python benchmarks/segment_levels.py` in {time.perf_counter() - started:.0f} s."
    text = "\n".join([title, "", *summary, "", *lines, "", footer]) + "\n"
    atomic_write_text(RESULTS / f"segment_levels_{args.name}.md", text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
