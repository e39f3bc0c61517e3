"""``specdiff serve``: a local web app and JSON API for MIDI -> audio synthesis.

One model is loaded once; requests queue behind it (``specdiff.server.jobs``). The page at ``/``
uploads a MIDI file (or picks a bundled example), follows the job's progress, plays the result and
shows its spectrogram and piano roll; ``/docs`` documents the API. Loopback only by default: the
service has no authentication.

This module only builds the parser and starts the server; nothing heavy (torch, FastAPI) is
imported until the command runs, so ``specdiff --help`` stays fast.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import logging
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from specdiff.commands import validators
from specdiff.commands.options import (
    MODEL_HELP,
    Option,
    add_options,
    add_precision_argument,
    load_pipeline,
    resolve_model,
)
from specdiff.constants import DEFAULT_GUIDANCE, DEFAULT_NUM_STEPS, DEFAULT_SCHEDULER, DEVICES, INVERTERS, SCHEDULERS
from specdiff.errors import SpecdiffError
from specdiff.server.config import ServeConfig
from specdiff.server.guards import is_loopback

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 8000
#: What `pip install` needs for this command (the `serve` extra).
SERVE_REQUIREMENTS = ("fastapi", "uvicorn", "multipart")

_DESCRIPTION = """\
Serve a web page and a JSON API for MIDI-to-audio synthesis with one loaded model.

Open the printed address in a browser: upload a MIDI file (or pick a bundled example), choose
steps, guidance and seed, watch the progress, then play the audio and look at its spectrogram and
piano roll. Programs use the API (OpenAPI schema at /openapi.json, documentation at /docs):
POST /api/jobs (multipart: midi file + settings) -> GET /api/jobs/{id} or /api/jobs/{id}/events
-> GET /api/jobs/{id}/audio.wav. One job runs at a time; others wait in a bounded queue.
"""

_EPILOG = """\
examples:
  specdiff serve --model google/music-spectrogram-diffusion
  specdiff serve --model ./music-spectrogram-diffusion
  specdiff serve --model DIR --port 8080 --device cuda --max-queued 4 --max-seconds 60
"""


@dataclass(frozen=True)
class LimitFlag:
    """A ``serve`` option that sets one :class:`ServeConfig` limit: its default and type come from the
    config (``scale``: config units per command-line unit, e.g. bytes per MiB)."""

    option: str
    field: str
    metavar: str
    help: str  # ``{default}``: the default in command-line units; ``{config}``: the default config
    scale: int = 1
    allow_zero: bool = False  # an integer limit that may be 0 (as ServeConfig accepts for it)


#: The service limits the command line sets, one per ServeConfig field.
LIMIT_FLAGS = (
    LimitFlag("--max-queued", "max_queued", "N",
              "jobs that may wait behind the running one; more get HTTP 429 (default: {default})", allow_zero=True),
    LimitFlag("--max-upload-mb", "max_upload_bytes", "MB", "largest MIDI upload in MiB (default: {default})",
              scale=2**20),
    LimitFlag("--max-seconds", "max_midi_seconds", "S", "longest accepted music in seconds (default: {default})"),
    LimitFlag("--max-notes", "max_notes", "N",
              "most notes in one MIDI upload; denser files get HTTP 400 (default: {default})"),
    LimitFlag("--max-events", "max_events", "N",
              "most MIDI events of every kind (notes, pedal and other controllers, meta) in one upload; "
              "more get HTTP 400 (default: {default})"),
    LimitFlag("--max-parse-seconds", "max_parse_seconds", "S",
              "wall-clock seconds an upload may take to read; slower ones get HTTP 400 (default: {default})"),
    LimitFlag("--max-streams-per-client", "max_streams_per_client", "N",
              "progress streams one client address may hold open; one more gets HTTP 429 (polling still "
              "works; default: {default}, and {config.max_streams} in all)"),
    LimitFlag("--header-timeout", "header_timeout", "S",
              "seconds a client has to send a request's headers before the connection is closed "
              "(default: {default})"),
    LimitFlag("--max-steps", "max_steps", "N", "most denoising steps a request may ask for (default: {default})"),
    LimitFlag("--result-ttl", "result_ttl", "S", "seconds results are kept when never fetched (default: {default})"),
    LimitFlag("--fetched-ttl", "fetched_ttl", "S",
              "seconds results are kept after their audio was first fetched (default: {default})"),
    LimitFlag("--max-kept", "max_kept_results", "N",
              "most finished jobs whose results are kept; the oldest are evicted first (HTTP 410) "
              "(default: {default})"),
    LimitFlag("--max-kept-mb", "max_kept_bytes", "MB",
              "most MiB of finished results kept on disk; the oldest are evicted first (default: {default})",
              scale=2**20),
)  # fmt: skip


#: Where and how the service listens, in --help order (``--precision`` follows them).
SERVICE_OPTIONS: tuple[Option, ...] = (
    (("--model",), dict(metavar="DIR|ORG/NAME", help=MODEL_HELP)),
    (("--host",), dict(default=DEFAULT_HOST,
                       help=f"address to listen on (default: {DEFAULT_HOST}, this machine only). On any other address "
                       "every request needs a token (see --token)")),
    # Its default, $SPECDIFF_TOKEN, is read when the parser is built (add_serve_arguments), not at import.
    (("--token",), dict(metavar="TOKEN",
                        help="token every request must carry (the URL ...?token=TOKEN, or 'Authorization: Bearer "
                        "TOKEN'); default: $SPECDIFF_TOKEN, else none on loopback and a random one, printed at start, "
                        "on other addresses")),
    (("--allow-host",), dict(action="append", default=[], metavar="NAME",
                             help="also answer requests whose Host header is NAME (repeatable; '*': any). By default "
                             "only the listening address (and, on loopback, localhost) is accepted, against DNS "
                             "rebinding")),
    (("--allow-origin",), dict(action="append", default=[], metavar="ORIGIN",
                               help="also accept state-changing requests from pages on ORIGIN, e.g. "
                               "http://localhost:3000 (repeatable; '*': any). By default only the service's own page "
                               "may submit or cancel jobs")),
    (("--port",), dict(type=validators.port, default=DEFAULT_PORT,
                       help=f"TCP port (default: {DEFAULT_PORT}; 0: any free)")),
    (("--device",), dict(choices=DEVICES, default="auto",
                         help="where to run the model (default: auto = cuda, else mps, else cpu)")),
)  # fmt: skip
#: How the model runs, after ``--precision``.
RUN_OPTIONS: tuple[Option, ...] = (
    (("--threads",), dict(type=validators.positive_int, default=None, metavar="N",
                          help="CPU threads for PyTorch (default: PyTorch's own choice, one per core)")),
    (("--inverter",), dict(choices=INVERTERS, default="auto",
                           help="spectrogram-to-audio inverter (default: auto, as in `specdiff synth`)")),
)  # fmt: skip
#: The "defaults offered by the page" group.
PAGE_DEFAULT_OPTIONS: tuple[Option, ...] = (
    (("--steps",), dict(type=validators.positive_int, default=None, metavar="N",
                        help=f"denoising steps per segment (default: the model's sampling.json, else "
                        f"{DEFAULT_NUM_STEPS})")),
    (("--guidance",), dict(type=float, default=None, metavar="W",
                           help=f"classifier-free guidance weight (default: the model's sampling.json, else "
                           f"{DEFAULT_GUIDANCE:g})")),
    (("--scheduler",), dict(choices=SCHEDULERS, default=None,
                            help=f"sampler (default: the model's sampling.json, else {DEFAULT_SCHEDULER}; see "
                            "`specdiff synth --help`)")),
)  # fmt: skip


def _add_limit_flags(group: argparse._ArgumentGroup, defaults: ServeConfig) -> None:
    """One option per :data:`LIMIT_FLAGS` entry, its default and type taken from ``defaults``."""
    for flag in LIMIT_FLAGS:
        default = getattr(defaults, flag.field)
        if flag.scale != 1:  # a count of bytes, given in MiB
            default, kind = default / flag.scale, validators.positive_float
        elif isinstance(default, int):
            kind = validators.non_negative_int if flag.allow_zero else validators.positive_int
        else:
            kind = validators.positive_float
        group.add_argument(flag.option, dest=flag.field, type=kind, default=default, metavar=flag.metavar,
                           help=flag.help.format(default=f"{default:g}" if isinstance(default, float) else default,
                                                 config=defaults))  # fmt: skip


def add_serve_arguments(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Add the ``serve`` subcommand (``set_defaults(func=run_serve)``)."""
    p = subparsers.add_parser(
        "serve", help="run a local web app / HTTP API for synthesis", description=_DESCRIPTION,
        epilog=_EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter,
    )  # fmt: skip
    add_options(p, SERVICE_OPTIONS)
    p.set_defaults(token=os.environ.get("SPECDIFF_TOKEN"))
    add_precision_argument(p)
    add_options(p, RUN_OPTIONS)
    g = p.add_argument_group("limits")
    _add_limit_flags(g, ServeConfig())
    g.add_argument(
        "--workdir", type=Path, metavar="DIR", help="folder for results (default: a temporary folder, removed at exit)"
    )
    add_options(p.add_argument_group("defaults offered by the page"), PAGE_DEFAULT_OPTIONS)
    p.add_argument("-q", "--quiet", action="store_true", help="log only warnings and errors")
    p.set_defaults(func=run_serve)
    return p


def check_dependencies() -> None:
    """A clear error when the `serve` extra is not installed."""
    missing = [name for name in SERVE_REQUIREMENTS if importlib.util.find_spec(name) is None]
    if missing:
        pip_names = {"multipart": "python-multipart"}
        raise SpecdiffError(
            f"specdiff serve needs {', '.join(pip_names.get(m, m) for m in missing)}: pip install 'specdiff[serve]'"
        )


def default_examples() -> list[Path]:
    """The demo corpus' test split (the model never trained on it), or nothing if it is missing."""
    try:
        from specdiff.data.corpus import demo_midi_files

        return [p for p in demo_midi_files("test") if p.is_file()]
    except (SpecdiffError, OSError, ValueError) as err:
        logging.getLogger("specdiff.serve").warning("no bundled examples: %s", err)
        return []


def resolve_token(args: argparse.Namespace) -> str | None:
    """The token requests must carry: ``--token``, else a random one off loopback (made once per
    ``args``, so the printed URL and the server agree), else None."""
    if args.token:
        return str(args.token)
    if is_loopback(args.host):
        return None
    if getattr(args, "_generated_token", None) is None:
        import secrets

        args._generated_token = secrets.token_hex(24)
    return str(args._generated_token)


def config_from_args(args: argparse.Namespace) -> ServeConfig:
    try:
        limits = {flag.field: getattr(args, flag.field) for flag in LIMIT_FLAGS}
        for flag in LIMIT_FLAGS:
            if flag.scale != 1:  # MiB on the command line, bytes in the config
                limits[flag.field] = max(1, int(limits[flag.field] * flag.scale))
        return ServeConfig(
            **limits,
            default_steps=args.steps,
            default_guidance=args.guidance,
            default_scheduler=args.scheduler,
            examples=default_examples(),
            workdir=args.workdir,
            bind_host=args.host,
            allowed_hosts=args.allow_host,
            allowed_origins=args.allow_origin,
            token=resolve_token(args),
        )
    except ValueError as err:
        raise SpecdiffError(str(err)) from None


def build_app(args: argparse.Namespace) -> Any:
    """Everything ``run_serve`` does before listening: check, load the model, make the app."""

    check_dependencies()
    model_dir = resolve_model(args)
    config = config_from_args(args)

    import torch

    from specdiff.server.app import create_app
    from specdiff.server.synth import Synthesizer

    if args.threads is not None:
        torch.set_num_threads(args.threads)
    pipe, device = load_pipeline(args, model_dir)
    # The folder's name, not its path: /api/info is public and the server's file system is not.
    from specdiff.pipeline.hub import looks_like_hub_id

    model_name = str(args.model) if args.model is not None and looks_like_hub_id(args.model) else Path(model_dir).name
    return create_app(Synthesizer(pipe), config, model_name=model_name, device=device)


class _BelowWarning(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return record.levelno < logging.WARNING


def configure_logging(quiet: bool) -> None:
    """The service's job log (INFO, one line each) on stderr. Warnings and errors are printed by the
    command line's own handler on the ``specdiff`` logger, so this one takes only what is below
    them: a root ``basicConfig`` here printed every warning twice."""
    serve_logger = logging.getLogger("specdiff.serve")
    serve_logger.setLevel(logging.WARNING if quiet else logging.INFO)
    if not any(isinstance(f, _BelowWarning) for h in serve_logger.handlers for f in h.filters):
        handler = logging.StreamHandler()
        handler.setFormatter(logging.Formatter("specdiff: %(message)s"))
        handler.addFilter(_BelowWarning())
        serve_logger.addHandler(handler)


def run_serve(args: argparse.Namespace) -> int:
    """``specdiff serve``: load the model, then serve until Ctrl-C."""
    configure_logging(args.quiet)
    app = build_app(args)
    token = app.state.config.token

    import uvicorn

    from specdiff.server.app import make_server, server_protocol

    host = f"[{args.host}]" if ":" in args.host and not args.host.startswith("[") else args.host
    url = f"http://{host}:{args.port}/" + (f"?token={token}" if token else "")
    # Printed even with --quiet when there is a token: without it the URL cannot be used.
    if not args.quiet or token:
        print(f"specdiff: serving on {url} (Ctrl-C to stop)", file=sys.stderr)
    config = uvicorn.Config(app, host=args.host.strip("[]"), port=args.port, http=server_protocol(app),
                            log_level="warning" if args.quiet else "info", timeout_graceful_shutdown=5)  # fmt: skip
    # Not uvicorn.run: its server would hold Ctrl-C until open progress streams time out.
    server = make_server(config)
    with contextlib.suppress(KeyboardInterrupt):
        server.run()
    return 0 if server.started else 3  # 3: uvicorn's exit status when the server could not start
