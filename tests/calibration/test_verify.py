"""Replay figures against a record's bound: inside, below by chance, or contradicting it."""

from __future__ import annotations

from typing import Any

from inspector.calibration.verify import verify
from inspector.replay.metrics import Outcome, roi_metrics
from tests.conftest import calibration_record

RECORD = calibration_record({"*": (0.5, None)})  # claims NG recall >= 0.95 (lower bound) and FRR <= 0.02 (upper bound)


def _roi(i: int, label: str, rejected: bool, faulted: bool = False) -> Outcome:
    verdict = "reject" if rejected else "pass"
    return Outcome(
        frame_id=f"f{i}", source=f"f{i}.png", verdict=verdict, reason="decode" if faulted else None,
        score=None if faulted else (0.9 if rejected else 0.1),
        roi_scores=() if faulted else (("a", 0.9 if rejected else 0.1),), roi_verdicts=() if faulted else (("a", verdict),),
        label=label, defect=None, roi_labels=(("a", label),), latency=(0.0, 0.0, 0.0, 0.0),
    )


def _roi_metrics(n_ng: int, escapes: int, frr: float = 0.01, *, ng_faulted: int = 0) -> dict[str, Any]:
    """Replay's ROI figures, as replay computes them, for 100 OK ROIs and `n_ng` NG ROIs of which `ng_faulted` faulted."""
    kinds = ([("ng", True, True)] * ng_faulted + [("ng", False, False)] * escapes + [("ng", True, False)] * (n_ng - ng_faulted - escapes)
             + [("ok", True, False)] * round(100 * frr) + [("ok", False, False)] * (100 - round(100 * frr)))
    m = roi_metrics([_roi(i, *k) for i, k in enumerate(kinds)])
    assert m is not None
    return m


def test_recall_at_or_above_the_bound_is_inside() -> None:
    check = verify(RECORD, None, _roi_metrics(40, 1))  # 97.5%
    scope = check["scopes"]["*"]
    assert check["inside_bound"] and not check["contradicts_calibration"]
    assert scope["ng_recall"] == 0.975 and scope["false_reject_inside_bound"]


def test_a_small_shortfall_is_within_chance_and_a_large_one_contradicts() -> None:
    chance = verify(RECORD, None, _roi_metrics(20, 2))  # 90% of 20: upper bound ~0.97, still above 0.95
    assert chance["inside_bound"] is False and chance["contradicts_calibration"] is False
    bad = verify(RECORD, None, _roi_metrics(200, 30, frr=0.05))  # 85% of 200: upper bound ~0.89
    assert bad["inside_bound"] is False and bad["contradicts_calibration"] is True
    assert bad["scopes"]["*"]["ng_recall_bounds"][1] < 0.95 and not bad["scopes"]["*"]["false_reject_inside_bound"]


def test_nothing_to_check_without_labelled_ng() -> None:
    assert verify(RECORD, None, None) == {"checked": False, "why": "no labelled NG ROIs in this replay"}


def test_faulted_ng_are_left_out_of_the_check_and_counted() -> None:
    # 40 unreadable NG (rejected on the line) and 20 scored NG of which 15 caught: the model's recall is 75%, not 91.67%.
    check = verify(RECORD, None, _roi_metrics(60, 5, ng_faulted=40))
    scope = check["scopes"]["*"]
    assert (scope["n_ng"], scope["ng_faulted_left_out"], scope["ng_recall"]) == (20, 40, 0.75)
    assert check["inside_bound"] is False and check["contradicts_calibration"] is True
    only_faulted = verify(RECORD, None, _roi_metrics(40, 0, ng_faulted=40))["scopes"]["*"]
    assert only_faulted == {"checked": False, "ng_faulted_left_out": 40, "why": "all 40 labelled NG ROIs were faulted: none has a score to check"}
