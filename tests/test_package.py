"""Package-level properties: a light import, lazy public names, CI script mirrors the README."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_import_is_light():
    code = (
        "import sys, specdiff; "
        "heavy = [m for m in ('torch', 'onnxruntime', 'matplotlib', 'diffusers', 'symusic') if m in sys.modules]; "
        "print(','.join(heavy))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == ""


def test_lazy_public_names_resolve():
    import specdiff

    for name in specdiff.__all__:
        assert getattr(specdiff, name) is not None


def test_ci_runs_exactly_the_readme_commands():
    readme = (ROOT / "README.md").read_text()
    blocks = re.findall(r"```bash\n(.*?)\n```", readme, flags=re.S)
    # setup, lint, test: every command of the first three blocks, in the README's order
    commands = [line.strip() for block in blocks[:3] for line in block.splitlines() if line.strip()]
    assert commands[0] == "bash tools/setup.sh" and commands[-1] == "python -m pytest -q"
    assert "python -m ruff check ." in commands and "python -m ruff format --check ." in commands
    ci_lines = [line.strip() for line in (ROOT / ".ci" / "run").read_text().splitlines()]
    assert [line for line in ci_lines if line in commands] == commands
