"""`TrainRecipe`: every training choice, described and bounded, from a YAML file and/or command-line flags.

This module imports no torch, so `inspector train --help` and config checks stay fast.
"""

from __future__ import annotations

import argparse
import re
import types
import typing
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from inspector import yaml_load
from inspector.config import format_errors
from inspector.errors import ConfigError
from inspector.preprocess import PreprocessSpec
from inspector.strict_numbers import StrictNumbers


class _Strict(StrictNumbers):
    model_config = ConfigDict(extra="forbid", frozen=True, validate_default=True)


class Augment(_Strict):
    """Augmentations that suit parts on a fixture; each one switchable, applied after the shared preprocessing."""

    hflip: bool = Field(default=True, description="Random horizontal flip (p=0.5).")
    vflip: bool = Field(default=True, description="Random vertical flip (p=0.5).")
    transpose: bool = Field(
        default=False,
        description="Random transpose (p=0.5): with both flips, all 8 right-angle turns and mirrorings, exact (no interpolation, "
        "no border); for parts without a fixed orientation. Needs a square input size.",
    )
    rotate_deg: float = Field(default=10.0, ge=0, le=180, description="Random rotation up to this many degrees either way (reflected border); 0 turns it off.")
    brightness: float = Field(default=0.2, ge=0, le=1, description="Random brightness shift up to this fraction of full scale; 0 turns it off.")
    contrast: float = Field(default=0.2, ge=0, le=1, description="Random contrast factor in 1 +- this; 0 turns it off.")
    roi_jitter: float = Field(
        default=0.03, ge=0, le=0.25, description="Random shift of each crop box up to this fraction of its size (part placement); 0 turns it off."
    )
    zoom: float = Field(
        default=0.0, ge=0, le=0.5, description="Random crop of (1 - zoom) to 1 of the box's width and height, anywhere inside it, before resize; 0 turns it off."
    )
    erasing: float = Field(default=0.0, ge=0, le=1, description="Probability of random erasing of one rectangle (2-20% of the area); 0 turns it off.")
    paste_defects: float = Field(
        default=0.0,
        ge=0,
        le=1,
        description="Probability that an OK training sample becomes an NG one: the defect of a random NG training sample, cut out "
        "along its mask (masks/ beside ok/ and ng/) with a soft edge, pasted at the same place; it takes that sample's class. 0 turns it off.",
    )


class TrainRecipe(_Strict):
    """How a model is trained. Defaults are the recipe recommended for small part datasets on a CPU."""

    # model
    backbone: str = Field(default="resnet18", pattern=r"^[a-z0-9_]+$", description="torchvision classification model: resnet18, resnet34, resnet50, or any other torchvision name.")
    weights: str = Field(default="none", min_length=1, description="Initial weights: none (from scratch), imagenet (torchvision's weights API and cache), or a path to a state dict.")
    dropout: float = Field(default=0.0, ge=0, lt=1, description="Dropout before the new classification head (probability).")
    pool: Literal["avg", "max"] = Field(default="avg", description="Global pooling before the head: avg (torchvision's), or max, which lets one small defect decide the verdict.")
    seg_weight: float = Field(
        default=0.0, ge=0, le=100,
        description="Mixed supervision: weight of a defect-map loss learnt from pixel masks under DATA/masks/ (same relative path, .png; "
        "OK samples count as defect-free). The map's max and mean join the pooled features before the head, so one small defect "
        "can decide the verdict; the exported model stays one image-in, scores-out classifier. ResNet-style backbones; 0 turns it off.",
    )
    stem_pool: bool = Field(default=True, description="Keep the ResNet stem's max-pool; off doubles the feature-map size for small defects (about 3x the compute).")
    # what is trained
    freeze: str = Field(default="none", pattern=r"^(none|backbone|layer[1-4])$", description="Frozen at the start: none, backbone (all but the head), or layer1..layer4 (stem up to that ResNet stage).")
    unfreeze_after: int | None = Field(default=None, ge=1, le=1000, description="Unfreeze everything after this many epochs; unset keeps the freeze for the whole run.")
    backbone_lr_mult: float = Field(default=1.0, gt=0, le=1, description="Learning rate of the backbone as a fraction of the head's (differential learning rates).")
    # optimisation
    optimizer: Literal["adamw", "sgd"] = Field(default="adamw", description="Optimizer: adamw or sgd (Nesterov momentum).")
    lr: float = Field(default=2e-3, gt=0, le=10, description="Peak learning rate (of the head).")
    weight_decay: float = Field(default=0.05, ge=0, le=1, description="Weight decay (decoupled for adamw).")
    momentum: float = Field(default=0.9, ge=0, lt=1, description="SGD momentum.")
    schedule: Literal["cosine", "onecycle", "plateau"] = Field(default="cosine", description="Learning-rate schedule: cosine (after linear warmup), onecycle, or plateau (reduce on validation-loss plateau).")
    warmup_epochs: float = Field(default=1.0, ge=0, le=100, description="Linear warmup length for cosine, epochs (fractions allowed).")
    epochs: int = Field(default=30, ge=1, le=10000, description="Maximum number of epochs.")
    batch_size: int = Field(default=32, ge=1, le=4096, description="Samples per optimisation step.")
    ema_decay: float = Field(
        default=0.0, ge=0, lt=1,
        description="Exponential moving average of the weights and BatchNorm statistics, this decay per step (0.995: about "
        "the last 200 steps); validation, best.pt and the export use the averaged weights. 0 turns it off.",
    )
    label_smoothing: float = Field(default=0.0, ge=0, lt=1, description="Cross-entropy label smoothing.")
    tta: Literal["none", "flips"] = Field(
        default="none",
        description="Test-time augmentation: flips scores each image as the mean class probability over the image and every flip "
        "the training augmented with (hflip, vflip, both: up to 4 views, so up to 4x the inference). The final validation figures "
        "and the exported model include it; per-epoch validation does not (it would cost 4x per epoch).",
    )
    imbalance: Literal["loss", "sampler", "both", "none"] = Field(default="loss", description="Class imbalance: loss (cross-entropy weighted inverse to the classes as trained, pasted OK tiles counted as their defect), sampler (each class drawn equally often), both (the sampler balances the labels, the loss what pasting then unbalances), or none.")
    augment: Augment = Field(default_factory=Augment, description="Training augmentations.")
    amp: bool = Field(
        default=True,
        description="Mixed precision: bfloat16 autocast on GPUs and CPUs that compute it natively (CUDA from Ampere on; AVX512-BF16 "
        "or AMX, about 1.7x faster there), float16 with loss scaling on older CUDA GPUs, fp32 on other CPUs. summary.json names it.",
    )
    # data and selection
    seed: int = Field(default=0, ge=0, le=2**31 - 1, description="Seed for the split, initialisation, sampling and augmentation.")
    val_fraction: float = Field(default=0.2, gt=0, lt=1, description="Stratified share of each class (and defect type) held out for validation.")
    group_by: str | None = Field(
        default=None, min_length=1, max_length=500,
        description="Regular expression searched in each frame's path under DATA (e.g. ok/SN123_cam2.png); frames with the same "
        "first capture group (or whole match) are one part and stay on one side of the split and in one fold, so validation "
        "scores parts the model never saw. Frames it does not match are parts of their own. Unset: every frame is its own part.",
    )
    folds: int | None = Field(default=None, ge=2, le=20, description="k-fold cross-validation: train k models, each validated on one fold; unset uses val_fraction.")
    early_stop: int | None = Field(default=None, ge=1, le=1000, description="Stop after this many epochs without a better validation ROC-AUC; unset trains all epochs.")
    target_recall: float = Field(default=0.99, gt=0, le=1, description="NG recall the reported operating point must reach on validation (fraction).")
    threads: int | None = Field(default=None, ge=1, le=1024, description="CPU threads for torch; unset: torch's default (all cores).")
    workers: int | None = Field(
        default=None, ge=0, le=64,
        description="Threads that augment the next batches while the model trains on the current one (count); 0 augments in "
        "the training loop. Unset: 1 on the CPU, whose cores the model needs, and up to 8 (cores - 1) with CUDA, where a step "
        "takes a few ms and one thread augments a batch of 32 in about 10. The batches are the same for any count.",
    )
    deterministic: bool = Field(
        default=True,
        description="On CUDA, cuDNN's deterministic kernels and a fixed cuBLAS workspace, so a seed repeats a run; off lets cuDNN "
        "autotune the fastest kernel per layer, which may differ from run to run. The CPU repeats its results either way.",
    )
    device: Literal["auto", "cpu", "cuda"] = Field(default="auto", description="Training device: auto (CUDA when present), cpu or cuda.")

    @model_validator(mode="after")
    def _check(self) -> TrainRecipe:
        if self.unfreeze_after is not None and self.freeze == "none":
            raise ValueError("unfreeze_after needs a freeze policy (backbone or layer1..layer4)")
        if self.group_by is not None:
            try:
                re.compile(self.group_by)
            except re.error as exc:
                raise ValueError(f"group_by is not a valid regular expression: {exc}") from exc
        if self.tta == "flips" and not (self.augment.hflip or self.augment.vflip):
            raise ValueError("tta=flips averages over the flips the model was trained with; turn on augment.hflip and/or augment.vflip, or use tta=none")
        return self

    def tta_views(self) -> tuple[tuple[int, ...], ...]:
        """The NCHW dims each test-time view flips: () is the image itself; only () without TTA."""
        if self.tta == "none":
            return ((),)
        flips = [d for d, on in (((3,), self.augment.hflip), ((2,), self.augment.vflip)) if on]
        both = ((2, 3),) if len(flips) == 2 else ()
        return ((), *flips, *both)


class TrainConfig(_Strict):
    """A training config file: the preprocessing the model will be deployed with, and the recipe."""

    preprocess: PreprocessSpec = Field(default_factory=lambda: PreprocessSpec(), description="Preprocessing, exactly as the runtime applies it.")
    train: TrainRecipe = Field(default_factory=TrainRecipe, description="The training recipe.")

    @model_validator(mode="after")
    def _square_for_transpose(self) -> TrainConfig:
        rs = self.preprocess.resize
        if self.train.augment.transpose and rs.width != rs.height:
            raise ValueError(f"train.augment.transpose needs a square input; preprocess.resize is {rs.width}x{rs.height}")
        return self


def load_train_config(path: Path | None, overrides: dict[str, Any]) -> TrainConfig:
    """Read a training YAML file (optional) and apply dotted-key overrides from flags; ConfigError on any problem."""
    data: dict[str, Any] = {}
    if path is not None:
        try:
            loaded = yaml_load.safe_load(path.read_text(encoding="utf-8"))
        except OSError as exc:
            raise ConfigError(f"cannot read training config {path}: {exc.strerror}", [f"{path}: {exc.strerror}"]) from exc
        except UnicodeDecodeError as exc:
            raise ConfigError(f"training config {path} is not UTF-8 text", [f"{path}: not UTF-8 text ({exc.reason} at byte {exc.start})"]) from exc
        except yaml.YAMLError as exc:
            raise ConfigError(f"training config {path} is not valid YAML", [f"{path}: {exc}"]) from exc
        if loaded is not None and not isinstance(loaded, dict):
            raise ConfigError(f"training config {path} must be a mapping", [f"{path}: expected keys preprocess and train"])
        data = loaded or {}
    for dotted, value in overrides.items():
        node = data
        *parents, leaf = dotted.split(".")
        for key in parents:
            node = node.setdefault(key, {})
            if not isinstance(node, dict):
                raise ConfigError("conflicting settings", [f"{dotted}: {key} is not a mapping in {path}"])
        node[leaf] = value
    try:
        return TrainConfig.model_validate(data)
    except ValidationError as exc:
        errors = format_errors(exc, TrainConfig)
        raise ConfigError(f"{len(errors)} training configuration error(s)" + (f" in {path}" if path else ""), errors) from exc


# --- flags generated from the recipe, so every field is settable and documented in --help ----------


def _scalar(annotation: Any) -> tuple[Any, bool]:
    """The scalar type inside Optional[...] and whether None is allowed."""
    args = typing.get_args(annotation)
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        inner = [a for a in args if a is not type(None)]
        return inner[0], len(inner) < len(args)
    return annotation, False


def option_flag(name: str) -> str:
    """The command-line flag of a recipe field: warmup_epochs -> --warmup-epochs."""
    return "--" + name.replace("_", "-")


def add_recipe_flags(parser: argparse.ArgumentParser) -> None:
    """One flag per recipe field (augmentations included), default taken from the recipe or config file."""
    group = parser.add_argument_group("recipe (each overrides the config file's train section)")
    for prefix, model in (("", TrainRecipe), ("augment.", Augment)):
        for name, field in model.model_fields.items():
            if name == "augment":
                continue
            kind, nullable = _scalar(field.annotation)
            default = field.get_default(call_default_factory=True)
            text = f"{field.description} (default: {default})".replace("%", "%%")  # argparse formats help with %
            dest = f"recipe:{prefix}{name}"
            if kind is bool:
                group.add_argument(option_flag(name), dest=dest, action=argparse.BooleanOptionalAction, default=None, help=text)
            elif typing.get_origin(kind) is Literal:
                group.add_argument(option_flag(name), dest=dest, choices=typing.get_args(kind), default=None, help=text)
            else:
                group.add_argument(
                    option_flag(name), dest=dest, type=_parser_for(kind, nullable), default=None, metavar=kind.__name__.upper(), help=text
                )


def _parser_for(kind: type, nullable: bool) -> Any:
    def parse(text: str) -> Any:
        if nullable and text.lower() in ("none", "off"):
            return "none"  # marker, turned into None by recipe_overrides
        try:
            return kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {kind.__name__}{' or none' if nullable else ''}, got {text!r}") from None

    return parse


def recipe_overrides(args: argparse.Namespace) -> dict[str, Any]:
    """Dotted `train.*` overrides from the flags the user gave."""
    out = {}
    for dest, value in vars(args).items():
        if dest.startswith("recipe:") and value is not None:
            key = dest.removeprefix("recipe:")
            nullable = _nullable(key)
            out[f"train.{key}"] = None if (nullable and value == "none") else value
    return out


def _nullable(key: str) -> bool:
    model: type[BaseModel] = Augment if key.startswith("augment.") else TrainRecipe
    return _scalar(model.model_fields[key.split(".")[-1]].annotation)[1]
