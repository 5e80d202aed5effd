"""The broker link: paho-mqtt 2.x (CallbackAPIVersion.VERSION2), one fresh client per broker session.

A fresh client per session is deliberate: paho resends whatever its dead session still held, unchanged, after a
reconnect, and a decision resent that way would arrive stale yet look on time. Here the journal is the only queue;
after a reconnect the outbox resends from it and marks what has become stale as `late`.

Callbacks never block and never raise: they only put events on a queue that the outbox thread reads.
"""

from __future__ import annotations

import os
import queue
import ssl
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import paho.mqtt.client as paho
import structlog
from paho.mqtt.enums import CallbackAPIVersion, MQTTErrorCode
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode

from inspector.config import InspectorSettings, MqttSettings
from inspector.errors import ConfigError

CREDENTIAL_NAME = "mqtt-password"  # systemd: LoadCredential=mqtt-password:/etc/inspector/mqtt-password
_PAHO_INFLIGHT = 20


@dataclass(frozen=True, slots=True)
class Topics:
    """Every topic the daemon uses, under one prefix (default inspector/v1/<line>/<station>)."""

    prefix: str

    @classmethod
    def from_settings(cls, settings: InspectorSettings) -> Topics:
        """The configured prefix, or inspector/v1/<line>/<station>."""
        return cls(settings.mqtt.topic_prefix or f"inspector/v1/{settings.station.line}/{settings.station.name}")

    @property
    def status(self) -> str:
        """Retained online/offline; also the Last Will."""
        return f"{self.prefix}/status"

    @property
    def state(self) -> str:
        """Retained model, threshold, source and degraded flags."""
        return f"{self.prefix}/state"

    @property
    def decision(self) -> str:
        """One message per frame."""
        return f"{self.prefix}/decision"

    @property
    def reject(self) -> str:
        """The part id of each on-time reject, for simple gateways."""
        return f"{self.prefix}/reject"

    @property
    def review(self) -> str:
        """The part id of each on-time uncertain verdict, when decision.uncertain_route is review."""
        return f"{self.prefix}/review"

    @property
    def ack(self) -> str:
        """Where a PLC acknowledges decisions."""
        return f"{self.prefix}/decision/ack"

    @property
    def record(self) -> str:
        """Every decision from the journal, in seq order, without gaps."""
        return f"{self.prefix}/record"

    @property
    def metrics(self) -> str:
        """Periodic counters and latencies."""
        return f"{self.prefix}/metrics"


@dataclass(frozen=True, slots=True)
class LinkEvent:
    """What a paho callback saw, handed to the outbox thread."""

    kind: str  # connected | refused | unreachable | disconnected | puback | message
    generation: int
    mid: int = 0
    ok: bool = True
    reason: str = ""
    topic: str = ""
    payload: bytes = b""
    receive_max: int = 65535  # connected: the broker's MQTT 5 Receive Maximum


def read_password(settings: MqttSettings) -> str | None:
    """The password from the config, its file, or the systemd credential; None when there is none."""
    if settings.password is not None:
        return settings.password.get_secret_value()
    path = settings.password_file
    if path is None and (creds := os.environ.get("CREDENTIALS_DIRECTORY")):
        candidate = Path(creds) / CREDENTIAL_NAME
        path = candidate if candidate.is_file() else None
    if path is None:
        return None
    try:
        # An empty credential (the units' SetCredential= fallback when no password file exists) means no password.
        return path.read_text(encoding="utf-8").rstrip("\r\n") or None
    except OSError as exc:
        raise ConfigError("cannot read the MQTT password", [f"mqtt.password_file: {exc.strerror}: {path}"]) from exc


class _Client(paho.Client):
    """paho's client, whose queued packets the publishing thread may also write itself (plain TCP only).

    With `loop_start`, `publish` only queues the packet and wakes paho's thread, which must then win the GIL from the
    publisher before it writes: on a 2-core line PC that hop cost 0.2-0.5 ms per decision. Writing from the publisher,
    under one lock shared with paho's own writes, keeps packets whole and in order. Over TLS paho's thread does all
    socket I/O, since an SSL connection must not be read and written from two threads at once.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._write_lock = threading.Lock()
        self.connect_error: str | None = None

    def reconnect(self) -> MQTTErrorCode:
        """paho's connect, remembering why it failed: paho's connect-fail callback is told nothing."""
        try:
            return super().reconnect()
        except OSError as exc:
            self.connect_error = exc.strerror or str(exc) or type(exc).__name__
            raise

    def _packet_write(self) -> MQTTErrorCode:
        with self._write_lock:
            return super()._packet_write()

    def write_now(self) -> None:
        """Write what is queued from this thread; errors are left to paho's thread, which re-sends and reports them."""
        # Busy means paho's thread is writing right now, and it writes until the queue is empty.
        if self._write_lock.acquire(blocking=False):
            try:
                super()._packet_write()
            finally:
                self._write_lock.release()


# paho 2.x names its write step `_packet_write`; without it the client below falls back to paho's thread alone.
_WRITE_THROUGH = callable(getattr(paho.Client, "_packet_write", None))


class MqttLink:
    """Owned by one thread (the outbox): it calls start, poll, handle, publish and close; paho's thread only queues events."""

    def __init__(
        self,
        settings: MqttSettings,
        topics: Topics,
        client_id: str,
        *,
        will: bytes,
        log: structlog.typing.FilteringBoundLogger,
    ) -> None:
        self.settings = settings
        self.topics = topics
        self.client_id = client_id
        self.will = will
        self.log = log
        self.events: queue.SimpleQueue[LinkEvent] = queue.SimpleQueue()
        self.v5 = settings.protocol == "5"
        self.connected = False
        self.receive_max = 65535  # the broker's MQTT 5 Receive Maximum for this session
        self.refused: str | None = None
        self._password = read_password(settings)
        self._client: _Client | None = None
        self._write_through = _WRITE_THROUGH and not settings.tls.enabled
        self._generation = 0
        self._restart_at: float | None = None
        self._backoff = settings.reconnect_min_s
        self.failed_attempts = 0  # connection attempts that failed since the last session was established
        self.retry_in_s = 0.0  # after a failure or a lost session: how long until the next attempt

    # --- lifecycle ----------------------------------------------------------------------------

    def start(self) -> None:
        """Begin connecting in the background (paho's thread retries the first connect with backoff)."""
        self._generation += 1
        gen = self._generation
        s = self.settings
        client = _Client(
            CallbackAPIVersion.VERSION2,
            client_id=self.client_id,
            protocol=paho.MQTTv5 if self.v5 else paho.MQTTv311,
            reconnect_on_failure=False,
            userdata=gen,
        )
        client.max_queued_messages_set(s.max_queued_messages)
        # Brokers cap unacknowledged QoS 1 messages (MQTT 5 Receive Maximum; mosquitto's default is 20) and drop a
        # client that exceeds it: paho sends at most this many and keeps the rest queued, in order.
        client.max_inflight_messages_set(_PAHO_INFLIGHT)
        # Backoff is ours (restart_at): paho's own wait would stall loop_stop in the outbox thread.
        client.reconnect_delay_set(min_delay=0, max_delay=0)
        if s.username is not None:
            client.username_pw_set(s.username, self._password)
        if s.tls.enabled:
            client.tls_set(
                ca_certs=str(s.tls.ca_file) if s.tls.ca_file else None,
                certfile=str(s.tls.cert_file) if s.tls.cert_file else None,
                keyfile=str(s.tls.key_file) if s.tls.key_file else None,
                cert_reqs=ssl.CERT_REQUIRED,
            )
            client.tls_insecure_set(s.tls.insecure)
        will_props = None
        if self.v5:
            will_props = Properties(PacketTypes.WILLMESSAGE)
            will_props.ContentType = "application/json"
        client.will_set(self.topics.status, self.will, qos=1, retain=True, properties=will_props)
        client.on_connect = self._on_connect
        client.on_disconnect = self._on_disconnect
        client.on_publish = self._on_publish
        client.on_message = self._on_message
        client.on_connect_fail = self._on_connect_fail
        connect_props = None
        if self.v5:
            connect_props = Properties(PacketTypes.CONNECT)
            connect_props.SessionExpiryInterval = 0  # the journal, not the broker, keeps what is unsent
        client.connect_async(s.host, s.port, keepalive=s.keepalive_s, clean_start=True if self.v5 else paho.MQTT_CLEAN_START_FIRST_ONLY, properties=connect_props)
        client.loop_start()
        self._client = client
        self._restart_at = None

    def poll(self) -> None:
        """Start a fresh client once a dead session's backoff has passed."""
        if self._restart_at is not None and time.monotonic() >= self._restart_at:
            self._teardown()
            self.start()

    def _teardown(self) -> None:
        client, self._client = self._client, None
        if client is not None:
            client.loop_stop()

    def close(self, offline: bytes, timeout: float) -> bool:
        """Publish `offline` (retained) and disconnect cleanly; True when the broker acknowledged it in time."""
        client = self._client
        delivered = False
        if client is not None and self.connected:
            info = client.publish(self.topics.status, offline, qos=1, retain=True, properties=self._json_props())
            try:
                info.wait_for_publish(timeout=timeout)
                delivered = info.is_published() and self._puback_ok(info.mid)
            except (RuntimeError, ValueError):
                delivered = False
            client.disconnect()
        self._teardown()
        self.connected = False
        return delivered

    def _puback_ok(self, mid: int) -> bool:
        """False when the broker answered `mid`'s PUBACK with a failure (not authorized): acknowledged is not accepted."""
        # Closing: nothing reads the events after this, so they may be drained here.
        while True:
            try:
                event = self.events.get_nowait()
            except queue.Empty:
                return True  # no PUBACK event seen: is_published() is all there is
            if event.kind == "puback" and event.mid == mid and event.generation == self._generation:
                return event.ok

    # --- events (owner thread) ----------------------------------------------------------------

    def handle(self, event: LinkEvent) -> LinkEvent | None:
        """Update the connection state from an event; None for events of a client already replaced."""
        if event.generation != self._generation:
            return None
        if event.kind == "connected":
            self.connected = True
            self.receive_max = event.receive_max
            self.refused = None
            self._backoff = self.settings.reconnect_min_s
            self.failed_attempts = 0
            assert self._client is not None
            self._client.subscribe(self.topics.ack, qos=1)
        elif event.kind in ("refused", "disconnected", "unreachable"):
            was = self.connected
            self.connected = False
            if event.kind != "refused" and self._restart_at is not None:
                return None  # the close that follows a refused CONNACK: already reported
            if event.kind == "refused":
                self.refused = event.reason
            # A session that ended is retried at once; a broker that refuses us is retried ever more slowly.
            delay = self.settings.reconnect_min_s if was else self._backoff
            if not was:
                self._backoff = min(self._backoff * 2, self.settings.reconnect_max_s)
                self.failed_attempts += 1
            self.retry_in_s = delay
            self._restart_at = time.monotonic() + delay
        return event

    @property
    def inflight_limit(self) -> int:
        """QoS 1 messages to keep unacknowledged: paho writes 20 and queues the rest unwritten; brokers may allow fewer."""
        return max(1, min(_PAHO_INFLIGHT, self.receive_max))

    def publish(self, topic: str, payload: bytes, *, qos: int = 1, retain: bool = False, properties: Properties | None = None) -> int | None:
        """Hand one message to paho; its mid, or None when not connected or paho's queue is full."""
        if not self.connected or self._client is None:
            return None
        info = self._client.publish(topic, payload, qos=qos, retain=retain, properties=properties if self.v5 else None)
        if info.rc not in (MQTTErrorCode.MQTT_ERR_SUCCESS, MQTTErrorCode.MQTT_ERR_NO_CONN):
            self.log.warning("mqtt_publish_not_queued", topic=topic, error=paho.error_string(info.rc))
            return None
        if self._write_through:
            self._client.write_now()
        return int(info.mid)

    def _json_props(self, **extra: Any) -> Properties | None:
        if not self.v5:
            return None
        props = Properties(PacketTypes.PUBLISH)
        props.ContentType = "application/json"
        for key, value in extra.items():
            setattr(props, key, value)
        return props

    # --- paho callbacks: never block, never raise ----------------------------------------------

    def _on_connect(self, client: paho.Client, gen: int, flags: Any, reason: ReasonCode, properties: Any) -> None:
        if reason.is_failure:
            self.events.put(LinkEvent("refused", gen, ok=False, reason=str(reason)))
        else:
            receive_max = getattr(properties, "ReceiveMaximum", 65535) if properties is not None else 65535
            self.events.put(LinkEvent("connected", gen, receive_max=int(receive_max)))

    def _on_connect_fail(self, client: _Client, gen: int) -> None:
        self.events.put(LinkEvent("unreachable", gen, ok=False, reason=client.connect_error or "connection failed"))

    def _on_disconnect(self, client: paho.Client, gen: int, flags: Any, reason: ReasonCode, properties: Any) -> None:
        self.events.put(LinkEvent("disconnected", gen, ok=not reason.is_failure, reason=str(reason)))

    def _on_publish(self, client: paho.Client, gen: int, mid: int, reason: ReasonCode, properties: Any) -> None:
        self.events.put(LinkEvent("puback", gen, mid=mid, ok=not reason.is_failure, reason=str(reason)))

    def _on_message(self, client: paho.Client, gen: int, message: paho.MQTTMessage) -> None:
        self.events.put(LinkEvent("message", gen, topic=message.topic, payload=bytes(message.payload)))
