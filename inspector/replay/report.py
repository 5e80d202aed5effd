"""`report.html` for a replay: headline figures, score histograms, confusion, ROC and contact sheets of the misses."""

from __future__ import annotations

import html
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from inspector.decision import PASS, REJECT
from inspector.replay.metrics import Outcome, roc_curve

MISSED_NG = "missed_ng.jpg"
FALSE_REJECTS = "false_rejects.jpg"
_BINS = 25
_THUMB = 160  # long side of a thumbnail, px
_PAD = 4
_CAPTION_H = 34  # two text lines under each thumbnail
_COLS = 8
_MAX_TILES = 48
_CELL_W = _THUMB + 2 * _PAD
_CELL_H = _THUMB + 2 * _PAD + _CAPTION_H
_FONT = cv2.FONT_HERSHEY_SIMPLEX
_COLOURS = {"ok": "#2f9e44", "ng": "#e03131", "unlabelled": "#868e96", "all frames": "#1c7ed6"}
_CSS = """
body{font-family:system-ui,sans-serif;margin:24px auto;max-width:1400px;padding:0 16px;color:#212529}
h1{margin-bottom:4px} h2{margin-top:32px;border-bottom:1px solid #dee2e6}
table{border-collapse:collapse;margin:8px 0} th,td{border:1px solid #ced4da;padding:4px 10px;text-align:left}
td.num{text-align:right;font-variant-numeric:tabular-nums} th{background:#f1f3f5}
td.escape{background:#ffc9c9;font-weight:bold} .caption{color:#495057;font-size:0.9em}
img.sheet{max-width:100%;border:1px solid #adb5bd} svg{font-size:12px;display:block}
"""


def _e(value: object) -> str:
    return html.escape(str(value), quote=True)


def _num(value: float | None, spec: str = ".3f") -> str:
    return "n/a" if value is None else format(value, spec)


def _pct(value: float | None) -> str:
    return "n/a" if value is None else f"{100 * value:.1f}%"


def _table(head: Sequence[str], rows: Sequence[Sequence[str]], cls: str = "") -> str:
    """Cells are already-escaped HTML; a cell starting with '<td' is taken as written."""
    out = [f'<table class="{cls}"><tr>' + "".join(f"<th>{h}</th>" for h in head) + "</tr>"]
    for row in rows:
        out.append("<tr>" + "".join(c if c.startswith("<t") else f"<td>{c}</td>" for c in row) + "</tr>")
    return "".join(out) + "</table>"


def _header(summary: dict[str, Any], threshold: float, title: str) -> str:
    faults = {k: v for k, v in summary["reasons"].items() if k != "score"}
    faulted = str(summary["faulted"]) + (" (" + ", ".join(f"{k} {v}" for k, v in faults.items()) + ")" if faults else "")
    rows = [
        ("Frames", str(summary["frames"])),
        ("Passed", str(summary["passed"])),
        ("Rejected", str(summary["rejected"])),
        ("Reject rate", _pct(summary["reject_rate"])),
        ("Faulted", faulted),
        ("Threshold", f"{threshold:g}"),
    ]
    fm = summary.get("frame_metrics")
    if fm is not None:
        rows += [
            ("Labelled", str(summary["labelled"])),
            ("NG recall", _pct(fm["ng_recall"])),
            ("False-reject rate", _pct(fm["false_reject_rate"])),
            ("Precision", _pct(fm["precision"])),
            ("ROC-AUC", _num(fm["roc_auc"])),
        ]
    total = summary["latency_ms"]["total"]
    rows.append(("Latency total p50 / p99", f"{_num(total['p50'], '.1f')} / {_num(total['p99'], '.1f')} ms"))
    return f"<h1>{_e(title)}</h1>" + _table(["Figure", "Value"], [(_e(k), _e(v)) for k, v in rows], "summary")


def _count_ticks(top: int) -> tuple[int, list[int]]:
    raw = max(top, 1) / 4
    mag = 10 ** math.floor(math.log10(raw))
    step = max(1, int(next(m * mag for m in (1, 2, 5, 10) if m * mag >= raw)))  # counts are whole
    ymax = step * math.ceil(max(top, 1) / step)
    return ymax, list(range(0, ymax + 1, step))


def _text(x: float, y: float, s: str, anchor: str = "start", extra: str = "") -> str:
    return f'<text x="{x:.1f}" y="{y:.1f}" text-anchor="{anchor}" {extra}>{_e(s)}</text>'


def _histogram_svg(series: Sequence[tuple[str, Sequence[float]]], threshold: float) -> str:
    # One panel per class, each with its own count scale, so a few NG frames stay visible beside many OK ones.
    width, left, right, top, panel_h, gap, bottom = 760, 60, 20, 40, 130, 30, 50
    pw = width - left - right
    height = top + len(series) * (panel_h + gap) - gap + bottom
    edges = np.linspace(0.0, 1.0, _BINS + 1)
    bw = pw / _BINS
    parts = [f'<svg class="histogram" xmlns="http://www.w3.org/2000/svg" font-family="system-ui,sans-serif" font-size="12" width="{width}" height="{height}" viewBox="0 0 {width} {height}">']
    lx = left
    for name, scores in series:
        label = f"{name} (n={len(scores)})"
        parts.append(f'<rect x="{lx}" y="10" width="12" height="12" fill="{_COLOURS[name]}"/>' + _text(lx + 17, 20, label))
        lx += 40 + 7 * len(label)
    parts.append(f'<line x1="{lx}" y1="16" x2="{lx + 20}" y2="16" stroke="#000" stroke-width="2" stroke-dasharray="5,3"/>')
    parts.append(_text(lx + 25, 20, f"threshold {threshold:g}"))
    for i, (name, scores) in enumerate(series):
        y0 = top + i * (panel_h + gap)
        counts, _ = np.histogram(np.clip(np.asarray(scores, np.float64), 0.0, 1.0), bins=edges)
        ymax, ticks = _count_ticks(int(counts.max(initial=0)))
        for t in ticks:
            y = y0 + panel_h - t / ymax * panel_h
            parts.append(f'<line x1="{left}" y1="{y:.1f}" x2="{left + pw}" y2="{y:.1f}" stroke="#e9ecef"/>')
            parts.append(_text(left - 6, y + 4, str(t), "end"))
        for b, c in enumerate(counts):
            if c:
                h = c / ymax * panel_h
                parts.append(
                    f'<rect x="{left + b * bw + 1:.1f}" y="{y0 + panel_h - h:.1f}" width="{bw - 2:.1f}" height="{h:.1f}" '
                    f'fill="{_COLOURS[name]}"><title>{edges[b]:.2f}-{edges[b + 1]:.2f}: {c}</title></rect>'
                )
        parts.append(f'<line x1="{left}" y1="{y0 + panel_h}" x2="{left + pw}" y2="{y0 + panel_h}" stroke="#495057"/>')
        parts.append(f'<line x1="{left}" y1="{y0}" x2="{left}" y2="{y0 + panel_h}" stroke="#495057"/>')
        parts.append(_text(left + 6, y0 + 12, name, extra='font-weight="bold"'))
        cy = y0 + panel_h / 2
        parts.append(_text(16, cy, "frames", "middle", f'transform="rotate(-90 16 {cy:.1f})"'))
    base = height - bottom
    for k in range(11):
        x = left + k / 10 * pw
        parts.append(f'<line x1="{x:.1f}" y1="{base}" x2="{x:.1f}" y2="{base + 5}" stroke="#495057"/>' + _text(x, base + 18, f"{k / 10:.1f}", "middle"))
    parts.append(_text(left + pw / 2, base + 40, "score (1 - P(ok))", "middle"))
    tx = left + min(max(threshold, 0.0), 1.0) * pw
    parts.append(f'<line x1="{tx:.1f}" y1="{top - 6}" x2="{tx:.1f}" y2="{base}" stroke="#000" stroke-width="2" stroke-dasharray="5,3"/>')
    return "".join(parts) + "</svg>"


def _roc_svg(fpr: np.ndarray, tpr: np.ndarray, op: tuple[float, float], threshold: float) -> str:
    size, left, top, bottom, legend = 320, 60, 16, 50, 190
    width, height = left + size + 20 + legend, top + size + bottom
    px, py = (lambda v: left + v * size), (lambda v: top + size - v * size)
    parts = [f'<svg class="roc" xmlns="http://www.w3.org/2000/svg" font-family="system-ui,sans-serif" font-size="12" width="{width}" height="{height}" viewBox="0 0 {width} {height}">']
    for k in range(6):
        v = k / 5
        parts.append(f'<line x1="{px(v):.1f}" y1="{top}" x2="{px(v):.1f}" y2="{top + size}" stroke="#e9ecef"/>')
        parts.append(f'<line x1="{left}" y1="{py(v):.1f}" x2="{left + size}" y2="{py(v):.1f}" stroke="#e9ecef"/>')
        parts.append(_text(px(v), top + size + 18, f"{v:.1f}", "middle") + _text(left - 6, py(v) + 4, f"{v:.1f}", "end"))
    parts.append(f'<rect x="{left}" y="{top}" width="{size}" height="{size}" fill="none" stroke="#495057"/>')
    parts.append(f'<line x1="{px(0)}" y1="{py(0)}" x2="{px(1)}" y2="{py(1)}" stroke="#adb5bd" stroke-dasharray="4,4"/>')
    points = " ".join(f"{px(f):.1f},{py(t):.1f}" for f, t in zip(fpr, tpr, strict=True))
    parts.append(f'<polyline points="{points}" fill="none" stroke="#1c7ed6" stroke-width="2"/>')
    parts.append(f'<circle cx="{px(op[0]):.1f}" cy="{py(op[1]):.1f}" r="5" fill="#e03131" stroke="#fff"/>')
    parts.append(_text(left + size / 2, top + size + 40, "false-reject rate (OK frames rejected)", "middle"))
    cy = top + size / 2
    parts.append(_text(16, cy, "NG recall (NG frames rejected)", "middle", f'transform="rotate(-90 16 {cy:.1f})"'))
    lx, ly = left + size + 20, top + 10
    parts.append(f'<line x1="{lx}" y1="{ly}" x2="{lx + 20}" y2="{ly}" stroke="#1c7ed6" stroke-width="2"/>' + _text(lx + 26, ly + 4, "ROC curve"))
    parts.append(f'<line x1="{lx}" y1="{ly + 20}" x2="{lx + 20}" y2="{ly + 20}" stroke="#adb5bd" stroke-dasharray="4,4"/>' + _text(lx + 26, ly + 24, "chance"))
    parts.append(f'<circle cx="{lx + 10}" cy="{ly + 40}" r="5" fill="#e03131"/>' + _text(lx + 26, ly + 44, f"threshold {threshold:g}"))
    return "".join(parts) + "</svg>"


def _fit_text(text: str, width: int, scale: float) -> str:
    text = "".join(c if " " <= c <= "~" else "?" for c in text)  # Hershey fonts draw ASCII only
    fits = lambda s: cv2.getTextSize(s, _FONT, scale, 1)[0][0] <= width
    keep = len(text)
    candidate = text
    while not fits(candidate) and keep > 0:
        keep -= 1
        head = (keep + 1) // 2
        candidate = text[:head] + "..." + text[len(text) - (keep - head) :]
    return candidate


def _read_bgr(source: str) -> np.ndarray | None:
    try:
        data = np.fromfile(source, np.uint8)
        return cv2.imdecode(data, cv2.IMREAD_COLOR) if data.size else None
    except (OSError, ValueError, cv2.error):
        return None


def _thumbnail(img: np.ndarray) -> np.ndarray:
    if img.ndim == 2:
        img = cv2.cvtColor(img, cv2.COLOR_GRAY2BGR)
    if img.dtype == np.uint16:
        img = (img >> 8).astype(np.uint8)
    h, w = img.shape[:2]
    s = _THUMB / max(h, w)
    size = (max(1, round(w * s)), max(1, round(h * s)))
    return cv2.resize(img, size, interpolation=cv2.INTER_AREA if s < 1 else cv2.INTER_LINEAR)


def contact_sheet(tiles: Sequence[tuple[np.ndarray | None, str, str]], path: Path) -> None:
    """Write a JPEG grid of (image BGR or gray or None, name, caption) tiles; a caption not starting 'score' is highlighted."""
    cols = min(_COLS, len(tiles))
    rows = math.ceil(len(tiles) / cols)
    sheet = np.full((rows * _CELL_H, cols * _CELL_W, 3), 40, np.uint8)
    for i, (image, title, second) in enumerate(tiles):
        x0, y0 = (i % cols) * _CELL_W, (i // cols) * _CELL_H
        if image is None:
            thumb = np.full((_THUMB, _THUMB, 3), 128, np.uint8)
            tw = cv2.getTextSize("unreadable", _FONT, 0.5, 1)[0][0]
            cv2.putText(thumb, "unreadable", ((_THUMB - tw) // 2, _THUMB // 2 + 5), _FONT, 0.5, (255, 255, 255), 1, cv2.LINE_AA)
        else:
            thumb = _thumbnail(image)
        th, tw = thumb.shape[:2]
        ox, oy = x0 + _PAD + (_THUMB - tw) // 2, y0 + _PAD + (_THUMB - th) // 2
        sheet[oy : oy + th, ox : ox + tw] = thumb
        cy = y0 + _THUMB + 2 * _PAD
        sheet[cy : cy + _CAPTION_H, x0 : x0 + _CELL_W] = 16
        name = _fit_text(title, _CELL_W - 2 * _PAD, 0.4)
        cv2.putText(sheet, name, (x0 + _PAD, cy + 13), _FONT, 0.4, (255, 255, 255), 1, cv2.LINE_AA)
        colour = (255, 255, 255) if second.startswith("score") else (80, 170, 255)
        cv2.putText(sheet, _fit_text(second, _CELL_W - 2 * _PAD, 0.4), (x0 + _PAD, cy + 28), _FONT, 0.4, colour, 1, cv2.LINE_AA)
    ok, buf = cv2.imencode(".jpg", sheet, [cv2.IMWRITE_JPEG_QUALITY, 90])
    if not ok:
        raise RuntimeError(f"could not encode {path}")
    buf.tofile(str(path))  # tofile, unlike imwrite, copes with non-ASCII paths


def _sheet_section(heading: str, blurb: str, rows: Sequence[Outcome], out_dir: Path, filename: str) -> str:
    path = out_dir / filename
    if not rows:
        path.unlink(missing_ok=True)  # a sheet left by an earlier run would contradict "none"
        return f"<h2>{_e(heading)}</h2><p>none</p>"
    caption = lambda o: f"score {o.score:.3f}" if o.score is not None else f"fault: {o.reason or 'unknown'}"
    contact_sheet([(_read_bgr(o.source), Path(o.source).name, caption(o)) for o in rows[:_MAX_TILES]], path)
    more = f" The sheet shows the first {_MAX_TILES} of {len(rows)}." if len(rows) > _MAX_TILES else ""
    table = [
        (str(i), _e(o.source), f'<td class="num">{_e(_num(o.score))}</td>', _e(o.defect or "-"), _e(o.reason or "-"))
        for i, o in enumerate(rows, 1)
    ]
    return (
        f"<h2>{_e(heading)} ({len(rows)})</h2><p class=\"caption\">{_e(blurb + more)}</p>"
        f'<img class="sheet" src="{_e(filename)}" alt="{_e(heading)}">'
        + _table(["#", "File", "Score", "Defect", "Reason"], table, filename.removesuffix(".jpg"))
    )


def write_report(out_dir: Path, outcomes: Sequence[Outcome], summary: dict, threshold: float, *, title: str = "inspector replay") -> Path:
    """Write report.html (+ contact sheet JPEGs) into out_dir and return the HTML path."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    fm = summary.get("frame_metrics")
    body = [_header(summary, threshold, title)]

    scored = [o for o in outcomes if o.score is not None]
    if fm is not None:
        series: list[tuple[str, list[float]]] = [(c, [o.score for o in scored if o.label == c]) for c in ("ok", "ng")]
        unlabelled = [o.score for o in scored if o.label is None]
        if unlabelled:
            series.append(("unlabelled", unlabelled))
    else:
        series = [("all frames", [o.score for o in scored])]
    faulted = len(outcomes) - len(scored)
    body.append("<h2>Score distribution</h2>" + _histogram_svg(series, threshold))
    body.append(
        f'<p class="caption">{_BINS} bins over score 0-1; dashed line: threshold {threshold:g} (reject at or above). '
        f"{faulted} faulted frame(s) had no score and are not shown.</p>"
    )

    if fm is not None:
        c = fm["confusion"]
        escape = f'<td class="num{" escape" if c["ng_passed"] else ""}">{c["ng_passed"]}</td>'
        body.append("<h2>Confusion</h2>" + _table(
            ["actual \\ verdict", "passed", "rejected"],
            [("<th>ok</th>", f'<td class="num">{c["ok_passed"]}</td>', f'<td class="num">{c["ok_rejected"]}</td>'),
             ("<th>ng</th>", escape, f'<td class="num">{c["ng_rejected"]}</td>')],
            "confusion",
        ) + '<p class="caption">NG passed = escapes. Counts follow the verdicts, faulted frames included as rejects.</p>')

        labelled = [o for o in scored if o.label is not None]
        if fm["roc_auc"] is not None:
            scores = [o.score for o in labelled]
            is_ng = np.asarray([o.label == "ng" for o in labelled])
            fpr, tpr, _ = roc_curve(scores, is_ng)
            hit = np.asarray(scores) >= threshold
            op = (float(hit[~is_ng].mean()), float(hit[is_ng].mean()))
            body.append("<h2>ROC</h2>" + _roc_svg(fpr, tpr, op, threshold) + (
                f'<p class="caption">ROC-AUC {_num(fm["roc_auc"])} over {len(labelled)} scored labelled frames. '
                f"At threshold {threshold:g}: NG recall {_pct(op[1])}, false-reject rate {_pct(op[0])} (faulted frames excluded).</p>"
            ))
        else:
            body.append("<h2>ROC</h2><p>n/a: needs scored frames of both classes.</p>")

        if fm.get("per_defect"):
            rows = [(_e(d), f'<td class="num">{m["n"]}</td>', f'<td class="num">{m["rejected"]}</td>', f'<td class="num">{_pct(m["recall"])}</td>')
                    for d, m in fm["per_defect"].items()]
            body.append("<h2>Recall per defect</h2>" + _table(["Defect", "NG frames", "Rejected", "Recall"], rows, "per-defect"))

    escapes = sorted((o for o in outcomes if o.label == "ng" and o.verdict == PASS), key=lambda o: (o.score is None, o.score or 0.0))
    false_rejects = sorted((o for o in outcomes if o.label == "ok" and o.verdict == REJECT), key=lambda o: (o.score is None, -(o.score or 0.0)))
    body.append(_sheet_section("Missed NG (escapes)", "Labelled NG frames that passed, lowest score (most confidently wrong) first.", escapes, out_dir, MISSED_NG))
    body.append(_sheet_section("False rejects", "Labelled OK frames that were rejected, highest score first; faulted frames last.", false_rejects, out_dir, FALSE_REJECTS))

    page = f'<!doctype html><html lang="en"><head><meta charset="utf-8"><title>{_e(title)}</title><style>{_CSS}</style></head><body>{"".join(body)}</body></html>'
    out = out_dir / "report.html"
    out.write_text(page, encoding="utf-8")
    return out
