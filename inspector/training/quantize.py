"""INT8 static quantization (onnxruntime, QDQ, per-channel weights) behind an accuracy gate on a labelled golden set.

Calibration frames go through the runtime's own preprocessing, so the activation ranges are those the daemon will
feed. The gate compares the INT8 model with the FP32 model it came from, both run the daemon's way: it refuses
when ROC-AUC drops by more than `MAX_AUC_DROP` or more than `MAX_FLIP_RATE` of the verdicts flip at the threshold.
"""

from __future__ import annotations

import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from inspector.config import ModelSettings, Provider
from inspector.errors import InputError
from inspector.frame import FrameFault
from inspector.model import OnnxClassifier
from inspector.preprocess import Preprocessor, PreprocessSpec
from inspector.replay.metrics import roc_auc

MAX_AUC_DROP = 0.005
MAX_FLIP_RATE = 0.005
CALIBRATION_IMAGES = 200  # MinMax ranges settle well before this; more only costs export time


@dataclass(frozen=True, slots=True)
class AccuracyGate:
    """FP32 against INT8 on the golden set, both through the daemon's path."""

    images: int
    labelled: int
    threshold: float
    roc_auc_fp32: float | None
    roc_auc_int8: float | None
    flips: int
    max_abs_score_diff: float
    max_auc_drop: float
    max_flip_rate: float

    @property
    def auc_drop(self) -> float | None:
        """How much ROC-AUC the quantization cost (negative: it gained)."""
        if self.roc_auc_fp32 is None or self.roc_auc_int8 is None:
            return None
        return self.roc_auc_fp32 - self.roc_auc_int8

    @property
    def flip_rate(self) -> float:
        """Share of golden images whose verdict differs between FP32 and INT8 at the threshold."""
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
            reasons.append(f"ROC-AUC drops by {self.auc_drop:.4f} ({self.roc_auc_fp32:.4f} -> {self.roc_auc_int8:.4f}) > {self.max_auc_drop:g}")
        if self.flip_rate > self.max_flip_rate:
            reasons.append(f"{self.flips} of {self.images} verdicts flip at threshold {self.threshold:g} "
                           f"({100 * self.flip_rate:.2f}% > {100 * self.max_flip_rate:g}%)")
        return "; ".join(reasons) or "passed"

    def to_dict(self) -> dict[str, Any]:
        """The figures as stored in the manifest."""
        return {
            "images": self.images, "labelled": self.labelled, "threshold": self.threshold,
            "roc_auc_fp32": self.roc_auc_fp32, "roc_auc_int8": self.roc_auc_int8, "auc_drop": self.auc_drop,
            "flips": self.flips, "flip_rate": self.flip_rate, "max_abs_score_diff": self.max_abs_score_diff,
            "max_auc_drop": self.max_auc_drop, "max_flip_rate": self.max_flip_rate, "passed": self.passed,
        }


def calibration_batches(spec: PreprocessSpec, frames: list[Path], limit: int = CALIBRATION_IMAGES) -> list[np.ndarray]:
    """Preprocessed (rois, C, H, W) batches of up to `limit` frames spread evenly over `frames`; unreadable ones are skipped."""
    if len(frames) > limit:
        frames = [frames[int(i)] for i in np.linspace(0, len(frames) - 1, limit)]
    pre = Preprocessor(spec)
    batches = []
    for path in frames:
        try:
            batches.append(pre(pre.decode(path.read_bytes())).copy())
        except (FrameFault, OSError):
            continue
    if not batches:
        raise InputError(f"--calibration-data: none of the {len(frames)} images could be read and preprocessed")
    return batches


def quantize_int8(fp32: Path, out: Path, input_name: str, batches: list[np.ndarray]) -> dict[str, Any]:
    """Write the INT8 QDQ model of `fp32` to `out`; returns what the manifest records about it."""
    from onnxruntime.quantization import (
        CalibrationDataReader,
        CalibrationMethod,
        QuantFormat,
        QuantType,
        quantize_static,
    )
    from onnxruntime.quantization.shape_inference import quant_pre_process

    class _Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self._it: Iterator[np.ndarray] = iter(batches)

        def get_next(self) -> dict[str, np.ndarray] | None:
            batch = next(self._it, None)
            return None if batch is None else {input_name: batch}

    with tempfile.TemporaryDirectory(prefix="inspector-quant-") as tmp:
        prepared = Path(tmp) / "prepared.onnx"
        # Shape inference and graph folding first, as onnxruntime's quantization guide asks: BN folded into Conv.
        quant_pre_process(str(fp32), str(prepared), skip_symbolic_shape=True)
        quantize_static(
            str(prepared), str(out), _Reader(),
            quant_format=QuantFormat.QDQ,
            per_channel=True,
            # VNNI/AMX CPUs accumulate u8 x s8 without saturation, so no reduce_range (onnxruntime's CPU guidance).
            activation_type=QuantType.QUInt8,
            weight_type=QuantType.QInt8,
            calibrate_method=CalibrationMethod.MinMax,
        )
    return {
        "method": "onnxruntime static quantization, QDQ",
        "weights": "int8, per channel",
        "activations": "uint8, per tensor, MinMax",
        "calibration_images": len(batches),
    }


def frame_scores(model: Path, frames: list[Path], log: Any) -> list[float | None]:
    """Each frame's score (highest ROI score, 1 - P(ok)) through the daemon's path on the CPU; None when unreadable."""
    clf = OnnxClassifier(model, ModelSettings(providers=[Provider.CPU], warmup_runs=0), log=log)
    pre = Preprocessor(clf.spec)
    ok = clf.classes.index("ok")
    out: list[float | None] = []
    for p in frames:
        try:
            probs = clf.predict(pre(pre.decode(p.read_bytes())))
        except (FrameFault, OSError):
            out.append(None)
            continue
        out.append(float(np.max(1.0 - probs[:, ok])))
    return out


def accuracy_gate(
    fp32: Path, int8: Path, frames: list[Path], labels: list[str | None], *, threshold: float, log: Any,
    max_auc_drop: float = MAX_AUC_DROP, max_flip_rate: float = MAX_FLIP_RATE,
) -> AccuracyGate:
    """Score the golden frames with both models and compare ROC-AUC and verdicts."""
    a, b = frame_scores(fp32, frames, log), frame_scores(int8, frames, log)
    both = [(x, y, lab) for x, y, lab in zip(a, b, labels, strict=True) if x is not None and y is not None]
    flips = sum((x >= threshold) != (y >= threshold) for x, y, _ in both)
    labelled = [(x, y, lab == "ng") for x, y, lab in both if lab in ("ok", "ng")]
    positives = [ng for _, _, ng in labelled]
    auc32 = roc_auc([x for x, _, _ in labelled], positives) if labelled else None
    auc8 = roc_auc([y for _, y, _ in labelled], positives) if labelled else None
    diff = max((abs(x - y) for x, y, _ in both), default=0.0)
    return AccuracyGate(len(both), len(labelled), threshold, auc32, auc8, flips, diff, max_auc_drop, max_flip_rate)
