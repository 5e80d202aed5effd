"""The decision journal: SQLite (WAL, synchronous=FULL). Every decision is committed here before it is published,
and the `record` stream is fed from it in `seq` order, so outages and restarts lose nothing."""

from __future__ import annotations

import fcntl
import json
import os
import sqlite3
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from inspector.decision import Verdict, iso_time
from inspector.errors import InputError

DECISION_SCHEMA = "inspector.decision/1"
_USER_VERSION = 1

_SCHEMA = """
CREATE TABLE IF NOT EXISTS records (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,  -- never reused, even after pruning
    session TEXT NOT NULL,
    frame_id TEXT NOT NULL,
    part_id TEXT,
    source TEXT NOT NULL,
    verdict TEXT NOT NULL,
    reason TEXT,
    score REAL,
    captured_at REAL NOT NULL,
    decided_at REAL NOT NULL,
    deadline_at REAL NOT NULL,
    payload TEXT NOT NULL,
    decision_sent_at REAL,  -- the broker acknowledged the `decision` message
    record_sent_at REAL,    -- the broker acknowledged the `record` message
    plc_acked_at REAL,      -- a subscriber acknowledged on decision/ack
    source_identity TEXT    -- "inode:mtime_ns:size" of the file judged (folder source): crash recovery moves only that file
);
CREATE INDEX IF NOT EXISTS records_record_unsent ON records(seq) WHERE record_sent_at IS NULL;
CREATE INDEX IF NOT EXISTS records_decision_unsent ON records(seq) WHERE decision_sent_at IS NULL;
CREATE INDEX IF NOT EXISTS records_decided_at ON records(decided_at);
CREATE INDEX IF NOT EXISTS records_source ON records(source);
"""


@dataclass(frozen=True, slots=True)
class Pending:
    """A verdict on its way into the journal, with what the daemon adds to it."""

    verdict: Verdict
    session: str
    part_id: str | None
    deadline_at: float
    file_identity: tuple[int, int, int] | None = None  # the file the verdict judged (folder source)


@dataclass(frozen=True, slots=True)
class Record:
    """A journaled decision: its `seq` and the payload every topic is built from."""

    seq: int
    pending: Pending
    payload: dict[str, Any]
    text: str  # the payload as stored: compact JSON without `late`

    @property
    def verdict(self) -> Verdict:
        """The verdict this record holds."""
        return self.pending.verdict


def with_late(text: str, late: bool) -> bytes:
    """A stored payload with `late` appended, without parsing it again."""
    return f"{text[:-1]},\"late\":{'true' if late else 'false'}}}".encode()


def decision_payload(seq: int, p: Pending) -> dict[str, Any]:
    """The decision's JSON form (without `late`, which depends on when it is sent)."""
    v = p.verdict.to_dict()
    return {
        "schema": DECISION_SCHEMA,
        "seq": seq,
        "session": p.session,
        "frame_id": v["frame_id"],
        "part_id": p.part_id,
        "verdict": v["verdict"],
        "gate": v["gate"],
        "reason": v["reason"],
        "detail": v["detail"],
        "score": v["score"],
        "threshold": v["threshold"],
        "rois": v["rois"],
        "model": v["model"],
        "source": v["source"],
        "captured_at": v["captured_at"],
        "decided_at": v["decided_at"],
        "deadline_at": iso_time(p.deadline_at),
        "latency_ms": {**v["latency_ms"], "since_capture": round((p.verdict.decided_at - p.verdict.captured_at) * 1000, 3)},
    }


class Journal:
    """One connection; the daemon's output thread owns its writer, readers open their own."""

    def __init__(self, path: Path, *, readonly: bool = False) -> None:
        self.path = Path(path)
        self._lock_fd: int | None = None
        self.created = self.lost_earlier = False
        self._identity: tuple[int, int] | None = None
        if readonly:
            if not self.path.is_file():
                raise InputError(f"no journal at {self.path}; set journal.path or pass --journal")
            self._db = sqlite3.connect(f"file:{self.path}?mode=ro", uri=True, check_same_thread=False)
            try:
                self._db.execute("SELECT seq FROM records LIMIT 1").fetchall()
            except sqlite3.Error as exc:
                self._db.close()
                raise InputError(f"{self.path} is not an inspector journal ({exc})") from exc
        else:
            used_before = self.path.with_name(self.path.name + ".lock").exists()
            self._lock_fd = _writer_lock(self.path)
            self.created = not self.path.exists()
            # A run wrote here before (its lock file stays), yet the journal is gone: its seqs start over at 1.
            self.lost_earlier = self.created and used_before
            try:
                self._db = sqlite3.connect(str(self.path), isolation_level=None, check_same_thread=False)
                self._db.execute("PRAGMA journal_mode=WAL")
                # FULL: a commit is on disk before the decision goes out, so a power cut cannot un-decide a published part.
                self._db.execute("PRAGMA synchronous=FULL")
                version = self._db.execute("PRAGMA user_version").fetchone()[0]
                if version > _USER_VERSION:
                    raise InputError(
                        f"journal {self.path} has format {version}, newer than this inspector reads ({_USER_VERSION}); upgrade inspector"
                    )
                self._db.executescript(_SCHEMA)
                columns = {row[1] for row in self._db.execute("PRAGMA table_info(records)")}
                if "source_identity" not in columns:
                    # Added without a format change: an older inspector names its columns, so it reads and writes this
                    # journal as before; its records just carry no identity.
                    self._db.execute("ALTER TABLE records ADD COLUMN source_identity TEXT")
                if version != _USER_VERSION:  # a write: on a full disk, reopening an existing journal must not need one
                    self._db.execute(f"PRAGMA user_version={_USER_VERSION}")
                self._identity = _inode(self.path)
            except (OSError, sqlite3.Error) as exc:
                os.close(self._lock_fd)
                raise InputError(f"cannot open the journal {self.path}: {_open_reason(exc)}") from exc
            except InputError:  # a newer format: this run does not write it, so the next may
                os.close(self._lock_fd)
                raise
        self._db.execute("PRAGMA busy_timeout=5000")
        self._last_seq = self.last_seq()

    def close(self) -> None:
        """Close the connection (and, for the writer, release the journal to the next run)."""
        self._db.close()
        if self._lock_fd is not None:
            os.close(self._lock_fd)
            self._lock_fd = None

    def replaced(self) -> str | None:
        """Why the writer's file is no longer the one at `path` (removed or replaced), or None while it is."""
        now = _inode(self.path)
        if now == self._identity:
            return None
        # Records written since go to a file nobody can open: published still, but gone at the next start.
        return "the journal file was removed" if now is None else "the journal file was replaced by another file"

    # --- writing ------------------------------------------------------------------------------

    def append(self, items: Sequence[Pending]) -> list[Record]:
        """Commit decisions in one transaction (one fsync) and return them with their seq."""
        records = []
        with self._transaction():
            # One writer: the next seq is known, so each row is one INSERT with its final payload.
            seq = self._last_seq
            for p in items:
                seq += 1
                v = p.verdict
                payload = decision_payload(seq, p)
                text = json.dumps(payload, separators=(",", ":"))
                self._db.execute(
                    "INSERT INTO records (seq, session, frame_id, part_id, source, verdict, reason, score, captured_at, decided_at, "
                    "deadline_at, payload, source_identity) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    (seq, p.session, v.frame_id, p.part_id, v.source, v.verdict, v.reason.value if v.reason else None, v.score,
                     v.captured_at, v.decided_at, p.deadline_at, text, identity_text(p.file_identity)),
                )
                records.append(Record(seq, p, payload, text))
        self._last_seq = seq  # only once committed: a failed batch reuses its numbers
        return records

    def mark_sent(self, acked: dict[str, Sequence[int]], at: float) -> None:
        """Note, in one transaction, which seqs' `decision` / `record` messages the broker acknowledged (column -> seqs)."""
        for column in acked:
            _sent_column(column)
        if not any(acked.values()):
            return
        with self._transaction():
            for column, seqs in acked.items():
                self._db.executemany(f"UPDATE records SET {column} = ? WHERE seq = ? AND {column} IS NULL", [(at, s) for s in seqs])

    def mark_acknowledged(self, seq: int, part_id: str | None, at: float) -> bool:
        """Mark a record acknowledged by a subscriber; False when no record has that seq and part id."""
        with self._transaction():
            cur = self._db.execute(
                "UPDATE records SET plc_acked_at = COALESCE(plc_acked_at, ?) WHERE seq = ? AND part_id IS ?", (at, seq, part_id)
            )
        return cur.rowcount > 0

    def prune(self, max_age_days: float, max_size_mb: float, *, now: float | None = None, chunk: int = 2000) -> tuple[int, bool, int]:
        """Delete up to `chunk` published records: older than the age limit, else the oldest while over the size limit.

        Small chunks keep the writer free for decisions; call again while `more` is True. Freed pages are reused, so
        the file stops growing at the limit without a VACUUM (which would stall the writer for seconds).
        Returns (deleted, more, unsent_over_limit): records never published are kept whatever their age or size."""
        now = time.time() if now is None else now
        with self._transaction():
            deleted = self._db.execute(
                "DELETE FROM records WHERE seq IN (SELECT seq FROM records WHERE decided_at < ? AND record_sent_at IS NOT NULL "
                "ORDER BY seq LIMIT ?)",
                (now - max_age_days * 86400, chunk),
            ).rowcount
        if deleted == chunk:
            return deleted, True, 0
        limit = int(max_size_mb * 1024 * 1024)
        if self.size_bytes() <= limit:
            return deleted, False, 0
        with self._transaction():
            n = self._db.execute(
                "DELETE FROM records WHERE seq IN (SELECT seq FROM records WHERE record_sent_at IS NOT NULL ORDER BY seq LIMIT ?)",
                (chunk - deleted,),
            ).rowcount
        deleted += n
        if n and self.size_bytes() > limit:
            return deleted, True, 0
        return deleted, False, (self.outbox_depth() if self.size_bytes() > limit else 0)

    def _transaction(self) -> _Tx:
        return _Tx(self._db)

    # --- reading ------------------------------------------------------------------------------

    def unsent(self, column: str, after_seq: int, limit: int) -> list[tuple[int, str, float, str | None]]:
        """(seq, payload JSON, deadline_at, part_id) of records whose `decision` or `record` message the broker has not
        acknowledged, in seq order."""
        _sent_column(column)
        rows = self._db.execute(
            f"SELECT seq, payload, deadline_at, part_id FROM records WHERE {column} IS NULL AND seq > ? ORDER BY seq LIMIT ?",
            (after_seq, limit),
        ).fetchall()
        return [(int(s), str(p), float(d), part) for s, p, d, part in rows]

    def outbox_depth(self) -> int:
        """Records the broker has not yet acknowledged on the `record` topic."""
        return int(self._db.execute("SELECT COUNT(*) FROM records WHERE record_sent_at IS NULL").fetchone()[0])

    def last_seq(self) -> int:
        """The highest seq ever assigned (0 for a new journal)."""
        row = self._db.execute("SELECT seq FROM sqlite_sequence WHERE name = 'records'").fetchone()
        return int(row[0]) if row else 0

    def decided(self, source: str, since: float, identity: tuple[int, int, int] | None = None) -> tuple[int, str, str | None] | None:
        """(seq, verdict, reason) of the latest decision on `source` made at or after `since`, if any; with `identity`,
        only a decision on that very file (records written before identities were kept match by time alone)."""
        row = self._db.execute(
            "SELECT seq, verdict, reason FROM records WHERE source = ? AND decided_at >= ? "
            "AND (source_identity IS NULL OR ? IS NULL OR source_identity = ?) ORDER BY seq DESC LIMIT 1",
            (source, since, identity_text(identity), identity_text(identity)),
        ).fetchone()
        return (int(row[0]), str(row[1]), row[2]) if row else None

    def size_bytes(self) -> int:
        """Bytes of pages in use (free pages, which new records reuse, and the WAL excluded)."""
        pages = self._db.execute("PRAGMA page_count").fetchone()[0]
        free = self._db.execute("PRAGMA freelist_count").fetchone()[0]
        size = self._db.execute("PRAGMA page_size").fetchone()[0]
        return (int(pages) - int(free)) * int(size)

    def rows(self, since: float | None = None, until: float | None = None, *, newest: int | None = None) -> Iterator[dict[str, Any]]:
        """Every record decided in [since, until) (only the newest N when given), in seq order, with its delivery state."""
        window = (since if since is not None else float("-inf"), until if until is not None else float("inf"))
        columns = "SELECT seq, payload, decision_sent_at, record_sent_at, plc_acked_at FROM records WHERE decided_at >= ? AND decided_at < ?"
        if newest is None:
            rows = self._db.execute(f"{columns} ORDER BY seq", window)
        else:
            rows = self._db.execute(f"SELECT * FROM ({columns} ORDER BY seq DESC LIMIT ?) ORDER BY seq", (*window, newest))
        for _seq, payload, decision_sent, record_sent, acked in rows:
            out = json.loads(payload)
            out["delivery"] = {
                "decision_sent_at": iso_time(decision_sent) if decision_sent else None,
                "record_sent_at": iso_time(record_sent) if record_sent else None,
                "acknowledged_at": iso_time(acked) if acked else None,
            }
            yield out


def _sent_column(column: str) -> str:
    """The column name, when it is one of the two delivery columns (it goes into SQL text)."""
    if column not in ("decision_sent_at", "record_sent_at"):
        raise ValueError(f"column must be decision_sent_at or record_sent_at, got {column!r}")
    return column


class _Tx:
    """BEGIN IMMEDIATE ... COMMIT, rolled back on any error."""

    def __init__(self, db: sqlite3.Connection) -> None:
        self._db = db

    def __enter__(self) -> None:
        self._db.execute("BEGIN IMMEDIATE")

    def __exit__(self, exc_type: object, *_: object) -> None:
        self._db.execute("ROLLBACK" if exc_type else "COMMIT")


def identity_text(identity: tuple[int, int, int] | None) -> str | None:
    """A file identity as the journal stores it: "inode:mtime_ns:size"."""
    return None if identity is None else ":".join(map(str, identity))


def _writer_lock(path: Path) -> int:
    """Hold `<journal>.lock` for as long as this writer lives; InputError when another run holds it."""
    # A second writer would take the same seqs and fail every commit; SQLite's own locks only serialise them.
    lock = path.with_name(path.name + ".lock")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(lock, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
    except OSError as exc:
        raise InputError(f"cannot open the journal {path}: {_open_reason(exc)}") from exc
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "?"
        os.close(fd)
        raise InputError(
            f"the journal {path} is in use by another `inspector run` (pid {holder}); each station needs its own journal.path"
        ) from None
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
    return fd


def _inode(path: Path) -> tuple[int, int] | None:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return st.st_dev, st.st_ino


def _open_reason(exc: Exception) -> str:
    """Why a journal cannot be opened, with the hint that fits (a damaged file is not a permissions problem)."""
    text = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
    if "not a database" in text or "malformed" in text:
        return f"{text}: the file is damaged or not a journal; move it away (keep it for inspection) and start again"
    if "disk is full" in text or "No space" in text:
        return f"{text}: free space on its file system"
    return f"{text} (journal.path must be a file this user may write, in a folder it may write)"
