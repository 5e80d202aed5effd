"""The watched folder on real files: complete files only, arrival order, refusals, and what happens after the decision."""

from __future__ import annotations

import io
import json
import os
import stat
import threading
import time
from pathlib import Path

import pytest
import structlog

from inspector.config import SourceSettings
from inspector.decision import Latency, Verdict
from inspector.frame import Frame, Reason
from inspector.health import Health
from inspector.journal import Journal, Pending, Record
from inspector.logs import configure_logging
from inspector.sources.folder import FolderSource
from tests.mqtt_helpers import wait_until


class Running:
    """A FolderSource whose frames() runs on a thread, collecting what it yields."""

    def __init__(self, folder: Path, **settings: object) -> None:
        self.source = FolderSource(
            SourceSettings(kind="folder", path=folder, **settings), health=Health(), log=structlog.get_logger("test")
        )
        self.frames: list[tuple[float, Frame]] = []
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run)
        self.thread.start()
        assert wait_until(lambda: self.source.mode in ("inotify", "poll"), 5)
        time.sleep(0.05)

    def _run(self) -> None:
        for frame in self.source.frames(self.stop):
            if frame is not None:
                self.frames.append((time.monotonic(), frame))

    def names(self) -> list[str]:
        return [f.frame_id for _, f in self.frames]

    def close(self) -> None:
        self.stop.set()
        self.thread.join(5)
        self.source.close()


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    (tmp_path / "in").mkdir()
    return tmp_path / "in"


def _drop(folder: Path, name: str, data: bytes = b"\x89PNG....") -> float:
    """Write beside the folder, then rename in: complete at once. Returns the monotonic time of the rename."""
    tmp = folder.parent / f"staging-{name}"
    tmp.write_bytes(data)
    t = time.monotonic()
    tmp.rename(folder / name)
    return t


def _record(frame: Frame, seq: int, verdict: str = "pass", reason: Reason | None = None, detail: str = "why") -> Record:
    v = Verdict(frame.frame_id, frame.source, frame.captured_at, frame.captured_at, verdict, reason, 0.5, (), "0" * 64, "cpu",
                Latency(), detail=detail if reason else None)
    return Record(seq, Pending(v, "s", frame.part_id, frame.captured_at + 1, frame.file_identity), {}, "{}")


@pytest.mark.parametrize(("watch", "settle_ms"), [("inotify", 5000), ("poll", 200)])
def test_a_renamed_file_counts_at_once_and_order_is_arrival(folder: Path, watch: str, settle_ms: int) -> None:
    run = Running(folder, watch=watch, settle_ms=settle_ms, poll_interval_ms=20)
    try:
        t0 = _drop(folder, "b.png")
        _drop(folder, "a.png")
        if watch == "inotify":
            assert wait_until(lambda: len(run.frames) == 2, 1.0), "a rename is complete: no settle wait"
            assert run.frames[0][0] - t0 < 0.2
            assert run.names() == ["b.png", "a.png"], "arrival order, not name order"
        else:
            # Polling sees a rename from another folder as a new file: it waits for the size to settle.
            assert wait_until(lambda: len(run.frames) == 2, 5), run.names()
        f = run.frames[0][1]
        assert f.data == b"\x89PNG...." and f.part_id == "b" and f.source == str(folder.resolve() / "b.png")
    finally:
        run.close()


def test_a_file_written_in_place_counts_only_once_its_size_holds(folder: Path) -> None:
    run = Running(folder, settle_ms=400)
    try:
        with (folder / "slow.png").open("wb") as f:
            for i in range(4):
                if i:
                    time.sleep(0.15)
                f.write(b"x" * 100)
                f.flush()
            written = time.monotonic()
        assert wait_until(lambda: run.frames, 3)
        at, frame = run.frames[0]
        assert at - written >= 0.35, "not before the size held still for settle_ms"
        assert frame.data == b"x" * 400, "the whole file, not a partial one"
    finally:
        run.close()


def test_temporary_names_subfolders_and_processed_files_are_not_frames(folder: Path) -> None:
    logged = io.StringIO()
    configure_logging("info", "json", stream=logged)
    run = Running(folder, settle_ms=50, rescan_s=0.5)
    try:
        _drop(folder, ".hidden.png")
        _drop(folder, "x.png.tmp")
        _drop(folder, "y.part")
        (folder / "sub").mkdir()
        (folder / "sub" / "deep.png").write_bytes(b"1")
        _drop(folder, "real.png")
        assert wait_until(lambda: run.frames, 3)
        time.sleep(1.2)  # two rescans
        assert run.names() == ["real.png"]
        assert "file_found_by_rescan" not in logged.getvalue(), "ignored names are not news at every rescan"
    finally:
        run.close()


def test_a_symlink_is_refused_with_a_reason(folder: Path, tmp_path: Path) -> None:
    (tmp_path / "secret.png").write_bytes(b"outside")
    run = Running(folder, settle_ms=50)
    try:
        os.symlink(tmp_path / "secret.png", folder / "link.png")
        assert wait_until(lambda: run.frames, 3)
        frame = run.frames[0][1]
        assert frame.fault is Reason.REFUSED and frame.data is None and "symlink refused" in (frame.read_error or "")
    finally:
        run.close()


@pytest.mark.parametrize("at_start", [False, True])
def test_a_named_pipe_is_rejected_unread_and_quarantined_without_blocking_the_folder(folder: Path, at_start: bool) -> None:
    if at_start:
        os.mkfifo(folder / "pipe.png")
    run = Running(folder, settle_ms=50, rescan_s=0.5)
    try:
        if not at_start:
            os.mkfifo(folder / "pipe.png")
        _drop(folder, "after.png")
        assert wait_until(lambda: len(run.frames) == 2, 3), "the pipe was never opened: nothing waits on a writer"
        frames = {f.frame_id: f for _, f in run.frames}
        pipe = frames["pipe.png"]
        assert pipe.data is None and pipe.fault is None, "an `unreadable` reject"
        assert "named pipe" in (pipe.read_error or "") and "not opened" in (pipe.read_error or "")
        run.source.done(pipe, _record(pipe, 1, "reject", Reason.UNREADABLE))
        time.sleep(1.2)  # two rescans: it is decided once, not found again and again
        assert sorted(run.names()) == ["after.png", "pipe.png"]
    finally:
        run.close()
    assert stat.S_ISFIFO(os.lstat(folder / "quarantine" / "pipe.png").st_mode)
    assert "reason: unreadable" in (folder / "quarantine" / "pipe.png.reason").read_text()


def test_files_present_at_start_are_judged_oldest_first_unless_configured_not_to(folder: Path) -> None:
    for i, name in enumerate(["new.png", "old.png"]):
        (folder / name).write_bytes(b"1")
        os.utime(folder / name, (1000 - i * 100, 1000 - i * 100))
    run = Running(folder, settle_ms=50)
    try:
        assert wait_until(lambda: len(run.frames) == 2, 3)
        assert run.names() == ["old.png", "new.png"]
        _drop(folder, "live.png")
        assert wait_until(lambda: len(run.frames) == 3, 3)
        # Files that waited on disk may wait for inference too; a live arrival keeps the overload policy.
        assert [f.backlog for _, f in run.frames] == [True, True, False]
    finally:
        run.close()
    (folder / "live.png").unlink()
    skipping = Running(folder, settle_ms=50, process_existing=False)
    try:
        _drop(folder, "fresh.png")
        assert wait_until(lambda: skipping.frames, 3)
        time.sleep(0.3)
        assert skipping.names() == ["fresh.png"]
        # A new part under a skipped file's name is a new file: it gets its decision.
        _drop(folder, "old.png", b"\x89PNG new part")
        assert wait_until(lambda: len(skipping.frames) == 2, 3)
        assert skipping.names() == ["fresh.png", "old.png"] and skipping.frames[1][1].data == b"\x89PNG new part"
        assert not any(f.backlog for _, f in skipping.frames)
    finally:
        skipping.close()


def test_a_file_that_waited_before_it_was_seen_carries_its_write_time_as_capture_time(folder: Path) -> None:
    (folder / "waited.png").write_bytes(b"1")
    written = time.time() - 30  # e.g. dropped while the daemon was down
    os.utime(folder / "waited.png", (written, written))
    run = Running(folder, settle_ms=50)
    try:
        assert wait_until(lambda: run.frames, 3)
        assert run.frames[0][1].captured_at == pytest.approx(written, abs=1e-3)
        _drop(folder, "fresh.png")
        assert wait_until(lambda: len(run.frames) == 2, 3)
        assert abs(run.frames[1][1].captured_at - time.time()) < 2, "a file seen as it arrives keeps the time it arrived"
    finally:
        run.close()


def test_after_the_decision_files_move_by_verdict_quarantine_gets_a_reason_and_names_never_clash(folder: Path) -> None:
    run = Running(folder, settle_ms=50)
    try:
        for name in ("p.png", "r.png", "q.png"):
            _drop(folder, name)
        assert wait_until(lambda: len(run.frames) == 3, 3)
        frames = {f.frame_id: f for _, f in run.frames}
        run.source.done(frames["p.png"], _record(frames["p.png"], 1))
        run.source.done(frames["r.png"], _record(frames["r.png"], 2, "reject", Reason.SCORE))
        run.source.done(frames["q.png"], _record(frames["q.png"], 3, "reject", Reason.TRUNCATED))
        _drop(folder, "p.png")  # the acquisition program reuses a name
        assert wait_until(lambda: len(run.frames) == 4, 3)
        run.source.done(run.frames[3][1], _record(run.frames[3][1], 4))
    finally:
        run.close()
    assert sorted(p.name for p in (folder / "processed" / "pass").iterdir()) == ["p.4.png", "p.png"]
    assert [p.name for p in (folder / "processed" / "reject").iterdir()] == ["r.png"]
    assert "reason: truncated\ndetail: why\nseq: 3" in (folder / "quarantine" / "q.png.reason").read_text()
    assert [p.name for p in folder.iterdir() if p.is_file()] == []


def test_a_reason_note_that_cannot_be_written_is_logged_as_such_and_the_file_still_counts_as_moved(folder: Path) -> None:
    (folder / "quarantine" / "q.png.reason").mkdir(parents=True)  # a directory where the note belongs
    logged = io.StringIO()
    configure_logging("info", "json", stream=logged)
    run = Running(folder, settle_ms=50, rescan_s=0.5)
    try:
        _drop(folder, "q.png")
        assert wait_until(lambda: run.frames, 3)
        run.source.done(run.frames[0][1], _record(run.frames[0][1], 1, "reject", Reason.TRUNCATED))
        time.sleep(0.8)  # a rescan would judge it again if it were still there
    finally:
        run.close()
    events = [json.loads(line) for line in logged.getvalue().splitlines()]
    assert [e["seq"] for e in events if e["event"] == "reason_file_not_written"] == [1]
    assert not [e for e in events if e["event"] == "file_not_moved"]
    assert (folder / "quarantine" / "q.png").read_bytes() == b"\x89PNG...."
    assert run.names() == ["q.png"]


def test_a_file_name_that_is_not_utf8_still_gets_its_reason_note(folder: Path) -> None:
    name = os.fsdecode(b"bad\xff.png")  # bytes a Windows share or a camera's firmware may put in a name
    run = Running(folder, settle_ms=50)
    try:
        _drop(folder, name)
        assert wait_until(lambda: run.frames, 3)
        frame = run.frames[0][1]
        run.source.done(frame, _record(frame, 1, "reject", Reason.UNREADABLE, detail=f"cannot read {folder / name}"))
    finally:
        run.close()
    note = (folder / "quarantine" / (name + ".reason")).read_text(encoding="utf-8")
    assert "reason: unreadable" in note and "bad\\udcff.png" in note


def test_a_file_that_could_not_be_moved_is_not_judged_twice_but_its_replacement_is(folder: Path) -> None:
    (folder / "processed").mkdir()
    (folder / "processed" / "pass").write_text("a file where the processed/pass/ folder belongs")
    run = Running(folder, settle_ms=50, rescan_s=0.5)
    try:
        _drop(folder, "a.png", b"\x89PNG first")
        assert wait_until(lambda: run.frames, 3)
        run.source.done(run.frames[0][1], _record(run.frames[0][1], 1))
        time.sleep(1.2)  # rescans see it still there
        assert run.names() == ["a.png"]
        _drop(folder, "a.png", b"\x89PNG second part")
        assert wait_until(lambda: len(run.frames) == 2, 3)
        assert run.frames[1][1].data == b"\x89PNG second part"
    finally:
        run.close()


def test_delete_mode_deletes_judged_files_but_still_quarantines_bad_ones(folder: Path) -> None:
    run = Running(folder, settle_ms=50, after_decision="delete")
    try:
        _drop(folder, "a.png")
        _drop(folder, "b.png")
        assert wait_until(lambda: len(run.frames) == 2, 3)
        run.source.done(run.frames[0][1], _record(run.frames[0][1], 1))
        run.source.done(run.frames[1][1], _record(run.frames[1][1], 2, "reject", Reason.EMPTY_FILE))
    finally:
        run.close()
    assert not (folder / "processed").exists() and not (folder / "a.png").exists()
    assert (folder / "quarantine" / "b.png").exists()


def test_a_file_that_replaces_a_name_being_judged_is_judged_as_its_own_part_and_only_the_judged_file_moves(folder: Path) -> None:
    logged = io.StringIO()
    configure_logging("info", "json", stream=logged)
    run = Running(folder, settle_ms=50, rescan_s=600)  # no rescan comes to the rescue: the arrival is not forgotten
    try:
        _drop(folder, "img.png", b"\x89PNG first: NG")
        assert wait_until(lambda: run.frames, 3)
        # While its decision is in flight the acquisition program reuses the name, three times: the first two are
        # replaced before anything reads them (as far as the daemon can know they never existed); the last is a part.
        for i in range(3):
            _drop(folder, "img.png", b"\x89PNG later %d" % i)
        time.sleep(0.3)
        assert run.names() == ["img.png"], "one file per name in flight: the next waits for this decision"
        first = run.frames[0][1]
        run.source.done(first, _record(first, 1, "reject", Reason.SCORE))
        assert wait_until(lambda: len(run.frames) == 2, 3), "the file that took the name is judged as its own part"
        second = run.frames[1][1]
        assert second.data == b"\x89PNG later 2"
        run.source.done(second, _record(second, 2))
        time.sleep(0.3)
        assert len(run.frames) == 2, "each file read gets one decision, not two"
    finally:
        run.close()
    assert not (folder / "processed" / "reject").exists(), "the judged NG file was overwritten: nothing moves under its reject"
    assert [p.read_bytes() for p in (folder / "processed" / "pass").iterdir()] == [b"\x89PNG later 2"]
    replaced = [json.loads(line) for line in logged.getvalue().splitlines() if '"file_replaced_before_move"' in line]
    assert [(e["file"], e["seq"]) for e in replaced] == [("img.png", 1)]


def test_a_file_swapped_in_between_the_check_and_the_move_goes_back_and_gets_its_own_decision(
    folder: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    run = Running(folder, settle_ms=50, rescan_s=600)
    real_rename = os.rename
    swapped = []

    def rename_after_a_swap(src: object, dst: object, *args: object, **kw: object) -> None:
        if not swapped and Path(str(src)) == folder.resolve() / "img.png":  # the move of the judged file
            swapped.append(1)
            (folder.parent / "swap").write_bytes(b"\x89PNG swapped in")
            real_rename(folder.parent / "swap", src)  # another part takes the name the instant before
        real_rename(src, dst, *args, **kw)

    try:
        _drop(folder, "img.png", b"\x89PNG judged: NG")
        assert wait_until(lambda: run.frames, 3)
        monkeypatch.setattr(os, "rename", rename_after_a_swap)
        first = run.frames[0][1]
        run.source.done(first, _record(first, 1, "reject", Reason.SCORE))
        monkeypatch.setattr(os, "rename", real_rename)
        assert swapped
        assert wait_until(lambda: len(run.frames) == 2, 3), "put back under its name and judged"
        second = run.frames[1][1]
        assert second.data == b"\x89PNG swapped in"
        run.source.done(second, _record(second, 2))
    finally:
        monkeypatch.setattr(os, "rename", real_rename)
        run.close()
    assert list((folder / "processed" / "reject").iterdir()) == [], "never under the decision made on another file"
    assert [p.read_bytes() for p in (folder / "processed" / "pass").iterdir()] == [b"\x89PNG swapped in"]


def test_a_file_replaced_between_the_lstat_and_the_open_is_judged_once_as_what_was_opened(
    folder: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    run = Running(folder, settle_ms=50, rescan_s=600)
    real_open = os.open
    swapped = []

    def open_after_a_swap(path: object, *args: object, **kw: object) -> int:
        if not swapped and Path(str(path)) == folder.resolve() / "img.png":
            swapped.append(1)
            (folder.parent / "swap").write_bytes(b"\x89PNG the one opened")
            os.rename(folder.parent / "swap", folder / "img.png")
        return real_open(path, *args, **kw)

    monkeypatch.setattr(os, "open", open_after_a_swap)
    try:
        _drop(folder, "img.png", b"\x89PNG seen by lstat only")
        assert wait_until(lambda: run.frames, 3)
        monkeypatch.setattr(os, "open", real_open)
        frame = run.frames[0][1]
        assert swapped and frame.data == b"\x89PNG the one opened"
        run.source.done(frame, _record(frame, 1))
        time.sleep(0.3)
        assert len(run.frames) == 1, "what was opened was judged and moved: not judged again"
    finally:
        monkeypatch.setattr(os, "open", real_open)
        run.close()
    assert [p.read_bytes() for p in (folder / "processed" / "pass").iterdir()] == [b"\x89PNG the one opened"]


def test_delete_mode_deletes_only_the_judged_file_not_one_that_replaced_it(folder: Path) -> None:
    run = Running(folder, settle_ms=50, rescan_s=600, after_decision="delete")
    try:
        _drop(folder, "a.png", b"\x89PNG judged")
        assert wait_until(lambda: run.frames, 3)
        _drop(folder, "a.png", b"\x89PNG next part")
        first = run.frames[0][1]
        run.source.done(first, _record(first, 1))
        assert wait_until(lambda: len(run.frames) == 2, 3)
        assert (folder / "a.png").read_bytes() == b"\x89PNG next part", "not deleted under the first file's decision"
        run.source.done(run.frames[1][1], _record(run.frames[1][1], 2))
    finally:
        run.close()
    assert [p.name for p in folder.iterdir()] == []


def test_recovery_in_delete_mode_finishes_a_file_claimed_for_deletion_before_a_crash(folder: Path, tmp_path: Path) -> None:
    (folder / ".inspector-deleting.1.decided.png").write_bytes(b"1")  # the crash came between claim and unlink
    journal = Journal(tmp_path / "j.sqlite3")
    frame = Frame("decided.png", str(folder.resolve() / "decided.png"), time.time() + 1)
    journal.append([_record(frame, 0).pending])
    source = FolderSource(SourceSettings(kind="folder", path=folder, after_decision="delete"), health=Health(),
                          log=structlog.get_logger("test"))
    assert source.recover(journal.decided) == 1
    assert list(folder.iterdir()) == []


def test_recovery_moves_files_decided_before_a_crash_without_judging_them_again(folder: Path, tmp_path: Path) -> None:
    (folder / "decided.png").write_bytes(b"1")
    (folder / "waiting.png").write_bytes(b"2")
    journal = Journal(tmp_path / "j.sqlite3")
    frame = Frame("decided.png", str(folder.resolve() / "decided.png"), time.time() + 1)
    journal.append([_record(frame, 0, "reject", Reason.SCORE).pending])
    source = FolderSource(SourceSettings(kind="folder", path=folder), health=Health(), log=structlog.get_logger("test"))
    assert source.recover(journal.decided) == 1
    assert (folder / "processed" / "reject" / "decided.png").exists()
    assert (folder / "waiting.png").exists()


@pytest.mark.parametrize("watch", ["inotify", "poll"])
@pytest.mark.parametrize("how", ["removed", "moved away"])
def test_a_watched_folder_removed_and_made_again_is_watched_again(folder: Path, tmp_path: Path, how: str, watch: str) -> None:
    logged = io.StringIO()
    configure_logging("info", "json", stream=logged)
    # No rescan comes to the rescue in this test: the files come by event (or poll), or not at all.
    run = Running(folder, watch=watch, settle_ms=50, rescan_s=600, poll_interval_ms=20)
    try:
        _drop(folder, "before.png")
        assert wait_until(lambda: len(run.frames) == 1, 2)
        if how == "removed":
            (folder / "before.png").unlink()
            folder.rmdir()
        else:
            folder.rename(tmp_path / "old-in")
        assert wait_until(lambda: '"folder_gone"' in logged.getvalue(), 2)
        folder.mkdir()
        _drop(folder, "after.png")
        assert wait_until(lambda: len(run.frames) == 2, 2), "the new folder's files arrive by event, not at a rescan"
        assert run.names() == ["before.png", "after.png"]
        assert wait_until(lambda: '"folder_watched_again"' in logged.getvalue(), 2)
        _drop(folder, "later.png")
        assert wait_until(lambda: len(run.frames) == 3, 1)
        if how == "moved away":
            _drop(tmp_path / "old-in", "elsewhere.png")
            time.sleep(0.3)
            assert run.names() == ["before.png", "after.png", "later.png"], "the folder moved away is not watched any more"
        assert logged.getvalue().count('"folder_gone"') == 1, "one event per loss"
    finally:
        run.close()


def test_an_unreadable_folder_is_logged_once_per_outage(folder: Path, tmp_path: Path) -> None:
    logged = io.StringIO()
    configure_logging("info", "json", stream=logged)
    run = Running(folder, watch="poll", settle_ms=50, rescan_s=0.5, poll_interval_ms=20)
    try:
        folder.rename(tmp_path / "away")
        time.sleep(2.2)  # four rescans find no folder
        assert logged.getvalue().count('"folder_unreadable"') == 1
        assert run.source.health.flags().keys() == {"source_unreadable"}
        (tmp_path / "away").rename(folder)
        assert wait_until(lambda: '"folder_readable"' in logged.getvalue(), 3)
        assert run.source.health.flags() == {}
    finally:
        run.close()


def test_recovery_moves_only_the_file_decided_not_one_renamed_over_it_before_the_crash(folder: Path, tmp_path: Path) -> None:
    judged = folder / "img.png"
    judged.write_bytes(b"\x89PNG judged NG")
    st = judged.stat()
    journal = Journal(tmp_path / "j.sqlite3")
    frame = Frame("img.png", str(folder.resolve() / "img.png"), time.time() + 1,
                  file_identity=(st.st_ino, st.st_mtime_ns, st.st_size))
    journal.append([_record(frame, 0, "reject", Reason.SCORE).pending])
    # Before the crash: a new part, written earlier (its time predates the decision), renamed over the judged file.
    newer = tmp_path / "incoming.png"
    newer.write_bytes(b"\x89PNG a new part")
    os.utime(newer, (st.st_atime - 60, st.st_mtime - 60))
    newer.rename(judged)
    source = FolderSource(SourceSettings(kind="folder", path=folder), health=Health(), log=structlog.get_logger("test"))
    assert source.recover(journal.decided) == 0, "not under the reject of the file it replaced"
    assert judged.read_bytes() == b"\x89PNG a new part" and not (folder / "processed").exists()
