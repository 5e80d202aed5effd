"""The decision stage: scores -> `Verdict`. Score of a ROI = 1 - P(ok); reject when score >= its threshold."""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Literal

import numpy as np

from inspector.config import DecisionSettings
from inspector.errors import ConfigError
from inspector.frame import Reason
from inspector.manifest import OK_CLASS

SCHEMA = "inspector.verdict/1"
PASS: Literal["pass"] = "pass"
REJECT: Literal["reject"] = "reject"


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
    verdict: Literal["pass", "reject"]
    probabilities: tuple[float, ...]


@dataclass(frozen=True, slots=True)
class Verdict:
    """Exactly one per frame. `reason` is None on a pass, and says why on every reject."""

    frame_id: str
    source: str
    captured_at: float
    decided_at: float
    verdict: Literal["pass", "reject"]
    reason: Reason | None
    threshold: float
    rois: tuple[RoiResult, ...]
    model_sha256: str
    provider: str
    latency_ms: Latency
    detail: str | None = None  # the error message when a fault caused the reject

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
                    "probabilities": [round_score(p) for p in r.probabilities],
                }
                for r in self.rois
            ],
            "model": {"sha256": self.model_sha256, "provider": self.provider},
            "captured_at": iso_time(self.captured_at),
            "decided_at": iso_time(self.decided_at),
            "latency_ms": {k: round(getattr(self.latency_ms, k), 3) for k in ("decode", "preprocess", "inference", "total")},
        }


def round_score(x: float | None) -> float | None:
    """A score or probability as published: 6 decimals, None for missing or NaN."""
    return None if x is None or math.isnan(x) else round(float(x), 6)


def iso_time(ts: float) -> str:
    """Unix seconds as ISO 8601 UTC with milliseconds, like 2026-11-23T08:15:02.123Z."""
    return datetime.fromtimestamp(ts, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


class Thresholds:
    """Per-ROI thresholds resolved against the model's ROI names; raises ConfigError for unknown names."""

    def __init__(self, settings: DecisionSettings, roi_names: tuple[str, ...], override: float | None = None) -> None:
        unknown = sorted(set(settings.roi_thresholds) - set(roi_names))
        if unknown:
            raise ConfigError(
                "decision.roi_thresholds names unknown ROIs",
                [f"decision.roi_thresholds.{n}: no such ROI; the ROIs are: {', '.join(roi_names)}" for n in unknown],
            )
        self.default = settings.threshold if override is None else override
        # An explicit --threshold replaces every threshold: it is what a sweep or a what-if means.
        self.by_roi = {n: (self.default if override is not None else settings.roi_thresholds.get(n, self.default)) for n in roi_names}

    def decide(self, roi_names: tuple[str, ...], classes: tuple[str, ...], probabilities: np.ndarray) -> tuple[RoiResult, ...]:
        """Judge each ROI from its class probabilities (rows in ROI order)."""
        ok = classes.index(OK_CLASS)
        defect_idx = [i for i in range(len(classes)) if i != ok]
        results = []
        for name, row in zip(roi_names, probabilities, strict=True):
            score = float(1.0 - row[ok])
            top = classes[max(defect_idx, key=lambda i: row[i])]
            threshold = self.by_roi[name]
            results.append(
                RoiResult(
                    name=name,
                    score=score,
                    top_class=top,
                    threshold=threshold,
                    verdict=REJECT if score >= threshold else PASS,
                    probabilities=tuple(float(p) for p in row),
                )
            )
        return tuple(results)
