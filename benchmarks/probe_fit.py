"""Benchmark: fitting linear probes with C cross-validation, ours vs scikit-learn, in one run.

Problems are synthetic features shaped like the papers' (``classifiers.synthetic``: class means on
a low-dimensional subspace, lifted to 4096 dims, noisy, ReLU-sparse):

* caltech101: 3,060 x 4,096 training rows (30 per class), 102 classes
* sun397:     19,850 x 4,096 training rows (50 per class), 397 classes

Each is scored on ``--test-per-class`` held-out rows per class (mean per-class accuracy).

Reference = scikit-learn as a user would call it, on the same C grid and 3 stratified folds:
``StandardScaler + LogisticRegressionCV(Cs=grid, cv=3)`` (warm-started lbfgs path) and
``StandardScaler + GridSearchCV(LinearSVC(), {"C": grid}, cv=3)``.
Ours = ``LinearProbe(C="auto", backend="torch")`` with its default search (K-fold on the
Caltech-sized problem, one held-out split on the SUN-sized one; see classifiers/probe.py).

    python benchmarks/probe_fit.py --quick            # small sizes, a few seconds
    python benchmarks/probe_fit.py                    # full sizes (long: the reference is slow)
    python benchmarks/probe_fit.py --problems sun397 --classifiers logreg --no-reference
    python benchmarks/probe_fit.py --caltech101 3060,4096,102 --sun397 19850,4096,397
"""

from __future__ import annotations

from featurizer.runtime import configure_process

configure_process()  # this script is an entry point: set before torch starts its OpenMP runtime

import argparse
import os
import sys
import time
import warnings
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from classifiers.options import CLASSIFIER_KINDS, SEARCH_MODES
from classifiers.probe import DEFAULT_CS, LinearProbe, mean_per_class_accuracy
from classifiers.synthetic import make_features

FULL_SIZES = {"caltech101": (3060, 4096, 102), "sun397": (19850, 4096, 397)}
QUICK_SIZES = {"caltech101": (510, 256, 51), "sun397": (600, 256, 30)}


def size(text: str) -> tuple[int, int, int]:
    n, d, k = (int(v) for v in text.split(","))
    if n < 2 * k:
        raise argparse.ArgumentTypeError("need at least 2 training rows per class")
    return n, d, k


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="small sizes (smoke test)")
    parser.add_argument("--problems", default="caltech101,sun397")
    parser.add_argument("--classifiers", default=",".join(CLASSIFIER_KINDS))
    parser.add_argument(
        "--caltech101", type=size, default=None, help="N,D,K of the Caltech problem"
    )
    parser.add_argument("--sun397", type=size, default=None, help="N,D,K of the SUN problem")
    parser.add_argument("--test-per-class", type=int, default=20)
    parser.add_argument("--search", default="auto", choices=SEARCH_MODES)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--no-reference", action="store_true", help="time ours only")
    parser.add_argument("--threads", type=int, default=None, help="torch/BLAS threads")
    parser.add_argument("--seed", type=int, default=0)
    return parser.parse_args(argv)


def make_problem(n: int, d: int, k: int, test_per_class: int, seed: int):
    per_class = n // k
    X, y = make_features(
        k,
        per_class + test_per_class,
        n_features=d,
        latent_dim=64,
        separation=0.5,
        noise=1.0,
        seed=seed,
    )
    position = np.tile(np.arange(per_class + test_per_class), k)
    train = position < per_class
    return X[train], y[train], X[~train], y[~train]


def fit_reference(classifier: str, X: np.ndarray, y: np.ndarray):
    from sklearn.linear_model import LogisticRegressionCV
    from sklearn.model_selection import GridSearchCV, StratifiedKFold
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler
    from sklearn.svm import LinearSVC

    folds = StratifiedKFold(3, shuffle=True, random_state=0)
    if classifier == "logreg":
        model = LogisticRegressionCV(
            Cs=list(DEFAULT_CS),
            cv=folds,
            scoring="accuracy",
            l1_ratios=(0.0,),
            use_legacy_attributes=False,
        )
        pipe = make_pipeline(StandardScaler(), model).fit(X, y)
        return pipe, float(np.atleast_1d(model.C_)[0])
    search = GridSearchCV(LinearSVC(), {"C": list(DEFAULT_CS)}, cv=folds, scoring="accuracy")
    pipe = make_pipeline(StandardScaler(), search).fit(X, y)
    return pipe, float(search.best_params_["C"])


def run_one(problem: str, classifier: str, data, args: argparse.Namespace) -> list[dict]:
    Xtr, ytr, Xte, yte = data
    rows = []
    started = time.perf_counter()
    ours = LinearProbe(
        classifier=classifier,
        backend="torch",
        search=args.search,
        device=args.device,
        progress=True,
    ).fit(Xtr, ytr)
    rows.append(
        {
            "problem": problem,
            "classifier": classifier,
            "method": f"ours torch ({ours.cv_results_['search']})",
            "seconds": time.perf_counter() - started,
            "C": ours.C_,
            "accuracy": mean_per_class_accuracy(yte, ours.predict(Xte)),
        }
    )
    if not args.no_reference:
        started = time.perf_counter()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            reference, C = fit_reference(classifier, Xtr, ytr)
        rows.append(
            {
                "problem": problem,
                "classifier": classifier,
                "method": "scikit-learn (3-fold)",
                "seconds": time.perf_counter() - started,
                "C": C,
                "accuracy": mean_per_class_accuracy(yte, reference.predict(Xte)),
            }
        )
    return rows


def print_table(rows: list[dict]) -> None:
    header = f"{'problem':<12} {'clf':<7} {'method':<26} {'seconds':>9} {'C':>9} {'acc %':>7}"
    print(header)
    print("-" * len(header))
    for row in rows:
        print(
            f"{row['problem']:<12} {row['classifier']:<7} {row['method']:<26} "
            f"{row['seconds']:>9.1f} {row['C']:>9.3g} {100 * row['accuracy']:>7.2f}"
        )
    print()
    pairs = {}
    for row in rows:
        pairs.setdefault((row["problem"], row["classifier"]), []).append(row)
    for (problem, classifier), (ours, *ref) in pairs.items():
        if ref:
            ratio = ref[0]["seconds"] / ours["seconds"]
            delta = 100 * (ours["accuracy"] - ref[0]["accuracy"])
            verdict = "OK" if ratio >= 3 and delta >= -0.5 else "MISS"
            print(
                f"{problem} {classifier}: ours is {ratio:.1f}x faster than scikit-learn, "
                f"accuracy {delta:+.2f} pt  [target >= 3x, >= -0.5 pt: {verdict}]"
            )
        if problem == "sun397" and classifier == "logreg":
            verdict = "OK" if ours["seconds"] < 180 else "MISS"
            print(
                f"sun397 logreg incl. C search: {ours['seconds']:.0f} s [target < 180 s: {verdict}]"
            )


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
        os.environ.setdefault("OMP_NUM_THREADS", str(args.threads))
    sizes = dict(QUICK_SIZES if args.quick else FULL_SIZES)
    for name in ("caltech101", "sun397"):
        if getattr(args, name) is not None:
            sizes[name] = getattr(args, name)
    rows = []
    for problem in [p.strip() for p in args.problems.split(",") if p.strip()]:
        n, d, k = sizes[problem]
        data = make_problem(n, d, k, args.test_per_class, args.seed)
        print(
            f"# {problem}: {len(data[1])} x {d} train, {k} classes, {len(data[3])} test",
            file=sys.stderr,
        )
        for classifier in [c.strip() for c in args.classifiers.split(",") if c.strip()]:
            for row in run_one(problem, classifier, data, args):
                rows.append(row)
                # Partial results survive an interrupted long run.
                print(
                    f"# {row['problem']} {row['classifier']} {row['method']}: "
                    f"{row['seconds']:.1f} s, acc {100 * row['accuracy']:.2f}%",
                    file=sys.stderr,
                    flush=True,
                )
    print_table(rows)
    return 0


if __name__ == "__main__":
    sys.exit(main())
