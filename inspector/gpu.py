"""GPU execution for `OnnxClassifier`: which GPU this is, TensorRT and CUDA provider options, and the engine cache.

TensorRT builds an engine for one model, onnxruntime version, TensorRT version and GPU; building takes from
seconds to minutes, so engines (and TensorRT's timing cache) are kept in the state directory, in a folder
named by a key over those four. A folder whose key no longer matches is deleted at start, and the log says
what changed, so an upgraded driver stack or a swapped GPU never loads a stale engine.
"""

from __future__ import annotations

import ctypes
import hashlib
import importlib.metadata
import json
import shutil
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
import structlog

KEY_FILE = "key.json"
_CU_COMPUTE_MAJOR, _CU_COMPUTE_MINOR = 75, 76  # CUdevice_attribute values in cuda.h


@dataclass(frozen=True, slots=True)
class GpuIdentity:
    """What an engine is built for: the GPU's name and compute capability, and the driver."""

    name: str
    compute_capability: str  # "9.0" for an H100
    driver: str  # CUDA driver API version, "12.8"


def gpu_identity(device_id: int = 0) -> GpuIdentity | None:
    """The GPU `device_id` as the CUDA driver reports it; None when there is no driver or no such device."""
    try:
        # The driver's soname directly: ctypes.util.find_library would run ldconfig in a subprocess on every load.
        cuda = ctypes.CDLL("libcuda.so.1")
    except OSError:
        return None
    dev, major, minor, version = ctypes.c_int(), ctypes.c_int(), ctypes.c_int(), ctypes.c_int()
    name = ctypes.create_string_buffer(256)
    calls = (
        lambda: cuda.cuInit(0),
        lambda: cuda.cuDeviceGet(ctypes.byref(dev), device_id),
        lambda: cuda.cuDeviceGetName(name, len(name), dev),
        lambda: cuda.cuDeviceGetAttribute(ctypes.byref(major), _CU_COMPUTE_MAJOR, dev),
        lambda: cuda.cuDeviceGetAttribute(ctypes.byref(minor), _CU_COMPUTE_MINOR, dev),
        lambda: cuda.cuDriverGetVersion(ctypes.byref(version)),
    )
    for call in calls:
        if call() != 0:  # CUDA_SUCCESS
            return None
    v = version.value
    return GpuIdentity(name.value.decode(errors="replace"), f"{major.value}.{minor.value}", f"{v // 1000}.{(v % 1000) // 10}")


def tensorrt_version() -> str | None:
    """The TensorRT library version onnxruntime's TensorRT provider would load; None when it is not installed."""
    for dist in ("tensorrt", "tensorrt-cu13", "tensorrt-cu12", "tensorrt-cu13-libs", "tensorrt-cu12-libs"):
        try:
            return importlib.metadata.version(dist)  # pip's TensorRT wheels, whose libraries are not on the loader's path
        except importlib.metadata.PackageNotFoundError:
            continue
    for name in ("libnvinfer.so.10", "libnvinfer.so.11", "libnvinfer.so.8"):
        try:
            lib = ctypes.CDLL(name)
        except OSError:
            continue
        lib.getInferLibVersion.restype = ctypes.c_int32
        v = int(lib.getInferLibVersion())
        # TensorRT 10 encodes major*10000 + minor*100 + patch; 8.x used major*1000 + minor*100 + patch.
        major, rest = (v // 10000, v % 10000) if v >= 10000 else (v // 1000, v % 1000)
        return f"{major}.{rest // 100}.{rest % 100}"
    return None


@dataclass(frozen=True, slots=True)
class EngineKey:
    """Everything a cached TensorRT engine depends on; a change of any field means a rebuild."""

    model_sha256: str
    onnxruntime: str
    tensorrt: str
    gpu: str
    compute_capability: str
    precision: str  # fp16 | fp32
    profile: str  # the input shape profile, min/opt/max

    @property
    def digest(self) -> str:
        """A short stable name for the cache folder."""
        return hashlib.sha256(json.dumps(asdict(self), sort_keys=True).encode()).hexdigest()[:16]


def engine_cache(base: Path, key: EngineKey, log: structlog.typing.FilteringBoundLogger) -> Path | None:
    """The cache folder for `key` under `base`, created; stale folders of earlier keys removed. None when `base` is unusable."""
    folder = base / key.digest
    try:
        base.mkdir(parents=True, exist_ok=True)
        for old in sorted(base.iterdir()):
            if old == folder or not (old / KEY_FILE).is_file():
                continue  # only folders this code made are ever deleted
            changed = _changed(old / KEY_FILE, key)
            shutil.rmtree(old)
            log.info("engine_cache_invalidated", folder=str(old), changed=changed)
        folder.mkdir(exist_ok=True)
        if not (folder / KEY_FILE).is_file():
            (folder / KEY_FILE).write_text(json.dumps(asdict(key), indent=2, sort_keys=True) + "\n")
            log.info("engine_cache_new", folder=str(folder), detail="TensorRT builds the engine on this first load (seconds to minutes)")
    except OSError as exc:
        log.warning(
            "engine_cache_unavailable", folder=str(folder), reason=exc.strerror or str(exc),
            consequence="TensorRT rebuilds its engine on every start; set model.cache_dir to a writable folder",
        )
        return None
    return folder


def _changed(path: Path, key: EngineKey) -> list[str]:
    """The key fields that differ from a stored key, as 'field: old -> new'."""
    try:
        old = json.loads(path.read_text())
    except (OSError, ValueError):
        return ["unreadable key"]
    new = asdict(key)
    return [f"{k}: {old.get(k)} -> {v}" for k, v in new.items() if old.get(k) != v] or ["unknown"]


def profile_shapes(input_name: str, chw: tuple[int, int, int], opt_batch: int, max_batch: int) -> dict[str, str]:
    """TensorRT's explicit shape profile: batch 1 to `max_batch`, tuned for the station's ROI count."""
    c, h, w = chw
    top = max(opt_batch, max_batch)
    return {
        "trt_profile_min_shapes": f"{input_name}:1x{c}x{h}x{w}",
        "trt_profile_opt_shapes": f"{input_name}:{opt_batch}x{c}x{h}x{w}",
        "trt_profile_max_shapes": f"{input_name}:{top}x{c}x{h}x{w}",
    }


def tensorrt_options(device_id: int, fp16: bool, cache: Path | None, profile: dict[str, str]) -> dict[str, Any]:
    """Provider options for onnxruntime's TensorRT provider."""
    options: dict[str, Any] = {"device_id": device_id, "trt_fp16_enable": fp16, **profile}
    if cache is not None:
        options.update({
            "trt_engine_cache_enable": True,
            "trt_engine_cache_path": str(cache),
            "trt_timing_cache_enable": True,
            "trt_timing_cache_path": str(cache),
        })
    return options


def cuda_options(device_id: int, graphs: bool) -> dict[str, Any]:
    """Provider options for onnxruntime's CUDA provider; CUDA graphs need IO binding at fixed addresses, which `BoundRunner` gives."""
    return {
        "device_id": device_id,
        "cudnn_conv_algo_search": "EXHAUSTIVE",  # measured once per shape at warm-up, before the first part
        "do_copy_in_default_stream": True,
        "enable_cuda_graph": graphs,
    }


class BoundRunner:
    """Runs a GPU session through IO binding into preallocated device buffers, one pair per batch size.

    Fixed buffer addresses let the CUDA provider capture each batch size once as a CUDA graph and replay it;
    the copy in and out is one memcpy each instead of onnxruntime's per-run allocations.
    """

    def __init__(
        self, session: ort.InferenceSession, input_name: str, output_name: str, device_id: int, *, graphs: bool, device: str = "cuda"
    ) -> None:
        self._session, self._input, self._output = session, input_name, output_name
        self._device, self._device_id, self._graphs = device, device_id, graphs
        self._bound: dict[tuple[int, ...], tuple[Any, Any, Any, ort.RunOptions]] = {}

    def __call__(self, x: Any) -> Any:
        """Run one batch (a contiguous numpy array); returns the output as numpy."""
        entry = self._bound.get(x.shape)
        if entry is None:
            entry = self._bind(x)
        else:
            entry[1].update_inplace(x)
        io, _inp, out, options = entry
        self._session.run_with_iobinding(io, options)
        return out.numpy()

    def _bind(self, x: Any) -> tuple[Any, Any, Any, ort.RunOptions]:
        inp = ort.OrtValue.ortvalue_from_numpy(x, self._device, self._device_id)
        meta = self._session.get_outputs()[0]
        out_shape = [x.shape[0], *(d if isinstance(d, int) else 1 for d in meta.shape[1:])]
        dtype = np.float16 if meta.type == "tensor(float16)" else np.float32
        out = ort.OrtValue.ortvalue_from_shape_and_type(out_shape, dtype, self._device, self._device_id)
        io = self._session.io_binding()
        io.bind_ortvalue_input(self._input, inp)
        io.bind_ortvalue_output(self._output, out)
        options = ort.RunOptions()
        if self._graphs:
            # One graph per batch size; onnxruntime reserves id 0.
            options.add_run_config_entry("gpu_graph_id", str(len(self._bound) + 1))
        entry = (io, inp, out, options)
        self._bound[x.shape] = entry
        return entry
