"""`InspectorSettings`: one strict, described configuration from a YAML file plus `INSPECTOR_` environment overrides."""

from __future__ import annotations

import ipaddress
import os
import re
import ssl
import types
import typing
import urllib.parse
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic_core import PydanticCustomError
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    SettingsError,
    YamlConfigSettingsSource,
)

from inspector import yaml_load
from inspector.digest import file_sha256
from inspector.errors import ConfigError
from inspector.preprocess import MAX_ROIS, PreprocessSpec, Roi, repeated_names
from inspector.strict_numbers import StrictNumbers

DEFAULT_CONFIG = Path("/etc/inspector/inspector.yaml")
ENV_PREFIX = "INSPECTOR_"


class Provider(StrEnum):
    """onnxruntime execution providers inspector knows how to ask for."""

    TENSORRT = "tensorrt"
    CUDA = "cuda"
    CPU = "cpu"


class GraphOptimization(StrEnum):
    """onnxruntime graph optimization levels."""

    DISABLED = "disabled"
    BASIC = "basic"
    EXTENDED = "extended"
    ALL = "all"


class Spinning(StrEnum):
    """How onnxruntime's worker threads wait for their next piece of work."""

    OFF = "off"
    RUN = "run"
    ALWAYS = "always"


_BOOL_WORDS = {"true": True, "on": True, "yes": True, "1": True, "false": False, "off": False, "no": False, "0": False}

# YAML 1.1 reads on/off/yes/no as booleans, and `spinning` was a boolean before it had a third value.
_SPINNING_WORDS = {word: Spinning.ALWAYS if on else Spinning.OFF for word, on in _BOOL_WORDS.items()}


class _Section(StrictNumbers):
    model_config = ConfigDict(extra="forbid", validate_default=True)


class ModelSettings(_Section):
    """The ONNX classifier and how onnxruntime runs it."""

    path: Path | None = Field(default=None, description="ONNX model file. Required by `run`; `replay --model` overrides it.")
    sha256: str | None = Field(
        default=None,
        pattern=r"^[0-9a-f]{64}$",
        description="Pin: refuse to load a model whose SHA-256 (64 lowercase hex digits) differs.",
    )
    providers: list[Provider] = Field(
        default=[Provider.TENSORRT, Provider.CUDA, Provider.CPU],
        min_length=1,
        description="Execution providers in order of preference: tensorrt, cuda, cpu; those that cannot load are skipped with one warning each.",
    )
    intra_op_threads: int = Field(
        default=2, ge=0, le=256, description="Threads inside one inference (count); 0 lets onnxruntime use every physical core."
    )
    spinning: Spinning = Field(
        default=Spinning.OFF,
        description="How onnxruntime's worker threads wait: off (sleep between the model's layers), run (spin-wait while a "
        "frame is inferred, sleep as soon as it is done), always (spin between frames too: costs a core while idle, which "
        "decode needs on small CPUs). true/false read as always/off.",
    )
    pin_threads: bool | Literal["auto"] = Field(
        default="auto",
        description="Pin each onnxruntime worker thread to a physical core of its own among the CPUs this process may use "
        "(systemd CPUAffinity=, taskset), and hold the calling thread on the first core while it runs the model. Unpinned, "
        "the scheduler often puts the caller and a worker woken after an idle gap on one core, and that frame runs at "
        "one-thread speed. auto: pin when intra_op_threads equals the physical cores this process may use (a 2-core PC, "
        "or a station given its own cores with CPUAffinity=); with cores to spare the threads float, so that stations "
        "sharing a PC without CPUAffinity= do not all pin to the same cores. true: pin whenever there are enough cores. "
        "Skipped, with a warning, when there are fewer cores than threads.",
    )
    graph_optimization: GraphOptimization = Field(
        default=GraphOptimization.ALL, description="onnxruntime graph optimization level: disabled, basic, extended or all."
    )
    warmup_runs: int = Field(default=2, ge=0, le=100, description="Inferences on a blank batch before the first frame (count).")
    keepalive_s: float = Field(
        default=2.0,
        ge=0.0,
        le=3600.0,
        description="Seconds without a frame after which the daemon runs one inference on a blank batch, and again each time "
        "this long passes idle, so that caches, CPU clocks and the GPU stay warm for the next part (0 = off).",
    )
    backend: Literal["onnxruntime", "openvino"] = Field(
        default="onnxruntime",
        description="Inference runtime: onnxruntime (with `providers`) or openvino (its CPU plugin; the `openvino` extra). "
        "When openvino is not installed, onnxruntime runs the model, with one warning.",
    )
    openvino_precision: Literal["auto", "bf16", "fp32"] = Field(
        default="auto",
        description="OpenVINO inference precision: bf16 (needs a CPU with AMX or AVX512-BF16, and `model.golden` for the "
        "accuracy gate), fp32, or auto (bf16 where both hold, fp32 otherwise).",
    )
    golden: Path | None = Field(
        default=None,
        description="Labelled golden images (ok/ + ng/<defect>/) for the load-time accuracy gate of a reduced-precision "
        "backend (openvino bf16, tensorrt fp16): refused when ROC-AUC drops > 0.005 or > 0.5% of verdicts flip against onnxruntime fp32.",
    )
    device_id: int = Field(default=0, ge=0, le=63, description="CUDA device index for the tensorrt and cuda providers.")
    gpu_precision: Literal["auto", "fp16", "fp32"] = Field(
        default="auto",
        description="TensorRT precision: fp16 (needs `model.golden` for the accuracy gate), fp32, or auto (fp16 when "
        "`model.golden` is set, fp32 otherwise).",
    )
    gpu_max_batch: int = Field(
        default=16, ge=1, le=1024,
        description="Largest batch (ROIs per inference) the TensorRT engine's shape profile accepts; the profile is tuned for the station's ROI count.",
    )
    cuda_graphs: bool = Field(
        default=True,
        description="Capture each batch size as a CUDA graph on the cuda provider (inputs bound to fixed GPU buffers); "
        "turned off, with a warning, when the model cannot be captured.",
    )
    cache_dir: Path | None = Field(
        default=None,
        description="Folder for TensorRT engines and timing caches, one subfolder per model, onnxruntime, TensorRT and GPU; "
        "default: engines/ beside `journal.path` (the state directory).",
    )
    classes: list[str] | None = Field(
        default=None, description="Class names, only for a model without a manifest (then `preprocess` is needed too)."
    )
    output: Literal["logits", "probabilities"] = Field(
        default="logits", description="What a model without a manifest outputs: logits or probabilities."
    )

    @field_validator("pin_threads", mode="before")
    @classmethod
    def _pin_words(cls, v: Any) -> Any:
        if isinstance(v, str) and v.lower() == "auto":
            return "auto"
        if isinstance(v, str | int) and str(v).lower() in _BOOL_WORDS:  # bool is an int: True -> "true"
            return _BOOL_WORDS[str(v).lower()]
        raise ValueError(f"expected true, false or auto, got {v!r}")

    @field_validator("spinning", mode="before")
    @classmethod
    def _spinning_bool(cls, v: Any) -> Any:
        if isinstance(v, str | int) and str(v).lower() in _SPINNING_WORDS:  # bool is an int: True -> "true"
            return _SPINNING_WORDS[str(v).lower()]
        return v

    @field_validator("providers")
    @classmethod
    def _unique(cls, v: list[Provider]) -> list[Provider]:
        if len(set(v)) != len(v):
            raise ValueError(f"each provider at most once, got {[p.value for p in v]}")
        return v


THRESHOLD_DECIMALS = 6  # decision.SCORE_DECIMALS: scores are published floored to 6 decimals (decision imports this module)


def threshold_problem(value: float) -> str | None:
    """Why `value` cannot be a threshold, or None: every threshold (config, record, flag) is checked here.

    A published score (floored to 6 decimals) is >= a threshold exactly when the score itself is, only for a threshold
    of at most 6 decimals: with 0.4446995, a score of 0.44469953 rejects but is published as 0.444699, below it.
    The check is round(value, 6) == value, not decimal text: values arrive as floats (YAML, JSON, the environment),
    and round() is correctly rounded, so the float of any number of at most 6 decimals (0.3, 0.7266, typed or read)
    rounds to itself, while a float that is the nearest to no such number does not.
    """
    if not 0.0 <= value <= 1.0:  # NaN fails this too
        return f"expected a number in 0..1, got {value}"
    if round(value, THRESHOLD_DECIMALS) != value:
        return f"expected a number in 0..1 with at most {THRESHOLD_DECIMALS} decimals (scores are published with {THRESHOLD_DECIMALS}), got {value}"
    return None


def _threshold(value: float) -> float:
    problem = threshold_problem(value)
    if problem is not None:
        raise PydanticCustomError("threshold_decimals", problem)  # not ValueError: no "Value error, " before it in a record's errors
    return value + 0.0  # -0.0 is the threshold 0, published as 0.0


# A threshold in 0..1 of at most 6 decimals: the range is in the schema, the decimals are checked after it.
Threshold = Annotated[float, Field(ge=0.0, le=1.0), AfterValidator(_threshold)]
UncertainRoute = Literal["reject", "review"]


class DecisionSettings(_Section):
    """How scores become verdicts. A ROI's score is 1 - P(ok)."""

    threshold: Threshold = Field(
        default=0.5,
        description="Reject a ROI when its score >= threshold (0..1, at most 6 decimals as scores are published). Lower catches "
        "more NG at the cost of false rejects; set it with `inspector calibrate`.",
    )
    roi_thresholds: dict[str, Threshold] = Field(
        default_factory=dict, description="Per-ROI thresholds (0..1, at most 6 decimals) by ROI name; ROIs not listed use `threshold`."
    )
    calibration: Path | None = Field(
        default=None,
        description="Calibration record from `inspector calibrate` (calibration/<station>.yaml). Its thresholds and uncertain band "
        "replace `threshold` and `roi_thresholds`; a record made for another model (sha256) is refused.",
    )
    uncertain_route: UncertainRoute = Field(
        default="reject",
        description="Where verdict `uncertain` (a score inside the calibration's uncertain band) goes: reject (the reject gate, "
        "`reject` topic, processed/reject) or review (a manual-review gate: `review` topic, processed/review).",
    )
    deadline_ms: int = Field(
        default=1000,
        ge=1,
        le=600_000,
        description="Milliseconds from capture by which a verdict must be ready (1..600000). A pass decided later becomes "
        "a reject with reason `deadline` (its score is still recorded); the PLC checks `deadline_at` in each decision.",
    )

    @model_validator(mode="after")
    def _one_source_of_thresholds(self) -> DecisionSettings:
        if self.calibration is not None:
            both = sorted({"threshold", "roi_thresholds"} & self.model_fields_set)
            if both:
                # Two sources would leave a reviewer unsure which threshold the line runs.
                raise ValueError(
                    f"calibration sets the thresholds: remove {' and '.join('decision.' + b for b in both)}, or decision.calibration"
                )
        return self


TOPIC_LEVEL = r"^[A-Za-z0-9_.-]+$"


class StationSettings(_Section):
    """Which line and station this daemon serves; both name its MQTT topics."""

    line: str = Field(default="line1", min_length=1, max_length=64, pattern=TOPIC_LEVEL, description="Line name (letters, digits, _ . -).")
    name: str = Field(
        default="station1", min_length=1, max_length=64, pattern=TOPIC_LEVEL, description="Station name (letters, digits, _ . -)."
    )


class SourceKind(StrEnum):
    """Where frames come from."""

    FOLDER = "folder"
    CAMERA = "camera"


class SourceSettings(_Section):
    """Where frames come from: a watched folder that an acquisition program writes into, or an OpenCV camera/stream."""

    kind: SourceKind = Field(default=SourceKind.FOLDER, description="folder (watched folder) or camera (OpenCV VideoCapture).")
    path: Path | None = Field(default=None, description="folder: the watched folder. Required for kind=folder.")
    uri: str | None = Field(
        default=None,
        description="camera: device index (0), V4L2 path (/dev/video0), RTSP/HTTP URL, GStreamer pipeline (contains `!`) "
        "or a video file. Required for kind=camera.",
    )
    watch: Literal["auto", "inotify", "poll"] = Field(
        default="auto", description="folder: inotify events, polling, or auto (inotify, falling back to polling when it cannot start)."
    )
    poll_interval_ms: int = Field(default=100, ge=10, le=10_000, description="folder: polling period when polling (ms, 10..10000).")
    settle_ms: int = Field(
        default=300,
        ge=0,
        le=60_000,
        description="folder: a file written in place counts once its size has not changed for this long (ms); "
        "a file renamed into the folder counts at once.",
    )
    rescan_s: float = Field(
        default=5.0, ge=0.5, le=3600, description="folder: full rescan period (s) that catches files whose events were lost."
    )
    process_existing: bool = Field(default=True, description="folder: judge the files already in the folder at start.")
    after_decision: Literal["move", "delete"] = Field(
        default="move", description="folder: move each judged file to processed/pass|reject/, or delete it."
    )
    ignore: list[str] = Field(
        default=[".*", "*.tmp", "*.part", "*.partial", "*.swp", "*.reason"],
        description="folder: glob patterns of file names never judged (temporary names an acquisition program renames later).",
    )
    part_id: Literal["auto", "filename", "counter"] = Field(
        default="auto",
        description="Part id in each decision: the file name's stem, a counter per daemon session, or auto (filename for folder, counter for camera).",
    )
    fps: float = Field(
        default=0.0, ge=0.0, le=1000.0, description="camera: read at most this many frames per second (0: as the stream delivers)."
    )
    backend: Literal["auto", "ffmpeg", "gstreamer", "v4l2"] = Field(
        default="auto", description="camera: OpenCV capture backend; auto picks gstreamer for pipelines with `!`."
    )
    reconnect_min_s: float = Field(default=0.5, gt=0, le=60, description="camera: first reconnect delay (s); doubles per failure.")
    reconnect_max_s: float = Field(default=30.0, gt=0, le=3600, description="camera: longest reconnect delay (s).")
    stall_timeout_s: float = Field(
        default=10.0, ge=0, le=3600, description="camera: a stream that delivers no frame for this long is reopened (s; 0 = never)."
    )
    loop_video: bool = Field(
        default=False,
        description="camera: when `uri` is a video file, start it again at its end, each pass counting as new parts; "
        "off: the file is read once and the daemon stops (exit 0) after its last frame is decided.",
    )

    @field_validator("uri", mode="before")
    @classmethod
    def _device_index(cls, v: Any) -> Any:
        # `uri: 0` is how a device index reads in YAML; it is the same camera as "0".
        return str(v) if isinstance(v, int) and not isinstance(v, bool) and v >= 0 else v

    @field_validator("uri")
    @classmethod
    def _not_blank(cls, v: str | None) -> str | None:
        if v is not None and not v.strip():
            # OpenCV would "open" it and deliver nothing, which reads as a stalled camera.
            raise ValueError("empty; expected a device index (0), device path, RTSP/HTTP URL, GStreamer pipeline or video file")
        return v

    @model_validator(mode="after")
    def _backoff(self) -> SourceSettings:
        if self.reconnect_max_s < self.reconnect_min_s:
            raise ValueError(f"reconnect_max_s ({self.reconnect_max_s}) must be >= reconnect_min_s ({self.reconnect_min_s})")
        return self

    @model_validator(mode="after")
    def _part_id_source(self) -> SourceSettings:
        if self.kind == SourceKind.CAMERA and self.part_id == "filename":
            raise ValueError("part_id: filename needs kind: folder (a camera frame has no file name); use counter or auto")
        return self


class PipelineSettings(_Section):
    """Queues between acquisition, inference and publishing, and what happens when inference falls behind."""

    queue_size: int = Field(
        default=8, ge=1, le=10_000, description="Frames waiting for inference (count). A frame that finds the queue full is an overload."
    )
    overload: Literal["reject", "skip"] = Field(
        default="reject",
        description="Overflow frames: reject (a decision with reason `overload`) or skip (counted, no decision; only for "
        "free-running cameras, where a frame is not a part).",
    )
    output_queue_size: int = Field(
        default=4096, ge=16, le=1_000_000, description="Verdicts waiting for the journal (count); when full, acquisition waits."
    )
    stall_s: float = Field(
        default=30.0,
        gt=0,
        le=3600,
        description="A stage (acquisition, inference, outbox) that makes no progress for this long withholds systemd watchdog pings (s).",
    )
    shutdown_timeout_s: float = Field(
        default=10.0, gt=0, le=600, description="On SIGTERM: time allowed to finish in-flight frames and flush to the broker (s)."
    )
    cpu_latency_us: int | None = Field(
        default=None,
        ge=0,
        le=1_000_000,
        description="Longest wake-up latency the daemon lets idle CPU cores have while it runs (µs), asked of the kernel through "
        "/dev/cpu_dma_latency for the daemon's lifetime: 0 keeps idle cores polling (the fastest wake-up, and the only value "
        "that changes anything in a VM; idle cores draw more power); 1-100 allows only shallow idle states on bare metal; "
        "null (or off, the default) asks for nothing. Measure before setting it (docs/performance.md). Without write access to "
        "the device: one warning, and the kernel's default.",
    )

    @field_validator("cpu_latency_us", mode="before")
    @classmethod
    def _latency_off(cls, v: Any) -> Any:
        # YAML 1.1 reads `off` as false, which an int field would take as 0: the opposite of what it says.
        if v is False or (isinstance(v, str) and v.strip().lower() in ("off", "null", "none", "false", "no")):
            return None
        if v is True or (isinstance(v, str) and not v.strip().isdigit()):
            raise ValueError(f"expected whole microseconds (0 to 1000000) or null/off, got {v!r}")
        return v


class TlsSettings(_Section):
    """TLS to the broker."""

    enabled: bool = Field(default=False, description="Connect with TLS.")
    ca_file: Path | None = Field(default=None, description="CA certificate (PEM) that signed the broker's certificate; system CAs when unset.")
    cert_file: Path | None = Field(default=None, description="Client certificate (PEM), for brokers that require one.")
    key_file: Path | None = Field(default=None, description="Client private key (PEM).")
    insecure: bool = Field(default=False, description="Skip the broker hostname check (test benches only).")

    @model_validator(mode="after")
    def _pair(self) -> TlsSettings:
        if (self.cert_file is None) != (self.key_file is None):
            raise ValueError("cert_file and key_file go together: set both or neither")
        return self


# Labels of letters, digits, - and _ (docker and some LANs use _), joined by dots; an IPv4 address matches too.
_HOST_NAME = re.compile(r"(?=.{1,253}$)[A-Za-z0-9_](?:[A-Za-z0-9_-]{0,61}[A-Za-z0-9_])?(?:\.[A-Za-z0-9_](?:[A-Za-z0-9_-]{0,61}[A-Za-z0-9_])?)*\.?")


class MqttSettings(_Section):
    """The broker that carries decisions to PLCs and line controllers."""

    host: str = Field(
        default="127.0.0.1", min_length=1, description="Broker host name or IP address: no scheme, no port (that is `port`)."
    )
    port: int = Field(default=1883, ge=1, le=65535, description="Broker TCP port (1883 plain, 8883 TLS).")
    protocol: Literal["5", "3.1.1"] = Field(default="5", description="MQTT protocol version: 5 (properties, reason codes) or 3.1.1.")
    client_id: str | None = Field(
        default=None, max_length=128, description="Client id; default inspector-<line>-<station>. Must be unique on the broker."
    )
    username: str | None = Field(default=None, description="Username, when the broker requires one.")
    password: SecretStr | None = Field(default=None, description="Password (never logged). Prefer password_file or a systemd credential.")
    password_file: Path | None = Field(
        default=None,
        description="File holding the password. Unset: $CREDENTIALS_DIRECTORY/mqtt-password when systemd passes that credential.",
    )
    topic_prefix: str | None = Field(
        default=None,
        description="Topic prefix; default inspector/v1/<line>/<station>. No wildcards (# or +), no trailing slash.",
    )
    keepalive_s: int = Field(default=5, ge=1, le=3600, description="Keepalive (s): the broker publishes the offline Last Will after 1.5x this.")
    reconnect_min_s: float = Field(default=0.5, gt=0, le=60, description="First reconnect delay (s); doubles per failure.")
    reconnect_max_s: float = Field(default=30.0, gt=0, le=3600, description="Longest reconnect delay (s).")
    connect_timeout_s: float = Field(
        default=5.0, ge=0, le=600, description="At start: wait this long for the broker before reporting ready anyway (the journal keeps every decision) (s)."
    )
    max_queued_messages: int = Field(
        default=1000, ge=10, le=1_000_000, description="Messages paho may hold for one connection (count); the journal holds the rest."
    )
    inflight_window: int = Field(
        default=10, ge=1, le=65535,
        description="Record messages awaiting the broker's acknowledgement at once (count); at most half of the 20 the station "
        "keeps in flight (fewer under a lower broker Receive Maximum), the rest being kept for decisions."
    )
    tls: TlsSettings = Field(default_factory=TlsSettings, description="TLS.")

    @field_validator("host")
    @classmethod
    def _host(cls, v: str) -> str:
        # paho takes a bare name: "mqtt://broker" or "broker:8883" would fail only at connect time, as a name lookup error.
        if "://" in v:
            raise ValueError(f"expected a host name or IP address, got {v!r}: leave out the scheme (TLS is mqtt.tls.enabled)")
        if any(c.isspace() for c in v):
            raise ValueError(f"expected a host name or IP address, got {v!r}: no spaces")
        if v.count(":") == 1:
            raise ValueError(f"expected a host name or IP address without a port, got {v!r}: put the port in mqtt.port")
        if v.count(":") > 1:
            try:
                ipaddress.IPv6Address(v)
            except ValueError:
                raise ValueError(f"expected a host name or IP address, got {v!r}: not an IPv6 address (write it without [ ] or port)") from None
        elif not _HOST_NAME.fullmatch(v):
            raise ValueError(f"expected a host name or IP address, got {v!r}: letters, digits, - _ and dots only")
        return v

    @field_validator("topic_prefix")
    @classmethod
    def _prefix(cls, v: str | None) -> str | None:
        if v is None:
            return v
        if not v:
            raise ValueError("empty; leave it unset for the default inspector/v1/<line>/<station>")
        if "#" in v or "+" in v:
            raise ValueError(f"no MQTT wildcards (# or +) in a topic prefix, got {v!r}")
        if v.endswith("/"):
            raise ValueError(f"must not end with /, got {v!r}: the topics are <prefix>/decision and so on")
        if "\x00" in v:
            raise ValueError("no NUL character in a topic prefix")
        return v

    @model_validator(mode="after")
    def _check(self) -> MqttSettings:
        if self.password is not None and self.password_file is not None:
            raise ValueError("set password or password_file, not both")
        if self.reconnect_max_s < self.reconnect_min_s:
            raise ValueError(f"reconnect_max_s ({self.reconnect_max_s}) must be >= reconnect_min_s ({self.reconnect_min_s})")
        return self


class JournalSettings(_Section):
    """The local SQLite journal: every decision is written here before it is published."""

    path: Path = Field(default=Path("/var/lib/inspector/journal.sqlite3"), description="Journal database file (SQLite, WAL).")
    max_age_days: float = Field(default=90.0, gt=0, le=36_500, description="Delete published records older than this (days).")
    max_size_mb: float = Field(
        default=2048.0, gt=1, le=1_000_000, description="Delete the oldest published records while the journal is larger than this (MiB)."
    )


class MetricsSettings(_Section):
    """Counters and latencies: on the MQTT `metrics` topic and, optionally, a Prometheus endpoint."""

    interval_s: float = Field(default=10.0, ge=0, le=3600, description="Publish metrics every this many seconds (0: never).")
    window: int = Field(default=200, ge=1, le=100_000, description="Decisions in the rolling reject-rate and latency window (count).")
    prometheus_port: int | None = Field(default=None, ge=1, le=65535, description="Serve Prometheus text metrics on this port (off when unset).")
    prometheus_addr: str = Field(default="127.0.0.1", description="Address the Prometheus endpoint binds to.")


class LogSettings(_Section):
    """Structured logging."""

    level: Literal["debug", "info", "warning", "error"] = Field(default="info", description="Lowest level logged.")
    format: Literal["auto", "json", "console"] = Field(
        default="auto", description="json (one object a line, for journald), console (key=value), or auto: console on a TTY, else json."
    )


class InspectorSettings(BaseSettings):
    """Everything `inspector` reads from its YAML file and `INSPECTOR_*` environment variables (`__` nests)."""

    model_config = SettingsConfigDict(
        extra="forbid",
        env_prefix=ENV_PREFIX,
        env_nested_delimiter="__",
        validate_default=True,
        yaml_file=None,
    )

    preprocess: PreprocessSpec | None = Field(
        default=None,
        description="Preprocessing for a model without a manifest. Leave unset: the model's manifest defines it, and a different one here is refused.",
    )
    rois: tuple[Roi, ...] | None = Field(
        default=None, description="This station's ROI layout, replacing the boxes of the model's ROIs: the same names, each of them (any names for a whole-frame model)."
    )
    model: ModelSettings = Field(default_factory=ModelSettings, description="The ONNX classifier.")
    decision: DecisionSettings = Field(default_factory=DecisionSettings, description="Thresholds and the decision deadline.")
    station: StationSettings = Field(default_factory=StationSettings, description="Line and station names.")
    source: SourceSettings = Field(default_factory=SourceSettings, description="Where frames come from (`inspector run`).")
    pipeline: PipelineSettings = Field(default_factory=PipelineSettings, description="Queues and overload policy (`inspector run`).")
    mqtt: MqttSettings = Field(default_factory=MqttSettings, description="The MQTT broker (`inspector run`).")
    journal: JournalSettings = Field(default_factory=JournalSettings, description="The local decision journal (`inspector run`).")
    metrics: MetricsSettings = Field(default_factory=MetricsSettings, description="Metrics (`inspector run`).")
    log: LogSettings = Field(default_factory=LogSettings, description="Logging.")

    @field_validator("rois")
    @classmethod
    def _station_rois(cls, v: tuple[Roi, ...] | None) -> tuple[Roi, ...] | None:
        if v is None:
            return v
        if not v:
            # An empty list would silently judge the whole frame as one ROI in place of the model's.
            raise ValueError("give at least one ROI, or leave rois out to use the model's ROIs")
        if len(v) > MAX_ROIS:
            raise ValueError(f"at most {MAX_ROIS} ROIs, got {len(v)}")
        dupes = repeated_names(v)
        if dupes:
            raise ValueError(f"ROI names must be unique, repeated: {', '.join(dupes)}")
        return v

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        """Precedence: explicit arguments, then environment, then the YAML file."""
        return (init_settings, env_settings, YamlConfigSettingsSource(settings_cls))


def load_settings(path: Path | None = None, **overrides: Any) -> InspectorSettings:
    """Load the YAML file (default /etc/inspector/inspector.yaml, when present) and the environment; ConfigError on any problem."""
    if path is None:
        path = DEFAULT_CONFIG if DEFAULT_CONFIG.is_file() else None
    elif path.is_dir():
        raise ConfigError(f"config file expected, got a folder: {path}", [f"{path}: is a folder; expected a YAML file"])
    elif not path.is_file():
        raise ConfigError(f"config file not found: {path}", [f"{path}: no such file"])
    if path is not None:
        _check_yaml(path)
    where = f" in {path}" if path else ""
    errors = env_errors(os.environ)
    # pydantic-settings reads the YAML path from the class config, so bind it on a throwaway subclass.
    bound = type(
        "InspectorSettings", (InspectorSettings,), {"model_config": {**InspectorSettings.model_config, "yaml_file": path}}
    )
    try:
        settings = bound(**overrides)
    except ValidationError as exc:
        errors += format_errors(exc, InspectorSettings, environ=os.environ)
    except SettingsError as exc:
        # Raised before validation, when a section's variable holds something that is not JSON.
        errors += _unparsable_env(exc, os.environ)
    except RecursionError:
        # The file was read above, so the nesting is in an INSPECTOR_* variable's JSON.
        ours = [v for v in os.environ if v.upper().startswith(ENV_PREFIX)]
        var = max(ours, key=lambda v: os.environ[v].count("[") + os.environ[v].count("{"), default=ENV_PREFIX + "*")
        errors.append(f"{var}: its JSON is nested too deeply to read")
    if errors:
        raise ConfigError(f"{len(errors)} configuration error(s){where}", errors)
    return settings


def env_errors(environ: typing.Mapping[str, str]) -> list[str]:
    """An `INSPECTOR_*` variable that names no section: pydantic-settings ignores it, and the override with it.

    A wrong key inside a known section reaches validation, which names it as an unknown key.
    """
    sections = InspectorSettings.model_fields
    return [
        f"{var}: no such setting; allowed at the top level: {', '.join(sections)}"
        for var in sorted(environ)
        if var.upper().startswith(ENV_PREFIX) and var[len(ENV_PREFIX) :].lower().split("__")[0] not in sections
    ]


def _unparsable_env(exc: SettingsError, environ: typing.Mapping[str, str]) -> list[str]:
    field = re.search(r'field "(\w+)"', str(exc))
    prefix = f"{ENV_PREFIX}{field.group(1).upper()}" if field else ENV_PREFIX
    names = sorted(v for v in environ if v.upper() == prefix or v.upper().startswith(prefix + "__")) or [prefix + "*"]
    return [
        f"{name}: cannot read {environ.get(name, '')!r}: lists and mappings are JSON, like INSPECTOR_MODEL__PROVIDERS='[\"cpu\"]'"
        for name in names
    ]


def _check_yaml(path: Path) -> None:
    try:
        data = yaml_load.safe_load(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError as exc:
        raise ConfigError(f"config file {path} is not UTF-8 text", [f"{path}: byte 0x{exc.object[exc.start]:02x} at offset {exc.start} is not UTF-8"]) from exc
    except OSError as exc:
        raise ConfigError(f"cannot read config file {path}: {exc.strerror}", [f"{path}: {exc.strerror}"]) from exc
    except yaml.YAMLError as exc:
        raise ConfigError(f"config file {path} is not valid YAML", [yaml_load.problem_line(exc, path)]) from exc
    if data is not None and not isinstance(data, dict):
        raise ConfigError(
            f"config file {path} must hold a mapping of sections", [f"{path}: expected a mapping, got {type(data).__name__}"]
        )


def format_errors(exc: ValidationError, root: type[BaseModel], *, environ: typing.Mapping[str, str] | None = None) -> list[str]:
    """One `dotted.path: message` line per error; unknown keys name the allowed ones, and a value that came from an
    `INSPECTOR_*` variable (in `environ`) names it: the YAML file may not even hold that key."""
    lines = []
    upper = {k.upper(): k for k in environ or {}}
    for err in exc.errors():
        loc = [str(p) for p in err["loc"]]
        msg = err["msg"].removeprefix("Value error, ")
        if err["type"] == "extra_forbidden":
            allowed = _fields_at(root, err["loc"][:-1])
            msg = f"unknown key; allowed: {', '.join(allowed)}" if allowed else "unknown key"
        # The longest variable that covers this key: INSPECTOR_MQTT__PORT, or INSPECTOR_MQTT holding JSON.
        var = next((upper[v] for n in range(len(loc), 0, -1) if (v := ENV_PREFIX + "__".join(loc[:n]).upper()) in upper), None)
        lines.append(f"{'.'.join(loc) or '(top level)'}: {msg}" + (f" (set by {var})" if var else ""))
    return lines


def _fields_at(model: Any, loc: tuple[Any, ...]) -> list[str]:
    """Field names of the model found by following `loc` from `model`."""
    node: Any = model
    for part in loc:
        node = _unwrap(node)
        if isinstance(part, int) or node is None:
            continue
        if isinstance(node, type) and issubclass(node, BaseModel) and part in node.model_fields:
            node = node.model_fields[part].annotation
        else:
            return []
    node = _unwrap(node)
    return list(node.model_fields) if isinstance(node, type) and issubclass(node, BaseModel) else []


def _unwrap(annotation: Any) -> Any:
    """The model class inside Optional[...], tuple[...], list[...] or dict[..., ...], else the annotation."""
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType, tuple, list, dict, typing.Annotated):
        for arg in typing.get_args(annotation):
            inner = _unwrap(arg)
            if isinstance(inner, type) and issubclass(inner, BaseModel):
                return inner
    return annotation


def settings_schema() -> dict[str, Any]:
    """JSON schema of the configuration file."""
    return InspectorSettings.model_json_schema()


def redact_uri(uri: str) -> str:
    """The URI with any password replaced, for logs, the `state` topic and `config show`."""
    return re.sub(r"(://[^:/@]+):[^@/]*@", r"\1:***@", uri)


def settings_yaml(settings: InspectorSettings, calibrated: tuple[float | None, dict[str, float]] | str | None = None) -> str:
    """The effective settings as YAML, secrets masked. `calibrated`: the thresholds (for every ROI, per ROI) that
    decision.calibration's record sets, shown in place of the file's, or why the record cannot be read."""
    data = settings.model_dump(mode="json")
    if data["source"]["uri"] is not None:
        # A camera URL carries its password in clear (rtsp://user:pass@cam/...); `config show` output gets pasted into tickets.
        data["source"]["uri"] = redact_uri(data["source"]["uri"])
    head = ""
    record = settings.decision.calibration
    if isinstance(calibrated, tuple):
        # The record's thresholds are the ones the daemon applies: the field's default (0.5) beside it would mislead.
        data["decision"]["threshold"], data["decision"]["roi_thresholds"] = calibrated
        head = f"# decision.threshold and decision.roi_thresholds: as the calibration record {record} sets them\n"
    elif calibrated is not None:
        head = f"# {calibrated}; the daemon would refuse to start\n"  # the message names decision.calibration
    return head + yaml.safe_dump(data, sort_keys=False)


def tls_errors(tls: TlsSettings) -> list[str]:
    """Load the CA, certificate and key as the broker link will; `dotted.path: message` for each that cannot be used."""
    # Found here, a bad file is a config error; found by the link, it would stop the running daemon's output stage.
    try:
        context = ssl.create_default_context(cafile=str(tls.ca_file) if tls.ca_file else None)
    except (ssl.SSLError, OSError) as exc:
        return [f"mqtt.tls.ca_file: not usable as PEM CA certificates: {_ssl_reason(exc)}: {tls.ca_file}"]
    if tls.cert_file is None or tls.key_file is None:
        return []
    try:
        # OpenSSL would ask for the passphrase on a terminal, which a service does not have.
        if b"ENCRYPTED" in tls.key_file.read_bytes()[:4096]:
            return [f"mqtt.tls.key_file: the key is encrypted; a service needs an unencrypted key (protect it by file permissions): {tls.key_file}"]
        context.load_cert_chain(str(tls.cert_file), str(tls.key_file), password=lambda: b"")
    except (ssl.SSLError, OSError) as exc:
        reason = _ssl_reason(exc)
        if "KEY_VALUES_MISMATCH" in reason:
            return [f"mqtt.tls.key_file: not the private key of cert_file {tls.cert_file}: {tls.key_file}"]
        return [f"mqtt.tls.cert_file: the certificate and key cannot be loaded ({reason}): {tls.cert_file}, {tls.key_file}"]
    return []


def _ssl_reason(exc: Exception) -> str:
    return str(getattr(exc, "reason", None) or getattr(exc, "strerror", None) or exc)


def model_errors(settings: InspectorSettings, *, required: bool) -> list[str]:
    """model.path missing (when `required`) or not a file, as `dotted.path: message` lines."""
    path = settings.model.path
    if path is None:
        return ["model.path: required by `inspector run`"] if required else []
    if path.is_dir():
        return [f"model.path: is a folder; expected the model's .onnx file: {path}"]
    if not path.is_file():
        return [f"model.path: file not found: {path}"]
    if not os.access(path, os.R_OK):
        return [f"model.path: cannot read {path}: Permission denied{_as_user()}"]
    return []


def pin_errors(settings: InspectorSettings) -> list[str]:
    """model.sha256 against the file at model.path, for `config check` (loading the model checks the pin itself)."""
    path, pin = settings.model.path, settings.model.sha256
    if pin is None or path is None or not path.is_file():
        return []
    try:
        actual = file_sha256(path)
    except OSError:
        return []  # model_errors names the file that cannot be read
    return [] if actual == pin else [f"model.sha256: pins {pin}, but model.path {path} has sha256 {actual}"]


def _as_user() -> str:
    """` (as user NAME)`: `config check` may run as root or a login user while the service runs as its own User=."""
    import pwd

    try:
        name = pwd.getpwuid(os.geteuid()).pw_name
    except KeyError:
        name = str(os.geteuid())
    return f" (as user {name})"


def _writable(folder: Path) -> bool:
    # Creating, renaming and deleting an entry need write and search permission on its folder.
    return os.access(folder, os.W_OK | os.X_OK)


def _folder_source_errors(src: SourceSettings) -> list[str]:
    """The watched folder, and the processed/ and quarantine/ folders inside it that already exist, must be writable."""
    assert src.path is not None
    verb = "moves each judged file into processed/" if src.after_decision == "move" else "deletes each judged file"
    if not _writable(src.path):
        why = f"{verb} (an unreadable one into quarantine/) inside {src.path}"
        return [f"source.path: the daemon {why}, but cannot write there{_as_user()}"]
    # The names FolderSource uses: processed/<pass|reject|review>/ and quarantine/.
    inside = [src.path / "quarantine"]
    if src.after_decision == "move":
        inside += [src.path / "processed"] + [src.path / "processed" / g for g in ("pass", "reject", "review")]
    return [
        f"source.path: the daemon moves files into {folder}, but cannot write there{_as_user()}"
        for folder in inside
        if folder.is_dir() and not _writable(folder)
    ]


def uri_path(uri: str) -> Path | None:
    """The local path a camera uri names (a path, or a file:// URL); None for a device index, a GStreamer pipeline or a
    stream URL (rtsp://, http://, udp://...), which only opening them can check."""
    if uri.isdigit() or "!" in uri:
        return None
    if uri.startswith("file://"):
        return Path(urllib.parse.unquote(urllib.parse.urlsplit(uri).path))
    if re.match(r"[A-Za-z][A-Za-z0-9+.-]*://", uri):
        return None
    return Path(uri)


def _camera_uri_errors(uri: str) -> list[str]:
    """A camera uri naming a folder, which no retry turns into a camera. A path not there yet is no error: a video file
    or a device may come after the start, and the daemon opens it once it is there (camera_open_failed until then)."""
    path = uri_path(uri)
    if path is not None and path.is_dir():
        return [f"source.uri: is a folder; expected a video file, a device, or a stream URL (a folder of images is source.kind: folder): {path}"]
    return []


def _journal_errors(path: Path) -> list[str]:
    """The journal's folder must take new files (SQLite's -wal and -shm beside it), and existing journal files be writable."""
    if not _writable(path.parent):
        where = f"{path.parent}, but cannot write there{_as_user()}"
        return [f"journal.path: the daemon writes the journal and its -wal and -shm files in {where}"]
    files = [path, path.with_name(path.name + "-wal"), path.with_name(path.name + "-shm")]
    return [
        f"journal.path: the daemon writes {f}, but cannot{_as_user()}; give it to the service's user"
        for f in files
        if f.is_file() and not os.access(f, os.R_OK | os.W_OK)
    ]


def _not_a_file(path: Path, what: str) -> str:
    """Why `path`, which is not a regular file, cannot be `what`."""
    return f"is a folder; expected {what}: {path}" if path.is_dir() else f"file not found: {path}"


def run_errors(settings: InspectorSettings) -> list[str]:
    """What `inspector run` needs beyond a valid file, as `dotted.path: message` lines."""
    errors = model_errors(settings, required=True)
    src = settings.source
    if src.kind is SourceKind.FOLDER:
        if src.path is None:
            errors.append("source.path: required when source.kind is folder")
        elif not src.path.is_dir():
            errors.append(f"source.path: not a folder: {src.path}")
        else:
            errors += _folder_source_errors(src)
    elif src.uri is None:
        errors.append("source.uri: required when source.kind is camera")
    else:
        errors += _camera_uri_errors(src.uri)
    if src.kind is SourceKind.FOLDER and settings.pipeline.overload == "skip":
        errors.append("pipeline.overload: skip is for free-running cameras; a file in the folder is a part and gets a decision (use reject)")
    missing = []
    for name, what in (("ca_file", "the CA certificate (PEM)"), ("cert_file", "the client certificate (PEM)"), ("key_file", "the client key (PEM)")):
        path = getattr(settings.mqtt.tls, name)
        if path is not None and not path.is_file():
            errors.append(f"mqtt.tls.{name}: {_not_a_file(path, what)}")
            missing.append(name)
    if settings.mqtt.tls.enabled and not missing:
        errors += tls_errors(settings.mqtt.tls)
    if settings.mqtt.password_file is not None and not settings.mqtt.password_file.is_file():
        errors.append(f"mqtt.password_file: {_not_a_file(settings.mqtt.password_file, 'a file holding the broker password')}")
    elif settings.mqtt.password_file is not None and not os.access(settings.mqtt.password_file, os.R_OK):
        errors.append(f"mqtt.password_file: cannot read {settings.mqtt.password_file}{_as_user()}")
    if settings.journal.path.is_dir():
        errors.append(f"journal.path: is a folder; expected the journal's file name, like {settings.journal.path / 'journal.sqlite3'}")
    elif not settings.journal.path.parent.is_dir():
        errors.append(f"journal.path: folder does not exist: {settings.journal.path.parent}")
    else:
        errors += _journal_errors(settings.journal.path)
    return errors
