"""`inspector replay` end to end, in-process through the CLI, on real exported models and real image files."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from inspector.cli import main


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
