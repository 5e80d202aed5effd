"""Fast paths on the CPU: torch eager, onnxruntime fp32 and INT8, OpenVINO fp32 and bf16, and what each costs in accuracy.

    .venv/bin/python benchmarks/bench_fastpaths.py [--models resnet18,resnet50] [--frames 300] [--threads 2]
        [--accuracy-run bench-out/accuracy/magnetic-tile] [--out FILE]

Speed: torchvision ResNets (random init, 2 classes) at 224x224 RGB, inputs preprocessed from magnetic-tile JPEGs by the
runtime's Preprocessor, batch 1 and the ROI batch (4); back to back and paced at 30 frames/s; p50/p90/p99/max, the
first inference and the session start-up. INT8 is calibrated on 100 other tiles. Accuracy (with --accuracy-run, the
folder benchmarks/accuracy.py wrote): the trained magnetic-tile model on its validation split, ROC-AUC per path and the
verdict flips against onnxruntime fp32 at 0.5 and at the 99%-recall threshold. One JSON document on stdout.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))

from common import cpu_model, find_images, log, measure

from inspector.config import ModelSettings
from inspector.errors import ModelError
from inspector.gate import compare, frame_scores
from inspector.model import OnnxClassifier
from inspector.preprocess import Preprocessor, PreprocessSpec
from inspector.training.quantize import calibration_batches, quantize_int8

DEFAULT_DATA = REPO / ".." / "shared" / "datasets" / "magnetic-tile"
SPEC = PreprocessSpec(color="rgb", resize={"width": 224, "height": 224})
ROI_BATCH = 4


def _ort(path: Path, threads: int) -> OnnxClassifier:
    return OnnxClassifier(path, ModelSettings(providers=["cpu"], intra_op_threads=threads, warmup_runs=0))


def _ov(path: Path, threads: int, precision: str, golden: Path) -> OnnxClassifier:
    from inspector.model_openvino import OpenVinoClassifier

    # golden only unlocks bf16 here; the gate itself is what the accuracy part measures.
    settings = ModelSettings(backend="openvino", openvino_precision=precision, intra_op_threads=threads, warmup_runs=0, golden=golden)
    return OpenVinoClassifier(path, settings)


def speed(arch: str, images: list[Path], frames: int, threads: int, work: Path) -> dict[str, Any]:
    """Every path on one architecture, the same preprocessed inputs."""
    import torch
    import torchvision

    from inspector.training.onnx_export import export_classifier

    torch.manual_seed(0)
    torch.set_num_threads(threads)
    net = getattr(torchvision.models, arch)(num_classes=2).eval()
    fp32 = work / f"{arch}.onnx"
    export_classifier(net, SPEC, ("ok", "ng"), fp32)
    int8 = work / f"{arch}-int8.onnx"
    quantize_int8(fp32, int8, "input", calibration_batches(SPEC, images[200:300], limit=100))
    pre = Preprocessor(SPEC)
    inputs = [np.concatenate([pre(pre.decode(p.read_bytes()))] * ROI_BATCH) for p in images[:64]]

    def torch_run(model: Any, x: np.ndarray) -> Any:
        with torch.inference_mode():
            return torch.softmax(model(torch.from_numpy(x)), dim=1)

    out = {
        "torch_eager_fp32": measure(f"{arch} torch", lambda: net, torch_run, inputs, frames),
        "onnxruntime_fp32": measure(f"{arch} ort fp32", lambda: _ort(fp32, threads), lambda m, x: m.predict(x), inputs, frames),
        "onnxruntime_int8": measure(f"{arch} ort int8", lambda: _ort(int8, threads), lambda m, x: m.predict(x), inputs, frames),
    }
    for precision in ("fp32", "bf16"):
        try:
            out[f"openvino_{precision}"] = measure(f"{arch} ov {precision}", lambda p=precision: _ov(fp32, threads, p, work),
                                                    lambda m, x: m.predict(x), inputs, frames)
        except ImportError as exc:
            out[f"openvino_{precision}"] = {"skipped": str(exc)}
        except (ModelError, RuntimeError) as exc:  # a path this CPU cannot run (bf16 without AMX) is reported, not fatal
            out[f"openvino_{precision}"] = {"skipped": f"{type(exc).__name__}: {exc}"}
    base = out["torch_eager_fp32"]["batch1"]
    for r in out.values():
        if "batch1" in r:
            r["ratio_vs_torch_batch1"] = {q: round(r["batch1"][q] / base[q], 3) for q in ("p50", "p99")}
    return out


def accuracy(run_dir: Path, data: Path, threads: int, work: Path) -> dict[str, Any]:
    """The trained model's validation split through each path: ROC-AUC and flips against onnxruntime fp32."""
    from inspector.gate import golden_set

    target_summary = run_dir / "replay-at-target" / "summary.json"
    t_target = float(json.loads(target_summary.read_text())["threshold"]) if target_summary.is_file() else 0.5
    model = run_dir / "model.onnx"
    frames, labels = golden_set(run_dir / "validation", "--accuracy-run validation/")
    held = {p.resolve() for p in frames}
    calib = [p for p in find_images(data) if p.resolve() not in held]
    ref = _ort(model, threads)
    int8 = work / "trained-int8.onnx"
    quantize_int8(model, int8, "input", calibration_batches(ref.spec, calib, limit=200))
    paths = {"onnxruntime_int8": lambda: _ort(int8, threads), "openvino_fp32": lambda: _ov(model, threads, "fp32", work),
             "openvino_bf16": lambda: _ov(model, threads, "bf16", work)}
    ref_scores = frame_scores(ref, ref.spec, frames)
    out: dict[str, Any] = {"model": str(model), "validation_images": len(frames), "threshold_99_recall": t_target}
    for name, build in paths.items():
        try:
            cand = build()
        except (ImportError, ModelError, RuntimeError) as exc:  # reported per path
            out[name] = {"skipped": f"{type(exc).__name__}: {exc}"}
            continue
        scores = frame_scores(cand, ref.spec, frames)
        at_half = compare(ref_scores, scores, labels, threshold=0.5)
        at_target = compare(ref_scores, scores, labels, threshold=t_target)
        out[name] = {
            "roc_auc_fp32": at_half.roc_auc_reference, "roc_auc": at_half.roc_auc_candidate, "auc_drop": at_half.auc_drop,
            "flips_at_0.5": at_half.flips, "flips_at_99_recall_threshold": at_target.flips,
            "max_abs_score_diff": at_half.max_abs_score_diff,
            "gate_passed": at_half.passed and at_target.passed,
        }
        log(f"accuracy {name}: ROC-AUC {out[name]['roc_auc']:.4f} (fp32 {out[name]['roc_auc_fp32']:.4f}), flips {at_half.flips}/{at_target.flips}")
    return out


def main() -> None:
    """Parse flags, run, print JSON."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models", default="resnet18,resnet50", help="torchvision architectures (comma-separated)")
    p.add_argument("--frames", type=int, default=300, help="timed inferences per path at batch 1")
    p.add_argument("--threads", type=int, default=2, help="intra-op threads for every runtime")
    p.add_argument("--data", type=Path, default=DEFAULT_DATA, help="the magnetic-tile folder")
    p.add_argument("--accuracy-run", type=Path, help="a dataset folder written by benchmarks/accuracy.py (magnetic-tile)")
    p.add_argument("--out", type=Path, help="also write the JSON here")
    args = p.parse_args()
    images = find_images(args.data)
    result: dict[str, Any] = {
        "machine": {"cpu": cpu_model(), "python": platform.python_version(), "threads": args.threads},
        "speed": {},
    }
    with tempfile.TemporaryDirectory(prefix="inspector-fastpaths-") as tmp:
        work = Path(tmp)
        for arch in args.models.split(","):
            result["speed"][arch] = speed(arch.strip(), images, args.frames, args.threads, work)
        if args.accuracy_run:
            result["accuracy"] = accuracy(args.accuracy_run, args.data, args.threads, work)
    text = json.dumps(result, indent=2)
    print(text)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text + "\n")


if __name__ == "__main__":
    main()
