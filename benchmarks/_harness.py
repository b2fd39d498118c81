"""What the benchmark scripts share: the report's stamp (date, machine, versions, commit), the
CPU that other processes took while timing, interleaved timing of step implementations with
their one-step agreement check, and the dense NumPy and PyTorch training steps they are timed
against.

The scripts put this folder on ``sys.path`` (a script's own folder is there when it runs;
``benchmarks/conftest.py`` adds it for pytest) and import from here. This module does not
touch ``sys.path``: it imports whichever ``fastdmf`` the importer's path finds.
"""

from __future__ import annotations

import ctypes
import datetime
import glob
import os
import platform
import re
import subprocess
import time
from pathlib import Path

import numba
import numpy as np
import scipy

import fastdmf

ROOT = Path(__file__).resolve().parent.parent  # the checkout, for the stamp's git commit

LR = 1e-3  # the plain-GD rate of the step benchmarks
TORCH_THREADS = 2
AGREE_RTOL = 1e-10  # float64 implementations after one step from identical factors
AGREE_RTOL_F32 = 1e-4  # float32 agrees to ~1e-5 after one step
CONTENTION_WARN = 10.0  # percent of all cores used by others before a report warns


def torch_or_none():
    """The torch module, or None when it does not import (its rows are then skipped). Imported
    on demand, so processes that do not time torch do not carry it."""
    try:
        import torch
    except ImportError:
        return None
    return torch


# --------------------------------------------------------------------------- dense peers


class NumpyDense:
    """The step as a NumPy user writes it: dense W, masked residual, backprop by hand."""

    name = "numpy dense"

    def __init__(self, problem, layout, dtype="float64", lr=LR):
        m, n = problem.shape
        self.lr = lr
        self.mask = np.zeros((m, n), dtype=dtype)
        self.mask[problem.rows, problem.cols] = 1.0
        self.target = np.zeros((m, n), dtype=dtype)
        self.target[problem.rows, problem.cols] = problem.values
        self.n_obs = problem.n_observed

    def load(self, factors):
        self.ws = [np.array(w, dtype=self.mask.dtype) for w in factors]

    def step(self):
        ws = self.ws
        # forward: prefixes[j] = W_{j+1} ... W_1
        prefixes = [ws[0]]
        for w in ws[1:]:
            prefixes.append(w @ prefixes[-1])
        resid = self.mask * (prefixes[-1] - self.target)
        self.loss = np.sum(resid**2) / self.n_obs
        # backward: back = (W_N ... W_{j+1})^T G, G = dL/dW
        back = (2.0 / self.n_obs) * resid
        self.gs = [None] * len(ws)
        for j in range(len(ws) - 1, 0, -1):
            self.gs[j] = back @ prefixes[j - 1].T
            back = ws[j].T @ back
        self.gs[0] = back
        for w, g in zip(ws, self.gs, strict=True):
            w -= self.lr * g

    def steps(self, k):
        for _ in range(k):
            self.step()

    def factors(self):
        return [w.copy() for w in self.ws]

    def grads(self):
        return [g.copy() for g in self.gs]


class TorchDense:
    """The step as a PyTorch user writes it (cf. the paper's main.py): nn.Parameter factors,
    dense product, gather the observed entries, MSE, backward, SGD."""

    name = "torch dense"

    def __init__(self, problem, layout, dtype="float64", lr=LR):
        import torch

        self.torch = torch
        self.lr = lr
        torch.set_num_threads(TORCH_THREADS)
        self.rows = torch.from_numpy(problem.rows)
        self.cols = torch.from_numpy(problem.cols)
        self.dtype = getattr(torch, dtype)
        self.y = torch.from_numpy(problem.values).to(self.dtype)

    def load(self, factors):
        torch = self.torch
        self.params = [torch.nn.Parameter(torch.tensor(w, dtype=self.dtype)) for w in factors]
        self.opt = torch.optim.SGD(self.params, lr=self.lr)

    def loss(self, w):
        """Mean squared error on the observed entries of the dense product ``w``."""
        return ((w[self.rows, self.cols] - self.y) ** 2).mean()

    def step(self):
        w = self.params[0]
        for p in self.params[1:]:
            w = p @ w
        loss = self.loss(w)
        self.opt.zero_grad()
        loss.backward()
        self.opt.step()

    def steps(self, k):
        for _ in range(k):
            self.step()

    def factors(self):
        return [p.detach().numpy().copy() for p in self.params]

    def grads(self):
        return [p.grad.numpy().copy() for p in self.params]


# --------------------------------------------------------------------------- checks and timing


def rel_diff(got, ref) -> float:
    """max over factors of ||got - ref||_F / ||ref||_F."""
    return max(
        float(np.linalg.norm(g - r) / np.linalg.norm(r)) for g, r in zip(got, ref, strict=True)
    )


def check_agreement(impls, factors0, rtol_for=None):
    """One step from ``factors0`` for each implementation, compared with the first (fastdmf
    serial).

    Returns ``{name: (grad_rel, factor_rel)}``; raises if any exceeds its tolerance:
    ``rtol_for(impl)`` (None: reported only), by default AGREE_RTOL."""
    ref = impls[0]
    ref.load(factors0)
    ref.steps(1)
    ref_g, ref_w = ref.grads(), ref.factors()
    out = {}
    for impl in impls[1:]:
        impl.load(factors0)
        impl.steps(1)
        out[impl.name] = (rel_diff(impl.grads(), ref_g), rel_diff(impl.factors(), ref_w))
        rtol = rtol_for(impl) if rtol_for else AGREE_RTOL
        if rtol is not None and max(out[impl.name]) > rtol:
            raise AssertionError(
                f"{impl.name} disagrees with fastdmf serial after one step: gradient rel diff "
                f"{out[impl.name][0]:.2e}, factors {out[impl.name][1]:.2e} (> {rtol:g})"
            )
    return out


def timed(impl, k) -> float:
    t0 = time.perf_counter()
    impl.steps(k)
    return time.perf_counter() - t0


# Pause before each timed call: OpenBLAS's workers busy-wait for about 0.1 s after a threaded
# call (numpy dense, torch), and a row timed in that window shares the cores with them (the
# parallel fastdmf kernels at 2000 x 2000 measured 3.5x slower right after a numpy matmul).
SETTLE_S = 0.25


def time_impls(impls, factors0, repeats, target_s):
    """Seconds per step, ``{name: (median, best, k)}``; repeats interleaved round robin, each
    timed call after a pause of ``SETTLE_S`` (see there)."""
    ks = {}
    for impl in impls:  # warm-up (compilation, first calls), then k from the best of 3
        impl.load(factors0)
        impl.steps(1)
        once = min(timed(impl, 1) for _ in range(3))
        ks[impl.name] = int(np.clip(np.ceil(target_s / max(once, 1e-7)), 1, 20_000))
    samples = {impl.name: [] for impl in impls}
    for _ in range(repeats):
        for impl in impls:
            impl.load(factors0)
            k = ks[impl.name]
            time.sleep(SETTLE_S)
            samples[impl.name].append(timed(impl, k) / k)
    return {name: (float(np.median(s)), float(np.min(s)), ks[name]) for name, s in samples.items()}


# --------------------------------------------------------------------------- machine


def numpy_blas_setter():
    """numpy's bundled OpenBLAS thread setter, or None."""
    libdir = Path(np.__file__).resolve().parent.parent / "numpy.libs"
    for path in sorted(glob.glob(str(libdir / "*openblas*"))):
        lib = ctypes.CDLL(path)
        for sym in ("scipy_openblas_set_num_threads64_", "openblas_set_num_threads"):
            if hasattr(lib, sym):
                fn = getattr(lib, sym)
                fn.argtypes = [ctypes.c_int]
                return fn
    return None


def matmul_rate(threads=None, repeats=10, dtype="float64"):
    """GFLOP/s of a 1000x1000 numpy matmul in ``dtype``: (best, median)."""
    setter = numpy_blas_setter() if threads else None
    if threads and setter is None:
        return None
    a = np.random.default_rng(1).standard_normal((1000, 1000)).astype(dtype)
    b = np.random.default_rng(2).standard_normal((1000, 1000)).astype(dtype)
    try:
        if setter:
            setter(threads)
        a @ b
        ts = []
        for _ in range(repeats):
            t0 = time.perf_counter()
            a @ b
            ts.append(time.perf_counter() - t0)
    finally:
        if setter:
            setter(os.cpu_count() or 1)
    return 2e9 / min(ts) / 1e9, 2e9 / float(np.median(ts)) / 1e9


def cpu_snapshot():
    """(machine busy s, steal s, this process's CPU s, wall s) from /proc/stat and os.times."""
    tick = os.sysconf("SC_CLK_TCK")
    try:
        f = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
        busy, steal = (f[0] + f[1] + f[2] + f[5] + f[6]) / tick, f[7] / tick
    except (OSError, IndexError, ValueError):
        busy = steal = float("nan")
    t = os.times()
    return busy, steal, t.user + t.system, time.perf_counter()


def contention(before, after) -> tuple[float, float]:
    """Percent of all cores that other processes used, and the hypervisor stole, in between."""
    d = [b - a for a, b in zip(before, after, strict=True)]
    cap = d[3] * (os.cpu_count() or 1)
    return max(0.0, 100 * (d[0] - d[2]) / cap), 100 * d[1] / cap


def cpu_model() -> str:
    try:
        text = Path("/proc/cpuinfo").read_text()
        return re.search(r"model name\s*:\s*(.*)", text).group(1).strip()
    except (OSError, AttributeError):
        return platform.processor() or "unknown"


def git_commit() -> str:
    def git(*args):
        return subprocess.run(
            ["git", *args], cwd=ROOT, capture_output=True, text=True, check=False
        ).stdout.strip()

    commit = git("rev-parse", "--short", "HEAD") or "unknown"
    dirty = git("status", "--porcelain", "--", "fastdmf")
    return commit + (" + uncommitted changes under fastdmf/" if dirty else "")


def stamp(torch_threads: int | None = TORCH_THREADS) -> list[str]:
    """The stamp every benchmark report starts with: date, machine, versions, fastdmf commit.

    ``torch_threads``: the thread count the benchmark gives torch, or None where it does not
    time torch (its version is listed all the same). ``numba.get_num_threads()`` starts Numba's
    thread pool, which fixes the threading layer the parallel kernels use, so the layer is known
    here even before any parallel kernel has run; it is named only if Numba reports one."""
    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else "?"
    torch = torch_or_none()
    tv = torch.__version__ if torch is not None else "not installed"
    if torch is not None and torch_threads is not None:
        tv += f" ({torch_threads} threads)"
    threads = numba.get_num_threads()  # launches the pool: the layer is chosen from here on
    try:
        layer = f", {numba.threading_layer()} layer"
    except ValueError:  # no layer chosen: leave it out rather than guess
        layer = ""
    return [
        f"- date: {datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M UTC}",
        f"- machine: {platform.platform()}; {cpu_model()}; {os.cpu_count()} cores "
        f"({usable} usable)",
        f"- versions: python {platform.python_version()}, numpy {np.__version__}, numba "
        f"{numba.__version__} ({threads} threads{layer}), scipy "
        f"{scipy.__version__}, torch {tv}",
        f"- fastdmf {fastdmf.__version__}, commit {git_commit()}",
    ]
