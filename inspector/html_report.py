"""Self-contained HTML report pieces shared by replay and calibration: escaping, tables, inline SVG charts (no JavaScript)."""

from __future__ import annotations

import html
import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

BINS = 25
COLOURS = {"ok": "#2f9e44", "ng": "#e03131", "unlabelled": "#868e96", "all frames": "#1c7ed6"}
CSS = """
body{font-family:system-ui,sans-serif;margin:24px auto;max-width:1400px;padding:0 16px;color:#212529}
h1{margin-bottom:4px} h2{margin-top:32px;border-bottom:1px solid #dee2e6}
table{border-collapse:collapse;margin:8px 0} th,td{border:1px solid #ced4da;padding:4px 10px;text-align:left}
td.num{text-align:right;font-variant-numeric:tabular-nums} th{background:#f1f3f5}
td.escape{background:#ffc9c9;font-weight:bold} .caption{color:#495057;font-size:0.9em}
img.sheet{max-width:100%;border:1px solid #adb5bd} svg{font-size:12px;display:block}
"""
BAND_COLOUR = "#fab005"


def esc(value: object) -> str:
    """`value` as text safe inside HTML elements and attributes."""
    return html.escape(str(value), quote=True)


def num(value: float | None, spec: str = ".3f") -> str:
    """A number formatted with `spec`, or "n/a"."""
    return "n/a" if value is None else format(value, spec)


def table(head: Sequence[str], rows: Sequence[Sequence[str]], cls: str = "") -> str:
    """An HTML table; cells are already-escaped HTML, and a cell starting with '<t' is taken as written."""
    out = [f'<table class="{cls}"><tr>' + "".join(f"<th>{h}</th>" for h in head) + "</tr>"]
    for row in rows:
        out.append("<tr>" + "".join(c if c.startswith("<t") else f"<td>{c}</td>" for c in row) + "</tr>")
    return "".join(out) + "</table>"


def page(title: str, body: Sequence[str], css: str = CSS) -> str:
    """A complete HTML document with inline CSS."""
    return f'<!doctype html><html lang="en"><head><meta charset="utf-8"><title>{esc(title)}</title><style>{css}</style></head><body>{"".join(body)}</body></html>'


def count_ticks(top: int) -> tuple[int, list[int]]:
    """(axis maximum, tick values) for a count axis reaching at least `top`, in steps of 1, 2 or 5 x 10^k."""
    raw = max(top, 1) / 4
    mag = 10 ** math.floor(math.log10(raw))
    step = max(1, int(next(m * mag for m in (1, 2, 5, 10) if m * mag >= raw)))  # counts are whole
    ymax = step * math.ceil(max(top, 1) / step)
    return ymax, list(range(0, ymax + 1, step))


def svg_text(x: float, y: float, s: str, anchor: str = "start", extra: str = "") -> str:
    """An SVG <text> element with `s` escaped; `extra` is raw attributes."""
    return f'<text x="{x:.1f}" y="{y:.1f}" text-anchor="{anchor}" {extra}>{esc(s)}</text>'


def _svg_open(cls: str, width: int, height: int) -> str:
    return (
        f'<svg class="{cls}" xmlns="http://www.w3.org/2000/svg" font-family="system-ui,sans-serif" font-size="12" '
        f'width="{width}" height="{height}" viewBox="0 0 {width} {height}">'
    )


def histogram_svg(
    series: Sequence[tuple[str, Sequence[float]]], threshold: float | None, *, band: tuple[float, float] | None = None, unit: str = "frames"
) -> str:
    """Score histograms over 0-1, one panel per (COLOURS key, scores), threshold dashed (None: no one threshold applies),
    optional [low, high) band shaded."""
    # One panel per class, each with its own count scale, so a few NG frames stay visible beside many OK ones.
    width, left, right, top, panel_h, gap, bottom = 760, 60, 20, 40, 130, 30, 50
    pw = width - left - right
    height = top + len(series) * (panel_h + gap) - gap + bottom
    edges = np.linspace(0.0, 1.0, BINS + 1)
    bw = pw / BINS
    parts = [_svg_open("histogram", width, height)]
    lx = left
    for name, scores in series:
        label = f"{name} (n={len(scores)})"
        parts.append(f'<rect x="{lx}" y="10" width="12" height="12" fill="{COLOURS[name]}"/>' + svg_text(lx + 17, 20, label))
        lx += 40 + 7 * len(label)
    if threshold is not None:
        parts.append(f'<line x1="{lx}" y1="16" x2="{lx + 20}" y2="16" stroke="#000" stroke-width="2" stroke-dasharray="5,3"/>')
        parts.append(svg_text(lx + 25, 20, f"threshold {threshold:g}"))
        lx += 40 + 7 * len(f"threshold {threshold:g}")
    clip = lambda v: min(max(v, 0.0), 1.0)
    if band is not None:
        parts.append(f'<rect x="{lx}" y="10" width="20" height="12" fill="{BAND_COLOUR}" fill-opacity="0.3"/>')
        parts.append(svg_text(lx + 25, 20, f"uncertain band [{band[0]:g}, {band[1]:g})"))
    for i, (name, scores) in enumerate(series):
        y0 = top + i * (panel_h + gap)
        counts, _ = np.histogram(np.clip(np.asarray(scores, np.float64), 0.0, 1.0), bins=edges)
        ymax, ticks = count_ticks(int(counts.max(initial=0)))
        if band is not None:  # drawn first so that the bars stay on top
            bx0, bx1 = left + clip(band[0]) * pw, left + clip(band[1]) * pw
            parts.append(f'<rect x="{bx0:.1f}" y="{y0}" width="{bx1 - bx0:.1f}" height="{panel_h}" fill="{BAND_COLOUR}" fill-opacity="0.3"/>')
        for t in ticks:
            y = y0 + panel_h - t / ymax * panel_h
            parts.append(f'<line x1="{left}" y1="{y:.1f}" x2="{left + pw}" y2="{y:.1f}" stroke="#e9ecef"/>')
            parts.append(svg_text(left - 6, y + 4, str(t), "end"))
        for b, c in enumerate(counts):
            if c:
                h = c / ymax * panel_h
                parts.append(
                    f'<rect x="{left + b * bw + 1:.1f}" y="{y0 + panel_h - h:.1f}" width="{bw - 2:.1f}" height="{h:.1f}" '
                    f'fill="{COLOURS[name]}"><title>{edges[b]:.2f}-{edges[b + 1]:.2f}: {c}</title></rect>'
                )
        parts.append(f'<line x1="{left}" y1="{y0 + panel_h}" x2="{left + pw}" y2="{y0 + panel_h}" stroke="#495057"/>')
        parts.append(f'<line x1="{left}" y1="{y0}" x2="{left}" y2="{y0 + panel_h}" stroke="#495057"/>')
        parts.append(svg_text(left + 6, y0 + 12, name, extra='font-weight="bold"'))
        cy = y0 + panel_h / 2
        parts.append(svg_text(16, cy, unit, "middle", f'transform="rotate(-90 16 {cy:.1f})"'))
    base = height - bottom
    for k in range(11):
        x = left + k / 10 * pw
        parts.append(f'<line x1="{x:.1f}" y1="{base}" x2="{x:.1f}" y2="{base + 5}" stroke="#495057"/>' + svg_text(x, base + 18, f"{k / 10:.1f}", "middle"))
    parts.append(svg_text(left + pw / 2, base + 40, "score (1 - P(ok))", "middle"))
    if threshold is not None:
        tx = left + clip(threshold) * pw
        parts.append(f'<line x1="{tx:.1f}" y1="{top - 6}" x2="{tx:.1f}" y2="{base}" stroke="#000" stroke-width="2" stroke-dasharray="5,3"/>')
    return "".join(parts) + "</svg>"


@dataclass(frozen=True, slots=True)
class Line:
    """A curve on a 0..1 x 0..1 plot, in data coordinates, with its legend label."""

    xs: Sequence[float]
    ys: Sequence[float]
    colour: str
    label: str
    width: float | None = 2.0
    dash: str | None = None


@dataclass(frozen=True, slots=True)
class Shade:
    """A filled region between `lower` and `upper` over the same xs, with its legend label."""

    xs: Sequence[float]
    lower: Sequence[float]
    upper: Sequence[float]
    colour: str
    label: str
    opacity: float = 0.25


@dataclass(frozen=True, slots=True)
class Marker:
    """A marked point, such as the operating point, with its legend label."""

    x: float
    y: float
    colour: str
    label: str


def _stroke(line: Line) -> str:
    return f'stroke="{line.colour}"' + (f' stroke-width="{line.width:g}"' if line.width else "") + (f' stroke-dasharray="{line.dash}"' if line.dash else "")


def _c(v: float) -> str:
    return f"{round(v, 1):g}"  # whole pixels print without ".0", as the ROC's chance line always has


def plot_svg(
    cls: str,
    x_label: str,
    y_label: str,
    lines: Sequence[Line],
    guides: Sequence[Line] = (),
    shades: Sequence[Shade] = (),
    markers: Sequence[Marker] = (),
    *,
    width: int = 320,
    height: int = 320,
    legend: int = 190,
) -> str:
    """A plot with both axes 0..1: shades, then straight reference `guides`, then curves, then markers; legend on the right."""
    left, top, bottom = 60, 16, 50
    total_w, total_h = left + width + 20 + legend, top + height + bottom
    px, py = (lambda v: left + v * width), (lambda v: top + height - v * height)
    parts = [_svg_open(cls, total_w, total_h)]
    for k in range(6):
        v = k / 5
        parts.append(f'<line x1="{px(v):.1f}" y1="{top}" x2="{px(v):.1f}" y2="{top + height}" stroke="#e9ecef"/>')
        parts.append(f'<line x1="{left}" y1="{py(v):.1f}" x2="{left + width}" y2="{py(v):.1f}" stroke="#e9ecef"/>')
        parts.append(svg_text(px(v), top + height + 18, f"{v:.1f}", "middle") + svg_text(left - 6, py(v) + 4, f"{v:.1f}", "end"))
    parts.append(f'<rect x="{left}" y="{top}" width="{width}" height="{height}" fill="none" stroke="#495057"/>')
    for s in shades:
        xs = np.clip(np.asarray(s.xs, np.float64), 0.0, 1.0)
        outline = [*zip(xs, s.upper, strict=True), *reversed(list(zip(xs, s.lower, strict=True)))]
        points = " ".join(f"{px(x):.1f},{py(y):.1f}" for x, y in outline)
        parts.append(f'<polygon points="{points}" fill="{s.colour}" fill-opacity="{s.opacity:g}" stroke="none"/>')
    for g in guides:  # beneath the curves, which they only frame
        (x1, x2), (y1, y2) = g.xs, g.ys
        parts.append(f'<line x1="{_c(px(x1))}" y1="{_c(py(y1))}" x2="{_c(px(x2))}" y2="{_c(py(y2))}" {_stroke(g)}/>')
    for ln in lines:
        points = " ".join(f"{px(x):.1f},{py(y):.1f}" for x, y in zip(ln.xs, ln.ys, strict=True))
        parts.append(f'<polyline points="{points}" fill="none" {_stroke(ln)}/>')
    for m in markers:
        parts.append(f'<circle cx="{px(m.x):.1f}" cy="{py(m.y):.1f}" r="5" fill="{m.colour}" stroke="#fff"/>')
    parts.append(svg_text(left + width / 2, top + height + 40, x_label, "middle"))
    cy = top + height / 2
    parts.append(svg_text(16, cy, y_label, "middle", f'transform="rotate(-90 16 {cy:.1f})"'))
    lx, ly = left + width + 20, top + 10
    for ln in (*lines, *guides):
        parts.append(f'<line x1="{lx}" y1="{ly}" x2="{lx + 20}" y2="{ly}" {_stroke(ln)}/>' + svg_text(lx + 26, ly + 4, ln.label))
        ly += 20
    for s in shades:
        parts.append(f'<rect x="{lx}" y="{ly - 6}" width="20" height="12" fill="{s.colour}" fill-opacity="{s.opacity:g}"/>' + svg_text(lx + 26, ly + 4, s.label))
        ly += 20
    for m in markers:
        parts.append(f'<circle cx="{lx + 10}" cy="{ly}" r="5" fill="{m.colour}"/>' + svg_text(lx + 26, ly + 4, m.label))
        ly += 20
    return "".join(parts) + "</svg>"


def roc_svg(fpr: np.ndarray, tpr: np.ndarray, op: tuple[float, float], threshold: float | None, *, unit: str = "frames") -> str:
    """ROC curve (false-reject rate vs NG recall) with the chance diagonal and the operating point (FRR, recall) marked;
    threshold None: the point of per-ROI thresholds."""
    return plot_svg(
        "roc",
        f"false-reject rate (OK {unit} rejected)",
        f"NG recall (NG {unit} rejected)",
        [Line(fpr, tpr, "#1c7ed6", "ROC curve")],
        [Line((0.0, 1.0), (0.0, 1.0), "#adb5bd", "chance", width=None, dash="4,4")],
        markers=[Marker(op[0], op[1], "#e03131", "per-ROI thresholds" if threshold is None else f"threshold {threshold:g}")],
    )
