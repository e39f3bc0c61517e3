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
    setup, test = blocks[0].strip(), blocks[1].strip()
    ci_lines = [line.strip() for line in (ROOT / ".ci" / "run").read_text().splitlines()]
    assert setup in ci_lines and test in ci_lines
