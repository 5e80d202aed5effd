"""`inspector train` end to end on real image files: outputs, multi-class, multi-ROI, resume, folds, LR finder, errors."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
import yaml

from inspector.preprocess import FrameSize, PreprocessSpec
from inspector.samples import GRID_ROIS, write_labelled_folder
from inspector.training import trainer
from inspector.training.data import collect_samples, stratified_split
from inspector.training.recipe import TrainRecipe
from inspector.training.trainer import train
from tests.conftest import fifo, gray_png
from tests.training.conftest import (
    FAST,
    export_cli,
    run_files_bytes,
    square_part,
    train_cli,
    two_camera_parts,
)

EPOCH_KEYS = {
    "epoch", "lr", "seconds", "train_loss", "val_loss", "accuracy", "precision", "recall", "f1", "roc_auc",
    "threshold_at_target", "ng_recall_at_target", "false_reject_rate_at_target",
}


def test_a_run_writes_checkpoints_metrics_plots_and_a_report(trained: Path, parts: Path) -> None:
    for name in ("best.pt", "last.pt", "metrics.json", "summary.json", "report.html", "train.yaml",
                 "curves.png", "confusion_matrix.png", "roc.png", "most_confused.jpg", "gradcam.jpg"):
        assert (trained / name).stat().st_size > 0, name
    metrics = json.loads((trained / "metrics.json").read_text())
    assert [e["epoch"] for e in metrics["epochs"]] == [1, 2]
    assert set(metrics["epochs"][0]) == EPOCH_KEYS
    assert metrics["target_recall"] == 0.99
    summary = json.loads((trained / "summary.json").read_text())
    assert summary["validation_samples"] == 12 and summary["train_samples"] == 52
    assert set(summary["per_defect_recall_at_target"]) == {"crack", "blowhole"}
    assert summary["gradcam"]["ng_with_mask"] >= 1  # masks/ beside the data are used to check the heatmaps
    ckpt = torch.load(trained / "best.pt", weights_only=True)
    assert ckpt["classes"] == ["ok", "ng"]
    assert PreprocessSpec.from_json(ckpt["spec"]).input_shape == (1, 32, 32)
    assert PreprocessSpec.from_json(ckpt["spec"]).pixel_max == 255  # 8-bit files: the model takes 8-bit frames only
    # 48x48 files: the model judges 48x48 frames only, and the run's train.yaml says so too.
    assert PreprocessSpec.from_json(ckpt["spec"]).frame_size == FrameSize(min_width=48, max_width=48, min_height=48, max_height=48)
    assert yaml.safe_load((trained / "train.yaml").read_text())["preprocess"]["frame_size"] == {
        "min_width": 48, "max_width": 48, "min_height": 48, "max_height": 48, "applies_to": "frame"}
    assert TrainRecipe.model_validate(ckpt["recipe"]).epochs == 2
    assert len(ckpt["validation"]) == 12 and ckpt["dataset"]["counts"] == {"ok": 40, "ng": 24}
    assert ckpt["epoch"] == summary["best_epoch"]


def test_the_command_prints_the_operating_point_and_the_next_step(parts: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = train_cli(capsys, str(parts), "--out", str(tmp_path / "r"), "--epochs", "1", "--imbalance", "sampler", "--schedule", "onecycle",
                               "--frame-size", "64x56..1280x1024", *FAST)
    assert code == 0, err
    assert "validation ROC-AUC" in out and "at 99.00% NG recall: threshold" in out
    assert f"next:       inspector export {tmp_path / 'r' / 'best.pt'} --out model.onnx" in out
    assert '"event": "epoch_done"' in err
    # --frame-size: the camera's frames, recorded as given even though the (cropped) training images are smaller.
    given = FrameSize(min_width=64, max_width=1280, min_height=56, max_height=1024)
    assert PreprocessSpec.from_json(torch.load(tmp_path / "r" / "best.pt", weights_only=True)["spec"]).frame_size == given
    assert yaml.safe_load((tmp_path / "r" / "train.yaml").read_text())["preprocess"]["frame_size"]["max_width"] == 1280
    warned = next(json.loads(line) for line in err.splitlines() if '"training_frames_outside_frame_size"' in line)
    assert warned["count"] == 64 and warned["frame_size"] == "64x56..1280x1024" and warned["examples"][0].endswith("(48x48)")
    # The warning says what export will make of it, and the ways out.
    assert warned["validation"] == 12
    assert ("12 of them are validation images, which `inspector export` reruns as its golden set by default: it will refuse "
            "the model (frame_size) unless given --golden DIR with frames 64..1280 wide and 56..1024 high") in warned["why"]
    assert "give a --frame-size range that holds them (e.g. --frame-size 48x48..1280x1024)" in warned["why"]
    code, _, err = export_cli(capsys, str(tmp_path / "r" / "best.pt"), "--out", str(tmp_path / "m.onnx"))
    assert code == 2 and "export refused by the parity gate" in err and not (tmp_path / "m.onnx").exists()
    assert ("12 of the 12 golden frames (the checkpoint's validation images, export's default golden set) lie outside the "
            "model's frame_size and are rejected, not judged (e.g. ") in err
    assert ("pass --golden DIR with frames 64..1280 wide and 56..1024 high, the sizes it judges, or train the model again with "
            "a --frame-size range that holds them (e.g. --frame-size 48x48..1280x1024)") in err
    # The first way out: golden frames of the sizes the model judges (64x64 tiles).
    golden = tmp_path / "golden"
    for png in sorted(parts.rglob("*.png"))[::8]:
        if "masks" not in png.parts:
            gray_png(golden / png.relative_to(parts), cv2.resize(cv2.imread(str(png), cv2.IMREAD_GRAYSCALE), (64, 64)))
    code, out, err = export_cli(capsys, str(tmp_path / "r" / "best.pt"), "--out", str(tmp_path / "m.onnx"), "--golden", str(golden))
    assert code == 0, err
    assert "parity gate passed" in out


def test_multi_class_uses_the_defect_folders_as_classes(parts: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = train_cli(capsys, str(parts), "--out", str(tmp_path / "m"), "--classes", "multi", "--epochs", "1", "--freeze", "layer2",
                             "--frame-size", "any", *FAST)
    assert code == 0, err
    ckpt = torch.load(tmp_path / "m" / "best.pt", weights_only=True)
    assert ckpt["classes"] == ["ok", "blowhole", "crack"]
    assert PreprocessSpec.from_json(ckpt["spec"]).frame_size == "any"  # --frame-size any: no range recorded, on purpose
    assert '"event": "frame_size_any"' in err


@pytest.mark.parametrize(
    ("value", "says"),
    [
        ("64", "expected any, WxH (e.g. 1280x1024) or MINWxMINH..MAXWxMAXH (e.g. 1280x1024..2448x2048), in pixels; got '64'"),
        ("1280x1024-2448x2048", "expected any, WxH (e.g. 1280x1024) or MINWxMINH..MAXWxMAXH"),
        ("none", "expected any, WxH"),
        ("0x480", "widths and heights must lie in 1..1048576 pixels; got '0x480'"),
        ("2448x2048..1280x1024", "the smaller size comes first: MINWxMINH..MAXWxMAXH, min <= max on each side"),
    ],
)
def test_a_malformed_frame_size_is_a_usage_error_naming_the_allowed_forms(
    parts: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], value: str, says: str
) -> None:
    with pytest.raises(SystemExit) as info:
        train_cli(capsys, str(parts), "--out", str(tmp_path / "r"), "--frame-size", value)
    assert info.value.code == 2
    assert f"argument --frame-size: {says}" in capsys.readouterr().err
    assert not (tmp_path / "r").exists()


def test_rois_from_a_labels_csv_each_train_as_one_sample(roi_frames: tuple[Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    root, _ = roi_frames
    cfg = tmp_path / "train.yaml"
    rois = "".join(f"    - {{name: {n}, box: {list(b)}, units: fraction}}\n" for n, b in GRID_ROIS.items())
    cfg.write_text(f"preprocess:\n  color: gray\n  rois:\n{rois}")
    code, _, err = train_cli(capsys, str(root), "--config", str(cfg), "--out", str(tmp_path / "r"), "--epochs", "1", "--roi-jitter", "0.05", *FAST)
    assert code == 0, err
    ckpt = torch.load(tmp_path / "r" / "best.pt", weights_only=True)
    assert ckpt["dataset"]["samples"] == 40
    assert {v["key"].split("#")[1] for v in ckpt["validation"]} <= set(GRID_ROIS)


@pytest.mark.parametrize(("ema_decay", "fp16"), [(0.0, False), (0.9, False), (0.0, True)], ids=["plain", "ema", "fp16-scaled"])
def test_an_interrupted_run_resumes_to_the_same_result(
    parts: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, ema_decay: float, fp16: bool
) -> None:
    if fp16:  # what a pre-Ampere CUDA GPU trains with; the same autocast and loss scaling run on the CPU
        monkeypatch.setattr(trainer, "training_precision", lambda amp, device: trainer.Precision(torch.float16))
    spec = PreprocessSpec(color="gray", clahe={"enabled": True}, resize={"width": 32, "height": 32})
    recipe = TrainRecipe(epochs=2, threads=1, batch_size=16, ema_decay=ema_decay)
    samples = collect_samples(parts, spec)
    tr, va = stratified_split(samples, recipe.val_fraction, recipe.seed)
    train(samples, spec, recipe, tmp_path / "straight", train_idx=tr, val_idx=va)

    def crash(m: object) -> None:
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        train(samples, spec, recipe, tmp_path / "cut", train_idx=tr, val_idx=va, on_epoch=crash)
    code, _, err = train_cli(capsys, str(parts), "--out", str(tmp_path / "cut"), "--resume", str(tmp_path / "cut" / "last.pt"))
    assert code == 0, err
    assert '"event": "training_resumed"' in err
    said = [json.loads(line) for line in err.splitlines() if '"event": "frame_size"' in line][-1]  # the resumed run's
    assert (said["frame_size"], said["source"]) == ("48x48", "checkpoint")  # the range the checkpoint recorded, not "given"
    straight = json.loads((tmp_path / "straight" / "metrics.json").read_text())["epochs"]
    resumed = json.loads((tmp_path / "cut" / "metrics.json").read_text())["epochs"]
    assert [e["epoch"] for e in resumed] == [1, 2]
    assert resumed[1]["train_loss"] == pytest.approx(straight[1]["train_loss"], rel=1e-5)
    assert resumed[1]["val_loss"] == pytest.approx(straight[1]["val_loss"], rel=1e-5)
    assert np.isfinite([e["train_loss"] for e in resumed]).all()
    scaler = torch.load(tmp_path / "cut" / "last.pt", weights_only=True).get("scaler")
    assert (scaler is not None and 0 < scaler["scale"] <= 2.0**16) == fp16  # the loss scale travels with the checkpoint
    expected = "fp16" if fp16 else trainer.training_precision(True, torch.device("cpu")).name
    assert json.loads((tmp_path / "cut" / "summary.json").read_text())["precision"] == expected


def test_batch_threads_train_the_same_model_as_the_training_loop(parts: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    runs = {}
    for workers in (0, 3):
        out = tmp_path / f"w{workers}"
        code, _, err = train_cli(capsys, str(parts), "--out", str(out), "--epochs", "2", "--workers", str(workers),
                                 "--paste-defects", "0.5", "--erasing", "0.5", "--brightness", "0.2", *FAST)
        assert code == 0, err
        assert json.loads((out / "summary.json").read_text())["workers"] == workers
        runs[workers] = (torch.load(out / "last.pt", weights_only=True), json.loads((out / "metrics.json").read_text())["epochs"])
    (plain, plain_epochs), (threaded, threaded_epochs) = runs[0], runs[3]
    assert [e["train_loss"] for e in threaded_epochs] == [e["train_loss"] for e in plain_epochs]
    assert all(torch.equal(plain["state_dict"][k], threaded["state_dict"][k]) for k in plain["state_dict"])


def test_prefetched_keeps_order_stays_bounded_and_raises_at_the_failing_batch() -> None:
    made: list[int] = []

    def make(i: int) -> int:
        made.append(i)
        if i == 5:
            raise ValueError("batch 5 cannot be made")
        return i * 10

    batches = trainer.prefetched(make, 50, 2)
    assert next(batches) == 0
    assert len(made) <= 4  # two per thread ahead, not the whole epoch
    got = [0]
    with pytest.raises(ValueError, match="batch 5"):
        got.extend(batches)
    assert got == [0, 10, 20, 30, 40]
    assert len(made) < 50  # the rest of the epoch was cancelled, not computed


@pytest.mark.parametrize(("workers", "device", "cores", "expected"), [
    (None, "cpu", 16, 1),  # the CPU's cores train the model
    (None, "cuda", 16, 8),
    (None, "cuda", 4, 3),
    (None, "cuda", 1, 1),
    (0, "cuda", 16, 0),
    (5, "cpu", 2, 5),
])
def test_unset_workers_depend_on_what_trains(workers: int | None, device: str, cores: int, expected: int, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(trainer.os, "cpu_count", lambda: cores)
    assert trainer.loader_workers(workers, torch.device(device)) == expected


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_on_cuda_training_runs_in_mixed_precision_and_exports_through_the_gate(
    parts: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    for run in ("g", "again"):
        code, _, err = train_cli(capsys, str(parts), "--out", str(tmp_path / run), "--epochs", "2", "--device", "cuda", "--workers", "3", *FAST)
        assert code == 0, err
    summary = json.loads((tmp_path / "g" / "summary.json").read_text())
    assert summary["device"].startswith("cuda") and summary["workers"] == 3
    assert summary["precision"] == ("bf16" if torch.cuda.is_bf16_supported(including_emulation=False) else "fp16")
    first, again = (torch.load(tmp_path / run / "last.pt", weights_only=True)["state_dict"] for run in ("g", "again"))
    assert all(torch.equal(first[k], again[k]) for k in first)  # deterministic kernels: the seed reproduces the run
    code, _, err = export_cli(capsys, str(tmp_path / "g" / "best.pt"), "--out", str(tmp_path / "g.onnx"))
    assert code == 0, err  # a model trained on the GPU passes the same parity gate on the CPU


@pytest.mark.parametrize("deterministic", [True, False])
def test_on_cuda_deterministic_picks_the_kernels_and_the_settings_come_back(deterministic: bool, monkeypatch: pytest.MonkeyPatch) -> None:
    cudnn = torch.backends.cudnn
    monkeypatch.delenv("CUBLAS_WORKSPACE_CONFIG", raising=False)
    before = (cudnn.deterministic, cudnn.benchmark)
    with trainer.cuda_kernels(deterministic, torch.device("cpu")):
        assert (cudnn.deterministic, cudnn.benchmark) == before
    with trainer.cuda_kernels(deterministic, torch.device("cuda")):
        assert cudnn.deterministic is deterministic and cudnn.benchmark is not deterministic
        assert os.environ.get("CUBLAS_WORKSPACE_CONFIG") == (":4096:8" if deterministic else None)
    assert (cudnn.deterministic, cudnn.benchmark) == before


@pytest.mark.parametrize(
    ("amp", "device", "bf16_native", "expected"),
    [
        (True, "cuda", True, "bf16"),  # Ampere and later
        (True, "cuda", False, "fp16"),  # Turing, Volta: bf16 only emulated
        (True, "cpu", True, "bf16"),  # AVX512-BF16 or AMX
        (True, "cpu", False, "fp32"),  # half types emulated: slower than fp32
        (False, "cuda", True, "fp32"),
        (False, "cpu", True, "fp32"),
    ],
)
def test_mixed_precision_follows_what_the_hardware_computes(amp: bool, device: str, bf16_native: bool, expected: str) -> None:
    precision = trainer.choose_precision(amp, device, bf16_native)
    assert precision.name == expected
    assert precision.scaled == (expected == "fp16")


def test_resume_keeps_the_recipe_and_may_only_extend_epochs(trained: Path, parts: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    run = tmp_path / "run"
    shutil.copytree(trained, run)
    code, _, err = train_cli(capsys, str(parts), "--out", str(run), "--resume", str(run / "last.pt"), "--lr", "0.1")
    assert code == 2 and "only --epochs may change it (got --lr (train.lr))" in err
    code, _, err = train_cli(capsys, str(parts), "--out", str(run), "--resume", str(run / "best.pt"))
    assert code == 2 and "resume from last.pt" in err
    # A run from before frame_size existed: its checkpoints' specs record none.
    for name in ("best.pt", "last.pt"):
        ckpt = torch.load(run / name, weights_only=True)
        ckpt["spec"] = PreprocessSpec.from_json(ckpt["spec"]).model_copy(update={"frame_size": None}).to_json()
        assert "frame_size" not in ckpt["spec"]
        torch.save(ckpt, run / name)
    before_s = json.loads((run / "summary.json").read_text())["training_seconds"]
    code, _, err = train_cli(capsys, str(parts), "--out", str(run), "--resume", str(run / "last.pt"), "--epochs", "3")
    assert code == 0, err
    epochs = json.loads((run / "metrics.json").read_text())["epochs"]
    assert [e["epoch"] for e in epochs] == [1, 2, 3]
    # The whole run's time, the session before the resume included; not only the resumed part.
    assert json.loads((run / "summary.json").read_text())["training_seconds"] >= max(before_s, sum(e["seconds"] for e in epochs)) - 0.1
    # A resume continues the same model: what it records stays the checkpoint's, not the data's range added midway.
    for name in ("best.pt", "last.pt"):
        assert PreprocessSpec.from_json(torch.load(run / name, weights_only=True)["spec"]).frame_size is None, name
    assert "frame_size" not in yaml.safe_load((run / "train.yaml").read_text())["preprocess"]
    logged = [json.loads(line) for line in err.splitlines() if line.startswith("{")]
    said = next(e for e in logged if e["event"].startswith("frame_size"))
    assert (said["event"], said["source"]) == ("frame_size_none", "checkpoint")
    assert "the resumed checkpoint records no frame_size" in said["why"]


def test_k_folds_train_one_model_per_fold(parts: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = train_cli(capsys, str(parts), "--out", str(tmp_path / "cv"), "--folds", "2", "--epochs", "1", *FAST)
    assert code == 0, err
    cv = json.loads((tmp_path / "cv" / "cv.json").read_text())
    assert cv["folds"] == 2 and len(cv["roc_auc"]["per_fold"]) == 2
    assert (tmp_path / "cv" / "fold-1" / "best.pt").is_file() and (tmp_path / "cv" / "fold-2" / "best.pt").is_file()
    assert "2-fold cross-validation: ROC-AUC" in out
    # The run's train.yaml says what the folds trained on, the full scale read from the data included.
    assert yaml.safe_load((tmp_path / "cv" / "train.yaml").read_text())["preprocess"]["pixel_max"] == 255
    assert yaml.safe_load((tmp_path / "cv" / "train.yaml").read_text())["preprocess"]["frame_size"]["max_width"] == 48
    for k in (1, 2):
        fold_spec = PreprocessSpec.from_json(torch.load(tmp_path / "cv" / f"fold-{k}" / "best.pt", weights_only=True)["spec"])
        assert fold_spec.frame_size == FrameSize(min_width=48, max_width=48, min_height=48, max_height=48)
    code, _, err = export_cli(capsys, str(tmp_path / "cv" / "fold-1" / "best.pt"), "--out", str(tmp_path / "fold1.onnx"))
    assert code == 0, err
    from inspector.config import ModelSettings, Provider
    from inspector.model import OnnxClassifier

    assert OnnxClassifier(tmp_path / "fold1.onnx", ModelSettings(providers=[Provider.CPU])).spec.frame_size == fold_spec.frame_size
    # A fold resumes on its own validation samples, not on a fresh split; more --epochs extend every fold of the cross-validation.
    fold = tmp_path / "cv" / "fold-2"
    before = [v["key"] for v in torch.load(fold / "last.pt", weights_only=True)["validation"]]
    code, out, err = train_cli(capsys, str(parts), "--out", str(fold), "--resume", str(fold / "last.pt"), "--epochs", "2")
    assert code == 0, err
    assert [v["key"] for v in torch.load(fold / "last.pt", weights_only=True)["validation"]] == before
    for k in (1, 2):
        assert [e["epoch"] for e in json.loads((tmp_path / "cv" / f"fold-{k}" / "metrics.json").read_text())["epochs"]] == [1, 2]
    assert yaml.safe_load((tmp_path / "cv" / "train.yaml").read_text())["train"]["epochs"] == 2
    assert "2-fold cross-validation: ROC-AUC" in out and f"summary: {tmp_path / 'cv' / 'cv.json'}" in out
    # A finished cross-validation is a run too: a later run into the same folder is refused, whatever its options.
    before = run_files_bytes(tmp_path / "cv")
    for flags in (["--folds", "2"], []):
        code, _, err = train_cli(capsys, str(parts), "--out", str(tmp_path / "cv"), "--epochs", "1", *FAST, *flags)
        assert code == 2
        assert f"already holds a training run (train.yaml, cv.json, fold-1/, fold-2/); choose another --out; " \
               f"--resume {tmp_path / 'cv' / 'fold-1' / 'last.pt'} continues this cross-validation" in err
    assert run_files_bytes(tmp_path / "cv") == before


def test_lr_find_prints_a_suggestion_and_plots_it(parts: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = train_cli(capsys, str(parts), "--out", str(tmp_path / "lr"), "--lr-find", *FAST)
    assert code == 0, err
    found = json.loads((tmp_path / "lr" / "lr_find.json").read_text())
    assert 1e-6 <= found["suggestion"] <= 1.0
    assert f"suggested learning rate: {found['suggestion']:.2e}" in out
    assert (tmp_path / "lr" / "lr_find.png").stat().st_size > 0
    assert not (tmp_path / "lr" / "best.pt").exists()


def test_early_stopping_keeps_the_best_epoch(parts: Path, tmp_path: Path) -> None:
    spec = PreprocessSpec(color="gray", resize={"width": 32, "height": 32})
    recipe = TrainRecipe(epochs=6, early_stop=1, threads=1, batch_size=16, lr=0.05)
    samples = collect_samples(parts, spec)
    tr, va = stratified_split(samples, recipe.val_fraction, recipe.seed)
    result = train(samples, spec, recipe, tmp_path / "es", train_idx=tr, val_idx=va)
    # Highest validation ROC-AUC; among equal ones, the lowest validation loss.
    best = max(result.history, key=lambda h: (h.roc_auc, -h.val_loss))
    assert result.best_epoch == best.epoch
    if result.stopped_early:
        assert len(result.history) == result.best_epoch + 1
    assert torch.load(result.best, weights_only=True)["epoch"] == result.best_epoch


@pytest.mark.parametrize(
    ("setup", "args", "message"),
    [
        ("empty", [], "no images found"),
        ("one_class", [], "every sample is 'ok'; training needs both ok and ng examples"),
        ("missing", [], "no such folder; expected a folder of ok/ + ng/<defect>/ folders"),
        ("file", [], "data: is a file; expected a folder of ok/ + ng/<defect>/ folders"),
        ("parts", ["--device", "cuda"], "device=cuda but torch finds no CUDA GPU"),
        ("parts", ["--backbone", "resnet19"], "unknown backbone 'resnet19'"),
        ("parts", ["--weights", "/nonexistent.pth"], "--weights /nonexistent.pth: no such file"),
        ("pipe", [], "ok/fifo.png: unreadable: a named pipe (FIFO), not a regular file"),
        # Backbones with a fixed or smallest input size, refused before --out is made (FAST trains at 32x32).
        ("parts", ["--backbone", "vit_b_16"], "--backbone vit_b_16 cannot take 32x32 input (Wrong image height! Expected 224 but got 32!); give --size 224"),
        ("parts", ["--backbone", "swin_t"], "--backbone swin_t cannot take 32x32 input (The size of tensor a"),
        ("parts", ["--backbone", "inception_v3"], ("input size per channel: (1 x 1). Kernel size: (3 x 3). Kernel size can't be greater "
                                                   "than actual input size); give --size 299 (its ImageNet size; it takes at least 75x75)")),
        ("parts", ["--backbone", "vit_b_16", "--lr-find"], "--backbone vit_b_16 cannot take 32x32 input (Wrong image height!"),
    ],
)
def test_bad_input_is_a_clear_error_with_exit_2_and_nothing_written(
    setup: str, args: list[str], message: str, parts: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    if setup == "parts" and torch.cuda.is_available() and "cuda" in args:
        pytest.skip("a GPU is present")
    data = {"parts": parts, "missing": tmp_path / "nope"}.get(setup, tmp_path / "data")
    if setup == "empty":
        data.mkdir()
    if setup == "one_class":
        shutil.copytree(parts / "ok", data / "ok")
    if setup == "file":
        data.write_text("frame,roi1\n")
    if setup == "pipe":
        shutil.copytree(parts, data)
        fifo(data / "ok" / "fifo.png")
    out = tmp_path / "out"
    code, _stdout, err = train_cli(capsys, str(data), "--out", str(out), "--epochs", "1", *FAST, *args)
    assert code == 2
    assert message in err
    assert "Traceback" not in err
    assert not out.exists()


def test_an_existing_run_is_not_overwritten(trained: Path, parts: Path, capsys: pytest.CaptureFixture[str]) -> None:
    before = (trained / "best.pt").read_bytes()
    code, _, err = train_cli(capsys, str(parts), "--out", str(trained), "--epochs", "1", *FAST)
    assert code == 2 and "already holds a training run" in err
    assert (trained / "best.pt").read_bytes() == before


def test_mixed_supervision_learns_from_masks_and_exports_a_plain_classifier(
    parts: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "seg"
    code, _, err = train_cli(capsys, str(parts), "--out", str(out), "--epochs", "1", "--seg-weight", "2", *FAST)
    assert code == 0, err
    assert '"defect_masks": 6' in err  # the fixture has masks for 6 NG tiles
    assert TrainRecipe.model_validate(torch.load(out / "best.pt", weights_only=True)["recipe"]).seg_weight == 2
    code, _, err = export_cli(capsys, str(out / "best.pt"), "--out", str(tmp_path / "m.onnx"))
    assert code == 0, err  # the parity gate compares torch (eval) and onnxruntime
    import onnxruntime as ort

    session = ort.InferenceSession(str(tmp_path / "m.onnx"), providers=["CPUExecutionProvider"])
    assert [o.name for o in session.get_outputs()] == ["logits"]
    assert session.run(None, {"input": np.zeros((3, 1, 32, 32), np.float32)})[0].shape == (3, 2)


def test_mixed_supervision_without_masks_is_refused_before_anything_is_written(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data = write_labelled_folder(tmp_path / "data", n_ok=8, n_ng=8, width=48, height=48)
    code, _, err = train_cli(capsys, str(data), "--out", str(tmp_path / "out"), "--epochs", "1", "--seg-weight", "1", *FAST)
    assert code == 2 and "Traceback" not in err
    assert f"seg_weight=1.0 needs defect masks: expected PNG files under {data / 'masks'}/" in err
    assert not (tmp_path / "out").exists()


def test_a_weight_average_is_what_is_validated_kept_and_exported(parts: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "ema"
    code, _, err = train_cli(capsys, str(parts), "--out", str(out), "--epochs", "2", "--ema-decay", "0.9", *FAST)
    assert code == 0, err
    best = torch.load(out / "best.pt", weights_only=True)
    last = torch.load(out / "last.pt", weights_only=True)
    raw, averaged = last["model_state"], last["state_dict"]
    assert set(raw) == set(averaged)  # the plain model's keys: export needs no knowledge of the average
    assert not torch.equal(raw["fc.weight"], averaged["fc.weight"])
    if best["epoch"] == last["epoch"]:
        assert torch.equal(best["state_dict"]["fc.weight"], averaged["fc.weight"])
    code, _, err = export_cli(capsys, str(out / "best.pt"), "--out", str(tmp_path / "m.onnx"))
    assert code == 0, err


def _grown(mask: np.ndarray, px: int = 5) -> np.ndarray:
    """`mask` grown by `px` pixels each way (boolean)."""
    import cv2

    return cv2.dilate(mask.astype(np.uint8), np.ones((2 * px + 1, 2 * px + 1), np.uint8)) > 0


def test_pasted_defects_make_ng_parts_of_ok_ones_from_training_donors_only(tmp_path: Path) -> None:
    from inspector.training.data import ImageCache
    from inspector.training.recipe import Augment
    from inspector.training.trainer import Batches

    root = square_part(tmp_path)  # ok0, ok1 plain; ng/crack/sq.png with a masked bright square; nomask.png without a mask
    spec = PreprocessSpec(color="gray", resize={"width": 32, "height": 32})
    samples = collect_samples(root, spec)
    cache = ImageCache(spec)
    cache.load([s.path for s in samples.samples])
    cache.load_masks(samples.samples, root)
    names = [s.path.name for s in samples.samples]
    ok = [i for i, n in enumerate(names) if n.startswith("ok")]
    recipe = TrainRecipe(augment=Augment(hflip=False, vflip=False, rotate_deg=0, brightness=0, contrast=0, roi_jitter=0, paste_defects=1.0))
    everything = np.arange(len(names))

    batch = Batches(samples, cache, recipe, everything).augmented(np.array(ok), np.random.default_rng(0))
    assert batch.y.tolist() == [samples.classes.index("ng")] * len(ok)
    square = cache.crop_mask(samples.samples[names.index("sq.png")]) > 127
    for row in batch.x.numpy():
        # The donor's bright square, where its mask is; the OK part's flat grey well away from it.
        assert row[0][square].min() > row[0][~square].max() - 1e-6
        assert row[0][~_grown(square)].std() < 1e-6

    # The only masked defect is in validation: nothing is pasted, the OK parts stay OK and unchanged.
    train_only = np.array([i for i in everything if names[i] != "sq.png"])
    kept = Batches(samples, cache, recipe, train_only)
    batch = kept.augmented(np.array(ok), np.random.default_rng(0))
    assert batch.y.tolist() == [samples.classes.index("ok")] * len(ok)
    assert torch.equal(batch.x, kept.plain(np.array(ok)))


def test_with_pasting_the_loss_is_weighted_by_the_classes_as_trained(tmp_path: Path) -> None:
    from inspector.training.data import ImageCache
    from inspector.training.recipe import Augment
    from inspector.training.trainer import Batches, make_loss

    root = square_part(tmp_path)  # 2 OK, 2 NG (crack), one of them with a mask: the one donor
    spec = PreprocessSpec(color="gray", resize={"width": 32, "height": 32})
    samples = collect_samples(root, spec)
    cache = ImageCache(spec)
    cache.load([s.path for s in samples.samples])
    cache.load_masks(samples.samples, root)
    everything = np.arange(len(samples.samples))
    ok, ng = samples.classes.index("ok"), samples.classes.index("ng")
    recipe = TrainRecipe(augment=Augment(paste_defects=0.75))
    batches = Batches(samples, cache, recipe, everything)

    counts = batches.class_counts(everything)
    assert counts[ok] == pytest.approx(0.5) and counts[ng] == pytest.approx(3.5)  # 2 OK, three quarters of them pasted
    rng = np.random.default_rng(0)
    drawn = np.mean([np.bincount(batches.augmented(everything, rng).y.numpy(), minlength=2) for _ in range(400)], axis=0)
    np.testing.assert_allclose(drawn, counts, atol=0.1)  # what training sees, on average
    weight = make_loss(counts, recipe, torch.device("cpu")).weight
    assert weight is not None and weight[ok] / weight[ng] == pytest.approx(7.0)  # OK, now the minority, weighs more
    plain = Batches(samples, cache, recipe.model_copy(update={"augment": Augment(paste_defects=0.0)}), everything)
    assert plain.class_counts(everything).tolist() == [2.0, 2.0]


@pytest.mark.parametrize(("imbalance", "ok_over_ng"), [("loss", 1 / 3), ("both", 1.0)])
def test_with_the_sampler_on_the_loss_does_not_correct_the_labels_twice(tmp_path: Path, imbalance: str, ok_over_ng: float) -> None:
    from inspector.training.data import ImageCache
    from inspector.training.trainer import Batches, epoch_order, make_loss

    root = write_labelled_folder(tmp_path / "data", n_ok=12, n_ng=4, width=32, height=32)
    spec = PreprocessSpec(color="gray", resize={"width": 32, "height": 32})
    samples = collect_samples(root, spec)
    cache = ImageCache(spec)
    cache.load([s.path for s in samples.samples])
    everything = np.arange(len(samples.samples))
    ok = samples.classes.index("ok")
    recipe = TrainRecipe(imbalance=imbalance)
    counts = Batches(samples, cache, recipe, everything).class_counts(everything)
    rng = np.random.default_rng(0)
    drawn = np.mean([np.bincount(samples.targets[epoch_order(samples.targets, everything, recipe, rng)], minlength=2) for _ in range(400)], axis=0)
    np.testing.assert_allclose(drawn, counts, atol=0.25)  # the counts are what the epochs draw, labels 12 OK / 4 NG
    weight = make_loss(counts, recipe, torch.device("cpu")).weight
    assert weight is not None and float(weight[ok] / weight[1 - ok]) == pytest.approx(ok_over_ng)


def test_pasting_defects_without_masks_is_refused_before_anything_is_written(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    data = write_labelled_folder(tmp_path / "data", n_ok=8, n_ng=8, width=48, height=48)
    code, _, err = train_cli(capsys, str(data), "--out", str(tmp_path / "out"), "--epochs", "1", "--paste-defects", "0.5", *FAST)
    assert code == 2 and "Traceback" not in err
    assert f"augment.paste_defects=0.5 needs defect masks: expected PNG files under {data / 'masks'}/" in err
    assert not (tmp_path / "out").exists()


def test_with_tta_the_reported_figures_are_those_of_the_exported_model(parts: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from inspector.config import ModelSettings, Provider
    from inspector.model import OnnxClassifier
    from inspector.preprocess import Preprocessor
    from inspector.replay.metrics import roc_auc

    run = tmp_path / "r"
    code, out, err = train_cli(capsys, str(parts), "--out", str(run), "--epochs", "1", "--tta", "flips", *FAST)
    assert code == 0, err
    assert '"event": "tta_validated"' in err and "validation ROC-AUC" in out and "with test-time flips" in out
    summary = json.loads((run / "summary.json").read_text())
    final = json.loads((run / "metrics.json").read_text())["final"]
    ckpt = torch.load(run / "best.pt", weights_only=True)
    assert summary["tta"] == final["tta"] == ckpt["metrics"]["tta"] == "flips"
    assert summary["roc_auc"] == final["roc_auc"] == ckpt["metrics"]["roc_auc"]
    code, _, err = export_cli(capsys, str(run / "best.pt"), "--out", str(tmp_path / "m.onnx"))  # tta from the recipe
    assert code == 0, err
    clf = OnnxClassifier(tmp_path / "m.onnx", ModelSettings(providers=[Provider.CPU]))
    assert clf.manifest.info["tta_views"] == 4
    pre = Preprocessor(clf.spec)
    paths = [Path(v["path"]) for v in ckpt["validation"]]
    scores = [float(1 - clf.predict(pre(pre.decode(p.read_bytes())))[0, 0]) for p in paths]
    assert roc_auc(scores, ["/ng/" in p.as_posix() for p in paths]) == pytest.approx(summary["roc_auc"], abs=1e-9)


def test_group_by_holds_out_whole_parts(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    data = two_camera_parts(tmp_path / "data")
    code, _, err = train_cli(capsys, str(data), "--out", str(tmp_path / "r"), "--epochs", "1", "--group-by", r"(SN\d+)_cam", *FAST)
    assert code == 0, err
    ckpt = torch.load(tmp_path / "r" / "best.pt", weights_only=True)
    held = {Path(v["key"]).name for v in ckpt["validation"]}
    parts = {name.split("_")[0] for name in held}
    assert parts and all(f"{p}_cam1.png" in held and f"{p}_cam2.png" in held for p in parts)
    assert TrainRecipe.model_validate(ckpt["recipe"]).group_by == r"(SN\d+)_cam"


def test_resume_writes_only_into_the_checkpoints_own_folder(trained: Path, parts: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    other, run = tmp_path / "other", tmp_path / "run"
    shutil.copytree(trained, other)
    shutil.copytree(trained, run)
    before = run_files_bytes(other)
    for out in (other, tmp_path / "new"):
        code, _, err = train_cli(capsys, str(parts), "--out", str(out), "--resume", str(run / "last.pt"), "--epochs", "3")
        assert code == 2, err
        assert f"--resume {run / 'last.pt'} continues the run in {run}, and a resumed run writes only there; give --out {run}" in err
        assert "Traceback" not in err
    assert run_files_bytes(other) == before
    assert not (tmp_path / "new").exists()


def test_resume_of_a_finished_run_needs_more_epochs_and_changes_nothing(trained: Path, parts: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    run = tmp_path / "run"
    shutil.copytree(trained, run)
    before = run_files_bytes(run)
    code, _, err = train_cli(capsys, str(parts), "--out", str(run), "--resume", str(run / "last.pt"), "--epochs", "1")
    assert code == 2
    assert f"--epochs 1: the run in {run} has already run 2 epochs; --epochs must be more than 2 to extend it; nothing was changed" in err
    for more in ([], ["--epochs", "2"]):
        code, _, err = train_cli(capsys, str(parts), "--out", str(run), "--resume", str(run / "last.pt"), *more)
        assert code == 2
        assert "the run is complete: it has run all 2 of its epochs; give --epochs more than 2 to extend it; nothing was changed" in err
    assert run_files_bytes(run) == before


@pytest.mark.parametrize(
    ("kept", "message"),
    [
        (["last.pt", "metrics.json"], "already holds a training run (last.pt, metrics.json); choose another --out, or continue it with --resume"),
        (["train.yaml"], "already holds a training run (train.yaml); choose another --out (it has no last.pt to resume from)"),
        (["fold-1/", "fold-2/"], "already holds a training run (fold-1/, fold-2/); choose another --out; --resume "),
    ],
    ids=["interrupted", "config-only", "k-fold-interrupted"],
)
def test_any_part_of_a_run_keeps_a_new_run_out(
    kept: list[str], message: str, trained: Path, parts: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "out"
    for name in kept:
        if name.endswith("/"):
            shutil.copytree(trained, out / name)
        else:
            out.mkdir(exist_ok=True)
            shutil.copy(trained / name, out / name)
    before = run_files_bytes(out)
    code, _, err = train_cli(capsys, str(parts), "--out", str(out), "--epochs", "1", *FAST)
    assert code == 2 and message in err
    assert run_files_bytes(out) == before


def test_weights_from_an_earlier_run_start_a_new_one(trained: Path, parts: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = train_cli(capsys, str(parts), "--out", str(tmp_path / "r"), "--epochs", "1", "--weights", str(trained / "best.pt"), *FAST)
    assert code == 0, err
    logged = json.loads(next(line for line in err.splitlines() if '"event": "weights_loaded"' in line))
    assert logged["new"] == ["fc.weight", "fc.bias"] and logged["left_out"] == []


def test_an_out_inside_data_is_refused_before_anything_is_written(parts: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    data = tmp_path / "data"
    shutil.copytree(parts, data)
    for out, flags in ((data / "ok" / "run", []), (data, []), (data / "runs" / "lr", ["--lr-find"])):
        code, _, err = train_cli(capsys, str(data), "--out", str(out), "--epochs", "1", *FAST, *flags)
        assert code == 2
        assert f"--out {out}: inside DATA {data}; the run's plots (report images) would be read as images of DATA" in err
    assert run_files_bytes(data) == run_files_bytes(parts)


def test_rois_with_folder_labels_are_refused_before_anything_is_written(parts: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    cfg = tmp_path / "train.yaml"
    rois = "".join(f"    - {{name: {n}, box: {list(b)}, units: fraction}}\n" for n, b in GRID_ROIS.items())
    cfg.write_text(f"preprocess:\n  color: gray\n  rois:\n{rois}")
    code, _, err = train_cli(capsys, str(parts), "--config", str(cfg), "--out", str(tmp_path / "r"), "--epochs", "1", *FAST)
    assert code == 2
    assert "the ok/ and ng/ folders label whole frames, but preprocess.rois names 4 ROIs" in err and "labels CSV" in err
    assert not (tmp_path / "r").exists()


def test_resume_without_out_continues_in_the_checkpoints_folder_and_lr_find_does_not_resume(
    parts: Path, trained: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, _, err = train_cli(capsys, str(parts), "--resume", str(trained / "last.pt"))
    # Nothing to do for a finished run, but the folder it speaks of is the checkpoint's own: --out defaulted to it.
    assert code == 2 and f"{trained / 'last.pt'}: the run is complete" in err
    code, _, err = train_cli(capsys, str(parts), "--resume", str(trained / "last.pt"), "--lr-find")
    assert code == 2 and "--lr-find starts from the recipe's initial weights" in err
    code, _, err = train_cli(capsys, str(parts))
    assert code == 2 and "--out FOLDER is required" in err


def test_ctrl_c_says_how_to_continue(parts: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    def interrupted(*args: object, **kwargs: object) -> None:
        raise KeyboardInterrupt  # Ctrl-C once an epoch has written last.pt

    monkeypatch.setattr("inspector.training.run.finish", interrupted)
    out = tmp_path / "run"
    code, _, err = train_cli(capsys, str(parts), "--out", str(out), "--epochs", "1", *FAST)
    assert code == 130
    assert err.strip().splitlines()[-1] == f"inspector: interrupted; continue with: inspector train {parts} --resume {out / 'last.pt'}"


def _deeper(parts: Path, root: Path, scale: float, every: int = 1) -> Path:
    """A copy of `parts` with every `every`-th image written 16-bit, its values times `scale`."""
    import cv2

    for i, png in enumerate(sorted(parts.rglob("*.png"))):
        out = root / png.relative_to(parts)
        out.parent.mkdir(parents=True, exist_ok=True)
        img = cv2.imread(str(png), cv2.IMREAD_UNCHANGED)
        if i % every == 0 and "masks" not in png.parts:
            img = np.rint(img.astype(np.float64) * scale).astype(np.uint16)
        cv2.imwrite(str(out), img)
    return root


def test_a_mix_of_8_and_16_bit_images_is_refused_before_training(parts: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    data = _deeper(parts, tmp_path / "mixed", 257, every=8)
    out = tmp_path / "out"
    code, _, err = train_cli(capsys, str(data), "--out", str(out), "--epochs", "1", *FAST)
    assert code == 2 and "Traceback" not in err
    assert "the training images mix bit depths: 56 8-bit (" in err and "; 8 16-bit (" in err
    assert "ng/blowhole/" in err  # names files of each kind
    assert not out.exists()


def test_12_bit_frames_train_with_their_pixel_max_and_the_exported_model_carries_it(
    parts: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data = _deeper(parts, tmp_path / "twelve", 4095 / 255)
    out = tmp_path / "run"
    code, _, err = train_cli(capsys, str(data), "--out", str(out), "--epochs", "1", *FAST, "--clahe", "off", "--pixel-max", "4095")
    assert code == 0, err
    assert PreprocessSpec.from_json(torch.load(out / "best.pt", weights_only=True)["spec"]).pixel_max == 4095
    assert "pixel_max: 4095" in (out / "train.yaml").read_text()
    model = tmp_path / "model.onnx"
    code, _, err = export_cli(capsys, str(out / "best.pt"), "--out", str(model))
    assert code == 0, err
    from inspector.config import ModelSettings, Provider
    from inspector.model import OnnxClassifier

    assert OnnxClassifier(model, ModelSettings(providers=[Provider.CPU])).spec.pixel_max == 4095


def test_16_bit_data_without_pixel_max_records_65535_and_pixels_above_a_given_one_are_named(
    parts: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data = _deeper(parts, tmp_path / "sixteen", 257)
    out = tmp_path / "run"
    code, _, err = train_cli(capsys, str(data), "--out", str(out), "--epochs", "1", *FAST)
    assert code == 0, err
    assert PreprocessSpec.from_json(torch.load(out / "best.pt", weights_only=True)["spec"]).pixel_max == 65535
    code, _, err = train_cli(capsys, str(data), "--out", str(tmp_path / "r2"), "--epochs", "1", *FAST, "--pixel-max", "4095")
    assert code == 2 and "Traceback" not in err
    assert "64 image(s) do not fit preprocess.pixel_max 4095" in err and "ng/blowhole/blowhole_0001.png: 16-bit, pixel values up to" in err
    assert not (tmp_path / "r2").exists()
