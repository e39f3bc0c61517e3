"""What goes into the pipeline: a song (MIDI file, ``TokenizedMidi`` or token lists) -> the segments
to generate and the length to keep, and the checks of a call's arguments.

``SpectrogramDiffusionPipeline`` (``specdiff.pipeline.pipeline``) runs the song loop on what these
functions return; ``specdiff.pipeline.outputs`` shapes what comes out of it. Light (torch and numpy
are imported by the one function that builds tensors), so callers can plan without them.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from specdiff.constants import FRAMES_PER_SECOND
from specdiff.errors import MidiError, ModelError, SpecdiffError

if TYPE_CHECKING:
    from torch import Tensor

#: Seconds of audio kept after the music's end (TokenizedMidi.duration): room for the release of
#: the last notes, which the notes themselves do not include. The rest of the last 5.12 s segment
#: is cut off (diffusers returns whole segments, ORIGINAL.md §5.1).
RELEASE_TAIL_SECONDS = 0.5


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


def as_song(input_tokens: Any, slakh_programs: bool = True) -> tuple[list[list[int]], float | None, Any]:
    """Token segments, the music's duration (None for bare token lists: no trimming) and its notes with
    velocities (a ``TokenizedMidi``'s ``notes``; None where unknown, as for bare token lists).

    ``input_tokens``: a MIDI file path (tokenized here), anything with ``segments`` and
    ``duration`` (a ``TokenizedMidi``), or a list of token lists. No segments: :class:`MidiError`.
    ``slakh_programs``: how the model reads programs (False: General MIDI programs, the decoder's
    ``gm_programs``); a ``TokenizedMidi`` made the other way is refused.
    """
    if isinstance(input_tokens, (str, os.PathLike)):
        from specdiff.midi.tokenizer import midi_to_segments

        input_tokens = midi_to_segments(input_tokens, slakh_programs=slakh_programs)
    if getattr(input_tokens, "slakh_programs", slakh_programs) != slakh_programs:
        wanted = "Slakh classes" if slakh_programs else "General MIDI programs"
        raise SpecdiffError(f"this model reads {wanted}: tokenize the MIDI file with the pipeline's tokenize()")
    if hasattr(input_tokens, "segments") and hasattr(input_tokens, "duration"):
        segments, duration = list(input_tokens.segments), float(input_tokens.duration)
        notes = getattr(input_tokens, "notes", None)
    else:
        segments, duration, notes = list(input_tokens), None, None
    if not segments:
        raise MidiError("nothing to synthesize: the input has no token segments")
    return segments, duration, notes


def frames_to_keep(num_segments: int, segment_frames: int, duration: float | None) -> int:
    """Output length in frames: the music plus :data:`RELEASE_TAIL_SECONDS`, at most the segments."""
    total = num_segments * segment_frames
    if duration is None:
        return total
    return max(1, min(total, math.ceil((duration + RELEASE_TAIL_SECONDS) * FRAMES_PER_SECOND)))


def song_segments(input_tokens: Any, segment_frames: int, slakh_programs: bool = True) -> tuple[list[list[int]], int]:
    """The token segments that are needed and the number of log-mel frames to keep: segments that
    start after the release tail are dropped, since nothing of them would be kept."""
    segments, keep, _ = song_input(input_tokens, segment_frames, slakh_programs=slakh_programs)
    return segments, keep


def song_input(
    input_tokens: Any, segment_frames: int, velocity: bool = False, slakh_programs: bool = True
) -> tuple[list[list[int]], int, list[Any] | None]:
    """:func:`song_segments` and, with ``velocity`` (a decoder on the velocity roll layout), each needed
    segment's velocity columns (``[segment_frames, 18]`` numpy, :func:`segment_velocity`); None without
    ``velocity`` or where the input has no notes (bare token lists: the columns stay 0)."""
    segments, duration, notes = as_song(input_tokens, slakh_programs)
    keep = frames_to_keep(len(segments), segment_frames, duration)
    segments = segments[: math.ceil(keep / segment_frames)]
    blocks = segment_velocity(notes, len(segments), segment_frames) if velocity and notes is not None else None
    return segments, keep, blocks


def segment_velocity(notes: Any, num_segments: int, segment_frames: int) -> list[Any]:
    """The velocity roll columns of segments ``0..num_segments - 1`` (segment ``i`` covers song frames
    ``[i * segment_frames, (i + 1) * segment_frames)``, as the tokenizer cuts them) from the song's
    ``notes``, relative to the song's loudest note: what a training example of the same window holds
    (``specdiff.midi.velocity_roll.velocity_block``)."""
    from specdiff.midi.velocity_roll import segment_velocity_blocks

    return segment_velocity_blocks(notes, [i * segment_frames for i in range(num_segments)], segment_frames)


def segment_tensor(tokens: Sequence[int], index: int, vocab_size: int, max_length: int) -> Tensor:
    """Segment ``index``'s tokens as a 1-D int64 tensor; a segment that is not a flat list of at most
    ``max_length`` ids in ``[0, vocab_size)`` raises :class:`MidiError` naming the segment."""
    import numpy as np
    import torch

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


def encoder_ids(tokens: Sequence[Tensor]) -> Tensor:
    """A batch of token rows ``[L_i]`` -> ``[B, L]`` ids (0 = PAD) cut after the batch's last non-PAD
    token: padding is masked out of every attention, so encoding only up to there is exact and saves
    most of the 2048 positions (~100-500 tokens are real, ORIGINAL.md §8)."""
    import torch

    lengths = []
    for row in tokens:
        nonzero = torch.nonzero(row).flatten()
        lengths.append(int(nonzero[-1]) + 1 if len(nonzero) else 1)
    ids = torch.zeros(len(tokens), max(lengths), dtype=torch.long)
    for i, (row, length) in enumerate(zip(tokens, lengths)):
        ids[i, :length] = torch.as_tensor(row[:length])
    return ids


def song_generators(generators: Sequence[Any] | None, count: int) -> list[Any]:
    """One ``torch.Generator`` (or None) per song: integer seeds become CPU generators; the count
    must match the songs."""
    import torch

    if generators is None:
        return [None] * count
    gens = [torch.Generator().manual_seed(g) if isinstance(g, int) else g for g in generators]
    if len(gens) != count:
        raise SpecdiffError(f"{len(gens)} generators for {count} songs")
    return gens


def check_batch_generators(generators: Sequence[Any], count: int) -> None:
    """The generators of songs synthesized in one batch: one per song, and for several songs either
    all or none (the batch draws its noise from one generator per row, or from the global RNG)."""
    if len(generators) != count:
        raise SpecdiffError(f"{len(generators)} generators for {count} songs")
    if count > 1 and any(g is None for g in generators) and not all(g is None for g in generators):
        raise SpecdiffError("pass a generator for every song or for none")


def song_groups(count: int, batch_size: int | None) -> list[list[int]]:
    """The songs' indices in groups of at most ``batch_size`` (None: one group of all)."""
    if batch_size is not None and (not isinstance(batch_size, int) or batch_size < 1):
        raise SpecdiffError(f"batch_size must be a positive integer, got {batch_size!r}")
    step = batch_size or count
    return [list(range(start, min(start + step, count))) for start in range(0, count, step)]


def timbre_index(timbres: Sequence[str], name: str | None) -> int:
    """The decoder's index of timbre ``name`` among the model's ``timbres`` (None: the default, the
    first); :class:`SpecdiffError` naming the known ones for any other name."""
    if name is None:
        return 0
    if name not in timbres:
        known = ", ".join(timbres) if timbres else "none (this model has no timbre conditioning)"
        raise SpecdiffError(f"unknown timbre {name!r}; this model knows: {known}")
    return list(timbres).index(name)


def check_roll_layout(roll_features: int) -> None:
    """:class:`ModelError` when a decoder wants a score roll (``roll_features`` per frame, 0: none)
    that ``specdiff.midi.score_roll`` cannot compute from the tokens."""
    from specdiff.midi.score_roll import ROLL_LAYOUTS

    if roll_features and roll_features not in ROLL_LAYOUTS:
        raise ModelError(
            f"the decoder expects a score roll of {roll_features} features per frame; this version of "
            f"specdiff computes {' or '.join(map(str, ROLL_LAYOUTS))} (specdiff.midi.score_roll): the model was "
            "trained with another layout"
        )


def check_call_arguments(num_inference_steps: int, guidance_scale: float, callback_steps: int = 1) -> None:
    """The resolved steps and guidance of a call, and its ``callback_steps``: :class:`SpecdiffError`
    for a value the sampler cannot run."""
    if not isinstance(num_inference_steps, int) or num_inference_steps < 1:
        raise SpecdiffError(f"num_inference_steps must be a positive integer, got {num_inference_steps!r}")
    if not math.isfinite(guidance_scale) or guidance_scale < 0:
        raise SpecdiffError(f"guidance_scale must be a finite number >= 0, got {guidance_scale!r}")
    if not isinstance(callback_steps, int) or callback_steps < 1:
        raise SpecdiffError(f"callback_steps must be a positive integer, got {callback_steps!r}")
