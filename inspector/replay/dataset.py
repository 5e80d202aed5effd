"""What replay reads: a folder (recursive, sorted) or a list file, labelled by `ok/` + `ng/<defect>/` layout or a CSV."""

from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path

from inspector.errors import InputError

IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff"})
LABELS = ("ok", "ng")


@dataclass(frozen=True, slots=True)
class ReplayItem:
    """One frame to replay and what is known about it."""

    path: Path
    frame_id: str  # the path relative to the replayed folder, with '/' separators
    label: str | None = None  # "ok" | "ng"
    defect: str | None = None
    roi_labels: tuple[tuple[str, str], ...] | None = None


@dataclass(frozen=True, slots=True)
class ReplaySet:
    """The frames of one replay, in order, and what was left out and why."""

    items: tuple[ReplayItem, ...]
    labelled_by: str  # "layout" | "csv" | "none"
    skipped_files: tuple[str, ...] = ()  # files without an image suffix
    ignored_dirs: tuple[str, ...] = ()  # top-level folders beside ok/ and ng/ (masks/, ...)
    labels_without_frame: tuple[str, ...] = ()


def collect(path: Path, *, labels_csv: Path | None = None, roi_names: tuple[str, ...] = ()) -> ReplaySet:
    """List the frames under `path` with their labels; InputError when there is nothing usable."""
    if not path.exists():
        raise InputError(f"{path}: no such file or folder; expected a folder of images or a text file listing images")
    if path.is_dir():
        items, labelled_by, skipped, ignored = _from_folder(path)
    elif path.suffix.lower() in IMAGE_SUFFIXES:
        items, labelled_by, skipped, ignored = [ReplayItem(path, path.name)], "none", [], []
    else:
        items, labelled_by, skipped, ignored = _from_list(path), "none", [], []
    if not items:
        raise InputError(
            f"{path}: no images found; expected files ending in {', '.join(sorted(IMAGE_SUFFIXES))}"
            + (f" ({len(skipped)} other files skipped)" if skipped else "")
        )
    unmatched: list[str] = []
    if labels_csv is not None:
        items, unmatched = _apply_csv(items, labels_csv, roi_names)
        labelled_by = "csv"
    return ReplaySet(tuple(items), labelled_by, tuple(skipped), tuple(ignored), tuple(unmatched))


def _visible_files(root: Path) -> list[Path]:
    out = []
    for p in root.rglob("*"):
        rel = p.relative_to(root).parts
        if any(part.startswith(".") for part in rel):
            continue
        if p.is_file():
            out.append(p)
    return sorted(out, key=lambda p: p.relative_to(root).as_posix())


def _from_folder(root: Path) -> tuple[list[ReplayItem], str, list[str], list[str]]:
    layout = (root / "ok").is_dir() or (root / "ng").is_dir()
    ignored = sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith(".") and p.name not in LABELS) if layout else []
    items, skipped = [], []
    for p in _visible_files(root):
        rel = p.relative_to(root)
        if p.suffix.lower() not in IMAGE_SUFFIXES:
            skipped.append(rel.as_posix())
            continue
        if not layout:
            items.append(ReplayItem(p, rel.as_posix()))
            continue
        top = rel.parts[0]
        if top not in LABELS or len(rel.parts) == 1:
            continue  # loose files beside ok/ and ng/, or under ignored folders, carry no label
        defect = rel.parts[1] if top == "ng" and len(rel.parts) > 2 else None
        items.append(ReplayItem(p, rel.as_posix(), label=top, defect=defect))
    return items, "layout" if layout else "none", skipped, ignored


def _from_list(list_file: Path) -> list[ReplayItem]:
    try:
        text = list_file.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise InputError(f"{list_file}: not a folder, an image, or a UTF-8 text file listing one image path a line") from None
    except OSError as exc:
        raise InputError(f"{list_file}: cannot read ({exc.strerror})") from exc
    items = []
    for line in text.splitlines():
        entry = line.strip()
        if not entry or entry.startswith("#"):
            continue
        p = Path(entry)
        p = p if p.is_absolute() else list_file.parent / p
        items.append(ReplayItem(p, entry))
    return items


def _apply_csv(items: list[ReplayItem], csv_path: Path, roi_names: tuple[str, ...]) -> tuple[list[ReplayItem], list[str]]:
    """Label frames from `frame,roi1,...` rows; a frame is NG when any of its ROIs is."""
    try:
        with csv_path.open(newline="", encoding="utf-8-sig") as f:  # -sig: Excel's "CSV UTF-8" starts with a BOM
            rows = list(csv.reader(f))
    except FileNotFoundError:
        raise InputError(f"--labels {csv_path}: no such file") from None
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise InputError(f"--labels {csv_path}: cannot read as CSV ({exc})") from exc
    if not rows or not rows[0] or rows[0][0].strip().lower() != "frame":
        raise InputError(f"--labels {csv_path}: the first line must be the header frame,<roi names...>")
    columns = [c.strip() for c in rows[0][1:]]
    if sorted(columns) != sorted(roi_names):
        raise InputError(
            f"--labels {csv_path}: columns {columns} do not match the model's ROIs {list(roi_names)}; "
            "set `rois` in the config to this station's ROI layout, or fix the header"
        )
    by_path: dict[Path, tuple[tuple[str, str], ...]] = {}
    first_line: dict[Path, int] = {}
    for lineno, row in enumerate(rows[1:], start=2):
        if not row or not any(c.strip() for c in row):
            continue
        if len(row) != len(columns) + 1:
            raise InputError(f"--labels {csv_path}:{lineno}: expected {len(columns) + 1} fields, got {len(row)}")
        values = [v.strip().lower() for v in row[1:]]
        bad = [v for v in values if v not in LABELS]
        if bad:
            raise InputError(f"--labels {csv_path}:{lineno}: labels must be ok or ng, got {bad[0]!r}")
        key = (csv_path.parent / row[0].strip()).resolve()
        if key in first_line:
            raise InputError(f"--labels {csv_path}:{lineno}: {row[0].strip()} is already labelled on line {first_line[key]}")
        first_line[key] = lineno
        by_path[key] = tuple(zip(columns, values, strict=True))
    labelled, seen = [], set()
    for item in items:
        key = item.path.resolve()
        rois = by_path.get(key)
        if rois is None:
            labelled.append(item)
            continue
        seen.add(key)
        frame_label = "ng" if any(v == "ng" for _, v in rois) else "ok"
        labelled.append(ReplayItem(item.path, item.frame_id, label=frame_label, defect=None, roi_labels=rois))
    unmatched = sorted(str(p) for p in by_path if p not in seen)
    if by_path and not seen:
        raise InputError(
            f"--labels {csv_path}: none of its {len(by_path)} rows names a frame being replayed; frame paths are read "
            f"relative to the CSV's folder {csv_path.parent.resolve()}, e.g. {unmatched[0]}"
        )
    return labelled, unmatched
