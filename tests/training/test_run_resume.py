"""Stopping and resuming `inspector train`: a cross-validation completes from any fold, a run ended at fewer epochs stays
ended, one-cycle runs keep their epochs, SIGTERM stops as Ctrl-C does, and --resume names the flags it refuses."""

from __future__ import annotations

import json
import os
import shlex
import shutil
import signal
import time
from pathlib import Path
from typing import Any

import pytest
import torch

from inspector.training import run as run_mod
from tests.training.conftest import FAST, run_files_bytes, train_cli

METRICS = ("roc_auc", "accuracy", "ng_recall_at_target", "false_reject_rate_at_target")


def _stop_in(monkeypatch: pytest.MonkeyPatch, folder: str, epoch: int) -> None:
    """Ctrl-C while training into a folder named `folder`: once its epoch `epoch` has written last.pt, or with epoch 0 during
    its first epoch (its folder made, nothing in it yet)."""
    real = run_mod.train

    def train(*args: Any, **kwargs: Any) -> Any:
        out_dir = args[3]
        if out_dir.name == folder:
            if epoch == 0:
                out_dir.mkdir(parents=True, exist_ok=True)
                raise KeyboardInterrupt

            def on_epoch(m: Any) -> None:
                if m.epoch == epoch:
                    raise KeyboardInterrupt

            kwargs["on_epoch"] = on_epoch
        return real(*args, **kwargs)

    monkeypatch.setattr(run_mod, "train", train)


def _interrupted(capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, folder: str, epoch: int, *argv: str) -> str:
    """`inspector train ARGV` stopped by Ctrl-C in `folder` at `epoch` (as `_stop_in`): exit 130; its stderr."""
    with monkeypatch.context() as m:
        _stop_in(m, folder, epoch)
        code, _, err = train_cli(capsys, *argv)
    assert code == 130, err
    return err


def _continue_with(err: str) -> list[str]:
    """The arguments of the command that the interruption message says continues the run."""
    last = err.strip().splitlines()[-1]
    assert "; continue with: inspector train " in last, last
    return shlex.split(last.split("; continue with: inspector train ")[1])  # as a shell would read it, pasted


def _same_cross_validation(expected: Path, got: Path, folds: int) -> None:
    """cv.json and train.yaml in `got` as an uninterrupted run wrote them in `expected`."""
    want, have = (json.loads((d / "cv.json").read_text()) for d in (expected, got))
    assert have["folds"] == want["folds"] == folds
    for key in METRICS:
        assert (have[key] is None) == (want[key] is None), key
        if want[key] is not None:
            assert have[key]["per_fold"] == pytest.approx(want[key]["per_fold"], rel=1e-5), key
            assert have[key]["mean"] == pytest.approx(want[key]["mean"], rel=1e-5), key
    assert have["checkpoints"] == [str(got / f"fold-{k}" / "best.pt") for k in range(1, folds + 1)]
    assert (got / "train.yaml").read_text() == (expected / "train.yaml").read_text()


def test_an_interrupted_cross_validation_resumes_to_what_an_uninterrupted_one_writes(
    parts: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    flags = ["--folds", "3", "--epochs", "2", *FAST]
    straight, cut = tmp_path / "straight", tmp_path / "cv"
    code, _, err = train_cli(capsys, str(parts), "--out", str(straight), *flags)
    assert code == 0, err
    err = _interrupted(capsys, monkeypatch, "fold-2", 1, str(parts), "--out", str(cut), *flags)
    assert err.strip().splitlines()[-1] == (
        f"inspector: interrupted; continue with: inspector train {parts} --resume {cut / 'fold-2' / 'last.pt'}"
    )
    assert not (cut / "fold-3").exists() and not (cut / "cv.json").exists()
    other = tmp_path / "cv-other"  # the same stopped cross-validation, resumed below from another fold into its own folder
    shutil.copytree(cut, other)
    fold_1 = run_files_bytes(cut / "fold-1")

    code, out, err = train_cli(capsys, *_continue_with(err))
    assert code == 0, err
    assert "3-fold cross-validation: ROC-AUC" in out and f"summary: {cut / 'cv.json'}" in out
    assert run_files_bytes(cut / "fold-1") == fold_1  # finished before: kept as it was
    assert [e["epoch"] for e in json.loads((cut / "fold-2" / "metrics.json").read_text())["epochs"]] == [1, 2]
    assert (cut / "fold-3" / "report.html").is_file()
    _same_cross_validation(straight, cut, 3)

    # From the finished fold 1, --out the cross-validation's folder: fold 2 continues from its last.pt, fold 3 starts.
    code, out, err = train_cli(capsys, str(parts), "--resume", str(other / "fold-1" / "last.pt"), "--out", str(other))
    assert code == 0, err
    assert f"summary: {other / 'cv.json'}" in out
    _same_cross_validation(straight, other, 3)

    # A complete cross-validation resumes only with more epochs.
    before = run_files_bytes(cut)
    code, _, err = train_cli(capsys, str(parts), "--resume", str(cut / "fold-3" / "last.pt"))
    assert code == 2
    assert (f"the cross-validation in {cut} is complete: each of its 3 folds has run its 2 epochs or stopped early, and cv.json "
            "is written; give --epochs more than 2 to extend every fold; nothing was changed") in err
    assert run_files_bytes(cut) == before


def test_a_cross_validation_stopped_in_a_folds_first_epoch_starts_again_or_continues_from_the_fold_before(
    parts: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    flags = ["--folds", "2", "--epochs", "1", *FAST]
    cv = tmp_path / "cv"
    err = _interrupted(capsys, monkeypatch, "fold-1", 0, str(parts), "--out", str(cv), *flags)
    assert err.strip().splitlines()[-1] == "inspector: interrupted"  # no epoch ended: nothing to resume
    err = _interrupted(capsys, monkeypatch, "fold-2", 0, str(parts), "--out", str(cv), *flags)  # the same command starts it again
    assert err.strip().splitlines()[-1].endswith(f"--resume {cv / 'fold-1' / 'last.pt'}")  # fold 2 has no last.pt yet
    code, _, err = train_cli(capsys, *_continue_with(err))
    assert code == 0, err
    summary = json.loads((cv / "cv.json").read_text())
    assert summary["folds"] == 2 and len(summary["roc_auc"]["per_fold"]) == 2
    assert summary["checkpoints"] == [str(cv / "fold-1" / "best.pt"), str(cv / "fold-2" / "best.pt")]
    assert (cv / "train.yaml").is_file() and (cv / "fold-2" / "report.html").is_file()


def test_a_fold_whose_validation_samples_are_not_the_splits_is_not_resumed(
    parts: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    cv = tmp_path / "cv"
    err = _interrupted(capsys, monkeypatch, "fold-1", 1, str(parts), "--out", str(cv), "--folds", "2", "--epochs", "2", *FAST)
    last = cv / "fold-1" / "last.pt"
    ckpt = torch.load(last, weights_only=True)
    ckpt["validation"] = ckpt["validation"][1:]  # as if the folds had been split otherwise
    torch.save(ckpt, last)
    before = run_files_bytes(cv)
    code, _, err = train_cli(capsys, str(parts), "--resume", str(last))
    assert code == 2
    n = len(ckpt["validation"])
    assert f"{last}: fold 1 was started with {n} validation samples, but the split of this data and recipe gives fold 1 {n + 1}" in err
    assert "this cross-validation cannot be resumed" in err and "nothing was changed" in err
    assert run_files_bytes(cv) == before


def test_a_run_ended_at_fewer_epochs_stays_ended(
    parts: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    run = tmp_path / "run"
    err = _interrupted(capsys, monkeypatch, "run", 1, str(parts), "--out", str(run), "--epochs", "4", *FAST)
    code, out, err = train_cli(capsys, str(parts), "--resume", str(run / "last.pt"), "--epochs", "1")
    assert code == 0, err
    assert out.startswith("best epoch 1/1")
    assert torch.load(run / "last.pt", weights_only=True)["recipe"]["epochs"] == 1
    before = run_files_bytes(run)
    code, _, err = train_cli(capsys, str(parts), "--resume", str(run / "last.pt"))
    assert code == 2
    assert "the run is complete: it has run all 1 of its epochs; give --epochs more than 1 to extend it; nothing was changed" in err
    assert run_files_bytes(run) == before


def test_a_one_cycle_run_keeps_its_epochs(
    parts: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    done = tmp_path / "done"
    code, _, err = train_cli(capsys, str(parts), "--out", str(done), "--epochs", "1", "--schedule", "onecycle", *FAST)
    assert code == 0, err
    before = run_files_bytes(done)
    for more in (["--epochs", "2"], []):
        code, _, err = train_cli(capsys, str(parts), "--resume", str(done / "last.pt"), *more)
        assert code == 2, err
        assert "its one-cycle schedule (schedule onecycle) ended at epoch 1, planned as its last, and cannot be extended" in err
        assert f"--weights {done / 'best.pt'} with a new --out" in err and "nothing was changed" in err
    assert run_files_bytes(done) == before
    # Stopped midway, it finishes as planned: its cycle cannot be stretched or cut.
    cut = tmp_path / "cut"
    err = _interrupted(capsys, monkeypatch, "cut", 1, str(parts), "--out", str(cut), "--epochs", "2", "--schedule", "onecycle", *FAST)
    before = run_files_bytes(cut)
    code, _, err = train_cli(capsys, str(parts), "--resume", str(cut / "last.pt"), "--epochs", "3")
    assert code == 2
    assert "follows a one-cycle schedule (schedule onecycle) planned over its 2 epochs" in err
    assert run_files_bytes(cut) == before
    code, _, err = train_cli(capsys, str(parts), "--resume", str(cut / "last.pt"))
    assert code == 0, err
    assert [e["epoch"] for e in json.loads((cut / "metrics.json").read_text())["epochs"]] == [1, 2]


def test_sigterm_stops_training_as_ctrl_c_does(
    parts: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    def not_handled(signum: int, frame: object) -> None:
        raise RuntimeError("SIGTERM reached the test's own handler: train left it unhandled")

    def terminated(*args: object, **kwargs: object) -> None:
        os.kill(os.getpid(), signal.SIGTERM)  # once an epoch has written last.pt
        time.sleep(30)  # the signal's handler interrupts this

    monkeypatch.setattr(run_mod, "finish", terminated)
    out = tmp_path / "run"
    previous = signal.signal(signal.SIGTERM, not_handled)
    try:
        code, _, err = train_cli(capsys, str(parts), "--out", str(out), "--epochs", "1", *FAST)
        assert signal.getsignal(signal.SIGTERM) is not_handled  # the command put the handler back
    finally:
        signal.signal(signal.SIGTERM, previous)
    assert code == 143, err
    assert err.strip().splitlines()[-1] == (
        f"inspector: interrupted by SIGTERM; continue with: inspector train {parts} --resume {out / 'last.pt'}"
    )


def test_resume_refuses_each_changed_setting_naming_the_flag(
    trained: Path, parts: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    run = tmp_path / "run"
    shutil.copytree(trained, run)
    before = run_files_bytes(run)
    for flags, named in (
        (["--classes", "multi"], "--classes multi"),
        (["--threads", "2"], "--threads (train.threads)"),
        (["--no-hflip"], "--hflip (train.augment.hflip)"),
        (["--size", "64"], "--size (preprocess.resize.height, preprocess.resize.width)"),
    ):
        code, _, err = train_cli(capsys, str(parts), "--resume", str(run / "last.pt"), "--epochs", "3", *flags)
        assert code == 2, err
        assert f"only --epochs may change it (got {named})" in err
    assert run_files_bytes(run) == before


def test_extending_a_cross_validation_needs_each_folds_last_pt_and_drops_the_old_cv_json(
    parts: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    cv = tmp_path / "my cv"  # a space: the printed command must survive being pasted into a shell
    code, _, err = train_cli(capsys, str(parts), "--out", str(cv), "--folds", "2", "--epochs", "1", *FAST)
    assert code == 0, err
    moved = tmp_path / "fold-2-last.pt"
    (cv / "fold-2" / "last.pt").rename(moved)
    before = run_files_bytes(cv)
    code, _, err = train_cli(capsys, str(parts), "--resume", str(cv / "fold-1" / "last.pt"), "--epochs", "2")
    assert code == 2 and f"{cv / 'fold-2'}: fold 2 finished at 1 epoch and has no last.pt to extend it to 2" in err
    assert run_files_bytes(cv) == before, "refused before anything changed"
    moved.rename(cv / "fold-2" / "last.pt")
    err = _interrupted(capsys, monkeypatch, "fold-2", 2, str(parts), "--resume", str(cv / "fold-1" / "last.pt"), "--epochs", "2")
    assert not (cv / "cv.json").exists(), "its 1-epoch figures would contradict fold 1, extended to 2 epochs"
    command = _continue_with(err)
    assert command[command.index("--resume") + 1] == str(cv / "fold-2" / "last.pt")
    code, _, err = train_cli(capsys, *command)
    assert code == 0, err
    assert [e["epoch"] for e in json.loads((cv / "fold-2" / "metrics.json").read_text())["epochs"]] == [1, 2]
    # Fold 2 stopped after its 2nd epoch, before its report: not kept with the report of its 1-epoch end, but finished.
    fold_2 = json.loads((cv / "fold-2" / "summary.json").read_text())
    assert fold_2["epochs_run"] == 2
    assert json.loads((cv / "cv.json").read_text())["accuracy"]["per_fold"][1] == fold_2["accuracy"]


def test_stopped_while_writing_cv_json_the_hint_still_continues_it(
    parts: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    cv = tmp_path / "cv"

    def interrupted(*_args: Any, **_kwargs: Any) -> None:
        raise KeyboardInterrupt

    with monkeypatch.context() as m:
        m.setattr(run_mod, "_write_config", interrupted)  # every fold done, the final files not yet written
        code, _, err = train_cli(capsys, str(parts), "--out", str(cv), "--folds", "2", "--epochs", "1", *FAST)
    assert code == 130
    assert not (cv / "cv.json").exists()
    code, out, err = train_cli(capsys, *_continue_with(err))
    assert code == 0, err
    assert (cv / "cv.json").is_file() and (cv / "train.yaml").is_file() and "2-fold cross-validation" in out
