"""CUDA kernels (fastdmf.kernels.cuda) against the NumPy reference and the CPU kernels.

CI runs them on numba's CUDA simulator (set by conftest) with tiny launch shapes
(``SIMULATOR_LAUNCH``: 2 x 2 product tiles, 8 threads per block, split-K products, several
reduction blocks), so every multi-block path runs on tiny problems. With a GPU,
``NUMBA_ENABLE_CUDASIM=0 pytest tests/test_cuda.py`` runs them on the device.
"""

import ctypes
import sys
import threading

import numpy as np
import pytest

import fastdmf
from fastdmf import reference
from fastdmf.factors import FactorLayout, initialize
from fastdmf.kernels import cpu, cuda_dense
from fastdmf.kernels import cuda as kc
from fastdmf.optim import get_optimizer

pytestmark = pytest.mark.skipif(not kc.available(), reason="numba.cuda cannot run here")


@pytest.fixture(scope="module", autouse=True)
def _quick_simulator_threads():
    """The simulator runs each GPU thread as a Python thread and polls them, holding the GIL,
    until all wait at a barrier; a thread woken there waits for the poller to drop the GIL,
    once per switch interval (5 ms by default). A 10 us interval makes these tests two to
    four times faster. The threads then interleave between barriers, as on a GPU, which
    exposes a race in the simulator itself: ``cuda.shared.array`` looks up its call site's
    array and creates it when missing without a lock, so two threads of a block can each
    create one and no longer share it. The lookup is made atomic here. A real GPU is left
    alone."""
    if not kc.simulated():
        yield
        return
    from numba.core import types
    from numba.cuda.simulator.kernelapi import FakeCUDAShared
    from numba.np import numpy_support

    lock = threading.Lock()
    unlocked = FakeCUDAShared.array

    def array(self, shape, dtype):
        if shape == 0:  # dynamic shared memory: one buffer, no lookup
            return unlocked(self, shape, dtype)
        frame = sys._getframe(1)  # the kernel line that asks, as the simulator keys it
        caller = (frame.f_code.co_filename, frame.f_lineno)
        with lock:
            res = self._allocations.get(caller)
            if res is None:
                if isinstance(dtype, types.Type):
                    dtype = numpy_support.as_dtype(dtype)
                res = self._allocations[caller] = np.empty(shape, dtype)
        return res

    old = sys.getswitchinterval()
    FakeCUDAShared.array = array
    sys.setswitchinterval(1e-5)
    try:
        yield
    finally:
        sys.setswitchinterval(old)
        FakeCUDAShared.array = unlocked


@pytest.fixture(scope="module")
def small():
    """9 x 7, 30 observed entries: 2 x 2 tiles and 8-entry loss blocks split everything."""
    return fastdmf.synthetic_completion(shape=(9, 7), rank=2, n_observed=30, seed=0)


def batch(problem, layout, n, dtype="float64", scale=1.0, optimizer="gd", lr=1e-2):
    spec = get_optimizer(optimizer)
    rng = np.random.default_rng(7)
    factors = [
        [w + 0.3 * rng.standard_normal(w.shape) for w in initialize(layout, "gaussian", scale, rng)]
        for _ in range(n)
    ]
    thetas = np.stack([layout.pack(f, dtype=dtype) for f in factors])
    P = thetas.shape[1]
    state = (
        thetas,
        np.full(n, spec.code),
        np.tile(spec.hyper(lr, {}), (n, 1)),
        np.zeros((n, spec.state_slots * P), dtype),
        np.zeros((n, 3)),
    )
    return factors, state


def assert_matches_reference(db, small, layout, factors, dtype):
    """Each trial's loss and gradients of ``db.evaluate()`` against the NumPy reference."""
    loss, grads = db.evaluate()
    tol = 1e-12 if dtype == "float64" else 2e-5
    for b, fs in enumerate(factors):
        f = [w.astype(dtype).astype(np.float64) for w in fs]
        ref_loss, ref_grads = reference.loss_and_grad(f, small.rows, small.cols, small.values)
        assert loss[b] == pytest.approx(ref_loss, rel=tol)
        for got, want in zip(layout.unpack(grads[b]), ref_grads, strict=True):
            np.testing.assert_allclose(got, want, rtol=tol, atol=tol * np.abs(want).max())


@pytest.mark.parametrize(
    "depth, widths, dtype",
    [
        (1, None, "float64"),
        (2, [5], "float64"),
        (3, [6, 5], "float64"),
        (4, [5, 6, 4], "float64"),
        (3, [6, 5], "float32"),
    ],
)
@pytest.mark.parametrize("dense", [False, True])
def test_loss_and_gradients_match_reference(small, depth, widths, dtype, dense):
    """Both steps (sparse passes; dense product and gradient on the Numba tiles)."""
    layout = FactorLayout.build(small.shape, depth, widths)
    factors, state = batch(small, layout, 2, dtype)
    db = kc.DeviceBatch(small, layout.dims, *state, {"dense": dense})
    assert db.path == ("dense (numba tiles)" if dense and depth > 1 else "sparse")
    assert db.ksplit > 1 and db.nres > 1  # the split-K and multi-block reductions run
    assert_matches_reference(db, small, layout, factors, dtype)


@pytest.mark.parametrize(
    "depth, optimizer, lr",
    [(2, "gd", 0.05), (2, "grouprmsprop", 1e-2), (2, "adam", 1e-2), (3, "grouprmsprop", 1e-2)],
)
@pytest.mark.parametrize("dense", [False, True])
def test_step_loop_matches_cpu_run(small, depth, optimizer, lr, dense):
    """Both steps' updates (three kernels; the dense step's fused one) against the CPU."""
    layout = FactorLayout.build(small.shape, depth, [6] * (depth - 1))
    steps = 4 if depth == 2 else 2
    _, state = batch(small, layout, 2, optimizer=optimizer, lr=lr)
    cpu_state = [a.copy() for a in state]
    db = kc.DeviceBatch(small, layout.dims, *state, {"dense": dense})
    status = np.zeros(2, np.int64)
    db.run(steps, 0.0, [np.inf, np.inf], [True, True], status)
    assert status.tolist() == [kc.RUNNING, kc.RUNNING]
    thetas, codes, hyper, ostate, scalars = cpu_state
    for b in range(2):
        eng = fastdmf.engine.Engine(small, layout, thetas[b], optimizer, hyper[b], parallel=False)
        done, code, _ = eng.run(steps, 0.0, np.inf)
        assert (done, code) == (steps, cpu.RUNNING)
        np.testing.assert_allclose(state[0][b], eng.theta, rtol=1e-12, atol=1e-14)
        np.testing.assert_allclose(state[4][b], eng.scalars, rtol=1e-12)
        if eng.ostate.size:
            np.testing.assert_allclose(state[3][b], eng.ostate, rtol=1e-11, atol=1e-16)


def test_fit_on_cuda_equals_cpu_fit(small):
    kw = dict(depth=2, init_scale=0.5, lr=1e-2, max_steps=8, record=4, seed=1, tol=0)
    gpu = fastdmf.fit(small, backend="cuda", **kw)
    cpu_fit = fastdmf.fit(small, **kw)
    assert gpu.status == cpu_fit.status == "max_steps" and gpu.n_steps == 8
    assert gpu.settings["kernels"] == "cuda"
    for a, b in zip(gpu.factors, cpu_fit.factors, strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-15)
    np.testing.assert_allclose(gpu.trajectory.train_loss, cpu_fit.trajectory.train_loss, rtol=1e-12)


def test_batch_statuses_and_bits(small):
    """Per-trial stopping on the device (converged, diverged, running) and a trial's bits
    independent of the batch it runs in."""
    kw = dict(depth=2, init_scale=0.5, optimizer="gd", max_steps=6, record=3)
    loss0 = fastdmf.fit(
        small, lr=0.05, seed=0, max_steps=0, depth=2, init_scale=0.5
    ).trajectory.train_loss[0]
    with pytest.warns(RuntimeWarning, match="diverged"):
        rs = fastdmf.fit_batch(
            small, seeds=[0, 1, 2], lr=[0.05, 0.05, 80.0], tol=0.0, backend="cuda", **kw
        )
    assert [r.status for r in rs] == ["max_steps", "max_steps", "diverged"]
    alone = fastdmf.fit(small, lr=0.05, seed=1, tol=0.0, backend="cuda", **kw)
    for a, b in zip(rs[1].factors, alone.factors, strict=True):
        np.testing.assert_array_equal(a, b)
    conv = fastdmf.fit_batch(small, seeds=[0], lr=0.05, tol=0.999 * loss0, backend="cuda", **kw)
    assert conv[0].status == "converged" and conv[0].n_steps < 6


def test_backend_errors(small, monkeypatch):
    with pytest.raises(ValueError, match="backend must be one of"):
        fastdmf.fit(small, depth=2, backend="gpu", max_steps=1)
    with pytest.raises(ValueError, match="flow optimisers .* run on the CPU only"):
        fastdmf.fit(small, depth=2, optimizer="flow", max_time=1.0, backend="cuda")
    # "auto" never picks the simulator
    r = fastdmf.fit(small, depth=2, max_steps=2, backend="auto", seed=0)
    assert r.settings["kernels"] in ("serial", "parallel")
    monkeypatch.setattr(kc, "available", lambda: False)
    with pytest.raises(RuntimeError, match=r"fastdmf\[cuda\]"):
        fastdmf.fit(small, depth=2, max_steps=1, backend="cuda")


def test_cuda_fit_checkpoint_resume_is_bit_identical(small, tmp_path):
    kw = dict(
        depth=2, init_scale=0.5, lr=1e-2, max_steps=8, record=2, seed=1, tol=0, backend="cuda"
    )
    ref = fastdmf.fit(small, **kw)
    path = tmp_path / "fit.ckpt"

    def interrupt(rec):
        if rec["step"] >= 4:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        fastdmf.fit(small, **kw, checkpoint=path, checkpoint_every=2, callback=interrupt)
    res = fastdmf.resume(path)
    assert res.settings["kernels"] == "cuda" and res.n_steps == ref.n_steps == 8
    for a, b in zip(res.factors, ref.factors, strict=True):
        np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(res.trajectory.train_loss, ref.trajectory.train_loss)


def test_sensing_is_not_sent_to_the_gpu():
    p = fastdmf.synthetic_sensing(shape=(6, 5), rank=1, n_measurements=20, seed=0)
    with pytest.raises(ValueError, match="matrix sensing runs on the CPU"):
        fastdmf.fit(p, depth=2, max_steps=1, backend="cuda")
    assert fastdmf.fit(p, depth=2, max_steps=1, backend="auto").settings["kernels"] != "cuda"


def test_a_batch_beyond_the_grid_limit_runs_in_consecutive_batches(small, monkeypatch):
    """The trial axis is a grid's y (z times the splits in the products): a batch beyond
    CUDA's limit is refused by DeviceBatch and split by fit_batch, with the same bits."""
    kw = dict(
        depth=3,
        seeds=[0, 1, 2],
        lr=[0.02, 0.03, 0.04],
        init_scale=0.5,
        max_steps=2,
        record=None,
        tol=0.0,
        backend="cuda",
    )
    whole = fastdmf.fit_batch(small, **kw)
    monkeypatch.setattr(kc, "GRID_YZ", 6)  # 9 rows, split_k 4: 3 splits, 2 trials a launch
    assert kc.max_trials(9, 3) == 2 and kc.max_trials(9, 2) == 6
    layout = FactorLayout.build(small.shape, 3)
    _, state = batch(small, layout, 3)
    with pytest.raises(ValueError, match="3 trials exceed the 2 one GPU batch"):
        kc.DeviceBatch(small, layout.dims, *state)
    parts = fastdmf.fit_batch(small, **kw)
    for a, b in zip(whole, parts, strict=True):
        assert a.status == b.status and a.n_steps == b.n_steps
        for wa, wb in zip(a.factors, b.factors, strict=True):
            np.testing.assert_array_equal(wa, wb)
        np.testing.assert_array_equal(a.trajectory.train_loss, b.trajectory.train_loss)


class _FakeCublas:
    """cublas<t>gemmStridedBatched in NumPy, column-major as cuBLAS: it runs the dense step's
    operand swap and strides (``cuda_dense._Cublas``) on the simulator's host memory."""

    CUBLAS_OP_N, CUBLAS_OP_T = 0, 1

    def __init__(self, dtype):
        self.dtype = np.dtype(dtype)

    def _mat(self, ptr, rows, cols, ld):
        """The column-major rows x cols matrix at ``ptr`` with leading dimension ``ld``."""
        item = self.dtype.itemsize
        raw = np.ctypeslib.as_array(
            (ctypes.c_char * (((cols - 1) * ld + rows) * item)).from_address(ptr)
        )
        flat = raw.view(self.dtype)
        return np.lib.stride_tricks.as_strided(flat, (rows, cols), (item, ld * item))

    def gemm(self, handle, ta, tb, m, n, k, alpha, A, lda, sa, B, ldb, sb, beta, C, ldc, sc, batch):
        item = self.dtype.itemsize
        a_ = self._mat(alpha, 1, 1, 1)[0, 0]
        b_ = self._mat(beta, 1, 1, 1)[0, 0]
        for i in range(batch):
            opa = self._mat(A + i * sa * item, *((k, m) if ta else (m, k)), lda)
            opb = self._mat(B + i * sb * item, *((n, k) if tb else (k, n)), ldb)
            c = self._mat(C + i * sc * item, m, n, ldc)
            prod = a_ * ((opa.T if ta else opa) @ (opb.T if tb else opb))
            c[...] = prod if b_ == 0 else prod + b_ * c  # beta = 0: C is not read

    dgemmStridedBatched = sgemmStridedBatched = gemm


class _HostPointers(cuda_dense._Cublas):
    """Device pointers of the simulator's arrays: their host memory."""

    def _ptr(self, arr, off):
        return arr._ary.__array_interface__["data"][0] + int(off) * self.item


@pytest.mark.parametrize(
    "depth, widths, dtype",
    [
        (2, [5], "float64"),
        (3, [6, 5], "float64"),
        (4, [5, 6, 4], "float64"),
        (3, [6, 5], "float32"),
        (4, [5, 6, 4], "float32"),
    ],
)
def test_dense_step_with_cublas_call_matches_reference(small, monkeypatch, depth, widths, dtype):
    """The dense step through the cuBLAS call (row-major operands given to a column-major
    GEMM, strided over the trials) against the NumPy reference, and 3 GroupRMSprop steps of
    it against the CPU engine."""
    monkeypatch.setattr(
        cuda_dense, "cublas_products", lambda dt: _HostPointers(_FakeCublas(dt), 0, np.dtype(dt))
    )
    layout = FactorLayout.build(small.shape, depth, widths)
    factors, state = batch(small, layout, 2, dtype, optimizer="grouprmsprop", lr=1e-2)
    cpu_state = [a.copy() for a in state]
    db = kc.DeviceBatch(small, layout.dims, *state)
    assert db.path == "dense (cublas)"
    assert_matches_reference(db, small, layout, factors, dtype)
    tol = 1e-12 if dtype == "float64" else 2e-5
    status = np.zeros(2, np.int64)
    db.run(3, 0.0, [np.inf, np.inf], [True, True], status)
    thetas, codes, hyper, ostate, scalars = cpu_state
    for b in range(2):
        eng = fastdmf.engine.Engine(
            small, layout, thetas[b], "grouprmsprop", hyper[b], parallel=False
        )
        eng.run(3, 0.0, np.inf)
        np.testing.assert_allclose(state[0][b], eng.theta, rtol=10 * tol, atol=tol)
        np.testing.assert_allclose(state[4][b], eng.scalars, rtol=10 * tol)


def test_dense_step_is_chosen_by_shape(small):
    """Dense when m n <= DENSE_RATIO |Omega| (and depth >= 2), sparse otherwise; ``dense`` in
    ``launch`` overrides the choice."""
    assert cuda_dense.choose_dense(100, 100, 2000, 3, None, True)
    # without cuBLAS only the simulator takes the dense step
    assert cuda_dense.choose_dense(100, 100, 2000, 3, None, False) == kc.simulated()
    assert not cuda_dense.choose_dense(10**5, 10**5, 5 * 10**6, 3, None, True)
    assert not cuda_dense.choose_dense(100, 100, 2000, 1, True, True)
    assert cuda_dense.choose_dense(10**5, 10**5, 10, 3, True, True)
    layout = FactorLayout.build(small.shape, 3, [6, 5])
    _, state = batch(small, layout, 1)
    assert kc.DeviceBatch(small, layout.dims, *state).path == "dense (numba tiles)"
    assert kc.DeviceBatch(small, layout.dims, *state, {"dense": False}).path == "sparse"
