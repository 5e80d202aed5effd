"""The output stage under what a line can throw at it: hostile acks, a journal that refuses writes, a second station on
one journal, a full paho queue, a broker ACL that refuses presence. A real mosquitto and the daemon as a process."""

from __future__ import annotations

import json
import signal
import sqlite3
import time
from pathlib import Path

import pytest

from tests.conftest import write_parts
from tests.mqtt_helpers import (
    PREFIX,
    Broker,
    DaemonProcess,
    Subscriber,
    locked_journal,
    station_config,
    wait_until,
)

pytestmark = pytest.mark.slow


def _start(tmp_path: Path, broker: Broker, model: Path, daemons: list, **sections: dict) -> DaemonProcess:
    daemon = DaemonProcess(station_config(tmp_path, broker, model, **sections))
    daemons.append(daemon)
    daemon.wait_event("daemon_ready")
    return daemon


def test_no_ack_payload_stops_the_station(tmp_path: Path, broker: Broker, models: dict[str, Path], daemons: list) -> None:
    sub = Subscriber(broker, (f"{PREFIX}/decision",))
    daemon = _start(tmp_path, broker, models["dark"], daemons)
    write_parts(tmp_path / "in", 1)
    first = sub.wait_for("decision", 1, 10)[0].json()
    hostile = [
        json.dumps({"seq": 2**63, "part_id": "x"}),  # beyond SQLite's 64-bit integers
        json.dumps({"seq": -(2**63) - 1, "part_id": "x"}),
        "[" * 200_000,  # deeper than the JSON decoder recurses
        json.dumps({"seq": first["seq"]}),  # no part_id: the contract names both
        json.dumps([1, 2]),
    ]
    for payload in hostile:
        sub.client.publish(f"{PREFIX}/decision/ack", payload, qos=1)
    assert wait_until(lambda: len(daemon.saw("ack_malformed")) == len(hostile), 10), daemon.saw("ack_malformed")
    sub.client.publish(f"{PREFIX}/decision/ack", json.dumps({"seq": first["seq"], "part_id": first["part_id"]}), qos=1)
    write_parts(tmp_path / "in", 1, prefix="after")
    assert sub.wait_for("decision", 2, 10)[1].json()["frame_id"] == "after0000.png", "still deciding"
    assert not daemon.saw("stage_failed") and not daemon.saw("ack_unknown")
    daemon.signal(signal.SIGTERM)
    assert daemon.wait(15) == 0
    sub.close()


def test_a_journal_that_refuses_writes_does_not_stop_the_output_stage(
    tmp_path: Path, broker: Broker, models: dict[str, Path], daemons: list
) -> None:
    sub = Subscriber(broker, (f"{PREFIX}/decision", f"{PREFIX}/state"))
    daemon = _start(tmp_path, broker, models["dark"], daemons)
    write_parts(tmp_path / "in", 1)
    first = sub.wait_for("decision", 1, 10)[0].json()
    with locked_journal(tmp_path / "journal.sqlite3"):  # a backup, a full disk: any write fails once the busy timeout runs out
        sub.client.publish(f"{PREFIX}/decision/ack", json.dumps({"seq": first["seq"], "part_id": first["part_id"]}), qos=1)
        failed = daemon.wait_event("ack_not_journaled", 15)
        assert failed["level"] == "error" and failed["seq"] == first["seq"]
        assert wait_until(lambda: any("journal_error" in m.json()["degraded"] for m in sub.on("state")), 15)
    write_parts(tmp_path / "in", 1, prefix="after")
    assert sub.wait_for("decision", 2, 15)[1].json()["frame_id"] == "after0000.png"
    assert wait_until(lambda: sub.on("state")[-1].json()["degraded"] == {}, 5), sub.on("state")[-1].json()["degraded"]
    assert not daemon.saw("stage_failed")
    daemon.signal(signal.SIGTERM)
    assert daemon.wait(15) == 0
    sub.close()


def test_a_second_station_on_the_same_journal_is_refused_at_start(
    tmp_path: Path, broker: Broker, models: dict[str, Path], daemons: list
) -> None:
    first = _start(tmp_path, broker, models["dark"], daemons)
    other = tmp_path / "other"
    other.mkdir()
    config = station_config(other, broker, models["dark"], station={"name": "s2"}, journal={"path": str(tmp_path / "journal.sqlite3")})
    second = DaemonProcess(config)
    daemons.append(second)
    assert second.wait(30) == 2
    text = second.log_path.read_text()
    assert f"is in use by another `inspector run` (pid {first.proc.pid}); each station needs its own journal.path" in text
    assert "Traceback" not in text
    write_parts(tmp_path / "in", 2)
    assert wait_until(lambda: len(first.saw("frame_passed")) == 2, 10), "the running station is untouched"
    first.signal(signal.SIGTERM)
    assert first.wait(15) == 0
    again = DaemonProcess(config, log_name="again.log")  # released at exit: the next run may take it
    daemons.append(again)
    again.wait_event("daemon_ready")
    again.signal(signal.SIGTERM)
    assert again.wait(15) == 0


def test_decisions_held_back_by_a_full_paho_queue_all_go_out_after_an_outage(
    tmp_path: Path, broker: Broker, models: dict[str, Path], daemons: list
) -> None:
    daemon = _start(tmp_path, broker, models["dark"], daemons, mqtt={"max_queued_messages": 10})
    broker.stop()
    daemon.wait_event("mqtt_disconnected")
    write_parts(tmp_path / "in", 60)
    assert wait_until(lambda: len(daemon.saw("frame_passed") + daemon.saw("frame_rejected")) == 60, 30)
    broker.start()
    journal = sqlite3.connect(f"file:{tmp_path / 'journal.sqlite3'}?mode=ro", uri=True)

    def unsent() -> list[int]:
        return [seq for (seq,) in journal.execute("SELECT seq FROM records WHERE decision_sent_at IS NULL ORDER BY seq")]

    try:
        # Every seq's decision acknowledged by the broker in this catch-up, none skipped where paho's queue was full.
        assert wait_until(lambda: not unsent(), 30), unsent()
        assert len(daemon.saw("mqtt_connected")) == 2, "one reconnect did it, not a later one"
    finally:
        journal.close()
        daemon.signal(signal.SIGTERM)
        assert daemon.wait(15) == 0


def test_a_broker_that_refuses_presence_is_told_once_not_in_a_loop(tmp_path: Path, models: dict[str, Path], daemons: list) -> None:
    # The station may send decisions but not its status or state: a prefix or user name that does not match the ACL.
    acl = "user station\n" + "".join(f"topic write {PREFIX}/{t}\n" for t in ("decision", "record", "reject", "metrics"))
    acl += f"topic read {PREFIX}/decision/ack\n"
    broker = Broker(tmp_path / "broker", users={"station": "pw1"}, acl=acl).start()
    try:
        daemon = _start(tmp_path, broker, models["dark"], daemons, mqtt={"username": "station", "password": "pw1"})
        def presence() -> int:
            return len([e for e in daemon.saw("mqtt_publish_refused") if e["topic"].endswith(("/status", "/state"))])

        time.sleep(3)
        settled = presence()
        # Each topic newly refused changes the degraded flag once, and status and state go out again once: a handful.
        assert 2 <= settled <= 10, f"{settled} refusals of status/state in 3 s"
        time.sleep(2)
        assert presence() == settled, "and then no more"
        started = time.monotonic()
        daemon.signal(signal.SIGTERM)
        assert daemon.wait(15) == 0
        assert time.monotonic() - started < 5, "no drain budget spent on a loop"
        closed = daemon.saw("outbox_closed")[-1]
        assert closed["offline_published"] is False, "the broker refused the offline status: it was not delivered"
    finally:
        broker.stop()


def test_a_journal_removed_under_the_running_daemon_is_reported(
    tmp_path: Path, broker: Broker, models: dict[str, Path], daemons: list
) -> None:
    sub = Subscriber(broker, (f"{PREFIX}/state",))
    daemon = _start(tmp_path, broker, models["dark"], daemons)
    assert daemon.saw("journal_created")[0]["level"] == "info", "a first start makes its journal"
    (tmp_path / "journal.sqlite3").unlink()  # a clean-up script, a mistaken rm
    gone = daemon.wait_event("journal_replaced", 15)
    assert gone["level"] == "error" and "the journal file was removed" in gone["detail"]
    assert wait_until(lambda: "journal_replaced" in sub.on("state")[-1].json()["degraded"], 5)
    daemon.signal(signal.SIGTERM)
    assert daemon.wait(15) == 0
    again = DaemonProcess(tmp_path / "inspector.yaml", log_name="again.log")
    daemons.append(again)
    created = again.wait_event("journal_created")
    assert created["level"] == "warning" and "seq starts again at 1" in created["detail"]
    again.signal(signal.SIGTERM)
    assert again.wait(15) == 0
    sub.close()


def test_decisions_wait_for_a_stuck_journal_while_state_shows_why(
    tmp_path: Path, broker: Broker, models: dict[str, Path], daemons: list
) -> None:
    sub = Subscriber(broker, (f"{PREFIX}/decision", f"{PREFIX}/state"))
    daemon = _start(tmp_path, broker, models["dark"], daemons)
    with locked_journal(tmp_path / "journal.sqlite3"):
        write_parts(tmp_path / "in", 1)
        daemon.wait_event("journal_write_failed", 20)
        # Monitoring sees it while it lasts; the decision itself is not published before it is journaled.
        assert wait_until(lambda: any("journal_error" in m.json()["degraded"] for m in sub.on("state")), 10)
        assert sub.on("decision") == []
    assert sub.wait_for("decision", 1, 15)[0].json()["frame_id"] == "part0000.png"
    assert wait_until(lambda: sub.on("state")[-1].json()["degraded"] == {}, 10)
    daemon.signal(signal.SIGTERM)
    assert daemon.wait(15) == 0
    sub.close()
