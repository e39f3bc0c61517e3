"""Reading uploaded MIDI files: one at a time, in a worker thread, within a wall-clock budget.

The parse of an upload (``specdiff.server.synth.read_midi``) is linear in the file and bounded by
the event and note limits, but it is still CPU work that a client can ask for. So:

- uploads are read one at a time (:class:`UploadReader`); one waiting for its turn holds no place in
  the job queue (it reserves one only when its turn comes, just before its parse), and at most
  as many as there are free places in the job queue may wait (more are refused with
  :class:`ReaderBusy`, HTTP 429);
- a parse runs in a worker thread, off the event loop, with a :class:`ParseTicket` that the parser
  calls every few thousand events: past the wall-clock budget it raises ``MidiError`` (HTTP 400),
  once the server is stopping or the request was cancelled it raises :class:`UploadCancelled`
  (HTTP 503), so a shutdown never waits for a parse;
- files a parse writes (the job's folder) are registered with the ticket, and removed if the
  request is cancelled before the job reaches the queue: nothing is left behind.

This module knows nothing about HTTP; the routes (``specdiff.server.routes``) map its exceptions to
status codes.
"""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import threading
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import TypeVar

from specdiff.errors import MidiError, SpecdiffError

T = TypeVar("T")


class UploadCancelled(SpecdiffError):
    """The server is shutting down (or the request went away) while an upload was read (HTTP 503)."""


class ReaderBusy(SpecdiffError):
    """Too many uploads are waiting to be read; the client should retry later (HTTP 429)."""


class ParseTicket:
    """One upload's parse: its deadline, its cancellation, and the folder it wrote (if any)."""

    def __init__(self, name: str, max_seconds: float, stopping: threading.Event) -> None:
        self.name = name
        self.max_seconds = max_seconds
        self.deadline = time.monotonic() + max_seconds
        self.stopping = stopping
        self._lock = threading.Lock()
        self._cancelled = False
        self._folder: Path | None = None

    def check(self) -> None:
        """Raise :class:`UploadCancelled` once cancelled or stopping, ``MidiError`` past the deadline
        (the parser calls this every few thousand events)."""
        if self.stopping.is_set():
            raise UploadCancelled("the server is shutting down")
        if self._cancelled:
            raise UploadCancelled("the request was cancelled")
        if time.monotonic() > self.deadline:
            raise MidiError(f"{self.name}: reading it took more than {self.max_seconds:g} s (this server's limit)")

    def keep_folder(self, folder: Path) -> None:
        """Register the folder this parse wrote; it is removed (and this raises) if the request was
        cancelled meanwhile."""
        with self._lock:
            if not self._cancelled:
                self._folder = folder
                return
        shutil.rmtree(folder, ignore_errors=True)
        raise UploadCancelled("the request was cancelled")

    def cancel(self) -> None:
        """Abandon the parse (from the request's side) and remove what it wrote."""
        with self._lock:
            self._cancelled = True
            folder, self._folder = self._folder, None
        if folder is not None:
            shutil.rmtree(folder, ignore_errors=True)

    def release(self) -> None:
        """The job reached the queue: its folder is the queue's now."""
        with self._lock:
            self._folder = None


class UploadReader:
    """Reads uploads one at a time (see the module docstring)."""

    def __init__(self, max_seconds: float, room: Callable[[], int], stopping: threading.Event) -> None:
        """``room()``: how many more uploads may wait (e.g. the free places in the job queue: an
        upload that could not get one even if every upload ahead of it failed is not kept waiting)."""
        self.max_seconds = float(max_seconds)
        self.room = room
        self.stopping = stopping
        self.waiting = 0
        self._turn: asyncio.Lock | None = None  # made in the event loop that uses it

    @contextlib.asynccontextmanager
    async def turn(self) -> AsyncIterator[None]:
        """Wait for this upload's turn to be read (holding nothing else meanwhile); refuse with
        :class:`ReaderBusy` when ``room()`` uploads already wait, and with
        :class:`UploadCancelled` once the server is stopping."""
        if self._turn is None:
            self._turn = asyncio.Lock()
        if self.waiting >= self.room():
            raise ReaderBusy(f"no room: {self.waiting} uploads are waiting to be read")
        self.waiting += 1
        try:
            await self._turn.acquire()
        finally:
            self.waiting -= 1
        try:
            if self.stopping.is_set():
                raise UploadCancelled("the server is shutting down")
            yield
        finally:
            self._turn.release()

    def ticket(self, name: str) -> ParseTicket:
        """A ticket for one parse; its wall-clock budget starts now."""
        return ParseTicket(name, self.max_seconds, self.stopping)

    async def run(self, ticket: ParseTicket, work: Callable[[ParseTicket], T]) -> T:
        """``work(ticket)`` in a worker thread; if the request is cancelled meanwhile, so is the
        ticket (the work stops at its next check and what it wrote is removed)."""
        try:
            return await asyncio.to_thread(work, ticket)
        except asyncio.CancelledError:
            ticket.cancel()
            raise
