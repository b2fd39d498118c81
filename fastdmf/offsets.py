"""Offsets of real observations and the validation split: what a fit on real data adds.

Real tables and ratings are not centred low-rank matrices: they have a global mean and row
and column effects (a generous user, a popular film), and noise. ``fit`` therefore models

    M[i, j] ~ mu + b_i + c_j + (W_N ... W_1)[i, j]

with the offsets fitted first, as standard recommenders do (Koren 2010, "Factor in the
neighbors", section 2.1): a ridge regression of the observed values on row and column
indicators,

    min_{mu, b, c}  sum_{(i,j) in Omega} (y_ij - mu - b_i - c_j)^2 + lam (||b||^2 + ||c||^2),

with mu the mean of the observed values and b, c from the normal equations (conjugate
gradients, O(|Omega|) an iteration). The factorization then trains on the residuals
``y - mu - b_i - c_j``. Offsets are fitted, not learned with the factors: the factors start
from a small initialisation and pick up components one at a time (docs/realdata.md), and a
bias learned jointly would be one more component competing with them from the first step.

The validation split (:func:`validation_split`) holds out a fraction of the observed
entries for early stopping; it never takes a row's or a column's last training entry.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np

from .problem import CompletionProblem

__all__ = [
    "Offsets",
    "fit_offsets",
    "validation_split",
    "check_validation",
    "OFFSET_KINDS",
    "RIDGE_GRID",
]

OFFSET_KINDS = ("mean", "biases", "scaled")
# prior weight (in degrees of freedom) of the typical column's log variance in a column's
# scale (``"scaled"``): a column with few entries takes the typical scale, one with many its own
SCALE_PRIOR = 2.0
# kind="auto" scales the columns when their scales span more than this factor (columns in
# different units, a table); below it (ratings, a survey on one scale) the plain biases
SCALE_SPREAD = 10.0
# ridge strengths tried when a validation split chooses lam (per observation count, as the
# usual count-shrunk bias estimate b_i = sum(resid) / (lam + n_i))
RIDGE_GRID = (0.0, 1.0, 3.0, 10.0, 30.0, 100.0)
DEFAULT_RIDGE = 10.0  # lam without a validation split to choose it
_MAX_CG = 1000  # most conjugate-gradient iterations (they converge in tens)


@dataclass(frozen=True, eq=False)
class Offsets:
    """``mu + row[i] + col[j]``, the part of the model fitted before the factorization.

    With ``kind="scaled"`` each column also has a scale s_j and the model is
    ``s_j (mu + row[i] + col[j] + W[i, j])``: the factorization trains on
    ``y / s_j - mu - row[i] - col[j]``.

    Attributes
    ----------
    kind : {"mean", "biases", "scaled"}
    mean : float
        mu, the mean of the observed values the offsets were fitted on.
    row, col : ndarray, shapes (m,), (n,)
        Row and column biases (zeros for ``kind="mean"``).
    lam : float
        The ridge strength of the biases (NaN for ``kind="mean"``).
    scale : ndarray, shape (n,), or None
        Column scales s_j (``kind="scaled"``), else None (all 1).
    """

    kind: str
    mean: float
    row: np.ndarray
    col: np.ndarray
    lam: float = np.nan
    scale: np.ndarray | None = None

    def at(self, rows, cols) -> np.ndarray:
        """The offsets of entries ``(rows[k], cols[k])``, in the data's units."""
        return self.predict(0.0, rows, cols)

    def matrix(self) -> np.ndarray:
        """The m x n matrix of offsets, in the data's units."""
        return self.predict_matrix(0.0)

    def predict(self, fitted, rows, cols) -> np.ndarray:
        """The model's entries from the factorization's entries ``fitted`` (of the
        residuals): ``s_j (offset + fitted)``."""
        out = self.mean + self.row[rows] + self.col[cols] + fitted
        return out if self.scale is None else out * self.scale[cols]

    def predict_matrix(self, fitted) -> np.ndarray:
        """:meth:`predict` for the whole m x n matrix ``fitted``."""
        out = self.mean + self.row[:, None] + self.col[None, :] + fitted
        return out if self.scale is None else out * self.scale[None, :]

    def remove(self, problem: CompletionProblem) -> CompletionProblem:
        """The problem the factorization trains on: the same entries, their values scaled
        (``"scaled"``) and minus their offsets."""
        rows, cols = problem.rows, problem.cols
        values = problem.values if self.scale is None else problem.values / self.scale[cols]
        resid = values - (self.mean + self.row[rows] + self.col[cols])
        return replace(problem, values=resid)

    def describe(self) -> dict:
        """The offsets' settings (for ``FitResult.settings``)."""
        return {"kind": self.kind, "mean": float(self.mean), "lam": float(self.lam)}

    def to_arrays(self, prefix: str = "offsets") -> dict:
        out = {
            f"{prefix}_row": self.row,
            f"{prefix}_col": self.col,
            f"{prefix}_scalars": np.array([self.mean, self.lam]),
        }
        if self.scale is not None:
            out[f"{prefix}_scale"] = self.scale
        return out

    @classmethod
    def from_arrays(cls, kind: str, data, prefix: str = "offsets") -> Offsets:
        mean, lam = (float(v) for v in data[f"{prefix}_scalars"])
        key = f"{prefix}_scale"
        scale = np.array(data[key]) if key in data.files else None
        return cls(
            kind, mean, np.array(data[f"{prefix}_row"]), np.array(data[f"{prefix}_col"]), lam, scale
        )


def fit_offsets(
    problem: CompletionProblem,
    kind: str = "biases",
    lam=None,
    validation: CompletionProblem | None = None,
) -> Offsets:
    """Fit the offsets of ``problem``'s observed values (see the module docstring).

    Parameters
    ----------
    problem : CompletionProblem
    kind : {"mean", "biases", "scaled"}
        ``"mean"``: mu only; ``"biases"``: mu plus ridge row and column biases;
        ``"scaled"``: each column minus its mean, over a column scale s_j, then the biases
        of those values (the column means added to the column offsets); s_j is the standard
        deviation of the column's entries, shrunk toward the typical column's in log scale:
        :func:`column_scale`), so that columns in different units (a table) weigh alike and
        a column with few entries (ratings) takes the typical scale; ``"auto"``:
        ``"scaled"`` when the column scales span more than ``SCALE_SPREAD`` (10), else
        ``"biases"``.
    lam : float, optional
        Ridge strength of the biases. None: the value of ``RIDGE_GRID`` with the smallest
        squared error on ``validation`` (fitted on ``problem``), or ``DEFAULT_RIDGE`` (10)
        without one.
    validation : CompletionProblem, optional
        Held-out entries of the same shape, used only to choose ``lam``.
    """
    if kind not in OFFSET_KINDS + ("auto",):
        raise ValueError(
            f"offsets must be one of {list(OFFSET_KINDS)}, 'auto' or None, got {kind!r}"
        )
    m, n = problem.shape
    if kind == "auto":
        scale = column_scale(problem)
        kind = "scaled" if scale.max() > SCALE_SPREAD * scale.min() else "biases"
    if kind == "scaled":
        # standardise each column (its mean, not shrunk by the ridge; its scale), then the
        # biases of the standardised values; the column means go into the column offsets
        scale = column_scale(problem)
        count = np.bincount(problem.cols, minlength=n)
        centre = (
            np.divide(
                np.bincount(problem.cols, problem.values, n),
                count,
                out=np.zeros(n),
                where=count > 0,
            )
            / scale
        )
        unit = Offsets("mean", 0.0, np.zeros(m), centre, scale=scale)
        z = unit.remove(problem)  # (values - column mean) / s_j
        zval = None if validation is None else unit.remove(validation)
        inner = fit_offsets(z, "biases", lam, zval)
        return Offsets("scaled", inner.mean, inner.row, inner.col + centre, inner.lam, scale)
    mean = float(np.mean(problem.values)) if problem.n_observed else 0.0
    if kind == "mean":
        return Offsets("mean", mean, np.zeros(m), np.zeros(n))
    if lam is None:
        if validation is None or validation.n_observed == 0:
            lam = DEFAULT_RIDGE
        else:
            errors = []
            for cand in RIDGE_GRID:
                fitted = _ridge_biases(problem, mean, cand)
                pred = fitted.at(validation.rows, validation.cols)
                errors.append(float(np.mean((validation.values - pred) ** 2)))
            lam = RIDGE_GRID[int(np.argmin(errors))]
    if (
        isinstance(lam, bool)
        or not isinstance(lam, (int, float, np.integer, np.floating))
        or not (np.isfinite(lam) and lam >= 0)
    ):
        raise ValueError(
            f"the ridge strength of the biases must be a finite number >= 0, got {lam!r}"
        )
    return _ridge_biases(problem, mean, float(lam))


def column_scale(problem: CompletionProblem) -> np.ndarray:
    """Column scales s_j: the standard deviation of column j's entries about their mean,
    shrunk in log scale toward the typical column's, ``log s_j^2 = (d_j log v_j + k log v) /
    (d_j + k)`` with d_j = n_j - 1 degrees of freedom, k = ``SCALE_PRIOR`` and log v the
    d-weighted mean of the columns' log v_j. Log scale, because a table's columns are in
    different units (a column of 80 entries keeps nearly its own scale whatever the others');
    a column of one entry (ratings) takes the typical scale. 1 for constant data."""
    n = problem.shape[1]
    cols, values = problem.cols, problem.values
    count = np.bincount(cols, minlength=n).astype(np.float64)
    col_mean = np.divide(np.bincount(cols, values, n), count, out=np.zeros(n), where=count > 0)
    ss = np.bincount(cols, (values - col_mean[cols]) ** 2, n)
    dof = np.maximum(count - 1.0, 0.0)
    var = np.divide(ss, dof, out=np.zeros(n), where=dof > 0)
    weight = np.where(var > 0, dof, 0.0)
    if not weight.any():
        return np.ones(n)
    log_var = np.log(np.where(var > 0, var, 1.0))
    typical = float(np.sum(weight * log_var) / np.sum(weight))
    return np.exp(0.5 * (weight * log_var + SCALE_PRIOR * typical) / (weight + SCALE_PRIOR))


def _ridge_biases(problem, mean, lam) -> Offsets:
    """The ridge biases: the normal equations ``(A^T A + lam I) x = A^T (y - mu)`` of the
    row and column indicator design A, solved by conjugate gradients with the diagonal
    (the counts plus lam) as preconditioner, to a relative residual of 1e-13. Each product
    with A^T A is two ``bincount`` passes over the entries: O(|Omega|) a step."""
    m, n = problem.shape
    rows, cols = problem.rows, problem.cols
    resid = problem.values - mean

    def normal(x):
        fitted = x[:m][rows] + x[m:][cols]
        return (
            np.concatenate([np.bincount(rows, fitted, m), np.bincount(cols, fitted, n)]) + lam * x
        )

    rhs = np.concatenate([np.bincount(rows, resid, m), np.bincount(cols, resid, n)])
    diag = np.concatenate([np.bincount(rows, minlength=m), np.bincount(cols, minlength=n)]) + lam
    # a row or column without entries (and lam = 0) has a zero equation: its bias stays 0
    inv = np.divide(1.0, diag, out=np.zeros(m + n), where=diag > 0)
    x = np.zeros(m + n)
    r = rhs.copy()
    z = inv * r
    d = z.copy()
    rz = r @ z
    stop = 1e-13 * max(np.linalg.norm(rhs), np.finfo(float).tiny)
    for _ in range(_MAX_CG):
        if np.linalg.norm(r) <= stop:
            break
        q = normal(d)
        alpha = rz / (d @ q)
        x += alpha * d
        r -= alpha * q
        z = inv * r
        rz, rz_old = r @ z, rz
        d = z + (rz / rz_old) * d
    row, col = x[:m], x[m:]
    if lam == 0.0:
        # without a ridge the biases are determined up to a constant moved between rows and
        # columns; fix it so that the column biases average 0 over the observed entries
        shift = float(np.mean(col[cols])) if problem.n_observed else 0.0
        row, col = row + shift, col - shift
    return Offsets("biases", mean, row, col, lam)


def validation_split(problem: CompletionProblem, fraction: float, seed=0):
    """``(train, validation)``: about ``fraction`` of the observed entries held out at
    random (``seed``: anything :func:`numpy.random.default_rng` takes), never a row's or a
    column's last training entry, so every row and column with observations keeps one to
    train on. Entries are visited in a random order and held out while both their row and
    column still have another training entry, up to ``round(fraction * |Omega|)``."""
    if (
        isinstance(fraction, bool)
        or not isinstance(fraction, (float, np.floating, int, np.integer))
        or not 0 < fraction < 1
    ):
        raise ValueError(
            f"validation={fraction!r}: a fraction of the observed entries must "
            "lie strictly between 0 and 1 (e.g. 0.1), or give the validation "
            "entries themselves, or None for no validation"
        )
    want = int(round(fraction * problem.n_observed))
    order = np.random.default_rng(seed).permutation(problem.n_observed)
    pick = _pick(order, problem.rows, problem.cols, problem.shape[0], problem.shape[1], want)
    if not pick.any():
        raise ValueError(
            f"validation={fraction!r} leaves no validation entry: every observed entry is the "
            "last of its row or column. Give a larger fraction, validation entries, or "
            "validation=None"
        )
    return problem.subset(~pick), problem.subset(pick)


def _pick(order, rows, cols, m, n, want) -> np.ndarray:
    left_row = np.bincount(rows, minlength=m)
    left_col = np.bincount(cols, minlength=n)
    pick = np.zeros(rows.shape[0], dtype=bool)
    count = 0
    for k in order:
        if count >= want:
            break
        i, j = rows[k], cols[k]
        if left_row[i] > 1 and left_col[j] > 1:
            left_row[i] -= 1
            left_col[j] -= 1
            pick[k] = True
            count += 1
    return pick


def check_validation(train: CompletionProblem, val: CompletionProblem) -> None:
    """Refuse validation entries that overlap the training entries or whose row or column
    has nothing left to train on."""
    if val.shape != train.shape:
        raise ValueError(
            f"the validation entries have shape {val.shape}, the fitted problem {train.shape}"
        )
    if val.n_observed == 0:
        raise ValueError("the validation entries are empty; give at least one, or validation=None")
    m, n = train.shape
    keys_train = train.rows.astype(np.int64) * n + train.cols
    keys_val = val.rows.astype(np.int64) * n + val.cols
    both = np.intersect1d(keys_train, keys_val)
    if both.size:
        i, j = divmod(int(both[0]), n)
        raise ValueError(
            f"{both.size} validation entries are also training entries (e.g. "
            f"row {i}, column {j}); validation entries must be held out of the "
            "observations given to fit"
        )
    for axis, name, size in ((0, "row", m), (1, "column", n)):
        tr = np.bincount(train.rows if axis == 0 else train.cols, minlength=size)
        va = np.bincount(val.rows if axis == 0 else val.cols, minlength=size)
        empty = np.flatnonzero((va > 0) & (tr == 0))
        if empty.size:
            raise ValueError(
                f"{empty.size} {name}(s) have validation entries but nothing to train on (e.g. "
                f"{name} {int(empty[0])}): the factorization cannot predict them. Move one of "
                f"their entries back to the observations, or use validation=<fraction>, "
                "which never takes a row's or column's last entry"
            )
