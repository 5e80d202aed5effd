"""Replay's figures: confusion, NG recall, false-reject rate, ROC; NG is the positive class throughout."""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from inspector.decision import PASS, UNCERTAIN, Verdict, floor_decimals


@dataclass(frozen=True, slots=True)
class Outcome:
    """One replayed frame with its label, as the summary and the report need it."""

    frame_id: str
    source: str
    verdict: str
    reason: str | None
    score: float | None  # highest ROI score; None when a fault stopped scoring
    roi_scores: tuple[tuple[str, float], ...]
    roi_verdicts: tuple[tuple[str, str], ...]
    label: str | None  # "ok" | "ng" | None (unlabelled)
    defect: str | None
    roi_labels: tuple[tuple[str, str], ...] | None
    latency: tuple[float, float, float, float]  # decode, preprocess, inference, total (ms)

    @classmethod
    def of(cls, verdict: Verdict, label: str | None, defect: str | None, roi_labels: dict[str, str] | None) -> Outcome:
        """Pair a verdict with what the data says the frame is."""
        lat = verdict.latency_ms
        return cls(
            frame_id=verdict.frame_id,
            source=verdict.source,
            verdict=verdict.verdict,
            reason=verdict.reason.value if verdict.reason else None,
            score=verdict.score,
            roi_scores=tuple((r.name, r.score) for r in verdict.rois),
            roi_verdicts=tuple((r.name, r.verdict) for r in verdict.rois),
            label=label,
            defect=defect,
            roi_labels=tuple(sorted(roi_labels.items())) if roi_labels else None,
            latency=(lat.decode, lat.preprocess, lat.inference, lat.total),
        )

    @property
    def faulted(self) -> bool:
        """True when the frame was rejected without a score (unreadable, truncated, ...)."""
        return self.score is None


def _ratio(num: int, den: int) -> float | None:
    return None if den == 0 else num / den


def roc_auc(scores: Sequence[float], positives: Sequence[bool]) -> float | None:
    """Area under the ROC curve (Mann-Whitney U with tied ranks averaged); None without both classes."""
    s = np.asarray(scores, np.float64)
    y = np.asarray(positives, bool)
    n_pos, n_neg = int(y.sum()), int((~y).sum())
    if n_pos == 0 or n_neg == 0:
        return None
    _, inverse, counts = np.unique(s, return_inverse=True, return_counts=True)
    ends = np.cumsum(counts)
    avg_rank = ends - (counts - 1) / 2.0  # 1-based average rank of each distinct score
    ranks = avg_rank[inverse]
    u = ranks[y].sum() - n_pos * (n_pos + 1) / 2.0
    return float(u / (n_pos * n_neg))


def roc_curve(scores: Sequence[float], positives: Sequence[bool]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """False-reject rate, NG recall and threshold at each distinct score, from the strictest threshold down."""
    s = np.asarray(scores, np.float64)
    y = np.asarray(positives, bool)
    order = np.argsort(-s, kind="stable")
    s, y = s[order], y[order]
    distinct = np.r_[np.nonzero(np.diff(s))[0], len(s) - 1] if len(s) else np.array([], int)
    tps = np.cumsum(y)[distinct]
    fps = np.cumsum(~y)[distinct]
    tpr = np.r_[0.0, tps / max(int(y.sum()), 1)]
    fpr = np.r_[0.0, fps / max(int((~y).sum()), 1)]
    return fpr, tpr, np.r_[np.inf, s[distinct]]


def threshold_at_recall(scores: Sequence[float], positives: Sequence[bool], target: float) -> float | None:
    """The highest threshold of at most 6 decimals at which `score >= threshold` catches at least `target` of the positives;
    None without any."""
    pos = np.sort(np.asarray(scores, np.float64)[np.asarray(positives, bool)])[::-1]
    if len(pos) == 0:
        return None
    k = max(1, math.ceil(target * len(pos) - 1e-9))
    # Floored as scores are published: a threshold is usable as given (every threshold has at most 6 decimals), and
    # still rejects the positive it sits on.
    return floor_decimals(float(pos[k - 1]))


NO_DEFECT_FOLDER = "(no defect folder)"  # the per-defect row of NG frames lying directly under ng/


def binary_metrics(rejected: Iterable[bool], is_ng: Iterable[bool]) -> dict[str, Any]:
    """Confusion counts and rates with NG as positive: an escape is an NG that passed."""
    c = Counter(zip(is_ng, rejected, strict=True))
    tp, fn, fp, tn = c[(True, True)], c[(True, False)], c[(False, True)], c[(False, False)]
    return {
        "n_ok": fp + tn,
        "n_ng": tp + fn,
        "confusion": {"ng_rejected": tp, "ng_passed": fn, "ok_rejected": fp, "ok_passed": tn},
        "ng_recall": _ratio(tp, tp + fn),
        "escapes": fn,
        "false_reject_rate": _ratio(fp, fp + tn),
        "false_rejects": fp,
        "precision": _ratio(tp, tp + fp),
        "accuracy": _ratio(tp + tn, tp + fn + fp + tn),
    }


def _scored_figures(rejected: Sequence[bool], is_ng: Sequence[bool], faulted: Sequence[bool]) -> dict[str, Any]:
    """Faulted counts, and NG recall and false-reject rate over the scored samples only: what the model did.

    A faulted sample is rejected on the line, so the line's figures count it as caught; but it is no evidence that the
    model would have caught that part, and forty unreadable NG images must not lift a model recall of 75% to 92%.
    """
    scored = [(r, ng) for r, ng, f in zip(rejected, is_ng, faulted, strict=True) if not f]
    m = binary_metrics([r for r, _ in scored], [ng for _, ng in scored])
    return {
        "ng_faulted": sum(f and ng for ng, f in zip(is_ng, faulted, strict=True)),
        "ok_faulted": sum(f and not ng for ng, f in zip(is_ng, faulted, strict=True)),
        "scored_n_ng": m["n_ng"],
        "scored_n_ok": m["n_ok"],
        "scored_ng_recall": m["ng_recall"],
        "scored_false_reject_rate": m["false_reject_rate"],
    }


def frame_metrics(outcomes: Sequence[Outcome], threshold: float | None = None) -> dict[str, Any] | None:
    """Frame-level figures for the labelled outcomes: at the verdicts given, or at one threshold for every ROI.

    The line's figures count a faulted frame as rejected (it is); the `scored_` figures leave faulted frames out.
    """
    labelled = [o for o in outcomes if o.label is not None]
    if not labelled:
        return None
    is_ng = [o.label == "ng" for o in labelled]
    rejected = [_rejects(o, threshold) for o in labelled]
    faulted = [o.faulted for o in labelled]
    out = binary_metrics(rejected, is_ng)
    scored = [(o.score, ng) for o, ng in zip(labelled, is_ng, strict=True) if o.score is not None]
    out["roc_auc"] = roc_auc([s for s, _ in scored], [ng for _, ng in scored]) if scored else None
    out["faulted"] = sum(faulted)
    out.update(_scored_figures(rejected, is_ng, faulted))
    if any(o.defect for o in labelled if o.label == "ng"):
        per: dict[str, dict[str, Any]] = {}
        for o, r in zip(labelled, rejected, strict=True):
            if o.label != "ng":
                continue
            row = per.setdefault(o.defect or NO_DEFECT_FOLDER, {"n": 0, "rejected": 0, "faulted": 0, "scored_rejected": 0})
            row["n"] += 1
            row["rejected"] += r
            row["faulted"] += o.faulted
            row["scored_rejected"] += r and not o.faulted
        out["per_defect"] = {
            d: {"n": m["n"], "rejected": m["rejected"], "recall": _ratio(m["rejected"], m["n"]), "faulted": m["faulted"],
                "scored_recall": _ratio(m["scored_rejected"], m["n"] - m["faulted"])}
            for d, m in sorted(per.items())
        }
    return out


def roi_metrics(outcomes: Sequence[Outcome], threshold: float | None = None) -> dict[str, Any] | None:
    """ROI-level figures where the labels name each ROI (a CSV), overall and per ROI; `scored_` figures as in frame_metrics."""
    rows: list[tuple[str, bool, bool, float | None]] = []  # roi, is_ng, rejected, score
    for o in outcomes:
        if not o.roi_labels:
            continue
        scores, verdicts = dict(o.roi_scores), dict(o.roi_verdicts)
        for name, label in o.roi_labels:
            score = scores.get(name)
            if score is None:  # a faulted frame rejects every ROI
                rejected = True
            elif threshold is None:
                rejected = verdicts[name] != PASS  # uncertain goes to a gate or a person: not passed
            else:
                rejected = score >= threshold
            rows.append((name, label == "ng", rejected, score))
    if not rows:
        return None
    out = binary_metrics([r[2] for r in rows], [r[1] for r in rows])
    scored = [(r[3], r[1]) for r in rows if r[3] is not None]
    out["roc_auc"] = roc_auc([s for s, _ in scored], [ng for _, ng in scored]) if scored else None
    out.update(_scored_figures([r[2] for r in rows], [r[1] for r in rows], [r[3] is None for r in rows]))
    out["per_roi"] = {}
    keep = ("n_ok", "n_ng", "ng_recall", "false_reject_rate", "escapes", "false_rejects")
    for name in sorted({r[0] for r in rows}):
        mine = [r for r in rows if r[0] == name]
        m = binary_metrics([r[2] for r in mine], [r[1] for r in mine])
        out["per_roi"][name] = {k: m[k] for k in keep} | _scored_figures([r[2] for r in mine], [r[1] for r in mine], [r[3] is None for r in mine])
    return out


def _rejects(o: Outcome, threshold: float | None) -> bool:
    if threshold is None or o.score is None:
        return o.verdict != PASS
    return o.score >= threshold


def what_if(outcomes: Sequence[Outcome], thresholds: Sequence[float]) -> list[dict[str, Any]]:
    """Reject rate, and with labels NG recall and false-reject rate, at each threshold applied to every ROI alike.

    The scores are reused. With labels, each row also has the scored-only figures: faulted frames reject at any threshold.
    """
    table = []
    for t in thresholds:
        rejected = sum(_rejects(o, t) for o in outcomes)
        row: dict[str, Any] = {"threshold": t, "reject_rate": _ratio(rejected, len(outcomes))}
        m = frame_metrics(outcomes, t)
        if m is not None:
            row.update({k: m[k] for k in ("ng_recall", "false_reject_rate", "escapes", "false_rejects", "ng_faulted", "ok_faulted",
                                          "scored_ng_recall", "scored_false_reject_rate")})
        table.append(row)
    return table


def percentiles(values: Sequence[float]) -> dict[str, float | None]:
    """p50/p90/p99/max/mean of latencies in ms."""
    if not values:
        return {"p50": None, "p90": None, "p99": None, "max": None, "mean": None}
    a = np.asarray(values, np.float64)
    p50, p90, p99 = np.percentile(a, [50, 90, 99])
    return {"p50": round(float(p50), 3), "p90": round(float(p90), 3), "p99": round(float(p99), 3), "max": round(float(a.max()), 3), "mean": round(float(a.mean()), 3)}


def summarize(outcomes: Sequence[Outcome]) -> dict[str, Any]:
    """Counts, reject rate, latency percentiles and, with labels, the quality figures."""
    n = len(outcomes)
    rejected = sum(o.verdict != PASS for o in outcomes)
    uncertain = sum(o.verdict == UNCERTAIN for o in outcomes)
    reasons = Counter(o.reason for o in outcomes if o.reason)
    stages = ("decode", "preprocess", "inference", "total")
    return {
        "frames": n,
        "passed": n - rejected,
        "rejected": rejected,
        "reject_rate": _ratio(rejected, n),
        "uncertain": uncertain,
        "reasons": dict(sorted(reasons.items())),  # every verdict's reason: score and uncertain too
        "faulted": sum(o.faulted for o in outcomes),
        # The reasons of the faulted frames only (rejected without a score): what `faulted` counts, by reason.
        "fault_reasons": dict(sorted(Counter(o.reason or "unknown" for o in outcomes if o.faulted).items())),
        "labelled": sum(o.label is not None for o in outcomes),
        "unlabelled": sum(o.label is None for o in outcomes),
        "latency_ms": {s: percentiles([o.latency[i] for o in outcomes if not o.faulted]) for i, s in enumerate(stages)},
        "frame_metrics": frame_metrics(outcomes),
        "roi_metrics": roi_metrics(outcomes),
    }
