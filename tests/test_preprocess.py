"""PreprocessSpec and its implementation, checked against results computed by hand."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest
from pydantic import ValidationError

from inspector.frame import FrameFault, Reason
from inspector.preprocess import (
    ColorMode,
    FrameSize,
    Preprocessor,
    PreprocessSpec,
    check_complete,
    decode,
)
from tests.conftest import gray_png


def _spec(**kw) -> PreprocessSpec:
    return PreprocessSpec.model_validate({"color": "gray", "resize": {"width": 8, "height": 8, "interpolation": "nearest"}, **kw})


def test_spec_json_round_trip_keeps_every_field() -> None:
    spec = PreprocessSpec(
        color="gray",
        clahe={"enabled": True, "clip_limit": 3.5, "tile_grid": (4, 2)},
        rois=[{"name": "left", "box": (0, 0, 0.5, 1), "units": "fraction"}, {"name": "px", "box": (1, 2, 30, 40)}],
        resize={"width": 96, "height": 64, "interpolation": "cubic", "letterbox": True, "pad_value": 0.5},
        normalize={"mean": [0.3], "std": [0.2]},
    )
    again = PreprocessSpec.from_json(spec.to_json())
    assert again == spec
    assert again.roi_names == ("left", "px")
    assert again.input_shape == (1, 64, 96)


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ({"rois": [{"name": "a", "box": (0, 0, 1.5, 1), "units": "fraction"}]}, "fraction box values must lie in 0..1"),
        ({"rois": [{"name": "a", "box": (0, 0, 10.5, 4)}]}, "whole numbers"),
        ({"rois": [{"name": "a", "box": (5, 0, 2, 4)}]}, "x_max > x_min"),
        ({"rois": [{"name": "a", "box": (0, 0, 2, 2)}, {"name": "a", "box": (2, 2, 4, 4)}]}, "unique"),
        ({"normalize": {"mean": [0.1, 0.2, 0.3]}}, r"needs 1 value\(s\) for color=gray"),
        ({"normalize": {"std": [0.0]}}, "std values must be > 0"),
        ({"color": "bgr"}, "'gray' or 'rgb'"),
        ({"resize": {"width": 2}}, "greater than or equal to 8"),
    ],
)
def test_invalid_specs_are_refused_with_what_was_expected(spec: dict, message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        PreprocessSpec.model_validate({"color": "gray", **spec})


def test_clahe_matches_the_hand_computed_lookup_table() -> None:
    # 16x16 frame, levels 10/100/200 with 100/100/56 pixels; one tile and a clip limit that does not bite,
    # so CLAHE is plain equalization: lut[v] = round(cdf(v) * 255 / 256).
    img = np.full(256, 200, np.uint8)
    img[:100], img[100:200] = 10, 100
    img = img.reshape(16, 16)
    p = Preprocessor(_spec(clahe={"enabled": True, "clip_limit": 100, "tile_grid": (1, 1)}))
    out = p.equalize(img)
    assert {int(v): int(out[img == v][0]) for v in (10, 100, 200)} == {10: 100, 100: 199, 200: 255}


def test_clahe_runs_on_16_bit_and_colour_keeping_the_shape_and_working_on_8_bits() -> None:
    rng = np.random.default_rng(0)
    gray16 = rng.integers(0, 65535, (32, 32), dtype=np.uint16)
    rgb8 = rng.integers(0, 255, (32, 32, 3), dtype=np.uint8)
    p = Preprocessor(_spec(clahe={"enabled": True}))
    out16 = p.equalize(gray16)
    assert out16.shape == gray16.shape and out16.dtype == np.uint8
    out = Preprocessor(PreprocessSpec(color="rgb", clahe={"enabled": True})).equalize(rgb8)
    assert out.shape == rgb8.shape and out.dtype == np.uint8 and not np.array_equal(out, rgb8)


def _scene(shape: tuple[int, ...] = (96, 128)) -> np.ndarray:
    yy, xx = np.mgrid[0 : shape[0], 0 : shape[1]]
    noise = np.random.default_rng(0).normal(0, 6, shape[:2])
    return (100 + 40 * np.sin(xx / 9) + 20 * np.cos(yy / 7) + noise).clip(0, 255).astype(np.uint8)


@pytest.mark.parametrize("color", ["gray", "rgb"])
def test_clahe_on_a_16_bit_frame_equals_clahe_on_the_8_bit_frame_of_the_same_scene(color: str) -> None:
    g8 = _scene()
    img8 = g8 if color == "gray" else np.dstack([g8, 255 - g8, g8 // 2])
    img16 = img8.astype(np.uint16) * 257  # the same scene, 16-bit
    spec = PreprocessSpec(color=color, clahe={"enabled": True, "clip_limit": 2.0, "tile_grid": (4, 4)}, resize={"width": 32, "height": 32})
    p = Preprocessor(spec)
    eq8, eq16 = p.equalize(img8), p.equalize(img16)
    assert not np.array_equal(eq8, img8), "CLAHE changes the scene"
    assert np.abs(eq16.astype(int) - eq8.astype(int)).max() <= 1
    np.testing.assert_allclose(p(img16), p(img8), atol=2 / 255 / 0.2)


def test_clahe_on_a_12_bit_frame_scales_by_pixel_max() -> None:
    g8 = _scene()
    spec = _spec(clahe={"enabled": True, "tile_grid": (4, 4)}, pixel_max=4095)
    out = Preprocessor(spec).equalize(np.rint(g8 * (4095 / 255)).astype(np.uint16))  # the scene at 12 bits
    reference = Preprocessor(_spec(clahe={"enabled": True, "tile_grid": (4, 4)})).equalize(g8)
    assert np.abs(out.astype(int) - reference.astype(int)).max() <= 1


def test_pixel_max_is_left_out_of_the_json_when_unset_so_existing_hashes_stay() -> None:
    import hashlib

    expected = (
        '{"clahe":{"clip_limit":2.0,"enabled":false,"tile_grid":[8,8]},"color":"gray","normalize":{"mean":null,"std":null},'
        '"resize":{"height":8,"interpolation":"nearest","letterbox":false,"pad_value":0.0,"width":8},"rois":[]}'
    )
    spec = _spec()
    assert spec.to_json() == expected
    assert hashlib.sha256(spec.to_json().encode()).hexdigest() == hashlib.sha256(expected.encode()).hexdigest()
    assert "pixel_max" not in spec.model_dump()
    deep = _spec(pixel_max=4095)
    assert '"pixel_max":4095' in deep.to_json()
    assert PreprocessSpec.from_json(deep.to_json()) == deep
    assert PreprocessSpec.from_json(expected).pixel_max is None


def test_frame_size_is_left_out_of_the_json_when_unset_so_existing_hashes_stay() -> None:
    import hashlib

    # The bytes (and so the sha256 a calibration record pins) of a spec from before frame_size existed.
    expected = (
        '{"clahe":{"clip_limit":2.0,"enabled":false,"tile_grid":[8,8]},"color":"gray","normalize":{"mean":null,"std":null},'
        '"resize":{"height":8,"interpolation":"nearest","letterbox":false,"pad_value":0.0,"width":8},"rois":[]}'
    )
    spec = _spec()
    assert spec.frame_size is None and spec.to_json() == expected
    assert hashlib.sha256(spec.to_json().encode()).hexdigest() == "f03f2d06824a7b6d6a8206a1fecdc81708f48e359d3c62b53980902adf454aec"
    assert "frame_size" not in spec.model_dump() and "frame_size" not in spec.model_dump(mode="json")
    assert PreprocessSpec.from_json(expected).frame_size is None
    ranged = _spec(pixel_max=255, frame_size={"min_width": 122, "max_width": 608, "min_height": 227, "max_height": 399})
    assert '"frame_size":{"applies_to":"frame","max_height":399,"max_width":608,"min_height":227,"min_width":122}' in ranged.to_json()
    assert PreprocessSpec.from_json(ranged.to_json()) == ranged
    assert ranged.frame_size == FrameSize(min_width=122, max_width=608, min_height=227, max_height=399)
    anything = _spec(frame_size="any")
    assert '"frame_size":"any"' in anything.to_json() and PreprocessSpec.from_json(anything.to_json()).frame_size == "any"
    assert anything.trained_size is None  # recorded on purpose: no check


@pytest.mark.parametrize(
    ("frame_size", "loc", "message"),
    [
        ({"min_width": 600, "max_width": 400, "min_height": 1, "max_height": 2}, ("frame_size",), "min_width 600 is above max_width 400"),
        ({"min_width": 1, "max_width": 2, "min_height": 9, "max_height": 2}, ("frame_size",), "min_height 9 is above max_height 2"),
        ({"min_width": 0, "max_width": 2, "min_height": 1, "max_height": 2}, ("frame_size", "min_width"), "greater than or equal to 1"),
        ({"min_width": 1, "max_width": 2**20 + 1, "min_height": 1, "max_height": 2}, ("frame_size", "max_width"), "less than or equal to 1048576"),
        ({"min_width": 1, "max_width": 2}, ("frame_size", "min_height"), "Field required"),
        ("all", ("frame_size",), "expected any, or a range {min_width, max_width, min_height, max_height} in pixels; got 'all'"),
        (640, ("frame_size",), "expected any, or a range"),
    ],
    ids=["width-reversed", "height-reversed", "zero", "above-opencv", "incomplete", "unknown-word", "number"],
)
def test_a_frame_size_that_is_no_range_is_refused_once_naming_the_key(frame_size: object, loc: tuple[str, ...], message: str) -> None:
    with pytest.raises(ValidationError) as info:
        _spec(frame_size=frame_size)
    errors = info.value.errors()
    assert errors[0]["loc"] == loc and message in errors[0]["msg"]
    assert all(e["loc"][:1] == ("frame_size",) for e in errors) and not any("literal" in str(e["loc"]) for e in errors)


_TRAINED = {"min_width": 122, "max_width": 608, "min_height": 227, "max_height": 399}


@pytest.mark.parametrize(
    ("shape", "says"),
    [
        ((1, 1), "1x1 frame; this model was trained on frames 122..608 wide and 227..399 high"),
        ((300, 609), "609x300 frame; this model was trained on frames 122..608 wide and 227..399 high"),
        ((400, 300), "300x400 frame; this model was trained on frames 122..608 wide and 227..399 high"),
        ((226, 121, 3), "121x226 frame; this model was trained on frames 122..608 wide and 227..399 high"),
    ],
    ids=["1x1", "too-wide", "too-high", "both-too-small-rgb"],
)
def test_a_frame_outside_the_trained_sizes_is_a_frame_size_fault(shape: tuple[int, ...], says: str) -> None:
    with pytest.raises(FrameFault) as info:
        # A 16-bit frame for an 8-bit model: the size is checked first, from the shape alone.
        Preprocessor(_spec(frame_size=_TRAINED, pixel_max=255, clahe={"enabled": True}))(np.zeros(shape, np.uint16))
    assert info.value.reason is Reason.FRAME_SIZE
    assert info.value.detail == says


def test_frames_inside_the_trained_sizes_are_preprocessed_as_without_the_check() -> None:
    rng = np.random.default_rng(4)
    plain = Preprocessor(_spec(clahe={"enabled": True}))
    checked = Preprocessor(_spec(clahe={"enabled": True}, frame_size=_TRAINED))
    for h, w in ((227, 122), (399, 608), (300, 400)):
        frame = rng.integers(0, 256, (h, w), np.uint8)
        np.testing.assert_array_equal(checked(frame), plain(frame))
    one = Preprocessor(_spec(frame_size={"min_width": 64, "max_width": 64, "min_height": 48, "max_height": 48}))
    with pytest.raises(FrameFault, match="48x64 frame; this model was trained on 64x48 frames"):
        one(np.zeros((64, 48), np.uint8))
    assert Preprocessor(_spec(frame_size="any"))(np.zeros((1, 1), np.uint8)).shape == (1, 1, 8, 8)


def test_a_range_applied_to_rois_checks_each_crop_and_leaves_the_frame_free() -> None:
    crops = {"min_width": 40, "max_width": 60, "min_height": 40, "max_height": 60, "applies_to": "roi"}
    spec = _spec(frame_size=crops, rois=[{"name": "left", "box": (0, 0, 0.5, 1), "units": "fraction"},
                                         {"name": "right", "box": (0.5, 0, 1, 1), "units": "fraction"}])
    pre = Preprocessor(spec)
    assert pre(np.zeros((50, 100), np.uint8)).shape == (2, 1, 8, 8)  # the frame is 100 wide: only the 50x50 crops count
    with pytest.raises(FrameFault) as info:
        pre(np.zeros((100, 200), np.uint8))
    assert info.value.reason is Reason.FRAME_SIZE
    assert info.value.detail == (
        "ROI left is 100x100 on this 200x100 frame; this model was trained on images 40..60 wide and 40..60 high "
        "and judges each ROI crop as one of them"
    )
    # A pixel ROI that does not fit keeps its own, more precise reason.
    big = Preprocessor(_spec(frame_size=crops, rois=[{"name": "px", "box": (0, 0, 50, 50)}]))
    with pytest.raises(FrameFault) as info:
        big(np.zeros((30, 30), np.uint8))
    assert info.value.reason is Reason.ROI_OUT_OF_BOUNDS


@pytest.mark.parametrize("value", [0, 1, 100, 254, 65536])
def test_pixel_max_that_names_no_bit_depth_is_refused(value: int) -> None:
    with pytest.raises(ValidationError, match="pixel_max"):
        _spec(pixel_max=value)


def test_a_12_bit_frame_is_normalized_by_its_pixel_max() -> None:
    img = np.zeros((8, 8), np.uint16)
    img[:, 4:] = 4095
    img[0, 0] = 2048
    batch = Preprocessor(_spec(pixel_max=4095, normalize={"mean": [0.0], "std": [1.0]}))(img)[0, 0]
    assert batch[0, 7] == pytest.approx(1.0)
    assert batch[0, 0] == pytest.approx(2048 / 4095)
    assert batch[1, 0] == 0.0


def test_letterbox_pads_a_12_bit_frame_at_the_pad_value_of_its_pixel_max() -> None:
    crop = np.full((8, 16), 4095, np.uint16)
    spec = _spec(resize={"width": 8, "height": 8, "interpolation": "nearest", "letterbox": True, "pad_value": 0.5},
                 pixel_max=4095, normalize={"mean": [0.0], "std": [1.0]})
    batch = Preprocessor(spec)(crop)[0, 0]
    assert batch[0, 0] == pytest.approx(0.5, abs=1e-3) and batch[4, 4] == pytest.approx(1.0)


@pytest.mark.parametrize(
    ("pixel_max", "image", "says"),
    [
        (255, np.zeros((8, 8), np.uint16), "16-bit frame; this model was trained on 8-bit frames (pixel_max 255)"),
        (4095, np.zeros((8, 8), np.uint8), "8-bit frame; this model was trained on 16-bit frames (pixel_max 4095)"),
        (65535, np.zeros((8, 8, 3), np.uint8), "8-bit frame; this model was trained on 16-bit frames (pixel_max 65535)"),
        (4095, np.full((8, 8), 4096 * 16 - 16, np.uint16), "pixel value 65520 above pixel_max 4095"),
    ],
    ids=["16-on-8", "8-on-12", "8-on-16", "left-aligned-12"],
)
def test_a_frame_of_another_bit_depth_or_above_pixel_max_is_an_unsupported_image(pixel_max: int, image: np.ndarray, says: str) -> None:
    with pytest.raises(FrameFault) as info:
        Preprocessor(_spec(pixel_max=pixel_max))(image)
    assert info.value.reason is Reason.UNSUPPORTED_IMAGE
    assert info.value.detail.startswith(says)


def test_without_pixel_max_any_depth_is_scaled_by_its_container() -> None:
    p = Preprocessor(_spec(normalize={"mean": [0.0], "std": [1.0]}))
    assert p(np.full((8, 8), 255, np.uint8))[0, 0, 0, 0] == pytest.approx(1.0)
    assert p(np.full((8, 8), 65535, np.uint16))[0, 0, 0, 0] == pytest.approx(1.0)


def test_pixel_roi_crop_resize_and_normalize_give_the_hand_computed_batch() -> None:
    frame = np.arange(6 * 10, dtype=np.uint8).reshape(6, 10) * 4  # values 0..236
    spec = _spec(rois=[{"name": "r", "box": (2, 1, 6, 5)}], normalize={"mean": [0.5], "std": [0.25]})
    batch = Preprocessor(spec)(frame)
    crop = frame[1:5, 2:6]  # 4x4, nearest-upscaled to 8x8: every pixel becomes a 2x2 block
    expected = (np.repeat(np.repeat(crop, 2, 0), 2, 1) / 255.0 - 0.5) / 0.25
    assert batch.shape == (1, 1, 8, 8) and batch.dtype == np.float32
    np.testing.assert_allclose(batch[0, 0], expected, atol=1e-5)


def test_fraction_rois_map_to_pixels_and_come_out_in_order() -> None:
    frame = np.zeros((8, 16), np.uint8)
    frame[:, 8:] = 255  # right half white
    spec = _spec(
        rois=[
            {"name": "right", "box": (0.5, 0, 1, 1), "units": "fraction"},
            {"name": "left", "box": (0, 0, 0.5, 1), "units": "fraction"},
        ],
        normalize={"mean": [0.0], "std": [1.0]},
    )
    batch = Preprocessor(spec)(frame)
    assert spec.roi_names == ("right", "left")
    assert batch.shape == (2, 1, 8, 8)
    assert np.all(batch[0] == 1.0) and np.all(batch[1] == 0.0)


def test_letterbox_keeps_aspect_and_pads_with_the_pad_value() -> None:
    crop = np.full((8, 16), 0, np.uint8)  # 2:1, into 8x8: scaled to 8x4, centred, rows 0-1 and 6-7 padded
    spec = _spec(resize={"width": 8, "height": 8, "interpolation": "nearest", "letterbox": True, "pad_value": 1.0},
                 normalize={"mean": [0.0], "std": [1.0]})
    batch = Preprocessor(spec)(crop)[0, 0]
    assert np.all(batch[:2] == 1.0) and np.all(batch[6:] == 1.0)
    assert np.all(batch[2:6] == 0.0)


def test_rgb_mode_delivers_rgb_order_from_a_bgr_file(tmp_path: Path) -> None:
    blue_bgr = np.zeros((8, 8, 3), np.uint8)
    blue_bgr[:, :, 0] = 255
    path = tmp_path / "blue.png"
    cv2.imwrite(str(path), blue_bgr)
    image = decode(path.read_bytes(), ColorMode.RGB)
    assert image.shape == (8, 8, 3)
    assert image[0, 0].tolist() == [0, 0, 255]
    spec = PreprocessSpec(color="rgb", resize={"width": 8, "height": 8}, normalize={"mean": [0, 0, 0], "std": [1, 1, 1]})
    batch = Preprocessor(spec)(image)
    assert batch.shape == (1, 3, 8, 8)
    assert batch[0, 2].min() == 1.0 and batch[0, 0].max() == 0.0


@pytest.mark.parametrize("clahe", [False, True])
def test_a_gray_frame_in_rgb_mode_gives_exactly_what_expanding_it_to_rgb_first_gives(clahe: bool) -> None:
    gray = np.random.default_rng(4).integers(0, 255, (40, 56), dtype=np.uint8)
    spec = PreprocessSpec(color="rgb", clahe={"enabled": clahe, "tile_grid": (2, 2)}, resize={"width": 24, "height": 16},
                          rois=[{"name": "a", "box": (0, 0, 0.5, 1), "units": "fraction"}, {"name": "b", "box": (8, 4, 56, 40)}])
    p = Preprocessor(spec)
    planar = p(gray)
    expanded = p(cv2.cvtColor(gray, cv2.COLOR_GRAY2RGB))
    assert planar.shape == (2, 3, 16, 24)
    np.testing.assert_array_equal(planar, expanded)


def test_gray_file_in_rgb_mode_and_colour_file_in_gray_mode(tmp_path: Path) -> None:
    gray = gray_png(tmp_path / "g.png", np.full((8, 8), 100, np.uint8))
    assert decode(gray.read_bytes(), ColorMode.RGB).shape == (8, 8)  # one plane until normalize
    assert Preprocessor(PreprocessSpec(color="rgb", resize={"width": 8, "height": 8}))(decode(gray.read_bytes(), ColorMode.RGB)).shape == (1, 3, 8, 8)
    colour = tmp_path / "c.png"
    cv2.imwrite(str(colour), np.full((8, 8, 3), 100, np.uint8))
    assert decode(colour.read_bytes(), ColorMode.GRAY).shape == (8, 8)


def test_16_bit_frames_scale_by_full_16_bit_range(tmp_path: Path) -> None:
    img = np.full((8, 8), 65535, np.uint16)
    img[:, :4] = 0
    path = gray_png(tmp_path / "deep.png", img)
    image = decode(path.read_bytes(), ColorMode.GRAY)
    assert image.dtype == np.uint16
    batch = Preprocessor(_spec(normalize={"mean": [0.0], "std": [1.0]}))(image)
    assert batch[0, 0, 0, 0] == 0.0 and batch[0, 0, 0, 7] == pytest.approx(1.0)


def _jpeg(tmp_path: Path) -> bytes:
    path = tmp_path / "x.jpg"
    cv2.imwrite(str(path), np.random.default_rng(0).integers(0, 255, (32, 32), dtype=np.uint8))
    return path.read_bytes()


def _png(tmp_path: Path) -> bytes:
    return gray_png(tmp_path / "x.png", np.random.default_rng(0).integers(0, 255, (32, 32), dtype=np.uint8)).read_bytes()


@pytest.mark.parametrize(
    ("make", "reason"),
    [
        (lambda t: b"", Reason.EMPTY_FILE),
        (lambda t: b"hello, I am a text file\n", Reason.NOT_AN_IMAGE),
        (lambda t: _jpeg(t)[:-200], Reason.TRUNCATED),
        (lambda t: _jpeg(t)[:-2], Reason.TRUNCATED),
        (lambda t: _png(t)[:-12], Reason.TRUNCATED),
        (lambda t: b"BM" + (10_000).to_bytes(4, "little") + b"\x00" * 100, Reason.TRUNCATED),
        (lambda t: b"\xff\xd8\xff" + bytes(range(256)) * 4 + b"\xff\xd9", Reason.DECODE_FAILED),
    ],
    ids=["empty", "text", "jpeg-cut", "jpeg-no-eoi", "png-cut", "bmp-cut", "jpeg-garbage"],
)
def test_decode_faults_name_their_reason(tmp_path: Path, make, reason: Reason) -> None:
    with pytest.raises(FrameFault) as info:
        decode(make(tmp_path), ColorMode.GRAY)
    assert info.value.reason is reason
    assert info.value.detail


def _damaged_jpeg(tmp_path: Path) -> bytes:
    """A JPEG with its end marker whose scan has a run of zeros in the middle: a bad sector, not a partial write."""
    path = tmp_path / "x.jpg"
    cv2.imwrite(str(path), np.random.default_rng(1).integers(0, 255, (256, 256), dtype=np.uint8))
    data = bytearray(path.read_bytes())
    middle = len(data) // 2
    data[middle : middle + 2000] = bytes(2000)
    return bytes(data)


def test_a_jpeg_damaged_inside_is_a_decode_fault_though_it_ends_with_its_end_marker(
    tmp_path: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    data = _damaged_jpeg(tmp_path)
    assert check_complete(data) == "jpeg"
    assert cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_GRAYSCALE) is not None, "OpenCV alone hands back a picture"
    capfd.readouterr()
    with pytest.raises(FrameFault) as info:
        decode(data, ColorMode.GRAY)
    assert info.value.reason is Reason.DECODE_FAILED
    assert info.value.detail.startswith("damaged JPEG data (libjpeg: Corrupt JPEG data: ")
    assert capfd.readouterr().err == "", "libjpeg's warning becomes the fault's detail, not noise on stderr"


def test_what_other_threads_print_while_a_jpeg_decodes_still_reaches_stderr(tmp_path: Path, capfd: pytest.CaptureFixture[str]) -> None:
    import os
    import threading

    data = _jpeg(tmp_path)
    stop = threading.Event()
    written = []

    def chatter() -> None:
        while not stop.is_set():
            os.write(2, b"other thread\n")
            written.append(1)

    capfd.readouterr()
    thread = threading.Thread(target=chatter)
    thread.start()
    try:
        for _ in range(200):
            assert decode(data, ColorMode.GRAY).shape == (32, 32)
    finally:
        stop.set()
        thread.join()
    err = capfd.readouterr().err
    assert err.splitlines() == ["other thread"] * len(written), "none lost, though some were written while fd 2 was borrowed"


def test_complete_files_pass_the_end_marker_check_even_with_zero_padding(tmp_path: Path) -> None:
    assert check_complete(_jpeg(tmp_path) + b"\x00" * 16) == "jpeg"
    assert check_complete(_png(tmp_path)) == "png"


@pytest.mark.parametrize("trailer", [b"\n", b"\r\n", b"FRAME 000123\x00\x01", bytes(range(1, 65))], ids=["lf", "crlf", "counter", "64"])
@pytest.mark.parametrize("make", [_jpeg, _png], ids=["jpeg", "png"])
def test_a_complete_file_with_a_short_trailer_after_its_end_marker_decodes(tmp_path: Path, make, trailer: bytes) -> None:
    data = make(tmp_path)
    image = decode(data + trailer, ColorMode.GRAY)
    np.testing.assert_array_equal(image, decode(data, ColorMode.GRAY))


@pytest.mark.parametrize("make", [_jpeg, _png], ids=["jpeg", "png"])
def test_a_long_trailer_or_a_cut_file_followed_by_bytes_is_still_truncated(tmp_path: Path, make) -> None:
    data = make(tmp_path)
    for bad in (data + bytes(range(1, 66)), data[:-40] + b"\n", data[: len(data) // 2] + b"\x00" * 500):
        with pytest.raises(FrameFault) as info:
            decode(bad, ColorMode.GRAY)
        assert info.value.reason is Reason.TRUNCATED


def _jpeg_with_thumbnail(tmp_path: Path) -> bytes:
    """A 256x256 JPEG with an APP1 segment holding an EXIF-like thumbnail: a complete small JPEG, EOI included."""
    big = tmp_path / "big.jpg"
    cv2.imwrite(str(big), np.random.default_rng(2).integers(0, 255, (256, 256), dtype=np.uint8))
    thumb = tmp_path / "thumb.jpg"
    cv2.imwrite(str(thumb), np.full((8, 8), 128, np.uint8))
    payload = b"Exif\x00\x00" + thumb.read_bytes()
    app1 = b"\xff\xe1" + (len(payload) + 2).to_bytes(2, "big") + payload
    data = big.read_bytes()
    return data[:2] + app1 + data[2:]


def test_a_jpeg_cut_just_after_its_exif_thumbnail_is_truncated_though_a_thumbnail_eoi_is_near_its_end(tmp_path: Path) -> None:
    data = _jpeg_with_thumbnail(tmp_path)
    assert decode(data + b"\n", ColorMode.GRAY).shape == (256, 256)
    thumb_end = data.index(b"\xff\xd9") + 2  # the thumbnail's EOI, inside APP1
    # Each cut leaves the thumbnail's EOI within the trailer's reach of the end.
    for cut in (thumb_end + 1, thumb_end + 10, thumb_end + 60):
        with pytest.raises(FrameFault) as info:
            check_complete(data[:cut])
        assert info.value.reason is Reason.TRUNCATED


def test_a_pixel_roi_outside_the_frame_is_a_fault_not_a_silent_clip() -> None:
    p = Preprocessor(_spec(rois=[{"name": "far", "box": (0, 0, 100, 8)}]))
    with pytest.raises(FrameFault) as info:
        p(np.zeros((8, 50), np.uint8))
    assert info.value.reason is Reason.ROI_OUT_OF_BOUNDS
    assert "far" in info.value.detail and "50x8" in info.value.detail
