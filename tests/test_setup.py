"""tools/setup.sh and tools/test.sh: where specdiff is installed and which Python runs the tests.

A Python that refuses system-wide installs (PEP 668 "externally managed", Debian 12+ / Ubuntu 23.04+)
gets a project virtual environment; an active venv or conda env, or a Python that accepts installs,
is used as it is. The decision (tools/python_env.py) is tested with a fake ``EXTERNALLY-MANAGED``
marker, and the scripts end to end in their dry-run mode, from a copy of tools/ (so that the real
checkout's .venv, if any, plays no part) with a fake interpreter whose stdlib folder holds the marker.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
TOOLS = ("setup.sh", "test.sh", "python_env.sh", "python_env.py")


def _load_python_env():
    spec = importlib.util.spec_from_file_location("python_env", ROOT / "tools" / "python_env.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


python_env = _load_python_env()


@pytest.fixture
def stdlib(tmp_path) -> Path:
    folder = tmp_path / "stdlib"
    folder.mkdir()
    return folder


def test_the_marker_decides_between_the_interpreter_and_a_project_venv(stdlib):
    base = "/usr"
    assert python_env.install_target({}, base, base, str(stdlib)) == python_env.INTERPRETER
    (stdlib / "EXTERNALLY-MANAGED").write_text("[externally-managed]\nError=use a venv\n")
    assert python_env.install_target({}, base, base, str(stdlib)) == python_env.VENV


@pytest.mark.parametrize(
    "environ, prefix",
    [
        ({"VIRTUAL_ENV": "/home/me/env"}, "/usr"),
        ({"CONDA_PREFIX": "/opt/conda/envs/music"}, "/usr"),
        ({}, "/home/me/env"),  # a venv's interpreter run without activating the venv
    ],
)
def test_an_active_environment_is_used_even_over_an_externally_managed_base(environ, prefix, stdlib):
    # A venv made from Debian's Python shares the base's stdlib, marker included, yet accepts installs.
    (stdlib / "EXTERNALLY-MANAGED").write_text("")
    assert python_env.install_target(environ, prefix, "/usr", str(stdlib)) == python_env.ACTIVE


def test_the_decision_script_reports_for_the_python_that_runs_it():
    clean = {k: v for k, v in os.environ.items() if k not in ("VIRTUAL_ENV", "CONDA_PREFIX")}
    out = subprocess.run(
        [sys.executable, str(ROOT / "tools" / "python_env.py")], capture_output=True, text=True, env=clean, check=True
    )
    expected = python_env.install_target(clean, sys.prefix, sys.base_prefix, sysconfig.get_path("stdlib"))
    assert out.stdout.strip() == expected


# ---------------------------------------------------------------------------------------------
# The scripts, in a copy of tools/, with a fake interpreter
# ---------------------------------------------------------------------------------------------


@pytest.fixture
def checkout(tmp_path) -> Path:
    """A folder holding just tools/: what the scripts see as the repository root."""
    root = tmp_path / "checkout"
    (root / "tools").mkdir(parents=True)
    for name in TOOLS:
        shutil.copy2(ROOT / "tools" / name, root / "tools" / name)
    return root


def fake_python(tmp_path: Path, externally_managed: bool) -> tuple[Path, Path]:
    """An interpreter that runs tools/python_env.py with the real Python, made to look like a base
    installation whose stdlib folder holds (or not) the PEP 668 marker, and that only logs any other
    command (pip, ruff, pytest). Returns (the interpreter, its log)."""
    stdlib = tmp_path / "fake-stdlib"
    stdlib.mkdir()
    if externally_managed:
        (stdlib / "EXTERNALLY-MANAGED").write_text("[externally-managed]\nError=apt install python3-xyz\n")
    site = tmp_path / "fake-site"
    site.mkdir()
    (site / "sitecustomize.py").write_text(
        "import sys, sysconfig\n"
        "_get_path = sysconfig.get_path\n"
        f"STDLIB = {str(stdlib)!r}\n"
        "sysconfig.get_path = lambda name, *a, **k: STDLIB if name == 'stdlib' else _get_path(name, *a, **k)\n"
        "sys.prefix = sys.base_prefix  # a base installation, even when the tests run in a venv\n"
    )
    log = tmp_path / "commands.log"
    python = tmp_path / "bin" / "python3"
    python.parent.mkdir()
    python.write_text(
        "#!/usr/bin/env bash\n"
        'case "$1" in\n'
        f'  *python_env.py) PYTHONPATH={site} exec {sys.executable} "$@" ;;\n'
        f'  *) echo "$0 $*" >> {log} ;;\n'
        "esac\n"
    )
    python.chmod(0o755)
    return python, log


def run_script(checkout: Path, name: str, python: Path, **extra_env: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k not in ("VIRTUAL_ENV", "CONDA_PREFIX", "PYTHONPATH")}
    env.update(PYTHON=str(python), **extra_env)
    return subprocess.run(
        ["bash", str(checkout / "tools" / name)], capture_output=True, text=True, env=env, cwd=checkout, timeout=60
    )


def installs(stdout: str) -> list[str]:
    """The interpreter of every pip install the dry run would run."""
    return [line.split()[1] for line in stdout.splitlines() if line.startswith("+ ") and " -m pip install " in line]


def test_setup_with_an_externally_managed_python_creates_and_uses_a_venv(checkout, tmp_path):
    python, _ = fake_python(tmp_path, externally_managed=True)
    out = run_script(checkout, "setup.sh", python, SPECDIFF_SETUP_DRY_RUN="1")
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert f"+ {python} -m venv .venv" in lines
    assert installs(out.stdout) and set(installs(out.stdout)) == {".venv/bin/python"}
    assert lines.index(f"+ {python} -m venv .venv") < lines.index("+ .venv/bin/python -m pip install torch==2.13.0")
    assert "+ .venv/bin/python -m pip install -e .[all,test,parity]" in lines
    assert not (checkout / ".venv").exists(), "a dry run changes nothing"


def test_setup_with_a_python_that_accepts_installs_installs_into_it(checkout, tmp_path):
    python, _ = fake_python(tmp_path, externally_managed=False)
    out = run_script(checkout, "setup.sh", python, SPECDIFF_SETUP_DRY_RUN="1")
    assert out.returncode == 0, out.stderr
    assert "-m venv" not in out.stdout
    assert installs(out.stdout) and set(installs(out.stdout)) == {str(python)}


def test_setup_reuses_an_existing_project_venv(checkout, tmp_path):
    python, _ = fake_python(tmp_path, externally_managed=True)
    venv_python = checkout / ".venv" / "bin" / "python"
    venv_python.parent.mkdir(parents=True)
    shutil.copy2(python, venv_python)
    out = run_script(checkout, "setup.sh", python, SPECDIFF_SETUP_DRY_RUN="1")
    assert out.returncode == 0, out.stderr
    assert "-m venv" not in out.stdout and set(installs(out.stdout)) == {".venv/bin/python"}


def test_setup_remakes_a_project_venv_without_pip(checkout, tmp_path):
    python, _ = fake_python(tmp_path, externally_managed=True)
    venv_python = checkout / ".venv" / "bin" / "python"
    venv_python.parent.mkdir(parents=True)
    venv_python.write_text("#!/usr/bin/env bash\necho 'No module named pip' >&2\nexit 1\n")
    venv_python.chmod(0o755)
    out = run_script(checkout, "setup.sh", python, SPECDIFF_SETUP_DRY_RUN="1")
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert lines[:2] == ["+ rm -rf .venv", f"+ {python} -m venv .venv"]
    assert set(installs(out.stdout)) == {".venv/bin/python"}


def test_setup_inside_an_active_venv_installs_there(checkout, tmp_path):
    python, _ = fake_python(tmp_path, externally_managed=True)
    out = run_script(checkout, "setup.sh", python, SPECDIFF_SETUP_DRY_RUN="1", VIRTUAL_ENV=str(tmp_path / "env"))
    assert out.returncode == 0, out.stderr
    assert "-m venv" not in out.stdout and set(installs(out.stdout)) == {str(python)}


@pytest.mark.skipif(
    not Path("/usr/bin/python3").is_file()
    or subprocess.run(
        ["/usr/bin/python3", "-c", "import sys, sysconfig, pathlib; "
         "sys.exit(not (pathlib.Path(sysconfig.get_path('stdlib')) / 'EXTERNALLY-MANAGED').is_file())"],
        capture_output=True,
    ).returncode != 0,
    reason="no externally managed system Python here (PEP 668; Debian 12+, Ubuntu 23.04+ have one)",
)  # fmt: skip
def test_setup_with_the_real_externally_managed_system_python_plans_a_venv(checkout):
    out = run_script(checkout, "setup.sh", Path("/usr/bin/python3"), SPECDIFF_SETUP_DRY_RUN="1")
    assert out.returncode == 0, out.stderr
    assert "+ /usr/bin/python3 -m venv .venv" in out.stdout.splitlines()
    assert set(installs(out.stdout)) == {".venv/bin/python"}


# ---------------------------------------------------------------------------------------------
# A Python without venv's pip bootstrap (Debian/Ubuntu without python3-venv), really run: every
# program setup calls (python, apt-get, id) is a fake that logs
# ---------------------------------------------------------------------------------------------


def debian_without_venv_package(tmp_path: Path, checkout: Path, uid: int) -> tuple[Path, Path, dict[str, str]]:
    """An externally managed fake Python whose ``-m venv`` fails until the fake apt-get has run
    (then it makes .venv/bin/python, a logging fake itself), and a fake ``id -u``. Returns (the
    interpreter, the log of every command, the PATH to run setup with)."""
    python, log = fake_python(tmp_path, externally_managed=True)
    bin_dir = python.parent
    installed = tmp_path / "venv-package-installed"
    python.write_text(
        "#!/usr/bin/env bash\n"
        f'echo "$0 $*" >> {log}\n'
        'case "$1" in\n'
        f'  *python_env.py) PYTHONPATH={tmp_path / "fake-site"} exec {sys.executable} "$@" ;;\n'
        f'  -c) exec {sys.executable} "$@" ;;\n'
        "esac\n"
        'if [ "$1 $2" = "-m venv" ]; then\n'
        f"  [ -f {installed} ] || {{ echo 'ensurepip is not available' >&2; mkdir -p \"$3\"; exit 1; }}\n"
        f'  mkdir -p "$3/bin" && cp {python} "$3/bin/python"\n'
        "fi\n"
    )
    (bin_dir / "apt-get").write_text(f'#!/usr/bin/env bash\necho "apt-get $*" >> {log}\ntouch {installed}\n')
    (bin_dir / "id").write_text(f"#!/usr/bin/env bash\necho {uid}\n")
    for tool in ("apt-get", "id"):
        (bin_dir / tool).chmod(0o755)
    return python, log, {"PATH": f"{bin_dir}:{os.environ['PATH']}"}


def test_setup_as_root_installs_the_venv_package_and_retries(checkout, tmp_path):
    python, log, path = debian_without_venv_package(tmp_path, checkout, uid=0)
    out = run_script(checkout, "setup.sh", python, **path)
    assert out.returncode == 0, out.stderr
    commands = log.read_text().splitlines()
    venv = f"{python} -m venv .venv"
    version = f"{sys.version_info[0]}.{sys.version_info[1]}"
    apt = f"apt-get install -y -qq python3-venv python{version}-venv"
    assert commands.count(venv) == 2 and apt in commands
    assert commands.index(venv) < commands.index(apt) < len(commands) - commands[::-1].index(venv) - 1
    pip = [c for c in commands if " -m pip install " in c]
    assert pip and all(c.startswith(".venv/bin/python -m pip install ") for c in pip)
    assert (checkout / ".venv" / "bin" / "python").is_file()
    last = out.stdout.strip().splitlines()[-1]
    assert "externally managed (PEP 668)" in last and "source .venv/bin/activate" in last


def test_setup_as_a_user_says_which_package_to_install(checkout, tmp_path):
    python, log, path = debian_without_venv_package(tmp_path, checkout, uid=1000)
    out = run_script(checkout, "setup.sh", python, **path)
    version = f"{sys.version_info[0]}.{sys.version_info[1]}"
    assert out.returncode == 1
    assert out.stderr.strip().splitlines()[-1] == (
        f"setup: {python} cannot create a virtual environment; install the venv package "
        f"(sudo apt-get install python{version}-venv) and run this again"
    )
    commands = log.read_text().splitlines()
    assert not any(c.startswith("apt-get") or " -m pip " in c for c in commands)
    assert not (checkout / ".venv").exists(), "the failed try's half-made venv is removed"


# ---------------------------------------------------------------------------------------------
# tools/test.sh runs lint, format check and tests with the Python setup installed into
# ---------------------------------------------------------------------------------------------

CHECKS = ["-m ruff check .", "-m ruff format --check .", "-m pytest -q"]


def test_test_script_uses_the_project_venv_made_by_setup(checkout, tmp_path):
    python, log = fake_python(tmp_path, externally_managed=True)
    missing = run_script(checkout, "test.sh", python)
    assert missing.returncode == 1 and "bash tools/setup.sh" in missing.stderr
    venv_python = checkout / ".venv" / "bin" / "python"
    venv_python.parent.mkdir(parents=True)
    shutil.copy2(python, venv_python)  # logs to the same file, under its own name
    out = run_script(checkout, "test.sh", python)
    assert out.returncode == 0, out.stderr
    assert log.read_text().splitlines() == [f".venv/bin/python {check}" for check in CHECKS]


def test_test_script_uses_a_python_that_accepts_installs_directly(checkout, tmp_path):
    python, log = fake_python(tmp_path, externally_managed=False)
    out = run_script(checkout, "test.sh", python)
    assert out.returncode == 0, out.stderr
    assert log.read_text().splitlines() == [f"{python} {check}" for check in CHECKS]
