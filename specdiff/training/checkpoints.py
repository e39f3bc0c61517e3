"""Training checkpoints: where a run keeps them, atomic and durable writes, reading them back, and
the random-number states a bit-exact resume needs.

A checkpoint is a plain dict of tensors, numbers, strings and lists (no pickled classes), written
with ``torch.save`` and read with ``torch.load(weights_only=True)``.
"""

from __future__ import annotations

import random
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch

from specdiff.atomic import atomic_write_stream
from specdiff.errors import ModelError

CHECKPOINT_FORMAT = "specdiff-train-checkpoint/1"


def capture_rng_state() -> dict[str, Any]:
    """torch, CUDA, numpy and Python RNG states in a form ``torch.load(weights_only=True)`` accepts."""
    name, keys, pos, has_gauss, cached = np.random.get_state()
    state = {
        "torch": torch.get_rng_state(),
        "numpy": [name, torch.from_numpy(keys.astype(np.int64)), int(pos), int(has_gauss), float(cached)],
        "python": random.getstate(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng_state(state: Mapping[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    name, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((name, keys.numpy().astype(np.uint32), pos, has_gauss, cached))
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def checkpoint_dir(out_dir: str | Path) -> Path:
    return Path(out_dir) / "checkpoints"


def list_checkpoints(out_dir: str | Path) -> list[Path]:
    """Checkpoints of a run, oldest first."""
    folder = checkpoint_dir(out_dir)
    return sorted(folder.glob("step_*.pt")) if folder.is_dir() else []


def atomic_torch_save(obj: Any, path: Path) -> None:
    """``torch.save`` to a temp file in the same folder, fsync, then ``os.replace`` (never a torn file)."""
    atomic_write_stream(path, lambda f: torch.save(obj, f), fsync=True)


def save_checkpoint(path: Path, state: dict[str, Any], keep: int) -> Path:
    """Write one checkpoint atomically and delete all but the newest ``keep`` of the run."""
    atomic_torch_save(state, path)
    if keep > 0:
        for old in list_checkpoints(path.parent.parent)[:-keep]:
            old.unlink(missing_ok=True)
    return path


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise ModelError(f"checkpoint not found: {path}")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - any unpickling failure is a bad file
        raise ModelError(f"cannot read checkpoint {path}: {exc}") from None
    if not isinstance(state, dict) or state.get("format") != CHECKPOINT_FORMAT:
        raise ModelError(f"{path} is not a specdiff training checkpoint")
    return state
