"""The calibration record: one YAML file per station, written by `inspector calibrate`, read by `run` and `replay`."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from inspector import yaml_load
from inspector.config import Threshold
from inspector.errors import ConfigError, ModelError

SCHEMA = "inspector.calibration/1"
ALL_ROIS = "*"  # the scope name of a threshold that applies to every ROI


class _Record(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ModelRef(_Record):
    """The model whose scores were calibrated."""

    name: str | None = Field(description="Model file name, for people; the hash is what is checked.")
    sha256: str = Field(pattern=r"^[0-9a-f]{64}$", description="SHA-256 of the ONNX file; the daemon refuses any other model.")


class DatasetRef(_Record):
    """What the calibration saw."""

    source: str = Field(description="The folder or decisions file the scores came from.")
    fingerprint: str = Field(description="sha256 over the sorted (sample, label, content hash) list.")
    basis: Literal["files", "decisions"] = Field(description="files: image contents were hashed; decisions: replay's records were.")
    unit: Literal["frame", "roi"] = Field(description="frame: one sample per image; roi: one per labelled ROI crop.")
    n_ok: int = Field(ge=0, description="OK samples.")
    n_ng: int = Field(ge=0, description="NG samples.")
    n_ng_per_class: dict[str, int] = Field(
        default_factory=dict,
        description="NG frames per defect class (ng/<defect>/), those directly under ng/ as \"(no defect folder)\"; empty for ROI labels.",
    )
    excluded: int = Field(default=0, ge=0, description="Samples left out: without a score (unreadable images), or repeats of another.")
    unlabelled: int = Field(default=0, ge=0, description="Frames found without a label, left out.")


class Target(_Record):
    """The guarantee asked for."""

    ng_recall: float = Field(gt=0.0, lt=1.0, description="NG recall the threshold must reach.")
    confidence: float = Field(gt=0.0, lt=1.0, description="One-sided confidence of the Clopper-Pearson lower bound.")


class Achieved(_Record):
    """The threshold's figures on the calibration samples: point estimates and one-sided bounds."""

    ng_recall: float
    ng_recall_lower: float = Field(description="Clopper-Pearson lower bound at the target's confidence.")
    false_reject_rate: float
    false_reject_rate_upper: float = Field(description="Clopper-Pearson upper bound at the target's confidence.")
    ng_caught: int
    ng_missed: int
    ok_rejected: int
    ok_passed: int


class Limit(_Record):
    """The NG sample the threshold sits on: the one that limits it."""

    sample: str
    score: float
    defect: str | None = None
    roi: str | None = None


class GroupFigures(_Record):
    """A defect class's or a ROI's figures at the threshold, and the threshold it alone would need."""

    n_ng: int
    n_ok: int = 0
    ng_caught: int
    ng_recall: float
    ng_recall_lower: float
    false_reject_rate: float | None = None
    lowest_ng_score: float
    threshold_alone: float = Field(description="The threshold this group's samples alone would give (same rule).")
    demonstrated_alone: bool


class Cost(_Record):
    """Expected cost per part: the optimum beside the recall-bound threshold."""

    escape: float = Field(description="Cost of one NG part passed.")
    false_reject: float = Field(description="Cost of one OK part rejected.")
    ng_rate: float = Field(description="NG prevalence assumed on the line.")
    ng_rate_from: Literal["option", "calibration data"]
    threshold: float = Field(description="The threshold with the lowest expected cost per part.")
    cost_per_part: float
    recall_threshold_cost_per_part: float = Field(description="The expected cost at the recall-bound threshold.")
    achieved: Achieved = Field(description="Figures at the cost-optimal threshold.")


class BandRecord(_Record):
    """Scores in [low, high) get verdict `uncertain`; the daemon routes them per `decision.uncertain_route`."""

    low: Threshold  # thresholds the daemon applies: at most 6 decimals, as every threshold
    high: Threshold
    ng_in_band: int
    ok_in_band: int
    ok_rejected_above: int
    expected_review_rate: float = Field(description="Fraction of parts expected in the band, at the assumed NG rate.")


class ScopeResult(_Record):
    """One threshold: for every ROI (scope `*`), or for one ROI with per-ROI thresholds."""

    threshold: Threshold = Field(description="The threshold the daemon applies: reject when score >= threshold (0..1, at most 6 decimals).")
    chosen_by: Literal["recall-bound", "point-estimate-minus-margin", "expected-cost"]
    demonstrated: bool = Field(description="The lower bound on NG recall at `threshold` meets the target.")
    recall_bound_threshold: float = Field(description="The recall rule's threshold (equal to `threshold` unless cost chose).")
    point_estimate_threshold: float = Field(description="The highest threshold whose point-estimate recall meets the target.")
    safety_margin: float | None = Field(default=None, description="Odds margin applied because the target was not demonstrated.")
    ng_needed_zero_misses: int = Field(description="NG samples, none missed, needed to demonstrate the target.")
    n_ok: int
    n_ng: int
    achieved: Achieved
    limited_by: Limit
    per_defect: dict[str, GroupFigures] = Field(default_factory=dict)
    per_roi: dict[str, GroupFigures] = Field(default_factory=dict)
    cost: Cost | None = None
    uncertain_band: BandRecord | None = None
    uncertain_band_note: str | None = Field(default=None, description="Why no uncertain band was set where one was asked for.")


class CalibrationRecord(_Record):
    """The versioned threshold of one station; a change to it is a reviewed commit."""

    schema_: Literal["inspector.calibration/1"] = Field(default=SCHEMA, alias="schema")
    station: str = Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_.-]+$")
    created_at: str = Field(description="ISO 8601 UTC.")
    created_by: str = Field(description="user@host that ran `inspector calibrate`.")
    inspector_version: str
    model: ModelRef
    preprocess_sha256: str | None = Field(default=None, description="sha256 of the station's preprocessing (ROIs, CLAHE, ...).")
    target: Target
    dataset: DatasetRef
    demonstrated: bool = Field(description="Every threshold's lower bound on NG recall meets the target.")
    thresholds: dict[str, ScopeResult] = Field(min_length=1, description="`*` for one threshold, or one entry per ROI.")

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)

    def to_yaml(self) -> str:
        """The record as written to disk: keys in reading order."""
        return yaml.safe_dump(self.model_dump(mode="json", by_alias=True), sort_keys=False, allow_unicode=True, width=120)

    def decision(self) -> tuple[float | None, dict[str, float], dict[str, tuple[float, float]]]:
        """(threshold for every ROI or None, per-ROI thresholds, per-scope uncertain bands) as the daemon applies them."""
        default = self.thresholds[ALL_ROIS].threshold if ALL_ROIS in self.thresholds else None
        per_roi = {k: v.threshold for k, v in self.thresholds.items() if k != ALL_ROIS}
        bands = {k: (v.uncertain_band.low, v.uncertain_band.high) for k, v in self.thresholds.items() if v.uncertain_band}
        return default, per_roi, bands


def preprocess_sha256(spec_json: str) -> str:
    """The fingerprint of a preprocessing spec's canonical JSON."""
    return hashlib.sha256(spec_json.encode()).hexdigest()


def load_record(path: Path, *, what: str = "decision.calibration") -> CalibrationRecord:
    """Read and validate a calibration record; ConfigError naming each problem."""
    try:
        raw = yaml_load.safe_load(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"{what}: no calibration record at {path}", [f"{what}: file not found: {path} (run `inspector calibrate`)"]) from None
    except yaml.YAMLError as exc:
        # `path:line:column: problem`, as for the config file: PyYAML's own text runs over lines and names "<unicode string>".
        raise ConfigError(f"{what}: {path} is not valid YAML", [f"{what}: {yaml_load.problem_line(exc, path)}"]) from exc
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{what}: cannot read {path}", [f"{what}: {path}: {exc}"]) from exc
    if not isinstance(raw, dict):
        raise ConfigError(f"{what}: {path} is not a calibration record", [f"{what}: expected a YAML mapping with schema: {SCHEMA}"])
    if raw.get("schema") != SCHEMA:
        raise ConfigError(
            f"{what}: {path} is not a calibration record this inspector reads",
            [f"{what}: schema is {raw.get('schema')!r}, expected {SCHEMA!r}"],
        )
    try:
        return CalibrationRecord.model_validate(raw)
    except ValidationError as exc:
        raise ConfigError(
            f"{what}: {path} is not a valid calibration record",
            [f"{what}: {'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors()],
        ) from exc


def check_record(record: CalibrationRecord, path: Path, model_sha256: str, spec_sha256: str | None, roi_names: tuple[str, ...]) -> None:
    """Refuse a record made for another model, another preprocessing or other ROIs."""
    if record.model.sha256 != model_sha256:
        raise ModelError(
            f"calibration {path} was made for model sha256 {record.model.sha256}, but the loaded model has sha256 {model_sha256}; "
            "calibrate this model (`inspector calibrate`) or load the model the record names"
        )
    if record.preprocess_sha256 and spec_sha256 and record.preprocess_sha256 != spec_sha256:
        raise ModelError(
            f"calibration {path} was made with other preprocessing (sha256 {record.preprocess_sha256[:12]}…, now {spec_sha256[:12]}…): "
            "the ROIs or preprocessing changed since; calibrate again"
        )
    unknown = sorted(set(record.thresholds) - {ALL_ROIS} - set(roi_names))
    if unknown:
        raise ModelError(f"calibration {path} has thresholds for ROIs {unknown}, but the station's ROIs are {list(roi_names)}")


_HEADER = "# Calibration record for station "


def is_record_file(path: Path) -> bool:
    """True when `path` starts as `write_record` starts a record (whether or not it still loads)."""
    try:
        with path.open("rb") as f:
            return f.read(len(_HEADER)) == _HEADER.encode()
    except OSError:
        return False


def report_path(record: Path) -> Path:
    """The review page written beside a record: calibration/<station>.report.html."""
    return record.with_name(record.stem + ".report.html")


def write_record(path: Path, record: CalibrationRecord) -> None:
    """Write atomically: a reader sees the old record or the new one, never half of one."""
    tmp = path.with_name(path.name + ".partial")
    tmp.write_text(
        f"{_HEADER}{record.station}: written by `inspector calibrate`.\n"
        "# A threshold change is a reviewed commit of this file (see calibration/README.md).\n" + record.to_yaml(),
        encoding="utf-8",
    )
    os.replace(tmp, path)


def summary_line(record: CalibrationRecord) -> dict[str, Any]:
    """The record's identity and guarantee, for logs and the `state` topic."""
    return {
        "station": record.station,
        "created_at": record.created_at,
        "created_by": record.created_by,
        "target_recall": record.target.ng_recall,
        "confidence": record.target.confidence,
        "demonstrated": record.demonstrated,
        "thresholds": {k: v.threshold for k, v in record.thresholds.items()},
    }
