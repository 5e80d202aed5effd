"""The per-frame path on real models and real files: one verdict per frame, and every fault a reject with a reason."""

from __future__ import annotations

import shutil
from pathlib import Path

import cv2
import numpy as np
import pytest
import structlog

from inspector.config import load_settings
from inspector.errors import ModelError
from inspector.frame import Frame
from inspector.pipeline import FramePipeline, build_pipeline, read_file_frame
from inspector.samples import tile
from tests.conftest import fifo


def _pipeline(model: Path, **overrides) -> FramePipeline:
    return build_pipeline(load_settings(None, model={"providers": ["cpu"]}, **overrides), model_path=model)


@pytest.fixture(scope="module")
def dark(models: dict[str, Path]) -> FramePipeline:
    return _pipeline(models["dark"])


def test_clean_tiles_pass_and_defects_reject_with_scores_and_latency(dark: FramePipeline, tiles: Path) -> None:
    ok = dark.process(read_file_frame(tiles / "ok" / "ok_0000.png"))
    ng = dark.process(read_file_frame(next((tiles / "ng" / "crack").iterdir())))
    assert (ok.verdict, ok.reason) == ("pass", None)
    assert (ng.verdict, ng.reason.value) == ("reject", "score")
    assert ok.score < 0.05 < 0.95 < ng.score
    assert ng.provider == "cpu" and len(ng.model_sha256) == 64
    lat = ng.latency_ms
    assert lat.total >= lat.decode + lat.preprocess + lat.inference - 1e-6 and lat.inference > 0


def _jpeg_bytes(tmp_path: Path) -> bytes:
    path = tmp_path / "part.jpg"
    cv2.imwrite(str(path), tile(np.random.default_rng(3), 64, 64))
    return path.read_bytes()


@pytest.mark.parametrize(
    ("name", "content", "reason"),
    [
        ("zero.jpg", lambda t: b"", "empty_file"),
        ("notes.jpg", lambda t: b"shift report: all fine\n", "not_an_image"),
        ("half.jpg", lambda t: _jpeg_bytes(t)[: len(_jpeg_bytes(t)) // 2], "truncated"),
        ("garbled.jpg", lambda t: b"\xff\xd8\xff" + b"\x13" * 500 + b"\xff\xd9", "decode_failed"),
    ],
)
def test_bad_files_are_rejected_with_their_reason_never_passed(
    dark: FramePipeline, tmp_path: Path, name: str, content, reason: str
) -> None:
    path = tmp_path / name
    path.write_bytes(content(tmp_path))
    v = dark.process(read_file_frame(path))
    assert (v.verdict, v.reason.value) == ("reject", reason)
    assert v.detail and v.rois == () and v.score is None


def test_a_file_that_vanished_or_cannot_be_read_is_rejected_as_unreadable(dark: FramePipeline, tmp_path: Path) -> None:
    gone = dark.process(read_file_frame(tmp_path / "gone.png"))
    folder = tmp_path / "a_folder.png"
    folder.mkdir()
    not_a_file = dark.process(read_file_frame(folder))
    for v in (gone, not_a_file):
        assert (v.verdict, v.reason.value) == ("reject", "unreadable")


def test_a_pipe_or_a_broken_link_named_like_an_image_is_rejected_as_unreadable_without_blocking(
    dark: FramePipeline, tmp_path: Path
) -> None:
    pipe = fifo(tmp_path / "fifo.jpg")  # reading it would wait for a writer forever
    broken = tmp_path / "x.jpg"
    broken.symlink_to(tmp_path / "nonexistent.jpg")
    frames = {p.name: read_file_frame(p) for p in (pipe, broken)}
    assert frames["fifo.jpg"].read_error == f"a named pipe (FIFO), not a regular file: {pipe}"
    assert frames["x.jpg"].read_error.startswith("No such file or directory") and str(broken) in frames["x.jpg"].read_error
    for frame in frames.values():
        v = dark.process(frame)
        assert (v.verdict, v.reason.value, v.detail) == ("reject", "unreadable", frame.read_error)


def test_a_frame_too_small_for_a_pixel_roi_is_rejected(models: dict[str, Path], tmp_path: Path) -> None:
    pipe = _pipeline(models["dark"], rois=[{"name": "big", "box": [0, 0, 200, 200]}])
    path = tmp_path / "small.png"
    cv2.imwrite(str(path), tile(np.random.default_rng(0), 64, 64))
    v = pipe.process(read_file_frame(path))
    assert (v.verdict, v.reason.value) == ("reject", "roi_out_of_bounds")
    assert "big" in v.detail


def test_an_inference_error_is_a_reject_not_a_crash(models: dict[str, Path], tiles: Path) -> None:
    pipe = build_pipeline(load_settings(None, model={"providers": ["cpu"], "warmup_runs": 0}), model_path=models["broken"])
    v = pipe.process(read_file_frame(tiles / "ok" / "ok_0001.png"))
    assert (v.verdict, v.reason.value) == ("reject", "inference_error")
    assert "Reshape" in v.detail or "reshape" in v.detail


def test_nan_from_the_model_is_a_reject_never_a_pass(models: dict[str, Path], tiles: Path) -> None:
    pipe = _pipeline(models["nan"])
    for path in (tiles / "ok" / "ok_0001.png", next((tiles / "ng").rglob("*.png"))):
        v = pipe.process(read_file_frame(path))
        assert (v.verdict, v.reason.value) == ("reject", "inference_error")
        assert "NaN" in v.detail and "frame" in v.detail


def test_a_model_that_fails_its_warm_up_is_refused_at_load(models: dict[str, Path]) -> None:
    with pytest.raises(ModelError, match="fails its warm-up inference"):
        _pipeline(models["broken"])


def test_multi_roi_frames_are_one_batch_and_any_ng_roi_rejects_the_frame(models: dict[str, Path]) -> None:
    pipe = _pipeline(models["rois"])
    rng = np.random.default_rng(5)
    parts = [tile(rng, 48, 48), tile(rng, 48, 48, "blowhole"), tile(rng, 48, 48), tile(rng, 48, 48)]
    frame = np.vstack([np.hstack(parts[:2]), np.hstack(parts[2:])])
    v = pipe.process(Frame("f1", "camera", 0.0, image=frame))
    assert [r.name for r in v.rois] == ["roi1", "roi2", "roi3", "roi4"]
    assert [r.verdict for r in v.rois] == ["pass", "reject", "pass", "pass"]
    assert (v.verdict, v.reason.value) == ("reject", "score")


def test_camera_frames_in_bgr_arrive_as_the_models_colour_mode(dark: FramePipeline) -> None:
    bgr = cv2.cvtColor(tile(np.random.default_rng(1), 64, 64), cv2.COLOR_GRAY2BGR)
    v = dark.process(Frame("cam-1", "camera", 0.0, image=bgr))
    assert v.verdict == "pass" and v.latency_ms.decode >= 0


def test_multi_class_models_report_the_top_defect(models: dict[str, Path], tiles: Path) -> None:
    pipe = _pipeline(models["multi"])
    v = pipe.process(read_file_frame(next((tiles / "ng" / "blowhole").iterdir())))
    assert v.verdict == "reject" and v.rois[0].top_class == "crack"
    assert len(v.rois[0].probabilities) == 3


def test_copying_a_file_in_gives_the_same_verdict_as_replaying_it(dark: FramePipeline, tiles: Path, tmp_path: Path) -> None:
    src = next((tiles / "ng" / "crack").iterdir())
    shutil.copy(src, tmp_path / "copy.png")
    a, b = dark.process(read_file_frame(src)), dark.process(read_file_frame(tmp_path / "copy.png"))
    assert a.score == b.score and a.verdict == b.verdict


def test_keep_warm_runs_the_model_and_a_failure_is_logged_not_raised(models: dict[str, Path]) -> None:
    settings = load_settings(None, model={"providers": ["cpu"], "warmup_runs": 0})
    assert build_pipeline(settings, model_path=models["rois"]).keep_warm() is True
    broken = build_pipeline(load_settings(None, model={"providers": ["cpu"], "warmup_runs": 0}), model_path=models["broken"])
    with structlog.testing.capture_logs() as logs:
        assert broken.keep_warm() is False
    assert [e["event"] for e in logs] == ["keepalive_failed"]


@pytest.fixture(scope="module")
def twelve_bit(models: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> FramePipeline:
    """The dark-spot detector exported for a 12-bit camera's 16-bit frames (pixel_max 4095)."""
    from inspector.training.onnx_export import export_classifier
    from tests.conftest import GRAY64, _dark_spot_module

    path = tmp_path_factory.mktemp("twelve") / "dark12.onnx"
    export_classifier(_dark_spot_module(), GRAY64.model_copy(update={"pixel_max": 4095}), ("ok", "ng"), path)
    return _pipeline(path)


def test_a_12_bit_model_judges_12_bit_frames_and_rejects_other_depths_and_left_aligned_pixels(
    twelve_bit: FramePipeline, tmp_path: Path
) -> None:
    clean = tile(np.random.default_rng(3), 64, 64)
    frames = {
        "twelve.png": np.rint(clean * (4095 / 255)).astype(np.uint16),
        "eight.png": clean,
        "left_aligned.png": np.rint(clean * (4095 / 255)).astype(np.uint16) << 4,  # 12 bits in the top of 16
    }
    verdicts = {}
    for name, image in frames.items():
        cv2.imwrite(str(tmp_path / name), image)
        verdicts[name] = twelve_bit.process(read_file_frame(tmp_path / name))
    # Scaled by 65535 instead of 4095, the clean part would be near black: every patch a dark spot, and a reject.
    assert (verdicts["twelve.png"].verdict, verdicts["twelve.png"].reason) == ("pass", None)
    eight, left = verdicts["eight.png"], verdicts["left_aligned.png"]
    assert (eight.verdict, eight.reason.value) == ("reject", "unsupported_image")
    assert eight.detail == "8-bit frame; this model was trained on 16-bit frames (pixel_max 4095)"
    assert (left.verdict, left.reason.value) == ("reject", "unsupported_image")
    assert "above pixel_max 4095" in left.detail and left.rois == ()


def test_station_rois_must_place_the_models_rois_by_name(models: dict[str, Path]) -> None:
    from inspector.errors import InputError

    boxes = [(0, 0, 0.5, 0.5), (0.5, 0, 1, 0.5), (0, 0.5, 0.5, 1), (0.4, 0.4, 1, 1)]

    def station(names: list[str]) -> FramePipeline:
        rois = [{"name": n, "box": b, "units": "fraction"} for n, b in zip(names, boxes, strict=False)]
        return build_pipeline(load_settings(None, model={"providers": ["cpu"], "warmup_runs": 0}, rois=rois), model_path=models["rois"])

    # Same names, moved boxes, another order: the station's layout.
    assert station(["roi4", "roi2", "roi3", "roi1"]).roi_names == ("roi4", "roi2", "roi3", "roi1")
    with pytest.raises(InputError, match=r"trained on ROIs roi1, roi2, roi3, roi4.*missing roi4; not in the model left"):
        station(["roi1", "roi2", "roi3", "left"])
    with pytest.raises(InputError, match=r"missing roi3, roi4\)"):
        station(["roi1", "roi2"])
