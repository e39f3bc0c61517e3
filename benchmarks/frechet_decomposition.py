"""Where does a Fréchet distance come from? The mfcc-stats Fréchet distance of a model's audio (and of
a FluidR3_GM render, the yardstick) against the TimGM6mb renders, split into its parts.

The ``mfcc-stats`` embedding (``specdiff.evaluation.embeddings``) is, per 1 s window, the mean of
20 MFCCs and their spread (standard deviation) inside the window. The Fréchet distance between two
Gaussians is ``|mu1 - mu2|^2`` (the *mean term*: a level or tilt offset) plus a *covariance term*
(how differently the windows vary). Each row gives both, the distance of the 20 mean dims alone and
of the 20 spread dims alone, the trace of the mean dims' covariance (how much the spectral envelope
varies from window to window; a model that regresses to the mean has a small one) and the mean of
the spread dims (how much the sound moves inside a window).

Usage:
  python benchmarks/frechet_decomposition.py [MODEL] --set idioms --split validation --pieces 16 \\
      [--steps 4] [--guidance W] [--guidance-ceiling C|off] [--yardstick] --name NAME
MODEL: a pipeline folder or a training checkpoint (default: the bundled model). Appends rows to
benchmarks/results/frechet_decomposition_<name>.md and .json.
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
sys.path.insert(0, str(ROOT / "benchmarks"))

from steps_table import (  # noqa: E402
    add_ceiling_argument,
    load_results,
    midi_files,
    model_folder,
    split_label,
    with_sampling,
)

from specdiff.atomic import atomic_write_text  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results"
MFCC_DIMS = 20  # mfcc-stats: 20 window means, then 20 window spreads
COLUMNS = (
    ("frechet_distance", "FD", "{:.1f}"),
    ("mean_term", "mean term", "{:.1f}"),
    ("covariance_term", "cov. term", "{:.1f}"),
    ("mean_dims_fd", "mean-MFCC dims FD", "{:.1f}"),
    ("spread_dims_fd", "spread dims FD", "{:.1f}"),
    ("mean_dims_trace", "trace cov (mean dims)", "{:.0f}"),
    ("mean_spread", "mean spread", "{:.2f}"),
    ("peak", "raw peak (max)", "{:.2f}"),
)


def decompose(ours: np.ndarray, reference: np.ndarray) -> dict[str, float]:
    """The Fréchet distance of ``ours`` vs ``reference`` window embeddings (``[n, 40]``) in parts."""
    from specdiff.evaluation.metrics import frechet_distance, gaussian_statistics

    def parts(a: np.ndarray, b: np.ndarray) -> tuple[float, float]:
        (mu1, s1), (mu2, s2) = gaussian_statistics(a), gaussian_statistics(b)
        return frechet_distance(mu1, s1, mu2, s2), float(np.sum((mu1 - mu2) ** 2))

    fd, mean_term = parts(ours, reference)
    means, spreads = ours[:, :MFCC_DIMS], ours[:, MFCC_DIMS:]
    return {
        "frechet_distance": fd,
        "mean_term": mean_term,
        "covariance_term": fd - mean_term,
        "mean_dims_fd": parts(means, reference[:, :MFCC_DIMS])[0],
        "spread_dims_fd": parts(spreads, reference[:, MFCC_DIMS:])[0],
        "mean_dims_trace": float(np.trace(np.cov(means, rowvar=False))),
        "mean_spread": float(spreads.mean()),
    }


def embed_renders(files: list[Path], seconds: float, soundfont: str) -> np.ndarray:
    """Window embeddings of the first ``seconds`` of each file rendered with ``soundfont``."""
    from specdiff.constants import SAMPLE_RATE
    from specdiff.data.render import find_soundfont, render_midi
    from specdiff.evaluation.embeddings import get_embedding

    embed, n = get_embedding("mfcc-stats"), int(round(seconds * SAMPLE_RATE))
    font = find_soundfont(soundfont)
    return np.concatenate([embed(render_midi(f, SAMPLE_RATE, soundfont=font)[:n].astype(np.float32)) for f in files])


def embed_model(folder: Path, files: list[Path], seconds: float, steps: int, guidance: float | None) -> tuple:
    """Window embeddings of the model's first ``seconds`` of each file (fixed seed), and its raw peak."""
    import torch

    from specdiff.constants import SAMPLE_RATE
    from specdiff.evaluation.embeddings import get_embedding
    from specdiff.evaluation.evaluate import prepare_piece
    from specdiff.pipeline.pipeline import SpectrogramDiffusionPipeline

    embed, n = get_embedding("mfcc-stats"), int(round(seconds * SAMPLE_RATE))
    pipe = SpectrogramDiffusionPipeline.from_pretrained(folder)
    rows, peak = [], 0.0
    for f in files:
        piece = prepare_piece(f, seconds, slakh_programs=pipe.slakh_programs)
        out = pipe(piece.tokenized, generator=torch.Generator().manual_seed(0), num_inference_steps=steps,
                   guidance_scale=guidance, show_progress=False)  # fmt: skip
        audio = np.asarray(out.audios, dtype=np.float32).reshape(-1)[:n]
        peak = max(peak, float(np.abs(audio).max()))
        rows.append(embed(audio))
    return np.concatenate(rows), peak


def write_table(results: list[dict[str, Any]], name: str) -> Path:
    lines = ["| audio vs TimGM6mb render | set | pieces | " + " | ".join(h for _, h, _ in COLUMNS) + " |",
             "|---" * (3 + len(COLUMNS)) + "|"]  # fmt: skip
    for r in results:
        cells = [fmt.format(r[k]) if r.get(k) is not None else "" for k, _, fmt in COLUMNS]
        lines.append(f"| {r['label']} | {r['set']} | {r['pieces']} | " + " | ".join(cells) + " |")
    ref = results[-1]["reference"]
    lines += ["", f"TimGM6mb reference: trace cov (mean dims) {ref['mean_dims_trace']:.0f}, "
              f"mean spread {ref['mean_spread']:.2f}. Made by `benchmarks/frechet_decomposition.py`."]  # fmt: skip
    path = RESULTS / f"frechet_decomposition_{name}.md"
    atomic_write_text(path, "# Fréchet (mfcc-stats) distance in parts\n\n" + "\n".join(lines) + "\n")
    return path


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("model", nargs="?", default=None, help="pipeline folder or checkpoint (default: bundled)")
    parser.add_argument("--set", choices=("idioms", "demo"), default="idioms")
    parser.add_argument("--split", choices=("test", "validation"), default="validation")
    parser.add_argument("--pieces", type=int, default=16)
    parser.add_argument("--max-seconds", type=float, default=20.0)
    parser.add_argument("--steps", type=int, default=None, help="default: the folder's sampling.json")
    parser.add_argument("--guidance", type=float, default=None, help="default: the folder's sampling.json")
    add_ceiling_argument(parser)
    parser.add_argument("--yardstick", action="store_true", help="also a FluidR3_GM render row")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--name", required=True)
    args = parser.parse_args()

    import torch

    from specdiff.pipeline.default_model import DEFAULT_MODEL_DIR

    torch.set_num_threads(args.threads)
    out_json = RESULTS / f"frechet_decomposition_{args.name}.json"
    results = load_results(out_json)
    set_label = split_label(args.set, args.split)
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        files = midi_files(args.set, args.pieces, tmp, args.split)
        started = time.time()
        reference = embed_renders(files, args.max_seconds, "TimGM6mb")
        ref_stats = decompose(reference, reference)
        common = {"set": set_label, "pieces": len(files), "reference": ref_stats}
        if args.yardstick:
            row = decompose(embed_renders(files, args.max_seconds, "FluidR3_GM"), reference)
            results.append({"label": "FluidR3_GM render (yardstick)", **common, **row})
        model = str(DEFAULT_MODEL_DIR) if args.model is None else args.model
        folder = model_folder(model, tmp)
        label = Path(model).name if args.model is not None else "bundled model"
        if args.guidance is None and args.guidance_ceiling == "keep" and args.steps is None:
            label += " (its sampling.json)"
        if args.guidance_ceiling != "keep":
            folder = with_sampling(folder, tmp, guidance_ceiling=args.guidance_ceiling)
            label += f", ceiling {args.guidance_ceiling}"
        if args.guidance is not None:
            label += f", guidance {args.guidance:g}"
        if args.steps is not None:
            label += f", {args.steps} steps"
        ours, peak = embed_model(folder, files, args.max_seconds, args.steps, args.guidance)
        results.append({"label": label, **common, **decompose(ours, reference), "peak": peak,
                        "seconds": time.time() - started})  # fmt: skip
    atomic_write_text(out_json, json.dumps(results, indent=1) + "\n")
    print(write_table(results, args.name).read_text())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
