"""The shipped broker policy (deploy/mosquitto/) against a real mosquitto: what a station and a PLC may publish and receive."""

from __future__ import annotations

import json
import re
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import paho.mqtt.client as paho
import pytest
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode

from tests.mqtt_helpers import (
    MOSQUITTO,
    MOSQUITTO_PASSWD,
    Broker,
    free_port,
    mosquitto,
    wait_until,
)

DEPLOY = Path(__file__).resolve().parents[2] / "deploy" / "mosquitto"
ACL = (DEPLOY / "inspector.acl").read_text()

PASSWORDS = {"station-line1-station1": "s1-secret", "plc": "plc-secret"}
NOT_AUTHORIZED = ReasonCode(PacketTypes.PUBACK, "Not authorized")  # 135

pytestmark = pytest.mark.skipif(
    not (Path(MOSQUITTO).exists() and Path(MOSQUITTO_PASSWD).exists()),
    reason="needs mosquitto and mosquitto_passwd (apt-get install mosquitto)",
)


class Client:
    """A paho MQTT 5 client that records CONNACK, PUBACK reason codes and received messages."""

    def __init__(self, broker: Any, user: str | None, password: str | None = None, *, client_id: str = "") -> None:
        self.connack: ReasonCode | None = None
        self.connack_seen = threading.Event()
        self.pubacks: dict[int, ReasonCode] = {}
        self.subacks: dict[int, list[ReasonCode]] = {}
        self.messages: list[paho.MQTTMessage] = []
        self.lock = threading.Lock()
        self.client = paho.Client(CallbackAPIVersion.VERSION2, client_id=client_id, protocol=paho.MQTTv5, reconnect_on_failure=False)
        if user is not None:
            self.client.username_pw_set(user, password)
        self.client.on_connect = self._on_connect
        self.client.on_publish = self._on_publish
        self.client.on_subscribe = self._on_subscribe
        self.client.on_message = self._on_message
        self.client.connect_async(broker.host, broker.port, keepalive=5)
        self.client.loop_start()
        assert self.connack_seen.wait(10), "no CONNACK"

    def _on_connect(self, client: paho.Client, userdata: Any, flags: Any, reason: ReasonCode, properties: Any) -> None:
        self.connack = reason
        self.connack_seen.set()

    def _on_publish(self, client: paho.Client, userdata: Any, mid: int, reason: ReasonCode, properties: Any) -> None:
        with self.lock:
            self.pubacks[mid] = reason

    def _on_subscribe(self, client: paho.Client, userdata: Any, mid: int, reasons: list[ReasonCode], properties: Any) -> None:
        with self.lock:
            self.subacks[mid] = list(reasons)

    def _on_message(self, client: paho.Client, userdata: Any, msg: paho.MQTTMessage) -> None:
        with self.lock:
            self.messages.append(msg)

    def publish(self, topic: str, payload: bytes, properties: Properties | None = None) -> ReasonCode:
        """Publish at QoS 1 and return the broker's PUBACK reason code."""
        info = self.client.publish(topic, payload, qos=1, properties=properties)
        assert wait_until(lambda: info.mid in self.pubacks, 5), f"no PUBACK for {topic}"
        return self.pubacks[info.mid]

    def subscribe(self, *topics: str) -> list[ReasonCode]:
        """Subscribe at QoS 1 and return the SUBACK reason codes."""
        _, mid = self.client.subscribe([(t, 1) for t in topics])
        assert wait_until(lambda: mid in self.subacks, 5), f"no SUBACK for {topics}"
        return self.subacks[mid]

    def received(self, topic: str | None = None) -> list[paho.MQTTMessage]:
        with self.lock:
            return [m for m in self.messages if topic is None or m.topic == topic]

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


@pytest.fixture
def broker(tmp_path: Path) -> Iterator[Broker]:
    b = Broker(tmp_path / "broker", users=PASSWORDS, acl=ACL).start()
    try:
        yield b
    finally:
        b.stop()


@pytest.fixture
def connect(broker: Broker) -> Iterator[Any]:
    clients: list[Client] = []

    def make(user: str | None, password: str | None = None) -> Client:
        c = Client(broker, user, password)
        clients.append(c)
        return c

    yield make
    for c in clients:
        c.close()


def accepted(rc: ReasonCode) -> bool:
    """A PUBACK that is not an error: Success (0) or No matching subscribers (16)."""
    return not rc.is_failure and rc.value in (0, 16)


def decision_props(part_id: str, prefix: str) -> Properties:
    """The MQTT 5 properties the daemon puts on a decision."""
    props = Properties(PacketTypes.PUBLISH)
    props.ContentType = "application/json"
    props.UserProperty = [("schema", "inspector.decision/1")]
    props.CorrelationData = part_id.encode()
    props.ResponseTopic = f"{prefix}/decision/ack"
    props.MessageExpiryInterval = 60
    return props


def test_acl_grants_exist_for_the_documented_users() -> None:
    users = re.findall(r"^user (\S+)$", ACL, flags=re.MULTILINE)
    assert users == ["station-line1-station1", "plc"]
    # No rule before the first `user` line: it would apply to anonymous clients.
    first_user = ACL.index("\nuser ")
    assert not re.search(r"^(topic|pattern) ", ACL[:first_user], flags=re.MULTILINE)
    # Every rule is `topic <access> <filter>` with nothing after it: mosquitto would read a trailing
    # comment or blank as part of the topic filter.
    for line in ACL.splitlines():
        if line.startswith(("topic ", "pattern ")):
            assert len(line.split()) == 3 and line == line.rstrip(), line


def test_plc_cannot_forge_a_decision_but_can_acknowledge(connect: Any) -> None:
    station = connect("station-line1-station1", PASSWORDS["station-line1-station1"])
    plc = connect("plc", PASSWORDS["plc"])
    assert not station.connack.is_failure and not plc.connack.is_failure
    station.subscribe("inspector/v1/line1/station1/decision/ack")

    rc = plc.publish("inspector/v1/line1/station1/decision", b'{"verdict": "pass"}')
    assert rc == NOT_AUTHORIZED
    assert rc.value == 135 and rc.is_failure
    for topic in ("inspector/v1/line1/station1/reject", "inspector/v1/line1/station1/status", "inspector/v1/line1/station1/decision/ack/x", "inspector/v1/line1/decision/ack"):
        assert plc.publish(topic, b"x") == NOT_AUTHORIZED, topic

    ack = json.dumps({"seq": 7, "part_id": "P-0007"}).encode()
    assert accepted(plc.publish("inspector/v1/line1/station1/decision/ack", ack))
    assert wait_until(lambda: station.received("inspector/v1/line1/station1/decision/ack"), 5)
    got = station.received("inspector/v1/line1/station1/decision/ack")
    assert [json.loads(m.payload) for m in got] == [{"seq": 7, "part_id": "P-0007"}]


def test_station_cannot_publish_outside_its_prefix(connect: Any) -> None:
    station = connect("station-line1-station1", PASSWORDS["station-line1-station1"])
    for topic in (
        "inspector/v1/line1/station2/decision",
        "inspector/v1/line2/station1/decision",
        "inspector/v1/line1/status",
        "inspector/v2/line1/station1/decision",
        "other/topic",
    ):
        rc = station.publish(topic, b"{}")
        assert rc == NOT_AUTHORIZED, topic
    assert accepted(station.publish("inspector/v1/line1/station1/decision", b"{}"))


def test_station_receives_nothing_but_its_acknowledgements(connect: Any) -> None:
    station = connect("station-line1-station1", PASSWORDS["station-line1-station1"])
    plc = connect("plc", PASSWORDS["plc"])
    station.subscribe("inspector/#")  # mosquitto grants the filter; delivery is checked per message
    station.subscribe("inspector/v1/line1/station1/decision/ack")
    # Another station's acknowledgement, and the station's own decision echoed back: neither may arrive.
    assert accepted(plc.publish("inspector/v1/line1/station2/decision/ack", b'{"seq": 1, "part_id": "x"}'))
    assert accepted(station.publish("inspector/v1/line1/station1/decision", b'{"seq": 1}'))
    assert accepted(plc.publish("inspector/v1/line1/station1/decision/ack", b'{"seq": 1, "part_id": "y"}'))
    assert wait_until(lambda: station.received("inspector/v1/line1/station1/decision/ack"), 5)
    assert {m.topic for m in station.received()} == {"inspector/v1/line1/station1/decision/ack"}


def test_anonymous_client_is_refused_at_connect(broker: Broker) -> None:
    anon = Client(broker, None)
    try:
        assert anon.connack is not None and anon.connack.is_failure
        assert anon.connack.value in (134, 135)  # Bad user name or password / Not authorized
    finally:
        anon.close()
    wrong = Client(broker, "plc", "not-the-password")
    try:
        assert wrong.connack is not None and wrong.connack.is_failure
    finally:
        wrong.close()


def test_station_decisions_reach_the_plc_with_their_properties(connect: Any) -> None:
    station = connect("station-line1-station1", PASSWORDS["station-line1-station1"])
    plc = connect("plc", PASSWORDS["plc"])
    granted = plc.subscribe(*(f"inspector/v1/+/+/{t}" for t in ("decision", "reject", "review", "status", "state", "record", "metrics")))
    assert not any(rc.is_failure for rc in granted)
    prefix = "inspector/v1/line1/station1"
    body = {"schema": "inspector.decision/1", "seq": 1, "part_id": "P-1", "verdict": "pass", "late": False}
    assert accepted(station.publish(f"{prefix}/decision", json.dumps(body).encode(), decision_props("P-1", prefix)))
    for topic in ("reject", "review", "status", "state", "record", "metrics"):
        assert accepted(station.publish(f"{prefix}/{topic}", b"{}"))
    assert wait_until(lambda: len(plc.received()) == 7, 5), [m.topic for m in plc.received()]
    (msg,) = plc.received(f"{prefix}/decision")
    assert json.loads(msg.payload) == body
    assert msg.properties.ResponseTopic == f"{prefix}/decision/ack"
    assert msg.properties.CorrelationData == b"P-1"
    assert msg.properties.ContentType == "application/json"
    assert ("schema", "inspector.decision/1") in msg.properties.UserProperty


def test_shipped_mosquitto_conf_starts_and_enforces_the_acl(tmp_path: Path) -> None:
    """deploy/mosquitto/mosquitto.conf, with its paths and port moved into tmp_path, is accepted by this mosquitto."""
    conf = (DEPLOY / "mosquitto.conf").read_text()
    port = free_port()
    acl_path, pw_path = tmp_path / "inspector.acl", tmp_path / "inspector.passwd"
    acl_path.write_text(ACL)
    pw_path.write_text("")
    for user, password in PASSWORDS.items():
        subprocess.run([MOSQUITTO_PASSWD, "-b", str(pw_path), user, password], check=True, capture_output=True)
    replacements = {
        "listener 1883 127.0.0.1": f"listener {port} 127.0.0.1",
        "pid_file /run/mosquitto/mosquitto.pid": f"pid_file {tmp_path}/mosquitto.pid",
        "password_file /etc/mosquitto/inspector.passwd": f"password_file {pw_path}",
        "acl_file /etc/mosquitto/inspector.acl": f"acl_file {acl_path}",
        "persistence_location /var/lib/mosquitto/": f"persistence_location {tmp_path}/",
        "log_dest file /var/log/mosquitto/mosquitto.log": f"log_dest file {tmp_path}/mosquitto.log",
    }
    for old, new in replacements.items():
        assert re.search(rf"^{re.escape(old)}$", conf, flags=re.MULTILINE), f"mosquitto.conf no longer has: {old}"
        conf = re.sub(rf"^{re.escape(old)}$", new, conf, flags=re.MULTILINE)
    (tmp_path / "mosquitto.conf").write_text(conf + "user root\n")  # tests run as root; mosquitto would switch users

    with mosquitto(tmp_path / "mosquitto.conf", port) as broker:
        plc = Client(broker, "plc", PASSWORDS["plc"])
        anon = Client(broker, None)
        try:
            assert not plc.connack.is_failure
            assert plc.publish("inspector/v1/line1/station1/decision", b"{}") == NOT_AUTHORIZED
            assert accepted(plc.publish("inspector/v1/line1/station1/decision/ack", b"{}"))
            assert anon.connack.is_failure
        finally:
            plc.close()
            anon.close()
    assert (tmp_path / "mosquitto.db").is_file(), "persistence true: mosquitto saves its database on exit"
