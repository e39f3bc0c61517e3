"""Quality of one trained model per sampler setting, on the demo corpus's held-out pieces.

For each sampler setting (``--configs``, e.g. ``original:100 dpmsolver++:20``) the model
synthesizes the first ``--max-seconds`` of every held-out piece (demo corpus test split, never
trained on) and ``specdiff.evaluation.evaluate`` scores it against a SoundFont render of the same MIDI:
basic-pitch note-onset F1 of ours and of the render (and their ratio), log-mel L1, multi-resolution
STFT distance, Fréchet distance on the offline mfcc-stats embedding. Results are summarised over
all pieces and per group of the corpus manifest:

- ``piano/strings``: pieces rendered with the piano or strings template and no drums;
- ``drums``: multi-instrument pieces with a drum track;
- ``other``: the rest (organ, mixed ensembles without drums).

Speed is reported separately as the process CPU time per second of audio (robust on a shared
machine), on ``--threads`` threads.

Usage:
  python benchmarks/model_quality.py --configs original:100 ddpm:100 dpmsolver++:20 --name tiny
Writes benchmarks/results/model_quality_<name>.json and .md.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from specdiff.atomic import atomic_write_text  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results"
GROUPS = ("piano/strings", "drums", "other")


def piece_group(entry: dict[str, Any]) -> str:
    """The manifest entry's group (see the module docstring)."""
    if entry.get("drums"):
        return "drums"
    if entry.get("template") in ("piano", "strings"):
        return "piano/strings"
    return "other"


def held_out_pieces() -> list[tuple[Path, str]]:
    """(MIDI path, group) of the demo corpus's test split, in manifest order."""
    from specdiff.data.corpus import demo_midi_files

    manifest = json.loads((ROOT / "specdiff" / "assets" / "demo_midi" / "manifest.json").read_text())
    groups = {entry["file"]: piece_group(entry) for entry in manifest["files"]}
    return [(path, groups[path.name]) for path in demo_midi_files("test")]


def summarise(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Means over rows; the F1 ratio is the ratio of the mean F1s (as specdiff.evaluation.evaluate does)."""
    if not rows:
        return {}
    mean = lambda key: sum(r[key] for r in rows) / len(rows)  # noqa: E731
    out = {
        key: mean(key) for key in ("generated_f1", "reference_f1", "log_mel_l1", "mr_stft_log_l1", "loudness_diff_db")
    }
    for key in ("peak", "reference_peak", "max_segment_jump_db", "reference_max_segment_jump_db"):
        out[key] = max(r[key] for r in rows)  # the worst piece
    out["f1_ratio"] = out["generated_f1"] / out["reference_f1"] if out["reference_f1"] > 0 else float("nan")
    out["pieces"] = len(rows)
    return out


def parse_config(text: str) -> tuple[str, int, str]:
    """``sampler[:steps[:precision]]``, e.g. ``original:100:bf16`` (precision fp32 or bf16)."""
    name, steps, precision = (text.split(":") + ["", ""])[:3]
    return name, int(steps or 100), precision or "fp32"


def cpu_seconds_per_audio_second(
    pipe, midi: Path, scheduler: str, steps: int, guidance: float, seconds: float
) -> float:
    """Process CPU time of synthesizing (notes to audio) the first ``seconds`` of ``midi`` (after a warm-up run)."""
    import torch

    from specdiff.evaluation.evaluate import prepare_piece

    piece = prepare_piece(midi, seconds, slakh_programs=pipe.slakh_programs)

    def run():
        return pipe(piece.tokenized, num_inference_steps=steps, scheduler=scheduler, guidance_scale=guidance,
                    generator=torch.Generator().manual_seed(0), progress=False)  # fmt: skip

    run()  # warm-up: oneDNN builds its (bf16) kernels per shape on first use
    start = time.process_time()
    out = run()
    return (time.process_time() - start) / (out.audios.shape[-1] / pipe.sample_rate)


def markdown(result: dict[str, Any]) -> str:
    s = result["settings"]
    lines = [
        f"# Model quality per sampler: {result['model']}",
        "",
        f"Held-out pieces: the demo corpus test split ({len(result['pieces'])} pieces, never trained on), first "
        f"{s['max_seconds']:g} s of each; guidance {s['guidance']:g}, seed {s['seed']}; references rendered with "
        "TimGM6mb.sf2. Onset F1: basic-pitch + mir_eval, 50 ms, drums excluded; ratio = our mean F1 / the "
        "render's mean F1. CPU s per audio s: process CPU time of notes-to-audio synthesis of one piece "
        f"({s['speed_piece']}, {s['threads']} thread(s)); below 1 is faster than real time on that many cores.",
        "",
        "Level: loudness = mean over pieces of our RMS dB minus the render's; peak and the largest segment-to-segment "
        "(5.12 s) RMS jump are the worst piece's, ours / the render's (the peak is the pipeline's raw output, before "
        "the soft limiter of the audio writer).",
        "",
        "| sampler | steps | precision | group | pieces | onset F1 ours | onset F1 render | F1 ratio ↑ | log-mel L1 ↓ "
        "| MR-STFT ↓ | Fréchet (mfcc) ↓ | CPU s per audio s ↓ | loudness vs render (dB) | peak ours / render "
        "| max segment jump dB ours / render |",
        "|---" * 15 + "|",
    ]
    for row in result["configs"]:
        for group in ("all", *GROUPS):
            g = row["groups"].get(group)
            if not g:
                continue
            extra = (
                (f"{row['frechet_distance']:.1f}", f"{row['cpu_seconds_per_audio_second']:.2f}")
                if group == "all"
                else ("", "")
            )
            lines.append(
                f"| {row['scheduler']} | {row['steps']} | {row['precision']} | {group} | {g['pieces']} | "
                f"{g['generated_f1']:.3f} | {g['reference_f1']:.3f} | **{g['f1_ratio']:.2f}** | "
                f"{g['log_mel_l1']:.3f} | {g['mr_stft_log_l1']:.3f} | {extra[0]} | {extra[1]} | "
                f"{g['loudness_diff_db']:+.1f} | "
                f"{g['peak']:.2f} / {g['reference_peak']:.2f} | "
                f"{g['max_segment_jump_db']:.1f} / {g['reference_max_segment_jump_db']:.1f} |"
            )
    lines += ["", "Pieces: " + ", ".join(f"{p['piece']} ({p['group']})" for p in result["pieces"]), ""]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", type=Path, help="pipeline folder (default: the bundled model)")
    ap.add_argument("--name", default=None,
                    help="results name (default: default_model for the bundle, else the folder name)")  # fmt: skip
    ap.add_argument("--configs", nargs="+", default=["original:100", "ddpm:100", "dpmsolver++:20"],
                    help="sampler[:steps[:precision]] settings to compare, e.g. original:100:bf16")  # fmt: skip
    ap.add_argument("--max-seconds", type=float, default=20.0, help="seconds of each piece (default: 20)")
    ap.add_argument("--max-pieces", type=int, default=None, help="only the first N held-out pieces")
    ap.add_argument("--guidance", type=float, default=2.0)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", type=Path, default=RESULTS)
    args = ap.parse_args(argv)

    import torch

    from specdiff.evaluation.evaluate import evaluate
    from specdiff.pipeline.default_model import default_model_path, precision_dtype
    from specdiff.pipeline.pipeline import SpectrogramDiffusionPipeline

    torch.set_num_threads(args.threads)
    model = args.model or default_model_path()
    if args.name is None:  # another model's results must not overwrite the bundled model's file
        args.name = "default_model" if args.model is None else Path(args.model).name
    if model is None:
        raise SystemExit("no --model and no bundled model")
    configs = [parse_config(config) for config in args.configs]
    # One pipeline per precision asked for; an unknown precision fails here, before any synthesis.
    pipes = {name: SpectrogramDiffusionPipeline.from_pretrained(model, dtype=precision_dtype(name))
             for name in {precision for _, _, precision in configs}}  # fmt: skip
    pieces = held_out_pieces()[: args.max_pieces]
    group_of = {path.name: group for path, group in pieces}
    speed_piece = pieces[0][0]
    result: dict[str, Any] = {
        "model": str(Path(model).resolve().relative_to(ROOT))
        if Path(model).resolve().is_relative_to(ROOT)
        else str(model),
        "settings": {
            "max_seconds": args.max_seconds,
            "guidance": args.guidance,
            "seed": args.seed,
            "threads": args.threads,
            "speed_piece": speed_piece.name,
        },  # fmt: skip
        "pieces": [{"piece": path.name, "group": group} for path, group in pieces],
        "configs": [],
    }
    for scheduler, steps, precision in configs:
        pipe = pipes[precision]
        print(f"== {scheduler} x {steps}, {precision}", flush=True)
        with tempfile.TemporaryDirectory() as tmp:
            res = evaluate(pipe, [p for p, _ in pieces], steps=steps, scheduler=scheduler, guidance=args.guidance,
                           seed=args.seed, out_dir=Path(tmp), max_seconds=args.max_seconds, save_audio=False,
                           verbose=False)  # fmt: skip
        rows = res["pieces"]
        groups = {"all": summarise(rows)}
        for group in GROUPS:
            groups[group] = summarise([r for r in rows if group_of[r["piece"]] == group])
        speed = cpu_seconds_per_audio_second(pipe, speed_piece, scheduler, steps, args.guidance, args.max_seconds)
        result["configs"].append({
            "scheduler": scheduler, "steps": steps, "precision": precision, "groups": groups,
            "frechet_distance": res["summary"].get("frechet_distance"), "cpu_seconds_per_audio_second": speed,
            "pieces": [{k: r.get(k) for k in ("piece", "generated_f1", "reference_f1", "log_mel_l1", "mr_stft_log_l1")}
                       for r in rows],
        })  # fmt: skip
        print(json.dumps(groups["all"]), f"cpu s/audio s {speed:.2f}", flush=True)
    args.out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(args.out / f"model_quality_{args.name}.json", json.dumps(result, indent=2) + "\n")
    atomic_write_text(args.out / f"model_quality_{args.name}.md", markdown(result))
    print(f"wrote {args.out / f'model_quality_{args.name}.md'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
