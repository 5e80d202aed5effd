"""The accuracy gate's arithmetic on scores built so that the answer is known."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest

from inspector.config import ModelSettings, Provider
from inspector.gate import AccuracyGate, compare, frame_scores, golden_set
from inspector.model import OnnxClassifier
from inspector.preprocess import FrameSize
from inspector.samples import write_labelled_folder
from tests.conftest import GRAY64, _dark_spot_module, gray_png

LABELS = ["ok", "ok", "ok", "ng", "ng", "ng"]
REFERENCE = [0.1, 0.2, 0.3, 0.7, 0.8, 0.9]


def test_identical_scores_pass_with_nothing_lost() -> None:
    gate = compare(REFERENCE, REFERENCE, LABELS, threshold=0.5)
    assert gate.passed and gate.auc_drop == 0.0 and gate.flips == 0 and gate.problem() == "passed"


def test_one_flip_in_six_is_refused_naming_the_count() -> None:
    candidate = [0.1, 0.2, 0.55, 0.7, 0.8, 0.9]  # the OK at 0.3 now crosses 0.5; ranking unchanged
    gate = compare(REFERENCE, candidate, LABELS, threshold=0.5)
    assert gate.auc_drop == 0.0 and gate.flips == 1 and gate.flip_rate == pytest.approx(1 / 6)
    assert not gate.passed and "1 of 6 verdicts flip at threshold 0.5" in gate.problem()


def test_a_ranking_loss_is_an_auc_drop() -> None:
    candidate = [0.1, 0.2, 0.75, 0.7, 0.8, 0.9]  # one OK now outranks one NG: AUC 8/9; no verdict flips at 0.95
    gate = compare(REFERENCE, candidate, LABELS, threshold=0.95)
    assert gate.auc_drop == pytest.approx(1 - 8 / 9) and gate.flips == 0
    assert not gate.passed and "ROC-AUC drops by 0.1111 (1.0000 -> 0.8889)" in gate.problem()


def test_unreadable_frames_are_left_out_and_labels_are_required() -> None:
    gate = compare([None, *REFERENCE[1:]], REFERENCE, LABELS, threshold=0.5)
    assert gate.images == 5 and gate.passed
    unlabelled = compare(REFERENCE, REFERENCE, [None] * 6, threshold=0.5)
    assert not unlabelled.passed and "needs labelled OK and NG images" in unlabelled.problem()


# --- on real exported models and real image files -----------------------------------------------


@pytest.fixture(scope="module")
def tile_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The dark-spot detector trained, as its manifest says, on 64x64 frames."""
    from inspector.training.onnx_export import export_classifier

    path = tmp_path_factory.mktemp("gate") / "tile.onnx"
    spec = GRAY64.model_copy(update={"frame_size": FrameSize(min_width=64, max_width=64, min_height=64, max_height=64)})
    export_classifier(_dark_spot_module(), spec, ("ok", "ng"), path)
    return path


def _gate(model: Path, golden: Path) -> AccuracyGate:
    """The gate as the daemon runs it for a reduced-precision backend: both runtimes' scores of the golden set."""
    clf = OnnxClassifier(model, ModelSettings(providers=[Provider.CPU], warmup_runs=0))
    frames, labels = golden_set(golden)
    return compare(frame_scores(clf, clf.spec, frames), frame_scores(clf, clf.spec, frames), labels, threshold=0.5)


def test_golden_frames_the_model_rejects_are_counted_per_reason_not_taken_for_missing_labels(tile_model: Path, tmp_path: Path) -> None:
    golden = write_labelled_folder(tmp_path / "golden", n_ok=6, n_ng=6, width=48, height=48, seed=4)  # another camera mode
    gate = _gate(tile_model, golden)
    assert not gate.passed and gate.images == 0 and gate.skipped == {"frame_size": 12}
    problem = gate.problem()
    assert "needs labelled OK and NG images" not in problem  # they are labelled: none of them could be judged
    assert problem.startswith("no golden frame could be judged, so there is nothing to compare; 12 golden frames skipped: frame_size 12 (")
    assert "48x48 frame; this model was trained on 64x64 frames)" in problem
    assert problem.endswith("golden frames must be of the sizes the model was trained on (its manifest's preprocess.frame_size)")


def test_frames_it_can_judge_are_judged_as_before_and_the_skipped_ones_are_named(tile_model: Path, tiles: Path, tmp_path: Path) -> None:
    golden = tmp_path / "golden"
    shutil.copytree(tiles / "ok", golden / "ok")
    shutil.copytree(tiles / "ng", golden / "ng")
    before = _gate(tile_model, golden)
    gray_png(golden / "ok" / "big.png", np.full((128, 128), 150, np.uint8))
    gray_png(golden / "ng" / "crack" / "small.png", np.full((32, 32), 150, np.uint8))
    (golden / "ok" / "cut.png").write_bytes((golden / "ok" / "ok_0000.png").read_bytes()[:100])
    gate = _gate(tile_model, golden)
    assert gate.passed and gate.images == 20 and gate.skipped == {"frame_size": 2, "truncated": 1}
    figures = ("images", "labelled", "roc_auc_reference", "roc_auc_candidate", "flips", "max_abs_score_diff", "passed")
    assert {k: gate.to_dict()[k] for k in figures} == {k: before.to_dict()[k] for k in figures}
    assert gate.to_dict()["skipped"] == {"frame_size": 2, "truncated": 1}  # what the daemon logs with accuracy_gate_passed
    assert gate.skipped_text().startswith("3 golden frames skipped: frame_size 2, truncated 1 (")
