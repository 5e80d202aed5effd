"""`inspector export`: ONNX with the manifest, and the parity gate passing, and refusing broken or mismatched exports."""

from __future__ import annotations

import json
import os
import shutil
import stat
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
import yaml

from inspector.cli import main
from inspector.config import ModelSettings, Provider, load_settings
from inspector.digest import file_sha256
from inspector.errors import InputError
from inspector.model import OnnxClassifier
from inspector.pipeline import build_pipeline
from inspector.preprocess import FrameSize, Preprocessor
from inspector.training.export import (
    export_checkpoint,
    load_checkpoint,
    model_from_checkpoint,
    parity_gate,
)
from tests.conftest import gray_png
from tests.training.conftest import FAST, export_cli, train_cli


def _leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


def test_export_writes_a_model_the_runtime_runs_with_the_trained_preprocessing(trained: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "model.onnx"
    umask = os.umask(0o022)
    try:
        code, stdout, err = export_cli(capsys, str(trained / "best.pt"), "--out", str(out))
    finally:
        os.umask(umask)
    assert code == 0, err
    assert "parity gate passed: 12 images, 12 crops" in stdout and "0 verdict flips at 0.5" in stdout
    assert _leftovers(tmp_path) == ["model.onnx"]
    # Readable by the service user that runs `inspector run`, as any file written under that umask.
    assert stat.S_IMODE(out.stat().st_mode) == 0o644
    assert "replaced" not in stdout
    code, stdout, err = export_cli(capsys, str(trained / "best.pt"), "--out", str(out))
    assert code == 0 and "(replaced the model that was there)" in stdout
    clf = OnnxClassifier(out, ModelSettings(providers=[Provider.CPU]))
    ckpt = load_checkpoint(trained / "best.pt")
    assert clf.spec.to_json() == ckpt["spec"] and clf.classes == ("ok", "ng")
    assert clf.spec.pixel_max == 255  # trained on 8-bit files: the manifest says so
    assert clf.spec.frame_size == FrameSize(min_width=48, max_width=48, min_height=48, max_height=48)  # and on 48x48 frames
    info = clf.manifest.info
    assert info["checkpoint_sha256"] == file_sha256(trained / "best.pt")
    assert info["dataset"]["fingerprint"] == ckpt["dataset"]["fingerprint"]
    assert set(info["exported_with"]) >= {"torch", "torchvision", "onnx", "inspector"}
    assert info["training"]["validation"]["roc_auc"] == ckpt["metrics"]["roc_auc"]
    assert info["parity_gate"]["passed"] is True and info["parity_gate"]["max_abs_diff"] <= 1e-4
    assert info["created"] and info["precision"] == "fp32"
    graph = onnx.load(str(out))
    assert max(o.version for o in graph.opset_import if o.domain in ("", "ai.onnx")) >= 17
    # Dynamic batch axis: three rows at once.
    x = np.zeros((3, 1, 32, 32), np.float32)
    assert ort.InferenceSession(str(out), providers=["CPUExecutionProvider"]).run(None, {"input": x})[0].shape == (3, 2)


def test_the_exported_model_scores_files_as_the_torch_model_scored_them(trained: Path, parts: Path, tmp_path: Path) -> None:
    out = tmp_path / "m.onnx"
    export_checkpoint(trained / "best.pt", out)
    model, _spec, _, _ = model_from_checkpoint(load_checkpoint(trained / "best.pt"))
    clf = OnnxClassifier(out, ModelSettings(providers=[Provider.CPU]))
    pre = Preprocessor(clf.spec)
    for path in sorted(parts.rglob("ng/*/*.png"))[:5]:
        batch = pre(pre.decode(path.read_bytes()))
        with torch.inference_mode():
            expected = torch.softmax(model(torch.from_numpy(batch)), 1).numpy()
        assert np.abs(clf.predict(batch) - expected).max() < 1e-4


def test_a_perturbed_graph_fails_the_gate(trained: Path, tmp_path: Path) -> None:
    good = tmp_path / "good.onnx"
    export_checkpoint(trained / "best.pt", good)
    m = onnx.load(str(good))
    fc = next(t for t in m.graph.initializer if t.name.endswith("fc.bias"))
    bias = onnx.numpy_helper.to_array(fc).copy()
    bias[1] += 3.0  # a graph that drifts toward NG: what a faulty conversion looks like
    fc.CopyFrom(onnx.numpy_helper.from_array(bias, fc.name))
    bad = tmp_path / "bad.onnx"
    onnx.save(m, str(bad))
    ckpt = load_checkpoint(trained / "best.pt")
    model, spec, _, _ = model_from_checkpoint(ckpt)
    frames = [Path(v["path"]) for v in ckpt["validation"]]
    gate = parity_gate(model, spec, bad, frames, threshold=0.5, tolerance=1e-4)
    assert not gate.passed and gate.max_abs_diff > 0.1
    assert "max |delta probability|" in gate.problem()
    assert parity_gate(model, spec, good, frames, threshold=0.5, tolerance=1e-4).passed


def test_a_station_config_with_other_preprocessing_is_refused_and_nothing_written(trained: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    station = tmp_path / "station.yaml"
    station.write_text("preprocess:\n  color: gray\n  resize: {width: 32, height: 32}\n  normalize: {mean: [0.2], std: [0.1]}\n")
    out_dir = tmp_path / "models"
    out_dir.mkdir()
    code, _stdout, err = export_cli(capsys, str(trained / "best.pt"), "--out", str(out_dir / "m.onnx"), "--config", str(station))
    assert code == 2
    assert "export refused by the parity gate" in err
    # The trained pixel_max comes along where the station config sets none (as frame_size does): not a difference.
    assert "the deployed preprocessing differs from training: clahe:" in err and "normalize:" in err and "pixel_max" not in err
    assert _leftovers(out_dir) == []
    assert "Traceback" not in err


def _export_without(trained: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], field: str) -> tuple[dict, Path, Path]:
    """Export with a station config holding the trained preprocessing less `field` (one written before it existed): the
    model keeps the trained value. The config as written, its path, and the model's."""
    trained_spec = model_from_checkpoint(load_checkpoint(trained / "best.pt"))[1]
    station = tmp_path / "station.yaml"
    written = trained_spec.model_dump(mode="json")
    del written[field]
    station.write_text(yaml.safe_dump({"preprocess": written}))
    out = tmp_path / "m.onnx"
    code, _stdout, err = export_cli(capsys, str(trained / "best.pt"), "--out", str(out), "--config", str(station))
    assert code == 0, err
    assert OnnxClassifier(out, ModelSettings(providers=[Provider.CPU])).spec == trained_spec  # the trained value came along
    return written, station, out


def test_a_station_config_without_frame_size_deploys_the_trained_range(trained: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    written, station, out = _export_without(trained, tmp_path, capsys, "frame_size")
    # With pixel rois on this whole-frame model, the range it brings applies to each crop: crops of another size are
    # refused here, with the error `inspector run` gives for them, not written into a model the daemon refuses to start.
    rois = [{"name": "a", "box": [0, 0, 40, 48]}]
    station.write_text(yaml.safe_dump({"preprocess": written, "rois": rois}))
    code, _stdout, err = export_cli(capsys, str(trained / "best.pt"), "--out", str(tmp_path / "r.onnx"), "--config", str(station))
    with pytest.raises(InputError) as daemon:
        build_pipeline(load_settings(None, model={"providers": ["cpu"], "warmup_runs": 0}, rois=rois), model_path=out)
    assert str(daemon.value).startswith("rois: a is 40x48 pixels, but this model was trained on 48x48 images")
    assert code == 2 and str(daemon.value) in err
    assert "parity gate" not in err and not (tmp_path / "r.onnx").exists()
    # A range the station config gives is its own (the camera's known resolution): deployed as given.
    written["frame_size"] = "any"
    station.write_text(yaml.safe_dump({"preprocess": written}))
    code, _stdout, err = export_cli(capsys, str(trained / "best.pt"), "--out", str(out), "--config", str(station))
    assert code == 0, err
    assert OnnxClassifier(out, ModelSettings(providers=[Provider.CPU])).spec.frame_size == "any"
    # A range that leaves out the golden frames is a real difference: the gate refuses it and names it.
    written["frame_size"] = {"min_width": 64, "max_width": 64, "min_height": 64, "max_height": 64}
    station.write_text(yaml.safe_dump({"preprocess": written}))
    code, _stdout, err = export_cli(capsys, str(trained / "best.pt"), "--out", str(tmp_path / "n.onnx"), "--config", str(station))
    assert code == 2 and "all 12 golden frames are rejected by the exported model, not judged: frame_size 12 (" in err
    assert "48x48 frame; this model was trained on 64x64 frames)" in err and "verdicts flip" not in err
    assert "the deployed preprocessing differs from training: frame_size: {" in err and not (tmp_path / "n.onnx").exists()


def test_a_station_config_without_pixel_max_deploys_the_trained_bit_depth(trained: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    written, station, out = _export_without(trained, tmp_path, capsys, "pixel_max")
    assert OnnxClassifier(out, ModelSettings(providers=[Provider.CPU])).spec.pixel_max == 255
    # A 16-bit frame of the trained size is what this 8-bit model never saw: rejected, not judged.
    frames = tmp_path / "frames"
    gray_png(frames / "deep.png", np.full((48, 48), 30000, np.uint16))
    gray_png(frames / "plain.png", np.full((48, 48), 120, np.uint8))
    assert main(["replay", str(frames), "--model", str(out), "--out", str(tmp_path / "r"), "--no-report"]) == 0
    capsys.readouterr()
    records = {r["frame_id"]: r for r in map(json.loads, (tmp_path / "r" / "decisions.jsonl").read_text().splitlines())}
    assert (records["deep.png"]["verdict"], records["deep.png"]["reason"]) == ("reject", "unsupported_image")
    assert records["deep.png"]["detail"] == "16-bit frame; this model was trained on 8-bit frames (pixel_max 255)"
    assert records["plain.png"]["reason"] != "unsupported_image"
    # A pixel_max the station config gives is its own, deployed as given: here one no golden frame fits, which the gate
    # refuses, naming the rejected frames (not flips) and the difference from training.
    written["pixel_max"] = 4095
    station.write_text(yaml.safe_dump({"preprocess": written}))
    code, _stdout, err = export_cli(capsys, str(trained / "best.pt"), "--out", str(tmp_path / "d.onnx"), "--config", str(station))
    assert code == 2
    assert ("export refused by the parity gate over 12 golden images: all 12 golden frames are rejected by the exported model, "
            "not judged: unsupported_image 12 (") in err
    assert "8-bit frame; this model was trained on 16-bit frames (pixel_max 4095)" in err
    assert "the deployed preprocessing differs from training: pixel_max: 255 -> 4095" in err
    assert "verdicts flip" not in err and "delta probability" not in err and not (tmp_path / "d.onnx").exists()


def test_a_golden_frame_the_model_cannot_judge_is_named_as_such_not_as_flips(trained: Path, parts: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    golden = tmp_path / "golden"
    for png in [*sorted((parts / "ok").glob("*.png"))[:4], *sorted((parts / "ng" / "crack").glob("*.png"))[:4]]:
        dest = golden / png.relative_to(parts)
        dest.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(png, dest)
    gray_png(golden / "ok" / "odd.png", np.full((50, 50), 120, np.uint8))  # not the 48x48 the model was trained on
    out = tmp_path / "m.onnx"
    code, _stdout, err = export_cli(capsys, str(trained / "best.pt"), "--out", str(out), "--golden", str(golden))
    assert code == 2
    assert ("export refused by the parity gate over 9 golden images: 1 of the 9 golden frames is rejected by the exported model, "
            "not judged: frame_size 1 (odd.png: 50x50 frame; this model was trained on 48x48 frames)") in err
    assert "verdicts flip" not in err and "delta probability" not in err and not out.exists()
    # The figures are those of the 8 frames judged: real flips, a finite difference.
    bad = tmp_path / "bad.onnx"
    export_checkpoint(trained / "best.pt", bad)
    m = onnx.load(str(bad))
    fc = next(t for t in m.graph.initializer if t.name.endswith("fc.bias"))
    bias = onnx.numpy_helper.to_array(fc).copy()
    bias[1] += 3.0
    fc.CopyFrom(onnx.numpy_helper.from_array(bias, fc.name))
    onnx.save(m, str(bad))
    model, spec, _, _ = model_from_checkpoint(load_checkpoint(trained / "best.pt"))
    frames = sorted(p for p in golden.rglob("*.png"))
    gate = parity_gate(model, spec, bad, frames, threshold=0.5, tolerance=1e-4)
    assert (gate.images, gate.rows, gate.skipped) == (9, 8, {"frame_size": 1}) and not gate.passed
    assert 0.1 < gate.max_abs_diff < 1 and gate.flips <= 8
    assert gate.problem().startswith(f"{gate.flips} of 8 verdicts flip" if gate.flips else "max |delta probability|")
    assert gate.problem().endswith("1 of the 9 golden frames is rejected by the exported model, not judged: frame_size 1 "
                                   "(odd.png: 50x50 frame; this model was trained on 48x48 frames)")


def test_fp16_passes_its_documented_tolerance_and_says_so_in_the_manifest(trained: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "half.onnx"
    code, stdout, err = export_cli(capsys, str(trained / "best.pt"), "--out", str(out), "--fp16")
    assert code == 0, err
    assert "(tolerance 0.01)" in stdout
    info = OnnxClassifier(out, ModelSettings(providers=[Provider.CPU])).manifest.info
    assert info["precision"] == "fp16" and info["parity_gate"]["tolerance"] == 0.01
    assert any(t.data_type == onnx.TensorProto.FLOAT16 for t in onnx.load(str(out)).graph.initializer)


def test_golden_images_come_from_a_folder_when_the_validation_images_are_gone(trained: Path, parts: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    run = tmp_path / "run"
    shutil.copytree(trained, run)
    ckpt = torch.load(run / "best.pt", weights_only=True)
    ckpt["validation"] = [{**v, "path": str(tmp_path / "moved" / Path(v["path"]).name)} for v in ckpt["validation"]]
    torch.save(ckpt, run / "best.pt")
    code, _, err = export_cli(capsys, str(run / "best.pt"), "--out", str(tmp_path / "m.onnx"))
    assert code == 2 and "12 of its 12 validation images are missing" in err and "pass --golden DIR" in err
    code, stdout, err = export_cli(capsys, str(run / "best.pt"), "--out", str(tmp_path / "m.onnx"), "--golden", str(parts / "ng"))
    assert code == 0, err
    assert "parity gate passed: 24 images" in stdout


def test_a_file_that_is_not_a_checkpoint_is_a_clear_error(trained: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bogus = tmp_path / "model.pt"
    torch.save({"weights": torch.zeros(2)}, bogus)
    code, _, err = export_cli(capsys, str(bogus), "--out", str(tmp_path / "m.onnx"))
    assert code == 2 and "not a checkpoint written by `inspector train`" in err
    (tmp_path / "text.pt").write_text("hello")
    (tmp_path / "cut.pt").write_bytes(bogus.read_bytes()[:300])
    (tmp_path / "noise.pt").write_bytes(bytes(range(256)) * 8)
    for name in ("text.pt", "cut.pt", "noise.pt"):
        code, _, err = export_cli(capsys, str(tmp_path / name), "--out", str(tmp_path / "m.onnx"))
        # One line naming the file and the cause, not torch's page about weights_only.
        assert code == 2 and err.strip().splitlines() == [
            f"inspector: error: {tmp_path / name}: not a checkpoint written by `inspector train` (not a file written by torch.save, or a damaged one)"
        ]
    code, _, err = export_cli(capsys, str(trained), "--out", str(tmp_path / "m.onnx"))  # the run's folder, not its best.pt
    assert code == 2 and f"{trained}: is a folder (best.pt and last.pt are inside); expected a checkpoint file" in err
    code, _, err = export_cli(capsys, str(trained / "best.pt"), "--out", str(tmp_path / "m.onnx"), "--calibration-data", str(tmp_path))
    assert code == 2 and "--calibration-data sets the INT8 activation ranges: use it with --quantize int8" in err
    before = (trained / "best.pt").read_bytes()
    code, _, err = export_cli(capsys, str(trained / "best.pt"), "--out", str(trained / "best.pt"))
    # Only a .onnx name: the checkpoint, an image, a record under --out would be replaced by a model.
    assert code == 2 and "an exported model is written as a .onnx file; give a name ending in .onnx" in err
    assert (trained / "best.pt").read_bytes() == before
    with_code = tmp_path / "code.pt"
    torch.save({"format": "inspector.checkpoint/1", "hook": Path("x")}, with_code)
    code, _, err = export_cli(capsys, str(with_code), "--out", str(tmp_path / "m.onnx"))
    assert code == 2 and "holds Python objects besides tensors and plain containers, which are not loaded for safety" in err
    assert not (tmp_path / "m.onnx").exists()


def test_tta_flips_exports_the_mean_over_the_flipped_views_and_records_it(trained: Path, parts: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    plain, tta = tmp_path / "plain.onnx", tmp_path / "tta.onnx"
    export_checkpoint(trained / "best.pt", plain)
    code, stdout, err = export_cli(capsys, str(trained / "best.pt"), "--out", str(tta), "--tta", "flips")
    assert code == 0, err
    assert "parity gate passed" in stdout and "test-time views 4 (flips)" in stdout
    clf_plain, clf_tta = (OnnxClassifier(p, ModelSettings(providers=[Provider.CPU])) for p in (plain, tta))
    assert (clf_tta.manifest.info["tta"], clf_tta.manifest.info["tta_views"]) == ("flips", 4)
    assert (clf_plain.manifest.info["tta"], clf_plain.manifest.info["tta_views"]) == ("none", 1)
    pre = Preprocessor(clf_tta.spec)
    moved = 0.0
    for path in sorted(parts.rglob("*/*.png"))[:6]:
        x = pre(pre.decode(path.read_bytes()))
        views = [x, x[..., ::-1], x[..., ::-1, :], x[..., ::-1, ::-1]]
        expected = np.mean([clf_plain.predict(np.ascontiguousarray(v)) for v in views], axis=0)
        got = clf_tta.predict(x)
        assert np.abs(got - expected).max() < 1e-5
        moved = max(moved, float(np.abs(got - clf_plain.predict(x)).max()))
    assert moved > 1e-4  # the views really are averaged, not the plain image four times


def test_tta_that_the_training_augmentations_cannot_support_is_refused(parts: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = train_cli(capsys, str(parts), "--out", str(tmp_path / "r"), "--epochs", "1", "--no-hflip", "--no-vflip", *FAST)
    assert code == 0, err
    code, _, err = export_cli(capsys, str(tmp_path / "r" / "best.pt"), "--out", str(tmp_path / "m.onnx"), "--tta", "flips")
    assert code == 2 and "--tta flips: tta=flips averages over the flips the model was trained with" in err
    assert "Traceback" not in err and not (tmp_path / "m.onnx").exists()
