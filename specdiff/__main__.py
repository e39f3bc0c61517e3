"""``python -m specdiff`` runs the command line (same as the ``specdiff`` script)."""

import sys

from specdiff.cli import main

if __name__ == "__main__":
    sys.exit(main())
