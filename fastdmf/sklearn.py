"""``DMFImputer``: deep matrix factorization as a scikit-learn transformer that fills NaN.

Rows of ``X`` are samples, columns features, NaN marks a missing entry. ``fit(X)``
standardises each column with the mean and standard deviation of its observed entries
(``standardize=True``) and trains, with :func:`fastdmf.fit` and its real-data defaults,

    Z[i, j] ~ mu + b_i + c_j + (W_N ... W_1)[i, j]

on the observed entries of the standardised table: offsets mu, b, c fitted first (ridge),
a validation split of the observed entries stopping the factorization where it generalises
best (docs/realdata.md). W_N holds one row per training sample and C = W_{N-1} ... W_1 (d x n)
is shared by all rows.

``transform(X)`` returns a copy of X with its NaN entries filled (observed entries kept):

- a row seen in ``fit`` (same observed entries, same values, same NaN positions) with at
  least one observed entry is filled from its row of the fitted model, so
  ``fit(X).transform(X) == fit_transform(X)``, whatever the row order or subset;
- any other row is a new sample: with C and the column offsets frozen, its coefficients u
  (and its row offset b, when the fit has offsets) are the minimum-norm least-squares
  solution of ``u C[:, O] + b = z_O - mu - c_O`` over its observed entries O (singular values
  below ``1e-3`` times the largest dropped), and its NaN entries become ``mu + b + c + u C``,
  unstandardised. With depth 1 there is no shared factor (C is empty) and only b is fitted;
- a row with no observed entry, seen in ``fit`` or not, is filled with ``mu + c`` (each
  column's fitted mean; 0 in the standardised units without offsets).

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

    The defaults are :func:`fastdmf.fit`'s for observations without a ground truth: depth
    2, hidden width min(n_samples, n_features, 32), GroupRMSprop lr 3e-2, offsets
    (``"biases"``), 10% of the observed entries held out for early stopping, then a refit on
    all of them to the chosen point.

    Parameters
    ----------
    depth : int, optional
        Number of factors N (default: fit's, 2 for such data).
    init_scale : float
        Scale of the initial end-to-end matrix (small: stronger bias to low rank).
    lr : float, optional
        Learning rate (default: fit's, 3e-2 for such data).
    optimizer : str
        ``"grouprmsprop"`` (the paper's), ``"adam"`` or ``"gd"``.
    max_steps : int
        Most optimiser steps.
    tol : float
        Stop once the train loss (mean squared error on observed entries, standardised) is
        <= tol.
    widths : int or list of int, optional
        Hidden widths; default min(n_samples, n_features, 32).
    init : str
        Initialisation scheme (see :mod:`fastdmf.factors`).
    optimizer_options : dict, optional
    validation, patience, offsets : see :func:`fastdmf.fit`
        ``validation=None`` trains on every observed entry to ``tol`` or ``max_steps``.
    refit : bool
        Once validation has chosen where to stop, train again on every observed entry to
        the same point (see :func:`fastdmf.fit`; True by default: a table's held-out 10% is
        worth having back).
    standardize : bool
        Fit on each column minus its observed mean, over its observed standard deviation
        (True); False: on the table over the RMS of its observed entries.
    random_state : int, RandomState instance or None
        Seed of the initialisation and of the validation split.
    dtype : {"float64", "float32"}

    Attributes
    ----------
    factors_ : list of ndarray
        ``[W_1, ..., W_N]`` of the fit on the standardised table.
    components_ : ndarray, shape (d, n_features_in_)
        C = W_{N-1} ... W_1 times ``scale_`` (``scale_`` on the diagonal for depth 1).
    mean_, scale_ : ndarray, shape (n_features_in_,)
        The standardisation: the fit runs on ``(X - mean_) / scale_``.
    offsets_ : Offsets or None
        The fitted offsets, in standardised units.
    result_ : FitResult
        The fit, with its trajectory (``val_error``: the validation curve).
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
    >>> X = rng.standard_normal((60, 2)) @ rng.standard_normal((2, 20)) + 5.0
    >>> X_noisy = X + 0.1 * rng.standard_normal(X.shape)
    >>> X_missing = X_noisy.copy(); X_missing[rng.random(X.shape) < 0.3] = np.nan
    >>> imp = DMFImputer(random_state=0)
    >>> X_filled = imp.fit_transform(X_missing)
    >>> gap = np.isnan(X_missing)
    >>> rmse = np.sqrt(np.mean((X_filled[gap] - X[gap]) ** 2))
    >>> col_means = np.nanmean(X_missing, axis=0)[np.nonzero(gap)[1]]
    >>> bool(rmse < 0.5 * np.sqrt(np.mean((col_means - X[gap]) ** 2))), imp.status_
    (True, 'early_stopped')
    """

    def __init__(
        self,
        depth=None,
        *,
        init_scale=1e-3,
        lr=None,
        optimizer="grouprmsprop",
        max_steps=100_000,
        tol=1e-6,
        widths=None,
        init="gaussian",
        optimizer_options=None,
        validation="auto",
        patience="auto",
        refit=True,
        offsets="auto",
        standardize=True,
        random_state=None,
        dtype="float64",
    ):
        self.depth = depth
        self.init_scale = init_scale
        self.lr = lr
        self.optimizer = optimizer
        self.max_steps = max_steps
        self.tol = tol
        self.widths = widths
        self.init = init
        self.optimizer_options = optimizer_options
        self.validation = validation
        self.patience = patience
        self.refit = refit
        self.offsets = offsets
        self.standardize = standardize
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
            raise ValueError(
                "X has no observed entries (all NaN); DMFImputer needs at least one to fit"
            )
        rows, cols = np.nonzero(observed)
        values = X[rows, cols]
        self.mean_, self.scale_ = _standardization(X, observed, self.standardize)
        rng = check_random_state(self.random_state)
        seed = int(rng.randint(np.iinfo(np.int32).max))
        split_seed = int(rng.randint(np.iinfo(np.int32).max))
        z = (values - self.mean_[cols]) / self.scale_[cols]
        problem = completion(rows, cols, z, shape=X.shape)
        offsets = self.offsets
        if isinstance(offsets, str) and offsets == "scaled":
            raise ValueError(
                "DMFImputer scales the columns itself (standardize=True): use "
                "offsets='biases', 'mean', None or 'auto'"
            )
        if isinstance(offsets, str) and offsets == "auto":
            offsets = "biases"  # fit's real-data default scales the columns: done above
        res = fit(
            problem,
            self.depth,
            widths=self.widths,
            init=self.init,
            init_scale=self.init_scale,
            optimizer=self.optimizer,
            lr=self.lr,
            optimizer_options=self.optimizer_options,
            max_steps=self.max_steps,
            tol=self.tol,
            validation=self.validation,
            validation_seed=split_seed,
            patience=self.patience,
            refit=self.refit,
            offsets=offsets,
            seed=seed,
            dtype=self.dtype,
            progress=False,
        )
        self.result_ = res
        self.factors_ = res.factors
        self.offsets_ = res.offsets
        self.n_steps_ = res.n_steps
        self.status_ = res.status
        n = X.shape[1]
        comp = np.zeros((0, n)) if len(res.factors) == 1 else end_to_end(res.factors[:-1])
        self._comp = np.asarray(comp, dtype=np.float64)  # standardised units
        self.components_ = (self._comp if len(res.factors) > 1 else np.eye(n)) * self.scale_
        # rows with nothing observed stay out: their row of W_N is only what is left of the
        # random initialisation, and they are filled like any such row (_project)
        self._rows_seen = {_row_key(X[i]): i for i in np.flatnonzero(observed.any(axis=1))[::-1]}
        return self

    def transform(self, X):
        """A copy of ``X`` with its NaN entries filled (see the module docstring)."""
        check_is_fitted(self, "factors_")
        X = validate_data(
            self, X, ensure_all_finite="allow-nan", dtype=np.float64, reset=False, copy=True
        )
        missing = np.isnan(X)
        if not missing.any():
            return X
        w_n = self.factors_[-1]
        off = self.offsets_
        for i in np.flatnonzero(missing.any(axis=1)):
            seen = self._rows_seen.get(_row_key(X[i]))
            if seen is not None:
                z = w_n[seen] @ self._comp if len(self.factors_) > 1 else w_n[seen].copy()
                if off is not None:
                    z += off.mean + off.row[seen] + off.col
            else:
                z = self._project((X[i] - self.mean_) / self.scale_, ~missing[i])
            X[i, missing[i]] = (z * self.scale_ + self.mean_)[missing[i]]
        return X

    def fit_transform(self, X, y=None):
        """``fit(X)`` then ``transform(X)``: X's NaN entries filled from the fitted model."""
        return self.fit(X).transform(X)

    def _project(self, z, obs):
        """The standardised row ``mu + b + c + u C`` of a new sample (module docstring)."""
        off = self.offsets_
        n = z.shape[0]
        base = np.zeros(n) if off is None else off.mean + off.col
        basis = self._comp if off is None else np.vstack([self._comp, np.ones((1, n))])
        if not obs.any() or basis.shape[0] == 0:
            return base
        coef, *_ = np.linalg.lstsq(basis[:, obs].T, z[obs] - base[obs], rcond=_RCOND)
        return base + coef @ basis


def _standardization(X, observed, standardize):
    """``(mean, scale)`` per column: the observed entries' mean and standard deviation
    (``standardize``), else 0 and the RMS of all observed entries; a column with fewer than
    two distinct observed values gets scale 1 (and mean 0 when it has none)."""
    n = X.shape[1]
    if not standardize:
        rms = float(np.sqrt(np.mean(X[observed] ** 2)))
        return np.zeros(n), np.full(n, rms if rms > 0 else 1.0)
    count = observed.sum(axis=0)
    filled = np.where(observed, X, 0.0)
    mean = np.divide(filled.sum(axis=0), count, out=np.zeros(n), where=count > 0)
    var = np.divide(
        (np.where(observed, X - mean, 0.0) ** 2).sum(axis=0),
        count,
        out=np.zeros(n),
        where=count > 0,
    )
    std = np.sqrt(var)
    return mean, np.where(std > 0, std, 1.0)


def _row_key(x) -> bytes:
    """A row's identity: its NaN positions and observed values."""
    nan = np.isnan(x)
    return hashlib.sha1(nan.tobytes() + np.where(nan, 0.0, x).tobytes()).digest()
