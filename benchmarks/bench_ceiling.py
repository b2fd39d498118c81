"""What the hardware allows the paper-size step: the sparse loops against C, and two cores.

Two measurements behind the "× t_min" column of bench_step.py at the paper's size (100 × 100,
width 100, 2,000 entries), where one step is 50-150 us:

1. **The sparse passes' inner loops against the same loops in C.** Each observed entry costs
   a dot product (row pass) and one or two axpys of length d with a gathered row: one load per
   multiply-add. fastdmf runs eight entries per sweep (``cpu._dot8``, ``cpu._axpy8``). The
   same two loops are compiled here with the system C compiler (``-O3 -march=native
   -ffast-math``, then also with ``-mprefer-vector-width=512``) and timed beside the Numba
   ones on the same L1-resident rows, in GFMA/s (multiply-adds per second). Skipped when no
   ``cc`` is found.
2. **The cost of sharing the factors between cores.** The parallel build's evaluation
   (``loss_and_grad``) is timed in a compiled loop, once as is, and once with the calling
   thread writing every cache line of theta between evaluations (as the update of a real
   step does, with its values unchanged). The difference is what moving the factors between
   the cores' caches costs per step; the serial build's update of the same lines is timed
   alone for comparison.

Usage::

    PYTHONPATH=. python benchmarks/bench_ceiling.py [--out FILE]
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numba
import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from _harness import matmul_rate, stamp  # noqa: E402

import fastdmf  # noqa: E402
from fastdmf.engine import Engine  # noqa: E402
from fastdmf.factors import FactorLayout, initialize  # noqa: E402
from fastdmf.kernels import cpu  # noqa: E402
from fastdmf.kernels.blas import blas_threads  # noqa: E402
from fastdmf.optim import get_optimizer  # noqa: E402

D = 100  # the paper's width: the length of every dot and axpy
CALLS = 400_000  # dot8 / axpy8 calls per timing

C_SOURCE = r"""
#include <stdio.h>
#include <stdlib.h>
#include <time.h>
static double now(void) { struct timespec t; clock_gettime(CLOCK_MONOTONIC, &t);
                          return t.tv_sec + 1e-9 * t.tv_nsec; }
__attribute__((noinline)) void dot8(const double *restrict s, const double *restrict q,
                                    int L, double *out) {
    double a[8] = {0};
    for (int t = 0; t < L; t++) { double st = s[t];
        for (int u = 0; u < 8; u++) a[u] += st * q[u * L + t]; }
    for (int u = 0; u < 8; u++) out[u] = a[u];
}
__attribute__((noinline)) void axpy8(double *restrict d, const double *restrict q, int L,
                                     const double *w) {
    for (int t = 0; t < L; t++) { double acc = d[t];
        for (int u = 0; u < 8; u++) acc += w[u] * q[u * L + t];
        d[t] = acc; }
}
int main(int argc, char **argv) {
    int L = atoi(argv[1]); long n = atol(argv[2]);
    double *s = aligned_alloc(64, 8 * 128), *q = aligned_alloc(64, 8 * 8 * 128);
    double *d = aligned_alloc(64, 8 * 128), out[8], w[8] = {1, 2, 3, 4, 5, 6, 7, 8};
    for (int i = 0; i < 8 * L; i++) q[i] = rand() / (double)RAND_MAX;
    for (int i = 0; i < L; i++) { s[i] = 1.0; d[i] = 0.0; }
    double best_dot = 1e9, best_axpy = 1e9, acc = 0.0;
    for (int r = 0; r < 5; r++) {
        double t0 = now();
        for (long k = 0; k < n; k++) {
            dot8(s, q, L, out);
            for (int u = 0; u < 8; u++) acc += out[u];
            s[0] += 1e-300;
        }
        double t1 = now();
        for (long k = 0; k < n; k++) axpy8(d, q, L, w);
        double t2 = now();
        if (t1 - t0 < best_dot) best_dot = t1 - t0;
        if (t2 - t1 < best_axpy) best_axpy = t2 - t1;
    }
    printf("%.6f %.6f %g\n", best_dot, best_axpy, acc + d[3]);
    return 0;
}
"""


@numba.njit(fastmath=cpu._FASTMATH)
def _numba_dot8(s, q, n):
    acc = 0.0
    for _ in range(n):
        d = cpu._dot8(s, q[0], q[1], q[2], q[3], q[4], q[5], q[6], q[7])
        acc += ((d[0] + d[1]) + (d[2] + d[3])) + ((d[4] + d[5]) + (d[6] + d[7]))
        s[0] += 1e-300  # the dots cannot be hoisted out of the loop
    return acc


@numba.njit(fastmath=cpu._FASTMATH)
def _numba_axpy8(dest, q, n):
    w = (1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0)
    for _ in range(n):
        cpu._axpy8(dest, w, q[0], q[1], q[2], q[3], q[4], q[5], q[6], q[7])


def _best(fn, repeats=5):
    best = np.inf
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t)
    return best


def loop_rates():
    """GFMA/s of the dot8 and axpy8 loops: Numba (fastdmf's own), and C where a compiler is
    found. Rows: (implementation, dot8, axpy8)."""
    rng = np.random.default_rng(0)
    s, q, dest = np.ones(D), rng.random((8, D)), np.zeros(D)
    _numba_dot8(s, q, 10)
    _numba_axpy8(dest, q, 10)
    fma = 8 * D * CALLS / 1e9
    rows = [
        (
            "fastdmf (Numba)",
            fma / _best(lambda: _numba_dot8(s, q, CALLS)),
            fma / _best(lambda: _numba_axpy8(dest, q, CALLS)),
        )
    ]
    cc = shutil.which("cc") or shutil.which("gcc")
    if cc is None:
        return rows, "no C compiler found: C rows skipped"
    flags = [
        ["-O3", "-march=native", "-ffast-math"],
        ["-O3", "-march=native", "-ffast-math", "-mprefer-vector-width=512"],
    ]
    with tempfile.TemporaryDirectory() as tmp:
        src = Path(tmp) / "loops.c"
        src.write_text(C_SOURCE)
        for flag in flags:
            exe = Path(tmp) / "loops"
            subprocess.run([cc, *flag, str(src), "-o", str(exe)], check=True)
            out = subprocess.run(
                [str(exe), str(D), str(CALLS)], check=True, capture_output=True, text=True
            ).stdout.split()
            rows.append((f"C, {cc} {' '.join(flag)}", fma / float(out[0]), fma / float(out[1])))
    return rows, ""


@numba.njit
def _evals(lg, args, theta, n, touch):
    """n evaluations; with ``touch``, every cache line of theta rewritten (same values)
    between them, as an update would."""
    for _ in range(n):
        lg(*args)
        if touch:
            for p in range(0, theta.shape[0], 8):
                theta[p] += 0.0


def _timed_evals(lg, args, theta, n, touch):
    """Seconds per evaluation of one ``_evals`` call, after a pause for other threads to
    settle."""
    time.sleep(0.05)
    t = time.perf_counter()
    _evals(lg, args, theta, n, touch)
    return (time.perf_counter() - t) / n


def sharing_costs(depths=(2, 3), n=300, repeats=9):
    """us per evaluation of each build at the paper's size, without and with theta
    rewritten between evaluations. Rows: (depth, build, plain, rewritten, difference)."""
    problem = fastdmf.synthetic_completion(shape=(100, 100), rank=5, n_observed=2000, seed=0)
    rows = []
    for depth in depths:
        layout = FactorLayout.build(problem.shape, depth, D)
        for parallel in (False, True):
            theta = layout.pack(
                initialize(layout, "gaussian", 1e-3, np.random.default_rng(0))
            ).astype(np.float64)
            hyper = get_optimizer("gd").hyper(1e-3, {})
            eng = Engine(problem, layout, theta, "gd", hyper, parallel=parallel)
            args = (
                eng.theta,
                eng.grad,
                eng.work,
                eng.dims,
                eng.offs,
                eng.obs,
                eng.rowloss,
                2.0 / problem.n_observed,
                eng.nblk,
                np.int64(cpu._BLOCK),
            )
            lg = eng.kernels.loss_and_grad
            with blas_threads(1):
                _evals(lg, args, eng.theta, 2, True)
                plain, touched = [], []
                for _ in range(repeats):  # interleaved
                    plain.append(_timed_evals(lg, args, eng.theta, n, False))
                    touched.append(_timed_evals(lg, args, eng.theta, n, True))
            p, t = np.median(plain) * 1e6, np.median(touched) * 1e6
            rows.append((depth, "parallel" if parallel else "serial", p, t, t - p))
    return rows


def report() -> str:
    rates, note = loop_rates()
    share = sharing_costs()
    best, _ = matmul_rate()
    one = matmul_rate(threads=1)
    lines = ["# fastdmf: the paper-size step against what the hardware allows", ""]
    lines += stamp(torch_threads=None)
    lines += [
        f"- numpy 1000x1000 float64 matmul: {best:.0f} GFLOP/s (default threads)"
        + (f", {one[0]:.0f} GFLOP/s (1 thread)" if one else ""),
        "",
        f"## The sparse passes' loops (length {D}, eight rows per sweep, L1-resident)",
        "",
        "| implementation | dot8 GFMA/s | axpy8 GFMA/s |",
        "|---|---|---|",
    ]
    lines += [f"| {name} | {d:.1f} | {a:.1f} |" for name, d, a in rates]
    if note:
        lines += ["", note]
    lines += [
        "",
        "## Sharing the factors between cores (paper size, width 100, loss_and_grad)",
        "",
        "us per evaluation, median of interleaved repeats; 'rewritten': the calling thread "
        "writes every cache line of theta between evaluations, as a step's update does.",
        "",
        "| depth | build | plain | theta rewritten | difference |",
        "|---|---|---|---|---|",
    ]
    lines += [f"| {d} | {b} | {p:.1f} | {t:.1f} | {x:+.1f} |" for d, b, p, t, x in share]
    return "\n".join(lines) + "\n"


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", help="also write the markdown report to this file")
    args = parser.parse_args(argv)
    text = report()
    print(text)
    if args.out:
        Path(args.out).write_text(text)


if __name__ == "__main__":
    main()
