"""structlog setup: JSON lines when not on a TTY (journald), key=value on a console. Events are names, not sentences."""

from __future__ import annotations

import logging
import sys
from typing import TextIO

import structlog

_LEVELS = {"debug": logging.DEBUG, "info": logging.INFO, "warning": logging.WARNING, "error": logging.ERROR}


class _CurrentStderr:
    """Whatever `sys.stderr` is when a line is written. Bound loggers keep the file they were made with, so binding
    the object `sys.stderr` held at configure time would send a long-lived logger's lines to a stream that has since
    been swapped out (redirect_stderr, pytest's capsys) and perhaps closed."""

    def write(self, text: str) -> int:
        return _stderr().write(text)

    def flush(self) -> None:
        _stderr().flush()

    def isatty(self) -> bool:
        return _stderr().isatty()


def _stderr() -> TextIO:
    # Without a stderr (pythonw, a closed fd 2) structlog's own default is stdout: keep that.
    return sys.stderr if sys.stderr is not None else sys.stdout


_STDERR = _CurrentStderr()  # one object, so every PrintLogger shares structlog's per-file write lock


def configure_logging(level: str = "info", fmt: str = "auto", stream: TextIO | None = None) -> None:
    """Configure structlog for the process; logs go to stderr so stdout stays for command output."""
    stream = stream or _STDERR
    console = fmt == "console" or (fmt == "auto" and stream.isatty())
    renderer: structlog.typing.Processor = (
        structlog.dev.ConsoleRenderer(colors=False, pad_event_to=0) if console else structlog.processors.JSONRenderer()
    )
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.format_exc_info,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(_LEVELS[level]),
        logger_factory=structlog.PrintLoggerFactory(file=stream),
        cache_logger_on_first_use=False,
    )
