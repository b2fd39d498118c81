"""pytest in benchmarks/: the test modules import this folder's scripts and ``_harness`` by
name, as the scripts do when run. pytest imports them with ``--import-mode=importlib``, which
puts no folder on ``sys.path``, so this folder is added here (it holds no ``fastdmf``: the
package comes from wherever the interpreter's path finds it)."""

import sys
from pathlib import Path

HERE = str(Path(__file__).resolve().parent)
if HERE not in sys.path:
    sys.path.insert(0, HERE)
