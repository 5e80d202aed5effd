"""OnnxClassifier on real exported models: providers, manifest, hash pin, shapes."""

from __future__ import annotations

import io
import json
import os
import time
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import pytest

from inspector.config import ModelSettings
from inspector.cpu_affinity import allowed_cores
from inspector.digest import file_sha256
from inspector.errors import ModelError
from inspector.logs import configure_logging
from inspector.manifest import MANIFEST_KEY
from inspector.model import OnnxClassifier
from inspector.preprocess import FrameSize, PreprocessSpec
from tests.conftest import GRAY64

CPU = ModelSettings(providers=["cpu"])


def _events(stream: io.StringIO) -> list[dict]:
    return [json.loads(line) for line in stream.getvalue().splitlines() if line.startswith("{")]


def test_default_providers_fall_back_with_one_clear_warning_each_and_no_onnxruntime_noise(
    models: dict[str, Path], capfd: pytest.CaptureFixture[str]
) -> None:
    logs = io.StringIO()
    configure_logging("info", "json", stream=logs)
    clf = OnnxClassifier(models["dark"], ModelSettings())
    order = ["tensorrt", "cuda", "cpu"]
    skipped = order[: order.index(clf.provider)]
    warnings = [e for e in _events(logs) if e["event"] == "provider_unavailable"]
    assert [w["provider"] for w in warnings] == skipped
    assert all(w["level"] == "warning" and w["reason"] for w in warnings)
    out, err = capfd.readouterr()
    assert "EP Error" not in out + err and "onnxruntime" not in out + err


def test_each_fallback_warning_names_what_is_still_left(models: dict[str, Path]) -> None:
    if OnnxClassifier(models["dark"], ModelSettings()).provider != "cpu":
        pytest.skip("a GPU provider works on this machine")
    for order in (["cuda", "tensorrt", "cpu"], ["cpu", "cuda"]):
        logs = io.StringIO()
        configure_logging("info", "json", stream=logs)
        OnnxClassifier(models["dark"], ModelSettings(providers=order))
        warnings = [e for e in _events(logs) if e["event"] == "provider_unavailable"]
        # The last to fail falls back to cpu alone, and cpu listed first still counts: never "null" while cpu runs.
        assert warnings and warnings[-1]["falling_back_to"] == ["cpu"], (order, warnings)
        assert all(w["provider"] not in (w["falling_back_to"] or []) for w in warnings)


def test_without_cpu_in_the_list_a_missing_gpu_is_an_error_naming_the_fix(models: dict[str, Path]) -> None:
    if OnnxClassifier(models["dark"], ModelSettings()).provider != "cpu":
        pytest.skip("a GPU provider works on this machine")
    with pytest.raises(ModelError, match="none of the configured providers could load.*add cpu"):
        OnnxClassifier(models["dark"], ModelSettings(providers=["cuda"]))


def test_sha256_pin_mismatch_is_refused_naming_both_hashes(models: dict[str, Path]) -> None:
    actual = file_sha256(models["dark"])
    pin = "0" * 64
    with pytest.raises(ModelError) as info:
        OnnxClassifier(models["dark"], ModelSettings(providers=["cpu"], sha256=pin))
    assert actual in str(info.value) and pin in str(info.value)
    assert OnnxClassifier(models["dark"], ModelSettings(providers=["cpu"], sha256=actual)).sha256 == actual


def test_manifest_supplies_spec_and_classes(models: dict[str, Path]) -> None:
    clf = OnnxClassifier(models["multi"], CPU)
    assert clf.classes == ("ok", "crack", "blowhole")
    assert clf.spec == GRAY64


def test_a_model_without_manifest_is_refused_unless_the_config_gives_spec_and_classes(models: dict[str, Path]) -> None:
    with pytest.raises(ModelError, match="no inspector manifest.*give `preprocess` and `model.classes`"):
        OnnxClassifier(models["bare"], CPU)
    logs = io.StringIO()
    configure_logging("info", "json", stream=logs)
    clf = OnnxClassifier(models["bare"], ModelSettings(providers=["cpu"], classes=["ok", "ng"]), config_spec=GRAY64)
    assert clf.classes == ("ok", "ng")
    assert [e["event"] for e in _events(logs)].count("model_without_manifest") == 1


def test_a_config_spec_that_differs_from_the_manifest_is_refused_naming_the_field(models: dict[str, Path]) -> None:
    other = GRAY64.model_copy(update={"clahe": GRAY64.clahe.model_copy(update={"enabled": True})})
    with pytest.raises(ModelError, match="clahe.enabled: config True vs model False"):
        OnnxClassifier(models["dark"], CPU, config_spec=other)
    assert OnnxClassifier(models["dark"], CPU, config_spec=GRAY64).spec == GRAY64


def test_config_classes_that_contradict_the_manifest_are_refused(models: dict[str, Path]) -> None:
    with pytest.raises(ModelError, match=r"model.classes \['ng', 'ok'\] differs from the classes inside .* \['ok', 'ng'\]"):
        OnnxClassifier(models["dark"], ModelSettings(providers=["cpu"], classes=["ng", "ok"]))
    assert OnnxClassifier(models["dark"], ModelSettings(providers=["cpu"], classes=["ok", "ng"])).classes == ("ok", "ng")


@pytest.mark.parametrize(
    ("version", "message"),
    [
        (99, "manifest format 99 is newer.*upgrade inspector"),
        ("2", "format_version: Input should be a valid integer"),  # a string is not read as a number, old or new
        (True, "format_version: Input should be a valid integer"),
    ],
)
def test_a_newer_or_odd_manifest_format_is_refused(models: dict[str, Path], tmp_path: Path, version: object, message: str) -> None:
    model = onnx.load(str(models["dark"]))
    manifest = json.loads(model.metadata_props[0].value)
    manifest["format_version"] = version
    del model.metadata_props[:]
    model.metadata_props.add(key=MANIFEST_KEY, value=json.dumps(manifest))
    path = tmp_path / "future.onnx"
    onnx.save(model, str(path))
    with pytest.raises(ModelError, match=message):
        OnnxClassifier(path, CPU)


def test_a_manifest_is_format_2_only_when_its_spec_holds_keys_format_1_readers_refuse(models: dict[str, Path], tmp_path: Path) -> None:
    from inspector.training.onnx_export import export_classifier
    from tests.conftest import _dark_spot_module

    def stored(path: Path) -> dict[str, Any]:
        return json.loads({p.key: p.value for p in onnx.load(str(path)).metadata_props}[MANIFEST_KEY])

    assert stored(models["dark"])["format_version"] == 1  # older inspectors still read it
    sized = GRAY64.model_copy(update={"frame_size": FrameSize(min_width=64, max_width=64, min_height=64, max_height=64)})
    export_classifier(_dark_spot_module(), sized, ("ok", "ng"), tmp_path / "sized.onnx")
    # An inspector that reads format 1 only says "newer than this inspector reads; upgrade", not "frame_size: extra input".
    assert stored(tmp_path / "sized.onnx")["format_version"] == 2
    assert OnnxClassifier(tmp_path / "sized.onnx", CPU).spec.frame_size == sized.frame_size


def test_input_shape_that_does_not_match_the_preprocessing_is_refused(models: dict[str, Path]) -> None:
    rgb = PreprocessSpec(color="rgb", resize={"width": 64, "height": 64})
    with pytest.raises(ModelError, match="input channels is 1 but the preprocessing produces 3"):
        OnnxClassifier(models["bare"], ModelSettings(providers=["cpu"], classes=["ok", "ng"]), config_spec=rgb)


def test_class_count_that_does_not_match_the_output_is_refused(models: dict[str, Path]) -> None:
    with pytest.raises(ModelError, match=r"output shape .* does not match 3 classes"):
        OnnxClassifier(models["bare"], ModelSettings(providers=["cpu"], classes=["ok", "a", "b"]), config_spec=GRAY64)


@pytest.mark.parametrize(("content", "message"), [(None, "model file not found"), (b"not a model", "cannot load model")])
def test_missing_or_corrupt_model_files_are_clear_errors(tmp_path: Path, content: bytes | None, message: str) -> None:
    path = tmp_path / "m.onnx"
    if content is not None:
        path.write_bytes(content)
    with pytest.raises(ModelError, match=message):
        OnnxClassifier(path, CPU)


def test_predict_runs_all_rois_as_one_batch_and_returns_probabilities(models: dict[str, Path]) -> None:
    clf = OnnxClassifier(models["multi"], CPU)
    batch = np.zeros((4, 1, 64, 64), np.float32)
    batch[2, 0, 10:20, 10:20] = -3.0  # a dark patch in the third ROI
    probs = clf.predict(batch)
    assert probs.shape == (4, 3)
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, rtol=1e-5)
    assert probs[2, 0] < 0.01 and probs[0, 0] > 0.99


def _threads() -> set[int]:
    return {int(t) for t in os.listdir("/proc/self/task")}


def _new_thread_cpus(before: set[int]) -> list[set[int]]:
    """CPU sets of the threads started since `before`, in thread-id order."""
    return [os.sched_getaffinity(t) for t in sorted(_threads() - before)]


@pytest.mark.skipif(len(allowed_cores()) < 2, reason="needs two physical cores to pin a worker beside the caller")
def test_the_worker_thread_is_pinned_to_its_own_core_beside_the_callers(models: dict[str, Path]) -> None:
    cores = allowed_cores()
    before = _threads()
    clf = OnnxClassifier(models["multi"], ModelSettings(providers=["cpu"], intra_op_threads=2, pin_threads=True))
    # onnxruntime's worker pins itself as it starts: give it a moment.
    deadline = time.monotonic() + 5
    while _new_thread_cpus(before) != [set(cores[1])] and time.monotonic() < deadline:
        time.sleep(0.01)
    assert _new_thread_cpus(before) == [set(cores[1])]  # one worker; the caller's core stays its own
    assert clf.predict(np.zeros((1, *clf.spec.input_shape), np.float32)).shape == (1, len(clf.classes))


class _AffinitySpy:
    """The real session, noting the calling thread's CPU set at each run."""

    def __init__(self, session: Any) -> None:
        self.session = session
        self.seen: list[set[int]] = []

    def run(self, *args: Any, **kwargs: Any) -> Any:
        self.seen.append(os.sched_getaffinity(0))
        return self.session.run(*args, **kwargs)


@pytest.mark.skipif(len(allowed_cores()) < 2, reason="needs two physical cores to pin a worker beside the caller")
def test_pinned_runs_hold_the_calling_thread_on_the_first_core_and_then_give_its_cpus_back(models: dict[str, Path]) -> None:
    cores = allowed_cores()
    clf = OnnxClassifier(models["multi"], ModelSettings(providers=["cpu"], intra_op_threads=2, pin_threads=True))
    clf.session = spy = _AffinitySpy(clf.session)
    own = os.sched_getaffinity(0)
    batch = np.zeros((1, *clf.spec.input_shape), np.float32)
    assert clf.predict(batch).shape == (1, len(clf.classes))
    clf.predict(batch)
    assert spy.seen == [set(cores[0])] * 2  # never on the worker's core while the worker computes
    assert os.sched_getaffinity(0) == own


def test_a_caller_core_that_cannot_be_had_any_more_gives_one_warning_and_unpinned_runs(models: dict[str, Path]) -> None:
    logs = io.StringIO()
    configure_logging("info", "json", stream=logs)
    clf = OnnxClassifier(models["multi"], ModelSettings(providers=["cpu"], intra_op_threads=2, pin_threads=True))
    # Stands for a CPU set shrunk after load (taskset -p, a cgroup change), which a test cannot do to its own process.
    clf._caller_cpus = {(os.cpu_count() or 1) + 4096}  # no such CPU: the kernel refuses it
    clf.session = spy = _AffinitySpy(clf.session)
    own = os.sched_getaffinity(0)
    batch = np.zeros((1, *clf.spec.input_shape), np.float32)
    for _ in range(3):
        assert clf.predict(batch).shape == (1, len(clf.classes))
    assert spy.seen == [own] * 3
    [warning] = [e for e in _events(logs) if e["event"] == "caller_not_pinned"]
    assert warning["level"] == "warning" and "unpinned" in warning["consequence"]


@pytest.mark.skipif(len(allowed_cores()) < 2, reason="needs two physical cores to pin a worker beside the caller")
def test_by_default_threads_that_take_every_core_are_pinned(models: dict[str, Path]) -> None:
    logs = io.StringIO()
    configure_logging("info", "json", stream=logs)
    cores = allowed_cores()
    clf = OnnxClassifier(models["multi"], ModelSettings(providers=["cpu"], intra_op_threads=len(cores)))
    [pinned] = [e for e in _events(logs) if e["event"] == "threads_pinned"]
    assert pinned["caller_core"] == list(cores[0]) and pinned["worker_cores"] == [list(c) for c in cores[1:]]
    clf.session = spy = _AffinitySpy(clf.session)
    clf.predict(np.zeros((1, *clf.spec.input_shape), np.float32))
    assert spy.seen == [set(cores[0])]


def test_by_default_threads_with_cores_to_spare_float_and_the_log_says_how_to_pin(
    models: dict[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    logs = io.StringIO()
    configure_logging("info", "json", stream=logs)
    # A PC with three cores for two threads, which this machine may not be.
    monkeypatch.setattr("inspector.model.allowed_cores", lambda: [(0,), (1,), (2,)])
    clf = OnnxClassifier(models["multi"], ModelSettings(providers=["cpu"], intra_op_threads=2))
    [floating] = [e for e in _events(logs) if e["event"] == "threads_not_pinned"]
    assert floating["level"] == "info" and "3 physical cores for 2 threads" in floating["reason"]
    assert "pin_threads: true" in floating["consequence"]
    with pytest.raises(RuntimeError, match="does not have configuration"):
        clf.session.get_session_options().get_session_config_entry("session.intra_op_thread_affinities")


def test_unpinned_every_worker_is_free_to_move(models: dict[str, Path]) -> None:
    before = _threads()
    clf = OnnxClassifier(models["multi"], ModelSettings(providers=["cpu"], intra_op_threads=2, pin_threads=False))
    new = _new_thread_cpus(before)  # while clf lives: its pool's threads end with it
    assert new and all(cpus == os.sched_getaffinity(0) for cpus in new)
    with pytest.raises(RuntimeError, match="does not have configuration"):
        clf.session.get_session_options().get_session_config_entry("session.intra_op_thread_affinities")
    clf.session = spy = _AffinitySpy(clf.session)
    clf.predict(np.zeros((1, *clf.spec.input_shape), np.float32))
    assert spy.seen == [os.sched_getaffinity(0)]  # the caller is left where the scheduler puts it


def test_more_threads_than_cores_runs_unpinned_with_a_warning_that_says_why(models: dict[str, Path]) -> None:
    logs = io.StringIO()
    configure_logging("info", "json", stream=logs)
    threads = len(allowed_cores()) + 1
    clf = OnnxClassifier(models["multi"], ModelSettings(providers=["cpu"], intra_op_threads=threads, pin_threads=True))
    [warning] = [e for e in _events(logs) if e["event"] == "threads_not_pinned"]
    assert f"model.intra_op_threads is {threads}" in warning["reason"] and warning["level"] == "warning"
    with pytest.raises(RuntimeError, match="does not have configuration"):
        clf.session.get_session_options().get_session_config_entry("session.intra_op_thread_affinities")
    assert clf.predict(np.zeros((1, *clf.spec.input_shape), np.float32)).shape == (1, len(clf.classes))


@pytest.mark.parametrize(
    ("spinning", "allow", "stop"), [("off", "0", None), ("run", "1", "1"), ("always", "1", None)]
)
def test_spinning_sets_how_onnxruntime_workers_wait(models: dict[str, Path], spinning: str, allow: str, stop: str | None) -> None:
    clf = OnnxClassifier(models["multi"], ModelSettings(providers=["cpu"], spinning=spinning))
    options = clf.session.get_session_options()
    assert options.get_session_config_entry("session.intra_op.allow_spinning") == allow
    if stop is None:
        with pytest.raises(RuntimeError, match="does not have configuration"):
            options.get_session_config_entry("session.force_spinning_stop")
    else:
        assert options.get_session_config_entry("session.force_spinning_stop") == stop


def _two_outputs(path: Path) -> Path:
    """The dark-spot network with a constant "all ok" output put first: judged by output 0, every part would pass."""
    import torch

    from inspector.training.onnx_export import export_classifier
    from tests.conftest import _dark_spot_module

    class TwoOutputs(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.net = _dark_spot_module()

        def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            logits = self.net(x)
            return torch.stack([torch.ones_like(logits[:, 0]), torch.zeros_like(logits[:, 0])], dim=1), logits

    export_classifier(TwoOutputs(), GRAY64, ("ok", "ng"), path)
    return path


def _two_inputs(path: Path, source: Path) -> Path:
    """An input `aux` added beside `input` (summed into it): the runtime cannot know what to feed it."""
    model = onnx.load(str(source))
    aux = onnx.helper.make_tensor_value_info("aux", onnx.TensorProto.FLOAT, ["batch", 1, 64, 64])
    model.graph.input.append(aux)
    for node in model.graph.node:
        node.input[:] = ["input_plus_aux" if name == "input" else name for name in node.input]
    model.graph.node.insert(0, onnx.helper.make_node("Add", ["input", "aux"], ["input_plus_aux"]))
    onnx.save(model, str(path))
    return path


def test_a_model_must_have_one_input_and_one_output(models: dict[str, Path], tmp_path: Path) -> None:
    with pytest.raises(ModelError, match=r"2 outputs \(logits, .*\); expected one, the \(N, classes\) probabilities or logits"):
        OnnxClassifier(_two_outputs(tmp_path / "two.onnx"), CPU)
    with pytest.raises(ModelError, match=r"2 inputs \(input, aux\); expected one, the \(N, C, H, W\) image batch"):
        OnnxClassifier(_two_inputs(tmp_path / "twoin.onnx", models["dark"]), CPU)


def test_logits_declared_as_probabilities_are_refused_not_clipped(tmp_path: Path, tiles: Path) -> None:
    from inspector.config import load_settings
    from inspector.pipeline import build_pipeline, read_file_frame
    from inspector.training.onnx_export import export_classifier
    from tests.conftest import _dark_spot_module

    path = tmp_path / "mislabelled.onnx"
    export_classifier(_dark_spot_module(), GRAY64, ("ok", "ng"), path, output="probabilities")
    # At load, the warm-up sees it; clipped, logits [0, 5] would read as P(ok) = 0 or 1 at random.
    with pytest.raises(ModelError, match="declared probabilities but is not .*export it with output: logits"):
        build_pipeline(load_settings(None, model={"providers": ["cpu"]}), model_path=path)
    # Without a warm-up, each frame is an inference_error reject, NG and OK alike.
    pipe = build_pipeline(load_settings(None, model={"providers": ["cpu"], "warmup_runs": 0}), model_path=path)
    for frame in (tiles / "ok" / "ok_0001.png", next((tiles / "ng").rglob("*.png"))):
        v = pipe.process(read_file_frame(frame))
        assert (v.verdict, v.reason.value) == ("reject", "inference_error") and "declared probabilities" in v.detail

