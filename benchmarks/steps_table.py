"""Do more sampling steps help? One model (folder or training checkpoint) at 1, 4 and 16 DDIM steps.

For each model and step count, ``specdiff.evaluation.evaluate`` synthesizes the first ``--max-seconds`` of
held-out pieces and scores them against SoundFont renders of the same MIDI (the timbre's own
SoundFont): onset F1 ratio, log-mel L1, Fréchet distance (mfcc-stats), the silence gap (ours minus
the render's mean log-mel on frames where the render is below -8), raw peak and the largest
segment-to-segment level jump, and the rest gap (the same difference on the music's rests, frames
at least 1 s after every note ended: ``specdiff.evaluation.metrics.rest_scores``). Two sets of pieces:

- ``idioms``: the generated band-music test split (``specdiff.data.idioms``, never trained on);
- ``demo``: the demo corpus's test split.

Extra rows:
- ``--prior-alone``: the same model with the decoder's ``spec_out`` weight and bias (and its
  ``input_skip`` maps) set to zero, so its output is the closed-form score prior refined by nothing
  (what the network adds);
- ``--yardstick``: the same MIDI rendered with another SoundFont (FluidR3_GM) scored against the
  TimGM6mb reference: how close a different professional SoundFont is.

``--final-noise-time F`` runs DDIM's steps from noise time 1 down to F and ends on the x0 estimate
made there (``sampling.json``'s ``final_noise_time``, ``specdiff.sampling.sampler.DDIMSampler``); without it
each folder's own setting is used (0, the full grid, for a plain export).

Usage:
  python benchmarks/steps_table.py MODEL [MODEL ...] --set idioms --pieces 8 --steps 1 4 16 \\
      --name bundled [--prior-alone] [--yardstick] [--timbre TimGM6mb]
MODEL: a pipeline folder or a training checkpoint (``.pt``, exported on the fly with the bundled
vocoder). Appends rows to benchmarks/results/steps_table_<name>.md and .json.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from specdiff.atomic import atomic_write_text  # noqa: E402
from specdiff.evaluation.metrics import BAND_OFFSET_KEYS  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results"
COLUMNS = (
    ("f1_ratio", "onset F1 ratio ↑", "{:.2f}"),
    ("log_mel_l1", "log-mel L1 ↓", "{:.2f}"),
    ("frechet_distance", "Fréchet (mfcc) ↓", "{:.0f}"),
    ("silence_gap", "silence gap ↓", "{:+.2f}"),
    ("rest_gap", "rest gap ↓", "{:+.2f}"),
    ("peak", "peak (max)", "{:.2f}"),
    ("max_segment_jump_db", "max seg. jump dB", "{:.1f}"),
    ("band_offsets", "band offsets, low to high", "{:+.1f}"),
    ("x_real_time", "x real time", "{:.1f}"),
)


def midi_files(which: str, pieces: int, folder: Path, split: str = "test") -> list[Path]:
    """The first ``pieces`` MIDI files of a held-out ``split`` ("test", or "validation" to choose
    settings without looking at the test pieces) of the generated idioms or the demo corpus."""
    if which == "idioms":
        from specdiff.data.idioms import write_split

        return write_split(folder / "idioms_midi", split)[:pieces]
    from specdiff.data.corpus import demo_midi_files

    return demo_midi_files(split)[:pieces]


def split_label(which: str, split: str) -> str:
    """The set's name in result rows: ``idioms`` for the test split, ``idioms (validation)`` otherwise."""
    return which if split == "test" else f"{which} ({split})"


def load_results(path: Path) -> list[dict[str, Any]]:
    """The rows already in a results JSON (new rows are appended to them), or none."""
    return json.loads(path.read_text()) if path.is_file() else []


def model_folder(model: str, tmp: Path, prior_alone: bool = False) -> Path:
    """A pipeline folder for ``model`` (a checkpoint is exported with the bundled vocoder);
    ``prior_alone`` zeroes the decoder's output layer in a copy."""
    import shutil

    import torch
    from safetensors.torch import load_file, save_file

    from specdiff.pipeline.default_model import DEFAULT_MODEL_DIR
    from specdiff.training.export import export_pipeline

    path = Path(model)
    if path.is_file():
        out = tmp / f"export_{run_label(path).replace('/', '_')}"  # two runs' step_N.pt are different models
        if not out.exists():
            export_pipeline(path, out, vocoder=DEFAULT_MODEL_DIR / "vocoder")
        path = out
    if prior_alone:
        out = tmp / f"prior_{path.name}"
        if not out.exists():
            shutil.copytree(path, out)
            weights = next((out / "decoder").glob("*.safetensors"))
            state = load_file(str(weights))
            for key in ("spec_out.weight", "spec_out.bias", "input_skip.weight"):
                if key in state:
                    state[key] = torch.zeros_like(state[key])
            save_file(state, str(weights))
        path = out
    return path


def model_and_prior_pipelines(models: list[str], tmp: Path) -> dict[str, Any]:
    """Pipelines (no inverter: mels only) of each model and of its score prior alone (:func:`model_folder`), by
    row label: "model" / "model, prior alone", or "model N" / "model N, prior alone" for several models."""
    from specdiff.pipeline.pipeline import SpectrogramDiffusionPipeline

    pipes = {}
    for index, model in enumerate(models):
        label = f"model {index + 1}" if len(models) > 1 else "model"
        for prior_alone in (False, True):
            folder = model_folder(model, tmp, prior_alone)
            pipe = SpectrogramDiffusionPipeline.from_pretrained(folder, inverter=None)
            pipes[label + (", prior alone" if prior_alone else "")] = pipe
    return pipes


def write_probe_report(script: str, name: str, title: str, lines: list[str], models: list[str]) -> str:
    """Write ``benchmarks/results/<script>_<name>.md``: ``title``, the table ``lines`` and a footer naming the
    script and (for several) the models by their row numbers; returns the text."""
    listed = "; ".join(f"model {i + 1}: `{m}`" for i, m in enumerate(models)) if len(models) > 1 else ""
    text = "\n".join([title, "", *lines, "", f"Made by `benchmarks/{script}.py`. {listed}".rstrip()])
    atomic_write_text(ROOT / "benchmarks" / "results" / f"{script}_{name}.md", text + "\n")
    return text


def run_label(path: Path) -> str:
    """A row label: a folder's name, or ``RUN/step_N.pt`` for a training checkpoint."""
    if path.is_file() and path.parent.name == "checkpoints":
        return f"{path.parent.parent.name}/{path.name}"
    return path.name


def with_sampling(folder: Path, tmp: Path, **changes: Any) -> Path:
    """A copy of ``folder`` whose sampling.json has these fields changed (e.g. ``final_noise_time``)."""
    import dataclasses
    import shutil

    from specdiff.pipeline.sampling_settings import read_sampling_settings, write_sampling_settings

    out = tmp / ("_".join(f"{k}{v}" for k, v in sorted(changes.items())) + f"_{folder.name}")
    if not out.exists():
        shutil.copytree(folder, out)
        settings = dataclasses.replace(read_sampling_settings(folder), **changes)
        write_sampling_settings(out, settings)
    return out


def with_final_noise_time(folder: Path, tmp: Path, value: float) -> Path:
    """A copy of ``folder`` whose sampling.json ends DDIM at noise time ``value``."""
    return with_sampling(folder, tmp, final_noise_time=value)


def ceiling_argument(text: str) -> float | str | None:
    """``--guidance-ceiling``: a number of natural-log mel units, ``off`` (plain guidance) or
    ``keep`` (the default: the folder's own setting)."""
    if text.lower() == "keep":
        return "keep"
    return None if text.lower() in ("off", "none") else float(text)


def add_ceiling_argument(parser: Any) -> None:
    """``--guidance-ceiling`` (:func:`ceiling_argument`) on an argparse parser."""
    parser.add_argument(
        "--guidance-ceiling",
        type=ceiling_argument,
        default="keep",
        help="sampling.json guidance_ceiling (log-mel units, or 'off'; default: the folder's)",
    )
    parser.add_argument(
        "--guidance-lift",
        type=ceiling_argument,
        default="keep",
        help="sampling.json guidance_lift (log-mel units, or 'off'; default: the folder's)",
    )


def yardstick(files: list[Path], max_seconds: float, other: str = "FluidR3_GM") -> dict[str, Any]:
    """Another SoundFont's render scored against the TimGM6mb render, as evaluate scores a model."""
    from specdiff.constants import SAMPLE_RATE
    from specdiff.data.render import find_soundfont, render_midi
    from specdiff.evaluation import metrics
    from specdiff.evaluation.evaluate import prepare_piece

    rows, ours_clips, ref_clips = [], [], []
    for path in files:
        piece = prepare_piece(path, max_seconds)
        n = int(round(max_seconds * SAMPLE_RATE))
        ref = render_midi(path, SAMPLE_RATE, soundfont=find_soundfont("TimGM6mb"))[:n]
        ours = render_midi(path, SAMPLE_RATE, soundfont=find_soundfont(other))[:n]
        ours, ref = metrics.crop_to_common_length(ours, ref)
        row = {**metrics.reconstruction_scores(ours, ref), **metrics.level_comparison(ours, ref)}
        row.update(metrics.transcription_scores(ours, ref, piece.notes))
        rows.append(row)
        ours_clips.append(ours)
        ref_clips.append(ref)
    summary = {k: float(np.nanmean([r[k] for r in rows])) for k in rows[0] if isinstance(rows[0][k], float)}
    summary["peak"] = max(r["peak"] for r in rows)
    summary["max_segment_jump_db"] = max(r["max_segment_jump_db"] for r in rows)
    summary["f1_ratio"] = summary["generated_f1"] / summary["reference_f1"]
    summary.update(metrics.frechet_audio_distance(ours_clips, ref_clips, embedding="mfcc-stats"))
    return summary


#: What the JSON keeps of each piece, so one piece that dominates a mean (a Fréchet distance
#: pooled over pieces moves with a single bad one) can be found without re-running.
PER_PIECE_KEYS = ("generated_f1", "generated_precision", "generated_recall", "generated_estimated_notes",
                  "reference_f1", "reference_precision", "reference_recall", "reference_estimated_notes",
                  "log_mel_l1", "peak", "max_segment_jump_db", "reference_max_segment_jump_db", "silence_gap",
                  "rest_gap")  # fmt: skip


def per_piece_row(row: dict[str, Any]) -> dict[str, Any]:
    """The :data:`PER_PIECE_KEYS` of one piece's evaluation row, with its name."""
    return {"piece": row["piece"], **{k: row[k] for k in PER_PIECE_KEYS if k in row}}


def markdown_table(results: list[dict[str, Any]]) -> list[str]:
    """The rows of a results JSON as the lines of a markdown table (one row per model, set and step count)."""
    lines = ["| model | set | timbre | pieces | DDIM steps | " + " | ".join(h for _, h, _ in COLUMNS) + " |",
             "|---" * (5 + len(COLUMNS)) + "|"]  # fmt: skip
    for r in results:
        cells = []
        for key, _, fmt in COLUMNS:
            if key == "band_offsets":  # ours minus the render per group of mel bands (metrics.band_offsets)
                values = [r["summary"].get(k) for k in BAND_OFFSET_KEYS]
                cells.append(" / ".join(fmt.format(v) for v in values) if None not in values else "")
                continue
            value = r["summary"].get(key)
            cells.append(fmt.format(value) if isinstance(value, (int, float)) and np.isfinite(value) else "")
        lines.append(f"| {r['model']} | {r['set']} | {r.get('timbre') or 'default'} | {r['pieces']} | "
                     f"{r['steps'] if r['steps'] is not None else '-'} | " + " | ".join(cells) + " |")  # fmt: skip
    return lines


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("models", nargs="*")
    parser.add_argument("--set", choices=("idioms", "demo"), default="idioms")
    parser.add_argument("--split", choices=("test", "validation"), default="test",
                        help="held-out split (validation: for choosing sampler settings)")  # fmt: skip
    parser.add_argument("--pieces", type=int, default=8)
    parser.add_argument("--max-seconds", type=float, default=20.0)
    parser.add_argument("--steps", type=int, nargs="+", default=[1, 4, 16])
    parser.add_argument("--scheduler", default="ddim")
    parser.add_argument("--guidance", type=float, default=None, help="default: the folder's sampling.json")
    add_ceiling_argument(parser)
    parser.add_argument("--timbre", default=None)
    parser.add_argument(
        "--final-noise-time",
        type=float,
        default=None,
        help="DDIM's last noise time (sampling.json final_noise_time; default: the folder's)",
    )
    parser.add_argument("--guidance-schedule", choices=("every", "first"), default=None,
                        help="sampling.json guidance_schedule (default: the folder's)")  # fmt: skip
    parser.add_argument("--prior-alone", action="store_true")
    parser.add_argument("--yardstick", action="store_true")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--name", required=True)
    args = parser.parse_args()

    import torch

    from specdiff.evaluation.evaluate import evaluate

    torch.set_num_threads(args.threads)
    out_json = RESULTS / f"steps_table_{args.name}.json"
    results = load_results(out_json)
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        files = midi_files(args.set, args.pieces, tmp, args.split)
        set_label = split_label(args.set, args.split)
        if args.yardstick:
            started = time.time()
            summary = yardstick(files, args.max_seconds)
            results.append({"model": "FluidR3_GM render", "set": set_label, "pieces": len(files), "steps": None,
                            "summary": summary, "seconds": time.time() - started})  # fmt: skip
            print(results[-1], flush=True)
        for model in args.models:
            for prior in [False, True] if args.prior_alone else [False]:
                folder = model_folder(model, tmp, prior)
                if args.final_noise_time is not None:
                    folder = with_final_noise_time(folder, tmp, args.final_noise_time)
                for key in ("guidance_ceiling", "guidance_lift"):
                    if getattr(args, key) != "keep":
                        folder = with_sampling(folder, tmp, **{key: getattr(args, key)})
                if args.guidance_schedule is not None:
                    folder = with_sampling(folder, tmp, guidance_schedule=args.guidance_schedule)
                for steps in [1] if prior else args.steps:
                    started = time.time()
                    res = evaluate(
                        str(folder), files, steps=steps, scheduler=args.scheduler, guidance=args.guidance,
                        max_seconds=args.max_seconds, save_audio=False, verbose=False, timbre=args.timbre,
                    )  # fmt: skip
                    summary = res["summary"]
                    summary["peak"] = max(r["peak"] for r in res["pieces"])
                    summary["max_segment_jump_db"] = max(r["max_segment_jump_db"] for r in res["pieces"])
                    summary["reference_max_segment_jump_db"] = max(
                        r["reference_max_segment_jump_db"] for r in res["pieces"]
                    )
                    label = run_label(Path(model)) + (" (prior alone)" if prior else "")
                    if args.guidance is not None:
                        label += f", guidance {args.guidance:g}"
                    if args.guidance_ceiling != "keep":
                        label += f", ceiling {args.guidance_ceiling}"
                    if args.guidance_lift != "keep":
                        label += f", lift {args.guidance_lift}"
                    if args.guidance_schedule is not None:
                        label += f", guidance at {args.guidance_schedule} step"
                    if args.final_noise_time:
                        label += f", final t {args.final_noise_time:g}"
                    results.append({"model": label, "set": set_label, "pieces": len(files), "steps": steps,
                                    "timbre": args.timbre, "summary": summary,
                                    "per_piece": [per_piece_row(r) for r in res["pieces"]],
                                    "seconds": time.time() - started})  # fmt: skip
                    print(label, steps, {k: round(summary.get(k, float("nan")), 3) for k, _, _ in COLUMNS
                                         if k != "band_offsets"}, flush=True)  # fmt: skip
                    atomic_write_text(out_json, json.dumps(results, indent=1) + "\n")
    atomic_write_text(out_json, json.dumps(results, indent=1) + "\n")
    lines = markdown_table(results)
    atomic_write_text(RESULTS / f"steps_table_{args.name}.md", "\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
