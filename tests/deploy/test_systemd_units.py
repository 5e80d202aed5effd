"""systemd/inspector.service and inspector@.service: `systemd-analyze verify` clean, security exposure <= 4.0, and the
settings that must agree with the daemon (watchdog vs. stall detection, stop timeout vs. drain, the config pre-check)."""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
import sysconfig
from pathlib import Path

import pytest

from inspector.config import PipelineSettings, load_settings

SYSTEMD = Path(__file__).resolve().parents[2] / "systemd"
UNITS = {"inspector.service": "inspector.service", "inspector@.service": "inspector@station1.service"}
SHIPPED_BIN = "/opt/inspector/venv/bin"
SCRIPTS = Path(sysconfig.get_path("scripts"))  # this venv's bin/, where pip put the `inspector` console script
MAX_EXPOSURE = 4.0
ANALYZE = shutil.which("systemd-analyze")
needs_analyze = pytest.mark.skipif(ANALYZE is None, reason="needs systemd-analyze (apt-get install systemd)")


def parse_unit(text: str) -> dict[str, dict[str, list[str]]]:
    """A unit file as {section: {key: [values in order]}}; an empty assignment resets the list, as systemd does."""
    sections: dict[str, dict[str, list[str]]] = {}
    current: dict[str, list[str]] | None = None
    pending = ""
    for raw in text.splitlines():
        line = pending + raw.strip()
        pending = ""
        if not line or line[0] in "#;":
            continue
        if line.endswith("\\"):
            pending = line[:-1] + " "
            continue
        if line.startswith("[") and line.endswith("]"):
            current = sections.setdefault(line[1:-1], {})
            continue
        assert current is not None, f"assignment outside a section: {line}"
        key, _, value = line.partition("=")
        values = current.setdefault(key.strip(), [])
        if value.strip():
            values.append(value.strip())
        else:
            values.clear()
    return sections


def seconds(value: str) -> float:
    """A systemd time span (60, 60s, 1min 30s, 500ms) in seconds."""
    units = {"us": 1e-6, "ms": 1e-3, "s": 1, "sec": 1, "m": 60, "min": 60, "h": 3600, "hr": 3600}
    total = 0.0
    for number, unit in re.findall(r"(\d+(?:\.\d+)?)\s*([a-z]*)", value):
        total += float(number) * units[unit or "s"]
    return total


def unit(name: str) -> dict[str, dict[str, list[str]]]:
    return parse_unit((SYSTEMD / name).read_text())


def localized(tmp_path: Path) -> Path:
    """Both units copied to tmp_path with the shipped venv replaced by this one, so that ExecStart= binaries exist."""
    assert (SCRIPTS / "inspector").is_file(), f"the inspector console script is not in {SCRIPTS}: pip install -e ."
    for name in UNITS:
        text = (SYSTEMD / name).read_text()
        assert SHIPPED_BIN in text, f"{name} no longer runs {SHIPPED_BIN}/inspector"
        (tmp_path / name).write_text(text.replace(SHIPPED_BIN, str(SCRIPTS)))
    return tmp_path


def analyze(*args: str) -> subprocess.CompletedProcess[str]:
    assert ANALYZE is not None
    env = {**os.environ, "SYSTEMD_COLORS": "0", "SYSTEMD_PAGER": "", "SYSTEMD_LOG_COLOR": "0"}
    return subprocess.run([ANALYZE, *args], check=False, capture_output=True, text=True, env=env, timeout=60)


def verify_problems(path: Path) -> list[str]:
    """`systemd-analyze verify` on one unit: every line it prints about our units, plus a non-zero exit.

    verify loads the units these reference (mosquitto.service, network-online.target, ...) from the machine too;
    their own warnings are not ours, so only lines naming the unit or its folder count. It does not look up
    User=/Group= (the `inspector` user need not exist here), but it does check that ExecStart= binaries exist.
    """
    proc = analyze("verify", str(path))
    stem = path.name.split("@")[0].removesuffix(".service")
    lines = [ln for ln in (proc.stdout + proc.stderr).splitlines() if str(path.parent) in ln or stem in ln]
    if proc.returncode != 0:
        lines.append(f"exit {proc.returncode}: {(proc.stdout + proc.stderr).strip()}")
    return lines


def exposure(path: Path) -> float:
    proc = analyze("security", "--offline=yes", "--no-pager", str(path))
    found = re.search(r"Overall exposure level for \S+: (\d+(?:\.\d+)?)", proc.stdout)
    assert found, f"no exposure line (exit {proc.returncode}):\n{proc.stdout}\n{proc.stderr}"
    return float(found.group(1))


# --- systemd-analyze ---------------------------------------------------------------------------------


@needs_analyze
@pytest.mark.parametrize("name", list(UNITS))
def test_units_verify_clean(tmp_path: Path, name: str) -> None:
    folder = localized(tmp_path)
    # The template is checked as an instance: verify finds inspector@.service next to inspector@station1.service.
    assert verify_problems(folder / UNITS[name]) == []


@needs_analyze
def test_verify_check_catches_what_it_should(tmp_path: Path) -> None:
    """The helper above reports a misspelt key, an invalid value and a missing binary on this systemd version."""
    folder = localized(tmp_path)
    text = (folder / "inspector.service").read_text()
    cases = {
        "typo": text.replace("ProtectHome=yes", "ProtectHme=yes"),
        "value": text.replace("Type=notify", "Type=notyfy"),
        "binary": text.replace(f"{SCRIPTS}/inspector run", "/nonexistent/inspector run"),
    }
    for label, broken in cases.items():
        path = folder / f"broken-{label}.service"
        path.write_text(broken)
        assert verify_problems(path), label


@needs_analyze
@pytest.mark.parametrize("name", list(UNITS))
def test_security_exposure_at_most_4(tmp_path: Path, name: str) -> None:
    folder = localized(tmp_path)
    level = exposure(folder / UNITS[name])
    assert level <= MAX_EXPOSURE, f"{UNITS[name]}: exposure {level} > {MAX_EXPOSURE}; see `systemd-analyze security --offline=yes`"


@needs_analyze
def test_exposure_parse_sees_an_unhardened_unit(tmp_path: Path) -> None:
    """Without its sandbox the same unit scores far above the limit: the parsed number is the real one."""
    folder = localized(tmp_path)
    service = parse_unit((folder / "inspector.service").read_text())["Service"]
    bare = "[Service]\nType=notify\n" + "".join(f"{k}={shlex.join(shlex.split(v[0]))}\n" for k, v in service.items() if k.startswith("Exec"))
    (folder / "bare.service").write_text(bare)
    assert exposure(folder / "bare.service") > 9.0


# --- what the units must agree on with the daemon ------------------------------------------------------


@pytest.mark.parametrize(("name", "config"), [("inspector.service", "/etc/inspector/inspector.yaml"), ("inspector@.service", "/etc/inspector/%i.yaml")])
def test_precheck_and_run_use_the_same_config(name: str, config: str) -> None:
    service = unit(name)["Service"]
    (pre,) = service["ExecStartPre"]
    (start,) = service["ExecStart"]
    assert shlex.split(pre) == [f"{SHIPPED_BIN}/inspector", "config", "check", "--run", config]
    assert shlex.split(start) == [f"{SHIPPED_BIN}/inspector", "run", "--config", config]


@pytest.mark.parametrize("name", list(UNITS))
def test_watchdog_and_stop_timeouts_fit_the_daemon_defaults(name: str) -> None:
    service = unit(name)["Service"]
    assert service["Type"] == ["notify"] and service["NotifyAccess"] == ["main"]
    stall = PipelineSettings.model_fields["stall_s"].default
    drain = PipelineSettings.model_fields["shutdown_timeout_s"].default
    (watchdog,) = service["WatchdogSec"]
    (stop,) = service["TimeoutStopSec"]
    # The daemon withholds pings after pipeline.stall_s without progress; systemd must not give up first.
    assert seconds(watchdog) > stall, f"WatchdogSec={watchdog} must exceed pipeline.stall_s default {stall}s"
    assert seconds(stop) > drain, f"TimeoutStopSec={stop} must exceed pipeline.shutdown_timeout_s default {drain}s"


def test_template_keeps_each_station_in_its_own_state_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    service = unit("inspector@.service")["Service"]
    assert service["StateDirectory"] == ["inspector/%i"]
    env = dict(v.split("=", 1) for line in service["Environment"] for v in shlex.split(line))
    journal = env["INSPECTOR_JOURNAL__PATH"]
    assert journal == "/var/lib/inspector/%i/journal.sqlite3"
    assert unit("inspector@.service")["Service"]["LoadCredential"] == ["mqtt-password:/etc/inspector/%i.mqtt-password"]
    # The variable overrides journal.path from the station's file, and leaves the rest of that section alone.
    cfg = tmp_path / "s1.yaml"
    cfg.write_text("journal:\n  path: /elsewhere/journal.sqlite3\n  max_age_days: 7\n")
    monkeypatch.setenv("INSPECTOR_JOURNAL__PATH", journal.replace("%i", "s1"))
    settings = load_settings(cfg)
    assert settings.journal.path == Path("/var/lib/inspector/s1/journal.sqlite3")
    assert settings.journal.max_age_days == 7


def test_both_units_share_one_sandbox() -> None:
    """The template differs from the single unit only where the instance name goes in."""
    single, template = unit("inspector.service")["Service"], unit("inspector@.service")["Service"]
    differ = {k for k in single.keys() | template.keys() if single.get(k) != template.get(k)}
    instance_specific = {
        "ExecStartPre", "ExecStart", "StateDirectory", "CacheDirectory", "Environment", "LoadCredential", "SyslogIdentifier", "ReadWritePaths",
    }
    assert differ <= instance_specific, f"only the instance-specific settings may differ, not {sorted(differ - instance_specific)}"
    for key in differ:
        assert any("%i" in v for v in template[key]), key


def test_credential_is_optional_and_devices_stay_visible() -> None:
    for name in UNITS:
        service = unit(name)["Service"]
        # A missing password file must not fail the start: a SetCredential= of the same id is the fallback.
        (load,) = service["LoadCredential"]
        assert any(s.split(":", 1)[0] == load.split(":", 1)[0] == "mqtt-password" for s in service["SetCredential"])
        # PrivateDevices= would hide /dev/video* and /dev/nvidia*; the device list replaces it.
        assert "PrivateDevices" not in service
        assert service["DevicePolicy"] == ["closed"]
        allowed = {d.split()[0] for d in service["DeviceAllow"]}
        assert {"char-video4linux", "char-nvidia-frontend", "char-nvidia-uvm"} <= allowed


def test_the_daemon_user_may_write_the_cpu_latency_device() -> None:
    """pipeline.cpu_latency_us needs the device in the unit's ACL and the udev rule giving the unit's group write access."""
    rule_file = SYSTEMD.parent / "deploy" / "udev" / "60-inspector-cpu-latency.rules"
    [rule] = [line for line in rule_file.read_text().splitlines() if line.strip() and not line.startswith("#")]
    keys = dict(re.findall(r'(\w+)=?="([^"]*)"', rule))
    assert keys["KERNEL"] == "cpu_dma_latency" and keys["SUBSYSTEM"] == "misc"
    assert re.search(r'\bKERNEL=="cpu_dma_latency"', rule) and re.search(r'\bGROUP="\w+"', rule)  # match (==) vs assign (=)
    mode = int(keys["MODE"], 8)
    assert mode & 0o020 and not mode & 0o002, f"group write, nothing for others: {keys['MODE']}"
    for name in UNITS:
        service = unit(name)["Service"]
        assert service["Group"] == [keys["GROUP"]]
        assert "/dev/cpu_dma_latency w" in service["DeviceAllow"]
    install = (SYSTEMD.parent / "deploy" / "install.sh").read_text()
    assert "60-inspector-cpu-latency.rules" in install and "/etc/udev/rules.d" in install


def test_precheck_command_runs(tmp_path: Path) -> None:
    """The unit's ExecStartPre, pointed at this venv and a config in tmp_path: exit 0 when usable, 2 with one line per problem."""
    (pre,) = unit("inspector.service")["Service"]["ExecStartPre"]
    argv = [a.replace(SHIPPED_BIN, str(SCRIPTS)) for a in shlex.split(pre)]
    cfg = tmp_path / "inspector.yaml"
    (tmp_path / "model.onnx").write_bytes(b"not checked here")
    (tmp_path / "in").mkdir()
    cfg.write_text(
        f"model: {{path: {tmp_path / 'model.onnx'}}}\nsource: {{kind: folder, path: {tmp_path / 'in'}}}\n"
        f"journal: {{path: {tmp_path / 'journal.sqlite3'}}}\n"
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("INSPECTOR_")}
    ok = subprocess.run([*argv[:-1], str(cfg)], check=False, capture_output=True, text=True, env=env, timeout=120)
    assert ok.returncode == 0, ok.stdout + ok.stderr
    (tmp_path / "in").rmdir()
    bad = subprocess.run([*argv[:-1], str(cfg)], check=False, capture_output=True, text=True, env=env, timeout=120)
    assert bad.returncode == 2
    assert "source.path: not a folder" in bad.stdout
