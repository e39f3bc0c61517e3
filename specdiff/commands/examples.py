"""``specdiff examples``: the bundled example MIDI files that ``specdiff synth --example NAME`` plays."""

from __future__ import annotations

import argparse
import sys

from specdiff.midi.examples import DEFAULT_EXAMPLE, all_examples, featured_examples


def add_examples_arguments(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Add the ``examples`` subcommand (``set_defaults(func=run_examples)``)."""
    p = subparsers.add_parser(
        "examples",
        help="list the bundled example MIDI files (for synth --example NAME)",
        description="List the example MIDI files bundled with specdiff (the demo corpus, public-domain "
        "scores with re-assigned General MIDI instruments), one per line: name, duration, instruments, "
        "composer and work. Without --all, a short list of held-out pieces.",
        epilog=f"example: specdiff synth --example {DEFAULT_EXAMPLE} -o {DEFAULT_EXAMPLE}.wav",
    )
    p.add_argument("--all", action="store_true", help="list every bundled example (default: a few featured ones)")
    p.set_defaults(func=run_examples)
    return p


def run_examples(args: argparse.Namespace) -> int:
    """Print the examples on stdout, name first (so the list pipes to ``cut``/``grep``), and how to
    play one on stderr."""
    examples = all_examples() if args.all else featured_examples()
    width = max(len(e.name) for e in examples)
    for example in examples:
        print(f"{example.name:<{width}}  {example.describe()}")
    if not args.all:
        print(f"({len(all_examples())} in all: specdiff examples --all)", file=sys.stderr)
    print(f"play one: specdiff synth --example NAME -o NAME.wav (e.g. --example {DEFAULT_EXAMPLE})", file=sys.stderr)
    return 0
