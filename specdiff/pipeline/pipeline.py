"""``SpectrogramDiffusionPipeline``: MIDI tokens -> log-mel -> audio, segment by segment (ORIGINAL.md §5).

Model folders (the diffusers layout, ORIGINAL.md §3.5) are read and written by ``specdiff.pipeline.folder``.

The full-song loop follows diffusers' pipeline (ORIGINAL.md §5.1): the first segment gets an all-zero
context in feature space with an all-False mask, every later one the previous generated mel with an
all-True mask; the context is scaled with ``clip=True``, the output unscaled without clipping. With
``scheduler="ddpm"`` and ``guidance_scale=1`` it reproduces diffusers' pipeline for the same seed.
Our defaults differ on purpose: the original sampler with classifier-free guidance (ORIGINAL.md §4.1,
``specdiff.sampling.sampler``) and output trimmed to the music instead of whole 5.12 s segments.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from specdiff.audio.mel import scale_features, scale_to_features
from specdiff.constants import FRAMES_PER_SECOND, SAMPLE_RATE
from specdiff.errors import MidiError, ModelError, SpecdiffError
from specdiff.midi.score_roll import ROLL_LAYOUTS, batch_rolls
from specdiff.pipeline.folder import NETWORKS, read_networks, write_folder
from specdiff.pipeline.sampling_settings import (
    ResolvedSampling,
    SamplingSettings,
    read_sampling_settings,
    resolve_sampling,
    write_sampling_settings,
)
from specdiff.sampling import sampler as samplers

#: Seconds of audio kept after the music's end (TokenizedMidi.duration): room for the release of
#: the last notes, which the notes themselves do not include. The rest of the last 5.12 s segment
#: is cut off (diffusers returns whole segments, ORIGINAL.md §5.1).
RELEASE_TAIL_SECONDS = 0.5
#: A raised-cosine fade over the last samples of trimmed audio, so the cut never clicks.
FADE_OUT_SECONDS = 0.05


@dataclass
class AudioPipelineOutput:
    """``audios``: audio ``[1, n_samples]`` (output_type "np") or log-mel ``[1, frames, 128]``
    ("mel"), as diffusers returns them; ``mels``: the log-mel ``[1, frames, 128]`` in both cases."""

    audios: np.ndarray
    mels: np.ndarray


@dataclass(frozen=True)
class SynthesisPlan:
    """What a call of the pipeline will do for one song (:meth:`SpectrogramDiffusionPipeline.plan`)."""

    segments: int  # 5.12 s segments generated (those after the release tail are skipped)
    frames: int  # log-mel frames of the output (the music plus the release tail)
    segment_frames: int
    steps: int  # denoising steps per segment
    max_steps: int | None  # the most steps the scheduler allows (None: no limit)

    @property
    def total_steps(self) -> int:
        return self.segments * self.steps


@dataclass
class SegmentOutput:
    """One finished segment from :meth:`SpectrogramDiffusionPipeline.segments`."""

    index: int
    start_time: float  # seconds from the start of the song
    mel: np.ndarray  # [frames, 128] log-mel (the last segment trimmed like __call__'s output)
    audio: np.ndarray | None  # [frames * 320] when the pipeline has an inverter


def _module_config(module: torch.nn.Module, key: str) -> Any:
    config = module.config
    return config[key] if isinstance(config, dict) else getattr(config, key)


def _first_param(module: torch.nn.Module) -> Tensor:
    return next(module.parameters())


# ---------------------------------------------------------------------------------------------
# Inputs
# ---------------------------------------------------------------------------------------------


def _as_segments(input_tokens: Any) -> tuple[list[list[int]], float | None]:
    """Token segments and the music's duration (None for bare token lists: no trimming)."""
    if isinstance(input_tokens, (str, os.PathLike)):
        from specdiff.midi.tokenizer import midi_to_segments

        input_tokens = midi_to_segments(input_tokens)
    if hasattr(input_tokens, "segments") and hasattr(input_tokens, "duration"):
        segments, duration = list(input_tokens.segments), float(input_tokens.duration)
    else:
        segments, duration = list(input_tokens), None
    if not segments:
        raise MidiError("nothing to synthesize: the input has no token segments")
    return segments, duration


def _segment_tensor(tokens: Sequence[int], index: int, vocab_size: int, max_length: int) -> Tensor:
    try:
        ids = torch.as_tensor(np.asarray(tokens, dtype=np.int64))
    except (TypeError, ValueError, OverflowError):
        raise MidiError(f"token segment {index} is not a list of integers") from None
    if ids.ndim != 1 or len(ids) > max_length:
        raise MidiError(
            f"token segment {index} must be a flat list of at most {max_length} tokens, got shape {tuple(ids.shape)}"
        )
    if len(ids) and (int(ids.min()) < 0 or int(ids.max()) >= vocab_size):
        raise MidiError(f"token segment {index} has ids outside the vocabulary [0, {vocab_size})")
    return ids


def frames_to_keep(num_segments: int, segment_frames: int, duration: float | None) -> int:
    """Output length in frames: the music plus :data:`RELEASE_TAIL_SECONDS`, at most the segments."""
    total = num_segments * segment_frames
    if duration is None:
        return total
    return max(1, min(total, math.ceil((duration + RELEASE_TAIL_SECONDS) * FRAMES_PER_SECOND)))


def fade_out(audio: np.ndarray, num_samples: int) -> np.ndarray:
    """Raised-cosine fade over the last ``num_samples`` of ``audio [..., n]`` (a copy)."""
    audio = np.array(audio, dtype=np.float32, copy=True)
    n = min(num_samples, audio.shape[-1])
    if n > 0:
        audio[..., -n:] *= (0.5 + 0.5 * np.cos(np.pi * np.arange(1, n + 1) / n)).astype(np.float32)
    return audio


# ---------------------------------------------------------------------------------------------
# Loading and saving
# ---------------------------------------------------------------------------------------------


def _resolve_inverter(inverter: Any, path: Path | None) -> Any:
    """``None``/"none", an inverter object, or a name for ``specdiff.audio.inverters.load_inverter``."""
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


# ---------------------------------------------------------------------------------------------
# The pipeline
# ---------------------------------------------------------------------------------------------


class SpectrogramDiffusionPipeline:
    """Notes encoder + context encoder + FiLM decoder + sampler (+ spectrogram inverter).

    ``scheduler``: a name (``specdiff.sampling.sampler.SCHEDULERS``), one of our samplers, or a diffusers
    scheduler; None (the default): ``sampling.scheduler`` (``"original"`` unless the model folder's
    ``sampling.json`` says otherwise). ``inverter``: a callable ``log_mel [B, T, 128] (numpy) ->
    audio [B, T * 320]`` (``specdiff.audio.inverters``), needed only for audio output.
    """

    def __init__(
        self,
        notes_encoder: torch.nn.Module,
        continuous_encoder: torch.nn.Module,
        decoder: torch.nn.Module,
        scheduler: Any = None,
        inverter: Any = None,
        scheduler_config: dict[str, Any] | None = None,
        autocast: torch.dtype | None = None,
        sampling: SamplingSettings | None = None,
    ) -> None:
        self.notes_encoder = notes_encoder.eval()
        self.continuous_encoder = continuous_encoder.eval()
        self.decoder = decoder.eval()
        roll_features = getattr(decoder, "score_roll_features", 0)
        if roll_features and roll_features not in ROLL_LAYOUTS:
            raise ModelError(
                f"the decoder expects a score roll of {roll_features} features per frame; this version of "
                f"specdiff computes {' or '.join(map(str, ROLL_LAYOUTS))} (specdiff.midi.score_roll): the model was "
                "trained with another layout"
            )
        #: Sampler, steps and guidance the model recommends, used where a call leaves them unset (a
        #: model folder's sampling.json, else the library defaults); saved with the folder.
        self.sampling = sampling if sampling is not None else SamplingSettings()
        self._scheduler = scheduler  # None: the recommendation (see the scheduler property)
        #: diffusers scheduler config used when a diffusers sampler is chosen by name (ORIGINAL.md §3.5).
        self.scheduler_config = dict(scheduler_config or samplers.OFFICIAL_SCHEDULER_CONFIG)
        self.inverter = inverter
        #: Mixed precision for the networks (torch.bfloat16 / torch.float16 on CUDA, bfloat16 on
        #: CPU, float16 on MPS), or None for the weights' dtype. The sampler state, the schedule
        #: arithmetic and the guidance combination stay float32 (the original found bf16 sampling
        #: "much worse", ORIGINAL.md §4.1); only matmuls and attention run in the lower precision.
        self.autocast = autocast
        self._source: Path | None = None  # folder loaded from: its inverter files travel on save
        self._timbre: str | None = None

    @property
    def scheduler(self) -> Any:
        """The sampler of calls that name none: the one given to the pipeline, else
        ``sampling.scheduler`` (the model's recommendation). Set it to a name or a sampler object;
        None goes back to the recommendation."""
        return self.sampling.scheduler if self._scheduler is None else self._scheduler

    @scheduler.setter
    def scheduler(self, scheduler: Any) -> None:
        self._scheduler = scheduler

    def sampling_for(
        self, scheduler: Any = None, num_inference_steps: int | None = None, guidance_scale: float | None = None
    ) -> ResolvedSampling:
        """The settings a call with these arguments runs with: each argument that is not None, else
        the pipeline's :attr:`scheduler`, else :attr:`sampling` (the model folder's ``sampling.json``,
        else the library defaults), by :func:`specdiff.pipeline.sampling_settings.resolve_sampling`."""
        return resolve_sampling(
            self.sampling,
            scheduler=scheduler if scheduler is not None else self._scheduler,
            num_inference_steps=num_inference_steps,
            guidance_scale=guidance_scale,
        )

    # -- timbre ----------------------------------------------------------------------------------

    @property
    def timbres(self) -> list[str]:
        """The timbres (SoundFont names) the decoder is conditioned on; the first is the default.
        Empty for the original architecture."""
        return list(getattr(self.decoder, "timbres", []))

    @property
    def timbre(self) -> str | None:
        """The timbre the next calls synthesize (None: the model's default, the first of
        :attr:`timbres`). Set it to one of :attr:`timbres`; anything else raises ``SpecdiffError``."""
        return self._timbre

    @timbre.setter
    def timbre(self, name: str | None) -> None:
        if name is not None and name not in self.timbres:
            known = ", ".join(self.timbres) if self.timbres else "none (this model has no timbre conditioning)"
            raise SpecdiffError(f"unknown timbre {name!r}; this model knows: {known}")
        self._timbre = name

    def _timbre_indices(self, batch: int) -> Tensor | None:
        if not self.timbres:
            return None
        index = self.timbres.index(self._timbre) if self._timbre is not None else 0
        return torch.full((batch,), index, dtype=torch.long, device=self.device)

    # -- folders ---------------------------------------------------------------------------------

    @classmethod
    def from_pretrained(
        cls,
        path: str | os.PathLike,
        device: str | torch.device = "cpu",
        dtype: torch.dtype = torch.float32,
        inverter: Any = "auto",
        scheduler: Any = None,
        autocast: torch.dtype | None = None,
        revision: str | None = None,
    ) -> SpectrogramDiffusionPipeline:
        """Load a diffusers-layout folder (ours, or diffusers' own such as the official checkpoint).

        ``path``: a folder, or a Hugging Face Hub id such as ``"google/music-spectrogram-diffusion"``
        (``ORG/NAME``, optionally ``@REVISION``), downloaded once into the Hugging Face cache and
        found there offline afterwards (:mod:`specdiff.pipeline.hub`; needs huggingface_hub). ``revision``: the
        Hub revision (branch, tag or commit) to use. ``inverter``: "auto" (whatever the folder
        offers, see ``specdiff.audio.inverters``), another name, an inverter object, or None.
        ``autocast``: see :attr:`autocast`. Problems with the folder raise :class:`ModelError`.
        """
        from specdiff.pipeline.hub import resolve_model_path

        path = resolve_model_path(path, revision=revision)
        if not path.is_dir():
            raise ModelError(f"model folder not found: {path}")
        modules, scheduler_config = read_networks(path)
        pipe = cls(**modules, scheduler=scheduler, scheduler_config=scheduler_config, autocast=autocast,
                   sampling=read_sampling_settings(path))  # fmt: skip
        pipe.inverter = _resolve_inverter(inverter, path)
        pipe._source = path
        return pipe.to(device, dtype)

    def save_pretrained(self, path: str | os.PathLike, dtype: torch.dtype = torch.float32) -> Path:
        """Write the folder layout (safetensors weights), atomically: a temporary folder is renamed
        into place, so a failure leaves no half-written model. Replaces an existing pipeline folder.

        ``dtype``: storage type of the weights (``torch.float16`` halves the folder; loading always
        gives float32 networks, see :meth:`from_pretrained`)."""
        sampling = self.sampling

        def write_sampling(folder: Path) -> None:
            if sampling != SamplingSettings():  # the library defaults are not written out
                write_sampling_settings(folder, sampling)

        networks = {name: getattr(self, name) for name in NETWORKS}
        path = write_folder(
            path, networks, self.scheduler_config, type(self).__name__, dtype, self._source, write_sampling
        )
        self._source = path
        return path

    # -- device ----------------------------------------------------------------------------------

    def to(
        self, device: str | torch.device | None = None, dtype: torch.dtype | None = None
    ) -> SpectrogramDiffusionPipeline:
        """Move (and optionally cast) the three networks; the sampler state stays float32."""
        for module in (self.notes_encoder, self.continuous_encoder, self.decoder):
            module.to(device=device, dtype=dtype)
        return self

    def compile(self, mode: str | None = None, dynamic: bool | None = None) -> SpectrogramDiffusionPipeline:
        """``torch.compile`` the decoder in place (the module keeps its name and state-dict keys).

        Pays on CUDA, where a step is many small kernels: ``mode="reduce-overhead"`` adds CUDA
        graphs. The decoder's shapes change with the batch and the number of cross-attention keys
        (a new one per segment), so ``dynamic=True`` (the default here, except with CUDA graphs)
        avoids one recompilation per segment. On CPU the fp32 matmuls dominate and the first call
        compiles for minutes: leave it off there.
        """
        if dynamic is None:
            dynamic = mode != "reduce-overhead"
        self.decoder.compile(mode=mode, dynamic=dynamic)
        return self

    def _autocast(self):
        import contextlib

        if self.autocast is None:
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.device.type, dtype=self.autocast)

    @property
    def device(self) -> torch.device:
        return _first_param(self.decoder).device

    @property
    def dtype(self) -> torch.dtype:
        return _first_param(self.decoder).dtype

    @property
    def sample_rate(self) -> int:
        return int(getattr(self.inverter, "sample_rate", SAMPLE_RATE))

    # -- one segment -----------------------------------------------------------------------------

    def encode(self, tokens: Tensor, context: Tensor, context_mask: Tensor) -> list[tuple[Tensor, Tensor]]:
        """Both encoders for one segment: tokens ``[L]``, context ``[1, T, 128]`` scaled, mask ``[1, T]``."""
        return self.encode_batch([tokens], context, context_mask)

    def encode_batch(
        self, tokens: Sequence[Tensor], context: Tensor, context_mask: Tensor
    ) -> list[tuple[Tensor, Tensor]]:
        """Both encoders for a batch of segments: ``B`` token rows ``[L_i]``, context ``[B, T, 128]``
        scaled, mask ``[B, T]``. Returns ``[(notes, mask), (context, mask)]``.

        Only real positions are encoded, which is exact (padding is masked out of every attention):
        the notes encoder runs up to the batch's last non-PAD token (~100-500 tokens instead of
        2048, ORIGINAL.md §8 / ENVIRONMENT: padding dominates), and when no context frame is valid (the
        first segment, ORIGINAL.md §5.1) the context encoder does not run at all: its encodings would be
        masked out of the cross-attention anyway (an empty encoding stands in).
        """
        device = self.device
        lengths = []
        for row in tokens:
            nonzero = torch.nonzero(row).flatten()
            lengths.append(int(nonzero[-1]) + 1 if len(nonzero) else 1)
        ids = torch.zeros(len(tokens), max(lengths), dtype=torch.long)
        for i, (row, length) in enumerate(zip(tokens, lengths)):
            ids[i, :length] = torch.as_tensor(row[:length])
        ids = ids.to(device)
        notes, notes_mask = self.notes_encoder(encoder_input_tokens=ids, encoder_inputs_mask=ids > 0)
        context_mask = context_mask.to(device)
        if not bool(context_mask.any()):
            empty = notes.new_zeros(notes.shape[0], 0, notes.shape[-1])
            return [(notes, notes_mask), (empty, context_mask[:, :0])]
        ctx_dtype = _first_param(self.continuous_encoder).dtype
        ctx = self.continuous_encoder(encoder_inputs=context.to(device, ctx_dtype), encoder_inputs_mask=context_mask)
        return [(notes, notes_mask), tuple(ctx)]

    def _sampler(self, chosen: ResolvedSampling) -> samplers.Sampler:
        if isinstance(chosen.scheduler, str):
            return samplers.make_scheduler(chosen.scheduler, config=self.scheduler_config,
                                           final_noise_time=chosen.final_noise_time)  # fmt: skip
        return samplers.as_sampler(chosen.scheduler)

    def _generate(
        self,
        segments: Sequence[Sequence[int]],
        generator: torch.Generator | None,
        num_inference_steps: int,
        guidance_scale: float,
        sampler: samplers.Sampler,
        on_step: Callable[[], None] | None,
        on_step_end: Callable[[int, Any, Tensor], Tensor] | None = None,
    ) -> Iterator[Tensor]:
        """The full-song loop of ORIGINAL.md §5.1; yields each segment's log-mel ``[1, T, 128]`` (float32)."""
        for [(_, mel)] in self._generate_batch(
            [segments], [generator], num_inference_steps, guidance_scale, sampler, on_step, on_step_end
        ):
            yield mel

    @torch.no_grad()
    def _generate_batch(
        self,
        songs: Sequence[Sequence[Sequence[int]]],
        generators: Sequence[torch.Generator | None],
        num_inference_steps: int,
        guidance_scale: float,
        sampler: samplers.Sampler,
        on_step: Callable[[], None] | None,
        on_step_end: Callable[[int, Any, Tensor], Tensor] | None = None,
    ) -> Iterator[list[tuple[int, Tensor]]]:
        """The full-song loop of ORIGINAL.md §5.1 for several songs at once: segment ``i`` of every song
        that has one runs in one batch (encoders, decoder, sampler). Yields, per segment index,
        ``[(song index, log-mel [1, T, 128] float32), ...]``.

        Each song's rows see only their own conditioning, and song ``k`` draws all its noise from
        ``generators[k]`` in the order it would alone (``sampler.randn`` with a generator list),
        so a batched song equals the song synthesized alone up to float rounding.
        """
        segment_frames = int(_module_config(self.decoder, "targets_length"))
        n_dims = int(_module_config(self.decoder, "input_dims"))
        vocab = int(_module_config(self.notes_encoder, "vocab_size"))
        max_length = int(_module_config(self.notes_encoder, "max_length"))
        token_tensors = [[_segment_tensor(s, i, vocab, max_length) for i, s in enumerate(song)] for song in songs]
        if len(generators) != len(songs):
            raise SpecdiffError(f"{len(generators)} generators for {len(songs)} songs")
        if len(songs) > 1 and any(g is None for g in generators) and not all(g is None for g in generators):
            raise SpecdiffError("pass a generator for every song or for none")
        device = self.device
        # First segment: zeros in *feature* space (0.4843 once scaled) with nothing valid (ORIGINAL.md §9.6).
        contexts = [torch.zeros(1, segment_frames, n_dims, device=device) for _ in songs]
        context_masks = [torch.zeros(1, segment_frames, dtype=torch.bool, device=device) for _ in songs]
        film_cache: dict[float, Any] = {}  # FiLM per step time, shared by all segments (same times)
        for index in range(max(len(song) for song in token_tensors)):
            active = [k for k, song in enumerate(token_tensors) if index < len(song)]
            context = torch.cat([contexts[k] for k in active])
            context_mask = torch.cat([context_masks[k] for k in active])
            gens = [generators[k] for k in active]
            generator = gens[0] if len(gens) == 1 else (None if gens[0] is None else gens)
            with self._autocast():
                encodings = self.encode_batch(
                    [token_tensors[k][index] for k in active], scale_features(context, clip=True), context_mask
                )
                roll = None
                if getattr(self.decoder, "score_roll_features", 0):  # frame-aligned score conditioning
                    roll = batch_rolls([token_tensors[k][index] for k in active], segment_frames,
                                       self.decoder.score_roll_features)  # fmt: skip
                    roll = roll.to(device)
                denoise = samplers.GuidedDenoiser(self.decoder, encodings, guidance_scale, film_cache, score_roll=roll,
                                                  timbre=self._timbre_indices(len(active)))  # fmt: skip
                noise = samplers.randn((len(active), segment_frames, n_dims), generator, device, torch.float32)
                x = samplers.sample_loop(sampler, denoise, noise, num_inference_steps, generator, on_step, on_step_end)
            # The original and DDPM samplers end on a clipped x0 (ORIGINAL.md §4.1), so this clamp changes
            # nothing for them; it keeps ODE solvers (DPM-Solver++, UniPC), which do not clip, inside
            # the [-1, 1] range the model was trained on instead of producing log-mels in the thousands.
            mel = scale_to_features(x.float().clamp(-1.0, 1.0))
            yield [(k, mel[j : j + 1]) for j, k in enumerate(active)]
            for j, k in enumerate(active):
                contexts[k] = mel[j : j + 1]
                context_masks[k] = torch.ones(1, segment_frames, dtype=torch.bool, device=device)

    def _check_args(self, num_inference_steps: int, guidance_scale: float, callback_steps: int) -> None:
        if not isinstance(num_inference_steps, int) or num_inference_steps < 1:
            raise SpecdiffError(f"num_inference_steps must be a positive integer, got {num_inference_steps!r}")
        if not math.isfinite(guidance_scale) or guidance_scale < 0:
            raise SpecdiffError(f"guidance_scale must be a finite number >= 0, got {guidance_scale!r}")
        if not isinstance(callback_steps, int) or callback_steps < 1:
            raise SpecdiffError(f"callback_steps must be a positive integer, got {callback_steps!r}")

    def _progress(self, total: int, show: bool):
        from tqdm.auto import tqdm

        return tqdm(total=total, disable=not show, unit="step", desc="denoising", leave=True)

    def _require_inverter(self) -> None:
        if self.inverter is None:
            raise ModelError(
                "audio output needs a spectrogram inverter (the model folder has none); "
                "pass inverter=... or use output_type='mel'"
            )

    def _invert(self, mel: Tensor) -> np.ndarray:
        self._require_inverter()
        audio = self.inverter(mel.detach().float().cpu().numpy())
        if isinstance(audio, (list, tuple)):  # ONNX sessions return a list of outputs
            audio = audio[0]
        return np.asarray(audio, dtype=np.float32)

    def _step_end_hook(self, callback: Callable[..., dict[str, Any] | None] | None):
        """``callback_on_step_end`` as the sampler loop's ``on_step_end(step_index, timestep, x)``."""
        if callback is None:
            return None

        def on_step_end(step_index: int, timestep: Any, x: Tensor) -> Tensor:
            returned = callback(self, step_index, timestep, {"latents": x})
            return returned.get("latents", x) if returned else x

        return on_step_end

    # -- public ----------------------------------------------------------------------------------

    def __call__(
        self,
        input_tokens: Any,
        generator: torch.Generator | None = None,
        num_inference_steps: int | None = None,
        guidance_scale: float | None = None,
        scheduler: Any = None,
        output_type: str = "np",
        return_dict: bool = True,
        callback: Callable[[int, np.ndarray], None] | None = None,
        callback_steps: int = 1,
        show_progress: bool = True,
        progress: bool | None = None,
        callback_on_step_end: Callable[[Any, int, Any, dict[str, Any]], dict[str, Any] | None] | None = None,
    ) -> AudioPipelineOutput | tuple[np.ndarray]:
        """Synthesize a song.

        ``input_tokens``: token segments (``list[list[int]]``, as diffusers' ``MidiProcessor`` gives),
        a ``TokenizedMidi``, or a MIDI file path. ``output_type``: "np" (audio ``[1, n_samples]``
        through the inverter) or "mel" (log-mel ``[1, frames, 128]``). With a duration (TokenizedMidi
        or a path) the output stops :data:`RELEASE_TAIL_SECONDS` after the music; bare token lists
        give whole segments, like diffusers. ``callback(i, mel_so_far)`` runs after every
        ``callback_steps``-th segment ``i`` with the untrimmed log-mel so far (numpy, as diffusers).
        ``progress`` is an alias of ``show_progress``. The same generator seed gives the same output.
        ``callback_on_step_end(pipe, step_index, timestep, callback_kwargs)`` (diffusers' name and
        arguments) runs after every denoising step of every segment (``step_index`` counts within the
        segment); ``callback_kwargs`` is ``{"latents": x}`` and the dict it returns may replace them.
        Raising from it cancels the call.
        ``num_inference_steps``, ``guidance_scale`` and ``scheduler`` left None take the model's
        recommendation (:meth:`sampling_for`: the model folder's ``sampling.json``, else 100 steps
        of the original sampler with w = 2).
        """
        self._check_output_type(output_type)
        chosen = self.sampling_for(scheduler, num_inference_steps, guidance_scale)
        num_inference_steps, guidance_scale = chosen.num_inference_steps, chosen.guidance_scale
        self._check_args(num_inference_steps, guidance_scale, callback_steps)
        show = show_progress if progress is None else progress
        segments, keep = self._song(input_tokens)
        if output_type == "np":
            self._require_inverter()  # fail before the slow part
        sampler = self._sampler(chosen)
        mels: list[Tensor] = []
        with self._progress(len(segments) * num_inference_steps, show) as bar:
            step_end = self._step_end_hook(callback_on_step_end)
            generated = self._generate(
                segments, generator, num_inference_steps, guidance_scale, sampler, bar.update, step_end
            )
            for i, mel in enumerate(generated):
                mels.append(mel.float().cpu())
                if callback is not None and i % callback_steps == 0:
                    callback(i, torch.cat(mels, dim=1).numpy())
        out = self._finish(torch.cat(mels, dim=1), keep, output_type)
        if not return_dict:
            return (out.audios,)
        return out

    def synthesize_many(
        self,
        inputs: Sequence[Any],
        generators: Sequence[torch.Generator | int] | None = None,
        num_inference_steps: int | None = None,
        guidance_scale: float | None = None,
        scheduler: Any = None,
        output_type: str = "np",
        batch_size: int | None = None,
        show_progress: bool = True,
    ) -> list[AudioPipelineOutput]:
        """Synthesize several songs, batching segment ``i`` of every song into one decoder batch.

        ``inputs``: anything ``__call__`` takes, one per song. ``generators``: one generator (or
        integer seed) per song; song ``k`` then comes out as ``pipe(inputs[k], generators[k], ...)``
        would, up to float rounding. ``batch_size``: at most this many songs at once (default: all;
        with CFG the decoder batch is twice that). Throughput grows with the batch where one
        song's matmuls do not fill the machine (GPUs; CPUs far less).
        """
        self._check_output_type(output_type)
        chosen = self.sampling_for(scheduler, num_inference_steps, guidance_scale)
        num_inference_steps, guidance_scale = chosen.num_inference_steps, chosen.guidance_scale
        self._check_args(num_inference_steps, guidance_scale, 1)
        songs = [self._song(item) for item in inputs]
        if not songs:
            return []
        if generators is None:
            gens: list[torch.Generator | None] = [None] * len(songs)
        else:
            gens = [torch.Generator().manual_seed(g) if isinstance(g, int) else g for g in generators]
            if len(gens) != len(songs):
                raise SpecdiffError(f"{len(gens)} generators for {len(songs)} songs")
        if batch_size is not None and (not isinstance(batch_size, int) or batch_size < 1):
            raise SpecdiffError(f"batch_size must be a positive integer, got {batch_size!r}")
        if output_type == "np":
            self._require_inverter()
        sampler = self._sampler(chosen)
        step = batch_size or len(songs)
        groups = [list(range(start, min(start + step, len(songs)))) for start in range(0, len(songs), step)]
        total = sum(max(len(songs[k][0]) for k in group) for group in groups) * num_inference_steps
        mels: list[list[Tensor]] = [[] for _ in songs]
        with self._progress(total, show_progress) as bar:
            for group in groups:
                batches = self._generate_batch(
                    [songs[k][0] for k in group], [gens[k] for k in group], num_inference_steps,
                    guidance_scale, sampler, bar.update,
                )  # fmt: skip
                for finished in batches:
                    for j, mel in finished:
                        mels[group[j]].append(mel.float().cpu())
        return [self._finish(torch.cat(m, dim=1), keep, output_type) for m, (_, keep) in zip(mels, songs)]

    # -- helpers of the public calls -----------------------------------------------------------

    def _check_output_type(self, output_type: str) -> None:
        if output_type not in ("np", "mel"):
            raise SpecdiffError(f"output_type must be 'np' or 'mel', got {output_type!r}")

    def max_steps(self, scheduler: Any = None) -> int | None:
        """The most denoising steps ``scheduler`` allows for this model: diffusers' schedulers cannot
        take more than their training timesteps; the original sampler has no limit (None)."""
        name = self.sampling_for(scheduler).scheduler
        if name == "original":
            return None
        return int(self.scheduler_config.get("num_train_timesteps", 1000))

    def plan(self, input_tokens: Any, num_inference_steps: int | None = None, scheduler: Any = None) -> SynthesisPlan:
        """The segment plan and step limits of a call with these arguments, without running it
        (unset arguments take :attr:`sampling`'s values, as in :meth:`__call__`)."""
        segments, keep = self._song(input_tokens)
        steps = self.sampling_for(scheduler, num_inference_steps).num_inference_steps
        segment_frames = int(_module_config(self.decoder, "targets_length"))
        return SynthesisPlan(len(segments), keep, segment_frames, steps, self.max_steps(scheduler))

    def _song(self, input_tokens: Any) -> tuple[list[list[int]], int]:
        """The token segments that are needed and the number of frames to keep."""
        segments, duration = _as_segments(input_tokens)
        segment_frames = int(_module_config(self.decoder, "targets_length"))
        keep = frames_to_keep(len(segments), segment_frames, duration)
        return segments[: math.ceil(keep / segment_frames)], keep  # nothing after the tail is needed

    def _finish(self, full: Tensor, keep: int, output_type: str) -> AudioPipelineOutput:
        """Whole-song mel ``[1, frames, 128]`` -> trimmed output (and audio)."""
        mel_out = full[:, :keep].numpy()
        if output_type == "mel":
            return AudioPipelineOutput(audios=mel_out, mels=mel_out)
        # Invert the untrimmed mel, then cut: the inverter sees no artificial edge at the cut.
        audio = self._invert(full)
        hop = audio.shape[-1] // full.shape[1]
        audios = audio[:, : keep * hop]
        if keep < full.shape[1]:
            audios = fade_out(audios, int(FADE_OUT_SECONDS * self.sample_rate))
        return AudioPipelineOutput(audios=audios, mels=mel_out)

    def segments(
        self,
        input_tokens: Any,
        generator: torch.Generator | None = None,
        num_inference_steps: int | None = None,
        guidance_scale: float | None = None,
        scheduler: Any = None,
        show_progress: bool = False,
    ) -> Iterator[SegmentOutput]:
        """Yield each segment as soon as it is generated (for streaming).

        The mels equal ``__call__``'s for the same arguments. Audio (when there is an inverter) is
        inverted per segment, so it can differ from ``__call__``'s whole-song inversion near the
        5.12 s boundaries.
        """
        chosen = self.sampling_for(scheduler, num_inference_steps, guidance_scale)
        num_inference_steps, guidance_scale = chosen.num_inference_steps, chosen.guidance_scale
        self._check_args(num_inference_steps, guidance_scale, 1)
        segments, keep = self._song(input_tokens)
        segment_frames = int(_module_config(self.decoder, "targets_length"))
        sampler = self._sampler(chosen)
        with self._progress(len(segments) * num_inference_steps, show_progress) as bar:
            generated = self._generate(segments, generator, num_inference_steps, guidance_scale, sampler, bar.update)
            for i, mel in enumerate(generated):
                start = i * segment_frames
                frames = min(segment_frames, keep - start)
                audio = None
                if self.inverter is not None:
                    wave = self._invert(mel)[0]
                    hop = wave.shape[-1] // segment_frames
                    audio = wave[: frames * hop]
                    if frames < segment_frames:
                        audio = fade_out(audio, int(FADE_OUT_SECONDS * self.sample_rate))
                yield SegmentOutput(i, start / FRAMES_PER_SECOND, mel[0, :frames].float().cpu().numpy(), audio)

    def __repr__(self) -> str:
        d = self.decoder
        return (
            f"{type(self).__name__}(d_model={_module_config(d, 'd_model')}, "
            f"decoder_layers={_module_config(d, 'num_layers')}, scheduler={self.scheduler!r}, "
            f"inverter={self.inverter!r}, device={self.device}, dtype={self.dtype})"
        )


__all__ = [
    "AudioPipelineOutput", "FADE_OUT_SECONDS", "RELEASE_TAIL_SECONDS", "SegmentOutput",
    "SpectrogramDiffusionPipeline", "SynthesisPlan", "frames_to_keep",
]  # fmt: skip
