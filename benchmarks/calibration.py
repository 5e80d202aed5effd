"""Calibration on real data: the threshold `inspector calibrate` sets on a trained model's validation split, and a split-half check.

    .venv/bin/python benchmarks/calibration.py --run bench-out/accuracy/magnetic-tile [--out DIR]

Reads what benchmarks/accuracy.py left in --run (model.onnx and validation/, which the model never saw). Every figure
comes from the product's own commands through the CLI: `inspector calibrate` on the whole validation split at a few
targets, then calibrate on one half (stratified by label and defect, seed 0) and `inspector replay --calibration` on the
other, which says whether the recall reached there lies inside the record's bound. Prints one JSON document.
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import io
import json
import random
import sys
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from benchmarks.common import log
from inspector.calibration.record import load_record
from inspector.cli import main

TARGETS = ((0.9, 0.9), (0.95, 0.95), (0.99, 0.95))


def _cli(*args: object) -> str:
    """Run one inspector command in-process; its stdout, or exit on failure."""
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        code = main([str(a) for a in args])
    if code != 0:
        sys.exit(f"inspector {' '.join(map(str, args[:2]))} failed with exit {code}")
    return out.getvalue()


def _split_layout(validation: Path, dest: Path, seed: int) -> tuple[Path, Path]:
    """Halves A and B of an ok/ + ng/<defect>/ folder, stratified by folder, as symlinks."""
    rng = random.Random(seed)
    groups: dict[Path, list[Path]] = {}
    for p in sorted(validation.rglob("*")):
        if p.is_file() or p.is_symlink():
            groups.setdefault(p.parent.relative_to(validation), []).append(p)
    for folder, files in groups.items():
        rng.shuffle(files)
        for i, f in enumerate(files):
            link = dest / ("a" if i % 2 == 0 else "b") / folder / f.name
            link.parent.mkdir(parents=True, exist_ok=True)
            link.symlink_to(f.resolve())
    return dest / "a", dest / "b"


def _split_frames(validation: Path, dest: Path, seed: int) -> tuple[Path, Path]:
    """Halves A and B of frames + labels.csv, each half with its own labels.csv, stratified by 'any NG ROI'."""
    rows = list(csv.reader((validation / "labels.csv").open(newline="")))
    header, body = rows[0], rows[1:]
    rng = random.Random(seed)
    halves: dict[str, list[list[str]]] = {"a": [], "b": []}
    for has_ng in (False, True):
        mine = [r for r in body if any(v.strip() == "ng" for v in r[1:]) == has_ng]
        rng.shuffle(mine)
        for i, r in enumerate(mine):
            halves["a" if i % 2 == 0 else "b"].append(r)
    for name, mine in halves.items():
        root = dest / name
        root.mkdir(parents=True)
        with (root / "labels.csv").open("w", newline="") as f:
            w = csv.writer(f)
            w.writerow(header)
            for r in mine:
                link = root / r[0].strip()
                link.parent.mkdir(parents=True, exist_ok=True)
                link.symlink_to((validation / r[0].strip()).resolve())
                w.writerow(r)
    return dest / "a", dest / "b"


def _labels(folder: Path) -> list[str]:
    csv_path = folder / "labels.csv"
    return ["--labels", str(csv_path)] if csv_path.is_file() else []


def _figures(record_path: Path) -> dict[str, Any]:
    record = load_record(record_path)
    out: dict[str, Any] = {"demonstrated": record.demonstrated, "n_ok": record.dataset.n_ok, "n_ng": record.dataset.n_ng}
    for name, s in record.thresholds.items():
        out[name] = {
            "threshold": s.threshold,
            "chosen_by": s.chosen_by,
            "ng_recall": s.achieved.ng_recall,
            "ng_recall_lower": s.achieved.ng_recall_lower,
            "false_reject_rate": s.achieved.false_reject_rate,
            "false_reject_rate_upper": s.achieved.false_reject_rate_upper,
            "ng_needed_zero_misses": s.ng_needed_zero_misses,
            "limited_by": s.limited_by.model_dump(),
        }
    return out


def run(run_dir: Path, out: Path, seed: int) -> dict[str, Any]:
    """Calibrate at each target on the whole validation split, then the split-half check at the first target."""
    model, validation = run_dir / "model.onnx", run_dir / "validation"
    if not model.is_file() or not validation.is_dir():
        sys.exit(f"error: {run_dir} lacks model.onnx or validation/; run benchmarks/accuracy.py first (see benchmarks/README.md)")
    out.mkdir(parents=True, exist_ok=True)
    labels = _labels(validation)
    result: dict[str, Any] = {"run": str(run_dir), "whole_validation": {}}
    # Score once with replay; every target then calibrates from its decisions, as a quality engineer would.
    _cli("replay", validation, "--model", model, *labels, "--out", out / "replay-validation", "--no-report")
    decisions = out / "replay-validation" / "decisions.jsonl"
    for target, conf in TARGETS:
        record = out / f"whole-{target}-{conf}.yaml"
        log(f"calibrate whole validation at {target} / {conf}")
        _cli("calibrate", "--decisions", decisions, "--model", model, "--target-recall", target, "--confidence", conf,
             "--station", "bench", "--out", record, "--no-report")
        result["whole_validation"][f"{target}@{conf}"] = _figures(record)
    split = _split_frames if labels else _split_layout
    half_a, half_b = split(validation, out / "halves", seed)
    target, conf = TARGETS[0]
    record = out / "half-a.yaml"
    log(f"calibrate half A at {target} / {conf}, replay half B with the record")
    text = _cli("calibrate", half_a, "--model", model, *_labels(half_a), "--target-recall", target, "--confidence", conf,
                "--station", "bench", "--out", record)
    _cli("replay", half_b, "--model", model, *_labels(half_b), "--calibration", record, "--out", out / "replay-half-b", "--no-report")
    summary = json.loads((out / "replay-half-b" / "summary.json").read_text())
    result["split_half"] = {
        "target": target, "confidence": conf, "seed": seed,
        "calibrated_on_a": _figures(record),
        "checked_on_b": summary["calibration"]["check"],
        "b_false_reject_rate": (summary["roi_metrics"] if labels else summary["frame_metrics"])["false_reject_rate"],
        "calibrate_output": text.splitlines(),
    }
    return result


def main_() -> None:
    """Parse flags, run, print JSON."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--run", type=Path, required=True, help="a dataset folder written by benchmarks/accuracy.py")
    p.add_argument("--out", type=Path, default=None, help="where to write records and replays (default RUN/calibration-bench)")
    p.add_argument("--seed", type=int, default=0, help="seed of the split into halves")
    args = p.parse_args()
    out = args.out or args.run / "calibration-bench"
    if out.exists():
        sys.exit(f"calibration: {out} exists; remove it or pass another --out")
    text = json.dumps(run(args.run, out, args.seed), indent=2)
    print(text)
    (out / "calibration.json").write_text(text + "\n")


if __name__ == "__main__":
    main_()
