"""`inspector export`: checkpoint -> ONNX with its manifest, behind a parity gate against the trained torch model.

The gate runs a golden set twice: through the training code path into the torch model, and through the
daemon's path (file bytes -> `Preprocessor` of the manifest's spec -> `OnnxClassifier`). Any verdict
that flips at the threshold, or a probability that moves more than the tolerance, refuses the export
and leaves no file behind.
"""

from __future__ import annotations

import copy
import os
import time
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import structlog
import torch
from pydantic import ValidationError
from torch import nn

from inspector.config import ModelSettings, Provider
from inspector.digest import file_sha256
from inspector.errors import InputError, ModelError
from inspector.frame import FrameFault
from inspector.gate import Unjudged, skipped_counts
from inspector.manifest import ModelManifest, write_manifest
from inspector.model import OnnxClassifier
from inspector.outputs import check_output, make_output_folder, temp_file_beside
from inspector.pipeline import check_station_rois
from inspector.preprocess import (
    Preprocessor,
    PreprocessSpec,
    size_under_rois,
)
from inspector.regular_file import read_regular
from inspector.replay.dataset import collect
from inspector.training.backbones import build_model, deployed, torch_load
from inspector.training.data import ImageCache
from inspector.training.onnx_export import export_classifier
from inspector.training.quantize import (
    MAX_AUC_DROP,
    MAX_FLIP_RATE,
    accuracy_gate,
    calibration_batches,
    quantize_int8,
)
from inspector.training.recipe import TrainRecipe
from inspector.training.trainer import CHECKPOINT_FORMAT, versions

TOLERANCE_FP32 = 1e-4
TOLERANCE_FP16 = 1e-2  # half precision keeps ~3 significant digits; verdict flips still refuse the export


@dataclass(frozen=True, slots=True)
class GateResult:
    """The parity gate's figures."""

    images: int  # golden frames
    rows: int  # ROI crops compared (of the frames both paths judged)
    threshold: float
    tolerance: float
    max_abs_diff: float  # over the judged frames
    flips: int
    worst: str  # the image (and ROI) with the largest difference
    passed: bool
    skipped: dict[str, int] = field(default_factory=dict)  # golden frames the exported model did not judge, per reason
    skipped_example: str | None = None  # the first one's file and fault
    mismatch: str | None = None  # the exported model answers with other ROI rows than the trained one: nothing to compare

    def problem(self) -> str:
        """Why the gate refused, in a sentence."""
        if self.mismatch:
            return f"the exported model gives {self.mismatch}"
        reasons = []
        if self.flips:
            reasons.append(f"{self.flips} of {self.rows} verdicts flip at threshold {self.threshold:g}")
        if self.max_abs_diff > self.tolerance:
            reasons.append(f"max |delta probability| {self.max_abs_diff:.3g} > {self.tolerance:g} (worst: {self.worst})")
        if self.skipped:
            reasons.append(self.skipped_text())
        return "; ".join(reasons) or "passed"

    def skipped_text(self) -> str:
        """The golden frames the exported model rejects instead of judging, per reason, as the accuracy gate counts them."""
        n = sum(self.skipped.values())
        if n == self.images:
            which = "the only golden frame is" if n == 1 else f"all {n} golden frames are"
        else:
            which = f"{n} of the {self.images} golden frames {'is' if n == 1 else 'are'}"
        return f"{which} rejected by the exported model, not judged: {skipped_counts(self.skipped, self.skipped_example)}"


def load_checkpoint(path: Path) -> dict[str, Any]:
    """A checkpoint written by `inspector train`; InputError naming what was expected otherwise."""
    if path.is_dir():
        found = [name for name in ("best.pt", "last.pt") if (path / name).is_file()]
        inside = f" ({' and '.join(found)} are inside)" if found else ""
        raise InputError(f"{path}: is a folder{inside}; expected a checkpoint file from `inspector train`: best.pt to export, "
                         "last.pt to resume (a cross-validation's: any fold's last.pt)")
    if not path.is_file():
        raise InputError(f"{path}: no such checkpoint; expected best.pt or last.pt from `inspector train`")
    ckpt = torch_load(path, f"{path}: not a checkpoint written by `inspector train`")
    if not isinstance(ckpt, dict) or ckpt.get("format") != CHECKPOINT_FORMAT:
        raise InputError(f"{path}: not a checkpoint written by `inspector train` (expected format {CHECKPOINT_FORMAT})")
    return ckpt


def model_from_checkpoint(ckpt: dict[str, Any]) -> tuple[nn.Module, PreprocessSpec, tuple[str, ...], TrainRecipe]:
    """Rebuild the trained network (eval mode, CPU) with its spec, classes and recipe."""
    recipe = TrainRecipe.model_validate(ckpt["recipe"])
    spec = PreprocessSpec.from_json(ckpt["spec"])
    classes = tuple(ckpt["classes"])
    model = build_model(recipe, len(classes), spec.channels, load_weights=False)
    model.load_state_dict(ckpt["state_dict"])
    return model.eval(), spec, classes, recipe


def with_tta(recipe: TrainRecipe, tta: str) -> TrainRecipe:
    """The recipe with other test-time views; InputError when the training's augmentations cannot support them."""
    try:
        return TrainRecipe.model_validate({**recipe.model_dump(mode="json"), "tta": tta})
    except ValidationError as exc:
        raise InputError(f"--tta {tta}: " + "; ".join(e["msg"].removeprefix("Value error, ") for e in exc.errors())) from exc


class _Fp16(nn.Module):
    """Half-precision weights behind float32 input and output, so the runtime feeds it like any other model."""

    def __init__(self, inner: nn.Module) -> None:
        super().__init__()
        self.inner = inner.half()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.inner(x.half()).float()


def golden_frames(ckpt: dict[str, Any], golden: Path | None) -> list[Path]:
    """The frames the gate compares: every image under `golden`, else the checkpoint's validation images."""
    if golden is not None:
        return [item.path for item in collect(golden).items]
    paths = list(dict.fromkeys(Path(v["path"]) for v in ckpt.get("validation", [])))
    missing = [p for p in paths if not p.is_file()]
    if not paths or missing:
        what = f"{len(missing)} of its {len(paths)} validation images are missing (e.g. {missing[0]})" if missing else "it lists no validation images"
        raise InputError(f"the checkpoint's golden set cannot be used: {what}; pass --golden DIR with images of this station")
    return paths


def golden_labels(ckpt: dict[str, Any], golden: Path | None, frames: list[Path]) -> list[str | None]:
    """ok/ng per golden frame where known: from the folder layout, else from the checkpoint's validation labels."""
    if golden is not None:
        by_path = {item.path: item.label for item in collect(golden).items}
        return [by_path.get(p) for p in frames]
    ng: dict[Path, bool] = {}
    for v in ckpt.get("validation", []):
        p = Path(v["path"])
        ng[p] = ng.get(p, False) or v.get("label") not in (None, "ok")  # a frame is NG when any of its ROIs is
    return ["ng" if ng.get(p) else "ok" if p in ng else None for p in frames]


def torch_probabilities(model: nn.Module, spec: PreprocessSpec, frames: list[Path]) -> list[np.ndarray]:
    """Per frame, (n_rois, classes) probabilities through the training code path."""
    cache = ImageCache(spec)
    cache.load(frames, "the parity gate (--golden)")
    out = []
    with torch.inference_mode():
        for path in frames:
            frame = cache.frame(path)
            crops = cache.pre.crops(frame)
            x = torch.from_numpy(np.stack([cache.tensor(cache.pre.resize(c)) for c in crops]))
            out.append(torch.softmax(model(x).float(), dim=1).numpy().astype(np.float64))
    return out


def onnx_probabilities(path: Path, frames: list[Path], log: Any) -> tuple[list[np.ndarray | Unjudged], PreprocessSpec]:
    """Per frame, probabilities through the daemon's path: file bytes, the manifest's preprocessing, onnxruntime on the CPU;
    `Unjudged` for a frame the daemon would reject instead of judging."""
    clf = OnnxClassifier(path, ModelSettings(providers=[Provider.CPU], warmup_runs=0), log=log)
    pre = Preprocessor(clf.spec)
    out: list[np.ndarray | Unjudged] = []
    for p in frames:
        try:
            out.append(clf.predict(pre(pre.decode(read_regular(p)))).astype(np.float64))
        except FrameFault as fault:
            out.append(Unjudged(fault.reason.value, f"{p.name}: {fault.detail}"))
    return out, clf.spec


def parity_gate(model: nn.Module, train_spec: PreprocessSpec, onnx_path: Path, frames: list[Path], *, threshold: float, tolerance: float, log: Any = None) -> GateResult:
    """Compare the torch model on the training path with the ONNX file on the daemon's path, frame by frame.

    A frame the exported model rejects (frame_size, unsupported_image, ...) is counted per reason, not compared: it refuses
    the export all the same, as the daemon would not judge it as the trained model does.
    """
    log = log or structlog.get_logger("inspector.export")
    expected = torch_probabilities(model, train_spec, frames)
    got, onnx_spec = onnx_probabilities(onnx_path, frames, log)
    rows, worst, worst_where, flips = 0, 0.0, "", 0
    skipped: Counter[str] = Counter()
    example = None
    names = train_spec.roi_names
    for path, e, g in zip(frames, expected, got, strict=True):
        if isinstance(g, Unjudged):
            skipped[g.reason] += 1
            example = example or g.detail
            continue
        if g.shape != e.shape:
            why = f"{g.shape[0]} ROI rows instead of {e.shape[0]} (ROIs {list(onnx_spec.roi_names)} vs {list(names)}) for {path.name}"
            return GateResult(len(frames), rows, threshold, tolerance, float("inf"), 0, path.name, False, mismatch=why)
        rows += len(e)
        diff = np.abs(e - g).max(axis=1)
        flips += int(np.sum((1 - e[:, 0] >= threshold) != (1 - g[:, 0] >= threshold)))
        k = int(diff.argmax())
        if diff[k] > worst:
            worst = float(diff[k])
            worst_where = path.name + (f"#{names[k]}" if len(names) > 1 else "")
    passed = flips == 0 and worst <= tolerance and not skipped
    return GateResult(len(frames), rows, threshold, tolerance, worst, flips, worst_where, passed, dict(skipped), example)


def deployed_spec(train_spec: PreprocessSpec, spec: PreprocessSpec | None) -> PreprocessSpec:
    """The spec the exported model carries: the station's (`--config`) when given, with the trained pixel_max and
    frame_size where it sets none.

    The bit depth and the range of frame sizes are facts of the training data, like the weights: a station config written
    before they were recorded (or without them) must not drop their checks from the model it deploys. A value the station
    config sets is its own and deployed as given (the parity gate then compares it against training). InputError, as
    `inspector run` gives for the same model and config, when the station's pixel ROIs are crops of a size the model never judges.
    """
    if spec is None:
        return train_spec
    if spec.pixel_max is None and train_spec.pixel_max is not None:
        spec = spec.model_copy(update={"pixel_max": train_spec.pixel_max})
    if spec.frame_size is None and train_spec.frame_size is not None:
        spec = spec.model_copy(update={"frame_size": size_under_rois(train_spec, spec.rois)})
    # The station's crop sizes could only be checked against the config's own spec, which had no range: the deployed one
    # has it now, and a model that rejects every frame must not be written, only to be refused when the daemon starts.
    check_station_rois(spec, spec.rois)
    return spec


def _outside_frame_size(spec: PreprocessSpec, frames: list[Path], golden: Path | None) -> str:
    """When the deployed model rejects golden frames as frame_size: how many, and the way out; else ''."""
    size = spec.trained_size
    if size is None:
        return ""
    pre = Preprocessor(spec)
    outside: list[tuple[Path, tuple[int, int]]] = []
    for path in frames:
        try:
            image = pre.decode(read_regular(path))
        except (FrameFault, OSError):
            continue  # the gate names those itself
        try:
            pre.check_size(image)
        except FrameFault:
            outside.append((path, (image.shape[1], image.shape[0])))
    if not outside:
        return ""
    which = "the checkpoint's validation images, export's default golden set" if golden is None else f"the images under --golden {golden}"
    first, (w, h) = outside[0]
    text = f"; {len(outside)} of the {len(frames)} golden frames ({which}) lie outside the model's frame_size and are rejected, not judged (e.g. {first.name}, {w}x{h})"
    if size.applies_to == "roi" and spec.rois:
        return text + (f": pass --golden DIR with frames whose ROI crops are {size.describe('images')}, "
                       "or draw the station's rois (--config) that size")
    held = size.holding(wh for _, wh in outside)
    return text + (f": pass --golden DIR with {size.describe()}, the sizes it judges, "
                   f"or train the model again with a --frame-size range that holds them (e.g. --frame-size {held.short()})")


def _spec_diff(a: PreprocessSpec, b: PreprocessSpec) -> list[str]:
    da, db = a.model_dump(mode="json"), b.model_dump(mode="json")
    out = []
    for section in [*da, *(k for k in db if k not in da)]:  # an unset pixel_max or frame_size is left out of the dump
        if section == "frame_size" and b.frame_size == size_under_rois(a, b.rois):
            continue  # the trained range, carried over (onto the ROI crops for a whole-frame model): no difference to resolve
        if da.get(section) != db.get(section):
            out.append(f"{section}: {da.get(section)} -> {db.get(section)}")
    return out


def _quantized(
    tmp: Path, spec: PreprocessSpec, classes: tuple[str, ...], info: dict[str, Any], parity: dict[str, Any], calibration_data: Path,
    frames: list[Path], labels: list[str | None], threshold: float, max_auc_drop: float, max_flip_rate: float, log: Any,
) -> ModelManifest:
    """Replace the FP32 file at `tmp` with its INT8 model when the accuracy gate passes; ModelError otherwise."""
    import onnx

    int8 = tmp.with_name(tmp.name + ".int8")
    try:
        batches = calibration_batches(spec, [item.path for item in collect(calibration_data).items])
        quant = quantize_int8(tmp, int8, onnx.load(str(tmp), load_external_data=False).graph.input[0].name, batches)
        gate = accuracy_gate(tmp, int8, frames, labels, threshold=threshold, log=log, max_auc_drop=max_auc_drop, max_flip_rate=max_flip_rate)
        if not gate.passed:
            raise ModelError(f"INT8 export refused by the accuracy gate: {gate.problem()} over {gate.images} golden images; nothing was written")
        manifest = ModelManifest(classes=classes, preprocess=spec, info={
            **info, "precision": "int8", "parity_gate": parity, "quantization": {**quant, "accuracy_gate": gate.to_dict()},
        })
        write_manifest(int8, manifest)
        os.replace(int8, tmp)
    finally:
        int8.unlink(missing_ok=True)
    log.info("model_quantized", calibration_images=quant["calibration_images"], roc_auc_fp32=gate.roc_auc_reference,
             roc_auc_int8=gate.roc_auc_candidate, flips=gate.flips, images=gate.images)
    return manifest


def export_checkpoint(
    ckpt_path: Path,
    out: Path,
    *,
    golden: Path | None = None,
    spec: PreprocessSpec | None = None,
    fp16: bool = False,
    quantize: str | None = None,
    calibration_data: Path | None = None,
    threshold: float = 0.5,
    max_auc_drop: float = MAX_AUC_DROP,
    max_flip_rate: float = MAX_FLIP_RATE,
    tta: str | None = None,
    log: structlog.typing.FilteringBoundLogger | None = None,
) -> tuple[ModelManifest, GateResult]:
    """Write `out` only when the parity gate (and, for INT8, the accuracy gate) passes; ModelError otherwise, and no file.

    `tta` (none|flips) overrides the checkpoint recipe's test-time views.
    """
    log = log or structlog.get_logger("inspector.export")
    check_output(out, "--out", folder=False)
    # An ONNX file only ever replaces an ONNX file: `--out best.pt` would have eaten the checkpoint it exports.
    if out.suffix.lower() != ".onnx":
        raise InputError(f"--out {out}: an exported model is written as a .onnx file; give a name ending in .onnx")
    if quantize not in (None, "int8"):
        raise InputError(f"--quantize {quantize}: the supported precision is int8")
    if quantize and fp16:
        raise InputError("--quantize int8 and --fp16 are two different precisions: choose one")
    if quantize and (calibration_data is None or not calibration_data.exists()):
        raise InputError("--quantize int8 needs --calibration-data DIR: real frames of the station (no labels needed), "
                         + ("none given" if calibration_data is None else f"{calibration_data} does not exist"))
    ckpt = load_checkpoint(ckpt_path)
    model, train_spec, classes, recipe = model_from_checkpoint(ckpt)
    if tta is not None:
        recipe = with_tta(recipe, tta)
    model = deployed(model, recipe)  # the gate's reference is the same network the file holds
    deploy_spec = deployed_spec(train_spec, spec)
    frames = golden_frames(ckpt, golden)
    tolerance = TOLERANCE_FP16 if fp16 else TOLERANCE_FP32
    make_output_folder(out.parent, "--out")
    tmp = temp_file_beside(out, "--out")
    try:
        module = _Fp16(copy.deepcopy(model)) if fp16 else model  # the gate compares against the fp32 original
        metrics = {k: v for k, v in ckpt.get("metrics", {}).items() if v is not None}
        info = {
            "backbone": recipe.backbone,
            "initial_weights": ckpt["recipe"].get("weights", "none"),
            "precision": "fp16" if fp16 else "fp32",
            "tta": recipe.tta,
            "tta_views": len(recipe.tta_views()),
            "training": {"epoch": ckpt.get("epoch"), "validation": metrics, "target_recall": recipe.target_recall},
            "dataset": ckpt.get("dataset", {}),
            "checkpoint_sha256": file_sha256(ckpt_path),
            "trained_with": ckpt.get("versions", {}),
            "exported_with": versions(),
            "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        }
        export_classifier(module, deploy_spec, classes, tmp, info=info)
        gate = parity_gate(model, train_spec, tmp, frames, threshold=threshold, tolerance=tolerance, log=log)
        if not gate.passed:
            hint = _spec_diff(train_spec, deploy_spec)
            raise ModelError(
                f"export refused by the parity gate over {gate.images} golden images: {gate.problem()}"
                + (f"; the deployed preprocessing differs from training: {'; '.join(hint)}" if hint else "")
                + _outside_frame_size(deploy_spec, frames, golden)
                + f"; nothing was written to {out}"
            )
        manifest = ModelManifest(classes=classes, preprocess=deploy_spec, info={**info, "parity_gate": asdict(gate)})
        write_manifest(tmp, manifest)
        if quantize and calibration_data is not None:
            manifest = _quantized(tmp, deploy_spec, classes, info, asdict(gate), calibration_data, frames,
                                  golden_labels(ckpt, golden, frames), threshold, max_auc_drop, max_flip_rate, log)
            info["precision"] = "int8"
        os.replace(tmp, out)
    finally:
        tmp.unlink(missing_ok=True)
    log.info("model_exported", path=str(out), sha256=file_sha256(out), images=gate.images, max_abs_diff=gate.max_abs_diff, flips=gate.flips, precision=info["precision"])
    return manifest, gate
