"""Training samples from replay's labelled layouts, the stratified split, and the augmenting dataset.

Every sample goes through the runtime's own `Preprocessor` (decode, colour, CLAHE, crop, resize,
normalize); augmentation happens between resize and normalize, so the network sees what the daemon
will feed it plus the variation a line produces.
"""

from __future__ import annotations

import hashlib
import math
import re
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import structlog

from inspector.errors import InputError
from inspector.frame import FrameFault
from inspector.manifest import OK_CLASS
from inspector.preprocess import FrameSize, Preprocessor, PreprocessSpec
from inspector.regular_file import not_regular, read_regular
from inspector.replay.dataset import ReplaySet, collect
from inspector.replay.runner import (
    warn_labels_without_frame,
    warn_link_loops,
    warn_skipped_files,
)
from inspector.training.recipe import Augment

MASKS_DIR = "masks"


@dataclass(frozen=True, slots=True)
class Sample:
    """One training example: a whole image, or one ROI of a frame."""

    path: Path
    key: str  # frame id, plus '#roi' for an ROI sample: unique and stable across runs
    roi: int | None  # index into spec.rois; None: the whole frame
    label: str  # class name
    stratum: str  # 'ok', 'ng/<defect>' or the class: what the split keeps in proportion


@dataclass(frozen=True, slots=True)
class SampleSet:
    """The samples of a training run and the class list they define."""

    samples: tuple[Sample, ...]
    classes: tuple[str, ...]
    root: Path
    unlabelled: tuple[str, ...] = ()  # images found without a label (beside ok/ and ng/, or not in the CSV): not used
    skipped_runs: tuple[str, ...] = ()  # output folders of train or replay under the root (their plots are no samples): not used

    @property
    def targets(self) -> np.ndarray:
        """Class index of each sample."""
        index = {c: i for i, c in enumerate(self.classes)}
        return np.array([index[s.label] for s in self.samples], np.int64)

    def fingerprint(self) -> str:
        """SHA-256 over every sample's key, label and file content: names the exact data a model saw."""
        h = hashlib.sha256()
        digests: dict[Path, str] = {}
        for s in sorted(self.samples, key=lambda s: s.key):
            if s.path not in digests:
                digests[s.path] = hashlib.sha256(read_regular(s.path)).hexdigest()
            h.update(f"{s.key}\t{s.label}\t{digests[s.path]}\n".encode())
        return h.hexdigest()


def collect_samples(
    root: Path, spec: PreprocessSpec, *, labels_csv: Path | None = None, multi: bool = False,
    log: structlog.typing.FilteringBoundLogger | None = None,
) -> SampleSet:
    """Samples under `root` (ok/ + ng/<defect>/, or frames + labels.csv with one sample per ROI); InputError when unusable.

    What the listing leaves out is warned about (files of other suffixes, labels.csv rows without their frame, defect
    folders without an image) before the samples are checked, so that a refusal they cause is not the first word of them.
    """
    log = log or structlog.get_logger("inspector.train")
    if labels_csv is None and (root / "labels.csv").is_file() and not (root / "ok").is_dir():
        labels_csv = root / "labels.csv"
    if labels_csv is not None and not spec.rois:
        raise InputError(
            f"{labels_csv}: per-ROI labels need ROI boxes; give the station's `preprocess.rois` in the training config (--config)"
        )
    found = collect(root, labels_csv=labels_csv, roi_names=spec.roi_names if labels_csv else ())
    read_labels = _relative(labels_csv, root)  # the labels file is read, not skipped
    warn_skipped_files(log, [f for f in found.skipped_files if f != read_labels])
    warn_labels_without_frame(log, found.labels_without_frame)
    warn_link_loops(log, found.link_loops)
    if found.labelled_by == "layout" and (empty := _defect_folders_without_images(root, found)):
        log.warning("defect_folders_without_images", count=len(empty), folders=empty[:10],
                    why="no file with an image suffix inspector reads inside: no samples of this defect"
                    + ("; with --classes multi the model gets no class for it" if multi else ""))
    items, skipped_runs = found.items, found.outputs_skipped  # earlier runs (or replays) inside DATA: their plots are no samples
    samples: list[Sample] = []
    unlabelled = tuple(item.frame_id for item in items if item.label is None)
    if found.labelled_by == "layout":
        if len(spec.rois) > 1:
            # A frame in ng/ does not say which of its ROIs holds the defect: labelling every crop NG would teach the
            # model that defect-free crops are NG, and whole frames would train a model that never sees the crops it judges.
            raise InputError(
                f"{root}: the ok/ and ng/ folders label whole frames, but preprocess.rois names {len(spec.rois)} ROIs "
                f"({', '.join(spec.roi_names)}) and a frame's folder does not say which of them holds the defect; "
                f"give per-ROI labels in a labels CSV (header frame,{','.join(spec.roi_names)}; one row per frame, ok or ng "
                "per ROI; --labels FILE or DATA/labels.csv), or leave preprocess.rois out to train on whole frames"
            )
        # One ROI: the station judges that crop alone, so the frame's label is the crop's, and the crop is what trains.
        roi, suffix = (0, f"#{spec.roi_names[0]}") if spec.rois else (None, "")
        for item in items:
            if item.label is None:
                continue  # in `unlabelled`
            cls = (item.defect or "ng") if multi and item.label == "ng" else item.label
            if multi and item.label == "ng" and cls.lower() == OK_CLASS:
                # The class list is built from folder names: an ng/ok/ folder would put NG parts into the OK class.
                raise InputError(f"{root / 'ng' / item.defect}: a defect class cannot be named {OK_CLASS!r} (with --classes multi its "
                                 "NG images would join the OK class); rename the folder after the defect")
            samples.append(Sample(item.path, item.frame_id + suffix, roi, cls, "ok" if item.label == "ok" else f"ng/{item.defect or ''}"))
    elif found.labelled_by == "csv":
        if multi:
            raise InputError(f"--classes multi needs ok/ + ng/<defect>/ folders; {labels_csv} labels ROIs only ok or ng")
        index = {name: i for i, name in enumerate(spec.roi_names)}
        for item in items:
            for name, label in item.roi_labels or ():
                samples.append(Sample(item.path, f"{item.frame_id}#{name}", index[name], label, label))
    else:
        raise InputError(
            f"{root}: no labels found; expected ok/ and ng/<defect>/ folders, or frames with a labels.csv (frame,roi1,...)"
        )
    if not samples:
        raise InputError(f"{root}: no labelled images; expected images under ok/ and ng/<defect>/, or rows in labels.csv")
    # Named before anything is read: a pipe would block the reading, a broken link fail it halfway through the run.
    bad = [f"{path}: unreadable: {why}" for path in dict.fromkeys(s.path for s in samples) if (why := not_regular(path)) is not None]
    if bad:
        shown = "\n  ".join(bad[:20]) + (f"\n  ... and {len(bad) - 20} more" if len(bad) > 20 else "")
        raise InputError(f"{len(bad)} image(s) cannot be used for training:\n  {shown}")
    counts = Counter(s.label for s in samples)
    if len(counts) < 2:
        only = next(iter(counts))
        raise InputError(f"{root}: every sample is {only!r}; training needs both ok and ng examples")
    if OK_CLASS not in counts:
        raise InputError(f"{root}: no ok samples; training needs images under ok/ (or ok labels in the CSV)")
    classes = (OK_CLASS, *sorted(c for c in counts if c != OK_CLASS))
    return SampleSet(tuple(samples), classes, root, unlabelled, skipped_runs)


def _relative(path: Path | None, root: Path) -> str | None:
    """`path` as the listing of `root` names it ('/'-separated, relative), or None when it lies elsewhere."""
    if path is None:
        return None
    try:
        return path.resolve().relative_to(root.resolve()).as_posix()
    except ValueError:
        return None


def _defect_folders_without_images(root: Path, found: ReplaySet) -> list[str]:
    """The ng/<defect>/ folders under `root` that gave no image: empty, or holding only files of other suffixes."""
    used = {"/".join(item.frame_id.split("/")[:2]) for item in found.items if item.defect is not None}
    left_out = {*found.outputs_skipped, *found.link_loops}  # warned about on their own (link_loops above)
    out = []
    for ng in sorted(p for p in root.iterdir() if p.is_dir() and p.name.lower() == "ng"):
        for folder in sorted(d for d in ng.iterdir() if d.is_dir() and not d.name.startswith(".")):
            rel = f"{ng.name}/{folder.name}"
            if rel not in used and rel not in left_out:
                out.append(rel)
    return out


GroupOf = Callable[[Sample], str]


def regex_groups(pattern: str | None) -> GroupOf | None:
    """Group by `pattern` searched in each frame id (path under DATA): its first capture group, or the whole match.

    Frames it does not match stay groups of their own. None for no pattern.
    """
    if pattern is None:
        return None
    compiled = re.compile(pattern)

    def group_of(sample: Sample) -> str:
        frame = sample.key.split("#", 1)[0]
        m = compiled.search(frame)
        if m is None:
            return f"frame:{frame}"
        return "group:" + (m.group(1) if compiled.groups else m.group(0))

    return group_of


def stratified_split(samples: SampleSet, val_fraction: float, seed: int, group_of: GroupOf | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Train and validation indices: the same share of every stratum (class, defect type) held out, reproducibly.

    The ROIs of one frame stay together, and with `group_of` every frame of one group (one part photographed
    several times), so validation frames are parts the model never saw.
    """
    train, val = [], []
    for stratum, groups in _strata(samples, group_of).items():
        if len(groups) < 2:
            raise InputError(f"class {stratum!r} has {_count(samples, groups, group_of)}; a train/validation split needs at least 2 of each")
        order = np.random.default_rng(seed).permutation(len(groups))
        n_val = min(len(groups) - 1, max(1, round(len(groups) * val_fraction)))
        val += [i for g in order[:n_val] for i in groups[g]]
        train += [i for g in order[n_val:] for i in groups[g]]
    return np.array(sorted(train)), np.array(sorted(val))


def kfold_splits(samples: SampleSet, k: int, seed: int, group_of: GroupOf | None = None) -> list[tuple[np.ndarray, np.ndarray]]:
    """k stratified (train, validation) index pairs; each sample is validated exactly once, a group within one fold."""
    folds: list[list[int]] = [[] for _ in range(k)]
    for stratum, groups in _strata(samples, group_of).items():
        if len(groups) < k:
            raise InputError(f"class {stratum!r} has {_count(samples, groups, group_of)}; {k}-fold cross-validation needs at least {k} of each")
        order = np.random.default_rng(seed).permutation(len(groups))
        for j, g in enumerate(order):
            folds[j % k] += groups[g]
    every = set(range(len(samples.samples)))
    return [(np.array(sorted(every - set(f))), np.array(sorted(f))) for f in folds]


def _count(samples: SampleSet, groups: list[list[int]], group_of: GroupOf | None) -> str:
    """What the split counts, in words: groups of train.group_by, frames (whose ROIs stay together), or samples."""
    n = len(groups)
    if group_of is not None:
        return f"{n} group{'s' * (n != 1)} (train.group_by)"
    if any(s.roi is not None for s in samples.samples) and len(groups) < sum(len(g) for g in groups):
        rows = sum(len(g) for g in groups)
        return (f"{n} frame{'s' * (n != 1)} ({rows} ROI samples: the ROIs of a frame stay on one side, "
                "and a frame with any ng ROI counts as ng)")
    return f"{n} sample{'s' * (n != 1)}"


def _strata(samples: SampleSet, group_of: GroupOf | None = None) -> dict[str, list[list[int]]]:
    """Sample indices grouped by frame (or by `group_of`), the groups by stratum: the first defect stratum among them, else ok."""
    groups: dict[str, list[int]] = {}
    for i, s in enumerate(samples.samples):
        groups.setdefault(group_of(s) if group_of is not None else str(s.path), []).append(i)
    by: dict[str, list[tuple[str, list[int]]]] = {}
    for idx in groups.values():
        members = [samples.samples[i] for i in idx]
        defects = sorted({m.stratum for m in members if m.label != OK_CLASS})
        stratum = defects[0] if defects else OK_CLASS  # a part with any defect is held out among its defect's parts
        by.setdefault(stratum, []).append((min(m.key for m in members), idx))
    # Sorted by key so that the split depends on the data, not on the file system's listing order.
    return {k: [idx for _, idx in sorted(v)] for k, v in sorted(by.items())}


class ImageCache:
    """Decoded, colour-converted, CLAHE-equalized frames, each read once; unreadable files collected, not raised one by one."""

    def __init__(self, spec: PreprocessSpec) -> None:
        self.pre = Preprocessor(spec)
        self._frames: dict[Path, np.ndarray] = {}
        self._masks: dict[Path, np.ndarray] = {}
        self._bits: dict[Path, int] = {}  # each file's bit depth as decoded (CLAHE leaves every frame 8-bit)
        self._sizes: dict[Path, tuple[int, int]] = {}  # each frame's (width, height) as decoded: what the ROIs are cut from

    def load(self, paths: list[Path], purpose: str = "training") -> None:
        """Read every path; InputError listing all files that cannot be used for `purpose`."""
        bad, off_scale = [], []
        for path in dict.fromkeys(paths):
            if path in self._frames:
                continue
            try:
                image = self.pre.decode(read_regular(path))  # a pipe is named, not waited on
                self.pre.crops(image)  # a frame too small for the ROIs is unusable too
            except FrameFault as fault:
                bad.append(f"{path}: {fault.reason.value}: {fault.detail}")
                continue
            except OSError as exc:
                bad.append(f"{path}: unreadable: {exc.strerror}")
                continue
            try:
                self.pre.check_depth(image)
            except FrameFault:
                off_scale.append(f"{path}: {_depth_of(image)}")
                continue
            self._bits[path] = 8 if image.dtype == np.uint8 else 16
            self._sizes[path] = (image.shape[1], image.shape[0])
            self._frames[path] = self.pre.equalize(image)
        if bad:
            shown = "\n  ".join(bad[:20]) + (f"\n  ... and {len(bad) - 20} more" if len(bad) > 20 else "")
            raise InputError(f"{len(bad)} image(s) cannot be used for {purpose}:\n  {shown}")
        if off_scale:
            limit = self.pre.spec.pixel_max
            expected = "8-bit files" if limit is not None and limit <= 255 else f"16-bit files with pixel values up to {limit}"
            shown = "\n  ".join(off_scale[:20]) + (f"\n  ... and {len(off_scale) - 20} more" if len(off_scale) > 20 else "")
            raise InputError(
                f"{len(off_scale)} image(s) do not fit preprocess.pixel_max {limit} ({expected}) and cannot be used for {purpose}:"
                f"\n  {shown}\nconvert them, or set preprocess.pixel_max (--pixel-max) to the camera's full scale"
            )

    def settle_depth(self) -> PreprocessSpec:
        """The spec with pixel_max taken from the loaded frames when it had none (255 all 8-bit, 65535 all 16-bit); InputError on a mix."""
        spec = self.pre.spec
        if spec.pixel_max is not None or not self._bits:
            return spec
        by_bits: dict[int, list[Path]] = {8: [], 16: []}
        for path, bits in self._bits.items():
            by_bits[bits].append(path)
        if by_bits[8] and by_bits[16]:
            # A model trained on both would see one scene at two scales, and the line camera delivers only one of them.
            listed = "; ".join(
                f"{len(paths)} {bits}-bit ({', '.join(str(p) for p in paths[:3])}{', ...' if len(paths) > 3 else ''})"
                for bits, paths in by_bits.items()
            )
            raise InputError(
                f"the training images mix bit depths: {listed}; a model is trained on one bit depth, the camera's: "
                "convert the files to it (and for 16-bit data below full scale, set preprocess.pixel_max, e.g. 4095 for 12-bit)"
            )
        self.pre = Preprocessor(spec.model_copy(update={"pixel_max": 255 if by_bits[8] else 65535}))
        return self.pre.spec

    def settle_frame_size(self) -> PreprocessSpec:
        """The spec with frame_size spanning the loaded frames' sizes when it had none; a given range or `any` is kept."""
        spec = self.pre.spec
        if spec.frame_size is not None or not self._sizes:
            return spec
        self.pre = Preprocessor(spec.model_copy(update={"frame_size": FrameSize.spanning(self._sizes.values())}))
        return self.pre.spec

    def outside_frame_size(self) -> list[tuple[Path, tuple[int, int]]]:
        """Loaded frames whose size lies outside the spec's frame_size, with their (width, height); empty without one."""
        size = self.pre.spec.trained_size
        if size is None or (size.applies_to == "roi" and self.pre.spec.rois):
            return []  # a range for ROI crops says nothing about the frames they are cut from
        return [(path, wh) for path, wh in self._sizes.items() if not size.fits(*wh)]

    def frame(self, path: Path) -> np.ndarray:
        """The equalized frame."""
        return self._frames[path]

    def box(self, sample: Sample) -> tuple[int, int, int, int]:
        """The sample's crop box in pixels of its frame."""
        image = self._frames[sample.path]
        h, w = image.shape[:2]
        if sample.roi is None:
            return (0, 0, w, h)
        return self.pre.spec.rois[sample.roi].pixels(w, h)

    def crop(
        self, sample: Sample, shift: tuple[float, float] = (0.0, 0.0), zoom: tuple[float, float, float, float] | None = None
    ) -> np.ndarray:
        """The resized crop (uint8/uint16, HxW[xC]).

        `shift` moves the box by fractions of its size, kept inside the frame; `zoom` = (width share,
        height share, x position, y position), all 0..1, keeps that part of the box.
        """
        x0, y0, x1, y1 = self._moved_box(sample, shift, zoom)
        return self.pre.resize(self._frames[sample.path][y0:y1, x0:x1])

    def load_masks(self, samples: tuple[Sample, ...], root: Path) -> int:
        """Read the defect masks of whole-frame samples (root/masks/<key>.png, binarized at half scale); how many there are."""
        bad = []
        for sample in samples:
            path = mask_for(sample, root)
            if path is None or sample.path in self._masks or sample.path not in self._frames:
                continue
            # As frames are read: an EXIF rotation would turn the mask against its frame.
            mask = cv2.imread(str(path), cv2.IMREAD_GRAYSCALE | cv2.IMREAD_IGNORE_ORIENTATION)
            frame = self._frames[sample.path]
            if mask is None or mask.shape != frame.shape[:2]:
                got = "unreadable" if mask is None else f"{mask.shape[1]}x{mask.shape[0]}"
                bad.append(f"{path}: {got}, expected a {frame.shape[1]}x{frame.shape[0]} image")
                continue
            if mask.max() > 127:  # an empty mask on an NG part says nothing about where the defect is
                self._masks[sample.path] = np.where(mask > 127, 255, 0).astype(np.uint8)
        if bad:
            raise InputError(f"{len(bad)} defect mask(s) cannot be used:\n  " + "\n  ".join(bad[:20]))
        return len(self._masks)

    def crop_mask(
        self, sample: Sample, shift: tuple[float, float] = (0.0, 0.0), zoom: tuple[float, float, float, float] | None = None
    ) -> np.ndarray | None:
        """The sample's defect mask (uint8, 255 = defect) cut and resized exactly like `crop`; zeros for OK, None when unknown."""
        mask = self._masks.get(sample.path)
        if mask is None:
            if sample.label != OK_CLASS:
                return None
            rs = self.pre.spec.resize
            return np.zeros((rs.height, rs.width), np.uint8)
        x0, y0, x1, y1 = self._moved_box(sample, shift, zoom)
        return self.pre.resize(mask[y0:y1, x0:x1], pad=0, interpolation=cv2.INTER_AREA)

    def _moved_box(
        self, sample: Sample, shift: tuple[float, float], zoom: tuple[float, float, float, float] | None
    ) -> tuple[int, int, int, int]:
        h, w = self._frames[sample.path].shape[:2]
        x0, y0, x1, y1 = self.box(sample)
        if zoom is not None:
            sw, sh, px, py = zoom
            bw, bh = x1 - x0, y1 - y0
            nw, nh = max(1, round(bw * sw)), max(1, round(bh * sh))
            x0, y0 = x0 + round((bw - nw) * px), y0 + round((bh - nh) * py)
            x1, y1 = x0 + nw, y0 + nh
        if shift != (0.0, 0.0):
            bw, bh = x1 - x0, y1 - y0
            dx = int(np.clip(round(shift[0] * bw), -x0, w - x1))
            dy = int(np.clip(round(shift[1] * bh), -y0, h - y1))
            x0, x1, y0, y1 = x0 + dx, x1 + dx, y0 + dy, y1 + dy
        return x0, y0, x1, y1

    def has_mask(self, sample: Sample) -> bool:
        """Whether the sample's defect mask is loaded."""
        return sample.path in self._masks

    @property
    def mask_count(self) -> int:
        """How many frames have a defect mask loaded."""
        return len(self._masks)

    def tensor(self, image: np.ndarray) -> np.ndarray:
        """Normalize one resized crop into a float32 CHW row, exactly as the runtime does."""
        out = np.empty(self.pre.spec.input_shape, np.float32)
        self.pre.normalize(image, out)
        return out


def augment(
    image: np.ndarray, aug: Augment, rng: np.random.Generator, mask: np.ndarray | None = None, *, full_scale: float
) -> tuple[np.ndarray, np.ndarray | None]:
    """Flips, transpose, rotation and brightness/contrast on one resized crop, in its own dtype; `mask` gets the same geometry.

    Brightness shifts by fractions of `full_scale` (the spec's `full_scale(image.dtype)`) and clips to it: a 12-bit
    camera's frames, scaled by 65535, would mostly be shifted below black.
    """
    full = float(full_scale)
    if aug.hflip and rng.random() < 0.5:
        image, mask = image[:, ::-1], None if mask is None else mask[:, ::-1]
    if aug.vflip and rng.random() < 0.5:
        image, mask = image[::-1], None if mask is None else mask[::-1]
    if aug.transpose and rng.random() < 0.5:
        image, mask = image.swapaxes(0, 1), None if mask is None else mask.swapaxes(0, 1)
    image = np.ascontiguousarray(image)
    mask = None if mask is None else np.ascontiguousarray(mask)
    if aug.rotate_deg > 0:
        angle = rng.uniform(-aug.rotate_deg, aug.rotate_deg)
        h, w = image.shape[:2]
        m = cv2.getRotationMatrix2D((w / 2, h / 2), angle, 1.0)
        image = cv2.warpAffine(image, m, (w, h), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT_101)
        if mask is not None:
            mask = cv2.warpAffine(mask, m, (w, h), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT_101)
    if aug.brightness > 0 or aug.contrast > 0:
        gain = 1.0 + rng.uniform(-aug.contrast, aug.contrast)
        bias = rng.uniform(-aug.brightness, aug.brightness) * full
        mean = float(image.mean())
        image = np.clip((image.astype(np.float32) - mean) * gain + mean + bias, 0, full).astype(image.dtype)
    return image, mask


def _depth_of(image: np.ndarray) -> str:
    """A frame's bit depth in words, with its top value when 16-bit."""
    return "8-bit" if image.dtype == np.uint8 else f"16-bit, pixel values up to {int(image.max())}"


def erase(row: np.ndarray, rng: np.random.Generator) -> None:
    """Random erasing of one rectangle (2-20% of the area, aspect 0.3-3.3) with noise, in place on a CHW row."""
    _, h, w = row.shape
    for _ in range(10):
        area = rng.uniform(0.02, 0.2) * h * w
        aspect = math.exp(rng.uniform(math.log(0.3), math.log(3.3)))
        eh, ew = round(math.sqrt(area * aspect)), round(math.sqrt(area / aspect))
        if 0 < eh < h and 0 < ew < w:
            y, x = int(rng.integers(0, h - eh)), int(rng.integers(0, w - ew))
            row[:, y : y + eh, x : x + ew] = rng.standard_normal((row.shape[0], eh, ew), dtype=np.float32)
            return


def mask_for(sample: Sample, root: Path) -> Path | None:
    """The defect mask of an NG sample under `root/masks/` (same relative path, .png), when the dataset has one."""
    if sample.roi is not None:
        return None
    candidate = (root / MASKS_DIR / sample.key).with_suffix(".png")
    return candidate if candidate.is_file() else None
