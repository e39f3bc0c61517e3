"""Where tools/setup.sh installs specdiff, and which Python tools/test.sh runs: one word on stdout.

Run by the Python that would do the installing (``python3 tools/python_env.py``), it prints

* ``active``: a virtual environment or conda environment is active (``VIRTUAL_ENV`` / ``CONDA_PREFIX``
  set, or this interpreter is itself a venv's): install into it, as the user asked for.
* ``interpreter``: a Python that accepts installs (not externally managed, e.g. pyenv or a python.org
  build): install into it directly.
* ``venv``: a distribution's Python that refuses system-wide installs (PEP 668: an
  ``EXTERNALLY-MANAGED`` file in its stdlib folder, as on Debian 12+ and Ubuntu 23.04+; pip would stop
  with "externally-managed-environment"): use the project's own virtual environment, ``.venv``.

Standard library only, and syntax Python 3.7+ runs, so that a too-old Python 3 gets a clear
message (exit status 1) instead of a SyntaxError.
"""

from __future__ import annotations

import os
import sys
import sysconfig
from collections.abc import Mapping
from pathlib import Path

#: PEP 668's marker file, in the folder ``sysconfig.get_path("stdlib")`` names.
MARKER = "EXTERNALLY-MANAGED"

#: The oldest Python specdiff supports (pyproject.toml's requires-python).
MIN_PYTHON = (3, 10)

ACTIVE = "active"
INTERPRETER = "interpreter"
VENV = "venv"


def in_environment(environ: Mapping[str, str], prefix: str, base_prefix: str) -> bool:
    """Whether installs go to an environment the user made: an activated venv or conda env, or an
    interpreter that is a venv's (its prefix differs from its base installation's, as PEP 405 says)."""
    return bool(environ.get("VIRTUAL_ENV") or environ.get("CONDA_PREFIX")) or prefix != base_prefix


def externally_managed(stdlib_dir: str | os.PathLike[str]) -> bool:
    """PEP 668: the distribution manages this Python's packages (pip refuses to install into it)."""
    return (Path(stdlib_dir) / MARKER).is_file()


def install_target(environ: Mapping[str, str], prefix: str, base_prefix: str, stdlib_dir: str) -> str:
    """:data:`ACTIVE`, :data:`INTERPRETER` or :data:`VENV` (see the module docstring).

    An active environment wins even over an externally managed base: a venv made from Debian's
    Python has the base's stdlib (and its marker) but accepts installs, which is what PEP 668 says.
    """
    if in_environment(environ, prefix, base_prefix):
        return ACTIVE
    if externally_managed(stdlib_dir):
        return VENV
    return INTERPRETER


def main() -> int:
    if sys.version_info < MIN_PYTHON:
        need = ".".join(map(str, MIN_PYTHON))
        print(f"setup: specdiff needs Python >= {need}; {sys.executable} is {sys.version.split()[0]}", file=sys.stderr)
        return 1
    print(install_target(os.environ, sys.prefix, sys.base_prefix, sysconfig.get_path("stdlib")))
    return 0


if __name__ == "__main__":
    sys.exit(main())
