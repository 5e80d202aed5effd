"""The accuracy gate's arithmetic on scores built so that the answer is known."""

from __future__ import annotations

import pytest

from inspector.gate import compare

LABELS = ["ok", "ok", "ok", "ng", "ng", "ng"]
REFERENCE = [0.1, 0.2, 0.3, 0.7, 0.8, 0.9]


def test_identical_scores_pass_with_nothing_lost() -> None:
    gate = compare(REFERENCE, REFERENCE, LABELS, threshold=0.5)
    assert gate.passed and gate.auc_drop == 0.0 and gate.flips == 0 and gate.problem() == "passed"


def test_one_flip_in_six_is_refused_naming_the_count() -> None:
    candidate = [0.1, 0.2, 0.55, 0.7, 0.8, 0.9]  # the OK at 0.3 now crosses 0.5; ranking unchanged
    gate = compare(REFERENCE, candidate, LABELS, threshold=0.5)
    assert gate.auc_drop == 0.0 and gate.flips == 1 and gate.flip_rate == pytest.approx(1 / 6)
    assert not gate.passed and "1 of 6 verdicts flip at threshold 0.5" in gate.problem()


def test_a_ranking_loss_is_an_auc_drop() -> None:
    candidate = [0.1, 0.2, 0.75, 0.7, 0.8, 0.9]  # one OK now outranks one NG: AUC 8/9; no verdict flips at 0.95
    gate = compare(REFERENCE, candidate, LABELS, threshold=0.95)
    assert gate.auc_drop == pytest.approx(1 - 8 / 9) and gate.flips == 0
    assert not gate.passed and "ROC-AUC drops by 0.1111 (1.0000 -> 0.8889)" in gate.problem()


def test_unreadable_frames_are_left_out_and_labels_are_required() -> None:
    gate = compare([None, *REFERENCE[1:]], REFERENCE, LABELS, threshold=0.5)
    assert gate.images == 5 and gate.passed
    unlabelled = compare(REFERENCE, REFERENCE, [None] * 6, threshold=0.5)
    assert not unlabelled.passed and "needs labelled OK and NG images" in unlabelled.problem()
