"""The classifier stage: `OnnxClassifier` runs an ONNX OK/NG model with provider fallback, a hash pin and its manifest."""

from __future__ import annotations

import contextlib
import ctypes
import hashlib
import json
import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Protocol

import numpy as np
import onnxruntime as ort
import structlog
from onnxruntime.capi import onnxruntime_pybind11_state as _ort_state
from pydantic import ValidationError

from inspector.config import GraphOptimization, ModelSettings, Provider, Spinning
from inspector.cpu_affinity import allowed_cores, worker_affinities
from inspector.errors import ModelError
from inspector.gpu import (
    BoundRunner,
    EngineKey,
    GpuIdentity,
    cuda_options,
    engine_cache,
    gpu_identity,
    profile_shapes,
    tensorrt_options,
    tensorrt_version,
)
from inspector.manifest import ModelManifest, parse_manifest
from inspector.preprocess import PreprocessSpec

_ORT_NAME = {
    Provider.TENSORRT: "TensorrtExecutionProvider",
    Provider.CUDA: "CUDAExecutionProvider",
    Provider.CPU: "CPUExecutionProvider",
}
_BY_ORT_NAME = {v: k for k, v in _ORT_NAME.items()}
_PROVIDER_LIB = {Provider.TENSORRT: "libonnxruntime_providers_tensorrt.so", Provider.CUDA: "libonnxruntime_providers_cuda.so"}
_MENTIONS = {Provider.TENSORRT: ("tensorrt", "nvinfer"), Provider.CUDA: ("cuda", "cudnn", "cublas")}
_GRAPH_LEVEL = {
    GraphOptimization.DISABLED: ort.GraphOptimizationLevel.ORT_DISABLE_ALL,
    GraphOptimization.BASIC: ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
    GraphOptimization.EXTENDED: ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
    GraphOptimization.ALL: ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
}
# onnxruntime's own logger would print one error block per missing GPU library; ours says it once, clearly.
_LOG_QUIET, _LOG_ERRORS = 4, 3
# onnxruntime's C++ errors are plain Exception subclasses, not RuntimeError.
ORT_EXCEPTIONS: tuple[type[Exception], ...] = (RuntimeError,) + tuple(
    getattr(_ort_state, name)
    for name in ("Fail", "InvalidArgument", "NoSuchFile", "NoModel", "EngineError", "RuntimeException",
                 "InvalidProtobuf", "ModelLoaded", "NotImplemented", "InvalidGraph", "EPFail")
    if hasattr(_ort_state, name)
)


class Classifier(Protocol):
    """Maps a preprocessed batch to class probabilities."""

    classes: tuple[str, ...]
    provider: str
    sha256: str

    def predict(self, batch: np.ndarray) -> np.ndarray:
        """float32 (N, C, H, W) -> float32 (N, n_classes) probabilities."""
        ...


class OnnxClassifier:
    """An ONNX OK/NG (or multi-defect) classifier, loaded, checked and warmed up."""

    def __init__(
        self,
        path: Path,
        settings: ModelSettings,
        *,
        config_spec: PreprocessSpec | None = None,
        rois: int | None = None,
        log: structlog.typing.FilteringBoundLogger | None = None,
    ) -> None:
        self.path = Path(path)
        self.log = log or structlog.get_logger("inspector.model")
        self._rois = rois  # the station's ROIs per frame, when the config overrides the model's: the GPU engine's batch
        self._runner: BoundRunner | None = None
        self._caller_cpus: set[int] | None = None  # set when the workers are pinned: where each run's calling thread goes
        self.precision = "fp32"
        started = time.perf_counter()
        try:
            data = self.path.read_bytes()
        except FileNotFoundError:
            raise ModelError(f"model file not found: {self.path}") from None
        except OSError as exc:
            raise ModelError(f"cannot read model file {self.path}: {exc.strerror}") from exc
        self.sha256 = hashlib.sha256(data).hexdigest()
        if settings.sha256 and settings.sha256 != self.sha256:
            raise ModelError(
                f"model {self.path} has sha256 {self.sha256}, but model.sha256 pins {settings.sha256}; "
                "deploy the pinned model or update the pin"
            )
        self._settings = settings
        self.session, self.providers = self._create_session(data, settings)
        self.provider = self.providers[0]
        self.manifest = self._resolve_manifest(settings, config_spec)
        self.classes = self.manifest.classes
        self.spec = self.manifest.preprocess
        self._logits = self.manifest.output == "logits"
        self._input_name, self._input_shape, self._output_shape, self._input_dtype = self._io()
        self._fixed_batch = self._check_shapes()
        self._bind_gpu()
        self.load_ms = (time.perf_counter() - started) * 1000

    @property
    def needs_gate(self) -> bool:
        """Reduced precision (TensorRT fp16): the accuracy gate must pass before the first frame."""
        return self.precision == "fp16"

    gate_remedy = "set model.gpu_precision: fp32, or drop tensorrt from model.providers"

    # --- loading ------------------------------------------------------------------------------

    def _create_session(self, data: bytes, settings: ModelSettings) -> tuple[ort.InferenceSession, list[str]]:
        so = ort.SessionOptions()
        so.intra_op_num_threads = settings.intra_op_threads
        so.inter_op_num_threads = 1
        so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        so.graph_optimization_level = _GRAPH_LEVEL[settings.graph_optimization]
        so.add_session_config_entry("session.intra_op.allow_spinning", "0" if settings.spinning is Spinning.OFF else "1")
        if settings.spinning is Spinning.RUN:
            # Parks the workers the moment Run returns: spinning between layers must not go on into the time between frames.
            so.add_session_config_entry("session.force_spinning_stop", "1")
        if settings.pin_threads is not False and settings.intra_op_threads > 1:
            self._pin_workers(so, settings.intra_op_threads, auto=settings.pin_threads == "auto")
        so.log_severity_level = _LOG_QUIET
        built = set(ort.get_available_providers())
        chain: list[Provider] = []
        for p in settings.providers:
            if _ORT_NAME[p] in built:
                chain.append(p)
            else:
                self._unavailable(p, "not in this onnxruntime build (install onnxruntime-gpu for cuda/tensorrt)",
                                  [q for q in settings.providers if q is not p and _ORT_NAME[q] in built])
        gpu = gpu_identity(settings.device_id) if {Provider.TENSORRT, Provider.CUDA} & set(chain) else None
        ort.set_default_logger_severity(_LOG_QUIET)
        try:
            while chain:
                try:
                    entries = [self._provider_entry(p, data, settings, gpu) for p in chain]
                    session = ort.InferenceSession(data, so, providers=entries, enable_fallback=0)
                except ORT_EXCEPTIONS as exc:
                    # "graph" alone is in every ONNX error (its source path, "No graph was found"): CUDA graphs say "cuda graph".
                    if Provider.CUDA in chain and settings.cuda_graphs and "cuda graph" in str(exc).lower().replace("_", " "):
                        self.log.warning("cuda_graphs_unavailable", reason=_first_line(exc), consequence="the cuda provider runs without CUDA graphs")
                        settings = settings.model_copy(update={"cuda_graphs": False})
                        self._settings = settings
                        continue
                    failed = self._failed_provider(chain, str(exc))
                    if failed is None:
                        raise ModelError(f"cannot load model {self.path}: {_first_line(exc)}") from exc
                    chain.remove(failed)
                    self._unavailable(failed, _provider_reason(failed) or _first_line(exc), chain)
                    continue
                active = [_BY_ORT_NAME[n] for n in session.get_providers() if n in _BY_ORT_NAME]
                for p in chain:
                    if p not in active:
                        self._unavailable(p, _provider_reason(p) or "failed to initialise", [q for q in chain if q in active])
                wanted = [p for p in active if p in chain]
                if not wanted:
                    break
                if wanted[0] is not Provider.TENSORRT:
                    self.precision = "fp32"
                label = f"{wanted[0].value}-{self.precision}" if wanted[0] is Provider.TENSORRT else wanted[0].value
                return session, [label, *(p.value for p in wanted[1:])]
        finally:
            ort.set_default_logger_severity(_LOG_ERRORS)
        raise ModelError(
            f"none of the configured providers could load ({', '.join(p.value for p in settings.providers)}); "
            "add cpu to model.providers to allow the CPU fallback"
        )

    def _pin_workers(self, so: ort.SessionOptions, threads: int, *, auto: bool) -> None:
        cores = allowed_cores()
        if auto and len(cores) > threads:
            self.log.info(
                "threads_not_pinned",
                reason=f"model.pin_threads is auto and this process may run on {len(cores)} physical cores for {threads} threads",
                consequence="onnxruntime's worker threads float; set model.pin_threads: true for a single station on this PC",
            )
            return
        affinities = worker_affinities(threads, cores)
        if affinities is None:
            self.log.warning(
                "threads_not_pinned",
                reason=f"model.intra_op_threads is {threads} but this process may run on {len(cores)} physical core(s)",
                consequence="onnxruntime's worker threads float; set model.intra_op_threads to at most the cores given to inspector",
            )
            return
        so.add_session_config_entry("session.intra_op_thread_affinities", affinities)
        self._caller_cpus = set(cores[0])
        # Linux's CPU numbers, as taskset and CPUAffinity= use them (onnxruntime's string counts from 1).
        self.log.info("threads_pinned", worker_cores=[list(c) for c in cores[1:threads]], caller_core=list(cores[0]))

    def _provider_entry(self, provider: Provider, data: bytes, settings: ModelSettings, gpu: GpuIdentity | None) -> str | tuple[str, dict]:
        """The provider's name, with options for the GPU providers when a GPU is there to use them."""
        name = _ORT_NAME[provider]
        if gpu is None or provider is Provider.CPU:
            return name
        if provider is Provider.CUDA:
            return name, cuda_options(settings.device_id, settings.cuda_graphs)
        self.precision = _gpu_precision(settings, self.log)
        input_name, chw, rois = self._probe(data)
        profile = profile_shapes(input_name, chw, self._rois or rois, settings.gpu_max_batch)
        key = EngineKey(
            model_sha256=self.sha256, onnxruntime=ort.__version__, tensorrt=tensorrt_version() or "unknown", gpu=gpu.name,
            compute_capability=gpu.compute_capability, precision=self.precision, profile=json.dumps(profile, sort_keys=True),
        )
        cache = engine_cache(settings.cache_dir, key, self.log) if settings.cache_dir is not None else None
        return name, tensorrt_options(settings.device_id, self.precision == "fp16", cache, profile)

    def _probe(self, data: bytes) -> tuple[str, tuple[int, int, int], int]:
        """Input name, (C, H, W) and ROI count from the model itself, read by a bare CPU session before the GPU one is built."""
        so = ort.SessionOptions()
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
        so.log_severity_level = _LOG_QUIET
        probe = ort.InferenceSession(data, so, providers=["CPUExecutionProvider"])
        inp = probe.get_inputs()[0]
        manifest = parse_manifest(dict(probe.get_modelmeta().custom_metadata_map), str(self.path))
        if manifest is not None:
            return inp.name, manifest.preprocess.input_shape, len(manifest.preprocess.roi_names)
        dims = tuple(d if isinstance(d, int) else 1 for d in inp.shape[1:])
        return inp.name, (dims + (1, 1, 1))[:3], 1

    def _bind_gpu(self) -> None:
        """GPU providers run through IO binding into fixed buffers (and CUDA graphs on the cuda provider, unless loading turned them off)."""
        settings = self._settings
        if self.providers[0].split("-")[0] in (Provider.TENSORRT.value, Provider.CUDA.value):
            graphs = self.provider == Provider.CUDA.value and settings.cuda_graphs
            self._runner = BoundRunner(self.session, self._input_name, self._output_name, settings.device_id, graphs=graphs)

    def _unavailable(self, provider: Provider, reason: str, rest: list[Provider]) -> None:
        # `rest`: the providers still in play, in order, not the configured list (some of it may have failed already).
        self.log.warning("provider_unavailable", provider=provider.value, reason=reason, falling_back_to=[p.value for p in rest] or None)

    @staticmethod
    def _failed_provider(chain: list[Provider], message: str) -> Provider | None:
        text = message.lower()
        for p in chain:
            if p is not Provider.CPU and any(word in text for word in _MENTIONS[p]):
                return p
        return None

    def _metadata(self) -> dict[str, str]:
        return dict(self.session.get_modelmeta().custom_metadata_map)

    def _io(self) -> tuple[str, list[object], list[object], type]:
        """(input name, input shape, output shape, input dtype); a dimension is an int or a name."""
        inputs, outputs = self.session.get_inputs(), self.session.get_outputs()
        one_each(self.path, [i.name for i in inputs], [o.name for o in outputs])
        inp, out = inputs[0], outputs[0]
        self._output_name = out.name
        return inp.name, list(inp.shape), list(out.shape), np.float16 if inp.type == "tensor(float16)" else np.float32

    def _run(self, x: np.ndarray) -> np.ndarray:
        if self._runner is not None:
            return self._runner(np.ascontiguousarray(x))
        with self._on_caller_core():
            return self.session.run([self._output_name], {self._input_name: x})[0]

    @contextlib.contextmanager
    def _on_caller_core(self) -> Iterator[None]:
        """Hold the calling thread on the first core while pinned workers compute; nothing when they are not pinned."""
        # Pinning the workers alone is not enough: after an idle gap the scheduler often wakes the calling thread on a
        # worker's core, and the two then share it for the whole frame. The caller keeps its own CPU set outside runs.
        cpus = self._caller_cpus
        if cpus is None:
            yield
            return
        before = os.sched_getaffinity(0)
        try:
            os.sched_setaffinity(0, cpus)
        except OSError as exc:  # the process's CPU set changed under us (taskset -p): run as before, unpinned
            self.log.warning("caller_not_pinned", cpus=sorted(cpus), error=str(exc), consequence="runs continue with the caller unpinned")
            self._caller_cpus = None
            yield
            return
        try:
            yield
        finally:
            os.sched_setaffinity(0, before)

    def _resolve_manifest(self, settings: ModelSettings, config_spec: PreprocessSpec | None) -> ModelManifest:
        metadata = self._metadata()
        manifest = parse_manifest(metadata, str(self.path))
        if manifest is not None:
            if config_spec is not None and config_spec != manifest.preprocess:
                diff = _diff(config_spec.model_dump(mode="json"), manifest.preprocess.model_dump(mode="json"))
                raise ModelError(
                    f"the config's `preprocess` differs from the one inside {self.path} ({', '.join(diff)}); "
                    "the model's own preprocessing is the one it was trained with: remove `preprocess` from the config "
                    "(use `rois` to place this station's ROIs)"
                )
            if settings.classes is not None and tuple(settings.classes) != manifest.classes:
                # Names in another order would swap what the scores mean: the model's own list is the one it was trained with.
                raise ModelError(
                    f"model.classes {list(settings.classes)} differs from the classes inside {self.path} {list(manifest.classes)}; "
                    "model.classes is only for a model without a manifest: remove it from the config"
                )
            return manifest
        if config_spec is None or not settings.classes:
            raise ModelError(
                f"{self.path} has no inspector manifest (preprocessing and class names); export it with `inspector export`, "
                "or give `preprocess` and `model.classes` in the config to run it anyway"
            )
        self.log.warning(
            "model_without_manifest", model=str(self.path), detail="preprocessing and classes come from the config, not the model"
        )
        try:
            return ModelManifest(classes=tuple(settings.classes), preprocess=config_spec, output=settings.output)
        except ValidationError as exc:
            problems = "; ".join(str(e["msg"]).removeprefix("Value error, ") for e in exc.errors())
            raise ModelError(f"model.classes {list(settings.classes)}: {problems}") from exc

    def _check_shapes(self) -> bool:
        shape = self._input_shape
        expected = self.spec.input_shape
        if len(shape) != 4:
            raise ModelError(f"{self.path}: input {self._input_name} has shape {shape}; expected 4 dimensions (N, C, H, W)")
        for got, want, what in zip(shape[1:], expected, ("channels", "height", "width"), strict=True):
            if isinstance(got, int) and got != want:
                raise ModelError(
                    f"{self.path}: input {what} is {got} but the preprocessing produces {want} "
                    f"(input shape {list(shape)} vs (N, {', '.join(map(str, expected))}))"
                )
        out_shape = self._output_shape
        if len(out_shape) != 2 or (isinstance(out_shape[1], int) and out_shape[1] != len(self.classes)):
            raise ModelError(
                f"{self.path}: output shape {list(out_shape)} does not match {len(self.classes)} classes {list(self.classes)}"
            )
        fixed = isinstance(shape[0], int)
        if fixed and shape[0] != 1:
            raise ModelError(f"{self.path}: fixed batch size {shape[0]}; export with a dynamic batch axis")
        return fixed

    # --- running ------------------------------------------------------------------------------

    def warmup(self, batch_size: int, runs: int) -> None:
        """Run blank batches so the first frame does not pay for lazy initialisation; a model whose output is not what its
        manifest declares is refused here, at load (with `runs` 0, each frame is rejected as `inference_error` instead)."""
        blank = np.zeros((batch_size, *self.spec.input_shape), np.float32)
        if self._runner is not None:
            self._check_binding(blank)
        try:
            for _ in range(runs):
                self.predict(blank)
        except ModelError as exc:
            raise ModelError(f"{self.path} fails its warm-up inference: {exc}") from exc
        except ORT_EXCEPTIONS as exc:
            raise ModelError(f"{self.path} fails its warm-up inference on a blank batch of {batch_size}: {_first_line(exc)}") from exc

    def _check_binding(self, blank: np.ndarray) -> None:
        """IO binding (and CUDA graph capture) must give what a plain run gives; else the session runs plain, with a warning."""
        runner = self._runner
        if runner is None:
            return
        x = np.random.default_rng(0).standard_normal(blank.shape).astype(self._input_dtype)
        try:
            runner(x)
            bound = np.asarray(runner(x), np.float32)  # the second run replays a captured graph
            plain = np.asarray(self.session.run([self._output_name], {self._input_name: x})[0], np.float32)
        except ORT_EXCEPTIONS as exc:
            problem = _first_line(exc)
        else:
            if np.allclose(bound, plain, rtol=1e-3, atol=1e-3):
                return
            problem = f"bound outputs differ from plain runs by up to {float(np.abs(bound - plain).max()):.3g}"
        self.log.warning("io_binding_unavailable", provider=self.provider, reason=problem, consequence="plain runs, without CUDA graphs")
        self._runner = None
        if self._settings.cuda_graphs and self.provider == Provider.CUDA.value:
            data = self.path.read_bytes()
            if hashlib.sha256(data).hexdigest() != self.sha256:
                raise ModelError(f"{self.path} changed on disk while loading; restart to load the new file")
            self._settings = self._settings.model_copy(update={"cuda_graphs": False})
            self.session, self.providers = self._create_session(data, self._settings)

    def predict(self, batch: np.ndarray) -> np.ndarray:
        """float32 (N, C, H, W) -> float32 (N, n_classes) probabilities; all rows in one run when the model allows."""
        x = batch.astype(self._input_dtype, copy=False)
        if self._fixed_batch and len(x) > 1:
            raw = np.concatenate([self._run(x[i : i + 1]) for i in range(len(x))])
        else:
            raw = self._run(x)
        raw = np.asarray(raw, np.float32)
        if raw.shape != (len(x), len(self.classes)):
            raise ModelError(f"output shape {list(raw.shape)} for a batch of {len(x)}; expected {[len(x), len(self.classes)]} "
                             f"(one row of {len(self.classes)} classes {list(self.classes)} per ROI)")
        if not self._logits:
            check_probabilities(raw)
            return np.clip(raw, 0.0, 1.0)
        shifted = raw - raw.max(axis=1, keepdims=True)
        e = np.exp(shifted)
        return e / e.sum(axis=1, keepdims=True)


def one_each(path: Path, inputs: list[str], outputs: list[str]) -> None:
    """ModelError unless the model has one input and one output: which of several to feed, or to judge by, is a guess."""
    if len(inputs) != 1:
        raise ModelError(f"{path}: {len(inputs)} inputs ({', '.join(inputs)}); expected one, the (N, C, H, W) image batch")
    if len(outputs) != 1:
        raise ModelError(f"{path}: {len(outputs)} outputs ({', '.join(outputs)}); expected one, the (N, classes) probabilities or logits")


# fp16 and INT8 models round their softmax: a row may miss 1 by a few thousandths, logits miss it by far more.
_PROBABILITY_SLACK = 0.02


def check_probabilities(raw: np.ndarray) -> None:
    """ModelError when rows declared probabilities are not: values outside 0..1 or rows that do not sum to 1 (logits)."""
    low, high = float(np.nanmin(raw)), float(np.nanmax(raw))
    sums = raw.sum(axis=1)
    if low < -_PROBABILITY_SLACK or high > 1 + _PROBABILITY_SLACK or np.any(np.abs(sums - 1) > _PROBABILITY_SLACK):
        raise ModelError(
            f"the model's output is declared probabilities but is not (values {low:.3g}..{high:.3g}, row sums "
            f"{float(sums.min()):.3g}..{float(sums.max()):.3g}); if it outputs logits, export it with output: logits"
        )


def load_classifier(
    path: Path,
    settings: ModelSettings,
    *,
    config_spec: PreprocessSpec | None = None,
    rois: int | None = None,
    log: structlog.typing.FilteringBoundLogger | None = None,
) -> OnnxClassifier:
    """The classifier `model.backend` names; onnxruntime, with one warning, when openvino is not installed."""
    log = log or structlog.get_logger("inspector.model")
    if settings.backend == "openvino":
        try:
            from inspector.model_openvino import OpenVinoClassifier
        except ImportError as exc:
            log.warning("backend_unavailable", backend="openvino", reason=f"{exc} (pip install 'inspector[openvino]')", falling_back_to="onnxruntime")
        else:
            return OpenVinoClassifier(path, settings, config_spec=config_spec, log=log)
    return OnnxClassifier(path, settings, config_spec=config_spec, rois=rois, log=log)


def _gpu_precision(settings: ModelSettings, log: structlog.typing.FilteringBoundLogger) -> str:
    """fp16 where asked (or, for auto, where a golden set allows the accuracy gate); fp32 otherwise."""
    if settings.gpu_precision == "fp16" and settings.golden is None:
        raise ModelError("model.gpu_precision: fp16 needs model.golden (labelled ok/ + ng/ images) for its accuracy gate")
    if settings.gpu_precision == "auto" and settings.golden is None:
        log.info("tensorrt_fp32", why="fp16 runs only behind the accuracy gate: set model.golden to labelled images to enable it")
        return "fp32"
    return "fp32" if settings.gpu_precision == "fp32" else "fp16"


def _provider_reason(provider: Provider) -> str | None:
    """Why a GPU provider's library cannot load here, from the dynamic loader's own words."""
    lib = _PROVIDER_LIB.get(provider)
    if lib is None:
        return None
    path = os.path.join(os.path.dirname(ort.__file__), "capi", lib)
    if not os.path.exists(path):
        return f"{lib} is not installed"
    try:
        ctypes.CDLL(path)
    except OSError as exc:
        return f"missing library: {str(exc).split(':')[0]}"
    return "libraries load but no usable GPU was found"


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def _diff(a: object, b: object, prefix: str = "") -> list[str]:
    if isinstance(a, dict) and isinstance(b, dict):
        out: list[str] = []
        for key in sorted(set(a) | set(b)):
            out += _diff(a.get(key), b.get(key), f"{prefix}{key}.")
        return out
    return [] if a == b else [f"{prefix.rstrip('.')}: config {a!r} vs model {b!r}"]
