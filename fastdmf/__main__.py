"""``python -m fastdmf ...``: the command line (the same as the ``fastdmf`` script)."""

import sys

from .cli import main

sys.exit(main())
