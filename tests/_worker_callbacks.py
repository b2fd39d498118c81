"""Callbacks that tests hand to a sweep's worker processes.

Spawned workers unpickle a callback by its module's name, so it must live in a module they can
import. pytest imports the test modules with ``--import-mode=importlib`` (no folder on
``sys.path``, so the installed fastdmf is the one tested); a test that needs these puts this
folder, which holds no package, on ``sys.path`` (``monkeypatch.syspath_prepend``) and imports
this module by its bare name, which the workers then import the same way.
"""

import os


def die_once(marker, record):
    """Fit callback: the first depth-2 fit to reach a record kills its worker process."""
    if len(record["factors"]) == 2 and not os.path.exists(marker):
        open(marker, "w").close()
        os._exit(1)
