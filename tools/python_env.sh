# Sourced by tools/setup.sh and tools/test.sh (bash): which Python the project installs into and runs.
#
# BASE_PY: the Python named by $PYTHON, else python3, else python (the one a new user has).
# TARGET:  what tools/python_env.py decides for it: active | interpreter | venv.
# PY:      the Python to install into and test with: .venv/bin/python for "venv", else BASE_PY.

if [ -n "${PYTHON:-}" ]; then
    BASE_PY=$PYTHON
elif command -v python3 >/dev/null 2>&1; then
    BASE_PY=python3
elif command -v python >/dev/null 2>&1; then
    BASE_PY=python
else
    echo "setup: no Python found (install Python >= 3.10, e.g. apt-get install python3)" >&2
    exit 1
fi
TARGET=$("$BASE_PY" tools/python_env.py)
VENV_DIR=.venv
if [ "$TARGET" = venv ]; then
    PY=$VENV_DIR/bin/python
else
    PY=$BASE_PY
fi
