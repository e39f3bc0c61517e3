"""MIDI files -> notes, the way diffusers' ``MidiProcessor`` sees them (ORIGINAL.md §2.5 steps 1-3).

Our own small Standard MIDI File parser (stdlib only), with pretty_midi's rules for pairing notes,
splitting instruments and routing control changes (third-party parsers differ on all three, and the
exact token stream depends on them), then note_seq's sustain-pedal handling and the mapping of
non-drum programs to Slakh classes. :mod:`specdiff.tokenizer` turns the notes into tokens.
"""

from __future__ import annotations

import os
import struct
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from specdiff.errors import MidiError

# Slakh instrument classes, as General MIDI programs (ORIGINAL.md §2.5 step 3).
SLAKH_PROGRAMS = (
    0,
    4,
    8,
    16,
    24,
    26,
    29,
    32,
    33,
    40,
    41,
    42,
    43,
    46,
    47,
    48,
    50,
    52,
    55,
    56,
    57,
    58,
    60,
    61,
    64,
    66,
    67,
    68,
    69,
    70,
    71,
    73,
    80,
    88,
)
# program -> the largest Slakh program <= it
_SLAKH_MAP = np.array([max(p for p in SLAKH_PROGRAMS if p <= q) for q in range(128)], np.int64)

# Generous guards against absurd input (all overridable per call).
DEFAULT_MAX_BYTES = 64 * 1024 * 1024
DEFAULT_MAX_NOTES = 2_000_000
DEFAULT_MAX_SECONDS = 6 * 3600.0


MidiInput = str | os.PathLike | bytes | bytearray


def program_to_slakh(program: int) -> int:
    """Map a General MIDI program to the largest Slakh class program <= it (1->0, 30->29, 127->88)."""
    return int(_SLAKH_MAP[program])


# --------------------------------------------------------------------------------------------
# Public data types
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Note:
    """One note; times in seconds. For drums, ``program`` is the MIDI program of the drum track."""

    pitch: int
    start: float
    end: float
    velocity: int
    program: int
    is_drum: bool


@dataclass
class _NoteArrays:
    """Notes as parallel arrays (the fast internal representation of a list of Note)."""

    pitch: np.ndarray  # int64
    start: np.ndarray  # float64
    end: np.ndarray  # float64
    velocity: np.ndarray  # int64
    program: np.ndarray  # int64
    is_drum: np.ndarray  # bool

    def __len__(self) -> int:
        return len(self.pitch)

    @classmethod
    def from_notes(cls, notes: Sequence[Note]) -> _NoteArrays:
        return cls(
            pitch=np.array([n.pitch for n in notes], np.int64),
            start=np.array([n.start for n in notes], np.float64),
            end=np.array([n.end for n in notes], np.float64),
            velocity=np.array([n.velocity for n in notes], np.int64),
            program=np.array([n.program for n in notes], np.int64),
            is_drum=np.array([n.is_drum for n in notes], bool),
        )

    def to_notes(self) -> list[Note]:
        return [
            Note(int(p), float(s), float(e), int(v), int(g), bool(d))
            for p, s, e, v, g, d in zip(self.pitch, self.start, self.end, self.velocity, self.program, self.is_drum)
        ]


# --------------------------------------------------------------------------------------------
# Standard MIDI File reading with pretty_midi's semantics
# --------------------------------------------------------------------------------------------


class _Instrument:
    """A pretty_midi Instrument: one (program, channel, track), notes as ticks."""

    __slots__ = ("program", "is_drum", "notes", "sustain")

    def __init__(self, program: int, channel: int, sustain: list):
        self.program = program
        self.is_drum = channel == 9
        self.notes: list[tuple[int, int, int, int]] = []  # (start_tick, end_tick, pitch, velocity)
        # (tick, value) of CC64 events. pretty_midi hands an instrument the control-change list of
        # the "straggler" of its (channel, track) by reference, so several instruments can share it.
        self.sustain = sustain


# Data lengths of the system common / realtime messages mido accepts (0xF4, 0xF5, 0xF9, 0xFD
# are undefined and rejected, as mido does).
_SYSTEM_DATA_LENGTH = {0xF1: 1, 0xF2: 2, 0xF3: 1, 0xF6: 0, 0xF8: 0, 0xFA: 0, 0xFB: 0, 0xFC: 0, 0xFE: 0}


def _read_varlen(data: bytes, p: int) -> tuple[int, int]:
    value = 0
    while True:
        b = data[p]
        p += 1
        value = (value << 7) | (b & 0x7F)
        if b < 0x80:
            return value, p


def _parse_track(
    data: bytes, track_idx: int, instruments: dict, stragglers: dict, tempos: list | None, note_budget: list
) -> None:
    """Walk one MTrk chunk, pairing notes and routing CC64 exactly like pretty_midi.

    pretty_midi rules reproduced here (``PrettyMIDI._load_instruments``):
    - a note-off (or note-on with velocity 0) closes *every* open note of that (channel, pitch)
      that started on an earlier tick; notes begun on the note-off's own tick stay open if older
      notes were closed, and are dropped otherwise;
    - the instrument of a note is (program current at the note-off, channel, track);
    - a control change goes to the instrument of the current program if it exists, otherwise to
      the (channel, track) straggler, whose list the next instrument created there adopts;
    - notes still open at the end of the track are dropped.
    """
    program = [0] * 16
    open_notes: dict[int, list[tuple[int, int]]] = {}
    tick = 0
    running = 0
    p = 0
    end = len(data)

    def cc_list(prog: int, ch: int) -> list:
        inst = instruments.get((prog, ch, track_idx))
        if inst is not None:
            return inst.sustain
        lst = stragglers.get((ch, track_idx))
        if lst is None:
            lst = stragglers[(ch, track_idx)] = []
        return lst

    while p < end:
        # delta time (variable length)
        b = data[p]
        p += 1
        delta = b & 0x7F
        while b & 0x80:
            b = data[p]
            p += 1
            delta = (delta << 7) | (b & 0x7F)
        tick += delta

        status = data[p]
        explicit = status >= 0x80
        if explicit:
            p += 1
            if status != 0xFF:
                running = status  # mido keeps sysex as running status too
        elif running:
            status = running  # running status: this byte is the first data byte
        else:
            raise ValueError("running status without a previous status byte")

        if status < 0xF0:
            kind = status & 0xF0
            ch = status & 0x0F
            if kind == 0xC0 or kind == 0xD0:
                d1 = data[p]
                p += 1
                if d1 > 127:
                    raise ValueError("data byte out of range")
                if kind == 0xC0:
                    program[ch] = d1
                continue
            d1 = data[p]
            d2 = data[p + 1]
            p += 2
            if (d1 | d2) > 127:
                raise ValueError("data byte out of range")
            if kind == 0x90 and d2 > 0:  # note on
                key = (ch << 7) | d1
                lst = open_notes.get(key)
                if lst is None:
                    open_notes[key] = [(tick, d2)]
                else:
                    lst.append((tick, d2))
            elif kind == 0x80 or kind == 0x90:  # note off
                key = (ch << 7) | d1
                lst = open_notes.pop(key, None)
                if lst is None:
                    continue  # spurious note-off
                to_close = lst if lst[-1][0] != tick else [n for n in lst if n[0] != tick]
                if to_close:
                    prog = program[ch]
                    inst = instruments.get((prog, ch, track_idx))
                    if inst is None:
                        inst = _Instrument(prog, ch, stragglers.get((ch, track_idx), []))
                        instruments[(prog, ch, track_idx)] = inst
                    for start_tick, velocity in to_close:
                        inst.notes.append((start_tick, tick, d1, velocity))
                    note_budget[0] -= len(to_close)
                    if note_budget[0] < 0:
                        raise _TooManyNotes()
                    if len(to_close) < len(lst):
                        # a note-off and note-on on the same tick: the new note continues
                        open_notes[key] = [n for n in lst if n[0] == tick]
                # otherwise the key stays closed, even when all its notes began on this tick
                # (pretty_midi then drops them)
            elif kind == 0xB0:  # control change
                lst = cc_list(program[ch], ch)
                if d1 == 64:
                    lst.append((tick, d2))
            elif kind == 0xE0:  # pitch bend: only matters because it can create a straggler
                cc_list(program[ch], ch)
        elif status == 0xFF:  # meta event
            meta_type = data[p]
            length, p = _read_varlen(data, p + 1)
            if meta_type == 0x51 and tempos is not None:
                if length < 3 or p + 3 > end:
                    raise ValueError("bad tempo event")
                tempos.append((tick, (data[p] << 16) | (data[p + 1] << 8) | data[p + 2]))
            p += length
        elif status == 0xF0 or status == 0xF7:  # sysex
            if not explicit:
                raise ValueError("running status on a sysex message")
            length, p = _read_varlen(data, p)
            p += length
        else:
            n = _SYSTEM_DATA_LENGTH.get(status)
            if n is None or not explicit:
                raise ValueError(f"undefined status byte 0x{status:02x}")
            p += n
    if p > end:
        raise IndexError("event runs past the end of its track")


class _TooManyNotes(Exception):
    pass


def _tick_scales(tempos: list[tuple[int, int]], resolution: int) -> list[tuple[int, float]]:
    """pretty_midi ``_load_tempo_changes``: (tick, seconds per tick) from track 0's tempo events."""
    scales = [(0, 60.0 / (120.0 * resolution))]
    for tick, tempo in tempos:
        if tempo <= 0:
            raise ValueError("tempo of zero")
        if tick == 0:
            scales = [(0, 60.0 / ((6e7 / tempo) * resolution))]
        else:
            scale = 60.0 / ((6e7 / tempo) * resolution)
            if scale != scales[-1][1]:  # pretty_midi ignores repeated tempi
                scales.append((tick, scale))
    return scales


def _ticks_to_seconds(ticks: np.ndarray, scales: list[tuple[int, float]]) -> np.ndarray:
    """pretty_midi's tick -> time table, evaluated only where needed, bit for bit.

    pretty_midi fills ``time[t] = base_i + scale_i * (t - start_i)`` per tempo interval, with
    ``base_i`` the time of the interval's first tick; the same float operations give the same
    doubles, which matters because events are ordered and rounded on exact times (ORIGINAL.md §2.2).
    """
    starts = np.array([s for s, _ in scales], np.int64)
    scale = np.array([c for _, c in scales], np.float64)
    base = np.zeros(len(scales), np.float64)
    for i in range(1, len(scales)):
        base[i] = base[i - 1] + scale[i - 1] * np.float64(starts[i] - starts[i - 1])
    which = np.searchsorted(starts, ticks, side="right") - 1
    return base[which] + scale[which] * (ticks - starts[which]).astype(np.float64)


def _read_bytes(midi: MidiInput, max_bytes: int) -> tuple[bytes, str]:
    if isinstance(midi, (bytes, bytearray, memoryview)):
        data = bytes(midi)
        name = "MIDI data"
    else:
        path = Path(midi)
        name = str(path)
        try:
            size = path.stat().st_size
            if size > max_bytes:
                raise MidiError(f"{name}: MIDI file too large ({size} bytes > {max_bytes})")
            data = path.read_bytes()
        except FileNotFoundError:
            raise MidiError(f"MIDI file not found: {name}") from None
        except IsADirectoryError:
            raise MidiError(f"not a MIDI file (a directory): {name}") from None
        except OSError as e:
            raise MidiError(f"cannot read MIDI file {name}: {e.strerror or e}") from None
    if len(data) > max_bytes:
        raise MidiError(f"{name}: MIDI data too large ({len(data)} bytes > {max_bytes})")
    return data, name


def _parse_midi(data: bytes, name: str, max_notes: int) -> tuple[list[_Instrument], list]:
    """Parse SMF bytes into pretty_midi-style instruments (ticks) and pretty_midi tick scales."""
    if len(data) < 8 or data[:4] != b"MThd":
        raise MidiError(f"{name}: not a MIDI file (no MThd header)")
    header_size = int.from_bytes(data[4:8], "big")
    if len(data) < 8 + max(header_size, 6):
        raise MidiError(f"{name}: truncated MIDI file (incomplete header)")
    _, num_tracks, division = struct.unpack(">hhh", data[8:14])
    if division <= 0:
        raise MidiError(f"{name}: SMPTE time division is not supported")
    instruments: dict[tuple[int, int, int], _Instrument] = {}
    stragglers: dict[tuple[int, int], list] = {}
    tempos: list[tuple[int, int]] = []
    budget = [max_notes]
    pos = 8 + header_size
    track_idx = 0
    while track_idx < num_tracks:
        if pos + 8 > len(data):
            raise MidiError(f"{name}: truncated MIDI file (expected {num_tracks} tracks, found {track_idx})")
        chunk_type = data[pos : pos + 4]
        size = int.from_bytes(data[pos + 4 : pos + 8], "big")
        start, pos = pos + 8, pos + 8 + size
        if pos > len(data):
            raise MidiError(f"{name}: truncated MIDI file (track {track_idx} is cut short)")
        if chunk_type != b"MTrk":
            continue  # unknown chunk types are skipped, as the SMF standard asks
        try:
            _parse_track(
                data[start:pos], track_idx, instruments, stragglers, tempos if track_idx == 0 else None, budget
            )
        except _TooManyNotes:
            raise MidiError(f"{name}: more than {max_notes} notes (limit max_notes)") from None
        except IndexError:
            raise MidiError(f"{name}: truncated or corrupt MIDI track {track_idx}") from None
        except ValueError as e:
            raise MidiError(f"{name}: corrupt MIDI track {track_idx} ({e})") from None
        track_idx += 1
    try:
        scales = _tick_scales(tempos, division)
    except ValueError as e:
        raise MidiError(f"{name}: corrupt MIDI file ({e})") from None
    return list(instruments.values()), scales


# --------------------------------------------------------------------------------------------
# Sustain pedal (note_seq.apply_sustain_control_changes) and the NoteSequence view
# --------------------------------------------------------------------------------------------

_SUSTAIN_ON, _SUSTAIN_OFF, _NOTE_ON, _NOTE_OFF = 0, 1, 2, 3


def _sustain_instrument(
    start: list, end: list, pitch: list, pedal: list[tuple[float, int]], removed: list, total_time: float
) -> tuple[list[int], float]:
    """note_seq's sustain algorithm for one instrument; edits ``end``/``removed`` in place.

    Events are sorted by (time, type) with ties in insertion order (note-ons, note-offs, pedal),
    so at equal times: pedal down, pedal up, note-on, note-off. Hence a note ending exactly at a
    pedal-down is extended, and a note starting at a pedal-up is not cut. While the pedal is
    down a new note-on ends every active note of the same pitch (deleting it if that leaves it
    zero-length). Returns the notes still held by the pedal at the end (the caller ends them at
    the last event time of the whole sequence) and the updated total time.
    """
    n = len(start)
    events = [(start[i], _NOTE_ON, i) for i in range(n)]
    events += [(end[i], _NOTE_OFF, i) for i in range(n)]
    events += [(t, _SUSTAIN_ON if v >= 64 else _SUSTAIN_OFF, -1) for t, v in pedal]
    events.sort(key=lambda e: (e[0], e[1]))  # stable: ties keep insertion order
    sustain = False
    active: list[int] = []
    for time, kind, i in events:
        if kind == _SUSTAIN_ON:
            sustain = True
        elif kind == _SUSTAIN_OFF:
            sustain = False
            still = []
            for k in active:
                if end[k] < time:  # released by its key earlier, held by the pedal until now
                    end[k] = time
                    if time > total_time:
                        total_time = time
                else:
                    still.append(k)
            active = still
        elif kind == _NOTE_ON:
            if sustain:
                still = []
                for k in active:
                    if pitch[k] == pitch[i]:
                        end[k] = time  # re-struck under the pedal: the old note stops here
                        if start[k] == end[k]:
                            removed[k] = True
                    else:
                        still.append(k)
                active = still
            active.append(i)
        elif not sustain and i in active:  # note-off without pedal
            active.remove(i)
    return active, total_time


def _apply_sustain(
    notes: _NoteArrays, instrument: np.ndarray, pedals: list[list], total_time: float
) -> tuple[_NoteArrays, float]:
    """note_seq ``apply_sustain_control_changes``, per instrument (drums untouched)."""
    end = notes.end.copy()
    removed = np.zeros(len(notes), bool)
    # The last event of the whole (all-instrument) sorted event list sets the end of notes the
    # pedal still holds when the sequence ends.
    non_drum = ~notes.is_drum
    last_time = 0.0
    if non_drum.any():
        last_time = max(float(notes.start[non_drum].max()), float(notes.end[non_drum].max()))
    for pedal in pedals:
        if pedal:
            last_time = max(last_time, max(t for t, _ in pedal))
    held: list[np.ndarray] = []
    for inst, pedal in enumerate(pedals):
        if not any(v >= 64 for _, v in pedal):
            continue  # without a pedal-down nothing changes (the note order already agrees)
        idx = np.flatnonzero((instrument == inst) & non_drum)
        if len(idx) == 0:
            continue
        e = end[idx].tolist()
        r = [False] * len(idx)
        still, total_time = _sustain_instrument(
            notes.start[idx].tolist(), e, notes.pitch[idx].tolist(), pedal, r, total_time
        )
        end[idx] = e
        removed[idx] = r
        held.append(idx[still])
    held_idx = np.concatenate(held) if held else np.zeros(0, np.int64)
    if len(held_idx):
        end[held_idx] = last_time
        total_time = last_time  # note_seq assigns (does not max) here
    keep = ~removed
    out = _NoteArrays(
        notes.pitch[keep], notes.start[keep], end[keep], notes.velocity[keep], notes.program[keep], notes.is_drum[keep]
    )
    return out, total_time


def _midi_to_note_arrays(
    midi: MidiInput, max_bytes: int, max_notes: int, max_seconds: float
) -> tuple[_NoteArrays, float, str]:
    data, name = _read_bytes(midi, max_bytes)
    instruments, scales = _parse_midi(data, name, max_notes)
    counts = [len(inst.notes) for inst in instruments]
    if sum(counts) == 0:
        raise MidiError(f"{name}: MIDI file has no notes")
    # note_seq's NoteSequence: instruments in creation order, notes in pretty_midi order.
    ticks = np.array([n for inst in instruments for n in inst.notes], np.int64)
    instrument = np.repeat(np.arange(len(instruments)), counts)
    notes = _NoteArrays(
        pitch=ticks[:, 2],
        start=_ticks_to_seconds(ticks[:, 0], scales),
        end=_ticks_to_seconds(ticks[:, 1], scales),
        velocity=ticks[:, 3],
        program=np.repeat([inst.program for inst in instruments], counts).astype(np.int64),
        is_drum=np.repeat([inst.is_drum for inst in instruments], counts).astype(bool),
    )
    pedals = []
    for inst in instruments:
        if inst.sustain:
            t = _ticks_to_seconds(np.array([c[0] for c in inst.sustain], np.int64), scales)
            pedals.append(list(zip(t.tolist(), [c[1] for c in inst.sustain])))
        else:
            pedals.append([])
    total_time = float(notes.end.max())
    notes, total_time = _apply_sustain(notes, instrument, pedals, total_time)
    if not total_time <= max_seconds:
        raise MidiError(f"{name}: MIDI file too long ({total_time:.0f} s > {max_seconds:.0f} s, limit max_seconds)")
    # Slakh classes for non-drum notes (ORIGINAL.md §2.5 step 3); drums keep their program.
    notes.program = np.where(notes.is_drum, notes.program, _SLAKH_MAP[notes.program])
    return notes, total_time, name


def midi_to_notes(
    midi: MidiInput,
    *,
    max_bytes: int = DEFAULT_MAX_BYTES,
    max_notes: int = DEFAULT_MAX_NOTES,
    max_seconds: float = DEFAULT_MAX_SECONDS,
) -> tuple[list[Note], float]:
    """Read a MIDI file (path or bytes) into notes, as diffusers' MidiProcessor sees them.

    Sustain pedal is applied per instrument and non-drum programs are mapped to Slakh classes
    (ORIGINAL.md §2.5 steps 1-3). Returns the notes in NoteSequence order and the NoteSequence
    ``total_time`` in seconds. Raises MidiError for a missing, non-MIDI, truncated or corrupt
    file, a file without notes, or one beyond ``max_bytes`` / ``max_notes`` / ``max_seconds``.
    """
    notes, total_time, _ = _midi_to_note_arrays(midi, max_bytes, max_notes, max_seconds)
    return notes.to_notes(), total_time
