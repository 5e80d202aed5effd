"""What the benchmark scripts share: progress lines on stderr and the magnetic-tile images."""

from __future__ import annotations

import sys
import time
from pathlib import Path


def log(msg: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


# --- data -------------------------------------------------------------------------------------


def find_images(data: Path) -> list[Path]:
    """All JPEG tiles under ok/ and ng/<defect>/ (masks excluded), sorted; exits with a clear message when absent."""
    if not data.is_dir():
        sys.exit(
            f"error: dataset folder not found: {data}\n"
            "The benchmark reads the magnetic-tile images (ok/ and ng/<defect>/ JPEGs, see /work/shared/datasets/README.md).\n"
            "Pass --data /path/to/magnetic-tile, or place the dataset at ../shared/datasets/magnetic-tile relative to the repo root."
        )
    images = sorted(p for sub in ("ok", "ng") for p in (data / sub).rglob("*.jpg") if p.is_file())
    if not images:
        sys.exit(f"error: no JPEG images under {data}/ok or {data}/ng; is --data the magnetic-tile folder?")
    return images
