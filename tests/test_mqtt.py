"""The broker link: a published message goes on the wire from the publishing thread, whole and in order."""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest
import structlog

from inspector.config import MqttSettings
from inspector.mqtt import MqttLink, Topics
from tests.mqtt_helpers import Broker, Subscriber, wait_until


@pytest.fixture
def link(broker: Broker) -> Iterator[MqttLink]:
    """A connected link on the test broker, driven the way the outbox thread drives it."""
    link = MqttLink(
        MqttSettings(host=broker.host, port=broker.port),
        Topics("t/link"),
        "link-test",
        will=b'{"state":"offline"}',
        log=structlog.get_logger(),
    )
    link.start()

    def connected() -> bool:
        while not link.events.empty():
            link.handle(link.events.get())
        return link.connected

    assert wait_until(connected, 10), "the link did not connect"
    yield link
    link.close(b'{"state":"offline"}', timeout=2)


def _subscribed(broker: Broker) -> Subscriber:
    """A subscriber to t/link/#, returned once its subscription is in force (it hears its own probe)."""
    sub = Subscriber(broker, ("t/link/#",))
    assert wait_until(lambda: sub.client.publish("t/link/probe", b"").rc == 0 and sub.wait_for("probe", 1, 0.2), 10)
    return sub


class _Mute:
    """Stands in for paho's wake-up socket and keeps the real one open (closing it would wake paho for good)."""

    def __init__(self, real: object) -> None:
        self.real = real

    def send(self, data: bytes) -> int:
        return len(data)

    def close(self) -> None:
        self.real.close()  # type: ignore[attr-defined]


def _silence_paho_thread(link: MqttLink) -> None:
    # paho wakes its network thread through a socket pair on every publish; without it the thread only writes after
    # its 1 s select timeout, so a message that arrives sooner was written by the publishing thread.
    client = link._client
    assert client is not None
    client._sockpairW = _Mute(client._sockpairW)


def test_a_message_is_on_the_wire_when_publish_returns(broker: Broker, link: MqttLink) -> None:
    sub = _subscribed(broker)
    try:
        _silence_paho_thread(link)
        t0 = time.monotonic()
        assert link.publish("t/link/decision", b"fast") is not None
        assert wait_until(lambda: sub.on("decision"), 0.4), "not written by the publishing thread"
        fast_s = time.monotonic() - t0

        # The control: the same publish left to paho's network thread waits for its select timeout (once the PUBACK
        # of the first message, which wakes that thread, has been read).
        time.sleep(0.3)
        link._write_through = False
        t0 = time.monotonic()
        assert link.publish("t/link/decision", b"slow") is not None
        assert wait_until(lambda: len(sub.on("decision")) == 2, 3)
        slow_s = time.monotonic() - t0
        assert fast_s < 0.4 < slow_s, (fast_s, slow_s)
    finally:
        sub.close()


def test_messages_from_both_threads_arrive_whole_and_in_order(broker: Broker, link: MqttLink) -> None:
    sub = _subscribed(broker)
    try:
        n = 600  # below mosquitto's default max_queued_messages (1000), so the broker never drops one for a slow subscriber
        for i in range(n):
            # The link's acknowledgement subscription makes paho's thread write PUBACKs while this thread publishes.
            if i % 50 == 0:
                sub.client.publish("t/link/decision/ack", b"{}", qos=1)
            while link.publish("t/link/decision", f"{i:05d}".encode() * 40) is None:  # paho's queue is full
                time.sleep(0.001)
            while not link.events.empty():
                link.handle(link.events.get())
        got = sub.wait_for("decision", n, 30)
        assert [m.payload for m in got] == [f"{i:05d}".encode() * 40 for i in range(n)]
        assert link.connected
    finally:
        sub.close()
