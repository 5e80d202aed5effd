"""Settings: YAML + environment, strict errors as `dotted.path: message`, and the `inspector config` commands."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from inspector.cli import main
from inspector.config import InspectorSettings, load_settings
from inspector.digest import file_sha256
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
    assert info.value.errors == ["modle: unknown key; allowed: preprocess, rois, model, decision, station, source, pipeline, mqtt, journal, metrics, log"]


def test_a_typo_in_an_environment_variable_is_an_error_too(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("INSPECTOR_DECISION__THRESHOLT", "0.2")
    with pytest.raises(ConfigError) as info:
        load_settings(_write(tmp_path, "{}\n"))
    assert any("thresholt" in line.lower() for line in info.value.errors)


@pytest.mark.parametrize(
    ("var", "value", "expected"),
    [
        # pydantic-settings only looks up the variables it knows: these were ignored, and the override with them.
        ("INSPECTOR_DECISON__THRESHOLD", "0.3", "INSPECTOR_DECISON__THRESHOLD: no such setting; allowed at the top level: preprocess, rois,"),
        ("INSPECTOR_MQTT_PORT", "1884", "INSPECTOR_MQTT_PORT: no such setting; allowed at the top level: "),
        # Lists and mappings must be JSON; plain words stopped pydantic-settings before validation (an internal error).
        ("INSPECTOR_MODEL__PROVIDERS", "cpu", "INSPECTOR_MODEL__PROVIDERS: cannot read 'cpu': lists and mappings are JSON"),
        ("INSPECTOR_DECISION__ROI_THRESHOLDS", "roi1=0.2", "INSPECTOR_DECISION__ROI_THRESHOLDS: cannot read 'roi1=0.2': lists and"),
    ],
)
def test_environment_variables_that_cannot_apply_are_errors_naming_the_variable(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, var: str, value: str, expected: str
) -> None:
    monkeypatch.setenv(var, value)
    with pytest.raises(ConfigError) as info:
        load_settings(_write(tmp_path, "{}\n"))
    assert any(line.startswith(expected) for line in info.value.errors), info.value.errors


def test_json_lists_and_mappings_in_the_environment_apply(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("INSPECTOR_MODEL__PROVIDERS", '["cpu"]')
    monkeypatch.setenv("INSPECTOR_DECISION__ROI_THRESHOLDS", '{"roi1": 0.2}')
    s = load_settings(_write(tmp_path, "{}\n"))
    assert s.model.providers == ["cpu"] and s.decision.roi_thresholds == {"roi1": 0.2}


def test_a_config_that_is_a_folder_or_not_utf8_is_named_as_such(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as info:
        load_settings(tmp_path)
    assert info.value.errors == [f"{tmp_path}: is a folder; expected a YAML file"]
    (tmp_path / "latin1.yaml").write_bytes("station: {name: \xe9}\n".encode("latin-1"))
    with pytest.raises(ConfigError) as info:
        load_settings(tmp_path / "latin1.yaml")
    assert info.value.errors == [f"{tmp_path / 'latin1.yaml'}: byte 0xe9 at offset 16 is not UTF-8"]


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


SEVEN_DECIMALS = "expected a number in 0..1 with at most 6 decimals (scores are published with 6), got "


def test_config_check_refuses_thresholds_finer_than_published_scores(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    # A score of 0.44469953 rejects at 0.4446995 but is published as 0.444699: decisions.jsonl would contradict itself.
    path = _write(tmp_path, "decision:\n  threshold: 0.4446995\n  roi_thresholds: {a: 0.3, b: 0.12345678, c: 0.7266}\n")
    assert main(["config", "check", str(path)]) == 2
    assert capsys.readouterr().out.splitlines() == [
        f"decision.threshold: {SEVEN_DECIMALS}0.4446995",
        f"decision.roi_thresholds.b: {SEVEN_DECIMALS}0.12345678",
    ]


def test_an_environment_threshold_finer_than_published_scores_names_its_variable(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("INSPECTOR_DECISION__THRESHOLD", "0.30000001")
    with pytest.raises(ConfigError) as info:
        load_settings(_write(tmp_path, "{}\n"))
    assert info.value.errors == [f"decision.threshold: {SEVEN_DECIMALS}0.30000001 (set by INSPECTOR_DECISION__THRESHOLD)"]


@pytest.mark.parametrize("value", ["0.3", "0.7266", "0.123456", "0.000001", "1", "0", "0.1e-2", "0.400000"])
def test_thresholds_of_at_most_six_decimals_load_as_written(tmp_path: Path, value: str) -> None:
    s = load_settings(_write(tmp_path, f"decision:\n  threshold: {value}\n  roi_thresholds: {{a: {value}}}\n"))
    assert s.decision.threshold == float(value) and s.decision.roi_thresholds == {"a": float(value)}


def test_a_negative_zero_threshold_is_the_threshold_zero(tmp_path: Path) -> None:
    s = load_settings(_write(tmp_path, "decision:\n  threshold: -0.0\n  roi_thresholds: {a: -0.0}\n"))
    assert str(s.decision.threshold) == "0.0" and str(s.decision.roi_thresholds["a"]) == "0.0"  # as published, never -0.0


def test_config_check_and_show_take_the_file_either_way(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    good, bad = _write(tmp_path, "decision:\n  threshold: 0.4\n"), tmp_path / "bad.yaml"
    bad.write_text("decision:\n  threshold: 2\n")
    assert main(["config", "check", "--config", str(good)]) == 0
    assert capsys.readouterr().out.strip() == f"{good}: ok"
    assert main(["config", "check", "--config", str(bad)]) == 2
    assert capsys.readouterr().out.startswith("decision.threshold:")
    assert main(["config", "show", str(good)]) == 0
    assert yaml.safe_load(capsys.readouterr().out)["decision"]["threshold"] == 0.4
    assert main(["config", "check", str(good), "--config", str(bad)]) == 2
    assert "two config files given" in capsys.readouterr().err


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


def test_daemon_contract_keys_are_settable_from_the_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    env = {
        "INSPECTOR_SOURCE__KIND": "camera", "INSPECTOR_SOURCE__URI": "rtsp://cam/1", "INSPECTOR_MODEL__PATH": "/m.onnx",
        "INSPECTOR_DECISION__THRESHOLD": "0.2", "INSPECTOR_DECISION__DEADLINE_MS": "250", "INSPECTOR_MQTT__HOST": "broker",
        "INSPECTOR_MQTT__PORT": "1884", "INSPECTOR_MQTT__TOPIC_PREFIX": "plant/a", "INSPECTOR_MQTT__USERNAME": "st1",
        "INSPECTOR_MQTT__PASSWORD": "pw", "INSPECTOR_JOURNAL__PATH": "/var/j.db",
    }
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    s = load_settings(None)
    assert (s.source.kind, s.source.uri, str(s.model.path)) == ("camera", "rtsp://cam/1", "/m.onnx")
    assert (s.decision.threshold, s.decision.deadline_ms) == (0.2, 250)
    assert (s.mqtt.host, s.mqtt.port, s.mqtt.topic_prefix, s.mqtt.username) == ("broker", 1884, "plant/a", "st1")
    assert s.mqtt.password is not None and s.mqtt.password.get_secret_value() == "pw"
    assert str(s.journal.path) == "/var/j.db"


def test_config_show_masks_the_mqtt_password(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("INSPECTOR_MQTT__PASSWORD", "hunter2")
    assert main(["config", "show", "--config", str(_write(tmp_path, "mqtt:\n  username: st1\n"))]) == 0
    out = capsys.readouterr().out
    assert "hunter2" not in out and yaml.safe_load(out)["mqtt"]["password"] == "**********"


def test_config_check_for_run_names_what_the_daemon_needs(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = _write(tmp_path, "source:\n  kind: folder\npipeline:\n  overload: skip\nmqtt:\n  tls:\n    ca_file: /nope/ca.pem\n")
    assert main(["config", "check", str(path)]) == 0, "without --run only the file itself is checked"
    capsys.readouterr()
    assert main(["config", "check", "--run", str(path)]) == 2
    out = capsys.readouterr().out
    assert "source.path: required when source.kind is folder" in out
    assert "pipeline.overload: skip is for free-running cameras" in out
    assert "mqtt.tls.ca_file: file not found: /nope/ca.pem" in out
    assert "model.path: required by `inspector run`" in out
    folder = _write(tmp_path, f"journal:\n  path: {tmp_path}\n")
    assert main(["config", "check", "--run", str(folder)]) == 2
    assert f"journal.path: is a folder; expected the journal's file name, like {tmp_path / 'journal.sqlite3'}" in capsys.readouterr().out
    folders = _write(tmp_path, f"mqtt:\n  username: st1\n  password_file: {tmp_path}\n  tls:\n    ca_file: {tmp_path}\n")
    assert main(["config", "check", "--run", str(folders)]) == 2
    out = capsys.readouterr().out
    assert f"mqtt.password_file: is a folder; expected a file holding the broker password: {tmp_path}" in out
    assert f"mqtt.tls.ca_file: is a folder; expected the CA certificate (PEM): {tmp_path}" in out


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("mqtt:\n  topic_prefix: plant/#\n", "mqtt.topic_prefix: no MQTT wildcards (# or +) in a topic prefix, got 'plant/#'"),
        ("mqtt:\n  topic_prefix: plant/+/s1\n", "mqtt.topic_prefix: no MQTT wildcards (# or +) in a topic prefix"),
        ("mqtt:\n  topic_prefix: plant/s1/\n", "mqtt.topic_prefix: must not end with /, got 'plant/s1/'"),
        ("mqtt:\n  topic_prefix: ''\n", "mqtt.topic_prefix: empty; leave it unset for the default"),
        # paho would fail only at connect time, as an unresolvable name: say what a host is.
        ("mqtt:\n  host: mqtt://broker\n", "mqtt.host: expected a host name or IP address, got 'mqtt://broker': leave out the scheme"),
        ("mqtt:\n  host: broker:8883\n", "mqtt.host: expected a host name or IP address without a port, got 'broker:8883': put the port in mqtt.port"),
        ("mqtt:\n  host: 'my broker'\n", "mqtt.host: expected a host name or IP address, got 'my broker': no spaces"),
        ("mqtt:\n  host: '[::1]'\n", "mqtt.host: expected a host name or IP address, got '[::1]'"),
        ("source:\n  kind: camera\n  uri: ''\n", "source.uri: empty; expected a device index (0), device path, RTSP/HTTP URL"),
        ("source:\n  kind: camera\n  uri: '  '\n", "source.uri: empty; expected a device index (0)"),
        ("mqtt:\n  port: 70000\n", "mqtt.port: Input should be less than or equal to 65535"),
        ("mqtt:\n  password: a\n  password_file: /p\n", "mqtt: set password or password_file, not both"),
        ("mqtt:\n  tls:\n    cert_file: /c.pem\n", "mqtt.tls: cert_file and key_file go together"),
        ("station:\n  name: a/b\n", "station.name: String should match pattern"),
        ("source:\n  kind: usb\n", "source.kind: Input should be 'folder' or 'camera'"),
        ("source:\n  kind: camera\n  uri: '0'\n  part_id: filename\n", "source: part_id: filename needs kind: folder"),
        ("pipeline:\n  cpu_latency_us: on\n", "pipeline.cpu_latency_us: expected whole microseconds (0 to 1000000) or null/off, got True"),
        ("pipeline:\n  cpu_latency_us: fast\n", "pipeline.cpu_latency_us: expected whole microseconds (0 to 1000000) or null/off, got 'fast'"),
        ("pipeline:\n  cpu_latency_us: -1\n", "pipeline.cpu_latency_us: Input should be greater than or equal to 0"),
        # YAML 1.1 booleans where numbers belong: lax pydantic would read `threshold: yes` as 1.0 and pass every part.
        ("decision:\n  threshold: yes\n", "decision.threshold: expected a number, got true"),
        ("decision:\n  roi_thresholds: {roi1: 0.2, roi2: on}\n", "decision.roi_thresholds: expected a number for roi2, got true"),
        ("model:\n  intra_op_threads: off\n", "model.intra_op_threads: expected a number, got false"),
        ("rois:\n  - {name: a, box: [0, 0, true, 1], units: fraction}\n", "rois.0.box: expected a number at position 2, got true"),
        # A NaN is out of no bound (every comparison is false): name it rather than blame a bound.
        ("decision:\n  threshold: .nan\n", "decision.threshold: expected a finite number, got nan"),
        ("preprocess:\n  normalize: {mean: [0.5, .inf, 0.5], std: [1, 1, 1]}\n", "preprocess.normalize.mean: expected a finite number at position 1, got inf"),
        # YAML reads unquoted digits as a number; the message says to quote, and never echoes a secret.
        ("model:\n  sha256: " + "1" * 64 + "\n", f"model.sha256: expected text, got the number {'1' * 64}; put it in quotes in YAML"),
        ("mqtt:\n  password: 1234\n", "mqtt.password: expected text, got a number; put it in quotes in YAML"),
        ("rois:\n  - {name: a, box: [0, 0, 4, 4]}\n  - {name: a, box: [4, 0, 8, 4]}\n", "rois: ROI names must be unique, repeated: a"),
        ("rois: []\n", "rois: give at least one ROI, or leave rois out to use the model's ROIs"),
        ("rois: [" + ", ".join(f"{{name: r{i}, box: [0, 0, 4, 4]}}" for i in range(65)) + "]\n", "rois: at most 64 ROIs, got 65"),
    ],
)
def test_daemon_sections_are_strict(tmp_path: Path, text: str, expected: str) -> None:
    with pytest.raises(ConfigError) as info:
        load_settings(_write(tmp_path, text))
    assert any(e.startswith(expected) for e in info.value.errors), info.value.errors


def test_the_shipped_example_config_is_valid() -> None:
    s = load_settings(Path(__file__).parents[1] / "deploy" / "inspector.example.yaml")
    assert s.source.kind == "folder" and s.mqtt.username == "station-line1-station1"


@pytest.mark.parametrize(
    ("yaml_value", "env_value", "expected"),
    [("run", None, "run"), ("true", None, "always"), ("off", None, "off"), ("on", None, "always"), ("off", "true", "always"), ("always", "0", "off")],
)
def test_spinning_takes_its_three_modes_and_the_old_booleans(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, yaml_value: str, env_value: str | None, expected: str
) -> None:
    if env_value is not None:
        monkeypatch.setenv("INSPECTOR_MODEL__SPINNING", env_value)
    assert load_settings(_write(tmp_path, f"model:\n  spinning: {yaml_value}\n")).model.spinning == expected


def test_an_unknown_spinning_mode_names_the_allowed_ones(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as info:
        load_settings(_write(tmp_path, "model:\n  spinning: sometimes\n"))
    assert any(line.startswith("model.spinning: ") and "'off', 'run' or 'always'" in line for line in info.value.errors)


def test_thread_pinning_is_auto_unless_the_file_or_the_environment_says_otherwise(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    assert load_settings(None).model.pin_threads == "auto"
    assert load_settings(_write(tmp_path, "model:\n  pin_threads: true\n")).model.pin_threads is True
    assert load_settings(_write(tmp_path, "model:\n  pin_threads: off\n")).model.pin_threads is False  # YAML 1.1's off
    monkeypatch.setenv("INSPECTOR_MODEL__PIN_THREADS", "false")
    assert load_settings(None).model.pin_threads is False
    monkeypatch.setenv("INSPECTOR_MODEL__PIN_THREADS", "auto")
    assert load_settings(None).model.pin_threads == "auto"


def test_an_unknown_pinning_mode_names_the_allowed_ones(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as info:
        load_settings(_write(tmp_path, "model:\n  pin_threads: sometimes\n"))
    [line] = [line for line in info.value.errors if line.startswith("model.pin_threads")]
    assert line.endswith("expected true, false or auto, got 'sometimes'")


def test_cpu_latency_asks_for_nothing_unless_set_and_off_means_no_request_not_zero(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    assert load_settings(None).pipeline.cpu_latency_us is None
    assert load_settings(_write(tmp_path, "pipeline:\n  cpu_latency_us: 0\n")).pipeline.cpu_latency_us == 0
    assert load_settings(_write(tmp_path, "pipeline:\n  cpu_latency_us: 20\n")).pipeline.cpu_latency_us == 20
    # YAML 1.1 reads off as false, which an int field would otherwise take as 0, the strongest request.
    assert load_settings(_write(tmp_path, "pipeline:\n  cpu_latency_us: off\n")).pipeline.cpu_latency_us is None
    assert load_settings(_write(tmp_path, "pipeline:\n  cpu_latency_us: null\n")).pipeline.cpu_latency_us is None
    monkeypatch.setenv("INSPECTOR_PIPELINE__CPU_LATENCY_US", "null")
    assert load_settings(None).pipeline.cpu_latency_us is None
    monkeypatch.setenv("INSPECTOR_PIPELINE__CPU_LATENCY_US", "5")
    assert load_settings(None).pipeline.cpu_latency_us == 5


def test_a_camera_device_index_may_be_written_as_a_yaml_number(tmp_path: Path) -> None:
    assert load_settings(_write(tmp_path, "source:\n  kind: camera\n  uri: 0\n")).source.uri == "0"


def test_an_error_in_a_value_from_the_environment_names_the_variable(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("INSPECTOR_MQTT__PORT", "abc")
    monkeypatch.setenv("INSPECTOR_DECISION", '{"threshold": 3}')
    with pytest.raises(ConfigError) as info:
        load_settings(_write(tmp_path, "model:\n  warmup_runs: 1\n"))
    assert sorted(info.value.errors) == [
        "decision.threshold: Input should be less than or equal to 1 (set by INSPECTOR_DECISION)",
        "mqtt.port: Input should be a valid integer, unable to parse string as an integer (set by INSPECTOR_MQTT__PORT)",
    ]


def test_config_check_names_a_model_folder_and_a_pin_the_file_does_not_match(
    tmp_path: Path, models: dict[str, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "m.onnx").mkdir()
    assert main(["config", "check", str(_write(tmp_path, f"model:\n  path: {tmp_path / 'm.onnx'}\n"))]) == 2
    assert capsys.readouterr().out.strip() == f"model.path: is a folder; expected the model's .onnx file: {tmp_path / 'm.onnx'}"
    pin = "0" * 64
    assert main(["config", "check", str(_write(tmp_path, f"model:\n  path: {models['dark']}\n  sha256: '{pin}'\n"))]) == 2
    assert capsys.readouterr().out.strip() == f"model.sha256: pins {pin}, but model.path {models['dark']} has sha256 {file_sha256(models['dark'])}"


@pytest.mark.parametrize("host", ["127.0.0.1", "::1", "fe80::1", "broker", "broker.plant.local", "mosquitto_1"])
def test_a_host_name_or_address_is_a_valid_mqtt_host(tmp_path: Path, host: str) -> None:
    assert load_settings(_write(tmp_path, f"mqtt:\n  host: '{host}'\n")).mqtt.host == host


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("decision:\n  threshold: 0.2\ndecision:\n  deadline_ms: 500\n", "inspector.yaml:3: 'decision' appears twice (lines 1 and 3); keep one"),
        ("mqtt:\n  host: a\n  port: 1883\n  host: b\n", "inspector.yaml:4: 'host' appears twice (lines 2 and 4); keep one"),
        ("rois:\n  - {name: a, box: [0, 0, 4, 4], name: b}\n", "inspector.yaml:2: 'name' appears twice (both on line 2); keep one"),
    ],
)
def test_a_repeated_key_is_an_error_not_last_one_wins(tmp_path: Path, capsys: pytest.CaptureFixture[str], text: str, expected: str) -> None:
    path = _write(tmp_path, text)
    assert main(["config", "check", str(path)]) == 2
    assert capsys.readouterr().out.splitlines() == [f"{tmp_path}/{expected}"]


def test_yaml_merge_keys_still_override(tmp_path: Path) -> None:
    path = _write(tmp_path, "x-common: &c\n  threshold: 0.2\n  deadline_ms: 900\ndecision:\n  <<: *c\n  threshold: 0.3\n")
    # An anchor section is an unknown key, which says so; the merge itself is no repeat.
    with pytest.raises(ConfigError) as info:
        load_settings(path)
    assert [e.split(":")[0] for e in info.value.errors] == ["x-common"]


@pytest.mark.parametrize("text", ["decision:\n" + "".join("  " * (i + 1) + "a:\n" for i in range(5000)), "rois: " + "[" * 5000 + "]" * 5000 + "\n"])
def test_absurdly_deep_nesting_is_a_config_error_not_a_crash(tmp_path: Path, capsys: pytest.CaptureFixture[str], text: str) -> None:
    assert main(["config", "check", str(_write(tmp_path, text))]) == 2
    assert capsys.readouterr().out.splitlines() == [f"{tmp_path / 'inspector.yaml'}: nested too deeply to read (no configuration needs more than a few levels)"]


def test_a_non_finite_number_from_the_environment_reads_as_one_from_the_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("INSPECTOR_DECISION__THRESHOLD", "nan")
    assert main(["config", "check", str(_write(tmp_path, "{}\n"))]) == 2
    assert capsys.readouterr().out.splitlines() == ["decision.threshold: expected a finite number, got nan (set by INSPECTOR_DECISION__THRESHOLD)"]
    monkeypatch.setenv("INSPECTOR_DECISION__THRESHOLD", "-inf")
    with pytest.raises(ConfigError) as info:
        load_settings(_write(tmp_path, "{}\n"))
    assert info.value.errors == ["decision.threshold: expected a finite number, got -inf (set by INSPECTOR_DECISION__THRESHOLD)"]


def test_config_show_masks_the_camera_password(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = _write(tmp_path, "source:\n  kind: camera\n  uri: rtsp://admin:secret@cam/s\n")
    assert main(["config", "show", str(path)]) == 0
    out = capsys.readouterr().out
    assert "secret" not in out and yaml.safe_load(out)["source"]["uri"] == "rtsp://admin:***@cam/s"


@pytest.fixture
def unprivileged(monkeypatch: pytest.MonkeyPatch) -> None:
    """Permissions as the service's user sees them: as root, judge by the mode bits for others (a root-owned tmp_path)."""
    import os
    import stat

    if os.geteuid() != 0:
        return

    def access(path: object, mode: int, **_: object) -> bool:
        try:
            bits = os.stat(path).st_mode  # type: ignore[arg-type]
        except OSError:
            return False
        wanted = {os.R_OK: stat.S_IROTH, os.W_OK: stat.S_IWOTH, os.X_OK: stat.S_IXOTH}
        return all(bits & other for flag, other in wanted.items() if mode & flag)

    monkeypatch.setattr(os, "access", access)


def _run_config(tmp_path: Path, *, after_decision: str = "move") -> Path:
    model, incoming, state = tmp_path / "m.onnx", tmp_path / "incoming", tmp_path / "state"
    model.write_bytes(b"not really a model")
    for folder in (incoming, state):
        folder.mkdir()
    for p in (tmp_path, incoming, state):
        p.chmod(0o777)
    model.chmod(0o644)
    return _write(
        tmp_path,
        f"model:\n  path: {model}\n  sha256: '{file_sha256(model)}'\nsource:\n  path: {incoming}\n  after_decision: {after_decision}\n"
        f"journal:\n  path: {state / 'journal.sqlite3'}\n",
    )


@pytest.mark.usefixtures("unprivileged")
def test_config_check_for_run_refuses_folders_the_daemon_cannot_write(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = _run_config(tmp_path)
    assert main(["config", "check", "--run", str(path)]) == 0, capsys.readouterr().out
    capsys.readouterr()
    (tmp_path / "incoming").chmod(0o555)
    (tmp_path / "state").chmod(0o555)
    assert main(["config", "check", "--run", str(path)]) == 2
    out = capsys.readouterr().out.splitlines()
    assert [line.split(" (as user")[0] for line in out] == [
        f"source.path: the daemon moves each judged file into processed/ (an unreadable one into quarantine/) inside {tmp_path / 'incoming'}, but cannot write there",
        f"journal.path: the daemon writes the journal and its -wal and -shm files in {tmp_path / 'state'}, but cannot write there",
    ]


@pytest.mark.usefixtures("unprivileged")
def test_config_check_for_run_refuses_a_processed_folder_the_daemon_cannot_write(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = _run_config(tmp_path)
    (tmp_path / "incoming" / "processed" / "pass").mkdir(parents=True)
    (tmp_path / "incoming" / "processed").chmod(0o777)
    (tmp_path / "incoming" / "processed" / "pass").chmod(0o555)
    (tmp_path / "state" / "journal.sqlite3").touch()
    (tmp_path / "state" / "journal.sqlite3").chmod(0o444)
    assert main(["config", "check", "--run", str(path)]) == 2
    out = [line.split(" (as user")[0] for line in capsys.readouterr().out.splitlines()]
    assert out[0] == f"source.path: the daemon moves files into {tmp_path / 'incoming' / 'processed' / 'pass'}, but cannot write there"
    assert out[1].startswith(f"journal.path: the daemon writes {tmp_path / 'state' / 'journal.sqlite3'}, but cannot")
    assert len(out) == 2


@pytest.mark.usefixtures("unprivileged")
def test_config_check_names_a_model_it_cannot_read(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = _run_config(tmp_path)
    (tmp_path / "m.onnx").chmod(0o000)
    assert main(["config", "check", str(path)]) == 2
    captured = capsys.readouterr()
    assert [line.split(" (as user")[0] for line in captured.out.splitlines()] == [
        f"model.path: cannot read {tmp_path / 'm.onnx'}: Permission denied"
    ]
    assert "inspector: error" not in captured.err


@pytest.mark.parametrize(
    ("uri", "error"),
    [
        ("{tmp}", "source.uri: is a folder; expected a video file, a device, or a stream URL"),
        ("file://{tmp}", "source.uri: is a folder; expected a video file, a device, or a stream URL"),
        ("{tmp}/later.avi", None),  # a video file, or a device, may come after the start: the daemon opens it then
        ("/dev/video77", None),
        ("rtsp://cam/stream", None),
        ("0", None),
    ],
)
def test_config_check_for_run_refuses_a_camera_uri_naming_a_folder(tmp_path: Path, capsys: pytest.CaptureFixture[str], uri: str, error: str | None) -> None:
    path = _write(tmp_path, f"source:\n  kind: camera\n  uri: '{uri.format(tmp=tmp_path)}'\n")
    main(["config", "check", "--run", str(path)])
    lines = [line for line in capsys.readouterr().out.splitlines() if line.startswith("source.")]
    if error is None:
        assert lines == []
    else:
        assert len(lines) == 1 and lines[0].startswith(error.format(tmp=tmp_path))
