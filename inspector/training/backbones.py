"""torchvision backbones made ready for parts: weights (none, ImageNet, a local file), 1-channel input, a new head, freezing."""

from __future__ import annotations

import pickle
from dataclasses import dataclass
from pathlib import Path

import structlog
import torch
import torchvision
from torch import nn

from inspector.errors import InputError
from inspector.training.recipe import TrainRecipe

# What torch.load raises on a file that is not a (weights-only) checkpoint: the unpickler trips in many ways.
_TORCH_LOAD_ERRORS = (OSError, RuntimeError, EOFError, ValueError, KeyError, IndexError, TypeError, pickle.UnpicklingError)


def torch_load(path: Path, what: str) -> object:
    """`torch.load(weights_only=True)`; InputError '{what}: reason' in one line (torch's own text runs to a page)."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except _TORCH_LOAD_ERRORS as exc:
        raise InputError(f"{what} ({_load_reason(exc)})") from exc


def _load_reason(exc: Exception) -> str:
    text = str(exc)
    if "Unsupported global" in text:
        # Loading it would run code named in the file; only tensors and plain containers are read.
        return "it holds Python objects besides tensors and plain containers, which are not loaded for safety"
    if isinstance(exc, OSError):
        return exc.strerror or text
    if isinstance(exc, (pickle.UnpicklingError, KeyError, EOFError, IndexError)) or "Weights only load failed" in text or "PytorchStreamReader" in text:
        return "not a file written by torch.save, or a damaged one"
    return f"{type(exc).__name__}: {text.splitlines()[0] if text else ''}"[:300]


def available() -> list[str]:
    """torchvision's image classification model names."""
    return sorted(torchvision.models.list_models(module=torchvision.models))


def build_model(recipe: TrainRecipe, num_classes: int, in_channels: int, *, load_weights: bool = True) -> nn.Module:
    """The recipe's backbone with the requested weights, input channels and a head for `num_classes`."""
    names = available()
    if recipe.backbone not in names:
        resnets = ", ".join(n for n in names if n.startswith("resnet"))
        raise InputError(f"unknown backbone {recipe.backbone!r}; expected one of torchvision's models, e.g. {resnets}")
    weights = recipe.weights if load_weights else "none"
    transfer = None
    if weights == "imagenet":
        model = _imagenet(recipe.backbone)
    else:
        # init_weights: the builders that take it (inception_v3, googlenet) warn unless told; True keeps their own init.
        init = {"init_weights": True} if recipe.backbone in ("inception_v3", "googlenet") else {}
        model = torchvision.models.get_model(recipe.backbone, weights=None, **init)
        if weights != "none":
            transfer = _load_state_dict(model, Path(weights), recipe.backbone)
    # Gray input sums the pretrained RGB filters; a file whose input convolution did not fit left them random.
    pretrained = weights != "none" and f"{_input_conv_name(model)}.weight" not in (transfer.left if transfer else {})
    if in_channels != 3:
        _adapt_input(model, in_channels, pretrained)
    _replace_head(model, num_classes, recipe.dropout)
    if recipe.pool == "max":
        pool = getattr(model, "avgpool", None)
        if not isinstance(pool, nn.AdaptiveAvgPool2d) or pool.output_size not in (1, (1, 1)):
            raise InputError(f"pool=max replaces a global average pool (to 1x1) named avgpool; {recipe.backbone} has none")
        model.avgpool = nn.AdaptiveMaxPool2d(1)
    if not recipe.stem_pool:
        if not isinstance(getattr(model, "maxpool", None), nn.MaxPool2d):
            raise InputError(f"stem_pool=false applies to ResNet-style models with a stem max-pool; {recipe.backbone} has none")
        model.maxpool = nn.Identity()
    if recipe.seg_weight > 0:
        model = DefectMapResNet(model, num_classes, recipe.dropout)
    if transfer is not None:
        _load_what_fits_now(model, transfer, Path(weights))
    return model


def check_input(model: nn.Module, backbone: str, input_shape: tuple[int, int, int]) -> None:
    """InputError naming the backbone, the size and the model's own complaint when it cannot take (C, H, W) input.

    Vision transformers, Swin and Inception need fixed or minimum input sizes, and fail deep inside their forward pass
    otherwise; one no-grad pass on a zeros image finds out before anything is written. ResNets take any size (their
    strided layers pad, their pool is adaptive), so they skip it.
    """
    if isinstance(model, (torchvision.models.ResNet, DefectMapResNet)):
        return
    channels, height, width = input_shape
    training = model.training
    model.eval()  # batch statistics of one image would fail BatchNorm in training mode, whatever the size
    try:
        with torch.no_grad():
            model(torch.zeros(1, channels, height, width))
    except (RuntimeError, AssertionError, ValueError, IndexError, TypeError) as exc:
        text = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise InputError(f"--backbone {backbone} cannot take {width}x{height} input ({text[:300]}); {_size_hint(backbone)}") from exc
    finally:
        model.train(training)


def _size_hint(backbone: str) -> str:
    """The input size the backbone's ImageNet weights were trained at (and its smallest, where that differs), as advice."""
    try:
        weights = torchvision.models.get_model_weights(backbone).DEFAULT
        native = int(weights.transforms().crop_size[0])
        smallest = tuple(weights.meta.get("min_size", (native, native)))
    except (ValueError, KeyError, AttributeError, TypeError, IndexError):
        return "give another --size"
    at_least = f" (its ImageNet size; it takes at least {smallest[1]}x{smallest[0]})" if smallest != (native, native) else ""
    return f"give --size {native}{at_least}"


class DefectMapResNet(nn.Module):
    """A torchvision ResNet with a defect-map head on layer3 (mixed supervision, after Božič et al. 2021).

    The map's max and mean logits join the pooled layer4 features before the head: a defect that covers
    a few cells of the map still moves the verdict, which average pooling over the whole part dilutes.
    In training mode forward returns (logits, map logits) for the mask loss; in eval mode (export,
    validation, Grad-CAM) only the logits, so the exported graph is an ordinary classifier.
    The ResNet's own child names are kept, so freeze policies and Grad-CAM address the same layers.
    """

    def __init__(self, base: nn.Module, num_classes: int, dropout: float) -> None:
        super().__init__()
        missing = [n for n in ("conv1", "bn1", "relu", "maxpool", "layer1", "layer2", "layer3", "layer4", "avgpool", "fc") if not hasattr(base, n)]
        if missing:
            raise InputError(f"seg_weight needs a ResNet-style backbone (conv1, layer1..layer4, avgpool, fc); this one lacks {missing}")
        for name in ("conv1", "bn1", "relu", "maxpool", "layer1", "layer2", "layer3", "layer4", "avgpool"):
            setattr(self, name, getattr(base, name))
        mid = next(m for m in base.layer4.modules() if isinstance(m, nn.Conv2d)).in_channels
        self.seg_head = nn.Sequential(
            nn.Conv2d(mid, 64, 3, padding=1, bias=False), nn.BatchNorm2d(64), nn.ReLU(inplace=True), nn.Conv2d(64, 1, 1)
        )
        features = next(m for m in reversed(list(base.fc.modules())) if isinstance(m, nn.Linear)).in_features
        head: nn.Module = nn.Linear(features + 2, num_classes)
        self.fc = nn.Sequential(nn.Dropout(dropout), head) if dropout > 0 else head

    def forward(self, x: torch.Tensor) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        """Class logits; in training mode also the (N, 1, h, w) defect-map logits."""
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        mid = self.layer3(self.layer2(self.layer1(x)))
        seg = self.seg_head(mid)
        pooled = torch.flatten(self.avgpool(self.layer4(mid)), 1)
        flat = seg.flatten(1)
        logits = self.fc(torch.cat([pooled, flat.amax(1, keepdim=True), flat.mean(1, keepdim=True)], 1))
        return (logits, seg) if self.training else logits


def _imagenet(name: str) -> nn.Module:
    weights = torchvision.models.get_model_weights(name).DEFAULT
    try:
        return torchvision.models.get_model(name, weights=weights)
    except (OSError, RuntimeError) as exc:  # URLError is an OSError; a partial download is a RuntimeError
        cache = Path(torch.hub.get_dir()) / "checkpoints" / Path(weights.url).name
        raise InputError(
            f"cannot get the ImageNet weights of {name} ({type(exc).__name__}: {exc}); "
            f"offline, copy {weights.url} to {cache}, or pass --weights PATH to a local state dict"
        ) from exc


# What `inspector train` writes as "format" in its checkpoints (trainer.CHECKPOINT_FORMAT, which imports this module).
_CHECKPOINT_PREFIX = "inspector.checkpoint/"


@dataclass(slots=True)
class _Transfer:
    """What a --weights file gave the unmodified torchvision model, and what waits for the modified one."""

    loaded: set[str]  # the model's tensor names filled from the file
    left: dict[str, torch.Tensor]  # the file's tensors that did not fit yet: the input convolution, inspector's defect-map head
    head: list[str]  # the file's head tensors: never loaded, the head is this run's


def _load_state_dict(model: nn.Module, path: Path, backbone: str) -> _Transfer:
    """Load the file's tensors into the unmodified torchvision `model`; InputError when the file is another architecture.

    The classification head is always new (this run's classes), so the file's head is never loaded, whatever its shape.
    The input convolution may differ in shape (a 1-channel file, an inspector checkpoint trained on gray): it is tried
    again once the input is adapted. Any other difference (keys missing or extra, shapes) means another architecture,
    and loading only what fits would start from a partly random backbone that the user believes pretrained: refused.
    """
    state = torch_load(path, f"--weights {path}: cannot read as a torch state dict")
    if isinstance(state, dict) and str(state.get("format", "")).startswith(_CHECKPOINT_PREFIX):
        recipe = state.get("recipe")
        trained = recipe.get("backbone") if isinstance(recipe, dict) else None
        if trained is not None and trained != backbone:
            raise InputError(
                f"--weights {path}: an `inspector train` checkpoint of a {trained}, but this run's backbone is {backbone}; "
                f"give --backbone {trained} to start from it"
            )
    if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
        state = state["state_dict"]
    if not isinstance(state, dict):
        raise InputError(f"--weights {path}: expected a state dict (a mapping of parameter names to tensors), got {type(state).__name__}")
    head = _head_name(model)

    def in_head(key: str) -> bool:
        return head is not None and key.startswith(f"{head}.")

    own = model.state_dict()
    file_head = [str(k) for k in state if in_head(str(k))]
    extra = {str(k): v for k, v in state.items() if str(k).startswith("seg_head.") and isinstance(v, torch.Tensor)}
    given = {str(k): v for k, v in state.items() if not in_head(str(k)) and str(k) not in extra}
    missing = [k for k in own if not in_head(k) and k not in given]
    unexpected = [k for k, v in given.items() if k not in own or not isinstance(v, torch.Tensor)]
    if missing or unexpected:
        raise InputError(
            f"--weights {path} does not fit the backbone: missing {missing[:5]}, unexpected {unexpected[:5]}; "
            f"expected the state dict of a torchvision {backbone} (its input convolution and head may differ), or a checkpoint of `inspector train`"
        )
    input_weight = f"{_input_conv_name(model)}.weight"
    left = {k: v for k, v in given.items() if v.shape != own[k].shape}
    wrong = [f"{k} (file {_shape(v)}, model {_shape(own[k])})" for k, v in left.items() if k != input_weight]
    if wrong:
        raise InputError(
            f"--weights {path} does not fit the backbone: {len(wrong)} tensor(s) differ in shape: {'; '.join(wrong[:5])}; "
            f"expected the state dict of a torchvision {backbone} (only the input convolution and the head may differ)"
        )
    fits = {k: v for k, v in given.items() if k not in left}
    model.load_state_dict(fits, strict=False)
    return _Transfer(set(fits), {**left, **extra}, file_head)


def _load_what_fits_now(model: nn.Module, transfer: _Transfer, path: Path) -> None:
    """After the input and head changed: load the left tensors that now fit; log what came from the file and what did not."""
    own = model.state_dict()
    fits = {k: v for k, v in transfer.left.items() if k in own and own[k].shape == v.shape}
    model.load_state_dict(fits, strict=False)
    loaded = (transfer.loaded & set(own)) | set(fits)
    left_out = [f"{k} {_shape(v)}" for k, v in transfer.left.items() if k not in fits]
    structlog.get_logger("inspector.train").info(
        "weights_loaded", path=str(path), tensors=len(loaded), of=len(own),
        new=[k for k in own if k not in loaded and not k.endswith("num_batches_tracked")][:8],
        head_not_loaded=len(transfer.head),
        left_out=left_out[:5],
        **({"why": "the file's tensors that do not fit this run's input channels or heads; those layers start from "
                   "their initialization"} if left_out else {}),
    )


def _shape(t: torch.Tensor) -> str:
    return "x".join(str(d) for d in t.shape) or "scalar"


def _head_name(model: nn.Module) -> str | None:
    """Name of the last Linear module: the head that `_replace_head` swaps."""
    last = None
    for name, module in model.named_modules():
        if isinstance(module, nn.Linear):
            last = name
    return last


def _input_conv_name(model: nn.Module) -> str | None:
    """Name of the first 3-channel convolution: the one `_adapt_input` replaces for gray input."""
    for name, module in model.named_modules():
        if isinstance(module, nn.Conv2d) and module.in_channels == 3:
            return name
    return None


def _adapt_input(model: nn.Module, in_channels: int, pretrained: bool) -> None:
    """Replace the first 3-channel convolution; pretrained filters are summed over RGB so gray input keeps their response."""
    for parent in model.modules():
        for name, child in parent.named_children():
            if isinstance(child, nn.Conv2d) and child.in_channels == 3:
                new = nn.Conv2d(
                    in_channels, child.out_channels, child.kernel_size, child.stride, child.padding,
                    child.dilation, child.groups, child.bias is not None, child.padding_mode,
                )
                if pretrained:
                    with torch.no_grad():
                        new.weight.copy_(child.weight.sum(dim=1, keepdim=True).repeat(1, in_channels, 1, 1) / in_channels)
                        if child.bias is not None:
                            new.bias.copy_(child.bias)
                setattr(parent, name, new)
                return
    raise InputError("the backbone has no 3-channel input convolution to adapt to gray input")


def _replace_head(model: nn.Module, num_classes: int, dropout: float) -> None:
    """Swap the last Linear layer for one with `num_classes` outputs (after optional dropout)."""
    last = None
    for parent in model.modules():
        for name, child in parent.named_children():
            if isinstance(child, nn.Linear):
                last = (parent, name, child)
    if last is None:
        raise InputError("the backbone has no Linear classification head to replace")
    parent, name, old = last
    head: nn.Module = nn.Linear(old.in_features, num_classes)
    if dropout > 0:
        head = nn.Sequential(nn.Dropout(dropout), head)
    setattr(parent, name, head)


def head_parameters(model: nn.Module) -> set[int]:
    """ids of the newly initialised head's parameters: the last Linear, and the defect-map head under mixed supervision."""
    last = None
    for module in model.modules():
        if isinstance(module, nn.Linear):
            last = module
    head = {id(p) for p in last.parameters()} if last is not None else set()
    seg = getattr(model, "seg_head", None)
    return head | ({id(p) for p in seg.parameters()} if isinstance(seg, nn.Module) else set())


def frozen_names(model: nn.Module, policy: str) -> list[str]:
    """Parameter names a freeze policy holds fixed: none, backbone (all but the head), or layer1..layer4 (stem up to it)."""
    if policy == "none":
        return []
    head = head_parameters(model)
    if policy == "backbone":
        return [n for n, p in model.named_parameters() if id(p) not in head]
    if not hasattr(model, "layer4"):
        raise InputError(f"freeze={policy} applies to ResNet-style models with layer1..layer4; use none or backbone")
    stop = int(policy.removeprefix("layer"))
    later = tuple(f"layer{i}." for i in range(stop + 1, 5))
    return [n for n, p in model.named_parameters() if id(p) not in head and not n.startswith(later)]


def set_frozen(model: nn.Module, names: list[str]) -> None:
    """requires_grad False for `names`, True for the rest; frozen BatchNorm layers keep their running statistics."""
    frozen = set(names)
    for n, p in model.named_parameters():
        p.requires_grad_(n not in frozen)
    for name, module in model.named_modules():
        if isinstance(module, nn.modules.batchnorm._BatchNorm):
            module._inspector_frozen = bool(frozen) and all(f"{name}.{k}" in frozen for k, _ in module.named_parameters())


def keep_frozen_bn_eval(model: nn.Module) -> None:
    """Put frozen BatchNorm layers back in eval mode after model.train()."""
    for module in model.modules():
        if getattr(module, "_inspector_frozen", False):
            module.eval()


class FlipMean(nn.Module):
    """Test-time augmentation inside the network: the mean class probability over the image and its flips.

    It returns the log of that mean, so softmax of the output gives the mean back exactly: training's
    validation, the export's parity gate and the runtime treat it as any model that outputs logits.
    """

    def __init__(self, inner: nn.Module, views: tuple[tuple[int, ...], ...]) -> None:
        super().__init__()
        self.inner = inner
        self.views = views

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(N, classes) log mean probabilities over the views of each row."""
        stacked = torch.cat([torch.flip(x, dims) if dims else x for dims in self.views])
        p = torch.softmax(self.inner(stacked).float(), dim=1)
        mean = p.reshape(len(self.views), -1, p.shape[1]).mean(0)
        return torch.log(mean.clamp_min(1e-30))  # a mean of exactly 0 (a softmax underflow) would be -inf


def deployed(model: nn.Module, recipe: TrainRecipe) -> nn.Module:
    """The network as it is validated at the end and exported: with the recipe's test-time views, or as it is."""
    views = recipe.tta_views()
    return FlipMean(model, views) if len(views) > 1 else model
