"""Synthetic part images for the demo, tests and quick checks: textured tiles, some with cracks or blowholes."""

from __future__ import annotations

import csv
from pathlib import Path

import cv2
import numpy as np

DEFECTS = ("crack", "blowhole")
# Four ROIs on a 2x2 grid of parts, as a fixture with four positions would be photographed.
GRID_ROIS = {"roi1": (0, 0, 0.5, 0.5), "roi2": (0.5, 0, 1, 0.5), "roi3": (0, 0.5, 0.5, 1), "roi4": (0.5, 0.5, 1, 1)}


def tile(rng: np.random.Generator, width: int, height: int, defect: str | None = None) -> np.ndarray:
    """One grey textured tile (uint8, HxW); with a defect drawn dark across it when `defect` names one."""
    base = rng.uniform(120, 170)
    noise = cv2.GaussianBlur(rng.normal(0, 18, (height, width)).astype(np.float32), (0, 0), 1.5)
    shading = np.linspace(-12, 12, width, dtype=np.float32)[None, :] * rng.choice([-1, 1])
    img = np.clip(base + noise + shading, 0, 255).astype(np.uint8)
    if defect == "crack":
        pts = [(int(rng.uniform(0.1, 0.9) * width), int(rng.uniform(0.05, 0.25) * height))]
        for _ in range(5):
            x, y = pts[-1]
            pts.append((int(np.clip(x + rng.normal(0, width * 0.08), 0, width - 1)), int(min(height - 1, y + height * 0.15))))
        cv2.polylines(img, [np.array(pts, np.int32)], False, int(rng.uniform(20, 50)), max(2, width // 24))
    elif defect == "blowhole":
        for _ in range(int(rng.integers(1, 3))):
            c = (int(rng.uniform(0.2, 0.8) * width), int(rng.uniform(0.2, 0.8) * height))
            cv2.circle(img, c, max(2, int(rng.uniform(0.05, 0.1) * min(width, height))), int(rng.uniform(15, 45)), -1)
    elif defect is not None:
        raise ValueError(f"unknown defect {defect!r}; expected one of {DEFECTS}")
    return img


def write_labelled_folder(
    root: Path, *, n_ok: int = 20, n_ng: int = 10, width: int = 64, height: int = 64, seed: int = 0, ext: str = ".png"
) -> Path:
    """Write `ok/` and `ng/<defect>/` images under `root` (NG split across DEFECTS) and return `root`."""
    rng = np.random.default_rng(seed)
    (root / "ok").mkdir(parents=True, exist_ok=True)
    for i in range(n_ok):
        cv2.imwrite(str(root / "ok" / f"ok_{i:04d}{ext}"), tile(rng, width, height))
    for i in range(n_ng):
        defect = DEFECTS[i % len(DEFECTS)]
        (root / "ng" / defect).mkdir(parents=True, exist_ok=True)
        cv2.imwrite(str(root / "ng" / defect / f"{defect}_{i:04d}{ext}"), tile(rng, width, height, defect))
    return root


def write_roi_frames(root: Path, *, n_frames: int = 8, part: int = 48, seed: int = 0) -> tuple[Path, dict[str, tuple[float, ...]]]:
    """Write 2x2-part frames to `root/frames/` and `root/labels.csv` (frame,roi1..roi4); return the CSV and ROI boxes."""
    rng = np.random.default_rng(seed)
    (root / "frames").mkdir(parents=True, exist_ok=True)
    csv_path = root / "labels.csv"
    with csv_path.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["frame", *GRID_ROIS])
        for i in range(n_frames):
            labels = ["ng" if rng.random() < 0.3 else "ok" for _ in GRID_ROIS]
            parts = [tile(rng, part, part, DEFECTS[int(rng.integers(len(DEFECTS)))] if lab == "ng" else None) for lab in labels]
            frame = np.vstack([np.hstack(parts[:2]), np.hstack(parts[2:])])
            name = f"frames/{i:03d}.png"
            cv2.imwrite(str(root / name), frame)
            w.writerow([name, *labels])
    return csv_path, dict(GRID_ROIS)
