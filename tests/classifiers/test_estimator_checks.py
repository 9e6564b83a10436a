"""scikit-learn's estimator contract, run on both backends of LinearProbe."""

from __future__ import annotations

from sklearn.utils.estimator_checks import parametrize_with_checks

from classifiers import LinearProbe

# Checks LinearProbe is known to fail, and why. Kept empty on purpose when none fail: the
# xfail mechanism would hide a regression, so every entry must carry a reason.
EXPECTED_FAILED_CHECKS: dict[str, str] = {}


def _expected_failures(estimator: LinearProbe) -> dict[str, str]:
    return EXPECTED_FAILED_CHECKS


@parametrize_with_checks(
    [
        # C="auto" (cross-validated C; sklearn backend on these small inputs), short grid for speed
        LinearProbe(Cs=(0.1, 10.0)),
        LinearProbe(classifier="svm", backend="torch", C=1.0),
        LinearProbe(backend="torch", C=1.0, class_weight="balanced", dropout=0.1),
    ],
    expected_failed_checks=_expected_failures,
)
def test_sklearn_estimator_contract(estimator, check):
    check(estimator)
