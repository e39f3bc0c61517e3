"""Command-line code: one module per subcommand, and what they share.

- :mod:`~specdiff.commands.synth`: ``synth``;
- :mod:`~specdiff.commands.train`: ``prepare``, ``train``, ``export``;
- :mod:`~specdiff.commands.evaluate`: ``evaluate``;
- :mod:`~specdiff.commands.vocoder`: ``train-vocoder``, ``vocode``, ``export-vocoder``;
- :mod:`~specdiff.commands.serve`: ``serve``;
- :mod:`~specdiff.commands.options`: the model options and the model-loading steps that ``synth``,
  ``evaluate`` and ``serve`` share, the number parsers, :class:`~specdiff.commands.options.UsageError`.

The entry point (the registry of subcommands, ``main`` and the error policy) is :mod:`specdiff.cli`.
Imports run one way: commands use the library (``specdiff.pipeline.pipeline``, ``specdiff.training.loop``,
``specdiff.evaluation.evaluate``, ...); the library never imports a command. Building the parser imports no
torch: each module imports heavy libraries inside the functions that run the command.
"""
