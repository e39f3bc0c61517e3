"""The HTTP routes, one ``fastapi.APIRouter`` per module, included by ``specdiff.server.app``.

- ``service``: ``/api/info`` and ``/api/health``, what the server runs and how busy it is.
- ``submit``: ``POST /api/jobs``, an upload (or example) and its settings into the queue.
- ``jobs``: following and managing a job: status, progress events, notes, cancel, delete.
- ``results``: a finished job's WAV and spectrogram.
- ``pages``: the web page and its icon (the static files are mounted by the app).

Routes take what they share from ``state: State`` (``specdiff.server.state``); the work itself is in
``jobs``, ``uploads``, ``synth`` and ``events`` one folder up.
"""
