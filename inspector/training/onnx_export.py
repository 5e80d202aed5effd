"""Export a torch classifier to ONNX with inspector's manifest inside (preprocessing, classes, format version)."""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

import torch

from inspector.manifest import ModelManifest, write_manifest
from inspector.preprocess import PreprocessSpec

OPSET = 17


def export_classifier(
    module: torch.nn.Module,
    spec: PreprocessSpec,
    classes: tuple[str, ...] | list[str],
    path: Path,
    *,
    output: str = "logits",
    info: dict[str, Any] | None = None,
) -> ModelManifest:
    """Write `module` to `path` as ONNX (dynamic batch axis, opset 17) and store the manifest in it."""
    manifest = ModelManifest(classes=tuple(classes), preprocess=spec, output=output, info=info or {})
    module = module.eval()
    dummy = torch.zeros(1, *spec.input_shape)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with torch.inference_mode(), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the TorchScript exporter's deprecation notice is not the user's concern
        torch.onnx.export(
            module,
            (dummy,),
            str(path),
            input_names=["input"],
            output_names=[output],
            dynamic_axes={"input": {0: "batch"}, output: {0: "batch"}},
            opset_version=OPSET,
            dynamo=False,
        )
    write_manifest(path, manifest)
    return manifest
