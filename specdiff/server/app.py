"""The FastAPI application: JSON API, progress events, results, and the single web page.

API (the OpenAPI schema is at ``/openapi.json``, browsable at ``/docs``)::

    GET    /api/info                         model, limits, defaults, schedulers, examples
    POST   /api/jobs                         multipart: midi file (or example name) + settings -> 202
    GET    /api/jobs/{id}                    status: state, queue position, progress, error
    GET    /api/jobs/{id}/events             the same as server-sent events, until the job ends (or the server stops)
    GET    /api/jobs/{id}/notes              the notes the model sees (for the piano roll)
    GET    /api/jobs/{id}/audio.wav          the result (409 until done)
    GET    /api/jobs/{id}/spectrogram.png    the generated log-mel spectrogram (409 until done)
    POST   /api/jobs/{id}/cancel             stop a waiting or running job
    DELETE /api/jobs/{id}                    cancel if needed, then forget the job and its files
    GET    /api/health                       queue counters

Requests from other sites are refused: a ``Host`` that is not a name of this server with 400 (DNS
rebinding), a state-changing request whose ``Origin`` is another site's with 403
(``specdiff.server.guards``).

Errors are JSON ``{"detail": "one line"}``: 400 unusable MIDI (not MIDI, no notes, too long, too
many notes or events, too slow to read), 404 unknown or expired job, 409 result not ready, 410
results evicted to bound memory and disk, 413 upload too large, 422 bad settings, 429 queue full
(with ``Retry-After``; refused before the upload is read), 503 shutting down.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import importlib.util
import json
import logging
import secrets
import shutil
import socket
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Literal

from fastapi import FastAPI, File, Form, HTTPException, Request, Response, UploadFile
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse, StreamingResponse
from fastapi.staticfiles import StaticFiles
from pydantic import BaseModel, Field

from specdiff import __version__
from specdiff.audio.files import LIMITER_NOTE
from specdiff.constants import FRAMES_PER_SECOND, NATIVE_SCHEDULERS, SCHEDULERS
from specdiff.errors import MidiError
from specdiff.server.config import ServeConfig
from specdiff.server.docs import add_offline_docs
from specdiff.server.guards import DRAIN_BYTES, CrossSiteGuard, HostPolicy, SecurityHeaders, TokenGuard, drain_body
from specdiff.server.jobs import (
    NOTES_NAME,
    Job,
    JobGone,
    JobNotFound,
    JobQueue,
    JobSettings,
    JobState,
    QueueFull,
    new_job_id,
)
from specdiff.server.synth import Synthesizer, read_midi, write_notes_json
from specdiff.server.uploads import ParseTicket, ReaderBusy, UploadCancelled, UploadReader

logger = logging.getLogger("specdiff.serve")

WEB_DIR = Path(__file__).resolve().parent.parent / "web"
#: Room for the multipart framing and the small form fields around the MIDI file.
FORM_OVERHEAD_BYTES = 16 * 1024
UPLOAD_PATH = "/api/jobs"
#: Seconds a client is told to wait when the queue is full.
RETRY_AFTER_SECONDS = 10
#: How often a progress stream looks for news, and how often it sends a keep-alive comment.
EVENT_POLL_SECONDS = 0.1
EVENT_KEEPALIVE_SECONDS = 15.0

SchedulerName = Literal[tuple(SCHEDULERS)]  # type: ignore[valid-type]


# ---------------------------------------------------------------------------------------------
# Schemas (they make the OpenAPI document)
# ---------------------------------------------------------------------------------------------


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


def _responses(*codes: int) -> dict[int | str, dict[str, Any]]:
    return {code: ERRORS[code] for code in codes}


# ---------------------------------------------------------------------------------------------
# Upload size limit
# ---------------------------------------------------------------------------------------------


class AdmissionGate:
    """ASGI middleware: refuse a submission with 429 while the queue is full, before its body is read.

    FastAPI reads and parses the multipart form before the endpoint runs; checking here means a full
    queue costs a refused client nothing but its request line and headers (the body is drained, not
    parsed, so the client sees the 429 instead of a reset connection).
    """

    def __init__(self, app: Any, queue: JobQueue, path: str, drain_bytes: int = DRAIN_BYTES) -> None:
        self.app, self.queue, self.path, self.drain_bytes = app, queue, path, drain_bytes

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http" or scope["method"] != "POST" or scope["path"] != self.path or self.queue.has_room():
            await self.app(scope, receive, send)
            return
        self.queue.counts["refused"] += 1
        await drain_body(receive, True, self.drain_bytes)
        response = JSONResponse(
            {"detail": f"the queue is full ({self.queue.max_queued} jobs waiting); try again later"},
            status_code=429, headers={"Retry-After": str(RETRY_AFTER_SECONDS), "Connection": "close"},
        )  # fmt: skip
        await response(scope, receive, send)


class UploadLimit:
    """ASGI middleware: refuse request bodies to ``path`` over ``limit`` bytes with 413.

    Nothing past the limit is kept: a declared Content-Length over it is refused before the app
    sees the request, and a chunked body is counted as it arrives and refused once it passes the
    limit, so an oversized upload never reaches the multipart parser's spool file in full. The rest
    of the body is read and dropped (up to ``drain_bytes``) before answering: a client still
    sending would otherwise see a reset connection instead of the 413 and its reason.
    """

    def __init__(self, app: Any, limit: int, path: str, describe: str, drain_bytes: int = DRAIN_BYTES) -> None:
        self.app, self.limit, self.path, self.describe, self.drain_bytes = app, limit, path, describe, drain_bytes

    async def _drain(self, receive: Any, more_body: bool) -> None:
        await drain_body(receive, more_body, self.drain_bytes)

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http" or scope["method"] != "POST" or scope["path"] != self.path:
            await self.app(scope, receive, send)
            return
        headers = dict(scope.get("headers") or [])
        declared = headers.get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.limit:
            await self._drain(receive, True)
            response = JSONResponse({"detail": self.describe}, status_code=413, headers={"Connection": "close"})
            await response(scope, receive, send)
            return
        received = 0

        async def limited_receive() -> dict:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.limit:
                    await self._drain(receive, message.get("more_body", False))
                    raise HTTPException(413, self.describe, headers={"Connection": "close"})
            return message

        await self.app(scope, limited_receive, send)


# ---------------------------------------------------------------------------------------------
# The application
# ---------------------------------------------------------------------------------------------


def _status(job: Job, position: int | None) -> dict[str, Any]:
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


def _safe_name(name: str | None) -> str:
    """A display name for an upload: the file name only, printable, not too long."""
    name = Path(name or "upload.mid").name
    name = "".join(c for c in name if c.isprintable() and c not in '"\\')[:100]
    return name or "upload.mid"


def create_app(
    synthesizer: Synthesizer,
    config: ServeConfig | None = None,
    model_name: str = "(in memory)",
    device: str | None = None,
) -> FastAPI:
    """The service around one loaded pipeline (wrapped in a :class:`Synthesizer`).

    The job queue's worker starts with the application (ASGI lifespan) and stops with it; results
    live in ``config.workdir`` (a temporary folder, removed at shutdown, when it is None).
    """
    config = config or ServeConfig()
    own_workdir = config.workdir is None
    # Our own temporary folder is made at startup (not here), so an app that never runs leaves none.
    queue = JobQueue(synthesizer, Path(config.workdir or "."), max_queued=config.max_queued,
                     result_ttl=config.result_ttl, fetched_ttl=config.fetched_ttl,
                     max_kept_results=config.max_kept_results, max_kept_bytes=config.max_kept_bytes,
                     persistent=not own_workdir)  # fmt: skip
    examples = {path.name: path for path in config.examples}
    device = device or str(synthesizer.pipe.device)
    has_diffusers = importlib.util.find_spec("diffusers") is not None
    schedulers = [s for s in SCHEDULERS if s in NATIVE_SCHEDULERS or has_diffusers]

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI):
        if own_workdir:
            queue.workdir = Path(tempfile.mkdtemp(prefix="specdiff-serve-"))
        queue.start()
        try:
            yield
        finally:
            await asyncio.to_thread(queue.stop)
            if own_workdir:
                shutil.rmtree(queue.workdir, ignore_errors=True)

    app = FastAPI(
        title="specdiff",
        version=__version__,
        description="MIDI to audio with Spectrogram Diffusion (Hawthorne et al., ISMIR 2022). Submit a MIDI "
        "file and settings, follow the job, fetch the WAV and the spectrogram.",
        lifespan=lifespan,
        docs_url=None,  # FastAPI's pages load from a CDN; specdiff.server.docs serves local copies
        redoc_url=None,
    )
    app.state.queue = queue
    app.state.config = config
    # Set when the server starts shutting down (by :func:`make_server`'s server): progress streams
    # then end with `event: shutdown` at once, instead of holding the shutdown until they are cut.
    stopping = app.state.stopping = threading.Event()
    # Uploads are read one at a time, within a wall-clock budget, abandoned when the server stops.
    reader = app.state.reader = UploadReader(config.max_parse_seconds, queue.free_places, stopping)
    app.state.synthesizer = synthesizer
    # Open progress streams per client address (the event loop's thread only: no lock).
    open_streams = app.state.open_streams = collections.Counter()
    too_large = f"upload too large: the limit is {config.max_upload_bytes} bytes for the MIDI file"
    app.add_middleware(UploadLimit, limit=config.max_upload_bytes + FORM_OVERHEAD_BYTES, path=UPLOAD_PATH,
                       describe=too_large)  # fmt: skip
    # Added later, so it runs earlier: a full queue refuses before the size check reads anything.
    app.add_middleware(AdmissionGate, queue=queue, path=UPLOAD_PATH)
    if config.token is not None:  # a request without the token is refused before the upload is read
        app.add_middleware(TokenGuard, token=config.token)
    # A request from another site is refused before anything else looks at it.
    app.add_middleware(CrossSiteGuard, hosts=HostPolicy(config.bind_host, config.allowed_hosts),
                       allowed_origins=config.allowed_origins)  # fmt: skip
    # Outermost, so that every answer (refusals included) carries the headers.
    app.add_middleware(SecurityHeaders)

    @app.exception_handler(RequestValidationError)
    async def one_line_validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
        # One {"detail": "..."} line like every other error, naming the fields, never echoing the
        # input (FastAPI's default body repeats it, a whole upload included).
        problems = []
        for error in exc.errors():
            where = ".".join(str(part) for part in error.get("loc", ()) if part not in ("body", "query", "path"))
            problems.append(f"{where}: {error.get('msg', 'invalid')}" if where else str(error.get("msg", "invalid")))
        return JSONResponse({"detail": "invalid request: " + "; ".join(problems)}, status_code=422)

    def lookup(job_id: str, view: Any = None) -> Any:
        try:
            return queue.snapshot(job_id, view)
        except JobGone as err:
            raise HTTPException(410, str(err)) from None
        except JobNotFound as err:
            raise HTTPException(404, str(err)) from None

    # -- API ------------------------------------------------------------------------------------

    @app.get("/api/info", response_model=InfoOut, tags=["service"])
    def info() -> dict[str, Any]:
        """What this server runs and accepts."""
        return {
            "version": __version__,
            "model": model_name,
            "device": device,
            "sample_rate": synthesizer.sample_rate,
            "segment_seconds": synthesizer.segment_frames / FRAMES_PER_SECOND,
            "inverter": type(synthesizer.pipe.inverter).__name__,
            "schedulers": schedulers,
            "defaults": {"steps": config.default_steps, "guidance": config.default_guidance,
                         "scheduler": config.default_scheduler},
            "limits": {"max_upload_bytes": config.max_upload_bytes, "max_midi_seconds": config.max_midi_seconds,
                       "max_notes": config.max_notes, "max_events": config.max_events,
                       "max_parse_seconds": config.max_parse_seconds, "max_queued": config.max_queued,
                       "max_steps": config.max_steps,
                       "max_guidance": config.max_guidance, "result_ttl_s": config.result_ttl,
                       "fetched_ttl_s": config.fetched_ttl, "max_kept_results": config.max_kept_results,
                       "max_kept_bytes": config.max_kept_bytes},
            "examples": [{"name": name} for name in examples],
        }  # fmt: skip

    @app.get("/api/health", response_model=HealthOut, tags=["service"])
    def health() -> dict[str, Any]:
        """Queue counters since start."""
        return {"status": "ok", **queue.stats()}

    @app.post(
        "/api/jobs", status_code=202, response_model=JobOut, tags=["jobs"],
        responses=_responses(400, 413, 422, 429, 503),
    )  # fmt: skip
    async def submit(
        response: Response,
        midi: UploadFile | None = File(None, description="a Standard MIDI File (.mid)"),
        example: str | None = Form(None, description="or the name of a bundled example (see /api/info)"),
        steps: int = Form(config.default_steps, ge=1, le=config.max_steps),
        # allow_inf_nan=False: NaN fails every comparison, so without it the client would be told
        # "less than or equal to 20" instead of that the value must be a finite number.
        guidance: float = Form(config.default_guidance, ge=0.0, le=config.max_guidance, allow_inf_nan=False),
        seed: int | None = Form(None, ge=0, lt=2**63, description="default: a fresh random seed"),
        scheduler: SchedulerName = Form(config.default_scheduler),
    ) -> dict[str, Any]:
        """Queue a synthesis. Returns at once with the job's id and state (202).

        A full queue is refused (429) before the upload is read; otherwise a place is reserved
        before the MIDI is parsed, and the parsing runs in a worker thread, off the event loop."""
        if (midi is None) == (example is None):
            raise HTTPException(400, "send either a MIDI file (field 'midi') or an example name (field 'example')")
        if scheduler not in schedulers:
            raise HTTPException(422, f"scheduler {scheduler} needs diffusers, which is not installed here")
        limit = synthesizer.max_steps_for(scheduler)
        if limit is not None and steps > limit:
            raise HTTPException(422, f"scheduler {scheduler} allows at most {limit} steps for this model")
        if midi is not None:
            name = _safe_name(midi.filename)
            data = await midi.read(config.max_upload_bytes + 1)
            if len(data) > config.max_upload_bytes:
                raise HTTPException(413, too_large)
        else:
            if example not in examples:
                raise HTTPException(404, f"unknown example {example!r}; see /api/info for the list")
            name, data = example, await asyncio.to_thread(examples[example].read_bytes)
        settings = JobSettings(steps=steps, guidance=float(guidance), scheduler=scheduler,
                               seed=seed if seed is not None else secrets.randbelow(2**31))  # fmt: skip
        try:
            # Waiting for its turn to be read holds no queue place; the place is reserved (or the
            # upload refused) when its turn comes, before the parse.
            async with reader.turn():
                with queue.reserve():
                    ticket = reader.ticket(name)
                    job = await reader.run(ticket, lambda ticket: make_job(data, name, settings, ticket))
                    queue.submit(job, reserved=True)
                    ticket.release()
        except ReaderBusy:
            err = queue.refuse(f"the queue is full ({config.max_queued} jobs waiting or being read); try again later")
            raise HTTPException(429, str(err), headers={"Retry-After": str(RETRY_AFTER_SECONDS)}) from None
        except QueueFull as err:
            raise HTTPException(429, str(err), headers={"Retry-After": str(RETRY_AFTER_SECONDS)}) from None
        except MidiError as err:
            raise HTTPException(400, str(err)) from None
        except UploadCancelled as err:
            raise HTTPException(503, str(err), headers={"Connection": "close"}) from None
        response.headers["Location"] = f"/api/jobs/{job.id}"
        logger.info("job %s queued: %s, %.1f s, %s", job.id, name, job.duration, job.settings)
        return queue.snapshot(job.id, _status)

    @app.get("/api/jobs/{job_id}", response_model=JobOut, tags=["jobs"], responses=_responses(404, 410))
    def status(job_id: str) -> dict[str, Any]:
        """The job's state, queue position and progress."""
        return lookup(job_id, _status)

    @app.get(
        "/api/jobs/{job_id}/events", tags=["jobs"], responses={
            200: {"content": {"text/event-stream": {}},
                  "description": "`event: status` with a job status (as GET /api/jobs/{id}) on every change, "
                  "until the job ends; `event: gone` if it disappears; `event: shutdown` if the server stops"},
            **_responses(404, 429)},
    )  # fmt: skip
    async def events(job_id: str, request: Request) -> StreamingResponse:
        """Progress as server-sent events (an alternative to polling)."""
        lookup(job_id)
        client = request.client.host if request.client else "?"
        if open_streams[client] >= config.max_streams_per_client or open_streams.total() >= config.max_streams:
            raise HTTPException(429, f"too many open progress streams (at most {config.max_streams_per_client} per "
                                f"client, {config.max_streams} in all); poll GET /api/jobs/{job_id} instead",
                                headers={"Retry-After": str(RETRY_AFTER_SECONDS)})  # fmt: skip
        open_streams[client] += 1

        async def stream():
            try:
                async for event in job_events():
                    yield event
            finally:
                open_streams[client] -= 1
                if open_streams[client] <= 0:
                    del open_streams[client]

        async def job_events():
            last_key, last_sent = None, time.monotonic()
            while not await request.is_disconnected():
                if stopping.is_set():
                    yield f"event: shutdown\ndata: {json.dumps({'detail': 'the server is shutting down'})}\n\n"
                    return
                try:
                    key, payload = queue.snapshot(job_id, lambda job, pos: ((job.version, pos), _status(job, pos)))
                except JobNotFound:
                    yield "event: gone\ndata: {}\n\n"
                    return
                if key != last_key:
                    last_key, last_sent = key, time.monotonic()
                    yield f"event: status\ndata: {json.dumps(payload)}\n\n"
                    if payload["state"] in ("done", "failed", "cancelled"):
                        return
                elif time.monotonic() - last_sent > EVENT_KEEPALIVE_SECONDS:
                    last_sent = time.monotonic()
                    yield ": keep-alive\n\n"
                await asyncio.sleep(EVENT_POLL_SECONDS)

        return StreamingResponse(stream(), media_type="text/event-stream",
                                 headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})  # fmt: skip

    @app.get(
        "/api/jobs/{job_id}/notes", tags=["jobs"], response_class=FileResponse,
        responses={200: {"model": NotesOut, "description": "the notes, JSON"}, **_responses(404, 409, 410)},
    )  # fmt: skip
    def notes(job_id: str) -> FileResponse:
        """The notes the model is conditioned on (sustain applied, Slakh programs), for a piano roll.
        Kept on disk with the job's results (not for failed or cancelled jobs)."""
        _, path = result_file(job_id, "notes_path", need_done=False)
        return FileResponse(path, media_type="application/json")

    def result_file(job_id: str, attribute: str, need_done: bool = True) -> tuple[Job, Path]:
        job, position = lookup(job_id)
        path = getattr(job, attribute)
        if (need_done and job.state is not JobState.DONE) or path is None or not path.is_file():
            reason = f": {job.error}" if job.error else ""
            raise HTTPException(409, f"job {job_id} has no result: it is {job.state.value}{reason}")
        return job, path

    @app.get(
        "/api/jobs/{job_id}/audio.wav", tags=["results"], response_class=FileResponse,
        responses={200: {"content": {"audio/wav": {}}, "description": "16-bit PCM WAV, mono"},
                   **_responses(404, 409, 410)},
    )  # fmt: skip
    def audio(job_id: str) -> FileResponse:
        """The synthesized audio. The results expire ``fetched_ttl_s`` after the first fetch."""
        job, path = result_file(job_id, "audio_path")
        queue.mark_audio_fetched(job)
        stem = Path(job.midi_name).stem or "specdiff"
        return FileResponse(path, media_type="audio/wav", filename=f"{stem}.wav", content_disposition_type="inline")

    @app.get(
        "/api/jobs/{job_id}/spectrogram.png", tags=["results"], response_class=FileResponse,
        responses={200: {"content": {"image/png": {}}, "description": "the generated log-mel spectrogram"},
                   **_responses(404, 409, 410)},
    )  # fmt: skip
    def spectrogram(job_id: str) -> FileResponse:
        """A picture of the generated log-mel spectrogram."""
        _, path = result_file(job_id, "spectrogram_path")
        return FileResponse(path, media_type="image/png")

    def make_job(data: bytes, name: str, settings: JobSettings, ticket: ParseTicket) -> Job:
        """Parse and tokenize an upload and write its notes to the job's folder (in a worker thread,
        within the ticket's wall-clock budget; abandoned, leaving no files, once it is cancelled)."""
        tokenized, notes = read_midi(data, name, config.max_midi_seconds, config.max_upload_bytes, config.max_notes,
                                     config.max_events, check_cancelled=ticket.check)  # fmt: skip
        ticket.check()
        job_id = new_job_id()
        folder = queue.new_folder(job_id)
        ticket.keep_folder(folder)
        try:
            notes_path = write_notes_json(notes, tokenized.duration, folder / NOTES_NAME)
        except BaseException:
            shutil.rmtree(folder, ignore_errors=True)
            raise
        job = Job(id=job_id, settings=settings, midi=tokenized, midi_name=name, folder=folder,
                  duration=float(tokenized.duration), note_count=len(notes), notes_path=notes_path)  # fmt: skip
        job.total_segments = synthesizer.segments_for(tokenized)
        job.total_steps = job.total_segments * settings.steps
        return job

    @app.post("/api/jobs/{job_id}/cancel", response_model=JobOut, tags=["jobs"], responses=_responses(404))
    def cancel(job_id: str) -> dict[str, Any]:
        """Cancel a queued job at once, or a running one at its next denoising step (a job that has
        already ended is returned unchanged)."""
        try:
            queue.cancel(job_id)
        except JobGone as err:
            raise HTTPException(410, str(err)) from None
        except JobNotFound as err:
            raise HTTPException(404, str(err)) from None
        return lookup(job_id, _status)

    @app.delete("/api/jobs/{job_id}", status_code=204, tags=["jobs"], responses=_responses(404))
    def delete(job_id: str) -> Response:
        """Cancel the job if it has not ended, then forget it and delete its results."""
        try:
            queue.delete(job_id)
        except JobGone as err:
            raise HTTPException(410, str(err)) from None
        except JobNotFound as err:
            raise HTTPException(404, str(err)) from None
        return Response(status_code=204)

    # -- the page -------------------------------------------------------------------------------

    @app.api_route("/", methods=["GET", "HEAD"], include_in_schema=False)
    def index() -> FileResponse:
        return FileResponse(WEB_DIR / "index.html", media_type="text/html")

    @app.api_route("/favicon.ico", methods=["GET", "HEAD"], include_in_schema=False)
    def favicon() -> FileResponse:
        # Browsers ask for /favicon.ico whatever the page says; an SVG answers them all.
        return FileResponse(WEB_DIR / "favicon.svg", media_type="image/svg+xml")

    add_offline_docs(app)

    app.mount("/static", StaticFiles(directory=WEB_DIR), name="static")
    return app


# ---------------------------------------------------------------------------------------------
# Running
# ---------------------------------------------------------------------------------------------


def server_protocol(app: FastAPI) -> type:
    """The HTTP protocol class for ``app``'s server: uvicorn's h11 one with the configured header
    timeout (``specdiff.server.protocol``)."""
    from specdiff.server.protocol import header_timeout_protocol

    return header_timeout_protocol(app.state.config.header_timeout)


def make_server(config: Any) -> Any:
    """A ``uvicorn.Server`` for ``config`` (a ``uvicorn.Config``) that, when it starts shutting down,
    sets the app's ``state.stopping`` first, so open progress streams end promptly with
    ``event: shutdown`` rather than holding the shutdown until uvicorn cancels them."""
    import uvicorn

    class StoppingServer(uvicorn.Server):
        async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
            stopping = getattr(getattr(self.config.app, "state", None), "stopping", None)
            if isinstance(stopping, threading.Event):
                stopping.set()
            await super().shutdown(sockets)

    return StoppingServer(config)


@contextlib.contextmanager
def running_server(app: FastAPI, host: str = "127.0.0.1", port: int = 0) -> Iterator[str]:
    """Serve ``app`` with uvicorn in a background thread; yields its base URL (``port=0``: any free
    port). For tests and notebooks; ``specdiff serve`` runs uvicorn in the foreground."""
    import uvicorn

    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    port = sock.getsockname()[1]
    server = make_server(uvicorn.Config(app, log_level="warning", timeout_graceful_shutdown=2,
                                        http=server_protocol(app)))  # fmt: skip
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, name="specdiff-http", daemon=True)
    thread.start()
    try:
        deadline = time.monotonic() + 30
        while not server.started:
            if not thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("the HTTP server did not start")
            time.sleep(0.02)
        yield f"http://{'[' + host + ']' if family == socket.AF_INET6 else host}:{port}"
    finally:
        server.should_exit = True
        thread.join(30)
        sock.close()
