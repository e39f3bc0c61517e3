"""``SpectrogramDiffusionPipeline``: MIDI tokens -> log-mel -> audio, segment by segment (ORIGINAL.md §5).

This module holds the song loop. Around it: ``specdiff.pipeline.inputs`` turns a song into the
segments to generate, ``specdiff.pipeline.outputs`` turns log-mels into what the caller asked for
(inverter, trimming, return types), ``specdiff.pipeline.sampling_settings`` decides each call's
sampler settings, and model folders (the diffusers layout, ORIGINAL.md §3.5) are read and written by
``specdiff.pipeline.folder``.

The full-song loop follows diffusers' pipeline (ORIGINAL.md §5.1): the first segment gets an all-zero
context in feature space with an all-False mask, every later one the previous generated mel with an
all-True mask; the context is scaled with ``clip=True``, the output unscaled without clipping. With
``scheduler="ddpm"`` and ``guidance_scale=1`` it reproduces diffusers' pipeline for the same seed.
Our defaults differ on purpose: the original sampler with classifier-free guidance (ORIGINAL.md §4.1,
``specdiff.sampling.sampler``) and output trimmed to the music instead of whole 5.12 s segments.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from specdiff.audio.mel import scale_features, scale_to_features
from specdiff.constants import SAMPLE_RATE
from specdiff.errors import ModelError
from specdiff.midi.decoder_roll import decoder_roll
from specdiff.midi.score_roll import VELOCITY_FEATURES, VELOCITY_LAYOUTS, CarryIn
from specdiff.pipeline.folder import NETWORKS, read_networks, write_folder
from specdiff.pipeline.inputs import (
    SynthesisPlan,
    check_batch_generators,
    check_call_arguments,
    check_roll_layout,
    encoder_ids,
    segment_tensor,
    song_generators,
    song_groups,
    song_input,
    song_segments,
    timbre_index,
)
from specdiff.pipeline.outputs import (
    AudioPipelineOutput,
    SegmentOutput,
    check_output_type,
    progress_bar,
    require_inverter,
    resolve_inverter,
    segment_output,
    song_output,
    step_end_hook,
)
from specdiff.pipeline.sampling_settings import (
    ResolvedSampling,
    SamplingSettings,
    read_sampling_settings,
    resolve_sampling,
    write_recommendation,
)
from specdiff.sampling import sampler as samplers


def _module_config(module: torch.nn.Module, key: str) -> Any:
    """``module.config[key]``: our networks' and diffusers' configs are dicts, other configs namespaces."""
    config = module.config
    return config[key] if isinstance(config, dict) else getattr(config, key)


def _first_param(module: torch.nn.Module) -> Tensor:
    return next(module.parameters())


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
        check_roll_layout(getattr(decoder, "score_roll_features", 0))
        #: Sampler, steps and guidance the model recommends, used where a call leaves them unset (a
        #: model folder's sampling.json, else the library defaults); saved with the folder. Its
        #: ``guidance_ceiling``, ``guidance_lift`` and ``guidance_schedule`` apply to every guided call (no call
        #: argument: change them here).
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

    # -- programs --------------------------------------------------------------------------------

    @property
    def slakh_programs(self) -> bool:
        """Whether the model reads programs as Slakh classes (the original) or, with the decoder's
        ``gm_programs`` extension, as General MIDI programs."""
        config = self.decoder.config
        gm = config.get("gm_programs", False) if isinstance(config, dict) else getattr(config, "gm_programs", False)
        return not bool(gm)

    def tokenize(self, midi: Any, **limits: Any) -> Any:
        """A MIDI file (path or bytes) as this model reads it: ``specdiff.midi.tokenizer.midi_to_segments``
        with the model's program mapping; ``limits``: its ``max_bytes`` / ``max_notes`` / ``max_seconds`` /
        ``max_events``."""
        from specdiff.midi.tokenizer import midi_to_segments

        return midi_to_segments(midi, slakh_programs=self.slakh_programs, **limits)

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
        timbre_index(self.timbres, name)  # an unknown name raises here, not in the middle of a song
        self._timbre = name

    def _timbre_indices(self, batch: int) -> Tensor | None:
        if not self.timbres:
            return None
        return torch.full((batch,), timbre_index(self.timbres, self._timbre), dtype=torch.long, device=self.device)

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
        pipe.inverter = resolve_inverter(inverter, path)
        pipe._source = path
        return pipe.to(device, dtype)

    def save_pretrained(self, path: str | os.PathLike, dtype: torch.dtype = torch.float32) -> Path:
        """Write the folder layout (safetensors weights), atomically: a temporary folder is renamed
        into place, so a failure leaves no half-written model. Replaces an existing pipeline folder.

        ``dtype``: storage type of the weights (``torch.float16`` halves the folder; loading always
        gives float32 networks, see :meth:`from_pretrained`)."""
        networks = {name: getattr(self, name) for name in NETWORKS}
        write_sampling = functools.partial(write_recommendation, settings=self.sampling)
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
        ids = encoder_ids(tokens).to(device)
        notes, notes_mask = self.notes_encoder(encoder_input_tokens=ids, encoder_inputs_mask=ids > 0)
        context_mask = context_mask.to(device)
        if not bool(context_mask.any()):
            empty = notes.new_zeros(notes.shape[0], 0, notes.shape[-1])
            return [(notes, notes_mask), (empty, context_mask[:, :0])]
        ctx_dtype = _first_param(self.continuous_encoder).dtype
        ctx = self.continuous_encoder(encoder_inputs=context.to(device, ctx_dtype), encoder_inputs_mask=context_mask)
        return [(notes, notes_mask), tuple(ctx)]

    def _score_roll(
        self,
        tokens: Sequence[Tensor],
        velocity: Sequence[Any],
        scaled_context: Tensor,
        context_mask: Tensor,
        previous: Sequence[Tensor] | None = None,
    ) -> Tensor | None:
        """The decoder's frame-aligned roll of a batch of segments (None: the original architecture): the
        tokens' roll, the context-level columns from the (scaled) context, for the velocity layout the
        velocity columns (``velocity``: per row ``[T, 18]`` numpy or None, which leaves them 0) and, for a
        ``roll_carry_in`` decoder, what rings in from each row's ``previous`` segment's tokens (None: the
        songs' first segments)."""
        features = getattr(self.decoder, "score_roll_features", 0)
        segment_frames = int(_module_config(self.decoder, "targets_length"))
        columns = None
        if features in VELOCITY_LAYOUTS:
            blocks = [np.zeros((segment_frames, VELOCITY_FEATURES), np.float32) if v is None else v for v in velocity]
            columns = torch.from_numpy(np.stack(blocks))
        carry = None
        if previous is not None and getattr(self.decoder, "roll_carry_in", False):  # diffusers' has none
            carry = CarryIn(previous, [segment_frames] * len(previous))
        # The rows are real segments; the guided denoiser zeroes the CFG null branch's roll itself.
        return decoder_roll(tokens, segment_frames, features, scaled_context, context_mask, columns,
                            zero_null_rows=False, carry=carry)  # fmt: skip

    def _sampler(self, chosen: ResolvedSampling) -> samplers.Sampler:
        if isinstance(chosen.scheduler, str):
            return samplers.make_scheduler(chosen.scheduler, config=self.scheduler_config,
                                           final_noise_time=chosen.final_noise_time)  # fmt: skip
        return samplers.as_sampler(chosen.scheduler)

    @torch.no_grad()
    def _generate_batch(
        self,
        songs: Sequence[Sequence[Sequence[int]]],
        generators: Sequence[torch.Generator | None],
        chosen: ResolvedSampling,
        sampler: samplers.Sampler,
        on_step: Callable[[], None] | None,
        on_step_end: Callable[[int, Any, Tensor], Tensor] | None = None,
        velocities: Sequence[Sequence[Any] | None] | None = None,
    ) -> Iterator[list[tuple[int, Tensor]]]:
        """The full-song loop of ORIGINAL.md §5.1 for several songs at once: segment ``i`` of every song
        that has one runs in one batch (encoders, decoder, sampler). Yields, per segment index,
        ``[(song index, log-mel [1, T, 128] float32), ...]``. ``velocities``: per song, its segments'
        velocity roll columns (:func:`specdiff.pipeline.inputs.song_input`) or None. ``chosen``: the
        call's resolved settings (steps, guidance weight and ceiling); ``sampler`` is built from it.

        Each song's rows see only their own conditioning, and song ``k`` draws all its noise from
        ``generators[k]`` in the order it would alone (``sampler.randn`` with a generator list),
        so a batched song equals the song synthesized alone up to float rounding.
        """
        segment_frames = int(_module_config(self.decoder, "targets_length"))
        n_dims = int(_module_config(self.decoder, "input_dims"))
        vocab = int(_module_config(self.notes_encoder, "vocab_size"))
        max_length = int(_module_config(self.notes_encoder, "max_length"))
        token_tensors = [[segment_tensor(s, i, vocab, max_length) for i, s in enumerate(song)] for song in songs]
        check_batch_generators(generators, len(songs))
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
                scaled_context = scale_features(context, clip=True)
                rows = [token_tensors[k][index] for k in active]
                encodings = self.encode_batch(rows, scaled_context, context_mask)
                velocity = [None if velocities is None or velocities[k] is None else velocities[k][index]
                            for k in active]  # fmt: skip
                # the batch's rows are all at segment `index`: all have a previous segment or none has
                previous = [token_tensors[k][index - 1] for k in active] if index else None
                roll = self._score_roll(rows, velocity, scaled_context, context_mask, previous)  # frame-aligned score
                denoise = samplers.GuidedDenoiser(self.decoder, encodings, chosen.guidance_scale, film_cache,
                                                  score_roll=roll, timbre=self._timbre_indices(len(active)),
                                                  guidance_ceiling=chosen.guidance_ceiling,
                                                  guidance_lift=chosen.guidance_lift,
                                                  guidance_schedule=chosen.guidance_schedule)  # fmt: skip
                noise = samplers.randn((len(active), segment_frames, n_dims), generator, device, torch.float32)
                x = samplers.sample_loop(sampler, denoise, noise, chosen.num_inference_steps, generator, on_step,
                                         on_step_end)  # fmt: skip
            # The original and DDPM samplers end on a clipped x0 (ORIGINAL.md §4.1), so this clamp changes
            # nothing for them; it keeps ODE solvers (DPM-Solver++, UniPC), which do not clip, inside
            # the [-1, 1] range the model was trained on instead of producing log-mels in the thousands.
            mel = scale_to_features(x.float().clamp(-1.0, 1.0))
            yield [(k, mel[j : j + 1]) for j, k in enumerate(active)]
            for j, k in enumerate(active):
                contexts[k] = mel[j : j + 1]
                context_masks[k] = torch.ones(1, segment_frames, dtype=torch.bool, device=device)

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
        or a path) the output stops ``inputs.RELEASE_TAIL_SECONDS`` after the music; bare token lists
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
        check_output_type(output_type)
        chosen = self.sampling_for(scheduler, num_inference_steps, guidance_scale)
        num_inference_steps, guidance_scale = chosen.num_inference_steps, chosen.guidance_scale
        check_call_arguments(num_inference_steps, guidance_scale, callback_steps)
        show = show_progress if progress is None else progress
        segments, keep, velocity = self._song(input_tokens)
        if output_type == "np":
            require_inverter(self.inverter)  # fail before the slow part
        sampler = self._sampler(chosen)
        mels: list[Tensor] = []
        with progress_bar(len(segments) * num_inference_steps, show) as bar:
            step_end = step_end_hook(self, callback_on_step_end)
            generated = self._generate_batch([segments], [generator], chosen, sampler, bar.update, step_end, [velocity])
            for i, [(_, mel)] in enumerate(generated):  # one song: one (song index, mel) per segment
                mels.append(mel.float().cpu())
                if callback is not None and i % callback_steps == 0:
                    callback(i, torch.cat(mels, dim=1).numpy())
        out = song_output(torch.cat(mels, dim=1), keep, output_type, self.inverter, self.sample_rate)
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
        check_output_type(output_type)
        chosen = self.sampling_for(scheduler, num_inference_steps, guidance_scale)
        num_inference_steps, guidance_scale = chosen.num_inference_steps, chosen.guidance_scale
        check_call_arguments(num_inference_steps, guidance_scale)
        songs = [self._song(item) for item in inputs]
        if not songs:
            return []
        gens, groups = song_generators(generators, len(songs)), song_groups(len(songs), batch_size)
        if output_type == "np":
            require_inverter(self.inverter)
        sampler = self._sampler(chosen)
        total = sum(max(len(songs[k][0]) for k in group) for group in groups) * num_inference_steps
        mels: list[list[Tensor]] = [[] for _ in songs]
        with progress_bar(total, show_progress) as bar:
            for group in groups:
                batches = self._generate_batch(
                    [songs[k][0] for k in group], [gens[k] for k in group], chosen, sampler, bar.update,
                    velocities=[songs[k][2] for k in group],
                )  # fmt: skip
                for finished in batches:
                    for j, mel in finished:
                        mels[group[j]].append(mel.float().cpu())
        return [
            song_output(torch.cat(m, dim=1), keep, output_type, self.inverter, self.sample_rate)
            for m, (_, keep, _) in zip(mels, songs)
        ]

    # -- helpers of the public calls -----------------------------------------------------------

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
        segment_frames = int(_module_config(self.decoder, "targets_length"))
        segments, keep = song_segments(input_tokens, segment_frames, self.slakh_programs)
        steps = self.sampling_for(scheduler, num_inference_steps).num_inference_steps
        return SynthesisPlan(len(segments), keep, segment_frames, steps, self.max_steps(scheduler))

    def _song(self, input_tokens: Any) -> tuple[list[list[int]], int, list[Any] | None]:
        """The token segments that are needed, the number of frames to keep and, for a decoder on the
        velocity roll layout, the segments' velocity columns from the song's notes (None otherwise)."""
        velocity = getattr(self.decoder, "score_roll_features", 0) in VELOCITY_LAYOUTS
        segment_frames = int(_module_config(self.decoder, "targets_length"))
        return song_input(input_tokens, segment_frames, velocity, self.slakh_programs)

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
        check_call_arguments(num_inference_steps, guidance_scale)
        segments, keep, velocity = self._song(input_tokens)
        sampler = self._sampler(chosen)
        with progress_bar(len(segments) * num_inference_steps, show_progress) as bar:
            generated = self._generate_batch(
                [segments], [generator], chosen, sampler, bar.update, velocities=[velocity]
            )
            for i, [(_, mel)] in enumerate(generated):
                yield segment_output(i, mel, keep, self.inverter, self.sample_rate)

    def __repr__(self) -> str:
        d = self.decoder
        return (
            f"{type(self).__name__}(d_model={_module_config(d, 'd_model')}, "
            f"decoder_layers={_module_config(d, 'num_layers')}, scheduler={self.scheduler!r}, "
            f"inverter={self.inverter!r}, device={self.device}, dtype={self.dtype})"
        )


__all__ = ["SpectrogramDiffusionPipeline"]
