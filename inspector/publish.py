"""The output stage: journal first, then `decision` (and `reject`) at once, and the `record` stream from the journal.

One thread owns the journal's writer and the broker link. Order per batch of verdicts: one journal commit (fsync),
the decisions out, then the source hears each decision (the folder moves the file). The `record` topic is fed
from the journal in seq order with a bounded in-flight window, so after an outage or a restart it resumes at the
first record the broker has not acknowledged: no gaps, and `seq` lets a subscriber prove it.
"""

from __future__ import annotations

import json
import math
import os
import queue
import sqlite3
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import structlog
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from inspector import __version__
from inspector.config import InspectorSettings
from inspector.decision import PASS, REJECT, Verdict, gate, iso_time, round_score
from inspector.frame import Frame
from inspector.health import Health
from inspector.journal import DECISION_SCHEMA, Journal, Pending, Record, with_late
from inspector.metrics import Metrics
from inspector.mqtt import LinkEvent, MqttLink, Topics
from inspector.sources import FrameSource

REJECT_SCHEMA = "inspector.reject/1"
REVIEW_SCHEMA = "inspector.review/1"
_BATCH = 256
_PRUNE_EVERY_S = 600.0
_JOURNAL_CHECK_S = 5.0


@dataclass(frozen=True, slots=True)
class Decided:
    """A verdict on its way to the journal, with the frame it judged."""

    frame: Frame
    verdict: Verdict
    deadline_at: float


class Outbox:
    """Runs in its own thread: `run(inbox)` until it reads None, then flushes what the broker accepts and says offline."""

    def __init__(
        self,
        settings: InspectorSettings,
        *,
        journal: Journal,
        link: MqttLink,
        topics: Topics,
        source: FrameSource,
        session: str,
        health: Health,
        metrics: Metrics,
        describe: Callable[[], dict[str, Any]],
        gauges: Callable[[], dict[str, Any]],
        log: structlog.typing.FilteringBoundLogger,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.settings = settings
        self.journal = journal
        self.link = link
        self.topics = topics
        self.source = source
        self.session = session
        self.health = health
        self.metrics = metrics
        self.describe = describe
        self.gauges = gauges
        self.log = log
        self._clock = clock
        self.connected_once = threading.Event()
        self.started_at = clock()
        self._inflight: dict[int, tuple[str, int, str]] = {}  # mid -> (kind, seq, topic)
        self._dec_inflight: set[int] = set()
        self._rec_inflight = 0
        self._rec_cursor = 0
        self._dec_cursor = 0
        self._dec_backlog = False
        self._rec_backlog = True
        self._next_ack_flush = 0.0
        self._acked: dict[str, list[int]] = {"decision_sent_at": [], "record_sent_at": []}
        self._health_version = -1
        self._next_metrics = time.monotonic() + settings.metrics.interval_s
        self._next_prune = time.monotonic()
        self._next_journal_check = time.monotonic() + _JOURNAL_CHECK_S
        self._journal_gone: str | None = None
        self._refused_topics: set[str] = set()
        self._late_counted: set[int] = set()  # late decisions counted once, however often they go out
        self._outbox_depth = journal.outbox_depth()

    # --- payloads -----------------------------------------------------------------------------

    def status_payload(self, state: str, reason: str | None = None) -> bytes:
        """The retained `status` message."""
        body: dict[str, Any] = {
            "state": state,
            "reason": reason,
            "session": self.session,
            "line": self.settings.station.line,
            "station": self.settings.station.name,
            "version": __version__,
            "pid": os.getpid(),
            "since": iso_time(self.started_at),
        }
        if state == "online":
            body["degraded"] = self.health.flags()
        return json.dumps(body, separators=(",", ":")).encode()

    def _props(
        self, schema: str, part_id: str | None, expiry_s: int | None = None, content: str = "application/json", *, respond: bool = True
    ) -> Properties | None:
        if not self.link.v5:
            return None
        props = Properties(PacketTypes.PUBLISH)
        props.ContentType = content
        props.UserProperty = [("schema", schema)]
        if part_id:
            props.CorrelationData = part_id.encode()
        if respond:
            props.ResponseTopic = self.topics.ack
        if expiry_s is not None:
            props.MessageExpiryInterval = expiry_s
        return props

    # --- the loop -----------------------------------------------------------------------------

    def run(self, inbox: queue.Queue[Decided | None]) -> None:
        """Journal and publish until the inbox yields None, then flush and go offline."""
        self.health.set_flag("mqtt_disconnected", "connecting")
        self.link.start()
        upstream_done = False
        while not upstream_done:
            self.health.beat("outbox")
            batch, upstream_done = _take(inbox, timeout=0.02)
            if batch:
                self._write(batch)
            self._service()
        self._drain()

    def _write(self, batch: list[Decided]) -> None:
        pending = [Pending(d.verdict, self.session, d.frame.part_id, d.deadline_at, d.frame.file_identity) for d in batch]
        while True:
            try:
                records = self.journal.append(pending)
                break
            except sqlite3.Error as exc:
                # Nothing may be published before it is journaled: hold the batch (upstream waits) and retry.
                self.log.error("journal_write_failed", path=str(self.journal.path), error=str(exc), frames=len(batch))
                self.health.set_flag("journal_error", str(exc))
                self._presence_only()
                time.sleep(1.0)
                self.health.beat("outbox")
        self.health.clear_flag("journal_error")
        self._outbox_depth += len(records)
        self._rec_backlog = True
        for rec in records:
            self._send_live(rec)
        for d, rec in zip(batch, records, strict=True):
            self.metrics.decided(d.verdict, d.deadline_at)
            self.source.done(d.frame, rec)
            self._log_decision(rec)

    def _log_decision(self, rec: Record) -> None:
        v = rec.verdict
        fields = {"seq": rec.seq, "frame": v.frame_id, "part_id": rec.pending.part_id, "score": round_score(v.score)}
        if v.verdict != PASS:
            self.log.info("frame_rejected" if v.gate == REJECT else "frame_to_review", verdict=v.verdict,
                          reason=v.reason.value if v.reason else None, detail=v.detail, **fields)
        else:
            self.log.debug("frame_passed", **fields)

    def _service(self) -> None:
        """Everything besides writing: broker events, acknowledgements, the record stream, periodic messages."""
        self._handle_events()
        self._flush_acks()
        if self.link.connected:
            self._pump()
            self._presence_if_changed()
            now = time.monotonic()
            if self.settings.metrics.interval_s and now >= self._next_metrics:
                self._next_metrics = now + self.settings.metrics.interval_s
                body = json.dumps(self.metrics_snapshot()).encode()
                self.link.publish(self.topics.metrics, body, qos=0, properties=self._props("inspector.metrics/1", None, respond=False))
        self.link.poll()
        if time.monotonic() >= self._next_prune:
            self._next_prune = time.monotonic() + _PRUNE_EVERY_S
            self._prune()
        if time.monotonic() >= self._next_journal_check:
            self._next_journal_check = time.monotonic() + _JOURNAL_CHECK_S
            self._check_journal()

    def _presence_only(self) -> None:
        """While decisions wait for the journal: broker events and status/state only, so monitoring sees journal_error."""
        self._handle_events()
        self._presence_if_changed()
        self.link.poll()

    def metrics_snapshot(self) -> dict[str, Any]:
        """The metrics message: counters, latencies, queue and outbox depth, provider."""
        return self.metrics.snapshot(outbox_depth=self._outbox_depth, **self.gauges())

    # --- sending ------------------------------------------------------------------------------

    def _room(self) -> int:
        """QoS 1 messages paho would still write at once: past its in-flight limit it holds them, while `late` and the
        expiry, worked out when they were handed over, go stale."""
        return self.link.inflight_limit - len(self._inflight)

    def _send_live(self, rec: Record) -> None:
        if not self.link.connected:
            return  # _on_connected sends it from the journal
        if self._dec_backlog:
            return  # held-back decisions go first, in seq order: this one is among them
        if self._send_decision(rec.seq, rec.text, rec.pending.part_id, rec.verdict.gate, rec.pending.deadline_at):
            # Everything before it is out or on its way: a later backlog pass starts after it, so it never goes twice.
            self._dec_cursor = max(self._dec_cursor, rec.seq)

    def _send_decision(self, seq: int, text: str, part_id: str | None, where: str, deadline_at: float) -> bool:
        """Hand a decision (and its reject or review message) to paho when it writes them at once; False: it waits in
        the journal for the backlog pass, which works out `late` again when it goes."""
        now = self._clock()
        late = now > deadline_at
        gated = not late and where != PASS
        if self._room() < min(1 + gated, self.link.inflight_limit):
            self._dec_backlog = True
            return False
        expiry = None if late else max(1, math.ceil(deadline_at - now))
        mid = self.link.publish(self.topics.decision, with_late(text, late), properties=self._props(DECISION_SCHEMA, part_id, expiry))
        if mid is None:
            self._dec_backlog = True  # paho's queue was full: the backlog pass sends it from the journal
            return False
        self._inflight[mid] = ("decision", seq, self.topics.decision)
        self._dec_inflight.add(seq)
        if late:
            if seq not in self._late_counted:
                self._late_counted.add(seq)
                self.metrics.late()
        elif gated:
            # A gateway reading only `reject` (or `review`) cannot see `late`: stale ones are not sent there at all.
            topic = self.topics.reject if where == REJECT else self.topics.review
            body = (part_id or json.loads(text)["frame_id"]).encode()
            schema = REJECT_SCHEMA if where == REJECT else REVIEW_SCHEMA
            rmid = self.link.publish(topic, body, properties=self._props(schema, part_id, expiry, "text/plain"))
            if rmid is not None:
                self._inflight[rmid] = (where, seq, topic)
        return True

    def _gate_of(self, text: str) -> str:
        payload = json.loads(text)
        # Records journaled before gates existed carry only the verdict.
        return payload.get("gate") or gate(payload["verdict"], self.settings.decision.uncertain_route)

    def _pump(self) -> None:
        """Held-back decisions first, in seq order, then the next records, each only as far as paho writes them at once."""
        if self._dec_backlog:
            self._pump_decisions()
        # Half of paho's window stays free for decisions: a live one never waits behind the record stream.
        room = min(self.settings.mqtt.inflight_window - self._rec_inflight, self._room() - self.link.inflight_limit // 2)
        if self._rec_backlog and room > 0:
            rows = self.journal.unsent("record_sent_at", self._rec_cursor, room)
            self._rec_backlog = len(rows) == room  # fewer than asked: caught up until the next write
            for seq, text, deadline, part_id in rows:
                mid = self.link.publish(self.topics.record, with_late(text, self._clock() > deadline), properties=self._props(DECISION_SCHEMA, part_id))
                if mid is None:
                    self._rec_backlog = True
                    break
                self._inflight[mid] = ("record", seq, self.topics.record)
                self._rec_inflight += 1
                self._rec_cursor = seq

    def _pump_decisions(self) -> None:
        want = self._room()
        if want < 1:
            return
        rows = self.journal.unsent("decision_sent_at", self._dec_cursor, want)
        # Acknowledged but not yet noted in the journal (that is batched): sending them again would repeat a reject.
        acked = set(self._acked["decision_sent_at"])
        for seq, text, deadline, part_id in rows:
            if seq not in self._dec_inflight and seq not in acked and not self._send_decision(seq, text, part_id, self._gate_of(text), deadline):
                return  # no room: this seq is the first of the next pass, not skipped by it
            self._dec_cursor = seq
        if len(rows) < want:
            self._dec_backlog = False  # caught up: the next decision goes out live

    def _presence_if_changed(self) -> None:
        """status and state again when a degraded flag changed (and the broker is there to take them)."""
        if self.link.connected and self.health.version != self._health_version:
            self._publish_presence()

    def _publish_presence(self) -> None:
        self._health_version = self.health.version
        self._publish_tracked("status", self.topics.status, self.status_payload("online"), retain=True)
        state = {"schema": "inspector.state/1", "session": self.session, **self.describe(), "degraded": self.health.flags()}
        self._publish_tracked("state", self.topics.state, json.dumps(state).encode(), retain=True)

    def _publish_tracked(self, kind: str, topic: str, body: bytes, *, retain: bool = False) -> None:
        mid = self.link.publish(topic, body, retain=retain, properties=self._props(f"inspector.{kind}/1", None, respond=False))
        if mid is not None:
            self._inflight[mid] = (kind, 0, topic)

    # --- broker events ------------------------------------------------------------------------

    def _handle_events(self) -> None:
        while True:
            try:
                raw = self.link.events.get_nowait()
            except queue.Empty:
                return
            event = self.link.handle(raw)
            if event is None:
                continue
            if event.kind == "connected":
                self._on_connected()
            elif event.kind == "refused":
                self.log.error("mqtt_connect_refused", host=self.settings.mqtt.host, port=self.settings.mqtt.port, reason=event.reason,
                               attempt=self.link.failed_attempts, retry_in_s=self.link.retry_in_s)
                self.health.set_flag("mqtt_refused", event.reason)
            elif event.kind == "unreachable":
                # Every attempt is logged: the backoff (reconnect_min_s doubling to reconnect_max_s) bounds the rate.
                self.log.warning("mqtt_unreachable", host=self.settings.mqtt.host, port=self.settings.mqtt.port, reason=event.reason,
                                 attempt=self.link.failed_attempts, retry_in_s=self.link.retry_in_s, outbox=self._outbox_depth)
                self.health.set_flag("mqtt_disconnected", f"unreachable: {event.reason}")
            elif event.kind == "disconnected":
                self._on_disconnected(event)
            elif event.kind == "puback":
                self._on_puback(event)
            elif event.kind == "message":
                self._on_ack(event)

    def _on_connected(self) -> None:
        self._flush_acks(force=True)  # the journal then knows every acknowledgement of the last session: none goes twice
        self.log.info("mqtt_connected", host=self.settings.mqtt.host, port=self.settings.mqtt.port, outbox=self._outbox_depth)
        self.health.clear_flag("mqtt_refused")
        self.health.clear_flag("mqtt_disconnected")
        self._inflight.clear()
        self._dec_inflight.clear()
        self._rec_inflight = 0
        self._rec_cursor = 0
        self._dec_cursor = 0
        self._dec_backlog = True
        self._rec_backlog = True
        self._outbox_depth = self.journal.outbox_depth()
        self._publish_presence()
        self.connected_once.set()

    def _on_disconnected(self, event: LinkEvent) -> None:
        self.log.warning("mqtt_disconnected", reason=event.reason, outbox=self._outbox_depth, unacknowledged=len(self._inflight))
        self.health.set_flag("mqtt_disconnected", event.reason)
        # What the dead session held is not resent by paho (a fresh client per session): the journal has it all.
        self._inflight.clear()
        self._dec_inflight.clear()
        self._rec_inflight = 0

    def _on_puback(self, event: LinkEvent) -> None:
        kind, seq, topic = self._inflight.pop(event.mid, ("", 0, ""))
        if kind == "record":
            self._rec_inflight -= 1
        elif kind == "decision":
            self._dec_inflight.discard(seq)
        if not event.ok:
            # MQTT 5 reason code 135 (Not authorized): the broker's ACL refuses this topic.
            self.log.error("mqtt_publish_refused", topic=topic, seq=seq or None, reason=event.reason)
            # One detail for every topic refused so far: a detail that followed the last topic would change with each
            # refusal, and each change republishes status and state, which a refusing ACL refuses again.
            self._refused_topics.add(topic)
            self.health.set_flag("mqtt_publish_refused", f"{', '.join(sorted(self._refused_topics))}: {event.reason}")
            return
        if kind == "record":
            self._acked["record_sent_at"].append(seq)
        elif kind == "decision":
            self._acked["decision_sent_at"].append(seq)

    def _on_ack(self, event: LinkEvent) -> None:
        # Anyone allowed to write acks can send anything: no payload may stop the station.
        try:
            body = json.loads(event.payload)
            seq, part_id = body["seq"], body["part_id"]
            if type(seq) is not int or not 1 <= seq < 2**63:  # 1.7 or true must not acknowledge record 1; SQLite ints are 64-bit
                raise TypeError(seq)
            if part_id is not None and type(part_id) is not str:  # ["p1"] must not become the text '['p1']'
                raise TypeError(part_id)
        except (ValueError, KeyError, TypeError, IndexError, RecursionError):  # RecursionError: "[[[[..." nested too deep
            self.log.warning("ack_malformed", topic=event.topic, payload=event.payload[:200].decode(errors="replace"),
                             expected='{"seq": <int, 1 or more>, "part_id": <string>}')
            return
        try:
            known = self.journal.mark_acknowledged(seq, part_id, self._clock())
        except sqlite3.Error as exc:
            # Only the note that a PLC acted on it is lost; the decision itself is journaled and out.
            self.log.error("ack_not_journaled", seq=seq, part_id=part_id, error=str(exc))
            self.health.set_flag("journal_error", str(exc))
            return
        self.health.clear_flag("journal_error")  # any write that succeeds shows the journal takes writes again
        if not known:
            # Clipped as ack_malformed's payload is: a megabyte part_id must not become a megabyte log line.
            self.log.warning("ack_unknown", seq=seq, part_id=part_id if part_id is None or len(part_id) <= 200 else part_id[:200] + "...")

    def _flush_acks(self, *, force: bool = False) -> None:
        """Persist broker acknowledgements, batched: at most every 100 ms (a crash in between only means a resend)."""
        now = time.monotonic()
        if not force and now < self._next_ack_flush:
            return
        self._next_ack_flush = now + 0.1
        if not any(self._acked.values()):
            return
        try:
            self.journal.mark_sent(self._acked, self._clock())
        except sqlite3.Error as exc:
            # Kept for the next try; a crash meanwhile only means these go out once more (at least once, never lost).
            self.log.error("journal_write_failed", path=str(self.journal.path), error=str(exc), acknowledgements=sum(map(len, self._acked.values())))
            self.health.set_flag("journal_error", str(exc))
            self._next_ack_flush = now + 1.0
            return
        self.health.clear_flag("journal_error")
        self._outbox_depth = max(0, self._outbox_depth - len(self._acked["record_sent_at"]))
        self._late_counted.difference_update(self._acked["decision_sent_at"])
        for seqs in self._acked.values():
            seqs.clear()

    def _check_journal(self) -> None:
        why = self.journal.replaced()
        if why and why != self._journal_gone:
            # Decisions still commit to the open file and go out, but a restart would not find them: say so loudly.
            self.log.error("journal_replaced", path=str(self.journal.path), detail=f"{why}; restart the daemon to journal to a file again")
            self.health.set_flag("journal_replaced", why)
        self._journal_gone = why

    def _prune(self) -> None:
        j = self.settings.journal
        try:
            deleted, more, unsent = self.journal.prune(j.max_age_days, j.max_size_mb)
        except sqlite3.Error as exc:
            self.log.error("journal_prune_failed", error=str(exc))
            return
        if more:
            self._next_prune = time.monotonic() + 0.5  # the rest in later slices, between decisions
        self._outbox_depth = self.journal.outbox_depth()
        if deleted:
            self.log.info("journal_pruned", deleted=deleted, more=more)
        if unsent:
            self.log.error("journal_over_size_unsent", unsent=unsent, max_size_mb=j.max_size_mb,
                           detail="records never published are kept; check the broker")

    # --- stopping -----------------------------------------------------------------------------

    def _drain(self) -> None:
        """Give the broker up to the shutdown budget to take what is unsent, then publish offline and disconnect."""
        deadline = time.monotonic() + self.settings.pipeline.shutdown_timeout_s * 0.8
        while time.monotonic() < deadline:
            self.health.beat("outbox")
            self._service()
            if not self.link.connected:
                break
            if self._outbox_depth == 0 and not self._inflight and not self._dec_backlog:
                break
            time.sleep(0.01)
        self._flush_acks(force=True)
        left = max(0.5, deadline - time.monotonic() + self.settings.pipeline.shutdown_timeout_s * 0.1)
        delivered = self.link.close(self.status_payload("offline", "stopped"), timeout=min(3.0, left))
        unsent = self.journal.outbox_depth()
        (self.log.warning if unsent or not delivered else self.log.info)("outbox_closed", unsent_records=unsent, offline_published=delivered)


def _take(inbox: queue.Queue[Decided | None], timeout: float) -> tuple[list[Decided], bool]:
    """Up to a batch of verdicts (waiting up to `timeout` for the first); True once the end marker was read."""
    items: list[Decided] = []
    try:
        first = inbox.get(timeout=timeout)
    except queue.Empty:
        return items, False
    if first is None:
        return items, True
    items.append(first)
    while len(items) < _BATCH:
        try:
            item = inbox.get_nowait()
        except queue.Empty:
            break
        if item is None:
            return items, True
        items.append(item)
    return items, False

