"""Matrix sensing: one training step of fastdmf against the dense peers, and a paper-style fit.

1. Step time on the paper's sensing problem (100x100, rank 5, Gaussian operator with
   N(0, 1)/n entries, 2000 and 5000 measurements), depth 3, full-dimensional widths, plain
   GD lr 1e-3 from the gaussian init of scale 1e-3:

   fastdmf serial / parallel / serial float32
       ``Engine.run(k)``: k steps in one compiled call (W, one gemv each way, chain rule).
   numpy dense
       What a NumPy user writes: W = W_3 W_2 W_1, r = A_mat vec(W) - y, G = (2/p) A_mat^T r,
       the chain-rule gradients by matmuls, SGD update (numpy's BLAS, default threads).
   torch dense (if ``import torch`` works)
       What a PyTorch user writes: factors as ``nn.Parameter``, ``W = W3 @ W2 @ W1``,
       ``pred = A_mat @ W.flatten()``, mean squared loss, ``backward()``, ``torch.optim.SGD``.

   Every float64 implementation first takes one step from identical factors; gradients and
   updated factors must agree with fastdmf serial to 1e-10 relative (float32: reported).
   Repeats are interleaved round robin; compilation and first calls are excluded. Reported:
   ms/step (median, best), the ratio to fastdmf serial, and the operator read rate
   (2 p m n numbers per step over the median time).

2. ``--fit``: the paper's sensing fit, depth 3, GroupRMSprop lr 1e-3, tol 1e-6, 2000
   measurements, init scale 1e-3 and 1e-4: status, steps, wall time, reconstruction error,
   top singular values, effective rank.

Usage::

    PYTHONPATH=. python benchmarks/bench_sensing.py [--quick] [--fit] [--out FILE]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from _harness import (  # noqa: E402
    TORCH_THREADS,
    TorchDense,
    check_agreement,
    contention,
    cpu_snapshot,
    stamp,
    time_impls,
    torch_or_none,
)

import fastdmf  # noqa: E402
from fastdmf.engine import Engine  # noqa: E402
from fastdmf.factors import FactorLayout, end_to_end, initialize  # noqa: E402
from fastdmf.reference import factor_grads  # noqa: E402

LR = 1e-3
INIT_SCALE = 1e-3
DEPTH = 3
SEED = 0
AGREE_RTOL = 1e-10


class FastdmfImpl:
    def __init__(self, problem, layout, parallel, dtype=np.float64):
        self.problem, self.layout, self.parallel, self.dtype = problem, layout, parallel, dtype
        kind = "parallel" if parallel else "serial"
        self.name = f"fastdmf {kind}" + (" float32" if dtype == np.float32 else "")
        self.engine = None

    def load(self, factors):
        theta = self.layout.pack(factors, dtype=self.dtype)
        if self.engine is None:
            self.engine = Engine(
                self.problem,
                self.layout,
                theta,
                "gd",
                np.array([LR, 0, 0, 0]),
                parallel=self.parallel,
            )
        else:
            self.engine.theta[:] = theta
            self.engine.scalars[:] = 0

    def steps(self, k):
        self.engine.run(k, 0.0, np.inf)

    def factors(self):
        return [np.array(w, dtype=np.float64) for w in self.engine.factors()]

    def grads(self):
        return [np.array(g, dtype=np.float64) for g in self.engine.grads()]


class NumpyDense:
    name = "numpy dense"

    def __init__(self, problem, layout):
        self.amat, self.y = problem.operator, problem.y
        self.shape = problem.shape

    def load(self, factors):
        self.ws = [np.array(w) for w in factors]

    def step(self):
        w = end_to_end(self.ws)
        r = self.amat @ w.ravel() - self.y
        g = ((2.0 / len(self.y)) * (self.amat.T @ r)).reshape(self.shape)
        self.gs = factor_grads(self.ws, g)
        self.ws = [w - LR * gw for w, gw in zip(self.ws, self.gs, strict=True)]

    def steps(self, k):
        for _ in range(k):
            self.step()

    def factors(self):
        return self.ws

    def grads(self):
        return self.gs


class TorchSensing(TorchDense):
    """The harness's PyTorch step with the sensing loss: ``pred = A_mat @ W.flatten()``."""

    def __init__(self, problem, layout):
        import torch

        self.torch = torch
        self.lr = LR
        torch.set_num_threads(TORCH_THREADS)
        self.dtype = torch.float64
        self.amat = torch.from_numpy(problem.operator)
        self.y = torch.from_numpy(problem.y)

    def loss(self, w):
        return ((self.amat @ w.flatten() - self.y) ** 2).mean()


def agreement(impls, factors0):
    """One step from ``factors0`` each vs fastdmf serial; float32 rows are reported only."""
    return check_agreement(
        impls, factors0, lambda impl: None if "float32" in impl.name else AGREE_RTOL
    )


def step_section(quick):
    lines = [
        "### Time per step (depth 3, 100x100, widths 100, plain GD)",
        "",
        "| measurements | implementation | ms/step (median) | ms/step (best) | k | "
        "x fastdmf serial | operator read GB/s |",
        "|---|---|---|---|---|---|---|",
    ]
    agree = [
        "### Agreement (one step from identical factors, vs fastdmf serial)",
        "",
        "max over factors of ||A - B||_F / ||B||_F",
        "",
        "| measurements | implementation | gradients | updated factors |",
        "|---|---|---|---|",
    ]
    busy = []
    for p in (2000, 5000):
        problem = fastdmf.synthetic_sensing((100, 100), 5, p, seed=SEED)
        layout = FactorLayout.build(problem.shape, DEPTH)
        factors0 = initialize(layout, "gaussian", INIT_SCALE, np.random.default_rng(SEED))
        impls = [
            FastdmfImpl(problem, layout, False),
            FastdmfImpl(problem, layout, True),
            FastdmfImpl(problem, layout, False, np.float32),
            NumpyDense(problem, layout),
        ]
        if torch_or_none() is not None:
            impls.append(TorchSensing(problem, layout))
        for name, (g, w) in agreement(impls, factors0).items():
            agree.append(f"| {p} | {name} | {g:.1e} | {w:.1e} |")
        before = cpu_snapshot()
        res = time_impls(impls, factors0, 3 if quick else 7, 0.3 if quick else 1.0)
        others, steal = contention(before, cpu_snapshot())
        busy.append(f"{p}: {others:.0f}% others, {steal:.0f}% steal")
        base = res["fastdmf serial"][0]
        for impl in impls:
            med, best, k = res[impl.name]
            item = 4 if "float32" in impl.name else 8
            rate = 2 * problem.operator.size * item / med / 1e9
            lines.append(
                f"| {p} | {impl.name} | {1e3 * med:.2f} | {1e3 * best:.2f} | {k} | "
                f"{med / base:.2f} | {rate:.1f} |"
            )
        del impls
    return lines + ["", "CPU taken by other processes while timing: " + "; ".join(busy), ""] + agree


def fit_section(scales):
    problem = fastdmf.synthetic_sensing((100, 100), 5, 2000, seed=SEED)
    lines = [
        "### Paper-style fit (100x100 rank 5, 2000 measurements, depth 3, GroupRMSprop "
        "lr 1e-3, tol 1e-6, serial float64)",
        "",
        "| init scale | status | steps | wall s | ms/step | reconstruction error | "
        "top 6 singular values | effective rank |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for scale in scales:
        t0 = time.perf_counter()
        res = fastdmf.fit(
            problem,
            depth=DEPTH,
            init_scale=scale,
            lr=1e-3,
            tol=1e-6,
            max_steps=200_000,
            record=1000,
            seed=SEED,
        )
        wall = time.perf_counter() - t0
        tr = res.trajectory
        sv = np.array2string(tr.singular_values[-1][:6], precision=3, max_line_width=200)
        lines.append(
            f"| {scale:g} | {res.status} | {res.n_steps} | {wall:.0f} | "
            f"{1e3 * wall / max(res.n_steps, 1):.1f} | {tr.test_error[-1]:.2e} | "
            f"{sv} | {tr.effective_rank[-1]:.2f} |"
        )
        print(lines[-1], flush=True)
    return lines


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--fit", action="store_true", help="also run the paper-style fits")
    ap.add_argument("--no-steps", action="store_true", help="skip the step timings")
    ap.add_argument("--scales", type=float, nargs="+", default=[1e-3, 1e-4])
    ap.add_argument("--out")
    args = ap.parse_args()
    lines = ["## Sensing run", ""] + stamp() + [""]
    if not args.no_steps:
        lines += step_section(args.quick) + [""]
    if args.fit:
        lines += fit_section(args.scales)
    text = "\n".join(lines)
    print(text)
    if args.out:
        Path(args.out).write_text(text + "\n")


if __name__ == "__main__":
    main()
