"""The accuracy gate for reduced precision: a candidate runtime against the FP32 reference on labelled golden images.

Used by `inspector export --quantize int8` (INT8 against the FP32 export) and at load time by a reduced-precision
backend (OpenVINO bf16 against onnxruntime FP32). Refused when ROC-AUC drops by more than `MAX_AUC_DROP` or more than
`MAX_FLIP_RATE` of the verdicts flip at the threshold. Runtime only: onnxruntime/OpenCV/numpy.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from inspector.errors import InputError
from inspector.frame import FrameFault
from inspector.manifest import OK_CLASS
from inspector.model import Classifier
from inspector.preprocess import Preprocessor, PreprocessSpec
from inspector.replay.dataset import collect
from inspector.replay.metrics import roc_auc

MAX_AUC_DROP = 0.005
MAX_FLIP_RATE = 0.005


@dataclass(frozen=True, slots=True)
class AccuracyGate:
    """Reference against candidate on the golden set, both through the daemon's path."""

    images: int
    labelled: int
    threshold: float
    roc_auc_reference: float | None
    roc_auc_candidate: float | None
    flips: int
    max_abs_score_diff: float
    max_auc_drop: float = MAX_AUC_DROP
    max_flip_rate: float = MAX_FLIP_RATE

    @property
    def auc_drop(self) -> float | None:
        """How much ROC-AUC the candidate lost (negative: it gained)."""
        if self.roc_auc_reference is None or self.roc_auc_candidate is None:
            return None
        return self.roc_auc_reference - self.roc_auc_candidate

    @property
    def flip_rate(self) -> float:
        """Share of golden images whose verdict differs at the threshold."""
        return self.flips / max(self.images, 1)

    @property
    def passed(self) -> bool:
        """Both limits hold (and there were labels to measure ROC-AUC with)."""
        return self.auc_drop is not None and self.auc_drop <= self.max_auc_drop and self.flip_rate <= self.max_flip_rate

    def problem(self) -> str:
        """Why the gate refused, in a sentence."""
        reasons = []
        if self.auc_drop is None:
            reasons.append("the golden set needs labelled OK and NG images (ok/ + ng/<defect>/) to measure ROC-AUC")
        elif self.auc_drop > self.max_auc_drop:
            reasons.append(f"ROC-AUC drops by {self.auc_drop:.4f} ({self.roc_auc_reference:.4f} -> {self.roc_auc_candidate:.4f}) > {self.max_auc_drop:g}")
        if self.flip_rate > self.max_flip_rate:
            reasons.append(f"{self.flips} of {self.images} verdicts flip at threshold {self.threshold:g} "
                           f"({100 * self.flip_rate:.2f}% > {100 * self.max_flip_rate:g}%)")
        return "; ".join(reasons) or "passed"

    def to_dict(self) -> dict[str, Any]:
        """The figures as stored in a manifest or logged."""
        return {
            "images": self.images, "labelled": self.labelled, "threshold": self.threshold,
            "roc_auc_reference": self.roc_auc_reference, "roc_auc_candidate": self.roc_auc_candidate, "auc_drop": self.auc_drop,
            "flips": self.flips, "flip_rate": self.flip_rate, "max_abs_score_diff": self.max_abs_score_diff,
            "max_auc_drop": self.max_auc_drop, "max_flip_rate": self.max_flip_rate, "passed": self.passed,
        }


def frame_scores(classifier: Classifier, spec: PreprocessSpec, frames: list[Path]) -> list[float | None]:
    """Each frame's score (highest ROI score, 1 - P(ok)) the daemon's way; None when the file cannot be judged."""
    pre = Preprocessor(spec)
    ok = classifier.classes.index(OK_CLASS)
    out: list[float | None] = []
    for p in frames:
        try:
            probs = classifier.predict(pre(pre.decode(p.read_bytes())))
        except (FrameFault, OSError):
            out.append(None)
            continue
        out.append(float(np.max(1.0 - probs[:, ok])))
    return out


def compare(reference: list[float | None], candidate: list[float | None], labels: list[str | None], *, threshold: float,
            max_auc_drop: float = MAX_AUC_DROP, max_flip_rate: float = MAX_FLIP_RATE) -> AccuracyGate:
    """The gate's figures from both runtimes' scores of the same frames."""
    both = [(x, y, lab) for x, y, lab in zip(reference, candidate, labels, strict=True) if x is not None and y is not None]
    flips = sum((x >= threshold) != (y >= threshold) for x, y, _ in both)
    labelled = [(x, y, lab == "ng") for x, y, lab in both if lab in ("ok", "ng")]
    positives = [ng for _, _, ng in labelled]
    auc_ref = roc_auc([x for x, _, _ in labelled], positives) if labelled else None
    auc_cand = roc_auc([y for _, y, _ in labelled], positives) if labelled else None
    diff = max((abs(x - y) for x, y, _ in both), default=0.0)
    return AccuracyGate(len(both), len(labelled), threshold, auc_ref, auc_cand, flips, diff, max_auc_drop, max_flip_rate)


def golden_set(folder: Path, what: str = "model.golden") -> tuple[list[Path], list[str | None]]:
    """The labelled images under `folder` (ok/ + ng/<defect>/ layout) and their labels."""
    if not folder.is_dir():
        raise InputError(f"{what}: {folder} is not a folder; expected ok/ and ng/<defect>/ folders of images")
    items = collect(folder).items  # unlabelled images still count for agreement
    return [i.path for i in items], [i.label for i in items]
