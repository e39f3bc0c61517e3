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
    # setup, then lint + format check + tests: every command of the first two blocks, in order
    commands = [line.strip() for block in blocks[:2] for line in block.splitlines() if line.strip()]
    assert commands == ["bash tools/setup.sh", "bash tools/test.sh"]
    ci_lines = [line.strip() for line in (ROOT / ".ci" / "run").read_text().splitlines()]
    assert [line for line in ci_lines if line in commands] == commands


def test_the_readme_test_command_runs_lint_format_check_and_the_default_tests():
    # tools/test.sh runs them with the Python setup installed into ("$PY", see tools/python_env.sh).
    lines = [line.strip() for line in (ROOT / "tools" / "test.sh").read_text().splitlines()]
    checks = [line for line in lines if line.startswith('"$PY" -m ')]
    assert checks == ['"$PY" -m ruff check .', '"$PY" -m ruff format --check .', '"$PY" -m pytest -q "$@"']
    readme = (ROOT / "README.md").read_text()
    for command in ("python -m ruff check .", "python -m ruff format --check .", "python -m pytest -q"):
        assert command in " ".join(readme.split()), f"the README should say that tools/test.sh runs {command}"
