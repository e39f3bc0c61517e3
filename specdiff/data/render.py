"""MIDI -> audio with a General MIDI SoundFont, to make (MIDI, audio) training pairs.

Two backends:
- ``tinysoundfont`` (pip only, the default): we drive its synthesizer ourselves from the notes
  that symusic parses, so rendering is deterministic and fast (hundreds of times real time).
- ``fluidsynth``: the ``fluidsynth`` command-line program, when it is installed.

The default SoundFont is pretty_midi's bundled ``TimGM6mb.sf2`` (found inside the installed
package, never copied into this repo); any ``.sf2``/``.sf3`` can be passed instead, or named
in the ``SPECDIFF_SOUNDFONT`` environment variable.

Every render is peak-normalised to the same headroom (:data:`PEAK`) so that renderers and
SoundFonts with very different output levels give comparable log-mel features.
"""

from __future__ import annotations

import math
import os
import shutil
import subprocess
import tempfile
from collections import defaultdict
from collections.abc import Iterable
from pathlib import Path

import numpy as np

from specdiff.constants import SAMPLE_RATE
from specdiff.errors import MidiError, SpecdiffError

PEAK = 10 ** (-3.0 / 20.0)  # -3 dBFS: leaves headroom after the mel front end's clip at 4.0
TAIL_SECONDS = 1.0  # rendered past the last note-off so release tails are not cut
DRUM_CHANNEL = 9  # General MIDI channel 10 (0-based 9)

# Programs grouped by General MIDI family. Only the Slakh class programs (ORIGINAL.md §2.5) are used,
# so the timbre the model hears matches the program token it is given.
PROGRAM_FAMILIES: dict[str, tuple[int, ...]] = {
    "piano": (0, 4),  # acoustic grand, electric piano
    "chromatic": (8,),  # celesta
    "organ": (16,),
    "guitar": (24, 26, 29),  # nylon, jazz electric, overdriven
    "bass": (32, 33),  # acoustic, electric finger
    "strings": (40, 41, 42, 43, 46, 48, 50),  # violin..contrabass, harp, ensembles
    "voice": (52,),  # choir aahs
    "brass": (56, 57, 58, 60, 61),  # trumpet, trombone, tuba, horn, section
    "reed": (64, 66, 67, 68, 69, 70, 71),  # saxes, oboe, english horn, bassoon, clarinet
    "pipe": (73,),  # flute
    "synth": (80, 88),  # square lead, new-age pad
}

# Comfortable MIDI pitch range of each program above (approximate instrument ranges, widened
# a little). reassign_programs only gives a track a program whose range holds its median pitch.
PROGRAM_RANGES: dict[int, tuple[int, int]] = {
    0: (21, 108),
    4: (28, 103),
    8: (60, 108),
    16: (36, 96),
    24: (40, 84),
    26: (40, 86),
    29: (40, 86),
    32: (28, 60),
    33: (28, 64),
    40: (55, 103),
    41: (48, 91),
    42: (36, 76),
    43: (28, 60),
    46: (24, 103),
    48: (28, 96),
    50: (28, 96),
    52: (40, 81),
    56: (52, 84),
    57: (40, 72),
    58: (28, 60),
    60: (34, 77),
    61: (36, 84),
    64: (56, 88),
    66: (44, 76),
    67: (36, 69),
    68: (58, 91),
    69: (52, 81),
    70: (34, 72),
    71: (50, 94),
    73: (60, 96),
    80: (36, 96),
    88: (36, 96),
}


# --------------------------------------------------------------------------------------------
# SoundFonts and backends


def default_soundfont() -> Path:
    """The SoundFont used when none is given: ``$SPECDIFF_SOUNDFONT``, else pretty_midi's
    bundled ``TimGM6mb.sf2``, else a system General MIDI SoundFont (Debian paths)."""
    env = os.environ.get("SPECDIFF_SOUNDFONT")
    if env:
        return _check_soundfont(env)
    candidates = []
    try:
        import importlib.util

        spec = importlib.util.find_spec("pretty_midi")
        if spec is not None and spec.origin is not None:
            candidates.append(Path(spec.origin).parent / "TimGM6mb.sf2")
    except (ImportError, ValueError):
        pass
    candidates += [
        Path("/usr/share/sounds/sf2/FluidR3_GM.sf2"),
        Path("/usr/share/sounds/sf3/MuseScore_General.sf3"),
        Path("/usr/share/sounds/sf2/TimGM6mb.sf2"),
        Path("/usr/share/sounds/sf2/default-GM.sf2"),
    ]
    for path in candidates:
        if path.is_file():
            return path
    raise SpecdiffError(
        "no General MIDI SoundFont found: pip install pretty_midi (ships TimGM6mb.sf2) "
        "or pass soundfont=/path/to/file.sf2"
    )


#: Where packages install the General MIDI SoundFonts a model can be trained on, by timbre name
#: (the file's stem). TimGM6mb comes with pretty_midi's wheel (:func:`default_soundfont`); the
#: others with Debian packages (fluid-soundfont-gm, musescore-general-soundfont-small).
SYSTEM_SOUNDFONTS: dict[str, tuple[str, ...]] = {
    "TimGM6mb": ("/usr/share/sounds/sf2/TimGM6mb.sf2",),
    "FluidR3_GM": ("/usr/share/sounds/sf2/FluidR3_GM.sf2",),
    "MuseScore_General": ("/usr/share/sounds/sf3/MuseScore_General.sf3", "/usr/share/sounds/sf2/MuseScore_General.sf2"),
}


def timbre_name(soundfont: str | os.PathLike | None) -> str:
    """The timbre name of a SoundFont: its file stem (``TimGM6mb``, ``FluidR3_GM``); None means
    the default SoundFont."""
    return Path(soundfont if soundfont is not None else default_soundfont()).stem


def find_soundfont(name_or_path: str | os.PathLike) -> Path:
    """A SoundFont file from a path or a timbre name (:data:`SYSTEM_SOUNDFONTS`, pretty_midi's TimGM6mb)."""
    path = Path(name_or_path)
    if path.is_file():
        return path
    name = str(name_or_path)
    if name == "TimGM6mb":
        try:
            import importlib.util

            spec = importlib.util.find_spec("pretty_midi")
            if spec is not None and spec.origin is not None and (Path(spec.origin).parent / "TimGM6mb.sf2").is_file():
                return Path(spec.origin).parent / "TimGM6mb.sf2"
        except (ImportError, ValueError):
            pass
    for candidate in SYSTEM_SOUNDFONTS.get(name, ()):
        if Path(candidate).is_file():
            return Path(candidate)
    raise SpecdiffError(
        f"SoundFont {name!r} not found: pass a .sf2/.sf3 path, or one of {sorted(SYSTEM_SOUNDFONTS)} once installed "
        "(TimGM6mb: pip install pretty_midi; FluidR3_GM: apt-get install fluid-soundfont-gm)"
    )


def _check_soundfont(path: str | os.PathLike) -> Path:
    path = Path(path)
    if not path.is_file():
        raise SpecdiffError(f"SoundFont not found: {path}")
    return path


def available_backends() -> list[str]:
    """The rendering backends usable on this machine, in order of preference."""
    backends = []
    try:
        import tinysoundfont  # noqa: F401

        backends.append("tinysoundfont")
    except ImportError:
        pass
    if shutil.which("fluidsynth"):
        backends.append("fluidsynth")
    return backends


# --------------------------------------------------------------------------------------------
# MIDI handling


def load_score(midi, ttype: str = "tick"):
    """Parse a MIDI path, bytes or ``symusic.Score`` into a ``symusic.Score`` (a copy)."""
    from symusic import Score

    if isinstance(midi, Score):
        return midi.copy() if str(midi.ttype).lower().endswith(ttype) else midi.to(ttype)
    try:
        if isinstance(midi, (bytes, bytearray, memoryview)):
            score = Score.from_midi(bytes(midi))
        else:
            path = Path(midi)
            if not path.is_file():
                raise MidiError(f"MIDI file not found: {path}")
            score = Score.from_file(str(path))
    except MidiError:
        raise
    except Exception as exc:  # symusic raises plain RuntimeError/ValueError on bad bytes
        raise MidiError(f"unreadable MIDI file: {str(exc).splitlines()[0] if str(exc) else exc!r}") from None
    return score if ttype == "tick" else score.to(ttype)


def reassign_programs(
    midi,
    rng: np.random.Generator,
    families: Iterable[str] | None = None,
    respect_range: bool = True,
):
    """Give every non-drum track a random General MIDI program, for timbral variety.

    Programs are drawn from the named :data:`PROGRAM_FAMILIES` (all of them by default). With
    ``respect_range`` a track only gets a program whose usual range holds the track's median
    pitch (no tuba on a soprano line). Drum tracks keep ``is_drum`` and so stay on MIDI
    channel 10. Returns a new ``symusic.Score`` in ticks; the input is not modified.
    """
    score = load_score(midi, "tick")
    names = list(PROGRAM_FAMILIES) if families is None else list(families)
    unknown = [n for n in names if n not in PROGRAM_FAMILIES]
    if unknown or not names:
        raise ValueError(f"unknown program families {unknown}; choose from {list(PROGRAM_FAMILIES)}")
    pool = sorted({p for n in names for p in PROGRAM_FAMILIES[n]})
    for track in score.tracks:
        if track.is_drum or len(track.notes) == 0:
            continue
        choices = pool
        if respect_range:
            median = float(np.median(track.notes.numpy()["pitch"]))
            fitting = [p for p in pool if PROGRAM_RANGES[p][0] <= median <= PROGRAM_RANGES[p][1]]
            choices = fitting or pool
        track.program = int(choices[rng.integers(len(choices))])
    return score


def sustained_note_ends(
    starts: np.ndarray,
    ends: np.ndarray,
    pitches: np.ndarray,
    pedal_times: np.ndarray,
    pedal_down: np.ndarray,
) -> np.ndarray:
    """Note end times after applying the sustain pedal the way note_seq does (ORIGINAL.md §2.5).

    While the pedal is down a released note keeps sounding until the pedal is lifted or the
    same pitch is struck again. At equal times pedal events come before note events, and
    pedal-on before pedal-off, note-on before note-off (note_seq's event order).
    """
    new_ends = ends.astype(np.float64).copy()
    if len(pedal_times) == 0 or len(starts) == 0:
        return new_ends
    # (time, kind, index): kind 0 pedal on, 1 pedal off, 2 note on, 3 note off
    events = [(float(t), 0 if down else 1, -1) for t, down in zip(pedal_times, pedal_down)]
    events += [(float(s), 2, i) for i, s in enumerate(starts)]
    events += [(float(e), 3, i) for i, e in enumerate(ends)]
    events.sort(key=lambda ev: (ev[0], ev[1]))
    active: dict[int, list[int]] = defaultdict(list)  # pitch -> indices of sounding notes
    pedal = False
    time = 0.0
    for time, kind, i in events:
        if kind == 0:
            pedal = True
        elif kind == 1:
            pedal = False
            for pitch, idx in list(active.items()):
                keep = []
                for j in idx:
                    if new_ends[j] < time:  # released earlier, held only by the pedal
                        new_ends[j] = time
                    else:
                        keep.append(j)
                active[pitch] = keep
        elif kind == 2:
            pitch = int(pitches[i])
            if pedal:  # re-striking a pitch ends its pedal-held predecessor
                keep = []
                for j in active[pitch]:
                    if new_ends[j] < time:
                        new_ends[j] = time
                    else:
                        keep.append(j)
                active[pitch] = keep
            active[pitch].append(i)
        elif not pedal:
            pitch = int(pitches[i])
            if i in active[pitch]:
                active[pitch].remove(i)
    for idx in active.values():  # pedal never lifted: hold to the last event
        for j in idx:
            new_ends[j] = max(new_ends[j], time)
    return new_ends


def _track_notes_seconds(track) -> dict[str, np.ndarray]:
    """Notes of a track (in seconds) with the sustain pedal applied to non-drum tracks."""
    arr = track.notes.numpy()
    starts = arr["time"].astype(np.float64)
    ends = starts + arr["duration"].astype(np.float64)
    pitches = arr["pitch"].astype(np.int64)
    velocities = arr["velocity"].astype(np.int64)
    if not track.is_drum and len(track.controls):
        ctl = track.controls.numpy()
        sus = ctl["number"] == 64
        if sus.any():
            ends = sustained_note_ends(
                starts, ends, pitches, ctl["time"][sus].astype(np.float64), ctl["value"][sus] >= 64
            )
    return {"start": starts, "end": ends, "pitch": pitches, "velocity": velocities}


def midi_end_time(score_seconds) -> float:
    """Time of the last note-off in seconds, after the sustain pedal is applied."""
    end = 0.0
    for track in score_seconds.tracks:
        if len(track.notes):
            end = max(end, float(_track_notes_seconds(track)["end"].max()))
    return end


# --------------------------------------------------------------------------------------------
# Rendering


def render_midi(
    midi,
    sample_rate: int = SAMPLE_RATE,
    soundfont: str | os.PathLike | None = None,
    backend: str = "auto",
    tail: float = TAIL_SECONDS,
    peak: float | None = PEAK,
) -> np.ndarray:
    """Render a MIDI file (path, bytes or ``symusic.Score``) to mono float32 audio.

    The result is ``ceil((last note-off + tail) * sample_rate)`` samples long, where the last
    note-off is taken after applying the sustain pedal, and is peak-normalised to ``peak``
    (``None`` keeps the backend's own level). ``backend`` is ``"tinysoundfont"``,
    ``"fluidsynth"`` or ``"auto"`` (the first one installed, in that order).
    """
    ticks = load_score(midi, "tick")
    score = ticks.to("second")
    sf_path = _check_soundfont(soundfont) if soundfont is not None else default_soundfont()
    backends = available_backends()
    if backend == "auto":
        if not backends:
            raise SpecdiffError(
                "no MIDI renderer installed: pip install --no-deps tinysoundfont, or install the fluidsynth program"
            )
        backend = backends[0]
    elif backend not in ("tinysoundfont", "fluidsynth"):
        raise ValueError(f"unknown render backend {backend!r}")
    elif backend not in backends:
        raise SpecdiffError(f"render backend {backend!r} is not installed")

    # symusic's seconds are float32 (~1e-7 relative error): round to 0.1 sample before ceil
    num_samples = math.ceil(round((midi_end_time(score) + tail) * sample_rate, 1))
    if backend == "tinysoundfont":
        audio = _render_tinysoundfont(score, sample_rate, sf_path, num_samples)
    else:
        audio = _render_fluidsynth(ticks, sample_rate, sf_path, num_samples)
    audio = np.ascontiguousarray(audio, dtype=np.float32)
    if peak is not None:
        top = float(np.max(np.abs(audio))) if audio.size else 0.0
        if top > 0:
            audio *= np.float32(peak / top)
    return audio


def _channel_passes(tracks) -> list[list[tuple[int, object]]]:
    """Assign tracks to MIDI channels: drums share channel 10; each other track gets its own
    channel (so its controllers and program stay its own). Beyond 15 melodic tracks a second
    synthesizer pass is used, and the passes are summed."""
    drums = [t for t in tracks if t.is_drum and len(t.notes)]
    melodic = [t for t in tracks if not t.is_drum and len(t.notes)]
    free = [c for c in range(16) if c != DRUM_CHANNEL]
    passes = []
    for k in range(0, max(len(melodic), 1), len(free)):
        group = list(zip(free, melodic[k : k + len(free)]))
        passes.append(group)
    passes[0] += [(DRUM_CHANNEL, t) for t in drums]
    return passes


# Controllers forwarded to the synthesizer. Sustain (64) is applied to the note ends instead
# (TinySoundFont ignores it); bank select (0/32) would break drum/preset selection; 120-127 are
# channel-mode messages.
_SKIPPED_CONTROLLERS = {0, 32, 64, *range(120, 128)}


def _render_tinysoundfont(score, sample_rate: int, sf_path: Path, num_samples: int) -> np.ndarray:
    import tinysoundfont

    out = np.zeros(num_samples, dtype=np.float32)
    for group in _channel_passes(score.tracks):
        if not group:
            continue
        synth = tinysoundfont.Synth(samplerate=sample_rate)
        try:
            sfid = synth.sfload(str(sf_path))
        except Exception as exc:
            raise SpecdiffError(f"cannot load SoundFont {sf_path}: {exc}") from None
        # (sample, order, action, channel, a, b); order puts controllers before note-offs
        # before note-ons at the same sample, so a re-struck pitch is not cut by its own off.
        events: list[tuple[int, int, str, int, int, int]] = []
        for chan, track in group:
            _select_program(synth, chan, sfid, int(track.program), drums=chan == DRUM_CHANNEL)
            notes = _track_notes_seconds(track)
            on = np.round(notes["start"] * sample_rate).astype(np.int64)
            off = np.round(notes["end"] * sample_rate).astype(np.int64)
            off = np.maximum(off, on + 1)
            for s, e, p, v in zip(on, off, notes["pitch"], notes["velocity"]):
                if v <= 0:
                    continue
                events.append((int(s), 2, "on", chan, int(p), int(min(v, 127))))
                events.append((int(e), 1, "off", chan, int(p), 0))
            if len(track.controls):
                ctl = track.controls.numpy()
                for t, n, v in zip(ctl["time"], ctl["number"], ctl["value"]):
                    if int(n) not in _SKIPPED_CONTROLLERS:
                        events.append((int(round(t * sample_rate)), 0, "cc", chan, int(n), int(v)))
            if len(track.pitch_bends):
                pb = track.pitch_bends.numpy()
                for t, v in zip(pb["time"], pb["value"]):
                    events.append((int(round(t * sample_rate)), 0, "bend", chan, int(v) + 8192, 0))
        events.sort(key=lambda ev: (ev[0], ev[1]))

        stereo = np.zeros((num_samples, 2), dtype=np.float32)
        view = memoryview(stereo).cast("B")
        bytes_per_frame = 8  # 2 channels x float32
        pos = 0
        for sample, _, action, chan, a, b in events:
            sample = min(sample, num_samples)
            if sample > pos:
                synth.generate_simple(sample - pos, buffer=view[pos * bytes_per_frame : sample * bytes_per_frame])
                pos = sample
            if action == "on":
                synth.noteon(chan, a, b)
            elif action == "off":
                synth.noteoff(chan, a)
            elif action == "cc":
                synth.control_change(chan, a, b)
            else:
                synth.pitchbend(chan, min(max(a, 0), 16383))
        if pos < num_samples:
            synth.generate_simple(num_samples - pos, buffer=view[pos * bytes_per_frame :])
        out += np.float32(0.5) * (stereo[:, 0] + stereo[:, 1])
    return out


def _select_program(synth, chan: int, sfid: int, program: int, drums: bool) -> None:
    """Select a preset (drum kits live in bank 128), falling back to the bank's program 0 (the
    standard kit / grand piano) when the SoundFont lacks it."""
    bank = 128 if drums else 0
    try:
        synth.program_select(chan, sfid, bank, program, is_drums=drums)
    except Exception:
        synth.program_select(chan, sfid, bank, 0, is_drums=drums)


def _render_fluidsynth(score_ticks, sample_rate: int, sf_path: Path, num_samples: int) -> np.ndarray:
    import soundfile as sf

    with tempfile.TemporaryDirectory(prefix="specdiff_render_") as tmp:
        midi_path = Path(tmp) / "in.mid"
        wav_path = Path(tmp) / "out.wav"
        score_ticks.dump_midi(str(midi_path))
        cmd = [
            "fluidsynth", "-ni", "-q", "-g", "0.5", "-r", str(sample_rate),
            "-T", "wav", "-O", "float", "-F", str(wav_path), str(sf_path), str(midi_path),
        ]  # fmt: skip
        proc = subprocess.run(cmd, capture_output=True, text=True)
        if proc.returncode != 0 or not wav_path.is_file():
            raise SpecdiffError(f"fluidsynth failed: {(proc.stderr or proc.stdout).strip()[:200]}")
        audio, rate = sf.read(str(wav_path), dtype="float32", always_2d=True)
    if rate != sample_rate:
        raise SpecdiffError(f"fluidsynth wrote {rate} Hz audio, expected {sample_rate}")
    audio = audio.mean(axis=1)
    if len(audio) >= num_samples:
        return audio[:num_samples]
    return np.pad(audio, (0, num_samples - len(audio)))


def gm_program_name(program: int) -> str:
    """The General MIDI name of a program (0-127), for manifests and reports."""
    return _GM_NAMES[program] if 0 <= program < 128 else f"program {program}"


_GM_NAMES = (
    "Acoustic Grand Piano,Bright Acoustic Piano,Electric Grand Piano,Honky-tonk Piano,Electric Piano 1,"
    "Electric Piano 2,Harpsichord,Clavinet,Celesta,Glockenspiel,Music Box,Vibraphone,Marimba,Xylophone,"
    "Tubular Bells,Dulcimer,Drawbar Organ,Percussive Organ,Rock Organ,Church Organ,Reed Organ,Accordion,"
    "Harmonica,Tango Accordion,Acoustic Guitar (nylon),Acoustic Guitar (steel),Electric Guitar (jazz),"
    "Electric Guitar (clean),Electric Guitar (muted),Overdriven Guitar,Distortion Guitar,Guitar Harmonics,"
    "Acoustic Bass,Electric Bass (finger),Electric Bass (pick),Fretless Bass,Slap Bass 1,Slap Bass 2,"
    "Synth Bass 1,Synth Bass 2,Violin,Viola,Cello,Contrabass,Tremolo Strings,Pizzicato Strings,"
    "Orchestral Harp,Timpani,String Ensemble 1,String Ensemble 2,Synth Strings 1,Synth Strings 2,"
    "Choir Aahs,Voice Oohs,Synth Choir,Orchestra Hit,Trumpet,Trombone,Tuba,Muted Trumpet,French Horn,"
    "Brass Section,Synth Brass 1,Synth Brass 2,Soprano Sax,Alto Sax,Tenor Sax,Baritone Sax,Oboe,"
    "English Horn,Bassoon,Clarinet,Piccolo,Flute,Recorder,Pan Flute,Blown bottle,Shakuhachi,Whistle,"
    "Ocarina,Lead 1 (square),Lead 2 (sawtooth),Lead 3 (calliope),Lead 4 (chiff),Lead 5 (charang),"
    "Lead 6 (voice),Lead 7 (fifths),Lead 8 (bass + lead),Pad 1 (new age),Pad 2 (warm),Pad 3 (polysynth),"
    "Pad 4 (choir),Pad 5 (bowed),Pad 6 (metallic),Pad 7 (halo),Pad 8 (sweep),FX 1 (rain),"
    "FX 2 (soundtrack),FX 3 (crystal),FX 4 (atmosphere),FX 5 (brightness),FX 6 (goblins),FX 7 (echoes),"
    "FX 8 (sci-fi),Sitar,Banjo,Shamisen,Koto,Kalimba,Bagpipe,Fiddle,Shanai,Tinkle Bell,Agogo,Steel Drums,"
    "Woodblock,Taiko Drum,Melodic Tom,Synth Drum,Reverse Cymbal,Guitar Fret Noise,Breath Noise,Seashore,"
    "Bird Tweet,Telephone Ring,Helicopter,Applause,Gunshot"
).split(",")
assert len(_GM_NAMES) == 128
