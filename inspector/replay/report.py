"""`report.html` for a replay: headline figures, score histograms, confusion, ROC and contact sheets of the misses."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from inspector.decision import PASS, shared_threshold
from inspector.html_report import (
    BINS,
    esc,
    histogram_svg,
    num,
    page,
    roc_svg,
    table,
)
from inspector.percent import percent
from inspector.preprocess import Roi
from inspector.replay.files import FALSE_REJECTS, MISSED_NG, REPORT
from inspector.replay.metrics import NO_DEFECT_FOLDER, Outcome, roc_curve

_THUMB = 160  # long side of a thumbnail, px
_PAD = 4
_CAPTION_H = 34  # two text lines under each thumbnail
_COLS = 8
_MAX_TILES = 48
_CELL_W = _THUMB + 2 * _PAD
_CELL_H = _THUMB + 2 * _PAD + _CAPTION_H
_FONT = cv2.FONT_HERSHEY_SIMPLEX
_HOT = (0, 0, 255)  # BGR red: the ROI that rejected, or that the labels say was missed
_COLD = (170, 170, 170)
_MARK_SCALE = 0.3


@dataclass(frozen=True, slots=True)
class Mark:
    """A box to draw on a thumbnail, in the source image's pixels (x_min, y_min, x_max, y_max exclusive), with its text."""

    box: tuple[int, int, int, int]
    text: str
    hot: bool = False


def _threshold_text(by_roi: dict[str, float]) -> str:
    shared = shared_threshold(by_roi)
    if shared is not None:
        return f"{shared:g}"
    return "per ROI: " + ", ".join(f"{name} {t:g}" for name, t in by_roi.items())


def _header(summary: dict[str, Any], by_roi: dict[str, float], title: str) -> str:
    faults = summary["fault_reasons"]  # not `reasons`: that holds score and uncertain too, which are no faults
    faulted = str(summary["faulted"]) + (" (" + ", ".join(f"{k} {v}" for k, v in faults.items()) + ")" if faults else "")
    rows = [
        ("Frames", str(summary["frames"])),
        ("Passed", str(summary["passed"])),
        ("Rejected", str(summary["rejected"])),
        *([("Of which uncertain (a score in the uncertain band)", str(summary["uncertain"]))] if summary.get("uncertain") else []),
        ("Reject rate", percent(summary["reject_rate"], 1)),
        ("Faulted", faulted),
        ("Threshold", _threshold_text(by_roi)),
    ]
    fm = summary.get("frame_metrics")
    if fm is not None:
        rows += [
            ("Labelled", str(summary["labelled"])),
            *([("Unlabelled (not in the figures below)", str(summary["unlabelled"]))] if summary.get("unlabelled") else []),
        ]
        if fm["ng_faulted"] or fm["ok_faulted"]:
            # A faulted frame is rejected on the line but says nothing of the model: both figures, each named for what it counts.
            rows += [
                ("Faulted labelled frames (rejected without a score)", f"{fm['ng_faulted']} NG, {fm['ok_faulted']} OK"),
                ("NG recall on the line (faulted NG counted as caught)", percent(fm["ng_recall"], 1)),
                (f"NG recall of the model (the {fm['scored_n_ng']} scored NG only)", percent(fm["scored_ng_recall"], 1)),
                ("False-reject rate on the line (faulted OK counted as rejected)", percent(fm["false_reject_rate"], 1)),
                (f"False-reject rate of the model (the {fm['scored_n_ok']} scored OK only)", percent(fm["scored_false_reject_rate"], 1)),
            ]
        else:
            rows += [("NG recall", percent(fm["ng_recall"], 1)), ("False-reject rate", percent(fm["false_reject_rate"], 1))]
        rows += [("Precision", percent(fm["precision"], 1)), ("ROC-AUC", num(fm["roc_auc"]))]
    total = summary["latency_ms"]["total"]
    rows.append(("Latency total p50 / p99", f"{num(total['p50'], '.1f')} / {num(total['p99'], '.1f')} ms"))
    return f"<h1>{esc(title)}</h1>" + table(["Figure", "Value"], [(esc(k), esc(v)) for k, v in rows], "summary")


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
        # As the pipeline decodes: an EXIF rotation would show a picture the model never saw, with the ROI boxes misplaced.
        return cv2.imdecode(data, cv2.IMREAD_COLOR | cv2.IMREAD_IGNORE_ORIENTATION) if data.size else None
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


def _draw_marks(thumb: np.ndarray, marks: Sequence[Mark], sx: float, sy: float) -> None:
    th, tw = thumb.shape[:2]
    for mark in sorted(marks, key=lambda m: m.hot):  # red on top where boxes share an edge
        x0, y0, x1, y1 = mark.box
        x0, y0 = max(0, round(x0 * sx)), max(0, round(y0 * sy))
        x1, y1 = min(tw, round(x1 * sx)) - 1, min(th, round(y1 * sy)) - 1
        if x1 <= x0 or y1 <= y0:
            continue  # off this frame (roi_out_of_bounds)
        colour = _HOT if mark.hot else _COLD
        cv2.rectangle(thumb, (x0, y0), (x1, y1), colour, 2 if mark.hot else 1)
        text = _fit_text(mark.text, x1 - x0 - 2, _MARK_SCALE)
        (w, h), base = cv2.getTextSize(text, _FONT, _MARK_SCALE, 1)
        cv2.rectangle(thumb, (x0, y0), (min(x1, x0 + w + 2), y0 + h + base + 1), colour if mark.hot else (32, 32, 32), -1)
        cv2.putText(thumb, text, (x0 + 1, y0 + h + 1), _FONT, _MARK_SCALE, (255, 255, 255) if mark.hot else _COLD, 1, cv2.LINE_AA)


def contact_sheet(
    tiles: Sequence[tuple[np.ndarray | None, str, str]], path: Path, *, marks: Sequence[Sequence[Mark]] | None = None
) -> None:
    """Write a JPEG grid of (image BGR or gray or None, name, caption) tiles; a caption not starting 'score' is highlighted.

    `marks`, one list per tile, are boxes drawn on the thumbnails (ROIs), red when `hot`.
    """
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
            if marks and marks[i]:
                _draw_marks(thumb, marks[i], thumb.shape[1] / image.shape[1], thumb.shape[0] / image.shape[0])
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


def _blamed(o: Outcome, roi: str) -> bool:
    """True for a ROI the reviewer should look at: labelled NG on a missed NG frame, not passed on a false reject."""
    if o.label == "ng":
        # A frame labelled NG by its folder does not say which ROI holds the defect: then no ROI is blamed.
        return dict(o.roi_labels or ()).get(roi) == "ng"
    return dict(o.roi_verdicts).get(roi, PASS) != PASS


def _ng_score(o: Outcome) -> float:
    """A missed NG frame's score, the lower the more confidently wrong: with ROI labels, the highest score among its ROIs
    labelled NG (a ROI labelled OK may score higher, and says nothing of the defect that was missed); else the frame's."""
    scores = dict(o.roi_scores)
    ng = [scores[name] for name, label in o.roi_labels or () if label == "ng" and name in scores]
    return max(ng) if ng else (o.score if o.score is not None else 0.0)


def _over_threshold(o: Outcome, by_roi: dict[str, float], shared: float | None) -> float:
    """How far a false reject's worst ROI lies above its own threshold; the score itself when every ROI has the same one."""
    if o.score is None:
        return 0.0
    if shared is not None:
        return o.score  # the same order as score - shared, without rounding ties into it
    return max(score - by_roi.get(name, 0.0) for name, score in o.roi_scores)


def _roi_text(o: Outcome, roi: str) -> str:
    score = dict(o.roi_scores).get(roi)
    return roi if score is None else f"{roi} {score:.3f}"


def _roi_marks(o: Outcome, rois: Sequence[Roi], image: np.ndarray | None) -> list[Mark]:
    if image is None:
        return []
    h, w = image.shape[:2]
    return [Mark(roi.pixels(w, h), _roi_text(o, roi.name), _blamed(o, roi.name)) for roi in rois]


def _sheet_section(heading: str, blurb: str, rows: Sequence[Outcome], out_dir: Path, filename: str, rois: Sequence[Roi]) -> str:
    path = out_dir / filename
    if not rows:
        path.unlink(missing_ok=True)  # a sheet left by an earlier run would contradict "none"
        return f"<h2>{esc(heading)}</h2><p>none</p>"
    caption = lambda o: f"score {o.score:.3f}" if o.score is not None else f"fault: {o.reason or 'unknown'}"
    shown = rows[:_MAX_TILES]
    images = [_read_bgr(o.source) for o in shown]
    marks = [_roi_marks(o, rois, img) for o, img in zip(shown, images, strict=True)]
    contact_sheet([(img, Path(o.source).name, caption(o)) for o, img in zip(shown, images, strict=True)], path, marks=marks)
    more = f" The sheet shows the first {_MAX_TILES} of {len(rows)}." if len(rows) > _MAX_TILES else ""
    if rois:
        more += " Boxes: the ROIs with their scores; red: " + (
            "the ROIs labelled NG (a frame labelled NG by its folder names none)." if filename == MISSED_NG else "the ROIs that did not pass."
        )
    flagged = lambda o: ", ".join(_roi_text(o, r.name) for r in rois if _blamed(o, r.name)) or "-"
    listing = [
        (str(i), esc(o.source), f'<td class="num">{esc(num(o.score))}</td>', esc(o.defect or "-"), esc(o.reason or "-"))
        + ((esc(flagged(o)),) if rois else ())
        for i, o in enumerate(rows, 1)
    ]
    return (
        f"<h2>{esc(heading)} ({len(rows)})</h2><p class=\"caption\">{esc(blurb + more)}</p>"
        f'<img class="sheet" src="{esc(filename)}" alt="{esc(heading)}">'
        + table(["#", "File", "Score", "Defect", "Reason", *(["Red ROIs"] if rois else [])], listing, filename.removesuffix(".jpg"))
    )


def write_report(
    out_dir: Path,
    outcomes: Sequence[Outcome],
    summary: dict,
    threshold: float | dict[str, float],
    *,
    title: str = "inspector replay",
    rois: Sequence[Roi] = (),
) -> Path:
    """Write report.html (+ contact sheet JPEGs, the `rois` boxed on each thumbnail) into out_dir and return the HTML path.

    `threshold` is one threshold for every ROI, or the threshold of each ROI as the station applies them.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    by_roi = threshold if isinstance(threshold, dict) else {"frame": threshold}
    shared = shared_threshold(by_roi)
    fm = summary.get("frame_metrics")
    body = [_header(summary, by_roi, title)]

    scored = [o for o in outcomes if o.score is not None]
    if fm is not None:
        series: list[tuple[str, list[float]]] = [(c, [o.score for o in scored if o.label == c]) for c in ("ok", "ng")]
        unlabelled = [o.score for o in scored if o.label is None]
        if unlabelled:
            series.append(("unlabelled", unlabelled))
    else:
        series = [("all frames", [o.score for o in scored])]
    faulted = len(outcomes) - len(scored)
    body.append("<h2>Score distribution</h2>" + histogram_svg(series, shared))
    line = (
        f"dashed line: threshold {shared:g} (reject at or above)" if shared is not None
        else f"no threshold line: each ROI has its own ({_threshold_text(by_roi).removeprefix('per ROI: ')}); a frame's score is its "
        "highest ROI score, and a frame is rejected when any ROI reaches its own threshold"
    )
    body.append(f'<p class="caption">{BINS} bins over score 0-1; {esc(line)}. {faulted} faulted frame(s) had no score and are not shown.</p>')

    if fm is not None:
        c = fm["confusion"]
        escape = f'<td class="num{" escape" if c["ng_passed"] else ""}">{c["ng_passed"]}</td>'
        body.append("<h2>Confusion</h2>" + table(
            ["actual \\ verdict", "passed", "rejected"],
            [("<th>ok</th>", f'<td class="num">{c["ok_passed"]}</td>', f'<td class="num">{c["ok_rejected"]}</td>'),
             ("<th>ng</th>", escape, f'<td class="num">{c["ng_rejected"]}</td>')],
            "confusion",
        ) + '<p class="caption">NG passed = escapes. Counts follow the verdicts, faulted frames included as rejects'
          + (f" ({fm['ng_faulted']} NG, {fm['ok_faulted']} OK)" if fm["faulted"] else "") + ".</p>")

        labelled = [o for o in scored if o.label is not None]
        if fm["roc_auc"] is not None:
            scores = [o.score for o in labelled]
            is_ng = np.asarray([o.label == "ng" for o in labelled])
            fpr, tpr, _ = roc_curve(scores, is_ng)
            # The verdicts themselves: with per-ROI thresholds no one threshold on the frame score gives them.
            hit = np.asarray([o.verdict != PASS for o in labelled])
            op = (float(hit[~is_ng].mean()), float(hit[is_ng].mean()))
            where = f"At threshold {shared:g}" if shared is not None else f"At the station's thresholds ({_threshold_text(by_roi)})"
            curve_note = "" if shared is not None else (
                " The curve applies one threshold to every ROI's score; the point marks the per-ROI thresholds and need not lie on it."
            )
            body.append("<h2>ROC</h2>" + roc_svg(fpr, tpr, op, shared) + (
                f'<p class="caption">ROC-AUC {num(fm["roc_auc"])} over {len(labelled)} scored labelled frames. '
                f"{esc(where)}: NG recall {percent(op[1], 1)}, false-reject rate {percent(op[0], 1)} (faulted frames excluded).{curve_note}</p>"
            ))
        else:
            body.append("<h2>ROC</h2><p>n/a: needs scored frames of both classes.</p>")

        if fm.get("per_defect"):
            cell = lambda v: f'<td class="num">{v}</td>'
            rows = [(esc(d), cell(m["n"]), cell(m["rejected"]), cell(percent(m["recall"], 1)), cell(m["faulted"]), cell(percent(m["scored_recall"], 1)))
                    for d, m in fm["per_defect"].items()]
            loose = f'<p class="caption">{esc(NO_DEFECT_FOLDER)}: NG frames lying directly under ng/.</p>' if NO_DEFECT_FOLDER in fm["per_defect"] else ""
            body.append("<h2>Recall per defect</h2>" + table(
                ["Defect", "NG frames", "Rejected", "Recall (faulted count as rejected)", "Faulted", "Recall of the scored"], rows, "per-defect"
            ) + loose)

    escapes = sorted((o for o in outcomes if o.label == "ng" and o.verdict == PASS), key=lambda o: (o.score is None, _ng_score(o)))
    false_rejects = sorted(
        (o for o in outcomes if o.label == "ok" and o.verdict != PASS), key=lambda o: (o.score is None, -_over_threshold(o, by_roi, shared))
    )
    per_roi_labels = any(o.roi_labels for o in escapes)
    body.append(_sheet_section(
        "Missed NG (escapes)",
        "Labelled NG frames that passed, lowest score "
        + ("of the ROIs labelled NG (of the frame, for a frame labelled NG by its folder) " if per_roi_labels else "")
        + "(most confidently wrong) first.",
        escapes, out_dir, MISSED_NG, rois,
    ))
    body.append(_sheet_section(
        "False rejects",
        "Labelled OK frames that were not passed (rejected or uncertain), "
        + ("highest score first" if shared is not None else "the ROI furthest above its own threshold (score minus threshold) first")
        + "; faulted frames last.",
        false_rejects, out_dir, FALSE_REJECTS, rois,
    ))

    out = out_dir / REPORT
    out.write_text(page(title, body), encoding="utf-8")
    return out
