"""The velocity columns of the score roll (:data:`~specdiff.midi.score_roll.VELOCITY_ROLL_FEATURES`).

An extension (off by default, like every roll layout). The original codec has one velocity bin
(note on/off, ORIGINAL.md §2), so neither the tokens nor the roll computed from them say how loud a
note is. Renders of real MIDI do, and training renders are peak-normalised per piece
(``specdiff.data.render.PEAK``): what sets a frame's level is its velocity *against the piece's
loudest note*. Pieces have velocity ramps (fades): on 8 held-out idiom pieces, 4 have mean velocity
going e.g. 53 -> 28 over 20 s, and a model without velocity misses their level by a segment error
that follows the ramp (+2 -> +12 dB). A closed-form probe (``benchmarks/level_probe.py``, ridge fit of
each frame's log-mel) shows the relative log-velocity explains part of it: window level error 0.878
nat with the absolute log-velocity, 0.818 with the relative one, 0.749 -> 0.705 with the context
level (x0 L1 1.219 -> 1.199; ``benchmarks/results/level_probe_idioms_relvel.md``).

So the velocity layout appends :data:`~specdiff.midi.score_roll.VELOCITY_FEATURES` columns: per frame,
``ln(v / v_max)`` with ``v`` the largest velocity of the notes sounding in that frame per General
MIDI family (``program // 8``, 16 columns), for drums (a hit counts for
:data:`~specdiff.midi.score_roll.DRUM_DECAY_SPAN` frames) and over all notes, ``v_max`` the piece's
loudest note velocity, and 0 where no note sounds (the roll's presence features tell sounding from
silent, so 0 also reads "as loud as the piece gets": a piece of constant velocity, or bare token input
without notes, has all-zero velocity columns). A note sounds on frames ``[floor(start * 50),
ceil(end * 50))`` (at least its first frame). These cannot come from the tokens, so they come from the
notes with velocities: the training data (``specdiff.data.cache.ChunkDataset``) and the pipeline
(``specdiff.pipeline.inputs``) compute them with :func:`velocity_block` from the song's notes, and
:func:`add_velocity_levels` writes them into a roll batch. The CFG null condition (an all-PAD token
row) keeps an all-zero roll.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import Tensor

from specdiff.constants import FRAMES_PER_SECOND, SEGMENT_FRAMES
from specdiff.midi.score_roll import (
    CONTEXT_ROLL_FEATURES,
    DRUM_DECAY_SPAN,
    NUM_FAMILIES,
    VELOCITY_FEATURES,
    VELOCITY_LAYOUTS,
    VELOCITY_ROLL_FEATURES,
    zero_null_rows,
)

#: Columns of the velocity block: families ``0..NUM_FAMILIES - 1``, then drums, then any note.
DRUM_VELOCITY_COLUMN = NUM_FAMILIES
ANY_VELOCITY_COLUMN = NUM_FAMILIES + 1
#: The reference velocity of a piece without notes.
DEFAULT_MAX_VELOCITY = 127


@dataclass(frozen=True)
class VelocitySpans:
    """A song's notes as the velocity columns see them (:func:`velocity_spans`): per note the first
    frame it sounds in, the frame after its last (song frames), its family or drum column and its
    velocity; and the piece's loudest velocity."""

    first: np.ndarray  # int64 [N]
    stop: np.ndarray  # int64 [N], > first
    column: np.ndarray  # int64 [N]
    velocity: np.ndarray  # int64 [N], >= 1
    max_velocity: int

    def __len__(self) -> int:
        return len(self.first)


def _note_fields(notes: Any) -> dict[str, np.ndarray]:
    """``start``, ``end``, ``velocity``, ``program``, ``is_drum`` arrays of ``notes``: a sequence of
    ``specdiff.midi.reader.Note``, a structured array with those fields (a feature cache's
    ``notes.npy``) or an object with those array attributes (``reader._NoteArrays``)."""
    names = ("start", "end", "velocity", "program", "is_drum")
    if isinstance(notes, np.ndarray) and notes.dtype.names:
        return {name: np.asarray(notes[name]) for name in names}
    if isinstance(getattr(notes, "start", None), np.ndarray):
        return {name: np.asarray(getattr(notes, name)) for name in names}
    return {name: np.array([getattr(note, name) for note in notes]) for name in names}


def _loudest(velocity: np.ndarray) -> int:
    return int(velocity.max()) if len(velocity) else DEFAULT_MAX_VELOCITY


def piece_max_velocity(notes: Any) -> int:
    """The velocity of the piece's loudest note (drums included); :data:`DEFAULT_MAX_VELOCITY` for none."""
    return _loudest(_note_fields(notes)["velocity"])


def velocity_spans(notes: Any, max_velocity: int | None = None) -> VelocitySpans:
    """A song's ``notes`` (see :func:`_note_fields` for the forms) as :class:`VelocitySpans`, computed
    once per song; ``max_velocity``: the reference ``v_max`` (None: the loudest of ``notes``)."""
    fields = _note_fields(notes)
    if max_velocity is None:
        max_velocity = _loudest(fields["velocity"])
    drum = fields["is_drum"].astype(bool)
    first = np.floor(fields["start"].astype(np.float64) * FRAMES_PER_SECOND).astype(np.int64)
    end = np.ceil(fields["end"].astype(np.float64) * FRAMES_PER_SECOND).astype(np.int64)
    stop = np.where(drum, first + DRUM_DECAY_SPAN, np.maximum(end, first + 1))
    column = np.where(drum, DRUM_VELOCITY_COLUMN, fields["program"].astype(np.int64) // 8)
    velocity = np.maximum(fields["velocity"].astype(np.int64), 1)
    return VelocitySpans(first, stop.astype(np.int64), column.astype(np.int64), velocity, int(max_velocity))


def velocity_block(
    notes: Any, start_frame: int, max_velocity: int | None = None, num_frames: int = SEGMENT_FRAMES
) -> np.ndarray:
    """The velocity columns ``[num_frames, VELOCITY_FEATURES]`` (float32) of the window of song frames
    ``[start_frame, start_frame + num_frames)``: per frame, the largest ``ln(v / max_velocity)`` of the
    notes sounding in it, per family, for drums and over all notes; 0 where none sounds.

    ``notes``: the song's notes (any form :func:`velocity_spans` takes; only those sounding in the window
    count, so the whole song's notes may be given) or their :class:`VelocitySpans` (faster per window).
    ``max_velocity``: the piece's loudest note velocity (None: the spans' own, or the loudest of ``notes``).
    """
    spans = notes if isinstance(notes, VelocitySpans) else velocity_spans(notes, max_velocity)
    reference = spans.max_velocity if max_velocity is None else int(max_velocity)
    out = np.full((num_frames, VELOCITY_FEATURES), -np.inf, np.float32)
    lo = np.maximum(spans.first - start_frame, 0)
    hi = np.minimum(spans.stop - start_frame, num_frames)
    inside = hi > lo
    if inside.any():
        lo, hi = lo[inside], hi[inside]
        lengths = hi - lo
        level = np.log(spans.velocity[inside] / float(reference)).astype(np.float32)
        frames = np.arange(int(lengths.sum())) - np.repeat(np.cumsum(lengths) - lengths - lo, lengths)
        levels = np.repeat(level, lengths)
        np.maximum.at(out, (frames, np.repeat(spans.column[inside], lengths)), levels)
        np.maximum.at(out[:, ANY_VELOCITY_COLUMN], frames, levels)
    out[~np.isfinite(out)] = 0.0
    return out


def segment_velocity_blocks(notes: Any, starts: Sequence[int], num_frames: int = SEGMENT_FRAMES) -> list[np.ndarray]:
    """:func:`velocity_block` of the windows starting at song frames ``starts``, relative to the loudest of
    the song's ``notes``."""
    spans = notes if isinstance(notes, VelocitySpans) else velocity_spans(notes)
    return [velocity_block(spans, int(start), None, num_frames) for start in starts]


def add_velocity_levels(roll: Tensor, velocity: Tensor | np.ndarray | None, tokens: Tensor | None = None) -> Tensor:
    """Fill the velocity columns of a roll ``[B, T, F]`` of the :data:`VELOCITY_LAYOUTS` with ``velocity``
    ``[B, T, VELOCITY_FEATURES]`` (:func:`velocity_block` per row). Rows whose ``tokens`` are all PAD (the
    CFG null condition) keep all-zero columns. Other layouts, and ``velocity`` None (nothing known about
    velocities: the columns stay 0, "as loud as the piece gets"), return ``roll`` unchanged."""
    if roll.shape[-1] not in VELOCITY_LAYOUTS or velocity is None:
        return roll
    columns = torch.as_tensor(velocity).to(roll.device, roll.dtype)
    if columns.shape != (*roll.shape[:-1], VELOCITY_FEATURES):
        raise ValueError(f"velocity columns of shape {tuple(columns.shape)} for a roll of shape {tuple(roll.shape)}")
    roll = roll.clone()
    roll[..., CONTEXT_ROLL_FEATURES:VELOCITY_ROLL_FEATURES] = zero_null_rows(columns, tokens)
    return roll


__all__ = [
    "ANY_VELOCITY_COLUMN",
    "DEFAULT_MAX_VELOCITY",
    "DRUM_VELOCITY_COLUMN",
    "VelocitySpans",
    "add_velocity_levels",
    "piece_max_velocity",
    "segment_velocity_blocks",
    "velocity_block",
    "velocity_spans",
]
