"""Issue 13 benchmarks beyond COMPAS logistic regression (one process per case, so that
peak RSS is that case's): ``scaling`` (synthetic rows × 50 features × 4 groups, eclearn
``FairClassifier()`` vs Fairlearn ``ExponentiatedGradient(LogisticRegression(),
DemographicParity(0.01))``, fit time and peak RSS, paired over splits), ``compas-mlp``
(COMPAS 10 splits, ``FairClassifier(model="mlp")`` vs ``ExponentiatedGradient(
MLPClassifier())``) and ``regression`` (``FairRegressor`` bounded group loss vs Fairlearn
``BoundedGroupLoss(SquareLoss)``). Every case prints one JSON line; ``--out`` appends it.

    python benchmarks/fairness_scaling.py scaling --rows 10000 --method eclearn --seed 0
    python benchmarks/fairness_scaling.py compas-mlp --split 0
    python benchmarks/fairness_scaling.py regression --seed 0
    python benchmarks/fairness_scaling.py swing            # exact-rate swing, last 100 steps
    python benchmarks/fairness_scaling.py seeds            # init="unconstrained" vs random_state
    python benchmarks/fairness_scaling.py cold --cold      # first fit of a fresh process vs warm
    python benchmarks/fairness_scaling.py table FILE.jsonl # the tables of the lines in FILE

``seeds`` fits ``FairClassifier()`` on COMPAS split 0 with ``random_state`` 0–4 and reports
the largest coefficient difference and the step counts; ``cold`` fits the same COMPAS split
twice in this process (with ``--cold`` the first fit pays every one-time import and
first-call cost, as a user's first fit does) and reports both times.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import torch


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def disparity(pred: np.ndarray, groups: np.ndarray) -> float:
    rates = [pred[groups == k].mean() for k in np.unique(groups)]
    return float(max(rates) - min(rates))


def synthetic(rows: int, seed: int, features: int = 50, groups: int = 4):
    """Gaussian features whose first ones shift with the group; labels from a logistic
    model, so groups differ in base rate; group shares 0.4/0.3/0.2/0.1."""
    rng = np.random.default_rng(seed)
    g = rng.choice(groups, size=rows, p=[0.4, 0.3, 0.2, 0.1][:groups])
    x = rng.standard_normal((rows, features), dtype=np.float32).astype(np.float64)
    x[:, 0] += 0.8 * g
    x[:, 1] -= 0.4 * g
    beta = rng.normal(size=features) / np.sqrt(features)
    beta[:2] = [1.2, -0.8]
    y = (rng.random(rows) < 1 / (1 + np.exp(-(x @ beta - 0.5)))).astype(np.int64)
    return x, y, g


def fit_case(method: str, xtr, ytr, gtr, model: str = "logistic", **options):
    began = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if method == "eclearn":
            from eclearn.fairness import FairClassifier

            est = FairClassifier(model=model, **options).fit(xtr, ytr, sensitive_features=gtr)
            extra = {
                "steps": est.n_steps_,
                "feasible": bool(est.feasible_),
                "batch_size": est.batch_size_,
                "rate_swing": est.rate_swing_,
            }
            predict = est.predict
        else:
            from fairlearn.reductions import DemographicParity, ExponentiatedGradient
            from sklearn.linear_model import LogisticRegression
            from sklearn.neural_network import MLPClassifier
            from sklearn.preprocessing import StandardScaler

            scaler = StandardScaler().fit(xtr)  # timed: eclearn standardises inside its fit
            base = (
                LogisticRegression(max_iter=1000)
                if model == "logistic"
                else MLPClassifier(random_state=0, max_iter=300)
            )
            est = ExponentiatedGradient(base, DemographicParity(difference_bound=0.01))
            est.fit(scaler.transform(xtr), ytr, sensitive_features=gtr)
            extra = {"predictors": len(est.predictors_)}

            def predict(x):
                return est.predict(scaler.transform(x), random_state=0)

    return est, predict, time.perf_counter() - began, extra


def six_groups(seed: int):
    """6 groups of 1500/1200/900/600/300/60 people, 6 features, group-shifted base rates."""
    rng = np.random.default_rng(seed)
    g = np.repeat(np.arange(6), [1500, 1200, 900, 600, 300, 60])
    x = rng.normal(size=(len(g), 6))
    x[:, 0] += 0.4 * g
    logits = 1.2 * x[:, 0] - x[:, 1] + 0.5 * x[:, 2] - 1
    y = (rng.random(len(g)) < 1 / (1 + np.exp(-logits))).astype(int)
    return x, y, g


def swing_case(args) -> dict:
    """Exact-rate swing (max − min over the last 100 steps, largest component) of
    ``FairClassifier()`` on COMPAS (race, 10 splits) and the 6-group set (seeds 0–4)."""
    from eclearn.fairness import FairClassifier, compas_split

    out: dict = {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for name, sets in (
            ("compas", [compas_split(s, args.data) for s in range(10)]),
            ("six_groups", [six_groups(s) for s in range(5)]),
        ):
            rows = []
            for item in sets:
                x, y, g = (item.x_train, item.y_train, item.g_train) if name == "compas" else item
                clf = FairClassifier().fit(x, y, sensitive_features=g)
                smallest = f"value/demographic_parity[{int(np.argmin(np.bincount(g)))}]"
                tail = clf.history_[smallest].to_numpy()[-100:]
                rows.append(
                    {
                        "swing": clf.rate_swing_,
                        "smallest_group_swing": float(np.ptp(tail)),
                        "train_violation": clf.train_violation_,
                        "feasible": bool(clf.feasible_),
                        "steps": clf.n_steps_,
                    }
                )
            out[name] = rows
    return out


def seeds_case(args) -> dict:
    """``init="unconstrained"`` (the default): does the fit depend on ``random_state``?"""
    from eclearn.fairness import FairClassifier, compas_split

    d = compas_split(0, args.data)
    fits = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for seed in range(5):
            clf = FairClassifier(random_state=seed).fit(
                d.x_train, d.y_train, sensitive_features=d.g_train
            )
            fits.append(clf)
    coef = np.stack([np.r_[c.coef_.ravel(), c.intercept_.ravel()] for c in fits])
    preds = np.stack([c.predict(d.x_test) for c in fits])
    return {
        "random_states": list(range(5)),
        "steps": [c.n_steps_ for c in fits],
        "selected": [c.selected_iter_ for c in fits],
        "max_coef_difference": float(np.abs(coef - coef[0]).max()),
        "test_predictions_identical": bool((preds == preds[0]).all()),
    }


def cold_case(args) -> dict:
    """Time two fits on COMPAS split 0 in this process (see ``--cold``)."""
    began = time.perf_counter()
    from eclearn.fairness import FairClassifier, compas_split

    imports = time.perf_counter() - began
    d = compas_split(0, args.data)
    times = []
    for _ in range(2):
        began = time.perf_counter()
        FairClassifier().fit(d.x_train, d.y_train, sensitive_features=d.g_train)
        times.append(time.perf_counter() - began)
    return {
        "import_seconds": imports,
        "first_fit_seconds": times[0],
        "second_fit_seconds": times[1],
        "first_minus_second": times[0] - times[1],
    }


def _mean(values) -> str:
    values = [v for v in values if v is not None]
    if not values:
        return "—"
    sd = float(np.std(values, ddof=1)) if len(values) > 1 else 0.0
    return f"{np.mean(values):.4f} ± {sd:.4f}"


def _paired(rows: list[dict], key: str) -> dict:
    """eclearn and fairlearn rows of one configuration, by split/seed."""
    out: dict = {}
    for r in rows:
        out.setdefault(r.get(key), {})[r["method"]] = r
    return {k: v for k, v in out.items() if {"eclearn", "fairlearn"} <= set(v)}


def _classifier_table(rows: list[dict], key: str, label: str) -> list[str]:
    lines = [
        f"| {label} | method | n | fit s (median) | peak RSS MB (max) | test accuracy | "
        "test disparity | train disparity | load |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    configs = sorted({r.get("rows", 0) for r in rows})
    notes = []
    for n in configs:
        mine = [r for r in rows if r.get("rows", 0) == n]
        for method in ("eclearn", "fairlearn"):
            rs = [r for r in mine if r["method"] == method]
            if not rs:
                continue
            peaks = [r["peak_rss_mb"] for r in rs if "peak_rss_mb" in r]
            rss = f"{max(peaks):.0f}" if peaks else "—"
            lines.append(
                f"| {n or 'COMPAS'} | {method} | {len(rs)} | "
                f"{np.median([r['fit_seconds'] for r in rs]):.2f} | "
                f"{rss} | {_mean([r['test_accuracy'] for r in rs])} | "
                f"{_mean([r['test_disparity'] for r in rs])} | "
                f"{_mean([r['train_disparity'] for r in rs])} | "
                f"{min(r['load'] for r in rs):.1f}–{max(r['load'] for r in rs):.1f} |"
            )
        pairs = _paired(mine, key)
        if pairs:
            ratio = [
                p["fairlearn"]["fit_seconds"] / p["eclearn"]["fit_seconds"] for p in pairs.values()
            ]
            dacc = [
                p["eclearn"]["test_accuracy"] - p["fairlearn"]["test_accuracy"]
                for p in pairs.values()
            ]
            ddis = [
                p["eclearn"]["test_disparity"] - p["fairlearn"]["test_disparity"]
                for p in pairs.values()
            ]
            notes.append(
                f"- {n or 'COMPAS'}: {len(pairs)} paired {key}s; Fairlearn/eclearn fit time "
                f"median {np.median(ratio):.2f}× (min {min(ratio):.2f}, max {max(ratio):.2f}); "
                f"test accuracy eclearn − Fairlearn {np.mean(dacc):+.4f} (min {min(dacc):+.4f}); "
                f"test disparity eclearn − Fairlearn {np.mean(ddis):+.4f} "
                f"(eclearn no worse on {sum(d <= 0 for d in ddis)} of {len(ddis)})"
            )
    return [*lines, "", *notes]


def table(paths: list[Path]) -> str:
    """Markdown tables of the JSON lines in ``paths`` (every case found)."""
    rows = [json.loads(line) for p in paths for line in p.read_text().splitlines() if line.strip()]
    out: list[str] = []
    scaling = [r for r in rows if r["case"] == "scaling"]
    if scaling:
        out += ["### scaling", "", *_classifier_table(scaling, "seed", "rows"), ""]
    mlp = [r for r in rows if r["case"] == "compas-mlp"]
    if mlp:
        out += ["### compas-mlp", "", *_classifier_table(mlp, "split", "data"), ""]
    reg = [r for r in rows if r["case"] == "regression"]
    if reg:
        out += [
            "### regression",
            "",
            "| method | n | fit s (median) | train max group loss (max) | test max group loss | "
            "test MSE | load |",
            "|---|---|---|---|---|---|---|",
        ]
        for method in ("eclearn", "fairlearn"):
            rs = [r for r in reg if r["method"] == method]
            if rs:
                out.append(
                    f"| {method} | {len(rs)} | {np.median([r['fit_seconds'] for r in rs]):.2f} | "
                    f"{max(max(r['train_group_loss']) for r in rs):.5f} | "
                    f"{_mean([max(r['test_group_loss']) for r in rs])} | "
                    f"{_mean([r['test_mse'] for r in rs])} | "
                    f"{min(r['load'] for r in rs):.1f}–{max(r['load'] for r in rs):.1f} |"
                )
        pairs = _paired(reg, "seed")
        if pairs:
            ratio = [
                p["fairlearn"]["fit_seconds"] / p["eclearn"]["fit_seconds"] for p in pairs.values()
            ]
            dmse = [p["eclearn"]["test_mse"] - p["fairlearn"]["test_mse"] for p in pairs.values()]
            out += [
                "",
                f"- bound {reg[0]['bound']}; {len(pairs)} paired seeds; Fairlearn/eclearn fit "
                f"time median {np.median(ratio):.2f}×; test MSE eclearn − Fairlearn "
                f"{np.mean(dmse):+.5f} (eclearn lower on {sum(d < 0 for d in dmse)})",
            ]
        out.append("")
    for r in rows:
        if r["case"] == "swing":
            out += [
                "### swing",
                "",
                "| data | fits | swing median | swing max | < 0.01 | smallest-group swing max | "
                "feasible |",
                "|---|---|---|---|---|---|---|",
            ]
            for name in ("compas", "six_groups"):
                sw = [x["swing"] for x in r[name]]
                out.append(
                    f"| {name} | {len(sw)} | {np.median(sw):.3f} | {max(sw):.3f} | "
                    f"{sum(v < 0.01 for v in sw)} | "
                    f"{max(x['smallest_group_swing'] for x in r[name]):.3f} | "
                    f"{sum(x['feasible'] for x in r[name])} |"
                )
            out += ["", f"- load {r['load']:.1f}", ""]
        elif r["case"] in ("seeds", "cold"):
            body = {k: v for k, v in r.items() if k not in ("case", "method", "cold")}
            out += [f"- {r['case']}: {json.dumps(body)}"]
    return "\n".join(out) + "\n"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument(
        "case", choices=["scaling", "compas-mlp", "regression", "swing", "seeds", "cold", "table"]
    )
    parser.add_argument("files", nargs="*", type=Path, help="table: JSON-line files to read")
    parser.add_argument("--rows", type=int, default=10_000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--split", type=int, default=0)
    parser.add_argument("--method", choices=["eclearn", "fairlearn"], default="eclearn")
    parser.add_argument("--data", default=os.environ.get("ECLEARN_DATA"))
    parser.add_argument("--out", type=Path)
    parser.add_argument("--cold", action="store_true", help="time the process's first fit")
    parser.add_argument("--set", nargs="*", default=[], help="FairClassifier KEY=VALUE options")
    args = parser.parse_args(argv)
    if args.case == "table":
        print(table(args.files), end="")
        return 0
    torch.set_num_threads(1)
    from threadpoolctl import threadpool_limits

    threadpool_limits(1)
    row: dict = {
        "case": args.case,
        "method": args.method,
        "load": os.getloadavg()[0],
        "cold": bool(args.cold),
    }
    if args.case == "scaling":
        x, y, g = synthetic(int(args.rows * 1.25), args.seed)
        n = args.rows
        xtr, ytr, gtr, xte, yte, gte = x[:n], y[:n], g[:n], x[n:], y[n:], g[n:]
        base_rss = peak_rss_mb()
        options = {k: json.loads(v) for k, v in (kv.split("=", 1) for kv in args.set)}
        row["options"] = options
        _, predict, sec, extra = fit_case(args.method, xtr, ytr, gtr, **options)
        pte = predict(xte)
        row.update(
            rows=n,
            seed=args.seed,
            fit_seconds=sec,
            data_mb=xtr.nbytes / 2**20,
            rss_before_fit_mb=base_rss,
            peak_rss_mb=peak_rss_mb(),
            test_accuracy=float((pte == yte).mean()),
            test_disparity=disparity(pte, gte),
            train_disparity=disparity(predict(xtr), gtr),
            **extra,
        )
    elif args.case == "compas-mlp":
        from eclearn.fairness import compas_split

        d = compas_split(args.split, args.data)
        options = {k: json.loads(v) for k, v in (kv.split("=", 1) for kv in args.set)}
        row["options"] = options
        _, predict, sec, extra = fit_case(
            args.method, d.x_train, d.y_train, d.g_train, "mlp", **options
        )
        pte = predict(d.x_test)
        row.update(
            split=args.split,
            fit_seconds=sec,
            test_accuracy=float((pte == d.y_test).mean()),
            test_disparity=disparity(pte, d.g_test),
            train_disparity=disparity(predict(d.x_train), d.g_train),
            **extra,
        )
    elif args.case == "swing":
        row.update(swing_case(args))
    elif args.case == "seeds":
        row.update(seeds_case(args))
    elif args.case == "cold":
        row.update(cold_case(args))
    else:
        rng = np.random.default_rng(args.seed)
        n = 5000
        g = rng.choice(3, size=n, p=[0.6, 0.3, 0.1])
        x = rng.normal(size=(n, 5))
        x[:, 0] += g
        y = x @ np.array([1.0, -0.5, 0.3, 0.0, 0.2]) + (g == 2) * 1.5 * x[:, 1]
        y = y + np.array([0.3, 0.5, 0.8])[g] * rng.normal(size=n)
        y = (y - y.min()) / (y.max() - y.min())  # in [0, 1] for Fairlearn's SquareLoss
        tr = np.arange(n) < 3500
        bound = 0.012
        began = time.perf_counter()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            if args.method == "eclearn":
                from eclearn.fairness import FairRegressor

                est = FairRegressor(bound=bound, selection_tolerance=1e-4)
                est.fit(x[tr], y[tr], sensitive_features=g[tr])
                predict = est.predict
            else:
                from fairlearn.reductions import BoundedGroupLoss, ExponentiatedGradient, SquareLoss
                from sklearn.linear_model import LinearRegression

                est = ExponentiatedGradient(
                    LinearRegression(), BoundedGroupLoss(SquareLoss(0, 1), upper_bound=bound)
                )
                est.fit(x[tr], y[tr], sensitive_features=g[tr])

                def predict(z, est=est):  # the randomized predictor's expected output
                    return sum(
                        w * p.predict(z) for w, p in zip(est.weights_, est.predictors_, strict=True)
                    )

        sec = time.perf_counter() - began
        from sklearn.linear_model import LinearRegression

        plain = LinearRegression().fit(x[tr], y[tr])

        def group_losses(pred, mask):
            return [float(((pred - y)[mask & (g == k)] ** 2).mean()) for k in range(3)]

        row.update(
            seed=args.seed,
            bound=bound,
            fit_seconds=sec,
            train_group_loss=group_losses(predict(x), tr),
            test_group_loss=group_losses(predict(x), ~tr),
            test_mse=float(((predict(x) - y)[~tr] ** 2).mean()),
            unconstrained_train_group_loss=group_losses(plain.predict(x), tr),
        )
    line = json.dumps(row)
    print(line, flush=True)
    if args.out:
        with args.out.open("a") as fh:
            fh.write(line + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
