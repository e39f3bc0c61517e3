"""Make the tokenizer's golden fixtures with the *official* processor (ORIGINAL.md §2.5).

Builds a set of small MIDI files deterministically (mido; plus two pieces from music21's corpus
when music21 is installed), runs diffusers' ``MidiProcessor`` (note_seq + pretty_midi) on each and
stores the expected token segments in ``tests/data/tokenizer/golden.json`` (padding stripped,
list length kept). ``tests/test_tokenizer.py`` requires our ``midi_to_segments`` to match them
exactly.

This needs note-seq, which is too heavy for the main environment; run it from a separate venv:

    python -m venv venvs/noteseq
    venvs/noteseq/bin/pip install torch==2.13.0 note-seq==0.0.5 diffusers==0.42.1 \
        transformers music21
    venvs/noteseq/bin/python tools/make_token_fixtures.py

The MIDI files are rewritten on every run (byte-identical: everything is seeded).
"""

from __future__ import annotations

import argparse
import io
import json
import random
import sys
from importlib import metadata
from pathlib import Path

import mido

OUT_DIR = Path(__file__).resolve().parents[1] / "tests" / "data" / "tokenizer"


# ------------------------------------------------------------------------------------------
# Writing MIDI with full control over event order at equal ticks
# ------------------------------------------------------------------------------------------


class Track:
    """Collects (tick, message) pairs; at equal ticks events keep their insertion order."""

    def __init__(self, name: str | None = None):
        self.events: list[tuple[int, int, mido.Message | mido.MetaMessage]] = []
        if name:
            self.meta(0, "track_name", name=name)

    def _add(self, tick: int, msg) -> None:
        self.events.append((tick, len(self.events), msg))

    def meta(self, tick: int, kind: str, **kw) -> None:
        self._add(tick, mido.MetaMessage(kind, **kw))

    def tempo(self, tick: int, bpm: float) -> None:
        self.meta(tick, "set_tempo", tempo=mido.bpm2tempo(bpm))

    def program(self, tick: int, ch: int, program: int) -> None:
        self._add(tick, mido.Message("program_change", channel=ch, program=program))

    def on(self, tick: int, ch: int, pitch: int, vel: int = 80) -> None:
        self._add(tick, mido.Message("note_on", channel=ch, note=pitch, velocity=vel))

    def off(self, tick: int, ch: int, pitch: int, zero_vel_on: bool = False) -> None:
        if zero_vel_on:
            self._add(tick, mido.Message("note_on", channel=ch, note=pitch, velocity=0))
        else:
            self._add(tick, mido.Message("note_off", channel=ch, note=pitch, velocity=64))

    def note(self, start: int, end: int, ch: int, pitch: int, vel: int = 80, **kw) -> None:
        self.on(start, ch, pitch, vel)
        self.off(end, ch, pitch, **kw)

    def cc(self, tick: int, ch: int, control: int, value: int) -> None:
        self._add(tick, mido.Message("control_change", channel=ch, control=control, value=value))

    def bend(self, tick: int, ch: int, value: int) -> None:
        self._add(tick, mido.Message("pitchwheel", channel=ch, pitch=value))

    def to_mido(self) -> mido.MidiTrack:
        track = mido.MidiTrack()
        last = 0
        for tick, _, msg in sorted(self.events, key=lambda e: (e[0], e[1])):
            track.append(msg.copy(time=tick - last))
            last = tick
        return track


def save(path: Path, tracks: list[Track], tpq: int) -> None:
    mid = mido.MidiFile(type=1, ticks_per_beat=tpq)
    mid.tracks.extend(t.to_mido() for t in tracks)
    buf = io.BytesIO()
    mid.save(file=buf)
    path.write_bytes(buf.getvalue())


# ------------------------------------------------------------------------------------------
# Synthetic files
# ------------------------------------------------------------------------------------------


def make_multi_instrument(path: Path) -> None:
    """~60 s band arrangement: tempo changes, Slakh remaps, chords, pedal, drums, crossings."""
    tpq = 480
    rng = random.Random(1)
    meta = Track("tempo")
    meta.meta(0, "time_signature", numerator=4, denominator=4)
    meta.tempo(0, 120)
    bar = 4 * tpq
    meta.tempo(8 * bar, 96)
    meta.tempo(8 * bar, 96)  # a repeated tempo is ignored by pretty_midi
    meta.tempo(14 * bar, 132)
    meta.tempo(20 * bar, 132)  # same tempo again, at another tick
    meta.tempo(22 * bar + 7, 110.5)
    n_bars = 30

    piano = Track("piano")
    piano.program(0, 0, 1)  # Bright piano -> Slakh 0
    chords = [(60, 64, 67), (57, 60, 64), (53, 57, 60), (55, 59, 62)]
    for b in range(n_bars):
        t = b * bar
        chord = chords[b % 4]
        piano.cc(t, 0, 64, 0 if b % 2 else 127)  # pedal down on even bars
        for p in chord:
            piano.note(t, t + tpq, 0, p, 70)
        for k in range(4):  # melody; the same pitch re-struck under the pedal
            pitch = chord[-1] + 12 if k % 2 == 0 else chord[0] + 12
            piano.note(t + k * tpq, t + k * tpq + tpq // 2, 0, pitch, 90)
        piano.cc(t + 3 * tpq + tpq // 2, 0, 64, 0)  # release, exactly at a melody note-off

    bass = Track("bass")
    bass.program(0, 1, 34)  # Electric bass (pick) -> 33
    for b in range(n_bars):
        root = [36, 33, 29, 31][b % 4]
        for k in range(8):
            t = b * bar + k * tpq // 2
            bass.note(t, t + tpq // 2 - 10, 1, root + (12 if k == 7 else 0), 100)

    strings = Track("strings")
    strings.program(0, 2, 49)  # Slow strings -> 48
    for b in range(0, n_bars, 3):  # long notes crossing 5.12 s segment boundaries
        t = b * bar
        for p in (48, 55, 64):
            strings.note(t + 240, t + 3 * bar - 1, 2, p, 60)

    guitar = Track("guitar")
    guitar.program(0, 3, 30)  # Overdriven guitar -> 29
    for b in range(4, n_bars):
        for k in range(4):
            t = b * bar + k * tpq + (tpq // 4 if k % 2 else 0)
            for p in (52, 59, 64):
                guitar.note(t, t + tpq // 4, 3, p, 85)

    pad = Track("pad")
    pad.program(0, 4, 127)  # Gunshot -> 88 (Synth Pad class)
    for b in range(2, n_bars, 4):
        pad.note(b * bar, (b + 2) * bar, 4, 72, 50)
        pad.note(b * bar, (b + 2) * bar, 4, 76, 50)

    horn = Track("mid-track program change")
    horn.program(0, 5, 40)  # violin, then flute on the same channel
    for b in range(n_bars):
        if b == 12:
            horn.program(b * bar, 5, 75)  # Pan flute -> 73
        t = b * bar + 2 * tpq
        horn.note(t, t + tpq, 5, 79 + (b % 5), 75)

    drums = Track("drums")
    drums.program(0, 9, 0)
    for b in range(n_bars):
        for k in range(16):
            t = b * bar + k * tpq // 4
            drums.note(t, t + 30, 9, 42, 60 + rng.randrange(40))  # hats
            if k % 8 == 0:
                drums.note(t, t + 60, 9, 36, 110)  # kick, same tick as hats and piano
            if k % 8 == 4:
                drums.note(t, t + 60, 9, 38, 100)
    save(path, [meta, piano, bass, strings, guitar, pad, horn, drums], tpq)


def make_timing_edges(path: Path) -> None:
    """1 ms ticks (tpq 500 at 120 bpm): half-step times, equal times, pairing quirks."""
    tpq = 500
    meta = Track("tempo")
    meta.tempo(0, 120)
    a = Track("a")
    a.program(0, 0, 0)
    b = Track("b")
    b.program(0, 1, 24)
    d = Track("drums")
    # notes on 5 ms half-step boundaries (round half even; float products near .5)
    for i, t in enumerate(range(5, 400, 10)):
        a.note(t, t + 15 + 10 * (i % 3), 0, 40 + (i % 30), 80)
    # offsets and onsets at exactly equal times, same pitch in another program
    for k in range(6):
        t = 500 + 100 * k
        a.note(t, t + 100, 0, 72, 80)
        b.note(t + 100, t + 200, 1, 72, 80)
        d.note(t + 100, t + 105, 9, 36 + k, 90)
    # ordering inside one 10 ms step by exact time: onset at +1 ms, offset at +4 ms
    a.note(1301, 1404, 0, 60)
    b.note(1404, 1500, 1, 60)
    b.note(1302, 1403, 1, 61)
    a.note(1403, 1502, 0, 61)
    # overlapping same-pitch notes on one channel: the first note-off closes both
    a.on(1600, 0, 50)
    a.on(1650, 0, 50)
    a.off(1700, 0, 50)
    a.off(1750, 0, 50)  # spurious
    # note-off and note-on on the same tick (off first): the new note continues
    a.on(1800, 0, 51)
    a.off(1900, 0, 51)
    a.on(1900, 0, 51)
    a.off(2000, 0, 51, zero_vel_on=True)
    # note-on then note-off on the same tick: pretty_midi drops the note
    a.on(2100, 0, 52)
    a.off(2100, 0, 52)
    # note-on, then a same-tick re-strike and a later off: both notes start together
    a.on(2200, 0, 53)
    a.on(2200, 0, 53, 90)
    a.off(2300, 0, 53)
    # a note starting and ending in the same 10 ms step (zero-length in steps)
    a.note(2401, 2404, 0, 54)
    # unclosed note: dropped
    b.on(2500, 1, 55)
    # frame and segment boundaries: 5.12 s = tick 5120
    a.note(5110, 5120, 0, 62)
    a.note(5120, 5130, 0, 63)
    b.note(5115, 5125, 1, 64)
    d.note(5120, 5121, 9, 49)
    a.note(4000, 10240, 0, 66)  # held through the boundary, ends on the next boundary
    b.note(10239, 10241, 1, 67)
    d.note(10245, 10250, 9, 51)
    save(path, [meta, a, b, d], tpq)


def make_sustain(path: Path) -> None:
    """Sustain pedal edge cases (note_seq.apply_sustain_control_changes)."""
    tpq = 500
    meta = Track("tempo")
    meta.tempo(0, 120)
    p = Track("piano")
    p.cc(0, 0, 7, 100)  # a CC before any note creates pretty_midi's straggler
    p.cc(0, 0, 64, 127)  # pedal down before the first note
    p.program(0, 0, 2)
    p.note(100, 200, 0, 60)
    p.note(300, 350, 0, 60)  # re-struck under pedal: ends the first note at 300
    p.note(300, 400, 0, 64)
    p.note(300, 400, 0, 67)
    p.cc(600, 0, 64, 0)  # release: extends notes 60 and 64/67
    p.note(600, 700, 0, 72)  # starts exactly at pedal up: not extended
    p.note(800, 1000, 0, 74)
    p.cc(1000, 0, 64, 64)  # pedal down exactly at a note-off: the note is extended
    p.cc(1100, 0, 64, 63)  # 63 is off
    p.cc(1200, 0, 64, 100)
    p.on(1300, 0, 76)
    p.on(1300, 0, 76)  # same pitch twice on one tick under pedal: one is removed
    p.off(1400, 0, 76)
    p.note(1300, 1350, 0, 79)
    p.cc(1500, 0, 64, 0)
    p.cc(1500, 0, 64, 127)  # up and down on one tick: on sorts first, then off wins
    p.note(1600, 1700, 0, 81)
    p.cc(1800, 0, 64, 0)
    p.program(1900, 0, 5)  # program change: a new instrument on the same channel/track
    p.cc(1900, 0, 64, 127)  # goes to the straggler list, shared with the first instrument
    p.note(2000, 2100, 0, 62)
    p.note(2000, 2050, 0, 65)
    p.bend(2100, 0, 500)
    p.cc(2300, 0, 64, 0)
    # a second piano track with its own pedal that stays down to the end
    q = Track("piano 2")
    q.program(0, 1, 0)
    q.note(2400, 2500, 1, 48)
    q.cc(2450, 1, 64, 127)
    q.note(2600, 2650, 1, 50)
    q.note(5000, 5100, 1, 52)
    q.note(5000, 5100, 1, 52)  # duplicate note: same tick, same pitch
    q.cc(5300, 1, 64, 127)  # the last event: held notes end here
    # notes of a track without pedal are not touched by the other tracks' pedals
    r = Track("organ")
    r.program(0, 2, 19)
    r.note(250, 260, 2, 55)
    r.note(2460, 2470, 2, 57)
    # drums with a pedal event: drums are never sustained; they outlast the piano, and
    # total_time is still set to the last sustain event (note_seq assigns, not max)
    d = Track("drums")
    d.cc(0, 9, 64, 127)
    for t in range(0, 5800, 250):
        d.note(t, t + 40, 9, 42)
    d.note(5700, 5900, 9, 49)
    save(path, [meta, p, q, r, d], tpq)


def make_tail_quirk(path: Path) -> None:
    """A segment starting after the last event: its tie section shows the MT3 quirk (§2.3)."""
    tpq = 500
    meta = Track("tempo")
    meta.tempo(0, 120)
    a = Track("a")
    a.program(0, 0, 33)
    a.note(4000, 5000, 0, 40)  # ends at step 500, the same step as the last drum onset
    a.note(4500, 5000, 0, 43)
    d = Track("drums")
    d.note(5000, 5200, 9, 36)  # total_time 5.2 s -> 261 frames -> 2 segments
    save(path, [meta, a, d], tpq)


def make_exact_frames(path: Path) -> None:
    """total_time = 5.12 s exactly: int(T * 16000) is a multiple of 320 -> an extra frame."""
    tpq = 500
    meta = Track("tempo")
    meta.tempo(0, 120)
    a = Track("a")
    a.program(0, 0, 68)
    a.note(0, 5120, 0, 69)
    a.note(2560, 5120, 0, 73)
    save(path, [meta, a], tpq)


def make_single_note(path: Path) -> None:
    tpq = 480
    meta = Track("tempo")
    a = Track("a")
    a.program(0, 0, 0)
    a.note(480, 960, 0, 60, 100)  # 0.5 s .. 1.0 s at 120 bpm
    save(path, [meta, a], tpq)


NUM_DENSE = 5


def make_dense(path: Path) -> None:
    """A dense 12 s passage: many instruments, fast random notes (segments near 2047)."""
    tpq = 960
    rng = random.Random(7)
    meta = Track("tempo")
    meta.tempo(0, 150)
    tracks = [meta]
    programs = [0, 6, 11, 17, 25, 27, 35, 42, 45, 47, 52, 56, 59, 61, 65, 69, 71, 81, 89]
    for ch, prog in enumerate(programs[:NUM_DENSE]):
        ch = ch if ch < 9 else ch + 1
        t = Track(f"inst {prog}")
        t.program(0, ch, prog)
        tick = rng.randrange(60)
        while tick < 30 * tpq:
            dur = rng.choice([30, 60, 120, 240])
            t.note(tick, tick + dur, ch, rng.randrange(36, 96), rng.randrange(1, 128))
            tick += rng.choice([60, 120, 180, 240, 480])
        tracks.append(t)
    d = Track("drums")
    for k in range(30 * 8):
        tick = k * tpq // 8 + rng.randrange(3)
        for pitch in rng.sample([35, 36, 38, 42, 44, 46, 49, 51], 2):
            d.note(tick, tick + 20, 9, pitch, rng.randrange(40, 128))
    tracks.append(d)
    save(path, tracks, tpq)


def make_overflow(path: Path) -> None:
    """One segment with more than 2047 events (the official list is longer than 2048)."""
    tpq = 500
    meta = Track("tempo")
    meta.tempo(0, 120)
    a = Track("a")
    a.program(0, 0, 0)
    for k in range(700):  # 700 onsets + 700 offsets in 3.5 s, each its own step
        t = 5 * k
        a.note(t, t + 3, 0, 40 + k % 40)
    save(path, [meta, a], tpq)


def make_music21(out_dir: Path) -> list[Path]:
    """Two real pieces from music21's corpus with re-assigned GM programs; [] without music21."""
    try:
        from music21 import corpus
    except ImportError:
        print("music21 not installed: skipping corpus pieces", file=sys.stderr)
        return []
    pieces = [
        # (corpus path, measures or None, programs per part, file name)
        ("bach/bwv66.6", None, [73, 71, 70, 42], "bach_bwv66_6.mid"),
        ("beethoven/opus18no1/movement2", (1, 20), [40, 41, 44, 43], "beethoven_op18no1_mv2.mid"),
    ]
    written = []
    for source, measures, programs, name in pieces:
        score = corpus.parse(source)
        if measures is not None:
            score = score.measures(*measures)
        buf = io.BytesIO()
        raw = Path(out_dir / (name + ".tmp"))
        score.write("midi", fp=str(raw))
        mid = mido.MidiFile(str(raw))
        raw.unlink()
        # re-assign programs per track (music21 writes one program change per part track)
        part = 0
        for track in mid.tracks:
            changed = False
            for msg in track:
                if msg.type == "program_change":
                    msg.program = programs[part % len(programs)]
                    changed = True
            if changed:
                part += 1
        mid.save(file=buf)
        (out_dir / name).write_bytes(buf.getvalue())
        written.append(out_dir / name)
    return written


SYNTHETIC = {
    "multi_instrument.mid": make_multi_instrument,
    "timing_edges.mid": make_timing_edges,
    "sustain.mid": make_sustain,
    "tail_quirk.mid": make_tail_quirk,
    "exact_frames.mid": make_exact_frames,
    "single_note.mid": make_single_note,
    "dense.mid": make_dense,
    "overflow.mid": make_overflow,
}


def make_random(path: Path, seed: int) -> None:
    """A random, adversarial file for differential fuzzing against the official processor."""
    rng = random.Random(seed)
    tpq = rng.choice([96, 220, 480, 500, 960, 10080])
    seconds = rng.uniform(1, 14)
    grid = rng.choice([1, tpq // 8, tpq // 4, tpq // 3])  # coarse grids give many equal ticks
    max_tick = int(seconds * 2 * tpq)

    def tick() -> int:
        return rng.randrange(0, max_tick) // grid * grid

    meta = Track("tempo")
    if rng.random() < 0.7:
        meta.tempo(0, rng.uniform(40, 240))
    for _ in range(rng.randrange(6)):
        meta.tempo(tick(), rng.choice([rng.uniform(40, 240), 120.0, 90.0]))
    tracks = [meta]
    for _ in range(rng.randrange(1, 6)):
        t = Track()
        channels = rng.sample(range(16), rng.randrange(1, 3))
        if rng.random() < 0.4 and 9 not in channels:
            channels.append(9)  # drums
        if rng.random() < 0.2:
            t.tempo(tick(), rng.uniform(40, 240))  # ignored off track 0 by pretty_midi
        for ch in channels:
            t.program(0, ch, rng.randrange(128))
            for _ in range(rng.randrange(0, 3)):
                t.program(tick(), ch, rng.randrange(128))
            for _ in range(rng.randrange(0, 12)):
                t.cc(tick(), ch, 64, rng.choice([0, 63, 64, 127, rng.randrange(128)]))
            for _ in range(rng.randrange(0, 3)):
                t.cc(tick(), ch, rng.choice([1, 7, 10, 11]), rng.randrange(128))
            if rng.random() < 0.3:
                t.bend(tick(), ch, rng.randrange(-8192, 8192))
            pitches = rng.sample(range(20, 110), rng.randrange(1, 12))
            for _ in range(rng.randrange(1, 60)):
                start = tick()
                dur = rng.choice([0, grid, 2 * grid, rng.randrange(1, 4 * tpq)])
                t.note(
                    start, start + dur, ch, rng.choice(pitches), rng.randrange(1, 128), zero_vel_on=rng.random() < 0.5
                )
            for _ in range(rng.randrange(0, 3)):  # unmatched note-ons / note-offs
                t.on(tick(), ch, rng.choice(pitches))
                t.off(tick(), ch, rng.choice(pitches))
        rng.shuffle(t.events)  # random order at equal ticks
        t.events = [(tk, i, m) for i, (tk, _, m) in enumerate(t.events)]
        tracks.append(t)
    if rng.random() < 0.3:  # notes in the tempo track too (as in type-0 files)
        meta.events += [(tk, len(meta.events) + i, m) for i, (tk, _, m) in enumerate(tracks.pop().events)]
    save(path, tracks, tpq)


def fuzz(count: int, seed: int, keep_dir: Path) -> int:
    """Compare our tokenizer with the official processor on random files; return #mismatches."""
    import tempfile
    import warnings

    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from specdiff.errors import MidiError
    from specdiff.midi.tokenizer import midi_to_segments

    bad = skipped = 0
    with tempfile.TemporaryDirectory() as tmp:
        for i in range(count):
            path = Path(tmp) / f"fuzz_{seed + i}.mid"
            make_random(path, seed + i)
            try:
                expected, total_time = official_tokens(path)
            except Exception as e:  # e.g. note_seq's IndexError on a file without notes
                try:
                    midi_to_segments(path)
                    print(f"seed {seed + i}: official failed ({type(e).__name__}), ours did not")
                except MidiError:
                    pass
                skipped += 1
                continue
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                ours = midi_to_segments(path)
            expected = [[int(t) for t in s] for s in expected]
            expected = [s if len(s) <= 2048 else s[:2047] + [1] for s in expected]
            if ours.segments != expected or ours.duration != total_time:
                bad += 1
                keep_dir.mkdir(parents=True, exist_ok=True)
                (keep_dir / path.name).write_bytes(path.read_bytes())
                print(f"seed {seed + i}: MISMATCH (kept in {keep_dir})")
    print(
        f"fuzz: {count} files, {count - skipped} compared, {bad} mismatches "
        f"({skipped} rejected by the official processor)"
    )
    return bad


def official_tokens(path: Path) -> tuple[list[list[int]], float]:
    """diffusers' MidiProcessor output and note_seq's total_time after sustain."""
    import note_seq
    from diffusers.pipelines.deprecated.spectrogram_diffusion.midi_utils import MidiProcessor

    data = path.read_bytes()
    ns = note_seq.apply_sustain_control_changes(note_seq.midi_to_note_sequence(data))
    return MidiProcessor()(data), ns.total_time


def compact(segment: list[int]) -> dict:
    """Strip the trailing PAD zeros; keep the list length."""
    segment = [int(t) for t in segment]
    n = len(segment)
    while n and segment[n - 1] == 0:
        n -= 1
    return {"length": len(segment), "tokens": segment[:n]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, default=OUT_DIR)
    parser.add_argument(
        "--fuzz",
        type=int,
        default=0,
        metavar="N",
        help="instead: compare specdiff.midi.tokenizer with the official processor on N random files",
    )
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    if args.fuzz:
        sys.exit(1 if fuzz(args.fuzz, args.seed, Path("/tmp/token_fuzz_failures")) else 0)
    args.out.mkdir(parents=True, exist_ok=True)
    paths = []
    for name, make in SYNTHETIC.items():
        make(args.out / name)
        paths.append(args.out / name)
    paths += make_music21(args.out)

    golden = {
        "generator": "tools/make_token_fixtures.py",
        "versions": {pkg: metadata.version(pkg) for pkg in ("diffusers", "note-seq", "pretty_midi", "mido")},
        "files": {},
    }
    for path in paths:
        segments, total_time = official_tokens(path)
        golden["files"][path.name] = {
            "total_time": total_time,
            "segments": [compact(s) for s in segments],
        }
        lengths = [len(c["tokens"]) for c in golden["files"][path.name]["segments"]]
        print(f"{path.name}: {len(segments)} segments, tokens {lengths}, {path.stat().st_size} bytes")
    text = json.dumps(golden, separators=(",", ":"))
    (args.out / "golden.json").write_text(text + "\n")
    total = sum(p.stat().st_size for p in args.out.iterdir())
    print(f"golden.json: {len(text)} bytes; fixture folder {total} bytes")


if __name__ == "__main__":
    main()
