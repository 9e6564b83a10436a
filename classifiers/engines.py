"""Backend-specific fitting for :class:`~classifiers.probe.LinearProbe`: torch L-BFGS or
scikit-learn (LogisticRegression / LinearSVC), behind one small interface.

An engine holds the prepared (normalised, not yet standardised) training rows of one ``fit`` and
offers what the C search needs: a warm-startable path solver per fold, a validation score, and the
final fit. States passed between calls are opaque warm-start objects.
"""

from __future__ import annotations

import warnings
from typing import TYPE_CHECKING, Any

import numpy as np
from sklearn.exceptions import ConvergenceWarning

from classifiers.metrics import mean_per_class_accuracy

if TYPE_CHECKING:
    from classifiers.probe import LinearProbe

# Search fits stop early once the validation score changes by <= SETTLED between checks made
# every CHECK_EVERY L-BFGS iterations: precise optima do not change which C wins.
CHECK_EVERY = 10
SETTLED = 0.002


class Engine:
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
            prepared, y, sw = dropout_copies(
                prepared, y, sw, probe.dropout, probe.dropout_copies, probe.random_state
            )
        return probe._standardize(prepared, dtype), y, sw

    def path_solver(self, rows: np.ndarray) -> Any:
        raise NotImplementedError

    def score(self, state: Any, rows: np.ndarray) -> float:
        raise NotImplementedError

    def fit_final(self, C: float, init: Any) -> Any:
        raise NotImplementedError


def dropout_copies(
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


class _TorchEngine(Engine):
    def __init__(self, *args: Any) -> None:
        super().__init__(*args)
        import torch

        from classifiers import torch_solver
        from featurizer.precision import resolve_device  # one definition of "auto"

        self.torch = torch
        self.ts = torch_solver
        self.device = resolve_device(self.probe.device)
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


class _SklearnEngine(Engine):
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


def make_engine(
    probe: LinearProbe, prepared: np.ndarray, y_idx: np.ndarray, sample_weight: np.ndarray | None
) -> Engine:
    cls = _TorchEngine if probe.backend_ == "torch" else _SklearnEngine
    return cls(probe, prepared, y_idx, sample_weight)
