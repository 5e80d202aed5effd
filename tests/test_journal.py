"""The decision journal: seq survives restarts and pruning, unsent records are never pruned, export for a time range."""

from __future__ import annotations

import csv
import io
import json
import os
import sqlite3
from pathlib import Path

import pytest

from inspector.cli import main
from inspector.decision import Latency, Verdict
from inspector.errors import InputError
from inspector.frame import Reason
from inspector.journal import Journal, Pending, with_late


def _pending(i: int, *, at: float = 1_800_000_000.0, reject: bool = False) -> Pending:
    v = Verdict(
        frame_id=f"f{i}.png", source=f"/in/f{i}.png", captured_at=at + i, decided_at=at + i + 0.01,
        verdict="reject" if reject else "pass", reason=Reason.SCORE if reject else None, threshold=0.5, rois=(),
        model_sha256="0" * 64, provider="cpu", latency_ms=Latency(total=10.0),
    )
    return Pending(v, "session-a", f"p{i}", at + i + 1.0)


def test_seq_continues_across_reopen_and_is_never_reused_after_pruning(tmp_path: Path) -> None:
    path = tmp_path / "j.sqlite3"
    j = Journal(path)
    first = j.append([_pending(i) for i in range(3)])
    assert [r.seq for r in first] == [1, 2, 3]
    assert first[0].payload["seq"] == 1 and first[0].payload["part_id"] == "p0" and "late" not in first[0].payload
    j.mark_sent({"record_sent_at": [1, 2, 3]}, 1_900_000_000.0)
    assert j.prune(max_age_days=1, max_size_mb=1000, now=1_900_000_000.0) == (3, False, 0)
    j.close()
    j = Journal(path)
    assert [r.seq for r in j.append([_pending(9)])] == [4]
    assert j.last_seq() == 4
    j.close()


def test_unsent_records_survive_any_age_and_come_back_in_order(tmp_path: Path) -> None:
    j = Journal(tmp_path / "j.sqlite3")
    j.append([_pending(i) for i in range(5)])
    j.mark_sent({"record_sent_at": [2, 4], "decision_sent_at": [1]}, 1.0)
    assert [s for s, *_ in j.unsent("record_sent_at", 0, 10)] == [1, 3, 5]
    assert [s for s, *_ in j.unsent("record_sent_at", 1, 1)] == [3]
    assert [s for s, *_ in j.unsent("decision_sent_at", 0, 10)] == [2, 3, 4, 5]
    _, text, deadline, part = j.unsent("record_sent_at", 0, 1)[0]
    assert json.loads(with_late(text, True)) == {**json.loads(text), "late": True} and part == "p0" and deadline > 0
    assert j.prune(max_age_days=0.001, max_size_mb=1000, now=2_000_000_000.0) == (2, False, 0)
    assert j.outbox_depth() == 3
    with pytest.raises(ValueError, match="decision_sent_at or record_sent_at"):
        j.unsent("payload", 0, 1)
    with pytest.raises(ValueError, match="decision_sent_at or record_sent_at"):
        j.mark_sent({"payload": [1]}, 1.0)


def test_acknowledgement_needs_the_matching_part_id(tmp_path: Path) -> None:
    j = Journal(tmp_path / "j.sqlite3")
    j.append([_pending(0)])
    assert not j.mark_acknowledged(1, "wrong", 5.0)
    assert not j.mark_acknowledged(7, "p0", 5.0)
    assert j.mark_acknowledged(1, "p0", 5.0)
    assert next(j.rows())["delivery"]["acknowledged_at"] is not None


def test_recovery_lookup_finds_decisions_made_after_the_file_was_written(tmp_path: Path) -> None:
    j = Journal(tmp_path / "j.sqlite3")
    j.append([_pending(0, reject=True)])
    assert j.decided("/in/f0.png", since=1_800_000_000.0) == (1, "reject", "score")
    assert j.decided("/in/f0.png", since=1_800_000_001.0) is None, "a newer file of the same name is not yet decided"
    # With the file's identity kept, only that file matches; a record without one (an older inspector's) matches by time.
    v = _pending(1).verdict
    j.append([Pending(v, "s", "p1", 1.0, (11, 22, 33))])
    assert j.decided("/in/f1.png", 1_800_000_000.0, (11, 22, 33)) == (2, "pass", None)
    assert j.decided("/in/f1.png", 1_800_000_000.0, (11, 22, 34)) is None
    assert j.decided("/in/f0.png", 1_800_000_000.0, (99, 99, 99)) == (1, "reject", "score")


def test_a_journal_without_the_identity_column_gets_it_and_keeps_its_records(tmp_path: Path) -> None:
    path = tmp_path / "j.sqlite3"
    Journal(path).close()
    db = sqlite3.connect(path)
    db.execute("ALTER TABLE records DROP COLUMN source_identity")  # as an older inspector made it
    db.execute("INSERT INTO records (session, frame_id, source, verdict, captured_at, decided_at, deadline_at, payload) "
               "VALUES ('s', 'f', '/in/f', 'pass', 1, 2, 3, '{}')")
    db.commit()
    db.close()
    j = Journal(path)
    assert j.decided("/in/f", 1.0, (1, 2, 3)) == (1, "pass", None)
    assert [r.seq for r in j.append([_pending(5)])] == [2]
    j.close()


def test_settings_in_the_file_are_durable_wal_full(tmp_path: Path) -> None:
    j = Journal(tmp_path / "j.sqlite3")
    j.close()
    db = sqlite3.connect(tmp_path / "j.sqlite3")
    assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"


def test_readonly_open_of_a_missing_journal_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="no journal at"):
        Journal(tmp_path / "nope.sqlite3", readonly=True)


def test_journal_cli_exports_a_time_range_as_jsonl_and_csv(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    j = Journal(tmp_path / "j.sqlite3")
    j.append([_pending(i, reject=i == 1) for i in range(4)])
    j.close()
    args = ["journal", "export", "--journal", str(tmp_path / "j.sqlite3")]
    assert main([*args, "--since", "2027-01-15T08:00:01Z", "--until", "2027-01-15T08:00:03Z"]) == 0
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [r["seq"] for r in rows] == [2, 3] and rows[0]["verdict"] == "reject"
    assert main([*args, "--format", "csv"]) == 0
    table = list(csv.DictReader(io.StringIO(capsys.readouterr().out)))
    assert [t["part_id"] for t in table] == ["p0", "p1", "p2", "p3"] and table[1]["reason"] == "score"
    assert main(["journal", "list", "--journal", str(tmp_path / "j.sqlite3"), "--limit", "2"]) == 0
    listed = capsys.readouterr().out.splitlines()
    assert len(listed) == 3 and "UNSENT" in listed[-1]
    with pytest.raises(SystemExit) as exit_info:
        main([*args, "--since", "yesterday"])
    assert exit_info.value.code == 2
    assert "30m, 12h, 7d" in capsys.readouterr().err


@pytest.mark.parametrize("limit", ["99999999999999999999999", "10000001", "0"])
def test_a_limit_out_of_range_is_a_usage_error_not_an_internal_one(tmp_path: Path, capsys: pytest.CaptureFixture[str], limit: str) -> None:
    Journal(tmp_path / "j.sqlite3").close()
    with pytest.raises(SystemExit) as exit_info:
        main(["journal", "list", "--journal", str(tmp_path / "j.sqlite3"), "--limit", limit])
    assert exit_info.value.code == 2
    assert f"argument --limit: expected a whole number from 1 to 10000000, got {limit}" in capsys.readouterr().err


def test_a_reader_that_leaves_early_ends_the_export_quietly(tmp_path: Path) -> None:
    import subprocess
    import sys

    j = Journal(tmp_path / "j.sqlite3")
    j.append([_pending(i) for i in range(3000)])
    j.close()
    cmd = [sys.executable, "-m", "inspector", "journal", "export", "--journal", str(tmp_path / "j.sqlite3")]
    with subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE) as proc:
        assert proc.stdout is not None and proc.stderr is not None
        assert proc.stdout.read(100)
        proc.stdout.close()  # what `| head -c 100` does
        err = proc.stderr.read().decode()
        assert proc.wait(timeout=60) == 141
    assert err == "", "no internal error, no traceback"


def test_an_unwritable_or_foreign_journal_is_a_clear_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "not-a-db").write_bytes(b"this is not sqlite" * 100)
    with pytest.raises(InputError, match="cannot open the journal .*not-a-db"):
        Journal(tmp_path / "not-a-db")
    (tmp_path / "empty.db").touch()
    for foreign in ("not-a-db", "empty.db"):
        assert main(["journal", "list", "--journal", str(tmp_path / foreign)]) == 2
        assert f"{tmp_path / foreign} is not an inspector journal" in capsys.readouterr().err
    Journal(tmp_path / "j.sqlite3").close()
    assert main(["journal", "export", "--journal", str(tmp_path / "j.sqlite3"), "--out", str(tmp_path)]) == 2
    assert f"--out {tmp_path}: is a folder; expected a file" in capsys.readouterr().err


def test_size_limit_prunes_oldest_published_records_in_slices_and_keeps_unsent_ones(tmp_path: Path) -> None:
    j = Journal(tmp_path / "j.sqlite3")
    j.append([_pending(i) for i in range(3000)])
    j.mark_sent({"record_sent_at": list(range(1, 2501))}, 1.0)
    size = j.size_bytes()
    limit_mb = size * 0.5 / 2**20
    deleted, more, unsent = j.prune(max_age_days=10_000, max_size_mb=limit_mb, now=1_800_000_000.0, chunk=1000)
    assert (deleted, more, unsent) == (1000, True, 0)
    total = deleted
    while more:
        deleted, more, unsent = j.prune(max_age_days=10_000, max_size_mb=limit_mb, now=1_800_000_000.0, chunk=1000)
        total += deleted
    assert j.size_bytes() <= size * 0.5 or unsent == 500
    remaining = [r["seq"] for r in j.rows()]
    assert remaining[0] == total + 1, "the oldest went first"
    assert remaining[-500:] == list(range(2501, 3001)), "unsent records are never pruned"


def test_one_writer_at_a_time_and_readers_beside_it(tmp_path: Path) -> None:
    path = tmp_path / "j.sqlite3"
    writer = Journal(path)
    writer.append([_pending(1)])
    with pytest.raises(InputError, match=rf"the journal {path} is in use by another `inspector run` \(pid {os.getpid()}\)"):
        Journal(path)
    reader = Journal(path, readonly=True)  # `inspector journal list` beside a running daemon
    assert reader.last_seq() == 1
    reader.close()
    writer.close()
    again = Journal(path)  # released with the writer
    assert [r.seq for r in again.append([_pending(2)])] == [2]
    again.close()


def test_a_journal_removed_or_replaced_under_the_writer_is_noticed(tmp_path: Path) -> None:
    path = tmp_path / "j.sqlite3"
    j = Journal(path)
    assert j.created and not j.lost_earlier and j.replaced() is None
    path.rename(tmp_path / "moved.sqlite3")
    assert j.replaced() == "the journal file was removed"
    path.write_bytes(b"")
    assert j.replaced() == "the journal file was replaced by another file"
    j.close()
    path.unlink()
    # A run wrote here before, and its journal is gone: seqs start over, which the daemon warns about.
    k = Journal(path)
    assert k.created and k.lost_earlier
    k.close()
    reopened = Journal(path)
    assert not reopened.created and not reopened.lost_earlier
    reopened.close()


def test_a_damaged_journal_is_named_as_such(tmp_path: Path) -> None:
    (tmp_path / "j.sqlite3").write_bytes(b"SQLite format 3\x00" + b"\xff" * 4000)
    with pytest.raises(InputError, match="the file is damaged or not a journal; move it away"):
        Journal(tmp_path / "j.sqlite3")


def test_a_time_range_that_ends_before_it_starts_is_refused(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    Journal(tmp_path / "j.sqlite3").close()
    assert main(["journal", "export", "--journal", str(tmp_path / "j.sqlite3"), "--since", "1h", "--until", "2h"]) == 2
    assert "--since is later than --until" in capsys.readouterr().err
