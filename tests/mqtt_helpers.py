"""Real parts for daemon tests: a mosquitto broker on 127.0.0.1, a paho subscriber, and `inspector run` as a process."""

from __future__ import annotations

import contextlib
import json
import os
import select
import shutil
import signal
import socket
import sqlite3
import struct
import subprocess
import sys
import threading
import time
import types
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Self

import paho.mqtt.client as paho
import yaml
from paho.mqtt.enums import CallbackAPIVersion

from inspector.demo import accepts, free_port, stop_process

MOSQUITTO = shutil.which("mosquitto") or "/usr/sbin/mosquitto"
MOSQUITTO_PASSWD = shutil.which("mosquitto_passwd") or "/usr/bin/mosquitto_passwd"


def wait_until(predicate: Callable[[], Any], timeout: float, interval: float = 0.02) -> bool:
    """Poll `predicate` until it is truthy or `timeout` seconds pass."""
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if predicate():
            return True
        time.sleep(interval)
    return bool(predicate())


class Broker:
    """A mosquitto process on a free loopback port with a generated config; restartable on the same port."""

    def __init__(self, workdir: Path, *, users: dict[str, str] | None = None, acl: str | None = None, persistence: bool = False) -> None:
        self.dir = workdir
        self.dir.mkdir(parents=True, exist_ok=True)
        self.host = "127.0.0.1"
        self.port = free_port()
        lines = [f"listener {self.port} {self.host}", "user root"]  # CI runs as root, where mosquitto drops privileges
        if users:
            pw = self.dir / "passwd"
            pw.write_text("")
            for user, password in users.items():
                subprocess.run([MOSQUITTO_PASSWD, "-b", str(pw), user, password], check=True, capture_output=True)
            pw.chmod(0o600)
            lines += ["allow_anonymous false", f"password_file {pw}"]
        else:
            lines.append("allow_anonymous true")
        if acl is not None:
            (self.dir / "acl").write_text(acl)
            (self.dir / "acl").chmod(0o600)
            lines.append(f"acl_file {self.dir / 'acl'}")
        if persistence:
            # Saved at every change: a subscriber's session survives the broker being SIGKILLed.
            lines += ["persistence true", f"persistence_location {self.dir}/", "autosave_interval 1", "autosave_on_changes true"]
        (self.dir / "mosquitto.conf").write_text("\n".join(lines) + "\n")
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> Broker:
        """Start mosquitto and wait until it accepts connections."""
        log = (self.dir / "mosquitto.log").open("ab")
        self.proc = subprocess.Popen([MOSQUITTO, "-c", str(self.dir / "mosquitto.conf")], stdout=log, stderr=subprocess.STDOUT)
        if not wait_until(self._accepts, 10):
            raise RuntimeError(f"mosquitto did not start: {(self.dir / 'mosquitto.log').read_text()[-2000:]}")
        return self

    def _accepts(self) -> bool:
        return accepts(self.port, self.host)

    def kill(self) -> None:
        """SIGKILL: no clean shutdown, no final save."""
        if self.proc is not None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(10)
            self.proc = None

    def stop(self) -> None:
        """SIGTERM and wait."""
        if self.proc is not None:
            stop_process(self.proc)
            self.proc = None


@dataclass
class Message:
    """One received message, with its MQTT 5 properties and when it arrived."""

    topic: str
    payload: bytes
    retain: bool
    received_at: float
    properties: dict[str, Any] = field(default_factory=dict)

    def json(self) -> Any:
        """The payload parsed as JSON."""
        return json.loads(self.payload)


class Subscriber:
    """A paho MQTT 5 client that records every message under `topics`; reconnects and resubscribes by itself."""

    def __init__(
        self,
        broker: Broker,
        topics: tuple[str, ...] = ("inspector/#",),
        *,
        client_id: str = "",
        persistent: bool = False,
        username: str | None = None,
        password: str | None = None,
    ) -> None:
        from paho.mqtt.packettypes import PacketTypes
        from paho.mqtt.properties import Properties

        self.messages: list[Message] = []
        self.lock = threading.Lock()
        self.connected = threading.Event()
        self.topics = topics
        self.client = paho.Client(CallbackAPIVersion.VERSION2, client_id=client_id, protocol=paho.MQTTv5)
        if username:
            self.client.username_pw_set(username, password)
        self.client.reconnect_delay_set(0.1, 0.5)
        self.client.on_connect = self._on_connect
        self.client.on_message = self._on_message
        self.client.on_disconnect = lambda *a: self.connected.clear()
        props = None
        if persistent:
            props = Properties(PacketTypes.CONNECT)
            props.SessionExpiryInterval = 3600
        self.client.connect_async(broker.host, broker.port, keepalive=2, clean_start=not persistent, properties=props)
        self.client.loop_start()
        if not self.connected.wait(10):
            raise RuntimeError("subscriber could not connect")

    def _on_connect(self, client: paho.Client, userdata: Any, flags: Any, reason: Any, properties: Any) -> None:
        for t in self.topics:
            client.subscribe(t, qos=1)
        self.connected.set()

    def _on_message(self, client: paho.Client, userdata: Any, msg: paho.MQTTMessage) -> None:
        props = {}
        if msg.properties is not None:
            for name in ("ContentType", "CorrelationData", "ResponseTopic", "MessageExpiryInterval", "UserProperty"):
                if hasattr(msg.properties, name):
                    props[name] = getattr(msg.properties, name)
        with self.lock:
            self.messages.append(Message(msg.topic, bytes(msg.payload), bool(msg.retain), time.time(), props))

    def on(self, suffix: str) -> list[Message]:
        """Messages whose topic ends with /suffix."""
        with self.lock:
            return [m for m in self.messages if m.topic.endswith("/" + suffix)]

    def wait_for(self, suffix: str, count: int, timeout: float) -> list[Message]:
        """Wait until at least `count` messages arrived on */suffix; returns them all."""
        wait_until(lambda: len(self.on(suffix)) >= count, timeout)
        return self.on(suffix)

    def close(self) -> None:
        """Disconnect."""
        self.client.disconnect()
        self.client.loop_stop()


PREFIX = "inspector/v1/l1/s1"  # the topic prefix of `station_config`'s station


@contextlib.contextmanager
def locked_journal(path: Path) -> Iterator[None]:
    """Hold the journal's write lock from outside (a backup, a stuck disk): the daemon's writes fail once its busy timeout runs out."""
    holder = sqlite3.connect(path, isolation_level=None)
    holder.execute("BEGIN EXCLUSIVE")
    try:
        yield
    finally:
        holder.execute("ROLLBACK")
        holder.close()


def station_config(tmp: Path, broker: Broker, model: Path, **sections: dict[str, Any]) -> Path:
    """A daemon config: watched folder tmp/in, journal tmp/journal.sqlite3, the broker, `model`; `sections` merge over it."""
    (tmp / "in").mkdir(exist_ok=True)
    cfg: dict[str, Any] = {
        "model": {"path": str(model), "providers": ["cpu"], "warmup_runs": 1},
        "station": {"line": "l1", "name": "s1"},
        "source": {"kind": "folder", "path": str(tmp / "in"), "settle_ms": 100, "rescan_s": 1},
        "mqtt": {"host": broker.host, "port": broker.port, "keepalive_s": 2, "reconnect_min_s": 0.2, "reconnect_max_s": 1, "connect_timeout_s": 5},
        "journal": {"path": str(tmp / "journal.sqlite3")},
        "metrics": {"interval_s": 1},
        "log": {"format": "json", "level": "debug"},
    }
    for key, value in sections.items():
        cfg[key] = {**cfg.get(key, {}), **value}
    path = tmp / "inspector.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


class DaemonProcess:
    """`python -m inspector run` as a child process with JSON logs captured."""

    def __init__(self, config: Path, *, env: dict[str, str] | None = None, log_name: str = "daemon.log") -> None:
        self.log_path = config.parent / log_name
        self._log = self.log_path.open("ab")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "inspector", "run", "--config", str(config)],
            stdout=self._log,
            stderr=subprocess.STDOUT,
            env={**os.environ, **(env or {})},
        )

    def events(self) -> list[dict[str, Any]]:
        """Every JSON log line so far."""
        out = []
        for line in self.log_path.read_text(errors="replace").splitlines():
            try:
                out.append(json.loads(line))
            except json.JSONDecodeError:
                continue
        return out

    def saw(self, event: str) -> list[dict[str, Any]]:
        """Log lines with this event name."""
        return [e for e in self.events() if e.get("event") == event]

    def wait_event(self, event: str, timeout: float = 20) -> dict[str, Any]:
        """Wait for a log event; fails with the log tail when it does not come."""
        if not wait_until(lambda: self.saw(event) or self.proc.poll() is not None, timeout) or not self.saw(event):
            raise AssertionError(f"no {event!r} within {timeout}s (exit {self.proc.poll()}); log:\n{self.log_path.read_text()[-4000:]}")
        return self.saw(event)[0]

    def signal(self, sig: int) -> None:
        """Send a signal."""
        self.proc.send_signal(sig)

    def wait(self, timeout: float = 20) -> int:
        """Wait for exit and return the code."""
        try:
            return self.proc.wait(timeout)
        finally:
            self._log.close()

    def stop(self) -> None:
        """Kill if still running (test cleanup)."""
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)
        self._log.close()


@contextlib.contextmanager
def mosquitto(conf: Path, port: int) -> Iterator[Any]:
    """Run mosquitto with a config file of our own; yields an object with host and port, like Broker."""
    log = (conf.parent / "mosquitto.out").open("ab")
    proc = subprocess.Popen([MOSQUITTO, "-c", str(conf)], stdout=log, stderr=subprocess.STDOUT)
    endpoint = types.SimpleNamespace(host="127.0.0.1", port=port)
    try:
        if not wait_until(lambda: accepts(port) or proc.poll() is not None, 10) or proc.poll() is not None:
            logs = "".join(p.read_text() for p in conf.parent.glob("mosquitto.*") if p.suffix in (".out", ".log"))
            raise AssertionError(f"mosquitto did not start (exit {proc.poll()}):\n{logs[-3000:]}")
        yield endpoint
    finally:
        stop_process(proc)
        log.close()


class _Link:
    """One proxied connection: the client's socket, the broker's, and what the broker sent that is being held back."""

    def __init__(self, client: socket.socket, upstream: socket.socket) -> None:
        self.client = client
        self.upstream = upstream
        self.held = bytearray()
        self._lock = threading.Lock()
        self._pumps_left = 2

    def cut(self) -> None:
        """End both directions now: each pump sees end of stream and stops."""
        for s in (self.client, self.upstream):
            with contextlib.suppress(OSError):
                s.shutdown(socket.SHUT_RDWR)

    def pump_done(self) -> None:
        """Called by each pump as it stops: the first cuts the other direction, the last closes both sockets."""
        self.cut()
        with self._lock:
            self._pumps_left -= 1
            last = self._pumps_left == 0
        if last:
            for s in (self.client, self.upstream):
                s.close()


class FaultProxy:
    """A TCP proxy 127.0.0.1:<free port> -> a broker whose fault a test switches while it runs; a context manager."""

    # Modes: "up" forwards both ways; "hold_downstream" forwards client->broker and holds broker->client bytes (PUBACKs,
    # PINGRESPs) until the mode is "up" again, then sends them in order; "down" cuts every connection and resets each new
    # one as soon as it is accepted. Leaving the `with` block cuts what is open and joins every thread.

    MODES = ("up", "hold_downstream", "down")

    def __init__(self, target: Any) -> None:
        self.host = "127.0.0.1"
        self.target = (target.host, target.port)
        self.accepted = 0  # connections forwarded to the broker (cut ones not counted)
        self._mode = "up"
        self._lock = threading.Lock()
        self._links: list[_Link] = []
        self._threads: list[threading.Thread] = []
        self._stop = threading.Event()
        self._listener = socket.socket()
        self._listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._listener.bind((self.host, 0))
        self.port = int(self._listener.getsockname()[1])

    @property
    def mode(self) -> str:
        """The fault now in force."""
        return self._mode

    def set_mode(self, mode: str) -> None:
        """Switch the fault; "down" also cuts the connections open now."""
        if mode not in self.MODES:
            raise ValueError(f"unknown mode {mode!r}; expected one of {self.MODES}")
        with self._lock:
            self._mode = mode
            links = list(self._links) if mode == "down" else []
        for link in links:
            link.cut()

    def __enter__(self) -> Self:
        self._listener.listen(16)
        self._spawn(self._accept_loop)
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._threads[0].join(5)  # the accept loop first: no connection is added after this
        with self._lock:
            links = list(self._links)
        for link in links:
            link.cut()
        for t in self._threads:
            t.join(5)
        self._listener.close()

    def _spawn(self, target: Callable[..., None], *args: Any) -> None:
        t = threading.Thread(target=target, args=args, daemon=True, name=f"fault-proxy-{self.port}")
        with self._lock:
            self._threads.append(t)
        t.start()

    def _accept_loop(self) -> None:
        while not self._stop.is_set():
            ready, _, _ = select.select([self._listener], [], [], 0.05)
            if not ready:
                continue
            try:
                client, _ = self._listener.accept()
            except OSError:
                continue
            if self._mode == "down":
                # Reset at once: the client's CONNECT never reaches the broker.
                client.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                client.close()
                continue
            try:
                upstream = socket.create_connection(self.target, timeout=5)
            except OSError:
                client.close()
                continue
            for s in (client, upstream):
                s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                s.settimeout(None)
            link = _Link(client, upstream)
            with self._lock:
                self._links.append(link)
                self.accepted += 1
                if self._mode == "down":  # switched while this one was being connected
                    link.cut()
            self._spawn(self._pump, link, True)
            self._spawn(self._pump, link, False)

    def _pump(self, link: _Link, upstream: bool) -> None:
        src, dst = (link.client, link.upstream) if upstream else (link.upstream, link.client)
        try:
            while not self._stop.is_set():
                if not upstream and link.held and self._mode == "up":
                    dst.sendall(link.held)
                    link.held.clear()
                ready, _, _ = select.select([src], [], [], 0.02)
                if not ready:
                    continue
                data = src.recv(65536)
                if not data:
                    break
                if upstream:
                    dst.sendall(data)
                elif self._mode == "hold_downstream" or link.held:
                    link.held += data  # sent, in order, once the mode is "up" again
                else:
                    dst.sendall(data)
        except OSError:
            pass  # a cut connection: ends this direction like end of stream
        finally:
            with self._lock:
                if link in self._links:
                    self._links.remove(link)
            link.pump_done()
