"""fit_batch: trials advanced together equal the serial fits of the same settings, bit for
bit; a diverging trial stops alone."""

import numpy as np
import pytest

import fastdmf


def test_batch_equals_single_fits(square):
    seeds, lrs, scales = [0, 1, 2, 3], [1e-2, 1e-2, 3e-3, 1e-2], [1e-2, 1e-3, 1e-2, 1e-1]
    kw = dict(depth=3, max_steps=2000, record=250, tol=1e-4)
    batch = fastdmf.fit_batch(square, seeds=seeds, lr=lrs, init_scale=scales, **kw)
    # trials that stop early (tol) run beside trials that run to max_steps
    assert {r.status for r in batch} == {"converged", "max_steps"}
    for res, seed, lr, scale in zip(batch, seeds, lrs, scales):
        single = fastdmf.fit(square, seed=seed, lr=lr, init_scale=scale, parallel=False, **kw)
        assert res.status == single.status and res.n_steps == single.n_steps
        for a, b in zip(res.factors, single.factors):
            np.testing.assert_array_equal(a, b)
        for name, arr in single.trajectory.as_dict().items():
            np.testing.assert_array_equal(getattr(res.trajectory, name), arr)
        assert res.settings["arguments"]["lr"] == lr and res.settings["seed"] == seed


def test_a_diverging_trial_stops_alone(square):
    with pytest.warns(RuntimeWarning, match="diverged"):
        res = fastdmf.fit_batch(
            square,
            depth=2,
            seeds=[0, 1],
            optimizer="gd",
            lr=[1e-2, 1e3],
            init_scale=1.0,
            max_steps=300,
            record=50,
        )
    assert [r.status for r in res] == ["max_steps", "diverged"]
    assert res[0].n_steps == 300 and np.all(np.isfinite(res[1].factors[0]))
    alone = fastdmf.fit(
        square,
        depth=2,
        seed=0,
        optimizer="gd",
        lr=1e-2,
        init_scale=1.0,
        max_steps=300,
        record=50,
        parallel=False,
    )
    np.testing.assert_array_equal(res[0].factors[1], alone.factors[1])


def test_batch_argument_errors(square):
    with pytest.raises(ValueError, match="one value per seed"):
        fastdmf.fit_batch(square, seeds=[0, 1], lr=[1e-3, 1e-3, 1e-3])
    with pytest.raises(ValueError, match="give max_time="):
        fastdmf.fit_batch(square, seeds=[0], optimizer="flow")
