"""deploy/*.sh: valid bash, executable, and install.sh refuses bad arguments before it touches the system."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

DEPLOY = Path(__file__).resolve().parents[2] / "deploy"
SCRIPTS = sorted(DEPLOY.rglob("*.sh"))
BASH = shutil.which("bash") or "/bin/bash"


def test_scripts_are_found() -> None:
    assert {p.name for p in SCRIPTS} >= {"install.sh", "make-test-certs.sh"}


@pytest.mark.parametrize("script", SCRIPTS, ids=lambda p: p.name)
def test_script_parses_and_is_executable(script: Path) -> None:
    proc = subprocess.run([BASH, "-n", str(script)], check=False, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert script.read_text().startswith("#!/usr/bin/env bash\n")
    assert os.access(script, os.X_OK), f"chmod +x {script}"
    assert "set -euo pipefail" in script.read_text()


def run_install(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([BASH, str(DEPLOY / "install.sh"), *args], check=False, capture_output=True, text=True, timeout=30)


def test_install_help_and_argument_errors() -> None:
    help_ = run_install("--help")
    assert help_.returncode == 0 and "install.sh PACKAGE" in help_.stdout
    assert "set -euo" not in help_.stdout  # only the header comment
    assert run_install().returncode == 2
    assert run_install("a", "b").returncode == 1


@pytest.mark.skipif(os.geteuid() != 0, reason="the path check comes after the root check")
def test_install_refuses_a_missing_package(tmp_path: Path) -> None:
    proc = run_install(str(tmp_path / "nothing.whl"))
    assert proc.returncode == 1
    assert "no such wheel" in proc.stderr
    (tmp_path / "src").mkdir()
    proc = run_install(str(tmp_path / "src"))
    assert proc.returncode == 1 and "without pyproject.toml" in proc.stderr
