"""A bounded job queue with one worker thread: one model in memory, one synthesis at a time.

Requests never wait on the model: ``submit`` puts a job in the queue (or refuses it with
:class:`QueueFull` when ``max_queued`` jobs already wait) and returns at once; the worker thread
runs the jobs in arrival order through a ``runner(job, queue)`` function (``specdiff.server.synth``
in the service, a stub in tests). Every accepted job ends in exactly one terminal state: ``done``,
``failed`` with a one-line reason, or ``cancelled``. Finished jobs are kept until they expire:
``result_ttl`` seconds after they end, or ``fetched_ttl`` seconds after their audio was first
fetched, whichever is sooner; then their files are deleted and their id is unknown (404).

Memory and disk are bounded by count and bytes too, not only by time: a job's bulky parts (audio,
spectrogram, the notes for the piano roll) live in its folder, never in memory; its token segments
are dropped once it ends; at most ``max_kept_results`` finished jobs and ``max_kept_bytes`` bytes of
their files are kept, the oldest finished evicted first (:class:`JobGone`, HTTP 410); with
``persistent=True`` their metadata also goes to SQLite (``specdiff.server.store``), so a restart on
the same folder serves them again. Waiting jobs are
bounded by ``max_queued``; a client reserves a place (:meth:`JobQueue.reserve`) before the costly
parsing of its upload, so a full queue refuses work before doing any.

This module knows nothing about HTTP; the routes (``specdiff.server.routes``) map its exceptions to
status codes.
"""

from __future__ import annotations

import collections
import contextlib
import logging
import secrets
import shutil
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path
from typing import Any

from specdiff.errors import SpecdiffError

logger = logging.getLogger("specdiff.serve")


class JobState(str, Enum):
    QUEUED = "queued"
    RUNNING = "running"
    DONE = "done"
    FAILED = "failed"
    CANCELLED = "cancelled"

    @property
    def terminal(self) -> bool:
        return self in (JobState.DONE, JobState.FAILED, JobState.CANCELLED)


class QueueFull(SpecdiffError):
    """Too many jobs are waiting; the client should retry later (HTTP 429)."""


class JobNotFound(SpecdiffError):
    """No such job: never existed, deleted, or its results expired (HTTP 404)."""


class JobGone(JobNotFound):
    """The job existed but its results were evicted to bound memory and disk (HTTP 410)."""


class JobCancelled(Exception):
    """Raised inside a runner (from its progress hook) to abandon a cancelled job."""


@dataclass
class JobSettings:
    """What a client chose for one synthesis."""

    steps: int
    guidance: float
    seed: int
    scheduler: str


@dataclass
class Job:
    """One synthesis request and everything known about it. Mutated only under the queue's lock."""

    id: str
    settings: JobSettings
    midi: Any  # specdiff.midi.tokenizer.TokenizedMidi (validated at submission; dropped when the job ends)
    midi_name: str
    folder: Path
    duration: float = 0.0  # of the music, seconds (kept when ``midi`` is dropped)
    note_count: int = 0
    notes_path: Path | None = None  # JSON for the piano roll, in the job's folder (not in memory)
    state: JobState = JobState.QUEUED
    created_at: float = field(default_factory=time.time)
    started_at: float | None = None
    finished_at: float | None = None
    expires_at: float | None = None
    audio_fetched_at: float | None = None
    step: int = 0  # denoising steps done, over all segments
    total_steps: int = 0
    segments_done: int = 0
    total_segments: int = 0
    error: str | None = None
    audio_path: Path | None = None
    spectrogram_path: Path | None = None
    audio_seconds: float | None = None
    sample_rate: int | None = None
    audio_peak: float | None = None  # the synthesized audio's peak before any limiting (1.0 = full scale)
    limited: bool = False  # the peak exceeded full scale, so the soft limiter shaped the WAV
    result_bytes: int = 0  # size of the job's folder once it ended (counted against max_kept_bytes)
    version: int = 0  # bumped on every change, so progress streams know when to send
    cancel_requested: threading.Event = field(default_factory=threading.Event, repr=False)

    def check_cancelled(self) -> None:
        """For runners: raise :class:`JobCancelled` once cancellation was asked for."""
        if self.cancel_requested.is_set():
            raise JobCancelled()


Runner = Callable[[Job, "JobQueue"], None]


def new_job_id() -> str:
    """An unguessable id: it is the only key to a job's results."""
    return secrets.token_urlsafe(12)


class JobQueue:
    """Jobs by id, a FIFO of waiting ones, and the worker thread that runs them one at a time."""

    #: How many evicted ids are remembered (to answer 410 rather than 404); a few kB.
    GONE_MEMORY = 4096

    def __init__(self, runner: Runner, workdir: Path, max_queued: int = 8, result_ttl: float = 3600.0,
                 fetched_ttl: float = 300.0, clock: Callable[[], float] = time.time, max_kept_results: int = 32,
                 max_kept_bytes: int = 512 * 2**20, persistent: bool = False) -> None:  # fmt: skip
        """``persistent``: keep the jobs' metadata in ``workdir`` (``specdiff.server.store``), so that
        a restarted queue on the same folder serves the finished jobs again."""
        self.runner = runner
        self.workdir = Path(workdir)
        self.max_queued = int(max_queued)
        self.max_kept_results = int(max_kept_results)
        self.max_kept_bytes = int(max_kept_bytes)
        self.result_ttl = float(result_ttl)
        self.fetched_ttl = float(fetched_ttl)
        self.clock = clock
        self._jobs: dict[str, Job] = {}
        self._waiting: collections.deque[Job] = collections.deque()
        self._running: Job | None = None
        self._reserved = 0  # places promised to uploads still being parsed
        self._finished: collections.OrderedDict[str, Job] = collections.OrderedDict()  # oldest first
        self._gone: collections.OrderedDict[str, str] = collections.OrderedDict()  # evicted id -> why
        self._lock = threading.Condition()
        self._stopping = False
        self._thread: threading.Thread | None = None
        self.counts = collections.Counter()  # submitted / refused / done / failed / cancelled / expired / evicted
        self.persistent = bool(persistent)
        self._store: Any = None  # specdiff.server.store.JobStore, opened by start()

    # -- lifecycle -------------------------------------------------------------------------------

    def start(self) -> None:
        self.workdir.mkdir(parents=True, exist_ok=True)
        with self._lock:
            if self._thread is not None:
                return
            if self.persistent and self._store is None:
                self._restore_locked()
            self._stopping = False
            self._thread = threading.Thread(target=self._work, name="specdiff-worker", daemon=True)
            self._thread.start()

    def stop(self, timeout: float = 30.0) -> None:
        """Cancel the running job and every waiting one, and wait for the worker to finish."""
        with self._lock:
            self._stopping = True
            if self._running is not None:
                self._running.cancel_requested.set()
            while self._waiting:
                self._finish(self._waiting.popleft(), JobState.CANCELLED, "the server is shutting down")
            self._lock.notify_all()
            thread, self._thread = self._thread, None
        if thread is not None:
            thread.join(timeout)
        with self._lock:
            if self._store is not None:
                self._store.close()
                self._store = None

    # -- client side -----------------------------------------------------------------------------

    def new_folder(self, job_id: str) -> Path:
        folder = self.workdir / job_id
        folder.mkdir(parents=True, exist_ok=False)
        return folder

    def has_room(self) -> bool:
        """Whether a submission could be accepted now (a cheap look, for refusing before any work)."""
        with self._lock:
            return not self._stopping and len(self._waiting) + self._reserved < self.max_queued

    def free_places(self) -> int:
        """Places left in the queue now (neither taken by a waiting job nor reserved by an upload)."""
        with self._lock:
            return 0 if self._stopping else max(0, self.max_queued - len(self._waiting) - self._reserved)

    def refuse(self, reason: str) -> QueueFull:
        """Count a submission refused for want of room; the error to raise for it."""
        with self._lock:
            self.counts["refused"] += 1
        return QueueFull(reason)

    def _check_room_locked(self, extra: int) -> None:
        if self._stopping:
            raise QueueFull("the server is shutting down")
        if len(self._waiting) + self._reserved + extra > self.max_queued:
            self.counts["refused"] += 1
            raise QueueFull(f"the queue is full ({self.max_queued} jobs waiting); try again later")

    @contextlib.contextmanager
    def reserve(self) -> Iterator[None]:
        """Hold a place in the queue while an upload is parsed (``submit(job, reserved=True)`` inside
        uses it), or raise :class:`QueueFull` at once: parsing only happens when it can pay off."""
        with self._lock:
            self._check_room_locked(1)
            self._reserved += 1
        try:
            yield
        finally:
            with self._lock:
                self._reserved -= 1
                self._lock.notify_all()

    def submit(self, job: Job, reserved: bool = False) -> Job:
        """Queue a job, or raise :class:`QueueFull` (its folder is then removed). ``reserved``: the
        caller holds a place from :meth:`reserve`."""
        with self._lock:
            self._purge_locked()
            try:
                # A reserved place is counted in _reserved until the caller's reserve() block ends.
                self._check_room_locked(0 if reserved else 1)
            except QueueFull:
                shutil.rmtree(job.folder, ignore_errors=True)
                raise
            self._jobs[job.id] = job
            self._waiting.append(job)
            self.counts["submitted"] += 1
            self._save_locked(job)
            self._bump(job)
            self._lock.notify_all()
        return job

    def get(self, job_id: str) -> Job:
        with self._lock:
            self._purge_locked()
            job = self._jobs.get(job_id)
            if job is None and job_id in self._gone:
                raise JobGone(f"job {job_id!r} is gone: {self._gone[job_id]}")
            if job is None:
                raise JobNotFound(f"no job {job_id!r} (unknown, deleted, or its results expired)")
            return job

    def snapshot(self, job_id: str, view: Callable[[Job, int | None], Any] | None = None) -> Any:
        """``view(job, position)`` computed under the lock, so it sees one consistent state
        (position: jobs ahead in the queue, 0 = next; None when not waiting). Default view:
        the tuple ``(job, position)``."""
        with self._lock:
            job = self.get(job_id)
            position = self._waiting.index(job) if job.state is JobState.QUEUED else None
            return (job, position) if view is None else view(job, position)

    def cancel(self, job_id: str) -> Job:
        """Cancel a waiting job at once, or ask the running one to stop at its next step.

        Cancelling a job that already ended changes nothing (the caller can look at its state).
        """
        with self._lock:
            job = self.get(job_id)
            if job.state is JobState.QUEUED:
                self._waiting.remove(job)
                self._finish(job, JobState.CANCELLED, "cancelled by the client")
            elif job.state is JobState.RUNNING:
                job.cancel_requested.set()
                self._bump(job)
            return job

    def delete(self, job_id: str) -> None:
        """Cancel the job if it has not ended, forget it and delete its files."""
        with self._lock:
            job = self.cancel(job_id)
            del self._jobs[job.id]
            self._finished.pop(job.id, None)
            if self._store is not None:
                self._store.delete(job.id)
            if job.state is not JobState.RUNNING:  # a running job's folder goes when it stops
                shutil.rmtree(job.folder, ignore_errors=True)
            self._bump(job)

    def mark_audio_fetched(self, job: Job) -> None:
        """The audio was handed out: keep the results only ``fetched_ttl`` longer."""
        with self._lock:
            now = self.clock()
            if job.audio_fetched_at is None:
                job.audio_fetched_at = now
                job.expires_at = self._expiry(job)
                self._save_locked(job)
                self._bump(job)

    def update(self, job: Job, **changes: Any) -> None:
        """For runners: record progress (``step``, ``segments_done``, ...)."""
        with self._lock:
            for key, value in changes.items():
                setattr(job, key, value)
            self._bump(job)

    def stats(self) -> dict[str, int]:
        with self._lock:
            self._purge_locked()
            return {
                "queued": len(self._waiting),
                "running": int(self._running is not None),
                "max_queued": self.max_queued,
                "kept": len(self._finished),
                "kept_bytes": sum(j.result_bytes for j in self._finished.values()),
                **{
                    k: self.counts[k]
                    for k in ("submitted", "refused", "done", "failed", "cancelled", "expired", "evicted")
                },  # fmt: skip
            }

    def purge(self) -> None:
        with self._lock:
            self._purge_locked()

    # -- worker ----------------------------------------------------------------------------------

    def _work(self) -> None:
        while True:
            with self._lock:
                while not self._waiting and not self._stopping:
                    # Wake now and then to delete expired results even when nobody asks.
                    self._lock.wait(timeout=min(5.0, self.fetched_ttl, self.result_ttl))
                    self._purge_locked()
                if self._stopping:
                    return
                job = self._waiting.popleft()
                self._running = job
                job.state = JobState.RUNNING
                job.started_at = self.clock()
                self._save_locked(job)
                self._bump(job)
            state, error = JobState.DONE, None
            try:
                job.check_cancelled()
                self.runner(job, self)
            except JobCancelled:
                state, error = JobState.CANCELLED, "cancelled by the client"
                if self._stopping:
                    error = "the server is shutting down"
            except SpecdiffError as err:
                state, error = JobState.FAILED, _one_line(err)
            except Exception as err:  # a bug or resource problem: keep the server alive, say what
                logger.exception("job %s failed", job.id)
                state, error = JobState.FAILED, f"internal error: {type(err).__name__}: {_one_line(err)}"
            with self._lock:
                self._running = None
                if job.id not in self._jobs:  # deleted while running
                    shutil.rmtree(job.folder, ignore_errors=True)
                self._finish(job, state, error)

    # -- helpers (lock held) ---------------------------------------------------------------------

    def _finish(self, job: Job, state: JobState, error: str | None) -> None:
        job.state, job.error = state, error
        job.finished_at = self.clock()
        job.expires_at = self._expiry(job)
        job.midi = None  # the token segments are only needed to synthesize
        if state is not JobState.DONE:  # nothing of a failed or cancelled job is worth keeping
            shutil.rmtree(job.folder, ignore_errors=True)
            job.audio_path = job.spectrogram_path = job.notes_path = None
        job.result_bytes = _folder_bytes(job.folder)
        self.counts[state.value] += 1
        if job.id in self._jobs:
            self._finished[job.id] = job
            self._save_locked(job)
            self._evict_locked(keep=job)
        self._bump(job)

    def _evict_locked(self, keep: Job | None = None) -> None:
        """Forget the oldest finished jobs (and delete their files) until at most ``max_kept_results``
        of them, holding at most ``max_kept_bytes``, remain; ``keep`` (the job that just ended) stays.
        Jobs with results (done) and without (failed, cancelled: no files) are bounded apart, so a
        cancelled or failed job never evicts another user's result to make room for itself."""
        finished = list(self._finished.values())
        for pool in (
            [j for j in finished if j.state is not JobState.DONE],
            [j for j in finished if j.state is JobState.DONE],
        ):
            total = sum(j.result_bytes for j in pool)
            count = len(pool)
            for job in pool:
                if count <= self.max_kept_results and total <= self.max_kept_bytes:
                    break
                if job is keep:
                    continue
                total -= job.result_bytes
                count -= 1
                self._forget_locked(job)
                self._gone[job.id] = (f"its results were evicted to make room (this server keeps at most "
                                      f"{self.max_kept_results} results and {self.max_kept_bytes} bytes)")  # fmt: skip
                while len(self._gone) > self.GONE_MEMORY:
                    self._gone.popitem(last=False)
                self.counts["evicted"] += 1

    def _forget_locked(self, job: Job) -> None:
        self._jobs.pop(job.id, None)
        self._finished.pop(job.id, None)
        shutil.rmtree(job.folder, ignore_errors=True)
        if self._store is not None:
            self._store.delete(job.id)

    def _expiry(self, job: Job) -> float:
        """When an ended job is forgotten: ``result_ttl`` after it ended, or ``fetched_ttl`` after its
        audio was first fetched, whichever is sooner."""
        ended = job.finished_at + self.result_ttl if job.finished_at is not None else float("inf")
        if job.audio_fetched_at is None:
            return ended
        return min(ended, job.audio_fetched_at + self.fetched_ttl)

    def _save_locked(self, job: Job) -> None:
        if self._store is not None:
            self._store.save(job)

    def _restore_locked(self) -> None:
        """Open the store and take its jobs back (see ``specdiff.server.store``)."""
        from specdiff.server.store import STORE_NAME, JobStore

        self._store = JobStore(self.workdir)
        restored: list[Job] = []
        for record in self._store.records():
            try:
                job = job_from_record(record)
            except (KeyError, TypeError, ValueError):
                self._store.delete(str(record.get("id")))
                continue
            if not job.state.terminal:  # its token segments are gone with the old process
                job.state, job.error = JobState.FAILED, "interrupted: the server stopped before the job ended"
                job.finished_at = job.finished_at or self.clock()
            job.expires_at = self._expiry(job)  # this server's TTLs, which may differ from the last one's
            if job.state is not JobState.DONE or job.audio_path is None or not job.audio_path.is_file():
                shutil.rmtree(job.folder, ignore_errors=True)  # nothing of it worth keeping, as in _finish
                job.audio_path = job.spectrogram_path = job.notes_path = None
                if job.state is JobState.DONE:
                    job.state, job.error = JobState.FAILED, "its results were lost (files missing after a restart)"
                job.result_bytes = 0
            self._store.save(job)
            restored.append(job)
        for job in sorted(restored, key=lambda j: j.finished_at or 0.0):
            self._jobs[job.id] = job
            self._finished[job.id] = job
        known = {job.folder.name for job in restored} | {STORE_NAME}
        for path in self.workdir.iterdir():  # job folders no record knows (a crash mid-upload)
            if path.is_dir() and path.name not in known and _looks_like_job_folder(path):
                shutil.rmtree(path, ignore_errors=True)
        self._purge_locked()
        self._evict_locked()
        if restored:
            logger.info("restored %d finished jobs from %s", len(self._finished), self._store.path)

    def _bump(self, job: Job) -> None:
        job.version += 1
        self._lock.notify_all()

    def _purge_locked(self) -> None:
        now = self.clock()
        for job in [j for j in self._jobs.values() if j.state.terminal and j.expires_at is not None]:
            if now >= job.expires_at:
                self._forget_locked(job)
                self.counts["expired"] += 1


#: The files of a job's folder (written by ``specdiff.server.synth``).
AUDIO_NAME = "audio.wav"
SPECTROGRAM_NAME = "spectrogram.png"
NOTES_NAME = "notes.json"
JOB_FILES = frozenset({AUDIO_NAME, SPECTROGRAM_NAME, NOTES_NAME})


def _looks_like_job_folder(path: Path) -> bool:
    """A folder named like a job id (:func:`new_job_id`) holding nothing but job files (or temporary
    files being written), so that a work folder shared with other files loses none of them."""
    if len(path.name) != 16 or not all(c.isalnum() or c in "-_" for c in path.name):
        return False
    try:
        return all(p.is_file() and (p.name in JOB_FILES or p.name.startswith(".")) for p in path.iterdir())
    except OSError:
        return False


def job_from_record(record: dict[str, Any]) -> Job:
    """The inverse of ``specdiff.server.store.job_record``: a job without token segments."""
    from specdiff.server.store import PATH_FIELDS

    values = dict(record)
    values["settings"] = JobSettings(**values["settings"])
    values["state"] = JobState(values["state"])
    for name in PATH_FIELDS:
        if values.get(name) is not None:
            values[name] = Path(values[name])
    return Job(midi=None, **values)


def _folder_bytes(folder: Path) -> int:
    """Bytes of the files in a job's folder (0 when it is gone)."""
    try:
        return sum(p.stat().st_size for p in folder.iterdir() if p.is_file())
    except OSError:
        return 0


def _one_line(err: BaseException) -> str:
    text = "; ".join(line.strip() for line in str(err).splitlines() if line.strip())
    return text or type(err).__name__
