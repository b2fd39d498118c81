"""``python -m fastdmf ...``: the command line (the same as the ``fastdmf`` script)."""

import sys

from .cli import main

if __name__ == "__main__":
    sys.exit(main())
