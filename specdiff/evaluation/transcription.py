"""basic-pitch transcription: audio -> posteriorgrams -> notes (the offline stand-in for MT3).

Spotify's basic-pitch (its ONNX model ships inside the wheel) is imported lazily and loaded once
per process. Both :mod:`specdiff.evaluation.metrics` (note onset F1) and :mod:`specdiff.evaluation.embeddings` (the
``basic-pitch`` embedding) use it, so it lives below both of them.
"""

from __future__ import annotations

import logging
import math
import threading
import warnings
from typing import Any

import numpy as np

from specdiff.constants import SAMPLE_RATE

#: basic-pitch's frame rate: 22050 Hz audio, hop 256.
BASIC_PITCH_FRAMES_PER_SECOND = 22050 / 256
BASIC_PITCH_INSTALL = (
    'pip install --no-deps basic-pitch==0.4.0 && pip install librosa mir_eval "resampy<0.4.3,>=0.2.2" '
    'scikit-learn onnxruntime "setuptools<81"'
)

_BASIC_PITCH: dict[str, Any] = {}
_BASIC_PITCH_LOCK = threading.Lock()


def transcription_unavailable() -> str | None:
    """None when basic-pitch and mir_eval import; otherwise a one-line reason with the fix."""
    try:
        _basic_pitch()
        import mir_eval  # noqa: F401
    except ImportError as exc:
        return f"transcription metrics skipped ({exc}); install with: {BASIC_PITCH_INSTALL}"
    except Exception as exc:  # a broken install (e.g. a missing ONNX file) should not stop evaluation
        return f"transcription metrics skipped (basic-pitch failed to load: {exc})"
    return None


def _basic_pitch() -> dict[str, Any]:
    """Import basic-pitch and load its ONNX model once per process (cached)."""
    with _BASIC_PITCH_LOCK:
        if not _BASIC_PITCH:
            # basic-pitch logs a warning per missing optional backend (TF, CoreML, TFLite) at import.
            # and resampy (imported by basic-pitch) warns that pkg_resources is deprecated.
            previous = logging.root.manager.disable
            logging.disable(logging.WARNING)
            try:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    from basic_pitch import ICASSP_2022_MODEL_PATH, constants, note_creation
                    from basic_pitch.inference import Model
            finally:
                logging.disable(previous)
            _BASIC_PITCH.update(model=Model(ICASSP_2022_MODEL_PATH), constants=constants, note_creation=note_creation)
        return _BASIC_PITCH


def resample(audio: np.ndarray, orig_sr: int, target_sr: int) -> np.ndarray:
    """Resample with soxr "HQ" (what librosa.load(sr=...) uses inside basic-pitch), else scipy."""
    audio = np.ascontiguousarray(audio, dtype=np.float32)
    if orig_sr == target_sr:
        return audio
    try:
        import soxr

        return soxr.resample(audio, orig_sr, target_sr, "HQ").astype(np.float32)
    except ImportError:
        from scipy.signal import resample_poly

        g = math.gcd(orig_sr, target_sr)
        return resample_poly(audio, target_sr // g, orig_sr // g).astype(np.float32)


def basic_pitch_output(audio: np.ndarray, sample_rate: int = SAMPLE_RATE) -> dict[str, np.ndarray]:
    """basic-pitch's posteriorgrams ``{"note": [F, 88], "onset": [F, 88], "contour": [F, 264]}`` at
    22050/256 frames per second.

    Same windowing as ``basic_pitch.inference.run_inference`` (2 s windows overlapping by 30
    frames, half the overlap trimmed from each side), but on an array: no temporary file and no
    librosa import, whose numba JIT warm-up costs ~20-50 s.
    """
    bp = _basic_pitch()
    c = bp["constants"]
    audio = resample(np.asarray(audio, np.float32).reshape(-1), sample_rate, c.AUDIO_SAMPLE_RATE)
    n_overlap = 30
    overlap = n_overlap * c.FFT_HOP
    hop = c.AUDIO_N_SAMPLES - overlap
    original_length = len(audio)
    audio = np.concatenate([np.zeros(overlap // 2, np.float32), audio])
    outputs: dict[str, list[np.ndarray]] = {"note": [], "onset": [], "contour": []}
    for start in range(0, max(len(audio), 1), hop):
        window = audio[start : start + c.AUDIO_N_SAMPLES]
        window = np.pad(window, (0, c.AUDIO_N_SAMPLES - len(window)))
        for key, value in bp["model"].predict(window[None, :, None]).items():
            outputs[key].append(value)
    n_frames = int(np.floor(original_length * (c.ANNOTATIONS_FPS / c.AUDIO_SAMPLE_RATE)))
    half = n_overlap // 2
    return {
        key: np.concatenate(chunks)[:, half:-half, :].reshape(-1, chunks[0].shape[-1])[:n_frames]
        for key, chunks in outputs.items()
    }


def transcribe(audio: np.ndarray, sample_rate: int = SAMPLE_RATE, normalize: bool = True) -> list:
    """basic-pitch notes of ``audio`` with its default thresholds (onset 0.5, frame 0.3, minimum
    note length 127.7 ms, melodia trick), as :class:`specdiff.midi.tokenizer.Note` (program 0).

    ``normalize`` scales the audio to a 0.9 peak first so that the result does not depend on the
    output level (a quiet model and a loud reference render are judged alike).
    """
    from specdiff.midi.reader import Note

    bp = _basic_pitch()
    c = bp["constants"]
    audio = np.asarray(audio, np.float32).reshape(-1)
    peak = float(np.max(np.abs(audio))) if audio.size else 0.0
    if normalize and peak > 0:
        audio = audio * np.float32(0.9 / peak)
    output = basic_pitch_output(audio, sample_rate)
    if len(output["note"]) == 0:
        return []
    with np.errstate(divide="ignore", invalid="ignore"):  # basic-pitch divides by 0 on silence
        _, events = bp["note_creation"].model_output_to_notes(
            output,
            onset_thresh=0.5,
            frame_thresh=0.3,
            min_note_len=int(np.round(127.70 / 1000 * (c.AUDIO_SAMPLE_RATE / c.FFT_HOP))),
            min_freq=None,
            max_freq=None,
            multiple_pitch_bends=False,
            melodia_trick=True,
            midi_tempo=120,
        )
    notes = [
        Note(pitch=int(pitch), start=float(start), end=float(end), velocity=int(round(127 * min(max(amp, 0.0), 1.0))),
             program=0, is_drum=False)
        for start, end, pitch, amp, *_ in events
    ]  # fmt: skip
    return sorted(notes, key=lambda n: (n.start, n.pitch))
