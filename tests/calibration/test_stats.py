"""Clopper-Pearson bounds against scipy and published values; the zero-miss sample count."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.stats import beta

from inspector.calibration.stats import (
    betainc,
    lower_bound,
    required_samples,
    upper_bound,
)


@pytest.mark.parametrize("n", [1, 2, 7, 50, 300, 1000, 20000])
@pytest.mark.parametrize("confidence", [0.5, 0.9, 0.95, 0.99, 0.999])
def test_bounds_match_scipy_beta_quantiles(n: int, confidence: float) -> None:
    k = np.unique(np.r_[0, 1, n - 1, n, np.random.default_rng(n).integers(0, n + 1, 25)])
    k = k[(k >= 0) & (k <= n)]
    ref_lower = np.where(k == 0, 0.0, beta.ppf(1 - confidence, np.maximum(k, 1), n - k + 1))
    ref_upper = np.where(k == n, 1.0, beta.ppf(confidence, k + 1, np.maximum(n - k, 1)))
    np.testing.assert_allclose(lower_bound(k, n, confidence), ref_lower, rtol=0, atol=1e-10)
    np.testing.assert_allclose(upper_bound(k, n, confidence), ref_upper, rtol=0, atol=1e-10)


def test_published_two_sided_interval_for_5_of_10() -> None:
    # Clopper & Pearson's exact 95% interval for 5 of 10, as tabulated (e.g. Agresti & Coull 1998): 0.1871 to 0.8129.
    assert float(lower_bound(5, 10, 0.975)) == pytest.approx(0.187086, abs=1e-6)
    assert float(upper_bound(5, 10, 0.975)) == pytest.approx(0.812914, abs=1e-6)
    # 0 of 10: the upper 95% one-sided bound is 1 - 0.05^(1/10) = 0.2589 ("rule of three" gives 0.3 for large n).
    assert float(upper_bound(0, 10, 0.95)) == pytest.approx(1 - 0.05 ** (1 / 10), abs=1e-12)


def test_all_caught_lower_bound_is_the_closed_form() -> None:
    for n in (1, 10, 50, 598):
        assert float(lower_bound(n, n, 0.95)) == pytest.approx(0.05 ** (1 / n), abs=1e-12)


def test_fifty_ng_cannot_show_995_at_95_and_598_can() -> None:
    assert float(lower_bound(50, 50, 0.95)) < 0.995  # the example
    assert required_samples(0.995, 0.95) == 598
    assert float(lower_bound(598, 598, 0.95)) >= 0.995 > float(lower_bound(597, 597, 0.95))
    for target, conf in ((0.99, 0.95), (0.999, 0.99), (0.9, 0.9)):
        n = required_samples(target, conf)
        assert float(lower_bound(n, n, conf)) >= target > float(lower_bound(n - 1, n - 1, conf))


def test_incomplete_beta_edges_and_symmetry() -> None:
    a, b = np.array([2.0, 30.0, 0.5]), np.array([5.0, 3.0, 0.5])
    x = np.array([0.3, 0.95, 0.5])
    np.testing.assert_allclose(betainc(a, b, x), beta.cdf(x, a, b), atol=1e-12)
    np.testing.assert_allclose(betainc(a, b, x) + betainc(b, a, 1 - x), 1.0, atol=1e-12)
    assert float(betainc(2.0, 3.0, 0.0)) == 0.0 and float(betainc(2.0, 3.0, 1.0)) == 1.0
