"""`inspector calibrate`: from labelled scores to a threshold with a stated guarantee, written as a station's record."""

from __future__ import annotations

import getpass
import socket
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Literal

import numpy as np

from inspector import __version__
from inspector.calibration.record import (
    ALL_ROIS,
    Achieved,
    BandRecord,
    CalibrationRecord,
    Cost,
    DatasetRef,
    GroupFigures,
    Limit,
    ModelRef,
    ScopeResult,
    Target,
)
from inspector.calibration.scores import PER_ROI_NEEDS_ROI_LABELS, ScoreSet
from inspector.calibration.threshold import (
    Operating,
    Sample,
    by_group,
    cost_threshold,
    expected_cost,
    meets,
    operating_point,
    recall_threshold,
    uncertain_band,
)
from inspector.config import threshold_problem
from inspector.decision import floor_decimals
from inspector.errors import InputError
from inspector.percent import percent
from inspector.replay.metrics import NO_DEFECT_FOLDER


@dataclass(frozen=True)
class CalibrateOptions:
    """What the quality engineer asks for."""

    station: str
    target_recall: float = 0.995
    confidence: float = 0.95
    safety_margin: float = 0.5  # odds cut when the target cannot be demonstrated
    per_roi: bool = False
    cost_escape: float | None = None
    cost_false_reject: float | None = None
    ng_rate: float | None = None  # NG prevalence on the line, for the expected cost and review rate
    choose: Literal["recall", "cost"] = "recall"
    band: Literal["auto"] | float | None = None  # None: no uncertain band; "auto": up to `band_false_reject`; a number: t_high
    band_false_reject: float = 0.005

    def check(self) -> None:
        """Raise InputError naming the option and the allowed values for anything out of range or inconsistent."""
        if not 0.0 < self.target_recall < 1.0:
            raise InputError(f"--target-recall must lie strictly between 0 and 1 (like 0.995), got {self.target_recall}")
        if not 0.0 < self.confidence < 1.0:
            raise InputError(f"--confidence must lie strictly between 0 and 1 (like 0.95), got {self.confidence}")
        if not 0.0 <= self.safety_margin < 1.0:
            raise InputError(f"--safety-margin must lie in 0..1 (0 = none, 0.5 = halve the threshold's odds), got {self.safety_margin}")
        if (self.cost_escape is None) != (self.cost_false_reject is None):
            raise InputError("--cost-escape and --cost-false-reject go together: give both, or neither")
        for name, v in (("--cost-escape", self.cost_escape), ("--cost-false-reject", self.cost_false_reject)):
            if v is not None and not v > 0.0:
                raise InputError(f"{name} must be a positive cost per part (any unit, the same for both), got {v}")
        if self.choose == "cost" and self.cost_escape is None:
            raise InputError("--choose cost needs --cost-escape and --cost-false-reject")
        if self.ng_rate is not None and not 0.0 < self.ng_rate < 1.0:
            raise InputError(f"--ng-rate must lie strictly between 0 and 1 (the line's share of NG parts), got {self.ng_rate}")
        if isinstance(self.band, (int, float)):
            if not 0.0 < self.band <= 1.0:
                raise InputError(f"--uncertain-band takes auto or the band's upper threshold in 0..1, got {self.band}")
            if (problem := threshold_problem(float(self.band))) is not None:  # the record holds it as a threshold: at most 6 decimals
                raise InputError(f"--uncertain-band: {problem}")
        if not 0.0 <= self.band_false_reject < 1.0:
            raise InputError(f"--band-false-reject must lie in 0..1, got {self.band_false_reject}")


def default_record_path(station: str, root: Path = Path("calibration")) -> Path:
    """calibration/<station>.yaml, relative to the working directory."""
    return root / f"{station}.yaml"


def calibrate(scores: ScoreSet, options: CalibrateOptions) -> CalibrationRecord:
    """The record for these scores: one threshold for all ROIs, or one per ROI with `per_roi`."""
    options.check()
    samples = scores.samples
    if not samples and scores.excluded:
        # Not a data problem: nothing could be scored, so the model (or every image) is what to look at.
        shown = "; ".join(scores.excluded[:3]) + ("; ..." if len(scores.excluded) > 3 else "")
        raise InputError(f"no sample could be scored: all {len(scores.excluded)} were left out ({shown})")
    _require_both_labels(samples, "the calibration data")
    if options.per_roi:
        if scores.unit != "roi":
            raise InputError(PER_ROI_NEEDS_ROI_LABELS)
        groups = by_group(samples, "roi")
        for name, group in groups.items():
            _require_both_labels(group, f"ROI {name}")
        scopes = {name: _scope(group, options, with_rois=False) for name, group in groups.items()}
    else:
        scopes = {ALL_ROIS: _scope(samples, options, with_rois=scores.unit == "roi")}
    ng = [s for s in samples if s.ng]
    per_class: dict[str, int] = {}
    for s in ng:
        # As replay's per-defect rows: NG lying directly under ng/ count too, so the classes add up to n_ng. ROI samples
        # (a labels CSV) name no defect class at all.
        if s.roi is None:
            name = s.defect or NO_DEFECT_FOLDER
            per_class[name] = per_class.get(name, 0) + 1
    return CalibrationRecord(
        station=options.station,
        created_at=datetime.now(UTC).isoformat(timespec="seconds").replace("+00:00", "Z"),
        created_by=f"{_user()}@{socket.gethostname()}",
        inspector_version=__version__,
        model=ModelRef(name=scores.model_name, sha256=scores.model_sha256),
        preprocess_sha256=scores.preprocess_sha256,
        target=Target(ng_recall=options.target_recall, confidence=options.confidence),
        dataset=DatasetRef(
            source=scores.source,
            fingerprint=scores.fingerprint,
            basis=scores.basis,  # type: ignore[arg-type]
            unit=scores.unit,  # type: ignore[arg-type]
            n_ok=len(samples) - len(ng),
            n_ng=len(ng),
            n_ng_per_class=dict(sorted(per_class.items())),
            excluded=len(scores.excluded),
            unlabelled=scores.unlabelled,
        ),
        demonstrated=all(s.demonstrated for s in scopes.values()),
        thresholds=scopes,
    )


def _user() -> str:
    try:
        return getpass.getuser()
    except (KeyError, OSError):  # no passwd entry (containers)
        return "unknown"


def _require_both_labels(samples: tuple[Sample, ...] | list[Sample], what: str) -> None:
    n_ng = sum(s.ng for s in samples)
    n_ok = len(samples) - n_ng
    if n_ng == 0:
        raise InputError(
            f"{what} has no NG samples ({n_ok} OK): NG recall cannot be measured; add labelled NG parts (ng/<defect>/ or ng in the labels CSV)"
        )
    if n_ok == 0:
        raise InputError(f"{what} has no OK samples ({n_ng} NG): the false-reject rate cannot be measured; add labelled OK parts")


def _achieved(op: Operating) -> Achieved:
    return Achieved(
        ng_recall=round(op.ng_recall, 6),
        ng_recall_lower=round(op.ng_recall_lower, 6),
        false_reject_rate=round(op.false_reject_rate, 6),
        false_reject_rate_upper=round(op.false_reject_rate_upper, 6),
        ng_caught=op.ng_caught,
        ng_missed=op.ng_missed,
        ok_rejected=op.ok_rejected,
        ok_passed=op.ok_passed,
    )


def _scope(samples: tuple[Sample, ...] | list[Sample], options: CalibrateOptions, *, with_rois: bool) -> ScopeResult:
    ng_samples = sorted((s for s in samples if s.ng), key=lambda s: (s.score, s.sample_id))
    ng = np.array([s.score for s in ng_samples], np.float64)
    ok = np.sort(np.array([s.score for s in samples if not s.ng], np.float64))
    target, conf = options.target_recall, options.confidence
    choice = recall_threshold(ng, target, conf, options.safety_margin)
    ng_rate = options.ng_rate if options.ng_rate is not None else len(ng) / (len(ng) + len(ok))
    cost = None
    threshold = choice.threshold
    if options.cost_escape is not None and options.cost_false_reject is not None:
        best = cost_threshold(ng, ok, options.cost_escape, options.cost_false_reject, ng_rate)
        at_recall = operating_point(ng, ok, choice.threshold, conf)
        cost = Cost(
            escape=options.cost_escape,
            false_reject=options.cost_false_reject,
            ng_rate=round(ng_rate, 6),
            ng_rate_from="option" if options.ng_rate is not None else "calibration data",
            threshold=best.threshold,
            cost_per_part=round(best.cost_per_part, 9),
            recall_threshold_cost_per_part=round(float(expected_cost(
                at_recall.ng_caught, at_recall.ok_rejected, len(ng), len(ok), options.cost_escape, options.cost_false_reject, ng_rate
            )), 9),
            achieved=_achieved(operating_point(ng, ok, best.threshold, conf)),
        )
        if options.choose == "cost":
            threshold = best.threshold
    op = operating_point(ng, ok, threshold, conf)
    if options.choose == "cost" and cost is not None:
        chosen_by = "expected-cost"
    else:
        chosen_by = "recall-bound" if choice.demonstrated else "point-estimate-minus-margin"
    limit = ng_samples[choice.limiting]
    if chosen_by == "expected-cost":
        # The cost rule's threshold sits elsewhere: the NG part nearest to passing is the lowest one it still rejects.
        caught = [s for s in ng_samples if s.score >= threshold]
        limit = caught[0] if caught else limit
    band, band_note = None, None
    if options.band is not None:
        b = uncertain_band(ng, ok, threshold, None if options.band == "auto" else float(options.band), options.band_false_reject, ng_rate)
        if options.band != "auto" and b.high <= threshold:
            raise InputError(f"--uncertain-band {options.band}: the band's upper threshold must lie above the threshold {threshold:g}")
        if b.high > b.low:
            band = BandRecord(low=b.low, high=b.high, ng_in_band=b.ng_in_band, ok_in_band=b.ok_in_band,
                              ok_rejected_above=b.ok_rejected_above, expected_review_rate=round(b.expected_review_rate, 6))
        else:  # only `auto` gets here: an explicit HIGH at or below the threshold was refused above
            band_note = (f"the threshold {threshold:g} already rejects {op.ok_rejected} of {len(ok)} OK samples, within "
                         f"--band-false-reject {options.band_false_reject:g}; no score above it needs review")
    return ScopeResult(
        threshold=threshold,
        chosen_by=chosen_by,
        demonstrated=bool(meets(op.ng_recall_lower, target)),
        recall_bound_threshold=choice.threshold,
        point_estimate_threshold=choice.point_threshold,
        safety_margin=None if choice.demonstrated else options.safety_margin,
        ng_needed_zero_misses=choice.needed_zero_miss,
        n_ok=len(ok),
        n_ng=len(ng),
        achieved=_achieved(op),
        limited_by=Limit(sample=limit.sample_id, score=floor_decimals(limit.score), defect=limit.defect, roi=limit.roi),  # as published
        per_defect=_groups(samples, "defect", threshold, options),
        per_roi=_groups(samples, "roi", threshold, options) if with_rois else {},
        cost=cost,
        uncertain_band=band,
        uncertain_band_note=band_note,
    )


def _groups(samples: tuple[Sample, ...] | list[Sample], key: str, threshold: float, options: CalibrateOptions) -> dict[str, GroupFigures]:
    """Each defect class's (or ROI's) figures at the shared threshold, and the threshold it alone would need."""
    out = {}
    for name, group in by_group(samples, key).items():
        ng = np.sort(np.array([s.score for s in group if s.ng], np.float64))
        if len(ng) == 0:
            continue  # an ROI that never saw an NG part limits nothing
        ok = np.array([s.score for s in group if not s.ng], np.float64)
        op = operating_point(ng, ok, threshold, options.confidence)
        alone = recall_threshold(ng, options.target_recall, options.confidence, options.safety_margin)
        out[name] = GroupFigures(
            n_ng=len(ng),
            n_ok=len(ok),
            ng_caught=op.ng_caught,
            ng_recall=round(op.ng_recall, 6),
            ng_recall_lower=round(op.ng_recall_lower, 6),
            false_reject_rate=round(op.false_reject_rate, 6) if len(ok) else None,
            lowest_ng_score=floor_decimals(float(ng[0])),  # as published
            threshold_alone=alone.threshold,
            demonstrated_alone=alone.demonstrated,
        )
    return out


def limiting_group(scope: ScopeResult, key: str) -> str | None:
    """The defect class (key "defect") or ROI ("roi") of the limiting NG sample (`limit_text` says how it limits), when
    there are groups to tell apart: the one that holds the shared threshold down."""
    groups = scope.per_defect if key == "defect" else scope.per_roi
    name = scope.limited_by.defect if key == "defect" else scope.limited_by.roi
    return name if len(groups) > 1 and name in groups else None


def limit_text(scope: ScopeResult) -> str:
    """How the limiting NG sample sets the threshold, by the rule that chose it."""
    if scope.chosen_by == "point-estimate-minus-margin":
        return (f"the point estimate's threshold {scope.point_estimate_threshold:g} sits on it; the safety margin lowers the threshold "
                f"to {scope.threshold:g}, below it")
    if scope.chosen_by == "expected-cost":
        return "the lowest-scoring NG the cost-chosen threshold still rejects"
    missed = scope.achieved.ng_missed
    return "the threshold sits just below it" + (f"; the {missed} NG scored lower are missed" if missed else ", on the lowest NG")


def group_mark(scope: ScopeResult, group: GroupFigures) -> str:
    """The marker for the group that holds the limiting NG sample: what the threshold does to it, true for every rule."""
    lim = scope.limited_by
    missed = group.n_ng - group.ng_caught
    also = f"; {missed} of its NG are missed" if missed else ""
    if scope.chosen_by == "point-estimate-minus-margin":
        return f"<- the point estimate {scope.point_estimate_threshold:g} sits on its NG at {lim.score:g}{also}"
    if scope.chosen_by == "expected-cost":
        return f"<- holds the lowest NG still rejected ({lim.score:g}){also}"
    if group.lowest_ng_score == lim.score:
        return "<- the threshold sits on its lowest NG"
    return f"<- the threshold sits on its NG at {lim.score:g}, not its lowest ({group.lowest_ng_score:g}){also}"


def alone_text(f: GroupFigures) -> str:
    """What one group would need on its own evidence, and on which rule."""
    if f.demonstrated_alone:
        return f"alone it would need threshold {f.threshold_alone:g}"
    # Fewer NG than the target needs: the point estimate less the margin, lower than a pooled threshold can be.
    return f"alone its {f.n_ng} NG cannot demonstrate the target (threshold {f.threshold_alone:g} by point estimate less the margin)"


def describe(record: CalibrationRecord, excluded: tuple[str, ...] = ()) -> list[str]:
    """The record as a quality engineer reads it on the terminal."""
    d, t = record.dataset, record.target
    lines = [
        f"station {record.station}: model {record.model.name or '?'} (sha256 {record.model.sha256[:12]}…), "
        f"{d.n_ok} OK / {d.n_ng} NG {d.unit}s" + (f", {d.excluded} excluded" if d.excluded else "")
        + (f", {d.unlabelled} unlabelled frames left out" if d.unlabelled else ""),
        f"target: NG recall >= {percent(t.ng_recall)} at {100 * t.confidence:g}% confidence (one-sided Clopper-Pearson)",
    ]
    lines += [f"  excluded {e}" for e in excluded[:5]]
    for name, s in record.thresholds.items():
        head = "" if name == ALL_ROIS else f"ROI {name}: "
        a = s.achieved
        if s.chosen_by == "point-estimate-minus-margin":
            lines.append(
                f"{head}NOT DEMONSTRATED: {s.n_ng} NG samples cannot show {percent(t.ng_recall)} NG recall at {100 * t.confidence:g}% "
                f"confidence; {s.ng_needed_zero_misses} NG samples, none missed, would be needed."
            )
            lines.append(
                f"{head}threshold {s.threshold:g}: the point estimate's {s.point_estimate_threshold:g} with its odds cut by the "
                f"safety margin {s.safety_margin or 0:g}"
            )
        else:
            why = {"recall-bound": "the highest whose lower bound on NG recall meets the target",
                   "expected-cost": "the lowest expected cost per part (--choose cost)"}.get(s.chosen_by, s.chosen_by)
            lines.append(f"{head}threshold {s.threshold:g}: {why}" + ("" if s.demonstrated else " (the recall target is NOT demonstrated there)"))
        lines.append(
            f"{head}  NG recall {percent(a.ng_recall)} (lower bound {percent(a.ng_recall_lower)}), {a.ng_missed} of {s.n_ng} NG missed; "
            f"false-reject rate {percent(a.false_reject_rate)} (upper bound {percent(a.false_reject_rate_upper)}), {a.ok_rejected} of {s.n_ok} OK"
        )
        lim = s.limited_by
        lines.append(f"{head}  limited by {lim.sample} (score {lim.score:g}" + (f", {lim.defect}" if lim.defect else "") + f"): {limit_text(s)}")
        for label, key, groups in (("defect", "defect", s.per_defect), ("ROI", "roi", s.per_roi)):
            worst = limiting_group(s, key)
            for g, f in groups.items():
                mark = f"  {group_mark(s, f)}" if g == worst else ""
                lines.append(
                    f"{head}  {label} {g}: {f.n_ng} NG, recall {percent(f.ng_recall)} (lower {percent(f.ng_recall_lower)}), {alone_text(f)}{mark}"
                )
        if s.cost is not None:
            c = s.cost
            lines.append(
                f"{head}  expected cost per part: {c.recall_threshold_cost_per_part:.6g} at the recall threshold; lowest {c.cost_per_part:.6g} at "
                f"threshold {c.threshold:g} (NG recall {percent(c.achieved.ng_recall)}, false-reject rate {percent(c.achieved.false_reject_rate)}; "
                f"NG rate {percent(c.ng_rate)} from the {c.ng_rate_from})"
            )
        if s.uncertain_band is not None:
            b = s.uncertain_band
            lines.append(
                f"{head}  uncertain band [{b.low:g}, {b.high:g}): {b.ng_in_band} NG and {b.ok_in_band} OK samples in it, expected review "
                f"rate {percent(b.expected_review_rate)}; {b.ok_rejected_above} OK still rejected above it"
            )
        if s.uncertain_band_note is not None:
            lines.append(f"{head}  no uncertain band: {s.uncertain_band_note}")
    return lines

