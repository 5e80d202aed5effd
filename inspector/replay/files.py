"""The files replay writes into --out, by name: a later replay recognises its output by them, and --no-report removes only these."""

from __future__ import annotations

import json
from pathlib import Path

DECISIONS = "decisions.jsonl"
SUMMARY = "summary.json"
REPORT = "report.html"
MISSED_NG = "missed_ng.jpg"
FALSE_REJECTS = "false_rejects.jpg"
REPORT_FILES = (REPORT, MISSED_NG, FALSE_REJECTS)
REPORT_IMAGES = (MISSED_NG, FALSE_REJECTS)


def is_replay_output(folder: Path) -> bool:
    """True when `folder` holds a finished replay's decisions.jsonl and a summary.json that replay wrote."""
    if not (folder / DECISIONS).is_file():
        return False
    try:
        summary = json.loads((folder / SUMMARY).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError):
        return False
    # The `replay` block is what replay adds to its summary; a summary.json of another tool beside some
    # decisions.jsonl must not hide a folder of frames.
    return isinstance(summary, dict) and isinstance(summary.get("replay"), dict) and "frames" in summary
