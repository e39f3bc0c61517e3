#!/usr/bin/env bash
# The README's setup command: everything specdiff needs, on a fresh machine (Python >= 3.10).
#
# Where it installs (tools/python_env.py decides): into the active virtual or conda environment if
# there is one; else into the Python itself if it accepts installs (pyenv, python.org builds); else,
# for a distribution's Python that refuses them (PEP 668 "externally managed": Debian 12+, Ubuntu
# 23.04+), into the project's own virtual environment .venv, created here.
#
# SPECDIFF_SETUP_DRY_RUN=1 prints the commands instead of running them (the tests use it). PYTHON
# names the Python to start from (default: python3, else python).
set -euo pipefail
cd "$(dirname "$0")/.."
source tools/python_env.sh

run() {
    if [ -n "${SPECDIFF_SETUP_DRY_RUN:-}" ]; then
        echo "+ $*"
    else
        "$@"
    fi
}

is_root() { [ "$(id -u)" = "0" ]; }

# Debian and Ubuntu ship venv's pip bootstrap (ensurepip) in a separate package: as root, install it
# when the first try fails; otherwise say which package is missing.
make_venv() {
    if run "$BASE_PY" -m venv "$VENV_DIR"; then
        return 0
    fi
    run rm -rf "$VENV_DIR"  # a failed try leaves a venv without pip
    local version
    version=$("$BASE_PY" -c 'import sys; print("%d.%d" % sys.version_info[:2])')
    if command -v apt-get >/dev/null 2>&1 && is_root; then
        run apt-get update -qq
        run env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3-venv "python$version-venv" \
            || run env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3-venv
        run "$BASE_PY" -m venv "$VENV_DIR"
    else
        echo "setup: $BASE_PY cannot create a virtual environment; install the venv package" \
            "(sudo apt-get install python$version-venv) and run this again" >&2
        exit 1
    fi
}

# An existing project venv is kept if its pip works; a broken one (e.g. left without pip by an
# earlier failed `python3 -m venv`) is made again.
if [ "$TARGET" = venv ] && ! "$PY" -m pip --version >/dev/null 2>&1; then
    [ ! -e "$VENV_DIR" ] || run rm -rf "$VENV_DIR"
    make_venv
fi

# The CPU build of PyTorch this project pins (a bare "torch" may pull a multi-GB CUDA build).
run "$PY" -m pip install torch==2.13.0

# Two wheels whose declared dependencies do not install here and are never used by us:
# tinysoundfont wants pyaudio (live playback; we only render offline), basic-pitch wants
# TensorFlow (we run its bundled ONNX model). Their real dependencies are in our extras.
run "$PY" -m pip install --no-deps "tinysoundfont==0.3.7" "basic-pitch==0.4.0"

# specdiff itself with every extra, the test tools and the reference implementations.
run "$PY" -m pip install -e ".[all,test,parity]"

# The browser test drives the system Chromium (Playwright's own browser download is never used).
if ! command -v chromium >/dev/null 2>&1 && ! command -v chromium-browser >/dev/null 2>&1; then
    if command -v apt-get >/dev/null 2>&1 && is_root; then
        (run apt-get update -qq && run env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null) \
            || echo "setup: could not install chromium; the browser test will be skipped" >&2
    else
        echo "setup: no chromium (apt-get install chromium as root); the browser test will be skipped" >&2
    fi
fi

if [ -n "${SPECDIFF_SETUP_DRY_RUN:-}" ]; then
    echo "setup: dry run ($TARGET): nothing was installed"
elif [ "$TARGET" = venv ]; then
    echo "setup: $BASE_PY is externally managed (PEP 668), so specdiff went into the project's virtual" \
        "environment $VENV_DIR: run \`source $VENV_DIR/bin/activate\` to use it (tools/test.sh uses it by itself)"
else
    echo "setup: specdiff installed for $("$BASE_PY" -c 'import sys; print(sys.executable)')"
fi
