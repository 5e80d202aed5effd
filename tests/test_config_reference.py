"""docs/configuration.md is generated from the settings' schema and must never go stale."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import BaseModel

from inspector.cli import main
from inspector.config import InspectorSettings
from inspector.config_reference import REGENERATE, configuration_reference

DOC = Path(__file__).resolve().parent.parent / "docs" / "configuration.md"


def _dotted_fields(model: type[BaseModel], prefix: str = "") -> tuple[list[str], list[str]]:
    """(sections, keys) as dotted paths: nested sections (model, mqtt.tls, ...) are expanded into their keys."""
    sections, keys = [], []
    for name, field in model.model_fields.items():
        path = f"{prefix}{name}"
        annotation = field.annotation
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            sections.append(path)
            inner_sections, inner_keys = _dotted_fields(annotation, f"{path}.")
            sections += inner_sections
            keys += inner_keys
        else:
            keys.append(path)
    return sections, keys


def test_the_committed_configuration_reference_is_the_generators_output() -> None:
    assert DOC.is_file(), f"docs/configuration.md is missing; run `{REGENERATE}`"
    assert DOC.read_text(encoding="utf-8") == configuration_reference(), (
        f"docs/configuration.md is out of date with inspector/config.py; run `{REGENERATE}` and commit the result"
    )


def test_every_setting_appears_with_its_environment_variable() -> None:
    text = configuration_reference()
    sections, keys = _dotted_fields(InspectorSettings)
    assert {"model", "mqtt", "mqtt.tls", "journal"} <= set(sections)
    assert {"model.path", "mqtt.tls.ca_file", "decision.calibration", "journal.max_size_mb", "preprocess", "rois"} <= set(keys)
    for section in sections:
        if "." not in section:
            assert f"\n## {section}\n" in text, f"section {section} missing from the reference"
    for path in keys:
        env = "INSPECTOR_" + "__".join(p.upper() for p in path.split("."))
        if path in ("preprocess", "rois"):  # optional top-level sections: a heading, their keys, one variable
            assert f"\n## {path}\n" in text and f"`{env}`" in text
            continue
        assert f"| `{path}` |" in text, f"{path} missing from the reference"
        assert f"`{env}`" in text, f"{env} missing from the reference"


def test_preprocess_and_roi_fields_are_documented_too() -> None:
    text = configuration_reference()
    for key in ("preprocess.clahe.clip_limit", "preprocess.resize.interpolation", "preprocess.rois[].box", "rois[].units"):
        assert f"| `{key}` |" in text


def test_config_reference_command_prints_the_page(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["config", "reference"]) == 0
    assert capsys.readouterr().out == configuration_reference()


def test_a_boolean_or_literal_setting_lists_every_allowed_value() -> None:
    row = next(line for line in configuration_reference().splitlines() if line.startswith("| `model.pin_threads` |"))
    assert "| one of `true`, `false`, `auto` |" in row  # not "only `auto`": true and false are accepted too
