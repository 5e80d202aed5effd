"""Replay against a calibration record: does the recall reached on other labelled data lie inside the record's bound?"""

from __future__ import annotations

from typing import Any

from inspector.calibration.record import ALL_ROIS, CalibrationRecord
from inspector.calibration.stats import lower_bound, upper_bound


def verify(record: CalibrationRecord, frame_metrics: dict[str, Any] | None, roi_metrics: dict[str, Any] | None) -> dict[str, Any]:
    """Replay on other labelled data against the record: the recall reached there, and whether it is inside the calibration's bound.

    Only scored samples count (replay's `scored_` figures): the record bounds the model's recall, and a faulted frame
    (rejected without a score) says nothing about it. The faulted ones left out are counted beside.
    """
    conf = record.target.confidence
    unit = "ROIs" if record.dataset.unit == "roi" else "frames"
    figures = roi_metrics if record.dataset.unit == "roi" else frame_metrics
    if figures is None or not figures.get("n_ng"):
        return {"checked": False, "why": f"no labelled NG {unit} in this replay"}
    rows = {ALL_ROIS: figures} if ALL_ROIS in record.thresholds else {k: figures.get("per_roi", {}).get(k) for k in record.thresholds}
    out: dict[str, Any] = {"checked": True, "unit": record.dataset.unit, "confidence": conf, "target_recall": record.target.ng_recall, "scopes": {}}
    for name, m in rows.items():
        if not m or not m.get("n_ng"):
            out["scopes"][name] = {"checked": False, "why": "no labelled NG samples for this scope"}
            continue
        ng_faulted, ok_faulted, n_ng = int(m["ng_faulted"]), int(m["ok_faulted"]), int(m["scored_n_ng"])
        if n_ng == 0:
            out["scopes"][name] = {"checked": False, "ng_faulted_left_out": ng_faulted,
                                   "why": f"all {ng_faulted} labelled NG {unit} were faulted: none has a score to check"}
            continue
        claimed = record.thresholds[name].achieved
        recall = m["scored_ng_recall"]
        caught = n_ng - int(m["escapes"])  # a faulted sample is rejected: every escape was scored
        lower = float(lower_bound(caught, n_ng, conf))
        upper = float(upper_bound(caught, n_ng, conf))
        scope: dict[str, Any] = {
            "n_ng": n_ng,
            "ng_faulted_left_out": ng_faulted,
            "ok_faulted_left_out": ok_faulted,
            "ng_recall": round(recall, 6),
            # Each a one-sided bound at `confidence`: together a two-sided interval at 2 * confidence - 1.
            "ng_recall_bounds": [round(lower, 6), round(upper, 6)],
            "calibrated_lower_bound": claimed.ng_recall_lower,
            "inside_bound": recall >= claimed.ng_recall_lower,
            # Even a true recall at the calibrated bound would rarely give this few catches: the data contradicts the record.
            "contradicts_calibration": upper < claimed.ng_recall_lower,
        }
        n_ok = int(m["scored_n_ok"])
        if n_ok > 0:
            frr = m["scored_false_reject_rate"]
            scope.update(n_ok=n_ok, false_reject_rate=round(frr, 6), calibrated_false_reject_upper=claimed.false_reject_rate_upper,
                         false_reject_inside_bound=frr <= claimed.false_reject_rate_upper)
        out["scopes"][name] = scope
    checked = [s for s in out["scopes"].values() if s.get("checked", True)]
    out["inside_bound"] = all(s["inside_bound"] for s in checked) if checked else None
    out["contradicts_calibration"] = any(s["contradicts_calibration"] for s in checked)
    return out
