"""Replay a recorded batch through the daemon's exact per-frame path and write decisions, summary and report."""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import structlog

from inspector import __version__
from inspector.calibration.record import preprocess_sha256, summary_line
from inspector.calibration.verify import verify
from inspector.config import InspectorSettings, threshold_problem
from inspector.decision import Verdict, shared_threshold
from inspector.errors import InputError
from inspector.frame import Frame
from inspector.outputs import check_output, make_output_folder
from inspector.pipeline import FramePipeline, build_pipeline, read_file_frame
from inspector.progress import Progress
from inspector.replay.dataset import IMAGE_SUFFIXES, ReplayItem, ReplaySet, collect
from inspector.replay.files import DECISIONS, REPORT_FILES, SUMMARY
from inspector.replay.metrics import Outcome, summarize, what_if
from inspector.replay.report import write_report


@dataclass(frozen=True)
class ReplayResult:
    """Where replay wrote its files, and the figures it computed."""

    out_dir: Path
    decisions: Path
    summary_path: Path
    report: Path | None
    summary: dict[str, Any]
    outcomes: tuple[Outcome, ...]


def default_out_dir() -> Path:
    """A fresh folder name for this run's outputs."""
    return Path(f"replay-{datetime.now().strftime('%Y%m%d-%H%M%S')}")


def run_replay(
    path: Path,
    settings: InspectorSettings,
    *,
    model_path: Path | None = None,
    threshold: float | None = None,
    labels_csv: Path | None = None,
    out_dir: Path | None = None,
    what_if_thresholds: list[float] | None = None,
    calibration: Path | None = None,
    report: bool = True,
    progress: bool | None = None,
    log: structlog.typing.FilteringBoundLogger | None = None,
) -> ReplayResult:
    """Judge every frame under `path` once; all checks happen before anything is written."""
    log = log or structlog.get_logger("inspector.replay")
    for t in what_if_thresholds or []:
        if (problem := threshold_problem(t)) is not None:  # as the flag checks it: at most 6 decimals, as scores are published
            raise InputError(f"--what-if: {problem}")
    out_dir = out_dir or default_out_dir()
    check_output(out_dir, "--out", folder=True)
    pipeline = build_pipeline(settings, model_path=model_path, threshold=threshold, calibration=calibration, log=log)
    dataset = collect(path, labels_csv=labels_csv, roi_names=pipeline.roi_names, exclude=(out_dir,))
    log.info("replay_start", path=str(path), frames=len(dataset.items), labelled_by=dataset.labelled_by)
    log_dataset(log, dataset)
    make_output_folder(out_dir, "--out")

    decisions = out_dir / DECISIONS
    outcomes = _judge_all(pipeline, dataset, decisions, progress)
    summary = summarize(outcomes)
    summary.update(
        replay={
            "path": str(path),
            "labelled_by": dataset.labelled_by,
            "skipped_files": len(dataset.skipped_files),
            "ignored_dirs": list(dataset.ignored_dirs),
            "labels_without_frame": len(dataset.labels_without_frame),
            "loose_files": len(dataset.loose_files),
            "outputs_skipped": list(dataset.outputs_skipped),
            "link_loops": list(dataset.link_loops),
            "inspector_version": __version__,
            "finished_at": datetime.now(UTC).isoformat(timespec="seconds"),
        },
        model={
            "path": str(pipeline.classifier.path),
            "sha256": pipeline.classifier.sha256,
            "provider": pipeline.classifier.provider,
            "classes": list(pipeline.classifier.classes),
            "rois": list(pipeline.roi_names),
            "preprocess_sha256": preprocess_sha256(pipeline.preprocessor.spec.to_json()),
        },
        # One number only when the station applies one: the lowest of differing ROI thresholds is no threshold it applies.
        threshold=shared_threshold(pipeline.thresholds.by_roi),
        roi_thresholds=pipeline.thresholds.by_roi,
        uncertain_band_high=pipeline.thresholds.band_high or None,
    )
    record = pipeline.thresholds.calibration
    if record is not None:
        summary["calibration"] = {
            "path": str(calibration or settings.decision.calibration),
            **summary_line(record),
            "check": verify(record, summary["frame_metrics"], summary["roi_metrics"]),
        }
    if what_if_thresholds:
        summary["what_if"] = what_if(outcomes, what_if_thresholds)
    summary_path = out_dir / SUMMARY
    _write_atomic(summary_path, json.dumps(summary, indent=2) + "\n")
    if report:
        report_path = write_report(out_dir, outcomes, summary, pipeline.thresholds.by_roi, rois=pipeline.preprocessor.spec.rois)
    else:
        report_path = None
        _remove_stale_report(out_dir, log)
    log.info(
        "replay_done",
        frames=summary["frames"],
        rejected=summary["rejected"],
        faulted=summary["faulted"],
        out=str(out_dir),
    )
    return ReplayResult(out_dir, decisions, summary_path, report_path, summary, tuple(outcomes))


def judge(pipeline: FramePipeline, dataset: ReplaySet, progress: bool | None, label: str = "replay") -> Iterator[tuple[ReplayItem, Frame, Verdict]]:
    """Each item of `dataset` with its frame (the file's bytes) and its verdict, in order, with a progress line."""
    bar = Progress(len(dataset.items), label, enabled=progress)
    for item in dataset.items:
        frame = read_file_frame(item.path, item.frame_id)
        yield item, frame, pipeline.process(frame)
        bar.advance()
    bar.close()


def _judge_all(pipeline: FramePipeline, dataset: ReplaySet, decisions: Path, progress: bool | None) -> list[Outcome]:
    outcomes = []
    tmp = decisions.with_suffix(".jsonl.partial")
    with tmp.open("w", encoding="utf-8") as f:
        for item, frame, verdict in judge(pipeline, dataset, progress):
            roi_labels = dict(item.roi_labels) if item.roi_labels else None
            record = verdict.to_dict()
            # Only here, not in the verdict (the MQTT payload): calibrate --decisions needs it to find copies of one image.
            record["sha256"] = hashlib.sha256(frame.data).hexdigest() if frame.data else None
            if item.label is not None:
                record["label"] = {"frame": item.label, "defect": item.defect, "rois": roi_labels}
            f.write(json.dumps(record, separators=(",", ":")) + "\n")
            outcomes.append(Outcome.of(verdict, item.label, item.defect, roi_labels))
    os.replace(tmp, decisions)
    return outcomes


def log_dataset(log: structlog.typing.FilteringBoundLogger, dataset: ReplaySet) -> None:
    """Warn about what a folder walk left out or could not label (replay, calibrate): nothing goes unsaid."""
    warn_skipped_files(log, dataset.skipped_files)
    if dataset.ignored_dirs:
        log.warning("folders_ignored", folders=list(dataset.ignored_dirs), why="only ok/ and ng/ carry labels")
    if dataset.outputs_skipped:
        log.warning(
            "outputs_skipped",
            count=len(dataset.outputs_skipped),
            folders=list(dataset.outputs_skipped),
            why="output of replay (decisions.jsonl + summary.json) or train (best.pt, last.pt, cv.json), or this run's --out: "
            "its plots and contact sheets are not frames",
        )
    warn_link_loops(log, dataset.link_loops)
    if dataset.loose_files:
        log.warning(
            "frames_unlabelled",
            count=len(dataset.loose_files),
            examples=list(dataset.loose_files[:3]),
            why="images beside ok/ and ng/: judged, but left out of NG recall and false-reject rate",
        )
    warn_labels_without_frame(log, dataset.labels_without_frame)


def warn_skipped_files(log: structlog.typing.FilteringBoundLogger, skipped: Sequence[str]) -> None:
    """Warn about files a folder walk did not read, their suffix not one of an image (replay, calibrate, train)."""
    if skipped:
        log.warning("files_skipped", count=len(skipped), examples=list(skipped[:3]),
                    why=f"not an image suffix inspector reads ({', '.join(sorted(IMAGE_SUFFIXES))})")


def warn_link_loops(log: structlog.typing.FilteringBoundLogger, loops: Sequence[str]) -> None:
    """Warn about linked folders a walk did not follow: their frames are read under their own path (replay, calibrate, train)."""
    if loops:
        log.warning("link_loops", count=len(loops), folders=list(loops),
                    why="links to a folder read anyway (under its own path, or holding this one): not read twice")


def warn_labels_without_frame(log: structlog.typing.FilteringBoundLogger, rows: Sequence[str]) -> None:
    """Warn about rows of a labels CSV that name no frame found (replay, calibrate, train)."""
    if rows:
        log.warning("labels_without_frame", count=len(rows), examples=list(rows[:3]))


def _remove_stale_report(out_dir: Path, log: structlog.typing.FilteringBoundLogger) -> None:
    """Delete an earlier run's report from `out_dir`: beside this run's summary it would describe other verdicts."""
    removed = []
    for name in REPORT_FILES:
        stale = out_dir / name
        try:
            stale.unlink()
        except FileNotFoundError:
            continue
        except OSError as exc:
            raise InputError(
                f"--out {out_dir}: cannot remove the earlier run's {name} ({exc.strerror}); delete it by hand, "
                "it does not describe this run"
            ) from exc
        removed.append(name)
    if removed:
        log.info("stale_report_removed", files=removed, why="--no-report: an earlier run's report would contradict this summary")


def _write_atomic(path: Path, text: str) -> None:
    tmp = path.with_suffix(path.suffix + ".partial")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)
