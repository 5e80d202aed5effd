"""Scores, thresholds and verdicts."""

from __future__ import annotations

import numpy as np
import pytest

from inspector.config import DecisionSettings
from inspector.decision import Thresholds
from inspector.errors import ConfigError

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
