"""(model mel, render) pairs for the vocoder: what a diffusion model generates for a piece, beside the piece's
SoundFont render, so that the vocoder can be trained on the mels it inverts at synthesis time
(``specdiff train-vocoder --paired-dir``; why: ``specdiff.training.vocoder_data.PairedSegmentSampler``)."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from specdiff.atomic import atomic_write_stream
from specdiff.constants import SAMPLE_RATE


def pair_paths(out_dir: str | os.PathLike, timbre: str, midi: Path) -> tuple[Path, Path]:
    """``(OUT/<timbre>/<stem>.wav, OUT/<timbre>/<stem>.npy)``: where a piece's render and mel go."""
    folder = Path(out_dir) / timbre
    return folder / f"{midi.stem}.wav", folder / f"{midi.stem}.npy"


def write_vocoder_pairs(
    pipe: Any,
    midi_files: Sequence[Path],
    soundfonts: Sequence[str],
    out_dir: str | os.PathLike,
    seed: int = 0,
    progress: bool = True,
) -> list[Path]:
    """For each MIDI file and SoundFont (a name ``find_soundfont`` knows, or a path), write the render and the
    log-mel ``[frames, 128]`` (float16) that ``pipe`` generates for the piece with its own sampling settings
    and the SoundFont's timbre when the model knows it (else its default), seeded ``seed + file index``.
    Pairs already written are kept (an interrupted run continues); each file appears atomically. Returns the
    ``.npy`` paths."""
    from tqdm import tqdm

    from specdiff.audio.files import save_wav
    from specdiff.data.render import find_soundfont, render_midi, timbre_name

    written = []
    bar = tqdm(total=len(midi_files) * len(soundfonts), desc="vocoder pairs", disable=not progress, dynamic_ncols=True)
    for soundfont in soundfonts:
        path = find_soundfont(soundfont)
        timbre = timbre_name(path)
        for index, midi in enumerate(map(Path, midi_files)):
            wav, npy = pair_paths(out_dir, timbre, midi)
            if not npy.exists():  # both writers below create the folder and replace their file atomically
                if not wav.exists():
                    save_wav(wav, render_midi(midi, SAMPLE_RATE, soundfont=path), SAMPLE_RATE)
                pipe.timbre = timbre if timbre in pipe.timbres else None
                generator = torch.Generator().manual_seed(seed + index)
                mel = pipe(str(midi), generator=generator, output_type="mel", progress=False).mels[0]
                atomic_write_stream(npy, lambda handle, mel=mel: np.save(handle, mel.astype(np.float16)))
            written.append(npy)
            bar.update(1)
    bar.close()
    return written


__all__ = ["pair_paths", "write_vocoder_pairs"]
