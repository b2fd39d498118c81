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
machine hits every row alike; each timed call comes after a 0.25 s pause, so that no row runs
beside OpenBLAS workers still spinning from the row before (``_harness.SETTLE_S``). JIT
compilation and first calls are excluded.

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
import json
import os
import re
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from _harness import (  # noqa: E402
    AGREE_RTOL,
    AGREE_RTOL_F32,
    CONTENTION_WARN,
    LR,
    NumpyDense,
    TorchDense,
    check_agreement,
    contention,
    cpu_snapshot,
    matmul_rate,
    stamp,
    time_impls,
    torch_or_none,
)

import fastdmf  # noqa: E402
from fastdmf.engine import Engine  # noqa: E402
from fastdmf.factors import FactorLayout, initialize  # noqa: E402
from fastdmf.optim import get_optimizer  # noqa: E402

INIT_SCALE = 1e-3
SEED = 0
# Compute dtype of every implementation (--dtype); float32 agrees to ~1e-5 after one step.
DTYPE = "float64"


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


def make_impls(problem, layout):
    impls = [FastdmfImpl(problem, layout, False), FastdmfImpl(problem, layout, True)]
    impls.append(NumpyDense(problem, layout, DTYPE))
    if torch_or_none() is not None:
        impls.append(TorchDense(problem, layout, DTYPE))
    return impls


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
        "numpy dense": lambda: NumpyDense(problem, layout, DTYPE),
        "torch dense": lambda: TorchDense(problem, layout, DTYPE),
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
    agree = check_agreement(
        impls, factors0, lambda impl: AGREE_RTOL if DTYPE == "float64" else AGREE_RTOL_F32
    )
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
    rates = [matmul_rate(dtype=DTYPE)]
    rate_one = matmul_rate(threads=1, dtype=DTYPE)
    results, busy = [], []
    for cfg in CONFIGS:
        print(f"timing {cfg.name} ...", file=sys.stderr, flush=True)
        before = cpu_snapshot()
        results.append(run_config(cfg, repeats, target_s))
        busy.append((f"{cfg.label} N={cfg.depth}", *contention(before, cpu_snapshot())))
        rates.append(matmul_rate(dtype=DTYPE))
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
    parser.add_argument(
        "--dtype",
        choices=("float64", "float32"),
        default="float64",
        help="compute dtype of every implementation (float32: no memory rows)",
    )
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
