"""`inspector calibrate` end to end through the CLI, on real exported models and real image files, and the record's use."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml

from inspector.calibration.record import load_record, write_record
from inspector.calibration.report import write_calibration_report
from inspector.calibration.run import CalibrateOptions, calibrate, describe
from inspector.calibration.scores import ScoreSet
from inspector.calibration.threshold import Sample, below
from inspector.cli import main
from inspector.digest import file_sha256
from inspector.errors import ConfigError


def _run(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    code = main([str(a) for a in args])
    out, err = capsys.readouterr()
    return code, out, err


def _decisions(out_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (out_dir / "decisions.jsonl").read_text().splitlines()]


@pytest.fixture
def station_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A working directory with calibration/, as a station's configuration repository has."""
    (tmp_path / "calibration").mkdir()
    monkeypatch.chdir(tmp_path)
    return tmp_path


@pytest.fixture
def tile_scores(models: dict[str, Path], tiles: Path, tmp_path_factory: pytest.TempPathFactory) -> list[dict]:
    """The dark-spot model's decisions on the tiles, from replay: the scores calibration must reproduce."""
    out = tmp_path_factory.mktemp("replayed")
    assert main(["replay", str(tiles), "--model", str(models["dark"]), "--out", str(out), "--no-report"]) == 0
    return _decisions(out)


def test_calibrate_writes_the_station_record_with_the_recall_bound_threshold(
    models: dict[str, Path], tiles: Path, station_dir: Path, tile_scores: list[dict], capsys: pytest.CaptureFixture[str]
) -> None:
    # 8 NG, all caught: the lower bound at 80% confidence is 0.2^(1/8) = 0.818 >= 0.8; one miss would give 0.65.
    code, out, err = _run(capsys, "calibrate", tiles, "--model", models["dark"], "--target-recall", "0.8", "--confidence", "0.8",
                          "--station", "press-3")
    assert code == 0, err
    record = load_record(station_dir / "calibration" / "press-3.yaml")
    ng_scores = sorted(d["score"] for d in tile_scores if d["label"]["frame"] == "ng")
    ok_scores = [d["score"] for d in tile_scores if d["label"]["frame"] == "ok"]
    scope = record.thresholds["*"]
    assert scope.threshold == below(ng_scores[0]) and scope.chosen_by == "recall-bound"
    assert record.demonstrated and scope.demonstrated
    assert scope.achieved.ng_recall == 1.0 and scope.achieved.ng_recall_lower == pytest.approx(0.2 ** (1 / 8), abs=1e-6)
    assert scope.achieved.ok_rejected == sum(s >= scope.threshold for s in ok_scores)
    assert record.model.sha256 == file_sha256(models["dark"]) and record.model.name == "dark.onnx"
    assert (record.dataset.n_ok, record.dataset.n_ng, record.dataset.n_ng_per_class) == (12, 8, {"blowhole": 4, "crack": 4})
    assert record.dataset.basis == "files" and record.dataset.fingerprint.startswith("sha256:")
    assert record.station == "press-3" and "@" in record.created_by and record.created_at.endswith("Z")
    assert set(scope.per_defect) == {"blowhole", "crack"}
    assert scope.limited_by.defect in scope.per_defect and scope.limited_by.score == pytest.approx(ng_scores[0], abs=1e-6)
    assert f"threshold {scope.threshold:g}" in out and "calibration/press-3.yaml" in out
    report = (station_dir / "calibration" / "press-3.report.html").read_text()
    assert "<svg" in report and "press-3" in report
    # The same labelled scores read from replay's decisions give the same threshold, without scoring again.
    replay_dir = station_dir / "replay"
    assert main(["replay", str(tiles), "--model", str(models["dark"]), "--out", str(replay_dir), "--no-report"]) == 0
    capsys.readouterr()
    code, out, err = _run(capsys, "calibrate", "--decisions", replay_dir / "decisions.jsonl", "--target-recall", "0.8",
                          "--confidence", "0.8", "--station", "press-3", "--out", station_dir / "from-decisions.yaml")
    assert code == 0, err
    again = load_record(station_dir / "from-decisions.yaml")
    assert again.thresholds["*"].threshold == scope.threshold and again.dataset.basis == "decisions"
    assert again.model.sha256 == record.model.sha256 and again.model.name == "dark.onnx"
    assert again.preprocess_sha256 == record.preprocess_sha256


def test_too_few_ng_is_not_demonstrated_and_says_how_many_would_be(
    models: dict[str, Path], tiles: Path, station_dir: Path, tile_scores: list[dict], capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, err = _run(capsys, "calibrate", tiles, "--model", models["dark"], "--target-recall", "0.995", "--station", "s1",
                          "--safety-margin", "0.5")
    assert code == 0, err
    assert "NOT DEMONSTRATED: 8 NG samples cannot show 99.50% NG recall at 95% confidence; 598 NG samples" in out
    record = load_record(station_dir / "calibration" / "s1.yaml")
    scope = record.thresholds["*"]
    assert not record.demonstrated and scope.chosen_by == "point-estimate-minus-margin"
    assert scope.ng_needed_zero_misses == 598 and scope.safety_margin == 0.5
    assert scope.threshold < scope.point_estimate_threshold
    # Replay (as the daemon) warns at start that the record's guarantee was not shown.
    code, out, err = _run(capsys, "replay", tiles, "--model", models["dark"], "--calibration", "calibration/s1.yaml",
                          "--out", station_dir / "o", "--no-report")
    assert code == 0, err
    warning = next(json.loads(line) for line in err.splitlines() if "calibration_not_demonstrated" in line)
    assert warning["level"] == "warning" and warning["ng_needed"] == 598 and warning["n_ng"] == 8
    assert "(NOT DEMONSTRATED at calibration)" in out


def test_replay_with_the_record_applies_it_and_checks_recall_against_its_bound(
    models: dict[str, Path], tiles: Path, station_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert _run(capsys, "calibrate", tiles, "--model", models["dark"], "--target-recall", "0.8", "--confidence", "0.8",
                "--station", "s1")[0] == 0
    record = load_record(station_dir / "calibration" / "s1.yaml")
    from inspector.samples import write_labelled_folder

    other = write_labelled_folder(station_dir / "other", n_ok=10, n_ng=6, seed=9)
    code, out, err = _run(capsys, "replay", other, "--model", models["dark"], "--calibration", "calibration/s1.yaml",
                          "--out", station_dir / "o", "--no-report")
    assert code == 0, err
    summary = json.loads((station_dir / "o" / "summary.json").read_text())
    assert summary["threshold"] == record.thresholds["*"].threshold
    check = summary["calibration"]["check"]["scopes"]["*"]
    assert check["n_ng"] == 6 and check["ng_recall"] == pytest.approx(summary["frame_metrics"]["ng_recall"], abs=1e-6)
    assert check["calibrated_lower_bound"] == record.thresholds["*"].achieved.ng_recall_lower
    assert check["inside_bound"] is (check["ng_recall"] >= check["calibrated_lower_bound"])
    assert "NG recall here" in out and ("inside the calibrated bound" in out) is check["inside_bound"]
    # --threshold would silently replace the reviewed record: refused.
    code, _, err = _run(capsys, "replay", other, "--model", models["dark"], "--calibration", "calibration/s1.yaml",
                        "--threshold", "0.5", "--out", station_dir / "o2")
    assert code == 2 and "give one" in err and not (station_dir / "o2").exists()


def test_a_record_for_another_model_is_refused_naming_both_hashes(
    models: dict[str, Path], tiles: Path, station_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert _run(capsys, "calibrate", tiles, "--model", models["dark"], "--target-recall", "0.8", "--station", "s1")[0] == 0
    code, _, err = _run(capsys, "replay", tiles, "--model", models["multi"], "--calibration", "calibration/s1.yaml",
                        "--out", station_dir / "o")
    assert code == 2 and "Traceback" not in err
    assert file_sha256(models["dark"]) in err and file_sha256(models["multi"]) in err
    assert not (station_dir / "o").exists()
    # Through the config, as the daemon reads it.
    cfg = station_dir / "station.yaml"
    cfg.write_text(yaml.safe_dump({"model": {"providers": ["cpu"]}, "decision": {"calibration": "calibration/s1.yaml"}}))
    code, _, err = _run(capsys, "replay", tiles, "--model", models["multi"], "--config", cfg, "--out", station_dir / "o")
    assert code == 2 and file_sha256(models["multi"]) in err


def test_uncertain_band_gives_verdict_uncertain_routed_like_a_reject_or_to_review(
    models: dict[str, Path], tiles: Path, station_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, err = _run(capsys, "calibrate", tiles, "--model", models["dark"], "--target-recall", "0.8", "--confidence", "0.8",
                          "--station", "s1", "--uncertain-band", "0.999999")
    assert code == 0, err
    band = load_record(station_dir / "calibration" / "s1.yaml").thresholds["*"].uncertain_band
    assert band is not None and band.high == 0.999999 and band.ng_in_band == 8 and "uncertain band" in out
    assert band.expected_review_rate == pytest.approx((band.ng_in_band + band.ok_in_band) / 20, abs=1e-6)
    for route in ("reject", "review"):
        cfg = station_dir / f"{route}.yaml"
        cfg.write_text(yaml.safe_dump({"model": {"providers": ["cpu"]},
                                       "decision": {"calibration": "calibration/s1.yaml", "uncertain_route": route}}))
        out_dir = station_dir / route
        code, out, err = _run(capsys, "replay", tiles, "--model", models["dark"], "--config", cfg, "--out", out_dir, "--no-report")
        assert code == 0, err
        by_label: dict[str, set] = {"ok": set(), "ng": set()}
        for d in _decisions(out_dir):
            by_label[d["label"]["frame"]].add((d["verdict"], d["gate"], d["reason"]))
            if d["verdict"] == "uncertain":
                assert d["rois"][0]["uncertain_band"] == [band.low, band.high]
        assert by_label["ng"] == {("uncertain", route, "uncertain")}
        assert by_label["ok"] == {("pass", "pass", None)}
        summary = json.loads((out_dir / "summary.json").read_text())
        # An uncertain NG part is not passed: it is not an escape.
        assert summary["uncertain"] == 8 and summary["frame_metrics"]["ng_recall"] == 1.0


def test_per_roi_thresholds_from_roi_labels(
    models: dict[str, Path], roi_frames: tuple[Path, Path], station_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    root, csv_path = roi_frames
    code, out, err = _run(capsys, "calibrate", root, "--model", models["rois"], "--labels", csv_path, "--target-recall", "0.5",
                          "--confidence", "0.5", "--station", "s1", "--per-roi")
    assert code == 0, err
    record = load_record(station_dir / "calibration" / "s1.yaml")
    assert set(record.thresholds) == {"roi1", "roi2", "roi3", "roi4"} and record.dataset.unit == "roi"
    assert sum(s.n_ng for s in record.thresholds.values()) == record.dataset.n_ng == 17
    assert all(s.limited_by.roi == name for name, s in record.thresholds.items())
    assert "ROI roi3: threshold" in out
    code, _, err = _run(capsys, "replay", root, "--model", models["rois"], "--labels", csv_path, "--calibration", "calibration/s1.yaml",
                        "--out", station_dir / "o", "--no-report")
    assert code == 0, err
    summary = json.loads((station_dir / "o" / "summary.json").read_text())
    assert summary["roi_thresholds"] == {k: v.threshold for k, v in record.thresholds.items()}
    assert set(summary["calibration"]["check"]["scopes"]) == {"roi1", "roi2", "roi3", "roi4"}
    # One shared threshold over ROI samples reports each ROI's figures and which one limits it.
    code, out, _ = _run(capsys, "calibrate", root, "--model", models["rois"], "--labels", csv_path, "--target-recall", "0.5",
                        "--confidence", "0.5", "--station", "s1", "--out", station_dir / "shared.yaml")
    assert code == 0
    shared = load_record(station_dir / "shared.yaml").thresholds["*"]
    assert set(shared.per_roi) == {"roi1", "roi2", "roi3", "roi4"}
    marked = [line.strip() for line in out.splitlines() if "  <- the threshold sits on its " in line]
    assert len(marked) == 1 and marked[0].startswith(f"ROI {shared.limited_by.roi}: ")


@pytest.mark.parametrize(
    ("setup", "args", "message"),
    [
        ("ok_only", ["{data}", "--model", "{dark}"], "has no NG samples (12 OK)"),
        ("unlabelled", ["{data}", "--model", "{dark}"], "no labels; calibration needs labelled parts"),
        ("tiles", ["{data}", "--model", "{dark}", "--decisions", "{data}/d.jsonl"], "not both and not neither"),
        ("tiles", ["--decisions", "{data}/ok/ok_0000.png"], "not UTF-8 text"),
        ("tiles", ["{data}", "--model", "{dark}", "--cost-escape", "10"], "--cost-escape and --cost-false-reject go together"),
        ("tiles", ["{data}", "--model", "{dark}", "--per-roi"], "--per-roi needs labels per ROI"),
        ("tiles", ["{data}", "--model", "{dark}", "--out", "{tmp}/nowhere/s1.yaml"], "no such folder for the record"),
        ("tiles", ["{data}", "--model", "{dark}", "--target-recall", "1.0"], "--target-recall must lie strictly between 0 and 1"),
        ("tiles", ["{data}", "--model", "{dark}", "--station", "../etc"], "use letters, digits"),
        ("unlabelled_decisions", ["--decisions", "{data}/decisions.jsonl"], "no decision carries a label"),
        # Options that would change nothing: refused, not ignored.
        ("tiles", ["{data}", "--model", "{dark}", "--band-false-reject", "0.01"], "--band-false-reject sets where an automatic band ends"),
        ("tiles", ["{data}", "--model", "{dark}", "--ng-rate", "0.01"], "--ng-rate weighs the expected cost and the band's review rate"),
        ("tiles", ["{data}", "--model", "{dark}", "--config", "{tmp}/station.yaml", "--station", "s1"],
         "--station s1 differs from station.name 'press-9' in"),
    ],
)
def test_bad_input_is_a_clear_error_and_writes_nothing(
    models: dict[str, Path], tiles: Path, station_dir: Path, capsys: pytest.CaptureFixture[str],
    setup: str, args: list[str], message: str,
) -> None:
    data = station_dir / "data"
    if setup == "ok_only":
        shutil.copytree(tiles / "ok", data / "ok")
    elif setup == "unlabelled":
        shutil.copytree(tiles / "ok", data)
    elif setup == "unlabelled_decisions":
        shutil.copytree(tiles / "ok", data / "imgs")
        assert main(["replay", str(data / "imgs"), "--model", str(models["dark"]), "--out", str(data), "--no-report"]) == 0
    else:
        shutil.copytree(tiles, data)
    (station_dir / "station.yaml").write_text("station:\n  name: press-9\n")
    capsys.readouterr()
    fill = {"data": data, "dark": models["dark"], "tmp": station_dir}
    full = [a.format(**fill) for a in args]
    if "--station" not in full:
        full += ["--station", "s1"]
    if "--target-recall" not in full:
        full += ["--target-recall", "0.9"]
    code, _, err = _run(capsys, "calibrate", *full)
    assert code == 2, err
    assert message in err and "Traceback" not in err
    assert list((station_dir / "calibration").iterdir()) == []


def test_missing_calibration_folder_names_it(models: dict[str, Path], tiles: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                             capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.chdir(tmp_path)
    code, _, err = _run(capsys, "calibrate", tiles, "--model", models["dark"], "--target-recall", "0.9", "--station", "s1")
    assert code == 2 and "calibration/: no such folder for the record calibration/s1.yaml" in err
    assert not (tmp_path / "calibration").exists()


def _synthetic_scores(n_ok: int = 300, n_ng: int = 120) -> ScoreSet:
    samples = [Sample(f"ok/{i}.png", 0.4 * i / n_ok, False) for i in range(n_ok)]
    samples += [Sample(f"ng/{'crack' if i % 2 else 'dent'}/{i}.png", 0.3 + 0.7 * i / n_ng, True, "crack" if i % 2 else "dent")
                for i in range(n_ng)]
    return ScoreSet(tuple(samples), "frame", "a" * 64, "m.onnx", ("frame",), None, "sha256:x", "files", "synthetic", (), 0)


def test_record_round_trips_and_a_broken_record_is_a_config_error(tmp_path: Path) -> None:
    options = CalibrateOptions(station="s1", target_recall=0.95, confidence=0.9, cost_escape=50, cost_false_reject=1,
                               band="auto", band_false_reject=0.01)
    record = calibrate(_synthetic_scores(), options)
    path = tmp_path / "s1.yaml"
    write_record(path, record)
    assert load_record(path) == record
    assert path.read_text().startswith("# Calibration record for station s1")
    scope = record.thresholds["*"]
    assert scope.cost is not None and scope.cost.recall_threshold_cost_per_part >= scope.cost.cost_per_part
    assert scope.limited_by.defect == "dent" and scope.per_defect["dent"].threshold_alone <= scope.per_defect["crack"].threshold_alone
    raw = yaml.safe_load(path.read_text())
    for change, message in (
        ({"schema": "inspector.calibration/9"}, "schema is 'inspector.calibration/9'"),
        ({"station": "a b"}, "station"),
        ({"unknown_key": 1}, "unknown_key"),
    ):
        path.write_text(yaml.safe_dump({**raw, **change}))
        with pytest.raises(ConfigError) as info:
            load_record(path)
        assert any(message in e for e in info.value.errors)
    with pytest.raises(ConfigError, match="no calibration record"):
        load_record(tmp_path / "absent.yaml")


def test_a_record_threshold_finer_than_published_scores_is_refused(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from tests.conftest import calibration_record

    path = tmp_path / "s1.yaml"
    write_record(path, calibration_record({"*": (0.5, (0.5, 0.75))}))
    raw = yaml.safe_load(path.read_text())
    raw["thresholds"]["*"]["threshold"] = raw["thresholds"]["*"]["uncertain_band"]["low"] = 0.4446995
    raw["thresholds"]["*"]["uncertain_band"]["high"] = 0.7500001
    path.write_text(yaml.safe_dump(raw))
    seven = "expected a number in 0..1 with at most 6 decimals (scores are published with 6), got "
    with pytest.raises(ConfigError) as info:
        load_record(path)
    assert info.value.errors == [
        f"decision.calibration: thresholds.*.threshold: {seven}0.4446995",
        f"decision.calibration: thresholds.*.uncertain_band.low: {seven}0.4446995",
        f"decision.calibration: thresholds.*.uncertain_band.high: {seven}0.7500001",
    ]
    cfg = tmp_path / "station.yaml"
    cfg.write_text(yaml.safe_dump({"decision": {"calibration": str(path)}}))
    assert main(["config", "check", str(cfg)]) == 2
    assert f"decision.calibration: thresholds.*.threshold: {seven}0.4446995" in capsys.readouterr().out


@pytest.mark.parametrize("seed", range(5))
def test_every_threshold_calibrate_writes_has_at_most_six_decimals_and_loads_back(tmp_path: Path, seed: int) -> None:
    rng = np.random.default_rng(seed)
    samples = [Sample(f"ok/{i}.png", float(rng.beta(1, 6)), False) for i in range(200)]
    samples += [Sample(f"ng/{i}.png", float(rng.beta(6, 1)), True) for i in range(40)]
    scores = ScoreSet(tuple(samples), "frame", "a" * 64, "m.onnx", ("frame",), None, "sha256:x", "files", "synthetic", (), 0)
    for options in (
        CalibrateOptions(station="s1", target_recall=0.9, confidence=0.9, band="auto", band_false_reject=0.01),
        CalibrateOptions(station="s1", target_recall=0.999, confidence=0.95, band=0.987654),  # not demonstrated: the margin
        CalibrateOptions(station="s1", target_recall=0.9, confidence=0.9, cost_escape=20, cost_false_reject=1, choose="cost"),
    ):
        record = calibrate(scores, options)
        path = tmp_path / "s1.yaml"
        write_record(path, record)
        assert load_record(path) == record
        scope = record.thresholds["*"]
        band = scope.uncertain_band
        for t in (scope.threshold, scope.recall_bound_threshold, scope.point_estimate_threshold,
                  *((band.low, band.high) if band else ()), *((scope.cost.threshold,) if scope.cost else ())):
            assert round(t, 6) == t, (options, t)


def test_cost_choice_applies_the_cheapest_threshold_only_when_asked() -> None:
    scores = _synthetic_scores()
    recall = calibrate(scores, CalibrateOptions(station="s1", target_recall=0.95, confidence=0.9, cost_escape=1, cost_false_reject=1))
    cost = calibrate(scores, CalibrateOptions(station="s1", target_recall=0.95, confidence=0.9, cost_escape=1, cost_false_reject=1,
                                              choose="cost"))
    r, c = recall.thresholds["*"], cost.thresholds["*"]
    assert r.chosen_by == "recall-bound" and c.chosen_by == "expected-cost"
    assert c.threshold == r.cost.threshold != r.threshold  # type: ignore[union-attr]


def test_calibrate_never_imports_torch(models: dict[str, Path], tiles: Path, tmp_path: Path) -> None:
    (tmp_path / "calibration").mkdir()
    script = (
        "import sys\n"
        "from inspector.cli import main\n"
        f"code = main(['calibrate', {str(tiles)!r}, '--model', {str(models['dark'])!r}, '--target-recall', '0.9', '--station', 's1'])\n"
        "heavy = sorted(m for m in ('torch', 'torchvision', 'matplotlib', 'scipy') if m in sys.modules)\n"
        "print('EXIT', code, 'HEAVY', heavy)\n"
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120, check=False, cwd=tmp_path,
                          env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])})
    assert "EXIT 0 HEAVY []" in done.stdout, done.stderr


def test_config_check_finds_what_the_daemon_would_refuse_in_a_record(models: dict[str, Path], tmp_path: Path) -> None:
    from inspector.cli import check_config
    from tests.conftest import calibration_record

    record = tmp_path / "s1.yaml"
    write_record(record, calibration_record({"*": (0.5, None)}, sha256="f" * 64, station="s9"))
    cfg = tmp_path / "station.yaml"
    cfg.write_text(yaml.safe_dump({"model": {"path": str(models["dark"])}, "station": {"name": "s1"},
                                   "decision": {"calibration": str(record)}}))
    errors = check_config(cfg)
    assert errors == [
        "decision.calibration: the record of station 's9', but station.name is 's1'",
        f"decision.calibration: made for model sha256 {'f' * 64}, but model.path {models['dark']} has sha256 {file_sha256(models['dark'])}",
    ]
    cfg.write_text(yaml.safe_dump({"decision": {"calibration": str(tmp_path / "absent.yaml")}}))
    assert check_config(cfg) == [f"decision.calibration: file not found: {tmp_path / 'absent.yaml'} (run `inspector calibrate`)"]
    cfg.write_text(yaml.safe_dump({"decision": {"calibration": str(record), "threshold": 0.2}}))
    assert any("calibration sets the thresholds: remove decision.threshold" in e for e in check_config(cfg))


def test_unreadable_images_are_left_out_and_counted(
    models: dict[str, Path], tiles: Path, station_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data = station_dir / "data"
    shutil.copytree(tiles, data)
    good = (data / "ng" / "crack").iterdir().__next__().read_bytes()
    (data / "ng" / "crack" / "partial.png").write_bytes(good[: len(good) // 2])
    code, out, err = _run(capsys, "calibrate", data, "--model", models["dark"], "--target-recall", "0.8", "--station", "s1")
    assert code == 0, err
    record = load_record(station_dir / "calibration" / "s1.yaml")
    assert record.dataset.excluded == 1 and record.dataset.n_ng == 8  # the truncated file is no evidence of recall
    assert "1 excluded" in out and "excluded ng/crack/partial.png: truncated" in out


def test_ng_lying_directly_under_ng_count_per_class_as_replay_names_them(
    models: dict[str, Path], tiles: Path, station_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    import cv2

    from inspector.samples import tile

    data = station_dir / "data"
    shutil.copytree(tiles, data)
    rng = np.random.default_rng(7)
    for i in range(3):
        assert cv2.imwrite(str(data / "ng" / f"loose_{i}.png"), tile(rng, 64, 64, "crack"))
    code, _, err = _run(capsys, "calibrate", data, "--model", models["dark"], "--target-recall", "0.8", "--confidence", "0.8",
                        "--station", "s1")
    assert code == 0, err
    record = load_record(station_dir / "calibration" / "s1.yaml")
    per_class = record.dataset.n_ng_per_class
    assert per_class == {"(no defect folder)": 3, "blowhole": 4, "crack": 4}
    assert sum(per_class.values()) == record.dataset.n_ng == 11
    assert "(no defect folder) 3" in (station_dir / "calibration" / "s1.report.html").read_text()
    # Replay's per-defect rows on the same folder, and a record made from replay's decisions, say the same.
    code, _, err = _run(capsys, "replay", data, "--model", models["dark"], "--out", station_dir / "replayed", "--no-report")
    assert code == 0, err
    summary = json.loads((station_dir / "replayed" / "summary.json").read_text())
    assert {d: row["n"] for d, row in summary["frame_metrics"]["per_defect"].items()} == per_class
    code, _, err = _run(capsys, "calibrate", "--decisions", station_dir / "replayed" / "decisions.jsonl", "--target-recall", "0.8",
                        "--confidence", "0.8", "--station", "s1", "--out", station_dir / "from-decisions.yaml", "--no-report")
    assert code == 0, err
    assert load_record(station_dir / "from-decisions.yaml").dataset.n_ng_per_class == per_class


def test_roi_decisions_from_replay_calibrate_like_the_images(
    models: dict[str, Path], roi_frames: tuple[Path, Path], station_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    root, csv_path = roi_frames
    common = ["--target-recall", "0.5", "--confidence", "0.5", "--station", "s1", "--per-roi"]
    assert _run(capsys, "calibrate", root, "--model", models["rois"], "--labels", csv_path, *common, "--no-report")[0] == 0
    from_images = load_record(station_dir / "calibration" / "s1.yaml")
    assert main(["replay", str(root), "--model", str(models["rois"]), "--labels", str(csv_path), "--out", str(station_dir / "r"),
                 "--no-report"]) == 0
    code, _, err = _run(capsys, "calibrate", "--decisions", station_dir / "r" / "decisions.jsonl", *common, "--out", station_dir / "d.yaml")
    assert code == 0, err
    from_decisions = load_record(station_dir / "d.yaml")
    assert from_decisions.dataset.unit == "roi" and from_decisions.preprocess_sha256 == from_images.preprocess_sha256
    assert {k: v.threshold for k, v in from_decisions.thresholds.items()} == {k: v.threshold for k, v in from_images.thresholds.items()}


def test_an_automatic_band_that_is_not_needed_says_why(tmp_path: Path) -> None:
    # OK and NG scores far apart: the recall threshold rejects no OK sample, so `auto` has nothing to put in a band.
    samples = [Sample(f"ok/{i}.png", 0.2 * i / 300, False) for i in range(300)]
    samples += [Sample(f"ng/crack/{i}.png", 0.8 + 0.2 * i / 120, True, "crack") for i in range(120)]
    scores = ScoreSet(tuple(samples), "frame", "a" * 64, "m.onnx", ("frame",), None, "sha256:x", "files", "synthetic", (), 0)
    record = calibrate(scores, CalibrateOptions(station="s1", target_recall=0.95, confidence=0.9, band="auto", band_false_reject=0.01))
    scope = record.thresholds["*"]
    assert scope.uncertain_band is None
    assert scope.uncertain_band_note == (f"the threshold {scope.threshold:g} already rejects 0 of 300 OK samples, within "
                                         "--band-false-reject 0.01; no score above it needs review")
    assert f"  no uncertain band: {scope.uncertain_band_note}" in describe(record)
    ng, ok = (np.array([x.score for x in samples if x.ng == is_ng]) for is_ng in (True, False))
    page = write_calibration_report(tmp_path / "s1.report.html", record, {"*": (ng, ok)}).read_text()
    assert f"<h3>Uncertain band</h3><p>None: {scope.uncertain_band_note}.</p>" in page.replace("&#x27;", "'")


def test_copies_and_repeated_lines_are_one_sample_not_more_evidence(
    models: dict[str, Path], tiles: Path, station_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data = tmp_path / "data"
    shutil.copytree(tiles, data)
    ng = sorted((data / "ng" / "crack").iterdir())
    (data / "ng" / "again").mkdir()
    for p in ng:  # the same NG parts once more, as a copy and as links: 8 NG must stay 8
        shutil.copy(p, data / "ng" / "again" / f"copy-{p.name}")
        (data / "ng" / "again" / f"link-{p.name}").symlink_to(p)
    shutil.copy(tiles / "ok" / min(os.listdir(tiles / "ok")), data / "stray.png")
    code, out, err = _run(capsys, "calibrate", data, "--model", models["dark"], "--target-recall", "0.8", "--confidence", "0.8",
                          "--station", "s1")
    assert code == 0, err
    record = load_record(station_dir / "calibration" / "s1.yaml")
    assert (record.dataset.n_ng, record.dataset.n_ok, record.dataset.excluded, record.dataset.unlabelled) == (8, 12, 8, 1)
    assert "12 OK / 8 NG frames, 8 excluded, 1 unlabelled frames left out" in out
    assert "the same image as ng/again/copy-crack_" in out and "frames_unlabelled" in err  # ng/again/ sorts first
    # Replay's decisions listed twice: each frame counts once.
    replayed = tmp_path / "replayed"
    assert main(["replay", str(tiles), "--model", str(models["dark"]), "--out", str(replayed), "--no-report"]) == 0
    lines = (replayed / "decisions.jsonl").read_text().splitlines()
    (replayed / "decisions.jsonl").write_text("\n".join(lines + [line for line in lines if json.loads(line)["label"]["frame"] == "ng"]) + "\n")
    capsys.readouterr()
    code, out, err = _run(capsys, "calibrate", "--decisions", replayed / "decisions.jsonl", "--target-recall", "0.8",
                          "--confidence", "0.8", "--station", "s2")
    assert code == 0, err
    record = load_record(station_dir / "calibration" / "s2.yaml")
    assert (record.dataset.n_ng, record.dataset.excluded) == (8, 8) and "listed again (one frame is one sample)" in out


def test_the_record_replaces_only_a_record_and_no_report_leaves_no_stale_report(
    models: dict[str, Path], tiles: Path, station_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    args = ("calibrate", tiles, "--model", models["dark"], "--target-recall", "0.8", "--confidence", "0.8", "--station", "s1")
    model_copy = station_dir / "calibration" / "model.yaml"
    model_copy.write_bytes(models["dark"].read_bytes())
    code, _, err = _run(capsys, *args, "--out", model_copy)
    assert code == 2 and "exists and is not a calibration record; choose another name or move it away" in err
    assert model_copy.read_bytes() == models["dark"].read_bytes()
    code, _, err = _run(capsys, *args, "--out", station_dir / "calibration" / "s1.onnx")
    assert code == 2 and "a calibration record is a .yaml file" in err
    assert _run(capsys, *args)[0] == 0
    report = station_dir / "calibration" / "s1.report.html"
    assert report.is_file()
    code, out, _ = _run(capsys, *args, "--no-report")
    assert code == 0 and not report.exists() and f"removed {Path('calibration/s1.report.html')}: it described the earlier record" in out


def test_cost_choice_names_the_ng_part_nearest_its_threshold_and_small_groups_say_they_cannot_stand_alone() -> None:
    options = CalibrateOptions(station="s1", target_recall=0.95, confidence=0.9, cost_escape=1, cost_false_reject=50, choose="cost")
    record = calibrate(_synthetic_scores(), options)
    scope = record.thresholds["*"]
    assert scope.chosen_by == "expected-cost" and scope.threshold != scope.recall_bound_threshold
    caught = sorted(s.score for s in _synthetic_scores().samples if s.ng and s.score >= scope.threshold)
    assert scope.limited_by.score == pytest.approx(caught[0], abs=1e-6), "the lowest NG the applied threshold still rejects"
    marked = [line for line in describe(record) if "  <- " in line]
    assert len(marked) == 1 and f"<- holds the lowest NG still rejected ({scope.limited_by.score:g})" in marked[0]
    # 95% recall at 90% confidence needs 45 NG with none missed: 120 cracks can show it alone, 5 dents cannot.
    samples = [Sample(f"ok/{i}.png", 0.2 * i / 300, False) for i in range(300)]
    samples += [Sample(f"ng/crack/{i}.png", 0.8 + 0.2 * i / 120, True, "crack") for i in range(120)]
    samples += [Sample(f"ng/dent/{i}.png", 0.85 + 0.01 * i, True, "dent") for i in range(5)]
    scores = ScoreSet(tuple(samples), "frame", "a" * 64, "m.onnx", ("frame",), None, "sha256:x", "files", "synthetic", (), 0)
    lines = [line.strip() for line in describe(calibrate(scores, CalibrateOptions(station="s1", target_recall=0.95, confidence=0.9)))]
    assert any(line.startswith("defect crack: 120 NG") and "alone it would need threshold" in line for line in lines)
    assert any(line.startswith("defect dent: 5 NG") and "alone its 5 NG cannot demonstrate the target (threshold" in line for line in lines)


def test_a_new_record_says_what_changed_from_the_one_it_replaces(
    models: dict[str, Path], tiles: Path, station_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    args = ("calibrate", tiles, "--target-recall", "0.8", "--confidence", "0.8", "--station", "s1", "--no-report")
    assert _run(capsys, *args, "--model", models["dark"])[0] == 0
    code, out, _ = _run(capsys, *args, "--model", models["dark"])
    assert code == 0 and "threshold unchanged\n" in out
    code, out, _ = _run(capsys, *args, "--model", models["multi"])
    line = next(line for line in out.splitlines() if line.startswith("previous record"))
    assert code == 0 and f"; model changed (dark.onnx {file_sha256(models['dark'])[:12]}… -> multi.onnx" in line
    code, _, err = _run(capsys, "calibrate", "--decisions", station_dir, "--target-recall", "0.8", "--station", "s1")
    assert code == 2 and "is a folder; expected the decisions.jsonl file" in err


def test_a_model_that_scores_nothing_is_named_not_the_data(
    models: dict[str, Path], tiles: Path, station_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, _, err = _run(capsys, "calibrate", tiles, "--model", models["nan"], "--target-recall", "0.8", "--station", "s1")
    assert code == 2 and "no sample could be scored: all 20 were left out (" in err and "inference_error" in err
    assert list((station_dir / "calibration").iterdir()) == []


def _level_set(root: Path, ok: list[int], ng: dict[str, list[int]], *, truncated_ng: int = 0) -> Path:
    """ok/ and ng/<defect>/ images that `level_model` scores level/64, plus unreadable (truncated) NG files."""
    from tests.conftest import level_png

    n = 0
    for i, level in enumerate(ok):
        level_png(root / "ok" / f"ok_{i:03d}.png", level, variant=(n := n + 1))
    for defect, levels in ng.items():
        for i, level in enumerate(levels):
            level_png(root / "ng" / defect / f"{defect}_{i:03d}.png", level, variant=(n := n + 1))
    good = (root / "ok" / "ok_000.png").read_bytes()
    for i in range(truncated_ng):
        (root / "ng" / "crack" / f"unreadable_{i:03d}.png").write_bytes(good[: len(good) // 2])
    return root


def test_the_calibration_check_counts_only_scored_ng_and_says_how_many_faulted_it_left_out(
    station_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from tests.conftest import level_model

    model = level_model(station_dir / "level.onnx")
    # 10 NG at 0.75, all caught: at 80% confidence the record claims NG recall >= 85.1%.
    cal = _level_set(station_dir / "cal", ok=[8] * 10, ng={"crack": [48] * 10})
    assert _run(capsys, "calibrate", cal, "--model", model, "--target-recall", "0.7", "--confidence", "0.8", "--station", "s1")[0] == 0
    # Held out: 20 unreadable NG, 4 NG the model catches (0.75) and 4 it misses (0.25). On the line 24 of 28 NG are rejected
    # (85.7%, above the record's bound); the model caught 4 of its 8: that contradicts the record.
    held = _level_set(station_dir / "held", ok=[8] * 6, ng={"crack": [48] * 4, "dent": [16] * 4}, truncated_ng=20)
    code, out, err = _run(capsys, "replay", held, "--model", model, "--calibration", "calibration/s1.yaml", "--out", station_dir / "o")
    assert code == 0, err
    summary = json.loads((station_dir / "o" / "summary.json").read_text())
    m = summary["frame_metrics"]
    assert (m["n_ng"], m["ng_recall"], m["ng_faulted"], m["scored_n_ng"], m["scored_ng_recall"]) == (28, 24 / 28, 20, 8, 0.5)
    assert m["per_defect"]["crack"] == {"n": 24, "rejected": 24, "recall": 1.0, "faulted": 20, "scored_recall": 1.0}
    scope = summary["calibration"]["check"]["scopes"]["*"]
    assert (scope["n_ng"], scope["ng_faulted_left_out"], scope["ng_recall"]) == (8, 20, 0.5)
    assert scope["contradicts_calibration"] is True and scope["inside_bound"] is False
    assert "faulted 20 NG and 0 OK frames (rejected without a score)" in out
    assert "scored frames only, NG recall 50.00% of 8 NG" in out
    assert "NG recall here 50.00% of 8 scored NG (one-sided 80% bounds" in out and "CONTRADICTS the calibration" in out
    assert "left out of this check: 20 NG and 0 OK faulted frames" in out
    assert "NG recall of the model (the 8 scored NG only)</td><td>50.0%" in (station_dir / "o" / "report.html").read_text()


def test_decisions_carry_the_image_hash_so_copies_are_one_sample_as_with_images(
    models: dict[str, Path], tiles: Path, station_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data = tmp_path / "data"
    shutil.copytree(tiles, data)
    (data / "ng" / "again").mkdir()
    for p in sorted((data / "ng" / "crack").iterdir()):
        shutil.copy(p, data / "ng" / "again" / f"copy-{p.name}")
    common = ["--target-recall", "0.8", "--confidence", "0.8", "--no-report"]
    assert _run(capsys, "calibrate", data, "--model", models["dark"], "--station", "img", *common)[0] == 0
    from_images = load_record(station_dir / "calibration" / "img.yaml")
    assert main(["replay", str(data), "--model", str(models["dark"]), "--out", str(tmp_path / "r"), "--no-report"]) == 0
    decisions = _decisions(tmp_path / "r")
    assert all(d["sha256"] == file_sha256(data / d["frame_id"]) for d in decisions)
    capsys.readouterr()
    code, out, err = _run(capsys, "calibrate", "--decisions", tmp_path / "r" / "decisions.jsonl", "--station", "dec", *common)
    assert code == 0, err
    from_decisions = load_record(station_dir / "calibration" / "dec.yaml")
    assert (from_decisions.dataset.n_ng, from_decisions.dataset.excluded) == (from_images.dataset.n_ng, from_images.dataset.excluded) == (8, 4)
    assert from_decisions.demonstrated == from_images.demonstrated
    assert "the same image as ng/again/copy-crack_" in out and "carry no image hash" not in out
    # Decisions from an older replay, without the hash: used, with a warning that copies cannot be found.
    old = tmp_path / "r" / "old.jsonl"
    old.write_text("".join(json.dumps({k: v for k, v in d.items() if k != "sha256"}) + "\n" for d in decisions))
    code, out, err = _run(capsys, "calibrate", "--decisions", old, "--station", "old", *common)
    assert code == 0, err
    assert load_record(station_dir / "calibration" / "old.yaml").dataset.n_ng == 12
    assert f"WARNING: 24 of the 24 labelled decisions in {old} carry no image hash" in out and "cannot be found" in out


def test_one_image_labelled_both_ok_and_ng_is_refused_naming_both_paths(
    models: dict[str, Path], tiles: Path, station_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data = tmp_path / "data"
    shutil.copytree(tiles, data)
    shutil.copy(data / "ok" / "ok_0003.png", data / "ng" / "crack" / "zz.png")
    common = ["--target-recall", "0.8", "--station", "s1", "--no-report"]
    code, _, err = _run(capsys, "calibrate", data, "--model", models["dark"], *common)
    assert code == 2 and "Traceback" not in err
    assert "1 image(s) appear twice with different labels (the same bytes): ng/crack/zz.png (ng) and ok/ok_0003.png (ok)" in err
    assert list((station_dir / "calibration").iterdir()) == []
    assert main(["replay", str(data), "--model", str(models["dark"]), "--out", str(tmp_path / "r"), "--no-report"]) == 0
    capsys.readouterr()
    code, _, err = _run(capsys, "calibrate", "--decisions", tmp_path / "r" / "decisions.jsonl", *common)
    assert code == 2 and "ng/crack/zz.png (ng) and ok/ok_0003.png (ok)" in err
    assert list((station_dir / "calibration").iterdir()) == []


def _describe_scores(samples: list[Sample], unit: str = "frame") -> ScoreSet:
    return ScoreSet(tuple(samples), unit, "a" * 64, "m.onnx", ("A", "B"), None, "sha256:x", "files", "synthetic", (), 0)


def test_the_limit_and_its_marker_say_what_the_threshold_does_to_the_groups() -> None:
    # Two ROIs pooled: B's NG at 0.1875 (twice) are missed, the threshold sits on B's NG at 0.25.
    rois = [("A", 0.5, True), ("A", 0.484375, True), ("A", 0.3125, True), ("A", 0.515625, True),
            ("B", 0.25, True), ("B", 0.1875, True), ("B", 0.1875, True), ("B", 0.625, True)]
    rois += [("A", x / 64, False) for x in (10, 10, 40, 20, 5, 0, 16, 50)] + [("B", x / 64, False) for x in (10, 10, 20, 30, 5, 0, 16, 16)]
    samples = [Sample(f"f{i}#{roi}", score, ng, None, roi) for i, (roi, score, ng) in enumerate(rois)]
    record = calibrate(_describe_scores(samples, "roi"), CalibrateOptions(station="s1", target_recall=0.6, confidence=0.5))
    assert record.thresholds["*"].threshold == below(0.25)
    lines = describe(record)
    assert "  limited by f4#B (score 0.25): the threshold sits just below it; the 2 NG scored lower are missed" in lines
    b = next(line for line in lines if line.startswith("  ROI B:"))
    assert b.endswith("<- the threshold sits on its NG at 0.25, not its lowest (0.1875); 2 of its NG are missed")
    # Too few NG: the point estimate sits on a crack at 0.25, and the margin puts the threshold below it (under a blowhole).
    ok = [0, 2, 4, 8, 8, 16, 20, 24, 32, 40]
    ng = {"crack": [16, 32, 48, 64], "blowhole": [8, 24, 40, 56, 60]}
    samples = [Sample(f"ok/{i}.png", x / 64, False) for i, x in enumerate(ok)]
    samples += [Sample(f"ng/{d}/{i}.png", x / 64, True, d) for d, xs in ng.items() for i, x in enumerate(xs)]
    record = calibrate(_describe_scores(samples), CalibrateOptions(station="s1", target_recall=0.8, confidence=0.9))
    scope = record.thresholds["*"]
    assert scope.chosen_by == "point-estimate-minus-margin" and scope.threshold < 0.25
    lines = describe(record)
    assert (f"  limited by ng/crack/0.png (score 0.25, crack): the point estimate's threshold {scope.point_estimate_threshold:g} "
            f"sits on it; the safety margin lowers the threshold to {scope.threshold:g}, below it") in lines
    assert not any("<- the threshold sits on" in line for line in lines)
    crack = next(line for line in lines if line.startswith("  defect crack:"))
    assert crack.endswith(f"<- the point estimate {scope.point_estimate_threshold:g} sits on its NG at 0.25")


def test_a_target_just_below_one_never_shows_as_100_percent() -> None:
    record = calibrate(_synthetic_scores(), CalibrateOptions(station="s1", target_recall=0.999999, confidence=0.95))
    target = describe(record)[1]
    assert target.startswith("target: NG recall >= 99.9999% at 95% confidence") and "100.00%" not in target


def test_one_ng_image_under_two_defect_classes_is_kept_with_a_warning_naming_both_paths(
    models: dict[str, Path], tiles: Path, station_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # A part may show two defects, and the layout's only way to say so is a copy in each folder: not refused as an OK/NG
    # conflict is, but one NG sample counts for one class only, which path order picks: the engineer must see that.
    data = tmp_path / "data"
    shutil.copytree(tiles, data)
    shutil.copy(data / "ng" / "crack" / "crack_0002.png", data / "ng" / "blowhole" / "zz.png")
    common = ["--target-recall", "0.8", "--no-report"]
    code, out, err = _run(capsys, "calibrate", data, "--model", models["dark"], "--station", "img", *common)
    assert code == 0, err
    record = load_record(station_dir / "calibration" / "img.yaml")
    assert (record.dataset.n_ng, record.dataset.excluded, record.dataset.n_ng_per_class) == (8, 1, {"blowhole": 5, "crack": 3})
    warning = ("WARNING: 1 NG image(s) appear under two defect classes (the same bytes): ng/blowhole/zz.png (blowhole) and "
               "ng/crack/crack_0002.png (crack); each is one NG sample, counted in n_ng_per_class and the per-defect figures under "
               "the first class only; if a part does not show both defects, remove the wrong copy")
    assert warning in out.splitlines()
    assert "excluded ng/crack/crack_0002.png: the same image as ng/blowhole/zz.png" in out
    # From replay's decisions (they carry the image hash): the same record figures and the same warning.
    assert main(["replay", str(data), "--model", str(models["dark"]), "--out", str(tmp_path / "r"), "--no-report"]) == 0
    capsys.readouterr()
    code, out, err = _run(capsys, "calibrate", "--decisions", tmp_path / "r" / "decisions.jsonl", "--station", "dec", *common)
    assert code == 0, err
    assert load_record(station_dir / "calibration" / "dec.yaml").dataset.n_ng_per_class == record.dataset.n_ng_per_class
    assert warning in out.splitlines()
    # Exact copies within one class, and an NG copy directly under ng/: only the latter is a second class.
    (data / "ng" / "blowhole" / "zz.png").unlink()
    shutil.copy(data / "ng" / "crack" / "crack_0002.png", data / "ng" / "crack" / "again.png")
    code, out, err = _run(capsys, "calibrate", data, "--model", models["dark"], "--station", "same", *common)
    assert code == 0 and "WARNING" not in out and "excluded ng/crack/crack_0002.png: the same image as ng/crack/again.png" in out
    shutil.copy(data / "ng" / "crack" / "crack_0002.png", data / "ng" / "loose.png")
    code, out, err = _run(capsys, "calibrate", data, "--model", models["dark"], "--station", "loose", *common)
    assert code == 0, err
    assert "ng/crack/again.png (crack) and ng/loose.png ((no defect folder))" in out


def test_a_broken_calibration_record_names_its_path_line_and_the_flag_that_gave_it(
    models: dict[str, Path], tiles: Path, station_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    bad = station_dir / "calibration" / "s1.yaml"
    bad.write_text("schema: inspector.calibration/1\nstation: a: b\n")
    code, _, err = _run(capsys, "replay", tiles, "--model", models["dark"], "--calibration", bad, "--out", station_dir / "o", "--no-report")
    assert code == 2 and "Traceback" not in err
    said = [line for line in err.splitlines() if not line.startswith("{")]  # the log's JSON lines aside
    assert said == [f"inspector: --calibration: {bad} is not valid YAML",
                    f"  --calibration: {bad}:2:11: mapping values are not allowed here"]
    assert not (station_dir / "o").exists()
    # The same record named by the config: named as decision.calibration there.
    (station_dir / "station.yaml").write_text(yaml.safe_dump({"decision": {"calibration": str(bad)}}))
    code, _, err = _run(capsys, "replay", tiles, "--model", models["dark"], "--config", station_dir / "station.yaml", "--out",
                        station_dir / "o", "--no-report")
    assert code == 2 and f"  decision.calibration: {bad}:2:11: mapping values are not allowed here" in err.splitlines()
    assert "<unicode string>" not in err


def test_per_roi_without_roi_labels_is_refused_before_any_image_is_scored(
    models: dict[str, Path], tiles: Path, station_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # A model that scores nothing: scoring first would end on "no sample could be scored", not on what is wrong.
    code, _, err = _run(capsys, "calibrate", tiles, "--model", models["nan"], "--target-recall", "0.8", "--station", "s1", "--per-roi")
    assert code == 2
    assert "inspector: error: --per-roi needs labels per ROI: a --labels CSV `frame,roi1,roi2,...` (or decisions replayed with one)" in err
    assert "no sample could be scored" not in err and "model_loaded" not in err
    assert list((station_dir / "calibration").iterdir()) == []


def test_a_band_finer_than_published_scores_is_an_input_error_from_the_api_too() -> None:
    from inspector.errors import InputError

    options = CalibrateOptions(station="s1", target_recall=0.95, confidence=0.9, band=0.9999995)
    with pytest.raises(InputError, match=r"^--uncertain-band: expected a number in 0\.\.1 with at most 6 decimals .*got 0\.9999995$"):
        calibrate(_synthetic_scores(), options)
    with pytest.raises(InputError, match="--uncertain-band takes auto or the band's upper threshold in 0..1, got 1.5"):
        calibrate(_synthetic_scores(), CalibrateOptions(station="s1", band=1.5))


def test_config_show_gives_the_thresholds_the_record_sets(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from tests.conftest import calibration_record

    record = tmp_path / "s1.yaml"
    write_record(record, calibration_record({"*": (0.99994, None)}))
    cfg = tmp_path / "station.yaml"
    cfg.write_text(yaml.safe_dump({"station": {"name": "s1"}, "decision": {"calibration": str(record)}}))
    assert main(["config", "show", str(cfg)]) == 0
    out = capsys.readouterr().out
    assert out.startswith(f"# decision.threshold and decision.roi_thresholds: as the calibration record {record} sets them\n")
    assert yaml.safe_load(out)["decision"]["threshold"] == 0.99994, "not the field's default 0.5, which the daemon does not apply"
    record.write_text("schema: [\n")
    assert main(["config", "show", str(cfg)]) == 0
    out = capsys.readouterr().out
    assert out.startswith(f"# decision.calibration: {record} is not valid YAML; the daemon would refuse to start\n")
