"""`InspectorSettings`: one strict, described configuration from a YAML file plus `INSPECTOR_` environment overrides."""

from __future__ import annotations

import types
import typing
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    YamlConfigSettingsSource,
)

from inspector.errors import ConfigError
from inspector.preprocess import PreprocessSpec, Roi

DEFAULT_CONFIG = Path("/etc/inspector/inspector.yaml")
ENV_PREFIX = "INSPECTOR_"


class Provider(StrEnum):
    """onnxruntime execution providers inspector knows how to ask for."""

    TENSORRT = "tensorrt"
    CUDA = "cuda"
    CPU = "cpu"


class GraphOptimization(StrEnum):
    """onnxruntime graph optimization levels."""

    DISABLED = "disabled"
    BASIC = "basic"
    EXTENDED = "extended"
    ALL = "all"


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_default=True)


class ModelSettings(_Section):
    """The ONNX classifier and how onnxruntime runs it."""

    path: Path | None = Field(default=None, description="ONNX model file. Required by `run`; `replay --model` overrides it.")
    sha256: str | None = Field(
        default=None,
        pattern=r"^[0-9a-f]{64}$",
        description="Pin: refuse to load a model whose SHA-256 (64 lowercase hex digits) differs.",
    )
    providers: list[Provider] = Field(
        default=[Provider.TENSORRT, Provider.CUDA, Provider.CPU],
        min_length=1,
        description="Execution providers in order of preference: tensorrt, cuda, cpu; those that cannot load are skipped with one warning each.",
    )
    intra_op_threads: int = Field(
        default=2, ge=0, le=256, description="Threads inside one inference (count); 0 lets onnxruntime use every physical core."
    )
    spinning: bool = Field(
        default=False,
        description="Let onnxruntime's worker threads spin-wait between runs; costs a core while idle, which decode needs on small CPUs.",
    )
    graph_optimization: GraphOptimization = Field(
        default=GraphOptimization.ALL, description="onnxruntime graph optimization level: disabled, basic, extended or all."
    )
    warmup_runs: int = Field(default=2, ge=0, le=100, description="Inferences on a blank batch before the first frame (count).")
    classes: list[str] | None = Field(
        default=None, description="Class names, only for a model without a manifest (then `preprocess` is needed too)."
    )
    output: Literal["logits", "probabilities"] = Field(
        default="logits", description="What a model without a manifest outputs: logits or probabilities."
    )

    @field_validator("providers")
    @classmethod
    def _unique(cls, v: list[Provider]) -> list[Provider]:
        if len(set(v)) != len(v):
            raise ValueError(f"each provider at most once, got {[p.value for p in v]}")
        return v


Probability = Annotated[float, Field(ge=0.0, le=1.0)]


class DecisionSettings(_Section):
    """How scores become verdicts. A ROI's score is 1 - P(ok)."""

    threshold: float = Field(
        default=0.5,
        ge=0.0,
        le=1.0,
        description="Reject a ROI when its score >= threshold (0..1). Lower catches more NG at the cost of false rejects; set it with `inspector calibrate`.",
    )
    roi_thresholds: dict[str, Probability] = Field(
        default_factory=dict, description="Per-ROI thresholds (0..1) by ROI name; ROIs not listed use `threshold`."
    )


class LogSettings(_Section):
    """Structured logging."""

    level: Literal["debug", "info", "warning", "error"] = Field(default="info", description="Lowest level logged.")
    format: Literal["auto", "json", "console"] = Field(
        default="auto", description="json (one object a line, for journald), console (key=value), or auto: console on a TTY, else json."
    )


class InspectorSettings(BaseSettings):
    """Everything `inspector` reads from its YAML file and `INSPECTOR_*` environment variables (`__` nests)."""

    model_config = SettingsConfigDict(
        extra="forbid",
        env_prefix=ENV_PREFIX,
        env_nested_delimiter="__",
        validate_default=True,
        yaml_file=None,
    )

    preprocess: PreprocessSpec | None = Field(
        default=None,
        description="Preprocessing for a model without a manifest. Leave unset: the model's manifest defines it, and a different one here is refused.",
    )
    rois: tuple[Roi, ...] | None = Field(
        default=None, description="This station's ROI layout, replacing the ROIs in the model's preprocessing (same names expected)."
    )
    model: ModelSettings = Field(default_factory=ModelSettings, description="The ONNX classifier.")
    decision: DecisionSettings = Field(default_factory=DecisionSettings, description="Thresholds.")
    log: LogSettings = Field(default_factory=LogSettings, description="Logging.")

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        """Precedence: explicit arguments, then environment, then the YAML file."""
        return (init_settings, env_settings, YamlConfigSettingsSource(settings_cls))


def load_settings(path: Path | None = None, **overrides: Any) -> InspectorSettings:
    """Load the YAML file (default /etc/inspector/inspector.yaml, when present) and the environment; ConfigError on any problem."""
    if path is None:
        path = DEFAULT_CONFIG if DEFAULT_CONFIG.is_file() else None
    elif not path.is_file():
        raise ConfigError(f"config file not found: {path}", [f"{path}: no such file"])
    if path is not None:
        _check_yaml(path)
    # pydantic-settings reads the YAML path from the class config, so bind it on a throwaway subclass.
    bound = type(
        "InspectorSettings", (InspectorSettings,), {"model_config": {**InspectorSettings.model_config, "yaml_file": path}}
    )
    try:
        return bound(**overrides)
    except ValidationError as exc:
        errors = format_errors(exc, InspectorSettings)
        where = f" in {path}" if path else ""
        raise ConfigError(f"{len(errors)} configuration error(s){where}", errors) from exc


def _check_yaml(path: Path) -> None:
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise ConfigError(f"cannot read config file {path}: {exc.strerror}", [f"{path}: {exc.strerror}"]) from exc
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"{path}:{mark.line + 1}:{mark.column + 1}" if mark else str(path)
        problem = getattr(exc, "problem", None) or str(exc)
        raise ConfigError(f"config file {path} is not valid YAML", [f"{where}: {problem}"]) from exc
    if data is not None and not isinstance(data, dict):
        raise ConfigError(
            f"config file {path} must hold a mapping of sections", [f"{path}: expected a mapping, got {type(data).__name__}"]
        )


def format_errors(exc: ValidationError, root: type[BaseModel]) -> list[str]:
    """One `dotted.path: message` line per error; unknown keys name the allowed ones."""
    lines = []
    for err in exc.errors():
        loc = [str(p) for p in err["loc"]]
        msg = err["msg"]
        if err["type"] == "extra_forbidden":
            allowed = _fields_at(root, err["loc"][:-1])
            msg = f"unknown key; allowed: {', '.join(allowed)}" if allowed else "unknown key"
        lines.append(f"{'.'.join(loc) or '(top level)'}: {msg}")
    return lines


def _fields_at(model: Any, loc: tuple[Any, ...]) -> list[str]:
    """Field names of the model found by following `loc` from `model`."""
    node: Any = model
    for part in loc:
        node = _unwrap(node)
        if isinstance(part, int) or node is None:
            continue
        if isinstance(node, type) and issubclass(node, BaseModel) and part in node.model_fields:
            node = node.model_fields[part].annotation
        else:
            return []
    node = _unwrap(node)
    return list(node.model_fields) if isinstance(node, type) and issubclass(node, BaseModel) else []


def _unwrap(annotation: Any) -> Any:
    """The model class inside Optional[...], tuple[...], list[...] or dict[..., ...], else the annotation."""
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType, tuple, list, dict, typing.Annotated):
        for arg in typing.get_args(annotation):
            inner = _unwrap(arg)
            if isinstance(inner, type) and issubclass(inner, BaseModel):
                return inner
    return annotation


def settings_schema() -> dict[str, Any]:
    """JSON schema of the configuration file."""
    return InspectorSettings.model_json_schema()


def settings_yaml(settings: InspectorSettings) -> str:
    """The effective settings as YAML, secrets masked."""
    return yaml.safe_dump(settings.model_dump(mode="json"), sort_keys=False)
