"""Following and managing a job: its status, its progress as events, its notes, cancel and delete."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, HTTPException, Request, Response
from fastapi.responses import FileResponse, StreamingResponse

from specdiff.server.events import open_event_stream
from specdiff.server.jobs import JobGone, JobNotFound
from specdiff.server.schemas import JobOut, NotesOut, error_responses, job_status
from specdiff.server.state import State

router = APIRouter(tags=["jobs"])


@router.get("/api/jobs/{job_id}", response_model=JobOut, responses=error_responses(404, 410))
def status(job_id: str, state: State) -> dict[str, Any]:
    """The job's state, queue position and progress."""
    return state.lookup(job_id, job_status)


@router.get(
    "/api/jobs/{job_id}/events", responses={
        200: {"content": {"text/event-stream": {}},
              "description": "`event: status` with a job status (as GET /api/jobs/{id}) on every change, "
              "until the job ends; `event: gone` if it disappears; `event: shutdown` if the server stops"},
        **error_responses(404, 429)},
)  # fmt: skip
async def events(job_id: str, request: Request, state: State) -> StreamingResponse:
    """Progress as server-sent events (an alternative to polling)."""
    return open_event_stream(state, job_id, request)


@router.get(
    "/api/jobs/{job_id}/notes", response_class=FileResponse,
    responses={200: {"model": NotesOut, "description": "the notes, JSON"}, **error_responses(404, 409, 410)},
)  # fmt: skip
def notes(job_id: str, state: State) -> FileResponse:
    """The notes the model is conditioned on (sustain applied, Slakh programs), for a piano roll.
    Kept on disk with the job's results (not for failed or cancelled jobs)."""
    _, path = state.result_file(job_id, "notes_path", need_done=False)
    return FileResponse(path, media_type="application/json")


@router.post("/api/jobs/{job_id}/cancel", response_model=JobOut, responses=error_responses(404))
def cancel(job_id: str, state: State) -> dict[str, Any]:
    """Cancel a queued job at once, or a running one at its next denoising step (a job that has
    already ended is returned unchanged)."""
    try:
        state.queue.cancel(job_id)
    except JobGone as err:
        raise HTTPException(410, str(err)) from None
    except JobNotFound as err:
        raise HTTPException(404, str(err)) from None
    return state.lookup(job_id, job_status)


@router.delete("/api/jobs/{job_id}", status_code=204, responses=error_responses(404))
def delete(job_id: str, state: State) -> Response:
    """Cancel the job if it has not ended, then forget it and delete its results."""
    try:
        state.queue.delete(job_id)
    except JobGone as err:
        raise HTTPException(410, str(err)) from None
    except JobNotFound as err:
        raise HTTPException(404, str(err)) from None
    return Response(status_code=204)
