"""Command-line code: argument parsers, ``run_*`` functions and the options they share.

Imports run one way: commands use the library (``specdiff.pipeline``, ``specdiff.train``,
``specdiff.evaluate``, ...), the library never imports a command. The ``specdiff`` entry point with
its command registry and error policy is :mod:`specdiff.cli`; the command modules are
:mod:`specdiff.cli` (synth), :mod:`specdiff.train_cli` (prepare, train, export),
:mod:`specdiff.vocoder_cli` (train-vocoder, vocode, export-vocoder), :mod:`specdiff.serve` and
:mod:`specdiff.commands.evaluate`; :mod:`specdiff.commands.options` holds what they share.
"""
