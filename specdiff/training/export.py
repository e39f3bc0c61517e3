"""From a training checkpoint to a model: the networks of a checkpoint, and export to a model folder."""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from specdiff.errors import ModelError
from specdiff.pipeline.folder import VOCODER_FOLDER, is_model_folder
from specdiff.training.checkpoints import (
    list_checkpoints,
    load_checkpoint,
)
from specdiff.training.config import TrainConfig
from specdiff.training.objective import SpectrogramDiffusionModel
from specdiff.training.optim import EMA

# ---------------------------------------------------------------------------------------------
# Export to the diffusers folder layout
# ---------------------------------------------------------------------------------------------


def model_from_checkpoint(
    checkpoint: str | Path | Mapping[str, Any], use_ema: bool = True
) -> SpectrogramDiffusionModel:
    """The networks of a training checkpoint, with the EMA weights by default, in eval mode."""
    state = load_checkpoint(checkpoint) if not isinstance(checkpoint, Mapping) else checkpoint
    model = SpectrogramDiffusionModel.from_configs(state["model_configs"])
    model.load_state_dict(state["model"])
    if use_ema:
        ema = EMA(model, state["ema"]["decay"])
        ema.load_state_dict(state["ema"])
        ema.copy_to(model)
    return model.eval()


def model_from_path(path: str | Path, use_ema: bool = True) -> SpectrogramDiffusionModel:
    """The networks of a pipeline folder, a training checkpoint file or a run folder (its newest
    checkpoint; EMA weights unless ``use_ema`` is False), float32, in eval mode."""
    path = Path(path)
    if is_model_folder(path):
        from specdiff.pipeline.pipeline import SpectrogramDiffusionPipeline

        pipe = SpectrogramDiffusionPipeline.from_pretrained(path, inverter=None)
        return SpectrogramDiffusionModel(pipe.notes_encoder, pipe.continuous_encoder, pipe.decoder).eval()
    if path.is_dir():
        found = list_checkpoints(path)
        if not found:
            raise ModelError(f"no checkpoints in {path}")
        path = found[-1]
    return model_from_checkpoint(path, use_ema=use_ema)


def copy_vocoder(vocoder_dir: str | Path, pipeline_dir: str | Path) -> Path:
    """Copy a trained vocoder folder (``specdiff.audio.vocoder``) into ``pipeline_dir/vocoder`` atomically.

    The folder is loaded first, so a broken vocoder raises ``ModelError`` before anything is copied.
    """
    import shutil
    import tempfile

    from specdiff.audio.vocoder import Vocoder

    source = Path(vocoder_dir)
    Vocoder.from_pretrained(source)  # validates config + weights
    target = Path(pipeline_dir) / VOCODER_FOLDER
    tmp = Path(tempfile.mkdtemp(prefix=".vocoder.", suffix=".tmp", dir=pipeline_dir))
    try:
        shutil.copytree(source, tmp, dirs_exist_ok=True)
        if target.exists():
            shutil.rmtree(target)
        os.replace(tmp, target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return target


def export_pipeline(
    checkpoint: str | Path,
    out_dir: str | Path,
    use_ema: bool = True,
    vocoder: str | Path | None = None,
    half: bool = False,
) -> Path:
    """Write a training checkpoint as a ``SpectrogramDiffusionPipeline.from_pretrained`` folder.

    The layout is diffusers' (ORIGINAL.md §3.5, written by ``SpectrogramDiffusionPipeline.save_pretrained``):
    ``model_index.json``, the three network folders with the EMA weights (default) and ``scheduler/``.
    ``vocoder``: a trained vocoder folder to copy in as ``vocoder/`` (the pipeline's "auto" inverter
    picks it up). ``half``: store the weights as float16 (half the size; they load as float32).
    """
    from specdiff.pipeline.pipeline import SpectrogramDiffusionPipeline

    if vocoder is not None:  # refuse a broken vocoder before writing anything
        from specdiff.audio.vocoder import Vocoder

        Vocoder.from_pretrained(vocoder)
    model = model_from_checkpoint(checkpoint, use_ema=use_ema)
    pipe = SpectrogramDiffusionPipeline(model.notes_encoder, model.continuous_encoder, model.decoder)
    out = pipe.save_pretrained(out_dir, dtype=torch.float16 if half else torch.float32)
    if vocoder is not None:
        copy_vocoder(vocoder, out)
    return out


def with_folder_decoder_options(config: TrainConfig) -> TrainConfig:
    """A warm start from a pipeline folder whose decoder has extensions (score roll, prediction
    type, output bias) builds the same decoder: its options join ``config.model`` unless set there."""
    folder = Path(config.init_from) if config.init_from else None
    if folder is None or not (folder / "decoder" / "config.json").is_file():
        return config
    from specdiff.models.decoder import DECODER_EXTENSIONS

    decoder = json.loads((folder / "decoder" / "config.json").read_text())
    found = {k: decoder[k] for k in DECODER_EXTENSIONS if k in decoder and k not in config.model}
    return config.replace(model={**config.model, **found}) if found else config
