"""MIDI rendering: pitch, timing, length, level, sustain, drums, program re-assignment."""

from __future__ import annotations

import io
import shutil

import mido
import numpy as np
import pytest

from specdiff.data.render import (
    PEAK,
    PROGRAM_FAMILIES,
    PROGRAM_RANGES,
    load_score,
    reassign_programs,
    render_midi,
    sustained_note_ends,
)
from specdiff.errors import MidiError

SR = 16000
tinysoundfont = pytest.importorskip("tinysoundfont")


def make_midi(tracks, tempo_bpm=120.0, tpq=480) -> bytes:
    """tracks: list of dicts with channel, program, notes [(start_s, end_s, pitch, vel)],
    optional cc [(time_s, number, value)]. Times are converted at a constant tempo."""
    mid = mido.MidiFile(ticks_per_beat=tpq)
    conductor = mido.MidiTrack()
    conductor.append(mido.MetaMessage("set_tempo", tempo=mido.bpm2tempo(tempo_bpm), time=0))
    mid.tracks.append(conductor)
    ticks_per_second = tpq * tempo_bpm / 60.0
    for spec in tracks:
        ch = spec.get("channel", 0)
        events = []
        for start, end, pitch, vel in spec["notes"]:
            events.append(
                (round(start * ticks_per_second), 1, mido.Message("note_on", channel=ch, note=pitch, velocity=vel))
            )
            events.append((round(end * ticks_per_second), 0, mido.Message("note_off", channel=ch, note=pitch)))
        for t, number, value in spec.get("cc", []):
            events.append(
                (
                    round(t * ticks_per_second),
                    -1,
                    mido.Message("control_change", channel=ch, control=number, value=value),
                )
            )
        events.sort(key=lambda e: (e[0], e[1]))
        track = mido.MidiTrack()
        track.append(mido.Message("program_change", channel=ch, program=spec.get("program", 0), time=0))
        now = 0
        for tick, _, msg in events:
            track.append(msg.copy(time=tick - now))
            now = tick
        mid.tracks.append(track)
    buf = io.BytesIO()
    mid.save(file=buf)
    return buf.getvalue()


def dominant_frequency(x: np.ndarray, lo: float = 50.0, hi: float = 4000.0) -> float:
    n = 1 << 18  # zero-padded FFT: 0.06 Hz bins
    spec = np.abs(np.fft.rfft(x * np.hanning(len(x)), n=n))
    freqs = np.fft.rfftfreq(n, 1 / SR)
    band = (freqs >= lo) & (freqs <= hi)
    return float(freqs[band][np.argmax(spec[band])])


@pytest.mark.parametrize("program,pitch,hz", [(0, 69, 440.0), (0, 72, 523.25), (73, 69, 440.0), (40, 57, 220.0)])
def test_note_renders_at_its_pitch(program, pitch, hz):
    audio = render_midi(make_midi([{"program": program, "notes": [(0.0, 1.0, pitch, 100)]}]))
    f = dominant_frequency(audio[int(0.1 * SR) : int(0.9 * SR)])
    assert abs(f - hz) < 0.01 * hz, f  # within 1%: well under a semitone (6%)


def test_length_timing_and_level():
    # One note from 1.0 s to 1.5 s at 90 bpm (tick->seconds conversion must use the tempo).
    audio = render_midi(make_midi([{"notes": [(1.0, 1.5, 60, 100)]}], tempo_bpm=90.0), tail=1.0)
    assert audio.dtype == np.float32 and audio.ndim == 1
    assert len(audio) == int(np.ceil(2.5 * SR))
    assert np.max(np.abs(audio)) == pytest.approx(PEAK, rel=1e-5)
    onset = np.argmax(np.abs(audio) > 1e-3 * PEAK) / SR
    assert 1.0 <= onset < 1.01
    # released at 1.5 s: a second later the note has died away
    assert np.abs(audio[int(2.3 * SR) :]).max() < 0.01 * PEAK

    quiet = render_midi(make_midi([{"notes": [(1.0, 1.5, 60, 100)]}], tempo_bpm=90.0), peak=None)
    assert 0 < np.abs(quiet).max() != pytest.approx(PEAK)


def test_sustain_pedal_holds_notes():
    note = [(0.0, 0.25, 69, 100)]
    dry = render_midi(make_midi([{"notes": note}]), peak=None)
    pedal = render_midi(make_midi([{"notes": note, "cc": [(0.0, 64, 127), (2.0, 64, 0)]}]), peak=None)
    assert len(pedal) == int(np.ceil(3.0 * SR)) and len(dry) == int(np.ceil(1.25 * SR))
    window = slice(int(1.0 * SR), int(1.2 * SR))
    assert np.sqrt(np.mean(pedal[window] ** 2)) > 100 * np.sqrt(np.mean(dry[: int(1.25 * SR)][window] ** 2) + 1e-20)


def test_sustained_note_ends_follow_note_seq():
    # pedal down 0..2 s. Note 0 (pitch 60, 0-0.5) would be held to 2.0, but pitch 60 is struck
    # again at 1.0, which ends it there; note 1 (1.0-1.2) is held to the pedal release at 2.0;
    # note 2 (pitch 62, 1.5-3.0) outlasts the pedal: unchanged.
    starts = np.array([0.0, 1.0, 1.5])
    ends = np.array([0.5, 1.2, 3.0])
    pitches = np.array([60, 60, 62])
    out = sustained_note_ends(starts, ends, pitches, np.array([0.0, 2.0]), np.array([True, False]))
    np.testing.assert_allclose(out, [1.0, 2.0, 3.0])
    # pedal pressed after the release: no effect; pedal never lifted: hold to the last event
    out = sustained_note_ends(np.array([0.0]), np.array([0.5]), np.array([60]), np.array([0.6]), np.array([True]))
    np.testing.assert_allclose(out, [0.5])
    out = sustained_note_ends(np.array([0.0, 0.1]), np.array([0.5, 0.9]), np.array([60, 64]),
                              np.array([0.2]), np.array([True]))  # fmt: skip
    np.testing.assert_allclose(out, [0.9, 0.9])


def test_drums_render_on_channel_10():
    notes = [(t, t + 0.1, 38, 110) for t in (0.0, 0.5, 1.0)]
    drums = render_midi(make_midi([{"channel": 9, "notes": notes}]), peak=None)
    piano = render_midi(make_midi([{"channel": 0, "notes": notes}]), peak=None)
    assert np.abs(drums).max() > 0.01

    # a snare is noise-like: far flatter spectrum than a piano D2 (spectral flatness)
    def flatness(x):
        p = np.abs(np.fft.rfft(x[: SR // 4])) ** 2 + 1e-12
        return np.exp(np.mean(np.log(p))) / np.mean(p)

    assert flatness(drums) > 10 * flatness(piano)


def test_multitrack_and_many_tracks_sum():
    # 17 melodic tracks need two synthesizer passes (15 melodic channels each)
    tracks = [
        {"channel": i % 16 if i % 16 != 9 else 15, "program": 0, "notes": [(0.05 * i, 0.05 * i + 0.3, 48 + i, 90)]}
        for i in range(17)
    ]
    score = load_score(make_midi(tracks))
    assert len([t for t in score.tracks if len(t.notes)]) >= 16
    audio = render_midi(score)
    assert np.isfinite(audio).all() and np.abs(audio).max() == pytest.approx(PEAK, rel=1e-5)


def test_reassign_programs():
    tracks = [
        {"channel": 0, "program": 0, "notes": [(0, 1, 84, 90), (1, 2, 86, 90)]},  # high line
        {"channel": 1, "program": 0, "notes": [(0, 1, 36, 90), (1, 2, 38, 90)]},  # bass line
        {"channel": 9, "program": 0, "notes": [(0, 0.1, 36, 90)]},  # drums
    ]
    midi = make_midi(tracks)
    score = load_score(midi)
    before = [(t.program, t.is_drum) for t in score.tracks]
    a = reassign_programs(score, np.random.default_rng(7), families=("bass", "pipe"))
    b = reassign_programs(score, np.random.default_rng(7), families=("bass", "pipe"))
    assert [(t.program, t.is_drum) for t in score.tracks] == before  # input untouched
    assert [t.program for t in a.tracks] == [t.program for t in b.tracks]  # deterministic
    by_pitch = {int(t.notes[0].pitch): t for t in a.tracks if not t.is_drum}
    assert by_pitch[84].program == 73  # only the flute's range holds 85
    assert by_pitch[36].program in PROGRAM_FAMILIES["bass"] and not by_pitch[36].is_drum
    drum = [t for t in a.tracks if t.is_drum]
    assert len(drum) == 1 and drum[0].program == 0
    # the drum track is still written to channel 10
    out = mido.MidiFile(file=io.BytesIO(a.dumps_midi()))
    drum_channels = {m.channel for tr in out.tracks for m in tr if m.type == "note_on" and m.note == 36 and m.velocity}
    assert 9 in drum_channels

    programs = set()
    for seed in range(40):
        programs |= {t.program for t in reassign_programs(score, np.random.default_rng(seed)).tracks if not t.is_drum}
    assert programs <= set(PROGRAM_RANGES) and len(programs) > 5
    with pytest.raises(ValueError):
        reassign_programs(score, np.random.default_rng(0), families=("kazoo",))


def test_bad_midi_raises_midi_error(tmp_path):
    with pytest.raises(MidiError):
        render_midi(b"not a midi file at all")
    with pytest.raises(MidiError):
        render_midi(tmp_path / "missing.mid")


@pytest.mark.skipif(shutil.which("fluidsynth") is None, reason="fluidsynth not installed")
def test_fluidsynth_backend_pitch_and_level():
    midi = make_midi([{"notes": [(0.0, 1.0, 69, 100)]}])
    audio = render_midi(midi, backend="fluidsynth")
    assert len(audio) == 2 * SR
    assert np.max(np.abs(audio)) == pytest.approx(PEAK, rel=1e-5)
    assert abs(dominant_frequency(audio[int(0.1 * SR) : int(0.9 * SR)]) - 440.0) < 4.4
