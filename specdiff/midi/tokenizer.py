"""MIDI -> MT3 event tokens in 2048-token segments (ORIGINAL.md §2), and tokens -> notes.

The pipeline reproduces diffusers' ``MidiProcessor`` (ORIGINAL.md §2.5) token for token:

1. ``midi_to_notes``: parse the Standard MIDI File the way note_seq's ``midi_to_note_sequence``
   does (it uses pretty_midi, which uses mido), apply the sustain pedal the way note_seq's
   ``apply_sustain_control_changes`` does, and map non-drum programs to Slakh classes.
2. ``index_notes``: onsets/offsets sorted on exact float times, rounded to 10 ms steps (§2.2-2.3).
3. ``tokenize_frames`` / ``notes_to_segments``: one token sequence per 256-frame segment: tie
   section, run-length encoded absolute shifts, velocity/program de-duplication, +3, EOS, pad
   (§2.4).

The MIDI reader (step 1) is :mod:`specdiff.midi.reader`, our own small SMF parser; its names stay
importable from here.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from specdiff.constants import (
    FRAMES_PER_SECOND,
    HOP_LENGTH,
    SAMPLE_RATE,
    SEGMENT_FRAMES,
    SEGMENT_SECONDS,
    TOKENS_LENGTH,
)
from specdiff.midi.reader import (
    DEFAULT_MAX_BYTES,
    DEFAULT_MAX_EVENTS,
    DEFAULT_MAX_NOTES,
    DEFAULT_MAX_SECONDS,
    SLAKH_PROGRAMS,
    MidiInput,
    Note,
    _midi_to_note_arrays,
    _NoteArrays,
    midi_to_notes,
    program_to_slakh,
)

# --------------------------------------------------------------------------------------------
# Codec constants (ORIGINAL.md §2.1)
# --------------------------------------------------------------------------------------------

STEPS_PER_SECOND = 100  # 10 ms resolution
MAX_SHIFT_STEPS = 1000  # max_shift_seconds = 10
NUM_VELOCITY_BINS = 1  # velocity is only on/off for the multi-instrument model

# Special ids; every codec index is shifted up by NUM_SPECIAL_TOKENS to make a token id.
PAD_ID = 0
EOS_ID = 1
UNK_ID = 2
NUM_SPECIAL_TOKENS = 3

# First token id of each event range (raw codec index + 3), in codec order.
SHIFT_ID = 3  # shift 0..1000 -> 3..1003
PITCH_ID = 1004  # pitch 0..127 -> 1004..1131
VELOCITY_ID = 1132  # velocity bin 0 (off) / 1 (on) -> 1132, 1133
TIE_ID = 1134
PROGRAM_ID = 1135  # program 0..127 -> 1135..1262
DRUM_ID = 1263  # drum pitch 0..127 -> 1263..1390
NUM_CLASSES = 1388  # codec size without the special ids
VOCAB_SIZE = NUM_SPECIAL_TOKENS + NUM_CLASSES + 100  # + t5 extra ids = 1491
NUM_EMBEDDINGS = 1536  # the notes encoder's table, rounded up to a multiple of 128

INPUT_LENGTH = TOKENS_LENGTH  # tokens per segment, EOS included
STEPS_PER_FRAME = STEPS_PER_SECOND // FRAMES_PER_SECOND  # 2

# Event kinds in the note event stream.
_OFFSET, _ONSET, _DRUM = 0, 1, 2


class TokenTruncationWarning(UserWarning):
    """A segment held more than INPUT_LENGTH - 1 events; the tail was dropped."""


@dataclass
class TokenizedMidi:
    """Token segments of a MIDI file (each exactly INPUT_LENGTH ints) and its duration in seconds.

    ``notes``: the notes the segments were made from, with their velocities (a list of :class:`Note` or
    the reader's arrays; None when unknown), which the tokens lack (one velocity bin): the velocity roll
    layout's columns come from them (``specdiff.midi.velocity_roll``). Not part of equality.
    ``slakh_programs``: whether the programs were mapped to Slakh classes (the original; False for a model
    with the ``gm_programs`` extension)."""

    segments: list[list[int]]
    duration: float  # NoteSequence total_time after sustain (ORIGINAL.md §2.5)
    notes: Any = field(default=None, compare=False, repr=False)
    slakh_programs: bool = field(default=True, compare=False)


# --------------------------------------------------------------------------------------------
# Notes -> indexed event stream (ORIGINAL.md §2.2-2.3)
# --------------------------------------------------------------------------------------------


@dataclass
class EventIndex:
    """A song's note events sorted and quantised once, for tokenizing any frame window.

    ``steps``/``kinds``/``pitches``/``programs`` are the events in MT3 order; ``num_frames`` is
    the MidiProcessor frame count. ``onset_pos``/``next_pos``/``onset_key`` let a tie section be
    computed for any boundary: the non-drum onset at event position ``onset_pos[i]`` keeps its
    (program, pitch) key ``onset_key[i]`` active until the next event of that key,
    ``next_pos[i]``.
    """

    steps: np.ndarray
    kinds: np.ndarray
    pitches: np.ndarray
    programs: np.ndarray
    num_frames: int
    onset_pos: np.ndarray
    next_pos: np.ndarray
    onset_key: np.ndarray

    @property
    def num_segments(self) -> int:
        return -(-self.num_frames // SEGMENT_FRAMES)


def num_frames_for(total_time: float) -> int:
    """MidiProcessor's frame count: dummy audio of int(total_time * 16 kHz) samples, padded by
    ``320 - len % 320`` (a whole extra frame when already a multiple), 320 samples per frame."""
    n = int(total_time * SAMPLE_RATE)
    return (n + HOP_LENGTH - n % HOP_LENGTH) // HOP_LENGTH


def _index_arrays(notes: _NoteArrays, total_time: float) -> EventIndex:
    # Sort notes by (is_drum, program, pitch), stably (ORIGINAL.md §2.2 step 1).
    order = np.lexsort((notes.pitch, notes.program, notes.is_drum))
    drum = notes.is_drum[order]
    offs = order[~drum]
    # Offsets of non-drum notes first, then onsets of all notes, then a stable sort on the
    # exact float times: at equal times offsets precede onsets, then (is_drum, program, pitch).
    times = np.concatenate([notes.end[offs], notes.start[order]])
    kinds = np.concatenate([np.full(len(offs), _OFFSET), np.where(drum, _DRUM, _ONSET)])
    pitches = np.concatenate([notes.pitch[offs], notes.pitch[order]])
    programs = np.concatenate([notes.program[offs], notes.program[order]])
    perm = np.argsort(times, kind="stable")
    # Python's round(time * 100) is round-half-even on the exact double, as is np.rint.
    steps = np.rint(times[perm] * STEPS_PER_SECOND).astype(np.int64)
    kinds, pitches, programs = kinds[perm], pitches[perm], programs[perm]

    # Tie bookkeeping: for each non-drum onset, the position of the next event on its key.
    tonal = np.flatnonzero(kinds != _DRUM)
    keys = programs[tonal] * 128 + pitches[tonal]
    by_key = tonal[np.lexsort((tonal, keys))]  # positions grouped by key, in event order
    key_sorted = programs[by_key] * 128 + pitches[by_key]
    nxt = np.full(len(by_key), np.iinfo(np.int64).max)
    same = key_sorted[1:] == key_sorted[:-1]
    nxt[:-1][same] = by_key[1:][same]
    is_on = kinds[by_key] == _ONSET
    return EventIndex(
        steps=steps,
        kinds=kinds,
        pitches=pitches,
        programs=programs,
        num_frames=num_frames_for(total_time),
        onset_pos=by_key[is_on],
        next_pos=nxt[is_on],
        onset_key=key_sorted[is_on],
    )


def index_notes(notes: Sequence[Note], total_time: float) -> EventIndex:
    """Sort and quantise a song's note events once (MT3 ``encode_and_index_events``, §2.2-2.3)."""
    return _index_arrays(_NoteArrays.from_notes(notes), total_time)


# --------------------------------------------------------------------------------------------
# Event stream -> segment tokens (ORIGINAL.md §2.4)
# --------------------------------------------------------------------------------------------


def _tie_section(index: EventIndex, boundary_step: int) -> tuple[np.ndarray, int]:
    """Tokens [program, pitch]* tie for notes active after all events before ``boundary_step``.

    Returns the tokens (program de-duplicated) and the last program token value (-1 if none).
    """
    n = np.searchsorted(index.steps, boundary_step, side="left")
    active = (index.onset_pos < n) & (index.next_pos >= n)
    keys = np.sort(index.onset_key[active])  # sorted by (program, pitch)
    programs, pitches = keys // 128, keys % 128
    new_program = np.ones(len(keys), bool)
    new_program[1:] = programs[1:] != programs[:-1]
    pairs = np.stack([PROGRAM_ID + programs, PITCH_ID + pitches], axis=1)
    mask = np.stack([new_program, np.ones(len(keys), bool)], axis=1)
    tokens = np.append(pairs[mask], TIE_ID)
    return tokens, (int(programs[-1]) if len(keys) else -1)


def _event_tokens(
    steps: np.ndarray, kinds: np.ndarray, pitches: np.ndarray, programs: np.ndarray, last_program: int
) -> np.ndarray:
    """Run-length encode one window's events (``steps`` relative to the window start).

    Each event is [shift*] [program] [velocity] pitch|drum, where the shift carries the
    *absolute* step offset within the window (split into chunks of <= 1000) and appears only on
    the first event of a new step > 0, and program/velocity tokens equal to the previous token of
    their type are dropped (the tie section's programs count) - MT3 ``run_length_encode_shifts``.
    """
    n = len(steps)
    if n == 0:
        return np.zeros(0, np.int64)
    tonal = kinds != _DRUM
    velocity = (kinds != _OFFSET).astype(np.int64)
    keep_velocity = np.ones(n, bool)
    keep_velocity[1:] = velocity[1:] != velocity[:-1]
    tonal_programs = programs[tonal]
    keep_program = np.zeros(n, bool)
    keep_program[tonal] = tonal_programs != np.concatenate([[last_program], tonal_programs[:-1]])
    new_step = np.ones(n, bool)
    new_step[1:] = steps[1:] != steps[:-1]
    shift_events = new_step & (steps > 0)

    num_chunks = max(1, -(-int(steps.max()) // MAX_SHIFT_STEPS))
    chunk_starts = MAX_SHIFT_STEPS * np.arange(num_chunks)
    remaining = steps[:, None] - chunk_starts[None, :]
    shift_tokens = SHIFT_ID + np.clip(remaining, 0, MAX_SHIFT_STEPS)
    shift_mask = shift_events[:, None] & (remaining > 0)

    note_tokens = np.where(kinds == _DRUM, DRUM_ID + pitches, PITCH_ID + pitches)
    table = np.column_stack([shift_tokens, PROGRAM_ID + programs, VELOCITY_ID + velocity, note_tokens])
    mask = np.column_stack([shift_mask, keep_program, keep_velocity, np.ones(n, bool)])
    return table[mask]  # row-major: event by event


def _finish(tokens: np.ndarray, what: str) -> list[int]:
    """Truncate to INPUT_LENGTH - 1 (with a warning), append EOS, right-pad with PAD."""
    if len(tokens) > INPUT_LENGTH - 1:
        warnings.warn(
            f"{what} has {len(tokens)} tokens; keeping the first {INPUT_LENGTH - 1}",
            TokenTruncationWarning,
            stacklevel=3,
        )
        tokens = tokens[: INPUT_LENGTH - 1]
    out = np.zeros(INPUT_LENGTH, np.int64)
    out[: len(tokens)] = tokens
    out[len(tokens)] = EOS_ID
    return out.tolist()


def tokenize_frames(index: EventIndex, start_frame: int, num_frames: int = SEGMENT_FRAMES) -> list[int]:
    """The INPUT_LENGTH tokens for frames [start_frame, start_frame + num_frames) of a song.

    MT3 ``extract_sequence_with_indices`` + RLE: events whose 10 ms step falls in
    [2 * start_frame, 2 * (start_frame + num_frames)); a window reaching the song's last frame
    takes every remaining event. The tie section lists the notes active before the window
    (before the song's last event step for windows past it, an MT3 quirk, ORIGINAL.md §2.3).
    """
    if start_frame < 0 or num_frames <= 0:
        raise ValueError(f"bad frame window: start {start_frame}, length {num_frames}")
    s0 = STEPS_PER_FRAME * start_frame
    lo = np.searchsorted(index.steps, s0, side="left")
    if start_frame + num_frames >= index.num_frames:
        hi = len(index.steps)
    else:
        hi = np.searchsorted(index.steps, STEPS_PER_FRAME * (start_frame + num_frames), "left")
    last_step = int(index.steps[-1]) if len(index.steps) else 0
    tie, last_program = _tie_section(index, min(s0, last_step))
    events = _event_tokens(
        index.steps[lo:hi] - s0, index.kinds[lo:hi], index.pitches[lo:hi], index.programs[lo:hi], last_program
    )
    t0 = start_frame / FRAMES_PER_SECOND
    t1 = (start_frame + num_frames) / FRAMES_PER_SECOND
    return _finish(np.concatenate([tie, events]), f"segment {t0:.2f}-{t1:.2f} s")


def _index_to_segments(index: EventIndex) -> list[list[int]]:
    return [
        tokenize_frames(index, k * SEGMENT_FRAMES, min(SEGMENT_FRAMES, index.num_frames - k * SEGMENT_FRAMES))
        for k in range(index.num_segments)
    ]


def notes_to_segments(notes: Sequence[Note], total_time: float) -> list[list[int]]:
    """Token segments (each INPUT_LENGTH ints) for notes, one per 256 frames (ORIGINAL.md §2.4-2.5).

    ``total_time`` fixes the frame count as in MidiProcessor; the notes should already have
    sustain and Slakh programs applied (as ``midi_to_notes`` returns them).
    """
    return _index_to_segments(index_notes(notes, total_time))


def midi_to_segments(
    midi: MidiInput,
    *,
    max_bytes: int = DEFAULT_MAX_BYTES,
    max_notes: int = DEFAULT_MAX_NOTES,
    max_seconds: float = DEFAULT_MAX_SECONDS,
    max_events: int = DEFAULT_MAX_EVENTS,
    slakh_programs: bool = True,
) -> TokenizedMidi:
    """Tokenize a MIDI file exactly like diffusers' ``MidiProcessor()(midi)`` (ORIGINAL.md §2.5).

    Differences by design: a segment with more than 2047 events keeps the first 2047 and warns
    (diffusers returns an over-long list), and bad input raises MidiError (limits as in
    :func:`midi_to_notes`). ``slakh_programs=False`` keeps the General MIDI programs (an extension,
    for models with ``gm_programs``; the vocabulary has all 128 program tokens).
    """
    notes, total_time, _ = _midi_to_note_arrays(
        midi, max_bytes, max_notes, max_seconds, max_events, slakh_programs=slakh_programs
    )
    return TokenizedMidi(_index_to_segments(_index_arrays(notes, total_time)), total_time, notes, slakh_programs)


# --------------------------------------------------------------------------------------------
# Tokens -> notes (MT3 decode_events / decode_note_event semantics)
# --------------------------------------------------------------------------------------------

_MIN_NOTE_DURATION = 0.01  # MT3: decoded notes last at least 10 ms; drums exactly 10 ms


def tokens_to_notes(tokens: Sequence[int] | Sequence[Sequence[int]], start_time: float = 0.0) -> list[Note]:
    """Decode one segment's tokens, or consecutive segments' tokens, into notes.

    Follows MT3's decoder: shifts are absolute offsets within a segment; a velocity token sets
    on/off, a program token the current program; each segment's tie section declares which
    active notes continue, and the tie token ends the others at the segment start. Segment ``i``
    starts at ``start_time + i * 5.12`` s. Decoding a segment stops at EOS; invalid events are
    skipped. Notes still on at the end are ended at the latest decoded time (at least 10 ms
    after their onset). Returns notes sorted by (start, is_drum, program, pitch); decoded
    velocities are 127 (the single velocity bin), drums get program 0.
    """
    arr = (
        [list(map(int, tokens))]
        if len(tokens) == 0 or np.ndim(tokens[0]) == 0
        else [list(map(int, seg)) for seg in tokens]
    )
    out: list[Note] = []
    active: dict[tuple[int, int], tuple[float, int]] = {}  # (pitch, program) -> onset, velocity
    current_time = start_time
    velocity, program = 100, 0

    def add(pitch: int, onset: float, end: float, vel: int, prog: int, drum: bool = False):
        out.append(Note(pitch, onset, max(end, onset + _MIN_NOTE_DURATION), vel, prog, drum))

    for k, seg in enumerate(arr):
        seg_start = start_time + k * SEGMENT_SECONDS
        max_time = start_time + (k + 1) * SEGMENT_SECONDS if k + 1 < len(arr) else None
        tied: set[tuple[int, int]] = set()
        in_tie = True
        steps = 0
        time = seg_start
        for tok in seg:
            if tok == EOS_ID:
                break
            if tok < SHIFT_ID or tok >= DRUM_ID + 128:
                continue  # PAD/UNK/extra ids: invalid
            if tok < PITCH_ID:
                steps += tok - SHIFT_ID
                time = seg_start + steps / STEPS_PER_SECOND
                if max_time is not None and time > max_time:
                    break
                continue
            steps = 0
            if time < current_time:
                continue  # MT3: event time < current time is invalid
            current_time = time
            if tok < VELOCITY_ID:
                key = (tok - PITCH_ID, program)
                if in_tie:
                    if key in active:
                        tied.add(key)
                elif velocity == 0:
                    if key in active:
                        onset, vel = active.pop(key)
                        add(key[0], onset, time, vel, program)
                else:
                    if key in active:  # re-onset of an active note ends the previous one
                        onset, vel = active.pop(key)
                        add(key[0], onset, time, vel, program)
                    active[key] = (time, velocity)
            elif tok < TIE_ID:
                velocity = int(127 * (tok - VELOCITY_ID) / NUM_VELOCITY_BINS)
            elif tok == TIE_ID:
                if in_tie:
                    for key in [k2 for k2 in active if k2 not in tied]:
                        onset, vel = active.pop(key)
                        add(key[0], onset, current_time, vel, key[1])
                    in_tie = False
            elif tok < DRUM_ID:
                program = tok - PROGRAM_ID
            elif velocity > 0:
                add(tok - DRUM_ID, time, time + _MIN_NOTE_DURATION, velocity, 0, True)
    for onset, _ in active.values():
        current_time = max(current_time, onset + _MIN_NOTE_DURATION)
    for (pitch, prog), (onset, vel) in active.items():
        add(pitch, onset, current_time, vel, prog)
    out.sort(key=lambda n: (n.start, n.is_drum, n.program, n.pitch))
    return out


__all__ = [
    "Note",
    "TokenizedMidi",
    "EventIndex",
    "TokenTruncationWarning",
    "midi_to_notes",
    "notes_to_segments",
    "midi_to_segments",
    "tokens_to_notes",
    "index_notes",
    "tokenize_frames",
    "num_frames_for",
    "program_to_slakh",
    "STEPS_PER_SECOND",
    "MAX_SHIFT_STEPS",
    "NUM_VELOCITY_BINS",
    "PAD_ID",
    "EOS_ID",
    "UNK_ID",
    "NUM_SPECIAL_TOKENS",
    "SHIFT_ID",
    "PITCH_ID",
    "VELOCITY_ID",
    "TIE_ID",
    "PROGRAM_ID",
    "DRUM_ID",
    "NUM_CLASSES",
    "VOCAB_SIZE",
    "NUM_EMBEDDINGS",
    "INPUT_LENGTH",
    "SEGMENT_FRAMES",
    "FRAMES_PER_SECOND",
    "SEGMENT_SECONDS",
    "SLAKH_PROGRAMS",
]
