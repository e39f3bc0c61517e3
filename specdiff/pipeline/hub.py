"""Models named by their Hugging Face Hub id (``google/music-spectrogram-diffusion``), fetched once and
found offline afterwards.

Wherever a model folder is accepted (``--model``, ``--vocoder``, ``train --init-from``,
``SpectrogramDiffusionPipeline.from_pretrained``), a string that is not an existing path and looks
like ``ORG/NAME`` (optionally ``ORG/NAME@REVISION``: a branch, tag or commit) is a Hub id:
:func:`resolve_model_path` hands it to ``huggingface_hub.snapshot_download``, which keeps the files
in its standard cache (``HF_HOME`` / ``HF_HUB_CACHE``, default ``~/.cache/huggingface/hub``), pinned
by revision, reads the token from the usual places (``HF_TOKEN``, ``hf auth login``), and with
``HF_HUB_OFFLINE=1`` (or no network) serves what the cache already holds. Only the files a pipeline
uses are downloaded (:data:`PIPELINE_FILES`): for each network its safetensors weights, or its
``diffusion_pytorch_model.bin`` where a repository has no safetensors (the official one's layout).

huggingface_hub is optional (the ``hub`` extra); it is imported only when a Hub id is used. Light at
import: no torch.
"""

from __future__ import annotations

import os
import re
from collections.abc import Sequence
from pathlib import Path

from specdiff.constants import HUB_EXTRA_INSTALL, OFFICIAL_MODEL_ID
from specdiff.errors import ModelError
from specdiff.pipeline.folder import (
    BIN_NAME,
    CONFIG_NAME,
    MELGAN_FOLDER,
    MODEL_INDEX,
    NETWORKS,
    SAFETENSORS_NAME,
    SAMPLING_FILE,
    SCHEDULER_CONFIG_NAME,
    SCHEDULER_FOLDER,
    VOCODER_FOLDER,
)

#: ``ORG/NAME`` or ``ORG/NAME@REVISION`` (the Hub's name rules: letters, digits, ``-``, ``_``, ``.``).
HUB_ID = re.compile(r"^(?P<repo>[A-Za-z0-9][\w.-]*/[A-Za-z0-9][\w.-]*)(?:@(?P<revision>[\w./-]+))?$")

#: What a pipeline folder needs (``snapshot_download`` allow patterns; ``*`` also matches ``/``).
PIPELINE_FILES = (
    MODEL_INDEX,
    SAMPLING_FILE,
    "MODEL_CARD.md",
    f"*/{CONFIG_NAME}",
    f"{SCHEDULER_FOLDER}/{SCHEDULER_CONFIG_NAME}",
    *(f"{name}/{SAFETENSORS_NAME}" for name in NETWORKS),
    f"{MELGAN_FOLDER}/*",
    f"{VOCODER_FOLDER}/*",
)
#: The networks whose ``diffusion_pytorch_model.bin`` is fetched when their safetensors file is missing.
PIPELINE_NETWORKS = tuple(NETWORKS)
#: What a vocoder needs: a model folder's ``vocoder/``, or a repository that is a vocoder folder.
VOCODER_FILES = ("vocoder/*", "config.json", "model.safetensors")


def looks_like_hub_id(model: str | os.PathLike) -> bool:
    """Whether ``model`` names a Hub repository (``ORG/NAME[@REVISION]``) rather than a local path.
    An existing path is always local."""
    text = os.fspath(model)
    return bool(HUB_ID.match(text)) and not Path(text).exists()


def resolve_model_path(
    model: str | os.PathLike,
    revision: str | None = None,
    files: Sequence[str] = PIPELINE_FILES,
    what: str = "model",
) -> Path:
    """A local folder for ``model``: the path itself, or for a Hub id the snapshot folder in the
    Hugging Face cache (downloaded first when needed and allowed).

    ``revision`` (a branch, tag or commit; default ``main``, or the ``@REVISION`` of the id) pins
    the files. A path that does not exist and is no Hub id comes back unchanged (the caller reports
    it). Raises :class:`ModelError` with one line saying what to do when the files cannot be had
    (offline and not cached, no huggingface_hub, unknown repository or revision).
    """
    if not looks_like_hub_id(model):
        return Path(model)
    match = HUB_ID.match(os.fspath(model))
    assert match is not None
    repo_id, revision = match["repo"], revision or match["revision"]
    folder = _snapshot(repo_id, revision, list(files), what)
    if files is PIPELINE_FILES:
        missing = [
            f"{name}/{BIN_NAME}"
            for name in PIPELINE_NETWORKS
            if (folder / name).is_dir() and not (folder / name / "diffusion_pytorch_model.safetensors").is_file()
        ]
        if missing:  # older repositories (the official one) may have only PyTorch pickles
            folder = _snapshot(repo_id, folder.name, missing, what)  # the same commit
    return folder


def _is_true(value: str | None) -> bool:
    return (value or "").strip().upper() in {"1", "ON", "YES", "TRUE"}


def hub_offline() -> bool:
    """``HF_HUB_OFFLINE`` as set now (huggingface_hub reads it once, at its import)."""
    return _is_true(os.environ.get("HF_HUB_OFFLINE")) or _is_true(os.environ.get("TRANSFORMERS_OFFLINE"))


def _snapshot(repo_id: str, revision: str | None, files: list[str], what: str) -> Path:
    """``snapshot_download`` with errors turned into one line each."""
    at = f"{repo_id}@{revision}" if revision else repo_id
    get_it = f"`hf download {repo_id}" + (f" --revision {revision}" if revision else "") + "` with network access"
    try:
        import huggingface_hub
        from huggingface_hub import constants, errors
    except ImportError:
        raise ModelError(
            f"{what} {at} is no folder here; as a Hugging Face Hub id it needs huggingface_hub: "
            f"{HUB_EXTRA_INSTALL} (or download the repository and pass its folder)"
        ) from None
    offline = hub_offline() or bool(getattr(constants, "HF_HUB_OFFLINE", False))
    try:
        folder = huggingface_hub.snapshot_download(
            repo_id,
            revision=revision,
            allow_patterns=files,
            local_files_only=offline,
            library_name="specdiff",
        )
    except errors.GatedRepoError:
        raise ModelError(
            f"{what} {at} is gated on the Hugging Face Hub: accept its terms on huggingface.co, then log "
            "in (`hf auth login`, or set HF_TOKEN)"
        ) from None
    except errors.RepositoryNotFoundError:
        raise ModelError(
            f"{what} {repo_id} is neither a folder here nor a repository on the Hugging Face Hub (a private "
            "one needs a token: `hf auth login` or HF_TOKEN)"
        ) from None
    except errors.RevisionNotFoundError:
        raise ModelError(f"{what} {repo_id} has no revision {revision!r} on the Hugging Face Hub") from None
    except (errors.LocalEntryNotFoundError, getattr(errors, "IncompleteSnapshotError", OSError)) as err:
        cache = getattr(constants, "HF_HUB_CACHE", "the Hugging Face cache")
        if offline:
            reason = "downloads are off (HF_HUB_OFFLINE=1)"
            fix = f"run {get_it} (or unset HF_HUB_OFFLINE), or pass a local folder"
        else:
            reason = "the Hugging Face Hub cannot be reached"
            fix = f"run {get_it}, or pass a local folder"
        if "incomplete" in str(err).lower():
            reason = f"its cached copy is incomplete and {reason}"
        raise ModelError(f"{what} {at} is not in the Hugging Face cache ({cache}) and {reason}: {fix}") from None
    except errors.HfHubHTTPError as err:
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise ModelError(f"cannot download {what} {at} from the Hugging Face Hub: {first}") from None
    return Path(folder)


__all__ = [
    "HUB_ID", "OFFICIAL_MODEL_ID", "PIPELINE_FILES", "VOCODER_FILES", "hub_offline", "looks_like_hub_id",
    "resolve_model_path",
]  # fmt: skip
