"""`inspector run` end to end: a real mosquitto, real ONNX models, real files, the daemon as a process."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path

import cv2
import numpy as np
import pytest
import yaml

from tests.conftest import (
    effective_latency_us,
    loop_model,
    needs_cpu_latency_device,
    write_parts,
)
from tests.mqtt_helpers import (
    PREFIX,
    Broker,
    DaemonProcess,
    Subscriber,
    free_port,
    locked_journal,
    station_config,
    wait_until,
)

pytestmark = pytest.mark.slow


def _ts(iso: str) -> float:
    return datetime.fromisoformat(iso).timestamp()


def _journal(tmp_path: Path, *args: str) -> list[dict]:
    out = subprocess.run(
        [sys.executable, "-m", "inspector", "journal", "export", "--journal", str(tmp_path / "journal.sqlite3"), *args],
        capture_output=True, text=True, check=True,
    )
    return [json.loads(line) for line in out.stdout.splitlines()]


def test_folder_to_mqtt_decisions_payloads_properties_ack_and_clean_stop(
    tmp_path: Path, broker: Broker, models: dict[str, Path], daemons: list
) -> None:
    sub = Subscriber(broker)
    daemon = DaemonProcess(station_config(tmp_path, broker, models["dark"]))
    daemons.append(daemon)
    daemon.wait_event("daemon_ready")
    names = write_parts(tmp_path / "in", 6, defect_every=3)  # part0002 and part0005 have cracks

    decisions = sub.wait_for("decision", 6, 15)
    assert len(decisions) == 6
    by_part = {m.json()["part_id"]: m for m in decisions}
    assert set(by_part) == {Path(n).stem for n in names}
    seqs = sorted(m.json()["seq"] for m in decisions)
    assert seqs == list(range(1, 7))
    for part, m in by_part.items():
        d = m.json()
        assert d["schema"] == "inspector.decision/1" and not m.retain
        assert d["verdict"] == ("reject" if part in ("part0002", "part0005") else "pass")
        assert d["reason"] == ("score" if d["verdict"] == "reject" else None)
        assert d["late"] is False and d["threshold"] == 0.5
        assert _ts(d["captured_at"]) <= _ts(d["decided_at"]) < _ts(d["deadline_at"]) == pytest.approx(_ts(d["captured_at"]) + 1.0, abs=0.002)
        assert d["rois"][0]["name"] == "frame" and d["model"]["provider"] == "cpu"
        assert set(d["latency_ms"]) >= {"decode", "preprocess", "inference", "total", "since_capture"}
        p = m.properties
        assert p["ContentType"] == "application/json"
        assert ("schema", "inspector.decision/1") in p["UserProperty"]
        assert p["CorrelationData"] == part.encode()
        assert p["ResponseTopic"] == f"{PREFIX}/decision/ack"
        assert 1 <= p["MessageExpiryInterval"] <= 1
    rejects = sub.wait_for("reject", 2, 5)
    assert sorted(m.payload for m in rejects) == [b"part0002", b"part0005"]
    records = sub.wait_for("record", 6, 10)
    assert sorted(m.json()["seq"] for m in records) == seqs

    status = [m.json() for m in sub.on("status")]
    assert status and status[-1]["state"] == "online" and status[-1]["session"] == decisions[0].json()["session"]
    state = sub.on("state")[-1].json()
    assert state["model"]["sha256"] == decisions[0].json()["model"]["sha256"] and state["model"]["provider"] == "cpu"
    assert state["threshold"] == 0.5 and state["source"]["kind"] == "folder" and state["degraded"] == {}
    assert wait_until(lambda: any(m.json()["frames"] == 6 for m in sub.on("metrics")), 5)
    last = [m.json() for m in sub.on("metrics") if m.json()["frames"] == 6][-1]
    assert last["pass"] == 4 and last["reject_by_reason"] == {"score": 2} and last["latency_ms"]["p50"] > 0

    # A PLC acknowledges seq 1; a malformed ack is logged, not fatal.
    first = next(m.json() for m in decisions if m.json()["seq"] == 1)
    sub.client.publish(f"{PREFIX}/decision/ack", json.dumps({"seq": 1, "part_id": first["part_id"]}), qos=1)
    sub.client.publish(f"{PREFIX}/decision/ack", b"not json", qos=1)
    daemon.wait_event("ack_malformed", 5)
    sub.client.publish(f"{PREFIX}/decision/ack", json.dumps({"seq": 2.7, "part_id": "x"}), qos=1)  # not seq 2
    assert wait_until(lambda: len(daemon.saw("ack_malformed")) == 2, 5)

    # The files moved by verdict.
    assert sorted(p.name for p in (tmp_path / "in" / "processed" / "reject").iterdir()) == ["part0002.png", "part0005.png"]
    assert len(list((tmp_path / "in" / "processed" / "pass").iterdir())) == 4

    # Retained topics, as a PLC that connects later sees them.
    late_sub = Subscriber(broker, (f"{PREFIX}/status", f"{PREFIX}/state"))
    assert wait_until(lambda: len(late_sub.messages) >= 2, 5)
    assert all(m.retain for m in late_sub.messages)
    daemon.signal(signal.SIGTERM)
    assert daemon.wait(15) == 0
    assert wait_until(lambda: late_sub.on("status") and late_sub.on("status")[-1].json()["state"] == "offline", 5)
    assert late_sub.on("status")[-1].json()["reason"] == "stopped"
    rows = _journal(tmp_path)
    assert [r["seq"] for r in rows] == list(range(1, 7))
    acked = {r["seq"]: r["delivery"]["acknowledged_at"] for r in rows}
    assert acked[1] is not None and all(acked[s] is None for s in range(2, 7))
    assert all(r["delivery"]["record_sent_at"] for r in rows)
    sub.close()
    late_sub.close()


@needs_cpu_latency_device
def test_the_cpu_latency_request_lasts_exactly_as_long_as_the_daemon(tmp_path: Path, broker: Broker, models: dict[str, Path], daemons: list) -> None:
    before = effective_latency_us()
    if before <= 9:
        pytest.skip(f"another process already holds {before} µs, as low as this test's request")
    sub = Subscriber(broker, (f"{PREFIX}/state",))
    daemon = DaemonProcess(station_config(tmp_path, broker, models["dark"], pipeline={"cpu_latency_us": 9}))
    daemons.append(daemon)
    daemon.wait_event("daemon_ready")
    assert daemon.saw("cpu_latency_held")[0]["latency_us"] == 9
    assert effective_latency_us() == 9
    assert wait_until(lambda: sub.on("state"), 5) and sub.on("state")[-1].json()["cpu_latency_us"] == 9
    daemon.signal(signal.SIGTERM)
    assert daemon.wait(15) == 0
    assert effective_latency_us() == before
    sub.close()


def test_broker_killed_mid_stream_record_stream_has_no_gaps_and_stale_decisions_are_late(
    tmp_path: Path, models: dict[str, Path], daemons: list
) -> None:
    broker = Broker(tmp_path / "broker", persistence=True).start()
    try:
        sub = Subscriber(broker, (f"{PREFIX}/record", f"{PREFIX}/decision"), client_id="line-historian", persistent=True)
        daemon = DaemonProcess(station_config(tmp_path, broker, models["dark"]))
        daemons.append(daemon)
        daemon.wait_event("daemon_ready")
        written: list[str] = []

        def feed() -> None:
            for i in range(60):
                written.extend(write_parts(tmp_path / "in", 1, prefix=f"p{i:03d}-", seed=i))
                time.sleep(0.05)

        feeder = threading.Thread(target=feed)
        feeder.start()
        assert wait_until(lambda: len(sub.on("record")) >= 10, 10)
        broker.kill()
        time.sleep(3)
        broker.start()
        feeder.join()
        assert wait_until(lambda: len({m.json()["seq"] for m in sub.on("record")}) >= 60, 30), len(sub.on("record"))
        records = {}
        for m in sub.on("record"):
            d = m.json()
            assert records.setdefault(d["seq"], d["frame_id"]) == d["frame_id"], "one seq, one frame"
        assert sorted(records) == list(range(1, 61)), "no gaps in seq"
        assert sorted(records.values()) == sorted(written), "every frame exactly once"
        decisions = [(m, m.json()) for m in sub.on("decision")]
        assert all(d["late"] or m.received_at <= _ts(d["deadline_at"]) + 0.05 for m, d in decisions), "no actionable stale decision"
        assert any(d["late"] for _, d in decisions), "the outage's decisions went out marked late"
        assert daemon.saw("mqtt_disconnected") and len(daemon.saw("mqtt_connected")) >= 2
        # While the broker was down, each failed attempt was logged with its cause and the growing wait before the next.
        unreachable = daemon.saw("mqtt_unreachable")
        assert unreachable and all(e["reason"] == "Connection refused" for e in unreachable), unreachable
        assert [e["attempt"] for e in unreachable] == list(range(1, len(unreachable) + 1))
        waits = [e["retry_in_s"] for e in unreachable]
        assert waits == sorted(waits) and waits[-1] > waits[0], waits
        daemon.signal(signal.SIGTERM)
        assert daemon.wait(15) == 0
        sub.close()
    finally:
        broker.stop()


def test_daemon_sigkilled_mid_stream_restarts_and_flushes_without_duplicates(
    tmp_path: Path, broker: Broker, models: dict[str, Path], daemons: list
) -> None:
    sub = Subscriber(broker, (f"{PREFIX}/record",))
    config = station_config(tmp_path, broker, models["dark"])
    first = DaemonProcess(config, log_name="first.log")
    daemons.append(first)
    first.wait_event("daemon_ready")
    names = write_parts(tmp_path / "in", 40, seed=3)
    assert wait_until(lambda: len(sub.on("record")) >= 5, 10)
    first.signal(signal.SIGKILL)
    first.wait(10)
    second = DaemonProcess(config, log_name="second.log")
    daemons.append(second)
    second.wait_event("daemon_ready")
    assert wait_until(lambda: len({m.json()["seq"] for m in sub.on("record")}) >= 40, 20)
    time.sleep(0.5)
    seqs: dict[int, str] = {}
    for m in sub.on("record"):
        d = m.json()
        assert seqs.setdefault(d["seq"], d["frame_id"]) == d["frame_id"]
    assert sorted(seqs) == list(range(1, 41)), "contiguous seq across the restart"
    assert sorted(seqs.values()) == sorted(names), "each file decided exactly once"
    assert [p.name for p in (tmp_path / "in").iterdir() if p.is_file()] == []
    second.signal(signal.SIGTERM)
    assert second.wait(15) == 0
    sub.close()


def test_overload_at_twice_capacity_every_frame_gets_one_decision(
    tmp_path: Path, broker: Broker, daemons: list
) -> None:
    model = loop_model(tmp_path / "slow.onnx", 20_000)  # >= 20 ms a tile: at most ~50 frames/s
    staged = write_parts(tmp_path / "staging", 80)
    sub = Subscriber(broker, (f"{PREFIX}/decision",))
    daemon = DaemonProcess(station_config(tmp_path, broker, model, pipeline={"queue_size": 2}))
    daemons.append(daemon)
    daemon.wait_event("daemon_ready")
    names: list[str] = []
    for name in staged:  # 100 frames/s: at least twice what inference can take
        (tmp_path / "staging" / name).rename(tmp_path / "in" / name)
        names.append(name)
        time.sleep(0.01)
    assert wait_until(lambda: len(sub.on("decision")) >= 80, 20)
    time.sleep(0.5)
    decisions = [m.json() for m in sub.on("decision")]
    assert sorted(d["frame_id"] for d in decisions) == sorted(names), "decisions == frames, none twice"
    reasons = [d["reason"] for d in decisions]
    assert reasons.count("overload") > 0 and reasons.count(None) > 0
    assert all(d["verdict"] == "reject" for d in decisions if d["reason"] == "overload")
    assert all(d["rois"] == [] for d in decisions if d["reason"] == "overload")
    daemon.signal(signal.SIGTERM)
    assert daemon.wait(15) == 0
    sub.close()


def test_a_name_reused_in_a_burst_each_file_read_gets_one_decision_and_moves_only_by_its_own(
    tmp_path: Path, broker: Broker, models: dict[str, Path], daemons: list
) -> None:
    from inspector.samples import tile

    folder = tmp_path / "in"
    folder.mkdir()
    rng = np.random.default_rng(11)
    kind: dict[bytes, str] = {}  # each tile's bytes (all distinct) -> what it shows
    for i in range(20):  # OK and NG alternately, written beforehand under ignored temporary names
        data = cv2.imencode(".png", tile(rng, 1024, 1024, "crack" if i % 2 else None), [cv2.IMWRITE_PNG_COMPRESSION, 1])[1].tobytes()
        kind[data] = "ng" if i % 2 else "ok"
        (folder / f".t{i}.tmp").write_bytes(data)
    last = (folder / ".t19.tmp").read_bytes()
    sub = Subscriber(broker, (f"{PREFIX}/decision",))
    # A generous deadline: a pass is a pass however busy the machine running the test is.
    daemon = DaemonProcess(station_config(tmp_path, broker, models["dark"], decision={"deadline_ms": 30_000}))
    daemons.append(daemon)
    daemon.wait_event("daemon_ready")
    # The acquisition program reuses one name for OK and NG parts alternately, mostly 3 ms apart, now and then after a
    # pause. A 1024 px tile takes a few ms to decode: many arrive while the file before them is being judged.
    for i in range(20):
        os.rename(folder / f".t{i}.tmp", folder / "img.png")
        time.sleep((0.003, 0.003, 0.04, 0.003, 0.003, 0.015)[i % 6])

    processed = folder / "processed"

    def moved() -> dict[Path, str]:
        return {p: p.parent.name for p in processed.glob("*/*")}

    def settled() -> bool:
        return not (folder / "img.png").exists() and len(sub.on("decision")) == len(moved()) + len(daemon.saw("file_replaced_before_move"))

    assert wait_until(settled, 15), (len(sub.on("decision")), len(moved()), len(daemon.saw("file_replaced_before_move")))
    time.sleep(1.0)  # nothing more comes: no late second decision on a file already judged
    decisions = {m.json()["seq"]: m.json() for m in sub.on("decision")}
    files, replaced = moved(), [e["seq"] for e in daemon.saw("file_replaced_before_move")]
    assert sorted(decisions) == list(range(1, len(decisions) + 1)) and len(decisions) == len(sub.on("decision"))
    # Nothing lost silently: every decision either moved the file it judged, or says that file was replaced before it
    # could be moved. The files that no decision covers were overwritten before anything read them.
    assert len(decisions) == len(files) + len(replaced), (len(decisions), len(files), replaced)
    # No `vanished before it could be read` reject for a file judged already. (Only a file that took the name in the
    # instant of a move, and lost it again to a third before it could be put back, is set aside there, unread.)
    quarantined = sorted(p.name for p in (folder / "quarantine").glob("*.png"))
    assert all(n.startswith("img.unjudged") for n in quarantined) and len(quarantined) == len(daemon.saw("file_not_judged"))
    assert all(d["reason"] in (None, "score") for d in decisions.values())
    # Each file moved is one that was written, moved by the verdict on its own content: no NG tile in processed/pass.
    contents = [p.read_bytes() for p in files]
    assert len(set(contents)) == len(contents) and all(c in kind for c in contents)
    assert {p.name: kind[p.read_bytes()] for p, verdict in files.items()} == {
        p.name: ("ok" if verdict == "pass" else "ng") for p, verdict in files.items()
    }
    # Those named by their seq (the first in each folder keeps the plain name) match their decision, and no decision
    # both moved a file and lost one.
    named = {int(p.stem.split(".")[1]): verdict for p, verdict in files.items() if p.stem != "img"}
    assert all(decisions[seq]["verdict"] == verdict for seq, verdict in named.items())
    assert not set(named) & set(replaced) and set(replaced) <= set(decisions)
    assert last in contents, "the last part of the burst, never overwritten, is judged"
    assert replaced, "the burst did replace files while they were being judged"
    daemon.signal(signal.SIGTERM)
    assert daemon.wait(15) == 0
    sub.close()


def test_files_waiting_at_start_are_all_judged_not_rejected_as_overload(tmp_path: Path, broker: Broker, daemons: list) -> None:
    model = loop_model(tmp_path / "slow.onnx", 20_000)  # >= 20 ms a tile: 40 files are far more than the queue holds
    folder = tmp_path / "in"
    names = write_parts(folder, 40, seed=5)
    waited = time.time() - 60  # written while the daemon was down: past their deadline before it starts
    for name in names:
        os.utime(folder / name, (waited, waited))
    sub = Subscriber(broker, (f"{PREFIX}/decision",))
    daemon = DaemonProcess(station_config(tmp_path, broker, model, pipeline={"queue_size": 2}))
    daemons.append(daemon)
    daemon.wait_event("daemon_ready")
    assert wait_until(lambda: len(sub.on("decision")) >= 1, 10)
    live = write_parts(folder, 1, prefix="live", seed=6)  # a part from the running line, while the backlog is judged
    assert wait_until(lambda: len(sub.on("decision")) >= 41, 30), len(sub.on("decision"))
    time.sleep(0.3)
    decisions = [m.json() for m in sub.on("decision")]
    late_part = [d for d in decisions if d["frame_id"] == live[0]]
    assert len(late_part) == 1 and late_part[0]["reason"] != "overload", "the backlog leaves room in the queue for live parts"
    decisions = [d for d in decisions if d["frame_id"] != live[0]]
    assert sorted(d["frame_id"] for d in decisions) == sorted(names), "each waiting file decided exactly once"
    assert [d["reason"] for d in decisions if d["reason"] != "deadline"] == [], "judged, none rejected unjudged as overload"
    assert all(d["verdict"] == "reject" and d["score"] is not None and d["score"] < 0.01 for d in decisions), "late: its score kept"
    assert _ts(decisions[0]["captured_at"]) == pytest.approx(waited, abs=0.01), "the capture time is when the file was written"
    daemon.signal(signal.SIGTERM)
    assert daemon.wait(15) == 0
    sub.close()


def test_fps_after_a_journal_stall_is_the_line_rate(tmp_path: Path, broker: Broker, models: dict[str, Path], daemons: list) -> None:
    sub = Subscriber(broker, (f"{PREFIX}/metrics",))
    daemon = DaemonProcess(station_config(tmp_path, broker, models["dark"]))
    daemons.append(daemon)
    daemon.wait_event("daemon_ready")
    with locked_journal(tmp_path / "journal.sqlite3"):  # e.g. a backup or a slow disk: the outbox cannot write for 3 s
        for i in range(30):  # 10 parts a second, all decided (and held) while the journal is stalled
            write_parts(tmp_path / "in", 1, prefix=f"p{i:02d}-", seed=i)
            time.sleep(0.1)
    assert wait_until(lambda: any(m.json()["frames"] == 30 for m in sub.on("metrics")), 10)
    fps = next(m.json()["fps"] for m in sub.on("metrics") if m.json()["frames"] == 30)
    assert 5 <= fps <= 12, f"the line ran at 10 frames/s, the metric says {fps}"
    daemon.signal(signal.SIGTERM)
    assert daemon.wait(15) == 0
    sub.close()


def test_deadline_missed_pass_becomes_reject_with_its_score_recorded(tmp_path: Path, broker: Broker, daemons: list) -> None:
    model = loop_model(tmp_path / "slow.onnx", 40_000)  # ~60 ms on a typical tile
    sub = Subscriber(broker, (f"{PREFIX}/decision",))
    daemon = DaemonProcess(station_config(tmp_path, broker, model, decision={"deadline_ms": 20}))
    daemons.append(daemon)
    daemon.wait_event("daemon_ready")
    write_parts(tmp_path / "in", 2)
    d = sub.wait_for("decision", 2, 10)[0].json()
    assert d["verdict"] == "reject" and d["reason"] == "deadline"
    assert d["score"] is not None and d["score"] < 0.01 and "deadline is 20 ms" in d["detail"]
    daemon.signal(signal.SIGTERM)
    assert daemon.wait(15) == 0
    sub.close()


def test_corrupt_partial_empty_symlinked_and_pipe_files_are_quarantined_and_the_daemon_goes_on(
    tmp_path: Path, broker: Broker, models: dict[str, Path], daemons: list
) -> None:
    sub = Subscriber(broker, (f"{PREFIX}/decision",))
    daemon = DaemonProcess(station_config(tmp_path, broker, models["dark"]))
    daemons.append(daemon)
    daemon.wait_event("daemon_ready")
    folder = tmp_path / "in"
    good = cv2.imencode(".png", np.full((64, 64), 150, np.uint8))[1].tobytes()
    outside = tmp_path / "outside.png"
    outside.write_bytes(good)
    for name, data in (("empty.png", b""), ("garbage.png", b"\x00not an image"), ("half.png", good[: len(good) // 2])):
        (tmp_path / name).write_bytes(data)
        (tmp_path / name).rename(folder / name)
    (folder / "link.png").symlink_to(outside)
    os.mkfifo(folder / "pipe.png")  # opened for reading, it would block the source until some writer came
    write_parts(folder, 2, prefix="after")
    decisions = {m.json()["frame_id"]: m.json() for m in sub.wait_for("decision", 7, 15)}
    assert {k: v["reason"] for k, v in decisions.items()} == {
        "empty.png": "empty_file", "garbage.png": "not_an_image", "half.png": "truncated", "link.png": "refused",
        "pipe.png": "unreadable", "after0000.png": None, "after0001.png": None,
    }
    assert "named pipe" in decisions["pipe.png"]["detail"]
    q = folder / "quarantine"
    assert wait_until(lambda: (q / "pipe.png.reason").exists(), 5)
    assert sorted(p.name for p in q.iterdir()) == sorted(
        f"{n}{ext}" for n in ("empty.png", "garbage.png", "half.png", "link.png", "pipe.png") for ext in ("", ".reason")
    )
    assert "reason: truncated" in (q / "half.png.reason").read_text()
    assert (q / "link.png").is_symlink() and outside.read_bytes() == good, "the link moved, its target untouched"
    daemon.signal(signal.SIGTERM)
    assert daemon.wait(15) == 0
    sub.close()


def _video(path: Path, n: int) -> None:
    tmp = path.with_name("tmp.avi")
    writer = cv2.VideoWriter(str(tmp), cv2.VideoWriter_fourcc(*"MJPG"), 10, (64, 64))
    for i in range(n):
        writer.write(np.full((64, 64, 3), 120 + i, np.uint8))
    writer.release()
    tmp.rename(path)


def test_video_file_as_camera_that_comes_later_and_is_set_to_loop(tmp_path: Path, broker: Broker, models: dict[str, Path], daemons: list) -> None:
    video = tmp_path / "line.avi"
    sub = Subscriber(broker, (f"{PREFIX}/decision", f"{PREFIX}/state"))
    config = station_config(
        tmp_path, broker, models["dark"],
        source={"kind": "camera", "uri": str(video), "path": None, "fps": 50, "reconnect_min_s": 0.2, "reconnect_max_s": 0.4,
                "loop_video": True},
    )
    daemon = DaemonProcess(config)
    daemons.append(daemon)
    daemon.wait_event("camera_open_failed")  # not there yet: retried with backoff, not fatal
    assert wait_until(lambda: any("camera_disconnected" in m.json()["degraded"] for m in sub.on("state")), 10)
    _video(video, 5)
    assert wait_until(lambda: len(sub.on("decision")) >= 12, 20), "the file ends, starts again, and delivers again"
    assert len(daemon.saw("camera_connected")) >= 3 and daemon.saw("video_file_ended")[0]["loop"] is True
    assert not daemon.saw("camera_stream_lost"), "the end of a file is not a lost stream"
    decisions = [m.json() for m in sub.on("decision")]
    assert [int(d["part_id"]) for d in decisions[:12]] == list(range(1, 13)), "part ids count on across passes"
    assert all(d["verdict"] == "pass" for d in decisions)
    daemon.signal(signal.SIGTERM)
    assert daemon.wait(15) == 0
    sub.close()


def test_video_file_as_camera_is_judged_once_and_the_daemon_stops_cleanly_at_its_end(
    tmp_path: Path, broker: Broker, models: dict[str, Path], daemons: list
) -> None:
    video = tmp_path / "line.avi"
    _video(video, 5)
    sub = Subscriber(broker, (f"{PREFIX}/decision", f"{PREFIX}/status"))
    config = station_config(tmp_path, broker, models["dark"], source={"kind": "camera", "uri": str(video), "path": None, "fps": 50})
    daemon = DaemonProcess(config)
    daemons.append(daemon)
    assert daemon.wait(30) == 0, "the end of the file ends the run: a clean exit, which systemd does not restart"
    ended = daemon.saw("source_ended")
    assert ended and ended[0]["source"]["uri"] == str(video)
    assert daemon.saw("video_file_ended")[0]["frames"] == 5
    assert wait_until(lambda: len(sub.on("decision")) >= 5, 5)
    time.sleep(0.3)
    assert sorted(int(m.json()["part_id"]) for m in sub.on("decision")) == [1, 2, 3, 4, 5], "each frame once"
    assert [r["seq"] for r in _journal(tmp_path)] == [1, 2, 3, 4, 5]
    assert wait_until(lambda: sub.on("status") and sub.on("status")[-1].json()["state"] == "offline", 5)
    assert sub.on("status")[-1].json()["reason"] == "stopped"
    sub.close()


def test_sigterm_finishes_in_flight_frames_and_sigkill_leaves_the_last_will(
    tmp_path: Path, broker: Broker, models: dict[str, Path], daemons: list
) -> None:
    sub = Subscriber(broker, (f"{PREFIX}/status", f"{PREFIX}/decision"))
    config = station_config(tmp_path, broker, loop_model(tmp_path / "slow.onnx", 6_000), pipeline={"queue_size": 50})
    daemon = DaemonProcess(config)
    daemons.append(daemon)
    daemon.wait_event("daemon_ready")
    write_parts(tmp_path / "in", 30)
    assert wait_until(lambda: len(sub.on("decision")) >= 3, 10)
    daemon.signal(signal.SIGTERM)
    assert daemon.wait(15) == 0
    rows = _journal(tmp_path)
    left = [p.name for p in (tmp_path / "in").iterdir() if p.is_file()]
    assert len(rows) + len(left) == 30, "every file is either decided or still waiting in the folder"
    assert wait_until(lambda: len(sub.on("decision")) == len(rows), 5), "every journaled decision was published before exit"
    assert sub.on("status")[-1].json()["state"] == "offline"

    again = DaemonProcess(config, log_name="again.log")
    daemons.append(again)
    again.wait_event("daemon_ready")
    assert wait_until(lambda: sub.on("status")[-1].json()["state"] == "online", 5)
    again.signal(signal.SIGKILL)
    again.wait(10)
    assert wait_until(lambda: sub.on("status")[-1].json()["state"] == "offline", 10)
    assert sub.on("status")[-1].json()["reason"] == "lwt"
    sub.close()


def test_parts_are_judged_while_the_daemon_waits_for_the_broker_and_sigterm_ends_the_wait(
    tmp_path: Path, broker: Broker, models: dict[str, Path], daemons: list
) -> None:
    # No broker on this port: READY waits connect_timeout_s (30 s), but the line does not.
    config = station_config(tmp_path, broker, models["dark"], mqtt={"port": free_port(), "connect_timeout_s": 30})
    with _notify_socket(tmp_path / "notify.sock") as received:
        daemon = DaemonProcess(config, env={"NOTIFY_SOCKET": str(tmp_path / "notify.sock")})
        daemons.append(daemon)
        daemon.wait_event("folder_watching")
        write_parts(tmp_path / "in", 1)
        daemon.wait_event("frame_passed", 10)
        assert not daemon.saw("daemon_ready") and "READY=1" not in [m for _, m in received]
        stopped_at = time.monotonic()
        daemon.signal(signal.SIGTERM)
        assert daemon.wait(15) == 0
        assert time.monotonic() - stopped_at < 5, "SIGTERM must not wait out connect_timeout_s"
        assert wait_until(lambda: "STOPPING=1" in [m for _, m in received], 2)
    assert not daemon.saw("daemon_ready")
    # A Type=notify unit that exits without READY fails ("protocol"): READY still comes, then STOPPING.
    lines = [m for _, m in received if m in ("READY=1", "STOPPING=1")]
    assert lines == ["READY=1", "STOPPING=1"]
    rows = _journal(tmp_path)
    assert [(r["part_id"], r["verdict"], r["reason"]) for r in rows] == [("part0000", "pass", None)]


def test_broker_refuses_a_daemon_without_credentials_and_accepts_one_with_them(
    tmp_path: Path, models: dict[str, Path], daemons: list
) -> None:
    broker = Broker(tmp_path / "broker", users={"station": "s3cret"}).start()
    try:
        config = station_config(tmp_path, broker, models["dark"], mqtt={"connect_timeout_s": 1})
        anonymous = DaemonProcess(config, log_name="anonymous.log")
        daemons.append(anonymous)
        refused = anonymous.wait_event("mqtt_connect_refused")
        assert refused["level"] == "error" and "authori" in refused["reason"].lower()
        anonymous.wait_event("daemon_ready")  # the journal accepts decisions meanwhile
        write_parts(tmp_path / "in", 1)
        anonymous.wait_event("frame_passed", 10)
        anonymous.signal(signal.SIGTERM)
        assert anonymous.wait(15) == 0

        (tmp_path / "pw").write_text("s3cret\n")
        config = station_config(tmp_path, broker, models["dark"], mqtt={"username": "station", "password_file": str(tmp_path / "pw")})
        sub = Subscriber(broker, (f"{PREFIX}/record",), username="station", password="s3cret")
        good = DaemonProcess(config, log_name="good.log")
        daemons.append(good)
        good.wait_event("mqtt_connected")
        assert wait_until(lambda: len(sub.on("record")) >= 1, 10), "the decision made while refused is published from the journal"
        assert "s3cret" not in good.log_path.read_text() + anonymous.log_path.read_text()
        good.signal(signal.SIGTERM)
        assert good.wait(15) == 0
        sub.close()
    finally:
        broker.stop()


def test_acl_denied_publish_is_an_error_and_shows_in_status(tmp_path: Path, models: dict[str, Path], daemons: list) -> None:
    acl = f"user station\ntopic write {PREFIX}/status\ntopic write {PREFIX}/state\ntopic write {PREFIX}/decision\ntopic read {PREFIX}/decision/ack\n"
    acl += f"user watcher\ntopic read {PREFIX}/#\n"
    broker = Broker(tmp_path / "broker", users={"station": "pw1", "watcher": "pw2"}, acl=acl).start()
    try:
        sub = Subscriber(broker, (f"{PREFIX}/status", f"{PREFIX}/state"), username="watcher", password="pw2")
        config = station_config(tmp_path, broker, models["dark"], mqtt={"username": "station", "password": "pw1"})
        daemon = DaemonProcess(config)
        daemons.append(daemon)
        daemon.wait_event("daemon_ready")
        write_parts(tmp_path / "in", 1)
        refused = daemon.wait_event("mqtt_publish_refused", 10)
        assert refused["level"] == "error" and refused["topic"] in (f"{PREFIX}/record", f"{PREFIX}/metrics")
        assert "authori" in refused["reason"].lower()
        assert wait_until(lambda: any("mqtt_publish_refused" in m.json().get("degraded", {}) for m in sub.on("status")), 10)
        daemon.signal(signal.SIGTERM)
        assert daemon.wait(15) == 0
        sub.close()
    finally:
        broker.stop()


@contextlib.contextmanager
def _notify_socket(path: Path) -> Iterator[list[tuple[float, str]]]:
    """A systemd notify socket at `path`, listened to: the (monotonic time, line) pairs a daemon sends there."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(path))
    sock.settimeout(0.1)
    received: list[tuple[float, str]] = []
    done = threading.Event()

    def listen() -> None:
        while not done.is_set():
            try:
                received.extend((time.monotonic(), line) for line in sock.recv(4096).decode().splitlines())
            except TimeoutError:
                continue

    listener = threading.Thread(target=listen)
    listener.start()
    try:
        yield received
    finally:
        done.set()
        listener.join()
        sock.close()


def test_systemd_ready_and_watchdog_pings_stop_when_inference_freezes(tmp_path: Path, broker: Broker, daemons: list) -> None:
    sock_path = tmp_path / "notify.sock"
    with _notify_socket(sock_path) as received:
        model = loop_model(tmp_path / "freeze.onnx", 1e9)  # a bright frame runs for about an hour
        config = station_config(tmp_path, broker, model, pipeline={"stall_s": 1.0})
        daemon = DaemonProcess(config, env={"NOTIFY_SOCKET": str(sock_path), "WATCHDOG_USEC": "400000"})
        daemons.append(daemon)
        assert wait_until(lambda: any(m == "READY=1" for _, m in received), 20), daemon.log_path.read_text()[-3000:]
        assert wait_until(lambda: sum(m == "WATCHDOG=1" for _, m in received) >= 4, 5), "pings while every stage progresses"
        folder = tmp_path / "in"
        (tmp_path / "white.png").write_bytes(cv2.imencode(".png", np.full((64, 64), 255, np.uint8))[1].tobytes())
        (tmp_path / "white.png").rename(folder / "white.png")
        daemon.wait_event("watchdog_withheld", 10)
        stopped_at = time.monotonic()
        time.sleep(1.5)
        assert not [t for t, m in received if m == "WATCHDOG=1" and t > stopped_at + 0.1], "no pings while inference is frozen"
        assert "inference" in daemon.saw("watchdog_withheld")[0]["stalled"]
        daemon.signal(signal.SIGKILL)
        daemon.wait(10)


def test_the_daemon_never_imports_torch(tmp_path: Path, broker: Broker, models: dict[str, Path]) -> None:
    config = station_config(tmp_path, broker, models["resnet"])
    write_parts(tmp_path / "in", 2)
    script = (
        "import os, signal, sys, threading\n"
        "from inspector.cli import main\n"
        "threading.Timer(4, lambda: os.kill(os.getpid(), signal.SIGTERM)).start()\n"
        f"code = main(['run', '--config', {str(config)!r}])\n"
        "heavy = sorted(m for m in ('torch', 'torchvision', 'matplotlib') if m in sys.modules)\n"
        "print('EXIT', code, 'HEAVY', heavy)\n"
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60, check=False)
    assert "EXIT 0 HEAVY []" in done.stdout, done.stderr[-3000:]
    assert len(_journal(tmp_path)) == 2


def test_mqtt_3_1_1_and_tls_with_a_client_certificate(tmp_path: Path, broker: Broker, models: dict[str, Path], daemons: list) -> None:
    from tests.deploy.test_certs import make_certs, tls_broker

    sub = Subscriber(broker, (f"{PREFIX}/decision",))
    v311 = DaemonProcess(station_config(tmp_path, broker, models["dark"], mqtt={"protocol": "3.1.1"}), log_name="v311.log")
    daemons.append(v311)
    v311.wait_event("mqtt_connected")
    write_parts(tmp_path / "in", 2)
    decisions = sub.wait_for("decision", 2, 10)
    assert [m.json()["seq"] for m in decisions] == [1, 2] and decisions[0].properties == {}, "3.1.1 carries no properties"
    v311.signal(signal.SIGTERM)
    assert v311.wait(15) == 0
    sub.close()

    certs = make_certs(tmp_path / "certs")
    (tmp_path / "tls").mkdir()
    with tls_broker(certs, tmp_path / "tls") as port:
        tls = {"enabled": True, "ca_file": str(certs / "ca.crt"), "cert_file": str(certs / "client.crt"), "key_file": str(certs / "client.key")}
        config = station_config(tmp_path, broker, models["dark"], mqtt={"host": "localhost", "port": port, "tls": tls})
        secure = DaemonProcess(config, log_name="tls.log")
        daemons.append(secure)
        secure.wait_event("mqtt_connected")
        write_parts(tmp_path / "in", 1, prefix="tls")
        secure.wait_event("frame_passed")
        secure.signal(signal.SIGTERM)
        assert secure.wait(15) == 0
    rows = _journal(tmp_path)
    assert len(rows) == 3 and all(r["delivery"]["record_sent_at"] for r in rows), "the TLS broker acknowledged the record"


def test_calibration_record_sets_thresholds_and_uncertain_parts_go_to_review(
    tmp_path: Path, broker: Broker, models: dict[str, Path], daemons: list
) -> None:
    from inspector.calibration.record import write_record
    from inspector.digest import file_sha256
    from tests.conftest import calibration_record

    record = tmp_path / "s1.yaml"
    write_record(record, calibration_record({"*": (0.5, (0.5, 0.999999))}, sha256=file_sha256(models["dark"]), demonstrated=False))
    sub = Subscriber(broker)
    cfg = station_config(tmp_path, broker, models["dark"], decision={"calibration": str(record), "uncertain_route": "review"})
    raw = yaml.safe_load(cfg.read_text())
    raw["model"]["keepalive_s"] = 0.3
    cfg.write_text(yaml.safe_dump(raw))
    daemon = DaemonProcess(cfg)
    daemons.append(daemon)
    daemon.wait_event("daemon_ready")
    warning = daemon.saw("calibration_not_demonstrated")
    assert warning and warning[0]["level"] == "warning" and warning[0]["target_recall"] == 0.95
    write_parts(tmp_path / "in", 6, defect_every=3)  # part0002 and part0005 have cracks

    decisions = {m.json()["part_id"]: m.json() for m in sub.wait_for("decision", 6, 15)}
    for part, d in decisions.items():
        cracked = part in ("part0002", "part0005")
        assert (d["verdict"], d["gate"], d["reason"]) == (("uncertain", "review", "uncertain") if cracked else ("pass", "pass", None))
        assert d["threshold"] == 0.5
    assert sorted(m.payload for m in sub.wait_for("review", 2, 5)) == [b"part0002", b"part0005"]
    assert sub.on("reject") == []
    state = sub.on("state")[-1].json()
    assert state["calibration"]["station"] == "s1" and state["calibration"]["demonstrated"] is False
    assert state["uncertain_route"] == "review" and state["uncertain_band_high"] == {"frame": 0.999999}
    assert wait_until(lambda: len(list((tmp_path / "in" / "processed" / "review").glob("*.png"))) == 2, 5)
    # Idle now: the keep-alive runs blank inferences so the next part is not slow.
    assert wait_until(lambda: any(m.json()["keepalive_runs"] >= 2 for m in sub.on("metrics")), 5)
    daemon.signal(signal.SIGTERM)
    assert daemon.wait(15) == 0
    sub.close()


def test_a_calibration_record_of_another_station_or_model_stops_the_daemon(
    tmp_path: Path, broker: Broker, models: dict[str, Path]
) -> None:
    from inspector.calibration.record import write_record
    from inspector.digest import file_sha256
    from tests.conftest import calibration_record

    for station, sha, message in (
        ("s9", file_sha256(models["dark"]), "is the record of station 's9', but this daemon is station 's1'"),
        ("s1", "f" * 64, f"was made for model sha256 {'f' * 64}, but the loaded model has sha256 {file_sha256(models['dark'])}"),
    ):
        record = tmp_path / f"{station}.yaml"
        write_record(record, calibration_record({"*": (0.5, None)}, sha256=sha, station=station))
        cfg = station_config(tmp_path, broker, models["dark"], decision={"calibration": str(record)})
        done = subprocess.run([sys.executable, "-m", "inspector", "run", "--config", str(cfg)], capture_output=True, text=True, timeout=60, check=False)
        assert done.returncode == 2 and message in done.stderr and "Traceback" not in done.stderr
