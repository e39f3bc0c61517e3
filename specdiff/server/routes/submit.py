"""``POST /api/jobs``: a MIDI upload (or a bundled example's name) and its settings into the queue.

A full queue is refused before the body is read (``specdiff.server.gates``); here a place is
reserved before the MIDI is parsed, and the parse runs in a worker thread, one upload at a time,
within a wall-clock budget (``specdiff.server.uploads``).
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import shutil
from pathlib import Path
from typing import Any

from fastapi import APIRouter, File, Form, HTTPException, Response, UploadFile

from specdiff.errors import MidiError
from specdiff.server.config import ServeConfig
from specdiff.server.gates import RETRY_AFTER_SECONDS
from specdiff.server.jobs import NOTES_NAME, Job, JobSettings, QueueFull, new_job_id
from specdiff.server.schemas import JobOut, SchedulerName, error_responses, job_status
from specdiff.server.state import ServerState, State
from specdiff.server.synth import write_notes_json
from specdiff.server.uploads import ParseTicket, ReaderBusy, UploadCancelled

logger = logging.getLogger("specdiff.serve")

#: The one path that takes a request body worth limiting (the app's upload middleware watches it).
UPLOAD_PATH = "/api/jobs"


def submit_router(config: ServeConfig) -> APIRouter:
    """The router for ``POST /api/jobs``.

    Made per app, unlike the other routers: the form's defaults and bounds come from ``config``
    and FastAPI reads them from the endpoint's signature, for validation (the 422 answers name
    them) and for the OpenAPI document. The endpoint only declares the form; :func:`submit_job`
    does the work."""
    router = APIRouter(tags=["jobs"])

    @router.post(
        UPLOAD_PATH, status_code=202, response_model=JobOut, responses=error_responses(400, 413, 422, 429, 503)
    )
    async def submit(
        response: Response,
        state: State,
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
        settings = JobSettings(steps=steps, guidance=float(guidance), scheduler=scheduler,
                               seed=seed if seed is not None else secrets.randbelow(2**31))  # fmt: skip
        return await submit_job(state, response, midi, example, settings)

    return router


async def submit_job(
    state: ServerState, response: Response, midi: UploadFile | None, example: str | None, settings: JobSettings
) -> dict[str, Any]:
    """Check the request, read the upload, parse it into a job and queue it; the job's status (202)."""
    if (midi is None) == (example is None):
        raise HTTPException(400, "send either a MIDI file (field 'midi') or an example name (field 'example')")
    scheduler = settings.scheduler
    if scheduler not in state.schedulers:
        raise HTTPException(422, f"scheduler {scheduler} needs diffusers, which is not installed here")
    limit = state.synthesizer.max_steps_for(scheduler)
    if limit is not None and settings.steps > limit:
        raise HTTPException(422, f"scheduler {scheduler} allows at most {limit} steps for this model")
    name, data = await read_upload(state, midi, example)
    job = await queue_upload(state, data, name, settings)
    response.headers["Location"] = f"/api/jobs/{job.id}"
    logger.info("job %s queued: %s, %.1f s, %s", job.id, name, job.duration, job.settings)
    return state.queue.snapshot(job.id, job_status)


async def read_upload(state: ServerState, midi: UploadFile | None, example: str | None) -> tuple[str, bytes]:
    """The upload's display name and bytes (413 past the size limit), or the named example's (404
    for an unknown name)."""
    if midi is not None:
        name = safe_name(midi.filename)
        data = await midi.read(state.config.max_upload_bytes + 1)
        if len(data) > state.config.max_upload_bytes:
            raise HTTPException(413, state.too_large)
        return name, data
    if example not in state.examples:
        raise HTTPException(404, f"unknown example {example!r}; see /api/info for the list")
    return example, await asyncio.to_thread(state.examples[example].read_bytes)


async def queue_upload(state: ServerState, data: bytes, name: str, settings: JobSettings) -> Job:
    """Reserve a queue place, parse the upload into a job (in a worker thread) and queue it; the
    refusals as HTTP errors (429 no room, 400 unusable MIDI, 503 shutting down)."""
    queue, reader = state.queue, state.reader
    try:
        # Waiting for its turn to be read holds no queue place; the place is reserved (or the
        # upload refused) when its turn comes, before the parse.
        async with reader.turn():
            with queue.reserve():
                ticket = reader.ticket(name)
                job = await reader.run(ticket, lambda ticket: make_job(state, data, name, settings, ticket))
                queue.submit(job, reserved=True)
                ticket.release()
    except ReaderBusy:
        err = queue.refuse(f"the queue is full ({state.config.max_queued} jobs waiting or being read); try again later")
        raise HTTPException(429, str(err), headers={"Retry-After": str(RETRY_AFTER_SECONDS)}) from None
    except QueueFull as err:
        raise HTTPException(429, str(err), headers={"Retry-After": str(RETRY_AFTER_SECONDS)}) from None
    except MidiError as err:
        raise HTTPException(400, str(err)) from None
    except UploadCancelled as err:
        raise HTTPException(503, str(err), headers={"Connection": "close"}) from None
    return job


def make_job(state: ServerState, data: bytes, name: str, settings: JobSettings, ticket: ParseTicket) -> Job:
    """Parse and tokenize an upload and write its notes to the job's folder (in a worker thread,
    within the ticket's wall-clock budget; abandoned, leaving no files, once it is cancelled)."""
    config = state.config
    # a model that reads General MIDI programs (gm_programs) is told so; the original's readers need no argument
    slakh = getattr(getattr(state.synthesizer, "pipe", None), "slakh_programs", True)
    programs = {} if slakh else {"slakh_programs": False}
    tokenized, notes = state.read_midi(data, name, config.max_midi_seconds, config.max_upload_bytes,
                                       config.max_notes, config.max_events, check_cancelled=ticket.check,
                                       **programs)  # fmt: skip
    ticket.check()
    job_id = new_job_id()
    folder = state.queue.new_folder(job_id)
    ticket.keep_folder(folder)
    try:
        notes_path = write_notes_json(notes, tokenized.duration, folder / NOTES_NAME)
    except BaseException:
        shutil.rmtree(folder, ignore_errors=True)
        raise
    job = Job(id=job_id, settings=settings, midi=tokenized, midi_name=name, folder=folder,
              duration=float(tokenized.duration), note_count=len(notes), notes_path=notes_path)  # fmt: skip
    job.total_segments = state.synthesizer.segments_for(tokenized)
    job.total_steps = job.total_segments * settings.steps
    return job


def safe_name(name: str | None) -> str:
    """A display name for an upload: the file name only, printable, not too long."""
    name = Path(name or "upload.mid").name
    name = "".join(c for c in name if c.isprintable() and c not in '"\\')[:100]
    return name or "upload.mid"
