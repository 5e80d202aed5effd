"""Stage heartbeats and degraded flags, shared by the daemon's threads and read by the watchdog and `state` topic."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable


class Health:
    """Thread-safe: stages beat while they make progress; anything that degrades service raises a named flag."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._lock = threading.Lock()
        self._beats: dict[str, float] = {}
        self._flags: dict[str, str] = {}
        self.version = 0  # bumps on every flag change, so the publisher knows when to refresh `state`

    def beat(self, stage: str) -> None:
        """Record that `stage` is alive and not stuck."""
        self._beats[stage] = self._clock()

    def stalled(self, limit_s: float) -> list[str]:
        """Stages whose last beat is older than `limit_s`."""
        now = self._clock()
        return sorted(stage for stage, t in self._beats.items() if now - t > limit_s)

    def set_flag(self, name: str, detail: str) -> bool:
        """Raise (or update) a degraded flag; True when it changed."""
        with self._lock:
            if self._flags.get(name) == detail:
                return False
            self._flags[name] = detail
            self.version += 1
            return True

    def clear_flag(self, name: str) -> bool:
        """Lower a flag; True when it was raised."""
        with self._lock:
            if self._flags.pop(name, None) is None:
                return False
            self.version += 1
            return True

    def flags(self) -> dict[str, str]:
        """A copy of the raised flags: name -> detail."""
        with self._lock:
            return dict(self._flags)
