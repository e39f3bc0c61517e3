"""What the pipeline gives back to its caller: progress and per-step callbacks while it runs, then
the spectrogram inverter, trimming to the music, the fade at the cut, and the return types
(``AudioPipelineOutput`` as diffusers returns it, ``SegmentOutput`` for streaming).

``SpectrogramDiffusionPipeline`` (``specdiff.pipeline.pipeline``) generates whole 5.12 s segments
of log-mel; these functions turn them into what a caller asked for.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from specdiff.constants import FRAMES_PER_SECOND
from specdiff.errors import ModelError, SpecdiffError

if TYPE_CHECKING:
    from torch import Tensor

#: A raised-cosine fade over the last samples of trimmed audio, so the cut never clicks.
FADE_OUT_SECONDS = 0.05
#: What ``output_type`` may be: audio through the inverter, or the log-mel itself.
OUTPUT_TYPES = ("np", "mel")


@dataclass
class AudioPipelineOutput:
    """``audios``: audio ``[1, n_samples]`` (output_type "np") or log-mel ``[1, frames, 128]``
    ("mel"), as diffusers returns them; ``mels``: the log-mel ``[1, frames, 128]`` in both cases."""

    audios: np.ndarray
    mels: np.ndarray


@dataclass
class SegmentOutput:
    """One finished segment from :meth:`SpectrogramDiffusionPipeline.segments`."""

    index: int
    start_time: float  # seconds from the start of the song
    mel: np.ndarray  # [frames, 128] log-mel (the last segment trimmed like __call__'s output)
    audio: np.ndarray | None  # [frames * 320] when the pipeline has an inverter


def progress_bar(total: int, show: bool) -> Any:
    """The denoising progress bar (tqdm; ``show=False``: a silent one that still counts)."""
    from tqdm.auto import tqdm

    return tqdm(total=total, disable=not show, unit="step", desc="denoising", leave=True)


def step_end_hook(
    pipe: Any, callback: Callable[..., dict[str, Any] | None] | None
) -> Callable[[int, Any, Tensor], Tensor] | None:
    """``callback_on_step_end(pipe, step_index, timestep, {"latents": x})`` (diffusers' name and
    arguments) as the sampler loop's ``on_step_end(step_index, timestep, x)``; the dict it returns
    may replace the latents, and raising from it cancels the call."""
    if callback is None:
        return None

    def on_step_end(step_index: int, timestep: Any, x: Tensor) -> Tensor:
        returned = callback(pipe, step_index, timestep, {"latents": x})
        return returned.get("latents", x) if returned else x

    return on_step_end


def check_output_type(output_type: str) -> None:
    """:class:`SpecdiffError` unless ``output_type`` is one of :data:`OUTPUT_TYPES`."""
    if output_type not in OUTPUT_TYPES:
        raise SpecdiffError(f"output_type must be 'np' or 'mel', got {output_type!r}")


def resolve_inverter(inverter: Any, path: Path | None) -> Any:
    """``None``/"none", an inverter object, or a name for ``specdiff.audio.inverters.load_inverter``
    (looked up in the model folder ``path``)."""
    if inverter is None or (isinstance(inverter, str) and inverter == "none"):
        return None
    if not isinstance(inverter, str):
        if not callable(inverter):
            raise TypeError(f"inverter must be a name or a callable mel -> audio, got {type(inverter).__name__}")
        return inverter
    try:
        from specdiff.audio.inverters import load_inverter
    except ModuleNotFoundError as err:
        if err.name == "specdiff.audio.inverters" and inverter == "auto":
            return None  # mel output still works; "np" output will say what is missing
        raise
    return load_inverter(path, inverter)


def require_inverter(inverter: Any) -> None:
    """:class:`ModelError` when there is no inverter (audio output cannot be made)."""
    if inverter is None:
        raise ModelError(
            "audio output needs a spectrogram inverter (the model folder has none); "
            "pass inverter=... or use output_type='mel'"
        )


def invert(inverter: Any, mel: Tensor) -> np.ndarray:
    """Log-mel ``[B, T, 128]`` -> float32 audio ``[B, T * hop]`` through ``inverter``."""
    require_inverter(inverter)
    audio = inverter(mel.detach().float().cpu().numpy())
    if isinstance(audio, (list, tuple)):  # ONNX sessions return a list of outputs
        audio = audio[0]
    return np.asarray(audio, dtype=np.float32)


def fade_out(audio: np.ndarray, num_samples: int) -> np.ndarray:
    """Raised-cosine fade over the last ``num_samples`` of ``audio [..., n]`` (a copy)."""
    audio = np.array(audio, dtype=np.float32, copy=True)
    n = min(num_samples, audio.shape[-1])
    if n > 0:
        audio[..., -n:] *= (0.5 + 0.5 * np.cos(np.pi * np.arange(1, n + 1) / n)).astype(np.float32)
    return audio


def song_output(full: Tensor, keep: int, output_type: str, inverter: Any, sample_rate: int) -> AudioPipelineOutput:
    """Whole-song mel ``[1, frames, 128]`` (CPU) -> the output trimmed to ``keep`` frames (and audio)."""
    mel_out = full[:, :keep].numpy()
    if output_type == "mel":
        return AudioPipelineOutput(audios=mel_out, mels=mel_out)
    # Invert the untrimmed mel, then cut: the inverter sees no artificial edge at the cut.
    audio = invert(inverter, full)
    hop = audio.shape[-1] // full.shape[1]
    audios = audio[:, : keep * hop]
    if keep < full.shape[1]:
        audios = fade_out(audios, int(FADE_OUT_SECONDS * sample_rate))
    return AudioPipelineOutput(audios=audios, mels=mel_out)


def segment_output(index: int, mel: Tensor, keep: int, inverter: Any, sample_rate: int) -> SegmentOutput:
    """Segment ``index``'s mel ``[1, T, 128]`` -> its :class:`SegmentOutput`, trimmed where the song
    keeps fewer than ``(index + 1) * T`` frames; audio when there is an inverter (inverted per
    segment, so it can differ from a whole-song inversion near the 5.12 s boundaries)."""
    segment_frames = mel.shape[1]
    start = index * segment_frames
    frames = min(segment_frames, keep - start)
    audio = None
    if inverter is not None:
        wave = invert(inverter, mel)[0]
        hop = wave.shape[-1] // segment_frames
        audio = wave[: frames * hop]
        if frames < segment_frames:
            audio = fade_out(audio, int(FADE_OUT_SECONDS * sample_rate))
    return SegmentOutput(index, start / FRAMES_PER_SECOND, mel[0, :frames].float().cpu().numpy(), audio)
