"""A dependency-free progress line on stderr, shown only on a terminal."""

from __future__ import annotations

import sys
import time
from typing import TextIO


class Progress:
    """`done/total (pct) rate` redrawn in place at most 10 times a second; silent when not on a TTY."""

    def __init__(self, total: int, label: str, *, stream: TextIO | None = None, enabled: bool | None = None) -> None:
        self.total, self.label = total, label
        self.stream = stream or sys.stderr
        self.enabled = self.stream.isatty() if enabled is None else enabled
        self.done = 0
        self._start = self._last = time.monotonic()

    def advance(self, n: int = 1) -> None:
        """Count `n` more items done."""
        self.done += n
        now = time.monotonic()
        if self.enabled and (now - self._last >= 0.1 or self.done == self.total):
            self._last = now
            rate = self.done / max(now - self._start, 1e-9)
            pct = 100 * self.done / max(self.total, 1)
            self.stream.write(f"\r{self.label} {self.done}/{self.total} ({pct:.0f}%) {rate:.1f}/s ")
            self.stream.flush()

    def close(self) -> None:
        """End the progress line."""
        if self.enabled:
            self.stream.write("\n")
            self.stream.flush()
