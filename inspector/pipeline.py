"""The per-frame path shared by `replay` and `run`: decode -> preprocess -> classify -> decide, failing safe."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import structlog

from inspector.calibration.record import (
    check_record,
    load_record,
    preprocess_sha256,
    summary_line,
)
from inspector.config import InspectorSettings, Provider
from inspector.decision import (
    PASS,
    REJECT,
    UNCERTAIN,
    Latency,
    RoiResult,
    Thresholds,
    Verdict,
)
from inspector.errors import InputError, ModelError
from inspector.frame import Frame, FrameFault, Reason
from inspector.model import ORT_EXCEPTIONS, Classifier, OnnxClassifier, load_classifier
from inspector.preprocess import (
    FrameSize,
    Preprocessor,
    PreprocessSpec,
    Roi,
    from_array,
    size_under_rois,
)
from inspector.regular_file import read_regular


class FramePipeline:
    """Turns each `Frame` into exactly one `Verdict`; any fault becomes a reject with a reason, never a pass."""

    def __init__(
        self,
        classifier: Classifier,
        preprocessor: Preprocessor,
        thresholds: Thresholds,
        *,
        log: structlog.typing.FilteringBoundLogger | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.classifier = classifier
        self.preprocessor = preprocessor
        self.thresholds = thresholds
        self.roi_names = preprocessor.spec.roi_names
        self.log = log or structlog.get_logger("inspector.pipeline")
        self._clock = clock
        self._blank: np.ndarray | None = None

    def process(self, frame: Frame) -> Verdict:
        """Judge one frame."""
        t0 = time.perf_counter()
        stamps = [t0, t0, t0]
        try:
            rois = self._judge(frame, stamps)
        except FrameFault as fault:
            self.log.warning("frame_fault", frame=frame.frame_id, reason=fault.reason.value, detail=fault.detail)
            return self._verdict(frame, (), fault.reason, fault.detail, t0, stamps)
        except Exception as exc:
            self.log.exception("frame_internal_error", frame=frame.frame_id)
            return self._verdict(frame, (), Reason.INTERNAL_ERROR, f"{type(exc).__name__}: {exc}", t0, stamps)
        if any(r.verdict == REJECT for r in rois):
            return self._verdict(frame, rois, Reason.SCORE, None, t0, stamps)
        if any(r.verdict == UNCERTAIN for r in rois):
            return self._verdict(frame, rois, Reason.UNCERTAIN, None, t0, stamps)
        return self._verdict(frame, rois, None, None, t0, stamps)

    def keep_warm(self) -> bool:
        """One inference on a blank batch of this station's ROIs, so an idle line's next part is not slow; False on failure."""
        if self._blank is None:
            self._blank = np.zeros((len(self.roi_names), *self.preprocessor.spec.input_shape), np.float32)
        try:
            self.classifier.predict(self._blank)
        except (*ORT_EXCEPTIONS, ModelError, ValueError) as exc:  # a keep-alive must never stop the line: the next frame reports it
            self.log.warning("keepalive_failed", error=f"{type(exc).__name__}: {exc}")
            return False
        return True

    def reject(self, frame: Frame, reason: Reason, detail: str) -> Verdict:
        """A reject for a frame that was not judged (overload, shutdown): no scores, the reason says why."""
        t0 = time.perf_counter()
        return self._verdict(frame, (), reason, detail, t0, [t0, t0, t0])

    def _judge(self, frame: Frame, stamps: list[float]) -> tuple[RoiResult, ...]:
        if frame.read_error is not None:
            raise FrameFault(frame.fault or Reason.UNREADABLE, frame.read_error)
        spec = self.preprocessor.spec
        if frame.data is not None:
            image = self.preprocessor.decode(frame.data)
        elif frame.image is not None:
            image = from_array(frame.image, spec.color)
        else:
            raise FrameFault(Reason.EMPTY_FILE, "the frame carries no image data")
        stamps[0] = time.perf_counter()
        batch = self.preprocessor(image)
        stamps[1] = time.perf_counter()
        try:
            probabilities = self.classifier.predict(batch)
        except Exception as exc:
            raise FrameFault(Reason.INFERENCE_ERROR, f"{type(exc).__name__}: {exc}") from exc
        stamps[2] = time.perf_counter()
        if not np.isfinite(probabilities).all():
            # NaN compares false with any threshold: unchecked, an overflowing model (fp16, INT8) would pass every part.
            bad = [name for name, row in zip(self.roi_names, probabilities, strict=False) if not np.isfinite(row).all()]
            raise FrameFault(Reason.INFERENCE_ERROR, f"the model returned NaN or infinite probabilities for ROI {', '.join(bad)}")
        return self.thresholds.decide(self.roi_names, self.classifier.classes, probabilities)

    def _verdict(
        self,
        frame: Frame,
        rois: tuple[RoiResult, ...],
        reason: Reason | None,
        detail: str | None,
        t0: float,
        stamps: list[float],
    ) -> Verdict:
        end = time.perf_counter()
        # A stage that never ran takes no time: clamp the missing stamps forward.
        d, p, i = stamps[0], max(stamps[1], stamps[0]), max(stamps[2], stamps[1], stamps[0])
        latency = Latency(
            decode=(d - t0) * 1000,
            preprocess=(p - d) * 1000,
            inference=(i - p) * 1000,
            total=(end - t0) * 1000,
        )
        return Verdict(
            frame_id=frame.frame_id,
            source=frame.source,
            captured_at=frame.captured_at,
            decided_at=self._clock(),
            verdict=PASS if reason is None else UNCERTAIN if reason is Reason.UNCERTAIN else REJECT,
            reason=reason,
            threshold=self.thresholds.default,
            rois=rois,
            model_sha256=self.classifier.sha256,
            provider=self.classifier.provider,
            latency_ms=latency,
            detail=detail,
            uncertain_route=self.thresholds.uncertain_route,
        )


def station_spec(spec: PreprocessSpec, rois: tuple[Roi, ...] | None) -> PreprocessSpec:
    """The model's preprocessing with this station's ROI layout, when the config gives one; InputError when it renames them.

    A whole-frame model's trained frame_size then applies to each ROI crop (`applies_to: roi`), not to the frame: the
    images it was trained on are what the station now crops.
    """
    if rois is None:
        return spec
    check_station_rois(spec, rois)
    placed = PreprocessSpec.model_validate({**spec.model_dump(), "rois": [r.model_dump() for r in rois]})
    return placed.model_copy(update={"frame_size": size_under_rois(spec, rois)})


def check_station_rois(spec: PreprocessSpec, rois: tuple[Roi, ...] | None) -> None:
    """Refuse station ROIs that rename or leave out the model's: `rois` moves the trained ROIs, it does not invent new ones.

    Where the trained frame_size applies to the ROI crops (a whole-frame model), also refuse pixel ROIs of a size the
    model was never trained on: every frame would be rejected as frame_size.
    """
    if rois is None:
        return
    trained, given = set(spec.roi_names), {r.name for r in rois}
    if not spec.rois or trained == given:
        # A whole-frame model may judge any crops (of the sizes it was trained on): each is a frame to it.
        _check_crop_sizes(spec, rois)
        return
    parts = [f"missing {', '.join(sorted(trained - given))}" if trained - given else "",
             f"not in the model {', '.join(sorted(given - trained))}" if given - trained else ""]
    raise InputError(
        f"rois: the model was trained on ROIs {', '.join(spec.roi_names)}; this station's `rois` places them and must name "
        f"each of them ({'; '.join(p for p in parts if p)})"
    )


def _check_crop_sizes(spec: PreprocessSpec, rois: tuple[Roi, ...]) -> None:
    """InputError naming the pixel ROIs whose crops lie outside the trained image sizes, where those apply to each crop."""
    size = size_under_rois(spec, rois)
    if not isinstance(size, FrameSize) or size.applies_to != "roi":
        return
    wrong = []
    for roi in rois:
        if roi.units == "px":
            x0, y0, x1, y1 = roi.pixels(0, 0)
            if not size.fits(x1 - x0, y1 - y0):
                wrong.append(f"{roi.name} is {x1 - x0}x{y1 - y0}")
    if wrong:
        raise InputError(
            f"rois: {'; '.join(wrong)} pixels, but this model was trained on {size.describe('images')} and judges each "
            "ROI crop as one of them (a whole-frame model); draw the ROIs that size, or train the model on crops like these "
            "(inspector train --frame-size sets the range it records)"
        )


def build_pipeline(
    settings: InspectorSettings,
    *,
    model_path: Path | None = None,
    threshold: float | None = None,
    calibration: Path | None = None,
    apply_calibration: bool = True,
    log: structlog.typing.FilteringBoundLogger | None = None,
) -> FramePipeline:
    """Load the model, resolve its preprocessing and thresholds, warm up, and return the ready pipeline.

    `calibration` (else `decision.calibration`) is checked against the model and applied; `apply_calibration=False`
    ignores it, for `inspector calibrate`, which makes a new one.
    """
    path = model_path or settings.model.path
    if path is None:
        raise InputError("no model given: pass --model PATH or set model.path in the config")
    if threshold is not None and not 0.0 <= threshold <= 1.0:
        raise InputError(f"--threshold must lie in 0..1, got {threshold}")
    record_path = (calibration or settings.decision.calibration) if apply_calibration else None
    if record_path is not None and threshold is not None:
        raise InputError("--threshold and a calibration record both set the threshold; give one")
    log = log or structlog.get_logger("inspector")
    # Before the model: a bad path fails fast, named as the user gave it.
    record = load_record(record_path, what="--calibration" if calibration is not None else "decision.calibration") if record_path is not None else None
    model_settings = settings.model
    if model_settings.cache_dir is None:
        model_settings = model_settings.model_copy(update={"cache_dir": settings.journal.path.parent / "engines"})
    classifier = load_classifier(
        path, model_settings, config_spec=settings.preprocess, rois=len(settings.rois) if settings.rois else None, log=log
    )
    spec = station_spec(classifier.spec, settings.rois)
    if spec.frame_size != classifier.spec.frame_size and spec.trained_size is not None:
        log.info(
            "frame_size_per_roi",
            frame_size=spec.trained_size.short(),
            rois=list(spec.roi_names),
            why="a whole-frame model with this station's rois: the images it was trained on are these crops, so each crop is "
            "checked against the trained size, not the frame",
        )
    if record is not None and record_path is not None:
        check_record(record, record_path, classifier.sha256, preprocess_sha256(spec.to_json()), spec.roi_names)
        log.info("calibration_loaded", path=str(record_path), **summary_line(record))
        if not record.demonstrated:
            log.warning(
                "calibration_not_demonstrated",
                path=str(record_path),
                target_recall=record.target.ng_recall,
                confidence=record.target.confidence,
                ng_needed=max(s.ng_needed_zero_misses for s in record.thresholds.values()),
                n_ng=record.dataset.n_ng,
                why="too few NG samples to prove the target recall; the threshold is a point estimate minus a safety margin",
            )
    thresholds = Thresholds(settings.decision, spec.roi_names, threshold, calibration=record)
    if getattr(classifier, "needs_gate", False):
        _gate_backend(classifier, path, settings, spec, thresholds.default, log)
    classifier.warmup(len(spec.roi_names), settings.model.warmup_runs)
    log.info(
        "model_loaded",
        model=str(path),
        sha256=classifier.sha256,
        provider=classifier.provider,
        classes=list(classifier.classes),
        rois=list(spec.roi_names),
        threshold=thresholds.default,
        frame_size=_frame_size_text(spec),
        load_ms=round(classifier.load_ms, 1),
    )
    return FramePipeline(classifier, Preprocessor(spec), thresholds, log=log)


def _frame_size_text(spec: PreprocessSpec) -> str | None:
    """The trained frame sizes for a log line: 1280x1024, 640x480..1280x1024, `any`, or None when the model records none."""
    size = spec.trained_size
    if size is None:
        return None if spec.frame_size is None else str(spec.frame_size)
    return size.short() + (" per ROI" if size.applies_to == "roi" and spec.rois else "")


def _gate_backend(
    classifier: Classifier, path: Path, settings: InspectorSettings, spec: PreprocessSpec, threshold: float,
    log: structlog.typing.FilteringBoundLogger,
) -> None:
    """A reduced-precision backend runs only when it judges the golden set as onnxruntime fp32 does."""
    from inspector.gate import compare, frame_scores, golden_set

    golden = settings.model.golden
    if golden is None:
        raise ModelError(f"{classifier.provider} needs model.golden (labelled ok/ + ng/ images) for its accuracy gate")
    frames, labels = golden_set(golden)
    reference = OnnxClassifier(path, settings.model.model_copy(update={"providers": [Provider.CPU], "backend": "onnxruntime"}),
                               config_spec=settings.preprocess, log=log)
    gate = compare(frame_scores(reference, spec, frames), frame_scores(classifier, spec, frames), labels, threshold=threshold)
    if not gate.passed:
        raise ModelError(
            f"{classifier.provider} refused by the accuracy gate on {golden}: {gate.problem()}; "
            f"{getattr(classifier, 'gate_remedy', 'run it in fp32')}"
        )
    log.info("accuracy_gate_passed", provider=classifier.provider, golden=str(golden), **gate.to_dict())


def read_file_frame(path: Path, frame_id: str | None = None, *, clock: Callable[[], float] = time.time) -> Frame:
    """A `Frame` from an image file; a read failure travels inside the frame so it still gets its reject."""
    captured = clock()
    try:
        data = read_regular(path)  # a pipe or device named like an image is not read: reading it could block forever
    except OSError as exc:
        return Frame(frame_id or path.name, str(path), captured, read_error=f"{exc.strerror or exc}: {path}")
    return Frame(frame_id or path.name, str(path), captured, data=data)
