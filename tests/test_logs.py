"""Log format follows where the logs go: JSON lines for journald, key=value on a terminal."""

from __future__ import annotations

import io
import json

import structlog

from inspector.logs import configure_logging


class _Tty(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_json_lines_when_not_a_terminal() -> None:
    stream = io.StringIO()
    configure_logging("info", "auto", stream=stream)
    structlog.get_logger().info("frame_rejected", frame="a.png", score=0.9)
    event = json.loads(stream.getvalue())
    assert event["event"] == "frame_rejected" and event["frame"] == "a.png" and event["level"] == "info"


def test_key_value_on_a_terminal_and_levels_filter() -> None:
    stream = _Tty()
    configure_logging("warning", "auto", stream=stream)
    log = structlog.get_logger()
    log.info("not_shown")
    log.warning("provider_unavailable", provider="cuda")
    text = stream.getvalue()
    assert "not_shown" not in text
    assert "provider_unavailable" in text and "provider=cuda" in text and not text.startswith("{")
