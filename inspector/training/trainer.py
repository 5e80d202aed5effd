"""The training loop: recipe in, best checkpoint, per-epoch metrics and a resumable last checkpoint out."""

from __future__ import annotations

import contextlib
import functools
import json
import math
import os
import platform
import time
from collections import deque
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import cv2
import numpy as np
import structlog
import torch
import torchvision
from torch import nn

from inspector import __version__
from inspector.errors import InputError
from inspector.manifest import OK_CLASS
from inspector.outputs import make_output_folder
from inspector.preprocess import PreprocessSpec
from inspector.progress import Progress
from inspector.replay.metrics import binary_metrics, roc_auc, threshold_at_recall
from inspector.training.backbones import (
    build_model,
    check_input,
    deployed,
    frozen_names,
    head_parameters,
    keep_frozen_bn_eval,
    set_frozen,
)
from inspector.training.data import (
    MASKS_DIR,
    ImageCache,
    Sample,
    SampleSet,
    augment,
    erase,
)
from inspector.training.recipe import TrainRecipe

CHECKPOINT_FORMAT = "inspector.checkpoint/1"
BEST, LAST = "best.pt", "last.pt"


@dataclass(frozen=True, slots=True)
class EpochMetrics:
    """Training and validation figures of one epoch; NG is the positive class, score = 1 - P(ok)."""

    epoch: int
    lr: float
    seconds: float
    train_loss: float
    val_loss: float
    accuracy: float  # argmax over all classes
    precision: float | None  # NG vs OK at score >= 0.5
    recall: float | None
    f1: float | None
    roc_auc: float | None
    threshold_at_target: float | None  # highest threshold reaching the target NG recall
    ng_recall_at_target: float | None
    false_reject_rate_at_target: float | None


@dataclass(frozen=True, slots=True)
class Predictions:
    """Validation outputs of one model: class probabilities per sample, in `val_idx` order."""

    probabilities: np.ndarray  # (n, classes)
    targets: np.ndarray  # (n,) class index

    @property
    def scores(self) -> np.ndarray:
        """1 - P(ok): the runtime's NG score."""
        return 1.0 - self.probabilities[:, 0]

    @property
    def is_ng(self) -> np.ndarray:
        """True where the sample's class is not ok."""
        return self.targets != 0


@dataclass(slots=True)
class TrainResult:
    """What a run produced."""

    out_dir: Path
    best: Path
    last: Path
    history: list[EpochMetrics]
    best_epoch: int
    stopped_early: bool
    seconds: float
    model: nn.Module = field(repr=False)
    predictions: Predictions = field(repr=False)
    val_idx: np.ndarray = field(repr=False)
    cache: ImageCache = field(repr=False)  # the decoded, equalized frames, for the report
    fingerprint: str = ""  # SampleSet.fingerprint() of the data trained on
    final: dict[str, Any] = field(default_factory=dict, repr=False)  # evaluate() of the kept model as exported (test-time views included)
    precision: str = "fp32"  # Precision.name of the training steps


def pick_device(choice: str) -> torch.device:
    """auto: CUDA when present; cuda without a GPU is an error naming what was found."""
    if choice == "cuda" and not torch.cuda.is_available():
        raise InputError("device=cuda but torch finds no CUDA GPU; use --device cpu or auto")
    if choice == "cpu" or not torch.cuda.is_available():
        return torch.device("cpu")
    return torch.device("cuda")


def cpu_has_bf16() -> bool:
    """True when the CPU computes bfloat16 natively (AVX512-BF16 or AMX), where autocast pays off."""
    try:
        with open("/proc/cpuinfo", encoding="ascii", errors="replace") as f:
            flags = next((line for line in f if line.startswith("flags")), "").split()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


@dataclass(frozen=True)
class Precision:
    """How training steps compute: the autocast dtype, or None for fp32."""

    dtype: torch.dtype | None

    @property
    def scaled(self) -> bool:
        """fp16 needs loss scaling: its narrow range flushes small gradients to zero."""
        return self.dtype is torch.float16

    @property
    def name(self) -> str:
        """bf16, fp16 or fp32, as logged and written to the summary."""
        return {torch.bfloat16: "bf16", torch.float16: "fp16"}.get(self.dtype, "fp32")


def choose_precision(amp: bool, device_type: str, bf16_native: bool) -> Precision:
    """bf16 where the hardware computes it natively; fp16 with loss scaling on CUDA GPUs without it (before Ampere); else fp32.

    A CPU without AVX512-BF16/AMX emulates both half types more slowly than fp32, so it stays fp32.
    """
    if not amp:
        return Precision(None)
    if bf16_native:
        return Precision(torch.bfloat16)
    return Precision(torch.float16) if device_type == "cuda" else Precision(None)


def training_precision(amp: bool, device: torch.device) -> Precision:
    """`choose_precision` for this machine's device."""
    native = torch.cuda.is_bf16_supported(including_emulation=False) if device.type == "cuda" else cpu_has_bf16()
    return choose_precision(amp, device.type, native)


def versions() -> dict[str, str]:
    """Library versions that shape a trained model."""
    import onnx

    return {
        "inspector": __version__,
        "torch": str(torch.__version__),
        "torchvision": str(torchvision.__version__),
        "onnx": str(onnx.__version__),
        "python": platform.python_version(),
    }


@dataclass(frozen=True, slots=True)
class TrainBatch:
    """Augmented rows and, under mixed supervision, their defect masks at input resolution."""

    x: torch.Tensor  # (n, C, H, W) float32, normalized
    y: torch.Tensor  # (n,) class indices: the samples' own, or a pasted defect's
    masks: torch.Tensor | None = None  # (n, 1, H, W) in 0..1
    known: torch.Tensor | None = None  # (n,) bool: the row's mask is known (OK parts, NG parts with a mask file)

    def to(self, device: torch.device) -> TrainBatch:
        """The same batch on `device`, its images channels-last like the model; from pinned memory the copy is asynchronous."""
        move = (lambda t: None if t is None else t.to(device, non_blocking=True))
        return TrainBatch(channels_last(move(self.x)), move(self.y), move(self.masks), move(self.known))

    def pinned(self) -> TrainBatch:
        """The same batch in page-locked memory, from which a CUDA copy overlaps the step before it."""
        pin = (lambda t: None if t is None else t.pin_memory())
        return TrainBatch(pin(self.x), pin(self.y), pin(self.masks), pin(self.known))


def channels_last(t: torch.Tensor) -> torch.Tensor:
    """An (N, C, H, W) batch in the channels-last layout, in which oneDNN and cuDNN convolve fastest."""
    # benchmarks/bench_train_step.py on 2 AVX512-BF16 cores: a bf16 ResNet18 training step at 160 px takes 0.27 s instead of
    # 0.33 s, fp32 0.46 s instead of 0.58 s. The model's weights must be channels-last too (`Module.to(memory_format=...)`).
    return t.contiguous(memory_format=torch.channels_last)


class Batches:
    """Turns sample indices into normalized, augmented float32 batches; deterministic per (seed, epoch)."""

    def __init__(self, samples: SampleSet, cache: ImageCache, recipe: TrainRecipe, train_idx: np.ndarray) -> None:
        self.samples, self.cache, self.recipe = samples, cache, recipe
        self._plain: dict[int, np.ndarray] = {}
        # Defects to paste come from training samples only: a validation defect pasted into training would leak.
        self._donors = [int(i) for i in train_idx if cache.has_mask(samples.samples[int(i)])] if recipe.augment.paste_defects > 0 else []

    def class_counts(self, train_idx: np.ndarray) -> np.ndarray:
        """Expected samples per class in one epoch as trained: after the sampler, pasting moves its share of the OK samples to the donors' classes."""
        targets = self.samples.targets
        counts = label_counts(targets, train_idx, len(self.samples.classes))
        if self.recipe.imbalance in ("sampler", "both"):
            # The sampler draws every class equally often; with `both`, a loss weighted by the labels would correct twice.
            counts = np.where(counts > 0, counts.sum() / np.count_nonzero(counts), 0.0)
        if self._donors:
            ok = self.samples.classes.index(OK_CLASS)
            moved = counts[ok] * self.recipe.augment.paste_defects
            counts[ok] -= moved
            counts += moved * np.bincount(targets[self._donors], minlength=len(counts)) / len(self._donors)
        return counts

    def plain(self, idx: np.ndarray) -> torch.Tensor:
        """Un-augmented rows, exactly what the runtime computes, cached."""
        for i in idx:
            if int(i) not in self._plain:
                self._plain[int(i)] = self.cache.tensor(self.cache.crop(self.samples.samples[int(i)]))
        return torch.from_numpy(np.stack([self._plain[int(i)] for i in idx]))

    def augmented(self, idx: np.ndarray, rng: np.random.Generator) -> TrainBatch:
        """Rows with the recipe's augmentations; with seg_weight, their masks moved the same way."""
        aug = self.recipe.augment
        seg = self.recipe.seg_weight > 0
        targets = self.samples.targets
        rows, masks, ys = [], [], []
        for i in idx:
            sample = self.samples.samples[int(i)]
            y = int(targets[int(i)])
            shift = tuple(rng.uniform(-aug.roi_jitter, aug.roi_jitter, 2)) if aug.roi_jitter > 0 else (0.0, 0.0)
            zoom = (*rng.uniform(1 - aug.zoom, 1, 2), *rng.uniform(0, 1, 2)) if aug.zoom > 0 else None
            mask = self.cache.crop_mask(sample, shift, zoom) if seg else None
            image = self.cache.crop(sample, shift, zoom)
            if self._donors and sample.label == OK_CLASS and rng.random() < aug.paste_defects:
                donor = self._donors[int(rng.integers(len(self._donors)))]
                image, pasted = paste_defect(image, self.cache, self.samples.samples[donor])
                y = int(targets[donor])
                mask = pasted if seg else None
            image, mask = augment(image, aug, rng, mask, full_scale=self.cache.pre.spec.full_scale(image.dtype))
            row = self.cache.tensor(image)
            if aug.erasing > 0 and rng.random() < aug.erasing:
                erase(row, rng)
            rows.append(row)
            masks.append(mask)
            ys.append(y)
        x = torch.from_numpy(np.stack(rows))
        y_t = torch.tensor(ys, dtype=torch.long)
        if not seg:
            return TrainBatch(x, y_t)
        known = torch.tensor([m is not None for m in masks])
        blank = np.zeros(x.shape[-2:], np.uint8)
        stacked = np.stack([blank if m is None else m for m in masks])[:, None].astype(np.float32) / 255.0
        return TrainBatch(x, y_t, torch.from_numpy(stacked), known)


T = TypeVar("T")


def loader_workers(workers: int | None, device: torch.device) -> int:
    """The recipe's batch threads, or for unset: 1 beside a CPU that trains, up to 8 (cores - 1) feeding a GPU."""
    if workers is not None:
        return workers
    return max(1, min(8, (os.cpu_count() or 2) - 1)) if device.type == "cuda" else 1


def epoch_plan(order: np.ndarray, batch_size: int) -> list[np.ndarray]:
    """The epoch's sample order cut into batches; a last batch of one is left out, as BatchNorm cannot train on it."""
    plan = [order[b : b + batch_size] for b in range(0, len(order), batch_size)]
    return [idx for idx in plan if len(idx) >= 2 or len(order) <= 2]


def prepare_batch(batches: Batches, plan: list[np.ndarray], seed: tuple[int, int], device: torch.device, k: int) -> TrainBatch:
    """Batch k of an epoch's plan, augmented with its own generator; pinned when it goes to a CUDA device."""
    batch = batches.augmented(plan[k], np.random.default_rng([*seed, k]))
    return batch.pinned() if device.type == "cuda" else batch


def prefetched(make: Callable[[int], T], n: int, workers: int) -> Iterator[T]:
    """make(0), ..., make(n - 1) in order; with workers > 0 computed on that many threads, at most two per thread ahead.

    Threads, not processes: OpenCV and numpy release the GIL, and the decoded frames are shared without copying.
    An exception in make() is raised here, at its turn; closing the iterator cancels what has not started.
    """
    if workers == 0:
        yield from (make(i) for i in range(n))
        return
    with ThreadPoolExecutor(workers, thread_name_prefix="inspector-batches") as pool:
        pending: deque[Future[T]] = deque()
        try:
            for i in range(n):
                pending.append(pool.submit(make, i))
                if len(pending) >= 2 * workers:
                    yield pending.popleft().result()
            while pending:
                yield pending.popleft().result()
        finally:
            for future in pending:
                future.cancel()


def paste_defect(image: np.ndarray, cache: ImageCache, donor: Sample) -> tuple[np.ndarray, np.ndarray]:
    """`image` with the donor's defect blended in at the same place (soft edge); and the defect's mask (uint8, 255 = defect)."""
    mask = cache.crop_mask(donor)
    assert mask is not None
    # A few pixels of the defect's surroundings and a soft edge, so the seam itself is not what the model learns.
    alpha = cv2.GaussianBlur(cv2.dilate(mask, np.ones((5, 5), np.uint8)), (7, 7), 0).astype(np.float32) / 255.0
    if image.ndim == 3:
        alpha = alpha[:, :, None]
    blended = image.astype(np.float32) * (1 - alpha) + cache.crop(donor).astype(np.float32) * alpha
    return np.rint(blended).astype(image.dtype), mask


def defect_map_loss(seg: torch.Tensor, masks: torch.Tensor, known: torch.Tensor) -> torch.Tensor:
    """Binary cross-entropy of the defect map against the masks, defect and clean cells weighted half and half.

    A cell's target is the largest mask value inside it, so a defect a few pixels wide still marks its cell.
    """
    target = torch.nn.functional.adaptive_max_pool2d(masks[known], seg.shape[-2:])
    logits = seg[known].float()
    per_cell = torch.nn.functional.binary_cross_entropy_with_logits(logits, target, reduction="none")
    positive = target >= 0.5
    n_pos, n_neg = int(positive.sum()), int((~positive).sum())
    if n_pos == 0 or n_neg == 0:
        return per_cell.mean()
    return 0.5 * per_cell[positive].mean() + 0.5 * per_cell[~positive].mean()


def batch_loss(model: nn.Module, batch: TrainBatch, y: torch.Tensor, loss_fn: nn.Module, seg_weight: float) -> torch.Tensor:
    """The training objective of one batch: classification, plus the weighted defect-map loss under mixed supervision."""
    out = model(batch.x)
    if not isinstance(out, tuple):
        return loss_fn(out, y)
    logits, seg = out
    loss = loss_fn(logits, y)
    if batch.masks is not None and batch.known is not None and bool(batch.known.any()):
        loss = loss + seg_weight * defect_map_loss(seg, batch.masks, batch.known)
    return loss


def load_cache(samples: SampleSet, spec: PreprocessSpec, recipe: TrainRecipe, paths: list[Path], *, settle: bool = True) -> ImageCache:
    """Decoded frames for `paths` and, with seg_weight or paste_defects, their masks; InputError listing every unusable file.

    The cache's spec (`cache.pre.spec`) carries pixel_max and frame_size, from the data when `spec` left them unset
    (unless `settle` is False: a resumed run keeps its checkpoint's spec as it is): train with that one.
    """
    cache = ImageCache(spec)
    cache.load(paths)
    if settle:
        cache.settle_depth()
        cache.settle_frame_size()
    needs = f"seg_weight={recipe.seg_weight}" if recipe.seg_weight > 0 else f"augment.paste_defects={recipe.augment.paste_defects}"
    if (recipe.seg_weight > 0 or recipe.augment.paste_defects > 0) and cache.load_masks(samples.samples, samples.root) == 0:
        raise InputError(
            f"{needs} needs defect masks: expected PNG files under {samples.root / MASKS_DIR}/ "
            "with the NG images' relative paths (masks/ng/<defect>/<name>.png); found none"
        )
    return cache


def _log_frame_size(
    spec: PreprocessSpec, source: str, cache: ImageCache, validation: list[Path], log: structlog.typing.FilteringBoundLogger
) -> None:
    """Say which frame sizes the model will judge and where they come from (data, given, checkpoint); warn when the range
    leaves out some of the training images, and what export will make of that."""
    size = spec.trained_size
    if spec.frame_size == "any":
        why = ("the resumed checkpoint records frame_size any" if source == "checkpoint"
               else "preprocess.frame_size any (--frame-size any)")
        log.info("frame_size_any", source=source, why=f"{why}: the model will judge frames of every size")
        return
    if size is None:
        if source == "checkpoint":
            log.info("frame_size_none", source=source,
                     why="the resumed checkpoint records no frame_size (made before it existed) and a resumed run keeps its "
                     "spec: the model will judge frames of every size; a new run (without --resume) records the data's range")
        return
    log.info("frame_size", frame_size=size.short(), source=source,
             why="frames outside it will be rejected as frame_size" + (
                 "; the resumed checkpoint's range, kept for the rest of the run" if source == "checkpoint"
                 else "; --frame-size sets another range, or any"))
    outside = cache.outside_frame_size()
    if not outside:
        return
    # Trusted as given (a known camera resolution, crops cut offline): a warning, not a refusal. But export's parity gate
    # reruns the validation images by default through the model's own check, and refuses the model when it rejects them.
    held = size.holding(wh for _, wh in outside)
    checked = set(validation)
    in_validation = sum(path in checked for path, _ in outside)
    whose = "the resumed checkpoint's" if source == "checkpoint" else "the given"
    why = f"{whose} frame_size describes the frames the model will judge; these training images lie outside it"
    if in_validation:
        why += (f"; {in_validation} of them are validation images, which `inspector export` reruns as its golden set by default: "
                f"it will refuse the model (frame_size) unless given --golden DIR with {size.describe()}")
    way = "train again with" if source == "checkpoint" else "give"
    why += f"; to have the model judge images like these, {way} a --frame-size range that holds them (e.g. --frame-size {held.short()})"
    log.warning("training_frames_outside_frame_size", count=len(outside), frame_size=size.short(), validation=in_validation,
                examples=[f"{path} ({w}x{h})" for path, (w, h) in outside[:3]], why=why)


def label_counts(targets: np.ndarray, idx: np.ndarray, n_classes: int) -> np.ndarray:
    """Samples per class among `idx`, by their labels."""
    return np.bincount(targets[idx], minlength=n_classes).astype(np.float64)


def class_weights(counts: np.ndarray) -> np.ndarray:
    """Inverse-frequency weights from samples per class, mean 1 over samples."""
    return counts.sum() / (len(counts) * np.where(counts > 0, counts, 1.0))  # a class never trained on gets a finite weight


def make_loss(counts: np.ndarray, recipe: TrainRecipe, device: torch.device) -> nn.CrossEntropyLoss:
    """Cross-entropy, class-weighted by `counts` (samples per class as trained) when the recipe handles imbalance in the loss."""
    weighted = recipe.imbalance in ("loss", "both")
    weight = torch.tensor(class_weights(counts), dtype=torch.float32, device=device) if weighted else None
    return nn.CrossEntropyLoss(weight=weight, label_smoothing=recipe.label_smoothing)


def epoch_order(targets: np.ndarray, train_idx: np.ndarray, recipe: TrainRecipe, rng: np.random.Generator) -> np.ndarray:
    """This epoch's sample order: a permutation, or a class-balanced draw with replacement for the weighted sampler."""
    if recipe.imbalance in ("sampler", "both"):
        w = class_weights(label_counts(targets, train_idx, int(targets.max()) + 1))[targets[train_idx]]
        return rng.choice(train_idx, size=len(train_idx), replace=True, p=w / w.sum())
    return rng.permutation(train_idx)


def make_optimizer(model: nn.Module, recipe: TrainRecipe) -> torch.optim.Optimizer:
    """AdamW or SGD over two groups: the head at lr, the backbone at lr x backbone_lr_mult."""
    head = head_parameters(model)
    groups = [
        {"params": [p for p in model.parameters() if id(p) not in head], "lr": recipe.lr * recipe.backbone_lr_mult},
        {"params": [p for p in model.parameters() if id(p) in head], "lr": recipe.lr},
    ]
    if recipe.optimizer == "sgd":
        return torch.optim.SGD(groups, lr=recipe.lr, momentum=recipe.momentum, nesterov=True, weight_decay=recipe.weight_decay)
    return torch.optim.AdamW(groups, lr=recipe.lr, weight_decay=recipe.weight_decay)


def make_schedule(opt: torch.optim.Optimizer, recipe: TrainRecipe, steps_per_epoch: int) -> Any:
    """The recipe's schedule; cosine and onecycle step per batch, plateau per epoch."""
    total = recipe.epochs * steps_per_epoch
    if recipe.schedule == "onecycle":
        return torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=[g["lr"] for g in opt.param_groups], total_steps=total)
    if recipe.schedule == "plateau":
        return torch.optim.lr_scheduler.ReduceLROnPlateau(opt, mode="min", factor=0.3, patience=3)
    warmup = round(recipe.warmup_epochs * steps_per_epoch)

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        progress = (step - warmup) / max(1, total - warmup)
        return 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))

    return torch.optim.lr_scheduler.LambdaLR(opt, factor)


@torch.inference_mode()
def predict(model: nn.Module, x: torch.Tensor, device: torch.device, batch: int = 64) -> np.ndarray:
    """Softmax probabilities for rows `x`, in eval mode."""
    model.eval()
    out = [torch.softmax(model(channels_last(x[i : i + batch].to(device))).float(), dim=1).cpu() for i in range(0, len(x), batch)]
    return torch.cat(out).numpy().astype(np.float64)


def evaluate(probabilities: np.ndarray, targets: np.ndarray, target_recall: float) -> dict[str, Any]:
    """Validation figures from probabilities: accuracy, NG precision/recall/F1 at 0.5, ROC-AUC and the target-recall operating point."""
    scores, is_ng = 1.0 - probabilities[:, 0], targets != 0
    at_half = binary_metrics(scores >= 0.5, is_ng)
    p, r = at_half["precision"], at_half["ng_recall"]
    f1 = None if p is None or r is None or p + r == 0 else 2 * p * r / (p + r)
    t = threshold_at_recall(scores, is_ng, target_recall)
    at_t = binary_metrics(scores >= t, is_ng) if t is not None else {}
    return {
        "accuracy": float((probabilities.argmax(1) == targets).mean()),
        "precision": p,
        "recall": r,
        "f1": f1,
        "roc_auc": roc_auc(scores, is_ng),
        "threshold_at_target": t,
        "ng_recall_at_target": at_t.get("ng_recall"),
        "false_reject_rate_at_target": at_t.get("false_reject_rate"),
    }


def checkpoint_payload(
    model: nn.Module,
    spec: PreprocessSpec,
    samples: SampleSet,
    recipe: TrainRecipe,
    *,
    epoch: int,
    metrics: EpochMetrics | None,
    val_idx: np.ndarray,
    fingerprint: str,
) -> dict[str, Any]:
    """A self-describing checkpoint, loadable with `torch.load(weights_only=True)`: weights, spec, classes, recipe, provenance."""
    val = [samples.samples[int(i)] for i in val_idx]
    return {
        "format": CHECKPOINT_FORMAT,
        "state_dict": _cpu_state(model),
        "spec": spec.to_json(),
        "classes": list(samples.classes),
        "recipe": recipe.model_dump(mode="json"),
        "epoch": epoch,
        "metrics": asdict(metrics) if metrics else {},
        "dataset": {
            "root": str(samples.root.resolve()),
            "fingerprint": fingerprint,
            "samples": len(samples.samples),
            "counts": {c: int((samples.targets == i).sum()) for i, c in enumerate(samples.classes)},
        },
        # The validation set travels with the checkpoint: export's parity gate reruns it by default.
        "validation": [{"path": str(s.path.resolve()), "key": s.key, "roi": s.roi, "label": s.label} for s in val],
        "versions": versions(),
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }


def _save(payload: dict[str, Any], path: Path) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    torch.save(payload, tmp)
    os.replace(tmp, path)  # a crash mid-save never leaves a half-written checkpoint under the real name


def train(
    samples: SampleSet,
    spec: PreprocessSpec,
    recipe: TrainRecipe,
    out_dir: Path,
    *,
    train_idx: np.ndarray,
    val_idx: np.ndarray,
    resume: dict[str, Any] | None = None,
    progress: bool | None = None,
    log: structlog.typing.FilteringBoundLogger | None = None,
    on_epoch: Callable[[EpochMetrics], None] | None = None,
    fingerprint: str | None = None,
) -> TrainResult:
    """Train one model, validating every epoch; keeps best.pt (highest validation ROC-AUC) and last.pt (to resume).
    `fingerprint`: samples.fingerprint(), when the caller has it (each fold of a cross-validation would read the data again)."""
    device = pick_device(recipe.device)
    with cuda_kernels(recipe.deterministic, device):
        return _train(samples, spec, recipe, out_dir, device, train_idx=train_idx, val_idx=val_idx, resume=resume,
                      progress=progress, log=log or structlog.get_logger("inspector.train"), on_epoch=on_epoch,
                      fingerprint=fingerprint or samples.fingerprint())


@contextlib.contextmanager
def cuda_kernels(deterministic: bool, device: torch.device) -> Iterator[None]:
    """On CUDA, for the duration: cuDNN's deterministic kernels and a fixed cuBLAS workspace, or else cuDNN's autotuned fastest ones.

    The cuDNN settings are process-wide, so the previous ones come back afterwards. On the CPU this does nothing: its
    kernels repeat their results at a fixed thread count. As fastai's `set_seed(reproducible=True)`, and not
    `torch.use_deterministic_algorithms`: that one fails or warns on every op with atomic adds in its backward,
    among them ResNet's global average pool, whose 1x1 output adds each gradient once and so repeats anyway.
    """
    if device.type != "cuda":
        yield
        return
    cudnn = torch.backends.cudnn
    saved = (cudnn.deterministic, cudnn.benchmark)
    # cuBLAS reads this when it creates its handle, at the first matmul: with its default workspace a reduction may split
    # differently from run to run. The value is the one NVIDIA documents for reproducibility.
    if deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    cudnn.deterministic, cudnn.benchmark = deterministic, not deterministic
    try:
        yield
    finally:
        cudnn.deterministic, cudnn.benchmark = saved


def _train(
    samples: SampleSet,
    spec: PreprocessSpec,
    recipe: TrainRecipe,
    out_dir: Path,
    device: torch.device,
    *,
    train_idx: np.ndarray,
    val_idx: np.ndarray,
    resume: dict[str, Any] | None,
    progress: bool | None,
    log: structlog.typing.FilteringBoundLogger,
    on_epoch: Callable[[EpochMetrics], None] | None,
    fingerprint: str,
) -> TrainResult:
    started = time.monotonic()
    if recipe.threads:
        torch.set_num_threads(recipe.threads)
    torch.manual_seed(recipe.seed)
    if resume is not None and resume["dataset"]["fingerprint"] != fingerprint:
        raise InputError(
            f"the data under {samples.root} is not the data the checkpoint was trained on "
            f"(fingerprint {fingerprint[:12]} vs {resume['dataset']['fingerprint'][:12]}); resume needs the same data"
        )

    # A resumed run continues the checkpoint's model, so it keeps the checkpoint's spec exactly: one made before pixel_max
    # or frame_size existed must not start recording the data's values halfway through the run.
    cache = load_cache(samples, spec, recipe, [s.path for s in samples.samples], settle=resume is None)  # every unusable file is listed before anything is written
    source = "checkpoint" if resume is not None else "data" if spec.frame_size is None else "given"
    spec = cache.pre.spec  # with the data's pixel_max and frame_size: the checkpoint, and so the exported model, records what was trained on
    _log_frame_size(spec, source, cache, [samples.samples[int(i)].path for i in val_idx], log)
    batches = Batches(samples, cache, recipe, train_idx)
    targets = samples.targets
    n_classes = len(samples.classes)

    model = build_model(recipe, n_classes, spec.channels, load_weights=resume is None)
    check_input(model, recipe.backbone, spec.input_shape)
    model = model.to(device, memory_format=torch.channels_last)
    frozen = frozen_names(model, recipe.freeze)
    make_output_folder(out_dir, "--out")  # only once data, model and recipe are known to work
    set_frozen(model, frozen)
    # Weighted by the classes as trained: with pasting on, half the OK tiles may train as NG, and weights from the
    # labels alone would then push the loss further towards NG instead of balancing it.
    loss_fn = make_loss(batches.class_counts(train_idx), recipe, device)
    # Validation has no pasting: its loss is balanced over its labels (the split keeps training's class shares).
    val_loss_fn = nn.CrossEntropyLoss(weight=make_loss(label_counts(targets, train_idx, n_classes), recipe, device).weight)
    opt = make_optimizer(model, recipe)
    steps = math.ceil(len(train_idx) / recipe.batch_size)
    sched = make_schedule(opt, recipe, steps)
    history: list[EpochMetrics] = []
    best_key, best_epoch, start_epoch = [-1.0, -math.inf], 0, 0
    earlier_s = 0.0  # the wall time of the run before this resume: training_seconds is the whole run's
    if resume is not None:
        earlier_s = float(resume.get("elapsed_s", sum(h["seconds"] for h in resume["history"])))  # older last.pt: epochs only
        model.load_state_dict(resume["model_state"] if "model_state" in resume else resume["state_dict"])
        opt.load_state_dict(resume["optimizer"])
        sched.load_state_dict(resume["scheduler"])
        history = [EpochMetrics(**h) for h in resume["history"]]
        best_key, best_epoch, start_epoch = list(resume["best_key"]), resume["best_epoch"], resume["epoch"]
        torch.set_rng_state(resume["torch_rng"])
        if frozen and recipe.unfreeze_after is not None and start_epoch >= recipe.unfreeze_after:
            set_frozen(model, [])
            frozen = []
        log.info("training_resumed", epoch=start_epoch, best_epoch=best_epoch, best_roc_auc=best_key[0])
    # A run that had already stopped early (interrupted while writing its report) trains no further epoch.
    stopped_early = resume is not None and recipe.early_stop is not None and start_epoch - best_epoch >= recipe.early_stop

    ema = _ema(model, recipe)
    if ema is not None and resume is not None and "ema" in resume:
        ema.load_state_dict(resume["ema"])
    judged = ema.module if ema is not None else model  # what is validated, kept in best.pt and exported
    x_val = batches.plain(val_idx)
    y_val = targets[val_idx]
    precision = training_precision(recipe.amp, device)
    workers = loader_workers(recipe.workers, device)
    scaler = torch.amp.GradScaler(device.type, enabled=precision.scaled)
    if resume is not None and "scaler" in resume:
        scaler.load_state_dict(resume["scaler"])
    log.info(
        "training_started", samples=len(samples.samples), train=len(train_idx), validation=len(val_idx),
        classes=list(samples.classes), backbone=recipe.backbone, weights=recipe.weights, device=str(device),
        epochs=recipe.epochs, threads=torch.get_num_threads(), workers=workers, precision=precision.name,
        class_weights=None if loss_fn.weight is None else [round(w, 3) for w in loss_fn.weight.tolist()],
        **({"defect_masks": cache.mask_count} if recipe.seg_weight > 0 else {}),
    )
    for epoch in range(start_epoch, start_epoch if stopped_early else recipe.epochs):
        t0 = time.monotonic()
        if recipe.unfreeze_after is not None and epoch == recipe.unfreeze_after and frozen:
            set_frozen(model, [])
            frozen = []
            log.info("backbone_unfrozen", epoch=epoch + 1)
        order = epoch_order(targets, train_idx, recipe, np.random.default_rng([recipe.seed, epoch]))
        plan = epoch_plan(order, recipe.batch_size)
        model.train()
        keep_frozen_bn_eval(model)
        total, seen = 0.0, 0
        bar = Progress(len(plan), f"epoch {epoch + 1}/{recipe.epochs}", enabled=progress)
        # Each batch has its own generator, so the batches are the same whichever thread makes them, and in what order.
        make = functools.partial(prepare_batch, batches, plan, (recipe.seed, epoch), device)
        with contextlib.closing(prefetched(make, len(plan), workers)) as prepared:
            for idx, ready in zip(plan, prepared, strict=True):
                batch = ready.to(device)
                with torch.autocast(device.type, dtype=precision.dtype or torch.float32, enabled=precision.dtype is not None):
                    loss = batch_loss(model, batch, batch.y, loss_fn, recipe.seg_weight)
                opt.zero_grad(set_to_none=True)
                scaler.scale(loss).backward()  # without fp16 the scaler passes everything through unchanged
                scale = scaler.get_scale()  # 1.0 throughout when the scaler is off
                scaler.step(opt)
                scaler.update()
                # A step the scaler skipped (inf/nan gradients, its scale then drops) does not advance the schedule either.
                stepped = scaler.get_scale() >= scale
                if ema is not None and stepped:
                    ema.update_parameters(model)
                if recipe.schedule != "plateau" and stepped:
                    sched.step()
                total += loss.detach() * len(idx)  # summed on the device: reading it each step would stall a GPU
                seen += len(idx)
                bar.advance()
        bar.close()
        probs = predict(judged, x_val, device)
        val_loss = float(val_loss_fn(torch.log(torch.from_numpy(probs).clamp_min(1e-12)).float(), torch.from_numpy(y_val)))
        if recipe.schedule == "plateau":
            sched.step(val_loss)
        m = EpochMetrics(
            epoch=epoch + 1, lr=opt.param_groups[-1]["lr"], seconds=round(time.monotonic() - t0, 2),
            train_loss=float(total) / max(seen, 1), val_loss=val_loss, **evaluate(probs, y_val, recipe.target_recall),
        )
        history.append(m)
        # Highest ROC-AUC wins; among equals (small validation sets often reach 1.0 early) the lower loss, which is better calibrated.
        key = [m.roc_auc if m.roc_auc is not None else -1.0, -val_loss]
        improved = key > best_key
        payload = checkpoint_payload(judged, spec, samples, recipe, epoch=m.epoch, metrics=m, val_idx=val_idx, fingerprint=fingerprint)
        if improved:
            best_key, best_epoch = key, m.epoch
            _save(payload, out_dir / BEST)
        resumable = {
            **payload, "optimizer": opt.state_dict(), "scheduler": sched.state_dict(), "history": [asdict(h) for h in history],
            "best_key": best_key, "best_epoch": best_epoch, "torch_rng": torch.get_rng_state(),
            "elapsed_s": earlier_s + time.monotonic() - started,
            **({"scaler": scaler.state_dict()} if precision.scaled else {}),
            **({"model_state": _cpu_state(model), "ema": ema.state_dict()} if ema is not None else {}),
        }
        _save(resumable, out_dir / LAST)
        write_metrics(out_dir, history, best_epoch, recipe)
        log.info(
            "epoch_done", epoch=m.epoch, epochs=recipe.epochs, train_loss=round(m.train_loss, 4), val_loss=round(m.val_loss, 4),
            roc_auc=_r(m.roc_auc), accuracy=_r(m.accuracy), frr_at_target=_r(m.false_reject_rate_at_target),
            best=improved, seconds=m.seconds,
        )
        if on_epoch:
            on_epoch(m)
        if recipe.early_stop is not None and m.epoch - best_epoch >= recipe.early_stop:
            stopped_early = True
            log.info("early_stop", epoch=m.epoch, best_epoch=best_epoch, patience=recipe.early_stop)
            break

    if resume is not None and len(history) == len(resume["history"]) and resume["recipe"] != recipe.model_dump(mode="json"):
        # No epoch ran: --epochs ended the run at the epochs it had run. last.pt records the recipe the run ends with, so
        # that a later --resume finds it complete instead of training the epochs the old recipe planned.
        _save({**resume, "recipe": recipe.model_dump(mode="json")}, out_dir / LAST)
    best = torch.load(out_dir / BEST, map_location="cpu", weights_only=True)
    model.load_state_dict(best["state_dict"])
    model = model.to(device).eval()
    predictions = Predictions(predict(deployed(model, recipe), x_val, device), y_val)
    final = evaluate(predictions.probabilities, y_val, recipe.target_recall)
    if recipe.tta != "none":
        plain = next(h for h in history if h.epoch == best_epoch)
        log.info("tta_validated", views=len(recipe.tta_views()), roc_auc_without=_r(plain.roc_auc), roc_auc=_r(final["roc_auc"]),
                 frr_at_target_without=_r(plain.false_reject_rate_at_target), frr_at_target=_r(final["false_reject_rate_at_target"]))
        # best.pt carries the figures of the model that export writes, which includes the test-time views.
        best["metrics"] = {**best["metrics"], **final, "tta": recipe.tta}
        _save(best, out_dir / BEST)
    write_metrics(out_dir, history, best_epoch, recipe, final=final)
    return TrainResult(
        out_dir=out_dir, best=out_dir / BEST, last=out_dir / LAST, history=history, best_epoch=best_epoch,
        stopped_early=stopped_early, seconds=earlier_s + time.monotonic() - started, model=model, predictions=predictions, val_idx=val_idx,
        cache=cache, fingerprint=fingerprint, final=final, precision=precision.name,
    )


def _ema(model: nn.Module, recipe: TrainRecipe) -> torch.optim.swa_utils.AveragedModel | None:
    """The weight average the recipe asks for (BatchNorm statistics included), or None."""
    if recipe.ema_decay <= 0:
        return None
    from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

    return AveragedModel(model, multi_avg_fn=get_ema_multi_avg_fn(recipe.ema_decay), use_buffers=True)


def _cpu_state(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}


def _r(x: float | None) -> float | None:
    return None if x is None else round(x, 4)


def write_metrics(out_dir: Path, history: list[EpochMetrics], best_epoch: int, recipe: TrainRecipe, final: dict[str, Any] | None = None) -> Path:
    """metrics.json: every epoch's figures, which epoch was kept and, once training ends, that model's figures as exported."""
    path = out_dir / "metrics.json"
    doc: dict[str, Any] = {
        "best_epoch": best_epoch,
        "target_recall": recipe.target_recall,
        "score": f"1 - P({OK_CLASS}); NG is the positive class",
        "epochs": [asdict(h) for h in history],
    }
    if final is not None:
        doc["final"] = {"epoch": best_epoch, "tta": recipe.tta, **final}
    tmp = path.with_name(".metrics.json.tmp")
    tmp.write_text(json.dumps(doc, indent=2) + "\n")
    os.replace(tmp, path)
    return path
