"""`make demo`'s steps end to end at a reduced size, through the entry point the Makefile runs."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from inspector.calibration.record import load_record

pytestmark = pytest.mark.slow


def _demo(out: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "inspector.demo", "--out", str(out), "--small", "--epochs", "1", "--rate", "20"],
                          capture_output=True, text=True, timeout=600, check=False)


def test_demo_trains_calibrates_runs_the_daemon_and_leaves_nothing_running(tmp_path: Path) -> None:
    out = tmp_path / "demo"
    done = _demo(out)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    for n in range(1, 8):
        assert f"[{n}/7]" in done.stdout
    assert "36/36 parts decided" in done.stdout and "daemon exited with 0" in done.stdout
    assert "Traceback" not in done.stdout + done.stderr
    assert load_record(out / "calibration" / "demo.yaml").station == "demo"
    assert (out / "train" / "report.html").is_file() and (out / "calibration" / "demo.report.html").is_file()
    exported = subprocess.run([sys.executable, "-m", "inspector", "journal", "export", "--journal", str(out / "journal.sqlite3")],
                              capture_output=True, text=True, check=True)
    assert len(exported.stdout.splitlines()) == 36
    moved = list((out / "incoming" / "processed").rglob("part*"))
    assert len(moved) == 36
    ps = subprocess.run(["ps", "-eo", "args"], capture_output=True, text=True, check=True).stdout
    assert str(out) not in ps  # neither mosquitto nor the daemon outlived the demo


def test_demo_refuses_a_folder_it_did_not_make(tmp_path: Path) -> None:
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "keep.txt").write_text("precious")
    done = _demo(tmp_path / "mine")
    assert done.returncode == 2 and "is not a demo folder" in done.stderr and "Traceback" not in done.stderr
    assert (tmp_path / "mine" / "keep.txt").read_text() == "precious"


def test_demo_refuses_data_without_the_layout_before_touching_out(tmp_path: Path) -> None:
    (tmp_path / "data" / "ok").mkdir(parents=True)  # no ng/
    done = subprocess.run([sys.executable, "-m", "inspector.demo", "--out", str(tmp_path / "out"), "--data", str(tmp_path / "data")],
                          capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 2 and f"--data {tmp_path / 'data'}: expected ok/ and ng/<defect>/ folders of images" in done.stderr
    assert not (tmp_path / "out").exists() and "[1/7]" not in done.stdout
