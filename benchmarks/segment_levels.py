"""Does a segment's level come from its context? Per-segment level of a model against the render.

For each held-out generated band piece (``specdiff.data.idioms`` test split, first ``--max-seconds``),
every 5.12 s segment is synthesized three ways with one DDIM step (guidance 1, seed 0):

- ``chain``: as the pipeline does, each segment's context is the model's own previous segment;
- ``alone``: every segment with the empty context of a first segment;
- ``teacher``: each segment's context is the *render's* previous segment (what training shows).

and its power (dB, from the log-mel: ``10 log10 mean exp(2 x)``) is compared with the render's over
the same frames. If ``teacher`` rows sit far from 0 dB, the model does not take its level from the
context even when the context is right; if ``chain`` drifts while ``teacher`` does not, the drift is
exposure to its own output. Also printed: the mean absolute offset per way.

Usage:
  python benchmarks/segment_levels.py MODEL [MODEL ...] [--pieces 8] [--max-seconds 20] --name NAME
MODEL: a pipeline folder or a training checkpoint (exported on the fly with the bundled vocoder).
Writes benchmarks/results/segment_levels_<name>.md.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from specdiff.atomic import atomic_write_text  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results"
WAYS = ("chain", "alone", "teacher")


def power_db(log_mel: torch.Tensor) -> float:
    return float(10 * np.log10(np.mean(np.exp(2 * log_mel.double().numpy())) + 1e-20))


@torch.no_grad()
def segment_mels(pipe, tokens: list, reference_mel: torch.Tensor, way: str, notes=None) -> list[torch.Tensor]:
    """The log-mel ``[256, 128]`` of every segment, synthesized ``way``; ``notes`` (the piece's, with
    velocities) fill the velocity columns of a velocity-layout decoder as the pipeline does."""
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


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("models", nargs="+")
    parser.add_argument("--pieces", type=int, default=8)
    parser.add_argument("--max-seconds", type=float, default=20.0)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--name", required=True)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    from steps_table import midi_files, model_folder, run_label

    from specdiff.audio.mel import log_mel
    from specdiff.constants import SAMPLE_RATE
    from specdiff.data.render import render_midi
    from specdiff.evaluation.evaluate import prepare_piece
    from specdiff.pipeline.pipeline import SpectrogramDiffusionPipeline

    lines = ["| model | piece | " + " | ".join(f"{w} (dB per segment)" for w in WAYS) + " |", "|---|---|---|---|---|"]
    summary = []
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        files = midi_files("idioms", args.pieces, tmp)
        references = {}
        for path in files:
            audio = render_midi(path, SAMPLE_RATE)[: int(args.max_seconds * SAMPLE_RATE)]
            references[path] = log_mel(torch.from_numpy(np.ascontiguousarray(audio, np.float32)))
        for model in args.models:
            pipe = SpectrogramDiffusionPipeline.from_pretrained(model_folder(model, tmp), inverter=None)
            label = run_label(Path(model))
            offsets: dict[str, list[float]] = {w: [] for w in WAYS}
            for path in files:
                piece = prepare_piece(path, args.max_seconds, slakh_programs=pipe.slakh_programs)
                tokens = pipe._song(piece.tokenized)[0]
                reference = references[path]
                cells = []
                for way in WAYS:
                    mels = segment_mels(pipe, tokens, reference, way, getattr(piece.tokenized, "notes", None))
                    row = []
                    for i, mel in enumerate(mels):
                        ref = reference[i * 256 : (i + 1) * 256]
                        if len(ref) < 64:
                            continue
                        row.append(power_db(mel[: len(ref)]) - power_db(ref))
                    offsets[way] += row
                    cells.append(" ".join(f"{v:+.1f}" for v in row))
                lines.append(f"| {label} | {path.stem} | " + " | ".join(cells) + " |")
                print(lines[-1], flush=True)
            summary.append(f"| {label} | **mean abs offset** | "
                           + " | ".join(f"{np.mean(np.abs(offsets[w])):.1f}" for w in WAYS) + " |")  # fmt: skip
            print(summary[-1], flush=True)
    text = "\n".join(lines + summary) + "\n"
    atomic_write_text(RESULTS / f"segment_levels_{args.name}.md", text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
