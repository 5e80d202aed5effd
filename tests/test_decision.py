"""Scores, thresholds and verdicts."""

from __future__ import annotations

import re

import numpy as np
import pytest

from inspector.config import DecisionSettings
from inspector.decision import Thresholds
from inspector.errors import ConfigError
from tests.conftest import calibration_record

CLASSES = ("ok", "crack", "blowhole")
ROIS = ("a", "b")


def test_score_is_one_minus_p_ok_and_reject_is_score_at_or_above_threshold() -> None:
    t = Thresholds(DecisionSettings(threshold=0.375), ROIS)
    probs = np.array([[0.625, 0.25, 0.125], [0.75, 0.0, 0.25]], np.float32)  # exact in binary: no rounding at the edge
    a, b = t.decide(ROIS, CLASSES, probs)
    assert a.score == 0.375 and a.verdict == "reject"  # exactly at the threshold rejects
    assert b.score == 0.25 and b.verdict == "pass"
    assert a.top_class == "crack" and b.top_class == "blowhole"


def test_per_roi_thresholds_apply_and_others_use_the_default() -> None:
    t = Thresholds(DecisionSettings(threshold=0.5, roi_thresholds={"b": 0.1}), ROIS)
    probs = np.array([[0.8, 0.2, 0.0], [0.8, 0.2, 0.0]], np.float32)
    a, b = t.decide(ROIS, CLASSES, probs)
    assert (a.threshold, a.verdict) == (0.5, "pass")
    assert (b.threshold, b.verdict) == (0.1, "reject")


def test_an_explicit_threshold_replaces_every_roi_threshold() -> None:
    t = Thresholds(DecisionSettings(threshold=0.5, roi_thresholds={"b": 0.1}), ROIS, override=0.9)
    assert t.by_roi == {"a": 0.9, "b": 0.9}


def test_thresholds_for_unknown_rois_name_the_real_ones() -> None:
    with pytest.raises(ConfigError) as info:
        Thresholds(DecisionSettings(roi_thresholds={"c": 0.2}), ROIS)
    assert info.value.errors == ["decision.roi_thresholds.c: no such ROI; the ROIs are: a, b"]


def test_uncertain_band_gives_uncertain_between_its_ends_and_reject_above() -> None:
    t = Thresholds(DecisionSettings(), ("a",), calibration=calibration_record({"*": (0.25, (0.25, 0.75))}))
    verdicts = [t.decide(("a",), ("ok", "ng"), np.array([[1 - s, s]], np.float32))[0] for s in (0.125, 0.25, 0.5, 0.75, 0.875)]
    assert [v.verdict for v in verdicts] == ["pass", "uncertain", "uncertain", "reject", "reject"]
    assert verdicts[1].uncertain_band == (0.25, 0.75) and verdicts[0].threshold == 0.25


def test_a_nan_score_rejects_with_or_without_an_uncertain_band() -> None:
    nan = np.array([[np.nan, 0.5]], np.float32)
    plain = Thresholds(DecisionSettings(threshold=0.5), ("a",))
    banded = Thresholds(DecisionSettings(), ("a",), calibration=calibration_record({"*": (0.25, (0.25, 0.75))}))
    assert [t.decide(("a",), ("ok", "ng"), nan)[0].verdict for t in (plain, banded)] == ["reject", "reject"]


def test_per_roi_calibration_sets_each_roi_and_must_cover_them_all() -> None:
    t = Thresholds(DecisionSettings(), ROIS, calibration=calibration_record({"a": (0.125, None), "b": (0.5, (0.5, 0.875))}))
    assert t.by_roi == {"a": 0.125, "b": 0.5} and t.band_high == {"b": 0.875} and t.default == 0.125
    with pytest.raises(ConfigError) as info:
        Thresholds(DecisionSettings(), ("a", "b", "c"), calibration=calibration_record({"a": (0.1, None), "b": (0.2, None)}))
    assert info.value.errors == ["decision.calibration: no threshold for ROI c; the record covers ['a', 'b']"]


def test_gate_routes_uncertain_per_config_and_everything_else_by_verdict() -> None:
    from inspector.decision import gate

    assert [gate(v, "reject") for v in ("pass", "reject", "uncertain")] == ["pass", "reject", "reject"]
    assert [gate(v, "review") for v in ("pass", "reject", "uncertain")] == ["pass", "reject", "review"]


def test_calibration_and_a_threshold_in_the_same_config_is_refused() -> None:
    from pydantic import ValidationError

    with pytest.raises(ValidationError, match="calibration sets the thresholds: remove decision.threshold"):
        DecisionSettings(threshold=0.3, calibration="calibration/s1.yaml")
    assert DecisionSettings(calibration="calibration/s1.yaml").uncertain_route == "reject"


@pytest.mark.parametrize("score", [0.29999995, 0.2999999, 0.2999995, 0.3, 0.30000004, 0.3000005])
def test_a_published_score_reaches_its_threshold_exactly_when_the_part_was_rejected(score: float) -> None:
    from inspector.decision import Latency, Verdict
    from inspector.frame import Reason

    t = Thresholds(DecisionSettings(threshold=0.3), ("a",))
    (roi,) = t.decide(("a",), ("ok", "ng"), np.array([[1.0 - score, score]], np.float64))
    verdict = Verdict("f", "f.png", 0.0, 0.0, roi.verdict, Reason.SCORE if roi.verdict == "reject" else None, 0.3, (roi,),
                      "0" * 64, "cpu", Latency())
    published = verdict.to_dict()
    assert (published["score"] >= published["threshold"]) is (published["verdict"] == "reject")
    assert (published["rois"][0]["score"] >= 0.3) is (roi.verdict == "reject")
    assert published["score"] <= roi.score and len(repr(published["score"]).split(".")[1]) <= 6


def test_a_threshold_finer_than_published_scores_is_refused_however_it_comes() -> None:
    # At 0.4446995 a score of 0.44469953 rejects, yet is published as 0.444699: below the threshold that rejected it.
    from pydantic import ValidationError

    from inspector.errors import InputError

    seven = "expected a number in 0..1 with at most 6 decimals (scores are published with 6), got 0.4446995"
    with pytest.raises(InputError, match=re.escape(seven)):
        Thresholds(DecisionSettings(), ROIS, 0.4446995)
    for settings in ({"threshold": 0.4446995}, {"roi_thresholds": {"a": 0.4446995}}):
        with pytest.raises(ValidationError, match="at most 6 decimals"):
            DecisionSettings(**settings)
    with pytest.raises(ValidationError, match="at most 6 decimals"):
        calibration_record({"*": (0.4446995, None)})
    assert Thresholds(DecisionSettings(threshold=0.7266, roi_thresholds={"b": 0.3}), ROIS).by_roi == {"a": 0.7266, "b": 0.3}
