"""Warm starts: a model folder's weights as a training state dict, widening the score-roll weights."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from specdiff.training.objective import SpectrogramDiffusionModel

# ---------------------------------------------------------------------------------------------
# Warm starts
# ---------------------------------------------------------------------------------------------


def pipeline_folder_state_dict(folder: str | Path) -> dict[str, Tensor]:
    """The float32 state dict of :class:`SpectrogramDiffusionModel` held by a pipeline folder."""
    from specdiff.pipeline.pipeline import SpectrogramDiffusionPipeline

    pipe = SpectrogramDiffusionPipeline.from_pretrained(folder, inverter=None)
    model = SpectrogramDiffusionModel(pipe.notes_encoder, pipe.continuous_encoder, pipe.decoder)
    return {name: value.float() for name, value in model.state_dict().items()}


#: Decoder weights whose columns are the score roll's features (``specdiff.midi.score_roll``).
ROLL_WEIGHTS = ("decoder.score_projection.weight", "decoder.score_prior_projection.weight")


def _widen_roll_weights(state: dict[str, Any], target: dict[str, Tensor]) -> tuple[dict[str, Any], set[str]]:
    """A warm start from a model on a roll layout into one on a wider layout (base -> extended ->
    context-level -> velocity, ``specdiff.midi.score_roll.ROLL_LAYOUTS``): the roll weights get zero
    columns for the added features (so the model starts with the old one's output). Returns the state
    and the keys widened."""
    from specdiff.midi.score_roll import ROLL_LAYOUTS

    model_state, widened = dict(state["model"]), set()
    for key in ROLL_WEIGHTS:
        old, new = model_state.get(key), target.get(key)
        if old is None or new is None or old.shape == new.shape:
            continue
        # Each layout extends the one before it (score_roll.py), so a narrower one is a prefix.
        wider = old.shape[-1] in ROLL_LAYOUTS and new.shape[-1] in ROLL_LAYOUTS and new.shape[-1] > old.shape[-1]
        if wider and new.shape[:-1] == old.shape[:-1]:
            model_state[key] = torch.cat([old, old.new_zeros(*old.shape[:-1], new.shape[-1] - old.shape[-1])], -1)
            widened.add(key)
    return {**state, "model": model_state}, widened
