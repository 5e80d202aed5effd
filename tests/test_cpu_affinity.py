"""Grouping logical CPUs into physical cores, and onnxruntime's affinity string, on sysfs trees written here."""

from __future__ import annotations

from pathlib import Path

import pytest

from inspector.cpu_affinity import physical_cores, worker_affinities


def _sysfs(root: Path, topology: dict[int, tuple[int, int]]) -> Path:
    """cpuN/topology/{physical_package_id,core_id} for each CPU: {cpu: (package, core)}."""
    for cpu, (package, core) in topology.items():
        topo = root / f"cpu{cpu}" / "topology"
        topo.mkdir(parents=True)
        (topo / "physical_package_id").write_text(f"{package}\n")
        (topo / "core_id").write_text(f"{core}\n")
    return root


def test_smt_siblings_share_a_core_and_cores_come_in_cpu_order(tmp_path: Path) -> None:
    # Linux numbers the second hyperthreads after all the first ones: cpu4 is cpu0's sibling.
    sysfs = _sysfs(tmp_path, {c: (0, c % 4) for c in range(8)})
    assert physical_cores(range(8), sysfs) == [(0, 4), (1, 5), (2, 6), (3, 7)]


def test_only_the_allowed_cpus_count_and_packages_keep_equal_core_ids_apart(tmp_path: Path) -> None:
    sysfs = _sysfs(tmp_path, {0: (0, 0), 1: (0, 1), 2: (1, 0), 3: (1, 1)})
    assert physical_cores([3, 2, 1], sysfs) == [(1,), (2,), (3,)]


def test_a_cpu_without_topology_is_a_core_of_its_own(tmp_path: Path) -> None:
    assert physical_cores([0, 1, 2], tmp_path) == [(0,), (1,), (2,)]


def test_workers_get_the_cores_after_the_callers_numbered_from_one() -> None:
    cores = [(0, 4), (1, 5), (2, 6), (3, 7)]
    assert worker_affinities(2, cores) == "2,6"
    assert worker_affinities(4, cores) == "2,6;3,7;4,8"


def test_fewer_cores_than_threads_pins_nothing() -> None:
    assert worker_affinities(3, [(0,), (1,)]) is None
    assert worker_affinities(2, [(0,), (1,)]) == "2"


def test_one_thread_has_no_workers_to_pin() -> None:
    with pytest.raises(ValueError, match="2 or more"):
        worker_affinities(1, [(0,), (1,)])
