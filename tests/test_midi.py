"""specdiff.midi.reader on pathological files (issue 26): linear cost, limits on every kind of event, a hook
to abandon a parse, and the same notes as note_seq's (quadratic) sustain algorithm.

The generators are the probe's files at small sizes (``tests/conftest.py``); the full sizes are in
``benchmarks/midi_parse.py``. Expected notes are derived by hand from each generator's timeline
(a tick is 1/960 s). Work is measured as process CPU time at two sizes, 4x apart: linear code
takes about 4x as long, the old quadratic code took 16x.
"""

from __future__ import annotations

import random
import time

import numpy as np
import pytest
from conftest import (
    STRESS_PITCHES,
    TICKS_PER_SECOND,
    held_under_one_pedal_midi,
    pedal_storm_midi,
    stacked_notes_one_press_midi,
)

from specdiff.errors import MidiError
from specdiff.midi.reader import _sustain_instrument, midi_to_notes
from specdiff.midi.tokenizer import midi_to_segments

#: Linear code grows ~4x from one size to 4x that size; quadratic code 16x. Timings on a shared CPU
#: wobble, so the bound sits between the two.
GROWTH_BOUND = 8.0


def seconds(ticks: int) -> float:
    """pretty_midi's time of a tick at 120 bpm: ticks times the seconds per tick (not ticks / 960:
    the last bit differs)."""
    return ticks * (1.0 / TICKS_PER_SECOND)


def notes_as_tuples(notes) -> list[tuple]:
    return [(n.pitch, n.start, n.end, n.velocity, n.program, n.is_drum) for n in notes]


def cpu_seconds(function, *args, repeats: int = 3) -> float:
    """The least process CPU time of ``repeats`` calls (other processes' load does not count)."""
    best = float("inf")
    for _ in range(repeats):
        started = time.process_time()
        function(*args)
        best = min(best, time.process_time() - started)
    return best


def growth(make, small: int) -> float:
    """How much longer reading ``make(4 * small)`` takes than reading ``make(small)``: the best of three
    timings of each, so one descheduled run on a busy CI machine does not decide (a single timing gave
    8.5x once, where linear reading gives ~4x and quadratic 16x)."""
    data_small, data_large = make(small), make(4 * small)
    midi_to_notes(data_small)  # warm up
    large = min(cpu_seconds(midi_to_notes, data_large) for _ in range(3))
    return large / max(min(cpu_seconds(midi_to_notes, data_small) for _ in range(3)), 1e-4)


# ---------------------------------------------------------------------------------------------
# Right answers on the pathological files
# ---------------------------------------------------------------------------------------------


def test_pedal_storm_holds_every_note_to_the_final_release():
    notes_count, toggles, release = 300, 3001, 100  # odd: the storm ends with the pedal down
    notes, total = midi_to_notes(pedal_storm_midi(notes_count, toggles, release))
    end = seconds(notes_count + toggles + release)  # keys released under the pedal, held to its release
    expected = [(36 + i % STRESS_PITCHES, seconds(i), end, 100, 0, False) for i in range(notes_count)]
    assert sorted(notes_as_tuples(notes)) == sorted(expected)
    assert total == end


def test_pedal_storm_ending_with_the_pedal_up_leaves_notes_as_played():
    notes_count, toggles = 300, 3000  # even: the pedal is up when the keys are released
    notes, total = midi_to_notes(pedal_storm_midi(notes_count, toggles))
    end = seconds(notes_count + toggles)
    assert sorted(notes_as_tuples(notes)) == sorted(
        (36 + i % STRESS_PITCHES, seconds(i), end, 100, 0, False) for i in range(notes_count)
    )
    assert total == end


def test_notes_under_one_pedal_end_where_their_key_is_struck_again():
    count = 500
    notes, total = midi_to_notes(held_under_one_pedal_midi(count))
    expected = []
    for i in range(count):
        again = i + STRESS_PITCHES  # the next note on the same key
        end = seconds(2 * again) if again < count else seconds(2 * count)  # else: held to the pedal-up
        expected.append((36 + i % STRESS_PITCHES, seconds(2 * i), end, 100, 0, False))
    assert sorted(notes_as_tuples(notes)) == sorted(expected)
    assert total == seconds(2 * count)


def test_stacked_notes_and_one_pedal_press():
    count = 500
    notes, total = midi_to_notes(stacked_notes_one_press_midi(count))
    end = seconds(count + 2)  # the pedal was up again when the keys were released
    assert sorted(notes_as_tuples(notes)) == sorted(
        (36 + i % STRESS_PITCHES, seconds(i), end, 100, 0, False) for i in range(count)
    )
    assert total == end


def test_running_status_runs_read_as_arrays_equal_explicit_status_bytes():
    """The pedal storm's toggles in running status (read as arrays) and with a status byte on every
    event (read one by one) give the same notes."""
    running = pedal_storm_midi(100, 501)
    explicit = running.replace(b"\x01\x40\x00", b"\x01\xb0\x40\x00").replace(b"\x01\x40\x7f", b"\x01\xb0\x40\x7f")
    fixed_length = bytearray(explicit)
    fixed_length[18:22] = (len(explicit) - 22).to_bytes(4, "big")  # the MTrk length
    assert len(explicit) > len(running)
    assert midi_to_notes(bytes(fixed_length)) == midi_to_notes(running)


# ---------------------------------------------------------------------------------------------
# Linear cost
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "make, small",
    [
        (lambda n: pedal_storm_midi(n, 20 * n + 1), 1500),  # the probe's 1 : 21 notes to toggles
        (held_under_one_pedal_midi, 3000),
        (stacked_notes_one_press_midi, 3000),
    ],
    ids=["pedal-storm", "held-under-one-pedal", "stacked-notes-one-press"],
)
def test_reading_cost_grows_linearly(make, small):
    ratio = growth(make, small)
    assert ratio < GROWTH_BOUND, f"4x the file took {ratio:.1f}x the CPU time"


# ---------------------------------------------------------------------------------------------
# Limits on every kind of event, and a hook to abandon a parse
# ---------------------------------------------------------------------------------------------


def test_pedal_events_count_against_max_events():
    notes_count, toggles = 50, 2001
    data = pedal_storm_midi(notes_count, toggles)
    events = notes_count + toggles + min(notes_count, STRESS_PITCHES) + 2
    assert len(midi_to_notes(data, max_events=events)[0]) == notes_count  # exactly at the limit
    with pytest.raises(MidiError) as caught:
        midi_to_notes(data, max_events=events - 1, max_notes=notes_count)
    message = str(caught.value)
    assert "more than" in message and "max_events" in message and "\n" not in message
    with pytest.raises(MidiError, match="max_events"):
        midi_to_segments(data, max_events=1000)


def test_max_events_stops_a_storm_early():
    """A storm far over the limit is refused after reading about the limit's worth of events."""
    small, large = pedal_storm_midi(100, 2_001), pedal_storm_midi(100, 200_001)
    for data in (small, large):
        with pytest.raises(MidiError, match="max_events"):
            midi_to_notes(data, max_events=1_000)
    refuse_large = cpu_seconds(lambda: pytest.raises(MidiError, midi_to_notes, large, max_events=1_000))
    read_small = cpu_seconds(midi_to_notes, small)
    assert refuse_large < 2 * read_small + 0.01


def test_check_cancelled_is_called_and_can_abandon_a_parse():
    data = held_under_one_pedal_midi(20_000)  # 40 003 events, read one by one
    calls = []
    midi_to_notes(data, check_cancelled=lambda: calls.append(1))
    assert len(calls) >= 40_003 // 4096 + 40_000 // 4096  # a call per 4096 events parsed, and swept

    class Stop(Exception):
        pass

    def stop_on_third_call():
        calls.append(1)
        if len(calls) >= 3:
            raise Stop()

    calls.clear()
    with pytest.raises(Stop):
        midi_to_notes(data, check_cancelled=stop_on_third_call)
    assert len(calls) == 3


# ---------------------------------------------------------------------------------------------
# The sweep equals note_seq's algorithm
# ---------------------------------------------------------------------------------------------


def reference_sustain(start, end, pitch, pedal, removed, total_time):
    """note_seq's ``apply_sustain_control_changes`` for one instrument, as written there (quadratic):
    sort events by (time, type), rescan the active notes at every pedal-up and note-on."""
    sustain_on, sustain_off, note_on, note_off = 0, 1, 2, 3
    n = len(start)
    events = [(start[i], note_on, i) for i in range(n)]
    events += [(end[i], note_off, i) for i in range(n)]
    events += [(t, sustain_on if v >= 64 else sustain_off, -1) for t, v in pedal]
    events.sort(key=lambda e: (e[0], e[1]))
    sustain, active = False, []
    for time_, kind, i in events:
        if kind == sustain_on:
            sustain = True
        elif kind == sustain_off:
            sustain = False
            still = []
            for k in active:
                if end[k] < time_:
                    end[k] = time_
                    total_time = max(total_time, time_)
                else:
                    still.append(k)
            active = still
        elif kind == note_on:
            if sustain:
                still = []
                for k in active:
                    if pitch[k] == pitch[i]:
                        end[k] = time_
                        if start[k] == end[k]:
                            removed[k] = True
                    else:
                        still.append(k)
                active = still
            active.append(i)
        elif not sustain and i in active:
            active.remove(i)
    return active, total_time


@pytest.mark.parametrize("seed", range(200))
def test_sweep_equals_note_seqs_algorithm_on_random_notes_and_pedals(seed):
    rng = random.Random(seed)
    n = rng.randint(1, 25)
    grid = [k * 0.25 for k in range(12)]  # a coarse grid: many equal times, the tie rules matter
    start = [rng.choice(grid[:-1]) for _ in range(n)]
    end = [s + rng.choice(grid[1:6]) for s in start]
    pitch = [rng.choice([60, 61, 62]) for _ in range(n)]
    pedal = [(rng.choice(grid + [3.0, 3.5]), rng.choice([0, 63, 64, 127])) for _ in range(rng.randint(0, 40))]
    expected_end, expected_removed = list(end), [False] * n
    expected_held, expected_total = reference_sustain(start, expected_end, pitch, pedal, expected_removed, 1.0)

    got_end, got_removed = np.array(end), np.zeros(n, bool)
    times = np.array([t for t, _ in pedal], float)
    down = np.array([v >= 64 for _, v in pedal], bool)
    held, total = _sustain_instrument(np.array(start), got_end, np.array(pitch), times, down, got_removed, 1.0)
    assert got_end.tolist() == expected_end
    assert got_removed.tolist() == expected_removed
    assert sorted(held) == sorted(expected_held)
    assert total == expected_total
