#!/usr/bin/env bash
# The README's setup command: everything specdiff needs, on a fresh machine (Python >= 3.10).
set -euo pipefail
cd "$(dirname "$0")/.."

# The CPU build of PyTorch this project pins (a bare "torch" may pull a multi-GB CUDA build).
pip install torch==2.13.0

# Two wheels whose declared dependencies do not install here and are never used by us:
# tinysoundfont wants pyaudio (live playback; we only render offline), basic-pitch wants
# TensorFlow (we run its bundled ONNX model). Their real dependencies are in our extras.
pip install --no-deps "tinysoundfont==0.3.7" "basic-pitch==0.4.0"

# specdiff itself with every extra, the test tools and the reference implementations.
pip install -e ".[all,test,parity]"

# The browser test drives the system Chromium (Playwright's own browser download is never used).
if ! command -v chromium >/dev/null 2>&1 && ! command -v chromium-browser >/dev/null 2>&1; then
    if command -v apt-get >/dev/null 2>&1 && [ "$(id -u)" = "0" ]; then
        (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null) \
            || echo "setup: could not install chromium; the browser test will be skipped" >&2
    else
        echo "setup: no chromium (apt-get install chromium as root); the browser test will be skipped" >&2
    fi
fi
