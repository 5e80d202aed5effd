"""What a training run shows: curves, confusion matrix, ROC, most-confused images, Grad-CAM heatmaps, report.html."""

from __future__ import annotations

import html
import json
from dataclasses import asdict
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import torch

from inspector.replay.metrics import roc_curve
from inspector.replay.report import contact_sheet
from inspector.training.data import ImageCache, SampleSet, mask_for
from inspector.training.gradcam import grad_cam, overlay, peak_in_mask
from inspector.training.lr_find import LrFinding
from inspector.training.trainer import EpochMetrics, Predictions

CURVES, CONFUSION, ROC = "curves.png", "confusion_matrix.png", "roc.png"
MOST_CONFUSED, GRADCAM, LR_FIND = "most_confused.jpg", "gradcam.jpg", "lr_find.png"
_SHEET_MAX = 32


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")  # no display on a training server
    import matplotlib.pyplot as plt

    return plt


def plot_curves(history: list[EpochMetrics], best_epoch: int, path: Path) -> None:
    """Loss (train, validation) and validation metrics per epoch, best epoch marked."""
    plt = _pyplot()
    e = [h.epoch for h in history]
    fig, (a, b) = plt.subplots(1, 2, figsize=(11, 4))
    a.plot(e, [h.train_loss for h in history], label="train loss")
    a.plot(e, [h.val_loss for h in history], label="validation loss")
    a.set_xlabel("epoch")
    a.set_ylabel("cross-entropy")
    a.set_yscale("log")
    for key, label in (
        ("roc_auc", "ROC-AUC"), ("accuracy", "accuracy"), ("f1", "NG F1 @0.5"),
        ("ng_recall_at_target", "NG recall @target"), ("false_reject_rate_at_target", "false-reject rate @target"),
    ):
        b.plot(e, [np.nan if getattr(h, key) is None else getattr(h, key) for h in history], label=label)
    b.set_xlabel("epoch")
    b.set_ylim(-0.02, 1.02)
    for ax in (a, b):
        ax.axvline(best_epoch, color="grey", ls="--", lw=1)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    b.set_title(f"validation (best epoch {best_epoch})", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def confusion(pred: Predictions, n_classes: int) -> np.ndarray:
    """Counts[true, predicted] by argmax."""
    m = np.zeros((n_classes, n_classes), np.int64)
    np.add.at(m, (pred.targets, pred.probabilities.argmax(1)), 1)
    return m


def plot_confusion(pred: Predictions, classes: tuple[str, ...], threshold: float | None, path: Path) -> None:
    """Class confusion by argmax and, beside it, OK/NG at the target-recall threshold."""
    plt = _pyplot()
    panels = [(confusion(pred, len(classes)), list(classes), "classes (argmax)")]
    if threshold is not None:
        rejected = pred.scores >= threshold
        ok_ng = np.array([[np.sum(~pred.is_ng & ~rejected), np.sum(~pred.is_ng & rejected)], [np.sum(pred.is_ng & ~rejected), np.sum(pred.is_ng & rejected)]])
        panels.append((ok_ng, ["ok", "ng"], f"OK/NG at threshold {threshold:.4g}"))
    size = max(4.0, 0.45 * len(classes) + 2)
    fig, axes = plt.subplots(1, len(panels), figsize=(size * len(panels), size))
    for ax, (m, names, title) in zip(np.atleast_1d(axes), panels, strict=True):
        ax.imshow(m, cmap="Blues")
        ax.set_xticks(range(len(names)), names, rotation=45, ha="right", fontsize=8)
        ax.set_yticks(range(len(names)), names, fontsize=8)
        ax.set_xlabel("predicted")
        ax.set_ylabel("true")
        ax.set_title(title, fontsize=10)
        for (i, j), v in np.ndenumerate(m):
            ax.text(j, i, str(v), ha="center", va="center", color="white" if v > m.max() / 2 else "black", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_roc(pred: Predictions, threshold: float | None, auc: float | None, path: Path) -> None:
    """ROC of the NG score with the operating point."""
    plt = _pyplot()
    fpr, tpr, _ = roc_curve(pred.scores, pred.is_ng)
    fig, ax = plt.subplots(figsize=(5, 5))
    ax.plot(fpr, tpr, label=f"ROC (AUC {auc:.4f})" if auc is not None else "ROC")
    ax.plot([0, 1], [0, 1], ls="--", color="grey", lw=1, label="chance")
    if threshold is not None:
        rej = pred.scores >= threshold
        ax.plot([rej[~pred.is_ng].mean()], [rej[pred.is_ng].mean()], "o", color="red", label=f"threshold {threshold:.4g}")
    ax.set_xlabel("false-reject rate (OK rejected)")
    ax.set_ylabel("NG recall")
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_lr_find(finding: LrFinding, path: Path) -> None:
    """Smoothed loss against learning rate (log scale), suggestion marked."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6, 4))
    ax.plot(finding.lrs, finding.losses)
    ax.axvline(finding.suggestion, color="red", ls="--", label=f"suggested {finding.suggestion:.2e}")
    ax.set_xscale("log")
    ax.set_xlabel("learning rate")
    ax.set_ylabel("loss (smoothed)")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _caption(pred: Predictions, j: int, classes: tuple[str, ...]) -> str:
    top = int(pred.probabilities[j].argmax())
    return f"{classes[int(pred.targets[j])]}->{classes[top]} s={pred.scores[j]:.3f}"


def most_confused(pred: Predictions, samples: SampleSet, val_idx: np.ndarray, cache: ImageCache, path: Path) -> list[dict[str, Any]]:
    """Contact sheet of the validation samples with the lowest probability on their true class; returns them as rows."""
    p_true = pred.probabilities[np.arange(len(pred.targets)), pred.targets]
    order = np.argsort(p_true, kind="stable")[:_SHEET_MAX]
    rows = []
    tiles = []
    for j in order:
        s = samples.samples[int(val_idx[j])]
        rows.append({"key": s.key, "label": s.label, "predicted": samples.classes[int(pred.probabilities[j].argmax())], "p_true": float(p_true[j]), "score": float(pred.scores[j])})
        crop = _eight_bit(cache.crop(s), cache)
        crop = cv2.cvtColor(crop, cv2.COLOR_RGB2BGR) if crop.ndim == 3 else crop  # the sheet is written as BGR
        tiles.append((crop, s.key.rsplit("/", 1)[-1], _caption(pred, int(j), samples.classes)))
    if tiles:
        contact_sheet(tiles, path)
    return rows


def gradcam_sheet(
    model: torch.nn.Module, pred: Predictions, samples: SampleSet, val_idx: np.ndarray, cache: ImageCache, device: torch.device, path: Path
) -> dict[str, Any]:
    """Grad-CAM over misclassified and NG validation samples (defect masks outlined where the dataset has them).

    Returns the pointing-game figure: of the NG samples with a mask, how many have the heatmap peak on the defect.
    """
    wrong = np.nonzero(pred.probabilities.argmax(1) != pred.targets)[0].tolist()
    ng = [j for j in np.nonzero(pred.is_ng)[0].tolist() if j not in wrong]
    chosen = (wrong + ng)[:_SHEET_MAX]
    ng_all = np.nonzero(pred.is_ng)[0].tolist()
    tiles, hits, with_mask = [], 0, 0
    for start in range(0, len(ng_all), 32):
        part = ng_all[start : start + 32]
        sel = [samples.samples[int(val_idx[j])] for j in part]
        cams = grad_cam(model, torch.from_numpy(np.stack([cache.tensor(cache.crop(s)) for s in sel])).to(device))
        for j, s, cam in zip(part, sel, cams, strict=True):
            mask = _mask(s, samples, cache)
            if mask is not None:
                with_mask += 1
                hits += peak_in_mask(cam, mask)
            if j in chosen:
                tiles.append((j, overlay(_eight_bit(cache.crop(s), cache), cam, mask), s.key.rsplit("/", 1)[-1]))
    extra = [j for j in chosen if j in wrong and not pred.is_ng[j]]  # false rejects: what made an OK part look NG
    if extra:
        sel = [samples.samples[int(val_idx[j])] for j in extra]
        cams = grad_cam(model, torch.from_numpy(np.stack([cache.tensor(cache.crop(s)) for s in sel])).to(device))
        tiles += [(j, overlay(_eight_bit(cache.crop(s), cache), cam), s.key.rsplit("/", 1)[-1]) for j, s, cam in zip(extra, sel, cams, strict=True)]
    tiles.sort(key=lambda t: chosen.index(t[0]))
    if tiles:
        contact_sheet([(img, name, _caption(pred, j, samples.classes)) for j, img, name in tiles], path)
    return {"ng_with_mask": with_mask, "peak_on_defect": hits, "pointing_game": (hits / with_mask) if with_mask else None}


def _eight_bit(crop: np.ndarray, cache: ImageCache) -> np.ndarray:
    """The crop as 8-bit for a sheet, scaled by its full scale: a 12-bit camera's crops would show near-black otherwise."""
    if crop.dtype == np.uint8:
        return crop
    return cv2.convertScaleAbs(crop, alpha=255.0 / cache.pre.spec.full_scale(crop.dtype))


def _mask(sample: Any, samples: SampleSet, cache: ImageCache) -> np.ndarray | None:
    path = mask_for(sample, samples.root)
    if path is None:
        return None
    # As frames and training's masks are read: an EXIF rotation would turn the mask against its frame.
    m = cv2.imdecode(np.fromfile(str(path), np.uint8), cv2.IMREAD_GRAYSCALE | cv2.IMREAD_IGNORE_ORIENTATION)
    frame = cache.frame(sample.path)
    if m is None or m.shape[:2] != frame.shape[:2]:
        return None
    return cache.pre.resize(m) > 127


def write_html(out_dir: Path, summary: dict[str, Any], history: list[EpochMetrics], images: list[str]) -> Path:
    """report.html: the headline figures and every plot, one page."""
    e = lambda v: html.escape(str(v))
    rows = "".join(f"<tr><th>{e(k)}</th><td>{e(v)}</td></tr>" for k, v in summary.items() if not isinstance(v, (dict, list)))
    epochs = "".join(
        "<tr>" + "".join(f"<td>{e(round(v, 4) if isinstance(v, float) else v)}</td>" for v in asdict(h).values()) + "</tr>" for h in history
    )
    head = "".join(f"<th>{e(k)}</th>" for k in EpochMetrics.__dataclass_fields__)
    imgs = "".join(f'<h2>{e(name)}</h2><img src="{e(name)}" style="max-width:100%">' for name in images if (out_dir / name).exists())
    doc = (
        "<!doctype html><meta charset=utf-8><title>inspector train</title>"
        "<style>body{font-family:system-ui,sans-serif;margin:24px auto;max-width:1300px}"
        "table{border-collapse:collapse}td,th{border:1px solid #ccc;padding:3px 8px;font-size:13px;text-align:left}</style>"
        f"<h1>inspector train</h1><table>{rows}</table>{imgs}<h2>epochs</h2><table><tr>{head}</tr>{epochs}</table>"
        f"<h2>summary.json</h2><pre>{e(json.dumps(summary, indent=2))}</pre>"
    )
    path = out_dir / "report.html"
    path.write_text(doc)
    return path
