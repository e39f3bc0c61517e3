"""specdiff: multi-instrument MIDI synthesis with spectrogram diffusion.

Importing this package is cheap: heavy submodules (torch models, onnxruntime,
plotting) load on first attribute access.
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

# public name -> submodule that defines it
_LAZY = {
    "midi_to_segments": "specdiff.midi.tokenizer",
    "tokens_to_notes": "specdiff.midi.tokenizer",
    "log_mel": "specdiff.audio.mel",
    "scale_features": "specdiff.audio.mel",
    "scale_to_features": "specdiff.audio.mel",
    "NotesEncoder": "specdiff.models.encoders",
    "ContinuousEncoder": "specdiff.models.encoders",
    "FilmDecoder": "specdiff.models.decoder",
    "SpectrogramDiffusionPipeline": "specdiff.pipeline.pipeline",
    "AudioPipelineOutput": "specdiff.pipeline.outputs",
}

__all__ = ["__version__", *_LAZY]


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'specdiff' has no attribute {name!r}")
    return getattr(importlib.import_module(module), name)
