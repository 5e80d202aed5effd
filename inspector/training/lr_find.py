"""The learning-rate range test (Smith 2015, as fastai's lr_find): raise the LR exponentially, watch the loss."""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from inspector.training.recipe import TrainRecipe
from inspector.training.trainer import (
    Batches,
    batch_loss,
    epoch_order,
    make_loss,
    make_optimizer,
)


@dataclass(frozen=True, slots=True)
class LrFinding:
    """Loss per tried learning rate and the suggestion."""

    lrs: tuple[float, ...]
    losses: tuple[float, ...]  # exponentially smoothed
    suggestion: float  # fastai's valley: well inside the longest descent of the smoothed loss
    minimum: float  # LR at the lowest smoothed loss


def lr_range_test(
    model: nn.Module,
    batches: Batches,
    targets: np.ndarray,
    train_idx: np.ndarray,
    recipe: TrainRecipe,
    device: torch.device,
    *,
    start: float = 1e-6,
    end: float = 1.0,
    steps: int = 100,
) -> LrFinding:
    """Train a throwaway copy for up to `steps` batches from `start` to `end`; stop when the loss explodes."""
    model = copy.deepcopy(model).to(device, memory_format=torch.channels_last).train()
    opt = make_optimizer(model, recipe.model_copy(update={"lr": start, "backbone_lr_mult": 1.0}))
    loss_fn = make_loss(batches.class_counts(train_idx), recipe, device)
    rng = np.random.default_rng(recipe.seed)
    gamma = (end / start) ** (1 / max(1, steps - 1))
    lrs, losses = [], []
    smooth, best = 0.0, math.inf
    order: np.ndarray = np.array([], int)
    for step in range(steps):
        lr = start * gamma**step
        for g in opt.param_groups:
            g["lr"] = lr
        if len(order) < recipe.batch_size:
            order = epoch_order(targets, train_idx, recipe, rng)
        idx, order = order[: recipe.batch_size], order[recipe.batch_size :]
        batch = batches.augmented(idx, rng).to(device)
        loss = batch_loss(model, batch, batch.y, loss_fn, recipe.seg_weight)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        smooth = 0.9 * smooth + 0.1 * float(loss.detach())
        value = smooth / (1 - 0.9 ** (step + 1))  # bias-corrected, as fastai does
        lrs.append(lr)
        losses.append(value)
        best = min(best, value)
        if not math.isfinite(value) or value > 4 * best:
            break
    return LrFinding(tuple(lrs), tuple(losses), valley(lrs, losses), float(lrs[int(np.argmin(losses))]))


def valley(lrs: list[float], losses: list[float]) -> float:
    """fastai's `valley` suggestion: about half-way down the longest descending run of the loss curve.

    Robust to the noisy start where a steepest-gradient pick lands on a tiny LR.
    """
    n = len(losses)
    run = [1] * n
    start = end = 0
    for i in range(1, n):
        for j in range(i):
            if losses[i] < losses[j] and run[i] < run[j] + 1:
                run[i] = run[j] + 1
        if run[end] < run[i]:
            end = i
            start = end - run[end]
    third = (end - start) / 3
    return float(lrs[min(n - 1, start + int(third) + int(third / 2))])
