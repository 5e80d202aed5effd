"""One training step of the accuracy recipe's model, in the trainer's channels-last layout against plain NCHW.

    .venv/bin/python benchmarks/bench_train_step.py [--threads 2] [--size 160] [--batch 32] [--steps 12]

ResNet18 on 1-channel (gray) input, 2 classes, random data, AdamW; forward, loss, backward and the optimizer step, as
`inspector train` runs them, in bf16 autocast (where the CPU computes bf16 natively) and in fp32. The layouts alternate
step by step so that a noisy neighbour slows both alike. Needs no dataset. One JSON document on stdout: the median and
minimum step time per layout and precision, and their ratios.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))

from common import cpu_model, log


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--size", type=int, default=160, help="input side in pixels (the recipe's 160)")
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--steps", type=int, default=12, help="measured steps per layout, after 2 warm-up steps each")
    args = ap.parse_args()

    import torch

    from inspector.training.backbones import build_model
    from inspector.training.recipe import TrainRecipe
    from inspector.training.trainer import channels_last, cpu_has_bf16, make_optimizer

    torch.set_num_threads(args.threads)
    recipe = TrainRecipe(backbone="resnet18", weights="none")
    precisions = ([("bf16", torch.bfloat16)] if cpu_has_bf16() else []) + [("fp32", None)]
    result: dict[str, Any] = {"cpu": cpu_model(), "threads": args.threads, "size": args.size, "batch": args.batch, "results": {}}
    for name, dtype in precisions:
        runs = {}
        for layout in ("nchw", "channels_last"):
            torch.manual_seed(0)
            model = build_model(recipe, 2, 1, load_weights=False).train()
            x = torch.randn(args.batch, 1, args.size, args.size)
            if layout == "channels_last":
                model, x = model.to(memory_format=torch.channels_last), channels_last(x)
            runs[layout] = (model, x, make_optimizer(model, recipe), [])
        y = torch.randint(0, 2, (args.batch,))
        loss_fn = torch.nn.CrossEntropyLoss()
        for step in range(args.steps + 2):
            for layout, (model, x, opt, times) in runs.items():
                t = time.perf_counter()
                with torch.autocast("cpu", dtype=dtype or torch.float32, enabled=dtype is not None):
                    loss = loss_fn(model(x), y)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                if step >= 2:
                    times.append(time.perf_counter() - t)
        summary = {layout: {"median_s": round(statistics.median(t), 4), "min_s": round(min(t), 4)} for layout, (*_, t) in runs.items()}
        summary["ratio_median"] = round(summary["channels_last"]["median_s"] / summary["nchw"]["median_s"], 3)
        result["results"][name] = summary
        log(f"{name}: {summary}")
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
