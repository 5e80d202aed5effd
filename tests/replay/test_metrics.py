"""Replay's figures on score sets whose answers are known."""

from __future__ import annotations

import pytest

from inspector.replay.metrics import (
    Outcome,
    binary_metrics,
    frame_metrics,
    roc_auc,
    roc_curve,
    what_if,
)


def _o(score: float | None, label: str | None, defect: str | None = None, threshold: float = 0.5) -> Outcome:
    verdict = "reject" if score is None or score >= threshold else "pass"
    return Outcome(
        frame_id="f", source="f.png", verdict=verdict, reason=None if verdict == "pass" else ("score" if score is not None else "truncated"),
        score=score, roi_scores=(("frame", score),) if score is not None else (), roi_verdicts=(("frame", verdict),) if score is not None else (),
        label=label, defect=defect, roi_labels=None, latency=(1.0, 1.0, 1.0, 3.0),
    )


@pytest.mark.parametrize(
    ("scores", "positives", "auc"),
    [
        ([0.9, 0.8, 0.1, 0.2], [True, True, False, False], 1.0),
        ([0.1, 0.2, 0.9, 0.8], [True, True, False, False], 0.0),
        ([0.8, 0.4, 0.5, 0.1], [True, True, False, False], 0.75),  # 3 of the 4 ng/ok pairs ordered right
        ([0.5, 0.5, 0.5, 0.5], [True, False, True, False], 0.5),  # ties count half
    ],
)
def test_roc_auc_known_answers(scores: list[float], positives: list[bool], auc: float) -> None:
    assert roc_auc(scores, positives) == pytest.approx(auc)


def test_roc_auc_needs_both_classes() -> None:
    assert roc_auc([0.1, 0.2], [True, True]) is None


def test_roc_curve_runs_from_nothing_rejected_to_everything_rejected() -> None:
    fpr, tpr, thr = roc_curve([0.8, 0.4, 0.5, 0.1], [True, True, False, False])
    assert fpr.tolist() == [0.0, 0.0, 0.5, 0.5, 1.0] and tpr.tolist() == [0.0, 0.5, 0.5, 1.0, 1.0]
    assert thr[1:].tolist() == [0.8, 0.5, 0.4, 0.1]


def test_binary_metrics_count_escapes_and_false_rejects() -> None:
    m = binary_metrics(rejected=[True, False, True, False, False], is_ng=[True, True, False, False, False])
    assert m["confusion"] == {"ng_rejected": 1, "ng_passed": 1, "ok_rejected": 1, "ok_passed": 2}
    assert m["ng_recall"] == 0.5 and m["escapes"] == 1
    assert m["false_reject_rate"] == pytest.approx(1 / 3) and m["precision"] == 0.5


def test_faulted_frames_count_as_rejects_and_stay_out_of_the_roc() -> None:
    outcomes = [_o(0.9, "ng", "crack"), _o(0.2, "ng", "blowhole"), _o(None, "ok"), _o(0.1, "ok")]
    m = frame_metrics(outcomes)
    assert m["faulted"] == 1 and m["false_rejects"] == 1 and m["escapes"] == 1
    assert m["roc_auc"] == 1.0  # 0.9, 0.2 vs 0.1: the faulted frame has no score to rank
    assert m["per_defect"] == {"blowhole": {"n": 1, "rejected": 0, "recall": 0.0}, "crack": {"n": 1, "rejected": 1, "recall": 1.0}}


def test_what_if_reuses_scores_at_each_threshold() -> None:
    outcomes = [_o(0.9, "ng"), _o(0.3, "ng"), _o(0.2, "ok"), _o(0.05, "ok")]
    rows = {r["threshold"]: r for r in what_if(outcomes, [0.1, 0.25, 0.5])}
    assert (rows[0.1]["ng_recall"], rows[0.1]["false_reject_rate"]) == (1.0, 0.5)
    assert (rows[0.25]["ng_recall"], rows[0.25]["false_reject_rate"]) == (1.0, 0.0)
    assert (rows[0.5]["ng_recall"], rows[0.5]["false_reject_rate"]) == (0.5, 0.0)
    assert what_if([_o(0.9, None)], [0.5]) == [{"threshold": 0.5, "reject_rate": 1.0}]
