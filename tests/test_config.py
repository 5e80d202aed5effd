"""Settings: YAML + environment, strict errors as `dotted.path: message`, and the `inspector config` commands."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from inspector.cli import main
from inspector.config import InspectorSettings, load_settings
from inspector.errors import ConfigError


def _write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "inspector.yaml"
    path.write_text(text)
    return path


def test_yaml_values_load_and_environment_overrides_them(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = _write(tmp_path, "decision:\n  threshold: 0.3\nmodel:\n  intra_op_threads: 1\n")
    monkeypatch.setenv("INSPECTOR_DECISION__THRESHOLD", "0.25")
    s = load_settings(path)
    assert s.decision.threshold == 0.25
    assert s.model.intra_op_threads == 1


def test_every_error_is_reported_with_its_dotted_path(tmp_path: Path) -> None:
    path = _write(
        tmp_path,
        "decision:\n  threshold: 1.5\nmodel:\n  providers: [cuda, gpu]\n  pth: x.onnx\npreprocess:\n  color: bgr\n",
    )
    with pytest.raises(ConfigError) as info:
        load_settings(path)
    lines = info.value.errors
    assert any(line.startswith("decision.threshold: ") and "less than or equal to 1" in line for line in lines)
    assert any(line.startswith("model.providers.1: ") and "'tensorrt', 'cuda' or 'cpu'" in line for line in lines)
    assert any(line.startswith("model.pth: unknown key; allowed: path, sha256, providers") for line in lines)
    assert any(line.startswith("preprocess.color: ") and "'gray' or 'rgb'" in line for line in lines)


def test_an_unknown_section_names_the_allowed_ones(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as info:
        load_settings(_write(tmp_path, "modle:\n  path: m.onnx\n"))
    assert info.value.errors == ["modle: unknown key; allowed: preprocess, rois, model, decision, log"]


def test_a_typo_in_an_environment_variable_is_an_error_too(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("INSPECTOR_DECISION__THRESHOLT", "0.2")
    with pytest.raises(ConfigError) as info:
        load_settings(_write(tmp_path, "{}\n"))
    assert any("thresholt" in line.lower() for line in info.value.errors)


@pytest.mark.parametrize(
    ("text", "expected"),
    [("decision: [unclosed\n", "inspector.yaml:2:1: "), ("- just\n- a list\n", "expected a mapping, got list")],
)
def test_malformed_yaml_gets_a_located_message(tmp_path: Path, text: str, expected: str) -> None:
    with pytest.raises(ConfigError) as info:
        load_settings(_write(tmp_path, text))
    assert expected in info.value.errors[0]


def test_every_field_has_a_description() -> None:
    schema = InspectorSettings.model_json_schema()
    missing = []
    for name, model in [("", schema), *schema.get("$defs", {}).items()]:
        for field, prop in model.get("properties", {}).items():
            if "description" not in prop:
                missing.append(f"{name}.{field}")
    assert missing == []


def test_config_check_prints_each_error_and_exits_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = _write(tmp_path, "decision:\n  threshold: -1\n  roi_thresholds: {nope: 0.2}\nrois:\n  - {name: a, box: [0, 0, 4, 4]}\nmodel:\n  path: /no/such.onnx\n")
    assert main(["config", "check", str(path)]) == 2
    out = capsys.readouterr().out.splitlines()
    assert out[0].startswith("decision.threshold: Input should be greater than or equal to 0")
    assert main(["config", "check", str(_write(tmp_path, "rois:\n  - {name: a, box: [0, 0, 4, 4]}\ndecision:\n  roi_thresholds: {nope: 0.2}\nmodel:\n  path: /no/such.onnx\n"))]) == 2
    out = capsys.readouterr().out.splitlines()
    assert out == ["model.path: file not found: /no/such.onnx", "decision.roi_thresholds.nope: no such ROI; the ROIs are: a"]


def test_config_check_accepts_a_good_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = _write(tmp_path, "decision:\n  threshold: 0.4\n")
    assert main(["config", "check", str(path)]) == 0
    assert capsys.readouterr().out.strip() == f"{path}: ok"


def test_config_check_of_a_missing_file_is_exit_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["config", "check", str(tmp_path / "absent.yaml")]) == 2
    assert "no such file" in capsys.readouterr().out


def test_config_schema_is_json_schema_with_bounds(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["config", "schema"]) == 0
    schema = json.loads(capsys.readouterr().out)
    threshold = schema["$defs"]["DecisionSettings"]["properties"]["threshold"]
    assert threshold["minimum"] == 0 and threshold["maximum"] == 1


def test_config_show_prints_the_effective_settings(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("INSPECTOR_MODEL__WARMUP_RUNS", "5")
    assert main(["config", "show", "--config", str(_write(tmp_path, "decision:\n  threshold: 0.4\n"))]) == 0
    shown = yaml.safe_load(capsys.readouterr().out)
    assert shown["decision"]["threshold"] == 0.4 and shown["model"]["warmup_runs"] == 5
