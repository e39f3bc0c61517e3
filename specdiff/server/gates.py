"""Refusals before an upload is read: a full queue (429) and an oversized body (413), as ASGI middleware.

FastAPI reads and parses a multipart form before the endpoint runs, so these checks cannot live in
the route: here a refused client costs its request line and headers, and at most ``drain_bytes``
of body read and dropped so that it sees the answer rather than a reset connection.
"""

from __future__ import annotations

from typing import Any

from fastapi import HTTPException
from fastapi.responses import JSONResponse

from specdiff.server.guards import DRAIN_BYTES, drain_body
from specdiff.server.jobs import JobQueue

#: Seconds a client is told to wait when the queue (or the stream limit) is full.
RETRY_AFTER_SECONDS = 10


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
