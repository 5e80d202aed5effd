"""The decision stage: scores -> `Verdict`. Score of a ROI = 1 - P(ok); reject when score >= its threshold."""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Literal

import numpy as np

from inspector.calibration.record import ALL_ROIS, CalibrationRecord
from inspector.config import THRESHOLD_DECIMALS, DecisionSettings, threshold_problem
from inspector.errors import ConfigError, InputError
from inspector.frame import Reason
from inspector.manifest import OK_CLASS

SCHEMA = "inspector.verdict/1"
PASS: Literal["pass"] = "pass"
REJECT: Literal["reject"] = "reject"
UNCERTAIN: Literal["uncertain"] = "uncertain"  # inside the calibration's uncertain band: never a pass
VerdictValue = Literal["pass", "reject", "uncertain"]
Gate = Literal["pass", "reject", "review"]


def gate(verdict: str, uncertain_route: str) -> Gate:
    """Where a verdict goes on the line: pass, reject, or (an uncertain verdict, when so configured) review."""
    if verdict == UNCERTAIN:
        return "review" if uncertain_route == "review" else REJECT
    return PASS if verdict == PASS else REJECT


@dataclass(frozen=True, slots=True)
class Latency:
    """Milliseconds spent in each stage of one frame."""

    decode: float = 0.0
    preprocess: float = 0.0
    inference: float = 0.0
    total: float = 0.0


@dataclass(frozen=True, slots=True)
class RoiResult:
    """One ROI's outcome: its score, its most likely defect class and its own verdict."""

    name: str
    score: float
    top_class: str  # the most probable non-ok class: the defect this ROI most resembles
    threshold: float
    verdict: VerdictValue
    probabilities: tuple[float, ...]
    uncertain_band: tuple[float, float] | None = None  # [low, high): uncertain; >= high: reject


@dataclass(frozen=True, slots=True)
class Verdict:
    """Exactly one per frame. `reason` is None on a pass, and says why on every reject or uncertain verdict."""

    frame_id: str
    source: str
    captured_at: float
    decided_at: float
    verdict: VerdictValue
    reason: Reason | None
    threshold: float
    rois: tuple[RoiResult, ...]
    model_sha256: str
    provider: str
    latency_ms: Latency
    detail: str | None = None  # the error message when a fault caused the reject
    uncertain_route: str = REJECT  # decision.uncertain_route: where an uncertain verdict goes

    @property
    def gate(self) -> Gate:
        """Where this part goes: pass, reject or review."""
        return gate(self.verdict, self.uncertain_route)

    @property
    def score(self) -> float | None:
        """The frame's score: the highest ROI score; None when the frame could not be scored."""
        return max((r.score for r in self.rois), default=None)

    def to_dict(self) -> dict[str, Any]:
        """The JSON-ready form, the same field names as the MQTT decision payload."""
        return {
            "schema": SCHEMA,
            "frame_id": self.frame_id,
            "source": self.source,
            "verdict": self.verdict,
            "gate": self.gate,
            "reason": self.reason.value if self.reason else None,
            "detail": self.detail,
            "score": round_score(self.score),
            "threshold": self.threshold,
            "rois": [
                {
                    "name": r.name,
                    "score": round_score(r.score),
                    "class": r.top_class,
                    "threshold": r.threshold,
                    "verdict": r.verdict,
                    "uncertain_band": list(r.uncertain_band) if r.uncertain_band else None,
                    "probabilities": [round_score(p) for p in r.probabilities],
                }
                for r in self.rois
            ],
            "model": {"sha256": self.model_sha256, "provider": self.provider},
            "captured_at": iso_time(self.captured_at),
            "decided_at": iso_time(self.decided_at),
            "latency_ms": {k: round(getattr(self.latency_ms, k), 3) for k in ("decode", "preprocess", "inference", "total")},
        }


SCORE_DECIMALS = THRESHOLD_DECIMALS  # one number: a threshold with more decimals than scores are published with is refused


def floor_decimals(x: float, decimals: int = SCORE_DECIMALS) -> float:
    """The highest number of `decimals` decimals (as Python reads it back from text) that is <= x."""
    scale = 10.0**decimals
    k = math.floor(x * scale)
    # x * scale is itself rounded: step to the exact answer, comparing the values a reader of the JSON would get.
    while k / scale > x:
        k -= 1
    while (k + 1) / scale <= x:
        k += 1
    return k / scale + 0.0  # + 0.0: never -0.0


def round_score(x: float | None) -> float | None:
    """A score or probability as published: floored to 6 decimals, None for missing or NaN."""
    if x is None or math.isnan(x):
        return None
    if math.isinf(x):
        return float(x)
    # Floored, not rounded: rounded up, a score just under its threshold would be published at the threshold beside a
    # pass. Floored, a published score is >= a threshold of up to 6 decimals exactly when the decision rejected; every
    # threshold has at most 6 (config.threshold_problem refuses more, from the config, a record or a flag).
    return floor_decimals(float(x))


def iso_time(ts: float) -> str:
    """Unix seconds as ISO 8601 UTC with milliseconds, like 2026-11-23T08:15:02.123Z."""
    return datetime.fromtimestamp(ts, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def shared_threshold(by_roi: dict[str, float]) -> float | None:
    """The threshold every ROI applies, or None when the ROIs' thresholds differ."""
    values = set(by_roi.values())
    return values.pop() if len(values) == 1 else None


class Thresholds:
    """Per-ROI thresholds (and uncertain bands) resolved against the model's ROI names; ConfigError for unknown names."""

    def __init__(
        self,
        settings: DecisionSettings,
        roi_names: tuple[str, ...],
        override: float | None = None,
        *,
        calibration: CalibrationRecord | None = None,
    ) -> None:
        if override is not None and (problem := threshold_problem(override)) is not None:
            raise InputError(f"--threshold: {problem}")  # the flag checks it too; this is for callers of the API
        self.band_high: dict[str, float] = {}
        self.uncertain_route = settings.uncertain_route
        self.calibration = calibration if override is None else None
        if self.calibration is not None:
            self._from_record(self.calibration, roi_names)
            return
        unknown = sorted(set(settings.roi_thresholds) - set(roi_names))
        if unknown:
            raise ConfigError(
                "decision.roi_thresholds names unknown ROIs",
                [f"decision.roi_thresholds.{n}: no such ROI; the ROIs are: {', '.join(roi_names)}" for n in unknown],
            )
        self.default = settings.threshold if override is None else override
        # An explicit --threshold replaces every threshold: it is what a sweep or a what-if means.
        self.by_roi = {n: (self.default if override is not None else settings.roi_thresholds.get(n, self.default)) for n in roi_names}

    def _from_record(self, record: CalibrationRecord, roi_names: tuple[str, ...]) -> None:
        default, per_roi, bands = record.decision()
        missing = [n for n in roi_names if n not in per_roi and default is None]
        if missing:
            raise ConfigError(
                "decision.calibration has no threshold for some ROIs",
                [f"decision.calibration: no threshold for ROI {n}; the record covers {sorted(per_roi)}" for n in missing],
            )
        self.by_roi = {n: per_roi.get(n, default) for n in roi_names}  # type: ignore[misc]
        self.default = default if default is not None else min(self.by_roi.values())
        for n in roi_names:
            band = bands.get(n if n in per_roi else ALL_ROIS)
            if band is not None and band[1] > band[0]:
                self.band_high[n] = band[1]

    def decide(self, roi_names: tuple[str, ...], classes: tuple[str, ...], probabilities: np.ndarray) -> tuple[RoiResult, ...]:
        """Judge each ROI from its class probabilities (rows in ROI order)."""
        ok = classes.index(OK_CLASS)
        defect_idx = [i for i in range(len(classes)) if i != ok]
        results = []
        for name, row in zip(roi_names, probabilities, strict=True):
            score = float(1.0 - row[ok])
            top = classes[max(defect_idx, key=lambda i: row[i])]
            threshold = self.by_roi[name]
            high = self.band_high.get(name)
            # Written so that a score that compares false with everything (NaN) falls through to a reject.
            if score < threshold:
                verdict: VerdictValue = PASS
            elif high is not None and score < high:
                verdict = UNCERTAIN
            else:
                verdict = REJECT
            results.append(
                RoiResult(
                    name=name,
                    score=score,
                    top_class=top,
                    threshold=threshold,
                    verdict=verdict,
                    probabilities=tuple(float(p) for p in row),
                    uncertain_band=None if high is None else (threshold, high),
                )
            )
        return tuple(results)
