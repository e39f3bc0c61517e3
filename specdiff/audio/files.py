"""Reading audio as 16 kHz mono float32, and writing it atomically.

``load_audio`` accepts whatever libsndfile reads (WAV, FLAC, OGG/Vorbis, MP3 with libsndfile >= 1.1,
AIFF, ...), mixes the channels down and resamples to the front end's 16 kHz (ORIGINAL.md §1; MSD resampled
with librosa, we use scipy's polyphase resampler). ``save_wav`` never leaves a half-written file.
"""

from __future__ import annotations

import logging
import math
import os
import warnings
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np

from specdiff.atomic import commit, create_temp
from specdiff.constants import LIMITER_THRESHOLD, SAMPLE_RATE
from specdiff.errors import AudioError

logger = logging.getLogger(__name__)

# Rates outside this range are almost certainly a corrupt header or a typo (8 Hz, 16_000_000 Hz).
MIN_SAMPLE_RATE = 1000
MAX_SAMPLE_RATE = 768_000


def _check_rate(rate: int, what: str) -> int:
    if isinstance(rate, (float, np.floating)) and float(rate).is_integer():
        rate = int(rate)
    if not isinstance(rate, (int, np.integer)) or not MIN_SAMPLE_RATE <= rate <= MAX_SAMPLE_RATE:
        raise AudioError(f"{what} sample rate {rate!r} Hz is outside {MIN_SAMPLE_RATE}..{MAX_SAMPLE_RATE} Hz")
    return int(rate)


def load_audio(path: str | os.PathLike, sample_rate: int = SAMPLE_RATE) -> np.ndarray:
    """Read an audio file as mono float32 at ``sample_rate`` (default 16 kHz): shape ``[num_samples]``.

    Channels are averaged; other rates are resampled by the exact rational ratio (:func:`resample`).
    Raises ``AudioError`` for a missing, unreadable or empty file, non-finite samples, or a sample
    rate outside 1 kHz..768 kHz.
    """
    import soundfile

    target_rate = _check_rate(sample_rate, "requested")
    path = Path(path)
    if not path.exists():
        raise AudioError(f"{path}: no such file")
    if not path.is_file():
        raise AudioError(f"{path}: not a file")
    try:
        audio, file_rate = soundfile.read(str(path), dtype="float32", always_2d=True)
    except (soundfile.LibsndfileError, RuntimeError, ValueError) as err:
        raise AudioError(f"{path}: cannot read audio ({_one_line(err)})") from None
    except OSError as err:
        raise AudioError(f"{path}: cannot read ({err.strerror or err})") from None
    file_rate = _check_rate(file_rate, f"{path}:")
    if audio.shape[0] == 0 or audio.shape[1] == 0:
        raise AudioError(f"{path}: the file holds no audio samples")
    if not np.isfinite(audio).all():
        raise AudioError(f"{path}: the audio contains NaN or infinite samples")

    mono = audio.mean(axis=1, dtype=np.float64) if audio.shape[1] > 1 else audio[:, 0].astype(np.float64)
    if file_rate != target_rate:
        mono = resample(mono, file_rate, target_rate)
    return np.ascontiguousarray(mono, dtype=np.float32)


def resample(audio: np.ndarray, from_rate: int, to_rate: int) -> np.ndarray:
    """Resample along the last axis by the exact ratio ``to_rate / from_rate``.

    ``scipy.signal.resample_poly`` with our own anti-aliasing filter: its default filter is centred
    on the lower Nyquist frequency, so 8-9 kHz content of a 44.1 kHz file folds back into the top
    mel bands at only ~-14 dB. Ours (Kaiser beta 10, 32 zero crossings, cutoff at 96% of the lower
    Nyquist) is flat to 7 kHz at 16 kHz and rejects everything above 8.5 kHz by > 100 dB.
    The output has ``ceil(N * to_rate / from_rate)`` samples.
    """
    from scipy.signal import resample_poly

    if from_rate == to_rate:
        return audio
    g = math.gcd(int(from_rate), int(to_rate))
    up, down = int(to_rate) // g, int(from_rate) // g
    return resample_poly(audio, up, down, axis=-1, window=_antialiasing_filter(up, down))


@lru_cache(maxsize=8)
def _antialiasing_filter(up: int, down: int) -> np.ndarray:
    from scipy.signal import firwin

    # Normalised to the Nyquist frequency of the up-sampled rate: 1 / max(up, down) is the lower of
    # the two Nyquist frequencies. resample_poly itself multiplies the taps by `up`.
    ratio = max(up, down)
    return firwin(2 * 32 * ratio + 1, 0.96 / ratio, window=("kaiser", 10.0))


def save_wav(
    path: str | os.PathLike,
    audio: np.ndarray,
    sample_rate: int = SAMPLE_RATE,
    subtype: str = "PCM_16",
) -> Path:
    """Write mono audio ``[num_samples]`` (or ``[1, num_samples]``) atomically; return the path.

    The data goes to a temporary file in the destination folder that then replaces ``path`` in one
    ``os.replace``, so readers never see a partial file and a failure leaves any old file untouched.
    The container follows the extension (.wav, .flac, .ogg, ...; WAV when there is none). With an
    integer ``subtype`` (default 16-bit PCM), audio that would exceed full scale goes through
    :func:`soft_limit` (never hard clipping), with a warning.
    Missing parent folders are created. Raises ``AudioError`` when the file cannot be written.
    """
    import soundfile

    rate = _check_rate(sample_rate, "output")
    path = Path(path)
    data = np.asarray(audio)
    while data.ndim > 1 and data.shape[0] == 1:
        data = data[0]
    if data.ndim != 1:
        raise ValueError(f"save_wav expects mono audio [num_samples], got shape {list(np.shape(audio))}")
    if not (np.issubdtype(data.dtype, np.floating) or data.dtype in (np.int16, np.int32)):
        raise ValueError(f"save_wav expects float, int16 or int32 audio, got dtype {data.dtype}")
    file_format = _format_for(path)
    if not soundfile.check_format(file_format, subtype):
        subtype = soundfile.default_subtype(file_format)  # e.g. VORBIS for .ogg
    if np.issubdtype(data.dtype, np.floating):
        if not np.isfinite(data).all():
            raise AudioError(f"{path}: refusing to write audio that contains NaN or infinite samples")
        data = data.astype(np.float32)
        if subtype.upper().startswith("PCM"):
            peak = float(np.abs(data).max(initial=0.0))
            if peak > 1.0:
                logger.warning("%s: peak %.2f exceeds full scale; %s", path, peak, limiter_advice(peak))
                data = soft_limit(data)

    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = create_temp(path)
    except OSError as err:
        raise AudioError(f"cannot write {path}: {err.strerror or err}") from None
    try:
        with os.fdopen(fd, "wb") as handle:
            soundfile.write(handle, data, rate, subtype=subtype, format=file_format)
        commit(tmp, path)
    except BaseException as err:
        Path(tmp).unlink(missing_ok=True)
        if isinstance(err, OSError):
            raise AudioError(f"cannot write {path}: {err.strerror or err}") from None
        if isinstance(err, (soundfile.LibsndfileError, ValueError, TypeError)):
            raise AudioError(f"cannot write {path}: {_one_line(err)}") from None
        raise
    return path


#: ... and nothing leaves it above this level.
LIMITER_CEILING = 0.99
LIMITER_NOTE = f"a soft limiter was applied above {LIMITER_THRESHOLD:g} of full scale (no hard clipping)"


def gain_to_fit(peak: float, level: float = LIMITER_THRESHOLD) -> float:
    """The gain in dB (negative, rounded down to a whole dB) that brings ``peak`` to ``level`` or below."""
    return float(math.floor(20.0 * math.log10(level / peak))) if peak > level else 0.0


def limiter_advice(peak: float) -> str:
    """:data:`LIMITER_NOTE` with the likely cause and the fix, for audio whose peak is ``peak``."""
    return (
        f"{LIMITER_NOTE}. The model's output is louder than full scale, usually loud onsets (chords, drums) "
        f"or a high guidance weight; to keep the waveform unshaped, lower the level with "
        f"`specdiff synth --gain {gain_to_fit(peak):g}` (dB), or use a lower --guidance"
    )


def soft_limit(audio: np.ndarray, threshold: float = LIMITER_THRESHOLD) -> np.ndarray:
    """A memoryless soft-knee limiter: ``|x| <= threshold`` passes unchanged; above it the level
    is bent smoothly with ``threshold + h tanh((|x| - threshold) / h)``, ``h = LIMITER_CEILING -
    threshold``: continuous with slope 1 at the knee, non-decreasing, never above the ceiling. Sample by sample,
    so a stream can apply it segment by segment with the same result as on the whole file."""
    data = np.asarray(audio, dtype=np.float32)
    magnitude = np.abs(data)
    over = magnitude > threshold
    if not over.any():
        return data
    headroom = LIMITER_CEILING - threshold
    bent = threshold + headroom * np.tanh((magnitude[over] - threshold) / headroom)
    out = data.copy()
    out[over] = np.sign(data[over]) * bent
    return out


def _format_for(path: Path) -> str:
    import soundfile

    extension = path.suffix.lstrip(".").upper() or "WAV"
    formats = soundfile.available_formats()
    if extension in formats:
        return extension
    if extension in ("OGA", "OPUS"):
        return "OGG"
    raise AudioError(f"{path}: unsupported audio file extension .{extension.lower()} (use .wav or .flac)")


def _one_line(err: BaseException) -> str:
    return " ".join(str(err).split()) or type(err).__name__


class StreamingAudioFile:
    """An audio file written chunk by chunk into a hidden temp file, renamed into place at the end.

    ``write`` appends mono float samples (clipped to [-1, 1] for integer formats, with one warning);
    ``commit`` closes the file and replaces ``path`` with it; ``abort`` (also on any exception inside
    a ``with`` block) deletes the temp file, so a failed or interrupted run leaves no partial file.
    """

    def __init__(self, path: Path, sample_rate: int, subtype: str = "PCM_16"):
        import soundfile

        path = Path(path)

        self.path = path
        file_format = path.suffix.lstrip(".").upper() or "WAV"
        if not soundfile.check_format(file_format, subtype):
            subtype = soundfile.default_subtype(file_format)  # e.g. VORBIS for .ogg
        self._clip = subtype.upper().startswith("PCM")
        self._clipped = False
        self.num_samples = 0
        try:
            fd, self._tmp = create_temp(path)
        except OSError as err:
            raise AudioError(f"cannot write {path}: {err.strerror or err}") from None
        os.close(fd)
        try:
            self._file = soundfile.SoundFile(
                self._tmp, "w", samplerate=sample_rate, channels=1, subtype=subtype, format=file_format
            )
        except BaseException:
            Path(self._tmp).unlink(missing_ok=True)
            raise

    def write(self, audio: Any) -> None:
        """Append mono float samples (and flush them to disk)."""
        data = np.asarray(audio, dtype=np.float32).reshape(-1)
        if not np.isfinite(data).all():
            raise AudioError(f"{self.path}: refusing to write audio that contains NaN or infinite samples")
        if self._clip and data.size and float(np.abs(data).max()) > 1.0:
            if not self._clipped:
                peak = float(np.abs(data).max())
                warnings.warn(f"{self.path}: the audio exceeds full scale; {limiter_advice(peak)}", stacklevel=2)
                self._clipped = True
            data = soft_limit(data)
        self._file.write(data)
        self._file.flush()  # the samples are on disk as soon as the segment is done
        self.num_samples += data.size

    def commit(self) -> Path:
        """Close the file and rename it to ``path``."""
        self._file.close()
        return commit(self._tmp, self.path)

    def abort(self) -> None:
        """Close and delete the temporary file (``path`` is left as it was)."""
        if not self._file.closed:
            self._file.close()
        Path(self._tmp).unlink(missing_ok=True)

    def __enter__(self) -> StreamingAudioFile:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is not None:
            self.abort()
