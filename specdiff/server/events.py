"""A job's progress as server-sent events: the stream behind ``GET /api/jobs/{id}/events``.

The stream polls the queue (cheap: one snapshot under its lock) and sends the job's status whenever
it changes, until the job ends, disappears, the client goes away or the server stops. Streams are
counted per client address and in all, so that open connections cannot pile up without bound.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator

from fastapi import HTTPException, Request
from fastapi.responses import StreamingResponse

from specdiff.server.gates import RETRY_AFTER_SECONDS
from specdiff.server.jobs import JobNotFound
from specdiff.server.schemas import job_status
from specdiff.server.state import ServerState

#: How often a progress stream looks for news, and how often it sends a keep-alive comment.
EVENT_POLL_SECONDS = 0.1
EVENT_KEEPALIVE_SECONDS = 15.0
#: States after which a job no longer changes.
FINAL_STATES = ("done", "failed", "cancelled")


def open_event_stream(state: ServerState, job_id: str, request: Request) -> StreamingResponse:
    """The response streaming ``job_id``'s progress; 404/410 for an unknown or evicted job, 429 when
    the client (or everyone) already holds the most streams allowed."""
    state.lookup(job_id)
    config, open_streams = state.config, state.open_streams
    client = request.client.host if request.client else "?"
    if open_streams[client] >= config.max_streams_per_client or open_streams.total() >= config.max_streams:
        raise HTTPException(429, f"too many open progress streams (at most {config.max_streams_per_client} per "
                            f"client, {config.max_streams} in all); poll GET /api/jobs/{job_id} instead",
                            headers={"Retry-After": str(RETRY_AFTER_SECONDS)})  # fmt: skip
    open_streams[client] += 1
    return StreamingResponse(_counted(state, client, job_events(state, job_id, request)),
                             media_type="text/event-stream",
                             headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})  # fmt: skip


async def _counted(state: ServerState, client: str, events: AsyncIterator[str]) -> AsyncIterator[str]:
    """``events``, giving the client's stream place back when it ends (however it ends)."""
    try:
        async for event in events:
            yield event
    finally:
        state.open_streams[client] -= 1
        if state.open_streams[client] <= 0:
            del state.open_streams[client]


async def job_events(state: ServerState, job_id: str, request: Request) -> AsyncIterator[str]:
    """The event stream's messages: ``status`` on every change, a keep-alive comment when quiet,
    ``gone`` if the job disappears, ``shutdown`` when the server stops."""
    last_key, last_sent = None, time.monotonic()
    while not await request.is_disconnected():
        if state.stopping.is_set():
            yield f"event: shutdown\ndata: {json.dumps({'detail': 'the server is shutting down'})}\n\n"
            return
        try:
            # The job's version and queue position say whether anything changed since the last message.
            key, payload = state.queue.snapshot(job_id, lambda job, pos: ((job.version, pos), job_status(job, pos)))
        except JobNotFound:
            yield "event: gone\ndata: {}\n\n"
            return
        if key != last_key:
            last_key, last_sent = key, time.monotonic()
            yield f"event: status\ndata: {json.dumps(payload)}\n\n"
            if payload["state"] in FINAL_STATES:
                return
        elif time.monotonic() - last_sent > EVENT_KEEPALIVE_SECONDS:
            last_sent = time.monotonic()
            yield ": keep-alive\n\n"
        await asyncio.sleep(EVENT_POLL_SECONDS)
