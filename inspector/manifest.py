"""The model manifest: preprocessing, class names and format version, carried in the ONNX file's `metadata_props`."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from inspector.errors import ModelError
from inspector.preprocess import PreprocessSpec

MANIFEST_KEY = "inspector.manifest"
FORMAT_VERSION = 2
# Format 2 may hold spec keys that format-1 readers refuse as unknown (pixel_max, frame_size). A manifest without them
# is still written as format 1, so older inspectors keep reading it; one with them as 2, so that they say "upgrade"
# instead of naming a key they do not know.
OK_CLASS = "ok"


class ModelManifest(BaseModel):
    """What a model needs to be run exactly as it was trained."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    format_version: int = Field(
        default=1, ge=1, le=FORMAT_VERSION, strict=True,
        description="Manifest format version: 1, or 2 when the preprocessing holds pixel_max or frame_size; set from the spec when not given.",
    )
    classes: tuple[str, ...] = Field(min_length=2, description="Output classes in order; 'ok' plus 'ng' or named defect classes.")
    preprocess: PreprocessSpec = Field(description="The preprocessing the model was trained with.")
    output: Literal["logits", "probabilities"] = Field(default="logits", description="What the model's output holds.")
    info: dict[str, Any] = Field(default_factory=dict, description="Provenance: training metrics, dataset fingerprint, versions.")

    @field_validator("classes")
    @classmethod
    def _classes(cls, v: tuple[str, ...]) -> tuple[str, ...]:
        if OK_CLASS not in v:
            raise ValueError(f"classes must include '{OK_CLASS}', got {list(v)}")
        if len(set(v)) != len(v):
            raise ValueError(f"class names must be unique, got {list(v)}")
        return v

    @model_validator(mode="after")
    def _format_for_spec(self) -> ModelManifest:
        if "format_version" not in self.model_fields_set:
            object.__setattr__(self, "format_version", format_needed(self.preprocess))  # frozen: only while validating
        return self

    def to_json(self) -> str:
        """Canonical JSON, as stored under `inspector.manifest`."""
        return json.dumps(self.model_dump(mode="json"), sort_keys=True, separators=(",", ":"))


def format_needed(spec: PreprocessSpec) -> int:
    """The oldest manifest format that holds `spec`: 2 when it has pixel_max or frame_size, else 1."""
    return 2 if spec.pixel_max is not None or spec.frame_size is not None else 1


def parse_manifest(metadata: dict[str, str], source: str) -> ModelManifest | None:
    """Read the manifest from a model's metadata map; None when the model has none."""
    text = metadata.get(MANIFEST_KEY)
    if text is None:
        return None
    try:
        raw = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ModelError(f"{source}: the manifest under {MANIFEST_KEY!r} is not valid JSON ({exc})") from exc
    version = raw.get("format_version") if isinstance(raw, dict) else None
    if isinstance(version, int) and version > FORMAT_VERSION:
        raise ModelError(
            f"{source}: manifest format {version} is newer than this inspector reads (up to {FORMAT_VERSION}); upgrade inspector"
        )
    try:
        return ModelManifest.model_validate(raw)
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(map(str, e['loc'])) or 'the manifest'}: {e['msg']}" for e in exc.errors())
        raise ModelError(f"{source}: invalid manifest: {problems}") from exc


def write_manifest(path: Path, manifest: ModelManifest) -> None:
    """Store `manifest` in the ONNX file at `path`, in place (needs the `onnx` package from the train extra)."""
    import onnx  # train/export only: the line PC reads manifests through onnxruntime

    model = onnx.load(str(path))
    kept = [p for p in model.metadata_props if p.key != MANIFEST_KEY]
    del model.metadata_props[:]
    model.metadata_props.extend(kept)
    model.metadata_props.add(key=MANIFEST_KEY, value=manifest.to_json())
    onnx.save(model, str(path))
