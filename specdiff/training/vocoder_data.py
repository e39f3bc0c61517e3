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


class PairedSegmentSampler:
    """Random training segments of (audio, given log-mel) pairs: the log-mel a diffusion model generated for
    a piece and the render of that piece (``specdiff prepare-vocoder-pairs``), so that the vocoder learns to
    turn the mels it is given at synthesis time, not only the renders' own, into the audio they stand for.

    Why: the vocoder was trained on renders' mels and inverts a model's mels, which are smoother; its peak
    frequencies and attacks are read from details those mels do not carry as the renders do (a network
    trained on finer render cues kept fewer of the synthesized music's onsets:
    ``benchmarks/results/vocoder_peak_frequency.md``). Vocoders of text-to-speech systems are fine-tuned on
    their acoustic model's output for the same reason.

    Each example is ``segment_frames`` mel frames and the ``segment_frames * 320 + 320`` samples from the
    first one's start (as :class:`SegmentSampler`'s). No random gain: the given mel fixes the level.
    ``rng``: the generator to draw with (the real-audio sampler's, so one checkpointed state covers both).
    """

    def __init__(self, pairs: list[tuple[np.ndarray, np.ndarray]], segment_frames: int, rng: np.random.Generator):
        self.segment_frames, self.length, self.rng = segment_frames, segment_frames * HOP + HOP, rng
        # A start frame s needs the mel's frames s .. s + F - 1 and audio up to (s + F + 1) * HOP.
        self.pairs = [(audio, mel) for audio, mel in pairs if len(mel) > segment_frames]
        if not self.pairs:
            raise SpecdiffError(f"no (audio, mel) pair is longer than {segment_frames + 1} frames")
        weights = np.array([len(mel) - segment_frames for _, mel in self.pairs], np.float64)
        self.probabilities = weights / weights.sum()

    def sample(self, batch_size: int) -> tuple[torch.Tensor, torch.Tensor]:
        """``(audio [batch_size, length], mel [batch_size, segment_frames, 128])``."""
        audio = np.empty((batch_size, self.length), np.float32)
        mels = np.empty((batch_size, self.segment_frames, self.pairs[0][1].shape[1]), np.float32)
        for i, index in enumerate(self.rng.choice(len(self.pairs), size=batch_size, p=self.probabilities)):
            clip, mel = self.pairs[index]
            start = self.rng.integers(0, len(mel) - self.segment_frames)
            audio[i] = clip[start * HOP : start * HOP + self.length]
            mels[i] = mel[start : start + self.segment_frames]
        return torch.from_numpy(audio), torch.from_numpy(mels)


def load_pairs(folders: list[Path]) -> list[tuple[np.ndarray, np.ndarray]]:
    """Every ``NAME.npy`` log-mel ``[frames, 128]`` under ``folders`` with an audio file ``NAME.<audio suffix>``
    beside it, as ``(audio, mel)`` cut to their common length (whole frames of 320 samples). A ``.npy`` without
    its audio is skipped; a wrong shape raises ``SpecdiffError``."""
    from specdiff.audio.mel import N_MELS

    pairs = []
    for folder in folders:
        for mel_path in list_files(folder, {".npy"}):
            audio_path = next(
                (mel_path.with_suffix(s) for s in sorted(AUDIO_SUFFIXES) if mel_path.with_suffix(s).exists()), None
            )
            if audio_path is None:
                continue
            mel = np.load(mel_path).astype(np.float32)
            if mel.ndim != 2 or mel.shape[1] != N_MELS:
                raise SpecdiffError(f"{mel_path}: a log-mel must be [frames, {N_MELS}], got {list(mel.shape)}")
            audio = load_audio_file(audio_path)
            frames = min(len(mel), len(audio) // HOP)
            pairs.append((audio[: frames * HOP], mel[:frames]))
    if not pairs:
        raise SpecdiffError(f"no (.npy log-mel, audio) pairs in {', '.join(str(f) for f in folders)}")
    return pairs


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
