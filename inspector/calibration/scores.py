"""Labelled scores for calibration: computed once from images through the daemon's path, or read from replay's decisions."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import structlog

from inspector.calibration.record import preprocess_sha256
from inspector.calibration.threshold import Sample
from inspector.config import InspectorSettings
from inspector.digest import file_sha256
from inspector.errors import InputError, ModelError
from inspector.pipeline import build_pipeline
from inspector.replay.dataset import ReplaySet, collect
from inspector.replay.metrics import NO_DEFECT_FOLDER
from inspector.replay.runner import judge, log_dataset

PER_ROI_NEEDS_ROI_LABELS = "--per-roi needs labels per ROI: a --labels CSV `frame,roi1,roi2,...` (or decisions replayed with one)"


@dataclass(frozen=True)
class ScoreSet:
    """Every labelled calibration sample with its score, and where they came from."""

    samples: tuple[Sample, ...]
    unit: str  # "frame" | "roi"
    model_sha256: str
    model_name: str | None
    roi_names: tuple[str, ...]
    preprocess_sha256: str | None
    fingerprint: str
    basis: str  # "files" | "decisions"
    source: str
    excluded: tuple[str, ...]  # samples without a score (faulted frames) or repeating another, with the reason
    unlabelled: int  # frames without a label, left out
    warnings: tuple[str, ...] = ()  # what weakens the evidence without refusing it (copies that cannot be found)


class _Copies:
    """Finds a second name for the same image by its content hash, and labels that disagree about one image."""

    def __init__(self) -> None:
        self.seen: dict[str, tuple[str, str, str | None]] = {}  # content hash -> (the first frame with it, its labels, defect class)
        self.conflicts: list[str] = []
        self.classes: list[str] = []  # NG copies under two defect classes

    def first(self, content: str | None, frame_id: str, labels: str, defect: str | None) -> str | None:
        """The frame this one copies (None for a first sighting, or without content); notes a label or defect class conflict."""
        if not content:
            return None
        if content not in self.seen:
            self.seen[content] = (frame_id, labels, defect)
            return None
        other, other_labels, other_defect = self.seen[content]
        if other_labels != labels:
            self.conflicts.append(f"{other} ({other_labels}) and {frame_id} ({labels})")
        elif labels == "ng" and other_defect != defect:
            self.classes.append(f"{other} ({other_defect or NO_DEFECT_FOLDER}) and {frame_id} ({defect or NO_DEFECT_FOLDER})")
        return other

    def check(self, what: str) -> None:
        """Refuse labels that disagree: one part cannot be both OK and NG, and path order must not settle it."""
        if self.conflicts:
            shown = "; ".join(self.conflicts[:5]) + (f"; and {len(self.conflicts) - 5} more" if len(self.conflicts) > 5 else "")
            raise InputError(
                f"{what}: {len(self.conflicts)} image(s) appear twice with different labels (the same bytes): {shown}; "
                "correct or remove the wrong copy"
            )

    def warnings(self) -> list[str]:
        """NG copies under two defect classes: kept (a part may show both defects), but path order picks the class it counts for."""
        if not self.classes:
            return []
        shown = "; ".join(self.classes[:5]) + (f"; and {len(self.classes) - 5} more" if len(self.classes) > 5 else "")
        return [(
            f"{len(self.classes)} NG image(s) appear under two defect classes (the same bytes): {shown}; each is one NG sample, "
            "counted in n_ng_per_class and the per-defect figures under the first class only; if a part does not show both "
            "defects, remove the wrong copy"
        )]


class _Gathered:
    """The samples of one source, one per labelled frame (or ROI): copies and faulted frames excluded with the reason."""

    def __init__(self) -> None:
        self.samples: list[Sample] = []
        self.excluded: list[str] = []
        self.lines: list[str] = []  # what the dataset fingerprint covers
        self.copies = _Copies()

    def add(
        self,
        frame_id: str,
        label: str | None,
        defect: str | None,
        roi_labels: Any,
        *,
        content: str | None,
        fingerprinted: object,
        score: float | None,
        reason: str | None,
        roi_scores: dict[str, float],
    ) -> None:
        """Take one labelled frame: `content` finds copies of one image, `fingerprinted` ends its fingerprint line."""
        original = self.copies.first(content, frame_id, _label_text(label, roi_labels), None if roi_labels else defect)
        if original is not None:
            # A copy or a link of one part is not a second part: counted twice, it would shrink the recall bound.
            self.excluded.append(f"{frame_id}: the same image as {original}")
            return
        self.lines.append(f"{frame_id}\t{label}\t{defect}\t{roi_labels}\t{fingerprinted}")
        if score is None:
            self.excluded.append(f"{frame_id}: {reason or 'no score'}")
            return
        self.samples += _samples(frame_id, label, defect, roi_labels, roi_scores, score)


def _label_text(label: str | None, roi_labels: Any) -> str:
    return " ".join(f"{roi}={lab}" for roi, lab in roi_labels) if roi_labels else str(label)


def _fingerprint(lines: list[str]) -> str:
    return "sha256:" + hashlib.sha256("\n".join(sorted(lines)).encode()).hexdigest()


def from_images(
    path: Path,
    settings: InspectorSettings,
    *,
    model_path: Path,
    labels_csv: Path | None = None,
    per_roi: bool = False,
    progress: bool | None = None,
    log: structlog.typing.FilteringBoundLogger | None = None,
) -> ScoreSet:
    """Score every labelled image under `path` once, with the station's preprocessing and the model's ROIs.

    `per_roi` (thresholds per ROI) needs labels per ROI: without a labels CSV it is refused before the model loads.
    """
    if per_roi and labels_csv is None:
        raise InputError(PER_ROI_NEEDS_ROI_LABELS)  # the folder layout labels frames, never ROIs
    log = log or structlog.get_logger("inspector.calibrate")
    pipeline = build_pipeline(settings, model_path=model_path, apply_calibration=False, log=log)
    dataset = collect(path, labels_csv=labels_csv, roi_names=pipeline.roi_names)
    if dataset.labelled_by == "none":
        raise InputError(
            f"{path}: no labels; calibration needs labelled parts: ok/ and ng/<defect>/ folders, or --labels CSV with ok/ng per ROI"
        )
    unit = "roi" if dataset.labelled_by == "csv" else "frame"
    log_dataset(log, dataset)  # loose images beside ok/ and ng/ among them
    labelled = [item for item in dataset.items if item.label is not None]
    not_in_csv = len(dataset.items) - len(labelled) - len(dataset.loose_files)
    if not_in_csv:
        log.warning("frames_without_labels", count=not_in_csv, why="not in the labels CSV; left out")
    got = _Gathered()
    for item, frame, verdict in judge(pipeline, ReplaySet(tuple(labelled), dataset.labelled_by), progress, "scoring"):
        content = hashlib.sha256(frame.data or b"").hexdigest()
        got.add(item.frame_id, item.label, item.defect, item.roi_labels, content=content if frame.data else None, fingerprinted=content,
                score=verdict.score, reason=verdict.reason.value if verdict.reason else None, roi_scores={r.name: r.score for r in verdict.rois})
    got.copies.check(str(path))
    return ScoreSet(
        samples=tuple(got.samples),
        unit=unit,
        model_sha256=pipeline.classifier.sha256,
        model_name=Path(model_path).name,
        roi_names=pipeline.roi_names,
        preprocess_sha256=preprocess_sha256(pipeline.preprocessor.spec.to_json()),
        fingerprint=_fingerprint(got.lines),
        basis="files",
        source=str(path),
        excluded=tuple(got.excluded),
        unlabelled=len(dataset.items) - len(labelled),
        warnings=tuple(got.copies.warnings()),
    )


def _samples(
    frame_id: str,
    label: str | None,
    defect: str | None,
    roi_labels: Any,
    roi_scores: dict[str, float],
    frame_score: float,
) -> list[Sample]:
    if roi_labels:
        return [Sample(f"{frame_id}#{roi}", roi_scores[roi], lab == "ng", None, roi) for roi, lab in roi_labels]
    return [Sample(frame_id, frame_score, label == "ng", defect if label == "ng" else None, None)]


def from_decisions(path: Path, *, model_path: Path | None = None) -> ScoreSet:
    """Read labelled scores from replay's decisions.jsonl; its summary.json beside it names the model and ROIs."""
    if path.is_dir():
        inside = path / "decisions.jsonl"
        hint = f"; did you mean {inside}?" if inside.is_file() else ""
        raise InputError(f"--decisions {path}: is a folder; expected the decisions.jsonl file that `inspector replay` wrote{hint}")
    if not path.is_file():
        raise InputError(f"--decisions {path}: no such file; expected the decisions.jsonl that `inspector replay` wrote")
    records = _read_jsonl(path)
    if not records:
        raise InputError(f"--decisions {path}: no decisions in the file")
    hashes = sorted({str(r.get("model", {}).get("sha256")) for r in records})
    if len(hashes) != 1:
        raise InputError(f"--decisions {path}: decisions from {len(hashes)} different models ({', '.join(h[:12] for h in hashes)}); calibrate one model")
    sha = hashes[0]
    if model_path is not None:
        actual = file_sha256(model_path)
        if actual != sha:
            raise ModelError(f"--model {model_path} has sha256 {actual}, but the decisions in {path} came from sha256 {sha}")
    summary = _read_summary(path.with_name("summary.json"))
    model = summary.get("model", {})
    name = Path(model_path).name if model_path else (Path(model["path"]).name if model.get("path") else None)
    labelled = [r for r in records if r.get("label")]
    if not labelled:
        raise InputError(
            f"--decisions {path}: no decision carries a label; replay a labelled folder (ok/ + ng/<defect>/) or pass --labels to replay"
        )
    unit = "roi" if any(r["label"].get("rois") for r in labelled) else "frame"
    got = _Gathered()
    seen: set[str] = set()
    unhashed = 0
    for r in labelled:
        if r["frame_id"] in seen:
            got.excluded.append(f"{r['frame_id']}: listed again (one frame is one sample)")
            continue
        seen.add(r["frame_id"])
        lab = r["label"]
        rois = tuple(sorted(lab["rois"].items())) if lab.get("rois") else None
        if "sha256" not in r:
            unhashed += 1
        scored = r.get("score") is not None
        got.add(r["frame_id"], lab.get("frame"), lab.get("defect"), rois, content=r.get("sha256"), fingerprinted=r.get("score"),
                score=float(r["score"]) if scored else None, reason=r.get("reason"),
                roi_scores={x["name"]: float(x["score"]) for x in r.get("rois", [])} if scored else {})
    got.copies.check(f"--decisions {path}")
    warnings = got.copies.warnings()
    if unhashed:
        warnings.append(
            f"{unhashed} of the {len(seen)} labelled decisions in {path} carry no image hash (an older replay wrote them): copies of one "
            "image under other names cannot be found and would count as more parts; replay the images again to have them left out"
        )
    roi_names = tuple(model.get("rois") or [x["name"] for x in labelled[0].get("rois", [])])
    return ScoreSet(
        samples=tuple(got.samples),
        unit=unit,
        model_sha256=sha,
        model_name=name,
        roi_names=roi_names,
        preprocess_sha256=model.get("preprocess_sha256"),
        fingerprint=_fingerprint(got.lines),
        basis="decisions",
        source=str(path),
        excluded=tuple(got.excluded),
        unlabelled=len(records) - len(labelled),
        warnings=tuple(warnings),
    )


def _read_jsonl(path: Path) -> list[dict[str, Any]]:
    records = []
    try:
        with path.open(encoding="utf-8") as f:
            for lineno, line in enumerate(f, start=1):
                if not line.strip():
                    continue
                try:
                    r = json.loads(line)
                except json.JSONDecodeError as exc:
                    raise InputError(f"--decisions {path}:{lineno}: not a JSON line ({exc.msg})") from None
                if not isinstance(r, dict) or "frame_id" not in r or "score" not in r:
                    raise InputError(f"--decisions {path}:{lineno}: not a verdict (expected frame_id, score, rois, model, label)")
                records.append(r)
    except UnicodeDecodeError:
        raise InputError(f"--decisions {path}: not UTF-8 text; expected the decisions.jsonl that `inspector replay` wrote") from None
    return records


def _read_summary(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}  # optional: only names the model and ROIs
    return data if isinstance(data, dict) else {}
