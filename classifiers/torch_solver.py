"""Full-batch L-BFGS solvers for L2-regularised linear classifiers in torch (CPU or CUDA).

Objective (the same minimiser as scikit-learn's LogisticRegression / LinearSVC, except that the
intercept is never penalised here):

    C * sum_i s_i * loss_i(W, b) + 0.5 * ||W||^2

divided by C * n for conditioning, i.e. ``mean_i s_i loss_i + ||W||^2 / (2 C n)``.

* ``logreg``: multinomial cross-entropy; binary problems use one logit (sigmoid), like sklearn.
* ``svm``: one-vs-rest squared hinge, all classes as the columns of one weight matrix, so one
  matrix product per evaluation serves every binary sub-problem.

Every evaluation costs two (n x d) @ (d x k) matrix products; the gradient comes from autograd
(X never requires grad, so only X^T @ G is computed).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch

Loss = Literal["logreg", "svm"]


@dataclass
class LinearSolution:
    """Weights in the (already standardised) input space; ``coef`` is (k, d), k = 1 if binary."""

    coef: np.ndarray
    intercept: np.ndarray
    n_iter: int


def n_outputs(n_classes: int) -> int:
    """Binary problems use one score column (like sklearn); multiclass one per class."""
    return 1 if n_classes == 2 else n_classes


class TorchProblem:
    """Data of one fit, moved to the device once and reused along a C path."""

    def __init__(
        self,
        X: torch.Tensor,
        y: torch.Tensor,
        n_classes: int,
        loss: Loss,
        sample_weight: torch.Tensor | None = None,
    ) -> None:
        self.X = X
        self.y = y
        self.n_classes = n_classes
        self.loss = loss
        self.k = n_outputs(n_classes)
        n = X.shape[0]
        self.sw = (
            sample_weight
            if sample_weight is not None
            else torch.ones(n, dtype=X.dtype, device=X.device)
        )
        self.targets = self._targets()

    def _targets(self) -> torch.Tensor:
        if self.loss == "logreg" and self.k > 1:
            return self.y
        # +-1 targets: one column for binary problems, one per class (one-vs-rest) otherwise.
        if self.k == 1:
            signs = (self.y == 1).to(self.X.dtype) * 2 - 1
            return signs[:, None]
        signs = -torch.ones(self.X.shape[0], self.k, dtype=self.X.dtype, device=self.X.device)
        signs[torch.arange(self.X.shape[0], device=self.X.device), self.y] = 1
        return signs

    def objective(self, W: torch.Tensor, b: torch.Tensor, alpha: float) -> torch.Tensor:
        scores = torch.addmm(b, self.X, W)
        if self.loss == "logreg":
            if self.k == 1:
                per_sample = torch.nn.functional.softplus(-self.targets[:, 0] * scores[:, 0])
            else:
                per_sample = (
                    torch.logsumexp(scores, dim=1) - scores.gather(1, self.y[:, None])[:, 0]
                )
        else:
            margins = torch.clamp(1 - self.targets * scores, min=0)
            per_sample = (margins * margins).sum(dim=1)
        data_term = (self.sw * per_sample).sum() / self.X.shape[0]
        return data_term + 0.5 * alpha * (W * W).sum()


def fit_lbfgs(
    problem: TorchProblem,
    C: float,
    *,
    init: tuple[torch.Tensor, torch.Tensor] | None = None,
    max_iter: int = 100,
    tol: float = 1e-4,
    history_size: int = 10,
    check_every: int | None = None,
    should_stop: Callable[[torch.Tensor, torch.Tensor], bool] | None = None,
) -> tuple[torch.Tensor, torch.Tensor, int]:
    """Minimise the objective for one C; ``init`` warm-starts from a previous solution.

    Stops when the largest absolute gradient entry falls below ``tol`` (the same criterion as
    scipy's L-BFGS-B ``gtol`` that sklearn uses), after ``max_iter`` iterations, or, when
    ``should_stop(W, b)`` is given, once it returns True at one of the checks made every
    ``check_every`` iterations (the L-BFGS history is kept across checks).
    """
    X = problem.X
    d = X.shape[1]
    alpha = 1.0 / (C * X.shape[0])
    if init is None:
        W = torch.zeros(d, problem.k, dtype=X.dtype, device=X.device)
        b = torch.zeros(problem.k, dtype=X.dtype, device=X.device)
    else:
        W, b = init[0].clone(), init[1].clone()
    W.requires_grad_(True)
    b.requires_grad_(True)
    chunk = max_iter if should_stop is None or not check_every else min(check_every, max_iter)
    optimizer = torch.optim.LBFGS(
        [W, b],
        lr=1.0,
        max_iter=chunk,
        max_eval=int(chunk * 1.5) + 5,
        tolerance_grad=tol,
        tolerance_change=1e-9,
        history_size=history_size,
        line_search_fn="strong_wolfe",
    )

    def closure() -> torch.Tensor:
        optimizer.zero_grad(set_to_none=False)
        value = problem.objective(W, b, alpha)
        value.backward()
        return value

    state = optimizer.state[W]
    done = 0
    while done < max_iter:
        optimizer.step(closure)
        ran = int(state.get("n_iter", 0)) - done
        done += ran
        # Fewer iterations than allowed means a tolerance was met: converged.
        if ran < chunk or (should_stop is not None and should_stop(W.detach(), b.detach())):
            break
    return W.detach(), b.detach(), max(done, 1)


def to_solution(W: torch.Tensor, b: torch.Tensor, n_iter: int) -> LinearSolution:
    return LinearSolution(
        coef=W.T.detach().to("cpu", torch.float64).numpy().copy(),
        intercept=b.detach().to("cpu", torch.float64).numpy().copy(),
        n_iter=n_iter,
    )
