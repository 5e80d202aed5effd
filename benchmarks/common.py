"""What the benchmark scripts share: progress lines on stderr, the magnetic-tile images, latency statistics, the CPU's name."""

from __future__ import annotations

import platform
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any


def add_cpu_latency_arg(ap: Any, help_: str) -> None:
    """`--cpu-latency US|off|default` (default: the package default), as both benchmarks take it."""
    ap.add_argument("--cpu-latency", default="default", metavar="US|off", help=f"{help_} (default: the package default, none)")


def cpu_latency_section(arg: str) -> dict[str, Any]:
    """The `pipeline` settings that `--cpu-latency` stands for: nothing for `default`, else pipeline.cpu_latency_us."""
    return {} if arg == "default" else {"cpu_latency_us": arg}


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


# --- statistics and machine -------------------------------------------------------------------


def stats(ms: list[float]) -> dict[str, Any]:
    """n, p50, p90, p99, mean and max of latencies in ms (None for each when there are none)."""
    import numpy as np

    if not ms:
        return {"n": 0, "p50": None, "p90": None, "p99": None, "mean": None, "max": None}
    a = np.asarray(ms, np.float64)
    return {
        "n": int(a.size),
        "p50": round(float(np.percentile(a, 50)), 3),
        "p90": round(float(np.percentile(a, 90)), 3),
        "p99": round(float(np.percentile(a, 99)), 3),
        "mean": round(float(a.mean()), 3),
        "max": round(float(a.max()), 3),
    }


def cpu_model() -> str:
    """The CPU's model name from /proc/cpuinfo."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as f:
            for line in f:
                if line.lower().startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


# --- timing ------------------------------------------------------------------------------------


PACED_FPS = 30.0


def timed(fn: Callable[[Any], Any], inputs: list[Any], paced: bool) -> list[float]:
    """Milliseconds of fn(x) for each input, back to back or paced at PACED_FPS."""
    out = []
    next_tick = time.perf_counter()
    for x in inputs:
        if paced:
            next_tick += 1.0 / PACED_FPS
            time.sleep(max(0.0, next_tick - time.perf_counter()))
        t0 = time.perf_counter()
        fn(x)
        out.append((time.perf_counter() - t0) * 1000)
    return out


def measure(
    name: str, build: Callable[[], Any], run: Callable[[Any, Any], Any], frames: list[Any], n: int, *, batch_key: str = "batch4"
) -> dict[str, Any]:
    """Start-up, first inference, batch 1 and full-batch latency back to back, and batch 1 paced, of one inference path."""
    t0 = time.perf_counter()
    model = build()
    startup = (time.perf_counter() - t0) * 1000
    t0 = time.perf_counter()
    run(model, frames[0][:1])
    first = (time.perf_counter() - t0) * 1000
    for x in frames[:20]:
        run(model, x[:1])  # warm
    singles = [frames[i % len(frames)][:1] for i in range(n)]
    batches = [frames[i % len(frames)] for i in range(max(n // 4, 20))]
    result = {
        "startup_ms": round(startup, 1),
        "first_inference_ms": round(first, 2),
        "batch1": stats(timed(lambda x: run(model, x), singles, paced=False)),
        batch_key: stats(timed(lambda x: run(model, x), batches, paced=False)),
        "paced_30fps_batch1": stats(timed(lambda x: run(model, x), singles[: min(n, 150)], paced=True)),
    }
    log(f"{name}: batch1 p50 {result['batch1']['p50']} ms, p99 {result['batch1']['p99']} ms")
    return result
