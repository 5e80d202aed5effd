"""systemd's notify protocol (sd_notify): READY, STATUS, STOPPING and WATCHDOG pings, without libsystemd."""

from __future__ import annotations

import os
import socket


class Notifier:
    """Sends to $NOTIFY_SOCKET when systemd (or a test) set one; a no-op otherwise."""

    def __init__(self, environ: dict[str, str] | None = None) -> None:
        env = os.environ if environ is None else environ
        address = env.get("NOTIFY_SOCKET")
        self._address = None
        if address:
            # A leading @ names an abstract socket.
            self._address = "\0" + address[1:] if address.startswith("@") else address
        usec = env.get("WATCHDOG_USEC")
        pid = env.get("WATCHDOG_PID")
        wanted = usec is not None and usec.isdigit() and int(usec) > 0 and (pid is None or pid == str(os.getpid()))
        self.watchdog_s = int(usec) / 1e6 if wanted and usec else None

    @property
    def enabled(self) -> bool:
        """True when there is a socket to notify."""
        return self._address is not None

    def send(self, message: str) -> bool:
        """Send one notification; False when there is no socket or sending failed."""
        if self._address is None:
            return False
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
                sock.connect(self._address)
                sock.sendall(message.encode())
            return True
        except OSError:
            return False

    def ready(self, status: str) -> bool:
        """READY=1 with a status line."""
        return self.send(f"READY=1\nSTATUS={status}")

    def status(self, status: str) -> bool:
        """STATUS= line shown by `systemctl status`."""
        return self.send(f"STATUS={status}")

    def stopping(self) -> bool:
        """STOPPING=1."""
        return self.send("STOPPING=1")

    def watchdog(self) -> bool:
        """WATCHDOG=1: every stage made progress."""
        return self.send("WATCHDOG=1")
