"""Training fixtures: tiny synthetic datasets and one short real training run shared by the export tests."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from inspector.cli import main
from inspector.samples import write_labelled_folder
from tests.conftest import gray_png

# 32 px gray tiles, one thread, tiny batches: a ResNet18 epoch on 48 samples takes well under a second.
FAST = ["--size", "32", "--color", "gray", "--clahe", "2", "--threads", "1", "--batch-size", "16"]


def run_files_bytes(folder: Path) -> dict[str, bytes]:
    """Every file under `folder` with its bytes: equal before and after means nothing was changed."""
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def train_cli(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    """Run `inspector train ...` in-process; (exit code, stdout, stderr)."""
    code = main(["train", *args])
    out, err = capsys.readouterr()
    return code, out, err


def export_cli(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    """Run `inspector export ...` in-process; (exit code, stdout, stderr)."""
    code = main(["export", *args])
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture(scope="session")
def parts(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """ok/ (40) and ng/crack, ng/blowhole (12 each), 48x48 gray PNG, with masks/ for some NG."""
    import cv2
    import numpy as np

    root = write_labelled_folder(tmp_path_factory.mktemp("parts"), n_ok=40, n_ng=24, width=48, height=48, seed=3)
    for png in sorted((root / "ng").rglob("*.png"))[:6]:
        img = cv2.imread(str(png), cv2.IMREAD_GRAYSCALE)
        mask = ((img < 60) * 255).astype(np.uint8)  # the drawn defects are the darkest pixels
        out = root / "masks" / png.relative_to(root)
        out.parent.mkdir(parents=True, exist_ok=True)
        cv2.imwrite(str(out), mask)
    return root


@pytest.fixture(scope="session")
def trained(parts: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The output folder of a finished 2-epoch binary run on `parts`."""
    out = tmp_path_factory.mktemp("run") / "run"
    assert main(["train", str(parts), "--out", str(out), "--epochs", "2", *FAST]) == 0
    return out


def square_part(root: Path, size: int = 64) -> Path:
    """ok/ (2 plain) and ng/crack/ (sq.png with a bright square off-centre, nomask.png the same without a mask), and
    the square's mask under masks/."""
    for i in range(2):
        gray_png(root / "ok" / f"ok{i}.png", np.full((size, size), 40, np.uint8))
    img = np.full((size, size), 40, np.uint8)
    img[8:24, 36:52] = 250
    gray_png(root / "ng" / "crack" / "sq.png", img)
    (root / "ng" / "crack" / "nomask.png").write_bytes((root / "ng" / "crack" / "sq.png").read_bytes())
    mask = np.zeros((size, size), np.uint8)
    mask[8:24, 36:52] = 255
    gray_png(root / "masks" / "ng" / "crack" / "sq.png", mask)
    return root


def flat_png(path: Path) -> None:
    import cv2

    path.parent.mkdir(parents=True, exist_ok=True)
    cv2.imwrite(str(path), np.full((16, 16), 128, np.uint8))


def two_camera_parts(root: Path) -> Path:
    """20 OK parts and 8 cracked ones, two images each (cam1, cam2), and part 99 whose crack only cam2 shows."""
    for i in range(20):
        for cam in (1, 2):
            flat_png(root / "ok" / f"SN{i:03d}_cam{cam}.png")
    for i in range(50, 58):
        for cam in (1, 2):
            flat_png(root / "ng" / "crack" / f"SN{i:03d}_cam{cam}.png")
    flat_png(root / "ok" / "SN099_cam1.png")
    flat_png(root / "ng" / "crack" / "SN099_cam2.png")
    return root
