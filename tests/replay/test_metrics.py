"""Replay's figures on score sets whose answers are known."""

from __future__ import annotations

import pytest

from inspector.config import threshold_problem
from inspector.replay.metrics import (
    Outcome,
    binary_metrics,
    frame_metrics,
    roc_auc,
    roc_curve,
    threshold_at_recall,
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
    assert m["per_defect"] == {"blowhole": {"n": 1, "rejected": 0, "recall": 0.0, "faulted": 0, "scored_recall": 0.0},
                               "crack": {"n": 1, "rejected": 1, "recall": 1.0, "faulted": 0, "scored_recall": 1.0}}


def _audit_set() -> list[Outcome]:
    """40 unreadable NG, 20 scored NG of which 15 caught, 10 OK with 2 unreadable and 1 scored false reject."""
    ng = [_o(None, "ng", "crack") for _ in range(40)] + [_o(0.9, "ng", "crack") for _ in range(15)] + [_o(0.1, "ng", "dent") for _ in range(5)]
    ok = [_o(None, "ok") for _ in range(2)] + [_o(0.7, "ok")] + [_o(0.1, "ok") for _ in range(7)]
    return ng + ok


def test_faulted_frames_are_caught_on_the_line_but_no_evidence_of_the_model() -> None:
    m = frame_metrics(_audit_set())
    # The line rejects every faulted part: its figures count them.
    assert (m["n_ng"], m["escapes"], m["ng_recall"]) == (60, 5, 55 / 60)
    assert (m["n_ok"], m["false_rejects"], m["false_reject_rate"]) == (10, 3, 0.3)
    # The model scored 20 NG and caught 15; it scored 8 OK and rejected 1.
    assert (m["ng_faulted"], m["ok_faulted"], m["faulted"]) == (40, 2, 42)
    assert (m["scored_n_ng"], m["scored_ng_recall"]) == (20, 0.75)
    assert (m["scored_n_ok"], m["scored_false_reject_rate"]) == (8, 1 / 8)
    assert m["per_defect"]["crack"] == {"n": 55, "rejected": 55, "recall": 1.0, "faulted": 40, "scored_recall": 1.0}
    assert m["per_defect"]["dent"] == {"n": 5, "rejected": 0, "recall": 0.0, "faulted": 0, "scored_recall": 0.0}
    row = what_if(_audit_set(), [0.5])[0]
    assert (row["ng_recall"], row["scored_ng_recall"], row["ng_faulted"]) == (55 / 60, 0.75, 40)
    assert row["scored_false_reject_rate"] == 1 / 8


def test_roi_figures_leave_faulted_frames_out_of_the_scored_recall() -> None:
    from inspector.replay.metrics import roi_metrics

    def frame(scores: tuple[float, float] | None, labels: tuple[str, str]) -> Outcome:
        rois = (("a", scores[0]), ("b", scores[1])) if scores else ()
        verdicts = tuple((n, "reject" if v >= 0.5 else "pass") for n, v in rois)
        return Outcome(frame_id="f", source="f.png", verdict="reject" if scores is None or max(scores) >= 0.5 else "pass",
                       reason=None, score=max(scores) if scores else None, roi_scores=rois, roi_verdicts=verdicts, label="ng",
                       defect=None, roi_labels=(("a", labels[0]), ("b", labels[1])), latency=(1.0, 1.0, 1.0, 3.0))

    r = roi_metrics([frame(None, ("ng", "ok")), frame(None, ("ng", "ng")), frame((0.9, 0.1), ("ng", "ng")), frame((0.1, 0.1), ("ok", "ok"))])
    assert (r["n_ng"], r["ng_recall"], r["ng_faulted"], r["ok_faulted"]) == (5, 0.8, 3, 1)
    assert (r["scored_n_ng"], r["scored_ng_recall"]) == (2, 0.5)
    assert (r["per_roi"]["b"]["ng_faulted"], r["per_roi"]["b"]["scored_ng_recall"]) == (1, 0.0)


def test_ng_frames_without_a_defect_folder_get_their_own_row() -> None:
    m = frame_metrics([_o(0.9, "ng", "crack"), _o(0.2, "ng"), _o(None, "ng"), _o(0.1, "ok")])
    assert sum(row["n"] for row in m["per_defect"].values()) == m["n_ng"] == 3
    assert m["per_defect"]["(no defect folder)"] == {"n": 2, "rejected": 1, "recall": 0.5, "faulted": 1, "scored_recall": 0.0}


def test_what_if_reuses_scores_at_each_threshold() -> None:
    outcomes = [_o(0.9, "ng"), _o(0.3, "ng"), _o(0.2, "ok"), _o(0.05, "ok")]
    rows = {r["threshold"]: r for r in what_if(outcomes, [0.1, 0.25, 0.5])}
    assert (rows[0.1]["ng_recall"], rows[0.1]["false_reject_rate"]) == (1.0, 0.5)
    assert (rows[0.25]["ng_recall"], rows[0.25]["false_reject_rate"]) == (1.0, 0.0)
    assert (rows[0.5]["ng_recall"], rows[0.5]["false_reject_rate"]) == (0.5, 0.0)
    assert what_if([_o(0.9, None)], [0.5]) == [{"threshold": 0.5, "reject_rate": 1.0}]


def test_the_threshold_at_a_recall_is_one_a_station_can_run() -> None:
    # A raw score as threshold (0.8734729...) has more decimals than any threshold may have; floored, it still catches its NG.
    scores, ng = [0.8734729290008545, 0.1, 0.95, 0.87347], [True, False, True, False]
    t = threshold_at_recall(scores, ng, 1.0)
    assert t == 0.873472 and threshold_problem(t) is None
    assert all(s >= t for s, positive in zip(scores, ng, strict=True) if positive)
