"""``specdiff serve``: an HTTP service and web page around one loaded pipeline.

Modules, one job each:

- ``config``: :class:`~specdiff.server.config.ServeConfig`, the limits and defaults (no imports).
- ``jobs``: the bounded job queue, one worker thread, cancellation and expiry (no web framework).
- ``synth``: runs one job on the pipeline (step progress, cancellation) and writes WAV + PNG.
- ``png``: a dependency-free spectrogram PNG writer, used when matplotlib is not installed.
- ``guards``: refuses foreign Host headers (DNS rebinding) and cross-origin state changes.
- ``docs``: ``/docs`` and ``/redoc`` from locally bundled assets (no CDN).
- ``app``: the FastAPI application (JSON API, server-sent progress events, the static page).

The command-line side is ``specdiff/commands/serve.py``; the page itself is ``specdiff/web/``.
"""
