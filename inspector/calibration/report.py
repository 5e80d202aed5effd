"""The calibration report: one self-contained HTML page (inline SVG, no scripts) for reviewing a threshold change."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from inspector.calibration.record import (
    ALL_ROIS,
    Achieved,
    CalibrationRecord,
    GroupFigures,
    ScopeResult,
)
from inspector.calibration.run import limit_text, limiting_group
from inspector.calibration.threshold import curves, operating_point
from inspector.html_report import (
    BAND_COLOUR,
    BINS,
    COLOURS,
    CSS,
    Line,
    Marker,
    Shade,
    esc,
    histogram_svg,
    page,
    plot_svg,
    roc_svg,
    table,
)
from inspector.percent import percent
from inspector.replay.metrics import roc_curve

_CSS = CSS + """
.banner{padding:12px 16px;margin:16px 0;border:3px solid;font-size:1.05em}
.banner strong{font-size:1.4em;display:block;margin-bottom:4px}
.banner.ok{background:#ebfbee;border-color:#2f9e44} .banner.bad{background:#fff5f5;border-color:#e03131}
td.limit{background:#fff3bf;font-weight:bold} .plots{display:flex;flex-wrap:wrap;gap:24px;align-items:flex-start}
"""
_TARGET_COLOUR = "#7048e8"
# Rates keep percent()'s two decimals, where replay's report shows one: recall targets like 99.5% need the second.


def _td(value: object, cls: str = "num") -> str:
    return f'<td class="{cls}">{esc(value)}</td>'


def _scope_title(name: str) -> str:
    return "All ROIs" if name == ALL_ROIS else f"ROI {name}"


def _units(unit: str) -> str:
    return "ROIs" if unit == "roi" else "frames"


def _header(record: CalibrationRecord) -> str:
    d, t = record.dataset, record.target
    per_class = ", ".join(f"{k} {v}" for k, v in d.n_ng_per_class.items()) or "not recorded"
    rows = [
        ("Station", record.station),
        ("Model", f"{record.model.name or '?'} (sha256 {record.model.sha256})"),
        ("Preprocessing sha256", record.preprocess_sha256 or "not recorded"),
        ("Created", f"{record.created_at} by {record.created_by}"),
        ("Inspector version", record.inspector_version),
        ("Target", f"NG recall >= {percent(t.ng_recall)} at {t.confidence * 100:g}% confidence (one-sided Clopper-Pearson lower bound)"),
        ("Dataset source", f"{d.source} (hashed: {d.basis})"),
        ("Sample unit", f"{d.unit} (one sample per {'image' if d.unit == 'frame' else 'labelled ROI crop'})"),
        ("OK samples", str(d.n_ok)),
        ("NG samples", str(d.n_ng)),
        ("NG per defect class", per_class),
        ("Excluded (no score)", str(d.excluded)),
        ("Dataset fingerprint", d.fingerprint),
    ]
    return f"<h1>Calibration of station {esc(record.station)}</h1>" + _banner(record) + table(
        ["Item", "Value"], [(esc(k), esc(v)) for k, v in rows], "summary"
    )


def _banner(record: CalibrationRecord) -> str:
    t = record.target
    goal = f"NG recall >= {percent(t.ng_recall)} at {t.confidence * 100:g}% confidence"
    if record.demonstrated:
        return (
            f'<div class="banner ok"><strong>DEMONSTRATED</strong>Every threshold\'s one-sided lower bound on NG recall meets the '
            f"target {esc(goal)} on the calibration samples.</div>"
        )
    lines = []
    for name, s in record.thresholds.items():
        if s.demonstrated:
            continue
        why = f"{s.n_ng} NG samples cannot show {goal}; {s.ng_needed_zero_misses} NG samples with zero misses would be needed."
        if s.chosen_by == "expected-cost":
            why += f" The threshold {s.threshold:g} was chosen by expected cost; its lower bound on NG recall is below the target."
        elif s.safety_margin is not None:
            why += (
                f" Threshold {s.threshold:g}: the point estimate's {s.point_estimate_threshold:g} with its odds cut by the "
                f"safety margin {s.safety_margin:g}."
            )
        lines.append(f"<li><b>{esc(_scope_title(name))}</b>: {esc(why)}</li>")
    return f'<div class="banner bad"><strong>NOT DEMONSTRATED</strong>The target is not shown for:<ul>{"".join(lines)}</ul></div>'


def _achieved_rows(a: Achieved, n_ng: int, n_ok: int, confidence: float) -> list[tuple[str, str]]:
    c = f"{confidence * 100:g}%"
    return [
        ("NG recall", f"{percent(a.ng_recall)} (lower bound {percent(a.ng_recall_lower)} at {c})"),
        ("NG caught / missed", f"{a.ng_caught} caught, {a.ng_missed} missed of {n_ng}"),
        ("False-reject rate", f"{percent(a.false_reject_rate)} (upper bound {percent(a.false_reject_rate_upper)} at {c})"),
        ("OK rejected / passed", f"{a.ok_rejected} rejected, {a.ok_passed} passed of {n_ok}"),
    ]


def _threshold_table(s: ScopeResult, record: CalibrationRecord) -> str:
    lim = s.limited_by
    where = ", ".join(x for x in (f"score {lim.score:g}", lim.defect and f"defect {lim.defect}", lim.roi and f"ROI {lim.roi}") if x)
    rows = [
        ("Threshold", f"{s.threshold:g} (reject when score >= threshold)"),
        ("Chosen by", s.chosen_by),
        ("Target demonstrated", "yes" if s.demonstrated else "NO"),
        *_achieved_rows(s.achieved, s.n_ng, s.n_ok, record.target.confidence),
        ("Limited by", f"{lim.sample} ({where}): {limit_text(s)}"),
        ("Recall-bound threshold", f"{s.recall_bound_threshold:g}"),
        ("Point-estimate threshold", f"{s.point_estimate_threshold:g}"),
        ("Safety margin (odds)", "not applied" if s.safety_margin is None else f"{s.safety_margin:g}"),
        ("NG needed, none missed", str(s.ng_needed_zero_misses)),
    ]
    return table(["Figure", "Value"], [(esc(k), esc(v)) for k, v in rows], "threshold")


def _cost_table(s: ScopeResult, record: CalibrationRecord, scores: tuple[np.ndarray, np.ndarray] | None) -> str:
    c = s.cost
    if c is None:
        return ""
    conf = record.target.confidence
    if s.threshold == s.recall_bound_threshold:
        at_recall: Achieved | None = s.achieved
    elif scores is not None and len(scores[0]) and len(scores[1]):
        op = operating_point(scores[0], scores[1], s.recall_bound_threshold, conf)
        at_recall = Achieved(**{k: getattr(op, k) for k in Achieved.model_fields})
    else:
        at_recall = None
    recall = lambda a: "n/a" if a is None else f"{percent(a.ng_recall)} ({percent(a.ng_recall_lower)})"
    frr = lambda a: "n/a" if a is None else f"{percent(a.false_reject_rate)} ({percent(a.false_reject_rate_upper)})"
    rows = [
        ("Threshold", f"{s.recall_bound_threshold:g}", f"{c.threshold:g}"),
        ("Expected cost per part", f"{c.recall_threshold_cost_per_part:.6g}", f"{c.cost_per_part:.6g}"),
        ("NG recall (lower bound)", recall(at_recall), recall(c.achieved)),
        ("False-reject rate (upper bound)", frr(at_recall), frr(c.achieved)),
    ]
    chosen = "recall bound" if s.chosen_by != "expected-cost" else "expected cost"
    note = (
        f"Cost of an escape {c.escape:g}, of a false reject {c.false_reject:g}; NG rate {percent(c.ng_rate)} "
        f"(from the {c.ng_rate_from}). The threshold applied is the {chosen} one."
    )
    return (
        "<h3>Expected cost</h3>"
        + table(["", "Recall-bound threshold", "Lowest expected cost"], [(esc(a), _td(b), _td(d)) for a, b, d in rows], "cost")
        + f'<p class="caption">{esc(note)}</p>'
    )


def _band_table(s: ScopeResult) -> str:
    b = s.uncertain_band
    if b is None:
        return f"<h3>Uncertain band</h3><p>None: {esc(s.uncertain_band_note)}.</p>" if s.uncertain_band_note else ""
    rows = [
        ("Uncertain band", f"[{b.low:g}, {b.high:g}): verdict uncertain; reject at or above {b.high:g}"),
        ("Low", f"{b.low:g}"),
        ("High", f"{b.high:g}"),
        ("Expected review rate", percent(b.expected_review_rate)),
        ("NG in band", str(b.ng_in_band)),
        ("OK in band", str(b.ok_in_band)),
        ("OK still rejected above the band", str(b.ok_rejected_above)),
    ]
    return "<h3>Uncertain band</h3>" + table(["Figure", "Value"], [(esc(k), esc(v)) for k, v in rows], "band")


def _groups_table(title: str, label: str, groups: dict[str, GroupFigures], worst: str | None) -> str:
    if not groups:
        return ""
    rows = []
    for name, g in groups.items():
        cls = " limit" if name == worst else ""
        cells = [
            esc(name) + (" (limits the threshold)" if name == worst else ""),
            g.n_ng, g.ng_caught, percent(g.ng_recall), percent(g.ng_recall_lower), g.n_ok, percent(g.false_reject_rate),
            f"{g.lowest_ng_score:g}", f"{g.threshold_alone:g}", "yes" if g.demonstrated_alone else "no",
        ]
        rows.append([f'<td class="limit">{cells[0]}</td>' if cls else str(cells[0]), *(_td(c, "num" + cls) for c in cells[1:])])
    head = [label, "NG", "caught", "NG recall", "lower bound", "OK", "false-reject rate", "lowest NG score", "threshold alone", "demonstrated alone"]
    note = "Highlighted: the group of the limiting NG sample (Limited by, above). A group's own threshold with " \
        "\"demonstrated alone: no\" is the point estimate less the margin: its few NG cannot carry the target alone." if worst else ""
    return f"<h3>{esc(title)}</h3>" + table(head, rows, "groups") + (f'<p class="caption">{esc(note)}</p>' if note else "")


def _steps(x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    # A grid threshold sits a hair below the score it stands for, so each rate holds from one grid point up to the next.
    return np.repeat(x, 2)[:-1], np.repeat(y, 2)[1:]


def _rates_svg(ng: np.ndarray, ok: np.ndarray, s: ScopeResult, record: CalibrationRecord) -> str:
    conf, target = record.target.confidence, record.target.ng_recall
    cv = curves(ng, ok, conf)
    x, rec = _steps(cv.thresholds, cv.ng_recall)
    _, rec_low = _steps(cv.thresholds, cv.ng_recall_lower)
    _, frr = _steps(cv.thresholds, cv.false_reject_rate)
    _, frr_up = _steps(cv.thresholds, cv.false_reject_rate_upper)
    c = f"{conf * 100:g}%"
    shades = [
        Shade(x, rec_low, rec, COLOURS["ng"], f"NG recall down to its {c} lower bound", 0.2),
        Shade(x, frr, frr_up, COLOURS["ok"], f"false-reject rate up to its {c} upper bound", 0.2),
    ]
    if s.uncertain_band is not None:
        b = s.uncertain_band
        shades.append(Shade((b.low, b.high), (0.0, 0.0), (1.0, 1.0), BAND_COLOUR, f"uncertain band [{b.low:g}, {b.high:g})", 0.3))
    return plot_svg(
        "rates",
        "threshold (reject when score >= threshold)",
        "rate",
        [Line(x, rec, COLOURS["ng"], "NG recall"), Line(x, frr, COLOURS["ok"], "false-reject rate")],
        [
            Line((0.0, 1.0), (target, target), _TARGET_COLOUR, f"target NG recall {percent(target)}", 1.5, "6,3"),
            Line((s.threshold, s.threshold), (0.0, 1.0), "#000", f"threshold {s.threshold:g}", 2.0, "5,3"),
        ],
        shades,
        width=560,
        legend=330,
    )


def _precision_recall(ng: np.ndarray, ok: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(NG recall, precision) at each distinct score from the strictest threshold down; precision = NG caught / all rejected."""
    fpr, tpr, _ = roc_curve(np.r_[ng, ok], np.r_[np.ones(len(ng), bool), np.zeros(len(ok), bool)])
    caught, rejected_ok = tpr[1:] * len(ng), fpr[1:] * len(ok)  # the first ROC point rejects nothing: precision undefined
    precision = caught / (caught + rejected_ok)
    return np.r_[0.0, tpr[1:]], np.r_[precision[:1], precision]  # held flat back to recall 0 rather than guessing


def _pr_svg(ng: np.ndarray, ok: np.ndarray, s: ScopeResult, units: str) -> str:
    recall, precision = _precision_recall(ng, ok)
    a = s.achieved
    base = len(ng) / (len(ng) + len(ok))
    markers = []
    if a.ng_caught + a.ok_rejected:
        markers.append(Marker(a.ng_recall, a.ng_caught / (a.ng_caught + a.ok_rejected), "#e03131", f"threshold {s.threshold:g}"))
    return plot_svg(
        "precision-recall",
        f"NG recall (NG {units} rejected)",
        "precision (NG among rejected)",
        [Line(recall, precision, "#1c7ed6", "precision-recall")],
        [Line((0.0, 1.0), (base, base), "#adb5bd", f"reject all ({percent(base, 1)} NG)", None, "4,4")],
        markers=markers,
    )


def _plots(name: str, s: ScopeResult, record: CalibrationRecord, scores: tuple[np.ndarray, np.ndarray] | None) -> str:
    if scores is None:
        return f"<p>No scores were given for {esc(_scope_title(name))}: plots left out.</p>"
    ng, ok = (np.asarray(a, np.float64).ravel() for a in scores)
    units = _units(record.dataset.unit)
    band = (s.uncertain_band.low, s.uncertain_band.high) if s.uncertain_band else None
    out = [
        "<h3>Score distributions</h3>" + histogram_svg([("ok", ok), ("ng", ng)], s.threshold, band=band, unit=units),
        f'<p class="caption">{BINS} bins over score 0-1, each panel on its own count scale; dashed line: threshold {s.threshold:g}'
        + (f"; shaded: uncertain band [{band[0]:g}, {band[1]:g})" if band else "") + ".</p>",
    ]
    if not len(ng) or not len(ok):
        return "".join(out) + "<p>Rate, ROC and precision-recall curves: n/a, they need scores of both classes.</p>"
    a = s.achieved
    fpr, tpr, _ = roc_curve(np.r_[ng, ok], np.r_[np.ones(len(ng), bool), np.zeros(len(ok), bool)])
    conf = f"{record.target.confidence * 100:g}%"
    out += [
        "<h3>NG recall and false-reject rate versus threshold</h3>" + _rates_svg(ng, ok, s, record),
        (
            f'<p class="caption">Shaded: the one-sided {conf} Clopper-Pearson bounds, between each point estimate and its bound '
            "(NG recall: lower bound; false-reject rate: upper bound). The target is demonstrated where the lower edge of the NG "
            "recall band is on or above the target line.</p>"
        ),
        '<div class="plots"><div><h3>ROC</h3>' + roc_svg(fpr, tpr, (a.false_reject_rate, a.ng_recall), s.threshold, unit=units) + "</div>",
        "<div><h3>Precision-recall</h3>" + _pr_svg(ng, ok, s, units) + "</div></div>",
        (
            f'<p class="caption">Operating point at threshold {s.threshold:g}: NG recall {percent(a.ng_recall)}, false-reject rate '
            f"{percent(a.false_reject_rate)}. Precision is at the calibration set's NG share ({percent(len(ng) / (len(ng) + len(ok)), 1)}), "
            "not the line's.</p>"
        ),
    ]
    return "".join(out)


def _scope_section(name: str, s: ScopeResult, record: CalibrationRecord, scores: tuple[np.ndarray, np.ndarray] | None) -> str:
    status = "demonstrated" if s.demonstrated else "NOT DEMONSTRATED"
    return "".join((
        f"<h2>{esc(_scope_title(name))}: threshold {s.threshold:g} ({status})</h2>",
        _threshold_table(s, record),
        _cost_table(s, record, scores),
        _band_table(s),
        _groups_table("Per defect class", "Defect", s.per_defect, limiting_group(s, "defect")),
        _groups_table("Per ROI", "ROI", s.per_roi, limiting_group(s, "roi")),
        _plots(name, s, record, scores),
    ))


def write_calibration_report(path: Path, record: CalibrationRecord, scores: dict[str, tuple[np.ndarray, np.ndarray]]) -> Path:
    """Write a self-contained HTML review page for `record` ((NG, OK) scores per scope) to `path` and return `path`."""
    path = Path(path)
    body = [_header(record)]
    body += [_scope_section(name, s, record, scores.get(name)) for name, s in record.thresholds.items()]
    path.write_text(page(f"Calibration {record.station}", body, _CSS), encoding="utf-8")
    return path
