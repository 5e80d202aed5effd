"""`inspector export --quantize int8`: a real quantized model behind the accuracy gate, or a refusal and no file."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import pytest

from inspector.cli import main
from inspector.errors import ModelError
from inspector.manifest import MANIFEST_KEY
from inspector.training.export import export_checkpoint
from tests.training.conftest import export_cli


def test_int8_export_passes_the_gate_and_records_it(trained: Path, parts: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "int8.onnx"
    code, stdout, err = export_cli(capsys, str(trained / "best.pt"), "--out", str(out), "--quantize", "int8", "--calibration-data", str(parts))
    assert code == 0, err
    assert "accuracy gate passed" in stdout and "precision int8" in stdout
    model = onnx.load(str(out))
    ops = {n.op_type for n in model.graph.node}
    assert {"QuantizeLinear", "DequantizeLinear"} <= ops  # QDQ format
    manifest = json.loads(next(p.value for p in model.metadata_props if p.key == MANIFEST_KEY))
    quant = manifest["info"]["quantization"]
    assert manifest["info"]["precision"] == "int8" and quant["weights"] == "int8, per channel"
    gate = quant["accuracy_gate"]
    assert gate["passed"] and gate["auc_drop"] <= 0.005 and gate["flip_rate"] <= 0.005 and gate["labelled"] == gate["images"] > 0
    # The daemon's path runs it: replay scores every part.
    assert main(["replay", str(parts), "--model", str(out), "--out", str(tmp_path / "r"), "--no-report"]) == 0
    scores = [json.loads(line)["score"] for line in (tmp_path / "r" / "decisions.jsonl").read_text().splitlines()]
    assert len(scores) == 64 and all(s is not None and 0.0 <= s <= 1.0 for s in scores)


def test_a_gate_failure_refuses_and_writes_nothing(trained: Path, parts: Path, tmp_path: Path) -> None:
    out = tmp_path / "int8.onnx"
    # A limit no quantized model can meet (ROC-AUC would have to rise by 1): the refusal path with real models.
    with pytest.raises(ModelError, match="INT8 export refused by the accuracy gate: ROC-AUC drops by") as info:
        export_checkpoint(trained / "best.pt", out, quantize="int8", calibration_data=parts, max_auc_drop=-1.0)
    assert "nothing was written" in str(info.value)
    assert not out.exists() and not list(tmp_path.glob(".int8.onnx*"))


def test_quantize_needs_calibration_data_and_excludes_fp16(trained: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = export_cli(capsys, str(trained / "best.pt"), "--out", str(tmp_path / "m.onnx"), "--quantize", "int8")
    assert code == 2 and "--quantize int8 needs --calibration-data DIR" in err
    code, _, err = export_cli(capsys, str(trained / "best.pt"), "--out", str(tmp_path / "m.onnx"), "--quantize", "int8", "--fp16",
                              "--calibration-data", str(tmp_path))
    assert code == 2 and "choose one" in err
    assert not (tmp_path / "m.onnx").exists()


def test_calibration_batches_skip_unreadable_files(parts: Path, tmp_path: Path) -> None:
    from inspector.preprocess import PreprocessSpec
    from inspector.training.quantize import calibration_batches

    (tmp_path / "bad.png").write_bytes(b"not a png")
    frames = [tmp_path / "bad.png", *sorted(parts.rglob("ok/*.png"))[:3]]
    batches = calibration_batches(PreprocessSpec(color="gray", resize={"width": 32, "height": 32}), frames)
    assert len(batches) == 3 and all(b.shape == (1, 1, 32, 32) and b.dtype == np.float32 for b in batches)
