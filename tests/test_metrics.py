"""Daemon metrics: counts by reason, rolling latency percentiles and reject rate, and the Prometheus text endpoint."""

from __future__ import annotations

import urllib.request

from inspector.decision import Latency, Verdict
from inspector.frame import Reason
from inspector.metrics import Metrics, serve_prometheus
from tests.mqtt_helpers import free_port


def _v(i: int, reason: Reason | None, latency_s: float) -> Verdict:
    return Verdict(f"f{i}", "src", 100.0 + i, 100.0 + i + latency_s, "reject" if reason else "pass", reason, 0.5, (), "0" * 64, "cpu", Latency())


def test_counts_percentiles_and_window() -> None:
    m = Metrics(window=4)
    for i, (reason, lat) in enumerate([(None, 0.010), (Reason.SCORE, 0.020), (Reason.OVERLOAD, 0.001), (None, 0.030), (Reason.TRUNCATED, 0.040)]):
        m.decided(_v(i, reason, lat), deadline_at=100.0 + i + 0.025)
    m.skip()
    s = m.snapshot(queue_depth=3)
    assert (s["frames"], s["pass"], s["reject"], s["skipped"], s["overload"], s["errors"]) == (5, 2, 3, 1, 1, 1)
    assert s["reject_by_reason"] == {"overload": 1, "score": 1, "truncated": 1}
    assert s["deadline_missed"] == 2 and s["queue_depth"] == 3
    assert s["window"] == 4 and s["reject_rate"] == 0.75, "the rolling window holds the last 4 decisions"
    assert s["latency_ms"]["p50"] == 25.0


def test_fps_is_the_rate_frames_were_decided_not_the_rate_a_stalled_journal_caught_up() -> None:
    journaled = iter(range(10**6))
    m = Metrics(window=50, clock=lambda: 500.0 + next(journaled) * 0.001)  # the journal takes them 1 ms apart
    for i in range(30):  # decided at 10 frames/s while the journal was stalled
        m.decided(Verdict(f"f{i}", "src", 100.0 + i / 10, 100.0 + i / 10 + 0.02, "pass", None, 0.5, (), "0" * 64, "cpu", Latency()),
                  deadline_at=101.0 + i / 10)
    assert m.snapshot()["fps"] == 10.0


def test_prometheus_endpoint_serves_the_snapshot() -> None:
    m = Metrics(window=10)
    m.decided(_v(0, Reason.SCORE, 0.01), deadline_at=200.0)
    m.keepalive()
    port = free_port()
    server = serve_prometheus("127.0.0.1", port, lambda: m.snapshot(outbox_depth=7, provider="openvino-cpu-bf16"))
    try:
        text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    finally:
        server.shutdown()
    assert "inspector_frames_total 1.0" in text
    assert 'inspector_reject_total{reason="score"} 1.0' in text
    assert "inspector_outbox_depth 7.0" in text
    # What the MQTT metrics message carries beyond the counters, a scraper sees too.
    assert "inspector_keepalive_runs_total 1.0" in text
    assert "inspector_reject_rate 1.0" in text
    assert 'inspector_model_info{provider="openvino-cpu-bf16"} 1.0' in text
    assert "inspector_uptime_seconds " in text
