"""The ``specdiff`` command line: one entry point, one registry of subcommands, one error policy.

Each subcommand lives in its own module of :mod:`specdiff.commands` (``synth``, ``examples``,
``info``, ``prepare`` / ``train`` / ``export``, ``train-expert``, ``evaluate``, ``train-vocoder`` / ``vocode`` /
``export-vocoder``, ``serve``);
``python -m specdiff`` (also under ``torchrun``) and the ``specdiff`` script run :func:`main`.

Error policy: a ``SpecdiffError`` (bad user input) becomes one ``specdiff: error: ...`` line on
stderr and a non-zero exit status (2 for a :class:`UsageError`), never a traceback; Ctrl-C exits
130; any other exception is a bug and keeps its traceback. Warnings and the package's log messages
are printed as one plain line each.

Building the parser stays fast: a command's module is imported only when that command is the one
being run (see :data:`COMMANDS`); the others get a placeholder that carries just the one-line help.
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import logging
import sys
import warnings
from collections.abc import Sequence
from dataclasses import dataclass

from specdiff import __version__
from specdiff.commands.options import (
    PROG,
    UsageError,
    one_line,
)
from specdiff.commands.synth import (
    add_synth_arguments,
)

# The names and defaults come from the light specdiff.constants (no torch), so building the parser
# (and --help) stays fast; they stay importable from here.
from specdiff.errors import SpecdiffError

EXIT_ERROR = 1
EXIT_USAGE = 2  # argparse's code for a bad command line; also "no model to run"
EXIT_INTERRUPTED = 130  # 128 + SIGINT, what shells report for Ctrl-C


@dataclass(frozen=True)
class Command:
    """A subcommand defined in another module.

    ``modules``: where ``add`` may live, tried in order (the first that exists and defines it wins;
    a command none of whose modules exists is left out of the CLI). ``add(subparsers)`` adds the
    subparser named ``name`` and ``set_defaults(func=...)``; if it sets no ``func``, ``run`` (a
    function of the same module) runs the command. ``help`` is the line shown by
    ``specdiff --help``, kept here so that listing the commands imports none of them.
    """

    name: str
    modules: tuple[str, ...]
    add: str
    help: str
    run: str | None = None


COMMANDS: tuple[Command, ...] = (
    Command("synth", ("specdiff.commands.synth",), "add_synth_arguments",
            "render a MIDI file to a WAV file", "run_synth"),
    Command("examples", ("specdiff.commands.examples",), "add_examples_arguments",
            "list the bundled example MIDI files (for synth --example NAME)", "run_examples"),
    Command("info", ("specdiff.commands.info",), "add_info_arguments",
            "print what a bug report needs: versions, model, device and precision, installed extras", "run_info"),
    Command("prepare", ("specdiff.commands.train",), "add_prepare_arguments",
            "build a training feature cache from (MIDI, audio) pairs or MIDI files to render", "run_prepare"),
    Command("train", ("specdiff.commands.train",), "add_train_arguments",
            "train a model (single process, or under torchrun for DDP)", "run_train"),
    Command("export", ("specdiff.commands.train",), "add_export_arguments",
            "write a training checkpoint as a pipeline folder for --model", "run_export"),
    Command("train-expert", ("specdiff.commands.train_expert",), "add_train_expert_arguments",
            "train a model folder's low-noise expert denoiser (the rest frozen)", "run_train_expert"),
    Command("evaluate", ("specdiff.commands.evaluate",), "add_evaluate_arguments",
            "score a model on MIDI files against reference audio", "run_evaluate"),
    Command("train-vocoder", ("specdiff.commands.vocoder",), "add_vocoder_arguments",
            "train the neural vocoder (log-mel -> 16 kHz audio)", "run_train_vocoder"),
    Command("prepare-vocoder-pairs", ("specdiff.commands.vocoder",), "add_vocoder_pairs_arguments",
            "render MIDI and generate a model's mels for it: pairs for train-vocoder --paired-dir",
            "run_prepare_vocoder_pairs"),
    Command("vocode", ("specdiff.commands.vocoder",), "add_vocode_arguments",
            "log-mel (.npy) or audio -> WAV with the neural vocoder", "run_vocode"),
    Command("export-vocoder", ("specdiff.commands.vocoder",), "add_export_vocoder_arguments",
            "write a vocoder checkpoint as a vocoder/ folder (optionally ONNX)", None),
    Command("serve", ("specdiff.commands.serve",), "add_serve_arguments",
            "run the HTTP synthesis service and its web page", "run_serve"),
)  # fmt: skip


def _module_exists(name: str) -> bool:
    try:
        return importlib.util.find_spec(name) is not None
    except ImportError:  # a parent package is missing
        return False


def available_commands() -> list[Command]:
    """The commands whose module is installed (without importing any of them)."""
    return [c for c in COMMANDS if any(_module_exists(m) for m in c.modules)]


def _add_real_command(subparsers: argparse._SubParsersAction, command: Command) -> None:
    """Import the command's module and let it add its parser (heavy imports happen here)."""
    failure: ImportError | None = None
    for name in command.modules:
        if not _module_exists(name):
            continue
        try:
            module = importlib.import_module(name)
        except ImportError as err:  # e.g. an optional dependency of that command is missing
            failure = err
            continue
        add = getattr(module, command.add, None)
        if add is None:
            continue
        parser = add(subparsers)
        if parser.get_default("func") is None and command.run is not None and hasattr(module, command.run):
            parser.set_defaults(func=getattr(module, command.run))
        return
    reason = f": {one_line(failure)}" if failure is not None else ""
    raise SpecdiffError(f"the {command.name} command is not available in this installation{reason}")


def _selected_command(argv: Sequence[str]) -> str | None:
    """The subcommand named on the command line: the first word that is not an option.

    The top-level parser has only --help and --version, which take no value, so this is exact.
    """
    for word in argv:
        if word == "--":
            return None
        if not word.startswith("-"):
            return word
    return None


def build_parser(argv: Sequence[str] | None = None) -> argparse.ArgumentParser:
    """The ``specdiff`` parser for this command line.

    Only the command named in ``argv`` gets its real parser (importing its module); the others are
    placeholders with their one-line help, enough for ``specdiff --help`` and for argparse's "invalid
    choice" message. ``argv=None`` builds just the placeholders (and synth, which is cheap).
    """
    parser = argparse.ArgumentParser(
        prog=PROG,
        description="Multi-instrument MIDI synthesis with spectrogram diffusion (Hawthorne et al., ISMIR 2022).",
        epilog="Run `specdiff COMMAND --help` for the options of a command.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    selected = _selected_command(argv or [])
    for command in available_commands():
        if command.name == "synth":
            add_synth_arguments(subparsers)
        elif command.name == selected:
            _add_real_command(subparsers, command)
        else:
            subparsers.add_parser(command.name, help=command.help, add_help=False)
    return parser


# ---------------------------------------------------------------------------------------------
# Entry point
# ---------------------------------------------------------------------------------------------


def _show_warning(message, category, filename, lineno, file=None, line=None) -> None:
    # Warnings (e.g. a segment with too many notes was truncated) as one plain line, no source dump.
    print(f"{PROG}: warning: {one_line(message)}", file=sys.stderr)


class _LogHandler(logging.Handler):
    """specdiff's log messages (e.g. "using Griffin-Lim, a low-quality fallback") as one plain line
    each on the current stderr, like the warnings."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            print(f"{PROG}: {record.levelname.lower()}: {one_line(record.getMessage())}", file=sys.stderr)
        except Exception:  # noqa: BLE001 - logging must never break the command
            self.handleError(record)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the exit status (also for --help and bad arguments)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        parser = build_parser(argv)
    except SpecdiffError as err:  # the named command's module cannot be imported
        print(f"{PROG}: error: {one_line(err)}", file=sys.stderr)
        return EXIT_ERROR
    try:
        args = parser.parse_args(argv)
    except SystemExit as exit_:  # --help, --version, or argparse's own usage error (status 2)
        return exit_.code if isinstance(exit_.code, int) else EXIT_ERROR
    quiet = bool(getattr(args, "quiet", False))
    handler = _LogHandler(logging.ERROR if quiet else logging.WARNING)
    package_logger = logging.getLogger("specdiff")
    package_logger.addHandler(handler)
    try:
        with warnings.catch_warnings():
            warnings.showwarning = _show_warning
            if quiet:
                warnings.simplefilter("ignore")
            return int(args.func(args))
    except UsageError as err:
        print(f"{PROG}: error: {one_line(err)}", file=sys.stderr)
        return EXIT_USAGE
    except SpecdiffError as err:
        print(f"{PROG}: error: {one_line(err)}", file=sys.stderr)
        return EXIT_ERROR
    except KeyboardInterrupt:
        print(f"{PROG}: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    finally:
        package_logger.removeHandler(handler)
