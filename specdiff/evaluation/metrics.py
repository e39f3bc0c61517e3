"""Evaluation metrics (the offline counterparts of the paper's, ORIGINAL.md §4.5).

Three families:

1. **Transcription** (the paper uses MT3, which is not available offline): Spotify's basic-pitch
   (its ONNX model ships inside the wheel) transcribes the audio; mir_eval scores the note onsets
   against the MIDI file's notes (drums excluded): a note matches when its pitch is within 50
   cents and its onset within 50 ms; offsets are ignored. basic-pitch is an imperfect
   transcriber (onset F1 0.80-0.89 on piano renders, 0.45-0.54 on dense multi-instrument
   renders, see ENVIRONMENT.md), so a model's F1 is reported next to the F1 of the SoundFont
   reference render of the same MIDI, and as the ratio of the two.
2. **Reconstruction** against the reference audio, both cropped to their common length (the
   pipeline always returns whole 5.12 s segments; the reference has a release tail):
   - log-mel L1: mean absolute difference of our log-mel features (ORIGINAL.md §1, natural log);
   - multi-resolution STFT distance over FFT sizes 256/512/1024/2048 (16-128 ms windows at
     16 kHz; Hann window of the FFT size, hop = FFT/4, centred frames): the mean over
     resolutions of the L1 distance of natural-log magnitudes (clamped at 1e-5) and of the
     spectral convergence ``||A - B||_F / ||A||_F`` (the Parallel WaveGAN / DDSP losses).
   These compare against a SoundFont render, not against the audio the model was trained on, so
   they measure closeness to that render's timbres.
3. **Fréchet distance** between the distributions of window embeddings of generated and
   reference audio (the Fréchet audio distance); the embedding is pluggable
   (:mod:`specdiff.evaluation.embeddings`; VGGish/TRILL are not available offline).

basic-pitch, mir_eval and soxr are imported lazily; :func:`transcription_unavailable` says why
transcription cannot run, so callers can skip it with a message.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np

from specdiff.constants import SAMPLE_RATE
from specdiff.errors import SpecdiffError
from specdiff.evaluation.transcription import (
    transcribe,
)
from specdiff.midi.pitch import midi_to_hz

ONSET_TOLERANCE = 0.05  # seconds (mir_eval's default, the paper's MT3 evaluation uses the same)
#: (FFT size, hop) pairs of the multi-resolution STFT distance.
STFT_RESOLUTIONS: tuple[tuple[int, int], ...] = ((256, 64), (512, 128), (1024, 256), (2048, 512))
LOG_FLOOR = 1e-5  # magnitude floor before the log, as in the mel front end (ORIGINAL.md §1)


# ---------------------------------------------------------------------------------------------
# Note lists and onset F1
# ---------------------------------------------------------------------------------------------


def _as_note_arrays(notes: Any) -> tuple[np.ndarray, np.ndarray]:
    """Notes -> (onset/offset intervals [n, 2] in s, pitches [n] in MIDI numbers), drums dropped.

    Accepts objects with ``pitch``, ``start``, ``end`` (and optionally ``is_drum``), or an
    ``(intervals, midi_pitches)`` pair. Offsets are only made strictly later than onsets
    (mir_eval requires positive durations; the onset metric ignores them).
    """
    if isinstance(notes, tuple) and len(notes) == 2 and isinstance(notes[0], np.ndarray):
        intervals, pitches = np.asarray(notes[0], np.float64).reshape(-1, 2), np.asarray(notes[1], np.float64)
    else:
        kept = [n for n in notes if not getattr(n, "is_drum", False)]
        intervals = np.array([[n.start, n.end] for n in kept], dtype=np.float64).reshape(-1, 2)
        pitches = np.array([n.pitch for n in kept], dtype=np.float64)
    intervals = intervals.copy()
    intervals[:, 1] = np.maximum(intervals[:, 1], intervals[:, 0] + 1e-3)
    return intervals, pitches


def onset_scores(reference: Any, estimate: Any, onset_tolerance: float = ONSET_TOLERANCE) -> dict[str, float]:
    """mir_eval note-onset precision/recall/F1 (pitch within 50 cents, onset within
    ``onset_tolerance`` seconds, offsets ignored) of ``estimate`` against ``reference``.

    Drums are excluded from both. Two empty lists score 1.0 (nothing to play, nothing played);
    one empty list scores 0.0.
    """
    ref_intervals, ref_pitches = _as_note_arrays(reference)
    est_intervals, est_pitches = _as_note_arrays(estimate)
    counts = {"reference_notes": float(len(ref_pitches)), "estimated_notes": float(len(est_pitches))}
    if len(ref_pitches) == 0 or len(est_pitches) == 0:
        value = 1.0 if len(ref_pitches) == len(est_pitches) else 0.0
        return {"precision": value, "recall": value, "f1": value, **counts}
    try:
        import mir_eval
    except ImportError:
        raise SpecdiffError("note F1 needs mir_eval: pip install mir_eval") from None
    precision, recall, f1, _ = mir_eval.transcription.precision_recall_f1_overlap(
        ref_intervals, midi_to_hz(ref_pitches), est_intervals, midi_to_hz(est_pitches),
        onset_tolerance=onset_tolerance, offset_ratio=None,
    )  # fmt: skip
    return {"precision": float(precision), "recall": float(recall), "f1": float(f1), **counts}


def midi_reference_notes(midi: Any) -> tuple[list, float]:
    """The MIDI file's non-drum notes as the pipeline sees them (sustain applied, ORIGINAL.md §2.5) and its
    duration in seconds."""
    from specdiff.midi.reader import midi_to_notes

    notes, total_time = midi_to_notes(midi)
    return [n for n in notes if not n.is_drum], total_time


def transcription_scores(
    generated: np.ndarray,
    reference: np.ndarray | None,
    notes: Sequence,
    sample_rate: int = SAMPLE_RATE,
) -> dict[str, float]:
    """Onset P/R/F1 of the transcribed generated audio (and reference audio, when given) against
    ``notes``, plus ``f1_ratio`` = generated F1 / reference F1 (NaN when the reference scores 0)."""
    scores = {f"generated_{k}": v for k, v in onset_scores(notes, transcribe(generated, sample_rate)).items()}
    if reference is not None:
        scores.update({f"reference_{k}": v for k, v in onset_scores(notes, transcribe(reference, sample_rate)).items()})
        ref_f1 = scores["reference_f1"]
        scores["f1_ratio"] = scores["generated_f1"] / ref_f1 if ref_f1 > 0 else float("nan")
    return scores


# ---------------------------------------------------------------------------------------------
# Reconstruction distances
# ---------------------------------------------------------------------------------------------


def crop_to_common_length(a: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    n = min(len(a), len(b))
    return np.asarray(a[:n], np.float32), np.asarray(b[:n], np.float32)


#: Log-mels ``(ours [T, 128], reference [T, 128])`` of two signals over their common length, or None.
LogMelPair = tuple[np.ndarray, np.ndarray] | None


def log_mel_pair(generated: np.ndarray, reference: np.ndarray) -> LogMelPair:
    """Both signals' log-mels on our front end (ORIGINAL.md §1, natural log, floor ln 1e-5), after
    cropping them to their common length; None when that length is zero. The log-mel scores below
    take either the signals or this pair, so a caller scoring one clip several ways computes it once."""
    import torch

    from specdiff.audio.mel import log_mel

    a, b = crop_to_common_length(np.asarray(generated).reshape(-1), np.asarray(reference).reshape(-1))
    if len(a) == 0:
        return None
    with torch.no_grad():
        return log_mel(torch.from_numpy(a)).numpy(), log_mel(torch.from_numpy(b)).numpy()


def log_mel_l1(generated: np.ndarray, reference: np.ndarray, mels: LogMelPair = None) -> float:
    """Mean |log-mel(generated) - log-mel(reference)| (:func:`log_mel_pair`; ``mels``: that pair,
    computed beforehand)."""
    mels = log_mel_pair(generated, reference) if mels is None else mels
    return float("nan") if mels is None else float(np.abs(mels[0] - mels[1]).mean())


def multi_resolution_stft_distance(
    generated: np.ndarray,
    reference: np.ndarray,
    resolutions: Iterable[tuple[int, int]] = STFT_RESOLUTIONS,
) -> dict[str, float]:
    """``{"mr_stft_log_l1", "spectral_convergence"}`` averaged over ``resolutions`` (FFT, hop), after
    cropping both signals to their common length (see the module docstring)."""
    import torch

    a, b = crop_to_common_length(np.asarray(generated).reshape(-1), np.asarray(reference).reshape(-1))
    log_l1, convergence = [], []
    with torch.no_grad():
        ta, tb = torch.from_numpy(a).double(), torch.from_numpy(b).double()
        for n_fft, hop in resolutions:
            if len(a) <= n_fft // 2:  # reflect padding needs more samples than half a window
                continue
            window = torch.hann_window(n_fft, dtype=torch.float64)
            mg = torch.stft(ta, n_fft, hop, window=window, return_complex=True).abs()
            mr = torch.stft(tb, n_fft, hop, window=window, return_complex=True).abs()
            log_l1.append(float((mg.clamp_min(LOG_FLOOR).log() - mr.clamp_min(LOG_FLOOR).log()).abs().mean()))
            convergence.append(float(torch.linalg.norm(mr - mg) / torch.linalg.norm(mr).clamp_min(1e-12)))
    if not log_l1:
        return {"mr_stft_log_l1": float("nan"), "spectral_convergence": float("nan")}
    return {"mr_stft_log_l1": float(np.mean(log_l1)), "spectral_convergence": float(np.mean(convergence))}


#: Segments quieter than this (RMS, dB re full scale) are left out of the level-jump measure:
#: a jump into or out of a rest is music, not drift.
LEVEL_FLOOR_DB = -50.0


def rms_db(audio: np.ndarray) -> float:
    """RMS level in dB re full scale (-inf for silence)."""
    audio = np.asarray(audio, np.float64).reshape(-1)
    power = float(np.mean(audio**2)) if len(audio) else 0.0
    return 10.0 * math.log10(power) if power > 0 else float("-inf")


def level_scores(audio: np.ndarray, segment_samples: int = 81920) -> dict[str, float]:
    """Level of one signal: ``loudness_db`` (RMS dB), ``peak`` (max |sample|) and
    ``max_segment_jump_db``, the largest RMS-dB change between consecutive segments (default
    5.12 s, one model segment) that are both above ``LEVEL_FLOOR_DB``: how far the level drifts
    through the context chain, to compare with the reference's own jumps."""
    audio = np.asarray(audio, np.float64).reshape(-1)
    levels = [rms_db(audio[i : i + segment_samples]) for i in range(0, len(audio), segment_samples)]
    jumps = [abs(b - a) for a, b in zip(levels, levels[1:]) if min(a, b) > LEVEL_FLOOR_DB]
    return {"loudness_db": rms_db(audio), "peak": float(np.abs(audio).max(initial=0.0)),
            "max_segment_jump_db": max(jumps, default=0.0)}  # fmt: skip


def level_comparison(generated: np.ndarray, reference: np.ndarray) -> dict[str, float]:
    """:func:`level_scores` of both signals (``reference_*`` for the reference) and
    ``loudness_diff_db`` = ours - reference."""
    ours, ref = level_scores(generated), level_scores(reference)
    out = {**ours, **{f"reference_{k}": v for k, v in ref.items()}}
    out["loudness_diff_db"] = ours["loudness_db"] - ref["loudness_db"]
    return out


#: Frames whose reference log-mel mean (natural log) is below this are "silent" for
#: :func:`silence_scores`: the TimGM6mb renders' rests and tails sit at -9..-11.5 (floor ln 1e-5).
SILENCE_THRESHOLD = -8.0


def frame_levels(generated: np.ndarray, reference: np.ndarray, mels: LogMelPair = None
                 ) -> tuple[np.ndarray, np.ndarray] | None:  # fmt: skip
    """Each frame's mean log-mel (natural log) of ours and of the reference over their common length,
    as ``(ours [T], reference [T])``; None when that length is zero (``mels``: :func:`log_mel_pair`)."""
    mels = log_mel_pair(generated, reference) if mels is None else mels
    return None if mels is None else (mels[0].mean(-1), mels[1].mean(-1))


#: Result names of :func:`silence_scores` and :func:`rest_scores`: ours, the reference's, the gap, the
#: fraction of frames measured.
SILENCE_KEYS = ("silence_level", "reference_silence_level", "silence_gap", "silent_fraction")
REST_KEYS = ("rest_level", "reference_rest_level", "rest_gap", "rest_fraction")


def _gap_over(
    levels: tuple[np.ndarray, np.ndarray] | None, frames: np.ndarray | None, keys: tuple[str, ...]
) -> dict[str, float]:
    """Mean frame level of ours and of the reference (:func:`frame_levels`) over ``frames`` (bool),
    their difference and the fraction of frames, under ``keys``; NaN levels when there are none."""
    nan = float("nan")
    if levels is None or frames is None or not frames.any():
        return dict(zip(keys, (nan, nan, nan, 0.0)))
    ours, ref = levels
    level, ref_level = float(ours[frames].mean()), float(ref[frames].mean())
    return dict(zip(keys, (level, ref_level, level - ref_level, float(frames.mean()))))


def silence_scores(generated: np.ndarray, reference: np.ndarray, threshold: float = SILENCE_THRESHOLD,
                   mels: LogMelPair = None) -> dict[str, float]:  # fmt: skip
    """How silent ours is where the reference is: over the frames whose reference log-mel mean is
    below ``threshold``, the mean log-mel of ours (``silence_level``) and of the reference
    (``reference_silence_level``), their difference (``silence_gap``, ours - reference; 0 is
    perfect) and the fraction of such frames (``silent_fraction``). NaN levels when there are none."""
    levels = frame_levels(generated, reference, mels)
    return _gap_over(levels, None if levels is None else levels[1] < threshold, SILENCE_KEYS)


#: Seconds after a note ends (a drum hit: after it starts) before a frame counts as a rest for
#: :func:`rest_scores`: SoundFont releases and reverb ring about that long.
REST_MARGIN_SECONDS = 1.0


def rest_frames(notes: Any, num_frames: int, margin: float = REST_MARGIN_SECONDS) -> np.ndarray:
    """``[num_frames]`` bool: the spectrogram frames (50 per second) that are rests of ``notes``
    (``specdiff.midi.tokenizer.Note``): no note sounds and every note before ended at least ``margin``
    seconds earlier (drum hits count as ending where they start)."""
    from specdiff.constants import FRAMES_PER_SECOND

    busy = np.zeros(num_frames, bool)
    for note in notes:
        start = max(0, int(np.floor(note.start * FRAMES_PER_SECOND)))
        end = note.start if note.is_drum else note.end
        stop = min(num_frames, int(np.ceil((end + margin) * FRAMES_PER_SECOND)))
        if stop > start:
            busy[start:stop] = True
    return ~busy


def rest_scores(generated: np.ndarray, reference: np.ndarray, notes: Any, margin: float = REST_MARGIN_SECONDS
                ) -> dict[str, float]:  # fmt: skip
    """How silent ours is in the music's rests (:func:`rest_frames`, from the notes, so a reference
    that renders some instrument silently does not count as a rest): the mean log-mel there of ours
    (``rest_level``) and of the reference (``reference_rest_level``), their difference
    (``rest_gap``, ours - reference) and the fraction of rest frames (``rest_fraction``). NaN levels
    when the music has no rest."""
    levels = frame_levels(generated, reference)
    return _gap_over(levels, None if levels is None else rest_frames(notes, len(levels[0]), margin), REST_KEYS)


#: Groups of mel bands for :func:`band_offsets`, low to high (32 bands each).
BAND_GROUPS = 4
BAND_OFFSET_KEYS = tuple(f"band_offset_{k + 1}" for k in range(BAND_GROUPS))


def band_offsets(generated: np.ndarray, reference: np.ndarray, mels: LogMelPair = None) -> dict[str, float]:
    """The spectral balance: ours minus the reference's log-mel (natural log), averaged over all
    frames and over each of :data:`BAND_GROUPS` groups of mel bands, low to high
    (:data:`BAND_OFFSET_KEYS`). Why: the mean log-mel of a band is dominated by its quiet frames, so
    a model that lifts the floors of quiet bands shows a positive offset there even when its loud
    partials are right; the MFCC statistics of the Fréchet distance move with it. ``mels``:
    :func:`log_mel_pair`, computed beforehand."""
    mels = log_mel_pair(generated, reference) if mels is None else mels
    if mels is None:
        return dict.fromkeys(BAND_OFFSET_KEYS, float("nan"))
    diff = (mels[0] - mels[1]).mean(0)
    return {key: float(part.mean()) for key, part in zip(BAND_OFFSET_KEYS, np.array_split(diff, BAND_GROUPS))}


def reconstruction_scores(generated: np.ndarray, reference: np.ndarray) -> dict[str, float]:
    mels = log_mel_pair(generated, reference)  # once for the three log-mel scores
    return {"log_mel_l1": log_mel_l1(generated, reference, mels),
            **multi_resolution_stft_distance(generated, reference),
            **silence_scores(generated, reference, mels=mels), **band_offsets(generated, reference, mels)}  # fmt: skip


# ---------------------------------------------------------------------------------------------
# Fréchet distance
# ---------------------------------------------------------------------------------------------


def gaussian_statistics(embeddings: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean ``[d]`` and unbiased covariance ``[d, d]`` of ``[n, d]`` embeddings (n >= 2)."""
    x = np.asarray(embeddings, dtype=np.float64)
    if x.ndim != 2 or len(x) < 2:
        raise ValueError(f"need at least 2 embedding rows of shape [n, d], got {x.shape}")
    return x.mean(axis=0), np.atleast_2d(np.cov(x, rowvar=False))


def _sqrt_psd(matrix: np.ndarray) -> np.ndarray:
    values, vectors = np.linalg.eigh((matrix + matrix.T) / 2)
    return (vectors * np.sqrt(np.clip(values, 0.0, None))) @ vectors.T


def frechet_distance(mu1: np.ndarray, sigma1: np.ndarray, mu2: np.ndarray, sigma2: np.ndarray) -> float:
    """Fréchet (2-Wasserstein) distance between N(mu1, sigma1) and N(mu2, sigma2):
    ``|mu1 - mu2|^2 + tr(S1) + tr(S2) - 2 tr((S1^1/2 S2 S1^1/2)^1/2)``.

    ``tr((S1 S2)^1/2)`` is computed as the trace of the square root of the symmetric PSD matrix
    ``S1^1/2 S2 S1^1/2`` (same eigenvalues), with symmetric eigendecompositions: no complex
    round-off and no ``sqrtm`` failures on the rank-deficient covariances of small sets.
    """
    mu1, mu2 = np.asarray(mu1, np.float64), np.asarray(mu2, np.float64)
    s1, s2 = np.atleast_2d(np.asarray(sigma1, np.float64)), np.atleast_2d(np.asarray(sigma2, np.float64))
    root1 = _sqrt_psd(s1)
    middle = root1 @ s2 @ root1
    trace_sqrt = float(np.sqrt(np.clip(np.linalg.eigvalsh((middle + middle.T) / 2), 0.0, None)).sum())
    value = float(np.sum((mu1 - mu2) ** 2) + np.trace(s1) + np.trace(s2) - 2.0 * trace_sqrt)
    return max(value, 0.0)


def frechet_distance_of_embeddings(a: np.ndarray, b: np.ndarray) -> float:
    return frechet_distance(*gaussian_statistics(a), *gaussian_statistics(b))


def frechet_audio_distance(
    generated: Sequence[np.ndarray], reference: Sequence[np.ndarray], embedding: str = "mfcc-stats"
) -> dict[str, Any]:
    """Fréchet distance between the pooled window embeddings of two sets of 16 kHz clips.

    The value grows with the embedding's scale and shrinks with more windows (the covariance
    estimate is biased for small sets), so compare it only between runs with the same embedding
    and clip set. Returns ``{"frechet_distance", "embedding", "windows_generated",
    "windows_reference", "windows_dropped"}`` (non-finite windows are dropped); the distance is
    NaN with fewer than 2 windows on a side.
    """
    from specdiff.evaluation.embeddings import get_embedding

    fn = get_embedding(embedding)
    a = [fn(x) for x in generated]
    b = [fn(x) for x in reference]
    a_rows = np.concatenate(a) if a else np.zeros((0, 0))
    b_rows = np.concatenate(b) if b else np.zeros((0, 0))
    # Windows of overflowing audio (|x| ~ 1e20 makes float32 power spectra inf) cannot enter a
    # covariance; they are dropped and counted.
    finite_a, finite_b = np.isfinite(a_rows).all(axis=1), np.isfinite(b_rows).all(axis=1)
    dropped = int((~finite_a).sum() + (~finite_b).sum())
    a_rows, b_rows = a_rows[finite_a], b_rows[finite_b]
    value = frechet_distance_of_embeddings(a_rows, b_rows) if len(a_rows) >= 2 and len(b_rows) >= 2 else float("nan")
    return {"frechet_distance": value, "embedding": embedding, "windows_generated": len(a_rows),
            "windows_reference": len(b_rows), "windows_dropped": dropped}  # fmt: skip
