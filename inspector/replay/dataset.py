"""What replay reads: a folder (recursive, sorted) or a list file, labelled by `ok/` + `ng/<defect>/` layout or a CSV."""

from __future__ import annotations

import csv
import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from inspector.errors import InputError
from inspector.replay.files import REPORT_IMAGES, is_output, is_replay_output

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
    outputs_skipped: tuple[str, ...] = ()  # output folders of replay or train (or a root's own report images) left out
    loose_files: tuple[str, ...] = ()  # images beside ok/ and ng/: in `items`, without a label
    link_loops: tuple[str, ...] = ()  # linked folders left out: links to a folder already read (or to one holding them)


def collect(
    path: Path,
    *,
    labels_csv: Path | None = None,
    roi_names: tuple[str, ...] = (),
    exclude: tuple[Path, ...] = (),
) -> ReplaySet:
    """List the frames under `path` with their labels; InputError when there is nothing usable.

    Folders in `exclude` (this run's --out) and earlier outputs of replay or train are left out, listed in `outputs_skipped`;
    images beside ok/ and ng/ are frames without a label (and listed in `loose_files`).
    """
    if not path.exists():
        raise InputError(f"{path}: no such file or folder; expected a folder of images or a text file listing images")
    found = _Found()
    if path.is_dir():
        _from_folder(path, found, frozenset(p.resolve() for p in exclude))
    elif path.suffix.lower() in IMAGE_SUFFIXES:
        found.items.append(ReplayItem(path, path.name))
    else:
        found.items = _from_list(path)
    items = found.items
    if not items:
        left_out = [f"{len(found.skipped)} other files skipped"] if found.skipped else []
        if found.outputs:
            left_out.append(f"output folders of replay or train skipped: {', '.join(found.outputs)}")
        if found.loose:
            left_out.append(f"{len(found.loose)} images beside {' and '.join(found.label_dirs)} carry no label")
        if found.loops:
            left_out.append(f"links to folders already read skipped: {', '.join(found.loops)}")
        raise InputError(
            f"{path}: no images found; expected files ending in {', '.join(sorted(IMAGE_SUFFIXES))}"
            + (f" ({'; '.join(left_out)})" if left_out else "")
        )
    unmatched: list[str] = []
    labelled_by = found.labelled_by
    if labels_csv is not None:
        items, unmatched = _apply_csv(items, labels_csv, roi_names)
        labelled_by = "csv"
    return ReplaySet(
        tuple(items),
        labelled_by,
        tuple(found.skipped),
        tuple(found.ignored),
        tuple(unmatched),
        tuple(found.outputs),
        tuple(found.loose),
        tuple(found.loops),
    )


def _unlistable(exc: OSError) -> None:
    # os.walk would skip a folder it cannot list, and its frames would get no decision without a word.
    raise InputError(f"{exc.filename}: cannot list this folder ({exc.strerror or exc}); its images would not be judged") from exc


@dataclass(slots=True)
class _Found:
    """What a folder walk found, and what it left out."""

    items: list[ReplayItem] = field(default_factory=list)
    labelled_by: str = "none"
    skipped: list[str] = field(default_factory=list)
    ignored: list[str] = field(default_factory=list)
    outputs: list[str] = field(default_factory=list)
    loose: list[str] = field(default_factory=list)
    loops: list[str] = field(default_factory=list)
    label_dirs: list[str] = field(default_factory=list)


def _visible_files(
    root: Path, exclude: frozenset[Path], outputs: list[str], loops: list[str], only: frozenset[str] | None = None
) -> list[Path]:
    """Files under `root` (hidden ones aside, linked folders followed), sorted by relative path; replay output folders go to
    `outputs` instead, and links to folders read anyway (under their own path, or through another link) to `loops`.
    `only`: the top-level folders to read (ok/ and ng/ of a labelled layout); None reads them all.

    Every name that is not a folder is listed, pipes and broken links too: an image among them gets its `unreadable` reject.
    """
    # The root itself may be a replay output too (an earlier `--out` equal to PATH): its frames stay, its report images go.
    own_report = is_replay_output(root) or root.resolve() in exclude
    top = root.resolve()
    walked: set[Path] = {top}
    links: list[Path] = []
    out = []
    # The folders under root itself first, links set aside: a link to one of them (`latest -> ok/batch7`) is a second path
    # to frames read under their own name and label, whichever of the two one walk would meet first.
    folders = _walk(root, root, exclude, only, top=top, walked=walked, outputs=outputs, loops=loops, links=links)
    for here, names in folders:
        for name in names:
            if own_report and here == root and name in REPORT_IMAGES:
                outputs.append(name)
                continue
            out.append(here / name)
    for link in links:
        real = link.resolve()
        if real in walked or top.is_relative_to(real):
            loops.append(link.relative_to(root).as_posix())
            continue
        walked.add(real)
        out += [here / name for here, names in _walk(link, root, exclude, None, top=top, walked=walked, outputs=outputs, loops=loops)
                for name in names]
    outputs.sort()
    loops.sort()
    return sorted(out, key=lambda p: p.relative_to(root).as_posix())


def _walk(
    start: Path,
    root: Path,
    exclude: frozenset[Path],
    only: frozenset[str] | None,
    *,
    top: Path,
    walked: set[Path],
    outputs: list[str],
    loops: list[str],
    links: list[Path] | None = None,
) -> Iterator[tuple[Path, list[str]]]:
    """Each folder read from `start` under `root` with its visible names that are not folders; see `_visible_files`.
    With `links`, linked folders are set aside there rather than followed; without, they are followed."""
    for folder, dirnames, filenames in os.walk(start, onerror=_unlistable, followlinks=links is None):
        here = Path(folder)
        keep = []
        for name in sorted(dirnames):
            sub = here / name
            if name.startswith("."):
                continue
            real = sub.resolve()
            if real in exclude or is_output(sub):
                outputs.append(sub.relative_to(root).as_posix())
                continue
            if only is not None and here == root and name not in only:
                continue  # beside ok/ and ng/: listed as ignored, never read
            if links is not None and sub.is_symlink():
                links.append(sub)
                continue
            if real in walked or top.is_relative_to(real):
                loops.append(sub.relative_to(root).as_posix())
                continue
            walked.add(real)
            keep.append(name)
        dirnames[:] = keep
        yield here, [name for name in filenames if not name.startswith(".")]


def _from_folder(root: Path, found: _Found, exclude: frozenset[Path]) -> None:
    # OK/, Ng/ ... too: folder names typed by hand or made on Windows, where case does not matter.
    tops = [p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")]
    labels = {p.name: p.name.lower() for p in tops if p.name.lower() in LABELS}
    layout = bool(labels)
    found.labelled_by = "layout" if layout else "none"
    found.label_dirs = sorted(f"{name}/" for name in labels)
    for p in _visible_files(root, exclude, found.outputs, found.loops, frozenset(labels) if layout else None):
        rel = p.relative_to(root)
        if p.suffix.lower() not in IMAGE_SUFFIXES:
            found.skipped.append(rel.as_posix())
            continue
        if not layout:
            found.items.append(ReplayItem(p, rel.as_posix()))
            continue
        label = labels.get(rel.parts[0])
        if len(rel.parts) == 1:
            found.loose.append(rel.as_posix())
            found.items.append(ReplayItem(p, rel.as_posix()))
            continue
        defect = rel.parts[1] if label == "ng" and len(rel.parts) > 2 else None
        found.items.append(ReplayItem(p, rel.as_posix(), label=label, defect=defect))
    if layout:
        outputs = set(found.outputs)
        found.ignored = sorted(p.name for p in tops if p.name not in labels and p.name not in outputs)


def _from_list(list_file: Path) -> list[ReplayItem]:
    try:
        text = list_file.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise InputError(f"{list_file}: not a folder, an image, or a UTF-8 text file listing one image path a line") from None
    except OSError as exc:
        raise InputError(f"{list_file}: cannot read ({exc.strerror})") from exc
    entries = [e for e in (line.strip().lstrip("\ufeff") for line in text.splitlines()) if e and not e.startswith("#")]
    csv_hint = "; pass it with --labels and give the image folder as PATH"
    if entries and entries[0].split(",")[0].strip().lower() == "frame" and "," in entries[0]:
        raise InputError(f"{list_file}: looks like a labels CSV (its first line is the header {entries[0]!r}){csv_hint}")
    items = []
    for entry in entries:
        p = Path(entry)
        p = p if p.is_absolute() else list_file.parent / p
        items.append(ReplayItem(p, entry))
    missing = [i for i in items if not i.path.is_file()]
    # A few missing frames are a recorded batch with gaps, and each gets its `unreadable` reject; most or all
    # missing means the list is read from the wrong folder, or is not a list of images at all.
    if items and 2 * len(missing) > len(items):
        how_many = "none" if len(missing) == len(items) else f"{len(missing)}"
        verb = "exists" if len(missing) == len(items) else "do not exist"
        looks_csv = list_file.suffix.lower() == ".csv" or any("," in i.frame_id for i in missing)
        raise InputError(
            f"{list_file}: {how_many} of its {len(items)} listed images {verb}; relative paths are read from the list "
            f"file's folder {list_file.parent.resolve()}, e.g. {missing[0].path.resolve()}"
            + (f"; it looks like a CSV{csv_hint}" if looks_csv else "")
        )
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
