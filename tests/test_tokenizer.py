"""The MIDI tokenizer (ORIGINAL.md §2): golden tokens from the official processor, hand-derived token
sequences, MIDI reading semantics, round trips and MidiError cases.

Golden files: tests/data/tokenizer/golden.json holds what diffusers' MidiProcessor (note_seq
0.0.5, pretty_midi) returned for the .mid files beside it; regenerate with
tools/make_token_fixtures.py. Hand-derived sequences below are written from the codec table of
ORIGINAL.md §2.1 (token id = codec index + 3):

    shift s -> 3 + s      pitch p -> 1004 + p     velocity off/on -> 1132 / 1133
    tie -> 1134           program g -> 1135 + g   drum p -> 1263 + p       EOS 1, PAD 0
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import mido
import pytest

from specdiff.constants import SEGMENT_FRAMES
from specdiff.errors import MidiError
from specdiff.midi.reader import SLAKH_PROGRAMS, Note, midi_to_notes, program_to_slakh
from specdiff.midi.tokenizer import (
    DRUM_ID,
    EOS_ID,
    INPUT_LENGTH,
    NUM_CLASSES,
    NUM_EMBEDDINGS,
    PAD_ID,
    PITCH_ID,
    PROGRAM_ID,
    SHIFT_ID,
    TIE_ID,
    VELOCITY_ID,
    VOCAB_SIZE,
    TokenTruncationWarning,
    index_notes,
    midi_to_segments,
    notes_to_segments,
    num_frames_for,
    tokenize_frames,
    tokens_to_notes,
)

DATA = Path(__file__).parent / "data" / "tokenizer"
GOLDEN = json.loads((DATA / "golden.json").read_text())

TIE, EOS, ON, OFF = 1134, 1, 1133, 1132


def shift(steps: int) -> int:
    return 3 + steps


def pitch(p: int) -> int:
    return 1004 + p


def program(g: int) -> int:
    return 1135 + g


def drum(p: int) -> int:
    return 1263 + p


def padded(tokens: list[int]) -> list[int]:
    return tokens + [0] * (2048 - len(tokens))


# ------------------------------------------------------------------------------------------
# Writing test MIDI files: tpq 500 at 120 bpm, so one tick is exactly 1 ms
# ------------------------------------------------------------------------------------------


def write_midi(path: Path, tracks: list[list[tuple]], tpq: int = 500, tempos=((0, 120.0),)) -> Path:
    """tracks: lists of (tick, kind, channel, a, b) with kind in on/off/cc/prog/on0 (vel-0 on)."""
    mid = mido.MidiFile(type=1, ticks_per_beat=tpq)
    meta = mido.MidiTrack()
    last = 0
    for tick, bpm in tempos:
        meta.append(mido.MetaMessage("set_tempo", tempo=mido.bpm2tempo(bpm), time=tick - last))
        last = tick
    mid.tracks.append(meta)
    for events in tracks:
        track = mido.MidiTrack()
        last = 0
        for tick, kind, ch, a, b in sorted(events, key=lambda e: e[0]):
            if kind == "on":
                msg = mido.Message("note_on", channel=ch, note=a, velocity=b)
            elif kind == "on0":
                msg = mido.Message("note_on", channel=ch, note=a, velocity=0)
            elif kind == "off":
                msg = mido.Message("note_off", channel=ch, note=a)
            elif kind == "cc":
                msg = mido.Message("control_change", channel=ch, control=a, value=b)
            else:
                msg = mido.Message("program_change", channel=ch, program=a)
            track.append(msg.copy(time=tick - last))
            last = tick
        mid.tracks.append(track)
    mid.save(path)
    return path


def note(start_ms: int, end_ms: int, p: int, ch: int = 0, vel: int = 100) -> list[tuple]:
    return [(start_ms, "on", ch, p, vel), (end_ms, "off", ch, p, 0)]


def prog(g: int, ch: int = 0, tick: int = 0) -> list[tuple]:
    return [(tick, "prog", ch, g, 0)]


# ------------------------------------------------------------------------------------------
# Golden tokens from the official processor
# ------------------------------------------------------------------------------------------


def expected_segments(entry: dict) -> list[list[int]]:
    out = []
    for seg in entry["segments"]:
        tokens = seg["tokens"]
        if seg["length"] > INPUT_LENGTH:  # diffusers does not truncate; we keep 2047 + EOS
            out.append(tokens[: INPUT_LENGTH - 1] + [EOS_ID])
        else:
            out.append(tokens + [PAD_ID] * (seg["length"] - len(tokens)))
    return out


@pytest.mark.parametrize("name", sorted(GOLDEN["files"]))
def test_matches_official_processor_golden(name):
    entry = GOLDEN["files"][name]
    overflow = any(s["length"] > INPUT_LENGTH for s in entry["segments"])
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        result = midi_to_segments(DATA / name)
    assert len(result.segments) == len(entry["segments"])
    for k, (ours, theirs) in enumerate(zip(result.segments, expected_segments(entry))):
        assert len(ours) == INPUT_LENGTH
        assert ours == theirs, f"{name}: segment {k} differs"
    assert result.duration == entry["total_time"]
    truncations = [w for w in caught if issubclass(w.category, TokenTruncationWarning)]
    assert bool(truncations) == overflow


def test_golden_fixtures_cover_what_they_claim():
    files = GOLDEN["files"]
    assert len(files) >= 10
    assert sum(len(f["segments"]) for f in files.values()) >= 50
    # real multi-part music from music21's corpus is among them
    assert {"bach_bwv66_6.mid", "beethoven_op18no1_mv2.mid"} <= set(files)
    all_tokens = [t for f in files.values() for s in f["segments"] for t in s["tokens"]]
    assert any(DRUM_ID <= t < DRUM_ID + 128 for t in all_tokens)
    # several Slakh classes, but never a program outside the Slakh set for non-drum notes
    programs = {t - PROGRAM_ID for t in all_tokens if PROGRAM_ID <= t < DRUM_ID}
    assert len(programs) >= 10 and programs <= set(SLAKH_PROGRAMS)
    # a dense segment close to the limit, and one over it
    lengths = [s["length"] if s["length"] > 2048 else len(s["tokens"]) for f in files.values() for s in f["segments"]]
    assert any(1500 < n <= 2048 for n in lengths) and any(n > 2048 for n in lengths)
    total = sum(p.stat().st_size for p in DATA.iterdir())
    assert total < 1_000_000


def _official_processor():
    pytest.importorskip("note_seq", reason="note_seq is not installed (optional reference)")
    try:
        from diffusers.pipelines.deprecated.spectrogram_diffusion.midi_utils import MidiProcessor
    except Exception as e:  # ImportError, or transformers missing in diffusers' package import
        pytest.skip(f"diffusers MidiProcessor is not importable: {e}")
    return MidiProcessor()


@pytest.mark.parametrize("name", ["multi_instrument.mid", "sustain.mid", "timing_edges.mid"])
def test_matches_official_processor_live(name):
    processor = _official_processor()
    expected = [[int(t) for t in s] for s in processor(str(DATA / name))]
    assert midi_to_segments(DATA / name).segments == expected


def test_matches_official_processor_live_on_new_file(tmp_path):
    """A file the golden fixtures do not contain: pedal, tempo change, drums, overlaps."""
    processor = _official_processor()
    events = prog(5) + prog(33, ch=1) + [(0, "cc", 0, 64, 127), (2345, "cc", 0, 64, 0)]
    for k in range(40):
        events += note(137 * k, 137 * k + 211, 48 + (k * 7) % 24, vel=30 + k)
        events += note(137 * k + 5, 137 * k + 90, 36 + k % 5, ch=1)
        events += note(91 * k, 91 * k + 10, 35 + k % 12, ch=9)
    path = write_midi(tmp_path / "new.mid", [events], tempos=((0, 100.0), (3001, 77.0)))
    expected = [[int(t) for t in s] for s in processor(str(path))]
    assert midi_to_segments(path).segments == expected


# ------------------------------------------------------------------------------------------
# Hand-derived token sequences
# ------------------------------------------------------------------------------------------


def test_codec_table():
    assert (SHIFT_ID, PITCH_ID, VELOCITY_ID, TIE_ID, PROGRAM_ID, DRUM_ID) == (3, 1004, 1132, 1134, 1135, 1263)
    assert DRUM_ID + 127 == 1390 and NUM_CLASSES == 1388
    assert VOCAB_SIZE == 1491 and NUM_EMBEDDINGS == 1536
    assert (INPUT_LENGTH, SEGMENT_FRAMES) == (2048, 256)


def test_single_note(tmp_path):
    path = write_midi(tmp_path / "a.mid", [prog(0) + note(500, 1000, 60)])
    result = midi_to_segments(path)
    # empty tie section; at +0.50 s program 0, on, pitch 60; at +1.00 s off, pitch 60
    assert result.segments == [padded([TIE, shift(50), program(0), ON, pitch(60), shift(100), OFF, pitch(60), EOS])]
    assert result.duration == 1.0


def test_chord_and_legato_deduplicate_program_and_velocity(tmp_path):
    # chord 60+64 from 0 to 1 s, then 67 from 1 s to 1.5 s (offsets and onset at one time)
    events = prog(40) + note(0, 1000, 60) + note(0, 1000, 64) + note(1000, 1500, 67)
    segments = midi_to_segments(write_midi(tmp_path / "a.mid", [events])).segments
    assert segments == [
        padded(
            [
                TIE,
                program(40),
                ON,
                pitch(60),
                pitch(64),  # no shift at 0; one program, one velocity
                shift(100),
                OFF,
                pitch(60),
                pitch(64),
                ON,
                pitch(67),  # offsets before onsets
                shift(150),
                OFF,
                pitch(67),
                EOS,
            ]
        )
    ]


def test_note_tied_into_next_segment(tmp_path):
    # 5.0 s .. 6.0 s; segment 1 starts at 5.12 s = step 512
    segments = midi_to_segments(write_midi(tmp_path / "a.mid", [prog(0) + note(5000, 6000, 60)]))
    assert segments.segments == [
        padded([TIE, shift(500), program(0), ON, pitch(60), EOS]),
        # tie section [program 0, pitch 60, tie]; the offset's program is a duplicate
        padded([program(0), pitch(60), TIE, shift(600 - 512), OFF, pitch(60), EOS]),
    ]


def test_drums_have_no_offsets_and_no_program(tmp_path):
    events = prog(0) + note(100, 300, 60) + note(100, 200, 42, ch=9) + note(100, 150, 36, ch=9)
    segments = midi_to_segments(write_midi(tmp_path / "a.mid", [events])).segments
    # at equal times tonal notes come first, drums last sorted by pitch; drums never end
    assert segments == [
        padded([TIE, shift(10), program(0), ON, pitch(60), drum(36), drum(42), shift(30), OFF, pitch(60), EOS])
    ]


def test_sustain_pedal_extends_note(tmp_path):
    events = prog(0) + note(0, 200, 60) + [(100, "cc", 0, 64, 127), (500, "cc", 0, 64, 0)]
    path = write_midi(tmp_path / "a.mid", [events])
    notes, total = midi_to_notes(path)
    assert notes == [Note(60, 0.0, 0.5, 100, 0, False)] and total == 0.5
    assert midi_to_segments(path).segments == [padded([TIE, program(0), ON, pitch(60), shift(50), OFF, pitch(60), EOS])]


def test_sustain_restrike_and_release_edges(tmp_path):
    events = prog(0) + [(0, "cc", 0, 64, 127)]
    events += note(0, 100, 60) + note(300, 400, 60)  # re-struck under pedal: first ends at 0.3
    events += note(600, 700, 62)  # starts exactly at the pedal release: unchanged
    events += [(600, "cc", 0, 64, 0), (800, "cc", 0, 64, 64)]  # 64 counts as down
    events += note(700, 800, 64)  # ends exactly at pedal down: extended to the last event
    events += [(900, "cc", 0, 64, 100)]
    notes, total = midi_to_notes(write_midi(tmp_path / "a.mid", [events]))
    got = sorted((n.pitch, round(n.start, 9), round(n.end, 9)) for n in notes)
    # the pedal is still down at the end: held notes end at the last event (0.9 s)
    assert got == [(60, 0.0, 0.3), (60, 0.3, 0.6), (62, 0.6, 0.7), (64, 0.7, 0.9)]
    assert total == 0.9


def test_slakh_program_mapping(tmp_path):
    assert [program_to_slakh(p) for p in (0, 1, 3, 4, 30, 31, 33, 40, 127)] == [0, 0, 0, 4, 29, 29, 33, 40, 88]
    events = (
        prog(1)
        + note(0, 100, 60)
        + prog(30, ch=1)
        + note(200, 300, 61, ch=1)
        + prog(127, ch=2)
        + note(400, 500, 62, ch=2)
        + prog(127, ch=9)
        + note(600, 700, 36, ch=9)
    )
    path = write_midi(tmp_path / "a.mid", [events])
    notes, _ = midi_to_notes(path)
    assert sorted((n.pitch, n.program, n.is_drum) for n in notes) == [
        (36, 127, True),
        (60, 0, False),
        (61, 29, False),
        (62, 88, False),
    ]  # drums unmapped
    assert midi_to_segments(path).segments == [
        padded(
            [
                TIE,
                program(0),
                ON,
                pitch(60),
                shift(10),
                OFF,
                pitch(60),
                shift(20),
                program(29),
                ON,
                pitch(61),
                shift(30),
                OFF,
                pitch(61),
                shift(40),
                program(88),
                ON,
                pitch(62),
                shift(50),
                OFF,
                pitch(62),
                shift(60),
                ON,
                drum(36),
                EOS,
            ]
        )
    ]


def test_shifts_are_absolute_within_segment(tmp_path):
    events = prog(0)
    for start in (300, 700, 1200, 5500):
        events += note(start, start + 50, 60)
    segments = midi_to_segments(write_midi(tmp_path / "a.mid", [events])).segments
    assert segments[0][:16] == [
        TIE,
        shift(30),
        program(0),
        ON,
        pitch(60),
        shift(35),
        OFF,
        pitch(60),
        shift(70),
        ON,
        pitch(60),
        shift(75),
        OFF,
        pitch(60),
        shift(120),
        ON,
    ]
    # segment 1 starts at 5.12 s: 5.50 s is +38 steps
    assert segments[1][:8] == [TIE, shift(38), program(0), ON, pitch(60), shift(43), OFF, pitch(60)]


def test_eos_and_padding(tmp_path):
    result = midi_to_segments(write_midi(tmp_path / "a.mid", [prog(0) + note(0, 12000, 50)]))
    assert len(result.segments) == 3  # 12 s -> 601 frames -> 3 segments of <= 256 frames
    for seg in result.segments:
        assert len(seg) == 2048
        end = seg.index(EOS_ID)
        assert all(t == PAD_ID for t in seg[end + 1 :]) and PAD_ID not in seg[:end]


def test_segment_after_last_event_keeps_mt3_tie_quirk():
    # notes end at 5.0 s together with the last (drum) onset; the drum lasts to 5.2 s, so a
    # second segment starts at 5.12 s, after the last event. MT3 takes its tie section from the
    # state *before* the last step, so the ended notes are listed as still sounding (§2.3).
    notes = [Note(40, 4.0, 5.0, 90, 33, False), Note(43, 4.5, 5.0, 90, 33, False), Note(36, 5.0, 5.2, 90, 0, True)]
    assert notes_to_segments(notes, 5.2) == [
        padded(
            [
                TIE,
                shift(400),
                program(33),
                ON,
                pitch(40),
                shift(450),
                pitch(43),
                shift(500),
                OFF,
                pitch(40),
                pitch(43),
                ON,
                drum(36),
                EOS,
            ]
        ),
        padded([program(33), pitch(40), pitch(43), TIE, EOS]),
    ]


def test_frame_count_follows_dummy_audio():
    # int(T * 16000) samples padded by 320 - len % 320 (a whole frame when already a multiple)
    assert num_frames_for(1.0) == 51 and num_frames_for(5.1) == 256
    assert num_frames_for(5.119) == 256 and num_frames_for(5.12) == 257


def test_truncation_keeps_first_2047_events_and_warns():
    # four drum hits per 10 ms step for 5 s: [shift, 4 drums] per step = far over 2047
    drums = (36, 38, 42, 46)
    notes = [Note(p, k / 100 + 0.001, k / 100 + 0.005, 90, 0, True) for k in range(500) for p in drums]
    full = [TIE, ON] + [drum(p) for p in drums]
    for k in range(1, 500):
        full += [shift(k)] + [drum(p) for p in drums]
    # 4.995 s -> 250 frames: the only segment covers 0.00-5.00 s
    with pytest.warns(TokenTruncationWarning, match=r"0\.00-5\.00 s"):
        segments = notes_to_segments(notes, total_time=4.995)
    assert segments == [full[:2047] + [EOS_ID]]


# ------------------------------------------------------------------------------------------
# MIDI reading semantics (pretty_midi / note_seq)
# ------------------------------------------------------------------------------------------


def test_midi_reading_semantics(tmp_path):
    events = prog(0)
    events += [(0, "on", 0, 60, 90), (100, "on0", 0, 60, 0)]  # velocity-0 note-on is an off
    # overlapping same pitch: the first note-off closes both notes (pretty_midi)
    events += [(200, "on", 0, 62, 90), (250, "on", 0, 62, 80), (300, "off", 0, 62, 0), (350, "off", 0, 62, 0)]
    events += note(400, 450, 40, ch=9)  # MIDI channel 10 is drums
    notes, total = midi_to_notes(write_midi(tmp_path / "a.mid", [events]))
    assert sorted((n.pitch, n.start, n.end, n.velocity, n.is_drum) for n in notes) == [
        (40, 0.4, 0.45, 100, True),
        (60, 0.0, 0.1, 90, False),
        (62, 0.2, 0.3, 90, False),
        (62, 0.25, 0.3, 80, False),
    ]
    assert total == 0.45


def test_tempo_changes(tmp_path):
    # 120 bpm for the first beat (0.5 s), then 60 bpm: beat 2 starts at 1.5 s
    path = write_midi(tmp_path / "a.mid", [prog(0) + note(500, 1000, 60)], tempos=((0, 120.0), (500, 60.0)))
    notes, total = midi_to_notes(path)
    assert [(n.start, n.end) for n in notes] == [(0.5, 1.5)] and total == 1.5


# ------------------------------------------------------------------------------------------
# Round trips and windows
# ------------------------------------------------------------------------------------------


def quantised(notes: list[Note]) -> list[tuple]:
    out = []
    for n in notes:
        start = round(n.start * 100) / 100
        end = start + 0.01 if n.is_drum else round(n.end * 100) / 100
        out.append((round(start, 6), round(end, 6), n.pitch, 0 if n.is_drum else n.program, n.is_drum))
    return sorted(out)


def decoded(notes: list[Note]) -> list[tuple]:
    return sorted((round(n.start, 6), round(n.end, 6), n.pitch, n.program, n.is_drum) for n in notes)


def test_round_trip_random_notes():
    import random

    rng = random.Random(0)
    notes = []
    for prog_ in (0, 24, 33, 48, 73):
        t = rng.uniform(0, 0.5)
        while t < 17.0:  # one voice per program: no overlapping (pitch, program) pairs
            dur = rng.uniform(0.02, 3.0)
            notes.append(Note(rng.randrange(30, 90), t, t + dur, 90, prog_, False))
            t += dur + rng.uniform(0.011, 0.5)
    notes += [Note(rng.choice([36, 38, 42]), rng.uniform(0, 17), 0, 100, 0, True) for _ in range(60)]
    notes = [
        Note(n.pitch, n.start, n.end if not n.is_drum else n.start + 0.05, n.velocity, n.program, n.is_drum)
        for n in notes
    ]
    total = max(n.end for n in notes)
    segments = notes_to_segments(notes, total)
    assert len(segments) == 4
    assert decoded(tokens_to_notes(segments)) == quantised(notes)


def test_round_trip_real_piece():
    notes, _ = midi_to_notes(DATA / "bach_bwv66_6.mid")
    segments = midi_to_segments(DATA / "bach_bwv66_6.mid").segments
    assert decoded(tokens_to_notes(segments)) == quantised(notes)


def test_tokens_to_notes_single_segment_with_start_time():
    tokens = padded(
        [program(0), pitch(60), TIE, shift(88), OFF, pitch(60), ON, program(29), pitch(64), shift(100), drum(36), EOS]
    )
    # pitch 60 is tied in, but nothing was active before: MT3 ignores the invalid tie entry
    notes = tokens_to_notes(tokens, start_time=5.12)
    assert [(n.pitch, n.program, n.is_drum, round(n.start, 6), round(n.end, 6)) for n in notes] == [
        (64, 29, False, 6.0, 6.12),
        (36, 0, True, 6.12, 6.13),
    ]


def test_tokenize_frames_matches_segments_and_carries_state():
    notes = [Note(60, 1.0, 9.0, 90, 0, False), Note(64, 2.0, 3.0, 90, 4, False), Note(67, 6.0, 11.0, 90, 4, False)]
    index = index_notes(notes, 11.0)
    segments = notes_to_segments(notes, 11.0)
    assert [tokenize_frames(index, 256 * k, 256) for k in range(2)] == segments[:2]
    # an unaligned window starting at 7.0 s (frame 350): notes 60 and 67 carry over
    window = tokenize_frames(index, 350, 256)
    assert window[:6] == [program(0), pitch(60), program(4), pitch(67), TIE, shift(200)]


# ------------------------------------------------------------------------------------------
# Bad input
# ------------------------------------------------------------------------------------------


def _one_line(excinfo) -> str:
    message = str(excinfo.value)
    assert message and "\n" not in message
    return message


def test_missing_file(tmp_path):
    with pytest.raises(MidiError, match="not found") as e:
        midi_to_segments(tmp_path / "nope.mid")
    _one_line(e)


def test_not_a_midi_file(tmp_path):
    path = tmp_path / "a.mid"
    path.write_text("this is a text file, not MIDI\n")
    with pytest.raises(MidiError, match="not a MIDI file") as e:
        midi_to_segments(path)
    _one_line(e)
    with pytest.raises(MidiError, match="not a MIDI file"):
        midi_to_segments(b"")
    with pytest.raises(MidiError, match="not a MIDI file"):
        midi_to_segments(tmp_path)


@pytest.mark.parametrize("cut", [10, 20, 0.5, -3])
def test_truncated_midi(cut):
    data = (DATA / "multi_instrument.mid").read_bytes()
    end = int(len(data) * cut) if isinstance(cut, float) else (cut if cut > 0 else len(data) + cut)
    with pytest.raises(MidiError, match="truncated") as e:
        midi_to_segments(data[:end])
    _one_line(e)


def test_corrupt_track_data(tmp_path):
    data = bytearray(write_midi(tmp_path / "a.mid", [prog(0) + note(0, 100, 60)]).read_bytes())
    at = data.index(bytes([0x90, 60, 100]))  # note-on: make the velocity byte invalid
    data[at + 2] = 0xC8
    with pytest.raises(MidiError, match="corrupt") as e:
        midi_to_segments(bytes(data))
    _one_line(e)


def test_midi_without_notes(tmp_path):
    path = write_midi(tmp_path / "a.mid", [prog(0) + [(0, "cc", 0, 64, 127)]])
    with pytest.raises(MidiError, match="no notes") as e:
        midi_to_segments(path)
    _one_line(e)
    # only a note-on that never ends is no note either (pretty_midi drops it)
    with pytest.raises(MidiError, match="no notes"):
        midi_to_notes(write_midi(tmp_path / "b.mid", [[(0, "on", 0, 60, 90)]]))


def test_absurdly_large_midi(tmp_path):
    path = DATA / "multi_instrument.mid"
    with pytest.raises(MidiError, match="max_notes") as e:
        midi_to_segments(path, max_notes=100)
    _one_line(e)
    with pytest.raises(MidiError, match="max_seconds") as e:
        midi_to_segments(path, max_seconds=60)
    _one_line(e)
    with pytest.raises(MidiError, match="too large") as e:
        midi_to_segments(path, max_bytes=1000)
    _one_line(e)
    with pytest.raises(MidiError, match="too large"):
        midi_to_segments(path.read_bytes(), max_bytes=1000)
    # a single note 10 hours long is over the default duration limit
    huge = write_midi(tmp_path / "long.mid", [prog(0) + note(0, 36_000_000, 60)])
    with pytest.raises(MidiError, match="too long"):
        midi_to_segments(huge)
