"""Counters and rolling latencies of the daemon, for the MQTT `metrics` topic and an optional Prometheus endpoint."""

from __future__ import annotations

import threading
import time
from collections import Counter, deque
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np

from inspector.decision import PASS, Verdict
from inspector.frame import QUARANTINE_REASONS, Reason


class Metrics:
    """Thread-safe tallies; `snapshot()` is what gets published."""

    def __init__(self, window: int, clock: Callable[[], float] = time.monotonic) -> None:
        self._lock = threading.Lock()
        self._clock = clock
        self.started = clock()
        self.frames = 0
        self.passed = 0
        self.rejected: Counter[str] = Counter()
        self.skipped = 0
        self.keepalives = 0
        self.deadline_missed = 0
        self.late_published = 0
        self._latency: deque[float] = deque(maxlen=window)
        self._recent: deque[bool] = deque(maxlen=window)
        # When each frame was decided, not when it was counted here: after a journal stall a backlog of decisions is
        # counted within milliseconds, and its count rate says nothing about the line's.
        self._decided_at: deque[float] = deque(maxlen=window)

    def decided(self, verdict: Verdict, deadline_at: float) -> None:
        """Count one journaled decision."""
        with self._lock:
            self.frames += 1
            if verdict.verdict == PASS:
                self.passed += 1
            else:
                self.rejected[verdict.reason.value if verdict.reason else "unknown"] += 1
            if verdict.decided_at > deadline_at:
                self.deadline_missed += 1
            self._latency.append((verdict.decided_at - verdict.captured_at) * 1000)
            self._recent.append(verdict.verdict != PASS)
            self._decided_at.append(verdict.decided_at)

    def keepalive(self) -> None:
        """Count an idle keep-alive inference."""
        with self._lock:
            self.keepalives += 1

    def skip(self) -> None:
        """Count a frame skipped by the overload policy `skip`."""
        with self._lock:
            self.skipped += 1

    def late(self, n: int = 1) -> None:
        """Count decisions that went out after their deadline (marked late)."""
        with self._lock:
            self.late_published += n

    def snapshot(self, **extra: Any) -> dict[str, Any]:
        """Counters, rates and latency percentiles, plus `extra` (queue depths, provider)."""
        with self._lock:
            lat = np.array(self._latency) if self._latency else None
            # Overload rejects (acquisition) and judged frames (inference) reach the journal in nearly, not exactly, decision order.
            span = max(self._decided_at) - min(self._decided_at) if len(self._decided_at) > 1 else 0.0
            errors = sum(n for reason, n in self.rejected.items() if Reason(reason) in QUARANTINE_REASONS
                         or reason in (Reason.INFERENCE_ERROR, Reason.INTERNAL_ERROR))
            return {
                "schema": "inspector.metrics/1",
                "uptime_s": round(self._clock() - self.started, 1),
                "frames": self.frames,
                "pass": self.passed,
                "reject": sum(self.rejected.values()),
                "reject_by_reason": dict(sorted(self.rejected.items())),
                "errors": errors,
                "overload": self.rejected.get(Reason.OVERLOAD.value, 0),
                "uncertain": self.rejected.get(Reason.UNCERTAIN.value, 0),
                "skipped": self.skipped,
                "keepalive_runs": self.keepalives,
                "deadline_missed": self.deadline_missed,
                "late_published": self.late_published,
                "fps": round((len(self._decided_at) - 1) / span, 2) if span > 0 else 0.0,
                "latency_ms": {
                    f"p{q}": (round(float(np.percentile(lat, q)), 3) if lat is not None else None) for q in (50, 95, 99)
                },
                "reject_rate": round(sum(self._recent) / len(self._recent), 4) if self._recent else None,
                "window": len(self._recent),
                **extra,
            }


def serve_prometheus(addr: str, port: int, snapshot: Callable[[], dict[str, Any]]) -> Any:
    """Serve the snapshot as Prometheus text on addr:port; returns the server (shut down with .shutdown())."""
    from prometheus_client import CollectorRegistry, start_http_server
    from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
    from prometheus_client.registry import Collector

    class _Collector(Collector):
        def collect(self) -> Iterator[Any]:
            s = snapshot()
            for name in ("frames", "pass", "skipped", "deadline_missed", "late_published"):
                yield CounterMetricFamily(f"inspector_{name}", f"Decisions: {name}", value=s[name])
            yield CounterMetricFamily("inspector_keepalive_runs", "Idle-line inferences that keep the model warm", value=s["keepalive_runs"])
            yield GaugeMetricFamily("inspector_uptime_seconds", "Seconds since the daemon started", value=s["uptime_s"])
            if s["reject_rate"] is not None:
                yield GaugeMetricFamily("inspector_reject_rate", "Share of rejects over the last `window` decisions", value=s["reject_rate"])
            rejects = CounterMetricFamily("inspector_reject", "Rejects by reason", labels=["reason"])
            for reason, n in s["reject_by_reason"].items():
                rejects.add_metric([reason], n)
            yield rejects
            yield GaugeMetricFamily("inspector_fps", "Decisions per second over the window", value=s["fps"])
            lat = GaugeMetricFamily("inspector_latency_ms", "Capture to decision, over the window", labels=["quantile"])
            for q, v in s["latency_ms"].items():
                if v is not None:
                    lat.add_metric([q], v)
            yield lat
            for name in ("queue_depth", "outbox_depth"):
                if name in s:
                    yield GaugeMetricFamily(f"inspector_{name}", name.replace("_", " "), value=s[name])
            if "provider" in s:
                info = GaugeMetricFamily("inspector_model_info", "The active inference provider (value always 1)", labels=["provider"])
                info.add_metric([str(s["provider"])], 1)
                yield info

    registry = CollectorRegistry()
    registry.register(_Collector())
    server, _thread = start_http_server(port, addr=addr, registry=registry)
    return server
