"""The progress line shows on a terminal and stays out of logs and pipes."""

from __future__ import annotations

import io

from inspector.progress import Progress


def test_progress_draws_counts_on_a_terminal_and_ends_the_line() -> None:
    stream = io.StringIO()
    bar = Progress(3, "replay", stream=stream, enabled=True)
    for _ in range(3):
        bar.advance()
    bar.close()
    assert "replay 3/3 (100%)" in stream.getvalue() and stream.getvalue().endswith("\n")


def test_progress_is_silent_when_not_on_a_terminal() -> None:
    stream = io.StringIO()
    bar = Progress(2, "replay", stream=stream)
    bar.advance(2)
    bar.close()
    assert stream.getvalue() == ""
