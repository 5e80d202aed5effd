"""The CPU latency QoS request: the kernel's device where this machine lets us write it, files and missing paths elsewhere."""

from __future__ import annotations

import os
import struct
from pathlib import Path

import pytest
from structlog.testing import capture_logs

from inspector.cpu_latency import CpuLatencyRequest
from tests.conftest import effective_latency_us, needs_cpu_latency_device


def _open_fds_to(path: Path) -> int:
    return sum(1 for fd in Path("/proc/self/fd").iterdir() if os.path.realpath(fd) == str(path))


@needs_cpu_latency_device
def test_the_kernel_applies_the_request_while_held_and_drops_it_on_exit() -> None:
    before = effective_latency_us()
    if before <= 7:
        pytest.skip(f"another process already holds {before} µs, as low as this test's request")
    with capture_logs() as logs, CpuLatencyRequest(7) as request:
        assert request.held_us == 7
        assert effective_latency_us() == 7
    assert request.held_us is None
    assert effective_latency_us() == before
    assert [e["event"] for e in logs] == ["cpu_latency_held"] and logs[0]["latency_us"] == 7


def test_the_value_is_written_as_one_native_32_bit_integer(tmp_path: Path) -> None:
    # The kernel takes exactly 4 bytes as the number; text or a longer write would be parsed as hex.
    device = tmp_path / "cpu_dma_latency"
    device.write_bytes(b"")
    with CpuLatencyRequest(20, device=device) as request:
        assert request.held_us == 20
        assert _open_fds_to(device) == 1
    assert device.read_bytes() == struct.pack("=i", 20)
    assert _open_fds_to(device) == 0


def test_a_missing_device_gives_one_warning_naming_the_setting_and_no_request(tmp_path: Path) -> None:
    with capture_logs() as logs, CpuLatencyRequest(0, device=tmp_path / "absent") as request:
        assert request.held_us is None
    assert [(e["event"], e["log_level"]) for e in logs] == [("cpu_latency_not_held", "warning")]
    assert "pipeline.cpu_latency_us: null" in logs[0]["hint"] and logs[0]["error"] == "No such file or directory"


def _refuses_writes(tmp_path: Path) -> Path:
    """A real file this process may not open for writing: a read-only sysfs attribute refuses even root."""
    attribute = Path("/sys/devices/system/cpu/cpu0/topology/core_id")
    if attribute.exists():
        return attribute
    if os.geteuid() == 0:
        pytest.skip("no read-only sysfs attribute here, and root may write any plain file")
    path = tmp_path / "cpu_dma_latency"
    path.write_bytes(b"")
    path.chmod(0o444)
    return path


def test_permission_denied_points_at_the_udev_rule_and_the_null_setting(tmp_path: Path) -> None:
    device = _refuses_writes(tmp_path)
    with capture_logs() as logs, CpuLatencyRequest(0, device=device) as request:
        assert request.held_us is None
    [event] = logs
    assert (event["event"], event["log_level"], event["error"]) == ("cpu_latency_not_held", "warning", "Permission denied")
    assert "deploy/udev/60-inspector-cpu-latency.rules" in event["hint"] and f"DeviceAllow={device} w" in event["hint"]
    assert "pipeline.cpu_latency_us: null" in event["hint"]


def test_a_device_that_refuses_the_write_is_closed_and_reported(tmp_path: Path) -> None:
    # A folder opens for writing nowhere: EISDIR stands in for any refusal the kernel may give.
    with capture_logs() as logs, CpuLatencyRequest(0, device=tmp_path) as request:
        assert request.held_us is None
    assert logs[0]["event"] == "cpu_latency_not_held" and "null" in logs[0]["hint"]


def test_no_latency_asks_for_nothing(tmp_path: Path) -> None:
    device = tmp_path / "cpu_dma_latency"
    device.write_bytes(b"untouched")
    with capture_logs() as logs, CpuLatencyRequest(None, device=device) as request:
        assert request.held_us is None and _open_fds_to(device) == 0
    assert device.read_bytes() == b"untouched" and logs == []


def test_a_negative_latency_is_a_programming_error() -> None:
    with pytest.raises(ValueError, match=">= 0 or None"):
        CpuLatencyRequest(-1)
