"""Training audio of the vocoder: files, random segments, and audio gathered from MIDI, the demo
corpus or a feature cache (specdiff/training/vocoder.py trains on it)."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch

from specdiff.audio.mel import log_mel
from specdiff.constants import HOP_LENGTH, SAMPLE_RATE
from specdiff.errors import SpecdiffError

HOP = HOP_LENGTH
AUDIO_SUFFIXES = {".wav", ".flac", ".ogg", ".mp3", ".aiff", ".aif"}
MIDI_SUFFIXES = {".mid", ".midi"}


def load_audio_file(path: str | os.PathLike) -> np.ndarray:
    """16 kHz mono float32 audio (via specdiff.audio.files)."""
    from specdiff.audio.files import load_audio

    return np.asarray(load_audio(path), dtype=np.float32)


def list_files(folder: str | os.PathLike, suffixes: set[str]) -> list[Path]:
    folder = Path(folder)
    if not folder.is_dir():
        raise SpecdiffError(f"not a folder: {folder}")
    files = sorted(p for p in folder.rglob("*") if p.suffix.lower() in suffixes and p.is_file())
    if not files:
        raise SpecdiffError(f"no {'/'.join(sorted(suffixes))} files in {folder}")
    return files


class SegmentSampler:
    """Random fixed-length training segments from in-memory clips, with random gain.

    Each example is ``segment_frames * 320 + 320`` samples: the extra frame lets the last mel frame
    see real audio instead of the STFT's end padding (ORIGINAL.md §1 ``pad_end``), as inside a long song.
    """

    def __init__(self, clips: list[np.ndarray], segment_frames: int, seed: int = 0, gain_range=(0.4, 1.0)):
        self.length = segment_frames * HOP + HOP
        self.clips = [np.pad(c, (0, max(0, self.length - len(c)))) for c in clips]
        weights = np.array([len(c) - self.length + 1 for c in self.clips], np.float64)
        self.probabilities = weights / weights.sum()
        self.gain_range = gain_range
        self.rng = np.random.default_rng(seed)

    def sample(self, batch_size: int) -> torch.Tensor:
        out = np.empty((batch_size, self.length), np.float32)
        for i, clip_index in enumerate(self.rng.choice(len(self.clips), size=batch_size, p=self.probabilities)):
            clip = self.clips[clip_index]
            start = self.rng.integers(0, len(clip) - self.length + 1)
            out[i] = clip[start : start + self.length] * self.rng.uniform(*self.gain_range)
        return torch.from_numpy(out)


def features_and_target(audio: torch.Tensor, segment_frames: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(log-mel of the first ``segment_frames`` frames, the matching ``segment_frames * 320`` samples)."""
    return log_mel(audio)[:, :segment_frames], audio[:, : segment_frames * HOP]


def load_clips(files: list[Path], max_seconds: float | None = None) -> list[np.ndarray]:
    """The audio of ``files`` (the first ``max_seconds`` of each), without clips under 4 frames."""
    clips = []
    for f in files:
        audio = load_audio_file(f)
        if max_seconds is not None:
            audio = audio[: int(max_seconds * SAMPLE_RATE)]
        if audio.size >= HOP * 4:
            clips.append(audio)
    return clips


# ---- gathering training audio -------------------------------------------------------------------------


def demo_corpus_audio(split: str, cache_dir: Path, soundfont: str | None = None) -> list[Path]:
    """The bundled demo corpus's ``split`` (specdiff.data.corpus) rendered once into ``cache_dir``."""
    from specdiff.data.corpus import demo_midi_files

    return render_midi_files(demo_midi_files(split), cache_dir, soundfont)


def render_midi_files(midi_files: list[Path], cache_dir: Path, soundfont: str | None = None) -> list[Path]:
    """Render MIDI files (specdiff.data.render) to ``cache_dir/<name>.wav`` unless already there."""
    from tqdm import tqdm

    from specdiff.audio.files import save_wav
    from specdiff.data.render import render_midi

    cache_dir.mkdir(parents=True, exist_ok=True)
    out = []
    for midi in tqdm(midi_files, desc=f"render {cache_dir.name}", leave=False):
        wav = cache_dir / (Path(midi).stem + ".wav")
        if not wav.exists():
            save_wav(wav, render_midi(midi, soundfont=soundfont), SAMPLE_RATE)  # atomic
        out.append(wav)
    return out


def cache_audio(cache_dir: Path, out_dir: Path, split: str = "train") -> list[Path]:
    """Audio of the ``split`` songs of a feature cache (specdiff.data.cache), written to ``out_dir``.

    The cache keeps features only, so each song's audio comes back from the source its index
    records: a recording ("AUDIO + MIDI") is used in place, a render ("render MIDI [(programs seed
    N)]") is rendered again the way specdiff.data.cache made it. Other sources are skipped.
    """
    import re
    import warnings

    from specdiff.audio.files import save_wav
    from specdiff.data.cache import load_index
    from specdiff.data.songs import RenderedMidi

    out_dir.mkdir(parents=True, exist_ok=True)
    files, skipped = [], 0
    for song in load_index(cache_dir):
        if song.get("split", "train") != split:
            continue
        source = str(song.get("source", ""))
        rendered = re.fullmatch(r"render (.+?)(?: \(programs seed (\d+)\))?", source)
        if rendered:
            wav = out_dir / (re.sub(r"[^A-Za-z0-9._-]+", "_", song["id"]) + ".wav")
            if not wav.exists():
                seed = None if rendered.group(2) is None else int(rendered.group(2))
                pair = RenderedMidi(song_id=song["id"], split=split, midi=rendered.group(1), program_seed=seed)
                try:
                    save_wav(wav, pair.load()[0], SAMPLE_RATE)
                except (SpecdiffError, OSError) as err:
                    warnings.warn(f"cannot render {rendered.group(1)}: {err}", stacklevel=2)
                    skipped += 1
                    continue
            files.append(wav)
        elif " + " in source and Path(source.split(" + ")[0]).is_file():
            files.append(Path(source.split(" + ")[0]))
        else:
            skipped += 1
    if skipped:
        warnings.warn(
            f"{skipped} {split} songs of {cache_dir} have no audio source that can be read again", stacklevel=2
        )
    if not files:
        raise SpecdiffError(f"no {split} audio can be recovered from the feature cache {cache_dir}")
    return files
