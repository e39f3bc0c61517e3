"""``specdiff serve``: an HTTP service and web page around one loaded pipeline.

Modules, one job each:

- ``config``: :class:`~specdiff.server.config.ServeConfig`, the limits and defaults (no imports).
- ``jobs``: the bounded job queue, one worker thread, cancellation and expiry (no web framework).
- ``synth``: runs one job on the pipeline (step progress, cancellation) and writes WAV + PNG.
- ``png``: a dependency-free spectrogram PNG writer, used when matplotlib is not installed.
- ``guards``: refuses foreign Host headers (DNS rebinding), cross-origin state changes, missing tokens.
- ``docs``: ``/docs`` and ``/redoc`` from locally bundled assets (no CDN).
- ``app``: assembles the FastAPI application (state, middleware, error handler, routers) and runs it.
- ``routes/``: the HTTP routes, one ``APIRouter`` per module (service, submit, jobs, results, pages).
- ``state``: :class:`~specdiff.server.state.ServerState`, what the routes share (``Depends``).
- ``schemas``: the JSON shapes (response models, error table, a job's status view).
- ``gates``: refuses a submission before its body is read (full queue 429, too large 413).
- ``events``: a job's progress as server-sent events.

The command-line side is ``specdiff/commands/serve.py``; the page itself is ``specdiff/web/``.
"""
