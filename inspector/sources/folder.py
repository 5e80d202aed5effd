"""The watched-folder source: inotify through watchdog (polling as the fallback), complete files only, arrival order.

A file counts once it is renamed into the folder, or once its size has not changed for `settle_ms`. After its
decision is journaled it moves to processed/pass|reject/ (or is deleted); a file that cannot be judged moves to
quarantine/ with a `.reason` file beside it. Only the file that was read moves under a decision: one name holds one
file at a time in flight, and a file that lands under that name meanwhile is judged as its own part afterwards.
"""

from __future__ import annotations

import errno
import fnmatch
import os
import queue
import stat
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import structlog
from watchdog.events import FileSystemEvent, FileSystemEventHandler
from watchdog.observers.api import BaseObserver
from watchdog.observers.polling import PollingObserver

from inspector.config import SourceSettings
from inspector.decision import gate, iso_time
from inspector.errors import InputError
from inspector.frame import QUARANTINE_REASONS, Frame, Reason
from inspector.health import Health
from inspector.journal import Record
from inspector.regular_file import file_kind

PROCESSED = "processed"
QUARANTINE = "quarantine"
# In delete mode a judged file is first renamed to `<_CLAIM><seq>.<name>` (never a candidate), checked to be the file
# that was read, then unlinked: unlinking by its name could delete a new part that has just replaced it.
_CLAIM = ".inspector-deleting."

Lookup = Callable[[str, float, "tuple[int, int, int] | None"], "tuple[int, str, str | None] | None"]
_Identity = tuple[int, int, int]  # inode, mtime (ns), size: the same name with another identity is another file


class FolderSource:
    """Frames from image files that an acquisition program writes into one folder (not its subfolders)."""

    def __init__(
        self,
        settings: SourceSettings,
        *,
        health: Health,
        log: structlog.typing.FilteringBoundLogger,
        uncertain_route: str = "reject",
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.uncertain_route = uncertain_route
        if settings.path is None:
            raise InputError("source.path: required when source.kind is folder")
        if not settings.path.is_dir():
            raise InputError(f"source.path: not a folder: {settings.path}")
        self.settings = settings
        self.root = settings.path.resolve()
        self.health = health
        self.log = log
        self._clock = clock
        self._settle_s = settings.settle_ms / 1000
        self._ready: queue.Queue[tuple[str, float]] = queue.Queue()
        self._lock = threading.Lock()
        self._pending: dict[str, tuple[float, int, float]] = {}  # name -> (first seen, size, when the size last changed)
        self._tracked: set[str] = set()  # pending, ready, or judged but not yet moved
        # Tracked names under which something arrived after they were queued (when it first did, and whether the latest
        # arrival was a rename, i.e. whole): once that decision is finished, a file there that is not the one read is
        # judged as its own part. Several arrivals meanwhile leave one file: the ones it replaced were never read.
        self._again: dict[str, tuple[float, bool]] = {}
        # Judged but not moved away (or there before start, with process_existing off): skipped while the file is
        # the same one. A file replaced or rewritten under that name is a new part and gets its own decision.
        self._stuck: dict[str, _Identity | None] = {}
        self._backlog: set[str] = set()  # found at start: they waited on disk, so inference may make them wait longer
        self._counter = 0
        self._observer: BaseObserver | None = None
        self._watcher: _RawInotify | None = None
        self._rescan_now = False
        self._poll_gone = False
        self.mode = settings.watch

    def describe(self) -> dict[str, Any]:
        """The folder and how it is watched."""
        return {"kind": "folder", "path": str(self.root), "watch": self.mode}

    # --- events -------------------------------------------------------------------------------

    def _start_observer(self) -> None:
        wanted = self.settings.watch
        if wanted in ("auto", "inotify"):
            try:
                self._watcher = _RawInotify(self)
                self.mode = "inotify"
                return
            except (OSError, ImportError) as exc:
                if wanted == "inotify":
                    raise InputError(f"source.watch: inotify cannot watch {self.root}: {exc}; use watch: poll") from exc
                self.log.warning("inotify_unavailable", folder=str(self.root), error=str(exc), falling_back_to="poll")
        self._start_polling()

    def _start_polling(self) -> None:
        observer = PollingObserver(timeout=self.settings.poll_interval_ms / 1000)
        observer.schedule(_Handler(self), str(self.root), recursive=False)
        observer.start()
        self._observer, self.mode = observer, "poll"
        self._poll_gone = False

    def polled_folder_gone(self) -> None:
        """Polling found the folder gone; its poller has stopped for good (called on watchdog's thread)."""
        if self._poll_gone:
            return
        self._poll_gone = True
        self.log.error("folder_gone", folder=str(self.root), detail="watched again once the folder exists again")
        self.health.set_flag("source_unreadable", "the watched folder was removed or moved")

    def _watch_again(self) -> None:
        """Watch the folder again once one exists again where a removed or moved-away one was."""
        if self._watcher is not None and self._watcher.gone and self.root.is_dir() and self._watcher.rewatch():
            self._rescan_now = True  # files written between mkdir and the new watch had no event
        elif self._observer is not None and self._poll_gone and self.root.is_dir():
            self._observer.stop()
            self._observer.join(timeout=5)
            self._start_polling()
            self.log.info("folder_watched_again", folder=str(self.root), watch="poll")
            self._rescan_now = True

    def overflowed(self) -> None:
        """The kernel dropped events: rescan now rather than at the next period."""
        self.log.warning("inotify_overflow", folder=str(self.root), detail="rescanning the folder")
        self._rescan_now = True

    def _candidate(self, path: str) -> str | None:
        p = Path(path)
        if p.parent != self.root:
            return None
        name = p.name
        if name.startswith(_CLAIM) or any(fnmatch.fnmatchcase(name, pat) for pat in self.settings.ignore):
            return None
        return name

    def arrived(self, path: str, *, complete: bool, when: float | None = None) -> None:
        """A file appeared or changed (`complete`: it was renamed in, so it is whole)."""
        name = self._candidate(path)
        if name is None:
            return
        now = self._clock() if when is None else when
        with self._lock:
            if self._still_stuck(name):
                return
            if name in self._pending:
                first, size, _ = self._pending[name]
                if complete:
                    del self._pending[name]
                    self._ready.put((name, first))
                else:
                    self._pending[name] = (first, size, now)  # it changed now: the settle wait starts again
                return
            if name in self._tracked:
                # Queued or being judged: what lands under the name now may be another part. Looked at once that
                # decision is finished (`_finish`), when only a file other than the one read is judged again. A rename
                # brings a whole new file (arriving now); other events are writes to the one that arrived first.
                self._again[name] = (now if complete else self._again.get(name, (now, False))[0], complete)
                return
            self._queue(name, now, now, complete=complete)

    def _queue(self, name: str, first: float, changed: float, *, complete: bool) -> None:
        """Track `name`: ready at once if it is whole (renamed in), else once its size has held still since `changed`
        for settle_ms (call with the lock held)."""
        self._tracked.add(name)
        if complete:
            self._ready.put((name, first))
        else:
            # The settle pass reads sizes (no I/O on the event thread); size -1 until it has.
            self._pending[name] = (first, -1, changed)

    def _settle(self) -> None:
        """Move files whose size held still for settle_ms to the ready queue, oldest arrival first."""
        now = self._clock()
        done = []
        with self._lock:
            for name, (first, size, changed) in list(self._pending.items()):
                current = _size(self.root / name)
                if current < 0 and not os.path.lexists(self.root / name):
                    del self._pending[name]  # removed before it was complete: it never was a frame
                    self._tracked.discard(name)
                    self._backlog.discard(name)
                    continue
                if current != size:
                    # A first measurement (size -1) keeps the event's time; a size that moved restarts the wait.
                    self._pending[name] = (first, current, changed if size < 0 else now)
                elif now - changed >= self._settle_s:
                    done.append((first, name))
                    del self._pending[name]
        # Arrival order is when each file was last written, not the order in which events or polls reported them.
        for _, name, first in sorted((_mtime(self.root / name), name, first) for first, name in done):
            self._ready.put((name, first))

    def _rescan(self, *, existing: bool = False) -> None:
        """Catch files that no event announced (lost inotify events, or those present at start)."""
        try:
            entries = sorted(os.scandir(self.root), key=_mtime_name)
        except OSError as exc:
            # Once per outage (the flag says it lasts), not at every rescan: a folder gone overnight would fill the log.
            if self.health.set_flag("source_unreadable", str(exc)):
                self.log.error("folder_unreadable", folder=str(self.root), error=str(exc))
            return
        if self.health.clear_flag("source_unreadable"):
            self.log.info("folder_readable", folder=str(self.root))
        for entry in entries:
            if entry.is_dir(follow_symlinks=False) or self._candidate(entry.path) is None:
                continue  # an ignored name (x.part) would otherwise be "found" at every rescan
            with self._lock:
                known = entry.name in self._tracked or self._still_stuck(entry.name)
            if not known:
                if existing:
                    with self._lock:
                        self._backlog.add(entry.name)
                else:
                    self.log.info("file_found_by_rescan", file=entry.name)
                self.arrived(entry.path, complete=False)

    def recover(self, lookup: Lookup) -> int:
        """Finish files judged before a crash but not yet moved: no second decision. Returns how many."""
        self._unclaim()
        n = 0
        for entry in sorted(os.scandir(self.root), key=_mtime_name):
            if entry.is_dir(follow_symlinks=False) or self._candidate(entry.path) is None:
                continue
            st = entry.stat(follow_symlinks=False)
            # This very file, not just one of its name: another renamed over a decided file before a crash is still news.
            found = lookup(str(self.root / entry.name), st.st_mtime, _stat_identity(st))
            if found is not None:
                seq, verdict, reason = found
                self.log.info("file_already_decided", file=entry.name, seq=seq, verdict=verdict)
                self._finish(entry.name, seq, verdict, Reason(reason) if reason else None, None, _stat_identity(st))
                n += 1
        return n

    def _unclaim(self) -> None:
        """Put files that a crash left claimed for deletion back under their names, for `recover` to look up."""
        for entry in os.scandir(self.root):
            if not entry.name.startswith(_CLAIM) or entry.is_dir(follow_symlinks=False):
                continue
            name = entry.name[len(_CLAIM):].partition(".")[2]
            if name and self._candidate(str(self.root / name)) is not None and not os.path.lexists(self.root / name):
                os.rename(entry.path, self.root / name)
            else:
                self.log.warning("claimed_file_left", file=entry.name, detail="claimed for deletion before a crash; its name is taken")

    # --- frames -------------------------------------------------------------------------------

    def frames(self, stop: threading.Event) -> Iterator[Frame | None]:
        """Complete files in arrival order; None while idle."""
        self._start_observer()
        self.log.info("folder_watching", folder=str(self.root), watch=self.mode, settle_ms=self.settings.settle_ms)
        if self.settings.process_existing:
            self._rescan(existing=True)
        else:
            with self._lock:
                self._stuck.update((e.name, _identity(e.path)) for e in os.scandir(self.root) if not e.is_dir(follow_symlinks=False))
        tick = min(0.05, max(0.005, self._settle_s / 4))
        next_settle = next_rescan = time.monotonic()
        while not stop.is_set():
            now = time.monotonic()
            if now >= next_settle:
                self._watch_again()
                self._settle()
                next_settle = now + tick
            if now >= next_rescan or self._rescan_now:
                self._rescan_now = False
                self._rescan()
                next_rescan = now + self.settings.rescan_s
            try:
                name, first = self._ready.get(timeout=max(0.0, next_settle - time.monotonic()))
            except queue.Empty:
                yield None
                continue
            frame = self._read(name, first)
            if frame is not None:
                yield frame

    def _still_stuck(self, name: str) -> bool:
        """Whether `name` is a stuck file that is still the same file (call with the lock held)."""
        if name not in self._stuck:
            return False
        if _identity(self.root / name) == self._stuck[name]:
            return True
        del self._stuck[name]
        return False

    def _read(self, name: str, arrived: float) -> Frame | None:
        path = self.root / name
        self._counter += 1
        part_id = str(self._counter) if self.settings.part_id == "counter" else Path(name).stem
        with self._lock:
            backlog = name in self._backlog
            self._backlog.discard(name)
        common = {"frame_id": name, "source": str(path), "captured_at": arrived, "part_id": part_id, "backlog": backlog}

        def frame(read: _Identity | None, **kw: Any) -> Frame:
            # `read`: the file this frame's decision is about (fstat of the descriptor the data came from; None when
            # nothing was there). Only that file moves under it (`_finish`), and the journal keeps it for crash recovery.
            return Frame(**common, file_identity=read, **kw)

        try:
            st = os.lstat(path)
        except FileNotFoundError:
            return frame(None, read_error=f"vanished before it could be read: {path}")
        except OSError as exc:  # EACCES, EIO, ...: this file gets its reject; the source goes on
            return frame(None, read_error=f"{exc.strerror}: {path}")
        # The part was captured when the file was written, if that was before the daemon saw it: a file that waited
        # while the daemon was down (or unwatched) is late, and its deadline says so.
        common["captured_at"] = min(arrived, st.st_mtime)
        if stat.S_ISLNK(st.st_mode):
            return frame(_stat_identity(st), fault=Reason.REFUSED, read_error=f"symlink refused (links may lead out of the folder): {path}")
        if stat.S_ISDIR(st.st_mode):
            with self._lock:
                self._tracked.discard(name)
                self._again.pop(name, None)
            return None  # a subfolder (processed/, quarantine/) under a name that was a file a moment ago
        if not stat.S_ISREG(st.st_mode):
            return frame(_stat_identity(st), read_error=_not_a_file(st.st_mode, path))
        try:
            # O_NONBLOCK: a pipe swapped in after the lstat must not hang the source waiting for a writer.
            fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK)
        except OSError as exc:
            # About what the open found there, which may have replaced the file the lstat saw (a symlink: ELOOP).
            if exc.errno == errno.ELOOP:
                return frame(_identity(path), fault=Reason.REFUSED, read_error=f"symlink refused: {path}")
            return frame(_identity(path), read_error=f"{exc.strerror}: {path}")
        try:
            with os.fdopen(fd, "rb") as f:
                # What was opened is what is judged, even if another file replaced the one the lstat saw.
                st = os.fstat(f.fileno())
                common["captured_at"] = min(arrived, st.st_mtime)
                if not stat.S_ISREG(st.st_mode):
                    return frame(_stat_identity(st), read_error=_not_a_file(st.st_mode, path))
                data = f.read()
        except OSError as exc:
            return frame(_stat_identity(st), read_error=f"{exc.strerror}: {path}")
        return frame(_stat_identity(st), data=data)

    # --- after the decision -------------------------------------------------------------------

    def done(self, frame: Frame, record: Record) -> None:
        """Move the file to processed/ or quarantine/ (or delete it), per its journaled verdict: the file that was read,
        never another that has taken its name since (that one is judged as its own part)."""
        v = record.verdict
        self._finish(frame.frame_id, record.seq, v.verdict, v.reason, v.detail, frame.file_identity)

    def _finish(self, name: str, seq: int, verdict: str, reason: Reason | None, detail: str | None, judged: _Identity | None) -> None:
        """Move `name` per the decision if it is still the file `judged` (its identity when read), then judge whatever
        else is under the name now."""
        src = self.root / name
        there = _identity(src)
        moved = False
        if judged is not None and there == judged:
            moved = self._move(name, seq, verdict, reason, detail, judged)
        elif judged is not None and there is not None:
            self._replaced(name, seq)
        # Otherwise nothing was read, or the judged file vanished: nothing to move; the decision is in the journal.
        with self._lock:
            self._tracked.discard(name)
            later = self._again.pop(name, None)
            # Without an arrival meanwhile, a file moved away leaves the name empty (one arriving from now on is news).
            if later is not None or not moved:
                there = _identity(src)
                if there is not None and there != judged:
                    first, complete = later if later is not None else (self._clock(), False)
                    self._queue(name, first, self._clock(), complete=complete)

    def _replaced(self, name: str, seq: int) -> None:
        self.log.warning("file_replaced_before_move", file=name, seq=seq,
                         detail="after this file was read, another took its name (or it was rewritten): what was judged is "
                                "gone, so nothing moves under this decision; the file there now gets its own")

    def _move(self, name: str, seq: int, verdict: str, reason: Reason | None, detail: str | None, judged: _Identity) -> bool:
        """Move (or delete) the judged file per its decision; False when it was not (vanished, replaced, or an error)."""
        src = self.root / name
        try:
            if reason in QUARANTINE_REASONS:
                dest = _unique(self.root / QUARANTINE / name, seq)
                dest.parent.mkdir(parents=True, exist_ok=True)
                if not self._take(src, dest, judged, name, seq):
                    return False
                self._write_reason(dest, seq, reason, detail)
            elif self.settings.after_decision == "delete":
                claim = self.root / f"{_CLAIM}{seq}.{name}"
                if not self._take(src, claim, judged, name, seq):
                    return False
                os.unlink(claim)
            else:
                dest = _unique(self.root / PROCESSED / gate(verdict, self.uncertain_route) / name, seq)
                dest.parent.mkdir(parents=True, exist_ok=True)
                if not self._take(src, dest, judged, name, seq):
                    return False
        except FileNotFoundError:
            return False  # it vanished; its decision (a reject) is in the journal
        except OSError as exc:
            self.log.error("file_not_moved", file=name, seq=seq, error=str(exc), detail="it is not judged again unless replaced")
            with self._lock:
                self._stuck[name] = judged
            return False
        return True

    def _write_reason(self, dest: Path, seq: int, reason: Reason | None, detail: str | None) -> None:
        """Write the `.reason` note beside a quarantined file; a failure is logged, since the file itself has moved."""
        note = dest.with_name(dest.name + ".reason")
        try:
            note.write_text(
                f"reason: {reason.value if reason else None}\ndetail: {detail}\nseq: {seq}\nat: {iso_time(self._clock())}\n",
                encoding="utf-8",
                errors="backslashreplace",  # a detail may quote a file name that is not UTF-8
            )
        except OSError as exc:
            # The move succeeded: reporting file_not_moved here would send the operator looking for a file that is in
            # quarantine. The reason stays in the journal and the decision.
            self.log.error("reason_file_not_written", file=str(dest), seq=seq, reason=reason.value if reason else None, error=str(exc))

    def _take(self, src: Path, dest: Path, judged: _Identity, name: str, seq: int) -> bool:
        """Rename `src` to `dest` and check that what moved is the judged file: another file may have replaced it in
        the instant since it was checked. If so, that one goes back under its name for its own decision."""
        os.rename(src, dest)
        if _identity(dest) == judged:
            return True
        self._replaced(name, seq)
        try:
            os.link(dest, src, follow_symlinks=False)  # never over a third file that has taken the name meanwhile
            os.unlink(dest)
            return False
        except FileExistsError:
            pass
        except OSError:  # a file system without hard links
            if not os.path.lexists(src):
                os.rename(dest, src)
                return False
        # Its name is taken again: the newer file is judged, this one was never read. Kept, out of the verdict folders.
        aside = _unique(self.root / QUARANTINE / f"{Path(name).stem}.unjudged{Path(name).suffix}", seq)
        aside.parent.mkdir(parents=True, exist_ok=True)
        os.rename(dest, aside)
        aside.with_name(aside.name + ".reason").write_text(
            f"reason: none (not judged)\ndetail: replaced under its name twice within moments; never read\nseq: none\n"
            f"at: {iso_time(self._clock())}\n",
            encoding="utf-8",
        )
        self.log.error("file_not_judged", file=name, moved_to=str(aside), detail="replaced under its name twice within moments; never read")
        return False

    def close(self) -> None:
        """Stop watching."""
        if self._watcher is not None:
            self._watcher.close()
            self._watcher = None
        if self._observer is not None:
            self._observer.stop()
            self._observer.join(timeout=5)
            self._observer = None


class _RawInotify:
    """watchdog's inotify reader without its move-pairing queue, which holds every event behind an unpaired
    IN_MOVED_FROM for 0.5 s (each judged file moving to processed/ makes one): events arrive as the kernel sends them."""

    def __init__(self, source: FolderSource) -> None:
        from watchdog.observers.inotify_c import InotifyConstants as C
        from watchdog.observers.inotify_c import InotifyFD

        self.source = source
        self._root = os.fsencode(source.root)
        self._mask = C.IN_MOVED_TO | C.IN_CLOSE_WRITE | C.IN_CREATE | C.IN_MODIFY | C.IN_DELETE_SELF | C.IN_MOVE_SELF | C.IN_ONLYDIR
        self._fd = InotifyFD()
        self._lock = threading.Lock()
        self._wd: Any = None
        try:
            self._wd = self._fd.add_callback(self._root, self._mask, self, "inspector")
        except OSError:
            self._fd.close()
            raise
        self._closing = False
        self.gone = False  # the folder was removed or moved away: `rewatch()` watches the path again once it exists
        self._fd.start()

    def on_event(self, event: Any) -> None:
        """Called on watchdog's inotify thread: hand the name over, nothing else."""
        if event.is_directory or not event.name:
            if event.is_delete_self or event.is_move_self:
                self.on_watch_deleted(event.wd)
            return
        if event.wd != self._wd:
            return  # from the watch of a folder that went away (its events may still be queued)
        path = os.fsdecode(os.path.join(self._root, event.name))
        self.source.arrived(path, complete=bool(event.is_moved_to))

    def on_watch_deleted(self, wd: Any) -> None:
        """The watched folder itself went away (deleted, moved, or its file system unmounted)."""
        with self._lock:
            # A deletion is reported twice (DELETE_SELF, then IGNORED), possibly after the new folder is watched.
            if self._closing or self.gone or wd != self._wd:
                return
            self.gone = True
        # A folder moved elsewhere keeps its watch (the watch follows the inode): drop it, or its files would count.
        self._fd.remove_callbacks([(wd, "inspector")])
        self.source.log.error("folder_gone", folder=str(self.source.root), detail="watched again once the folder exists again")
        self.source.health.set_flag("source_unreadable", "the watched folder was removed or moved")

    def rewatch(self) -> bool:
        """Watch the folder's path again, if it exists now; True once it is watched."""
        with self._lock:
            if self._closing:
                return False
            if not self.gone:
                return True
            try:
                self._wd = self._fd.add_callback(self._root, self._mask, self, "inspector")
            except OSError:
                return False  # not there (again) yet: the next tick tries again
            self.gone = False
        self.source.log.info("folder_watched_again", folder=str(self.source.root), watch="inotify")
        return True

    def on_queue_overflow(self) -> None:
        """The kernel's event queue overflowed."""
        self.source.overflowed()

    def close(self) -> None:
        """Stop the reader thread and close the inotify descriptor."""
        self._closing = True
        self._fd.stop()
        self._fd.join(timeout=5)


class _Handler(FileSystemEventHandler):
    """watchdog (polling) callbacks: run on watchdog's thread, only hand names over."""

    def __init__(self, source: FolderSource) -> None:
        self.source = source

    def on_moved(self, event: FileSystemEvent) -> None:
        if not event.is_directory and event.dest_path:
            self.source.arrived(os.fsdecode(event.dest_path), complete=True)

    def on_created(self, event: FileSystemEvent) -> None:
        if not event.is_directory:
            self.source.arrived(os.fsdecode(event.src_path), complete=False)

    on_modified = on_created
    on_closed = on_created

    def on_deleted(self, event: FileSystemEvent) -> None:
        if event.is_directory and os.fsdecode(event.src_path) == str(self.source.root):
            self.source.polled_folder_gone()


def _not_a_file(mode: int, path: Path) -> str:
    """The reject detail for a name in the folder that is not a regular file (and so was not read)."""
    return f"{file_kind(mode)}, not an image file: not opened (reading it could block or never end): {path}"


def _identity(path: Path | str) -> _Identity | None:
    try:
        st = os.lstat(path)
    except OSError:
        return None
    return _stat_identity(st)


def _stat_identity(st: os.stat_result) -> _Identity:
    return (st.st_ino, st.st_mtime_ns, st.st_size)


def _size(path: Path) -> int:
    try:
        return os.lstat(path).st_size
    except OSError:
        return -1


def _mtime(path: Path) -> int:
    try:
        return os.lstat(path).st_mtime_ns
    except OSError:
        return 0


def _mtime_name(entry: os.DirEntry[str]) -> tuple[float, str]:
    try:
        return entry.stat(follow_symlinks=False).st_mtime, entry.name
    except OSError:
        return 0.0, entry.name


def _unique(dest: Path, seq: int) -> Path:
    """`dest`, or `stem.<seq>.suffix` beside it when a file of that name was judged before."""
    return dest if not os.path.lexists(dest) else dest.with_name(f"{dest.stem}.{seq}{dest.suffix}")
