"""How fast `inspector train` makes augmented batches, by the number of batch threads (`workers`).

    .venv/bin/python benchmarks/bench_train_loader.py [--data ../shared/datasets/magnetic-tile] [--workers 0,1,2,4] [--rounds 3]

The accuracy recipe's preprocessing and augmentations (flips, brightness/contrast, defects pasted into half the OK tiles)
on the magnetic-tile training split, batch 32, through the trainer's own `prefetched` and batch preparation. Each round
makes three epochs' worth of batches per worker count, the counts alternating so that a noisy neighbour slows all alike.
A training step must wait when its next batch takes longer to make than the step itself: compare batches/s with
1 / step time (`bench_train_step.py` on the CPU; a few ms on a GPU). One JSON document on stdout.
"""

from __future__ import annotations

import argparse
import functools
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))

from accuracy import MAGNETIC_TILE
from common import cpu_model, log


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, default=REPO / ".." / "shared" / "datasets" / "magnetic-tile")
    ap.add_argument("--workers", default="0,1,2,4", help="comma-separated thread counts (default 0,1,2,4)")
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()
    if not args.data.is_dir():
        print(f"bench_train_loader: {args.data} not found; pass --data with the magnetic-tile folder", file=sys.stderr)
        return 2
    counts = [int(w) for w in args.workers.split(",")]

    import numpy as np
    import torch

    from inspector.preprocess import PreprocessSpec
    from inspector.training import trainer
    from inspector.training.data import collect_samples, stratified_split
    from inspector.training.recipe import TrainRecipe

    spec = PreprocessSpec.model_validate(MAGNETIC_TILE["preprocess"])
    recipe = TrainRecipe.model_validate(MAGNETIC_TILE["train"])
    samples = collect_samples(args.data.resolve(), spec)
    train_idx, _ = stratified_split(samples, recipe.val_fraction, recipe.seed)
    cache = trainer.load_cache(samples, spec, recipe, [s.path for s in samples.samples])
    batches = trainer.Batches(samples, cache, recipe, train_idx)
    order = np.random.default_rng(0).permutation(train_idx)
    plan = trainer.epoch_plan(order, recipe.batch_size) * 3
    make = functools.partial(trainer.prepare_batch, batches, plan, (recipe.seed, 0), torch.device("cpu"))
    rates: dict[int, list[float]] = {w: [] for w in counts}
    for r in range(args.rounds):
        for w in counts:
            t = time.perf_counter()
            for _ in trainer.prefetched(make, len(plan), w):
                pass
            rates[w].append(len(plan) / (time.perf_counter() - t))
        log(f"round {r + 1}: " + ", ".join(f"{w} workers {rates[w][-1]:.0f}/s" for w in counts))
    base = statistics.median(rates[counts[0]])
    result: dict[str, Any] = {
        "cpu": cpu_model(), "batch": recipe.batch_size, "batches_per_round": len(plan),
        "workers": {
            str(w): {"batches_per_s": round(statistics.median(v), 1), "ms_per_batch": round(1000 / statistics.median(v), 2),
                     f"speedup_vs_{counts[0]}": round(statistics.median(v) / base, 2)}
            for w, v in rates.items()
        },
    }
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
