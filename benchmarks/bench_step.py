"""Time one full plain-GD training step of fastdmf against the dense peers, in one run.

One step = completion loss + the gradients of all N factors + the update
``W_j <- W_j - lr dL/dW_j``, float64 (``--dtype float32`` for float32 throughout), from the
paper's gaussian init (docs/math.md).

Implementations
---------------
fastdmf serial / parallel
    ``Engine.run(k)``: k steps in one compiled call, serial or parallel kernels.
numpy dense
    What a NumPy user writes: form W = W_N ... W_1 densely, masked residual, the chain-rule
    gradients with dense matmuls, SGD update.
torch dense (if ``import torch`` works)
    What a PyTorch user writes (the paper's own code, ``main.py`` of Arora et al. 2019, does
    this): factors as ``nn.Parameter``, dense product, the observed entries gathered by index,
    mean squared loss, ``loss.backward()``, ``torch.optim.SGD``; 2 threads.

Before timing, every implementation takes one step from identical factors; its gradients and
updated factors must match fastdmf's to 1e-10 relative, so all rows time the same step.
Repeats are interleaved across implementations (round robin), so a slow phase of a shared
machine hits every row alike. JIT compilation and first calls are excluded.

Reported per row: time per step (median and best over repeats), the ratio to the faster
fastdmf kernel, FLOPs per step (fastdmf rows: the count of docs/math.md's cost model; dense
rows: the matmul FLOPs they execute), the achieved GFLOP/s on those FLOPs, and the time over
t_min = (fastdmf's minimal FLOPs) / (measured 1000^3 numpy matmul rate). Peak memory of
config (b) is measured in a fresh subprocess per implementation: the peak resident set
(VmHWM, reset after imports and JIT warm-up) above the resident set at that point.

Usage::

    PYTHONPATH=. python benchmarks/bench_step.py [--quick] [--out FILE] [--no-memory]
"""

from __future__ import annotations

import argparse
import ctypes
import datetime
import glob
import json
import os
import platform
import re
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numba
import numpy as np
import scipy

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import fastdmf  # noqa: E402
from fastdmf.engine import Engine  # noqa: E402
from fastdmf.factors import FactorLayout, initialize  # noqa: E402
from fastdmf.optim import get_optimizer  # noqa: E402

LR = 1e-3
INIT_SCALE = 1e-3
SEED = 0
TORCH_THREADS = 2
AGREE_RTOL = 1e-10
# Compute dtype of every implementation (--dtype); float32 agrees to ~1e-5 after one step.
DTYPE = "float64"
AGREE_RTOL_F32 = 1e-4
CONTENTION_WARN = 10.0  # percent of all cores used by others before the report warns


@dataclass(frozen=True)
class Config:
    label: str
    shape: tuple
    width: int
    n_observed: int
    depth: int

    @property
    def name(self) -> str:
        m, n = self.shape
        return f"({self.label}) {m}x{n}, d={self.width}, {self.n_observed} obs, N={self.depth}"


CONFIGS = [
    Config("a", (100, 100), 100, 2000, 2),
    Config("a", (100, 100), 100, 2000, 3),
    Config("b", (2000, 2000), 100, 200_000, 2),
    Config("b", (2000, 2000), 100, 200_000, 3),
]


def torch_or_none():
    """The torch module, or None when it does not import (its rows are then skipped). Imported
    on demand, so processes that do not time torch do not carry it."""
    try:
        import torch
    except ImportError:
        return None
    return torch


# --------------------------------------------------------------------------- FLOP counts


def minimal_flops(layout: FactorLayout, n_observed: int) -> int:
    """FLOPs of one fastdmf step (docs/math.md, cost model): three sparse passes of
    2 |Omega| d_1 (residual, H_2 = G W_1^T, dW_1), 3 (N-2) dense products of 2 m d_j d_{j-1}
    (suffixes, the H_j chain, middle gradients), and 2 per parameter for the update."""
    dims, N = layout.dims, layout.depth
    m = dims[-1]
    if N == 1:
        return 2 * n_observed + 2 * layout.size
    sparse = 3 * 2 * n_observed * dims[1]
    dense = sum(3 * 2 * m * dims[j - 1] * dims[j] for j in range(2, N))
    return sparse + dense + 2 * layout.size


def dense_flops(layout: FactorLayout) -> int:
    """Matmul FLOPs of the dense step: the forward chain W_j (W_{j-1} ... W_1) and, per
    factor j >= 2, the gradient product and the backpropagated product, plus the update."""
    dims, N = layout.dims, layout.depth
    n = dims[0]
    chain = sum(2 * dims[j] * dims[j - 1] * n for j in range(2, N + 1))
    return 3 * chain + 2 * layout.size


# --------------------------------------------------------------------------- implementations


class FastdmfImpl:
    """``Engine.run(k)``: k full steps in one compiled call."""

    def __init__(self, problem, layout, parallel):
        self.name = "fastdmf parallel" if parallel else "fastdmf serial"
        theta = np.zeros(layout.size, dtype=DTYPE)
        hyper = get_optimizer("gd").hyper(LR, {})
        self.engine = Engine(problem, layout, theta, "gd", hyper, parallel=parallel)

    def load(self, factors):
        self.engine.theta[:] = self.engine.layout.pack(factors, dtype=DTYPE)
        self.engine.scalars[:] = 0.0

    def steps(self, k):
        done, status, loss = self.engine.run(k, 0.0, 1e300)
        if done != k:
            raise RuntimeError(f"{self.name}: {done} of {k} steps (status {status}, {loss})")

    def factors(self):
        return [np.array(w) for w in self.engine.factors()]

    def grads(self):
        return [np.array(g) for g in self.engine.grads()]


class NumpyDense:
    """The step as a NumPy user writes it: dense W, masked residual, backprop by hand."""

    name = "numpy dense"

    def __init__(self, problem, layout):
        m, n = problem.shape
        self.mask = np.zeros((m, n), dtype=DTYPE)
        self.mask[problem.rows, problem.cols] = 1.0
        self.target = np.zeros((m, n), dtype=DTYPE)
        self.target[problem.rows, problem.cols] = problem.values
        self.n_obs = problem.n_observed

    def load(self, factors):
        self.ws = [np.array(w, dtype=DTYPE) for w in factors]

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
            w -= LR * g

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

    def __init__(self, problem, layout):
        import torch

        self.torch = torch
        torch.set_num_threads(TORCH_THREADS)
        self.rows = torch.from_numpy(problem.rows)
        self.cols = torch.from_numpy(problem.cols)
        self.dtype = getattr(torch, DTYPE)
        self.y = torch.from_numpy(problem.values).to(self.dtype)

    def load(self, factors):
        torch = self.torch
        self.params = [torch.nn.Parameter(torch.tensor(w, dtype=self.dtype)) for w in factors]
        self.opt = torch.optim.SGD(self.params, lr=LR)

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


def make_impls(problem, layout):
    impls = [FastdmfImpl(problem, layout, False), FastdmfImpl(problem, layout, True)]
    impls.append(NumpyDense(problem, layout))
    if torch_or_none() is not None:
        impls.append(TorchDense(problem, layout))
    return impls


# --------------------------------------------------------------------------- checks and timing


def rel_diff(got, ref) -> float:
    """max over factors of ||got - ref||_F / ||ref||_F."""
    return max(
        float(np.linalg.norm(g - r) / np.linalg.norm(r)) for g, r in zip(got, ref, strict=True)
    )


def check_agreement(impls, factors0, rtol_for=None):
    """One step from ``factors0`` for each implementation, compared with fastdmf serial.

    Returns ``{name: (grad_rel, factor_rel)}``; raises if any exceeds its tolerance:
    ``rtol_for(impl)`` (None: reported only), by default AGREE_RTOL (AGREE_RTOL_F32 in
    float32)."""
    ref = impls[0]
    ref.load(factors0)
    ref.steps(1)
    ref_g, ref_w = ref.grads(), ref.factors()
    out = {}
    for impl in impls[1:]:
        impl.load(factors0)
        impl.steps(1)
        out[impl.name] = (rel_diff(impl.grads(), ref_g), rel_diff(impl.factors(), ref_w))
        rtol = rtol_for(impl) if rtol_for else (
            AGREE_RTOL if DTYPE == "float64" else AGREE_RTOL_F32)
        if rtol is not None and max(out[impl.name]) > rtol:
            raise AssertionError(
                f"{impl.name} disagrees with fastdmf serial after one step: gradient rel diff "
                f"{out[impl.name][0]:.2e}, factors {out[impl.name][1]:.2e} (> {AGREE_RTOL:g})"
            )
    return out


def timed(impl, k) -> float:
    t0 = time.perf_counter()
    impl.steps(k)
    return time.perf_counter() - t0


def time_impls(impls, factors0, repeats, target_s):
    """Seconds per step, ``{name: (median, best, k)}``; repeats interleaved round robin."""
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
            samples[impl.name].append(timed(impl, k) / k)
    return {name: (float(np.median(s)), float(np.min(s)), ks[name]) for name, s in samples.items()}


# --------------------------------------------------------------------------- machine


def _numpy_blas_setter():
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


def matmul_rate(threads=None, repeats=10):
    """GFLOP/s of a 1000x1000 numpy matmul in DTYPE: (best, median)."""
    setter = _numpy_blas_setter() if threads else None
    if threads and setter is None:
        return None
    a = np.random.default_rng(1).standard_normal((1000, 1000)).astype(DTYPE)
    b = np.random.default_rng(2).standard_normal((1000, 1000)).astype(DTYPE)
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


# --------------------------------------------------------------------------- memory


def memory_child(impl_name, depth, datafile):
    """Run in a fresh process: peak resident memory of building and stepping one
    implementation on config (b), above the resident set after imports and warm-up."""
    data = np.load(datafile)
    shape = tuple(int(s) for s in data["shape"])
    width = int(data["width"])
    tiny = fastdmf.synthetic_completion(shape=(6, 5), rank=1, n_observed=12, seed=0)
    tiny_layout = FactorLayout.build(tiny.shape, depth, 3)
    _one_impl(impl_name, tiny, tiny_layout).steps(2)  # JIT compile / first calls
    Path("/proc/self/clear_refs").write_text("5")  # reset VmHWM to the current RSS
    base = _status_kib("VmRSS")
    problem = fastdmf.completion(data["rows"], data["cols"], data["values"], shape=shape)
    layout = FactorLayout.build(shape, depth, width)
    impl = _one_impl(impl_name, problem, layout)
    impl.steps(3)
    return {"base_mib": base / 1024, "peak_above_mib": (_status_kib("VmHWM") - base) / 1024}


def _one_impl(name, problem, layout):
    impl = {
        "fastdmf serial": lambda: FastdmfImpl(problem, layout, False),
        "fastdmf parallel": lambda: FastdmfImpl(problem, layout, True),
        "numpy dense": lambda: NumpyDense(problem, layout),
        "torch dense": lambda: TorchDense(problem, layout),
    }[name]()
    impl.load(initialize(layout, "gaussian", INIT_SCALE, np.random.default_rng(SEED)))
    return impl


def _status_kib(key) -> int:
    text = Path("/proc/self/status").read_text()
    return int(re.search(rf"{key}:\s+(\d+)", text).group(1))


def measure_memory(config_b, depths, names):
    """``{(depth, name): MiB}``, one subprocess per implementation and depth."""
    problem = fastdmf.synthetic_completion(
        shape=config_b.shape, rank=5, n_observed=config_b.n_observed, seed=SEED
    )
    out = {}
    with tempfile.TemporaryDirectory() as tmp:
        datafile = os.path.join(tmp, "obs.npz")
        np.savez(
            datafile,
            rows=problem.rows,
            cols=problem.cols,
            values=problem.values,
            shape=np.array(config_b.shape),
            width=config_b.width,
        )
        for depth in depths:
            for name in names:
                cmd = [sys.executable, __file__, "--memory-child", name, str(depth), datafile]
                res = subprocess.run(cmd, capture_output=True, text=True, check=False)
                if res.returncode != 0:
                    out[depth, name] = f"failed: {res.stderr.strip().splitlines()[-1:]}"
                    continue
                out[depth, name] = json.loads(res.stdout.strip().splitlines()[-1])
    return out


# --------------------------------------------------------------------------- report


def run_config(cfg, repeats, target_s):
    """Agreement check and timings of one configuration (raw numbers)."""
    problem = fastdmf.synthetic_completion(
        shape=cfg.shape, rank=5, n_observed=cfg.n_observed, seed=SEED
    )
    layout = FactorLayout.build(cfg.shape, cfg.depth, cfg.width)
    factors0 = initialize(layout, "gaussian", INIT_SCALE, np.random.default_rng(SEED))
    impls = make_impls(problem, layout)
    agree = check_agreement(impls, factors0)
    times = time_impls(impls, factors0, repeats, target_s)
    return {
        "times": times,
        "agree": agree,
        "fmin": minimal_flops(layout, cfg.n_observed),
        "fdense": dense_flops(layout),
    }


def step_rows(cfg, res, rate):
    """Table rows of one configuration; ``rate`` in GFLOP/s defines t_min."""
    times, fmin = res["times"], res["fmin"]
    t_min = fmin / (rate * 1e9)
    fast = min(v[0] for name, v in times.items() if name.startswith("fastdmf"))
    rows = []
    for name, (med, best, k) in times.items():
        flops = fmin if name.startswith("fastdmf") else res["fdense"]
        rows.append(
            [
                cfg.name,
                name,
                f"{med * 1e3:.3f}",
                f"{best * 1e3:.3f}",
                f"{k}",
                f"{med / fast:.2f}",
                f"{flops / 1e6:.1f}",
                f"{flops / med / 1e9:.1f}",
                f"{med / t_min:.1f}",
            ]
        )
    return rows


def md_table(header, rows) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(c) for c in r) + " |" for r in rows]
    return "\n".join(lines)


def build_report(args):
    repeats, target_s = (3, 0.05) if args.quick else (9, 0.3)
    rates = [matmul_rate()]
    rate_one = matmul_rate(threads=1)
    results, busy = [], []
    for cfg in CONFIGS:
        print(f"timing {cfg.name} ...", file=sys.stderr, flush=True)
        before = cpu_snapshot()
        results.append(run_config(cfg, repeats, target_s))
        busy.append((f"{cfg.label} N={cfg.depth}", *contention(before, cpu_snapshot())))
        rates.append(matmul_rate())
    rate = max(r[0] for r in rates)
    rows, agree_rows = [], []
    for cfg, res in zip(CONFIGS, results, strict=True):
        rows += step_rows(cfg, res, rate)
        agree_rows += [[cfg.name, n, f"{g:.1e}", f"{w:.1e}"] for n, (g, w) in res["agree"].items()]
    bests = ", ".join(f"{r[0]:.0f}" for r in rates)
    lines = ["# fastdmf: one plain-GD training step against dense peers", ""]
    lines += stamp()
    lines += [
        f"- setup: {DTYPE}, plain GD lr={LR:g}, gaussian init scale {INIT_SCALE:g}, seed "
        f"{SEED}, synthetic rank-5 problems; {repeats} repeats of k steps, interleaved across "
        f"implementations ({'--quick' if args.quick else 'full mode'})",
        f"- numpy 1000x1000 {DTYPE} matmul, default threads, best of 10, measured before, "
        f"between and after the configs: {bests} GFLOP/s"
        + (f"; 1 thread: {rate_one[0]:.0f} best, {rate_one[1]:.0f} median" if rate_one else ""),
        f"- t_min = fastdmf's minimal step FLOPs / {rate:.1f} GFLOP/s (the best rate above)",
        "- CPU taken by other processes while each config ran (/proc/stat less this "
        "process, share of all cores): "
        + "; ".join(f"{n}: {o:.0f}% others, {st:.0f}% steal" for n, o, st in busy),
    ]
    worst = max(o + st for _, o, st in busy)
    if worst > CONTENTION_WARN:
        lines.append(
            f"- **warning**: other processes or the hypervisor took up to {worst:.0f}% of the "
            "cores during the timings; rows that run several threads (BLAS, the parallel "
            "kernels, torch) slow down far more than serial ones under such contention, so "
            "this run does not characterise them. Rerun on a quiet machine."
        )
    lines += [
        "",
        "## Time per step",
        "",
        md_table(
            [
                "config",
                "implementation",
                "ms/step (median)",
                "ms/step (best)",
                "k",
                "× fastdmf (faster kernel)",
                "MFLOP/step",
                "GFLOP/s",
                "× t_min",
            ],
            rows,
        ),
        "",
        "MFLOP/step: fastdmf rows, the count of docs/math.md's cost model; dense rows, the matmul "
        "FLOPs they execute. k: steps per timed call (one compiled call for fastdmf). "
        "GFLOP/s: that count over the median time. × fastdmf: median over "
        "the faster fastdmf kernel's median. × t_min: median time over fastdmf's minimal FLOPs "
        "at the best matmul rate (the same t_min for every row of a config).",
        "",
        "## Agreement (one step from identical factors, vs fastdmf serial)",
        "",
        "max over factors of ||A - B||_F / ||B||_F; the run stops if any exceeds "
        f"{AGREE_RTOL:g}. The update lr·g is small against the factors, so the gradient "
        "column is the sharp test.",
        "",
        md_table(["config", "implementation", "gradients", "updated factors"], agree_rows),
    ]
    if not args.no_memory:
        lines += memory_section(args.quick)
    return "\n".join(lines) + "\n"


def memory_section(quick) -> list[str]:
    print("measuring memory ...", file=sys.stderr, flush=True)
    cfg_b = CONFIGS[-1]
    depths = (3,) if quick else (2, 3)
    # --quick skips the parallel kernels' child (its compilation alone takes ~20 s); the
    # Engine allocates the same buffers for both kernel families.
    names = ["fastdmf serial"] + ([] if quick else ["fastdmf parallel"]) + ["numpy dense"]
    names += ["torch dense"] if torch_or_none() is not None else []
    mem = measure_memory(cfg_b, depths, names)
    rows = []
    for (depth, name), val in mem.items():
        if isinstance(val, str):
            rows.append([depth, name, val, ""])
        else:
            rows.append([depth, name, f"{val['peak_above_mib']:.1f}", f"{val['base_mib']:.0f}"])
    m, n = cfg_b.shape
    return [
        "",
        f"## Peak memory, config (b) {m}x{n}, d={cfg_b.width}, {cfg_b.n_observed} obs",
        "",
        "Fresh subprocess per row; peak resident set (VmHWM, reset after imports and JIT "
        "warm-up) above the resident set at that point, while building the problem "
        "structures, the factors and 3 steps. One dense m x n float64 array is "
        f"{m * n * 8 / 2**20:.1f} MiB.",
        "",
        md_table(
            [
                "N",
                "implementation",
                "peak above baseline (MiB)",
                "baseline RSS after imports and warm-up (MiB)",
            ],
            rows,
        ),
    ]


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer repeats (about a minute)")
    parser.add_argument("--out", help="also write the markdown report to this file")
    parser.add_argument("--no-memory", action="store_true", help="skip the memory subprocesses")
    parser.add_argument("--dtype", choices=("float64", "float32"), default="float64",
                        help="compute dtype of every implementation (float32: no memory rows)")
    parser.add_argument("--memory-child", nargs=3, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    global DTYPE
    DTYPE = args.dtype
    if DTYPE != "float64":
        args.no_memory = True
    if args.memory_child:
        name, depth, datafile = args.memory_child
        print(json.dumps(memory_child(name, int(depth), datafile)))
        return
    report = build_report(args)
    print(report)
    if args.out:
        Path(args.out).write_text(report)


if __name__ == "__main__":
    main()
