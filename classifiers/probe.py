"""`LinearProbe`: a scikit-learn classifier for frozen features (linear SVM or logistic regression).

What happens in ``fit``:

1. optional per-sample L2 normalisation, then standardisation (mean/std of the training split,
   stored as ``mean_`` / ``scale_``; constant features keep scale 1);
2. if ``C="auto"``: C is chosen on the training split by cross-validation over a log grid
   (``Cs``, default 1e-4 ... 1e2, a factor 10 apart), scored by mean per-class accuracy.
   The grid is walked from strong to weak regularisation with warm starts (torch L-BFGS starts
   from the previous C's solution; sklearn's LogisticRegression via ``warm_start``), all folds in
   lock-step, and the walk stops once the mean score has fallen for ``patience`` grid points in a
   row (weakly regularised fits are the slow ones and rarely win). Then the best C is refined with
   the two geometric midpoints to its neighbours (coarse-to-fine). Folds share the standardisation
   statistics of the whole training split (a tiny, documented leak that saves a pass per fold).
   ``search="auto"`` uses stratified K-fold (``cv`` folds) unless the problem is large
   (n_samples * n_features * n_outputs > ``HOLDOUT_WORK``), where one stratified held-out split
   (1/cv of each class) is used instead: K-fold would cost K times more for a C choice that
   barely changes at that size;
3. the final model is fitted on the whole training split at the chosen C, warm-started.

DeCAF-style dropout (``dropout=p``) is implemented as *data augmentation*: the training rows are
replaced by ``dropout_copies`` copies in which every feature is zeroed with probability p and the
survivors scaled by 1/(1-p) (applied after L2 normalisation, before standardisation, i.e. on the
activations, as in the paper). The copies are drawn once from ``random_state`` so the objective
stays deterministic and full-batch L-BFGS applies; it works the same for both backends.

``backend="auto"`` picks torch when n_samples * n_features >= ``TORCH_MIN_WORK`` (1e6, e.g.
250 images of a 4096-d layer), and for logistic regression also when n_features * n_classes >=
``TORCH_MIN_PARAMS`` (2e4; scipy's L-BFGS-B, behind sklearn's LogisticRegression, spends
milliseconds per iteration on that many parameters even for a handful of samples). Below that,
scikit-learn finishes in well under a second and torch's per-call overhead dominates.

``predict_proba``: softmax (sigmoid if binary) of the scores. For logistic regression these are
the model's probabilities; for the SVM they are *uncalibrated* scores mapped to [0, 1] that only
serve ranking (top-k).
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
from sklearn.base import BaseEstimator, ClassifierMixin
from sklearn.exceptions import ConvergenceWarning
from sklearn.utils.class_weight import compute_class_weight
from sklearn.utils.multiclass import check_classification_targets
from sklearn.utils.validation import check_is_fitted, validate_data

DEFAULT_CS: tuple[float, ...] = tuple(10.0**e for e in range(-4, 3))
FALLBACK_C = 1.0
TORCH_MIN_WORK = 1_000_000
TORCH_MIN_PARAMS = 20_000
HOLDOUT_WORK = 5e9
PATIENCE = 2
# Search fits stop early once the validation score changes by <= SETTLED between checks made
# every CHECK_EVERY L-BFGS iterations: precise optima do not change which C wins.
CHECK_EVERY = 10
SETTLED = 0.002


def mean_per_class_accuracy(y_true: np.ndarray, y_pred: np.ndarray) -> float:
    """Mean over the classes present in ``y_true`` of the fraction predicted correctly."""
    classes = np.unique(y_true)
    return float(np.mean([np.mean(y_pred[y_true == c] == c) for c in classes]))


def stratified_folds(y_idx: np.ndarray, n_folds: int, seed: int | None) -> np.ndarray:
    """Fold id per sample: each class is shuffled and dealt round-robin from a random offset."""
    rng = np.random.default_rng(seed)
    folds = np.empty(len(y_idx), dtype=np.int64)
    for c in np.unique(y_idx):
        members = np.flatnonzero(y_idx == c)
        rng.shuffle(members)
        folds[members] = (np.arange(len(members)) + rng.integers(n_folds)) % n_folds
    return folds


@dataclass
class _Fold:
    """One train/validation split of the C search with its warm-start states per C."""

    train: np.ndarray
    val: np.ndarray
    solver: Any = None
    states: dict[float, Any] = field(default_factory=dict)
    scores: dict[float, float] = field(default_factory=dict)


class LinearProbe(ClassifierMixin, BaseEstimator):
    """Linear SVM (one-vs-rest squared hinge) or multinomial logistic regression on features.

    Parameters follow scikit-learn's meaning of C (``C * sum(loss) + ||W||^2 / 2``; the intercept
    is not penalised by the torch backend). See the module docstring for the C search, dropout and
    the backend rule. Fitted attributes: ``classes_``, ``coef_`` (n_classes or 1, n_features, in
    standardised space), ``intercept_``, ``mean_``, ``scale_``, ``C_``, ``cv_results_``,
    ``backend_``, ``n_iter_``, ``n_features_in_``.
    """

    def __init__(
        self,
        classifier: Literal["svm", "logreg"] = "logreg",
        C: float | Literal["auto"] = "auto",
        Cs: Sequence[float] | None = None,
        cv: int = 3,
        search: Literal["auto", "kfold", "holdout"] = "auto",
        standardize: bool = True,
        l2_normalize: bool = False,
        class_weight: Literal["balanced"] | dict[Any, float] | None = None,
        dropout: float = 0.0,
        dropout_copies: int = 4,
        backend: Literal["auto", "sklearn", "torch"] = "auto",
        max_iter: int = 100,
        search_max_iter: int = 40,
        tol: float = 1e-4,
        device: str = "auto",
        dtype: Literal["float32", "float64"] = "float32",
        random_state: int | None = 0,
        progress: bool = False,
    ) -> None:
        self.classifier = classifier
        self.C = C
        self.Cs = Cs
        self.cv = cv
        self.search = search
        self.standardize = standardize
        self.l2_normalize = l2_normalize
        self.class_weight = class_weight
        self.dropout = dropout
        self.dropout_copies = dropout_copies
        self.backend = backend
        self.max_iter = max_iter
        self.search_max_iter = search_max_iter
        self.tol = tol
        self.device = device
        self.dtype = dtype
        self.random_state = random_state
        self.progress = progress

    # ------------------------------------------------------------------ fit
    def fit(self, X: Any, y: Any) -> LinearProbe:
        self._check_params()
        X, y = validate_data(self, X, y, dtype=[np.float32, np.float64], y_numeric=False)
        check_classification_targets(y)
        self.classes_, y_idx = np.unique(y, return_inverse=True)
        if len(self.classes_) < 2:
            raise ValueError(
                "LinearProbe needs samples of at least 2 classes; "
                f"got 1 class ({self.classes_[0]!r})"
            )
        prepared = self._normalize_rows(X)
        self._fit_scaler(prepared)
        sample_weight = self._sample_weight(y_idx)
        self.backend_ = self._resolve_backend(X.shape)
        engine = _make_engine(self, prepared, y_idx, sample_weight)

        init = None
        if self.C == "auto":
            self.C_, init, self.cv_results_ = self._search_C(engine, y_idx)
        else:
            self.C_, self.cv_results_ = float(self.C), None
        solution = engine.fit_final(self.C_, init)
        self.coef_ = solution.coef
        self.intercept_ = solution.intercept
        self.n_iter_ = solution.n_iter
        return self

    def _check_params(self) -> None:
        if self.classifier not in ("svm", "logreg"):
            raise ValueError(f"classifier must be 'svm' or 'logreg', got {self.classifier!r}")
        if self.backend not in ("auto", "sklearn", "torch"):
            raise ValueError(f"backend must be 'auto', 'sklearn' or 'torch', got {self.backend!r}")
        if self.search not in ("auto", "kfold", "holdout"):
            raise ValueError(f"search must be 'auto', 'kfold' or 'holdout', got {self.search!r}")
        if self.C != "auto" and not (isinstance(self.C, int | float) and self.C > 0):
            raise ValueError(f"C must be 'auto' or a positive number, got {self.C!r}")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {self.dropout!r}")
        if not (self.class_weight in (None, "balanced") or isinstance(self.class_weight, dict)):
            raise ValueError(
                f"class_weight must be None, 'balanced' or a dict, got {self.class_weight!r}"
            )
        if self.dtype not in ("float32", "float64"):
            raise ValueError(f"dtype must be 'float32' or 'float64', got {self.dtype!r}")

    def _normalize_rows(self, X: np.ndarray) -> np.ndarray:
        if not self.l2_normalize:
            return X
        norms = np.linalg.norm(X, axis=1, keepdims=True)
        return X / np.maximum(norms, np.finfo(X.dtype).tiny)

    def _fit_scaler(self, prepared: np.ndarray) -> None:
        d = prepared.shape[1]
        if not self.standardize:
            self.mean_, self.scale_ = np.zeros(d), np.ones(d)
            return
        self.mean_ = prepared.mean(axis=0, dtype=np.float64)
        std = prepared.std(axis=0, dtype=np.float64)
        # Constant features (dead ReLUs) keep scale 1 instead of dividing by ~0.
        self.scale_ = np.where(std > 1e-12 * max(1.0, float(np.abs(self.mean_).max())), std, 1.0)

    def _standardize(self, prepared: np.ndarray, dtype: Any) -> np.ndarray:
        out = np.asarray(prepared, dtype=dtype) - self.mean_.astype(dtype)
        out /= self.scale_.astype(dtype)
        return out

    def _sample_weight(self, y_idx: np.ndarray) -> np.ndarray | None:
        if self.class_weight is None:
            return None
        if isinstance(self.class_weight, dict):
            # Classes missing from the dict weigh 1, as in scikit-learn.
            per_class = np.array([float(self.class_weight.get(c, 1.0)) for c in self.classes_])
        else:
            per_class = compute_class_weight(
                "balanced", classes=np.arange(len(self.classes_)), y=y_idx
            )
        return per_class[y_idx]

    def _resolve_backend(self, shape: tuple[int, int]) -> str:
        if self.backend != "auto":
            return self.backend
        if shape[0] * shape[1] >= TORCH_MIN_WORK:
            return "torch"
        # scipy's L-BFGS-B bookkeeping (behind LogisticRegression) costs ~ms per iteration per
        # 10k parameters whatever n is; torch's does not.
        n_params = shape[1] * len(self.classes_)
        return (
            "torch" if self.classifier == "logreg" and n_params >= TORCH_MIN_PARAMS else "sklearn"
        )

    # ------------------------------------------------------------ C search
    def _search_C(self, engine: _Engine, y_idx: np.ndarray) -> tuple[float, Any, dict | None]:
        min_count = int(np.bincount(y_idx).min())
        n_folds = min(int(self.cv), min_count)
        if n_folds < 2:
            warnings.warn(
                f"C='auto' needs at least 2 training samples per class for cross-validation "
                f"(smallest class has {min_count}); using C={FALLBACK_C}",
                UserWarning,
                stacklevel=3,
            )
            return FALLBACK_C, None, None
        folds = self._make_folds(engine, y_idx, n_folds)
        grid = sorted(float(c) for c in (self.Cs if self.Cs is not None else DEFAULT_CS))
        with _progress_bar(self.progress, len(grid) + 2, "C search") as bar:
            self._walk_grid(engine, folds, grid, bar)
            self._refine(engine, folds, grid, bar)
        tried = sorted(folds[0].scores)
        mean_scores = [float(np.mean([f.scores[c] for f in folds])) for c in tried]
        best = tried[int(np.argmax(mean_scores))]  # argmax takes the first: smallest C on ties
        results = {
            "Cs": tried,
            "mean_score": mean_scores,
            "scoring": "mean_per_class_accuracy",
            "n_folds": len(folds),
            "search": "holdout" if len(folds) == 1 else "kfold",
        }
        return best, folds[0].states.get(best), results

    def _make_folds(self, engine: _Engine, y_idx: np.ndarray, n_folds: int) -> list[_Fold]:
        fold_id = stratified_folds(y_idx, n_folds, self.random_state)
        work = len(y_idx) * len(self.mean_) * (1 if len(self.classes_) == 2 else len(self.classes_))
        holdout = self.search == "holdout" or (self.search == "auto" and work > HOLDOUT_WORK)
        folds = []
        for k in range(1 if holdout else n_folds):
            fold = _Fold(train=np.flatnonzero(fold_id != k), val=np.flatnonzero(fold_id == k))
            fold.solver = engine.path_solver(fold.train)
            folds.append(fold)
        return folds

    def _score_all(
        self, engine: _Engine, folds: list[_Fold], C: float, start: float | None
    ) -> float:
        for fold in folds:
            init = fold.states.get(start) if start is not None else None
            state = fold.solver.fit(C, init)
            fold.states[C] = state
            fold.scores[C] = engine.score(state, fold.val)
        return float(np.mean([f.scores[C] for f in folds]))

    def _walk_grid(self, engine: _Engine, folds: list[_Fold], grid: list[float], bar: Any) -> None:
        best, since_best, previous = -1.0, 0, None
        for C in grid:
            score = self._score_all(engine, folds, C, previous)
            bar.update(1)
            bar.set_postfix(C=f"{C:.3g}", score=f"{score:.4f}")
            previous = C
            if score > best:
                best, since_best = score, 0
            else:
                since_best += 1
                if since_best >= PATIENCE:
                    break

    def _refine(self, engine: _Engine, folds: list[_Fold], grid: list[float], bar: Any) -> None:
        tried = sorted(folds[0].scores)
        means = [np.mean([f.scores[c] for f in folds]) for c in tried]
        best = tried[int(np.argmax(means))]
        i = grid.index(best)
        for j in (i - 1, i + 1):
            if 0 <= j < len(grid) and grid[j] in folds[0].scores:
                mid = math.sqrt(best * grid[j])
                self._score_all(engine, folds, mid, min(best, grid[j]))
                bar.update(1)

    # ------------------------------------------------------------ predict
    def _scores(self, X: Any) -> np.ndarray:
        check_is_fitted(self, "coef_")
        X = validate_data(self, X, reset=False, dtype=[np.float64, np.float32])
        Z = self._standardize(self._normalize_rows(X), np.float64)
        return Z @ self.coef_.T + self.intercept_

    def decision_function(self, X: Any) -> np.ndarray:
        scores = self._scores(X)
        return scores[:, 0] if scores.shape[1] == 1 else scores

    def predict(self, X: Any) -> np.ndarray:
        scores = self._scores(X)
        if scores.shape[1] == 1:
            return self.classes_[(scores[:, 0] > 0).astype(np.int64)]
        return self.classes_[np.argmax(scores, axis=1)]

    def predict_proba(self, X: Any) -> np.ndarray:
        scores = self._scores(X)
        if scores.shape[1] == 1:
            positive = 1.0 / (1.0 + np.exp(-scores[:, 0]))
            return np.column_stack([1.0 - positive, positive])
        scores = scores - scores.max(axis=1, keepdims=True)
        expo = np.exp(scores)
        return expo / expo.sum(axis=1, keepdims=True)

    def predict_log_proba(self, X: Any) -> np.ndarray:
        with np.errstate(divide="ignore"):
            return np.log(self.predict_proba(X))

    def __sklearn_tags__(self) -> Any:
        tags = super().__sklearn_tags__()
        tags.input_tags.sparse = False
        return tags


# ---------------------------------------------------------------- engines
class _Engine:
    """Backend-specific fitting; states are opaque warm-start objects."""

    def __init__(
        self,
        probe: LinearProbe,
        prepared: np.ndarray,
        y_idx: np.ndarray,
        sample_weight: np.ndarray | None,
    ) -> None:
        self.probe = probe
        self.prepared = prepared
        self.y_idx = y_idx
        self.sample_weight = sample_weight
        self.n_classes = len(probe.classes_)

    def training_rows(self, rows: np.ndarray | None) -> tuple[np.ndarray, np.ndarray, Any]:
        """Standardised (and, with dropout, augmented) training matrix for ``rows``."""
        probe = self.probe
        dtype = np.float64 if probe.dtype == "float64" else np.float32
        prepared = self.prepared if rows is None else self.prepared[rows]
        y = self.y_idx if rows is None else self.y_idx[rows]
        sw = (
            None
            if self.sample_weight is None
            else (self.sample_weight if rows is None else self.sample_weight[rows])
        )
        if probe.dropout > 0:
            prepared, y, sw = _dropout_copies(
                prepared, y, sw, probe.dropout, probe.dropout_copies, probe.random_state
            )
        return probe._standardize(prepared, dtype), y, sw

    def path_solver(self, rows: np.ndarray) -> Any:
        raise NotImplementedError

    def score(self, state: Any, rows: np.ndarray) -> float:
        raise NotImplementedError

    def fit_final(self, C: float, init: Any) -> Any:
        raise NotImplementedError


def _dropout_copies(
    X: np.ndarray, y: np.ndarray, sw: np.ndarray | None, p: float, copies: int, seed: int | None
) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    rng = np.random.default_rng(seed)
    keep_scale = np.asarray(1.0 / (1.0 - p), dtype=X.dtype)
    noisy = np.empty((copies * X.shape[0], X.shape[1]), dtype=X.dtype)
    for c in range(max(1, copies)):
        block = noisy[c * X.shape[0] : (c + 1) * X.shape[0]]
        np.multiply(X, rng.random(X.shape, dtype=np.float32) >= p, out=block)
        block *= keep_scale
    return noisy, np.tile(y, copies), None if sw is None else np.tile(sw, copies)


class _TorchEngine(_Engine):
    def __init__(self, *args: Any) -> None:
        super().__init__(*args)
        import torch

        from classifiers import torch_solver

        self.torch = torch
        self.ts = torch_solver
        self.device = torch_solver.resolve_device(self.probe.device)
        self.tdtype = torch.float64 if self.probe.dtype == "float64" else torch.float32

    def _problem(self, rows: np.ndarray | None) -> Any:
        X, y, sw = self.training_rows(rows)
        torch = self.torch
        return self.ts.TorchProblem(
            torch.from_numpy(np.ascontiguousarray(X)).to(self.device, self.tdtype),
            torch.from_numpy(y.astype(np.int64)).to(self.device),
            self.n_classes,
            self.probe.classifier,
            None if sw is None else torch.from_numpy(sw).to(self.device, self.tdtype),
        )

    def path_solver(self, rows: np.ndarray) -> Any:
        engine, problem = self, self._problem(rows)

        val_rows = np.setdiff1d(np.arange(len(self.y_idx)), rows)

        class _Path:
            def fit(self, C: float, init: Any) -> Any:
                # Only the validation score matters here: stop once it no longer moves.
                history: list[float] = []

                def settled(W: Any, b: Any) -> bool:
                    history.append(engine.score((W, b), val_rows))
                    return len(history) > 1 and abs(history[-1] - history[-2]) <= SETTLED

                W, b, _ = engine.ts.fit_lbfgs(
                    problem,
                    C,
                    init=init,
                    max_iter=engine.probe.search_max_iter,
                    tol=engine.probe.tol,
                    check_every=CHECK_EVERY,
                    should_stop=settled,
                )
                return (W, b)

        return _Path()

    def score(self, state: Any, rows: np.ndarray) -> float:
        W, b = state
        Z = self.probe._standardize(
            self.prepared[rows], np.float32 if self.tdtype == self.torch.float32 else np.float64
        )
        scores = self.torch.addmm(b, self.torch.from_numpy(Z).to(self.device, self.tdtype), W)
        pred = (scores[:, 0] > 0).long() if scores.shape[1] == 1 else scores.argmax(dim=1)
        return mean_per_class_accuracy(self.y_idx[rows], pred.cpu().numpy())

    def fit_final(self, C: float, init: Any) -> Any:
        problem = self._problem(None)
        W, b, n_iter = self.ts.fit_lbfgs(
            problem, C, init=init, max_iter=self.probe.max_iter, tol=self.probe.tol
        )
        del problem
        return self.ts.to_solution(W, b, n_iter)


class _SklearnEngine(_Engine):
    def _estimator(self, C: float, warm: bool) -> Any:
        probe = self.probe
        if probe.classifier == "logreg":
            from sklearn.linear_model import LogisticRegression

            return LogisticRegression(C=C, max_iter=probe.max_iter, tol=probe.tol, warm_start=warm)
        from sklearn.svm import LinearSVC

        # liblinear penalises the intercept as a weight on a constant feature; scaling that
        # feature by 10 makes the penalty ~100x weaker, i.e. nearly the torch backend's objective.
        return LinearSVC(
            intercept_scaling=10.0,
            C=C,
            loss="squared_hinge",
            dual="auto",
            max_iter=max(1000, probe.max_iter),
            tol=probe.tol,
            random_state=probe.random_state,
        )

    def _fit(self, est: Any, X: np.ndarray, y: np.ndarray, sw: np.ndarray | None) -> Any:
        with warnings.catch_warnings():
            # Early-stopped fits during the search are expected; the final fit still warns.
            warnings.simplefilter("ignore", ConvergenceWarning)
            return est.fit(X, y, sample_weight=sw)

    def path_solver(self, rows: np.ndarray) -> Any:
        engine = self
        X, y, sw = self.training_rows(rows)

        class _Path:
            est = self._estimator(1.0, warm=True)

            def fit(self, C: float, init: Any) -> Any:
                # LogisticRegression warm-starts from its own previous C via warm_start=True.
                self.est.set_params(C=C)
                engine._fit(self.est, X, y, sw)
                return _sklearn_solution(self.est, engine.n_classes)

        return _Path()

    def score(self, state: Any, rows: np.ndarray) -> float:
        Z = self.probe._standardize(self.prepared[rows], np.float64)
        scores = Z @ state.coef.T + state.intercept
        pred = (scores[:, 0] > 0).astype(np.int64) if scores.shape[1] == 1 else scores.argmax(1)
        return mean_per_class_accuracy(self.y_idx[rows], pred)

    def fit_final(self, C: float, init: Any) -> Any:
        X, y, sw = self.training_rows(None)
        est = self._estimator(C, warm=False)
        est.fit(X, y, sample_weight=sw)
        return _sklearn_solution(est, self.n_classes)


def _sklearn_solution(est: Any, n_classes: int) -> Any:
    from classifiers.torch_solver import LinearSolution

    coef = np.asarray(est.coef_, dtype=np.float64).reshape(-1, est.coef_.shape[-1])
    intercept = np.asarray(est.intercept_, dtype=np.float64).reshape(-1)
    if n_classes > 2 and coef.shape[0] == 1:  # pragma: no cover - sklearn always returns K rows
        raise RuntimeError("unexpected binary coefficients for a multiclass problem")
    n_iter = int(np.max(np.atleast_1d(getattr(est, "n_iter_", 1))))
    return LinearSolution(coef=coef.copy(), intercept=intercept.copy(), n_iter=max(n_iter, 1))


def _make_engine(
    probe: LinearProbe, prepared: np.ndarray, y_idx: np.ndarray, sample_weight: np.ndarray | None
) -> _Engine:
    cls = _TorchEngine if probe.backend_ == "torch" else _SklearnEngine
    return cls(probe, prepared, y_idx, sample_weight)


class _NullBar:
    def update(self, n: int = 1) -> None:
        pass

    def set_postfix(self, **kwargs: Any) -> None:
        pass

    def __enter__(self) -> _NullBar:
        return self

    def __exit__(self, *exc: object) -> None:
        pass


def _progress_bar(enabled: bool, total: int, desc: str) -> Any:
    if not enabled:
        return _NullBar()
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, leave=False, file=None)
