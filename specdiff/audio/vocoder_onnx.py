"""ONNX export of a :class:`specdiff.audio.vocoder.Vocoder` with the official inverter's interface (ORIGINAL.md §6)."""

from __future__ import annotations

import os
from pathlib import Path

import torch

from specdiff.atomic import atomic_write
from specdiff.audio.vocoder import Vocoder
from specdiff.errors import ModelError

ONNX_INPUT_NAME = "input_features"  # the official inverter's input name (ORIGINAL.md §6)
ONNX_OUTPUT_NAME = "waveform"  # the official output's name is unknown (ORIGINAL.md §6); used by position


def export_onnx(model: Vocoder, path: str | os.PathLike, opset: int = 17) -> Path:
    """Export with the official inverter's interface (ORIGINAL.md §6): ``input_features`` float32
    ``[B, T, 128]`` log-mel -> ``waveform`` float32 ``[B, T * 320]``, dynamic B and T.

    Uses the TorchScript exporter (no ``onnx``/``onnxscript`` needed at export time). The graph holds
    the network with its head's own phase, so a vocoder whose synthesis is ``"phase_vocoder"`` (its
    head's phase is not trained) is refused: the phase vocoder's frame-by-frame peak tracking is not in it.
    """
    import warnings

    if model.config.synthesis != "network":
        raise ModelError(
            f"this vocoder's synthesis is {model.config.synthesis!r}: its head's phase is not trained, and the "
            "phase vocoder that makes its phase does not fit in an ONNX graph; use it through specdiff "
            "(VocoderInverter / load_vocoder), or export a vocoder trained with synthesis 'network'"
        )

    path = Path(path)
    model = model.eval()
    example = torch.zeros(1, 16, model.config.n_mels)

    def write(tmp: Path) -> None:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the TorchScript exporter is deprecated but self-contained
            torch.onnx.export(
                model,
                (example,),
                str(tmp),
                input_names=[ONNX_INPUT_NAME],
                output_names=[ONNX_OUTPUT_NAME],
                dynamic_axes={ONNX_INPUT_NAME: {0: "batch", 1: "frames"}, ONNX_OUTPUT_NAME: {0: "batch", 1: "samples"}},
                opset_version=opset,
                dynamo=False,
            )

    atomic_write(path, write)
    return path
