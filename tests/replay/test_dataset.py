"""How replay finds frames and their labels."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest

from inspector.errors import InputError
from inspector.replay.dataset import collect
from tests.conftest import fifo

ROIS = ("roi1", "roi2", "roi3", "roi4")


def test_layout_labels_frames_in_sorted_order_and_ignores_other_folders(tiles: Path) -> None:
    ds = collect(tiles)
    assert ds.labelled_by == "layout" and ds.ignored_dirs == ("masks",)
    ids = [i.frame_id for i in ds.items]
    assert ids == sorted(ids) and len(ids) == 20
    crack = next(i for i in ds.items if "crack" in i.frame_id)
    assert (crack.label, crack.defect) == ("ng", "crack")
    assert all(i.label == "ok" and i.defect is None for i in ds.items if i.frame_id.startswith("ok/"))


def test_unlabelled_folders_are_read_recursively_and_non_images_skipped(tmp_path: Path, tiles: Path) -> None:
    (tmp_path / "a" / "b").mkdir(parents=True)
    (tmp_path / "a" / "b" / "x.png").write_bytes((tiles / "ok" / "ok_0000.png").read_bytes())
    (tmp_path / "notes.txt").write_text("hi")
    (tmp_path / ".hidden.png").write_bytes(b"")
    ds = collect(tmp_path)
    assert [i.frame_id for i in ds.items] == ["a/b/x.png"] and ds.skipped_files == ("notes.txt",)
    assert ds.items[0].label is None


def test_a_list_file_names_frames_relative_to_itself(tmp_path: Path, tiles: Path) -> None:
    listing = tmp_path / "batch.txt"
    listing.write_text(f"# morning batch\n{tiles / 'ok' / 'ok_0001.png'}\n\nmissing.png\n")
    ds = collect(listing)
    assert [i.path for i in ds.items] == [tiles / "ok" / "ok_0001.png", tmp_path / "missing.png"]


def test_csv_labels_give_per_roi_labels_and_frame_is_ng_when_any_roi_is(roi_frames: tuple[Path, Path]) -> None:
    root, csv_path = roi_frames
    ds = collect(root, labels_csv=csv_path, roi_names=ROIS)
    assert ds.labelled_by == "csv" and all(i.roi_labels for i in ds.items)
    for item in ds.items:
        assert item.label == ("ng" if any(v == "ng" for _, v in item.roi_labels) else "ok")


@pytest.mark.parametrize(
    ("csv_text", "message"),
    [
        ("frame,roi1,roi2\nframes/000.png,ok,ok\n", r"columns \['roi1', 'roi2'\] do not match the model's ROIs"),
        ("frame,roi1,roi2,roi3,roi4\nframes/000.png,ok,ok,maybe,ok\n", r"labels.csv:2: labels must be ok or ng, got 'maybe'"),
        ("frame,roi1,roi2,roi3,roi4\nframes/000.png,ok,ok\n", "labels.csv:2: expected 5 fields, got 3"),
        ("image;roi1\n", "first line must be the header frame,<roi names...>"),
        ("frame,roi1,roi2,roi3,roi4\nframes/000.png,ok,ok,ok,ok\n", r"none of its 1 rows names a frame being replayed; frame paths are read relative"),
    ],
)
def test_bad_csvs_say_what_was_expected(roi_frames: tuple[Path, Path], tmp_path: Path, csv_text: str, message: str) -> None:
    root, _ = roi_frames
    bad = tmp_path / "labels.csv"
    bad.write_text(csv_text)
    with pytest.raises(InputError, match=message):
        collect(root, labels_csv=bad, roi_names=ROIS)


def test_an_excel_bom_is_read_and_a_frame_labelled_twice_is_refused(roi_frames: tuple[Path, Path]) -> None:
    root, csv_path = roi_frames
    text = csv_path.read_text()
    csv_path.write_bytes(b"\xef\xbb\xbf" + text.encode())  # Excel's "CSV UTF-8"
    try:
        assert collect(root, labels_csv=csv_path, roi_names=ROIS).labelled_by == "csv"
        first = text.splitlines()[1]
        csv_path.write_text(text + first.split(",")[0] + ",ok,ok,ok,ok\n")
        with pytest.raises(InputError, match=rf"labels.csv:{len(text.splitlines()) + 1}: {first.split(',')[0]} is already labelled on line 2"):
            collect(root, labels_csv=csv_path, roi_names=ROIS)
    finally:
        csv_path.write_text(text)


def test_missing_path_and_empty_folder_are_input_errors(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="no such file or folder"):
        collect(tmp_path / "nope")
    with pytest.raises(InputError, match="no images found"):
        collect(tmp_path)


def test_ok_and_ng_folders_in_any_case_are_the_layout_and_labels_are_lowercase(tmp_path: Path, tiles: Path) -> None:
    shutil.copytree(tiles / "ok", tmp_path / "OK")
    shutil.copytree(tiles / "ng", tmp_path / "Ng")
    ds = collect(tmp_path)
    assert ds.labelled_by == "layout" and len(ds.items) == 20 and ds.ignored_dirs == ()
    assert {i.label for i in ds.items if i.frame_id.startswith("OK/")} == {"ok"}
    crack = next(i for i in ds.items if i.frame_id.startswith("Ng/crack/"))
    assert (crack.label, crack.defect) == ("ng", "crack")


def test_images_beside_ok_and_ng_are_listed_and_judged_unlabelled(tmp_path: Path, tiles: Path) -> None:
    shutil.copytree(tiles, tmp_path / "d")
    shutil.copy(tiles / "ok" / "ok_0000.png", tmp_path / "d" / "stray.png")
    judged = collect(tmp_path / "d")
    stray = [i for i in judged.items if i.frame_id == "stray.png"]
    assert judged.loose_files == ("stray.png",)
    assert len(judged.items) == 21 and len(stray) == 1 and stray[0].label is None


def _replay_output(folder: Path, summary: dict) -> None:
    folder.mkdir(parents=True)
    (folder / "decisions.jsonl").write_text('{"schema":"inspector.verdict/1"}\n')
    (folder / "summary.json").write_text(json.dumps(summary))
    (folder / "false_rejects.jpg").write_bytes(b"\xff\xd8\xff sheet \xff\xd9")


def test_outputs_skipped_and_the_out_folder_are_left_out_and_listed(tmp_path: Path, tiles: Path) -> None:
    data = tmp_path / "data"
    shutil.copytree(tiles / "ok", data)
    _replay_output(data / "runs" / "old", {"frames": 12, "replay": {"path": str(data)}})
    _replay_output(data / "other", {"frames": 3})  # another tool's summary: not replay's, so its images stay frames
    (data / "now").mkdir()
    (data / "now" / "x.png").write_bytes((tiles / "ok" / "ok_0000.png").read_bytes())  # this run's --out, not written yet
    ds = collect(data, exclude=(data / "now",))
    assert ds.outputs_skipped == ("now", "runs/old")
    ids = {i.frame_id for i in ds.items}
    assert "other/false_rejects.jpg" in ids and not any(i.startswith(("runs/", "now/")) for i in ids) and len(ids) == 13


def test_a_folder_that_was_its_own_out_keeps_its_frames_but_not_its_report_images(tmp_path: Path, tiles: Path) -> None:
    shutil.copytree(tiles / "ok", tmp_path / "d")
    (tmp_path / "d" / "decisions.jsonl").write_text("{}\n")
    (tmp_path / "d" / "summary.json").write_text(json.dumps({"frames": 12, "replay": {}}))
    (tmp_path / "d" / "missed_ng.jpg").write_bytes(b"\xff\xd8\xff sheet \xff\xd9")
    ds = collect(tmp_path / "d")
    assert len(ds.items) == 12 and ds.outputs_skipped == ("missed_ng.jpg",)


@pytest.mark.parametrize(
    ("listing", "message"),
    [
        ("\ufeffFrame,roi1\nx.png,ok\n", r"looks like a labels CSV \(its first line is the header 'Frame,roi1'\); pass it with --labels"),
        ("# batch 7\na.png\nb.png\n", r"none of its 2 listed images exists; relative paths are read from the list file's folder"),
    ],
)
def test_a_list_that_names_no_image_here_is_refused(tmp_path: Path, listing: str, message: str) -> None:
    (tmp_path / "list.txt").write_text(listing)
    with pytest.raises(InputError, match=message):
        collect(tmp_path / "list.txt")


def test_linked_label_and_defect_folders_are_read_with_their_labels(tmp_path: Path, tiles: Path) -> None:
    data = tmp_path / "data"
    (data / "ng").mkdir(parents=True)
    (data / "ok").symlink_to(tiles / "ok", target_is_directory=True)
    (data / "ng" / "crack").symlink_to(tiles / "ng" / "crack", target_is_directory=True)
    shutil.copytree(tiles / "ng" / "blowhole", data / "ng" / "blowhole")
    ds = collect(data)
    assert ds.labelled_by == "layout" and len(ds.items) == 20 and ds.link_loops == ()
    assert sum(i.label == "ok" for i in ds.items) == 12
    assert {(i.label, i.defect) for i in ds.items if i.frame_id.startswith("ng/crack/")} == {("ng", "crack")}
    assert sum(i.frame_id.startswith("ng/crack/") for i in ds.items) == 4


def test_a_link_back_to_a_folder_already_read_is_reported_and_not_read_twice(tmp_path: Path, tiles: Path) -> None:
    data = tmp_path / "data"
    shutil.copytree(tiles, data)
    (data / "ok" / "again").symlink_to(data / "ok", target_is_directory=True)  # its own parent: endless without a guard
    (data / "ng" / "crack_too").symlink_to(data / "ng" / "crack", target_is_directory=True)
    ds = collect(data)
    assert ds.link_loops == ("ng/crack_too", "ok/again")
    assert len(ds.items) == 20 and not any(i.frame_id.startswith(("ok/again/", "ng/crack_too/")) for i in ds.items)


def test_a_link_met_before_the_folder_it_points_to_does_not_take_its_frames_or_label(tmp_path: Path, tiles: Path) -> None:
    data = tmp_path / "data"
    shutil.copytree(tiles, data)
    (data / "ok" / "batch7").mkdir()
    (data / "ok" / "batch2").mkdir()
    for name in ("a.png", "b.png"):
        shutil.copy(next((data / "ok").glob("*.png")), data / "ok" / "batch7" / name)
    shutil.copy(next((data / "ok").glob("*.png")), data / "ok" / "batch2" / "c.png")
    (data / "latest").symlink_to(data / "ok" / "batch7", target_is_directory=True)  # beside ok/ and ng/, sorted first
    (data / "ng" / "crack" / "more").symlink_to(data / "ok" / "batch2", target_is_directory=True)  # ng/ is walked before ok/
    ds = collect(data)
    by_id = {i.frame_id: i for i in ds.items}
    assert {f: by_id[f].label for f in ("ok/batch7/a.png", "ok/batch7/b.png", "ok/batch2/c.png")} == dict.fromkeys(
        ("ok/batch7/a.png", "ok/batch7/b.png", "ok/batch2/c.png"), "ok")
    assert not any(f.startswith(("latest/", "ng/crack/more/")) for f in by_id)
    assert ds.link_loops == ("ng/crack/more",) and "latest" in ds.ignored_dirs
    unlabelled = tmp_path / "flat"
    (unlabelled / "zzz" / "sub").mkdir(parents=True)
    shutil.copy(next((data / "ok").glob("*.png")), unlabelled / "zzz" / "sub" / "x.png")
    (unlabelled / "aaa").symlink_to(unlabelled / "zzz" / "sub", target_is_directory=True)
    flat = collect(unlabelled)
    assert [i.frame_id for i in flat.items] == ["zzz/sub/x.png"] and flat.link_loops == ("aaa",)


def test_images_that_are_no_regular_files_are_still_frames(tmp_path: Path, tiles: Path) -> None:
    data = tmp_path / "data"
    shutil.copytree(tiles, data)
    (data / "ng" / "crack" / "gone.png").symlink_to(tmp_path / "nonexistent.png")
    fifo(data / "ok" / "fifo.png")
    (data / "notes.txt").symlink_to(tmp_path / "nonexistent.txt")
    ds = collect(data)
    by_id = {i.frame_id: i for i in ds.items}
    assert len(ds.items) == 22 and ds.skipped_files == ("notes.txt",)
    assert (by_id["ng/crack/gone.png"].label, by_id["ng/crack/gone.png"].defect) == ("ng", "crack")
    assert by_id["ok/fifo.png"].label == "ok"


def test_a_folder_that_cannot_be_listed_is_refused_not_skipped(tmp_path: Path, tiles: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    data = tmp_path / "data"
    shutil.copytree(tiles, data)
    locked = data / "ng" / "crack"
    real_scandir = os.scandir

    def scandir(path: object = ".") -> object:
        # Root reads every folder whatever its mode, so a chmod 000 folder cannot stand in for a locked one here.
        if Path(os.fspath(path)) == locked:
            raise PermissionError(13, "Permission denied", os.fspath(path))
        return real_scandir(path)

    monkeypatch.setattr(os, "scandir", scandir)
    with pytest.raises(InputError, match=r"crack: cannot list this folder \(Permission denied\); its images would not be judged"):
        collect(data)
