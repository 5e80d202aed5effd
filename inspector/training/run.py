"""`inspector train`: data and config in; checkpoints, metrics, plots, summary and report out."""

from __future__ import annotations

import json
import re
import time
from pathlib import Path
from typing import Any

import numpy as np
import structlog
import torch
import yaml

from inspector.errors import InputError
from inspector.outputs import check_output, make_output_folder
from inspector.training.backbones import build_model, check_input
from inspector.training.data import (
    SampleSet,
    collect_samples,
    kfold_splits,
    regex_groups,
    stratified_split,
)
from inspector.training.export import load_checkpoint
from inspector.training.lr_find import LrFinding, lr_range_test
from inspector.training.recipe import TrainConfig, TrainRecipe
from inspector.training.report import (
    CONFUSION,
    CURVES,
    GRADCAM,
    LR_FIND,
    MOST_CONFUSED,
    ROC,
    gradcam_sheet,
    most_confused,
    plot_confusion,
    plot_curves,
    plot_lr_find,
    plot_roc,
    write_html,
)
from inspector.training.trainer import (
    BEST,
    LAST,
    Batches,
    TrainResult,
    load_cache,
    loader_workers,
    pick_device,
    train,
)


def run_training(
    data: Path,
    out_dir: Path,
    config: TrainConfig,
    *,
    labels_csv: Path | None = None,
    multi: bool = False,
    resume: Path | None = None,
    resume_epochs: int | None = None,
    progress: bool | None = None,
    log: structlog.typing.FilteringBoundLogger | None = None,
) -> dict[str, Any]:
    """Train (one split, or every fold) and write everything to `out_dir`; returns the summary."""
    log = log or structlog.get_logger("inspector.train")
    check_output(out_dir, "--out", folder=True)
    _check_outside_data(out_dir, data, resuming=resume is not None)
    spec, recipe = config.preprocess, config.train
    state, fold = None, None
    if resume is not None:
        state = load_checkpoint(resume)
        if "optimizer" not in state:
            raise InputError(f"{resume}: a best.pt holds weights only; resume from last.pt of the same run")
        fold = _fold_of(resume, state)
        _check_resumable(resume, out_dir, state, resume_epochs, None if fold is None else fold[0])
        saved = dict(state["recipe"])
        if resume_epochs is not None:
            saved["epochs"] = resume_epochs
        recipe = TrainRecipe.model_validate(saved)
        spec = type(spec).from_json(state["spec"])
    else:
        if recipe.weights not in ("none", "imagenet") and not Path(recipe.weights).is_file():
            raise InputError(f"--weights {recipe.weights}: no such file; expected none, imagenet, or the path of a state dict")
        _check_no_run(out_dir)
    if state is not None:
        multi = tuple(state["classes"]) != ("ok", "ng")
    samples = collect_samples(data, spec, labels_csv=labels_csv, multi=multi)
    if state is not None and tuple(state["classes"]) != samples.classes:
        raise InputError(f"the data's classes {list(samples.classes)} differ from the checkpoint's {state['classes']}")
    log.info("dataset", root=str(data), samples=len(samples.samples), classes={c: int((samples.targets == i).sum()) for i, c in enumerate(samples.classes)})
    if samples.skipped_runs:
        log.warning("outputs_skipped", folders=list(samples.skipped_runs[:5]), count=len(samples.skipped_runs),
                    why="earlier outputs of train (best.pt, last.pt or cv.json) or replay inside DATA: their plots are not training images")
    if samples.unlabelled:
        log.warning("images_unlabelled", count=len(samples.unlabelled), examples=list(samples.unlabelled[:3]),
                    why="beside ok/ and ng/, or not in labels.csv: not used for training")
    if recipe.folds and state is None:
        return _cross_validate(samples, spec, recipe, config, out_dir, progress, log)
    if fold is not None and state is not None:  # a fold of a cross-validation: resuming it completes the cross-validation
        assert resume is not None
        cv_dir, k = fold
        return _cross_validate(samples, spec, recipe, TrainConfig(preprocess=spec, train=recipe), cv_dir, progress, log,
                               entry=(k, resume, state))
    if state is not None:
        # The checkpoint names its validation samples: a resumed run keeps them, whatever the recipe's split says (a
        # fold moved out of its cross-validation's folder included).
        keys = {v["key"] for v in state["validation"]}
        val_idx = np.array([i for i, s in enumerate(samples.samples) if s.key in keys])
        train_idx = np.array([i for i, s in enumerate(samples.samples) if s.key not in keys])
    else:
        train_idx, val_idx = stratified_split(samples, recipe.val_fraction, recipe.seed, regex_groups(recipe.group_by))
    result = train(samples, spec, recipe, out_dir, train_idx=train_idx, val_idx=val_idx, resume=state, progress=progress, log=log)
    _write_config(out_dir, config.model_copy(update={"preprocess": result.cache.pre.spec, "train": recipe}))  # pixel_max, frame_size as trained
    return finish(result, samples, recipe, log)


def _check_outside_data(out_dir: Path, data: Path, *, resuming: bool = False) -> None:
    """InputError when --out is DATA or inside it: the run's plots would be read as images of DATA by later trainings,
    calibrate and replay."""
    out, root = out_dir.resolve(), data.resolve()
    if out.is_relative_to(root):
        where = "move the run's folder out of DATA and resume it there" if resuming else "choose a folder outside DATA, e.g. runs/NAME beside it"
        raise InputError(
            f"--out {out_dir}: inside DATA {data}; the run's plots (report images) would be read as images of DATA by later "
            f"trainings, calibrate and replay; {where}"
        )


# What `inspector train` writes into --out (trainer.BEST, trainer.LAST, this module's files and report.py's plots; the
# subset every run folder has is replay/files.py's TRAINING_MARKERS).
RUN_FILES = (
    "best.pt", "last.pt", "metrics.json", "summary.json", "train.yaml", "cv.json", "report.html",
    "curves.png", "confusion_matrix.png", "roc.png", "most_confused.jpg", "gradcam.jpg",
)
FOLD_DIR = re.compile(r"fold-(\d+)")


class Interrupted(KeyboardInterrupt):
    """Ctrl-C (or SIGTERM) during a cross-validation: `resume` is the last.pt whose --resume continues it, None when there is none."""

    def __init__(self, resume: Path | None) -> None:
        super().__init__()
        self.resume = resume


def run_files(folder: Path) -> list[str]:
    """What of a training run's output `folder` already holds (files, fold-N/ folders); empty for a folder train may write in."""
    if not folder.is_dir():
        return []
    found = [name for name in RUN_FILES if (folder / name).exists()]
    # A fold folder stopped before its first epoch ended holds nothing: the same command may start the run again.
    found += sorted(f"{p.name}/" for p in folder.iterdir() if p.is_dir() and FOLD_DIR.fullmatch(p.name) and run_files(p))
    return found


def fold_parent(run_dir: Path) -> tuple[Path, int] | None:
    """(the cross-validation's folder, N) when `run_dir` is a fold-N/ folder (by its name), else None."""
    named = run_dir if FOLD_DIR.fullmatch(run_dir.name) else run_dir.resolve()  # `--resume last.pt` inside the fold's folder
    match = FOLD_DIR.fullmatch(named.name)
    return (named.parent, int(match.group(1))) if match else None


def _fold_of(resume: Path, state: dict[str, Any]) -> tuple[Path, int] | None:
    """(the cross-validation's folder, k) when `resume` is the last.pt of fold k of a cross-validation, else None."""
    found = fold_parent(resume.parent)
    return found if found is not None and state["recipe"].get("folds") else None


def _folds(cv_dir: Path) -> list[tuple[int, Path]]:
    """The fold-N/ folders of `cv_dir`, by N."""
    found = [(int(m.group(1)), p) for p in cv_dir.iterdir() if p.is_dir() and (m := FOLD_DIR.fullmatch(p.name))] if cv_dir.is_dir() else []
    return sorted(found)


def _finished(run_dir: Path) -> bool:
    """finish() wrote the run's summary and report after its last epoch: a run extended by --epochs keeps the report of its
    earlier end until it finishes again, and every epoch rewrites last.pt after it."""
    summary, report, last = (run_dir / name for name in ("summary.json", "report.html", LAST))
    if not (summary.is_file() and report.is_file()):
        return False
    return not last.is_file() or report.stat().st_mtime >= last.stat().st_mtime


def cv_resume_point(cv_dir: Path) -> Path | None:
    """The last.pt from which --resume continues the cross-validation in `cv_dir`: the first unfinished fold's, or where it
    has none (stopped in its first epoch) the one of the fold before; for a finished cross-validation the first fold's."""
    previous = None
    folds = _folds(cv_dir)
    for _, fold_dir in folds:
        last = fold_dir / LAST
        if not _finished(fold_dir) and (last.is_file() or previous is not None):
            return last if last.is_file() else previous
        previous = last if last.is_file() else previous
    return next((d / LAST for _, d in folds if (d / LAST).is_file()), None)


def _check_no_run(out_dir: Path) -> None:
    """InputError when `out_dir` holds any part of a training run, finished or not: a new run would overwrite some of its files
    and leave the rest, a folder that contradicts itself."""
    found = run_files(out_dir)
    if not found:
        return
    listed = ", ".join(found[:6]) + (", ..." if len(found) > 6 else "")
    folds = [f for f in found if f.startswith("fold-")]
    if folds or "cv.json" in found:
        point = cv_resume_point(out_dir)
        hint = (f"; --resume {point} continues this cross-validation: it completes every fold not yet finished (or, with "
                "more --epochs, extends them all), then writes cv.json" if point is not None else " (its folds have no last.pt to resume from)")
    elif (out_dir / LAST).is_file():
        hint = f", or continue it with --resume {out_dir / LAST} --out {out_dir}"
    else:
        hint = " (it has no last.pt to resume from)"
    raise InputError(f"--out {out_dir}: already holds a training run ({listed}); choose another --out{hint}")


def _check_resumable(resume: Path, out_dir: Path, state: dict[str, Any], resume_epochs: int | None, cv_dir: Path | None = None) -> None:
    """InputError, before anything is written, when resuming `state` into `out_dir` cannot continue that run.

    `cv_dir`: the cross-validation's folder when `resume` is one of its folds; whether it is complete is then the
    cross-validation's question (`_resume_plan`)."""
    run_dir = resume.parent
    if out_dir.resolve() not in {run_dir.resolve(), *([cv_dir.resolve()] if cv_dir is not None else [])}:
        where = f"give --out {run_dir}" + (f" or --out {cv_dir} (the cross-validation's folder)" if cv_dir is not None else "")
        raise InputError(
            f"--out {out_dir}: --resume {resume} continues the run in {cv_dir or run_dir}, and a resumed run writes only there; "
            f"{where} (to start a new run from these weights: --weights {run_dir / BEST} with a new --out)"
        )
    done, epochs = int(state["epoch"]), int(state["recipe"]["epochs"])
    early_stop, best_epoch = state["recipe"].get("early_stop"), int(state.get("best_epoch", done))
    stopped = early_stop is not None and done - best_epoch >= early_stop
    complete = _finished(run_dir)
    if resume_epochs is not None and resume_epochs < done:
        raise InputError(
            f"--epochs {resume_epochs}: the run in {run_dir} has already run {done} epochs; --epochs must be more than {done} "
            "to extend it" + ("" if complete else f" (or leave --epochs out to finish it, or give --epochs {done} to end it there)")
            + "; nothing was changed"
        )
    if state["recipe"].get("schedule") == "onecycle" and resume_epochs is not None and resume_epochs not in (done, epochs):
        # OneCycleLR plans its one rise and anneal over the steps of every epoch; the checkpoint's schedule continues that plan,
        # and a plan stretched or cut midway would make the learning rate jump. A finished cycle has annealed to nearly zero.
        if done >= epochs:
            raise InputError(f"--epochs {resume_epochs}: the run in {run_dir} has run all {done} of its epochs; {_onecycle_end(run_dir, done)}")
        raise InputError(
            f"--epochs {resume_epochs}: the run in {run_dir} follows a one-cycle schedule (schedule onecycle) planned over its "
            f"{epochs} epochs, which cannot be lengthened or shortened midway; leave --epochs out to finish it as planned, or give "
            f"--epochs {done} to end it at the epochs it has run; nothing was changed"
        )
    if cv_dir is not None:
        return
    if complete and stopped:
        raise InputError(
            f"{resume}: the run is complete: it stopped early at epoch {done} (no better validation ROC-AUC for {early_stop} "
            "epochs), so more epochs would stop again; nothing was changed"
        )
    if complete and done >= (resume_epochs or epochs):
        raise InputError(f"{resume}: the run is complete: it has run all {done} of its epochs; {_extend_hint(state, run_dir, done)}")


def _onecycle_end(run_dir: Path, done: int) -> str:
    return (
        f"its one-cycle schedule (schedule onecycle) ended at epoch {done}, planned as its last, and cannot be extended; to train "
        f"further, start a new run from these weights (--weights {run_dir / BEST} with a new --out: a cycle of its own), or "
        "train with schedule cosine or plateau, whose runs --epochs may extend; nothing was changed"
    )


def _extend_hint(state: dict[str, Any], run_dir: Path, done: int, what: str = "it") -> str:
    """What to do to train a complete run further."""
    if state["recipe"].get("schedule") == "onecycle":
        return _onecycle_end(run_dir, done)
    return f"give --epochs more than {done} to extend {what}; nothing was changed"


def _write_config(out_dir: Path, config: TrainConfig) -> None:
    # The exact config of the run, so `inspector train --config DIR/train.yaml` reproduces it.
    (out_dir / "train.yaml").write_text(yaml.safe_dump(config.model_dump(mode="json"), sort_keys=False))


def finish(result: TrainResult, samples: SampleSet, recipe: TrainRecipe, log: Any) -> dict[str, Any]:
    """Plots, sheets, Grad-CAM, summary.json and report.html for a finished run."""
    out = result.out_dir
    pred, val_idx = result.predictions, result.val_idx
    final = result.final  # the kept model as exported: its test-time views included
    t = final["threshold_at_target"]
    cache = result.cache
    plot_curves(result.history, result.best_epoch, out / CURVES)
    plot_confusion(pred, samples.classes, t, out / CONFUSION)
    plot_roc(pred, t, final["roc_auc"], out / ROC)
    confused = most_confused(pred, samples, val_idx, cache, out / MOST_CONFUSED)
    device = next(result.model.parameters()).device
    pointing = gradcam_sheet(result.model, pred, samples, val_idx, cache, device, out / GRADCAM)
    per_defect = {}
    if t is not None:
        for stratum in sorted({samples.samples[int(i)].stratum for i in val_idx}):
            rows = np.array([samples.samples[int(i)].stratum == stratum for i in val_idx])
            if stratum != "ok" and rows.any():
                per_defect[stratum.removeprefix("ng/") or "ng"] = {"n": int(rows.sum()), "recall": float((pred.scores[rows] >= t).mean())}
    summary = {
        "best_epoch": result.best_epoch,
        "epochs_run": len(result.history),
        "stopped_early": result.stopped_early,
        "training_seconds": round(result.seconds, 1),
        "classes": list(samples.classes),
        "train_samples": len(samples.samples) - len(val_idx),
        "validation_samples": len(val_idx),
        "roc_auc": final["roc_auc"],
        "accuracy": final["accuracy"],
        "tta": recipe.tta,
        "target_recall": recipe.target_recall,
        "threshold_at_target": t,
        "ng_recall_at_target": final["ng_recall_at_target"],
        "false_reject_rate_at_target": final["false_reject_rate_at_target"],
        "per_defect_recall_at_target": per_defect,
        "gradcam": pointing,
        "most_confused": confused[:10],
        "checkpoint": str(result.best),
        "dataset_fingerprint": result.fingerprint,
        "device": str(device),
        "precision": result.precision,
        "threads": torch.get_num_threads(),
        "workers": loader_workers(recipe.workers, device),
    }
    (out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    report = write_html(out, summary, result.history, [CURVES, ROC, CONFUSION, MOST_CONFUSED, GRADCAM])
    log.info("training_done", best_epoch=result.best_epoch, roc_auc=final["roc_auc"], checkpoint=str(result.best), report=str(report), seconds=round(result.seconds, 1))
    return summary


def _cross_validate(
    samples: SampleSet, spec: Any, recipe: TrainRecipe, config: TrainConfig, out_dir: Path, progress: bool | None, log: Any,
    entry: tuple[int, Path, dict[str, Any]] | None = None,
) -> dict[str, Any]:
    """Train every fold into out_dir/fold-k/, then write cv.json and train.yaml. With `entry` (k, its last.pt, its state),
    resume the cross-validation that fold k belongs to: finished folds are kept, the others continue or start."""
    folds = kfold_splits(samples, recipe.folds or 2, recipe.seed, regex_groups(recipe.group_by))
    fingerprint = samples.fingerprint()  # once: every fold (and the resume's checks) trains on the same data
    plan: list[tuple[str, Any]] = [("start", None)] * len(folds)
    if entry is not None:
        plan = _resume_plan(samples, fingerprint, folds, recipe, out_dir, entry)
        # Until every fold is done, a cv.json of before (fewer epochs, or missing folds) would contradict the folds beside it.
        (out_dir / "cv.json").unlink(missing_ok=True)
    try:
        per_fold, trained_spec = _train_folds(samples, fingerprint, spec, recipe, folds, plan, out_dir, progress, log)
        _write_config(out_dir, config.model_copy(update={"preprocess": trained_spec}))  # pixel_max, frame_size as trained
    except KeyboardInterrupt as exc:
        raise Interrupted(cv_resume_point(out_dir)) from exc
    keys = ("roc_auc", "accuracy", "ng_recall_at_target", "false_reject_rate_at_target")
    summary: dict[str, Any] = {"folds": len(folds)}
    for key in keys:
        values = [f[key] for f in per_fold if f[key] is not None]
        summary[key] = {"mean": float(np.mean(values)), "std": float(np.std(values)), "per_fold": values} if values else None
    summary["checkpoints"] = [f["checkpoint"] for f in per_fold]
    (out_dir / "cv.json").write_text(json.dumps(summary, indent=2) + "\n")
    return summary


def _train_folds(
    samples: SampleSet, fingerprint: str, spec: Any, recipe: TrainRecipe, folds: list[tuple[np.ndarray, np.ndarray]], plan: list[tuple[str, Any]],
    out_dir: Path, progress: bool | None, log: Any,
) -> tuple[list[dict[str, Any]], Any]:
    """Each fold as `plan` says (keep, resume or start) into out_dir/fold-k/: their summaries and the spec as trained."""
    per_fold, trained_spec = [], spec
    for k, ((train_idx, val_idx), (step, what)) in enumerate(zip(folds, plan, strict=True), 1):
        fold_dir = out_dir / f"fold-{k}"
        if step == "keep":
            log.info("fold_kept", fold=k, folds=len(folds), why="finished earlier; its summary.json joins cv.json")
            per_fold.append({**what, "checkpoint": str(fold_dir / BEST)})
            continue
        log.info("fold_started" if step == "start" else "fold_resumed", fold=k, folds=len(folds))
        if isinstance(what, Path):  # another fold's last.pt, checked by _resume_plan: loaded one at a time
            what = load_checkpoint(what)
        result = train(samples, spec, recipe, fold_dir, train_idx=train_idx, val_idx=val_idx, resume=what, progress=progress,
                       log=log.bind(fold=k), fingerprint=fingerprint)
        per_fold.append(finish(result, samples, recipe, log))
        trained_spec = result.cache.pre.spec
    return per_fold, trained_spec


def _resume_plan(
    samples: SampleSet, fingerprint: str, folds: list[tuple[np.ndarray, np.ndarray]], recipe: TrainRecipe, cv_dir: Path,
    entry: tuple[int, Path, dict[str, Any]],
) -> list[tuple[str, Any]]:
    """Per fold of the cross-validation in `cv_dir` that fold `entry` belongs to: ("keep", its summary) when it has run all of
    `recipe`'s epochs (or stopped early) and finished, ("resume", the entry's state or another fold's last.pt), or
    ("start", None) without a last.pt.

    InputError, before anything is written, when a fold cannot be continued: other data, another split of the folds
    (the validation samples a fold was started with are not the ones kfold_splits gives it now), another recipe."""
    entry_k, resume, entry_state = entry
    if entry_k > len(folds):
        raise InputError(f"{resume}: fold {entry_k}, but the checkpoint's recipe has {len(folds)} folds; nothing was changed")
    if entry_state["dataset"]["fingerprint"] != fingerprint:
        raise InputError(
            f"the data under {samples.root} is not the data the checkpoint was trained on "
            f"(fingerprint {fingerprint[:12]} vs {entry_state['dataset']['fingerprint'][:12]}); resume needs the same data; nothing was changed"
        )

    def same_run(state: dict[str, Any]) -> dict[str, Any]:  # what the folds of one cross-validation share
        return {"recipe": {**state["recipe"], "epochs": None}, "spec": state["spec"], "classes": state["classes"],
                "fingerprint": state["dataset"]["fingerprint"]}

    plan: list[tuple[str, Any]] = []
    stopped_all = True
    for k, (_, val_idx) in enumerate(folds, 1):
        fold_dir = cv_dir / f"fold-{k}"
        last = fold_dir / LAST
        state = entry_state if k == entry_k else load_checkpoint(last) if last.is_file() else None
        if state is None:
            if not _finished(fold_dir):
                plan.append(("start", None))
                stopped_all = False
                continue
            kept = _fold_summary(fold_dir)
            if kept.get("dataset_fingerprint") != fingerprint:
                raise InputError(f"{fold_dir}: fold {k} was trained on other data than {samples.root}; nothing was changed")
            ran, stopped = int(kept.get("epochs_run", 0)), bool(kept.get("stopped_early"))
            if ran < recipe.epochs and not stopped:
                raise InputError(
                    f"{fold_dir}: fold {k} finished at {ran} epoch{'s' * (ran != 1)} and has no {LAST} to extend it to {recipe.epochs}: put its "
                    f"{LAST} back, or remove {fold_dir} to train that fold again; nothing was changed"
                )
            plan.append(("keep", kept))
            stopped_all = stopped_all and stopped
            continue
        if k != entry_k and ("optimizer" not in state or same_run(state) != same_run(entry_state)):
            raise InputError(
                f"{last}: not a fold of the same cross-validation as {resume} (another recipe, preprocessing or data); "
                "nothing was changed"
            )
        trained = [v["key"] for v in state["validation"]]
        expected = [samples.samples[int(i)].key for i in val_idx]
        if sorted(trained) != sorted(expected):
            common = len(set(trained) & set(expected))
            raise InputError(
                f"{last}: fold {k} was started with {len(trained)} validation samples, but the split of this data and recipe "
                f"gives fold {k} {len(expected)} ({common} in common): the folds were split differently (by another version of "
                "inspector, or this is a fold of another cross-validation); this cross-validation cannot be resumed: start a new "
                "one with another --out; nothing was changed"
            )
        done = int(state["epoch"])
        if done > recipe.epochs:
            raise InputError(
                f"{last}: fold {k} has already run {done} epochs, more than the {recipe.epochs} that resuming from {resume} "
                f"trains each fold to; give --epochs {done} or more; nothing was changed"
            )
        stopped = recipe.early_stop is not None and done - int(state.get("best_epoch", done)) >= recipe.early_stop
        stopped_all = stopped_all and stopped
        if _finished(fold_dir) and (stopped or done >= recipe.epochs):
            plan.append(("keep", _fold_summary(fold_dir)))
        else:
            plan.append(("resume", state if k == entry_k else last))
    if all(step == "keep" for step, _ in plan) and all((cv_dir / name).is_file() for name in ("cv.json", "train.yaml")):
        if stopped_all:
            raise InputError(
                f"{resume}: the cross-validation in {cv_dir} is complete: every fold stopped early (no better validation ROC-AUC "
                f"for {recipe.early_stop} epochs), so more epochs would stop again; nothing was changed"
            )
        raise InputError(
            f"{resume}: the cross-validation in {cv_dir} is complete: each of its {len(folds)} folds has run its {recipe.epochs} "
            f"epochs or stopped early, and cv.json is written; {_extend_hint(entry_state, resume.parent, recipe.epochs, 'every fold')}"
        )
    return plan


def _fold_summary(fold_dir: Path) -> dict[str, Any]:
    """A finished fold's summary.json, as cv.json reads it; InputError when it cannot be read."""
    path = fold_dir / "summary.json"
    try:
        summary = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise InputError(f"{path}: cannot read the finished fold's summary ({exc}); nothing was changed") from exc
    if not isinstance(summary, dict):
        raise InputError(f"{path}: not a summary written by `inspector train`; nothing was changed")
    return summary


def run_lr_find(data: Path, out_dir: Path, config: TrainConfig, *, labels_csv: Path | None = None, multi: bool = False) -> LrFinding:
    """The LR range test on the training split; writes lr_find.png and lr_find.json."""
    check_output(out_dir, "--out", folder=True)
    _check_outside_data(out_dir, data)
    spec, recipe = config.preprocess, config.train
    samples = collect_samples(data, spec, labels_csv=labels_csv, multi=multi)
    train_idx, _ = stratified_split(samples, recipe.val_fraction, recipe.seed, regex_groups(recipe.group_by))
    if recipe.threads:
        torch.set_num_threads(recipe.threads)
    torch.manual_seed(recipe.seed)
    cache = load_cache(samples, spec, recipe, [samples.samples[int(i)].path for i in train_idx])
    device = pick_device(recipe.device)
    model = build_model(recipe, len(samples.classes), spec.channels)
    check_input(model, recipe.backbone, spec.input_shape)
    finding = lr_range_test(model, Batches(samples, cache, recipe, train_idx), samples.targets, train_idx, recipe, device)
    make_output_folder(out_dir, "--out")
    plot_lr_find(finding, out_dir / LR_FIND)
    (out_dir / "lr_find.json").write_text(
        json.dumps({"suggestion": finding.suggestion, "minimum": finding.minimum, "lrs": finding.lrs, "losses": finding.losses, "created": time.strftime("%Y-%m-%dT%H:%M:%S%z")}, indent=2)
    )
    return finding
