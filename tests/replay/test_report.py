"""The replay report as a user opens it: report.html with its charts, and the contact sheets beside it."""

from __future__ import annotations

import math
import re
from pathlib import Path

import cv2
import numpy as np
import pytest

from inspector.replay import report
from inspector.replay.metrics import Outcome, summarize
from inspector.replay.report import write_report

THRESHOLD = 0.5


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


def _read(path: Path) -> np.ndarray:
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
    assert _read(missed).shape[:2] == _grid(2)
    assert _read(false_rejects).shape[:2] == _grid(4)


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
    sheet = _read(tmp_path / "false_rejects.jpg")
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
    assert _read(tmp_path / "out" / "missed_ng.jpg").shape[:2] == _grid(1)


def test_many_misses_cap_the_sheet_but_list_them_all(tmp_path: Path) -> None:
    src = _png(tmp_path / "ng.png", 0)
    outcomes = [_outcome(src, 0.001 * i, "ng") for i in range(60)] + [_outcome(src, 0.9, "ok")]
    page = write_report(tmp_path, outcomes, summarize(outcomes), THRESHOLD).read_text(encoding="utf-8")

    assert _read(tmp_path / "missed_ng.jpg").shape[:2] == _grid(48)
    assert "first 48 of 60" in page
    missed = page[page.index("Missed NG") : page.index("False rejects")]
    assert len(re.findall(r"<tr><td>\d+</td>", missed)) == 60
