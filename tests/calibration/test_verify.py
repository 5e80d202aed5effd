"""Replay figures against a record's bound: inside, below by chance, or contradicting it."""

from __future__ import annotations

from inspector.calibration.verify import verify
from tests.conftest import calibration_record

RECORD = calibration_record({"*": (0.5, None)})  # claims NG recall >= 0.95 (lower bound) and FRR <= 0.02 (upper bound)


def _roi_metrics(n_ng: int, escapes: int, frr: float = 0.01) -> dict:
    return {"n_ng": n_ng, "escapes": escapes, "n_ok": 100, "false_reject_rate": frr}


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
