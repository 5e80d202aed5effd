"""Threshold search on score sets built so that the answer is known."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.stats import beta

from inspector.calibration.threshold import (
    below,
    cost_threshold,
    odds_margin,
    operating_point,
    recall_threshold,
    uncertain_band,
)


def _allowed_misses(n: int, target: float, confidence: float) -> int:
    """The most misses whose exact lower bound still meets the target, straight from scipy."""
    return max(k for k in range(n) if beta.ppf(1 - confidence, n - k, k + 1) >= target)


def test_below_rejects_its_score_even_after_rounding() -> None:
    for s in (0.3, 0.1234565, 0.999999, 1e-7, 0.5):
        t = below(s)
        assert t <= s and t <= round(s, 6) and t == round(t, 6)
        assert s - t < 3e-6


def test_recall_bound_picks_the_highest_threshold_that_meets_the_target() -> None:
    ng = np.arange(1, 401) / 400.0  # 400 NG with distinct scores 0.0025 .. 1.0
    target, conf = 0.98, 0.95
    k = _allowed_misses(400, target, conf)
    assert k > 0  # the data affords some misses: the threshold is not simply the lowest NG score
    choice = recall_threshold(ng, target, conf, margin=0.5)
    assert choice.demonstrated and choice.allowed_misses == k
    assert choice.threshold == below(ng[k])
    at = operating_point(ng, np.array([0.0]), choice.threshold, conf)
    assert at.ng_missed == k and at.ng_recall_lower >= target
    # One step higher (the next NG score) misses one more, and the bound falls short: this is the highest.
    higher = operating_point(ng, np.array([0.0]), below(ng[k + 1]), conf)
    assert higher.ng_missed == k + 1 and higher.ng_recall_lower < target


def test_not_demonstrated_uses_the_point_estimate_minus_the_odds_margin() -> None:
    ng = np.linspace(0.6, 0.99, 50)  # 50 NG cannot show 99.5% at 95%
    choice = recall_threshold(ng, 0.995, 0.95, margin=0.5)
    assert not choice.demonstrated and choice.allowed_misses == -1
    assert choice.needed_zero_miss == 598
    assert choice.point_threshold == below(0.6)  # 99.5% of 50 allows no miss: the lowest NG score
    assert choice.threshold == below(odds_margin(0.6, 0.5))
    assert odds_margin(0.6, 0.5) == pytest.approx(0.75 / 1.75)  # odds 1.5 halved to 0.75
    assert odds_margin(0.6, 0.0) == 0.6 and 0.0 < odds_margin(1.0, 0.5) < 1.0


def test_cost_optimum_on_a_hand_computed_case() -> None:
    ng, ok = np.array([0.3, 0.6, 0.9]), np.array([0.1, 0.2, 0.7])
    # An escape costs 10, a false reject 1, half the parts are NG: catching all NG (one OK rejected) costs 0.5/3 per part;
    # any higher threshold misses an NG for 0.5 * 10/3.
    best = cost_threshold(ng, ok, 10.0, 1.0, 0.5)
    assert 0.2 < best.threshold <= 0.3
    assert best.cost_per_part == pytest.approx(0.5 * 1 / 3)
    # When false rejects are dear, the optimum passes the OK at 0.7 and lets the NG at 0.3 and 0.6 escape.
    dear = cost_threshold(ng, ok, 1.0, 100.0, 0.5)
    assert 0.7 < dear.threshold <= 0.9
    assert dear.cost_per_part == pytest.approx(0.5 * 2 / 3)


def test_uncertain_band_auto_and_explicit() -> None:
    ok = np.r_[np.full(190, 0.05), np.linspace(0.3, 0.8, 10)]  # 10 of 200 OK score high
    ng = np.array([0.35, 0.5, 0.9, 0.95])
    auto = uncertain_band(ng, ok, low=0.3, high=None, max_false_reject=0.01, ng_rate=0.1)
    # At most 1% (2 of 200) of OK parts may be rejected above the band, and the band is as narrow as that allows.
    assert auto.high == below(np.sort(ok)[-2])
    assert auto.ok_rejected_above == 2
    explicit = uncertain_band(ng, ok, low=0.3, high=0.6, max_false_reject=0.01, ng_rate=0.1)
    assert (explicit.ng_in_band, explicit.ok_in_band) == (2, int(np.count_nonzero((ok >= 0.3) & (ok < 0.6))))
    assert explicit.expected_review_rate == pytest.approx(0.1 * 2 / 4 + 0.9 * explicit.ok_in_band / 200)
    # When the threshold already rejects few enough OK parts there is nothing to review.
    none = uncertain_band(ng, ok, low=0.85, high=None, max_false_reject=0.01, ng_rate=0.1)
    assert none.high == none.low and none.ng_in_band == none.ok_in_band == 0
