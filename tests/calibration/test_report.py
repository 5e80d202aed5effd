"""The calibration report as a quality engineer opens it: one self-contained HTML page per record."""

from __future__ import annotations

import re
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

import numpy as np

from inspector.calibration.record import CalibrationRecord
from inspector.calibration.report import write_calibration_report

SHA = "ab" * 32


def _achieved(recall: float, frr: float, n_ng: int, n_ok: int) -> dict[str, Any]:
    caught, rejected = round(recall * n_ng), round(frr * n_ok)
    return {
        "ng_recall": recall, "ng_recall_lower": recall - 0.05, "false_reject_rate": frr, "false_reject_rate_upper": frr + 0.03,
        "ng_caught": caught, "ng_missed": n_ng - caught, "ok_rejected": rejected, "ok_passed": n_ok - rejected,
    }


def _group(threshold_alone: float) -> dict[str, Any]:
    return {
        "n_ng": 20, "n_ok": 0, "ng_caught": 20, "ng_recall": 1.0, "ng_recall_lower": 0.86, "lowest_ng_score": threshold_alone + 0.001,
        "threshold_alone": threshold_alone, "demonstrated_alone": False,
    }


def _scope(threshold: float, *, demonstrated: bool, band: bool = False, cost: bool = False, per_defect: bool = False) -> dict[str, Any]:
    scope: dict[str, Any] = {
        "threshold": threshold,
        "chosen_by": "recall-bound" if demonstrated else "point-estimate-minus-margin",
        "demonstrated": demonstrated,
        "recall_bound_threshold": threshold,
        "point_estimate_threshold": round(threshold + 0.05, 6),
        "safety_margin": None if demonstrated else 0.5,
        "ng_needed_zero_misses": 299,
        "n_ok": 200,
        "n_ng": 40,
        "achieved": _achieved(0.975, 0.04, 40, 200),
        "limited_by": {"sample": "ng/<scratch>/p17.png", "score": threshold + 0.000001, "defect": "<scratch>"},
    }
    if per_defect:
        scope["per_defect"] = {"<scratch>": _group(0.31), "dent": _group(0.52)}
    if band:
        scope["uncertain_band"] = {"low": threshold, "high": 0.61, "ng_in_band": 7, "ok_in_band": 12, "ok_rejected_above": 1,
                                   "expected_review_rate": 0.079}
    if cost:
        scope["cost"] = {
            "escape": 100.0, "false_reject": 2.0, "ng_rate": 0.02, "ng_rate_from": "option", "threshold": 0.55,
            "cost_per_part": 0.91, "recall_threshold_cost_per_part": 1.23, "achieved": _achieved(0.9, 0.01, 40, 200),
        }
    return scope


def _record(thresholds: dict[str, dict[str, Any]], *, demonstrated: bool) -> CalibrationRecord:
    return CalibrationRecord.model_validate({
        "schema": "inspector.calibration/1",
        "station": "press-3",
        "created_at": "2024-05-02T08:00:00Z",
        "created_by": "qe@line3",
        "inspector_version": "1.4.0",
        "model": {"name": "press<3>.onnx", "sha256": SHA},
        "target": {"ng_recall": 0.99, "confidence": 0.95},
        "dataset": {
            "source": "data/press-3", "fingerprint": "f" * 64, "basis": "files", "unit": "frame", "n_ok": 200, "n_ng": 40,
            "n_ng_per_class": {"<scratch>": 20, "dent": 20}, "excluded": 2,
        },
        "demonstrated": demonstrated,
        "thresholds": thresholds,
    })


def _scores(seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    return rng.beta(8, 2, 40), rng.beta(2, 8, 200)


def _svgs(page: str) -> list[str]:
    return re.findall(r"<svg\b.*?</svg>", page, flags=re.DOTALL)


def test_not_demonstrated_record_says_so_with_band_cost_and_limiting_defect(tmp_path: Path) -> None:
    record = _record({"*": _scope(0.423117, demonstrated=False, band=True, cost=True, per_defect=True)}, demonstrated=False)
    out = tmp_path / "press-3.report.html"

    assert write_calibration_report(out, record, {"*": _scores(1)}) == out
    page = out.read_text(encoding="utf-8")

    assert len(_svgs(page)) == page.count("<svg") == 4
    assert "All ROIs" in page and "0.423117" in page
    assert "NOT DEMONSTRATED" in page and "299 NG samples with zero misses" in page and "safety margin 0.5" in page
    assert "[0.423117, 0.61)" in page and "7.90%" in page  # the band, with its expected review rate
    assert "Expected cost" in page and "0.91" in page and "1.23" in page
    limit_row = re.search(r"<tr>(?:(?!</tr>).)*limits the threshold(?:(?!</tr>).)*</tr>", page)
    assert limit_row and "&lt;scratch&gt;" in limit_row.group() and 'class="limit"' in limit_row.group()
    assert "dent (limits" not in page


def test_user_text_is_escaped_and_the_page_is_self_contained(tmp_path: Path) -> None:
    record = _record({"*": _scope(0.5, demonstrated=False, band=True, per_defect=True)}, demonstrated=False)
    page = write_calibration_report(tmp_path / "r.html", record, {"*": _scores(2)}).read_text(encoding="utf-8")

    assert "<scratch>" not in page and "&lt;scratch&gt;" in page
    assert "press<3>" not in page and "press&lt;3&gt;.onnx" in page
    assert "<script" not in page and "src=" not in page and "href=" not in page
    for svg in _svgs(page):
        ET.fromstring(svg)  # escaped and well-formed: a browser renders it as drawn


def test_per_roi_thresholds_get_a_section_each(tmp_path: Path) -> None:
    record = _record({"left": _scope(0.31, demonstrated=True), "right": _scope(0.47, demonstrated=True)}, demonstrated=True)
    page = write_calibration_report(tmp_path / "r.html", record, {"left": _scores(3), "right": _scores(4)}).read_text(encoding="utf-8")

    assert page.count("<svg") == 8
    assert "ROI left" in page and "ROI right" in page and "All ROIs" not in page
    assert "DEMONSTRATED" in page and "NOT DEMONSTRATED" not in page
    assert "uncertain band" not in page


def test_the_report_loads_no_heavy_libraries() -> None:
    code = "import sys, inspector.calibration.report; print(sorted(m for m in ('torch', 'matplotlib', 'scipy') if m in sys.modules))"
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip() == "[]"
