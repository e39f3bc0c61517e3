"""A finished job's results: ``audio.wav`` and ``spectrogram.png`` (409 until the job is done)."""

from __future__ import annotations

from pathlib import Path

from fastapi import APIRouter
from fastapi.responses import FileResponse

from specdiff.server.schemas import error_responses
from specdiff.server.state import State

router = APIRouter(tags=["results"])


@router.get(
    "/api/jobs/{job_id}/audio.wav", response_class=FileResponse,
    responses={200: {"content": {"audio/wav": {}}, "description": "16-bit PCM WAV, mono"},
               **error_responses(404, 409, 410)},
)  # fmt: skip
def audio(job_id: str, state: State) -> FileResponse:
    """The synthesized audio. The results expire ``fetched_ttl_s`` after the first fetch."""
    job, path = state.result_file(job_id, "audio_path")
    state.queue.mark_audio_fetched(job)
    stem = Path(job.midi_name).stem or "specdiff"
    return FileResponse(path, media_type="audio/wav", filename=f"{stem}.wav", content_disposition_type="inline")


@router.get(
    "/api/jobs/{job_id}/spectrogram.png", response_class=FileResponse,
    responses={200: {"content": {"image/png": {}}, "description": "the generated log-mel spectrogram"},
               **error_responses(404, 409, 410)},
)  # fmt: skip
def spectrogram(job_id: str, state: State) -> FileResponse:
    """A picture of the generated log-mel spectrogram."""
    _, path = state.result_file(job_id, "spectrogram_path")
    return FileResponse(path, media_type="image/png")
