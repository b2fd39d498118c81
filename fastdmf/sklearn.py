"""``DMFImputer``: deep matrix factorization as a scikit-learn transformer that fills NaN.

Rows of ``X`` are samples, columns features, NaN marks a missing entry. ``fit(X)`` trains
W = W_N ... W_1 (m samples x n features) on the observed entries with :func:`fastdmf.fit`;
W_N holds one row per training sample and C = W_{N-1} ... W_1 (d x n) is shared by all rows.

``transform(X)`` returns a copy of X with its NaN entries filled (observed entries kept):

- a row seen in ``fit`` (same observed entries, same values, same NaN positions) with at
  least one observed entry is filled from its row of the fitted W, so
  ``fit(X).transform(X) == fit_transform(X)``, whatever the row order or subset;
- any other row is a new sample: with the column factors frozen, its coefficients are the
  minimum-norm least-squares solution ``u = argmin ||u C[:, O] - x_O||`` over its observed
  entries O (singular values of ``C[:, O]`` below ``1e-3`` times the largest dropped), and
  its NaN entries become ``u C``. With depth 1 there is no shared factor (C is the identity)
  and new rows' missing entries are filled with 0, as gradient descent from a small
  initialisation leaves an unobserved entry of a depth-1 fit;
- a row with no observed entry, seen in ``fit`` or not, is filled with 0 (its row of the
  fitted W_N holds only what is left of the random initialisation).

Needs scikit-learn (``pip install 'fastdmf[sklearn]'``).
"""

from __future__ import annotations

import hashlib

import numpy as np
from sklearn.base import BaseEstimator, OneToOneFeatureMixin, TransformerMixin
from sklearn.utils import check_random_state
from sklearn.utils.validation import check_is_fitted, validate_data

from .api import fit
from .factors import end_to_end
from .problem import completion

__all__ = ["DMFImputer"]

_RCOND = 1e-3  # relative cut-off of C[:, O]'s singular values when projecting new rows


class DMFImputer(OneToOneFeatureMixin, TransformerMixin, BaseEstimator):
    """Fill missing entries (NaN) with a deep matrix factorization (Arora et al. 2019).

    Parameters
    ----------
    depth : int
        Number of factors N (3 gives the strongest low-rank bias of the paper's table).
    init_scale : float
        Scale of the initial end-to-end matrix (small: stronger bias to low rank).
    lr : float
        Learning rate.
    optimizer : str
        ``"grouprmsprop"`` (the paper's), ``"adam"`` or ``"gd"``.
    max_steps : int
        Most optimiser steps.
    tol : float
        Stop once the train loss (mean squared error on observed entries, in units of their
        RMS) is <= tol.
    widths : int or list of int, optional
        Hidden widths; default min(n_samples, n_features).
    init : str
        Initialisation scheme (see :mod:`fastdmf.factors`).
    optimizer_options : dict, optional
    random_state : int, RandomState instance or None
        Seed of the initialisation.
    dtype : {"float64", "float32"}

    Attributes
    ----------
    factors_ : list of ndarray
        ``[W_1, ..., W_N]`` of the fit on ``X / scale_``.
    components_ : ndarray, shape (d, n_features_in_)
        C = W_{N-1} ... W_1 times ``scale_`` (the identity times ``scale_`` for depth 1).
    scale_ : float
        RMS of the observed training entries; the fit runs on X / scale_.
    result_ : FitResult
        The fit, with its trajectory.
    n_steps_ : int
    status_ : str
    n_features_in_ : int
    feature_names_in_ : ndarray of str (when X has string column names)

    Output features are the input features, one to one: ``get_feature_names_out()`` returns
    ``feature_names_in_`` (or ``x0, x1, ...``), and ``set_output(transform="pandas")``
    makes ``transform`` return a DataFrame with those columns.

    Example
    -------
    >>> import numpy as np
    >>> from fastdmf import DMFImputer
    >>> rng = np.random.default_rng(0)
    >>> X = rng.standard_normal((30, 2)) @ rng.standard_normal((2, 20))
    >>> X_missing = X.copy(); X_missing[rng.random(X.shape) < 0.3] = np.nan
    >>> imp = DMFImputer(depth=3, max_steps=20000, random_state=0)
    >>> X_filled = imp.fit_transform(X_missing)
    >>> bool(np.isnan(X_filled).any()), imp.status_
    (False, 'converged')
    """

    def __init__(self, depth=3, *, init_scale=1e-3, lr=1e-3, optimizer="grouprmsprop",
                 max_steps=100_000, tol=1e-6, widths=None, init="gaussian",
                 optimizer_options=None, random_state=None, dtype="float64"):
        self.depth = depth
        self.init_scale = init_scale
        self.lr = lr
        self.optimizer = optimizer
        self.max_steps = max_steps
        self.tol = tol
        self.widths = widths
        self.init = init
        self.optimizer_options = optimizer_options
        self.random_state = random_state
        self.dtype = dtype

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.input_tags.allow_nan = True
        return tags

    def _more_tags(self):  # scikit-learn < 1.6
        return {"allow_nan": True}

    def fit(self, X, y=None):
        """Train the factorization on the observed (non-NaN) entries of ``X``."""
        X = validate_data(self, X, ensure_all_finite="allow-nan", dtype=np.float64)
        observed = ~np.isnan(X)
        if not observed.any():
            raise ValueError("X has no observed entries (all NaN); DMFImputer needs at least "
                             "one to fit")
        rows, cols = np.nonzero(observed)
        values = X[rows, cols]
        scale = float(np.sqrt(np.mean(values**2)))
        self.scale_ = scale if scale > 0 else 1.0
        seed = int(check_random_state(self.random_state).randint(np.iinfo(np.int32).max))
        problem = completion(rows, cols, values / self.scale_, shape=X.shape)
        res = fit(problem, self.depth, widths=self.widths, init=self.init,
                  init_scale=self.init_scale, optimizer=self.optimizer, lr=self.lr,
                  optimizer_options=self.optimizer_options, max_steps=self.max_steps,
                  tol=self.tol, record=None, seed=seed, dtype=self.dtype, progress=False)
        self.result_ = res
        self.factors_ = res.factors
        self.n_steps_ = res.n_steps
        self.status_ = res.status
        n = X.shape[1]
        comp = np.eye(n) if len(res.factors) == 1 else end_to_end(res.factors[:-1])
        self.components_ = np.asarray(comp, dtype=np.float64) * self.scale_
        # rows with nothing observed stay out: their row of W_N is only what is left of the
        # random initialisation, and they are filled with 0 like any such row (_project)
        self._rows_seen = {_row_key(X[i]): i for i in np.flatnonzero(observed.any(axis=1))[::-1]}
        return self

    def transform(self, X):
        """A copy of ``X`` with its NaN entries filled (see the module docstring)."""
        check_is_fitted(self, "factors_")
        X = validate_data(self, X, ensure_all_finite="allow-nan", dtype=np.float64,
                          reset=False, copy=True)
        missing = np.isnan(X)
        if not missing.any():
            return X
        w_n = self.factors_[-1]
        for i in np.flatnonzero(missing.any(axis=1)):
            seen = self._rows_seen.get(_row_key(X[i]))
            if seen is not None:
                full = (w_n[seen] @ self.components_ if len(self.factors_) > 1
                        else w_n[seen] * self.scale_)
            else:
                full = self._project(X[i], ~missing[i])
            X[i, missing[i]] = full[missing[i]]
        return X

    def fit_transform(self, X, y=None):
        """``fit(X)`` then ``transform(X)``: X's NaN entries filled from the fitted W."""
        return self.fit(X).transform(X)

    def _project(self, x, obs):
        """``u C`` with u the minimum-norm least-squares fit of the observed entries."""
        if not obs.any():
            return np.zeros_like(x)
        c = self.components_
        u, *_ = np.linalg.lstsq(c[:, obs].T, x[obs], rcond=_RCOND)
        return u @ c


def _row_key(x) -> bytes:
    """A row's identity: its NaN positions and observed values."""
    nan = np.isnan(x)
    return hashlib.sha1(nan.tobytes() + np.where(nan, 0.0, x).tobytes()).digest()
