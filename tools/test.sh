#!/usr/bin/env bash
# The README's test command: lint, format check and the default test suite, run by the Python that
# tools/setup.sh installed into (the project's .venv where it made one; see tools/python_env.sh).
# Extra arguments go to pytest (e.g. `bash tools/test.sh -m slow`).
set -euo pipefail
cd "$(dirname "$0")/.."
source tools/python_env.sh
if [ ! -x "$PY" ] && [ "$TARGET" = venv ]; then
    echo "test: no $VENV_DIR yet; run \`bash tools/setup.sh\` first" >&2
    exit 1
fi
"$PY" -m ruff check .
"$PY" -m ruff format --check .
"$PY" -m pytest -q "$@"
