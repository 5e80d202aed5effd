"""Grad-CAM (Selvaraju et al. 2017) on the NG evidence: where the network looks when it calls a part NG."""

from __future__ import annotations

import cv2
import numpy as np
import torch
from torch import nn


def target_layer(model: nn.Module) -> nn.Module:
    """The last spatial feature block: ResNet's layer4, a `features` stack, or the last convolution."""
    if hasattr(model, "layer4"):
        return model.layer4
    if hasattr(model, "features"):
        return model.features
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    if not convs:
        raise ValueError("the model has no convolution to explain")
    return convs[-1]


def grad_cam(model: nn.Module, x: torch.Tensor) -> np.ndarray:
    """Heatmaps in 0..1, (n, H, W) at the input size, for the log-odds of NG (any class but ok, index 0)."""
    layer = target_layer(model)
    acts: list[torch.Tensor] = []
    handle = layer.register_forward_hook(lambda _m, _i, out: acts.append(out))
    model.eval()
    try:
        with torch.enable_grad():
            x = x.detach().requires_grad_(True)
            logits = model(x)
            evidence = torch.logsumexp(logits[:, 1:], dim=1) - logits[:, 0]
            (grads,) = torch.autograd.grad(evidence.sum(), acts[0])
    finally:
        handle.remove()
    a = acts[0].detach()
    cam = torch.relu((grads.mean(dim=(2, 3), keepdim=True) * a).sum(dim=1))
    cam = torch.nn.functional.interpolate(cam[:, None], size=x.shape[-2:], mode="bilinear", align_corners=False)[:, 0]
    peak = cam.flatten(1).amax(dim=1).clamp_min(1e-12)[:, None, None]
    return (cam / peak).cpu().numpy()


def overlay(image: np.ndarray, cam: np.ndarray, mask: np.ndarray | None = None) -> np.ndarray:
    """The crop (gray or RGB, 8/16-bit) under a JET heatmap, the defect mask outlined in green, BGR uint8."""
    if image.dtype == np.uint16:
        image = (image >> 8).astype(np.uint8)
    bgr = cv2.cvtColor(image, cv2.COLOR_GRAY2BGR) if image.ndim == 2 else cv2.cvtColor(image, cv2.COLOR_RGB2BGR)
    heat = cv2.applyColorMap((cam * 255).astype(np.uint8), cv2.COLORMAP_JET)
    out = cv2.addWeighted(bgr, 0.55, heat, 0.45, 0)
    if mask is not None:
        contours, _ = cv2.findContours(mask.astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
        cv2.drawContours(out, contours, -1, (0, 255, 0), 1)
    return out


def peak_in_mask(cam: np.ndarray, mask: np.ndarray) -> bool:
    """The pointing game: does the heatmap's maximum fall on the defect (within 2 px)?"""
    y, x = np.unravel_index(int(np.argmax(cam)), cam.shape)
    near = cv2.dilate(mask.astype(np.uint8), np.ones((5, 5), np.uint8))
    return bool(near[y, x])
