"""deploy/examples/plc_subscriber.py: the gate defaults to reject, opens only for an on-time pass, acts on each decision once."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

from inspector.demo import stop_process
from tests.mqtt_helpers import (
    MOSQUITTO,
    MOSQUITTO_PASSWD,
    Broker,
    Subscriber,
    wait_until,
)

EXAMPLE = Path(__file__).resolve().parents[2] / "deploy" / "examples" / "plc_subscriber.py"
NOW = 1_795_000_000.0  # 2026-11-18T11:06:40Z


def load() -> ModuleType:
    spec = importlib.util.spec_from_file_location("plc_subscriber_example", EXAMPLE)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


plc = load()


def iso(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def decision(seq: int = 1, verdict: str = "pass", *, late: bool = False, deadline_in: float = 0.5, **extra: Any) -> dict[str, Any]:
    body = {
        "schema": "inspector.decision/1", "seq": seq, "session": "s-1", "frame_id": f"P-{seq}.png", "part_id": f"P-{seq}",
        "verdict": verdict, "reason": None if verdict == "pass" else "score", "detail": None, "score": 0.1, "threshold": 0.5,
        "captured_at": iso(NOW - 0.2), "decided_at": iso(NOW - 0.1), "deadline_at": iso(NOW + deadline_in), "late": late,
    }
    return {**body, **extra}


def test_on_time_pass_opens() -> None:
    action, why = plc.gate(decision(), NOW, plc.Seen())
    assert action == "OPEN", why
    assert "500 ms before the deadline" in why


def test_pass_exactly_at_the_deadline_still_opens() -> None:
    assert plc.gate(decision(deadline_in=0.0), NOW, plc.Seen())[0] == "OPEN"


def test_late_pass_rejects() -> None:
    action, why = plc.gate(decision(late=True), NOW, plc.Seen())
    assert action == "REJECT" and "late" in why


def test_pass_past_its_deadline_rejects_even_when_not_marked_late() -> None:
    action, why = plc.gate(decision(deadline_in=-0.25), NOW, plc.Seen())
    assert action == "REJECT"
    assert "250 ms after its deadline" in why


def test_duplicate_is_ignored_once_acted_on() -> None:
    seen = plc.Seen()
    assert plc.gate(decision(seq=5), NOW, seen)[0] == "OPEN"
    assert plc.gate(decision(seq=5), NOW, seen)[0] == "IGNORE"
    # A reject is remembered as well: its repeat is not acted on again.
    assert plc.gate(decision(seq=6, verdict="reject"), NOW, seen)[0] == "REJECT"
    assert plc.gate(decision(seq=6, verdict="reject"), NOW, seen)[0] == "IGNORE"
    # The same seq from another daemon session (a new journal starts at 1 again) is a new decision.
    assert plc.gate(decision(seq=5, session="s-2"), NOW, seen)[0] == "OPEN"


def test_reject_stays_reject() -> None:
    for body in (decision(verdict="reject"), decision(verdict="reject", late=True), decision(verdict="reject", deadline_in=-5)):
        action, why = plc.gate(body, NOW, plc.Seen())
        assert action == "REJECT" and "verdict reject" in why


@pytest.mark.parametrize(
    ("payload", "expected"),
    [
        (b"not json", "malformed"),
        (b"[1, 2]", "malformed"),
        (json.dumps({**decision(), "schema": "inspector.decision/2"}).encode(), "unknown schema"),
        (json.dumps({k: v for k, v in decision().items() if k != "seq"}).encode(), "seq"),
        (json.dumps({k: v for k, v in decision().items() if k != "late"}).encode(), "late"),
        (json.dumps({k: v for k, v in decision().items() if k != "deadline_at"}).encode(), "deadline_at"),
        (json.dumps(decision(deadline_at="tomorrow")).encode(), "deadline_at"),
        (json.dumps(decision(deadline_at="2026-11-23T08:15:02.123")).encode(), "deadline_at"),  # no time zone
        (json.dumps(decision(verdict="PASS")).encode(), "verdict PASS"),
    ],
)
def test_anything_unproven_rejects(payload: bytes, expected: str) -> None:
    action, why = plc.gate(payload, NOW, plc.Seen())
    assert action == "REJECT" and expected in why, why


def test_seen_is_bounded() -> None:
    seen = plc.Seen(limit=3)
    for seq in range(1, 6):
        assert plc.gate(decision(seq=seq), NOW, seen)[0] == "OPEN"
    assert len(seen) == 3
    assert plc.gate(decision(seq=5), NOW, seen)[0] == "IGNORE"
    assert plc.gate(decision(seq=1), NOW, seen)[0] == "OPEN"  # forgotten: the oldest went first


def test_ack_body() -> None:
    assert json.loads(plc.ack_body(json.dumps(decision(seq=9)).encode())) == {"seq": 9, "part_id": "P-9"}
    assert plc.ack_body(b"garbage") is None


@pytest.mark.skipif(not (Path(MOSQUITTO).exists() and Path(MOSQUITTO_PASSWD).exists()), reason="needs mosquitto (apt-get install mosquitto)")
def test_example_gates_and_acknowledges_over_a_real_broker(tmp_path: Path) -> None:
    """Run the example against mosquitto with the shipped ACL: it opens, rejects, ignores, and acks to the ResponseTopic."""
    from paho.mqtt.packettypes import PacketTypes
    from paho.mqtt.properties import Properties

    acl = (EXAMPLE.parents[1] / "mosquitto" / "inspector.acl").read_text()
    broker = Broker(tmp_path / "broker", users={"plc": "plc-pw", "station-line1-station1": "st-pw"}, acl=acl).start()
    (tmp_path / "pw").write_text("plc-pw\n")
    prefix = "inspector/v1/line1/station1"
    out = (tmp_path / "gate.out").open("w")
    proc = subprocess.Popen(
        [sys.executable, str(EXAMPLE), "--host", broker.host, "--port", str(broker.port), "--prefix", prefix,
         "--username", "plc", "--password-file", str(tmp_path / "pw")],
        stdout=out, stderr=subprocess.STDOUT, text=True,
    )
    station = Subscriber(broker, (f"{prefix}/decision/ack",), username="station-line1-station1", password="st-pw")
    try:
        assert wait_until(lambda: "waiting for decisions" in (tmp_path / "gate.out").read_text(), 10), (tmp_path / "gate.out").read_text()
        now = time.time()
        bodies = [
            {**decision(seq=1), "deadline_at": iso(now + 30)},
            {**decision(seq=2, verdict="reject"), "deadline_at": iso(now + 30)},
            {**decision(seq=1), "deadline_at": iso(now + 30)},  # duplicate of seq 1
            {**decision(seq=3), "deadline_at": iso(now - 1)},
        ]
        for body in bodies:
            props = Properties(PacketTypes.PUBLISH)
            props.ContentType = "application/json"
            props.CorrelationData = body["part_id"].encode()
            props.ResponseTopic = f"{prefix}/decision/ack"
            info = station.client.publish(f"{prefix}/decision", json.dumps(body).encode(), qos=1, properties=props)
            info.wait_for_publish(5)
        acks = station.wait_for("decision/ack", 3, 10)
        assert sorted(m.json()["seq"] for m in acks) == [1, 2, 3]  # the duplicate is not acknowledged again
        assert {m.properties.get("CorrelationData") for m in acks} == {b"P-1", b"P-2", b"P-3"}
        assert wait_until(lambda: (tmp_path / "gate.out").read_text().count("seq=") == 4, 5)
        lines = [ln for ln in (tmp_path / "gate.out").read_text().splitlines() if ln.startswith("seq=")]
        assert [ln.split()[2] for ln in lines] == ["OPEN", "REJECT", "IGNORE", "REJECT"], lines
        time.sleep(0.3)
        assert len(station.on("decision/ack")) == 3

        # The gate is away (stopped cleanly) while a decision goes out: its session on the broker keeps it.
        stop_process(proc)
        assert proc.returncode == 0, (tmp_path / "gate.out").read_text()
        body = {**decision(seq=4), "deadline_at": iso(time.time() + 30)}
        station.client.publish(f"{prefix}/decision", json.dumps(body).encode(), qos=1).wait_for_publish(5)
        proc = subprocess.Popen(
            [sys.executable, str(EXAMPLE), "--host", broker.host, "--port", str(broker.port), "--prefix", prefix,
             "--username", "plc", "--password-file", str(tmp_path / "pw")],
            stdout=out, stderr=subprocess.STDOUT, text=True,
        )
        assert wait_until(lambda: "seq=4 part=P-4 OPEN" in (tmp_path / "gate.out").read_text(), 10), (tmp_path / "gate.out").read_text()
        assert wait_until(lambda: len(station.on("decision/ack")) == 4, 5)
    finally:
        station.close()
        stop_process(proc)
        out.close()
        broker.stop()
    assert proc.returncode == 0, (tmp_path / "gate.out").read_text()


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["--username", "plc", "--password-file", "{tmp}"], "--password-file {tmp}: is a folder; expected a file holding the broker password"),
        (["--username", "plc", "--password-file", "{tmp}/nope"], "--password-file {tmp}/nope: No such file or directory; expected a file"),
        (["--password-file", "{tmp}/pw"], "--password-file needs --username"),
        (["--port", "70000"], "--port: expected a TCP port from 1 to 65535, got 70000"),
    ],
)
def test_bad_arguments_are_usage_errors_not_tracebacks(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], args: list[str], expected: str
) -> None:
    (tmp_path / "pw").write_text("secret\n")
    with pytest.raises(SystemExit) as info:
        plc.main([a.format(tmp=tmp_path) for a in args])
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert expected.format(tmp=tmp_path) in err and "Traceback" not in err


def test_an_unreachable_broker_is_reported_and_retried(tmp_path: Path) -> None:
    import socket

    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    err = (tmp_path / "gate.err").open("w")

    def said() -> str:
        return (tmp_path / "gate.err").read_text()

    proc = subprocess.Popen([sys.executable, str(EXAMPLE), "--port", str(port)], stdout=subprocess.DEVNULL, stderr=err)
    try:
        assert wait_until(lambda: "cannot connect to" in said(), 10), said()
        assert proc.poll() is None, "it keeps retrying: the broker may come back"
    finally:
        code = stop_process(proc)
        err.close()
    assert f"cannot connect to 127.0.0.1:{port}: Connection refused; rejecting everything, retrying" in said()
    assert said().count("cannot connect") == 1, "one line per reason, not one per retry"
    assert code == 0


def test_without_paho_the_example_says_what_to_install_and_still_explains_itself() -> None:
    # sys.modules["paho"] = None makes `import paho` fail, as on a Debian python3 without paho-mqtt.
    run = f"import runpy, sys; sys.modules['paho'] = None; sys.argv = ['plc_subscriber.py', *sys.argv[1:]]; runpy.run_path({str(EXAMPLE)!r}, run_name='__main__')"
    out = subprocess.run([sys.executable, "-c", run], check=False, capture_output=True, text=True, timeout=30)
    assert out.returncode == 1 and "Traceback" not in out.stderr
    assert "needs paho-mqtt 2.0 or later" in out.stderr and "pip install 'paho-mqtt>=2'" in out.stderr
    helped = subprocess.run([sys.executable, "-c", run, "--help"], check=False, capture_output=True, text=True, timeout=30)
    assert helped.returncode == 0 and "--session-expiry" in helped.stdout
