"""sd_notify: messages reach the socket systemd (or a test) names; nothing happens without one."""

from __future__ import annotations

import os
import socket
from pathlib import Path

from inspector.notify import Notifier


def test_messages_reach_a_path_socket_and_an_abstract_one(tmp_path: Path) -> None:
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind(str(tmp_path / "n.sock"))
        n = Notifier({"NOTIFY_SOCKET": str(tmp_path / "n.sock"), "WATCHDOG_USEC": "2000000", "WATCHDOG_PID": str(os.getpid())})
        assert n.enabled and n.watchdog_s == 2.0
        assert n.ready("warm") and n.watchdog()
        assert sock.recv(100) == b"READY=1\nSTATUS=warm"
        assert sock.recv(100) == b"WATCHDOG=1"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        name = f"inspector-test-{os.getpid()}"
        sock.bind("\0" + name)
        assert Notifier({"NOTIFY_SOCKET": "@" + name}).stopping()
        assert sock.recv(100) == b"STOPPING=1"


def test_without_a_socket_or_for_another_pid_nothing_is_sent() -> None:
    n = Notifier({})
    assert not n.enabled and not n.ready("x") and n.watchdog_s is None
    assert Notifier({"NOTIFY_SOCKET": "/nonexistent", "WATCHDOG_USEC": "1000", "WATCHDOG_PID": "1"}).watchdog_s is None
