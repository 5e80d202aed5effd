"""Replay against a calibration record: does the recall reached on other labelled data lie inside the record's bound?"""

from __future__ import annotations

from typing import Any

from inspector.calibration.record import ALL_ROIS, CalibrationRecord
from inspector.calibration.stats import lower_bound, upper_bound


def verify(record: CalibrationRecord, frame_metrics: dict[str, Any] | None, roi_metrics: dict[str, Any] | None) -> dict[str, Any]:
    """Replay on other labelled data against the record: the recall reached there, and whether it is inside the calibration's bound."""
    conf = record.target.confidence
    figures = roi_metrics if record.dataset.unit == "roi" else frame_metrics
    if figures is None or not figures.get("n_ng"):
        return {"checked": False, "why": f"no labelled NG {'ROIs' if record.dataset.unit == 'roi' else 'frames'} in this replay"}
    rows = {ALL_ROIS: figures} if ALL_ROIS in record.thresholds else {k: figures.get("per_roi", {}).get(k) for k in record.thresholds}
    out: dict[str, Any] = {"checked": True, "unit": record.dataset.unit, "confidence": conf, "target_recall": record.target.ng_recall, "scopes": {}}
    for name, m in rows.items():
        if not m or not m.get("n_ng"):
            out["scopes"][name] = {"checked": False, "why": "no labelled NG samples for this scope"}
            continue
        claimed = record.thresholds[name].achieved
        n_ng, missed = int(m["n_ng"]), int(m["escapes"])
        caught = n_ng - missed
        lower = float(lower_bound(caught, n_ng, conf))
        upper = float(upper_bound(caught, n_ng, conf))
        scope: dict[str, Any] = {
            "n_ng": n_ng,
            "ng_recall": round(caught / n_ng, 6),
            "ng_recall_bounds": [round(lower, 6), round(upper, 6)],
            "calibrated_lower_bound": claimed.ng_recall_lower,
            "inside_bound": caught / n_ng >= claimed.ng_recall_lower,
            # Even a true recall at the calibrated bound would rarely give this few catches: the data contradicts the record.
            "contradicts_calibration": upper < claimed.ng_recall_lower,
        }
        if m.get("n_ok"):
            frr = m["false_reject_rate"]
            scope.update(false_reject_rate=round(frr, 6), calibrated_false_reject_upper=claimed.false_reject_rate_upper,
                         false_reject_inside_bound=frr <= claimed.false_reject_rate_upper)
        out["scopes"][name] = scope
    checked = [s for s in out["scopes"].values() if s.get("checked", True)]
    out["inside_bound"] = all(s["inside_bound"] for s in checked) if checked else None
    out["contradicts_calibration"] = any(s["contradicts_calibration"] for s in checked)
    return out
