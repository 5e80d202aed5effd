"""Generate a synthetic part dataset and a small ResNet18 trained on it, for the demo and first steps.

`python -m inspector.training.sample --out sample/` writes sample/data (training tiles), sample/holdout
(tiles the model never saw, for `inspector replay`) and sample/model.onnx (with its manifest).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torchvision

from inspector.preprocess import PreprocessSpec, Preprocessor
from inspector.samples import write_labelled_folder
from inspector.training.onnx_export import export_classifier

SPEC = PreprocessSpec(color="gray", clahe={"enabled": True, "clip_limit": 2.0, "tile_grid": (4, 4)}, resize={"width": 64, "height": 64})
CLASSES = ("ok", "ng")


def load_folder(root: Path, pre: Preprocessor) -> tuple[np.ndarray, np.ndarray]:
    """Preprocess every image of an ok/ + ng/ folder with the runtime's own code: (N, C, H, W) and labels."""
    xs, ys = [], []
    for path in sorted(root.rglob("*.png")):
        label = path.relative_to(root).parts[0]
        xs.append(pre(pre.decode(path.read_bytes()))[0])
        ys.append(CLASSES.index(label))
    return np.stack(xs), np.asarray(ys)


def small_resnet() -> torch.nn.Module:
    """torchvision ResNet18 for one gray channel and two classes, from scratch."""
    model = torchvision.models.resnet18(num_classes=len(CLASSES))
    model.conv1 = torch.nn.Conv2d(1, 64, kernel_size=7, stride=2, padding=3, bias=False)
    return model


def train(x: np.ndarray, y: np.ndarray, epochs: int, seed: int) -> torch.nn.Module:
    """A short, plain training run on the CPU: AdamW, class-weighted cross-entropy, flips."""
    torch.manual_seed(seed)
    model = small_resnet()
    opt = torch.optim.AdamW(model.parameters(), lr=2e-3, weight_decay=1e-4)
    weights = torch.tensor(len(y) / (len(CLASSES) * np.bincount(y, minlength=len(CLASSES))), dtype=torch.float32)
    loss_fn = torch.nn.CrossEntropyLoss(weight=weights)
    xt, yt = torch.from_numpy(x), torch.from_numpy(y)
    gen = torch.Generator().manual_seed(seed)
    for epoch in range(epochs):
        model.train()
        order = torch.randperm(len(xt), generator=gen)
        total = 0.0
        for i in range(0, len(order), 32):
            idx = order[i : i + 32]
            xb = xt[idx]
            if torch.rand(1, generator=gen).item() < 0.5:
                xb = xb.flip(-1)
            opt.zero_grad()
            loss = loss_fn(model(xb), yt[idx])
            loss.backward()
            opt.step()
            total += loss.item() * len(idx)
        print(f"epoch {epoch + 1}/{epochs}  loss {total / len(xt):.4f}", file=sys.stderr)
    return model.eval()


def main(argv: list[str] | None = None) -> int:
    """Write the sample dataset and model."""
    p = argparse.ArgumentParser(prog="python -m inspector.training.sample", description=__doc__.splitlines()[0])
    p.add_argument("--out", type=Path, default=Path("sample"), help="output folder (default ./sample)")
    p.add_argument("--epochs", type=int, default=4, help="training epochs (default 4)")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    started = time.monotonic()
    data = write_labelled_folder(args.out / "data", n_ok=240, n_ng=120, width=96, height=96, seed=args.seed)
    holdout = write_labelled_folder(args.out / "holdout", n_ok=120, n_ng=60, width=96, height=96, seed=args.seed + 1)
    x, y = load_folder(data, Preprocessor(SPEC))
    model = train(x, y, args.epochs, args.seed)
    path = args.out / "model.onnx"
    export_classifier(model, SPEC, CLASSES, path, info={"trained_on": "synthetic sample tiles", "epochs": args.epochs})
    print(f"sample data: {data}  holdout: {holdout}  model: {path}  ({time.monotonic() - started:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
