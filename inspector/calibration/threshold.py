"""Threshold search on labelled scores: the recall bound, the expected-cost optimum, the uncertain band.

A part is rejected when its score >= threshold, so an NG sample is missed when its score < threshold. Every function
here works on plain score arrays; where they came from (images or replay's decisions) is the caller's business.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from inspector.calibration.stats import lower_bound, required_samples, upper_bound
from inspector.decision import SCORE_DECIMALS, floor_decimals

# Thresholds are kept to 6 decimals (as scores are published), a hair below the score they sit on.
_DECIMALS = SCORE_DECIMALS
_HAIR = 10.0**-_DECIMALS


def below(score: float) -> float:
    """A 6-decimal threshold that still rejects `score`, whether or not `score` went through decisions.jsonl first.

    The score is floored as decisions.jsonl floors it (and flooring twice changes nothing), so images and replay's
    decisions give the same threshold.
    """
    return max(0.0, round(floor_decimals(score, _DECIMALS) - _HAIR, _DECIMALS))


def meets(bound: float | np.ndarray, target: float) -> bool | np.ndarray:
    """bound >= target, allowing for the last-bit noise of the iterative beta quantile (a bound of exactly 0.5 stays 0.5)."""
    return np.asarray(bound) >= target - 1e-9


@dataclass(frozen=True, slots=True)
class Sample:
    """One calibration unit (a frame, or one ROI of a frame) with its score and label."""

    sample_id: str
    score: float
    ng: bool
    defect: str | None = None
    roi: str | None = None


@dataclass(frozen=True, slots=True)
class Operating:
    """What a threshold does to the calibration samples, with one-sided confidence bounds."""

    threshold: float
    ng_caught: int
    ng_missed: int
    ok_rejected: int
    ok_passed: int
    ng_recall: float
    ng_recall_lower: float
    false_reject_rate: float
    false_reject_rate_upper: float


def operating_point(ng: np.ndarray, ok: np.ndarray, threshold: float, confidence: float) -> Operating:
    """Counts, rates and bounds at `threshold` (NG recall: lower bound; false-reject rate: upper bound)."""
    caught = int(np.count_nonzero(ng >= threshold))
    rejected = int(np.count_nonzero(ok >= threshold))
    return Operating(
        threshold=threshold,
        ng_caught=caught,
        ng_missed=len(ng) - caught,
        ok_rejected=rejected,
        ok_passed=len(ok) - rejected,
        ng_recall=caught / len(ng) if len(ng) else float("nan"),
        ng_recall_lower=float(lower_bound(caught, len(ng), confidence)) if len(ng) else 0.0,
        false_reject_rate=rejected / len(ok) if len(ok) else float("nan"),
        false_reject_rate_upper=float(upper_bound(rejected, len(ok), confidence)) if len(ok) else 1.0,
    )


@dataclass(frozen=True, slots=True)
class RecallChoice:
    """The threshold chosen for a recall target, and how it was justified."""

    threshold: float
    demonstrated: bool  # the lower bound on NG recall at `threshold` meets the target
    allowed_misses: int  # NG samples below the threshold that the bound can afford (-1 when not demonstrated)
    point_threshold: float  # the highest threshold whose point-estimate recall meets the target
    limiting: int  # index (into the ascending NG scores) of the sample the threshold sits on
    needed_zero_miss: int  # NG samples needed, all caught, to demonstrate the target at this confidence


def odds_margin(threshold: float, margin: float) -> float:
    """`threshold` lowered so that its odds t/(1-t) shrink by the factor (1 - margin); stays inside (0, 1)."""
    if threshold <= 0.0 or margin <= 0.0:
        return threshold
    if threshold >= 1.0:
        return 1.0 - margin / (2.0 - margin)  # the limit of a very high threshold, kept finite
    odds = threshold / (1.0 - threshold) * (1.0 - margin)
    return odds / (1.0 + odds)


def recall_threshold(ng_sorted: np.ndarray, target: float, confidence: float, margin: float) -> RecallChoice:
    """The highest threshold whose Clopper-Pearson lower bound on NG recall meets `target`.

    When no threshold can (too few NG samples), the threshold of the point estimate, lowered by `margin` in odds.
    """
    n = len(ng_sorted)
    if n == 0:
        raise ValueError("recall_threshold needs at least one NG score")
    misses = np.arange(n + 1)
    bounds = lower_bound(n - misses, n, confidence)
    ok = np.nonzero(meets(bounds, target))[0]
    point_k = min(n - 1, math.floor(n * (1.0 - target) + 1e-9))  # misses the point estimate affords
    point_t = float(ng_sorted[point_k])
    needed = required_samples(target, confidence)
    if len(ok):
        k = min(int(ok[-1]), n - 1)
        return RecallChoice(below(float(ng_sorted[k])), True, k, below(point_t), k, needed)
    return RecallChoice(below(odds_margin(point_t, margin)), False, -1, below(point_t), point_k, needed)


def candidate_thresholds(scores: np.ndarray) -> np.ndarray:
    """Every threshold that changes a decision on these scores, ascending, plus 1.0."""
    return np.unique(np.r_[[below(float(s)) for s in np.unique(scores)], 1.0])


def counts_at(ng_sorted: np.ndarray, ok_sorted: np.ndarray, thresholds: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(NG caught, OK rejected) at each threshold, for ascending-sorted scores."""
    caught = len(ng_sorted) - np.searchsorted(ng_sorted, thresholds, side="left")
    rejected = len(ok_sorted) - np.searchsorted(ok_sorted, thresholds, side="left")
    return caught, rejected


@dataclass(frozen=True, slots=True)
class CostChoice:
    """The threshold with the lowest expected cost per part, and that cost beside the chosen one's."""

    threshold: float
    cost_per_part: float
    ng_rate: float  # the NG prevalence the cost assumes


def cost_threshold(ng_sorted: np.ndarray, ok_sorted: np.ndarray, cost_escape: float, cost_false_reject: float, ng_rate: float) -> CostChoice:
    """Minimize ng_rate * (1 - recall) * cost_escape + (1 - ng_rate) * FRR * cost_false_reject; ties go to the lower threshold."""
    grid = candidate_thresholds(np.r_[ng_sorted, ok_sorted])
    caught, rejected = counts_at(ng_sorted, ok_sorted, grid)
    cost = expected_cost(caught, rejected, len(ng_sorted), len(ok_sorted), cost_escape, cost_false_reject, ng_rate)
    best = int(np.argmin(cost))  # argmin takes the first minimum: the lowest (recall-biased) threshold
    return CostChoice(float(grid[best]), float(cost[best]), ng_rate)


def expected_cost(caught: np.ndarray | int, rejected: np.ndarray | int, n_ng: int, n_ok: int, cost_escape: float,
                  cost_false_reject: float, ng_rate: float) -> np.ndarray:
    """Expected cost per part from counts on the calibration set, weighted by the line's NG rate."""
    miss_rate = (n_ng - np.asarray(caught)) / n_ng
    frr = np.asarray(rejected) / n_ok
    return ng_rate * miss_rate * cost_escape + (1.0 - ng_rate) * frr * cost_false_reject


@dataclass(frozen=True, slots=True)
class Band:
    """The uncertain band [low, high): scores in it get verdict `uncertain`; at or above `high`, reject."""

    low: float
    high: float
    ng_in_band: int
    ok_in_band: int
    ok_rejected_above: int  # OK samples at or above `high`: the automatic false rejects that remain
    expected_review_rate: float  # fraction of all parts expected in the band, at the line's NG rate


def uncertain_band(ng: np.ndarray, ok: np.ndarray, low: float, high: float | None, max_false_reject: float, ng_rate: float) -> Band:
    """The band from `low` up to `high`, or (high=None) up to the lowest threshold whose false-reject rate <= `max_false_reject`."""
    if high is None:
        ok_sorted = np.sort(ok)
        grid = np.r_[low, candidate_thresholds(ok_sorted)]
        grid = grid[grid >= low]  # low first: when it already rejects few enough OK parts, no band is needed
        _, rejected = counts_at(np.empty(0), ok_sorted, grid)
        fits = np.nonzero(rejected <= max_false_reject * len(ok))[0]
        high = float(grid[fits[0]]) if len(fits) else 1.0
    high = max(high, low)
    ng_in = int(np.count_nonzero((ng >= low) & (ng < high)))
    ok_in = int(np.count_nonzero((ok >= low) & (ok < high)))
    rate = ng_rate * ng_in / max(len(ng), 1) + (1.0 - ng_rate) * ok_in / max(len(ok), 1)
    return Band(low, high, ng_in, ok_in, int(np.count_nonzero(ok >= high)), rate)


@dataclass(frozen=True, slots=True)
class Curves:
    """NG recall and false-reject rate with their one-sided bounds, at thresholds from 0 to 1 (for plots)."""

    thresholds: np.ndarray
    ng_recall: np.ndarray
    ng_recall_lower: np.ndarray
    false_reject_rate: np.ndarray
    false_reject_rate_upper: np.ndarray


def curves(ng: np.ndarray, ok: np.ndarray, confidence: float, points: int = 201) -> Curves:
    """Rates and bounds on an even threshold grid plus every score that changes them (at most `points` + scores)."""
    ng_sorted, ok_sorted = np.sort(ng), np.sort(ok)
    grid = np.unique(np.r_[np.linspace(0.0, 1.0, points), candidate_thresholds(np.r_[ng_sorted, ok_sorted])])
    if len(grid) > 4 * points:  # many distinct scores: the plot cannot show more than a few hundred steps
        grid = np.unique(np.r_[np.linspace(0.0, 1.0, points), np.quantile(grid, np.linspace(0.0, 1.0, 3 * points))])
    caught, rejected = counts_at(ng_sorted, ok_sorted, grid)
    n_ng, n_ok = len(ng_sorted), len(ok_sorted)
    return Curves(
        thresholds=grid,
        ng_recall=caught / n_ng,
        ng_recall_lower=_bounds(lower_bound, caught, n_ng, confidence),
        false_reject_rate=rejected / n_ok,
        false_reject_rate_upper=_bounds(upper_bound, rejected, n_ok, confidence),
    )


def _bounds(fn: object, counts: np.ndarray, n: int, confidence: float) -> np.ndarray:
    # Counts repeat along the grid: compute each distinct one once.
    distinct, inverse = np.unique(counts, return_inverse=True)
    return fn(distinct, n, confidence)[inverse]  # type: ignore[operator]


def by_group(samples: Sequence[Sample], key: str) -> dict[str, list[Sample]]:
    """Samples grouped by `defect` or `roi`, in name order; samples without that attribute are left out."""
    groups: dict[str, list[Sample]] = {}
    for s in samples:
        name = getattr(s, key)
        if name is not None:
            groups.setdefault(name, []).append(s)
    return dict(sorted(groups.items()))
