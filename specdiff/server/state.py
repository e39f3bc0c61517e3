"""What the routes share: :class:`ServerState`, kept on ``app.state.server`` and handed to each route
by the :data:`State` dependency.

One typed object instead of variables captured by closures: a route declares ``state: State`` and
sees the configuration, the job queue, the upload reader and the stop flag; tests and
``specdiff serve`` reach the same object through the app.
"""

from __future__ import annotations

import asyncio
import collections
import importlib.util
import shutil
import tempfile
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any

from fastapi import Depends, HTTPException, Request

from specdiff.constants import NATIVE_SCHEDULERS, SCHEDULERS
from specdiff.server.config import ServeConfig
from specdiff.server.jobs import Job, JobGone, JobNotFound, JobQueue, JobState
from specdiff.server.synth import Synthesizer
from specdiff.server.uploads import UploadReader


@dataclass
class ServerState:
    """The service around one loaded pipeline: settings, queue and the per-process bookkeeping."""

    config: ServeConfig
    synthesizer: Synthesizer
    queue: JobQueue
    #: Reads uploads one at a time, within a wall-clock budget, abandoned when the server stops.
    reader: UploadReader
    #: Set when the server starts shutting down (by ``app.make_server``'s server): progress streams
    #: then end with `event: shutdown` at once, instead of holding the shutdown until they are cut.
    stopping: threading.Event
    model_name: str
    device: str
    #: The bundled examples a request may name instead of uploading a file.
    examples: dict[str, Path]
    #: Samplers usable here (diffusers' need diffusers installed).
    schedulers: list[str]
    #: ``(data, name, max_seconds, max_bytes, max_notes, max_events, check_cancelled=...)`` ->
    #: ``(tokenized, notes)``: ``specdiff.server.synth.read_midi`` unless the app substitutes it.
    read_midi: Callable[..., Any]
    #: True when ``config.workdir`` is None: a temporary folder, made at startup, removed at shutdown.
    own_workdir: bool
    #: Open progress streams per client address (the event loop's thread only: no lock).
    open_streams: collections.Counter[str] = field(default_factory=collections.Counter)

    @classmethod
    def build(
        cls,
        synthesizer: Synthesizer,
        config: ServeConfig,
        model_name: str,
        device: str | None,
        read_midi: Callable[..., Any],
    ) -> ServerState:
        """The state for a new app; nothing starts and no folder is made until :meth:`start`."""
        own_workdir = config.workdir is None
        queue = JobQueue(synthesizer, Path(config.workdir or "."), max_queued=config.max_queued,
                         result_ttl=config.result_ttl, fetched_ttl=config.fetched_ttl,
                         max_kept_results=config.max_kept_results, max_kept_bytes=config.max_kept_bytes,
                         persistent=not own_workdir)  # fmt: skip
        stopping = threading.Event()
        has_diffusers = importlib.util.find_spec("diffusers") is not None
        return cls(
            config=config,
            synthesizer=synthesizer,
            queue=queue,
            reader=UploadReader(config.max_parse_seconds, queue.free_places, stopping),
            stopping=stopping,
            model_name=model_name,
            device=device or str(synthesizer.pipe.device),
            examples={path.name: path for path in config.examples},
            schedulers=[s for s in SCHEDULERS if s in NATIVE_SCHEDULERS or has_diffusers],
            read_midi=read_midi,
            own_workdir=own_workdir,
        )

    @property
    def too_large(self) -> str:
        """The 413 message for an upload over the limit."""
        return f"upload too large: the limit is {self.config.max_upload_bytes} bytes for the MIDI file"

    def start(self) -> None:
        """At application startup: make our own temporary folder (if any), start the queue's worker.

        Not at construction, so an app that never runs leaves no folder behind."""
        if self.own_workdir:
            self.queue.workdir = Path(tempfile.mkdtemp(prefix="specdiff-serve-"))
        self.queue.start()

    async def stop(self) -> None:
        """At application shutdown: stop the worker (off the event loop), remove our own folder."""
        await asyncio.to_thread(self.queue.stop)
        if self.own_workdir:
            shutil.rmtree(self.queue.workdir, ignore_errors=True)

    def lookup(self, job_id: str, view: Callable[[Job, int | None], Any] | None = None) -> Any:
        """``queue.snapshot(job_id, view)``, with an unknown job as 404 and an evicted one as 410."""
        try:
            return self.queue.snapshot(job_id, view)
        except JobGone as err:
            raise HTTPException(410, str(err)) from None
        except JobNotFound as err:
            raise HTTPException(404, str(err)) from None

    def result_file(self, job_id: str, attribute: str, need_done: bool = True) -> tuple[Job, Path]:
        """The job and its file ``job.<attribute>``; 409 while it does not exist (or, with
        ``need_done``, while the job has not finished)."""
        job, _ = self.lookup(job_id)
        path = getattr(job, attribute)
        if (need_done and job.state is not JobState.DONE) or path is None or not path.is_file():
            reason = f": {job.error}" if job.error else ""
            raise HTTPException(409, f"job {job_id} has no result: it is {job.state.value}{reason}")
        return job, path


async def server_state(request: Request) -> ServerState:
    """The dependency behind :data:`State` (async: FastAPI runs it on the event loop, no thread)."""
    return request.app.state.server


#: A route's parameter ``state: State`` receives the app's :class:`ServerState`.
State = Annotated[ServerState, Depends(server_state)]
