"""The old home of the ``train-vocoder, vocode and export-vocoder`` command line, now :mod:`specdiff.commands.vocoder`.

``import specdiff.vocoder_cli`` gives that module itself (same functions, same globals), so code and tests
written against the old name keep working.
"""

import sys

from specdiff.commands import vocoder as _moved

if __name__ == "__main__":
    from specdiff.cli import main

    sys.exit(main())
else:
    sys.modules[__name__] = _moved
