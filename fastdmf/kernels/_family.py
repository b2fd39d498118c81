"""Compiling a kernel family: one source, a serial and a parallel build.

A family (``fastdmf.kernels.cpu``, ``sensing``, ``diagonal``) is a list of ``(name, Python
function, compile kind)``. :func:`build` re-binds each function to one namespace in which its
callees' names resolve to this build's dispatchers, so the serial and the parallel build (and
families that share functions: ``update``, ``run`` and the flow integrators call the
``loss_and_grad`` of the namespace they are compiled in) share their source.
"""

from __future__ import annotations

import hashlib
import types
from pathlib import Path
from types import SimpleNamespace

import numba

from . import CACHE

__all__ = ["build", "KINDS", "SOURCE_TAG"]

#: compile kinds: "kernel" (prange loops), "fast" (prange and ``fastmath``), "driver" (plain)
KINDS = ("kernel", "fast", "driver")


def _source_tag() -> str:
    """A digest of the kernel sources the CPU families compile from (cpu.py, flow.py,
    sensing.py, diagonal.py and this file), appended to the cached functions' names. Numba
    keys a cache entry on the source file of the function alone, yet a compiled function
    embeds its callees: ``flow.run_flow`` holds cpu's ``loss_and_grad``, ``sensing``'s
    ``loss_and_grad`` its ``blocked_sum``. With the digest in the name, a change to any of
    these files starts new cache entries instead of loading code built from the old sources."""
    digest = hashlib.sha1()
    for name in ("cpu.py", "flow.py", "sensing.py", "diagonal.py", "_family.py"):
        try:
            digest.update(Path(__file__).with_name(name).read_bytes())
        except OSError:  # sources not on disk: nothing is cached anyway
            return ""
    return digest.hexdigest()[:12]


#: see :func:`_source_tag`
SOURCE_TAG = _source_tag()


def build(family, namespace, parallel, *, fastmath=frozenset(), cache=None, **names):
    """Compile ``family`` with ``parallel`` (prange) or as plain loops; returns a namespace of
    the dispatchers plus ``parallel``.

    ``namespace`` is what the functions' globals resolve to (copied; each built function is
    added as it is compiled). ``fastmath`` holds the flags of the "fast" kind. ``names``
    rebind globals of the family before compiling (a family's own options, e.g. a block
    size), and are kept on the result. Only the serial build is cached by default (caching
    parallel functions is unsafe when the thread count changes); ``cache`` overrides that
    (a build with rebound names should not share the cache of the default one)."""
    ns = dict(namespace)
    ns.update(names)
    options = {
        "kernel": dict(parallel=parallel),
        "fast": dict(parallel=parallel, fastmath=set(fastmath)),
        "driver": dict(),
    }
    if cache is None:
        cache = CACHE and not parallel
    built = {}
    for name, py, kind in family:
        fn = types.FunctionType(py.__code__, ns, name, py.__defaults__, py.__closure__)
        fn.__qualname__ = f"{name}_{SOURCE_TAG}"  # see _source_tag
        ns[name] = built[name] = numba.njit(cache=cache, **options[kind])(fn)
    return SimpleNamespace(parallel=parallel, **names, **built)
