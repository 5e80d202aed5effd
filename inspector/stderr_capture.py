"""What C libraries print on stderr during one call: libjpeg reports corrupt data there and nowhere else."""

from __future__ import annotations

import os
import threading
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")


class Fd2Capture:
    """Points file descriptor 2 at a pipe for the length of a call and returns what was written to it.

    fd 2 is process-wide, so calls are serialized, and anything another thread writes in that window is
    handed back too: the caller forwards what it does not recognise with `forward`.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._pipe: tuple[int, int] | None = None

    def call(self, fn: Callable[[], T]) -> tuple[T, str]:
        """(fn(), the text written to fd 2 while it ran); fn() alone, and "", when fd 2 cannot be redirected."""
        with self._lock:
            try:
                if self._pipe is None:
                    self._pipe = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
                saved = os.dup(2)
            except OSError:  # no fd 2 at all (closed by a parent) or out of descriptors: decode without the check
                return fn(), ""
            try:
                os.dup2(self._pipe[1], 2)
                try:
                    result = fn()
                finally:
                    os.dup2(saved, 2)
            except BaseException:
                forward(self._drain())
                raise
            finally:
                os.close(saved)
            return result, self._drain()

    def _drain(self) -> str:
        assert self._pipe is not None
        chunks = []
        while True:
            try:
                chunk = os.read(self._pipe[0], 65536)
            except BlockingIOError:
                break
            if not chunk:
                break
            chunks.append(chunk)
        return b"".join(chunks).decode("utf-8", errors="replace")


def forward(text: str) -> None:
    """Write text that was captured but is not ours to judge to the real stderr."""
    if text:
        try:
            os.write(2, text.encode())
        except OSError:
            pass  # stderr is gone: nothing else can be done with it
