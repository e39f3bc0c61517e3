"""What a training run writes as it goes: ``metrics.jsonl`` (always), TensorBoard (when installed) and
spectrogram PNGs of validation samples."""

from __future__ import annotations

import json
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from torch import Tensor

from specdiff.atomic import atomic_write_text

TENSORBOARD_PIP = "tensorboard>=2.14"


class MetricsLog:
    """Appends ``{"step": .., name: value}`` lines to ``metrics.jsonl`` and mirrors them to TensorBoard."""

    def __init__(self, out_dir: Path, resume_step: int, tensorboard: bool) -> None:
        self.path = out_dir / "metrics.jsonl"
        if self.path.exists():  # drop entries past the checkpoint we resume from: they will be redone
            kept = [
                line for line in self.path.read_text().splitlines() if line and json.loads(line)["step"] <= resume_step
            ]
            atomic_write_text(self.path, "".join(line + "\n" for line in kept))
        self.writer = None
        if tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter

                self.writer = SummaryWriter(str(out_dir / "tensorboard"), purge_step=resume_step + 1)
            except ImportError:
                print(f"note: TensorBoard logging is off (pip install '{TENSORBOARD_PIP}'); metrics go to {self.path}")

    #: Also print each entry as a line on stdout (for runs without a progress bar, e.g. under nohup).
    echo: bool = False

    def log(self, step: int, values: Mapping[str, float]) -> None:
        with open(self.path, "a") as f:
            f.write(json.dumps({"step": step, **values}) + "\n")
        if self.echo:
            text = "  ".join(f"{k} {v:.5g}" if isinstance(v, float) else f"{k} {v}" for k, v in values.items())
            print(f"{time.strftime('%Y-%m-%d %H:%M:%S')} step {step}: {text}", flush=True)
        if self.writer is not None:
            for name, value in values.items():
                self.writer.add_scalar(name, value, step)

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()


def read_metrics(out_dir: str | Path) -> list[dict[str, Any]]:
    """The lines of a run's ``metrics.jsonl``."""
    path = Path(out_dir) / "metrics.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines() if line] if path.exists() else []


def save_spectrogram_comparison(path: Path, target: Tensor, sample: Tensor, title: str) -> bool:
    """Target and sample spectrograms (scaled [-1, 1], ``[T, 128]``) as one PNG; False without matplotlib."""
    from specdiff.evaluation import plotting

    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        plotting.save_comparison_png(
            path, target.float().cpu().numpy(), sample.float().cpu().numpy(), title=title,
            titles=("target (validation segment)", "sample (EMA weights)"), value_range=plotting.SCALED_RANGE,
            size=(1000, 600),
        )  # fmt: skip
    except plotting.PlottingUnavailable:
        return False
    return True
