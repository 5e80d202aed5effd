"""GPU paths: TensorRT fp16 and the CUDA provider (IO binding, CUDA graphs) against torch on the same GPU.

    python benchmarks/bench_gpu.py [--models resnet18,resnet50] [--frames 1000] [--data DIR] [--out FILE]

Needs an NVIDIA GPU, onnxruntime-gpu (its TensorRT provider for the tensorrt rows) and torch with CUDA for the
baseline and the export. Inputs: magnetic-tile JPEGs when --data has them, else synthetic 400x300 gray JPEG
tiles (the figures are latencies, not accuracies; the models have random weights).
Per architecture at 224x224 RGB: model-only batch 1, the ROI batch (4) and batch 64 (images/s); session start-up
with an empty engine cache and again from the cache; and raw frame (JPEG bytes) to verdict through
`FramePipeline` with TensorRT fp16 (no accuracy gate: the weights are random). Targets (ResNet18 on an H100): model-only p50 <= 0.6 ms with TensorRT fp16,
raw frame to verdict p50 <= 1.5 ms, batch 64 >= 20,000 images/s. One JSON document on stdout.
"""

from __future__ import annotations

import argparse
import json
import platform
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))

from common import cpu_model, log, measure, stats, timed

from inspector.config import DecisionSettings, ModelSettings
from inspector.decision import Thresholds
from inspector.errors import ModelError
from inspector.frame import Frame
from inspector.gpu import gpu_identity, tensorrt_version
from inspector.model import ORT_EXCEPTIONS, OnnxClassifier
from inspector.pipeline import FramePipeline
from inspector.preprocess import Preprocessor, PreprocessSpec

DEFAULT_DATA = REPO / ".." / "shared" / "datasets" / "magnetic-tile"
SPEC = PreprocessSpec(color="rgb", resize={"width": 224, "height": 224})
ROI_BATCH, BIG_BATCH = 4, 64


def _jpegs(data: Path, n: int) -> list[bytes]:
    """Up to n JPEG files' bytes from the dataset, or synthetic tiles where it is absent."""
    import cv2

    files = sorted(data.rglob("*.jpg"))[:n] if data.is_dir() else []
    if files:
        return [f.read_bytes() for f in files]
    rng = np.random.default_rng(0)
    tiles = []
    for _ in range(n):
        tile = cv2.GaussianBlur(rng.integers(60, 200, (300, 400), dtype=np.uint8), (5, 5), 0)
        tiles.append(cv2.imencode(".jpg", tile, [cv2.IMWRITE_JPEG_QUALITY, 92])[1].tobytes())
    return tiles


def _classifier(path: Path, provider: str, cache: Path, **extra: Any) -> OnnxClassifier:
    settings = ModelSettings(providers=[provider], cache_dir=cache, gpu_max_batch=BIG_BATCH, warmup_runs=0, **extra)
    clf = OnnxClassifier(path, settings, rois=ROI_BATCH)
    clf.warmup(ROI_BATCH, 3)  # IO binding is checked (and CUDA graphs captured) here, as the daemon does before READY
    return clf


def _throughput(run: Any, x: np.ndarray, seconds: float = 3.0) -> float:
    """Images per second at one batch size, back to back."""
    for _ in range(5):
        run(x)
    done, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        run(x)
        done += len(x)
    return round(done / (time.perf_counter() - t0), 1)


def _gpu_paths(arch: str, inputs: list[np.ndarray], jpegs: list[bytes], frames: int, work: Path) -> dict[str, Any]:
    import torch
    import torchvision

    from inspector.training.onnx_export import export_classifier

    torch.manual_seed(0)
    net = getattr(torchvision.models, arch)(num_classes=2).eval()
    path = work / f"{arch}.onnx"
    export_classifier(net, SPEC, ("ok", "ng"), path)
    big = np.concatenate([inputs[0]] * (BIG_BATCH // ROI_BATCH))
    out: dict[str, Any] = {}

    cuda_net = net.cuda()

    def torch_run(half: bool) -> Any:
        model = cuda_net.half() if half else cuda_net.float()

        def run(x: np.ndarray) -> Any:
            with torch.inference_mode():
                t = torch.from_numpy(x).cuda(non_blocking=True)
                return torch.softmax(model(t.half() if half else t), dim=1).float().cpu().numpy()

        return run

    for name, half in (("torch_cuda_fp32", False), ("torch_cuda_fp16", True)):
        run = torch_run(half)
        out[name] = measure(f"{arch} {name}", lambda r=run: r, lambda m, x: m(x), inputs, frames)
        out[name][f"batch{BIG_BATCH}_images_per_s"] = _throughput(run, big)

    rows = {
        "onnxruntime_cuda_fp32_bound_graphs": ("cuda", {"cuda_graphs": True}),
        "onnxruntime_cuda_fp32_bound": ("cuda", {"cuda_graphs": False}),
        "onnxruntime_tensorrt_fp16": ("tensorrt", {"gpu_precision": "fp16", "golden": work}),
        "onnxruntime_tensorrt_fp32": ("tensorrt", {"gpu_precision": "fp32"}),
    }
    for name, (provider, extra) in rows.items():
        cache = work / f"engines-{arch}-{name}"
        shutil.rmtree(cache, ignore_errors=True)
        try:
            t0 = time.perf_counter()
            _classifier(path, provider, cache, **extra)
            cold = (time.perf_counter() - t0) * 1000
            r = measure(f"{arch} {name}", lambda p=provider, c=cache, e=extra: _classifier(path, p, c, **e),
                        lambda m, x: m.predict(x), inputs, frames)
        except (ModelError, *ORT_EXCEPTIONS) as exc:  # a provider this machine lacks is reported, not fatal
            out[name] = {"skipped": f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"}
            log(f"{arch} {name}: skipped ({out[name]['skipped']})")
            continue
        clf = _classifier(path, provider, cache, **extra)
        if clf.provider.split("-")[0] != provider:
            out[name] = {"skipped": f"fell back to {clf.provider}"}
            continue
        r["startup_empty_cache_ms"] = round(cold, 1)
        r["startup_from_cache_ms"] = r.pop("startup_ms")
        r["provider"] = clf.provider
        r[f"batch{BIG_BATCH}_images_per_s"] = _throughput(clf.predict, big)
        out[name] = r

    trt = out.get("onnxruntime_tensorrt_fp16", {})
    if "batch1" in trt:
        clf = _classifier(path, "tensorrt", work / f"engines-{arch}-onnxruntime_tensorrt_fp16", gpu_precision="fp16", golden=work)
        one = PreprocessSpec(**{**SPEC.model_dump(), "rois": None})
        pipe = FramePipeline(clf, Preprocessor(one), Thresholds(DecisionSettings(), one.roi_names, None))
        frames_in = [Frame(f"f{i}", f"bench/{i}.jpg", time.time(), data=jpegs[i % len(jpegs)]) for i in range(frames)]
        for f in frames_in[:20]:
            pipe.process(f)
        out["frame_to_verdict_tensorrt_fp16"] = stats(timed(pipe.process, frames_in, paced=False))
        log(f"{arch} frame to verdict: p50 {out['frame_to_verdict_tensorrt_fp16']['p50']} ms")
    return out


def main() -> None:
    """Run every GPU path on each architecture and print one JSON document."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models", default="resnet18,resnet50", help="torchvision architectures (comma-separated)")
    p.add_argument("--frames", type=int, default=1000, help="timed inferences per path at batch 1")
    p.add_argument("--data", type=Path, default=DEFAULT_DATA, help="a folder of JPEGs (magnetic-tile); synthetic tiles when absent")
    p.add_argument("--out", type=Path, help="also write the JSON here")
    args = p.parse_args()
    gpu = gpu_identity()
    if gpu is None:
        sys.exit("bench_gpu: no NVIDIA GPU found (libcuda.so.1 did not load, or no device 0); run it on a machine with one")
    import onnxruntime as ort

    jpegs = _jpegs(args.data, 64)
    pre = Preprocessor(SPEC)
    inputs = [np.concatenate([pre(pre.decode(b))] * ROI_BATCH) for b in jpegs]
    doc: dict[str, Any] = {
        "machine": {"gpu": gpu.name, "compute_capability": gpu.compute_capability, "driver": gpu.driver, "cpu": cpu_model(),
                    "python": platform.python_version()},
        "versions": {"onnxruntime": ort.__version__, "tensorrt": tensorrt_version(), "providers": ort.get_available_providers()},
        "inputs": "magnetic-tile JPEGs" if args.data.is_dir() else "synthetic 400x300 gray JPEGs",
        "results": {},
    }
    with tempfile.TemporaryDirectory() as tmp:
        for arch in args.models.split(","):
            doc["results"][arch] = _gpu_paths(arch, inputs, jpegs, args.frames, Path(tmp))
    text = json.dumps(doc, indent=2)
    if args.out:
        args.out.write_text(text + "\n")
    print(text)


if __name__ == "__main__":
    main()
