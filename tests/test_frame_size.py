"""The trained-frame-size guard on real exported models and real image files: a frame of a size the model never saw is
rejected (`frame_size`), never judged; frames of the trained sizes are judged as before."""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest
import structlog

from inspector.cli import main
from inspector.config import load_settings
from inspector.errors import InputError
from inspector.frame import QUARANTINE_REASONS, Frame, Reason
from inspector.pipeline import FramePipeline, build_pipeline, read_file_frame
from inspector.preprocess import FrameSize, PreprocessSpec
from inspector.samples import GRID_ROIS, tile
from tests.conftest import GRAY64, gray_png

TILE = {"min_width": 64, "max_width": 64, "min_height": 64, "max_height": 64}


def _export(path: Path, spec: PreprocessSpec) -> Path:
    from inspector.training.onnx_export import export_classifier
    from tests.conftest import _dark_spot_module

    export_classifier(_dark_spot_module(), spec, ("ok", "ng"), path)
    return path


@pytest.fixture(scope="module")
def sized(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The dark-spot detector with recorded frame sizes: whole 64x64 tiles, and 2x2 grids of ROIs cut from 96x96 frames."""
    root = tmp_path_factory.mktemp("sized")
    grid = PreprocessSpec(
        color="gray",
        resize={"width": 48, "height": 48},
        rois=[{"name": n, "box": b, "units": "fraction"} for n, b in GRID_ROIS.items()],
        frame_size={"min_width": 96, "max_width": 96, "min_height": 96, "max_height": 96},
    )
    return {
        "tile": _export(root / "tile.onnx", GRAY64.model_copy(update={"frame_size": FrameSize(**TILE)})),
        "grid": _export(root / "grid.onnx", grid),
    }


def _pipeline(model: Path, **overrides: object) -> FramePipeline:
    return build_pipeline(load_settings(None, model={"providers": ["cpu"], "warmup_runs": 0}, **overrides), model_path=model)


def test_replay_rejects_a_frame_of_another_size_with_reason_frame_size_and_judges_the_rest(
    sized: dict[str, Path], models: dict[str, Path], tiles: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data = tmp_path / "batch"
    for png in sorted(tiles.rglob("*.png")):
        if "masks" not in png.parts:
            (data / png.relative_to(tiles)).parent.mkdir(parents=True, exist_ok=True)
            (data / png.relative_to(tiles)).write_bytes(png.read_bytes())
    gray_png(data / "ok" / "dot.png", np.full((1, 1), 150, np.uint8))  # a 1x1 PNG: a clean grey field once resized
    gray_png(data / "ok" / "big.png", tile(np.random.default_rng(7), 128, 128))  # a camera switched to another mode
    out, old = tmp_path / "out", tmp_path / "old"
    assert main(["replay", str(data), "--model", str(sized["tile"]), "--out", str(out), "--threshold", "0.99"]) == 0
    assert main(["replay", str(data), "--model", str(models["dark"]), "--out", str(old), "--threshold", "0.99"]) == 0
    capsys.readouterr()
    records = {r["frame_id"]: r for r in map(json.loads, (out / "decisions.jsonl").read_text().splitlines())}
    before = {r["frame_id"]: r for r in map(json.loads, (old / "decisions.jsonl").read_text().splitlines())}
    assert len(records) == 22  # one decision per frame
    assert before["ok/dot.png"]["verdict"] == "pass"  # what a model without the guard makes of it: the escape
    for name, size in (("ok/dot.png", "1x1"), ("ok/big.png", "128x128")):
        r = records[name]
        assert (r["verdict"], r["reason"], r["score"]) == ("reject", "frame_size", None)
        assert r["detail"] == f"{size} frame; this model was trained on 64x64 frames"
    # Frames of the trained size are judged exactly as by the same model without a recorded size.
    for name, r in records.items():
        if name not in ("ok/dot.png", "ok/big.png"):
            assert (r["verdict"], r["reason"], r["score"]) == (before[name]["verdict"], before[name]["reason"], before[name]["score"])
    assert json.loads((out / "summary.json").read_text())["reasons"]["frame_size"] == 2


def test_fractional_rois_on_frames_of_a_new_camera_resolution_are_rejected_not_judged(sized: dict[str, Path]) -> None:
    pipe = _pipeline(sized["grid"])
    rng = np.random.default_rng(5)
    parts = [tile(rng, 48, 48) for _ in range(4)]
    frame = np.vstack([np.hstack(parts[:2]), np.hstack(parts[2:])])
    assert pipe.process(Frame("f1", "camera", 0.0, image=frame)).verdict == "pass"
    for shape in ((192, 192), (96, 120)):  # each ROI would be another piece of another scene
        v = pipe.process(Frame("f2", "camera", 0.0, image=cv2.resize(frame, shape[::-1])))
        assert (v.verdict, v.reason, v.rois) == ("reject", Reason.FRAME_SIZE, ())
        assert v.detail == f"{shape[1]}x{shape[0]} frame; this model was trained on 96x96 frames"


def test_a_frame_size_reject_is_about_the_file_and_goes_to_quarantine_like_roi_out_of_bounds() -> None:
    assert Reason.FRAME_SIZE.value == "frame_size" and Reason.FRAME_SIZE in QUARANTINE_REASONS


def test_station_rois_on_a_whole_frame_model_check_each_crop_against_the_trained_size(
    sized: dict[str, Path], tmp_path: Path
) -> None:
    halves = [{"name": "left", "box": [0, 0, 0.5, 1], "units": "fraction"}, {"name": "right", "box": [0.5, 0, 1, 1], "units": "fraction"}]
    with structlog.testing.capture_logs() as logs:
        pipe = _pipeline(sized["tile"], rois=halves)
    moved = next(e for e in logs if e["event"] == "frame_size_per_roi")
    assert moved["frame_size"] == "64x64" and moved["rois"] == ["left", "right"]
    assert next(e for e in logs if e["event"] == "model_loaded")["frame_size"] == "64x64 per ROI"
    rng = np.random.default_rng(2)
    wide = gray_png(tmp_path / "wide.png", np.hstack([tile(rng, 64, 64), tile(rng, 64, 64)]))  # two parts side by side
    v = pipe.process(read_file_frame(wide))
    assert v.verdict == "pass" and [r.name for r in v.rois] == ["left", "right"]  # a 128x64 frame: each crop is a 64x64 tile
    # The same station on a camera with twice the resolution: crops of a size the model never saw.
    v = pipe.process(read_file_frame(gray_png(tmp_path / "twice.png", cv2.resize(cv2.imread(str(wide), 0), (256, 128)))))
    assert (v.verdict, v.reason) == ("reject", Reason.FRAME_SIZE)
    assert v.detail.startswith("ROI left is 128x128 on this 256x128 frame; this model was trained on 64x64 images")
    # Pixel ROIs of the wrong size would reject every frame: refused at load, naming them.
    pixel = [{"name": "a", "box": [0, 0, 64, 64]}, {"name": "b", "box": [64, 0, 164, 64]}]
    with pytest.raises(InputError, match=r"rois: b is 100x64 pixels, but this model was trained on 64x64 images and judges each ROI"):
        _pipeline(sized["tile"], rois=pixel)
    assert _pipeline(sized["tile"], rois=pixel[:1]).process(read_file_frame(wide)).verdict == "pass"


def test_station_rois_that_move_a_roi_models_rois_keep_the_frame_check(sized: dict[str, Path]) -> None:
    moved = [{"name": n, "box": [x0 * 0.9, y0 * 0.9, x1 * 0.9, y1 * 0.9], "units": "fraction"} for n, (x0, y0, x1, y1) in GRID_ROIS.items()]
    with structlog.testing.capture_logs() as logs:
        pipe = _pipeline(sized["grid"], rois=moved)
    assert "frame_size_per_roi" not in [e["event"] for e in logs]
    v = pipe.process(Frame("f", "camera", 0.0, image=np.full((120, 120), 150, np.uint8)))
    assert (v.verdict, v.reason) == ("reject", Reason.FRAME_SIZE)
    assert v.detail == "120x120 frame; this model was trained on 96x96 frames"


def test_a_model_without_a_recorded_size_judges_frames_of_any_size_as_before(models: dict[str, Path]) -> None:
    with structlog.testing.capture_logs() as logs:
        pipe = _pipeline(models["dark"])
    assert next(e for e in logs if e["event"] == "model_loaded")["frame_size"] is None
    assert pipe.process(Frame("f", "camera", 0.0, image=np.full((1, 1), 150, np.uint8))).reason is not Reason.FRAME_SIZE
