"""Job metadata that survives a restart: one SQLite table beside the results (``--workdir``).

The queue (``specdiff.server.jobs``) keeps its jobs in memory, as before; with a store it also
writes each job's metadata here on every change of state (queued, running, ended, fetched, gone),
each write one transaction (SQLite in WAL mode: a crash leaves the last committed state). The
results themselves stay in the job's folder. At start the queue reads the table back: finished
jobs are served again (and expire and are evicted by the same TTL and size limits), jobs that
were queued or running when the server stopped are marked failed ("interrupted"), and job folders
the table does not know are removed. Without ``--workdir`` there is no store.
"""

from __future__ import annotations

import dataclasses
import json
import sqlite3
import threading
from pathlib import Path
from typing import Any

#: The table's file in the work folder.
STORE_NAME = "jobs.sqlite3"
#: Job fields not stored: the token segments (dropped when a job ends anyway), the cancel flag and
#: the in-memory change counter.
TRANSIENT_FIELDS = ("midi", "cancel_requested", "version")
#: Job fields that hold paths.
PATH_FIELDS = ("folder", "notes_path", "audio_path", "spectrogram_path")


def job_record(job: Any) -> dict[str, Any]:
    """A job (``specdiff.server.jobs.Job``) as a JSON-able dict of its lasting fields (the queue
    reads it back with ``specdiff.server.jobs.job_from_record``; this module does not import the
    queue's, which imports it)."""
    record: dict[str, Any] = {}
    for field in dataclasses.fields(job):
        if field.name in TRANSIENT_FIELDS:
            continue
        value = getattr(job, field.name)
        if field.name in PATH_FIELDS:
            value = None if value is None else str(value)
        elif field.name == "state":
            value = value.value
        elif field.name == "settings":
            value = dataclasses.asdict(value)
        record[field.name] = value
    return record


class JobStore:
    """Job records by id in ``folder / STORE_NAME`` (created if missing)."""

    def __init__(self, folder: Path) -> None:
        self.path = Path(folder) / STORE_NAME
        self._lock = threading.Lock()
        self._db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.execute("CREATE TABLE IF NOT EXISTS jobs (id TEXT PRIMARY KEY, record TEXT NOT NULL)")

    def save(self, job: Any) -> None:
        """Write (or replace) one job's record, atomically."""
        record = json.dumps(job_record(job))
        with self._lock, self._db:
            self._db.execute("INSERT OR REPLACE INTO jobs (id, record) VALUES (?, ?)", (job.id, record))

    def delete(self, job_id: str) -> None:
        with self._lock, self._db:
            self._db.execute("DELETE FROM jobs WHERE id = ?", (job_id,))

    def records(self) -> list[dict[str, Any]]:
        """Every stored record (unreadable ones are skipped and deleted)."""
        with self._lock:
            rows = self._db.execute("SELECT id, record FROM jobs").fetchall()
        records, broken = [], []
        for job_id, text in rows:
            try:
                records.append(json.loads(text))
            except ValueError:
                broken.append(job_id)
        for job_id in broken:
            self.delete(job_id)
        return records

    def close(self) -> None:
        with self._lock:
            self._db.close()
