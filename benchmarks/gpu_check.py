"""Check fastdmf's CUDA kernels against the CPU reference and time them: one script for any
machine with an NVIDIA GPU.

    python benchmarks/gpu_check.py [--out results.md] [--quick] [--sections batch,large]

1. Correctness: loss and gradients of the CUDA kernels against the NumPy reference (depths 1-4,
   uneven widths, float64 and float32); a short GroupRMSprop fit on the GPU against the same fit
   on the CPU; a trial of a GPU batch against the same trial fitted alone on the GPU (bits).
2. Paper grid batch (100x100, width 100, depth 3, 2000 observations, GroupRMSprop): trial-steps
   per second of 1024 trials on the GPU, float64 and float32, against PyTorch on the same GPU
   running the batch as one batched tensor program (bmm, autograd), and against fit_batch on
   this host's CPU with 2 threads (the reference machine's 2-core number is in
   benchmarks/RESULTS_batch.md).
3. Large sparse problem: m = n = 100,000, width 64, depth 3, 5,000,000 observed entries
   (1,000,000 with --quick): seconds per step on the GPU (the dense product would need 80 GB
   in float64).

Prints a stamped markdown report (device name, versions, git commit) and writes it to --out.
"""

from __future__ import annotations

import argparse
import sys
import time
import traceback
import warnings
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

if not hasattr(np, "row_stack"):  # numpy >= 2.5 removed it; some numba-cuda releases use it
    np.row_stack = np.vstack  # noqa: NPY201  (restores the alias those releases call)

import fastdmf  # noqa: E402
from fastdmf import reference  # noqa: E402
from fastdmf.factors import FactorLayout, initialize  # noqa: E402
from fastdmf.kernels import cuda as kc  # noqa: E402
from fastdmf.optim import get_optimizer  # noqa: E402

LINES: list[str] = []
MEASURED: dict = {}  # rates and profiles the later sections read


def say(line=""):
    print(line, flush=True)
    LINES.append(line)


def stamp(commit=None):
    """The device line, then the common benchmark stamp (_harness.stamp: date, host, CPU,
    versions, fastdmf commit; ``commit`` names the code run where the copy has no git)."""
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from _harness import stamp as common_stamp

    dev = kc.cuda.get_current_device()
    name = dev.name.decode() if isinstance(dev.name, bytes) else dev.name
    say("# fastdmf GPU check")
    say(
        f"- GPU: {name} (compute capability {dev.compute_capability}, "
        f"{dev.MULTIPROCESSOR_COUNT} SMs)"
    )
    try:
        import cupy

        cp = f"cupy {cupy.__version__} (cuBLAS products of the dense step)"
    except Exception as exc:  # noqa: BLE001  (no CuPy: the dense step uses Numba tiles)
        cp = f"no cupy ({exc!r})"
    try:
        from importlib.metadata import version

        nc = version("numba-cuda")
    except Exception:  # noqa: BLE001  (numba's own cuda target)
        nc = "not installed"
    say(f"- numba-cuda {nc}, {cp}")
    for line in common_stamp(torch_threads=None):
        if commit and line.startswith("- fastdmf"):
            line = f"- fastdmf {fastdmf.__version__}, commit {commit} (the code run)"
        say(line)
    say("")


def batch_state(problem, layout, seeds, dtype, optimizer="grouprmsprop", lr=1e-3, scale=1e-3):
    spec = get_optimizer(optimizer)
    thetas = np.stack(
        [
            layout.pack(
                initialize(layout, "gaussian", scale, np.random.default_rng(s)), dtype=dtype
            )
            for s in seeds
        ]
    )
    B, P = thetas.shape
    hyper = np.tile(spec.hyper(lr, {}), (B, 1))
    ostate = np.zeros((B, spec.state_slots * P), dtype)
    return thetas, np.full(B, spec.code), hyper, ostate, np.zeros((B, 3))


def check_correctness():
    say("## Correctness")
    say("| check | value | pass |")
    say("|---|---|---|")
    p = fastdmf.synthetic_completion(shape=(70, 50), rank=3, n_observed=900, seed=0)
    ok_all = True
    for dtype, tol in (("float64", 1e-12), ("float32", 1e-4)):
        for depth, widths in ((1, None), (2, [40]), (3, [30, 45]), (4, [35, 20, 40])):
            for dense in (False,) if depth == 1 else (False, True):
                layout = FactorLayout.build(p.shape, depth, widths)
                rng = np.random.default_rng(depth)
                fs = [initialize(layout, "gaussian", 2.0, rng) for _ in range(3)]
                thetas = np.stack([layout.pack(f, dtype=dtype) for f in fs])
                B = len(fs)
                db = kc.DeviceBatch(
                    p,
                    layout.dims,
                    thetas,
                    np.zeros(B, np.int64),
                    np.zeros((B, 4)),
                    np.zeros((B, 0), dtype),
                    np.zeros((B, 3)),
                    {"split_k": 32, "dense": dense},
                )
                loss, grads = db.evaluate()
                err = 0.0
                for b in range(B):
                    f64 = [w.astype(np.float64) for w in layout.unpack(thetas[b])]
                    ref_loss, ref_g = reference.loss_and_grad(f64, p.rows, p.cols, p.values)
                    err = max(err, abs(loss[b] - ref_loss) / ref_loss)
                    for a, g in zip(layout.unpack(grads[b]), ref_g, strict=True):
                        err = max(err, float(np.abs(a - g).max() / np.abs(g).max()))
                ok = err < tol
                ok_all &= ok
                say(
                    f"| loss+grad vs NumPy, {db.path}, {dtype}, depth {depth} | max rel err "
                    f"{err:.1e} | {'yes' if ok else 'NO'} |"
                )
    ok_all &= check_steps(p)
    kw = dict(depth=3, init_scale=1e-1, lr=1e-3, max_steps=500, record=100, seed=3, tol=0)
    gpu = fastdmf.fit(p, backend="cuda", **kw)
    cpu = fastdmf.fit(p, **kw)
    diff = max(
        float(np.abs(a - b).max() / np.abs(b).max())
        for a, b in zip(gpu.factors, cpu.factors, strict=True)
    )
    ok = diff < 1e-8
    ok_all &= ok
    say(
        f"| fit: 500 GroupRMSprop steps, GPU ({path_of(p, 3)}) vs CPU factors | max rel diff "
        f"{diff:.1e} | {'yes' if ok else 'NO'} |"
    )
    batch = fastdmf.fit_batch(
        p,
        depth=3,
        seeds=[3, 4, 5],
        init_scale=1e-1,
        lr=1e-3,
        max_steps=200,
        record=100,
        tol=0,
        backend="cuda",
    )
    alone = fastdmf.fit(p, backend="cuda", **{**kw, "max_steps": 200})
    same = all(np.array_equal(a, b) for a, b in zip(batch[0].factors, alone.factors, strict=True))
    diff = max(
        float(np.abs(a - b).max() / np.abs(b).max())
        for a, b in zip(batch[0].factors, alone.factors, strict=True)
    )
    # cuBLAS picks its GEMM kernel by batch size: the dense step promises rounding, not bits
    ok = same or ("cublas" in path_of(p, 3) and diff < 1e-12)
    ok_all &= ok
    say(
        f"| batch trial vs the same fit alone on the GPU ({path_of(p, 3)}) | bit-identical: "
        f"{same}, max rel diff {diff:.1e} | {'yes' if ok else 'NO'} |"
    )
    say("")
    return ok_all


def path_of(problem, depth, launch=None):
    """The step a DeviceBatch of one trial takes on ``problem`` (dense or sparse)."""
    layout = FactorLayout.build(problem.shape, depth)
    return kc.DeviceBatch(
        problem, layout.dims, *batch_state(problem, layout, [0], "float64"), launch
    ).path


def check_steps(p):
    """50 steps of each optimiser on both steps of the GPU against the CPU engine."""
    ok_all = True
    layout = FactorLayout.build(p.shape, 3, [30, 45])
    for dtype, tol in (("float64", 1e-10), ("float32", 1e-3)):
        for opt, lr in (("gd", 0.05), ("grouprmsprop", 1e-3), ("adam", 1e-3)):
            for dense in (False, True):
                state = batch_state(p, layout, [11, 12], dtype, optimizer=opt, lr=lr, scale=1.0)
                host = [a.copy() for a in state]
                db = kc.DeviceBatch(p, layout.dims, *state, {"dense": dense})
                st = np.zeros(2, np.int64)
                db.run(50, 0.0, [np.inf] * 2, [True] * 2, st)
                err = 0.0
                for b in range(2):
                    eng = fastdmf.engine.Engine(
                        p, layout, host[0][b], opt, host[2][b], parallel=False
                    )
                    eng.run(50, 0.0, np.inf)
                    err = max(
                        err,
                        float(np.abs(state[0][b] - eng.theta).max() / np.abs(eng.theta).max()),
                        float(abs(state[4][b][2] - eng.scalars[2]) / eng.scalars[2]),
                    )
                ok = err < tol and st.tolist() == [kc.RUNNING] * 2
                ok_all &= ok
                say(
                    f"| 50 {opt} steps, {db.path}, {dtype}, GPU vs CPU engine | max rel diff "
                    f"{err:.1e} | {'yes' if ok else 'NO'} |"
                )
    return ok_all


def gpu_rate(problem, layout, B, steps, dtype, launch=None):
    state = batch_state(problem, layout, range(B), dtype)
    db = kc.DeviceBatch(problem, layout.dims, *state, launch)
    status = np.zeros(B, np.int64)
    active = np.ones(B, bool)
    caps = np.full(B, np.inf)
    db.run(3, 0.0, caps, active, status)  # compile and warm up
    best = 0.0
    for _ in range(2):  # best of two timed runs (as for PyTorch)
        kc.cuda.synchronize()
        t = time.perf_counter()
        db.run(steps, 0.0, caps, active, status, poll=10**9)
        kc.cuda.synchronize()
        best = max(best, B * steps / (time.perf_counter() - t))
    return best, db.path


def torch_program(problem, B, dtype, device="cuda"):
    """The paper-grid batch as one batched PyTorch program (bmm, autograd, GroupRMSprop with
    one step size per trial): returns ``step(t)`` for t = 1, 2, ..."""
    import torch

    dev = torch.device(device)
    tdt = torch.float64 if dtype == "float64" else torch.float32
    m, n = problem.shape
    d = min(m, n)
    g = torch.Generator(device="cpu").manual_seed(0)
    ws = [
        (torch.randn(B, d, n, generator=g, dtype=tdt) * 1e-1 / np.sqrt(n)).to(dev),
        (torch.randn(B, d, d, generator=g, dtype=tdt) * 1e-1 / np.sqrt(d)).to(dev),
        (torch.randn(B, m, d, generator=g, dtype=tdt) * 1e-1 / np.sqrt(d)).to(dev),
    ]
    for w in ws:
        w.requires_grad_(True)
    rows = torch.tensor(problem.rows, device=dev)
    cols = torch.tensor(problem.cols, device=dev)
    y = torch.tensor(problem.values, device=dev, dtype=tdt)
    v = torch.zeros(B, 1, 1, device=dev, dtype=tdt)

    def step(t):
        nonlocal v
        w = torch.bmm(ws[2], torch.bmm(ws[1], ws[0]))
        loss = ((w[:, rows, cols] - y) ** 2).mean(dim=1)
        grads = torch.autograd.grad(loss.sum(), ws)
        with torch.no_grad():  # GroupRMSprop, one step size per trial
            sq = sum((gr * gr).sum(dim=(1, 2)) for gr in grads).view(B, 1, 1)
            v = 0.99 * v + 0.01 * sq
            lr = 1e-3 / (torch.sqrt(v / (1 - 0.99**t)) + 1e-4)
            for w_, gr in zip(ws, grads, strict=True):
                w_ -= lr * gr

    return step


def torch_rate(problem, B, steps, dtype):
    import torch

    step = torch_program(problem, B, dtype)
    for t in range(1, 4):
        step(t)
    best = 0.0
    for rep in range(2):  # best of two timed runs (as for fastdmf)
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        for t in range(4 + rep * steps, 4 + (rep + 1) * steps):
            step(t)
        torch.cuda.synchronize()
        best = max(best, B * steps / (time.perf_counter() - t0))
    return best


# ATen operator names (the CPU profile's keys), without leading/trailing underscores
ATEN_GEMM = {
    "mm",
    "bmm",
    "matmul",
    "addmm",
    "addbmm",
    "baddbmm",
    "mv",
    "addmv",
    "dot",
    "vdot",
    "linear",
    "einsum",
    "tensordot",
}
ATEN_GATHER = {
    "take",
    "put",
    "embedding",
    "embedding_backward",
    "embedding_dense_backward",
    "masked_select",
}
ATEN_REDUCE = {
    "sum",
    "mean",
    "prod",
    "nansum",
    "nanmean",
    "norm",
    "linalg_vector_norm",
    "frobenius_norm",
    "amax",
    "amin",
    "aminmax",
    "max",
    "min",
    "argmax",
    "argmin",
    "var",
    "std",
    "var_mean",
    "std_mean",
    "logsumexp",
    "all",
    "any",
    "count_nonzero",
    "cumsum",
    "cumprod",
}


def kernel_kind(name):
    """Coarse class of a profiled kernel or operator from its name: the products (cuBLAS /
    CUTLASS GEMMs; ``aten::mm``, ``aten::bmm``, ...), gathers and scatters (advanced indexing),
    reductions (``reduce_kernel``; ``aten::sum``, ``aten::mean``, ...), and the rest
    (elementwise). Takes GPU kernel names (``sm90_xmma_gemm_...``, ``void
    at::native::reduce_kernel<...>``) and the CPU profile's ATen operator names alike."""
    low = name.lower()
    if low.startswith("aten::"):
        op = low[len("aten::") :].strip("_")  # add_ -> add, _index_put_impl_ -> index_put_impl
        if op in ATEN_GEMM:
            return "GEMM"
        if op.startswith("index") or "scatter" in op or "gather" in op or op in ATEN_GATHER:
            return "gather/scatter"
        if op in ATEN_REDUCE:
            return "reduction"
        return "elementwise/other"
    # GPU kernels. cuBLAS's split-K epilogue (splitKreduce_kernel) belongs to its GEMM; scatter
    # kernels carry functor names like ReduceAdd, so the specific reduction kernels come first
    # and the bare word "reduce" only after the gathers and scatters.
    if any(
        k in low
        for k in (
            "gemm",
            "gemv",
            "xmma",
            "cutlass",
            "sm90_",
            "sm80_",
            "matmul",
            "bmm",
            "splitkreduce",
        )
    ):
        return "GEMM"
    if any(k in low for k in ("reduce_kernel", "devicereduce", "devicesegmentedreduce")):
        return "reduction"
    if any(k in low for k in ("index", "scatter", "gather")):
        return "gather/scatter"
    if "reduce" in low or "reduction" in low:
        return "reduction"
    return "elementwise/other"


def torch_profile(problem, B, steps, dtype, device="cuda"):
    """Device time of the PyTorch step by kernel class, ms per step: how much of it is the
    GEMMs (which a cuBLAS-based fastdmf would pay too) and how much the rest. On the CPU
    (``device="cpu"``, for a smoke test) it classes the ATen ops' self CPU time instead."""
    import torch
    from torch.profiler import ProfilerActivity, profile

    step = torch_program(problem, B, dtype, device)
    for t in range(1, 4):
        step(t)
    cuda_dev = device != "cpu"
    act = ProfilerActivity.CUDA if cuda_dev else ProfilerActivity.CPU
    if cuda_dev:
        torch.cuda.synchronize()
    with profile(activities=[act]) as prof:
        for t in range(4, 4 + steps):
            step(t)
        if cuda_dev:
            torch.cuda.synchronize()
    kinds: dict[str, float] = {}
    for ev in prof.key_averages():
        us = ev.self_device_time_total if cuda_dev else ev.self_cpu_time_total
        if us > 0 and (cuda_dev or ev.key.startswith("aten::")):
            kinds[kernel_kind(ev.key)] = kinds.get(kernel_kind(ev.key), 0.0) + us
    return {k: v / 1e3 / steps for k, v in kinds.items()}


def bmm_tflops(B, size, dtype, reps=50):
    """TFLOP/s of torch.bmm (cuBLAS batched GEMM) on B products of size^3."""
    import torch

    tdt = torch.float64 if dtype == "float64" else torch.float32
    a = torch.randn(B, size, size, dtype=tdt, device="cuda")
    b = torch.randn(B, size, size, dtype=tdt, device="cuda")
    for _ in range(3):
        torch.bmm(a, b)
    torch.cuda.synchronize()
    t = time.perf_counter()
    for _ in range(reps):
        torch.bmm(a, b)
    torch.cuda.synchronize()
    return 2.0 * B * size**3 * reps / (time.perf_counter() - t) / 1e12


def copy_bandwidth(nbytes=2 * 1024**3, reps=10):
    """Device-to-device copy, bytes read + written per second (GB/s)."""
    import torch

    a = torch.empty(nbytes // 8, dtype=torch.float64, device="cuda")
    b = torch.empty_like(a)
    b.copy_(a)
    torch.cuda.synchronize()
    t = time.perf_counter()
    for _ in range(reps):
        b.copy_(a)
    torch.cuda.synchronize()
    return 2.0 * nbytes * reps / (time.perf_counter() - t) / 1e9


def cpu_rate(problem, trials, steps):
    import numba

    numba.set_num_threads(min(2, numba.config.NUMBA_NUM_THREADS))
    kw = dict(depth=3, seeds=list(range(trials)), max_steps=steps, record=None, tol=0)
    fastdmf.fit_batch(problem, **{**kw, "max_steps": 2})
    t = time.perf_counter()
    fastdmf.fit_batch(problem, **kw)
    return trials * steps / (time.perf_counter() - t)


def paper_batch(quick):
    say("## Paper grid batch: 100x100, width 100, depth 3, 2000 observations, GroupRMSprop")
    p = fastdmf.synthetic_completion(shape=(100, 100), rank=5, n_observed=2000, seed=0)
    layout = FactorLayout.build(p.shape, 3)
    B = 1024
    steps = 100 if quick else 300
    cpu = cpu_rate(p, 16, 100)
    say(
        f"- fit_batch on this host's CPU, 2 threads: {cpu:,.0f} trial-steps/s "
        "(reference 2-core machine: see benchmarks/RESULTS_batch.md)"
    )
    say(f"- each rate: the better of two timed runs of {steps} steps after a warm-up")
    say("")
    say(
        "| runner | dtype | trials | trial-steps/s | ms/step | vs PyTorch GPU | "
        "vs host CPU (2 thr) |"
    )
    say("|---|---|---|---|---|---|---|")
    for dtype in ("float64", "float32"):
        try:
            trate = torch_rate(p, B, steps, dtype)
        except Exception as exc:  # noqa: BLE001  (no torch or no CUDA torch: report it)
            trate = None
            say(f"<!-- torch failed: {exc!r} -->")
        MEASURED["torch", dtype] = trate
        for launch in (None, {"dense": False}):  # the default (dense here), then sparse
            rate, path = gpu_rate(p, layout, B, steps, dtype, launch)
            MEASURED["fastdmf", dtype, path] = rate
            if launch is None:
                MEASURED["fastdmf", dtype] = rate
            vs = f"{rate / trate:.2f}x" if trate else "n/a"
            say(
                f"| fastdmf CUDA, {path} step | {dtype} | {B} | {rate:,.0f} | "
                f"{1e3 * B / rate:.3f} | {vs} | {rate / cpu:.1f}x |"
            )
        if trate:
            say(
                f"| PyTorch batched (bmm, autograd) | {dtype} | {B} | {trate:,.0f} | "
                f"{1e3 * B / trate:.3f} | 1.00x | {trate / cpu:.1f}x |"
            )
    say("")


def profile():
    p = fastdmf.synthetic_completion(shape=(100, 100), rank=5, n_observed=2000, seed=0)
    layout = FactorLayout.build(p.shape, 3)
    B, steps = 1024, 20
    for dtype, launch in (("float64", None), ("float32", None), ("float64", {"dense": False})):
        db = kc.DeviceBatch(p, layout.dims, *batch_state(p, layout, range(B), dtype), launch)
        say(
            f"## Where a step's time goes (paper grid, 1024 trials, {dtype}, {db.path} step, "
            "launches serialised)"
        )
        st, act, caps = np.zeros(B, np.int64), np.ones(B, bool), np.full(B, np.inf)
        db.run(2, 0.0, caps, act, st)
        db.timings = {}
        db.run(steps, 0.0, caps, act, st, poll=10**9)
        if db.path == "sparse":
            MEASURED["profile"] = {k: v / steps for k, v in db.timings.items()}
        total = sum(db.timings.values())
        say(f"- total {1e3 * total / steps:.3f} ms/step")
        say("")
        say("| kernel | ms/step | share |")
        say("|---|---|---|")
        for name, t in sorted(db.timings.items(), key=lambda kv: -kv[1]):
            say(f"| {name} | {1e3 * t / steps:.3f} | {t / total:.0%} |")
        say("")


def ceilings():
    """What the PyTorch target asks for: PyTorch's step by kernel class, the card's batched
    GEMM rate and copy bandwidth, and the step a cuBLAS-based fastdmf could reach at best."""
    say("## Ceilings (paper grid, 1024 trials, 100x100x100 products)")
    p = fastdmf.synthetic_completion(shape=(100, 100), rank=5, n_observed=2000, seed=0)
    B, size = 1024, 100
    gflop = 2.0 * B * size**3 / 1e9
    bw = copy_bandwidth()
    say(f"- device-to-device copy: {bw:,.0f} GB/s (read + written)")
    say("")
    say(
        "| dtype | cuBLAS bmm TFLOP/s | fastdmf product TFLOP/s | PyTorch step ms: GEMM | "
        "gather/scatter | reduction | elementwise/other | cuBLAS-based step floor ms | "
        "floor vs PyTorch | 3x PyTorch needs ms |"
    )
    say("|---|---|---|---|---|---|---|---|---|---|")
    prof = MEASURED.get("profile", {})
    mm = [t for name, t in prof.items() if name.startswith("matmul")]
    ours = f"{gflop / 1e3 / (sum(mm) / len(mm)):.1f}" if mm else "n/a"
    for dtype in ("float64", "float32"):
        rate = bmm_tflops(B, size, dtype)
        kinds = torch_profile(p, B, 20, dtype)
        item = 8 if dtype == "float64" else 4
        # 6 batched GEMMs (W = W3 W2 W1 and the four gradient products) at cuBLAS's rate, and
        # the fused update's traffic: read the parameters and gradients, write the parameters
        params = 3 * size * size * item * B
        floor_ms = 6 * gflop / rate + 3 * params / (bw * 1e9) * 1e3
        trate = MEASURED.get(("torch", dtype))
        tstep = B / trate * 1e3 if trate else float("nan")
        cols = [
            kinds.get(k, 0.0) for k in ("GEMM", "gather/scatter", "reduction", "elementwise/other")
        ]
        say(
            f"| {dtype} | {rate:.1f} | {ours if dtype == 'float64' else '-'} | "
            + " | ".join(f"{c:.3f}" for c in cols)
            + f" | {floor_ms:.3f} | {tstep / floor_ms:.2f}x | {tstep / 3:.3f} |"
        )
    say("")
    say(
        "(fastdmf's product rate is from the float64 profile above; the floor counts the dense "
        "formulation's 6 GEMMs at the measured cuBLAS rate plus one fused update at the copy "
        "bandwidth, and nothing else.)"
    )
    say("")


def large(quick):
    m = 100_000
    k = 1_000_000 if quick else 5_000_000
    say(f"## Large sparse: m = n = {m:,}, width 64, depth 3, {k:,} observed, gd")
    p = fastdmf.synthetic_completion(shape=(m, m), rank=5, n_observed=k, seed=0)
    layout = FactorLayout.build(p.shape, 3, [64, 64])
    say("| dtype | s/step | steps timed |")
    say("|---|---|---|")
    for dtype in ("float64", "float32"):
        state = batch_state(p, layout, [0], dtype, optimizer="gd", lr=1e-3)
        db = kc.DeviceBatch(p, layout.dims, *state)
        st = np.zeros(1, np.int64)
        db.run(2, 0.0, [np.inf], [True], st)
        steps, best = 50, np.inf
        for _ in range(2):  # the better of two timed runs
            kc.cuda.synchronize()
            t = time.perf_counter()
            db.run(steps, 0.0, [np.inf], [True], st, poll=10**9)
            kc.cuda.synchronize()
            best = min(best, (time.perf_counter() - t) / steps)
        say(f"| {dtype} | {best:.4f} | 2 x {steps}, the better |")
    say(f"\n(|Omega| = {k:,}; a dense m x n float64 product would need {m * m * 8 / 1e9:.0f} GB.)")
    say("")


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", default=None, help="write the report (markdown) here too")
    ap.add_argument("--quick", action="store_true", help="fewer steps, a smaller large case")
    ap.add_argument(
        "--commit",
        default=None,
        help="the fastdmf commit run, for the stamp, where the copy has no git",
    )
    ap.add_argument(
        "--sections",
        default="correctness,batch,large,profile,ceilings",
        help="comma-separated sections to run, in this order",
    )
    args = ap.parse_args(argv)
    kc.require()
    # small grids are expected for the small checks; the timed runs are large
    warnings.filterwarnings("ignore", message=".*Grid size")
    stamp(args.commit)
    ok = True
    sections = {
        "correctness": check_correctness,
        "batch": lambda: paper_batch(args.quick),
        "large": lambda: large(args.quick),
        "profile": profile,
        "ceilings": ceilings,
    }
    for name in args.sections.split(","):
        section = sections[name]
        try:
            res = section()
            ok &= res is not False
        except Exception:  # noqa: BLE001  (report and go on to the next section)
            ok = False
            say("```\n" + traceback.format_exc() + "```")
        if args.out:  # after every section: a run cut short keeps what it measured
            Path(args.out).write_text("\n".join(LINES) + "\n")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
