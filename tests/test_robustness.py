"""Malformed input of every kind raises a ValueError or TypeError whose message names what
was wrong, never a crash, a NaN result or a silent fit."""

import warnings

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import fastdmf


def _names_a_float_dtype(text):
    """True for the spellings of float32 / float64 that numpy accepts ("f4", "d", ...)."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return np.dtype(text).name in ("float32", "float64")
    except (TypeError, ValueError):
        return False


GOOD = fastdmf.synthetic_completion(shape=(6, 5), rank=1, n_observed=12, seed=0)
NAN, INF = float("nan"), float("inf")

not_numbers = st.one_of(st.text(max_size=4), st.none(), st.lists(st.integers(), max_size=2))
# None is a valid depth and lr (the default that depends on the observations)
not_numbers_nor_none = st.one_of(st.text(max_size=4), st.lists(st.integers(), max_size=2))
BAD_ARGS = {
    "depth": st.one_of(st.integers(max_value=0), st.floats(), not_numbers_nor_none),
    "lr": st.one_of(st.floats(max_value=0.0), st.just(NAN), st.just(INF), not_numbers_nor_none),
    "init_scale": st.one_of(st.floats(max_value=0.0), st.just(NAN), st.just(INF), not_numbers),
    "max_steps": st.one_of(st.integers(max_value=-1), st.floats(), st.text(max_size=3)),
    "tol": st.one_of(st.floats(max_value=-1e-300), st.just(NAN), st.just(INF), not_numbers),
    "widths": st.one_of(
        st.lists(st.integers(max_value=0), min_size=2, max_size=2),
        st.lists(st.integers(1, 4), min_size=3, max_size=5),
    ),
    "optimizer": st.text(max_size=6).filter(lambda s: s not in fastdmf.OPTIMIZERS),
    "init": st.one_of(st.text(max_size=6).filter(lambda s: s not in fastdmf.INITS), st.integers()),
    "record": st.one_of(
        st.integers(max_value=0),
        st.text(max_size=3).filter(lambda s: s != "log"),
        st.lists(st.integers(max_value=-1), min_size=1, max_size=3),
    ),
    "dtype": st.text(max_size=8).filter(lambda s: not _names_a_float_dtype(s)),
    "seed": st.one_of(st.integers(max_value=-1), st.floats(), st.text(max_size=3)),
    "top_k": st.integers(max_value=0),
    "optimizer_options": st.one_of(
        st.integers(),
        st.dictionaries(
            st.sampled_from(["beta", "momentum", "alpha"]), st.floats(min_value=1.0), min_size=1
        ),
    ),
}
WORDS = {"widths": "width", "record": "record", "init": "init", "optimizer": "optimizer"}


@settings(max_examples=150, deadline=None)
@given(
    st.sampled_from(sorted(BAD_ARGS)).flatmap(lambda name: st.tuples(st.just(name), BAD_ARGS[name]))
)
def test_bad_fit_arguments_raise_clear_errors(case):
    name, value = case
    with pytest.raises((ValueError, TypeError)) as info:
        fastdmf.fit(GOOD, depth=3, max_steps=2, **{name: value})
    message = str(info.value)
    assert WORDS.get(name, name) in message or (
        name == "optimizer_options" and "option" in message
    ), message


@st.composite
def bad_matrices(draw):
    m, n = draw(st.integers(1, 5)), draw(st.integers(1, 5))
    x = draw(st.lists(st.floats(-10, 10), min_size=m * n, max_size=m * n))
    x = np.array(x).reshape(m, n)
    kind = draw(st.sampled_from(["inf", "all_nan", "ndim", "dtype", "empty"]))
    if kind == "inf":
        x[draw(st.integers(0, m - 1)), draw(st.integers(0, n - 1))] = draw(
            st.sampled_from([INF, -INF])
        )
    elif kind == "all_nan":
        x[:] = NAN
    elif kind == "ndim":
        x = x.reshape(-1) if draw(st.booleans()) else x[None]
    elif kind == "dtype":
        x = draw(st.sampled_from([x.astype(complex), x > 0, x.astype(str), x.astype(object)]))
    else:
        x = x[:0]
    return kind, x


@st.composite
def bad_triplets(draw):
    m, n = draw(st.integers(1, 6)), draw(st.integers(1, 6))
    k = draw(st.integers(1, m * n))
    flat = np.array(draw(st.permutations(range(m * n))))[:k]
    rows, cols = np.divmod(flat, n)
    values = np.array(draw(st.lists(st.floats(-5, 5), min_size=k, max_size=k)))
    shape = (m, n)
    kind = draw(
        st.sampled_from(["negative", "range", "nan", "length", "duplicate", "fraction", "shape"])
    )
    i = draw(st.integers(0, k - 1))
    if kind == "negative":
        rows[i] = -draw(st.integers(1, 10))
    elif kind == "range":
        cols[i] = n + draw(st.integers(0, 10))
    elif kind == "nan":
        values[i] = draw(st.sampled_from([NAN, INF, -INF]))
    elif kind == "length":
        values = values[:-1]
    elif kind == "duplicate":
        rows, cols, values = (np.append(a, a[i]) for a in (rows, cols, values))
    elif kind == "fraction":
        rows = rows.astype(float)
        rows[i] += 0.5
    else:
        shape = draw(st.sampled_from([(m,), (0, n), (-m, n), (m, n, 1), (1.5, n), "mn"]))
    return kind, (rows, cols, values), shape


@settings(max_examples=100, deadline=None)
@given(st.one_of(bad_matrices(), bad_triplets().map(lambda c: (c[0], c[1], c[2]))))
def test_malformed_observations_raise_clear_errors(case):
    kind, observed, *shape = case
    kw = {"shape": shape[0]} if shape else {}
    with pytest.raises((ValueError, TypeError)) as info:
        fastdmf.fit(observed, depth=2, max_steps=2, **kw)
    assert len(str(info.value)) > 20, (kind, str(info.value))


def test_a_held_out_set_of_another_shape_is_refused():
    other = fastdmf.synthetic_completion(shape=(3, 3), rank=1, n_observed=3, seed=0)
    with pytest.raises(ValueError, match=r"test= has shape \(3, 3\), the fitted problem \(6, 5\)"):
        fastdmf.fit(GOOD, max_steps=2, test=other)
