"""Which CPUs onnxruntime's worker threads are pinned to: one physical core each, as onnxruntime does when it picks the thread count itself.

onnxruntime pins its workers only when `intra_op_num_threads` is left at 0; an explicit count
leaves them floating, and then the scheduler can put a worker woken after an idle gap on the
calling thread's core, where that inference runs at one-thread speed. The calling thread takes
the first core (`model.py` holds it there during each run).
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path

SYSFS_CPU = Path("/sys/devices/system/cpu")


def physical_cores(cpus: Iterable[int], sysfs: Path = SYSFS_CPU) -> list[tuple[int, ...]]:
    """Group logical CPUs into physical cores (SMT siblings together), ordered by their lowest CPU number.

    A CPU whose topology sysfs does not describe counts as a core of its own.
    """
    groups: dict[tuple[str, ...], list[int]] = {}
    for cpu in sorted(set(cpus)):
        topo = sysfs / f"cpu{cpu}" / "topology"
        try:
            key = tuple((topo / name).read_text().strip() for name in ("physical_package_id", "die_id", "core_id") if (topo / name).exists())
        except OSError:
            key = ()
        groups.setdefault(key or ("cpu", str(cpu)), []).append(cpu)
    return sorted((tuple(g) for g in groups.values()), key=lambda g: g[0])


def allowed_cores(sysfs: Path = SYSFS_CPU) -> list[tuple[int, ...]]:
    """The physical cores this process may run on (its affinity mask: taskset, systemd's CPUAffinity=)."""
    return physical_cores(os.sched_getaffinity(0), sysfs)


def worker_affinities(threads: int, cores: list[tuple[int, ...]]) -> str | None:
    """onnxruntime's `session.intra_op_thread_affinities` for `threads` threads: a core per worker, the first core left to the caller.

    None when there are fewer cores than threads: pinning two workers to one core would be worse than none.
    The string numbers logical processors from 1, as onnxruntime reads it.
    """
    if threads < 2:
        raise ValueError(f"worker threads exist only for 2 or more intra-op threads, got {threads}")
    if len(cores) < threads:
        return None
    return ";".join(",".join(str(cpu + 1) for cpu in core) for core in cores[1:threads])
