"""The accuracy gate for reduced precision: a candidate runtime against the FP32 reference on labelled golden images.

Used by `inspector export --quantize int8` (INT8 against the FP32 export) and at load time by a reduced-precision
backend (OpenVINO bf16 against onnxruntime FP32). Refused when ROC-AUC drops by more than `MAX_AUC_DROP` or more than
`MAX_FLIP_RATE` of the verdicts flip at the threshold. Runtime only: onnxruntime/OpenCV/numpy.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeGuard

import numpy as np

from inspector.errors import InputError
from inspector.frame import FrameFault
from inspector.manifest import OK_CLASS
from inspector.model import Classifier
from inspector.preprocess import Preprocessor, PreprocessSpec
from inspector.regular_file import read_regular
from inspector.replay.dataset import collect
from inspector.replay.metrics import roc_auc

MAX_AUC_DROP = 0.005
MAX_FLIP_RATE = 0.005


@dataclass(frozen=True, slots=True)
class Unjudged:
    """A golden frame the daemon's path does not judge: why (a `Reason` value, or unreadable) and the first fault's words."""

    reason: str
    detail: str


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
    skipped: dict[str, int] = field(default_factory=dict)  # golden frames left out, per reason
    skipped_example: str | None = None  # the first one's file and fault

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
        if self.auc_drop is None and self.images == 0 and self.skipped:
            # Not a labelling problem: there were images, and none of them could be judged.
            reasons.append("no golden frame could be judged, so there is nothing to compare")
        elif self.auc_drop is None:
            reasons.append("the golden set needs labelled OK and NG images (ok/ + ng/<defect>/) to measure ROC-AUC")
        elif self.auc_drop > self.max_auc_drop:
            reasons.append(f"ROC-AUC drops by {self.auc_drop:.4f} ({self.roc_auc_reference:.4f} -> {self.roc_auc_candidate:.4f}) > {self.max_auc_drop:g}")
        if self.flip_rate > self.max_flip_rate:
            reasons.append(f"{self.flips} of {self.images} verdicts flip at threshold {self.threshold:g} "
                           f"({100 * self.flip_rate:.2f}% > {100 * self.max_flip_rate:g}%)")
        if reasons and self.skipped:
            reasons.append(self.skipped_text())
        return "; ".join(reasons) or "passed"

    def skipped_text(self) -> str:
        """The golden frames left out, per reason: '12 golden frames skipped: frame_size 12 (a.png: 48x48 frame; ...)'."""
        n = sum(self.skipped.values())
        text = f"{n} golden frame{'s' * (n != 1)} skipped: {skipped_counts(self.skipped, self.skipped_example)}"
        if "frame_size" in self.skipped:
            text += "; golden frames must be of the sizes the model was trained on (its manifest's preprocess.frame_size)"
        return text

    def to_dict(self) -> dict[str, Any]:
        """The figures as stored in a manifest or logged."""
        return {
            "images": self.images, "labelled": self.labelled, "threshold": self.threshold,
            "roc_auc_reference": self.roc_auc_reference, "roc_auc_candidate": self.roc_auc_candidate, "auc_drop": self.auc_drop,
            "flips": self.flips, "flip_rate": self.flip_rate, "max_abs_score_diff": self.max_abs_score_diff,
            "max_auc_drop": self.max_auc_drop, "max_flip_rate": self.max_flip_rate, "passed": self.passed,
            "skipped": dict(self.skipped), "skipped_example": self.skipped_example,
        }


def skipped_counts(skipped: dict[str, int], example: str | None) -> str:
    """Golden frames left unjudged, per reason, most first, with the first one's file and fault: 'frame_size 12 (a.png: ...)'."""
    counts = ", ".join(f"{reason} {count}" for reason, count in sorted(skipped.items(), key=lambda kv: (-kv[1], kv[0])))
    return counts + (f" ({example})" if example else "")


Score = float | Unjudged | None  # None: left out for a reason not known (no Unjudged given)


def frame_scores(classifier: Classifier, spec: PreprocessSpec, frames: list[Path]) -> list[float | Unjudged]:
    """Each frame's score (highest ROI score, 1 - P(ok)) the daemon's way; `Unjudged` when the file cannot be judged."""
    pre = Preprocessor(spec)
    ok = classifier.classes.index(OK_CLASS)
    out: list[float | Unjudged] = []
    for p in frames:
        try:
            probs = classifier.predict(pre(pre.decode(read_regular(p))))
        except FrameFault as fault:
            out.append(Unjudged(fault.reason.value, f"{p.name}: {fault.detail}"))
            continue
        except OSError as exc:
            out.append(Unjudged("unreadable", f"{p.name}: {exc.strerror or exc}"))
            continue
        out.append(float(np.max(1.0 - probs[:, ok])))
    return out


def compare(reference: list[Score], candidate: list[Score], labels: list[str | None], *, threshold: float,
            max_auc_drop: float = MAX_AUC_DROP, max_flip_rate: float = MAX_FLIP_RATE) -> AccuracyGate:
    """The gate's figures from both runtimes' scores of the same frames; frames either could not judge are left out and counted."""
    skipped: Counter[str] = Counter()
    example = None
    for x, y in zip(reference, candidate, strict=True):
        if _judged(x) and _judged(y):
            continue
        why = next((s for s in (x, y) if isinstance(s, Unjudged)), None)  # one count per frame: the reference's reason first
        skipped[why.reason if why is not None else "unjudged"] += 1
        if example is None and why is not None:
            example = why.detail
    both = [(x, y, lab) for x, y, lab in zip(reference, candidate, labels, strict=True) if _judged(x) and _judged(y)]
    flips = sum((x >= threshold) != (y >= threshold) for x, y, _ in both)
    labelled = [(x, y, lab == "ng") for x, y, lab in both if lab in ("ok", "ng")]
    positives = [ng for _, _, ng in labelled]
    auc_ref = roc_auc([x for x, _, _ in labelled], positives) if labelled else None
    auc_cand = roc_auc([y for _, y, _ in labelled], positives) if labelled else None
    diff = max((abs(x - y) for x, y, _ in both), default=0.0)
    return AccuracyGate(len(both), len(labelled), threshold, auc_ref, auc_cand, flips, diff, max_auc_drop, max_flip_rate,
                        dict(skipped), example)


def _judged(score: Score) -> TypeGuard[float]:
    return score is not None and not isinstance(score, Unjudged)


def golden_set(folder: Path, what: str = "model.golden") -> tuple[list[Path], list[str | None]]:
    """The labelled images under `folder` (ok/ + ng/<defect>/ layout) and their labels."""
    if not folder.is_dir():
        raise InputError(f"{what}: {folder} is not a folder; expected ok/ and ng/<defect>/ folders of images")
    items = collect(folder).items  # unlabelled images still count for agreement
    return [i.path for i in items], [i.label for i in items]
