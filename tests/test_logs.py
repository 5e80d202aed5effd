"""Log format follows where the logs go: JSON lines for journald, key=value on a terminal."""

from __future__ import annotations

import io
import json
import sys

import pytest
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


def test_a_logger_bound_before_stderr_was_swapped_writes_to_the_stderr_of_the_moment(monkeypatch: pytest.MonkeyPatch) -> None:
    configure_logging("info", "json")
    log = structlog.get_logger().bind(station="s1")
    log.info("first")  # binds the logger, as a long-lived daemon part does on its first line
    first, second = io.StringIO(), io.StringIO()
    monkeypatch.setattr(sys, "stderr", first)
    log.info("one")
    first.close()  # a redirect_stderr block ends; its stream is gone
    monkeypatch.setattr(sys, "stderr", second)
    log.info("two")
    assert json.loads(second.getvalue())["event"] == "two"


def test_without_a_stderr_logs_go_to_stdout(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    configure_logging("info", "json")
    monkeypatch.setattr(sys, "stderr", None)
    structlog.get_logger().info("no_stderr")
    assert json.loads(capsys.readouterr().out)["event"] == "no_stderr"
