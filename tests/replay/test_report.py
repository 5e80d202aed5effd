"""The replay report as a user opens it: report.html with its charts, and the contact sheets beside it."""

from __future__ import annotations

import math
import re
from pathlib import Path

import cv2
import numpy as np
import pytest

from inspector.preprocess import Roi
from inspector.replay import report
from inspector.replay.metrics import Outcome, summarize
from inspector.replay.report import write_report

THRESHOLD = 0.5
ROIS = tuple(
    Roi(name=n, box=b, units="fraction")
    for n, b in {"roi1": (0, 0, 0.5, 0.5), "roi2": (0.5, 0, 1, 0.5), "roi3": (0, 0.5, 0.5, 1), "roi4": (0.5, 0.5, 1, 1)}.items()
)


def _png(path: Path, seed: int) -> str:
    img = np.random.default_rng(seed).integers(0, 256, (32, 48, 3), dtype=np.uint8)
    ok, buf = cv2.imencode(".png", img)
    assert ok
    buf.tofile(str(path))
    return str(path)


def _outcome(source: str, score: float | None, label: str | None, defect: str | None = None, reason: str | None = None) -> Outcome:
    rejected = score is None or score >= THRESHOLD
    return Outcome(
        frame_id=Path(source).stem,
        source=source,
        verdict="reject" if rejected else "pass",
        reason=reason if score is None else ("score" if rejected else None),
        score=score,
        roi_scores=() if score is None else (("full", score),),
        roi_verdicts=() if score is None else (("full", "reject" if rejected else "pass"),),
        label=label,
        defect=defect,
        roi_labels=None,
        latency=(1.0, 2.0, 3.0, 6.0),
    )


@pytest.fixture
def labelled(tmp_path: Path) -> list[Outcome]:
    img = tmp_path / "imgs"
    img.mkdir()
    return [
        _outcome(_png(img / "ok_clean_1.png", 1), 0.05, "ok"),
        _outcome(_png(img / "ok_clean_2.png", 2), 0.20, "ok"),
        _outcome(_png(img / "ok_clean_3.png", 3), 0.35, "ok"),
        _outcome(_png(img / "ok_fr_high.png", 4), 0.90, "ok"),  # false reject, most confident
        _outcome(_png(img / "ok_fr_low.png", 5), 0.60, "ok"),  # false reject
        _outcome(str(img / "ok_gone.png"), 0.70, "ok"),  # false reject whose file has vanished
        _outcome(_png(img / "ok_truncated.png", 6), None, "ok", reason="truncated"),  # faulted false reject
        _outcome(_png(img / "ng_caught_1.png", 7), 0.95, "ng", "scratch"),
        _outcome(_png(img / "ng_caught_2.png", 8), 0.80, "ng", "dent"),
        _outcome(_png(img / "ng_escape_mild.png", 9), 0.40, "ng", "scratch"),
        _outcome(_png(img / "ng_escape_worst.png", 10), 0.02, "ng", "dent"),
    ]


def read_image(path: Path) -> np.ndarray:
    img = cv2.imdecode(np.fromfile(path, np.uint8), cv2.IMREAD_COLOR)
    assert img is not None, f"{path} does not decode"
    return img


def _grid(n: int) -> tuple[int, int]:
    cols = min(report._COLS, n)
    return math.ceil(n / cols) * report._CELL_H, cols * report._CELL_W


def test_labelled_report_has_figures_charts_and_sheets(tmp_path: Path, labelled: list[Outcome]) -> None:
    summary = summarize(labelled)
    out = write_report(tmp_path / "out", labelled, summary, THRESHOLD, title="line 3 replay")

    assert out == tmp_path / "out" / "report.html"
    page = out.read_text(encoding="utf-8")
    assert "line 3 replay" in page
    assert "Threshold</td><td>0.5<" in page
    auc = f"{summary['frame_metrics']['roc_auc']:.3f}"
    assert f"ROC-AUC</td><td>{auc}<" in page  # header
    assert f"ROC-AUC {auc} over" in page  # ROC caption, the same figure
    assert page.count("<svg") == 2  # histogram + ROC
    assert "truncated 1" in page  # faulted breakdown
    assert "1 faulted frame(s) had no score" in page
    assert 'class="num escape">2<' in page  # two escapes, highlighted
    assert "Recall per defect" in page and "scratch" in page and "dent" in page

    missed, false_rejects = tmp_path / "out" / "missed_ng.jpg", tmp_path / "out" / "false_rejects.jpg"
    assert f'src="{missed.name}"' in page and f'src="{false_rejects.name}"' in page
    assert read_image(missed).shape[:2] == _grid(2)
    assert read_image(false_rejects).shape[:2] == _grid(4)


def test_sheet_tables_list_the_worst_first(tmp_path: Path, labelled: list[Outcome]) -> None:
    page = write_report(tmp_path, labelled, summarize(labelled), THRESHOLD).read_text(encoding="utf-8")

    missed = page[page.index("Missed NG") : page.index("False rejects")]
    assert missed.index("ng_escape_worst.png") < missed.index("ng_escape_mild.png")
    fr = page[page.index("False rejects") :]
    order = [fr.index(n) for n in ("ok_fr_high.png", "ok_gone.png", "ok_fr_low.png", "ok_truncated.png")]
    assert order == sorted(order)
    assert "ok_clean_1.png" not in fr and "ng_caught_1.png" not in page.split("Missed NG")[1]


def test_unreadable_thumbnail_gets_a_grey_placeholder(tmp_path: Path, labelled: list[Outcome]) -> None:
    write_report(tmp_path, labelled, summarize(labelled), THRESHOLD)
    sheet = read_image(tmp_path / "false_rejects.jpg")
    # Order: ok_fr_high, ok_gone (missing file), ...; the second tile is the plain grey placeholder.
    x0, pad = report._CELL_W, report._PAD
    corner = sheet[pad + 5 : pad + 30, x0 + pad + 5 : x0 + pad + 30].astype(int)
    assert np.abs(corner - 128).max() <= 6


def test_unlabelled_run_has_one_histogram_and_no_sheets(tmp_path: Path) -> None:
    outcomes = [_outcome(_png(tmp_path / f"f{i}.png", i), s, None) for i, s in enumerate((0.1, 0.3, 0.7))]
    outcomes.append(_outcome(str(tmp_path / "missing.png"), None, None, reason="unreadable"))
    summary = summarize(outcomes)
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "missed_ng.jpg").write_bytes(b"stale from an earlier run")

    page = write_report(tmp_path / "out", outcomes, summary, 0.42).read_text(encoding="utf-8")

    assert page.count("<svg") == 1
    assert "all frames (n=3)" in page
    assert "0.42" in page
    assert "NG recall" not in page and "ROC-AUC" not in page
    assert page.count("<p>none</p>") == 2
    assert not (tmp_path / "out" / "missed_ng.jpg").exists()
    assert not (tmp_path / "out" / "false_rejects.jpg").exists()


def test_single_class_labels_skip_the_roc(tmp_path: Path) -> None:
    outcomes = [_outcome(_png(tmp_path / f"ok{i}.png", i), s, "ok") for i, s in enumerate((0.1, 0.6))]
    page = write_report(tmp_path, outcomes, summarize(outcomes), THRESHOLD).read_text(encoding="utf-8")

    assert page.count("<svg") == 1
    assert "ROC-AUC</td><td>n/a<" in page
    assert "<h2>Missed NG (escapes)</h2><p>none</p>" in page
    assert (tmp_path / "false_rejects.jpg").exists()


def test_file_names_are_escaped(tmp_path: Path) -> None:
    source = _png(tmp_path / "<b>bold&'x'.png", 1)  # a POSIX file name may hold <, >, & and quotes
    outcomes = [_outcome(source, 0.1, "ng", defect="<i>crack</i>"), _outcome(_png(tmp_path / "ok.png", 2), 0.2, "ok")]

    page = write_report(tmp_path / "out", outcomes, summarize(outcomes), THRESHOLD, title="<script>x</script>").read_text(encoding="utf-8")

    assert "<b>" not in page and "<i>" not in page and "<script>" not in page
    assert "&lt;b&gt;bold&amp;&#x27;x&#x27;.png" in page
    assert "&lt;i&gt;crack&lt;/i&gt;" in page
    assert read_image(tmp_path / "out" / "missed_ng.jpg").shape[:2] == _grid(1)


def test_many_misses_cap_the_sheet_but_list_them_all(tmp_path: Path) -> None:
    src = _png(tmp_path / "ng.png", 0)
    outcomes = [_outcome(src, 0.001 * i, "ng") for i in range(60)] + [_outcome(src, 0.9, "ok")]
    page = write_report(tmp_path, outcomes, summarize(outcomes), THRESHOLD).read_text(encoding="utf-8")

    assert read_image(tmp_path / "missed_ng.jpg").shape[:2] == _grid(48)
    assert "first 48 of 60" in page
    missed = page[page.index("Missed NG") : page.index("False rejects")]
    assert len(re.findall(r"<tr><td>\d+</td>", missed)) == 60


def red_rois(sheet: np.ndarray, index: int, n_tiles: int, size: tuple[int, int], rois: tuple[Roi, ...]) -> set[str]:
    """The ROIs of tile `index` (a `size` = (w, h) frame) whose name tag, at the box's top-left corner, is red."""
    w, h = size
    s = report._THUMB / max(w, h)
    tw, th = round(w * s), round(h * s)
    cols = min(report._COLS, n_tiles)
    ox = (index % cols) * report._CELL_W + report._PAD + (report._THUMB - tw) // 2
    oy = (index // cols) * report._CELL_H + report._PAD + (report._THUMB - th) // 2
    red = set()
    for roi in rois:
        x0, y0, _, _ = roi.pixels(w, h)
        px, py = ox + round(x0 * tw / w), oy + round(y0 * th / h)
        tag = sheet[py + 2 : py + 8, px + 3 : px + 30].astype(int)
        if (tag[..., 2] - tag[..., 0] > 100).mean() > 0.4:
            red.add(roi.name)
    return red


def _grey_png(path: Path, w: int, h: int) -> str:
    cv2.imencode(".png", np.full((h, w), 128, np.uint8))[1].tofile(str(path))
    return str(path)


def _roi_outcome(source: str, scores: dict[str, float], label: str, roi_labels: dict[str, str] | None = None) -> Outcome:
    verdicts = {n: "reject" if v >= THRESHOLD else "pass" for n, v in scores.items()}
    rejected = "reject" in verdicts.values()
    return Outcome(
        frame_id=Path(source).name, source=source, verdict="reject" if rejected else "pass", reason="score" if rejected else None,
        score=max(scores.values()), roi_scores=tuple(scores.items()), roi_verdicts=tuple(verdicts.items()), label=label, defect=None,
        roi_labels=tuple(sorted(roi_labels.items())) if roi_labels else None, latency=(1.0, 2.0, 3.0, 6.0),
    )


def test_roi_boxes_on_the_sheets_show_which_roi_rejected_or_was_missed(tmp_path: Path) -> None:
    wide = _grey_png(tmp_path / "wide.png", 192, 96)  # 2:1, so the thumbnail is letterboxed and scaled
    square = _grey_png(tmp_path / "square.png", 96, 96)
    outcomes = [
        _roi_outcome(wide, {"roi1": 0.1, "roi2": 0.9, "roi3": 0.2, "roi4": 0.7}, "ok"),  # false reject by roi2 and roi4
        _roi_outcome(square, {"roi1": 0.1, "roi2": 0.2, "roi3": 0.3, "roi4": 0.1}, "ng", {"roi1": "ok", "roi2": "ok", "roi3": "ng", "roi4": "ok"}),
        _roi_outcome(square, {"roi1": 0.1, "roi2": 0.2, "roi3": 0.1, "roi4": 0.1}, "ng"),  # NG by its folder: no ROI to blame
    ]
    page = write_report(tmp_path / "out", outcomes, summarize(outcomes), THRESHOLD, rois=ROIS).read_text(encoding="utf-8")

    false_rejects = read_image(tmp_path / "out" / "false_rejects.jpg")
    assert red_rois(false_rejects, 0, 1, (192, 96), ROIS) == {"roi2", "roi4"}
    missed = read_image(tmp_path / "out" / "missed_ng.jpg")
    assert red_rois(missed, 0, 2, (96, 96), ROIS) == set()  # lowest score first: the folder-labelled frame
    assert red_rois(missed, 1, 2, (96, 96), ROIS) == {"roi3"}
    # Every ROI is outlined, the blameless ones in grey: roi2's left edge runs down the middle of the square thumbnail.
    x, pad = report._THUMB // 2, report._PAD
    edge, inside = missed[pad + 40, pad + x].astype(int), missed[pad + 40, pad + x + 20].astype(int)
    assert edge.min() > 150 and np.abs(inside - 128).max() <= 8
    assert "<td>roi2 0.900, roi4 0.700</td>" in page and "<td>roi3 0.300</td>" in page


def test_whole_frame_models_get_no_boxes(tmp_path: Path) -> None:
    src = _grey_png(tmp_path / "f.png", 96, 96)
    write_report(tmp_path / "out", [_outcome(src, 0.9, "ok")], summarize([_outcome(src, 0.9, "ok")]), THRESHOLD)
    thumb = read_image(tmp_path / "out" / "false_rejects.jpg")[report._PAD : report._PAD + report._THUMB, report._PAD : report._PAD + report._THUMB]
    assert np.abs(thumb.astype(int) - 128).max() <= 8


def _roi_outcome_at(source: str, scores: dict[str, float], thresholds: dict[str, float], label: str,
                    roi_labels: dict[str, str] | None = None) -> Outcome:
    """A frame judged with per-ROI thresholds: each ROI against its own."""
    verdicts = {n: "reject" if v >= thresholds[n] else "pass" for n, v in scores.items()}
    rejected = "reject" in verdicts.values()
    return Outcome(
        frame_id=Path(source).name, source=source, verdict="reject" if rejected else "pass", reason="score" if rejected else None,
        score=max(scores.values()), roi_scores=tuple(scores.items()), roi_verdicts=tuple(verdicts.items()), label=label, defect=None,
        roi_labels=tuple(sorted(roi_labels.items())) if roi_labels else None, latency=(1.0, 2.0, 3.0, 6.0),
    )


def _listed(page: str, heading: str) -> list[str]:
    """The file names in the table of one contact sheet's section, in order."""
    start = page.index(f"<h2>{heading}")
    end = page.find("<h2>", start + 1)
    return [Path(s).name for s in re.findall(r"<tr><td>\d+</td><td>([^<]+)</td>", page[start : end if end > 0 else None])]


def test_missed_ng_with_roi_labels_are_ordered_by_their_ng_rois_not_by_rois_labelled_ok(tmp_path: Path) -> None:
    # The frame score is the highest of every ROI, OK-labelled ones included: it says nothing of how sure the model was
    # that the defect it missed was not there.
    shared = dict.fromkeys(("roi1", "roi2", "roi3", "roi4"), THRESHOLD)
    labels = {"roi1": "ok", "roi2": "ng", "roi3": "ok", "roi4": "ok"}
    outcomes = [
        _roi_outcome_at(_grey_png(tmp_path / "b_ng_0.35.png", 96, 96), {"roi1": 0.1, "roi2": 0.35, "roi3": 0.1, "roi4": 0.1}, shared, "ng", labels),
        _roi_outcome_at(_grey_png(tmp_path / "d_ng_0.40.png", 96, 96), {"roi1": 0.2, "roi2": 0.2, "roi3": 0.05, "roi4": 0.40}, shared, "ng",
                        {"roi1": "ok", "roi2": "ok", "roi3": "ng", "roi4": "ng"}),
        _roi_outcome_at(_grey_png(tmp_path / "a_ng_0.30.png", 96, 96), {"roi1": 0.45, "roi2": 0.30, "roi3": 0.1, "roi4": 0.1}, shared, "ng", labels),
        _roi_outcome_at(_grey_png(tmp_path / "ok.png", 96, 96), dict.fromkeys(shared, 0.1), shared, "ok", dict.fromkeys(shared, "ok")),
    ]
    page = write_report(tmp_path / "out", outcomes, summarize(outcomes), shared, rois=ROIS).read_text(encoding="utf-8")

    assert _listed(page, "Missed NG") == ["a_ng_0.30.png", "b_ng_0.35.png", "d_ng_0.40.png"]
    assert "lowest score of the ROIs labelled NG" in page
    missed = read_image(tmp_path / "out" / "missed_ng.jpg")
    assert red_rois(missed, 0, 3, (96, 96), ROIS) == {"roi2"} and red_rois(missed, 2, 3, (96, 96), ROIS) == {"roi3", "roi4"}


def test_false_rejects_with_per_roi_thresholds_are_ordered_by_how_far_a_roi_is_above_its_own(tmp_path: Path) -> None:
    per_roi = {"roi1": 0.5, "roi2": 0.5, "roi3": 0.9, "roi4": 0.5}
    ok = dict.fromkeys(per_roi, "ok")
    scores = {
        "just_over.png": {"roi1": 0.1, "roi2": 0.1, "roi3": 0.95, "roi4": 0.1},  # roi3 0.05 above its 0.9
        "far_over.png": {"roi1": 0.8, "roi2": 0.1, "roi3": 0.1, "roi4": 0.1},  # roi1 0.3 above its 0.5
        "mid_over.png": {"roi1": 0.1, "roi2": 0.1, "roi3": 0.85, "roi4": 0.65},  # roi4 0.15 above; roi3 passes under 0.9
    }
    sources = {name: _grey_png(tmp_path / name, 96, 96) for name in scores}
    faulted = Outcome(frame_id="gone", source=str(tmp_path / "gone.png"), verdict="reject", reason="truncated", score=None, roi_scores=(),
                      roi_verdicts=(), label="ok", defect=None, roi_labels=tuple(sorted(ok.items())), latency=(0.0, 0.0, 0.0, 0.0))

    outcomes = [_roi_outcome_at(sources[n], s, per_roi, "ok", ok) for n, s in scores.items()] + [faulted]
    page = write_report(tmp_path / "a", outcomes, summarize(outcomes), per_roi, rois=ROIS).read_text(encoding="utf-8")
    assert _listed(page, "False rejects") == ["far_over.png", "mid_over.png", "just_over.png", "gone.png"]
    assert "the ROI furthest above its own threshold" in page
    sheet = read_image(tmp_path / "a" / "false_rejects.jpg")
    assert [red_rois(sheet, i, 4, (96, 96), ROIS) for i in range(3)] == [{"roi1"}, {"roi4"}, {"roi3"}]

    # One threshold for every ROI: the highest score first, as for a whole-frame model.
    shared = dict.fromkeys(per_roi, THRESHOLD)
    outcomes = [_roi_outcome_at(sources[n], s, shared, "ok", ok) for n, s in scores.items()] + [faulted]
    page = write_report(tmp_path / "b", outcomes, summarize(outcomes), shared, rois=ROIS).read_text(encoding="utf-8")
    assert _listed(page, "False rejects") == ["just_over.png", "mid_over.png", "far_over.png", "gone.png"]
    assert "highest score first" in page
