"""Generate a synthetic part dataset and a small ResNet18 trained on it, for the demo and first steps.

`python -m inspector.training.sample --out sample/` writes sample/data (training tiles), sample/holdout
(tiles the model never saw, for `inspector replay`) and sample/model.onnx (with its manifest).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from inspector.samples import write_labelled_folder
from inspector.training.export import export_checkpoint
from inspector.training.recipe import TrainConfig
from inspector.training.run import run_training

CONFIG = {
    "preprocess": {"color": "gray", "clahe": {"enabled": True, "clip_limit": 2.0, "tile_grid": [4, 4]}, "resize": {"width": 64, "height": 64}},
    "train": {"epochs": 4, "lr": 2e-3, "schedule": "onecycle", "augment": {"rotate_deg": 0, "roi_jitter": 0}},
}


def main(argv: list[str] | None = None) -> int:
    """Write the sample dataset, train on it with `inspector train`'s code and export through the parity gate."""
    p = argparse.ArgumentParser(prog="python -m inspector.training.sample", description=__doc__.splitlines()[0])
    p.add_argument("--out", type=Path, default=Path("sample"), help="output folder (default ./sample)")
    p.add_argument("--epochs", type=int, default=4, help="training epochs (default 4)")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    started = time.monotonic()
    data = write_labelled_folder(args.out / "data", n_ok=240, n_ng=120, width=96, height=96, seed=args.seed)
    holdout = write_labelled_folder(args.out / "holdout", n_ok=120, n_ng=60, width=96, height=96, seed=args.seed + 1)
    config = TrainConfig.model_validate({**CONFIG, "train": {**CONFIG["train"], "epochs": args.epochs, "seed": args.seed}})
    run_training(data, args.out / "train", config)
    path = args.out / "model.onnx"
    export_checkpoint(args.out / "train" / "best.pt", path)
    print(f"sample data: {data}  holdout: {holdout}  model: {path}  ({time.monotonic() - started:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
