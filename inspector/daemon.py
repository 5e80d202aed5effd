"""`inspector run`: acquisition -> inference -> journal/publish, three threads joined by bounded queues and one stop event.

Every acquired frame gets exactly one decision: a live frame that finds the inference queue full is rejected with
reason `overload` (or counted and skipped, for free-running cameras), while one that waited on disk before the start
(`Frame.backlog`) waits for room instead; a pass decided after its deadline becomes a reject with reason `deadline`.
A source that ends (a video file read to its end) ends the run cleanly once its frames are decided. systemd hears
READY once the model is warm and the broker connected, or after mqtt.connect_timeout_s (frames are judged and journaled
from the start either way), and WATCHDOG pings only while every stage makes progress.
"""

from __future__ import annotations

import queue
import threading
import time
import uuid
from dataclasses import replace
from typing import Any

import structlog

from inspector import __version__
from inspector.calibration.record import summary_line
from inspector.config import InspectorSettings, run_errors
from inspector.cpu_latency import CpuLatencyRequest
from inspector.decision import PASS, REJECT
from inspector.errors import ConfigError
from inspector.frame import Frame, Reason
from inspector.health import Health
from inspector.journal import Journal
from inspector.metrics import Metrics, serve_prometheus
from inspector.mqtt import MqttLink, Topics
from inspector.notify import Notifier
from inspector.pipeline import build_pipeline
from inspector.publish import Decided, Outbox
from inspector.sources import build_source

STAGES = ("acquisition", "inference", "outbox")
_TICK_S = 0.2
_BACKLOG_POLL_S = 0.001  # well under one inference: the queue is never empty for long while a backlog waits


class Daemon:
    """Wires the stages from settings; `run()` blocks until `stop` is set and returns the exit code."""

    def __init__(
        self,
        settings: InspectorSettings,
        *,
        stop: threading.Event,
        notifier: Notifier | None = None,
        log: structlog.typing.FilteringBoundLogger | None = None,
    ) -> None:
        errors = run_errors(settings)
        if errors:
            raise ConfigError(f"{len(errors)} configuration error(s) for `inspector run`", errors)
        self.settings = settings
        self.stop = stop
        self.notifier = notifier or Notifier()
        self.log = log or structlog.get_logger("inspector.run")
        self.session = uuid.uuid4().hex
        self.health = Health()
        self.metrics = Metrics(settings.metrics.window)
        self.failed: str | None = None
        self.announced = False  # READY sent
        self._deadline_s = settings.decision.deadline_ms / 1000
        self.cpu_latency = CpuLatencyRequest(settings.pipeline.cpu_latency_us, log=self.log)

    # --- setup --------------------------------------------------------------------------------

    def run(self) -> int:
        """Load, connect, report ready, judge frames until stopped, drain, report offline. Returns the exit code."""
        # Held from before the model's warm-up until the journal is closed; the kernel drops it with the process.
        with self.cpu_latency:
            return self._run()

    def _run(self) -> int:
        s = self.settings
        self.notifier.status("loading the model")
        self.pipeline = build_pipeline(s, log=self.log)
        record = self.pipeline.thresholds.calibration
        if record is not None and record.station != s.station.name:
            raise ConfigError(
                "the calibration record belongs to another station",
                [(f"decision.calibration: {s.decision.calibration} is the record of station {record.station!r}, "
                  f"but this daemon is station {s.station.name!r} (station.name)")],
            )
        self.journal = Journal(s.journal.path)
        if self.journal.lost_earlier:
            self.log.warning("journal_created", path=str(s.journal.path),
                             detail="an earlier run's journal is gone (removed while stopped): seq starts again at 1, in a new session")
        elif self.journal.created:
            self.log.info("journal_created", path=str(s.journal.path))
        self.source = build_source(s.source, health=self.health, log=self.log, uncertain_route=s.decision.uncertain_route)
        if hasattr(self.source, "recover"):  # a folder: finish files decided before a crash
            self.source.recover(self.journal.decided)
        self.topics = Topics.from_settings(s)
        client_id = s.mqtt.client_id or f"inspector-{s.station.line}-{s.station.name}"
        self.infer_q: queue.Queue[Frame | None] = queue.Queue(maxsize=s.pipeline.queue_size)
        self.out_q: queue.Queue[Decided | None] = queue.Queue(maxsize=s.pipeline.output_queue_size)
        self.link = MqttLink(s.mqtt, self.topics, client_id, will=b"", log=self.log)
        self.outbox = Outbox(
            s,
            journal=self.journal,
            link=self.link,
            topics=self.topics,
            source=self.source,
            session=self.session,
            health=self.health,
            metrics=self.metrics,
            describe=self.describe,
            gauges=self.gauges,
            log=self.log,
        )
        self.link.will = self.outbox.status_payload("offline", "lwt")
        prometheus = None
        if s.metrics.prometheus_port:
            prometheus = serve_prometheus(s.metrics.prometheus_addr, s.metrics.prometheus_port, self.outbox.metrics_snapshot)
        threads = {
            "outbox": threading.Thread(target=self._guard, args=("outbox", self.outbox.run, self.out_q), name="outbox", daemon=True),
            "inference": threading.Thread(target=self._guard, args=("inference", self._infer), name="inference", daemon=True),
            "acquisition": threading.Thread(target=self._guard, args=("acquisition", self._acquire), name="acquisition", daemon=True),
        }
        for stage in STAGES:
            self.health.beat(stage)
        # Parts are judged from the start, broker or not: the journal keeps their decisions. Only READY waits for the
        # broker (_supervise), so a part arriving then is not held until it becomes a deadline reject.
        for thread in threads.values():
            thread.start()
        try:
            self._supervise(threads)
        finally:
            self.stop.set()
            if not self.announced:
                # systemd fails a Type=notify unit that exits before READY ("protocol"), and Restart= would then judge a
                # video source again: a run that ends during the broker wait still says READY before STOPPING.
                self.notifier.ready(self._status_line())
            self.notifier.stopping()
            code = self._shutdown(threads)
            if prometheus is not None:
                prometheus.shutdown()
            self.journal.close()
        return code

    def describe(self) -> dict[str, Any]:
        """The `state` topic's body: what this daemon runs and how."""
        c = self.pipeline.classifier
        path = getattr(c, "path", None)
        return {
            "version": __version__,
            "model": {"name": path.name if path else None, "sha256": c.sha256, "provider": c.provider, "classes": list(c.classes)},
            "threshold": self.pipeline.thresholds.default,
            "roi_thresholds": self.pipeline.thresholds.by_roi,
            "uncertain_band_high": self.pipeline.thresholds.band_high or None,
            "uncertain_route": self.settings.decision.uncertain_route,
            "calibration": self._calibration(),
            "deadline_ms": self.settings.decision.deadline_ms,
            "overload": self.settings.pipeline.overload,
            "cpu_latency_us": self.cpu_latency.held_us,
            "source": self.source.describe(),
        }

    def _calibration(self) -> dict[str, Any] | None:
        record = self.pipeline.thresholds.calibration
        if record is None:
            return None
        return {"path": str(self.settings.decision.calibration), **summary_line(record)}

    def gauges(self) -> dict[str, Any]:
        """Live values for the metrics message."""
        return {"queue_depth": self.infer_q.qsize(), "provider": self.pipeline.classifier.provider}

    # --- stages -------------------------------------------------------------------------------

    def _guard(self, stage: str, target: Any, *args: Any) -> None:
        """Run a stage; if it dies, say so and stop the daemon (systemd restarts it) rather than limp on."""
        try:
            target(*args)
        except Exception as exc:
            self.failed = stage
            self.log.exception("stage_failed", stage=stage, error=f"{type(exc).__name__}: {exc}")
            self.stop.set()
            if stage == "inference":  # acquisition's own `finally` already ends the inference queue
                self._put(self.out_q, None)

    def _acquire(self) -> None:
        overload = self.settings.pipeline.overload
        try:
            for frame in self.source.frames(self.stop):
                self.health.beat("acquisition")
                if frame is None:
                    continue
                if frame.backlog:
                    if not self._feed_backlog(frame):
                        break
                    continue
                try:
                    self.infer_q.put_nowait(frame)
                except queue.Full:
                    if overload == "skip":
                        self.metrics.skip()
                        continue
                    verdict = self.pipeline.reject(frame, Reason.OVERLOAD, f"inference queue full ({self.infer_q.maxsize} frames waiting)")
                    self._put(self.out_q, Decided(frame, verdict, frame.captured_at + self._deadline_s))
                if self.stop.is_set():
                    break
            else:
                if not self.stop.is_set():
                    # A video file read to its end: what was read is judged and delivered, then the run ends (exit 0).
                    self.log.info("source_ended", source=self.source.describe(), detail="stopping once every frame is decided")
                    self.stop.set()
        finally:
            self.source.close()
            self._put(self.infer_q, None)

    def _feed_backlog(self, frame: Frame) -> bool:
        """Queue a frame that waited on disk once the inference queue is empty; False when stopping first."""
        # Its file waits in the folder, so holding it loses nothing, while an `overload` reject would lose its scores.
        # One at a time: inference always has the next one ready, and a live part that arrives meanwhile finds room.
        beat = time.monotonic()
        while not self.stop.is_set():
            if self.infer_q.empty():
                self.infer_q.put_nowait(frame)  # only this thread puts, so the room cannot be taken meanwhile
                return True
            self.stop.wait(_BACKLOG_POLL_S)
            if time.monotonic() - beat >= _TICK_S:
                self.health.beat("acquisition")
                beat = time.monotonic()
        self.log.info("backlog_left_waiting", frame=frame.frame_id, detail="stopping: the file stays in the folder for the next start")
        return False

    def _infer(self) -> None:
        deadline_ms = self.settings.decision.deadline_ms
        keepalive_s = self.settings.model.keepalive_s
        last_run = time.monotonic()
        while True:
            self.health.beat("inference")
            try:
                frame = self.infer_q.get(timeout=min(_TICK_S, keepalive_s) if keepalive_s else _TICK_S)
            except queue.Empty:
                if keepalive_s and time.monotonic() - last_run >= keepalive_s:
                    if self.pipeline.keep_warm():
                        self.metrics.keepalive()
                    last_run = time.monotonic()
                continue
            if frame is None:
                break
            deadline_at = frame.captured_at + self._deadline_s
            verdict = self.pipeline.process(frame)
            if verdict.decided_at > deadline_at and verdict.verdict == PASS:
                late_ms = (verdict.decided_at - frame.captured_at) * 1000
                verdict = replace(verdict, verdict=REJECT, reason=Reason.DEADLINE,
                                  detail=f"judged a pass {late_ms:.0f} ms after capture; the deadline is {deadline_ms} ms")
            self._put(self.out_q, Decided(frame, verdict, deadline_at))
            last_run = time.monotonic()
        self._put(self.out_q, None)

    def _put(self, q: queue.Queue[Any], item: Any) -> None:
        """Blocking put that keeps the caller's thread visible as waiting, not dead (back-pressure, never a drop)."""
        while True:
            try:
                q.put(item, timeout=_TICK_S)
                return
            except queue.Full:
                stage = threading.current_thread().name
                if stage in STAGES:
                    self.health.beat(stage)

    # --- supervision --------------------------------------------------------------------------

    def _supervise(self, threads: dict[str, threading.Thread]) -> None:
        interval = self.notifier.watchdog_s / 2 if self.notifier.watchdog_s else None
        next_ping = time.monotonic()
        next_status = time.monotonic() + 5
        ready_by = time.monotonic() + self.settings.mqtt.connect_timeout_s
        withheld = False
        while not self.stop.is_set():
            if self.announced:
                self.stop.wait(min(_TICK_S, interval or _TICK_S))
            else:
                # READY once the broker is connected, or connect_timeout_s from now; a SIGTERM meanwhile still stops at once.
                connected = self.outbox.connected_once.wait(min(_TICK_S, max(0.0, ready_by - time.monotonic())))
                if connected or time.monotonic() >= ready_by:
                    self._ready(connected)
            if self.stop.is_set():
                break
            dead = [name for name, t in threads.items() if not t.is_alive()]
            if dead and self.stop.is_set():
                break  # it ended because the run is ending (its source ended): the stage that stopped it said why
            if dead:
                self.log.error("stage_stopped", stages=dead)
                self.failed = self.failed or dead[0]
                break
            stalled = self.health.stalled(self.settings.pipeline.stall_s)
            if stalled:
                if not withheld:
                    self.log.error("watchdog_withheld", stalled=stalled, stall_s=self.settings.pipeline.stall_s,
                                   detail="a stage makes no progress; systemd will restart the service"
                                   if self.announced else "a stage makes no progress before READY; systemd's start timeout applies")
                    self.notifier.status(f"stalled: {', '.join(stalled)}")
                withheld = True
                continue
            if withheld:
                self.log.info("watchdog_resumed")
                withheld = False
            now = time.monotonic()
            if self.announced and interval and now >= next_ping:
                self.notifier.watchdog()
                next_ping = now + interval
            if now >= next_status:
                self.notifier.status(self._status_line())
                next_status = now + 5

    def _ready(self, connected: bool) -> None:
        s = self.settings
        if not connected:
            self.log.warning("mqtt_not_connected_yet", host=s.mqtt.host, port=s.mqtt.port,
                             detail="ready anyway: every decision is journaled and published once the broker is reachable")
        self.notifier.ready(self._status_line())
        self.announced = True
        self.log.info("daemon_ready", session=self.session, topics=self.topics.prefix, source=self.source.describe(),
                      broker_connected=connected, watchdog_s=self.notifier.watchdog_s)

    def _status_line(self) -> str:
        m = self.metrics
        broker = "connected" if self.link.connected else "disconnected"
        return f"frames={m.frames} pass={m.passed} reject={sum(m.rejected.values())} broker={broker}"

    def _shutdown(self, threads: dict[str, threading.Thread]) -> int:
        budget = time.monotonic() + self.settings.pipeline.shutdown_timeout_s
        self.log.info("daemon_stopping", queued=self.infer_q.qsize())
        for name in ("acquisition", "inference", "outbox"):
            t = threads[name]
            if t.ident is not None:
                t.join(timeout=max(0.0, budget - time.monotonic()))
        alive = [name for name, t in threads.items() if t.is_alive()]
        if alive:
            self.log.error("shutdown_timeout", stuck=alive, timeout_s=self.settings.pipeline.shutdown_timeout_s,
                           detail="exiting anyway; undelivered decisions stay in the journal")
            return 1
        snap = self.metrics.snapshot()
        self.log.info("daemon_stopped", frames=snap["frames"], passed=snap["pass"], rejected=snap["reject"], failed_stage=self.failed)
        return 1 if self.failed else 0
