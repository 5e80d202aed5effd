"""The OpenVINO backend: the same ONNX file, manifest and checks as `OnnxClassifier`, run by OpenVINO's CPU plugin.

bf16 inference precision where the CPU has AMX or AVX512-BF16 (and a golden set is configured for the accuracy gate,
which `build_pipeline` runs once the threshold is known), fp32 elsewhere. Needs the `openvino` extra.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import openvino as ov
import structlog

from inspector.config import ModelSettings
from inspector.errors import ModelError
from inspector.model import OnnxClassifier, one_each


class OpenVinoClassifier(OnnxClassifier):
    """An ONNX classifier compiled by OpenVINO for the CPU; `provider` reads openvino-cpu-bf16 or openvino-cpu-fp32."""

    gate_remedy = "set model.openvino_precision: fp32 or model.backend: onnxruntime"

    @property
    def needs_gate(self) -> bool:
        """Reduced precision: the accuracy gate must pass before the first frame."""
        return self.precision == "bf16"

    def _create_session(self, data: bytes, settings: ModelSettings) -> tuple[Any, list[str]]:
        # self.precision: set from model.openvino_precision and the CPU while the model compiles
        core = ov.Core()
        self.precision = _precision(core, settings, self.log)
        try:
            # From the bytes already hashed: the file cannot change between the sha256 check and the load.
            self._model = core.read_model(model=data, weights=b"")
            compiled = core.compile_model(self._model, "CPU", {
                "INFERENCE_PRECISION_HINT": "bf16" if self.precision == "bf16" else "f32",
                "PERFORMANCE_HINT": "LATENCY",
                # 0 in onnxruntime's terms means every core; OpenVINO's CPU plugin reads 0 the same way.
                "INFERENCE_NUM_THREADS": settings.intra_op_threads,
            })
        except RuntimeError as exc:
            # OpenVINO's first lines name its own source file ("Exception from src/...:105:"); the reason comes after.
            lines = [line.strip() for line in str(exc).splitlines() if line.strip() and not line.strip().startswith("Exception from")]
            raise ModelError(f"OpenVINO cannot load {self.path}: {lines[0] if lines else str(exc).strip()}") from exc
        self._request = compiled.create_infer_request()
        return compiled, [f"openvino-cpu-{self.precision}"]

    def _metadata(self) -> dict[str, str]:
        info = self._model.get_rt_info()
        # ONNX metadata_props arrive as rt_info["framework"]: the manifest is read from there.
        return {str(k): v.astype(str) for k, v in dict(info["framework"]).items()} if "framework" in info else {}

    def _io(self) -> tuple[str, list[object], list[object], type]:
        one_each(self.path, [i.get_any_name() for i in self._model.inputs], [o.get_any_name() for o in self._model.outputs])
        inp, out = self._model.inputs[0], self._model.outputs[0]
        return inp.get_any_name(), _dims(inp.get_partial_shape()), _dims(out.get_partial_shape()), np.float32

    def _run(self, x: np.ndarray) -> np.ndarray:
        return np.asarray(self._request.infer({0: np.ascontiguousarray(x)})[0])


def _dims(shape: Any) -> list[object]:
    """A partial shape as onnxruntime gives it: ints for static dimensions, a name for dynamic ones."""
    return [d.get_length() if d.is_static else "dynamic" for d in shape]


def _precision(core: ov.Core, settings: ModelSettings, log: structlog.typing.FilteringBoundLogger) -> str:
    """bf16 where asked (or, for auto, where the CPU and a golden set allow it); fp32 otherwise."""
    has_bf16 = "BF16" in core.get_property("CPU", "OPTIMIZATION_CAPABILITIES")
    wanted = settings.openvino_precision
    if wanted == "bf16":
        if not has_bf16:
            raise ModelError("model.openvino_precision: bf16 needs a CPU with AMX or AVX512-BF16, and this one has neither; use auto or fp32")
        if settings.golden is None:
            raise ModelError("model.openvino_precision: bf16 needs model.golden (labelled ok/ + ng/ images) for its accuracy gate")
        return "bf16"
    if wanted == "auto" and has_bf16:
        if settings.golden is not None:
            return "bf16"
        log.info("openvino_fp32", why="bf16 runs only behind the accuracy gate: set model.golden to labelled images to enable it")
    return "fp32"
