"""`inspector replay` end to end, in-process through the CLI, on real exported models and real image files."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from inspector.cli import main
from tests.conftest import fifo
from tests.replay.test_report import ROIS, read_image, red_rois


def _replay(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    code = main(["replay", *args])
    out, err = capsys.readouterr()
    return code, out, err


def _decisions(out_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (out_dir / "decisions.jsonl").read_text().splitlines()]


@pytest.fixture()
def tiles_with_bad_files(tiles: Path, tmp_path: Path) -> Path:
    root = tmp_path / "batch"
    shutil.copytree(tiles, root)
    (root / "ok" / "zero.png").write_bytes(b"")
    good = (root / "ok" / "ok_0000.png").read_bytes()
    (root / "ng" / "crack" / "partial.png").write_bytes(good[: len(good) // 2])
    return root


def test_replay_of_a_resnet_gives_one_decision_per_frame_and_a_summary(
    models: dict[str, Path], tiles_with_bad_files: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "out"
    code, stdout, _ = _replay(capsys, str(tiles_with_bad_files), "--model", str(models["resnet"]), "--out", str(out))
    assert code == 0
    records = _decisions(out)
    assert len(records) == 22  # 20 images + 2 broken files, nothing skipped and nothing twice
    assert len({r["frame_id"] for r in records}) == 22
    by_id = {r["frame_id"]: r for r in records}
    assert (by_id["ok/zero.png"]["verdict"], by_id["ok/zero.png"]["reason"]) == ("reject", "empty_file")
    assert (by_id["ng/crack/partial.png"]["verdict"], by_id["ng/crack/partial.png"]["reason"]) == ("reject", "truncated")
    for r in records:
        if r["score"] is not None:
            assert r["verdict"] == ("reject" if r["score"] >= r["threshold"] else "pass")
        assert set(r["latency_ms"]) == {"decode", "preprocess", "inference", "total"}
        assert r["label"]["frame"] in ("ok", "ng")
    summary = json.loads((out / "summary.json").read_text())
    assert summary["frames"] == 22 and summary["passed"] + summary["rejected"] == 22
    assert summary["reasons"]["empty_file"] == 1 and summary["reasons"]["truncated"] == 1
    m = summary["frame_metrics"]
    assert (m["n_ok"], m["n_ng"]) == (13, 9)
    assert 0.0 <= m["roc_auc"] <= 1.0 and set(m["per_defect"]) == {"crack", "blowhole"}
    assert summary["model"]["provider"] == "cpu" and summary["latency_ms"]["total"]["p99"] > 0
    assert (out / "report.html").is_file()
    assert "decisions:" in stdout and "ROC-AUC" in stdout


def test_known_answer_model_finds_every_defect_and_what_if_reuses_scores(
    models: dict[str, Path], tiles: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "out"
    code, stdout, _ = _replay(capsys, str(tiles), "--model", str(models["dark"]), "--out", str(out), "--what-if", "0.001,0.5,0.99999")
    assert code == 0
    m = json.loads((out / "summary.json").read_text())["frame_metrics"]
    assert (m["ng_recall"], m["false_reject_rate"], m["roc_auc"]) == (1.0, 0.0, 1.0)
    assert m["per_defect"]["crack"]["recall"] == 1.0
    rows = {r["threshold"]: r for r in json.loads((out / "summary.json").read_text())["what_if"]}
    assert rows[0.5]["ng_recall"] == 1.0 and rows[0.99999]["ng_recall"] < 1.0
    assert "what-if" in stdout and "0.99999" in stdout


def test_threshold_flag_changes_verdicts_without_touching_the_config(
    models: dict[str, Path], tiles: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, _, _ = _replay(capsys, str(tiles), "--model", str(models["dark"]), "--out", str(tmp_path / "o"), "--threshold", "0", "--no-report")
    assert code == 0
    records = _decisions(tmp_path / "o")
    assert {r["verdict"] for r in records} == {"reject"} and {r["threshold"] for r in records} == {0.0}
    assert not (tmp_path / "o" / "report.html").exists()


def test_csv_labels_give_roi_level_figures(
    models: dict[str, Path], roi_frames: tuple[Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    root, csv_path = roi_frames
    out = tmp_path / "out"
    code, _, _ = _replay(capsys, str(root), "--model", str(models["rois"]), "--labels", str(csv_path), "--out", str(out))
    assert code == 0
    summary = json.loads((out / "summary.json").read_text())
    r = summary["roi_metrics"]
    assert r["n_ok"] + r["n_ng"] == 40 and set(r["per_roi"]) == {"roi1", "roi2", "roi3", "roi4"}
    assert r["ng_recall"] == 1.0 and r["false_reject_rate"] == 0.0
    first = _decisions(out)[0]
    assert set(first["label"]["rois"]) == {"roi1", "roi2", "roi3", "roi4"} and len(first["rois"]) == 4


def test_config_file_and_per_roi_thresholds_are_honoured(
    models: dict[str, Path], roi_frames: tuple[Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    root, _ = roi_frames
    cfg = tmp_path / "station.yaml"
    cfg.write_text("model:\n  providers: [cpu]\ndecision:\n  threshold: 0.5\n  roi_thresholds: {roi2: 0.0}\n")
    code, _, _ = _replay(capsys, str(root), "--model", str(models["rois"]), "--config", str(cfg), "--out", str(tmp_path / "o"))
    assert code == 0
    for r in _decisions(tmp_path / "o"):
        roi2 = next(x for x in r["rois"] if x["name"] == "roi2")
        assert roi2["threshold"] == 0.0 and roi2["verdict"] == "reject" and r["verdict"] == "reject"


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["{tiles}", "--model", "{missing}"], "model file not found"),
        (["{tmp}/nowhere", "--model", "{dark}"], "no such file or folder"),
        (["{tiles}"], "no model given: pass --model PATH or set model.path"),
        (["{tiles}", "--model", "{dark}", "--labels", "{tmp}/none.csv"], "--labels"),
        (["{tiles}", "--model", "{bare}"], "no inspector manifest"),
        (["{tiles}", "--model", "{dark}", "--config", "{tmp}/absent.yaml"], "config file not found"),
    ],
)
def test_bad_input_is_a_clear_message_exit_2_and_nothing_written(
    models: dict[str, Path], tiles: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], args: list[str], message: str
) -> None:
    fill = {"tiles": tiles, "tmp": tmp_path, "dark": models["dark"], "bare": models["bare"], "missing": tmp_path / "m.onnx"}
    out = tmp_path / "out"
    code, _, err = _replay(capsys, *[a.format(**fill) for a in args], "--out", str(out))
    assert code == 2
    assert message in err and "Traceback" not in err
    assert not out.exists()


def test_an_out_folder_that_cannot_be_made_is_refused_before_the_model_loads(
    models: dict[str, Path], tiles: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, _, err = _replay(capsys, str(tiles), "--model", str(models["dark"]), "--out", str(models["dark"] / "replay"))
    assert code == 2
    assert f"--out {models['dark'] / 'replay'}: {models['dark']} is a file, so no folder can be made under it" in err
    assert "model_loaded" not in err and "Traceback" not in err


def test_a_bad_flag_value_is_a_usage_error_naming_the_range(models: dict[str, Path], tiles: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        main(["replay", str(tiles), "--model", str(models["dark"]), "--threshold", "1.5"])
    assert info.value.code == 2
    assert "expected a number in 0..1, got 1.5" in capsys.readouterr().err


def test_a_threshold_finer_than_published_scores_is_refused_and_nothing_written(
    models: dict[str, Path], tiles: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # At 0.4446995 a score of 0.44469953 is rejected yet published as 0.444699: below its own threshold in decisions.jsonl.
    for flag in (["--threshold", "0.4446995"], ["--what-if", "0.3,0.4446995"]):
        with pytest.raises(SystemExit) as info:
            main(["replay", str(tiles), "--model", str(models["dark"]), "--out", str(tmp_path / "o"), *flag])
        assert info.value.code == 2
        assert "expected a number in 0..1 with at most 6 decimals (scores are published with 6), got 0.4446995" in capsys.readouterr().err
        assert not (tmp_path / "o").exists()


def test_faults_are_listed_apart_from_score_and_uncertain_verdicts(
    models: dict[str, Path], tiles_with_bad_files: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from inspector.calibration.record import write_record
    from inspector.digest import file_sha256
    from tests.conftest import calibration_record

    record = tmp_path / "s1.yaml"  # NG tiles score in [0.5, 0.999999): verdict uncertain
    write_record(record, calibration_record({"*": (0.5, (0.5, 0.999999))}, sha256=file_sha256(models["dark"])))
    out = tmp_path / "out"
    code, stdout, _ = _replay(capsys, str(tiles_with_bad_files), "--model", str(models["dark"]), "--calibration", str(record), "--out", str(out))
    assert code == 0
    first = stdout.splitlines()[0]
    assert first.endswith("of which uncertain 8  faulted 2 (empty_file 1, truncated 1)"), first
    page = (out / "report.html").read_text()
    assert "<td>Faulted</td><td>2 (empty_file 1, truncated 1)</td>" in page
    assert "<td>Of which uncertain (a score in the uncertain band)</td><td>8</td>" in page
    summary = json.loads((out / "summary.json").read_text())
    assert summary["reasons"] == {"empty_file": 1, "truncated": 1, "uncertain": 8}
    assert summary["fault_reasons"] == {"empty_file": 1, "truncated": 1}

    # Without a band, rejects by score are no faults either.
    code, stdout, _ = _replay(capsys, str(tiles_with_bad_files), "--model", str(models["dark"]), "--out", str(tmp_path / "o2"))
    assert code == 0
    first = stdout.splitlines()[0]
    assert first.endswith("faulted 2 (empty_file 1, truncated 1)") and "score" not in first and "uncertain" not in first, first
    assert "<td>Faulted</td><td>2 (empty_file 1, truncated 1)</td>" in (tmp_path / "o2" / "report.html").read_text()


def test_replay_never_imports_torch(models: dict[str, Path], tiles: Path, tmp_path: Path) -> None:
    script = (
        "import sys\n"
        "from inspector.cli import main\n"
        f"code = main(['replay', {str(tiles)!r}, '--model', {str(models['resnet'])!r}, '--out', {str(tmp_path / 'o')!r}])\n"
        "heavy = sorted(m for m in ('torch', 'torchvision', 'matplotlib') if m in sys.modules)\n"
        "print('EXIT', code, 'HEAVY', heavy)\n"
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120, check=False)
    assert "EXIT 0 HEAVY []" in done.stdout, done.stderr


def test_python_dash_m_inspector_is_the_same_command() -> None:
    done = subprocess.run([sys.executable, "-m", "inspector", "--version"], capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 0 and done.stdout.startswith("inspector ")


def test_linked_folders_are_judged_with_their_labels_and_pipes_and_broken_links_get_their_reject(
    models: dict[str, Path], tiles: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data = tmp_path / "data"
    shutil.copytree(tiles / "ok", data / "ok")
    shutil.copytree(tiles / "ng" / "blowhole", data / "ng" / "blowhole")
    (data / "ng" / "crack").symlink_to(tiles / "ng" / "crack", target_is_directory=True)  # kept on another disk
    (data / "ng" / "crack_again").symlink_to(data / "ng" / "crack", target_is_directory=True)
    (data / "ng" / "blowhole" / "gone.png").symlink_to(tmp_path / "nonexistent.png")
    fifo(data / "ok" / "fifo.png")
    out = tmp_path / "out"
    code, _, err = _replay(capsys, str(data), "--model", str(models["dark"]), "--out", str(out), "--no-report")
    assert code == 0
    by_id = {r["frame_id"]: r for r in _decisions(out)}
    assert len(by_id) == 22 and not any(i.startswith("ng/crack_again/") for i in by_id)
    crack = [r for i, r in by_id.items() if i.startswith("ng/crack/")]
    assert len(crack) == 4 and all((r["verdict"], r["reason"], r["label"]["defect"]) == ("reject", "score", "crack") for r in crack)
    fifo_r, gone = by_id["ok/fifo.png"], by_id["ng/blowhole/gone.png"]
    assert (fifo_r["verdict"], fifo_r["reason"], fifo_r["label"]["frame"]) == ("reject", "unreadable", "ok")
    assert (gone["verdict"], gone["reason"], gone["label"]["frame"]) == ("reject", "unreadable", "ng")
    assert "a named pipe (FIFO), not a regular file" in fifo_r["detail"] and "No such file or directory" in gone["detail"]
    summary = json.loads((out / "summary.json").read_text())
    assert (summary["frame_metrics"]["n_ok"], summary["frame_metrics"]["n_ng"]) == (13, 9)
    assert summary["replay"]["link_loops"] == ["ng/crack_again"]
    assert "link_loops" in err and "ng/crack_again" in err


def _all_ok_labels(root: Path, csv_path: Path) -> Path:
    """`csv_path` naming root's frames by absolute path, every ROI labelled ok: the dark-spot model's rejects are then false rejects."""
    lines = (root / "labels.csv").read_text().splitlines()
    csv_path.write_text("\n".join([lines[0], *(f"{root / line.split(',')[0]},ok,ok,ok,ok" for line in lines[1:])]) + "\n")
    return csv_path


def test_an_out_folder_inside_the_replayed_folder_is_not_judged_by_the_next_replay(
    models: dict[str, Path], roi_frames: tuple[Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data = tmp_path / "data"
    shutil.copytree(roi_frames[0], data)
    labels = _all_ok_labels(data, data / "all_ok.csv")
    args = [str(data), "--model", str(models["rois"]), "--labels", str(labels)]
    assert _replay(capsys, *args, "--out", str(data / "runs" / "r1"))[0] == 0
    assert (data / "runs" / "r1" / "false_rejects.jpg").is_file()  # an image the next replay could take for a frame

    code, _, err = _replay(capsys, *args, "--out", str(data / "runs" / "r2"))
    assert code == 0
    ids = [r["frame_id"] for r in _decisions(data / "runs" / "r2")]
    assert len(ids) == 10 and all(i.startswith("frames/") for i in ids)
    assert json.loads((data / "runs" / "r2" / "summary.json").read_text())["replay"]["outputs_skipped"] == ["runs/r1"]
    assert "outputs_skipped" in err and "runs/r1" in err

    # Into an --out used before: that folder and the other run's are both left out.
    code, _, _ = _replay(capsys, *args, "--out", str(data / "runs" / "r1"))
    assert code == 0 and len(_decisions(data / "runs" / "r1")) == 10
    assert json.loads((data / "runs" / "r1" / "summary.json").read_text())["replay"]["outputs_skipped"] == ["runs/r1", "runs/r2"]


def test_images_beside_ok_and_ng_are_judged_unlabelled_and_counted(
    models: dict[str, Path], tiles: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    root = tmp_path / "batch"
    shutil.copytree(tiles, root)
    shutil.copy(root / "ng" / "crack" / "crack_0000.png", root / "unsorted.png")
    out = tmp_path / "out"
    code, stdout, err = _replay(capsys, str(root), "--model", str(models["dark"]), "--out", str(out))
    assert code == 0
    assert "labelled 12 ok / 8 ng (1 unlabelled, not counted):" in stdout
    by_id = {r["frame_id"]: r for r in _decisions(out)}
    assert len(by_id) == 21 and by_id["unsorted.png"]["verdict"] == "reject" and "label" not in by_id["unsorted.png"]
    summary = json.loads((out / "summary.json").read_text())
    assert (summary["frames"], summary["labelled"], summary["unlabelled"], summary["replay"]["loose_files"]) == (21, 20, 1, 1)
    m = summary["frame_metrics"]
    assert (m["n_ok"], m["n_ng"], m["false_rejects"]) == (12, 8, 0)  # the unlabelled reject is no false reject
    assert "frames_unlabelled" in err and "unsorted.png" in err
    assert "Unlabelled (not in the figures below)</td><td>1<" in (out / "report.html").read_text()


@pytest.mark.parametrize(
    ("listing", "message"),
    [
        ("{csv}", "labels.csv: looks like a labels CSV (its first line is the header 'frame,roi1,roi2,roi3,roi4'); pass it with --labels"),
        ("frame,roi1,roi2\nimg1.png,ok,ng\n", "looks like a labels CSV"),
        ("img1.png\nimg2.png\n", "batch.txt: none of its 2 listed images exists; relative paths are read from the list file's folder {tmp}, e.g. {tmp}/img1.png"),
        ("{frame}\nimg1.png\nimg2.png\n", "batch.txt: 2 of its 3 listed images do not exist; relative paths are read from the list file's folder {tmp}"),
        ("img1.png,ok,ng\nimg2.png,ok,ok\n", "it looks like a CSV; pass it with --labels"),
    ],
)
def test_a_list_file_that_names_no_images_here_is_refused(
    models: dict[str, Path], roi_frames: tuple[Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str], listing: str, message: str
) -> None:
    root, csv_path = roi_frames
    path = csv_path if listing == "{csv}" else tmp_path / "batch.txt"
    if listing != "{csv}":
        path.write_text(listing.format(frame=root / "frames" / "000.png"))
    out = tmp_path / "out"
    code, _, err = _replay(capsys, str(path), "--model", str(models["rois"]), "--out", str(out))
    assert code == 2
    assert message.format(tmp=tmp_path.resolve()) in err and "Traceback" not in err
    assert not out.exists()


def test_a_list_file_with_a_few_missing_frames_gives_each_its_reject(
    models: dict[str, Path], tiles: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    listing = tmp_path / "batch.txt"
    listing.write_text(f"{tiles / 'ok' / 'ok_0000.png'}\n{tiles / 'ok' / 'ok_0001.png'}\ngone.png\n")
    code, _, _ = _replay(capsys, str(listing), "--model", str(models["dark"]), "--out", str(tmp_path / "o"), "--no-report")
    assert code == 0
    records = _decisions(tmp_path / "o")
    assert [(r["frame_id"], r["verdict"], r["reason"]) for r in records][2] == ("gone.png", "reject", "unreadable")
    assert len(records) == 3


def test_no_report_removes_the_report_an_earlier_run_left_in_the_out_folder(
    models: dict[str, Path], tiles: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "out"
    args = [str(tiles), "--model", str(models["dark"]), "--out", str(out)]
    assert _replay(capsys, *args, "--threshold", "0")[0] == 0  # everything rejected: a report of 12 false rejects
    assert (out / "report.html").is_file() and (out / "false_rejects.jpg").is_file()
    (out / "notes.txt").write_text("the engineer's own file")
    (out / "photo.jpg").write_bytes((tiles / "ok" / "ok_0000.png").read_bytes())

    code, _, err = _replay(capsys, *args, "--no-report")
    assert code == 0
    assert json.loads((out / "summary.json").read_text())["rejected"] == 8
    assert not (out / "report.html").exists() and not (out / "false_rejects.jpg").exists()
    assert (out / "notes.txt").is_file() and (out / "photo.jpg").is_file()
    assert "stale_report_removed" in err


def test_multi_roi_contact_sheets_box_each_roi_and_the_rejecting_ones_in_red(
    models: dict[str, Path], roi_frames: tuple[Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    root, _ = roi_frames
    out = tmp_path / "out"
    code, _, _ = _replay(capsys, str(root), "--model", str(models["rois"]), "--labels", str(_all_ok_labels(root, tmp_path / "all_ok.csv")), "--out", str(out))
    assert code == 0
    page = (out / "report.html").read_text()
    sources = re.findall(r"<tr><td>\d+</td><td>([^<]+)</td>", page[page.index("False rejects") :])
    by_source = {r["source"]: {x["name"] for x in r["rois"] if x["verdict"] == "reject"} for r in _decisions(out)}
    sheet = read_image(out / "false_rejects.jpg")
    assert len(sources) > 1
    for i, source in enumerate(sources):
        assert red_rois(sheet, i, len(sources), (96, 96), ROIS) == by_source[source], source
    assert all(len(rejected) < 4 for rejected in by_source.values())  # every frame had ROIs that passed and had to stay grey


def test_per_roi_thresholds_are_shown_as_applied_not_as_one_threshold(
    models: dict[str, Path], roi_frames: tuple[Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    root, _ = roi_frames
    lines = (root / "labels.csv").read_text().splitlines()
    csv_path = tmp_path / "labels.csv"  # frames 1 and 3 labelled OK in every ROI: both classes of frames
    csv_path.write_text("\n".join([lines[0], *(f"{root / line.split(',')[0]}," + (",".join(["ok"] * 4) if i in (1, 3) else line.split(",", 1)[1])
                                                for i, line in enumerate(lines[1:]))]) + "\n")
    cfg = tmp_path / "station.yaml"
    cfg.write_text("model:\n  providers: [cpu]\ndecision:\n  threshold: 0.5\n  roi_thresholds: {roi2: 0.0}\n")
    out = tmp_path / "o"
    code, stdout, _ = _replay(capsys, str(root), "--model", str(models["rois"]), "--config", str(cfg), "--labels", str(csv_path),
                              "--out", str(out), "--what-if", "0.5")
    assert code == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["threshold"] is None  # no one threshold is what the station applies
    assert summary["roi_thresholds"] == {"roi1": 0.5, "roi2": 0.0, "roi3": 0.5, "roi4": 0.5}
    page = (out / "report.html").read_text()
    assert "Threshold</td><td>per ROI: roi1 0.5, roi2 0, roi3 0.5, roi4 0.5<" in page
    assert "At threshold" not in page and "At the station&#x27;s thresholds (per ROI: roi1 0.5, roi2 0, roi3 0.5, roi4 0.5)" in page
    # The verdicts' own figures: every frame rejected (roi2 rejects everything), so every OK frame is a false reject.
    records = _decisions(out)
    ok_frames = [r for r in records if r["label"]["frame"] == "ok"]
    assert ok_frames and all(r["verdict"] == "reject" for r in records)
    assert "false-reject rate 100.0% (faulted frames excluded)" in page
    assert "no threshold line: each ROI has its own" in page
    assert "what-if: each threshold applied to every ROI alike; this station's own per-ROI thresholds are not" in stdout


def test_what_if_needs_a_threshold_and_reads_minus_zero_as_zero(
    models: dict[str, Path], tiles: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as info:
        main(["replay", str(tiles), "--model", str(models["dark"]), "--what-if", ","])
    assert info.value.code == 2 and "give one or more thresholds in 0..1" in capsys.readouterr().err
    code, stdout, _ = _replay(capsys, str(tiles), "--model", str(models["dark"]), "--out", str(tmp_path / "o"), "--no-report", "--what-if=-0,1")
    assert code == 0
    rows = [line.split() for line in stdout.splitlines() if line.startswith("           ")]
    assert [r[0] for r in rows[1:]] == ["0.0", "1.0"]
    assert "-0.0" not in stdout


def test_what_if_thresholds_given_through_the_api_are_checked_as_the_flag_checks_them(
    models: dict[str, Path], tiles: Path, tmp_path: Path
) -> None:
    from inspector.config import load_settings
    from inspector.errors import InputError
    from inspector.replay.runner import run_replay

    for bad, message in ((0.4446995, " with at most 6 decimals (scores are published with 6), got 0.4446995"), (1.5, ", got 1.5")):
        with pytest.raises(InputError, match=re.escape(f"--what-if: expected a number in 0..1{message}")):
            run_replay(tiles, load_settings(None), model_path=models["dark"], out_dir=tmp_path / "o", what_if_thresholds=[0.3, bad],
                       report=False)
        assert not (tmp_path / "o").exists()
