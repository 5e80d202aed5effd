"""Samples from labelled layouts, the stratified split, and augmentation on top of the runtime preprocessing."""

from __future__ import annotations

import json
import shutil
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch

from inspector.errors import InputError
from inspector.preprocess import FrameSize, Preprocessor, PreprocessSpec
from inspector.samples import GRID_ROIS
from inspector.training.data import (
    ImageCache,
    augment,
    collect_samples,
    kfold_splits,
    regex_groups,
    stratified_split,
)
from inspector.training.recipe import Augment
from tests.conftest import exif_png, fifo, gray_png
from tests.training.conftest import (
    FAST,
    flat_png,
    square_part,
    train_cli,
    two_camera_parts,
)

GRAY32 = PreprocessSpec(color="gray", resize={"width": 32, "height": 32})
ROI_SPEC = PreprocessSpec(
    color="gray", resize={"width": 32, "height": 32}, rois=[{"name": n, "box": b, "units": "fraction"} for n, b in GRID_ROIS.items()]
)


def test_layout_gives_binary_or_data_driven_multi_class(parts: Path) -> None:
    binary = collect_samples(parts, GRAY32)
    assert binary.classes == ("ok", "ng")
    assert Counter(s.label for s in binary.samples) == {"ok": 40, "ng": 24}
    assert all("masks" not in s.key for s in binary.samples)
    multi = collect_samples(parts, GRAY32, multi=True)
    assert multi.classes == ("ok", "blowhole", "crack")
    assert Counter(multi.targets.tolist()) == {0: 40, 1: 12, 2: 12}


def test_images_without_a_label_are_counted_not_trained_on(parts: Path, tmp_path: Path) -> None:
    data = tmp_path / "data"
    shutil.copytree(parts, data)
    shutil.copy(next((parts / "ok").iterdir()), data / "stray.png")
    found = collect_samples(data, GRAY32)
    assert found.unlabelled == ("stray.png",)
    assert "stray.png" not in {s.key for s in found.samples} and len(found.samples) == 64


def test_each_roi_of_a_labelled_frame_is_one_sample(roi_frames: tuple[Path, Path]) -> None:
    root, _csv_path = roi_frames
    found = collect_samples(root, ROI_SPEC)  # labels.csv found beside the frames
    assert len(found.samples) == 10 * 4
    assert {s.roi for s in found.samples} == {0, 1, 2, 3}
    first = [s for s in found.samples if s.key.startswith("frames/000.png#")]
    assert [s.key for s in first] == [f"frames/000.png#{n}" for n in GRID_ROIS]
    cache = ImageCache(ROI_SPEC)
    cache.load([s.path for s in first])
    # The crop of ROI roi2 is exactly what the runtime cuts for that ROI.
    runtime = Preprocessor(ROI_SPEC)(Preprocessor(ROI_SPEC).decode(first[1].path.read_bytes()))
    assert np.array_equal(cache.tensor(cache.crop(first[1])), runtime[1])


def test_roi_labels_without_roi_boxes_are_refused(roi_frames: tuple[Path, Path]) -> None:
    root, _ = roi_frames
    with pytest.raises(InputError, match=r"per-ROI labels need ROI boxes; give the station's `preprocess.rois`"):
        collect_samples(root, GRAY32)


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda r: None, "no images found"),
        (lambda r: (r / "ok").mkdir() or flat_png(r / "ok" / "a.png"), "every sample is 'ok'; training needs both ok and ng"),
        (lambda r: (r / "ng" / "x").mkdir(parents=True) or flat_png(r / "ng" / "x" / "a.png"), "every sample is 'ng'"),
        (lambda r: flat_png(r / "loose.png"), "no labels found; expected ok/ and ng/<defect>/ folders"),
    ],
)
def test_unusable_datasets_are_explained(tmp_path: Path, make, message: str) -> None:
    make(tmp_path)
    with pytest.raises(InputError, match=message):
        collect_samples(tmp_path, GRAY32)


def test_split_is_stratified_by_defect_and_reproducible(parts: Path) -> None:
    s = collect_samples(parts, GRAY32)
    train, val = stratified_split(s, 0.25, seed=0)
    assert sorted([*train, *val]) == list(range(len(s.samples)))
    strata = Counter(s.samples[i].stratum for i in val)
    assert strata == {"ok": 10, "ng/crack": 3, "ng/blowhole": 3}
    again = stratified_split(s, 0.25, seed=0)
    assert np.array_equal(val, again[1])
    assert not np.array_equal(val, stratified_split(s, 0.25, seed=1)[1])


def test_a_class_too_small_to_split_is_named(tmp_path: Path) -> None:
    for i in range(4):
        flat_png(tmp_path / "ok" / f"{i}.png")
    flat_png(tmp_path / "ng" / "chip" / "0.png")
    s = collect_samples(tmp_path, GRAY32)
    with pytest.raises(InputError, match="class 'ng/chip' has 1 sample; a train/validation split needs at least 2"):
        stratified_split(s, 0.2, 0)
    with pytest.raises(InputError, match="3-fold cross-validation needs at least 3 of each"):
        kfold_splits(s, 3, 0)


def test_k_folds_validate_every_sample_exactly_once(parts: Path) -> None:
    s = collect_samples(parts, GRAY32)
    folds = kfold_splits(s, 4, seed=0)
    validated = np.concatenate([v for _, v in folds])
    assert sorted(validated.tolist()) == list(range(len(s.samples)))
    for train, val in folds:
        assert not set(train) & set(val)
        assert Counter(s.samples[i].stratum for i in val)["ng/crack"] == 3


def test_unreadable_images_are_all_listed(tmp_path: Path) -> None:
    for i in range(3):
        flat_png(tmp_path / "ok" / f"{i}.png")
    flat_png(tmp_path / "ng" / "a.png")
    (tmp_path / "ng" / "notes.png").write_text("not an image")
    good = (tmp_path / "ok" / "0.png").read_bytes()
    (tmp_path / "ok" / "cut.png").write_bytes(good[: len(good) // 2])
    s = collect_samples(tmp_path, GRAY32)
    with pytest.raises(InputError) as err:
        ImageCache(GRAY32).load([x.path for x in s.samples])
    text = str(err.value)
    assert text.startswith("2 image(s) cannot be used for training")
    assert "notes.png: not_an_image" in text and "cut.png: truncated" in text


def test_a_pipe_or_a_broken_link_among_the_images_is_named_before_anything_is_read(tmp_path: Path) -> None:
    for i in range(3):
        flat_png(tmp_path / "ok" / f"{i}.png")
        flat_png(tmp_path / "ng" / "crack" / f"{i}.png")
    pipe = fifo(tmp_path / "ok" / "fifo.png")  # reading it would wait for a writer forever
    broken = tmp_path / "ng" / "crack" / "x.png"
    broken.symlink_to(tmp_path / "nonexistent.png")
    with pytest.raises(InputError) as err:
        collect_samples(tmp_path, GRAY32)
    text = str(err.value)
    assert text.startswith("2 image(s) cannot be used for training")
    assert f"{pipe}: unreadable: a named pipe (FIFO), not a regular file" in text and f"{broken}: unreadable: No such file or directory" in text
    with pytest.raises(InputError, match=r"fifo.png: unreadable: a named pipe \(FIFO\), not a regular file"):
        ImageCache(GRAY32).load([tmp_path / "ok" / "0.png", pipe])  # a pipe put there after the listing: named, never waited on


def test_roi_jitter_moves_the_box_but_never_out_of_the_frame(roi_frames: tuple[Path, Path]) -> None:
    root, _ = roi_frames
    s = collect_samples(root, ROI_SPEC)
    cache = ImageCache(ROI_SPEC)
    cache.load([x.path for x in s.samples[:4]])
    corner = s.samples[0]  # roi1, top-left: a shift up/left must stop at the edge
    assert np.array_equal(cache.crop(corner, (-0.2, -0.2)), cache.crop(corner))
    assert not np.array_equal(cache.crop(corner, (0.2, 0.2)), cache.crop(corner))


def test_augment_is_deterministic_for_a_seed_and_keeps_dtype_and_shape() -> None:
    img = np.random.default_rng(0).integers(0, 255, (32, 32), dtype=np.uint8)
    aug = Augment(rotate_deg=15, brightness=0.3, contrast=0.3)
    a, _ = augment(img, aug, np.random.default_rng(7), full_scale=255)
    b, _ = augment(img, aug, np.random.default_rng(7), full_scale=255)
    assert np.array_equal(a, b) and a.dtype == np.uint8 and a.shape == img.shape
    off = Augment(hflip=False, vflip=False, rotate_deg=0, brightness=0, contrast=0, roi_jitter=0)
    assert np.array_equal(augment(img, off, np.random.default_rng(7), full_scale=255)[0], img)
    wide = np.zeros((32, 32), np.uint16) + 1000
    assert augment(wide, aug, np.random.default_rng(1), full_scale=65535)[0].dtype == np.uint16


def test_brightness_augmentation_of_12_bit_frames_works_in_their_full_scale() -> None:
    img = np.random.default_rng(0).normal(2000, 300, (64, 64)).clip(0, 4095).astype(np.uint16)
    aug = Augment(hflip=False, vflip=False, rotate_deg=0, brightness=0.2, contrast=0.1)
    spec = GRAY32.model_copy(update={"pixel_max": 4095})
    rng = np.random.default_rng(1)
    outs = [augment(img, aug, rng, full_scale=spec.full_scale(img.dtype))[0] for _ in range(200)]
    # Shifted by up to 0.2 x 65535, most 12-bit samples would be clipped to black or pushed past 4095.
    assert max(int(o.max()) for o in outs) <= 4095
    assert max(float((o == 0).mean()) for o in outs) < 0.05
    shifts = [float(o.mean()) - float(img.mean()) for o in outs]
    assert 0.1 * 4095 < max(shifts) <= 0.2 * 4095 + 1 and -0.2 * 4095 - 1 <= min(shifts) < -0.1 * 4095


def test_the_rois_of_a_frame_stay_on_one_side_of_the_split(roi_frames: tuple[Path, Path]) -> None:
    root, _ = roi_frames
    s = collect_samples(root, ROI_SPEC)
    train, val = stratified_split(s, 0.3, seed=0)
    train_frames = {s.samples[i].path for i in train}
    val_frames = {s.samples[i].path for i in val}
    assert val_frames and not train_frames & val_frames
    assert len(val) == 4 * len(val_frames)


def test_zoom_keeps_the_chosen_part_of_the_box(parts: Path) -> None:
    s = collect_samples(parts, GRAY32)
    cache = ImageCache(GRAY32)
    cache.load([s.samples[0].path])
    frame = cache.frame(s.samples[0].path)
    h, w = frame.shape
    top_left = cache.crop(s.samples[0], zoom=(0.5, 0.5, 0.0, 0.0))
    assert np.array_equal(top_left, cache.pre.resize(frame[: h // 2, : w // 2]))
    bottom_right = cache.crop(s.samples[0], zoom=(0.5, 0.5, 1.0, 1.0))
    assert np.array_equal(bottom_right, cache.pre.resize(frame[h - h // 2 :, w - w // 2 :]))


def test_defect_masks_move_with_the_crop_the_flips_and_the_transpose(tmp_path: Path) -> None:
    root = square_part(tmp_path)
    spec = PreprocessSpec(color="gray", resize={"width": 32, "height": 32})
    samples = collect_samples(root, spec)
    cache = ImageCache(spec)
    cache.load([s.path for s in samples.samples])
    assert cache.load_masks(samples.samples, root) == 1
    by_name = {s.path.name: s for s in samples.samples}
    aug = Augment(hflip=True, vflip=True, transpose=True, rotate_deg=0, brightness=0, contrast=0)
    for seed in range(8):
        rng = np.random.default_rng(seed)
        shift, zoom = tuple(rng.uniform(-0.2, 0.2, 2)), (*rng.uniform(0.7, 1, 2), *rng.uniform(0, 1, 2))
        image, mask = augment(cache.crop(by_name["sq.png"], shift, zoom), aug, rng, cache.crop_mask(by_name["sq.png"], shift, zoom),
                              full_scale=255)
        assert mask is not None and mask.shape == image.shape and mask.max() == 255
        # The square's pixels in the image are the mask's pixels, whatever the shift, zoom and flips did.
        assert np.array_equal(image > 145, mask > 127), seed
    assert not cache.crop_mask(by_name["ok0.png"]).any()  # OK parts are defect-free
    assert cache.crop_mask(by_name["nomask.png"]) is None  # an NG part without a mask: location unknown


def test_a_mask_that_does_not_fit_its_image_is_named(tmp_path: Path) -> None:
    import cv2

    root = square_part(tmp_path)
    cv2.imwrite(str(root / "masks" / "ng" / "crack" / "sq.png"), np.zeros((10, 20), np.uint8))
    samples = collect_samples(root, GRAY32)
    cache = ImageCache(GRAY32)
    cache.load([s.path for s in samples.samples])
    with pytest.raises(InputError, match=r"1 defect mask\(s\) cannot be used:\n  .*masks/ng/crack/sq.png: 20x10, expected a 64x64 image"):
        cache.load_masks(samples.samples, root)


def _sides(s: object, val: np.ndarray) -> dict[str, set[bool]]:
    held = set(val.tolist())
    parts: dict[str, set[bool]] = {}
    for i, sample in enumerate(s.samples):  # type: ignore[attr-defined]
        parts.setdefault(Path(sample.key).name.split("_")[0], set()).add(i in held)
    return parts


def test_images_of_one_part_stay_on_one_side_of_the_split_and_in_one_fold(tmp_path: Path) -> None:
    s = collect_samples(two_camera_parts(tmp_path), GRAY32)
    by_part = regex_groups(r"(SN\d+)_cam")
    ungrouped = _sides(s, stratified_split(s, 0.25, seed=0)[1])
    assert any(len(v) == 2 for v in ungrouped.values())  # per image, some parts land on both sides
    train, val = stratified_split(s, 0.25, seed=0, group_of=by_part)
    assert all(len(v) == 1 for v in _sides(s, val).values())
    assert sorted([*train, *val]) == list(range(len(s.samples)))
    held = {s.samples[i].key.split("/")[-1].split("_")[0] for i in val}
    assert len(held & {f"SN{i:03d}" for i in range(50, 58)} | held & {"SN099"}) >= 2  # NG parts are held out too
    for _, fold_val in kfold_splits(s, 3, seed=0, group_of=by_part):
        assert all(len(v) == 1 for v in _sides(s, fold_val).values())


def test_group_by_errors_name_the_setting(tmp_path: Path) -> None:
    from inspector.errors import ConfigError
    from inspector.training.recipe import load_train_config

    with pytest.raises(ConfigError) as err:
        load_train_config(None, {"train.group_by": "(SN"})
    assert "group_by is not a valid regular expression: missing ), unterminated subpattern" in " ".join(err.value.errors)
    s = collect_samples(two_camera_parts(tmp_path), GRAY32)
    with pytest.raises(InputError, match=r"class 'ng/crack' has 1 group \(train.group_by\); a train/validation split needs at least 2"):
        stratified_split(s, 0.25, 0, group_of=regex_groups(r"^ng/"))  # every NG image one part


def test_folder_labels_with_several_rois_are_refused_naming_the_labels_csv(parts: Path) -> None:
    # A frame in ng/ does not say which ROI holds the defect, and training on whole frames would not train the crops it judges.
    with pytest.raises(InputError, match=r"the ok/ and ng/ folders label whole frames, but preprocess.rois names 4 ROIs .*"
                       r"labels CSV \(header frame,roi1,roi2,roi3,roi4; one row per frame"):
        collect_samples(parts, ROI_SPEC)


def test_folder_labels_with_one_roi_train_that_crop(parts: Path) -> None:
    spec = PreprocessSpec(color="gray", resize={"width": 32, "height": 32}, rois=[{"name": "part", "box": [0.25, 0.25, 0.75, 0.75], "units": "fraction"}])
    found = collect_samples(parts, spec)
    assert {s.roi for s in found.samples} == {0} and len(found.samples) == 64
    sample = found.samples[0]
    assert sample.key.endswith("#part")
    cache = ImageCache(spec)
    cache.load([sample.path])
    runtime = Preprocessor(spec)(Preprocessor(spec).decode(sample.path.read_bytes()))
    assert np.array_equal(cache.tensor(cache.crop(sample)), runtime[0])  # what the station judges


def test_an_earlier_training_run_inside_data_is_not_read_as_images(parts: Path, trained: Path, tmp_path: Path) -> None:
    data = tmp_path / "data"
    shutil.copytree(parts, data)
    shutil.copytree(trained, data / "ok" / "run1")  # an --out inside DATA, from before train refused it
    found = collect_samples(data, GRAY32)
    assert Counter(s.label for s in found.samples) == {"ok": 40, "ng": 24}
    assert found.skipped_runs == ("ok/run1",)


def test_a_multi_roi_class_too_small_to_split_counts_frames(roi_frames: tuple[Path, Path], tmp_path: Path) -> None:
    root, _ = roi_frames
    labels = tmp_path / "labels.csv"  # one frame all ok; nine with one NG ROI each: 31 ok samples, but one ok frame
    rows = [f"{root / 'frames' / f'{i:03d}.png'},{'ok' if i == 0 else 'ng'},ok,ok,ok" for i in range(10)]
    labels.write_text("frame,roi1,roi2,roi3,roi4\n" + "\n".join(rows) + "\n")
    s = collect_samples(root, ROI_SPEC, labels_csv=labels)
    assert Counter(x.label for x in s.samples) == {"ok": 31, "ng": 9}
    with pytest.raises(InputError, match=r"class 'ok' has 1 frame \(4 ROI samples: the ROIs of a frame stay on one side, "
                       r"and a frame with any ng ROI counts as ng\); a train/validation split needs at least 2"):
        stratified_split(s, 0.2, 0)


def test_a_defect_folder_named_ok_is_refused_with_multi_classes(parts: Path, tmp_path: Path) -> None:
    data = tmp_path / "data"
    shutil.copytree(parts, data)
    (data / "ng" / "crack").rename(data / "ng" / "OK")
    with pytest.raises(InputError, match="a defect class cannot be named 'ok'"):
        collect_samples(data, GRAY32, multi=True)
    assert collect_samples(data, GRAY32).classes == ("ok", "ng"), "binary: the folder is just NG"


def test_a_mask_with_an_exif_orientation_is_read_as_stored_like_its_frame(tmp_path: Path) -> None:
    from inspector.training.report import _mask

    root = tmp_path / "data"
    for i in range(2):
        gray_png(root / "ok" / f"ok{i}.png", np.full((48, 64), 40, np.uint8))
    frame = np.full((48, 64), 40, np.uint8)
    frame[5:15, 40:60] = 250
    gray_png(root / "ng" / "crack" / "wide.png", frame)
    mask = np.zeros((48, 64), np.uint8)
    mask[5:15, 40:60] = 255
    exif_png(root / "masks" / "ng" / "crack" / "wide.png", mask)  # a viewer would show it turned, 48 wide and 64 high
    spec = PreprocessSpec(color="gray", resize={"width": 64, "height": 48, "interpolation": "nearest"})
    samples = collect_samples(root, spec)
    cache = ImageCache(spec)
    cache.load([s.path for s in samples.samples])
    assert cache.load_masks(samples.samples, root) == 1
    ng = next(s for s in samples.samples if s.label == "ng")
    assert np.array_equal(cache.crop_mask(ng), mask)
    assert np.array_equal(_mask(ng, samples, cache), mask > 127)  # the report's Grad-CAM check reads it the same way


def _depth_data(root: Path, depths: dict[str, np.dtype]) -> Path:
    for name, dtype in depths.items():
        full = 255 if dtype == np.uint8 else 4095
        gray_png(root / name, np.full((16, 16), full // 2, dtype))
    return root


def test_the_cache_takes_pixel_max_from_the_data_and_refuses_a_mix_of_bit_depths(tmp_path: Path) -> None:
    for dtype, expected in ((np.uint8, 255), (np.uint16, 65535)):
        root = _depth_data(tmp_path / str(expected), {"ok/a.png": dtype, "ng/b.png": dtype})
        cache = ImageCache(GRAY32)
        cache.load(sorted(root.rglob("*.png")))
        assert cache.settle_depth().pixel_max == expected and cache.pre.spec.pixel_max == expected
    mixed = _depth_data(tmp_path / "mixed", {"ok/a.png": np.uint8, "ok/b.png": np.uint8, "ng/c.png": np.uint16})
    cache = ImageCache(GRAY32)
    cache.load(sorted(mixed.rglob("*.png")))
    with pytest.raises(InputError, match=r"the training images mix bit depths: 2 8-bit \(\S*ok/a\.png, \S*ok/b\.png\); 1 16-bit \(\S*ng/c\.png\)"):
        cache.settle_depth()


def test_frames_that_do_not_fit_a_given_pixel_max_are_named(tmp_path: Path) -> None:
    root = tmp_path / "d"
    gray_png(root / "ok" / "fine.png", np.full((16, 16), 4095, np.uint16))
    gray_png(root / "ok" / "msb.png", np.full((16, 16), 4095 << 4, np.uint16))
    gray_png(root / "ng" / "eight.png", np.full((16, 16), 100, np.uint8))
    cache = ImageCache(GRAY32.model_copy(update={"pixel_max": 4095}))
    with pytest.raises(InputError) as info:
        cache.load(sorted(root.rglob("*.png")))
    text = str(info.value)
    assert text.startswith("2 image(s) do not fit preprocess.pixel_max 4095 (16-bit files with pixel values up to 4095)")
    assert "msb.png: 16-bit, pixel values up to 65520" in text and "eight.png: 8-bit" in text and "fine.png" not in text


def test_the_cache_records_the_range_of_the_frames_sizes_unless_one_is_given(tmp_path: Path) -> None:
    root = tmp_path / "sizes"
    for name, (h, w) in {"ok/a.png": (227, 608), "ok/b.png": (399, 122), "ng/c.png": (300, 300)}.items():
        gray_png(root / name, np.full((h, w), 100, np.uint8))
    paths = sorted(root.rglob("*.png"))
    cache = ImageCache(ROI_SPEC)
    cache.load(paths)
    expected = FrameSize(min_width=122, max_width=608, min_height=227, max_height=399)
    assert cache.settle_frame_size().frame_size == expected and cache.pre.spec.frame_size == expected
    assert cache.pre.spec.rois == ROI_SPEC.rois and cache.outside_frame_size() == []
    assert ImageCache(GRAY32).settle_frame_size().frame_size is None  # nothing loaded: nothing to record
    # Given (a camera's known resolution, or any): kept as given, whatever the files' sizes.
    given = FrameSize(min_width=300, max_width=300, min_height=300, max_height=300)
    for frame_size in (given, "any"):
        cache = ImageCache(GRAY32.model_copy(update={"frame_size": frame_size}))
        cache.load(paths)
        assert cache.settle_frame_size().frame_size == frame_size
    assert sorted((p.name, wh) for p, wh in cache.outside_frame_size()) == []  # `any`: nothing lies outside
    cache = ImageCache(GRAY32.model_copy(update={"frame_size": given}))
    cache.load(paths)
    assert sorted((p.name, wh) for p, wh in cache.outside_frame_size()) == [("a.png", (608, 227)), ("b.png", (122, 399))]


def _warnings(err: str) -> dict[str, dict]:
    """The JSON warning lines on stderr, by event."""
    lines = [json.loads(line) for line in err.splitlines() if line.startswith("{")]
    return {e["event"]: e for e in lines if e.get("level") == "warning"}


def test_train_names_the_images_it_cannot_read_and_the_defect_folders_that_gave_none(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    data = tmp_path / "data"
    for i in range(4):
        flat_png(data / "ok" / f"{i}.png")
        flat_png(data / "ng" / "crack" / f"{i}.png")
    (data / "ok" / "new.webp").write_bytes(b"RIFF\0\0\0\0WEBPVP8 ")  # a format inspector does not read
    (data / "ng" / "chip").mkdir()
    (data / "ng" / "chip" / "0.webp").write_bytes(b"RIFF\0\0\0\0WEBPVP8 ")
    (data / "ng" / "scratch").mkdir()  # nothing in it yet
    code, _, err = train_cli(capsys, str(data), "--out", str(tmp_path / "r"), "--classes", "multi", "--epochs", "1", *FAST)
    assert code == 0, err
    warned = _warnings(err)
    assert (warned["files_skipped"]["count"], warned["files_skipped"]["examples"]) == (2, ["ng/chip/0.webp", "ok/new.webp"])
    assert ".png" in warned["files_skipped"]["why"] and ".webp" not in warned["files_skipped"]["why"]
    empty = warned["defect_folders_without_images"]
    assert (empty["count"], empty["folders"]) == (2, ["ng/chip", "ng/scratch"])
    assert "no samples of this defect" in empty["why"] and "with --classes multi the model gets no class for it" in empty["why"]
    assert torch.load(tmp_path / "r" / "best.pt", weights_only=True)["classes"] == ["ok", "crack"]
    # With nothing left out, nothing of the kind is said.
    shutil.rmtree(data / "ng" / "chip")
    shutil.rmtree(data / "ng" / "scratch")
    (data / "ok" / "new.webp").unlink()
    collect_samples(data, GRAY32, multi=True)
    assert _warnings(capsys.readouterr().err) == {}


def test_labels_csv_rows_whose_frame_is_missing_are_warned_about(roi_frames: tuple[Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    root = tmp_path / "frames"
    shutil.copytree(roi_frames[0], root)
    (root / "frames" / "003.png").unlink()
    (root / "frames" / "007.png").unlink()
    capsys.readouterr()
    s = collect_samples(root, ROI_SPEC)
    assert len(s.samples) == 8 * 4
    warned = _warnings(capsys.readouterr().err)
    assert warned["labels_without_frame"]["count"] == 2
    assert warned["labels_without_frame"]["examples"] == [str((root / "frames" / n).resolve()) for n in ("003.png", "007.png")]
    assert "files_skipped" not in warned  # labels.csv beside the frames is read, not skipped


def test_a_linked_folder_that_repeats_frames_is_warned_about_and_its_frames_keep_their_label(
    parts: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data = tmp_path / "data"
    shutil.copytree(parts, data)
    (data / "ng" / "dent").symlink_to(data / "ok", target_is_directory=True)  # a whole defect class that is really ok/
    capsys.readouterr()
    s = collect_samples(data, GRAY32, multi=True)
    assert "dent" not in s.classes and len(s.samples) == len(collect_samples(parts, GRAY32).samples)
    warned = _warnings(capsys.readouterr().err)
    assert warned["link_loops"]["folders"] == ["ng/dent"]
