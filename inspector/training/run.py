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
from inspector.training.backbones import build_model
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
    state = None
    if resume is not None:
        state = load_checkpoint(resume)
        if "optimizer" not in state:
            raise InputError(f"{resume}: a best.pt holds weights only; resume from last.pt of the same run")
        _check_resumable(resume, out_dir, state, resume_epochs)
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
    if recipe.folds and state is None:  # a resumed fold is one run: its checkpoint names its validation samples
        return _cross_validate(samples, spec, recipe, config, out_dir, progress, log)
    if state is not None:
        # The checkpoint names its validation samples: a resumed fold keeps its fold, whatever the recipe's split says.
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
FOLD_DIR = re.compile(r"fold-\d+")


def run_files(folder: Path) -> list[str]:
    """What of a training run's output `folder` already holds (files, fold-N/ folders); empty for a folder train may write in."""
    if not folder.is_dir():
        return []
    found = [name for name in RUN_FILES if (folder / name).exists()]
    found += sorted(f"{p.name}/" for p in folder.iterdir() if p.is_dir() and FOLD_DIR.fullmatch(p.name))
    return found


def _check_no_run(out_dir: Path) -> None:
    """InputError when `out_dir` holds any part of a training run, finished or not: a new run would overwrite some of its files
    and leave the rest, a folder that contradicts itself."""
    found = run_files(out_dir)
    if not found:
        return
    listed = ", ".join(found[:6]) + (", ..." if len(found) > 6 else "")
    folds = [f for f in found if f.startswith("fold-")]
    if folds or "cv.json" in found:
        fold = out_dir / (folds[0] if folds else "fold-1").rstrip("/")
        hint = (f"; a cross-validation resumes one fold at a time (--resume {fold / LAST} --out {fold}), "
                "and cv.json is then not rewritten")
    elif (out_dir / LAST).is_file():
        hint = f", or continue it with --resume {out_dir / LAST} --out {out_dir}"
    else:
        hint = " (it has no last.pt to resume from)"
    raise InputError(f"--out {out_dir}: already holds a training run ({listed}); choose another --out{hint}")


def _check_resumable(resume: Path, out_dir: Path, state: dict[str, Any], resume_epochs: int | None) -> None:
    """InputError, before anything is written, when resuming `state` into `out_dir` cannot continue that run."""
    run_dir = resume.parent
    if out_dir.resolve() != run_dir.resolve():
        raise InputError(
            f"--out {out_dir}: --resume {resume} continues the run in {run_dir}, and a resumed run writes only there; "
            f"give --out {run_dir} (to start a new run from these weights: --weights {run_dir / BEST} with a new --out)"
        )
    done, epochs = int(state["epoch"]), int(state["recipe"]["epochs"])
    early_stop, best_epoch = state["recipe"].get("early_stop"), int(state.get("best_epoch", done))
    stopped = early_stop is not None and done - best_epoch >= early_stop
    complete = all((run_dir / name).is_file() for name in ("summary.json", "report.html"))  # finish() writes them last
    if resume_epochs is not None and resume_epochs < done:
        raise InputError(
            f"--epochs {resume_epochs}: the run in {run_dir} has already run {done} epochs; --epochs must be more than {done} "
            "to extend it" + ("" if complete else " (or leave --epochs out to finish it)") + "; nothing was changed"
        )
    if complete and stopped:
        raise InputError(
            f"{resume}: the run is complete: it stopped early at epoch {done} (no better validation ROC-AUC for {early_stop} "
            "epochs), so more epochs would stop again; nothing was changed"
        )
    if complete and done >= (resume_epochs or epochs):
        raise InputError(
            f"{resume}: the run is complete: it has run all {done} of its epochs; give --epochs more than {done} to extend it; "
            "nothing was changed"
        )


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


def _cross_validate(samples: SampleSet, spec: Any, recipe: TrainRecipe, config: TrainConfig, out_dir: Path, progress: bool | None, log: Any) -> dict[str, Any]:
    folds = kfold_splits(samples, recipe.folds or 2, recipe.seed, regex_groups(recipe.group_by))
    per_fold = []
    for k, (train_idx, val_idx) in enumerate(folds, 1):
        log.info("fold_started", fold=k, folds=len(folds))
        fold_dir = out_dir / f"fold-{k}"
        result = train(samples, spec, recipe, fold_dir, train_idx=train_idx, val_idx=val_idx, progress=progress, log=log.bind(fold=k))
        per_fold.append(finish(result, samples, recipe, log))
    _write_config(out_dir, config.model_copy(update={"preprocess": result.cache.pre.spec}))  # pixel_max, frame_size as trained
    keys = ("roc_auc", "accuracy", "ng_recall_at_target", "false_reject_rate_at_target")
    summary: dict[str, Any] = {"folds": len(folds)}
    for key in keys:
        values = [f[key] for f in per_fold if f[key] is not None]
        summary[key] = {"mean": float(np.mean(values)), "std": float(np.std(values)), "per_fold": values} if values else None
    summary["checkpoints"] = [f["checkpoint"] for f in per_fold]
    (out_dir / "cv.json").write_text(json.dumps(summary, indent=2) + "\n")
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
    finding = lr_range_test(model, Batches(samples, cache, recipe, train_idx), samples.targets, train_idx, recipe, device)
    make_output_folder(out_dir, "--out")
    plot_lr_find(finding, out_dir / LR_FIND)
    (out_dir / "lr_find.json").write_text(
        json.dumps({"suggestion": finding.suggestion, "minimum": finding.minimum, "lrs": finding.lrs, "losses": finding.losses, "created": time.strftime("%Y-%m-%dT%H:%M:%S%z")}, indent=2)
    )
    return finding
