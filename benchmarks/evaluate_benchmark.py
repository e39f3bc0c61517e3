"""The evaluation table: a model on the demo corpus's held-out pieces (``specdiff.evaluation.evaluate``).

A fixed protocol, so tables of different models compare: the first ``--pieces`` files of the
demo corpus's test split (specdiff/data/corpus.py, manifest order), the first ``--max-seconds`` of
each, SoundFont renders (TimGM6mb.sf2) as references, one seed, the mfcc-stats embedding.

Without ``--model`` it evaluates a freshly initialised random model of a preset (``tiny`` by
default, ``build_models(preset, seed=0)``): the floor every trained model must beat, and an
end-to-end check that every metric runs.

Usage:
  nice python benchmarks/evaluate_benchmark.py                       # random tiny model (a few minutes)
  python benchmarks/evaluate_benchmark.py --model runs/x/export --name trained_x
Writes benchmarks/results/evaluation_<name>.json and .md (default name: random_<preset>);
paths in them are relative to the repository, and no audio is kept.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from specdiff.evaluation.evaluate import _json_safe, evaluate, markdown_report  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results"


def _relative(path: str) -> str:
    try:
        return str(Path(path).resolve().relative_to(ROOT))
    except ValueError:
        return path


def _write(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", type=Path, help="pipeline folder (default: a random model of --preset)")
    ap.add_argument("--preset", default="tiny", help="preset of the random model (default: tiny)")
    ap.add_argument("--name", help="results name (default: random_<preset>, or the model folder's name)")
    ap.add_argument("--pieces", type=int, default=3, help="held-out pieces to evaluate (default: 3)")
    ap.add_argument("--midi", type=Path, nargs="+", help="evaluate these files instead of the test split")
    ap.add_argument("--max-seconds", type=float, default=30.0, help="seconds of each piece (default: 30)")
    ap.add_argument("--steps", type=int, default=10, help="denoising steps (default: 10; use more for a trained model)")
    # The original sampler clips x0 to [-1, 1]; ODE solvers (dpmsolver++, unipc) do not and diverge
    # to inf audio on an untrained model.
    ap.add_argument("--scheduler", default="original")
    ap.add_argument("--guidance", type=float, default=2.0)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=2, help="torch threads (default: 2)")
    ap.add_argument("--png", action="store_true", help="also keep one comparison PNG per piece in results/")
    args = ap.parse_args(argv)

    import torch

    from specdiff.data.corpus import demo_midi_files

    torch.set_num_threads(args.threads)
    midi_files = args.midi or demo_midi_files("test")[: args.pieces]
    name = args.name or (args.model.name if args.model else f"random_{args.preset}")
    with tempfile.TemporaryDirectory() as tmp:
        if args.model is None:
            from specdiff.models.presets import build_models
            from specdiff.pipeline.pipeline import SpectrogramDiffusionPipeline

            model = Path(tmp) / f"random_{args.preset}"
            SpectrogramDiffusionPipeline(*build_models(args.preset, seed=0)).save_pretrained(model)
            label = f"random {args.preset} model (build_models('{args.preset}', seed=0), Griffin-Lim inverter)"
        else:
            model, label = args.model, _relative(str(args.model))
        results = evaluate(
            model, midi_files, steps=args.steps, scheduler=args.scheduler, guidance=args.guidance,
            seed=args.seed, out_dir=Path(tmp) / "out", max_seconds=args.max_seconds, plots=args.png,
            save_audio=False, device="cpu",
        )  # fmt: skip
        RESULTS.mkdir(parents=True, exist_ok=True)
        for row in results["pieces"]:
            row["midi"] = _relative(row["midi"])
            if "plot" in row and row["plot"]:
                target = RESULTS / f"evaluation_{name}_{Path(row['plot']).name}"
                os.replace(row["plot"], target)
                row["plot"] = _relative(str(target))
        results.pop("files", None)
        results["model"] = label
        results["settings"]["threads"] = args.threads
        results["settings"]["pieces"] = (
            "given files" if args.midi else f"demo corpus test split, first {args.pieces} in manifest order"
        )
        table = markdown_report(results)
        _write(
            RESULTS / f"evaluation_{name}.json", json.dumps(_json_safe(results), indent=2, ensure_ascii=False) + "\n"
        )
        _write(RESULTS / f"evaluation_{name}.md", table)
    print(f"wrote {RESULTS / f'evaluation_{name}.json'} and .md")
    return 0


if __name__ == "__main__":
    sys.exit(main())
