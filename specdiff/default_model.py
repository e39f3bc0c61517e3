"""Where the model bundled with the package lives (none is bundled yet).

A bundled model is a diffusers-layout pipeline folder (``model_index.json`` plus one subfolder per
network, spec §3.5) shipped inside the package at ``specdiff/assets/default_model/``. The CLI uses
it when ``--model`` is not given. Kept free of heavy imports so ``specdiff --help`` stays fast.
"""

from __future__ import annotations

from pathlib import Path

#: The folder a bundled model is expected in, relative to the installed package.
DEFAULT_MODEL_DIR = Path(__file__).resolve().parent / "assets" / "default_model"

#: The file that marks a folder as a pipeline folder (diffusers layout).
MODEL_INDEX = "model_index.json"


def default_model_path() -> Path | None:
    """The bundled model folder if the package ships one (it holds ``model_index.json``), else None."""
    if (DEFAULT_MODEL_DIR / MODEL_INDEX).is_file():
        return DEFAULT_MODEL_DIR
    return None
