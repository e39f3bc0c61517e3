"""The old home of the ``serve`` command line, now :mod:`specdiff.commands.serve`.

``import specdiff.serve`` gives that module itself (same functions, same globals), so code and tests
written against the old name keep working.
"""

import sys

from specdiff.commands import serve as _moved

if __name__ == "__main__":
    from specdiff.cli import main

    sys.exit(main())
else:
    sys.modules[__name__] = _moved
