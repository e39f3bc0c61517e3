"""Training data: (MIDI, audio) pairs -> feature cache -> ``ChunkDataset`` (ORIGINAL.md §4.2, §4.4).

Three stages:

1. **Pairs.** A ``SongPair`` knows how to load one song as (16 kHz mono audio, notes,
   total_time). ``discover`` finds them in a generic paired folder (``x.mid`` + ``x.wav``),
   MAESTRO v3, Slakh2100 (random stem sub-mixes) or any folder of MIDI files to render.
2. **Cache.** ``build_cache`` loads pairs in worker processes and stores per song the log-mel
   features of the whole song (float16, feature space) and its notes. It is resumable and never
   stops on a bad file (the reason goes to ``failures.json``).
3. **Examples.** ``ChunkDataset`` item ``i`` is a deterministic function of ``(seed, i)``: a
   random target window with the ground-truth context before it and the window's note tokens.
   It only slices memory-mapped arrays: no MIDI parsing or mel computation per item.

Cache layout::

    cache_dir/index.json             songs with split, frame count, total_time, source
    cache_dir/failures.json          song id -> reason, for songs that could not be cached
    cache_dir/songs/<id>/mel.npy     float16 [frames, 128] natural-log mel (ORIGINAL.md §1)
    cache_dir/songs/<id>/notes.npy   NOTE_DTYPE structured array (sustain + Slakh programs applied)
    cache_dir/songs/<id>/meta.json   written last: marks the song as cached
"""

from __future__ import annotations

import csv
import dataclasses
import hashlib
import json
import logging
import os
import re
import time
import warnings
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from specdiff.atomic import atomic_write, atomic_write_text
from specdiff.constants import HOP_LENGTH, N_MELS, SAMPLE_RATE, SEGMENT_FRAMES
from specdiff.errors import AudioError, MidiError, SpecdiffError

if TYPE_CHECKING:
    from specdiff.midi.reader import Note
    from specdiff.midi.tokenizer import EventIndex

log = logging.getLogger(__name__)

CONTEXT_FRAMES = SEGMENT_FRAMES  # ORIGINAL.md §4.2
TARGET_FRAMES = SEGMENT_FRAMES
PIECE_FRAMES = 2000  # MSD MAX_NUM_CACHED_FRAMES: songs are cut into pieces of <= 40 s
FEATURE_CHUNK_FRAMES = 3000  # log-mel is computed 60 s at a time (bounded STFT memory)
CACHE_FORMAT = 1

AUDIO_EXTENSIONS = (".wav", ".flac", ".ogg", ".mp3", ".aiff", ".aif")
MIDI_EXTENSIONS = (".mid", ".midi")
SPLITS = ("train", "validation", "test")
_SPLIT_ALIASES = {"train": "train", "training": "train", "validation": "validation",
                  "valid": "validation", "val": "validation", "dev": "validation",
                  "test": "test", "eval": "test"}  # fmt: skip
AUTO_VALIDATION_PERCENT = 5  # songs without a known split: this % (by hash) go to validation

NOTE_DTYPE = np.dtype([
    ("pitch", np.uint8), ("start", np.float64), ("end", np.float64),
    ("velocity", np.uint8), ("program", np.uint8), ("is_drum", np.bool_),
])  # fmt: skip


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

        notes, total_time = midi_to_notes(self.midi)
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
        notes, total_time = midi_to_notes(midi)
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

    def load(self) -> tuple[np.ndarray, list[Note], float]:
        from specdiff.data.idioms import generate_piece
        from specdiff.data.render import render_midi
        from specdiff.midi.reader import midi_to_notes

        score = generate_piece(self.seed, seconds=self.seconds)
        notes, total_time = midi_to_notes(score.dumps_midi())
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
    (:func:`specdiff.data.idioms.idiom_split`); ``kwargs``: soundfont, backend."""
    from specdiff.data.idioms import idiom_split, seed_for

    return [
        IdiomPiece(song_id=f"{name}/{name}_{i:04d}", split=idiom_split(i), seed=seed_for(name, i), seconds=seconds,
                   **kwargs)
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


def detect_source(source: str | os.PathLike) -> tuple[str, Path | None]:
    """``(kind, path)`` of a data source: kind is demo, maestro, slakh, folder or render.

    ``"maestro:PATH"``, ``"slakh:PATH"``, ``"folder:PATH"``, ``"render:PATH"`` name the kind; a bare
    path is detected: MAESTRO metadata -> maestro, ``metadata.yaml`` files -> slakh, MIDI files with
    audio beside -> folder, else render.
    """
    text = str(source)
    if text == "demo":
        return "demo", None
    if text == "idioms" or text.startswith("idioms:"):
        return "idioms", None
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
    if kind == "idioms":
        count = str(source).partition(":")[2]
        return list(idiom_pairs(int(count) if count else 400, **kwargs))
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
    if kind == "idioms":
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


# ============================================================================================
# Feature cache
# ============================================================================================


def song_features(audio: np.ndarray) -> np.ndarray:
    """Log-mel features of a whole song, float16 ``[ceil(N / 320), 128]`` (ORIGINAL.md §1).

    Computed in 60 s chunks to bound memory. A frame covers samples [320 f, 320 f + 640), so a
    chunk of frames [a, b) needs samples [320 a, 320 b + 320): every frame sees exactly the
    audio it would see in one whole-song STFT (no chunk-edge artifacts, unlike per-segment
    features, which is why MSD added 16 extra frames, ORIGINAL.md §1).
    """
    from specdiff.audio.mel import log_mel

    audio = np.ascontiguousarray(audio, dtype=np.float32)
    total = -(-len(audio) // HOP_LENGTH)
    out = np.empty((total, N_MELS), np.float16)
    with torch.no_grad():
        for a in range(0, total, FEATURE_CHUNK_FRAMES):
            b = min(a + FEATURE_CHUNK_FRAMES, total)
            piece = torch.from_numpy(audio[a * HOP_LENGTH : b * HOP_LENGTH + HOP_LENGTH])
            out[a:b] = log_mel(piece)[: b - a].numpy().astype(np.float16)
    return out


def notes_to_array(notes: Sequence[Note]) -> np.ndarray:
    arr = np.zeros(len(notes), NOTE_DTYPE)
    for name in NOTE_DTYPE.names:
        arr[name] = [getattr(n, name) for n in notes]
    return arr


def array_to_notes(arr: np.ndarray) -> list[Note]:
    from specdiff.midi.reader import Note

    return [Note(int(p), float(s), float(e), int(v), int(g), bool(d))
            for p, s, e, v, g, d in zip(arr["pitch"], arr["start"], arr["end"], arr["velocity"],
                                        arr["program"], arr["is_drum"])]  # fmt: skip


def _save_npy(path: Path, array: np.ndarray) -> None:
    with open(path, "wb") as f:  # a file object: np.save would append ".npy" to a bare temp path
        np.save(f, array)


def _write_json(path: Path, obj) -> None:
    atomic_write_text(path, json.dumps(obj, indent=1) + "\n")


def _song_dir(cache_dir: Path, song_id: str) -> Path:
    return cache_dir / "songs" / song_id


def _cache_song(pair: SongPair, cache_dir: str) -> tuple[str, dict | None, str | None]:
    """Worker: load, featurise and store one song. Returns (id, meta, None) or (id, None, reason)."""
    try:
        audio, notes, total_time = pair.load()
        if audio.ndim != 1 or len(audio) < 2 * HOP_LENGTH:
            raise AudioError(f"audio too short ({len(audio)} samples)")
        if not np.isfinite(audio).all():
            raise AudioError("audio holds NaN or infinite samples")
        mel = song_features(audio)
        folder = _song_dir(Path(cache_dir), pair.song_id)
        atomic_write(folder / "mel.npy", lambda tmp: _save_npy(tmp, mel))
        atomic_write(folder / "notes.npy", lambda tmp: _save_npy(tmp, notes_to_array(notes)))
        meta = {"id": pair.song_id, "split": pair.split, "frames": int(len(mel)),
                "total_time": float(total_time), "num_notes": len(notes), "source": pair.source}  # fmt: skip
        if pair.timbre is not None:
            meta["timbre"] = pair.timbre
        _write_json(folder / "meta.json", meta)  # last: marks the song as cached
        return pair.song_id, meta, None
    except Exception as exc:  # any failure skips this song only
        message = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        return pair.song_id, None, f"{type(exc).__name__}: {message}"


def _init_worker() -> None:
    torch.set_num_threads(1)  # one process per core; threads would oversubscribe


def _read_meta(cache_dir: Path, song_id: str) -> dict | None:
    path = _song_dir(cache_dir, song_id) / "meta.json"
    if not (path.is_file() and (path.parent / "mel.npy").is_file() and (path.parent / "notes.npy").is_file()):
        return None
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def build_cache(
    source: str | os.PathLike | Sequence[SongPair],
    cache_dir: str | os.PathLike,
    workers: int | None = None,
    progress: bool = True,
    **discover_kwargs,
) -> dict[str, Any]:
    """Preprocess song pairs into a feature cache (see the module docstring for the layout).

    ``source`` is a list of ``SongPair`` or a string for :func:`discover`. Songs already in the
    cache are skipped, so an interrupted run resumes; every file is written atomically. A song
    that fails to load is skipped with its reason logged and listed in ``failures.json``.
    ``workers`` processes share the work (default: all cores; 0 runs in this process).
    Returns counts: ``cached`` (new), ``skipped`` (already there), ``failed``, ``songs`` (in the
    index), ``seconds``.
    """
    from tqdm.auto import tqdm

    t0 = time.time()
    cache_dir = Path(cache_dir)
    cache_dir.mkdir(parents=True, exist_ok=True)
    pairs = discover(source, **discover_kwargs) if isinstance(source, (str, os.PathLike)) else list(source)
    ids = [p.song_id for p in pairs]
    if len(set(ids)) != len(ids):
        raise SpecdiffError("song ids are not unique")
    todo = [p for p in pairs if _read_meta(cache_dir, p.song_id) is None]
    failures: dict[str, str] = {}
    metas: dict[str, dict] = {}

    def done(song_id: str, meta: dict | None, reason: str | None) -> None:
        if meta is not None:
            metas[song_id] = meta
        else:
            failures[song_id] = reason or "unknown error"
            log.warning("skipped %s: %s", song_id, failures[song_id])

    bar = tqdm(total=len(todo), desc="caching songs", unit="song", disable=not progress)
    n_workers = (os.cpu_count() or 1) if workers is None else workers
    if n_workers <= 0 or len(todo) <= 1:
        for pair in todo:
            done(*_cache_song(pair, str(cache_dir)))
            bar.update()
    else:
        _run_pool(todo, cache_dir, min(n_workers, len(todo)), done, bar)
    bar.close()

    # The index covers every cached song of this cache (earlier runs' songs included).
    songs = []
    for meta_path in sorted((cache_dir / "songs").rglob("meta.json")) if (cache_dir / "songs").is_dir() else []:
        meta = _read_meta(cache_dir, meta_path.parent.relative_to(cache_dir / "songs").as_posix())
        if meta is not None:
            songs.append(meta)
    songs.sort(key=lambda m: m["id"])
    index = {"format": CACHE_FORMAT, "sample_rate": SAMPLE_RATE, "hop_length": HOP_LENGTH,
             "n_mels": N_MELS, "feature": "natural-log mel, float16 (ORIGINAL.md §1)", "songs": songs}  # fmt: skip
    _write_json(cache_dir / "index.json", index)
    _write_json(cache_dir / "failures.json", failures)
    return {"cached": len(metas), "skipped": len(pairs) - len(todo), "failed": len(failures),
            "songs": len(songs), "seconds": round(time.time() - t0, 2)}  # fmt: skip


def _run_pool(todo: list[SongPair], cache_dir: Path, n_workers: int, done, bar) -> None:
    """Run ``_cache_song`` over ``todo`` in a process pool; a crashed worker (e.g. a segfault in
    a decoder) fails only the songs it held, and the rest continue in a fresh pool."""
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor, as_completed
    from concurrent.futures.process import BrokenProcessPool

    ctx = multiprocessing.get_context("spawn")  # fork after torch/OpenMP init can deadlock
    remaining = list(todo)
    fruitless = 0  # consecutive pools that broke before finishing any song
    while remaining:
        finished = 0
        pending: dict = {}
        with ProcessPoolExecutor(n_workers, mp_context=ctx, initializer=_init_worker) as pool:
            for pair in remaining:
                pending[pool.submit(_cache_song, pair, str(cache_dir))] = pair
            remaining = []
            broken = False
            for future in as_completed(pending):
                pair = pending[future]
                try:
                    done(*future.result())
                    finished += 1
                except BrokenProcessPool:
                    if not broken:
                        broken = True
                        done(pair.song_id, None, "worker process crashed")
                    else:
                        remaining.append(pair)
                except Exception as exc:
                    done(pair.song_id, None, f"{type(exc).__name__}: {exc}")
                bar.update()
        bar.update(-len(remaining))
        fruitless = fruitless + 1 if broken and not finished else 0
        if fruitless >= 3 and remaining:
            raise SpecdiffError(
                "feature-cache worker processes crash on start-up (a script that calls build_cache with "
                "workers needs an `if __name__ == '__main__':` guard; or pass workers=0)"
            )


def load_index(cache_dir: str | os.PathLike) -> list[dict]:
    """The cached songs listed in ``cache_dir/index.json``."""
    path = Path(cache_dir) / "index.json"
    if not path.is_file():
        raise SpecdiffError(f"no feature cache in {cache_dir} (index.json missing): build one with build_cache")
    index = json.loads(path.read_text())
    if index.get("format") != CACHE_FORMAT:
        raise SpecdiffError(f"{path}: unsupported cache format {index.get('format')}")
    return index["songs"]


# ============================================================================================
# Training examples
# ============================================================================================


@dataclass
class TrainingExample:
    """One training example (collated to a batch by :func:`collate_examples`)."""

    tokens: torch.Tensor  # LongTensor[2048]: note tokens of the target window (PAD=0)
    context: torch.Tensor  # FloatTensor[256, 128]: previous <=256 frames, scaled, zero-padded
    context_mask: torch.Tensor  # BoolTensor[256]: True on the valid context frames (a prefix)
    target: torch.Tensor  # FloatTensor[256, 128]: scaled; frames past the piece end are -1
    timbre: torch.Tensor | None = None  # LongTensor[]: the song's timbre index (datasets given timbres)
    target_valid: torch.Tensor | None = None  # LongTensor[]: target frames before the piece end (feature caches)


def collate_examples(examples: Sequence[TrainingExample]) -> dict[str, torch.Tensor]:
    """Stack examples into a batch dict with keys tokens, context, context_mask, target."""
    batch = {key: torch.stack([getattr(ex, key) for ex in examples])
             for key in ("tokens", "context", "context_mask", "target")}  # fmt: skip
    if all(ex.timbre is not None for ex in examples):
        batch["timbre"] = torch.stack([ex.timbre for ex in examples])
    return batch


def _example_rng(seed: int, i: int) -> np.random.Generator:
    return np.random.default_rng([seed & 0xFFFFFFFF, (seed >> 32) & 0xFFFFFFFF, i])


class ChunkDataset(torch.utils.data.Dataset):
    """Map-style training examples from a feature cache (ORIGINAL.md §4.2).

    Item ``i`` is a deterministic function of ``(seed, i)``, so a data position is just a
    sample counter (resume, DDP shards). Each song is cut into pieces of <= ``piece_frames``
    frames, as MSD caches them; an item picks a piece uniformly among all pieces of the split
    (songs are thus weighted by their length), then ``start ~ U{-C, ..., n-C-2}`` within the
    piece of ``n`` frames. The context is frames ``[max(0, start), start + C)`` and the target
    ``[start + C, min(start + C + T, n))``, so about ``C / (n - 1)`` of the items (12.8% for full
    pieces) have a partial or empty context. The tokens are the note events of the target's
    valid frames (``tokenizer.tokenize_frames``). Features are scaled to [-1, 1] with clipping;
    the target is padded with -1 (silence), the context with 0 and masked.

    ``timbres`` (a model's timbre names): each item also carries its song's timbre index (the
    cache's ``timbre``; songs without one get the first, the default); a song whose timbre the
    list lacks is an error.
    """

    def __init__(
        self,
        cache_dir: str | os.PathLike,
        seed: int = 0,
        split: str | None = "train",
        epoch_size: int = 1_000_000,
        piece_frames: int = PIECE_FRAMES,
        context_frames: int = CONTEXT_FRAMES,
        target_frames: int = TARGET_FRAMES,
        timbres: Sequence[str] = (),
    ) -> None:
        self.cache_dir = Path(cache_dir)
        self.timbres = list(timbres)
        self.seed, self.split, self.epoch_size = int(seed), split, int(epoch_size)
        self.context_frames, self.target_frames = context_frames, target_frames
        songs = [s for s in load_index(cache_dir) if split is None or s["split"] == split]
        piece_song, piece_start, piece_len = [], [], []
        for k, song in enumerate(songs):
            for p0 in range(0, song["frames"], piece_frames):
                n = min(piece_frames, song["frames"] - p0)
                if n >= 2:  # the start range U{-C..n-C-2} needs at least two frames
                    piece_song.append(k)
                    piece_start.append(p0)
                    piece_len.append(n)
        if not piece_song:
            raise SpecdiffError(f"no {split or ''} songs in the feature cache {cache_dir}".replace("  ", " "))
        unknown = sorted({s["timbre"] for s in songs if s.get("timbre")} - set(self.timbres)) if self.timbres else []
        if unknown:
            raise SpecdiffError(f"the feature cache {cache_dir} has timbres {unknown} that the model lacks "
                                f"(it knows {self.timbres})")  # fmt: skip
        self.songs = songs
        self.piece_song = np.array(piece_song, np.int64)
        self.piece_start = np.array(piece_start, np.int64)
        self.piece_len = np.array(piece_len, np.int64)
        self._mels: dict[int, np.ndarray] = {}
        self._indexes: dict[int, EventIndex] = {}

    def __len__(self) -> int:
        return self.epoch_size

    def __getstate__(self) -> dict:  # DataLoader workers re-open the memory maps themselves
        state = self.__dict__.copy()
        state["_mels"], state["_indexes"] = {}, {}
        return state

    @property
    def num_frames(self) -> int:
        return int(sum(s["frames"] for s in self.songs))

    def mel(self, k: int) -> np.ndarray:
        """Song ``k``'s features (memory-mapped float16 [frames, 128])."""
        mel = self._mels.get(k)
        if mel is None:
            mel = np.load(_song_dir(self.cache_dir, self.songs[k]["id"]) / "mel.npy", mmap_mode="r")
            self._mels[k] = mel
        return mel

    def notes(self, k: int) -> list[Note]:
        return array_to_notes(np.load(_song_dir(self.cache_dir, self.songs[k]["id"]) / "notes.npy"))

    def event_index(self, k: int) -> EventIndex:
        """Song ``k``'s token index, computed once per process."""
        index = self._indexes.get(k)
        if index is None:
            from specdiff.midi.tokenizer import index_notes

            index = index_notes(self.notes(k), self.songs[k]["total_time"])
            self._indexes[k] = index
        return index

    def window(self, i: int) -> tuple[int, int, int, int]:
        """Item ``i``'s (song, context start frame, target start frame, target valid frames),
        frames counted from the song start."""
        if i < 0:
            raise IndexError(i)
        rng = _example_rng(self.seed, int(i))
        piece = int(rng.integers(len(self.piece_song)))
        k, p0, n = int(self.piece_song[piece]), int(self.piece_start[piece]), int(self.piece_len[piece])
        c = self.context_frames
        start = int(rng.integers(-c, n - c - 2, endpoint=True))
        target_start = start + c
        valid = min(self.target_frames, n - target_start)
        return k, p0 + max(0, start), p0 + target_start, valid

    def __getitem__(self, i: int) -> TrainingExample:
        from specdiff.audio.mel import scale_features
        from specdiff.midi.tokenizer import TokenTruncationWarning, tokenize_frames

        k, ctx_start, tgt_start, valid = self.window(i)
        mel = self.mel(k)
        n_ctx = tgt_start - ctx_start
        context = torch.zeros(self.context_frames, N_MELS)
        if n_ctx:
            ctx = torch.from_numpy(np.asarray(mel[ctx_start:tgt_start], np.float32))
            context[:n_ctx] = scale_features(ctx, clip=True)
        context_mask = torch.arange(self.context_frames) < n_ctx
        target = torch.full((self.target_frames, N_MELS), -1.0)
        tgt = torch.from_numpy(np.asarray(mel[tgt_start : tgt_start + valid], np.float32))
        target[:valid] = scale_features(tgt, clip=True)
        with warnings.catch_warnings():  # a very dense window keeps its first 2047 events
            warnings.simplefilter("ignore", TokenTruncationWarning)
            tokens = tokenize_frames(self.event_index(k), tgt_start, valid)
        timbre = None
        if self.timbres:
            name = self.songs[k].get("timbre")
            timbre = torch.tensor(self.timbres.index(name) if name else 0, dtype=torch.long)
        return TrainingExample(
            tokens=torch.tensor(tokens, dtype=torch.long),
            context=context,
            context_mask=context_mask,
            target=target,
            timbre=timbre,
            target_valid=torch.tensor(valid, dtype=torch.long),
        )


def open_training_datasets(
    data: str | os.PathLike,
    val_data: str | os.PathLike | None = None,
    seed: int = 0,
    epoch_size: int = 1_000_000,
    timbres: Sequence[str] = (),
) -> tuple[ChunkDataset, ChunkDataset]:
    """The training set (split "train" of ``data``) and validation set (split "validation" of
    ``val_data``, default ``data``, with a different seed so its windows differ)."""
    train = ChunkDataset(data, seed=seed, split="train", epoch_size=epoch_size, timbres=timbres)
    val = ChunkDataset(val_data if val_data is not None else data, seed=seed + 1_000_003,
                       split="validation", epoch_size=epoch_size, timbres=timbres)  # fmt: skip
    return train, val


__all__ = [
    "SongPair", "AudioMidiPair", "SlakhMix", "RenderedMidi", "trim_overlapping_notes",
    "folder_pairs", "maestro_pairs", "slakh_pairs", "render_pairs", "demo_pairs", "discover",
    "detect_source", "discover_with_options",
    "song_features", "build_cache", "load_index", "TrainingExample", "collate_examples", "ChunkDataset",
    "open_training_datasets", "NOTE_DTYPE",
]  # fmt: skip
