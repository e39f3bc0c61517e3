"""The model bundled with the package, and the torch dtype of a precision name.

A bundled model is a diffusers-layout pipeline folder (``model_index.json`` plus one subfolder per
network, ORIGINAL.md §3.5) shipped inside the package at ``specdiff/assets/default_model/``. The CLI uses
it when ``--model`` is not given. The sampler settings a model folder recommends (``sampling.json``)
are read and resolved by ``specdiff.pipeline.sampling_settings``. Kept free of heavy imports so
``specdiff --help`` stays fast.
"""

from __future__ import annotations

from pathlib import Path

from specdiff.constants import PRECISIONS
from specdiff.pipeline.folder import MODEL_INDEX

#: The folder a bundled model is expected in, relative to the installed package.
DEFAULT_MODEL_DIR = Path(__file__).resolve().parents[1] / "assets" / "default_model"


def precision_dtype(name: str):
    """The torch dtype of a precision name of :data:`PRECISIONS` (imports torch only when called)."""
    import torch

    dtypes = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
    if name not in dtypes:
        raise ValueError(f"unknown precision {name!r}; choose one of {', '.join(PRECISIONS)}")
    return dtypes[name]


def default_model_path() -> Path | None:
    """The bundled model folder if the package ships one (it holds ``model_index.json``), else None."""
    if (DEFAULT_MODEL_DIR / MODEL_INDEX).is_file():
        return DEFAULT_MODEL_DIR
    return None
