"""The model folder: the names of its layout, and reading and writing it.

The layout is the one diffusers uses for ``google/music-spectrogram-diffusion`` (ORIGINAL.md §3.5),
plus two optional files of ours::

    model_index.json
    notes_encoder/      config.json + diffusion_pytorch_model.safetensors (or .bin)
    continuous_encoder/ config.json + diffusion_pytorch_model.safetensors (or .bin)
    decoder/            config.json + diffusion_pytorch_model.safetensors (or .bin)
    scheduler/          scheduler_config.json
    melgan/model.onnx   optional: the official spectrogram inverter (ORIGINAL.md §6)
    vocoder/            optional: our neural vocoder (``specdiff.audio.vocoder``)
    sampling.json       optional: the recommended sampler settings (``specdiff.pipeline.sampling_settings``)

Every module that needs one of these names imports it from here. This module is light: torch,
safetensors and the networks are imported by the functions that read or write weights, so the
command line and the bundled-model lookup can use the names without them.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from specdiff.errors import ModelError

if TYPE_CHECKING:
    import torch
    from torch import Tensor

MODEL_INDEX = "model_index.json"
CONFIG_NAME = "config.json"
SAFETENSORS_NAME = "diffusion_pytorch_model.safetensors"
BIN_NAME = "diffusion_pytorch_model.bin"
SCHEDULER_FOLDER = "scheduler"
SCHEDULER_CONFIG_NAME = "scheduler_config.json"
#: A model folder's recommended sampler settings (optional).
SAMPLING_FILE = "sampling.json"
MELGAN_FOLDER = "melgan"
#: The official spectrogram inverter inside a model folder (ORIGINAL.md §6).
ONNX_SUBPATH = Path(MELGAN_FOLDER) / "model.onnx"
#: Our neural vocoder, inside a model folder or a vocoder run folder.
VOCODER_FOLDER = "vocoder"
#: Inverter folders copied along by save_pretrained (the official ONNX file, our own vocoder).
INVERTER_FOLDERS = (MELGAN_FOLDER, VOCODER_FOLDER)
#: The three networks, with their class names as diffusers writes them (so diffusers can load our
#: folders, and we load theirs).
NETWORKS: dict[str, str] = {
    "notes_encoder": "SpectrogramNotesEncoder",
    "continuous_encoder": "SpectrogramContEncoder",
    "decoder": "T5FilmDecoder",
}
DIFFUSERS_VERSION = "0.20.0"  # the version the official checkpoint's layout comes from


def network_classes() -> dict[str, type]:
    """The class of each network of :data:`NETWORKS` (imports torch)."""
    from specdiff.models.decoder import FilmDecoder
    from specdiff.models.encoders import ContinuousEncoder, NotesEncoder

    return {"notes_encoder": NotesEncoder, "continuous_encoder": ContinuousEncoder, "decoder": FilmDecoder}


def is_model_folder(path: str | os.PathLike) -> bool:
    """Whether ``path`` is a folder in this layout (it holds ``model_index.json``)."""
    return (Path(path) / MODEL_INDEX).is_file()


def read_json(path: Path, what: str) -> dict[str, Any]:
    if not path.is_file():
        raise ModelError(f"{what}: {path} is missing")
    try:
        data = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ModelError(f"{what}: cannot read {path} ({err})") from None
    if not isinstance(data, dict):
        raise ModelError(f"{what}: {path} is not a JSON object")
    return data


def write_json(path: Path, obj: Any) -> None:
    path.write_text(json.dumps(obj, indent=2, sort_keys=True) + "\n")


def load_state_dict(folder: Path) -> dict[str, Tensor]:
    import torch

    safetensors_path, bin_path = folder / SAFETENSORS_NAME, folder / BIN_NAME
    try:
        if safetensors_path.is_file():
            from safetensors.torch import load_file

            return load_file(str(safetensors_path))
        if bin_path.is_file():
            state = torch.load(bin_path, map_location="cpu", weights_only=True)
            if not isinstance(state, dict):
                raise ModelError(f"{bin_path} does not hold a state dict")
            return state
    except ModelError:
        raise
    except Exception as err:  # safetensors / pickle errors have many types
        message = str(err).splitlines()[0] if str(err) else type(err).__name__
        raise ModelError(f"cannot read the weights in {folder}: {message}") from None
    raise ModelError(f"{folder} has no weights ({SAFETENSORS_NAME} or {BIN_NAME})")


def _describe_keys(keys: Sequence[str]) -> str:
    keys = list(keys)
    shown = ", ".join(keys[:3]) + (f", ... ({len(keys)} in all)" if len(keys) > 3 else "")
    return shown


def load_component(folder: str | Path, cls: type) -> torch.nn.Module:
    """One network from ``folder/config.json`` (``cls.from_config``, ``specdiff.models.config``) +
    weights, loaded with ``strict=True``, in eval mode."""
    from specdiff.models.initialisation import skip_weight_init

    folder = Path(folder)
    if not folder.is_dir():
        raise ModelError(f"model folder is incomplete: {folder} is missing")
    config = {k: v for k, v in read_json(folder / CONFIG_NAME, folder.name).items() if not k.startswith("_")}
    try:
        with skip_weight_init():  # on the meta device, no random init of weights about to be replaced
            module = cls.from_config(config)
    except (TypeError, ValueError) as err:
        raise ModelError(f"{folder / CONFIG_NAME} does not fit {cls.__name__}: {err}") from None
    state = load_state_dict(folder)
    expected = module.state_dict()
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    if missing or unexpected:
        parts = ([f"missing {_describe_keys(missing)}"] if missing else []) + (
            [f"unexpected {_describe_keys(unexpected)}"] if unexpected else []
        )
        raise ModelError(f"weights in {folder} do not match {cls.__name__}: {'; '.join(parts)}")
    wrong = [k for k, v in expected.items() if tuple(state[k].shape) != tuple(v.shape)]
    if wrong:
        k = wrong[0]
        raise ModelError(
            f"weights in {folder} do not match its config: {k} has shape {tuple(state[k].shape)}, "
            f"expected {tuple(expected[k].shape)} ({len(wrong)} mismatched)"
        )
    # Copy every tensor into memory of our own (freeing the file's buffer as we go): tensors read
    # from a file can start at any byte offset, and MKL's matrix-vector kernels round differently
    # on unaligned data, so a loaded model would not reproduce the saved one bit for bit.
    aligned = {k: state.pop(k).float().clone() for k in list(state)}
    module.load_state_dict(aligned, strict=True, assign=True)
    return module.eval()


def read_networks(path: Path) -> tuple[dict[str, torch.nn.Module], dict[str, Any] | None]:
    """The three networks of a model folder (float32, eval mode) and its scheduler config (or None)."""
    index = read_json(path / MODEL_INDEX, "not a pipeline folder")
    for name in NETWORKS:
        if name not in index:
            raise ModelError(f"{path / MODEL_INDEX} names no {name}; is this a Spectrogram Diffusion model?")
    classes = network_classes()
    modules = {name: load_component(path / name, classes[name]) for name in NETWORKS}
    scheduler_file = path / SCHEDULER_FOLDER / SCHEDULER_CONFIG_NAME
    scheduler_config = read_json(scheduler_file, "scheduler") if scheduler_file.exists() else None
    return modules, scheduler_config


def write_folder(
    path: str | os.PathLike,
    networks: Mapping[str, torch.nn.Module],
    scheduler_config: Mapping[str, Any],
    class_name: str,
    dtype: torch.dtype,
    source: Path | None = None,
    extra: Callable[[Path], None] | None = None,
) -> Path:
    """Write the folder layout (safetensors weights), atomically: a temporary folder is renamed
    into place, so a failure leaves no half-written model. Replaces an existing pipeline folder.

    ``networks``: the modules of :data:`NETWORKS` (each with the ``config`` its constructor recorded,
    ``specdiff.models.config``, written as its ``config.json``); ``class_name``: the
    pipeline's class name for ``model_index.json``; ``dtype``: storage type of the weights;
    ``source``: a model folder whose inverter folders are copied along; ``extra(folder)`` writes
    further files into the temporary folder before it is renamed into place."""
    from safetensors.torch import save_file

    path = Path(path)
    if path.exists() and not (path / MODEL_INDEX).is_file() and (not path.is_dir() or any(path.iterdir())):
        raise ModelError(f"refusing to overwrite {path}: it exists and is not a pipeline folder")
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent))
    try:
        index: dict[str, Any] = {"_class_name": class_name, "_diffusers_version": DIFFUSERS_VERSION}
        for name, network_class in NETWORKS.items():
            module = networks[name]
            (tmp / name).mkdir()
            config = {"_class_name": network_class, "_diffusers_version": DIFFUSERS_VERSION, **dict(module.config)}
            write_json(tmp / name / CONFIG_NAME, config)
            tensors = {k: v.detach().to(dtype).cpu().contiguous() for k, v in module.state_dict().items()}
            save_file(tensors, str(tmp / name / SAFETENSORS_NAME), metadata={"format": "pt"})
            index[name] = ["diffusers", network_class]
        (tmp / SCHEDULER_FOLDER).mkdir()
        scheduler = {"_class_name": "DDPMScheduler", **scheduler_config}
        scheduler["_diffusers_version"] = DIFFUSERS_VERSION
        write_json(tmp / SCHEDULER_FOLDER / SCHEDULER_CONFIG_NAME, scheduler)
        index[SCHEDULER_FOLDER] = ["diffusers", scheduler["_class_name"]]
        index[MELGAN_FOLDER] = [None, None]
        if source is not None:
            for folder in INVERTER_FOLDERS:
                if (source / folder).is_dir():
                    shutil.copytree(source / folder, tmp / folder)
            if (tmp / MELGAN_FOLDER).is_dir():
                index[MELGAN_FOLDER] = ["diffusers", "OnnxRuntimeModel"]
        write_json(tmp / MODEL_INDEX, index)
        if extra is not None:
            extra(tmp)
        if path.exists():
            old = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".old", dir=path.parent))
            os.replace(path, old / "model")
            os.replace(tmp, path)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return path
