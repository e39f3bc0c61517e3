"""Frame-aligned score conditioning: a segment's tokens -> a piano roll, one row per spectrogram frame.

An extension of the original (off by default; ``FilmDecoder(score_roll_features=ROLL_FEATURES)``),
as in the paper's successors (Maman et al., ICASSP 2024 and IEEE TASLP 2025), which give the
denoiser the score frame by frame instead of leaving every alignment to cross-attention.

The roll is computed from the *segment's own tokens*, so a roll and the tokens it goes with can
never disagree, and every caller that has tokens (training batches, the pipeline, streaming,
the service) gets the same roll. For each of the 256 frames and each (instrument family, pitch):

- ``onset``: 1 on the frame where the note starts;
- ``sustain``: 1 on every frame where it sounds (notes tied in from the previous segment sound
  from frame 0, with no onset);
- ``decay``: ``exp(-(frame - onset frame) / TONAL_DECAY_FRAMES)`` while it sounds (0 for tied
  notes, whose onset is before the segment), so an attack-then-decay envelope is a linear
  function of the roll;

and for drums, per drum pitch, ``onset`` and a short ``decay`` (``DRUM_DECAY_FRAMES``). The
instrument family is the General MIDI family of the (Slakh) program, ``program // 8``.

A second, wider layout (:data:`EXTENDED_ROLL_FEATURES`, chosen by a decoder's
``score_roll_features``) appends what happens *after* notes end: per pitch and per family, a
``release`` decay ``exp(-(frame - end frame) / r)`` for each ``r`` of :data:`RELEASE_FRAMES`, and one
``silent`` feature, 1 on frames where no note sounds or has ended within :data:`SILENT_GUARD_FRAMES`
and no drum hit decays. Why: with the base
layout every frame without a sounding note has an all-zero roll, so a linear map of the roll (the
score prior) gives them all one value, the mean of true silence and of release tails; the
closed-form fit of that map then puts silent frames ~6 nat above the floor. With the ``silent``
feature and the release decays the same fit comes ~2 nat closer on held-out windows and its
log-mel L1 drops 22% (``benchmarks/results/silence.md``). The CFG null condition (an all-PAD row)
still has an all-zero roll, distinct from a segment that is truly silent.

Two wider layouts append columns that the tokens cannot give: :data:`CONTEXT_ROLL_FEATURES` the
level of the segment's context (:func:`add_context_level`), and :data:`VELOCITY_ROLL_FEATURES` the
relative log-velocity ``ln(v / v_max)`` of the notes sounding in each frame, per family, for drums and
over all notes (the codec has one velocity bin, but renders are peak-normalised per piece, so a frame's
level follows its velocity against the piece's loudest note: with the context level, these columns
lower a closed-form fit's window level error from 0.749 to 0.705 nat,
``benchmarks/results/level_probe_idioms_relvel.md``). They come from the notes:
``specdiff.midi.velocity_roll``.

The same three tonal kinds are also given per pitch whatever the family, and per family whatever
the pitch (the maximum over the notes concerned). The projection of the roll is a sum of one
learned vector per active feature, so these shared features let what is learned about a pitch
(where its harmonics lie) carry across instruments and what is learned about an instrument (its
attack, its spectral envelope) across pitches, instead of every (family, pitch) pair being learned
from its own rare examples.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

import numpy as np
import torch
from torch import Tensor

from specdiff.audio.mel import MAX_VALUE, MIN_VALUE
from specdiff.constants import SEGMENT_FRAMES
from specdiff.midi.tokenizer import (
    DRUM_ID,
    EOS_ID,
    PITCH_ID,
    PROGRAM_ID,
    SHIFT_ID,
    STEPS_PER_FRAME,
    TIE_ID,
    VELOCITY_ID,
)

NUM_PITCHES = 128
NUM_FAMILIES = 16  # General MIDI families (program // 8); Slakh programs use the first 12
TONAL_KINDS = ("onset", "sustain", "decay")
DRUM_KINDS = ("onset", "decay")
TONAL_DECAY_FRAMES = 25.0  # 0.5 s
DRUM_DECAY_FRAMES = 5.0  # 0.1 s
DRUM_DECAY_SPAN = 20  # frames a drum hit's decay feature lasts (4 time constants)
RELEASE_FRAMES = (5.0, 20.0)  # time constants of the extended layout's release decays (0.1 s, 0.4 s)
#: Frames after a tonal note ends that still count as sounding for the ``silent`` feature (0.2 s).
#: Why: a SoundFont note's release rings on. In the training renders (idioms train split, TimGM6mb) the
#: mean log-mel 0 / 1 / 2 / 5 / 9 frames after the last note ended is -1.9 / -2.2 / -3.2 / -5.0 / -6.2 nat
#: (-1.0 while notes sound, -6.8 .. -10.8 from 10 frames on). Without the guard the short gaps of
#: detached playing (one or two frames between chords) were flagged silent and the model drew a dark
#: frame there, about -5 nat where the render is about -1, and the inverter a click after it.
SILENT_GUARD_FRAMES = 10

#: Features per frame: (kind, family, pitch) for tonal notes, then (kind, pitch) for drums, then
#: the shared tonal features (kind, pitch) and (kind, family).
TONAL_FEATURES = len(TONAL_KINDS) * NUM_FAMILIES * NUM_PITCHES
DRUM_FEATURES = len(DRUM_KINDS) * NUM_PITCHES
PITCH_FEATURES = len(TONAL_KINDS) * NUM_PITCHES
FAMILY_FEATURES = len(TONAL_KINDS) * NUM_FAMILIES
ROLL_FEATURES = TONAL_FEATURES + DRUM_FEATURES + PITCH_FEATURES + FAMILY_FEATURES  # 6832
#: The extended layout: the base one, then per release time constant (pitch, then family) release
#: decays, then the ``silent`` feature.
RELEASE_FEATURES = len(RELEASE_FRAMES) * (NUM_PITCHES + NUM_FAMILIES)
EXTENDED_ROLL_FEATURES = ROLL_FEATURES + RELEASE_FEATURES + 1  # 7121
SILENT_FEATURE = EXTENDED_ROLL_FEATURES - 1
#: The context-level layout: the extended one, then the level of the context's last
#: :data:`CONTEXT_TAIL_FRAMES` frames per mel band (above :data:`CONTEXT_LEVEL_FLOOR_NAT`, so silence
#: is 0) and one ``empty context`` feature (the first segment), the same on every frame:
#: :func:`add_context_level`.
CONTEXT_TAIL_FRAMES = 16
#: Context values below this natural-log mel level count as silence in the context-level columns.
#: Why: renders reach the exact floor (ln 1e-5) where the model's own output, the context at synthesis,
#: hovers a few units above it; without a floor those inaudible differences move every band's level
#: feature. With it the closed-form fit is also better on true contexts (x0 L1 1.219 vs 1.234 nat,
#: ``benchmarks/results/level_probe_idioms_floor.md``).
CONTEXT_LEVEL_FLOOR_NAT = -8.0
CONTEXT_LEVEL_FEATURES = 128 + 1
CONTEXT_ROLL_FEATURES = EXTENDED_ROLL_FEATURES + CONTEXT_LEVEL_FEATURES  # 7250
#: The velocity layout: the context-level one, then per frame the relative log-velocity
#: ``ln(v / v_max)`` of the loudest note sounding in it, per family (:data:`NUM_FAMILIES` columns), for
#: drums and over all notes (0 where none sounds; ``v_max``: the piece's loudest note). The codec has one
#: velocity bin, so these columns come from the notes, not the tokens: ``specdiff.midi.velocity_roll``.
VELOCITY_FEATURES = NUM_FAMILIES + 2
VELOCITY_ROLL_FEATURES = CONTEXT_ROLL_FEATURES + VELOCITY_FEATURES  # 7268
#: The program layout: the velocity one, then one column per MIDI program, 1 on the frames where a
#: tonal note of that program sounds (drums have none). Why: the tonal features name the GM *family*
#: (program // 8), and the programs of a family sound unlike each other; in TimGM6mb a sustained chord's
#: mel bins 32-63 sit at +0.29 nat for the drawbar organ (program 16) and +1.1 to +1.6 for programs 19-23
#: (``benchmarks/results/program_colours_timgm6mb.md``). The additive prior gives each program a colour of
#: its own. The columns come from the tokens, so they name Slakh classes unless the decoder reads General
#: MIDI programs (its ``gm_programs`` option; the original's classes put all eight organs in one).
NUM_PROGRAMS = 128
PROGRAM_ROLL_FEATURES = VELOCITY_ROLL_FEATURES + NUM_PROGRAMS  # 7396
#: The roll layouts a decoder's ``score_roll_features`` may name (each extends the one before it).
ROLL_LAYOUTS = (ROLL_FEATURES, EXTENDED_ROLL_FEATURES, CONTEXT_ROLL_FEATURES, VELOCITY_ROLL_FEATURES,
                PROGRAM_ROLL_FEATURES)  # fmt: skip
#: The layouts with the release decays and the ``silent`` feature.
EXTENDED_LAYOUTS = ROLL_LAYOUTS[1:]
#: The layouts with the context-level columns, and those with the velocity columns.
CONTEXT_LAYOUTS = ROLL_LAYOUTS[2:]
VELOCITY_LAYOUTS = ROLL_LAYOUTS[3:]


def tonal_feature(kind: str, program: int, pitch: int) -> int:
    """Column of a tonal note's ``kind`` feature (``program`` is the MIDI program)."""
    return (TONAL_KINDS.index(kind) * NUM_FAMILIES + program // 8) * NUM_PITCHES + pitch


def drum_feature(kind: str, pitch: int) -> int:
    """Column of a drum hit's ``kind`` feature."""
    return TONAL_FEATURES + DRUM_KINDS.index(kind) * NUM_PITCHES + pitch


def pitch_feature(kind: str, pitch: int) -> int:
    """Column of the shared ``kind`` feature of a pitch, any family."""
    return TONAL_FEATURES + DRUM_FEATURES + TONAL_KINDS.index(kind) * NUM_PITCHES + pitch


def family_feature(kind: str, program: int) -> int:
    """Column of the shared ``kind`` feature of a family, any pitch."""
    return TONAL_FEATURES + DRUM_FEATURES + PITCH_FEATURES + TONAL_KINDS.index(kind) * NUM_FAMILIES + program // 8


def release_feature(index: int, pitch: int | None = None, program: int | None = None) -> int:
    """Column of the extended layout's release decay with time constant ``RELEASE_FRAMES[index]``,
    per ``pitch`` or per the family of ``program`` (give one)."""
    base = ROLL_FEATURES + index * (NUM_PITCHES + NUM_FAMILIES)
    return base + pitch if pitch is not None else base + NUM_PITCHES + int(program) // 8  # type: ignore[arg-type]


def _columns(kind: str, program: int, pitch: int) -> list[int]:
    return [tonal_feature(kind, program, pitch), pitch_feature(kind, pitch), family_feature(kind, program)]


def segment_notes(tokens: Sequence[int], num_frames: int = SEGMENT_FRAMES) -> tuple[list, list]:
    """One segment's tokens -> ``(tonal, drums)`` in frames relative to the segment.

    ``tonal``: ``(program, pitch, onset_frame or None for a tied note, end_frame)``;
    ``drums``: ``(pitch, frame)``. Follows the token semantics of ``tokenizer.tokens_to_notes``
    (absolute shifts within the segment, velocity on/off, program state, tie section), but keeps
    tied notes, which a one-segment decode cannot place before the segment.
    """
    tonal: list[tuple[int, int, int | None, int]] = []
    drums: list[tuple[int, int]] = []
    active: dict[tuple[int, int], int | None] = {}  # (program, pitch) -> onset frame (None: tied)
    program, velocity, steps, frame = 0, 1, 0, 0
    in_tie = TIE_ID in tokens
    for tok in tokens:
        tok = int(tok)
        if tok == EOS_ID:
            break
        if tok < SHIFT_ID or tok >= DRUM_ID + NUM_PITCHES:
            continue
        if tok < PITCH_ID:
            if in_tie:
                continue
            steps += tok - SHIFT_ID
            frame = min(steps // STEPS_PER_FRAME, num_frames)
            continue
        steps = 0
        if tok < VELOCITY_ID:
            key = (program, tok - PITCH_ID)
            if in_tie:
                active[key] = None
            elif velocity == 0:
                if key in active:
                    tonal.append((*key, active.pop(key), frame))
            else:
                if key in active:  # a re-onset ends the sounding note
                    tonal.append((*key, active.pop(key), frame))
                active[key] = frame
        elif tok < TIE_ID:
            velocity = tok - VELOCITY_ID
        elif tok == TIE_ID:
            in_tie = False
        elif tok < DRUM_ID:
            program = tok - PROGRAM_ID
        elif velocity > 0 and frame < num_frames:
            drums.append((tok - DRUM_ID, frame))
    tonal.extend((*key, onset, num_frames) for key, onset in active.items())
    return tonal, drums


def segment_roll(
    tokens: Sequence[int],
    num_frames: int = SEGMENT_FRAMES,
    features: int = ROLL_FEATURES,
    previous: Sequence[int] | None = None,
    previous_frames: int | None = None,
) -> Tensor:
    """The roll ``[num_frames, features]`` (float32) of one segment's tokens; ``features`` names the
    layout (:data:`ROLL_LAYOUTS`). A row with no token but PAD (the CFG null condition) gives zeros.
    ``previous``: the tokens of the ``previous_frames`` (default ``num_frames``) frames just before the
    segment, whose notes carry in (:func:`add_carried_notes`); None: the segment is read alone."""
    if features not in ROLL_LAYOUTS:
        raise ValueError(f"no roll layout has {features} features (known: {ROLL_LAYOUTS})")
    roll = np.zeros((num_frames, features), np.float32)
    if not any(int(tok) for tok in tokens):  # PAD is 0
        return torch.from_numpy(roll)
    extended = features in EXTENDED_LAYOUTS
    sounding = np.zeros(num_frames, bool)
    frames = np.arange(num_frames, dtype=np.float32)
    tonal, drums = segment_notes(tokens, num_frames)
    for program, pitch, onset, end in tonal:
        start = 0 if onset is None else onset
        if start >= num_frames:
            continue
        end = max(end, start + 1)  # a note shorter than a frame still sounds on its onset frame
        roll[start:end, _columns("sustain", program, pitch)] = 1.0
        if features == PROGRAM_ROLL_FEATURES:
            roll[start:end, VELOCITY_ROLL_FEATURES + program] = 1.0
        sounding[start : end + SILENT_GUARD_FRAMES] = True
        if onset is not None:
            roll[onset, _columns("onset", program, pitch)] = 1.0
            _add_tonal_decay(roll, frames, program, pitch, onset, end)
        if extended and end < num_frames:
            _add_release(roll, frames, program, pitch, end)
    for pitch, frame in drums:
        roll[frame, drum_feature("onset", pitch)] = 1.0
        _add_drum_decay(roll, sounding, frames, pitch, frame)
    if previous is not None:
        frames_before = num_frames if previous_frames is None else int(previous_frames)
        add_carried_notes(roll, sounding, tonal, previous, frames_before, extended)
    if extended:
        roll[~sounding, SILENT_FEATURE] = 1.0
    return torch.from_numpy(roll)


def add_carried_notes(
    roll: np.ndarray,
    sounding: np.ndarray,
    tonal: Sequence[tuple[int, int, int | None, int]],
    previous: Sequence[int],
    previous_frames: int,
    extended: bool,
) -> None:
    """Write into ``roll`` ``[T, F]`` (and the ``sounding`` flags) what the notes of the ``previous_frames``
    frames before the segment (their tokens ``previous``) still do in it: a tied note (in ``tonal``, the
    segment's :func:`segment_notes`) that started there continues its ``decay`` from its true onset
    instead of 0; a note that ended there (or sounded to its end and is not tied in) continues its
    release decays (extended layouts); a drum hit there continues its ``decay``. All of these count as
    sounding for the ``silent`` feature as they would inside one segment.

    Why: the tokens of a segment say nothing of what rings into it, so the score prior drew every
    segment's first frames as if the music started there: on run T 600 the log-mel of the first 5 frames
    of segments 2+ sat 0.50 nat (score prior alone) and 0.66 nat (the model) further under the render than
    their frames 50-255 (the demo corpus: 0.81 and 1.04; ``benchmarks/results/segment_seams_idioms_val.md``,
    ``segment_seams_demo_val.md``). With ``roll_carry_in`` a decoder's roll gets them (the previous segment's
    tokens are known to training windows and the pipeline alike).
    """
    if not any(int(tok) for tok in previous):
        return
    frames = np.arange(roll.shape[0], dtype=np.float32)
    before_tonal, before_drums = segment_notes(previous, previous_frames)
    tied = {(program, pitch): end for program, pitch, onset, end in tonal if onset is None}
    # Frames before the segment count from -previous_frames (segment_notes clips ends to previous_frames).
    for program, pitch, onset, end in before_tonal:
        if end >= previous_frames and (program, pitch) in tied:
            if onset is not None:  # tied notes of tied notes started >= one segment ago: decay ~0
                stop = max(tied[(program, pitch)], 1)
                _add_tonal_decay(roll, frames, program, pitch, onset - previous_frames, stop)
            continue
        ended = end - previous_frames
        sounding[: max(0, ended + SILENT_GUARD_FRAMES)] = True
        if extended:
            _add_release(roll, frames, program, pitch, ended)
    for pitch, frame in before_drums:
        _add_drum_decay(roll, sounding, frames, pitch, frame - previous_frames)


def _add_tonal_decay(roll: np.ndarray, frames: np.ndarray, program: int, pitch: int, onset: int, end: int) -> None:
    """A note's ``decay`` envelope from its ``onset`` frame (negative: before the segment) on the segment's
    frames up to ``end``."""
    start = max(0, onset)
    decay = np.exp(-(frames[start:end] - onset) / TONAL_DECAY_FRAMES)[:, None]
    columns = _columns("decay", program, pitch)
    roll[start:end, columns] = np.maximum(roll[start:end, columns], decay)


def _add_release(roll: np.ndarray, frames: np.ndarray, program: int, pitch: int, end: int) -> None:
    """A note's release decays (per pitch and per family) from its ``end`` frame (negative: before the
    segment) to the segment's end."""
    start = max(0, end)
    for index, constant in enumerate(RELEASE_FRAMES):
        release = np.exp(-(frames[start:] - end) / constant)[:, None]
        columns = [release_feature(index, pitch=pitch), release_feature(index, program=program)]
        roll[start:, columns] = np.maximum(roll[start:, columns], release)


def _add_drum_decay(roll: np.ndarray, sounding: np.ndarray, frames: np.ndarray, pitch: int, hit: int) -> None:
    """A drum hit's ``decay`` over the :data:`DRUM_DECAY_SPAN` frames from frame ``hit`` (negative: before
    the segment) that fall in the segment, which count as sounding."""
    start, stop = max(0, hit), min(len(frames), hit + DRUM_DECAY_SPAN)
    if stop <= start:
        return
    decay = np.exp(-(frames[start:stop] - hit) / DRUM_DECAY_FRAMES)
    column = drum_feature("decay", pitch)
    roll[start:stop, column] = np.maximum(roll[start:stop, column], decay)
    sounding[start:stop] = True


def add_context_level(
    roll: Tensor,
    context: Tensor,
    context_mask: Tensor,
    tokens: Tensor | None = None,
    floor_nat: float = CONTEXT_LEVEL_FLOOR_NAT,
) -> Tensor:
    """Fill the context-level columns of a roll ``[B, T, F]`` of the :data:`CONTEXT_LAYOUTS` from the
    segment's context (``[B, T_c, 128]`` scaled to [-1, 1], ``context_mask`` ``[B, T_c]``, valid frames a
    prefix): on every frame, each band's mean over the last :data:`CONTEXT_TAIL_FRAMES` valid context
    frames of its level above ``floor_nat`` (in scaled units; silence and inaudible floors: 0; ``MIN_VALUE``
    gives the plain level, the scaled features + 1), or the ``empty context`` feature where no frame is
    valid. Rows whose
    ``tokens`` are all PAD (the CFG null condition) keep an all-zero roll. Other layouts are returned
    unchanged.

    Why: the level a segment continues at is in its context, and the decoder follows its context's
    level poorly (measured: 1-step outputs 5-15 dB off the render with the render's own context);
    a closed-form fit of the log-mel on the roll plus these features lowers the x0 L1 of the
    validation windows from 1.395 to 1.252 nat (``benchmarks/results/level_probe_idioms.md``)."""
    if roll.shape[-1] not in CONTEXT_LAYOUTS:
        return roll
    mask = context_mask.bool().to(roll.device)
    context = context.to(roll.device, roll.dtype)
    valid = mask.sum(dim=1)  # [B]; the valid frames are a prefix
    frame = torch.arange(mask.shape[1], device=roll.device)[None, :]
    tail = (frame < valid[:, None]) & (frame >= (valid[:, None] - CONTEXT_TAIL_FRAMES))
    weights = tail.to(roll.dtype)
    floor = -1.0 + 2.0 * (floor_nat - MIN_VALUE) / (MAX_VALUE - MIN_VALUE)
    level = (context.clamp(min=floor) - floor) * weights[..., None]
    level = level.sum(dim=1) / weights.sum(dim=1).clamp(min=1.0)[:, None]  # [B, 128]
    empty = (valid == 0).to(roll.dtype)[:, None]
    columns = torch.cat([level, empty], dim=1)
    roll = roll.clone()
    roll[..., EXTENDED_ROLL_FEATURES:CONTEXT_ROLL_FEATURES] = zero_null_rows(columns, tokens)[:, None, :]
    return roll


def zero_null_rows(columns: Tensor, tokens: Tensor | None) -> Tensor:
    """``columns`` ``[B, ...]`` with the rows whose ``tokens`` are all PAD (the CFG null condition) set to
    zero, so a null row's roll stays all-zero whatever else is known; unchanged when ``tokens`` is None."""
    if tokens is None:
        return columns
    has_notes = (torch.as_tensor(tokens).to(columns.device) != 0).any(dim=-1)
    return columns * has_notes.to(columns.dtype).reshape(-1, *([1] * (columns.dim() - 1)))


def batch_rolls(
    tokens: Tensor | Sequence[Sequence[int]],
    num_frames: int = SEGMENT_FRAMES,
    features: int = ROLL_FEATURES,
    carry: CarryIn | None = None,
) -> Tensor:
    """Rolls ``[B, num_frames, features]`` of token rows (a ``[B, L]`` batch or a list of
    segments of any lengths); all-PAD rows (the CFG null condition) give zeros. On the device of
    a tensor batch. ``carry``: each row's previous tokens and their frame count (:class:`CarryIn`), whose
    notes ring into the segment (:func:`add_carried_notes`); None reads every row alone."""
    device = tokens.device if isinstance(tokens, Tensor) else torch.device("cpu")
    rows = [row.tolist() if isinstance(row, Tensor) else list(row) for row in tokens]
    if carry is None:
        return torch.stack([segment_roll(row, num_frames, features) for row in rows]).to(device)
    before = [row.tolist() if isinstance(row, Tensor) else list(row) for row in carry.tokens]
    lengths = [int(n) for n in carry.frames]
    if len(before) != len(rows) or len(lengths) != len(rows):
        raise ValueError(f"carry-in for {len(before)} rows ({len(lengths)} lengths), tokens for {len(rows)}")
    return torch.stack(
        [segment_roll(row, num_frames, features, prev, n) for row, prev, n in zip(rows, before, lengths)]
    ).to(device)


class CarryIn(NamedTuple):
    """What rings into a batch of segments: per row the tokens of the frames just before it (``[B, L]``
    or lists; all PAD: nothing) and how many frames those tokens cover (``[B]``; a song's first frames have
    fewer than a segment before them)."""

    tokens: Tensor | Sequence[Sequence[int]]
    frames: Tensor | Sequence[int]


__all__ = [
    "ROLL_FEATURES",
    "EXTENDED_ROLL_FEATURES",
    "RELEASE_FEATURES",
    "RELEASE_FRAMES",
    "ROLL_LAYOUTS",
    "SILENT_FEATURE",
    "CONTEXT_ROLL_FEATURES",
    "CONTEXT_LEVEL_FEATURES",
    "CONTEXT_TAIL_FRAMES",
    "CONTEXT_LEVEL_FLOOR_NAT",
    "VELOCITY_FEATURES",
    "VELOCITY_ROLL_FEATURES",
    "VELOCITY_LAYOUTS",
    "CONTEXT_LAYOUTS",
    "EXTENDED_LAYOUTS",
    "NUM_PROGRAMS",
    "PROGRAM_ROLL_FEATURES",
    "add_context_level",
    "zero_null_rows",
    "release_feature",
    "TONAL_FEATURES",
    "DRUM_FEATURES",
    "PITCH_FEATURES",
    "FAMILY_FEATURES",
    "NUM_FAMILIES",
    "NUM_PITCHES",
    "TONAL_KINDS",
    "DRUM_KINDS",
    "TONAL_DECAY_FRAMES",
    "DRUM_DECAY_FRAMES",
    "DRUM_DECAY_SPAN",
    "tonal_feature",
    "drum_feature",
    "pitch_feature",
    "family_feature",
    "segment_notes",
    "segment_roll",
    "batch_rolls",
    "add_carried_notes",
    "CarryIn",
]
