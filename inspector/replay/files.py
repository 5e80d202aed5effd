"""The files replay writes into --out, by name: a later replay recognises its output by them, and --no-report removes only these.
Also how any folder walk (replay, calibrate, train) tells an output folder of replay or train from a folder of frames."""

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
    try:
        if not (folder / DECISIONS).is_file():
            return False
        summary = json.loads((folder / SUMMARY).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError):
        return False
    # The `replay` block is what replay adds to its summary; a summary.json of another tool beside some
    # decisions.jsonl must not hide a folder of frames.
    return isinstance(summary, dict) and isinstance(summary.get("replay"), dict) and "frames" in summary


# Files only `inspector train` writes into its --out: last.pt each epoch (before any plot), best.pt, and cv.json at a
# k-fold root. No folder of frames holds them.
TRAINING_MARKERS = ("best.pt", "last.pt", "cv.json")


def is_training_output(folder: Path) -> bool:
    """True when `folder` is an `inspector train` output: a run, a fold, or a k-fold root."""
    try:
        return any((folder / name).is_file() for name in TRAINING_MARKERS)
    except OSError:  # a folder that cannot be searched (mode 0700, another owner): the walk then says it cannot list it
        return False


def is_output(folder: Path) -> bool:
    """True for a folder that replay or train wrote: its plots and contact sheets are not frames."""
    return is_replay_output(folder) or is_training_output(folder)
