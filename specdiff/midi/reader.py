"""MIDI files -> notes, the way diffusers' ``MidiProcessor`` sees them (ORIGINAL.md §2.5 steps 1-3).

Our own small Standard MIDI File parser (stdlib only), with pretty_midi's rules for pairing notes,
splitting instruments and routing control changes (third-party parsers differ on all three, and the
exact token stream depends on them), then note_seq's sustain-pedal handling and the mapping of
non-drum programs to Slakh classes. :mod:`specdiff.midi.tokenizer` turns the notes into tokens.
"""

from __future__ import annotations

import os
import re
import struct
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from specdiff.constants import (
    DEFAULT_MAX_MIDI_BYTES,
    DEFAULT_MAX_MIDI_EVENTS,
    DEFAULT_MAX_MIDI_NOTES,
    DEFAULT_MAX_MIDI_SECONDS,
    MIDI_CHECK_EVERY_EVENTS,
)
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

# Generous guards against absurd input (all overridable per call; the values live in specdiff.constants).
DEFAULT_MAX_BYTES = DEFAULT_MAX_MIDI_BYTES
DEFAULT_MAX_NOTES = DEFAULT_MAX_MIDI_NOTES
DEFAULT_MAX_EVENTS = DEFAULT_MAX_MIDI_EVENTS
DEFAULT_MAX_SECONDS = DEFAULT_MAX_MIDI_SECONDS

#: A hook a parse calls every few thousand events; it raises to abandon the parse (cancellation,
#: a wall-clock budget). The exception propagates unchanged.
CheckCancelled = Callable[[], None]


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
        # (tick, value) of CC64 events (and blocks of such rows). pretty_midi hands an instrument the
        # control-change list of the "straggler" of its (channel, track) by reference, so several
        # instruments can share it.
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


class _OverLimit(Exception):
    """A file passed one of the limits (``which``: the limit's keyword name)."""

    def __init__(self, which: str) -> None:
        super().__init__(which)
        self.which = which


class _Budget:
    """What a parse may still read: notes, events of every kind, and a hook called now and then."""

    __slots__ = ("notes_left", "events_left", "check_cancelled")

    def __init__(self, max_notes: int, max_events: int, check_cancelled: CheckCancelled | None) -> None:
        self.notes_left = max_notes
        self.events_left = max_events
        self.check_cancelled = check_cancelled

    def take_events(self, count: int) -> int:
        """Spend ``count`` events (raise once past the limit), call the hook, and return how many
        events the caller may read before it must call again."""
        self.events_left -= count
        if self.events_left < 0:
            raise _OverLimit("max_events")
        if self.check_cancelled is not None:
            self.check_cancelled()
        return min(MIDI_CHECK_EVERY_EVENTS, self.events_left + 1)


# Runs of running-status events are read as arrays: their bytes are all data bytes (< 0x80), so a
# run ends at the first byte >= 0x80 (a status byte, or a delta time of more than one byte).
_DATA_BYTES = re.compile(rb"[\x00-\x7f]*")
#: Shortest run read as an array (shorter runs take the event-by-event path).
_MIN_ARRAY_RUN = 32
#: Channel messages whose runs are read as arrays (no notes: their effect does not depend on
#: the state a note pairs against): data bytes per message.
_ARRAY_KINDS = {0xA0: 2, 0xB0: 2, 0xC0: 1, 0xD0: 1, 0xE0: 2}


class _TrackState:
    """What the channel messages of one MTrk chunk change: each channel's program, the open notes,
    and the instruments and stragglers of the whole file.

    pretty_midi rules reproduced here (``PrettyMIDI._load_instruments``):
    - a note-off (or note-on with velocity 0) closes *every* open note of that (channel, pitch)
      that started on an earlier tick; notes begun on the note-off's own tick stay open if older
      notes were closed, and are dropped otherwise;
    - the instrument of a note is (program current at the note-off, channel, track);
    - a control change goes to the instrument of the current program if it exists, otherwise to
      the (channel, track) straggler, whose list the next instrument created there adopts;
    - notes still open at the end of the track are dropped.
    """

    __slots__ = ("track_idx", "instruments", "stragglers", "budget", "program", "open_notes")

    def __init__(self, track_idx: int, instruments: dict, stragglers: dict, budget: _Budget) -> None:
        self.track_idx = track_idx
        self.instruments = instruments
        self.stragglers = stragglers
        self.budget = budget
        self.program = [0] * 16
        self.open_notes: dict[int, list[tuple[int, int]]] = {}  # (channel << 7 | pitch) -> [(tick, velocity)]

    def cc_list(self, ch: int) -> list:
        """The control-change list of the instrument of ``ch``'s current program, else the straggler's."""
        inst = self.instruments.get((self.program[ch], ch, self.track_idx))
        if inst is not None:
            return inst.sustain
        lst = self.stragglers.get((ch, self.track_idx))
        if lst is None:
            lst = self.stragglers[(ch, self.track_idx)] = []
        return lst

    def note_off(self, ch: int, pitch: int, tick: int) -> None:
        """Close the open notes of (``ch``, ``pitch``) begun before ``tick``, pretty_midi's way."""
        key = (ch << 7) | pitch
        lst = self.open_notes.pop(key, None)
        if lst is None:
            return  # spurious note-off
        to_close = lst if lst[-1][0] != tick else [n for n in lst if n[0] != tick]
        if to_close:
            prog = self.program[ch]
            inst = self.instruments.get((prog, ch, self.track_idx))
            if inst is None:
                inst = _Instrument(prog, ch, self.stragglers.get((ch, self.track_idx), []))
                self.instruments[(prog, ch, self.track_idx)] = inst
            for start_tick, velocity in to_close:
                inst.notes.append((start_tick, tick, pitch, velocity))
            self.budget.notes_left -= len(to_close)
            if self.budget.notes_left < 0:
                raise _OverLimit("max_notes")
            if len(to_close) < len(lst):
                # a note-off and note-on on the same tick: the new note continues
                self.open_notes[key] = [n for n in lst if n[0] == tick]
        # otherwise the key stays closed, even when all its notes began on this tick
        # (pretty_midi then drops them)

    def channel_message(self, data: bytes, p: int, kind: int, ch: int, tick: int) -> int:
        """A controller, program, pressure or pitch-bend message whose data starts at ``p``;
        returns the position after it."""
        if kind == 0xC0 or kind == 0xD0:
            d1 = data[p]
            if d1 > 127:
                raise ValueError("data byte out of range")
            if kind == 0xC0:
                self.program[ch] = d1
            return p + 1
        d1 = data[p]
        d2 = data[p + 1]
        if (d1 | d2) > 127:
            raise ValueError("data byte out of range")
        if kind == 0xB0:  # control change
            lst = self.cc_list(ch)
            if d1 == 64:
                lst.append((tick, d2))
        elif kind == 0xE0:  # pitch bend: only matters because it can create a straggler
            self.cc_list(ch)
        return p + 2

    def array_run(self, data: bytes, p: int, run_end: int, kind: int, ch: int, tick: int) -> tuple[int, int]:
        """Apply the running-status messages of ``kind`` in ``data[p:run_end]`` (all data bytes) if
        there are at least ``_MIN_ARRAY_RUN`` of them: returns how many were read (0: none) and the
        tick of the last."""
        size = 1 + _ARRAY_KINDS[kind]
        n = (run_end - p) // size
        if n < _MIN_ARRAY_RUN:
            return 0, tick
        run = np.frombuffer(data, np.uint8, n * size, p).reshape(n, size)  # rows: delta time, data bytes
        ticks = tick + np.cumsum(run[:, 0], dtype=np.int64)
        if kind == 0xB0:
            pedal = run[:, 1] == 64
            if pedal.any():  # a block of (tick, value) rows among the list's tuples
                self.cc_list(ch).append(np.stack([ticks[pedal], run[pedal, 2]], axis=1))
        elif kind == 0xC0:
            self.program[ch] = int(run[-1, 1])
        return n, int(ticks[-1])


def _skip_system_event(data: bytes, p: int, status: int, explicit: bool, tick: int, tempos: list | None) -> int:
    """Read a meta, sysex or system message whose data starts at ``p`` (collecting tempo changes
    into ``tempos``); returns the position after it."""
    if status == 0xFF:  # meta event
        meta_type = data[p]
        length, p = _read_varlen(data, p + 1)
        if meta_type == 0x51 and tempos is not None:
            if length < 3 or p + 3 > len(data):
                raise ValueError("bad tempo event")
            tempos.append((tick, (data[p] << 16) | (data[p + 1] << 8) | data[p + 2]))
        return p + length
    if status == 0xF0 or status == 0xF7:  # sysex
        if not explicit:
            raise ValueError("running status on a sysex message")
        length, p = _read_varlen(data, p)
        return p + length
    n = _SYSTEM_DATA_LENGTH.get(status)
    if n is None or not explicit:
        raise ValueError(f"undefined status byte 0x{status:02x}")
    return p + n


def _parse_track(
    data: bytes,
    track_idx: int,
    instruments: dict,
    stragglers: dict,
    tempos: list | None,
    budget: _Budget,
) -> None:
    """Walk one MTrk chunk, pairing notes and routing CC64 exactly like pretty_midi (:class:`_TrackState`).

    Every event counts against ``budget`` (notes, pedal and other controllers, meta, sysex), and
    long runs of running-status controller, pitch-bend, pressure and program messages (a pedal
    storm) are read as arrays, so the cost is linear in the file and bounded by the budget.
    """
    # The hot path (delta time, status, notes) stays inline: a call per event costs more than the rest.
    state = _TrackState(track_idx, instruments, stragglers, budget)
    open_notes = state.open_notes
    tick = running = p = 0
    end = len(data)
    count = 0  # events read since the budget was last told
    chunk = budget.take_events(0)  # events that may be read before telling it again
    array_from = 0  # no array run is looked for before this position
    while p < end:
        count += 1
        if count >= chunk:
            chunk = budget.take_events(count)
            count = 0
        b = data[p]  # delta time (variable length)
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
        if status >= 0xF0:
            p = _skip_system_event(data, p, status, explicit, tick, tempos)
            continue
        kind = status & 0xF0
        ch = status & 0x0F
        if kind == 0x90 or kind == 0x80:
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
            else:  # note off
                state.note_off(ch, d1, tick)
            continue
        p = state.channel_message(data, p, kind, ch, tick)
        if p >= array_from:  # a long run of messages of this kind in running status is read in one go
            array_from = _DATA_BYTES.match(data, p).end()
            n, tick = state.array_run(data, p, array_from, kind, ch, tick)
            if n:
                p += n * (1 + _ARRAY_KINDS[kind])
                count += n
                if count >= chunk:
                    chunk = budget.take_events(count)
                    count = 0
    if p > end:
        raise IndexError("event runs past the end of its track")
    budget.take_events(count)


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


def _pedal_rows(events: list) -> np.ndarray:
    """An instrument's CC64 events, (tick, value) tuples and blocks of such rows, as one array."""
    parts: list[np.ndarray] = []
    pending: list[tuple[int, int]] = []
    for event in events:
        if isinstance(event, np.ndarray):
            if pending:
                parts.append(np.array(pending, np.int64))
                pending = []
            parts.append(event.astype(np.int64))
        else:
            pending.append(event)
    if pending:
        parts.append(np.array(pending, np.int64))
    return np.concatenate(parts) if parts else np.zeros((0, 2), np.int64)


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


def _limit_message(name: str, which: str, max_notes: int, max_events: int) -> str:
    if which == "max_notes":
        return f"{name}: more than {max_notes} notes (limit max_notes)"
    return (f"{name}: more than {max_events} MIDI events (notes, pedal and other controller changes, "
            "meta events; limit max_events)")  # fmt: skip


def _parse_midi(
    data: bytes,
    name: str,
    max_notes: int,
    max_events: int = DEFAULT_MAX_EVENTS,
    check_cancelled: CheckCancelled | None = None,
) -> tuple[list[_Instrument], list]:
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
    budget = _Budget(max_notes, max_events, check_cancelled)
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
        except _OverLimit as over:
            raise MidiError(_limit_message(name, over.which, max_notes, max_events)) from None
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


def _pedal_events(
    pedal_times: np.ndarray, pedal_down: np.ndarray, note_times: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """The pedal events that can change anything, in sweep order: (times, kinds).

    In note_seq's sweep the pedal events between two note events (in (time, type) order) form a
    run, and of a run only two events matter: its first pedal-up (which releases the notes the
    pedal held; later pedal-ups in the run find none) and its last event (the pedal's state for
    the notes that follow). So at most two pedal events per note event are kept, however many
    toggles the file has. ``note_times``: every note-on and note-off time, sorted.
    """
    kinds = np.where(pedal_down, _SUSTAIN_ON, _SUSTAIN_OFF)
    order = np.lexsort((kinds, pedal_times))  # stable: ties keep file order, pedal-down first
    times, kinds = pedal_times[order], kinds[order]
    run = np.searchsorted(note_times, times, side="left")  # note events before each pedal event
    last = np.ones(len(run), bool)
    last[:-1] = run[1:] != run[:-1]
    ups = np.flatnonzero(kinds == _SUSTAIN_OFF)
    first_up = np.zeros(len(run), bool)
    if len(ups):
        new_run = np.ones(len(ups), bool)
        new_run[1:] = run[ups[1:]] != run[ups[:-1]]
        first_up[ups[new_run]] = True
    keep = last | first_up
    return times[keep], kinds[keep]


def _sustain_instrument(
    start: np.ndarray,
    end: np.ndarray,
    pitch: np.ndarray,
    pedal_times: np.ndarray,
    pedal_down: np.ndarray,
    removed: np.ndarray,
    total_time: float,
    check_cancelled: CheckCancelled | None = None,
) -> tuple[list[int], float]:
    """note_seq's sustain algorithm for one instrument; edits ``end``/``removed`` in place.

    Events are sorted by (time, type) with ties in insertion order (note-ons, note-offs, pedal),
    so at equal times: pedal down, pedal up, note-on, note-off. Hence a note ending exactly at a
    pedal-down is extended, and a note starting at a pedal-up is not cut. While the pedal is
    down a new note-on ends every active note of the same pitch (deleting it if that leaves it
    zero-length). Returns the notes still held by the pedal at the end (the caller ends them at
    the last event time of the whole sequence) and the updated total time.

    One sort and one sweep: the active notes are kept by pitch and the notes the pedal alone
    holds are kept apart, so a pedal-up touches only the notes it releases and a note-on only
    those of its pitch (note_seq rescans every active note at each, which costs notes x pedal
    events); pedal events that cannot change anything are dropped first (:func:`_pedal_events`).
    """
    n = len(start)
    note_times = np.concatenate([start, end])
    ptimes, pkinds = _pedal_events(pedal_times, pedal_down, np.sort(note_times))
    times = np.concatenate([note_times, ptimes])
    kinds = np.concatenate([np.full(n, _NOTE_ON), np.full(n, _NOTE_OFF), pkinds])
    index = np.concatenate([np.arange(n), np.arange(n), np.full(len(ptimes), -1)])
    order = np.lexsort((kinds, times))  # stable: ties keep insertion order
    end_list = end.tolist()
    start_list = start.tolist()
    pitch_list = pitch.tolist()
    sustain = False
    active: dict[int, None] = {}  # every active note (a dict: ordered, O(1) removal)
    by_pitch: dict[int, dict[int, None]] = {}  # the active notes of each pitch
    released: dict[int, None] = {}  # active notes whose key was released under the pedal
    swept = 0
    for time, kind, i in zip(times[order].tolist(), kinds[order].tolist(), index[order].tolist()):
        swept += 1
        if check_cancelled is not None and swept % MIDI_CHECK_EVERY_EVENTS == 0:
            check_cancelled()
        if kind == _SUSTAIN_ON:
            sustain = True
        elif kind == _SUSTAIN_OFF:
            sustain = False
            if released:  # held by the pedal since their key was released: they end now
                for k in released:
                    end_list[k] = time
                    del active[k]
                    del by_pitch[pitch_list[k]][k]
                released = {}
                if time > total_time:
                    total_time = time
        elif kind == _NOTE_ON:
            same = by_pitch.get(pitch_list[i])
            if same is None:
                same = by_pitch[pitch_list[i]] = {}
            elif sustain and same:
                for k in same:  # re-struck under the pedal: the old note stops here
                    end_list[k] = time
                    if start_list[k] == time:
                        removed[k] = True
                    del active[k]
                    released.pop(k, None)
                same.clear()
            active[i] = None
            same[i] = None
        elif i in active:  # note-off
            if sustain:
                released[i] = None
            else:
                del active[i]
                del by_pitch[pitch_list[i]][i]
    end[:] = end_list
    return list(active), total_time


def _apply_sustain(
    notes: _NoteArrays,
    instrument: np.ndarray,
    pedals: list[tuple[np.ndarray, np.ndarray]],
    total_time: float,
    check_cancelled: CheckCancelled | None = None,
) -> tuple[_NoteArrays, float]:
    """note_seq ``apply_sustain_control_changes``, per instrument (drums untouched).

    ``pedals[i]``: instrument i's CC64 events as (times in seconds, values)."""
    end = notes.end.copy()
    removed = np.zeros(len(notes), bool)
    # The last event of the whole (all-instrument) sorted event list sets the end of notes the
    # pedal still holds when the sequence ends.
    non_drum = ~notes.is_drum
    last_time = 0.0
    if non_drum.any():
        last_time = max(float(notes.start[non_drum].max()), float(notes.end[non_drum].max()))
    for times, _ in pedals:
        if len(times):
            last_time = max(last_time, float(times.max()))
    # The notes of each instrument, found once (not a scan of all notes per instrument).
    by_instrument = np.argsort(instrument, kind="stable")
    bounds = np.searchsorted(instrument[by_instrument], np.arange(len(pedals) + 1))
    held: list[np.ndarray] = []
    for inst, (times, values) in enumerate(pedals):
        down = values >= 64
        if not down.any():
            continue  # without a pedal-down nothing changes (the note order already agrees)
        idx = by_instrument[bounds[inst] : bounds[inst + 1]]
        idx = idx[non_drum[idx]]
        if len(idx) == 0:
            continue
        e = end[idx]
        r = np.zeros(len(idx), bool)
        still, total_time = _sustain_instrument(
            notes.start[idx], e, notes.pitch[idx], times, down, r, total_time, check_cancelled
        )
        end[idx] = e
        removed[idx] = r
        held.append(idx[np.array(still, np.int64)])
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
    midi: MidiInput,
    max_bytes: int,
    max_notes: int,
    max_seconds: float,
    max_events: int = DEFAULT_MAX_EVENTS,
    check_cancelled: CheckCancelled | None = None,
    slakh_programs: bool = True,
) -> tuple[_NoteArrays, float, str]:
    data, name = _read_bytes(midi, max_bytes)
    instruments, scales = _parse_midi(data, name, max_notes, max_events, check_cancelled)
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
        events = _pedal_rows(inst.sustain)
        pedals.append((_ticks_to_seconds(events[:, 0], scales), events[:, 1]))
    total_time = float(notes.end.max())
    notes, total_time = _apply_sustain(notes, instrument, pedals, total_time, check_cancelled)
    if not total_time <= max_seconds:
        raise MidiError(f"{name}: MIDI file too long ({total_time:.0f} s > {max_seconds:.0f} s, limit max_seconds)")
    if slakh_programs:  # Slakh classes for non-drum notes (ORIGINAL.md §2.5 step 3); drums keep their program.
        notes.program = slakh_classes(notes.program, notes.is_drum)
    return notes, total_time, name


def slakh_classes(programs: np.ndarray, is_drum: np.ndarray) -> np.ndarray:
    """Non-drum ``programs`` mapped to their Slakh class (:func:`program_to_slakh`); drums unchanged.
    Idempotent: a class maps to itself."""
    return np.where(is_drum, programs, _SLAKH_MAP[programs])


def midi_to_notes(
    midi: MidiInput,
    *,
    max_bytes: int = DEFAULT_MAX_BYTES,
    max_notes: int = DEFAULT_MAX_NOTES,
    max_seconds: float = DEFAULT_MAX_SECONDS,
    max_events: int = DEFAULT_MAX_EVENTS,
    check_cancelled: CheckCancelled | None = None,
    slakh_programs: bool = True,
) -> tuple[list[Note], float]:
    """Read a MIDI file (path or bytes) into notes, as diffusers' MidiProcessor sees them.

    Sustain pedal is applied per instrument and non-drum programs are mapped to Slakh classes
    (ORIGINAL.md §2.5 steps 1-3; ``slakh_programs=False`` keeps the General MIDI programs, for a model
    with the ``gm_programs`` extension). Returns the notes in NoteSequence order and the NoteSequence
    ``total_time`` in seconds. Raises MidiError for a missing, non-MIDI, truncated or corrupt
    file, a file without notes, or one beyond ``max_bytes`` / ``max_notes`` / ``max_seconds`` /
    ``max_events`` (events of every kind: notes, pedal and other controllers, meta, sysex).

    The cost is linear in the file (one pass over the bytes, one sort and one sweep for the
    pedal). ``check_cancelled``, if given, is called every few thousand events; whatever it
    raises abandons the parse (a wall-clock budget, a cancelled request).
    """
    notes, total_time, _ = _midi_to_note_arrays(
        midi, max_bytes, max_notes, max_seconds, max_events, check_cancelled, slakh_programs
    )
    return notes.to_notes(), total_time
