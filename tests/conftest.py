"""Shared fixtures: real ONNX models exported once per session, and small synthetic image sets."""

from __future__ import annotations

import os
import struct
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import structlog

from inspector.cpu_latency import DEVICE as CPU_LATENCY_DEVICE
from inspector.logs import configure_logging
from inspector.preprocess import PreprocessSpec
from inspector.samples import write_labelled_folder, write_roi_frames

GRAY64 = PreprocessSpec(color="gray", resize={"width": 64, "height": 64})


@pytest.fixture(autouse=True)
def _json_logs_to_stderr() -> Iterator[None]:
    """Each test starts with the CLI's default logging (JSON on a non-TTY stderr)."""
    configure_logging("info", "json")
    structlog.contextvars.clear_contextvars()
    yield
    # Module- and session-scoped fixtures of the next test are set up before this fixture runs again, so a stream or
    # context a test configured must not outlive it.
    configure_logging("info", "json")
    structlog.contextvars.clear_contextvars()


def _dark_spot_module(n_defect_classes: int = 1):
    """A hand-built detector: P(ng) rises when any 2x2 patch is much darker than a clean tile; answers are known."""
    import torch

    class DarkSpot(torch.nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            darkest = torch.nn.functional.avg_pool2d(-x[:, :1], 2, stride=1).amax(dim=(1, 2, 3))
            ng = 12.0 * (darkest - 0.8)
            cols = [torch.zeros_like(ng), ng] + [ng - 1.0 - i for i in range(n_defect_classes - 1)]
            return torch.stack(cols, dim=1)

    return DarkSpot()


@pytest.fixture(scope="session")
def models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Real ONNX files: a tiny ResNet18, the known-answer dark-spot detector and its variants, and broken ones."""
    import onnx
    import torch
    import torchvision
    from onnx import TensorProto, helper

    from inspector.training.onnx_export import export_classifier

    root = tmp_path_factory.mktemp("models")
    out: dict[str, Path] = {}

    torch.manual_seed(0)
    resnet = torchvision.models.resnet18(num_classes=2)
    resnet.conv1 = torch.nn.Conv2d(1, 64, 7, 2, 3, bias=False)  # gray input
    out["resnet"] = root / "resnet18.onnx"
    clahe = PreprocessSpec.model_validate({**GRAY64.model_dump(), "clahe": {"enabled": True}})
    export_classifier(resnet, clahe, ("ok", "ng"), out["resnet"])

    out["dark"] = root / "dark.onnx"
    export_classifier(_dark_spot_module(), GRAY64, ("ok", "ng"), out["dark"])

    out["multi"] = root / "multi.onnx"
    export_classifier(_dark_spot_module(2), GRAY64, ("ok", "crack", "blowhole"), out["multi"])

    roi_spec = PreprocessSpec(
        color="gray",
        resize={"width": 48, "height": 48},
        rois=[
            {"name": n, "box": b, "units": "fraction"}
            for n, b in {"roi1": (0, 0, 0.5, 0.5), "roi2": (0.5, 0, 1, 0.5), "roi3": (0, 0.5, 0.5, 1), "roi4": (0.5, 0.5, 1, 1)}.items()
        ],
    )
    out["rois"] = root / "rois.onnx"
    export_classifier(_dark_spot_module(), roi_spec, ("ok", "ng"), out["rois"])

    # The same network without a manifest: what a plain torch.onnx.export gives.
    bare = onnx.load(str(out["dark"]))
    del bare.metadata_props[:]
    out["bare"] = root / "bare.onnx"
    onnx.save(bare, str(out["bare"]))

    # Loads and has the right shapes, but every run fails: 64 values cannot be reshaped to (3, -1).
    x = helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch", 1, 64, 64])
    y = helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", 2])
    pooled = helper.make_node("AveragePool", ["input"], ["p"], kernel_shape=[8, 8], strides=[8, 8])
    shape = helper.make_tensor("shape", TensorProto.INT64, [2], [3, -1])
    reshape = helper.make_node("Reshape", ["p", "shape"], ["logits"])
    graph = helper.make_graph([pooled, reshape], "broken", [x], [y], initializer=[shape])
    broken = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    broken.ir_version = 8
    broken.metadata_props.add(key="inspector.manifest", value=onnx.load(str(out["dark"])).metadata_props[0].value)
    out["broken"] = root / "broken.onnx"
    onnx.save(broken, str(out["broken"]))

    # Runs, but every logit is NaN: what an fp16 or INT8 model that overflows returns.
    nan = onnx.load(str(out["dark"]))
    final = nan.graph.output[0].name
    for node in nan.graph.node:
        node.output[:] = [f"{final}_finite" if o == final else o for o in node.output]
    nan.graph.initializer.append(helper.make_tensor("nan", TensorProto.FLOAT, [], [float("nan")]))
    nan.graph.node.append(helper.make_node("Mul", [f"{final}_finite", "nan"], [final]))
    out["nan"] = root / "nan.onnx"
    onnx.save(nan, str(out["nan"]))
    return out


@pytest.fixture(scope="session")
def tiles(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A labelled folder: ok/ (12) and ng/crack, ng/blowhole (4 each), 64x64 gray PNG, plus masks/ to be ignored."""
    root = write_labelled_folder(tmp_path_factory.mktemp("tiles"), n_ok=12, n_ng=8, width=64, height=64, seed=1)
    (root / "masks").mkdir()
    (root / "masks" / "m.png").write_bytes((root / "ok" / "ok_0000.png").read_bytes())
    return root


@pytest.fixture(scope="session")
def roi_frames(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """2x2-part frames with a labels.csv: (folder, csv)."""
    root = tmp_path_factory.mktemp("roi_frames")
    csv_path, _ = write_roi_frames(root, n_frames=10, part=48, seed=2)
    return root, csv_path


def calibration_record(
    scopes: dict[str, tuple[float, tuple[float, float] | None]], *, sha256: str = "0" * 64, station: str = "s1", demonstrated: bool = True
) -> Any:
    """A valid calibration record with these thresholds (and uncertain bands) per scope, the figures plausible."""
    from inspector.calibration.record import CalibrationRecord

    achieved = {"ng_recall": 1.0, "ng_recall_lower": 0.95, "false_reject_rate": 0.01, "false_reject_rate_upper": 0.02,
                "ng_caught": 60, "ng_missed": 0, "ok_rejected": 1, "ok_passed": 99}
    thresholds = {}
    for name, (t, band) in scopes.items():
        thresholds[name] = {
            "threshold": t, "chosen_by": "recall-bound" if demonstrated else "point-estimate-minus-margin", "demonstrated": demonstrated,
            "recall_bound_threshold": t, "point_estimate_threshold": t, "ng_needed_zero_misses": 59, "n_ok": 100, "n_ng": 60,
            "achieved": achieved, "limited_by": {"sample": "ng/x.png", "score": t},
            "uncertain_band": None if band is None else {"low": band[0], "high": band[1], "ng_in_band": 1, "ok_in_band": 1,
                                                        "ok_rejected_above": 0, "expected_review_rate": 0.02},
        }
    return CalibrationRecord.model_validate({
        "schema": "inspector.calibration/1", "station": station, "created_at": "2026-11-23T08:00:00Z", "created_by": "qe@line",
        "inspector_version": "0.1.0", "model": {"name": "m.onnx", "sha256": sha256},
        "target": {"ng_recall": 0.95, "confidence": 0.95},
        "dataset": {"source": "cal", "fingerprint": "sha256:x", "basis": "files", "unit": "roi", "n_ok": 100, "n_ng": 60},
        "demonstrated": demonstrated, "thresholds": thresholds,
    })


def gray_png(path: Path, array: np.ndarray) -> Path:
    """Write a uint8/uint16 array as PNG and return its path."""
    import cv2

    path.parent.mkdir(parents=True, exist_ok=True)
    assert cv2.imwrite(str(path), array)
    return path


def exif_png(path: Path, array: np.ndarray, orientation: int = 6) -> Path:
    """Write an array as PNG with an eXIf chunk holding this EXIF orientation (6: shown rotated 90 degrees clockwise)."""
    import zlib

    import cv2

    ok, buf = cv2.imencode(".png", array)
    assert ok
    data = buf.tobytes()
    # A big-endian TIFF header and one IFD entry: tag 0x0112 (Orientation), SHORT, count 1.
    tiff = b"MM\x00\x2a\x00\x00\x00\x08\x00\x01\x01\x12\x00\x03\x00\x00\x00\x01" + orientation.to_bytes(2, "big") + bytes(6)
    chunk = len(tiff).to_bytes(4, "big") + b"eXIf" + tiff + zlib.crc32(b"eXIf" + tiff).to_bytes(4, "big")
    after_ihdr = 8 + 25
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data[:after_ihdr] + chunk + data[after_ihdr:])
    return path


@pytest.fixture
def broker(tmp_path: Path):
    """A real mosquitto on a free loopback port, anonymous access; stopped after the test."""
    from tests.mqtt_helpers import Broker

    b = Broker(tmp_path / "broker").start()
    yield b
    b.stop()


@pytest.fixture
def daemons():
    """Started daemons (tests.mqtt_helpers.DaemonProcess), killed at teardown if a test left them running."""
    started: list = []
    yield started
    for d in started:
        d.stop()


def write_parts(folder: Path, n: int, *, defect_every: int = 0, seed: int = 0, prefix: str = "part", size: int = 64) -> list[str]:
    """Write n gray PNG tiles into `folder` by rename (complete at once); every `defect_every`-th has a crack. Returns names."""
    import cv2

    from inspector.samples import tile

    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    names = []
    for i in range(n):
        defect = "crack" if defect_every and i % defect_every == defect_every - 1 else None
        name = f"{prefix}{i:04d}.png"
        tmp = folder / f".{name}.tmp"
        tmp.write_bytes(cv2.imencode(".png", tile(rng, size, size, defect), [cv2.IMWRITE_PNG_COMPRESSION, 1])[1].tobytes())
        tmp.rename(folder / name)
        names.append(name)
    return names


def loop_model(path: Path, trips_per_unit: float) -> Path:
    """A real ONNX model whose run time grows with the brightest input value: a Loop of `trips_per_unit` x max(x) steps
    (about 1 us each). Blank warm-up batches cost nothing; a huge factor freezes inference on a bright frame.
    Always answers P(ok) ~ 1."""
    import onnx
    from onnx import TensorProto, helper

    from inspector.manifest import MANIFEST_KEY, ModelManifest

    f = TensorProto.FLOAT
    body = helper.make_graph(
        [helper.make_node("Add", ["a_in", "one"], ["a_out"]), helper.make_node("Identity", ["cond_in"], ["cond_out"])],
        "body",
        [helper.make_tensor_value_info("i", TensorProto.INT64, []), helper.make_tensor_value_info("cond_in", TensorProto.BOOL, []),
         helper.make_tensor_value_info("a_in", f, [])],
        [helper.make_tensor_value_info("cond_out", TensorProto.BOOL, []), helper.make_tensor_value_info("a_out", f, [])],
        initializer=[helper.make_tensor("one", f, [], [1.0])],
    )
    nodes = [
        helper.make_node("ReduceMax", ["input"], ["mx"], keepdims=0),
        helper.make_node("Relu", ["mx"], ["mx0"]),
        helper.make_node("Mul", ["mx0", "k"], ["scaled"]),
        helper.make_node("Cast", ["scaled"], ["trips"], to=TensorProto.INT64),
        helper.make_node("Loop", ["trips", "", "zero"], ["acc"], body=body),
        helper.make_node("Mul", ["acc", "zero"], ["nil"]),
        helper.make_node("ReduceMean", ["input"], ["m"], axes=[1, 2, 3], keepdims=0),
        helper.make_node("Mul", ["m", "zero"], ["m0"]),
        helper.make_node("Add", ["m0", "nil"], ["m1"]),
        helper.make_node("Unsqueeze", ["m1", "axis"], ["col"]),
        helper.make_node("Concat", ["col", "col"], ["logits0"], axis=1),
        helper.make_node("Add", ["logits0", "bias"], ["logits"]),
    ]
    inits = [
        helper.make_tensor("k", f, [], [trips_per_unit]),
        helper.make_tensor("zero", f, [], [0.0]),
        helper.make_tensor("axis", TensorProto.INT64, [1], [1]),
        helper.make_tensor("bias", f, [1, 2], [6.0, -6.0]),
    ]
    graph = helper.make_graph(
        nodes, "loop", [helper.make_tensor_value_info("input", f, ["batch", 1, 64, 64])],
        [helper.make_tensor_value_info("logits", f, ["batch", 2])], initializer=inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    model.metadata_props.add(key=MANIFEST_KEY, value=ModelManifest(classes=("ok", "ng"), preprocess=GRAY64).to_json())
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(model, str(path))
    return path


def effective_latency_us() -> int:
    """The kernel's aggregate CPU latency request (µs): the lowest of every open one (reading needs the access writing does)."""
    return struct.unpack("=i", CPU_LATENCY_DEVICE.read_bytes()[:4])[0]


needs_cpu_latency_device = pytest.mark.skipif(
    not (CPU_LATENCY_DEVICE.exists() and os.access(CPU_LATENCY_DEVICE, os.R_OK | os.W_OK)),
    reason=f"needs read/write access to {CPU_LATENCY_DEVICE} (root, or deploy/udev/60-inspector-cpu-latency.rules)",
)


def level_model(path: Path, rois: list[dict[str, Any]] | None = None) -> Path:
    """A real ONNX model whose score is exactly k/64 for a gray image of mean pixel value k (0..64): answers are known.

    Write its images with `level_png`; with `rois` (fraction boxes) each ROI is scored by its own mean.
    """
    import onnx
    from onnx import TensorProto, helper

    from inspector.manifest import MANIFEST_KEY, ModelManifest

    spec: dict[str, Any] = {"color": "gray", "resize": {"width": 8, "height": 8}, "normalize": {"mean": [0.0], "std": [1.0]}}
    if rois:
        spec["rois"] = rois
    f = TensorProto.FLOAT
    nodes = [
        helper.make_node("ReduceMean", ["input"], ["m"], axes=[1, 2, 3], keepdims=0),
        helper.make_node("Mul", ["m", "c255"], ["v"]),
        helper.make_node("Round", ["v"], ["vr"]),
        helper.make_node("Div", ["vr", "c64"], ["png"]),
        helper.make_node("Sub", ["one", "png"], ["pok"]),
        helper.make_node("Unsqueeze", ["pok", "axis"], ["a"]),
        helper.make_node("Unsqueeze", ["png", "axis"], ["b"]),
        helper.make_node("Concat", ["a", "b"], ["probs"], axis=1),
    ]
    inits = [helper.make_tensor("c255", f, [], [255.0]), helper.make_tensor("c64", f, [], [64.0]),
             helper.make_tensor("one", f, [], [1.0]), helper.make_tensor("axis", TensorProto.INT64, [1], [1])]
    graph = helper.make_graph(nodes, "level", [helper.make_tensor_value_info("input", f, ["batch", 1, 8, 8])],
                              [helper.make_tensor_value_info("probs", f, ["batch", 2])], initializer=inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    manifest = ModelManifest(classes=("ok", "ng"), preprocess=PreprocessSpec.model_validate(spec), output="probabilities")
    model.metadata_props.add(key=MANIFEST_KEY, value=manifest.to_json())
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(model, str(path))
    return path


def level_png(path: Path, level: int, *, right: int | None = None, variant: int = 0) -> Path:
    """A 16x16 gray PNG that `level_model` scores level/64 (its right half right/64 when given); `variant` makes the bytes
    differ without changing the score, so that two parts of one score are two images."""
    a = np.full((16, 16), level, np.uint8)
    if right is not None:
        a[:, 8:] = right
    a.flat[variant % 256] += 1  # 1/256 of a level: the rounded mean stays
    return gray_png(path, a)


def fifo(path: Path) -> Path:
    """A named pipe at `path` that cannot hang a test: whatever blocks reading it gets end-of-file within a second."""
    os.mkfifo(path)

    def release() -> None:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and os.path.lexists(path):
            time.sleep(1)
            try:
                fd = os.open(path, os.O_WRONLY | os.O_NONBLOCK)  # ENXIO unless a reader is blocked on it
            except OSError:
                continue
            os.close(fd)

    threading.Thread(target=release, daemon=True).start()
    return path
