"""The API's JSON shapes: response models (they make the OpenAPI document), errors, a job's view.

The models carry no docstrings on purpose: pydantic would put them into the OpenAPI schema as
descriptions, and the published document stays as it is.
"""

from __future__ import annotations

import time
from typing import Any, Literal

from pydantic import BaseModel, Field

from specdiff.audio.files import LIMITER_NOTE
from specdiff.constants import SCHEDULERS
from specdiff.server.jobs import Job, JobState

SchedulerName = Literal[tuple(SCHEDULERS)]  # type: ignore[valid-type]


class ErrorOut(BaseModel):
    detail: str = Field(description="what went wrong, in one line")


class SettingsOut(BaseModel):
    steps: int = Field(description="denoising steps per 5.12 s segment")
    guidance: float = Field(description="classifier-free guidance weight (1 = off)")
    seed: int = Field(description="random seed actually used")
    scheduler: str = Field(description="sampler")


class MidiOut(BaseModel):
    name: str
    duration_s: float = Field(description="length of the music in seconds")
    notes: int
    segments: int = Field(description="5.12 s segments the model generates")


class ProgressOut(BaseModel):
    step: int = Field(description="denoising steps done, over all segments")
    total_steps: int
    segments_done: int
    total_segments: int
    fraction: float = Field(description="step / total_steps, 1.0 once done")


class JobOut(BaseModel):
    id: str
    state: Literal["queued", "running", "done", "failed", "cancelled"]
    queue_position: int | None = Field(None, description="jobs ahead of this one (0: next); null unless queued")
    cancel_requested: bool = False
    progress: ProgressOut
    settings: SettingsOut
    midi: MidiOut
    error: str | None = Field(None, description="why the job failed or was cancelled")
    created_at: float = Field(description="Unix time")
    started_at: float | None = None
    finished_at: float | None = None
    expires_at: float | None = Field(None, description="Unix time after which the results are deleted")
    elapsed_s: float | None = Field(None, description="synthesis wall time so far")
    audio_seconds: float | None = None
    sample_rate: int | None = None
    audio_peak: float | None = Field(
        None, description="the synthesized audio's peak (1.0 = full scale), before limiting"
    )
    limited: bool = Field(False, description="the peak exceeded full scale, so a soft limiter shaped the WAV")
    limiter_note: str | None = Field(None, description="what the limiter did, when it was applied")
    links: dict[str, str]


class NoteOut(BaseModel):
    pitch: int
    start: float
    end: float
    velocity: int
    program: int = Field(description="General MIDI program (Slakh class for non-drum notes)")
    is_drum: bool


class NotesOut(BaseModel):
    duration_s: float
    notes: list[NoteOut]


class ExampleOut(BaseModel):
    name: str


class LimitsOut(BaseModel):
    max_upload_bytes: int
    max_midi_seconds: float
    max_notes: int
    max_events: int = Field(description="most MIDI events of every kind (notes, pedal, controllers, meta)")
    max_parse_seconds: float = Field(description="wall-clock seconds an upload may take to read")
    max_queued: int
    max_steps: int
    max_guidance: float
    result_ttl_s: float
    fetched_ttl_s: float
    max_kept_results: int
    max_kept_bytes: int


class DefaultsOut(BaseModel):
    steps: int
    guidance: float
    scheduler: str


class InfoOut(BaseModel):
    version: str
    model: str
    device: str
    sample_rate: int
    segment_seconds: float
    inverter: str
    schedulers: list[str] = Field(description="samplers usable here (diffusers' need diffusers installed)")
    defaults: DefaultsOut
    limits: LimitsOut
    examples: list[ExampleOut]


class HealthOut(BaseModel):
    status: str
    queued: int
    running: int
    max_queued: int
    kept: int = Field(description="finished jobs whose results are kept")
    kept_bytes: int = Field(description="bytes of those results on disk")
    submitted: int
    refused: int
    done: int
    failed: int
    cancelled: int
    expired: int
    evicted: int


ERRORS: dict[int | str, dict[str, Any]] = {
    code: {"model": ErrorOut, "description": text}
    for code, text in {
        400: "unusable MIDI (not a MIDI file, no notes, too long) or neither/both of midi and example",
        404: "unknown job or example, or the results expired",
        409: "the result is not ready (the job is queued, running, failed or cancelled)",
        410: "the job's results were evicted to bound the server's memory and disk (oldest first)",
        413: "upload too large",
        422: "invalid settings",
        429: "the queue is full (or too many uploads wait to be read, or too many progress streams are open); "
        "retry after Retry-After seconds",
        503: "the server is shutting down",
    }.items()
}


def error_responses(*codes: int) -> dict[int | str, dict[str, Any]]:
    """The OpenAPI ``responses`` entries for these error status codes (a route's possible refusals)."""
    return {code: ERRORS[code] for code in codes}


def job_status(job: Job, position: int | None) -> dict[str, Any]:
    """The JSON view of ``job`` (a :class:`JobOut`), ``position``: its place in the queue (None unless queued).

    Called under the queue's lock (``JobQueue.snapshot``), so the fields are read at one moment."""
    base = f"/api/jobs/{job.id}"
    links = {"self": base, "events": f"{base}/events", "notes": f"{base}/notes"}
    if job.state is JobState.DONE:
        links.update(audio=f"{base}/audio.wav", spectrogram=f"{base}/spectrogram.png")
    end = job.finished_at if job.finished_at is not None else time.time()
    total = max(job.total_steps, 1)
    fraction = 1.0 if job.state is JobState.DONE else min(job.step / total, 1.0)
    settings = job.settings
    return {
        "id": job.id,
        "state": job.state.value,
        "queue_position": position,
        "cancel_requested": job.cancel_requested.is_set(),
        "progress": {"step": job.step, "total_steps": job.total_steps, "segments_done": job.segments_done,
                     "total_segments": job.total_segments, "fraction": round(fraction, 4)},
        "settings": {"steps": settings.steps, "guidance": settings.guidance, "seed": settings.seed,
                     "scheduler": settings.scheduler},
        "midi": {"name": job.midi_name, "duration_s": round(job.duration, 3), "notes": job.note_count,
                 "segments": job.total_segments},
        "error": job.error,
        "created_at": job.created_at,
        "started_at": job.started_at,
        "finished_at": job.finished_at,
        "expires_at": job.expires_at,
        "elapsed_s": None if job.started_at is None else round(end - job.started_at, 3),
        "audio_seconds": job.audio_seconds,
        "sample_rate": job.sample_rate,
        "audio_peak": job.audio_peak,
        "limited": job.limited,
        "limiter_note": LIMITER_NOTE if job.limited else None,
        "links": links,
    }  # fmt: skip
