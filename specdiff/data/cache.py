"""Training data: (MIDI, audio) pairs (``songs.py``) -> feature cache -> ``ChunkDataset`` (ORIGINAL.md §4.2, §4.4).

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
    cache_dir/songs/<id>/notes.npy   NOTE_DTYPE structured array (sustain applied, General MIDI programs)
    cache_dir/songs/<id>/meta.json   written last: marks the song as cached

The notes keep their General MIDI programs (``"programs": "gm"`` in the meta; caches made before held
Slakh classes): :class:`ChunkDataset` maps them to Slakh classes for the original models and leaves them
for models with the decoder's ``gm_programs`` extension.
"""

from __future__ import annotations

import json
import logging
import os
import time
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from specdiff.atomic import atomic_write, atomic_write_text
from specdiff.constants import HOP_LENGTH, N_MELS, SAMPLE_RATE, SEGMENT_FRAMES
from specdiff.data.songs import SongPair, discover
from specdiff.errors import AudioError, SpecdiffError

if TYPE_CHECKING:
    from specdiff.midi.reader import Note
    from specdiff.midi.tokenizer import EventIndex
    from specdiff.midi.velocity_roll import VelocitySpans

log = logging.getLogger(__name__)

CONTEXT_FRAMES = SEGMENT_FRAMES  # ORIGINAL.md §4.2
TARGET_FRAMES = SEGMENT_FRAMES
PIECE_FRAMES = 2000  # MSD MAX_NUM_CACHED_FRAMES: songs are cut into pieces of <= 40 s
FEATURE_CHUNK_FRAMES = 3000  # log-mel is computed 60 s at a time (bounded STFT memory)
CACHE_FORMAT = 1

NOTE_DTYPE = np.dtype([
    ("pitch", np.uint8), ("start", np.float64), ("end", np.float64),
    ("velocity", np.uint8), ("program", np.uint8), ("is_drum", np.bool_),
])  # fmt: skip


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
                "total_time": float(total_time), "num_notes": len(notes), "source": pair.source,
                "programs": "gm"}  # fmt: skip
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
    #: FloatTensor[256, 18]: the target window's relative log-velocities per frame (feature caches), the
    #: velocity roll layout's columns (specdiff.midi.velocity_roll.velocity_block)
    velocity: torch.Tensor | None = None
    #: LongTensor[2048]: the note tokens of the context's frames (what rings into the target: a
    #: ``roll_carry_in`` decoder's roll, specdiff.midi.score_roll.add_carried_notes), all PAD where the
    #: context is empty; ``carry_frames`` (LongTensor[]): how many frames those tokens cover
    carry_tokens: torch.Tensor | None = None
    carry_frames: torch.Tensor | None = None


def collate_examples(examples: Sequence[TrainingExample]) -> dict[str, torch.Tensor]:
    """Stack examples into a batch dict with keys tokens, context, context_mask, target (and timbre,
    velocity, carry_tokens, carry_frames where every example has one)."""
    batch = {key: torch.stack([getattr(ex, key) for ex in examples])
             for key in ("tokens", "context", "context_mask", "target")}  # fmt: skip
    for key in ("timbre", "velocity", "carry_tokens", "carry_frames"):
        if all(getattr(ex, key) is not None for ex in examples):
            batch[key] = torch.stack([getattr(ex, key) for ex in examples])
    return batch


def _padded_tokens(tokens: Sequence[int], length: int) -> torch.Tensor:
    """``tokens`` as a LongTensor padded with PAD (0) to ``length``."""
    row = torch.zeros(length, dtype=torch.long)
    row[: len(tokens)] = torch.as_tensor(list(tokens), dtype=torch.long)
    return row


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
    the target is padded with -1 (silence), the context with 0 and masked. ``velocity`` holds the
    window's relative log-velocities (``specdiff.midi.velocity_roll.velocity_block`` of the song's notes,
    relative to the song's loudest note: what a velocity-layout decoder's roll needs).

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
        slakh_programs: bool = True,
    ) -> None:
        self.cache_dir = Path(cache_dir)
        self.timbres = list(timbres)
        self.slakh_programs = bool(slakh_programs)
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
        if not self.slakh_programs:
            mapped = [s["id"] for s in songs if s.get("programs") != "gm"]
            if mapped:
                raise SpecdiffError(f"the feature cache {cache_dir} holds Slakh classes, not General MIDI programs, "
                                    f"for {len(mapped)} songs (e.g. {mapped[0]}): a gm_programs model needs a cache "
                                    "made by this version of specdiff prepare")  # fmt: skip
        self.songs = songs
        self.piece_song = np.array(piece_song, np.int64)
        self.piece_start = np.array(piece_start, np.int64)
        self.piece_len = np.array(piece_len, np.int64)
        self._mels: dict[int, np.ndarray] = {}
        self._indexes: dict[int, EventIndex] = {}
        self._velocity_spans: dict[int, VelocitySpans] = {}

    def __len__(self) -> int:
        return self.epoch_size

    def __getstate__(self) -> dict:  # DataLoader workers re-open the memory maps themselves
        state = self.__dict__.copy()
        state["_mels"], state["_indexes"], state["_velocity_spans"] = {}, {}, {}
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

    def note_array(self, k: int) -> np.ndarray:
        """Song ``k``'s notes (``NOTE_DTYPE``) with programs as the model reads them: caches hold General
        MIDI programs (older ones Slakh classes); with ``slakh_programs`` they are mapped to Slakh classes
        (ORIGINAL.md §2.5 step 3; idempotent, so older caches give the same notes)."""
        from specdiff.midi.reader import slakh_classes

        notes = np.load(_song_dir(self.cache_dir, self.songs[k]["id"]) / "notes.npy")
        if self.slakh_programs:
            notes["program"] = slakh_classes(notes["program"], notes["is_drum"])
        return notes

    def notes(self, k: int) -> list[Note]:
        return array_to_notes(self.note_array(k))

    def event_index(self, k: int) -> EventIndex:
        """Song ``k``'s token index, computed once per process."""
        index = self._indexes.get(k)
        if index is None:
            from specdiff.midi.tokenizer import index_notes

            index = index_notes(self.notes(k), self.songs[k]["total_time"])
            self._indexes[k] = index
        return index

    def velocity_spans(self, k: int) -> VelocitySpans:
        """Song ``k``'s notes as the velocity columns see them (relative to its loudest note), computed
        once per process."""
        spans = self._velocity_spans.get(k)
        if spans is None:
            from specdiff.midi.velocity_roll import velocity_spans

            spans = velocity_spans(self.note_array(k))
            self._velocity_spans[k] = spans
        return spans

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
        from specdiff.midi.velocity_roll import velocity_block

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
            # what rings in: the notes of the context's frames (none where the context is empty, as for a
            # song's first segment in the pipeline)
            carry = tokenize_frames(self.event_index(k), ctx_start, n_ctx) if n_ctx else []
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
            velocity=torch.from_numpy(velocity_block(self.velocity_spans(k), tgt_start, None, self.target_frames)),
            carry_tokens=_padded_tokens(carry, len(tokens)),
            carry_frames=torch.tensor(n_ctx, dtype=torch.long),
        )


def open_training_datasets(
    data: str | os.PathLike,
    val_data: str | os.PathLike | None = None,
    seed: int = 0,
    epoch_size: int = 1_000_000,
    timbres: Sequence[str] = (),
    slakh_programs: bool = True,
) -> tuple[ChunkDataset, ChunkDataset]:
    """The training set (split "train" of ``data``) and validation set (split "validation" of
    ``val_data``, default ``data``, with a different seed so its windows differ)."""
    train = ChunkDataset(data, seed=seed, split="train", epoch_size=epoch_size, timbres=timbres,
                         slakh_programs=slakh_programs)  # fmt: skip
    val = ChunkDataset(val_data if val_data is not None else data, seed=seed + 1_000_003, split="validation",
                       epoch_size=epoch_size, timbres=timbres, slakh_programs=slakh_programs)  # fmt: skip
    return train, val
