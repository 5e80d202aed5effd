"""`model.backend: openvino`: the same ONNX file and manifest on OpenVINO's CPU plugin, the bf16 gate, and the fallback."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml

from inspector.cli import main
from inspector.config import ModelSettings, load_settings
from inspector.errors import ModelError
from inspector.model import OnnxClassifier, load_classifier
from inspector.pipeline import build_pipeline

openvino = pytest.importorskip("openvino")
HAS_BF16 = "BF16" in openvino.Core().get_property("CPU", "OPTIMIZATION_CAPABILITIES")


def _decisions(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "decisions.jsonl").read_text().splitlines()]


def test_openvino_judges_like_onnxruntime_and_says_so_in_every_record(
    models: dict[str, Path], tiles: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    cfg = tmp_path / "ov.yaml"
    cfg.write_text(yaml.safe_dump({"model": {"backend": "openvino", "openvino_precision": "fp32"}}))
    assert main(["replay", str(tiles), "--model", str(models["dark"]), "--config", str(cfg), "--out", str(tmp_path / "ov"), "--no-report"]) == 0
    assert main(["replay", str(tiles), "--model", str(models["dark"]), "--out", str(tmp_path / "ort"), "--no-report"]) == 0
    capsys.readouterr()
    ov_d, ort_d = _decisions(tmp_path / "ov"), _decisions(tmp_path / "ort")
    assert {d["model"]["provider"] for d in ov_d} == {"openvino-cpu-fp32"}
    assert [d["verdict"] for d in ov_d] == [d["verdict"] for d in ort_d]
    np.testing.assert_allclose([d["score"] for d in ov_d], [d["score"] for d in ort_d], atol=1e-5)


def test_multi_roi_batches_run_in_one_request(models: dict[str, Path]) -> None:
    ov_clf = load_classifier(models["rois"], ModelSettings(backend="openvino", openvino_precision="fp32"))
    ref = OnnxClassifier(models["rois"], ModelSettings(providers=["cpu"]))
    x = np.random.default_rng(0).random((4, 1, 48, 48), np.float32)
    np.testing.assert_allclose(ov_clf.predict(x), ref.predict(x), atol=1e-5)


@pytest.mark.skipif(not HAS_BF16, reason="this CPU has no AMX/AVX512-BF16")
def test_bf16_runs_behind_the_accuracy_gate(models: dict[str, Path], tiles: Path, tmp_path: Path) -> None:
    ok_only = tmp_path / "ok_only"
    shutil.copytree(tiles / "ok", ok_only / "ok")
    settings = load_settings(None, model={"backend": "openvino", "golden": str(tiles), "providers": ["cpu"]})
    pipeline = build_pipeline(settings, model_path=models["dark"])
    assert pipeline.classifier.provider == "openvino-cpu-bf16"
    # A golden set without NG parts cannot show that bf16 keeps the ROC-AUC: refused, naming why.
    settings = load_settings(None, model={"backend": "openvino", "golden": str(ok_only), "providers": ["cpu"]})
    with pytest.raises(ModelError, match="openvino-cpu-bf16 refused by the accuracy gate .* needs labelled OK and NG images"):
        build_pipeline(settings, model_path=models["dark"])


def test_bf16_without_a_golden_set_is_refused_and_auto_falls_to_fp32(models: dict[str, Path]) -> None:
    if HAS_BF16:
        with pytest.raises(ModelError, match="bf16 needs model.golden"):
            load_classifier(models["dark"], ModelSettings(backend="openvino", openvino_precision="bf16"))
    assert load_classifier(models["dark"], ModelSettings(backend="openvino")).provider == "openvino-cpu-fp32"


def test_without_the_openvino_package_onnxruntime_runs_it_with_one_warning(models: dict[str, Path], tiles: Path) -> None:
    # The package is installed here; hiding it from the import system is the only way to see the line PC without it.
    script = (
        "import sys\n"
        "sys.modules['openvino'] = None\n"
        "from pathlib import Path\n"
        "from inspector.config import ModelSettings\n"
        "from inspector.model import load_classifier\n"
        "from inspector.logs import configure_logging\n"
        "configure_logging('info', 'json')\n"
        f"c = load_classifier(Path({str(models['dark'])!r}), ModelSettings(backend='openvino', providers=['cpu']))\n"
        "print('PROVIDER', c.provider)\n"
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120, check=False)
    assert "PROVIDER cpu" in done.stdout, done.stderr
    warnings = [json.loads(line) for line in done.stderr.splitlines() if "backend_unavailable" in line]
    assert len(warnings) == 1 and warnings[0]["falling_back_to"] == "onnxruntime" and "inspector[openvino]" in warnings[0]["reason"]
