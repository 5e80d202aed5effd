"""INT8 static quantization (onnxruntime, QDQ, per-channel weights) behind an accuracy gate on a labelled golden set.

Calibration frames go through the runtime's own preprocessing, so the activation ranges are those the daemon will
feed. The gate (`inspector.gate`) compares the INT8 model with the FP32 model it came from, both run the daemon's way.
"""

from __future__ import annotations

import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from inspector.config import ModelSettings, Provider
from inspector.errors import InputError
from inspector.frame import FrameFault
from inspector.gate import (
    MAX_AUC_DROP,
    MAX_FLIP_RATE,
    AccuracyGate,
    compare,
    frame_scores,
)
from inspector.model import OnnxClassifier
from inspector.preprocess import Preprocessor, PreprocessSpec
from inspector.regular_file import read_regular

CALIBRATION_IMAGES = 200  # MinMax ranges settle well before this; more only costs export time


def calibration_batches(spec: PreprocessSpec, frames: list[Path], limit: int = CALIBRATION_IMAGES) -> list[np.ndarray]:
    """Preprocessed (rois, C, H, W) batches of up to `limit` frames spread evenly over `frames`; unreadable ones are skipped."""
    if len(frames) > limit:
        frames = [frames[int(i)] for i in np.linspace(0, len(frames) - 1, limit)]
    pre = Preprocessor(spec)
    batches = []
    for path in frames:
        try:
            batches.append(pre(pre.decode(read_regular(path))).copy())
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


def accuracy_gate(
    fp32: Path, int8: Path, frames: list[Path], labels: list[str | None], *, threshold: float, log: Any,
    max_auc_drop: float = MAX_AUC_DROP, max_flip_rate: float = MAX_FLIP_RATE,
) -> AccuracyGate:
    """Score the golden frames with both models on onnxruntime's CPU provider and compare ROC-AUC and verdicts."""
    settings = ModelSettings(providers=[Provider.CPU], warmup_runs=0)
    ref, cand = (OnnxClassifier(m, settings, log=log) for m in (fp32, int8))
    return compare(frame_scores(ref, ref.spec, frames), frame_scores(cand, cand.spec, frames), labels, threshold=threshold,
                   max_auc_drop=max_auc_drop, max_flip_rate=max_flip_rate)
