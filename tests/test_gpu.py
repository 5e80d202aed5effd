"""GPU execution: the TensorRT engine cache and its invalidation, provider options, fp16 behind the gate, IO binding.

The cache and option tests run everywhere; the tests marked `gpu` need an NVIDIA GPU and skip without one.
"""

from __future__ import annotations

import json
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
import structlog
from structlog.testing import capture_logs

from inspector.config import ModelSettings, load_settings
from inspector.errors import ModelError
from inspector.gpu import (
    KEY_FILE,
    BoundRunner,
    EngineKey,
    engine_cache,
    gpu_identity,
    profile_shapes,
    tensorrt_options,
)
from inspector.model import OnnxClassifier
from inspector.pipeline import build_pipeline

KEY = EngineKey(
    model_sha256="a" * 64, onnxruntime="1.31.1", tensorrt="10.9.0", gpu="NVIDIA H100 80GB HBM3", compute_capability="9.0",
    precision="fp16", profile="input:1x1x64x64",
)
GPU = gpu_identity() is not None and "CUDAExecutionProvider" in ort.get_available_providers()
needs_gpu = pytest.mark.skipif(not GPU, reason="no NVIDIA GPU with CUDA here")
LOG = structlog.get_logger("test")


def test_the_engine_cache_is_one_folder_per_key_and_says_what_it_holds(tmp_path: Path) -> None:
    with capture_logs() as logs:
        folder = engine_cache(tmp_path, KEY, LOG)
        again = engine_cache(tmp_path, KEY, LOG)
    assert folder == again == tmp_path / KEY.digest and folder.is_dir()
    assert json.loads((folder / KEY_FILE).read_text())["gpu"] == "NVIDIA H100 80GB HBM3"
    assert [e["event"] for e in logs] == ["engine_cache_new"]  # the second start reuses it silently


@pytest.mark.parametrize(
    ("change", "reported"),
    [
        ({"model_sha256": "b" * 64}, f"model_sha256: {'a' * 64} -> {'b' * 64}"),
        ({"onnxruntime": "1.32.0"}, "onnxruntime: 1.31.1 -> 1.32.0"),
        ({"tensorrt": "10.10.0"}, "tensorrt: 10.9.0 -> 10.10.0"),
        ({"gpu": "NVIDIA L4", "compute_capability": "8.9"}, "gpu: NVIDIA H100 80GB HBM3 -> NVIDIA L4"),
    ],
)
def test_a_new_model_runtime_or_gpu_invalidates_the_old_engines(tmp_path: Path, change: dict[str, str], reported: str) -> None:
    old = engine_cache(tmp_path, KEY, LOG)
    (old / "TensorrtExecutionProvider_cache_sm90.engine").write_bytes(b"engine")
    (tmp_path / "notes").mkdir()  # not ours: never touched
    with capture_logs() as logs:
        new = engine_cache(tmp_path, replace(KEY, **change), LOG)
    assert new != old and not old.exists() and (tmp_path / "notes").is_dir()
    invalidated = [e for e in logs if e["event"] == "engine_cache_invalidated"]
    assert len(invalidated) == 1 and reported in invalidated[0]["changed"]


def test_an_unusable_cache_folder_is_a_warning_not_a_failure(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("not a folder")
    with capture_logs() as logs:
        assert engine_cache(tmp_path / "file" / "engines", KEY, LOG) is None
    assert logs[0]["event"] == "engine_cache_unavailable" and "rebuilds its engine on every start" in logs[0]["consequence"]


def test_tensorrt_options_name_the_profile_for_the_roi_batch_and_the_caches(tmp_path: Path) -> None:
    profile = profile_shapes("input", (1, 160, 160), opt_batch=4, max_batch=16)
    assert profile == {
        "trt_profile_min_shapes": "input:1x1x160x160",
        "trt_profile_opt_shapes": "input:4x1x160x160",
        "trt_profile_max_shapes": "input:16x1x160x160",
    }
    assert profile_shapes("x", (3, 8, 8), opt_batch=32, max_batch=16)["trt_profile_max_shapes"] == "x:32x3x8x8"
    options = tensorrt_options(1, True, tmp_path, profile)
    assert options["device_id"] == 1 and options["trt_fp16_enable"] is True
    assert options["trt_engine_cache_path"] == options["trt_timing_cache_path"] == str(tmp_path)
    assert "trt_engine_cache_enable" not in tensorrt_options(0, False, None, profile)


def test_fp16_without_a_golden_set_is_refused_naming_the_setting(models: dict[str, Path]) -> None:
    from inspector.model import _gpu_precision

    with pytest.raises(ModelError, match=r"model.gpu_precision: fp16 needs model.golden"):
        _gpu_precision(ModelSettings(gpu_precision="fp16"), LOG)
    with capture_logs() as logs:
        assert _gpu_precision(ModelSettings(), LOG) == "fp32"
    assert logs[0]["event"] == "tensorrt_fp32"
    assert _gpu_precision(ModelSettings(golden=Path("golden")), LOG) == "fp16"


def test_without_a_gpu_the_gpu_settings_change_nothing_and_write_nothing(models: dict[str, Path], tmp_path: Path) -> None:
    if GPU:
        pytest.skip("a GPU is present")
    settings = ModelSettings(cache_dir=tmp_path / "engines", gpu_precision="fp32")
    clf = OnnxClassifier(models["dark"], settings)
    assert clf.provider == "cpu" and clf.precision == "fp32" and not clf.needs_gate
    assert not (tmp_path / "engines").exists()


# --- on a GPU ----------------------------------------------------------------------------------


@pytest.mark.gpu
@needs_gpu
def test_tensorrt_fp16_caches_its_engine_and_passes_the_gate(models: dict[str, Path], tiles: Path, tmp_path: Path) -> None:
    if "TensorrtExecutionProvider" not in ort.get_available_providers():
        pytest.skip("onnxruntime without TensorRT")
    cache = tmp_path / "engines"
    settings = load_settings(None, model={"providers": ["tensorrt", "cpu"], "golden": str(tiles), "cache_dir": str(cache)})
    t0 = time.perf_counter()
    first = build_pipeline(settings, model_path=models["dark"])
    cold = time.perf_counter() - t0
    assert first.classifier.provider == "tensorrt-fp16"
    (folder,) = [p for p in cache.iterdir() if p.is_dir()]
    assert any(f.suffix == ".engine" for f in folder.iterdir())
    t0 = time.perf_counter()
    second = build_pipeline(settings, model_path=models["dark"])
    warm = time.perf_counter() - t0
    assert second.classifier.provider == "tensorrt-fp16" and [p for p in cache.iterdir() if p.is_dir()] == [folder]
    assert warm < cold  # the engine came from the cache


@pytest.mark.gpu
@needs_gpu
def test_the_cuda_provider_with_io_binding_and_graphs_matches_the_cpu(models: dict[str, Path]) -> None:
    cpu = OnnxClassifier(models["resnet"], ModelSettings(providers=["cpu"]))
    gpu = OnnxClassifier(models["resnet"], ModelSettings(providers=["cuda"], cuda_graphs=True))
    assert gpu.provider == "cuda"
    gpu.warmup(4, 2)
    x = np.random.default_rng(1).standard_normal((4, *cpu.spec.input_shape)).astype(np.float32)
    for batch in (x, x[:1], x):  # a second batch size gets its own buffers and graph
        np.testing.assert_allclose(gpu.predict(batch), cpu.predict(batch), atol=1e-3)


def test_io_binding_reuses_one_buffer_per_batch_size_and_gives_plain_results(models: dict[str, Path]) -> None:
    clf = OnnxClassifier(models["resnet"], ModelSettings(providers=["cpu"]))
    runner = BoundRunner(clf.session, "input", "logits", 0, graphs=False, device="cpu")  # the CUDA path's logic, on host memory
    rng = np.random.default_rng(0)
    for n in (4, 1, 4, 4):
        x = rng.standard_normal((n, *clf.spec.input_shape)).astype(np.float32)
        np.testing.assert_allclose(runner(x), clf.session.run(None, {"input": x})[0], rtol=1e-5, atol=1e-6)
    assert sorted(s[0] for s in runner._bound) == [1, 4]


def test_a_binding_that_fails_at_warm_up_falls_back_to_plain_runs_with_one_warning(models: dict[str, Path]) -> None:
    clf = OnnxClassifier(models["dark"], ModelSettings(providers=["cpu"]))
    clf._runner = BoundRunner(clf.session, "no_such_input", "logits", 0, graphs=False, device="cpu")
    with capture_logs() as logs:
        clf.warmup(2, 1)
    warnings = [e for e in logs if e["event"] == "io_binding_unavailable"]
    assert len(warnings) == 1 and "no_such_input" in warnings[0]["reason"]
    assert clf._runner is None and clf.predict(np.zeros((2, *clf.spec.input_shape), np.float32)).shape == (2, 2)
