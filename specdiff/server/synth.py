"""The service's synthesis side: read an uploaded MIDI, run one job on the loaded pipeline.

Progress and cancellation come from the pipeline's ``callback_on_step_end``: it runs after every
denoising step, counts it, and raises :class:`~specdiff.server.jobs.JobCancelled` for a cancelled
job, which stops the job within one step.
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from specdiff.errors import MidiError
from specdiff.server.jobs import AUDIO_NAME, SPECTROGRAM_NAME, Job, JobQueue

if TYPE_CHECKING:
    from specdiff.pipeline.pipeline import SpectrogramDiffusionPipeline

logger = logging.getLogger("specdiff.serve")


def read_midi(
    data: bytes,
    name: str,
    max_seconds: float,
    max_bytes: int,
    max_notes: int = 2_000_000,
    max_events: int | None = None,
    check_cancelled: Callable[[], None] | None = None,
    slakh_programs: bool = True,
) -> tuple[Any, list[Any]]:
    """Tokenize MIDI bytes: ``(TokenizedMidi, notes)``; MidiError if unusable. ``slakh_programs``: the
    model's program mapping (``SpectrogramDiffusionPipeline.slakh_programs``).

    The notes (``specdiff.midi.reader.Note``) are read once and tokenized from there (``notes_to_segments``
    on ``midi_to_notes``' output is what ``midi_to_segments`` does), so the piano roll
    (:func:`write_notes_json`) shows exactly what the model gets: sustain applied, programs mapped to
    Slakh classes. Parsing stops at ``max_notes`` notes or ``max_events`` events of any kind, so a
    dense file costs little to refuse; ``check_cancelled`` is called now and then (and between the
    steps) and may raise to abandon the work.
    """
    from specdiff.midi.reader import DEFAULT_MAX_EVENTS, midi_to_notes
    from specdiff.midi.tokenizer import TokenizedMidi, notes_to_segments

    check = check_cancelled or (lambda: None)
    try:
        notes, total_time = midi_to_notes(
            data, max_bytes=max_bytes, max_seconds=max_seconds, max_notes=max_notes,
            max_events=DEFAULT_MAX_EVENTS if max_events is None else max_events, check_cancelled=check,
            slakh_programs=slakh_programs,
        )  # fmt: skip
    except MidiError as err:
        # The tokenizer names bytes input "MIDI data"; the client knows its file by name.
        message = str(err).replace("MIDI data", name, 1)
        for limit in ("limit max_notes", "limit max_events"):
            message = message.replace(limit, "this server's limit")
        raise MidiError(message) from None
    check()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        segments = notes_to_segments(notes, total_time)
    for warning in caught:  # e.g. a segment too dense for 2048 tokens was truncated
        logger.warning("%s: %s", name, warning.message)
    check()
    return TokenizedMidi(segments, total_time, notes, slakh_programs), notes


def write_notes_json(notes: list[Any], duration: float, path: Path) -> Path:
    """The piano roll's notes as JSON (``{"duration_s", "notes": [{pitch, start, end, velocity,
    program, is_drum}]}``), written atomically. On disk, not in memory: a dense file's notes are
    megabytes of JSON, and a server keeps many finished jobs."""
    import json

    from specdiff.atomic import atomic_write

    def write(tmp: Path) -> None:
        with open(tmp, "w", encoding="utf-8") as out:
            out.write(f'{{"duration_s": {json.dumps(float(duration))}, "notes": [')
            for i, n in enumerate(notes):
                out.write(("," if i else "") + json.dumps(
                    {"pitch": n.pitch, "start": round(n.start, 4), "end": round(n.end, 4), "velocity": n.velocity,
                     "program": n.program, "is_drum": bool(n.is_drum)}, separators=(",", ":")))  # fmt: skip
            out.write("]}")

    return atomic_write(path, write)


def save_spectrogram(mel: Any, path: Path, title: str | None = None) -> Path:
    """The spectrogram PNG: ``specdiff.evaluation.plotting`` (matplotlib) when it works, else our plain one."""
    try:
        from specdiff.evaluation.plotting import save_spectrogram_png

        return save_spectrogram_png(mel, path, title=title)
    except ImportError:  # matplotlib missing (plotting's PlottingUnavailable is an ImportError)
        pass
    from specdiff.server.png import write_spectrogram_png

    return write_spectrogram_png(mel, path)


class Synthesizer:
    """Runs jobs on one pipeline (the job queue's ``runner``); only one job at a time."""

    def __init__(
        self, pipe: SpectrogramDiffusionPipeline, draw_spectrogram: Callable[[Any, Path, str | None], Any] | None = None
    ) -> None:
        """``draw_spectrogram(mel, path, title)`` writes the PNG (default :func:`save_spectrogram`)."""
        self.pipe = pipe
        self.draw_spectrogram = draw_spectrogram or save_spectrogram
        self._current: tuple[Job, JobQueue] | None = None

    # -- facts about the model, for validation and /api/info ----------------------------------------

    @property
    def segment_frames(self) -> int:
        config = self.pipe.decoder.config
        return int(config["targets_length"] if isinstance(config, dict) else config.targets_length)

    @property
    def sample_rate(self) -> int:
        return int(self.pipe.sample_rate)

    def max_steps_for(self, scheduler: str) -> int | None:
        """diffusers' schedulers cannot take more steps than their training timesteps."""
        return self.pipe.max_steps(scheduler)

    def segments_for(self, midi: Any) -> int:
        """How many segments the pipeline will generate (it stops after the release tail)."""
        return self.pipe.plan(midi).segments

    # -- the runner -------------------------------------------------------------------------------

    def __call__(self, job: Job, queue: JobQueue) -> None:
        import torch

        from specdiff.audio.files import save_wav

        settings = job.settings
        segments = self.segments_for(job.midi)
        queue.update(job, total_segments=segments, total_steps=segments * settings.steps)
        # A CPU generator: the same seed gives the same audio on every device (as `specdiff synth`).
        generator = torch.Generator(device="cpu").manual_seed(settings.seed)
        self._current = (job, queue)
        try:
            result = self.pipe(
                job.midi,
                generator=generator,
                num_inference_steps=settings.steps,
                guidance_scale=settings.guidance,
                scheduler=settings.scheduler,
                callback=lambda i, _mel: queue.update(job, segments_done=i + 1),
                callback_on_step_end=self._step_end,
                show_progress=False,
            )
        finally:
            self._current = None
        job.check_cancelled()  # cancelled while the inverter ran: do not write anything
        audio = np.asarray(result.audios[0], dtype=np.float32)
        # save_wav soft-limits audio over full scale (never hard clipping); the job says so.
        peak = float(np.abs(audio).max(initial=0.0))
        audio_path = save_wav(job.folder / AUDIO_NAME, audio, self.sample_rate)
        spectrogram_path = self.draw_spectrogram(result.mels[0], job.folder / SPECTROGRAM_NAME, job.midi_name)
        queue.update(
            job,
            audio_path=audio_path,
            spectrogram_path=spectrogram_path,
            audio_seconds=result.audios.shape[-1] / self.sample_rate,
            sample_rate=self.sample_rate,
            audio_peak=round(peak, 4),
            limited=peak > 1.0,
        )

    def _step_end(
        self, pipe: SpectrogramDiffusionPipeline, step_index: int, timestep: Any, callback_kwargs: dict[str, Any]
    ) -> dict[str, Any]:
        """Count the step, then stop a cancelled job (``callback_on_step_end``)."""
        if self._current is not None:
            job, queue = self._current
            queue.update(job, step=min(job.step + 1, job.total_steps))
            job.check_cancelled()
        return callback_kwargs

    def close(self) -> None:
        """Nothing to undo: the synthesizer attaches nothing to the pipeline (kept for the app's shutdown)."""
        self._current = None
