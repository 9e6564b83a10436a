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

Scores: ``scores(X)`` gives one score per class, and ``score_kind`` says what they are:
``"probability"`` for logistic regression (``predict_proba``), ``"margin"`` for the SVM
(``decision_function``; a binary SVM's margin m becomes ``[-m, m]``). ``predict_proba`` exists for
both, as scikit-learn expects, but for the SVM it is a softmax of margins: uncalibrated, only good
for ranking, which is why predictions report ``scores`` and ``score_kind`` instead.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from numbers import Integral, Real
from typing import Any, ClassVar, Literal

import numpy as np
from sklearn.base import BaseEstimator, ClassifierMixin
from sklearn.utils._param_validation import Interval, InvalidParameterError, StrOptions
from sklearn.utils.class_weight import compute_class_weight
from sklearn.utils.multiclass import check_classification_targets
from sklearn.utils.validation import check_is_fitted, validate_data

from classifiers.engines import Engine, make_engine
from classifiers.errors import ProbeError
from classifiers.metrics import mean_per_class_accuracy
from classifiers.options import (
    BACKENDS,
    CLASS_WEIGHT_MODES,
    CLASSIFIER_KINDS,
    FLOAT_DTYPES,
    SCORE_KIND_OF,
    SEARCH_MODES,
    Backend,
    ClassifierKind,
    ClassWeightMode,
    FloatDtype,
    ScoreKind,
    SearchMode,
)
from featurizer.progress import ProgressBar

__all__ = [
    "DEFAULT_CS",
    "PARAMETER_NAMES",
    "LinearProbe",
    "make_probe",
    "mean_per_class_accuracy",
    "stratified_folds",
]

DEFAULT_CS: tuple[float, ...] = tuple(10.0**e for e in range(-4, 3))
FALLBACK_C = 1.0
TORCH_MIN_WORK = 1_000_000
TORCH_MIN_PARAMS = 20_000
HOLDOUT_WORK = 5e9
PATIENCE = 2


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
    the backend rule. Allowed values are declared in :mod:`classifiers.options`.

    Parameters
    ----------
    classifier : {"logreg", "svm"}, default="logreg"
        Multinomial logistic regression, or one-vs-rest linear SVM (squared hinge).
    C : float > 0 or "auto", default="auto"
        Inverse regularisation strength; "auto" chooses it by cross-validation over ``Cs``.
    Cs : sequence of float > 0, default=None
        The grid for ``C="auto"`` (None: 1e-4 ... 1e2, a factor 10 apart).
    cv : int >= 2, default=3
        Folds of the C search (fewer when the smallest class is smaller).
    search : {"auto", "kfold", "holdout"}, default="auto"
        K-fold, one held-out split, or K-fold unless the problem is large.
    standardize : bool, default=True
        Centre and scale each feature by the training split's statistics.
    l2_normalize : bool, default=False
        L2-normalise each sample first.
    class_weight : "balanced", dict or None, default=None
        Per-class sample weights; classes missing from a dict weigh 1.
    dropout : float in [0, 1), default=0.0
        DeCAF-style feature dropout, applied as data augmentation.
    dropout_copies : int >= 1, default=4
        Noisy copies of the training rows when ``dropout > 0``.
    backend : {"auto", "sklearn", "torch"}, default="auto"
        Fitting engine; "auto" picks by problem size.
    max_iter, search_max_iter : int >= 1, default=100, 40
        Iterations of the final fit and of each fit during the C search.
    tol : float >= 0, default=1e-4
        Convergence tolerance.
    device : str, default="auto"
        Torch device of the torch backend ("auto": CUDA when present).
    dtype : {"float32", "float64"}, default="float32"
        Precision of the torch backend.
    random_state : int >= 0 or None, default=0
        Seed of the C-search folds and the dropout copies.
    progress : bool, default=False
        Show a progress bar of the C search on stderr.

    Attributes
    ----------
    classes_, coef_ (n_classes or 1, n_features; in standardised space), intercept_, mean_,
    scale_, C_, cv_results_, backend_, n_iter_, n_features_in_.
    """

    _parameter_constraints: ClassVar[dict[str, list[Any]]] = {
        "classifier": [StrOptions(set(CLASSIFIER_KINDS))],
        "C": [StrOptions({"auto"}), Interval(Real, 0, None, closed="neither")],
        "Cs": ["array-like", None],
        "cv": [Interval(Integral, 2, None, closed="left")],
        "search": [StrOptions(set(SEARCH_MODES))],
        "standardize": ["boolean"],
        "l2_normalize": ["boolean"],
        "class_weight": [StrOptions(set(CLASS_WEIGHT_MODES)), dict, None],
        "dropout": [Interval(Real, 0, 1, closed="left")],
        "dropout_copies": [Interval(Integral, 1, None, closed="left")],
        "backend": [StrOptions(set(BACKENDS))],
        "max_iter": [Interval(Integral, 1, None, closed="left")],
        "search_max_iter": [Interval(Integral, 1, None, closed="left")],
        "tol": [Interval(Real, 0, None, closed="left")],
        "device": [str],
        "dtype": [StrOptions(set(FLOAT_DTYPES))],
        "random_state": [Interval(Integral, 0, None, closed="left"), None],
        "progress": ["boolean"],
    }

    def __init__(
        self,
        *,
        classifier: ClassifierKind = "logreg",
        C: float | Literal["auto"] = "auto",
        Cs: Sequence[float] | None = None,
        cv: int = 3,
        search: SearchMode = "auto",
        standardize: bool = True,
        l2_normalize: bool = False,
        class_weight: ClassWeightMode | dict[Any, float] | None = None,
        dropout: float = 0.0,
        dropout_copies: int = 4,
        backend: Backend = "auto",
        max_iter: int = 100,
        search_max_iter: int = 40,
        tol: float = 1e-4,
        device: str = "auto",
        dtype: FloatDtype = "float32",
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

    @property
    def score_kind(self) -> ScoreKind:
        """What :meth:`scores` returns: ``"probability"`` (logreg) or ``"margin"`` (svm)."""
        try:
            return SCORE_KIND_OF[self.classifier]
        except KeyError:
            raise ProbeError(
                f"classifier must be one of {', '.join(CLASSIFIER_KINDS)}, got {self.classifier!r}"
            ) from None

    # ------------------------------------------------------------------ fit
    def fit(self, X: Any, y: Any) -> LinearProbe:
        self._check_params()
        X, y = validate_data(self, X, y, dtype=[np.float32, np.float64], y_numeric=False)
        check_classification_targets(y)
        self.classes_, y_idx = np.unique(y, return_inverse=True)
        if len(self.classes_) < 2:
            raise ProbeError(
                "LinearProbe needs samples of at least 2 classes; "
                f"got 1 class ({self.classes_[0]!r})"
            )
        prepared = self._normalize_rows(X)
        self._fit_scaler(prepared)
        sample_weight = self._sample_weight(y_idx)
        self.backend_ = self._resolve_backend(X.shape)
        engine = make_engine(self, prepared, y_idx, sample_weight)

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
        """The constraints table (InvalidParameterError, a ValueError), then the C grid."""
        self._validate_params()
        if self.Cs is not None and (len(self.Cs) == 0 or min(float(c) for c in self.Cs) <= 0):
            raise ProbeError(f"Cs must be positive numbers, got {list(self.Cs)!r}")

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
    def _search_C(self, engine: Engine, y_idx: np.ndarray) -> tuple[float, Any, dict | None]:
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
        with ProgressBar(enabled=self.progress, total=len(grid) + 2, desc="C search") as bar:
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

    def _make_folds(self, engine: Engine, y_idx: np.ndarray, n_folds: int) -> list[_Fold]:
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
        self, engine: Engine, folds: list[_Fold], C: float, start: float | None
    ) -> float:
        for fold in folds:
            init = fold.states.get(start) if start is not None else None
            state = fold.solver.fit(C, init)
            fold.states[C] = state
            fold.scores[C] = engine.score(state, fold.val)
        return float(np.mean([f.scores[C] for f in folds]))

    def _walk_grid(self, engine: Engine, folds: list[_Fold], grid: list[float], bar: Any) -> None:
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

    def _refine(self, engine: Engine, folds: list[_Fold], grid: list[float], bar: Any) -> None:
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
    def _linear_scores(self, X: Any) -> np.ndarray:
        check_is_fitted(self, "coef_")
        X = validate_data(self, X, reset=False, dtype=[np.float64, np.float32])
        Z = self._standardize(self._normalize_rows(X), np.float64)
        return Z @ self.coef_.T + self.intercept_

    def decision_function(self, X: Any) -> np.ndarray:
        scores = self._linear_scores(X)
        return scores[:, 0] if scores.shape[1] == 1 else scores

    def predict(self, X: Any) -> np.ndarray:
        scores = self._linear_scores(X)
        if scores.shape[1] == 1:
            return self.classes_[(scores[:, 0] > 0).astype(np.int64)]
        return self.classes_[np.argmax(scores, axis=1)]

    def predict_proba(self, X: Any) -> np.ndarray:
        scores = self._linear_scores(X)
        if scores.shape[1] == 1:
            positive = 1.0 / (1.0 + np.exp(-scores[:, 0]))
            return np.column_stack([1.0 - positive, positive])
        scores = scores - scores.max(axis=1, keepdims=True)
        expo = np.exp(scores)
        return expo / expo.sum(axis=1, keepdims=True)

    def scores(self, X: Any) -> np.ndarray:
        """Per-class scores, shape (n_samples, n_classes), columns in ``classes_`` order.

        Class probabilities for logistic regression, margins for the SVM (a binary SVM's margin m
        becomes ``[-m, m]``): see :attr:`score_kind`. Higher is more likely either way.
        """
        if self.score_kind == "probability":
            return self.predict_proba(X)
        margins = self.decision_function(X)
        return np.column_stack([-margins, margins]) if margins.ndim == 1 else margins

    def predict_log_proba(self, X: Any) -> np.ndarray:
        with np.errstate(divide="ignore"):
            return np.log(self.predict_proba(X))

    def __sklearn_tags__(self) -> Any:
        tags = super().__sklearn_tags__()
        tags.input_tags.sparse = False
        return tags


PARAMETER_NAMES: tuple[str, ...] = tuple(LinearProbe._parameter_constraints)


def make_probe(options: Mapping[str, Any]) -> LinearProbe:
    """A :class:`LinearProbe` from named options (CLI flags, a request body, saved parameters).

    Missing keys take LinearProbe's defaults. An unknown key or an invalid value is a
    :class:`ProbeError` naming it, so a typo never falls back to a default silently.
    """
    unknown = sorted(set(options) - set(PARAMETER_NAMES))
    if unknown:
        raise ProbeError(
            f"unknown probe option(s) {unknown}; LinearProbe takes {', '.join(PARAMETER_NAMES)}"
        )
    probe = LinearProbe(**options)
    try:
        probe._check_params()
    except InvalidParameterError as exc:
        raise ProbeError(f"invalid probe option: {exc}") from exc
    return probe
