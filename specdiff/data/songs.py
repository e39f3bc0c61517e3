"""Songs to train on: (MIDI, audio) pairs found in a folder, MAESTRO, Slakh2100, MIDI files to render
with a SoundFont, generated pieces; their splits."""

from __future__ import annotations

import csv
import dataclasses
import hashlib
import json
import logging
import os
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from specdiff.constants import SAMPLE_RATE
from specdiff.errors import AudioError, MidiError, SpecdiffError

if TYPE_CHECKING:
    from specdiff.midi.reader import Note

log = logging.getLogger(__name__)

AUDIO_EXTENSIONS = (".wav", ".flac", ".ogg", ".mp3", ".aiff", ".aif")
MIDI_EXTENSIONS = (".mid", ".midi")
SPLITS = ("train", "validation", "test")
_SPLIT_ALIASES = {"train": "train", "training": "train", "validation": "validation",
                  "valid": "validation", "val": "validation", "dev": "validation",
                  "test": "test", "eval": "test"}  # fmt: skip
AUTO_VALIDATION_PERCENT = 5  # songs without a known split: this % (by hash) go to validation


# ============================================================================================
# Song pairs
# ============================================================================================


@dataclass(frozen=True, kw_only=True)
class SongPair:
    """One training song; ``load`` gives (16 kHz mono float32 audio, notes, total_time)."""

    song_id: str  # unique key in the cache, a relative path with "/" separators
    split: str = "train"

    def load(self) -> tuple[np.ndarray, list[Note], float]:
        raise NotImplementedError

    @property
    def source(self) -> str:
        return type(self).__name__

    @property
    def timbre(self) -> str | None:
        """The name of the sound this song's audio has (a SoundFont's name for renders), or None
        for recordings; the cache stores it so a model can be conditioned on it."""
        return None


@dataclass(frozen=True, kw_only=True)
class AudioMidiPair(SongPair):
    """A recording and its aligned MIDI file (generic folders, MAESTRO)."""

    midi: str
    audio: str

    def load(self) -> tuple[np.ndarray, list[Note], float]:
        from specdiff.audio.files import load_audio
        from specdiff.midi.reader import midi_to_notes

        notes, total_time = midi_to_notes(self.midi, slakh_programs=False)  # the cache keeps GM programs
        return load_audio(self.audio), notes, total_time

    @property
    def source(self) -> str:
        return f"{self.audio} + {self.midi}"


@dataclass(frozen=True, kw_only=True)
class SlakhMix(SongPair):
    """A sub-mix of some stems of one Slakh2100 track (ORIGINAL.md §4.4).

    The stems' audio is summed and peak-normalised; their MIDI is merged with each stem's
    program (mapped to its Slakh class, ORIGINAL.md §2.5) and drum flag from ``metadata.yaml``, then
    ``trim_overlapping_notes`` is applied as MSD does for Slakh.
    """

    track_dir: str
    stems: tuple[str, ...]  # e.g. ("S00", "S03")
    programs: tuple[int, ...]
    drums: tuple[bool, ...]

    def load(self) -> tuple[np.ndarray, list[Note], float]:
        from specdiff.audio.files import load_audio
        from specdiff.data.render import PEAK
        from specdiff.midi.reader import Note, midi_to_notes

        track = Path(self.track_dir)
        audios, notes = [], []
        for stem, program, is_drum in zip(self.stems, self.programs, self.drums):
            audios.append(load_audio(_find_audio(track / "stems", stem)))
            try:
                stem_notes, _ = midi_to_notes(track / "MIDI" / f"{stem}.mid")
            except MidiError as exc:
                if "no notes" in str(exc).lower():
                    continue  # a silent stem: audio only
                raise
            notes += [Note(n.pitch, n.start, n.end, n.velocity, program, is_drum) for n in stem_notes]
        if not notes:
            raise MidiError(f"{track.name}: stems {','.join(self.stems)} have no notes")
        mix = np.zeros(max(len(a) for a in audios), np.float32)
        for a in audios:
            mix[: len(a)] += a
        top = float(np.abs(mix).max())
        if top > 0:
            mix *= np.float32(PEAK / top)
        notes = trim_overlapping_notes(notes)
        return mix, notes, max(n.end for n in notes)

    @property
    def source(self) -> str:
        return f"{self.track_dir} stems {'+'.join(self.stems)}"


@dataclass(frozen=True, kw_only=True)
class RenderedMidi(SongPair):
    """A MIDI file rendered with a SoundFont (specdiff.data.render), optionally with random programs."""

    midi: str
    program_seed: int | None = None  # None keeps the file's programs
    families: tuple[str, ...] | None = None
    soundfont: str | None = None
    backend: str = "auto"

    def load(self) -> tuple[np.ndarray, list[Note], float]:
        from specdiff.data.render import load_score, reassign_programs, render_midi
        from specdiff.midi.reader import midi_to_notes

        if self.program_seed is None:
            midi: Any = self.midi
            score = load_score(self.midi)
        else:
            rng = np.random.default_rng(self.program_seed)
            score = reassign_programs(self.midi, rng, families=self.families)
            midi = score.dumps_midi()  # tokens and audio come from the same modified file
        notes, total_time = midi_to_notes(midi, slakh_programs=False)  # the cache keeps GM programs
        audio = render_midi(score, SAMPLE_RATE, soundfont=self.soundfont, backend=self.backend)
        return audio, notes, total_time

    @property
    def source(self) -> str:
        programs = "" if self.program_seed is None else f" (programs seed {self.program_seed})"
        return f"render {self.midi}{programs}"

    @property
    def timbre(self) -> str | None:
        from specdiff.data.render import timbre_name

        return timbre_name(self.soundfont)


@dataclass(frozen=True, kw_only=True)
class IdiomPiece(SongPair):
    """A generated piece (``specdiff.data.idioms``) rendered with a SoundFont."""

    seed: int
    seconds: float = 30.0
    soundfont: str | None = None
    backend: str = "auto"
    generator: str = "idioms"  # a key of specdiff.data.idioms.GENERATORS

    def load(self) -> tuple[np.ndarray, list[Note], float]:
        from specdiff.data.idioms import GENERATORS
        from specdiff.data.render import render_midi
        from specdiff.midi.reader import midi_to_notes

        score = GENERATORS[self.generator](self.seed, seconds=self.seconds)
        notes, total_time = midi_to_notes(score.dumps_midi(), slakh_programs=False)  # the cache keeps GM programs
        audio = render_midi(score, SAMPLE_RATE, soundfont=self.soundfont, backend=self.backend)
        return audio, notes, total_time

    @property
    def source(self) -> str:
        return f"idiom piece seed {self.seed}"

    @property
    def timbre(self) -> str | None:
        from specdiff.data.render import timbre_name

        return timbre_name(self.soundfont)


def trim_overlapping_notes(notes: Sequence[Note]) -> list[Note]:
    """MT3 ``trim_overlapping_notes``: for each (pitch, program, is_drum), a note that overlaps
    the next one (by start time) is cut at the next one's start; zero-length notes are dropped."""
    from specdiff.midi.reader import Note

    ends = [n.end for n in notes]
    groups: dict[tuple[int, int, bool], list[int]] = {}
    for i, n in enumerate(notes):
        groups.setdefault((n.pitch, n.program, n.is_drum), []).append(i)
    for idx in groups.values():
        idx.sort(key=lambda i: notes[i].start)  # stable, as Python's sorted in MT3
        for a, b in zip(idx[:-1], idx[1:]):
            if ends[a] > notes[b].start:
                ends[a] = notes[b].start
    return [Note(n.pitch, n.start, e, n.velocity, n.program, n.is_drum)
            for n, e in zip(notes, ends) if n.start < e]  # fmt: skip


# --------------------------------------------------------------------------------------------
# Discovery


def _find_audio(folder: Path, stem: str) -> Path:
    for ext in AUDIO_EXTENSIONS:
        path = folder / f"{stem}{ext}"
        if path.is_file():
            return path
    raise AudioError(f"no audio file for {folder / stem}")


def _song_id(rel: str) -> str:
    """A filesystem-safe relative path (no '..', no odd characters)."""
    parts = [re.sub(r"[^A-Za-z0-9._+-]", "_", p) for p in rel.replace("\\", "/").split("/")]
    parts = [p.lstrip(".") or "_" for p in parts if p not in ("", ".")]
    return "/".join(parts)


def _split_from_path(rel: Path) -> str | None:
    for part in rel.parts[:-1]:
        split = _SPLIT_ALIASES.get(part.lower())
        if split:
            return split
    return None


def _auto_split(group: str) -> str:
    """Deterministic hold-out for songs without a known split (so validation is never empty)."""
    h = int(hashlib.sha1(group.encode()).hexdigest()[:8], 16)
    return "validation" if h % 100 < AUTO_VALIDATION_PERCENT else "train"


def folder_pairs(root: str | os.PathLike, split: str | None = None) -> list[AudioMidiPair]:
    """``x.mid``/``x.midi`` files with an audio file of the same name (wav/flac/ogg/...) beside.

    The split comes from ``split``, else a ``train``/``validation``/``test`` folder in the
    path, else a fixed 5% hold-out (by hash of the name) goes to validation.
    """
    root = Path(root)
    if not root.is_dir():
        raise SpecdiffError(f"not a folder: {root}")
    pairs = []
    for midi in sorted(p for p in root.rglob("*") if p.suffix.lower() in MIDI_EXTENSIONS):
        try:
            audio = _find_audio(midi.parent, midi.stem)
        except AudioError:
            continue
        rel = midi.relative_to(root).with_suffix("")
        song_split = split or _split_from_path(rel) or _auto_split(rel.as_posix())
        pairs.append(AudioMidiPair(song_id=_song_id(rel.as_posix()), split=song_split,
                                   midi=str(midi), audio=str(audio)))  # fmt: skip
    return pairs


def maestro_pairs(root: str | os.PathLike) -> list[AudioMidiPair]:
    """MAESTRO (v3 or v2): the metadata ``maestro-v*.csv`` or ``.json`` gives files and splits."""
    root = Path(root)
    meta = sorted(root.glob("maestro-v*.csv")) or sorted(root.glob("maestro-v*.json"))
    if not meta:
        raise SpecdiffError(f"no maestro-v*.csv / .json metadata in {root}")
    path = meta[-1]
    if path.suffix == ".csv":
        with path.open(newline="", encoding="utf-8") as f:
            rows = list(csv.DictReader(f))
    else:
        table = json.loads(path.read_text(encoding="utf-8"))
        if isinstance(table, list):  # v2 json: a list of records
            rows = table
        else:  # v3 json: {column: {row: value}}
            keys = list(table["midi_filename"])
            rows = [{col: table[col][k] for col in table} for k in keys]
    pairs = []
    for row in rows:
        split = _SPLIT_ALIASES.get(str(row["split"]).lower())
        if split is None:
            raise SpecdiffError(f"{path.name}: unknown split {row['split']!r}")
        rel = Path(row["midi_filename"]).with_suffix("")
        pairs.append(AudioMidiPair(song_id=_song_id(f"maestro/{rel.as_posix()}"), split=split,
                                   midi=str(root / row["midi_filename"]),
                                   audio=str(root / row["audio_filename"])))  # fmt: skip
    return pairs


def _read_yaml(path: Path) -> dict:
    try:
        import yaml
    except ImportError:
        raise SpecdiffError("reading Slakh metadata needs PyYAML: pip install pyyaml") from None
    with path.open(encoding="utf-8") as f:
        return yaml.safe_load(f)


def slakh_pairs(
    root: str | os.PathLike,
    subsets_per_song: int = 10,
    seed: int = 0,
    include_omitted: bool = False,
) -> list[SlakhMix]:
    """Slakh2100 tracks (``TrackXXXXX/{metadata.yaml, MIDI/Sxx.mid, stems/Sxx.flac}``).

    Each track gives up to ``subsets_per_song`` distinct sub-mixes (ORIGINAL.md §4.4): the full mix,
    then random subsets of the rendered stems (subset size uniform in 1..#stems). The split is
    the ``train``/``validation``/``test`` folder the track lives in (``omitted`` is skipped).
    """
    from specdiff.midi.reader import program_to_slakh

    root = Path(root)
    pairs: list[SlakhMix] = []
    for meta_path in sorted(root.rglob("metadata.yaml")):
        track = meta_path.parent
        rel = track.relative_to(root)
        if "omitted" in rel.parts and not include_omitted:
            continue
        split = _split_from_path(rel / "x") or _auto_split(rel.as_posix())
        try:
            meta = _read_yaml(meta_path)
            stems = []
            for name, info in sorted((meta.get("stems") or {}).items()):
                if not info.get("audio_rendered", True) or not (track / "MIDI" / f"{name}.mid").is_file():
                    continue
                try:
                    _find_audio(track / "stems", name)
                except AudioError:
                    continue
                drum = bool(info.get("is_drum", False))
                program = 0 if drum else program_to_slakh(int(info.get("program_num", 0)))
                stems.append((name, program, drum))
        except Exception as exc:  # a broken metadata file skips the track, not the dataset
            log.warning("skipping Slakh track %s: %s", track, exc)
            continue
        if not stems:
            continue
        rng = np.random.default_rng([seed, int(hashlib.sha1(rel.as_posix().encode()).hexdigest()[:8], 16)])
        subsets = [tuple(range(len(stems)))]
        max_distinct = 2 ** len(stems) - 1
        attempts = 0
        while len(subsets) < min(subsets_per_song, max_distinct) and attempts < 100 * subsets_per_song:
            attempts += 1
            size = int(rng.integers(1, len(stems) + 1))
            subset = tuple(sorted(rng.choice(len(stems), size=size, replace=False).tolist()))
            if subset not in subsets:
                subsets.append(subset)
        for k, subset in enumerate(subsets[:subsets_per_song]):
            chosen = [stems[i] for i in subset]
            pairs.append(SlakhMix(
                song_id=_song_id(f"slakh/{rel.as_posix()}/mix{k:02d}"), split=split,
                track_dir=str(track), stems=tuple(s[0] for s in chosen),
                programs=tuple(s[1] for s in chosen), drums=tuple(s[2] for s in chosen),
            ))  # fmt: skip
    return pairs


def render_pairs(
    midi_files: str | os.PathLike | Iterable[str | os.PathLike],
    variants: int = 1,
    reassign: bool = False,
    families: Iterable[str] | None = None,
    seed: int = 0,
    soundfont: str | os.PathLike | None = None,
    backend: str = "auto",
    splits: dict[str, str] | None = None,
) -> list[RenderedMidi]:
    """MIDI files (a folder, searched recursively, or a list) to render with a SoundFont.

    With ``reassign`` each of the ``variants`` renders gets its own random programs (seeded by
    ``seed``, the file and the variant). ``splits`` maps a file path to its split; otherwise a
    split folder in the path or the fixed 5% hold-out decides. All variants of one file share
    its split.
    """
    if isinstance(midi_files, (str, os.PathLike)):
        root = Path(midi_files)
        if root.is_dir():
            files = sorted(p for p in root.rglob("*") if p.suffix.lower() in MIDI_EXTENSIONS)
        else:
            root, files = root.parent, [root]
    else:
        files = [Path(p) for p in midi_files]
        root = Path(os.path.commonpath([str(p.parent.resolve()) for p in files])) if files else Path(".")
    if not reassign:
        variants = 1
    fams = tuple(families) if families is not None else None
    pairs = []
    for midi in files:
        try:
            rel = midi.resolve().relative_to(root.resolve()).with_suffix("")
        except ValueError:
            rel = Path(midi.stem)
        split = (splits or {}).get(str(midi)) or _split_from_path(rel) or _auto_split(rel.as_posix())
        for v in range(variants):
            program_seed = None
            if reassign:
                program_seed = int(hashlib.sha1(f"{seed}:{rel.as_posix()}:{v}".encode()).hexdigest()[:12], 16)
            song = f"render/{rel.as_posix()}" + (f"/v{v}" if reassign else "")
            pairs.append(RenderedMidi(
                song_id=_song_id(song), split=split, midi=str(midi), program_seed=program_seed,
                families=fams, soundfont=None if soundfont is None else str(soundfont), backend=backend,
            ))  # fmt: skip
    return pairs


def demo_pairs(variants: int = 1, seed: int = 0, **kwargs) -> list[RenderedMidi]:
    """The bundled demo corpus (specdiff.data.corpus) rendered, with its fixed train/validation/test
    split. ``variants > 1`` adds renders with randomly re-assigned programs."""
    from specdiff.data import corpus

    files = corpus.demo_midi_files()
    splits = {str(p): corpus.split_of(p) for p in files}
    pairs = render_pairs(files, splits=splits, **kwargs)
    if variants > 1:
        pairs += render_pairs(files, variants=variants - 1, reassign=True, seed=seed, splits=splits, **kwargs)
    return pairs


def idiom_pairs(count: int = 400, seconds: float = 30.0, name: str = "idioms", **kwargs) -> list[IdiomPiece]:
    """``count`` generated pieces (``specdiff.data.idioms``) with their fixed train/validation/test split
    (:func:`specdiff.data.idioms.idiom_split`); ``name`` ``breaks`` generates drum breaks instead
    (:func:`specdiff.data.idioms.generate_break`); ``kwargs``: soundfont, backend."""
    from specdiff.data.idioms import GENERATORS, idiom_split, seed_for

    generator = name if name in GENERATORS else "idioms"
    return [
        IdiomPiece(song_id=f"{name}/{name}_{i:04d}", split=idiom_split(i), seed=seed_for(name, i), seconds=seconds,
                   generator=generator, **kwargs)
        for i in range(count)
    ]  # fmt: skip


def with_soundfonts(pairs: Sequence[SongPair], soundfonts: Sequence[str | None]) -> list[SongPair]:
    """Every rendered pair once per SoundFont (the first keeps its song id, the others get
    ``@NAME`` appended, NAME the SoundFont's :func:`specdiff.data.render.timbre_name`); other pairs once."""
    from specdiff.data.render import timbre_name

    out: list[SongPair] = []
    for k, soundfont in enumerate(soundfonts or [None]):
        for pair in pairs:
            if not hasattr(pair, "soundfont"):
                if k == 0:
                    out.append(pair)
                continue
            song_id = pair.song_id if k == 0 else f"{pair.song_id}@{timbre_name(soundfont)}"
            out.append(dataclasses.replace(pair, song_id=song_id, soundfont=soundfont))
    return out


#: Sources generated by ``specdiff.data.idioms`` (its ``GENERATORS``): ``NAME[:COUNT]``.
GENERATED_KINDS = ("idioms", "breaks")


def detect_source(source: str | os.PathLike) -> tuple[str, Path | None]:
    """``(kind, path)`` of a data source: kind is demo, idioms, breaks, maestro, slakh, folder or render.

    ``"maestro:PATH"``, ``"slakh:PATH"``, ``"folder:PATH"``, ``"render:PATH"`` name the kind; a bare
    path is detected: MAESTRO metadata -> maestro, ``metadata.yaml`` files -> slakh, MIDI files with
    audio beside -> folder, else render.
    """
    text = str(source)
    if text == "demo":
        return "demo", None
    for generated in GENERATED_KINDS:
        if text == generated or text.startswith(generated + ":"):
            return generated, None
    kind, _, rest = text.partition(":")
    if kind in ("maestro", "slakh", "folder", "render") and rest:
        path = Path(rest)
    else:
        kind, path = "", Path(text)
    if not path.exists():
        raise SpecdiffError(f"data source not found: {path}")
    if not kind:
        if path.is_dir() and (any(path.glob("maestro-v*.csv")) or any(path.glob("maestro-v*.json"))):
            kind = "maestro"
        elif path.is_dir() and next(path.rglob("metadata.yaml"), None) is not None:
            kind = "slakh"
        elif path.is_dir() and folder_pairs(path):
            kind = "folder"
        else:
            kind = "render"
    return kind, path


def discover(source: str | os.PathLike, **kwargs) -> list[SongPair]:
    """Song pairs named by ``source`` (see :func:`detect_source`); ``kwargs`` go to the kind's
    function (:func:`demo_pairs`, :func:`maestro_pairs`, :func:`slakh_pairs`, :func:`folder_pairs`,
    :func:`render_pairs`)."""
    kind, path = detect_source(source)
    if kind == "demo":
        return list(demo_pairs(**kwargs))
    if kind in GENERATED_KINDS:
        count = str(source).partition(":")[2]
        return list(idiom_pairs(int(count) if count else 400, name=kind, **kwargs))
    if kind == "maestro":
        return list(maestro_pairs(path, **kwargs))
    if kind == "slakh":
        return list(slakh_pairs(path, **kwargs))
    if kind == "folder":
        return list(folder_pairs(path, **kwargs))
    return list(render_pairs(path, **kwargs))


def discover_with_options(
    source: str | os.PathLike,
    variants: int = 1,
    seed: int = 0,
    soundfont: str | os.PathLike | None = None,
    backend: str = "auto",
    subsets_per_song: int = 10,
) -> list[SongPair]:
    """:func:`discover` with the command line's options, each passed to the kinds it applies to.

    ``variants``: renders per MIDI file (demo, render); all but the first get random programs.
    ``seed``: program re-assignment (demo, render) or Slakh sub-mix choice. ``soundfont``/``backend``:
    the renderer (demo, render). ``subsets_per_song``: Slakh sub-mixes per track.
    """
    kind, _ = detect_source(source)
    render = dict(soundfont=soundfont, backend=backend)
    if kind in GENERATED_KINDS:
        return discover(source, **render)
    if kind == "demo":
        return discover(source, variants=variants, seed=seed, **render)
    if kind == "render":
        pairs = discover(source, **render)
        if variants > 1:
            pairs += discover(source, variants=variants - 1, reassign=True, seed=seed, **render)
        return pairs
    if kind == "slakh":
        return discover(source, subsets_per_song=subsets_per_song, seed=seed)
    return discover(source)
