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

This module only assembles the application: the shared state (``specdiff.server.state``), the
middleware, the error handler and the routers (``specdiff.server.routes``); and runs it with uvicorn.
"""

from __future__ import annotations

import contextlib
import socket
import threading
import time
from collections.abc import AsyncIterator, Iterator
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from fastapi.staticfiles import StaticFiles

from specdiff import __version__
from specdiff.server.config import ServeConfig
from specdiff.server.docs import add_offline_docs
from specdiff.server.gates import AdmissionGate, UploadLimit
from specdiff.server.guards import CrossSiteGuard, HostPolicy, SecurityHeaders, TokenGuard
from specdiff.server.routes import jobs, pages, results, service
from specdiff.server.routes.submit import UPLOAD_PATH, submit_router
from specdiff.server.state import ServerState
from specdiff.server.synth import Synthesizer, read_midi

#: Room for the multipart framing and the small form fields around the MIDI file.
FORM_OVERHEAD_BYTES = 16 * 1024
#: The handles on ``app.state`` besides ``server`` (the same objects as its fields), read by
#: ``specdiff serve``, :func:`make_server` and tests.
STATE_HANDLES = ("config", "queue", "synthesizer", "reader", "stopping", "open_streams")


# ---------------------------------------------------------------------------------------------
# The application
# ---------------------------------------------------------------------------------------------


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
    state = ServerState.build(synthesizer, config, model_name, device, read_midi=_read_midi)
    app = FastAPI(
        title="specdiff",
        version=__version__,
        description="MIDI to audio with Spectrogram Diffusion (Hawthorne et al., ISMIR 2022). Submit a MIDI "
        "file and settings, follow the job, fetch the WAV and the spectrogram.",
        lifespan=_lifespan,
        docs_url=None,  # FastAPI's pages load from a CDN; specdiff.server.docs serves local copies
        redoc_url=None,
    )
    app.state.server = state
    for name in STATE_HANDLES:
        setattr(app.state, name, getattr(state, name))
    _add_middleware(app, state)
    app.add_exception_handler(RequestValidationError, one_line_validation_error)
    # In this order /docs lists each tag's operations as before the routes moved into routers.
    for router in (service.router, submit_router(config), jobs.router, results.router, pages.router):
        app.include_router(router)
    add_offline_docs(app)
    app.mount("/static", StaticFiles(directory=pages.WEB_DIR), name="static")
    return app


def _add_middleware(app: FastAPI, state: ServerState) -> None:
    """The refusals that come before any route, outermost last (Starlette runs the last added first)."""
    config = state.config
    app.add_middleware(UploadLimit, limit=config.max_upload_bytes + FORM_OVERHEAD_BYTES, path=UPLOAD_PATH,
                       describe=state.too_large)  # fmt: skip
    # Added later, so it runs earlier: a full queue refuses before the size check reads anything.
    app.add_middleware(AdmissionGate, queue=state.queue, path=UPLOAD_PATH)
    if config.token is not None:  # a request without the token is refused before the upload is read
        app.add_middleware(TokenGuard, token=config.token)
    # A request from another site is refused before anything else looks at it.
    app.add_middleware(CrossSiteGuard, hosts=HostPolicy(config.bind_host, config.allowed_hosts),
                       allowed_origins=config.allowed_origins)  # fmt: skip
    # Outermost, so that every answer (refusals included) carries the headers.
    app.add_middleware(SecurityHeaders)


@contextlib.asynccontextmanager
async def _lifespan(app: FastAPI) -> AsyncIterator[None]:
    """The queue's worker (and our own temporary folder) live as long as the application runs."""
    state: ServerState = app.state.server
    state.start()
    try:
        yield
    finally:
        await state.stop()


async def one_line_validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
    """Invalid settings as 422 with one ``{"detail": "..."}`` line like every other error, naming the
    fields, never echoing the input (FastAPI's default body repeats it, a whole upload included)."""
    problems = []
    for error in exc.errors():
        where = ".".join(str(part) for part in error.get("loc", ()) if part not in ("body", "query", "path"))
        problems.append(f"{where}: {error.get('msg', 'invalid')}" if where else str(error.get("msg", "invalid")))
    return JSONResponse({"detail": "invalid request: " + "; ".join(problems)}, status_code=422)


def _read_midi(*args: Any, **kwargs: Any) -> Any:
    """:func:`specdiff.server.synth.read_midi`, looked up in this module at each call: the tests
    substitute a slow or counting reader by setting ``specdiff.server.app.read_midi``."""
    return read_midi(*args, **kwargs)


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
