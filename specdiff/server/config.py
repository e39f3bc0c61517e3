"""Limits and defaults of the web service (imports nothing heavy: the CLI builds one for --help)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

#: The library's sampler defaults (light: building the CLI parser imports no torch). A model
#: folder's sampling.json replaces them for that model.
from specdiff.constants import DEFAULT_GUIDANCE, DEFAULT_NUM_STEPS, DEFAULT_SCHEDULER  # noqa: E402,F401


@dataclass
class ServeConfig:
    """What the service accepts and how long it keeps things.

    The defaults suit one person on a laptop: a MIDI file is rarely over a few hundred kB, and on a
    CPU the base model needs minutes per minute of music, so long songs and deep queues only pile
    up waiting time.
    """

    #: Largest accepted upload (the MIDI file; the form around it may add a few kB).
    max_upload_bytes: int = 2 * 1024 * 1024
    #: Longest accepted music, in seconds (the MIDI's NoteSequence total_time).
    max_midi_seconds: float = 120.0
    #: Most notes accepted in one upload (HTTP 400 beyond). The model reads at most 2047 tokens per
    #: 5.12 s segment (about 680 notes), so 120 s of music holds at most ~16k notes that matter;
    #: the cap stops a dense file from costing seconds of parsing and megabytes per job for nothing.
    max_notes: int = 30_000
    #: Most MIDI events of every kind in one upload (notes, pedal and other controller changes, pitch
    #: bends, meta events; HTTP 400 beyond). 120 s of expressive music with 30k notes needs well
    #: under 100k; the cap bounds the CPU a file full of pedal toggles can cost before it is refused.
    max_events: int = 200_000
    #: Wall-clock seconds an upload may take to read (parse and tokenize; HTTP 400 beyond). Uploads
    #: are read one at a time. A backstop, not the main defence: the event and note limits refuse
    #: the costly files in < 0.25 s (``benchmarks/results/midi_parse.md``), while a legitimate file
    #: at the note cap takes ~0.3-0.6 s to read, more on a busy machine (a 1 s budget refused it
    #: while a training run shared the CPU).
    max_parse_seconds: float = 5.0
    #: Progress streams (``/api/jobs/{id}/events``) one client address may hold open, and all
    #: clients together; one more is refused with 429 (polling ``/api/jobs/{id}`` still works).
    #: Each open stream costs a poll of the queue several times a second.
    max_streams_per_client: int = 8
    max_streams: int = 64
    #: Seconds a client has to send a request's headers (``specdiff.server.protocol``).
    header_timeout: float = 10.0
    #: Jobs that may wait behind the running one; one more is refused with 429.
    max_queued: int = 8
    #: Upper bound on ``steps`` per request (cost grows linearly with it).
    max_steps: int = 1000
    #: Upper bound on ``guidance`` (the paper uses 1-5; far larger values only distort).
    max_guidance: float = 20.0
    #: Seconds a finished job's results are kept when nobody fetches its audio.
    result_ttl: float = 3600.0
    #: Seconds a job's results are kept after its audio was first fetched (a browser's <audio>
    #: element fetches in several range requests, so "delete on first fetch" would break playback).
    fetched_ttl: float = 300.0
    #: Most finished jobs kept at once; past it the oldest finished job is evicted (HTTP 410).
    max_kept_results: int = 32
    #: Most bytes of finished results kept on disk at once (WAV + PNG + notes of every finished job);
    #: past it the oldest finished jobs are evicted, never the one that just finished.
    max_kept_bytes: int = 512 * 2**20
    #: Defaults offered by the page and used when a request leaves a setting out.
    default_steps: int = DEFAULT_NUM_STEPS
    default_guidance: float = DEFAULT_GUIDANCE
    default_scheduler: str = DEFAULT_SCHEDULER
    #: Bundled example MIDI files offered by name (default: the demo corpus' test split).
    examples: list[Path] = field(default_factory=list)
    #: Folder for results; None: a fresh temporary folder, removed on shutdown.
    workdir: Path | None = None
    #: The address the service listens on: Host headers naming it (and, for a loopback address,
    #: ``localhost`` and the other loopback addresses) are accepted, others refused (DNS rebinding).
    bind_host: str = "127.0.0.1"
    #: More Host names to accept (``*``: any; for a reverse proxy or a LAN name).
    allowed_hosts: list[str] = field(default_factory=list)
    #: More origins (``scheme://host:port``) allowed to make state-changing requests (``*``: any);
    #: the service's own origin always is.
    allowed_origins: list[str] = field(default_factory=list)
    #: A token every request must carry (``specdiff.server.guards.TokenGuard``); None: none needed.
    #: ``specdiff serve`` makes one when it listens beyond loopback.
    token: str | None = None

    def __post_init__(self) -> None:
        for name in (
            "max_upload_bytes",
            "max_notes",
            "max_events",
            "max_streams_per_client",
            "max_streams",
            "max_queued",
            "max_steps",
            "default_steps",
            "max_kept_results",
            "max_kept_bytes",
        ):
            if int(getattr(self, name)) < (0 if name == "max_queued" else 1):
                raise ValueError(f"{name} must be positive, got {getattr(self, name)}")
        for name in ("max_midi_seconds", "result_ttl", "fetched_ttl", "max_guidance", "max_parse_seconds",
                     "header_timeout"):  # fmt: skip
            if not float(getattr(self, name)) > 0:
                raise ValueError(f"{name} must be > 0, got {getattr(self, name)}")
        if not 1 <= self.default_steps <= self.max_steps:
            raise ValueError(f"default_steps {self.default_steps} is not in [1, max_steps={self.max_steps}]")
        if not 0 <= self.default_guidance <= self.max_guidance:
            raise ValueError(f"default_guidance {self.default_guidance} is not in [0, {self.max_guidance}]")
        self.examples = [Path(p) for p in self.examples]
        self.allowed_hosts = [str(h) for h in self.allowed_hosts]
        self.allowed_origins = [str(o).rstrip("/") for o in self.allowed_origins]
        if self.token is not None and not str(self.token).strip():
            raise ValueError("token must not be empty")
