"""Procedurally generated MIDI pieces in the idioms users bring, for training and evaluation.

The demo corpus (``specdiff.data.corpus``) is classical part-writing. Real MIDI files are mostly
band music: a drum kit with fills, a bass line, comping, a lead, pads or organ; with rests,
full silences, fades, long sustains, sustain pedal and a wide range of velocities. This module
writes such pieces from a seed, so a model can be trained and tested on them without any file
from outside the repository:

- :data:`STYLES` are the idioms (blues, rock, pop, funk, latin, jazz, ambient, sparse, game
  music, waltz), each a tempo range, a harmonic rhythm, a set of parts and a drum groove;
- :func:`generate_piece` builds one piece as a ``symusic.Score`` (ticks, 480 per quarter);
- :func:`idiom_split` is the fixed train / validation / test split by seed, so generated
  material has its own held-out pieces.

Every General MIDI program family appears (:data:`ROLE_PROGRAMS`), sections can drop to
silence, dynamics range from pp to ff with fades, and piano comping uses the sustain pedal.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

TICKS_PER_QUARTER = 480
DRUM_CHANNEL = 9

#: The fixed split of generated pieces by seed: 90% train, 5% validation, 5% test.
SPLIT_FRACTIONS = (("train", 0.90), ("validation", 0.05), ("test", 0.05))

#: General MIDI programs by the role a part plays; together they cover every GM family
#: (piano, chromatic percussion, organ, guitar, bass, strings, ensemble, brass, reed, pipe,
#: synth lead, synth pad, synth effects, ethnic, percussive).
ROLE_PROGRAMS: dict[str, tuple[int, ...]] = {
    "bass": (32, 33, 34, 35, 36, 37, 38, 39, 43, 58),
    "comp": (0, 1, 2, 3, 4, 5, 6, 7, 11, 16, 17, 18, 19, 24, 25, 26, 27, 28, 29, 30, 46, 105, 106, 107, 108),
    "lead": (8, 9, 10, 11, 12, 13, 40, 41, 56, 57, 59, 60, 64, 65, 66, 68, 69, 70, 71, 72, 73, 74, 75, 77,
             78, 79, 80, 81, 82, 83, 84, 85, 86, 87, 104, 109, 110, 111),
    "pad": (16, 19, 20, 21, 22, 23, 44, 45, 48, 49, 50, 51, 52, 53, 54, 61, 62, 63, 88, 89, 90, 91, 92, 93,
            94, 95, 96, 97, 98, 99, 100, 101, 102, 103),
    "perc": (112, 113, 114, 115, 116, 117, 118, 119, 47, 14, 15),
}  # fmt: skip

# General MIDI drum keys.
KICK, SNARE, RIM, CLAP, CLOSED_HAT, PEDAL_HAT, OPEN_HAT, CRASH, RIDE = 36, 38, 37, 39, 42, 44, 46, 49, 51
LOW_TOM, MID_TOM, HIGH_TOM, COWBELL, CONGA_HI, CONGA_LO, SHAKER, CLAVES = 45, 47, 50, 56, 62, 64, 70, 75

# Chord qualities as semitones above the root.
TRIAD = {"maj": (0, 4, 7), "min": (0, 3, 7), "dom7": (0, 4, 7, 10), "min7": (0, 3, 7, 10),
         "maj7": (0, 4, 7, 11), "power": (0, 7, 12), "sus4": (0, 5, 7)}  # fmt: skip
MAJOR_SCALE = (0, 2, 4, 5, 7, 9, 11)
MINOR_PENTATONIC = (0, 3, 5, 7, 10)
BLUES_SCALE = (0, 3, 5, 6, 7, 10)

# Progressions: (scale degree in semitones from the key, quality) per chord.
PROGRESSIONS: dict[str, tuple[tuple[int, str], ...]] = {
    "blues": ((0, "dom7"),) * 4 + ((5, "dom7"),) * 2 + ((0, "dom7"),) * 2 + ((7, "dom7"), (5, "dom7"),
             (0, "dom7"), (7, "dom7")),
    "pop": ((0, "maj"), (7, "maj"), (9, "min"), (5, "maj")),
    "rock": ((0, "power"), (10, "power"), (5, "power"), (0, "power")),
    "jazz": ((2, "min7"), (7, "dom7"), (0, "maj7"), (9, "dom7")),
    "minor": ((0, "min"), (8, "maj"), (3, "maj"), (10, "maj")),
    "modal": ((0, "min7"), (0, "min7"), (5, "dom7"), (5, "dom7")),
    "static": ((0, "sus4"), (0, "maj"), (5, "maj"), (0, "maj")),
}  # fmt: skip


@dataclass(frozen=True)
class Style:
    """One idiom: tempo range, beats per bar, swing, progression, parts and groove."""

    name: str
    tempo: tuple[int, int]
    progressions: tuple[str, ...]
    parts: tuple[str, ...]  # roles that may play (bass, comp, lead, pad, perc)
    groove: str | None  # drum pattern name (see _drum_bar) or None for no kit
    beats: int = 4
    swing: float = 0.0  # 0 straight; 1/3 triplet swing of eighth notes
    chord_bars: int = 1  # bars per chord
    density: float = 1.0  # scales how many notes the lead and comp play


STYLES: tuple[Style, ...] = (
    Style("blues", (70, 130), ("blues",), ("bass", "comp", "lead", "pad"), "shuffle", swing=1 / 3),
    Style("rock", (100, 160), ("rock", "pop", "minor"), ("bass", "comp", "lead"), "rock"),
    Style("pop", (85, 125), ("pop", "minor", "static"), ("bass", "comp", "lead", "pad"), "pop"),
    Style("funk", (90, 115), ("modal", "minor"), ("bass", "comp", "lead", "perc"), "funk", density=1.3),
    Style("latin", (90, 130), ("minor", "jazz", "pop"), ("bass", "comp", "lead", "perc"), "latin"),
    Style("jazz", (100, 200), ("jazz",), ("bass", "comp", "lead"), "swing", swing=1 / 3),
    Style("ambient", (50, 80), ("static", "minor", "modal"), ("pad", "lead", "bass"), None, chord_bars=2,
          density=0.4),
    Style("sparse", (60, 100), ("pop", "minor", "jazz"), ("lead", "comp"), None, density=0.5),
    Style("game", (120, 170), ("minor", "pop", "rock"), ("bass", "lead", "comp"), "game", density=1.2),
    Style("waltz", (80, 150), ("pop", "minor"), ("bass", "comp", "lead", "pad"), "waltz", beats=3),
    Style("organ_pad", (60, 100), ("static", "pop", "modal"), ("pad", "bass"), None, chord_bars=2,
          density=0.3),
)  # fmt: skip


@dataclass
class _Part:
    program: int
    is_drum: bool = False
    notes: list[tuple[int, int, int, int]] = field(default_factory=list)  # (start, duration, pitch, velocity)
    pedal: list[tuple[int, int]] = field(default_factory=list)  # (tick, value) sustain controller events


def seed_for(name: str, index: int) -> int:
    """A stable 63-bit seed for piece ``index`` of a set called ``name``."""
    return int(hashlib.sha1(f"{name}:{index}".encode()).hexdigest()[:15], 16)


def idiom_split(index: int) -> str:
    """The fixed split of generated piece ``index``: test, validation or train (hash-based, stable)."""
    u = int(hashlib.sha1(f"idiom-split:{index}".encode()).hexdigest()[:8], 16) / 2**32
    edge = 0.0
    for name, fraction in SPLIT_FRACTIONS:
        edge += fraction
        if u < edge:
            return name
    return "train"


def _velocity(rng: np.random.Generator, level: float, accent: float = 0.0) -> int:
    """A MIDI velocity around ``level`` (0..1 dynamics) with small human variation."""
    v = 127 * level * (1 + accent) + rng.normal(0, 6)
    return int(np.clip(round(v), 1, 127))


def _fit(pitch: int, low: int, high: int) -> int:
    while pitch < low:
        pitch += 12
    while pitch > high:
        pitch -= 12
    return pitch


def _drum_bar(
    groove: str, beats: int, q: int, rng: np.random.Generator, fill: bool, swing: float
) -> list[tuple[int, int, int]]:
    """(tick offset in the bar, key, accent) hits of one bar of ``groove``; ``fill`` ends it with a fill."""
    hits: list[tuple[int, int, int]] = []
    eighth = q // 2

    def swung(i: int) -> int:  # eighth i of the bar with swing on the off-beats
        return i * eighth + (int(swing * eighth) if i % 2 else 0)

    if groove in ("rock", "pop", "game"):
        for i in range(2 * beats):
            hits.append((swung(i), CLOSED_HAT if groove != "game" else PEDAL_HAT, 0 if i % 2 == 0 else -20))
        kicks = (0, 4, 5) if groove == "rock" else (0, 3, 4)
        hits += [(swung(i), KICK, 10) for i in kicks if i < 2 * beats]
        hits += [(b * q, SNARE, 15) for b in range(1, beats, 2)]
    elif groove == "funk":
        for i in range(4 * beats):
            hits.append((i * q // 4, CLOSED_HAT, -25 if i % 2 else -5))
        pattern = rng.choice([[0, 3, 6, 10], [0, 2, 7, 10], [0, 6, 8, 11]])
        hits += [(int(i) * q // 4, KICK, 10) for i in pattern]
        hits += [(b * q, SNARE, 15) for b in range(1, beats, 2)]
        hits += [(int(rng.integers(4 * beats)) * q // 4, SNARE, -45)]  # ghost note
    elif groove in ("shuffle", "swing"):
        for b in range(beats):
            hits.append((b * q, RIDE if groove == "swing" else CLOSED_HAT, -10))
            if b % 2:
                hits.append((b * q + int((0.5 + swing) * q), RIDE if groove == "swing" else CLOSED_HAT, -25))
        hits += [(b * q, PEDAL_HAT, -30) for b in range(1, beats, 2)]
        if groove == "shuffle":
            hits += [(0, KICK, 5), (2 * q, KICK, 5)] + [(b * q, SNARE, 10) for b in range(1, beats, 2)]
        else:
            hits += [(0, KICK, -35)]
    elif groove == "latin":
        clave = (0, 3, 6, 10, 12) if rng.random() < 0.5 else (2, 4, 8, 11, 14)
        hits += [(i * q // 4, CLAVES if rng.random() < 0.6 else RIM, 0) for i in clave if i < 4 * beats]
        hits += [(i * q // 2, SHAKER, -30) for i in range(2 * beats)]
        hits += [(0, KICK, 0), (3 * q // 2, KICK, -10), (2 * q, KICK, 0)]
        hits += [(i * q // 2, CONGA_HI if i % 3 else CONGA_LO, -10) for i in (1, 3, 6, 7) if i < 2 * beats]
        hits += [(q * beats - q // 2, COWBELL, -20)] if rng.random() < 0.5 else []
    elif groove == "waltz":
        hits += [(0, KICK, 5)] + [(b * q, CLOSED_HAT, -15) for b in (1, 2)] + [(b * q, RIM, -20) for b in (1, 2)]
    if fill:
        start = (beats - 1) * q
        hits = [h for h in hits if h[0] < start]
        toms = [HIGH_TOM, HIGH_TOM, MID_TOM, MID_TOM, LOW_TOM, LOW_TOM, SNARE, SNARE]
        rng.shuffle(toms)
        hits += [(start + i * q // 4, toms[i], 5 + 4 * i) for i in range(4)]
    return hits


#: Bars per section: parts drop out, and the drums fill and crash, at section boundaries.
SECTION_BARS = 4


def _add(part: _Part, start: int, dur: int, pitch: int, vel: int) -> None:
    if 0 <= pitch <= 127 and dur > 0:
        part.notes.append((int(start), int(dur), int(pitch), int(vel)))


@dataclass(frozen=True)
class _Bar:
    """What every part of bar ``index`` plays against: its style, key, chord and dynamic level."""

    style: Style
    rng: np.random.Generator
    key: int
    index: int
    t0: int  # first tick of the bar
    root: int
    chord: tuple[int, ...]
    level: float

    @property
    def length(self) -> int:
        return self.style.beats * TICKS_PER_QUARTER


def _choose_parts(rng: np.random.Generator, st: Style) -> tuple[dict[str, _Part], _Part | None]:
    """Which parts play, on which programs, and whether a drum kit plays."""
    roles = [r for r in st.parts if r in ("bass", "pad") or rng.random() < 0.85]
    if not roles:
        roles = [st.parts[0]]
    parts = {role: _Part(int(rng.choice(ROLE_PROGRAMS[role]))) for role in roles}
    drums = _Part(0, is_drum=True) if st.groove is not None and rng.random() < 0.9 else None
    return parts, drums


def _dynamics(rng: np.random.Generator, n_bars: int) -> tuple[float, np.ndarray]:
    """A base level (pp..ff) and each bar's level: flat, a fade in or out, a swell, or terraces."""
    base = float(rng.uniform(0.25, 0.95))
    shape = rng.choice(["flat", "fade_in", "fade_out", "swell", "terraced"])
    levels = np.full(n_bars, base)
    ramp = np.linspace(0.15, 1.0, n_bars)
    if shape == "fade_in":
        levels = base * ramp
    elif shape == "fade_out":
        levels = base * ramp[::-1]
    elif shape == "swell":
        levels = base * (0.4 + 0.6 * np.sin(np.linspace(0, np.pi, n_bars)))
    elif shape == "terraced":
        levels = np.repeat(rng.uniform(0.2, 1.0, size=(n_bars + 3) // 4), 4)[:n_bars]
    return base, levels


def _sections(rng: np.random.Generator, n_bars: int, everyone: set[str]) -> list[set[str]]:
    """The parts that play in each bar: per section of ``SECTION_BARS`` bars everyone, half of them
    (a drum break, a solo), or now and then nobody (a full silence)."""
    active: list[set[str]] = []
    for b in range(n_bars):
        if b % SECTION_BARS == 0:
            u = rng.random()
            if u < 0.08 and b > 0:
                current: set[str] = set()  # full silence
            elif u < 0.2:
                keep = sorted(everyone)  # not list(set): its order follows PYTHONHASHSEED
                rng.shuffle(keep)
                current = set(keep[: max(1, len(keep) // 2)])
            else:
                current = everyone
        active.append(current)
    return active


def _play_bass(p: _Part, c: _Bar) -> None:
    st, rng, q, root, chord, level = c.style, c.rng, TICKS_PER_QUARTER, c.root, c.chord, c.level
    if st.name == "jazz":
        walk = [root, root + chord[1], root + chord[2], root + 7 + int(rng.choice([-1, 1, 2]))]
        for i in range(st.beats):
            _add(p, c.t0 + i * q, int(q * 0.9), _fit(36 + walk[i % 4] % 12, 28, 52), _velocity(rng, level))
    elif st.name in ("funk", "game"):
        for i in range(4 * st.beats):
            if rng.random() < 0.45 * st.density or i == 0:
                pitch = root + (12 if rng.random() < 0.25 else 0) + (7 if rng.random() < 0.15 else 0)
                _add(p, c.t0 + i * q // 4, q // 5, _fit(36 + pitch % 12, 28, 55), _velocity(rng, level, 0.1))
    elif st.name in ("ambient", "organ_pad"):
        _add(p, c.t0, c.length * st.chord_bars - q // 8 if c.index % st.chord_bars == 0 else 0,
             _fit(36 + root % 12, 28, 48), _velocity(rng, level, -0.2))  # fmt: skip
    else:
        step = q if rng.random() < 0.5 else q // 2
        for i in range(c.length // step):
            pitch = root + (chord[2] if i % 4 == 2 and rng.random() < 0.5 else 0)
            _add(p, c.t0 + i * step, int(step * 0.85), _fit(36 + pitch % 12, 28, 55), _velocity(rng, level))


def _play_comp(p: _Part, c: _Bar, pedal: bool) -> None:
    st, rng, q, bar = c.style, c.rng, TICKS_PER_QUARTER, c.length
    voicing = [_fit(60 + (c.root + n) % 12, 52, 76) for n in c.chord]
    if st.name in ("rock", "game"):
        hits = [(i * q // 2, q // 2 - 20) for i in range(2 * st.beats)]
    elif st.name == "waltz":
        hits = [(b2 * q, q - 40) for b2 in (1, 2)]
    elif st.name in ("funk", "latin"):
        hits = [(i * q // 4, q // 6) for i in range(4 * st.beats) if rng.random() < 0.35 * st.density]
    elif st.name in ("ambient", "sparse"):
        hits = [(0, bar - q // 4)] if rng.random() < st.density + 0.3 else []
    else:
        hits = [(0, q + q // 2), (2 * q + int(st.swing * q / 2), q)] if st.beats == 4 else [(0, bar)]
    for start, dur in hits:
        for pitch in voicing:
            _add(p, c.t0 + start, dur, pitch, _velocity(rng, c.level, -0.1))
    if pedal and c.index % 2 == 0:
        p.pedal += [(c.t0 + 10, 127), (c.t0 + 2 * bar - 30, 0)]


def _play_pad(p: _Part, c: _Bar) -> None:
    for n in c.chord[:3]:
        pitch = _fit(55 + (c.root + n) % 12, 48, 72)
        _add(p, c.t0, c.length * c.style.chord_bars - TICKS_PER_QUARTER // 8, pitch, _velocity(c.rng, c.level, -0.3))


def _play_lead(p: _Part, c: _Bar) -> None:
    st, rng, q, bar = c.style, c.rng, TICKS_PER_QUARTER, c.length
    scale = BLUES_SCALE if st.name == "blues" else MINOR_PENTATONIC if rng.random() < 0.4 else MAJOR_SCALE
    pos = 0
    while pos < bar:
        dur = int(rng.choice([q // 4, q // 2, q // 2, q, q, 2 * q, 3 * q]) / max(st.density, 0.3))
        dur = max(q // 4, min(dur, bar - pos))
        if rng.random() < 0.75 * min(1.0, st.density + 0.3):
            degree = int(rng.integers(len(scale)))
            pitch = _fit(72 + (c.key + scale[degree] + 12 * int(rng.integers(-1, 2))) % 24, 60, 88)
            accent = 0.15 if pos % q == 0 else -0.05
            _add(p, c.t0 + pos + (int(st.swing * q / 2) if pos % q == q // 2 else 0), int(dur * 0.9), pitch,
                 _velocity(rng, c.level, accent))  # fmt: skip
        pos += dur


def _play_perc(p: _Part, c: _Bar) -> None:
    q = TICKS_PER_QUARTER
    for i in range(2 * c.style.beats):
        if c.rng.random() < 0.3:
            _add(p, c.t0 + i * q // 2, q // 3, _fit(60 + (c.key + c.chord[i % len(c.chord)]) % 12, 55, 84),
                 _velocity(c.rng, c.level, -0.2))  # fmt: skip


def _play_drums(p: _Part, c: _Bar) -> None:
    st, rng, q = c.style, c.rng, TICKS_PER_QUARTER
    fill = (c.index % SECTION_BARS == SECTION_BARS - 1) and rng.random() < 0.6
    for offset, note, accent in _drum_bar(st.groove or "rock", st.beats, q, rng, fill, st.swing):
        p.notes.append((c.t0 + offset, q // 4, note, _velocity(rng, c.level, accent / 100)))
    if c.index % SECTION_BARS == 0 and rng.random() < 0.5:
        p.notes.append((c.t0, q // 2, CRASH, _velocity(rng, c.level, 0.1)))


def _to_score(bpm: float, parts: dict[str, _Part], drums: _Part | None):
    """The parts as a ``symusic.Score``, one track per part that plays (drums last)."""
    from symusic import ControlChange, Note, Score, Tempo, Track

    score = Score(TICKS_PER_QUARTER)
    score.tempos.append(Tempo(0, qpm=bpm))
    for role, part in list(parts.items()) + ([("drums", drums)] if drums is not None else []):
        if not part.notes:
            continue
        track = Track(name=role, program=part.program, is_drum=part.is_drum)
        for start, dur, pitch, vel in sorted(part.notes):
            track.notes.append(Note(start, dur, pitch, vel))
        for tick, value in part.pedal:
            track.controls.append(ControlChange(tick, 64, value))
        score.tracks.append(track)
    return score


def generate_piece(seed: int, seconds: float = 30.0, style: str | None = None):
    """One generated piece as a ``symusic.Score`` (ticks, 480 per quarter) of about ``seconds``.

    The seed decides everything: the style (unless ``style`` names one of :data:`STYLES`), key,
    tempo, the programs of each part, the dynamics curve and where sections drop out. Returns the
    score; ``score.tracks`` hold one track per part (drums on channel 10).
    """
    # Every choice comes from one generator in a fixed order (the helpers draw in turn), so a seed
    # keeps giving the same piece: the feature caches and the test split depend on it.
    rng = np.random.default_rng(seed)
    by_name = {s.name: s for s in STYLES}
    st = by_name[style] if style is not None else STYLES[int(rng.integers(len(STYLES)))]
    bpm = float(rng.integers(st.tempo[0], st.tempo[1] + 1))
    bar = st.beats * TICKS_PER_QUARTER
    n_bars = max(2, int(round(seconds * bpm / 60 / st.beats)))
    key = int(rng.integers(0, 12))
    progression = PROGRESSIONS[st.progressions[int(rng.integers(len(st.progressions)))]]
    parts, drums = _choose_parts(rng, st)
    base, levels = _dynamics(rng, n_bars)
    active = _sections(rng, n_bars, set(parts) | ({"drums"} if drums else set()))

    pedal_comp = "comp" in parts and parts["comp"].program < 8 and rng.random() < 0.6
    for b in range(n_bars):
        root_deg, quality = progression[(b // st.chord_bars) % len(progression)]
        c = _Bar(st, rng, key, b, b * bar, key + root_deg, TRIAD[quality], float(levels[b]))
        on = active[b]
        if "bass" in parts and "bass" in on:
            _play_bass(parts["bass"], c)
        if "comp" in parts and "comp" in on:
            _play_comp(parts["comp"], c, pedal_comp)
        if "pad" in parts and "pad" in on and b % st.chord_bars == 0:
            _play_pad(parts["pad"], c)
        if "lead" in parts and "lead" in on:
            _play_lead(parts["lead"], c)
        if "perc" in parts and "perc" in on:
            _play_perc(parts["perc"], c)
        if drums is not None and "drums" in on:
            _play_drums(drums, c)

    # A final long chord held and left to ring (long sustains, decays into silence).
    if rng.random() < 0.5:
        held = parts.get("pad") or parts.get("comp") or next(iter(parts.values()))
        root_deg, quality = progression[0]
        for n in TRIAD[quality][:3]:
            _add(held, n_bars * bar, 3 * TICKS_PER_QUARTER, _fit(60 + (key + root_deg + n) % 12, 52, 76),
                 _velocity(rng, base, -0.1))  # fmt: skip
    return _to_score(bpm, parts, drums)


#: Every General MIDI drum key (35 acoustic bass drum .. 81 open triangle): a break's lone hits use them all.
GM_DRUM_KEYS = tuple(range(35, 82))

#: What one bar of a break plays (:func:`generate_break`): the kit alone, one stop-time hit, a few
#: lone hits far apart, a chord stab with a hit, or nothing.
BREAK_BARS = ("solo", "stop", "lone", "stab", "rest")


def _break_bar(p: _Part, stabs: _Part, kind: str, c: _Bar, groove: str) -> None:
    """One bar of a break (``kind`` from :data:`BREAK_BARS`) into the drum part and the stab part."""
    rng, q, bar = c.rng, TICKS_PER_QUARTER, c.length
    if kind == "solo":
        fill = rng.random() < 0.3
        for offset, note, accent in _drum_bar(groove, c.style.beats, q, rng, fill, c.style.swing):
            p.notes.append((c.t0 + offset, q // 4, note, _velocity(rng, c.level, accent / 100)))
    elif kind == "stop":  # everyone hits the downbeat together, then the bar rings out
        for note in (KICK, int(rng.choice([CRASH, SNARE, OPEN_HAT, CLAP]))):
            p.notes.append((c.t0, q // 4, note, _velocity(rng, c.level, 0.1)))
    elif kind == "lone":  # single hits at least a beat apart: each decays into silence
        pos = int(rng.integers(0, 2)) * q // 2
        while pos < bar:
            p.notes.append((c.t0 + pos, q // 4, int(rng.choice(GM_DRUM_KEYS)), _velocity(rng, c.level, 0.0)))
            pos += int(rng.choice([1, 2, 3])) * q
    elif kind == "stab":  # a short chord over a kick, then silence
        voicing = [_fit(60 + (c.root + n) % 12, 48, 76) for n in c.chord]
        for pitch in voicing:
            _add(stabs, c.t0, int(rng.choice([q // 4, q // 2])), pitch, _velocity(rng, c.level, 0.0))
        p.notes.append((c.t0, q // 4, KICK, _velocity(rng, c.level, 0.1)))


def generate_break(seed: int, seconds: float = 30.0):
    """A generated *break* piece as a ``symusic.Score``: the drum kit mostly alone, with gaps.

    Band music leaves drums alone rarely (about 0.5% of :func:`generate_piece`'s frames), so a model
    fitted on it never sees a hit decay into silence. Each bar here is one of :data:`BREAK_BARS`
    (a groove of any style with fills, a stop-time hit, lone hits of every GM drum key a beat or more
    apart, a short chord stab over a kick, or a rest), at a dynamic level from pp to ff.
    """
    rng = np.random.default_rng(seed)
    grooves = [s for s in STYLES if s.groove is not None]
    st = grooves[int(rng.integers(len(grooves)))]
    bpm = float(rng.integers(st.tempo[0], st.tempo[1] + 1))
    bar = st.beats * TICKS_PER_QUARTER
    n_bars = max(2, int(round(seconds * bpm / 60 / st.beats)))
    key = int(rng.integers(0, 12))
    progression = PROGRESSIONS[st.progressions[int(rng.integers(len(st.progressions)))]]
    drums = _Part(0, is_drum=True)
    stabs = _Part(int(rng.choice(ROLE_PROGRAMS["comp"] + ROLE_PROGRAMS["bass"])))
    _, levels = _dynamics(rng, n_bars)
    weights = np.array([0.35, 0.2, 0.25, 0.1, 0.1])
    for b in range(n_bars):
        root_deg, quality = progression[b % len(progression)]
        c = _Bar(st, rng, key, b, b * bar, key + root_deg, TRIAD[quality], float(levels[b]))
        _break_bar(drums, stabs, str(rng.choice(BREAK_BARS, p=weights)), c, st.groove or "rock")
    return _to_score(bpm, {"stabs": stabs}, drums)


#: The generators of named sets: ``idioms`` (band music) and ``breaks`` (the kit alone, with gaps).
GENERATORS = {"idioms": generate_piece, "breaks": generate_break}


def generate_set(
    count: int, name: str = "idioms", seconds: float = 30.0, splits: Sequence[str] | None = None
) -> list[tuple[str, str, object]]:
    """``count`` pieces as ``(piece id, split, score)``, optionally only those of ``splits``."""
    out = []
    for i in range(count):
        split = idiom_split(i)
        if splits is not None and split not in splits:
            continue
        generate = GENERATORS.get(name, generate_piece)
        out.append((f"{name}_{i:04d}", split, generate(seed_for(name, i), seconds=seconds)))
    return out


#: How many pieces the bundled model's training set generated (``specdiff prepare idioms:1600``);
#: its test split is what ``specdiff evaluate --idioms-split test`` plays.
DEFAULT_COUNT = 1600


def write_split(folder, split: str = "test", count: int = DEFAULT_COUNT, name: str = "idioms",
                seconds: float = 30.0) -> list:  # fmt: skip
    """Write the pieces of ``split`` among the first ``count`` generated ones as MIDI files
    ``folder/<name>_<index>.mid`` (the same pieces, seeds and names as the feature cache's);
    returns their paths."""
    from pathlib import Path

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(count):
        if idiom_split(i) != split:
            continue
        path = folder / f"{name}_{i:04d}.mid"
        if not path.is_file():
            generate_piece(seed_for(name, i), seconds=seconds).dump_midi(str(path))
        paths.append(path)
    return paths


__all__ = ["STYLES", "ROLE_PROGRAMS", "DEFAULT_COUNT", "GENERATORS", "generate_break", "generate_piece",
           "generate_set", "idiom_split", "seed_for", "write_split"]  # fmt: skip
