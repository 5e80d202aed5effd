"""End-to-end latency and throughput of the daemon: a JPEG renamed into the watched folder -> its decision on MQTT.

    .venv/bin/python benchmarks/bench_daemon.py [--mode latency,paced,sustained] [--frames 300] [--seconds S] [--out FILE]

Starts a real mosquitto on a free loopback port, `python -m inspector run` on a generated config (CPU, folder source,
files deleted after their decision) and a paho MQTT 5 subscriber on `<prefix>/decision`. For each frame the script
copies a magnetic-tile JPEG into a staging folder on the same filesystem, stamps t0 = time.time() and renames it into
the watched folder; the subscriber stamps time.time() when the decision arrives (matched by frame_id = file name).

Modes:
  latency    one frame at a time (the next one only after the previous decision), --frames frames after --warmup
  paced      --rate frames/s (default 30) for --paced-seconds (default 60)
  sustained  as fast as the daemon takes them, at most --inflight frames renamed but not decided, --sustained-seconds (300)

Prints a table on stdout (progress on stderr) and writes one JSON document to --out (default bench-out/bench_daemon.json
in the repository). See benchmarks/README.md for what each figure means.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Self

from common import (  # benchmarks/ is on sys.path when run as a script
    add_cpu_latency_arg,
    cpu_latency_section,
    cpu_model,
    find_images,
    log,
    stats,
)

from inspector.config import PipelineSettings, Spinning
from inspector.demo import stop_process
from inspector.digest import file_sha256

REPO = Path(__file__).resolve().parents[1]
DEFAULT_DATA = REPO / ".." / "shared" / "datasets" / "magnetic-tile"
DEFAULT_OUT = REPO / "bench-out" / "bench_daemon.json"
MODES = ("latency", "paced", "sustained")
INPUT_SIZE = 224
CLASSES = ("ok", "ng")
LINE, STATION = "bench", "daemon"
PREFIX = f"inspector/v1/{LINE}/{STATION}"
# The targets of the daemon issue, for this 2-core CPU and ResNet18 224 fp32.
TARGET_P50_OVER_MODEL_MS = 3.0  # end-to-end p50 <= model inference p50 + 3 ms
TARGET_P99_OVER_P50 = 2.0  # end-to-end p99 <= 2 x p50
TARGET_SUSTAINED_FPS = 60.0
TARGET_SUSTAINED_S = 300.0
MOSQUITTO = shutil.which("mosquitto") or "/usr/sbin/mosquitto"




# --- statistics -------------------------------------------------------------------------------


def p50(values: list[float]) -> float | None:
    return stats(values)["p50"]


# --- machine ------------------------------------------------------------------------------------


def fs_of(path: Path) -> dict[str, str]:
    """Mount point, device and filesystem type holding `path` (fsync cost depends on it: tmpfs makes it free)."""
    best = ("", "", "")
    try:
        real = str(path.resolve())
        with open("/proc/mounts", encoding="utf-8") as f:
            for line in f:
                dev, mnt, kind = line.split()[:3]
                if (real == mnt or real.startswith(mnt.rstrip("/") + "/")) and len(mnt) >= len(best[1]):
                    best = (dev, mnt, kind)
    except OSError:
        pass
    return {"device": best[0], "mount": best[1], "type": best[2]}


def machine_info() -> dict[str, Any]:
    from importlib.metadata import PackageNotFoundError, version

    def ver(pkg: str) -> str | None:
        try:
            return version(pkg)
        except PackageNotFoundError:
            return None

    try:
        mosq = subprocess.run([MOSQUITTO, "-h"], check=False, capture_output=True, text=True, timeout=5).stdout.splitlines()[0]
    except (OSError, IndexError, subprocess.SubprocessError):
        mosq = None
    return {
        "cpu": cpu_model(),
        "cpu_count": os.cpu_count(),
        "kernel": platform.release(),
        "python": platform.python_version(),
        "onnxruntime": ver("onnxruntime") or ver("onnxruntime-gpu"),
        "paho_mqtt": ver("paho-mqtt"),
        "watchdog": ver("watchdog"),
        "opencv": ver("opencv-python-headless") or ver("opencv-python"),
        "sqlite": sqlite3.sqlite_version,
        "mosquitto": mosq,
    }


def loadavg() -> list[float] | None:
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:
        return None


_TICK = os.sysconf("SC_CLK_TCK")


def _proc_cpu_s(pid: int | None) -> float:
    """User + system CPU seconds of a process (all its threads) so far; 0 when it is gone."""
    if pid is None:
        return 0.0
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii") as f:
            text = f.read()
        fields = text[text.rindex(")") + 2 :].split()
        return (int(fields[11]) + int(fields[12])) / _TICK
    except (OSError, ValueError, IndexError):
        return 0.0


def _proc_stat() -> list[int] | None:
    try:
        with open("/proc/stat", encoding="ascii") as f:
            return [int(v) for v in f.readline().split()[1:9]]
    except (OSError, ValueError):
        return None


class CpuMeter:
    """CPU used during a phase by the daemon, the broker, this script, and the rest of the machine (from /proc)."""

    def __init__(self, daemon_pid: int, broker_pid: int | None) -> None:
        self.pids = {"daemon": daemon_pid, "broker": broker_pid}

    def __enter__(self) -> Self:
        self.result: dict[str, float] = {}
        self._own = {k: _proc_cpu_s(p) for k, p in self.pids.items()}
        self._bench = time.process_time()
        self._stat = _proc_stat()
        self._wall = time.time()
        return self

    def __exit__(self, *exc: object) -> None:
        wall = time.time() - self._wall
        own = {k: _proc_cpu_s(p) - self._own[k] for k, p in self.pids.items()}
        own["bench"] = time.process_time() - self._bench
        stat = _proc_stat()
        self.result = {"wall_s": round(wall, 2), **{f"{k}_cpu_s": round(v, 2) for k, v in own.items()}}
        if self._stat is not None and stat is not None:
            d = [(b - a) / _TICK for a, b in zip(self._stat, stat, strict=True)]
            user, nice, system, _idle, _iowait, irq, softirq, steal = d[:8]
            busy = user + nice + system + irq + softirq
            self.result["other_processes_cpu_s"] = round(max(0.0, busy - sum(own.values())), 2)
            self.result["steal_s"] = round(steal, 2)
            self.result["iowait_s"] = round(_iowait, 2)


# --- model --------------------------------------------------------------------------------------


def export_child(path: str, seed: int, int8_data: str | None = None) -> None:
    """Child mode: ResNet18 (random init), 1 gray channel, CLAHE 2.0 / 8x8, 224x224, exported with the manifest.

    Runs in its own process so that torch (and its thread pool) never lives beside the daemon during the measurement."""
    import torch
    import torchvision

    from inspector.preprocess import PreprocessSpec
    from inspector.training.onnx_export import export_classifier

    torch.manual_seed(seed)
    module = torchvision.models.resnet18(num_classes=len(CLASSES))
    module.conv1 = torch.nn.Conv2d(1, 64, 7, 2, 3, bias=False)  # gray input
    spec = PreprocessSpec.model_validate(
        {
            "color": "gray",
            "resize": {"width": INPUT_SIZE, "height": INPUT_SIZE},
            "clahe": {"enabled": True, "clip_limit": 2.0, "tile_grid": (8, 8)},
        }
    )
    export_classifier(module, spec, CLASSES, Path(path))
    if int8_data:
        from inspector.training.quantize import calibration_batches, quantize_int8

        fp32 = Path(path).with_suffix(".fp32.onnx")
        Path(path).rename(fp32)
        # Calibrated on the last 100 tiles; the measurement takes its frames from the whole set, like a line would.
        quantize_int8(fp32, Path(path), "input", calibration_batches(spec, find_images(Path(int8_data))[-100:], limit=100))


def export_model(path: Path, seed: int, int8_data: Path | None = None) -> None:
    extra = ["--_int8-data", str(int8_data)] if int8_data else []
    out = subprocess.run([sys.executable, __file__, "--_export", str(path), "--seed", str(seed), *extra], check=False,
                         capture_output=True, text=True, cwd=REPO)
    if out.returncode != 0 or not path.is_file():
        sys.exit(f"error: model export failed (exit {out.returncode}); it needs the train extra (torch, torchvision, onnx):\n{out.stderr[-3000:]}")


# --- broker, subscriber, daemon -------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Broker:
    """mosquitto on a free loopback port, anonymous access (the few lines of tests/mqtt_helpers.Broker this needs)."""

    def __init__(self, workdir: Path) -> None:
        self.dir = workdir
        self.dir.mkdir(parents=True, exist_ok=True)
        self.host, self.port = "127.0.0.1", free_port()
        lines = [f"listener {self.port} {self.host}", "allow_anonymous true"]
        if os.geteuid() == 0:
            lines.append("user root")  # as root, mosquitto would drop to the `mosquitto` user otherwise
        (self.dir / "mosquitto.conf").write_text("\n".join(lines) + "\n")
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> Broker:
        if not Path(MOSQUITTO).exists():
            sys.exit("error: mosquitto not found (apt-get install mosquitto, or `make test` installs it)")
        self._log = (self.dir / "mosquitto.log").open("ab")
        self.proc = subprocess.Popen([MOSQUITTO, "-c", str(self.dir / "mosquitto.conf")], stdout=self._log, stderr=subprocess.STDOUT)
        end = time.time() + 10
        while time.time() < end:
            try:
                with socket.create_connection((self.host, self.port), timeout=0.2):
                    return self
            except OSError:
                time.sleep(0.05)
        sys.exit(f"error: mosquitto did not start: {(self.dir / 'mosquitto.log').read_text()[-2000:]}")

    def stop(self) -> None:
        if self.proc is not None:
            stop_process(self.proc)
            self.proc = None
            self._log.close()


@dataclass
class Received:
    at: float  # time.time() in the subscriber's callback
    body: dict[str, Any]


@dataclass
class DecisionSink:
    """A paho MQTT 5 client on <prefix>/decision (QoS 1) and <prefix>/status: stamps each message on arrival."""

    host: str
    port: int
    got: dict[str, Received] = field(default_factory=dict)
    duplicates: int = 0
    unexpected: int = 0
    count: int = 0
    status: list[dict[str, Any]] = field(default_factory=list)

    def start(self) -> DecisionSink:
        import paho.mqtt.client as paho
        from paho.mqtt.enums import CallbackAPIVersion

        self.cond = threading.Condition()
        self.connected = threading.Event()
        self.decision_topic, self.status_topic = f"{PREFIX}/decision", f"{PREFIX}/status"
        self.client = paho.Client(CallbackAPIVersion.VERSION2, client_id=f"bench-daemon-{os.getpid()}", protocol=paho.MQTTv5)
        self.client.on_connect = self._on_connect
        self.client.on_message = self._on_message
        self.client.connect_async(self.host, self.port, keepalive=30)
        self.client.loop_start()
        if not self.connected.wait(10):
            sys.exit("error: the benchmark's subscriber could not connect to mosquitto")
        return self

    def _on_connect(self, client: Any, userdata: Any, flags: Any, reason: Any, properties: Any) -> None:
        client.subscribe([(self.decision_topic, 1), (self.status_topic, 1)])
        self.connected.set()

    def _on_message(self, client: Any, userdata: Any, msg: Any) -> None:
        at = time.time()  # first thing: the arrival stamp
        try:
            body = json.loads(msg.payload)
        except ValueError:
            return
        with self.cond:
            if msg.topic == self.decision_topic:
                fid = body.get("frame_id")
                if fid in self.got:
                    self.duplicates += 1
                else:
                    self.got[fid] = Received(at, body)
                self.count += 1
            elif msg.topic == self.status_topic:
                self.status.append(body)
            self.cond.notify_all()

    def wait_online(self, timeout: float, alive: Any) -> bool:
        end = time.time() + timeout
        with self.cond:
            while time.time() < end and alive():
                if any(s.get("state") == "online" for s in self.status):
                    return True
                self.cond.wait(0.2)
        return False

    def wait_for(self, name: str, timeout: float) -> Received | None:
        with self.cond:
            self.cond.wait_for(lambda: name in self.got, timeout)
            return self.got.get(name)

    def wait_change(self, seen: int, timeout: float) -> int:
        """Wait until more decisions than `seen` arrived (or the timeout); the current count."""
        with self.cond:
            self.cond.wait_for(lambda: self.count != seen, timeout)
            return self.count

    def decided(self, names: Any) -> list[str]:
        with self.cond:
            return [n for n in names if n in self.got]

    def stop(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


class Feeder:
    """Stages JPEG copies next to the watched folder and renames them in, stamping t0 right before the rename."""

    def __init__(self, images: list[Path], stage: Path, watched: Path, seed: int) -> None:
        self.images = images[:]
        random.Random(seed).shuffle(self.images)  # OK and NG mixed, a fixed order
        self.stage_dir, self.watched = stage, watched
        self.k = 0

    def stage(self, prefix: str) -> str:
        src = self.images[self.k % len(self.images)]
        name = f"{prefix}{self.k:06d}_{src.name}"
        self.k += 1
        shutil.copyfile(src, self.stage_dir / name)
        return name

    def release(self, name: str) -> float:
        t0 = time.time()
        os.rename(self.stage_dir / name, self.watched / name)
        return t0

    def discard(self, name: str) -> None:
        (self.stage_dir / name).unlink(missing_ok=True)


def write_config(tmp: Path, broker: Broker, model: Path, args: argparse.Namespace) -> Path:
    import yaml

    cfg = {
        "model": {"path": str(model), "providers": ["cpu"], "intra_op_threads": args.threads, "spinning": args.spinning,
                  "pin_threads": args.pin, "backend": args.backend,
                  "openvino_precision": args.openvino_precision, **({"golden": str(args.golden.resolve())} if args.golden else {})},
        "station": {"line": LINE, "name": STATION},
        "source": {"kind": "folder", "path": str(tmp / "in"), "after_decision": "delete"},
        "decision": {"deadline_ms": args.deadline_ms},
        "pipeline": {"queue_size": args.queue_size, **cpu_latency_section(args.cpu_latency)},
        "mqtt": {"host": broker.host, "port": broker.port, "connect_timeout_s": 10},
        "journal": {"path": str(tmp / "journal.sqlite3")},
        "metrics": {"interval_s": 0},
        "log": {"level": "warning", "format": "json"},
    }
    path = tmp / "inspector.yaml"
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    return path


def fsync_probe(folder: Path, n: int = 20) -> dict[str, Any]:
    """What one SQLite commit costs here with the journal's settings (WAL, synchronous=FULL): one row per commit."""
    path = folder / "fsync-probe.sqlite3"
    db = sqlite3.connect(str(path), isolation_level=None)
    db.execute("PRAGMA journal_mode=WAL")
    db.execute("PRAGMA synchronous=FULL")
    db.execute("CREATE TABLE t (x TEXT)")
    ms = []
    for i in range(n):
        t0 = time.time()
        db.execute("BEGIN IMMEDIATE")
        db.execute("INSERT INTO t VALUES (?)", ("x" * 1200 + str(i),))
        db.execute("COMMIT")
        ms.append((time.time() - t0) * 1000)
    db.close()
    for p in folder.glob("fsync-probe.sqlite3*"):
        p.unlink()
    return {k: v for k, v in stats(ms).items() if k in ("n", "p50", "p99", "max")}


# --- the three modes ------------------------------------------------------------------------------


@dataclass
class Run:
    """What one mode sent: (name, t0) per frame, plus mode-specific figures."""

    mode: str
    sent: list[tuple[str, float]] = field(default_factory=list)
    extra: dict[str, Any] = field(default_factory=dict)
    cpu: dict[str, float] = field(default_factory=dict)


def one_at_a_time(feeder: Feeder, sink: DecisionSink, n: int, prefix: str, timeout: float, gap_ms: float, run: Run) -> None:
    for _ in range(n):
        name = feeder.stage(prefix)
        t0 = feeder.release(name)
        run.sent.append((name, t0))
        if sink.wait_for(name, timeout) is None:
            log(f"no decision for {name} within {timeout:.0f} s")
        if gap_ms:
            time.sleep(gap_ms / 1000)


def paced(feeder: Feeder, sink: DecisionSink, rate: float, seconds: float, timeout: float, run: Run) -> None:
    period = 1.0 / rate
    slip: list[float] = []
    name = feeder.stage("P")
    start = time.time() + 0.02
    k = 0
    while k * period < seconds:
        due = start + k * period
        delay = due - time.time()
        if delay > 0:
            time.sleep(delay)
        t0 = feeder.release(name)
        run.sent.append((name, t0))
        slip.append((t0 - due) * 1000)
        k += 1
        name = feeder.stage("P")  # the next copy is ready before its time comes
    feeder.discard(name)
    drain(sink, run, timeout)
    run.extra = {"rate_fps": rate, "seconds": seconds, "send_slip_ms": {k: v for k, v in stats(slip).items() if k in ("p50", "p99", "max")}}


def sustained(feeder: Feeder, sink: DecisionSink, seconds: float, inflight_max: int, timeout: float, run: Run) -> None:
    inflight: dict[str, float] = {}
    given_up: list[str] = []
    max_seen = 0
    seen = sink.count
    start = time.time()
    end = start + seconds
    while time.time() < end:
        while len(inflight) < inflight_max and time.time() < end:
            name = feeder.stage("S")
            t0 = feeder.release(name)
            inflight[name] = t0
            run.sent.append((name, t0))
        max_seen = max(max_seen, len(inflight))
        seen = sink.wait_change(seen, min(0.5, max(0.0, end - time.time())))
        for name in sink.decided(list(inflight)):
            del inflight[name]
        now = time.time()
        for name, t0 in list(inflight.items()):
            if now - t0 > timeout:  # lost: stop waiting for it so the run goes on (counted below)
                del inflight[name]
                given_up.append(name)
    drain(sink, run, timeout)
    run.extra = {"seconds": seconds, "inflight_max": inflight_max, "inflight_max_seen": max_seen, "gave_up_waiting": len(given_up)}


def drain(sink: DecisionSink, run: Run, timeout: float) -> None:
    """Wait for the decisions still due, up to `timeout` after the last frame was sent."""
    if not run.sent:
        return
    end = run.sent[-1][1] + timeout
    names = [n for n, _ in run.sent]
    while time.time() < end:
        if len(sink.decided(names)) == len(names):
            return
        sink.wait_change(sink.count, min(0.5, max(0.0, end - time.time())))


# --- analysis -------------------------------------------------------------------------------------


def journal_times(path: Path) -> dict[str, tuple[float, float]]:
    """frame_id -> (captured_at, decided_at) at full precision, from the daemon's journal (read after it stopped)."""
    if not path.is_file():
        return {}
    db = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        return {fid: (c, d) for fid, c, d in db.execute("SELECT frame_id, captured_at, decided_at FROM records")}
    finally:
        db.close()


def summarize(run: Run, sink: DecisionSink, jtimes: dict[str, tuple[float, float]], timeout: float, per_frame: bool = False) -> dict[str, Any]:
    e2e: list[float] = []
    stage: dict[str, list[float]] = {k: [] for k in ("decode", "preprocess", "inference", "total", "since_capture")}
    outside: list[float] = []
    outside_ms: list[float] = []
    split: dict[str, list[float]] = {"rename_to_capture": [], "capture_to_pipeline": [], "pipeline": [], "decided_to_received": []}
    reasons: dict[str, int] = {}
    verdicts = {"pass": 0, "reject": 0}
    late = lost = 0
    recv: list[float] = []
    for name, t0 in run.sent:
        r = sink.got.get(name)
        if r is None or r.at - t0 > timeout:
            lost += 1
            continue
        b = r.body
        ms = (r.at - t0) * 1000
        lat = b.get("latency_ms") or {}
        e2e.append(ms)
        recv.append(r.at)
        for k, values in stage.items():
            if lat.get(k) is not None:
                values.append(float(lat[k]))
        if lat.get("inference") is not None and ms > 0:
            outside.append((ms - float(lat["inference"])) / ms)
            outside_ms.append(ms - float(lat["inference"]))
        verdicts[b.get("verdict", "?")] = verdicts.get(b.get("verdict", "?"), 0) + 1
        if b.get("reason"):
            reasons[b["reason"]] = reasons.get(b["reason"], 0) + 1
        late += bool(b.get("late"))
        if name in jtimes and lat.get("total") is not None:
            cap, dec = jtimes[name]
            split["rename_to_capture"].append((cap - t0) * 1000)  # inotify -> the daemon's acquisition stamp
            split["capture_to_pipeline"].append((dec - cap) * 1000 - float(lat["total"]))  # read the file, wait in the queue
            split["pipeline"].append(float(lat["total"]))  # decode, preprocess, inference, verdict
            split["decided_to_received"].append((r.at - dec) * 1000)  # journal commit (fsync), publish, broker, subscriber
    s = stats(e2e)
    inf_p50 = p50(stage["inference"])
    out: dict[str, Any] = {
        "frames_sent": len(run.sent),
        "decided": len(e2e),
        "lost": lost,
        "e2e_ms": s,
        "daemon_latency_ms_p50": {k: p50(v) for k, v in stage.items()},
        "daemon_latency_ms_p99": {k: stats(v)["p99"] for k, v in stage.items()},
        "p50_minus_inference_p50_ms": round(s["p50"] - inf_p50, 3) if s["p50"] is not None and inf_p50 is not None else None,
        "outside_model_share": {
            "p50_per_frame": round(p50(outside), 4) if outside else None,
            "aggregate": round(1 - sum(stage["inference"]) / sum(e2e), 4) if e2e and stage["inference"] else None,
        },
        "outside_model_ms": stats(outside_ms),  # per frame: end-to-end minus that frame's own inference time
        "split_ms_p50": {k: p50(v) for k, v in split.items()},
        "split_ms_mean": {k: stats(v)["mean"] for k, v in split.items()},
        "verdicts": verdicts,
        "reject_reasons": dict(sorted(reasons.items())),
        "overload_rejects": reasons.get("overload", 0),
        "deadline_rejects": reasons.get("deadline", 0),
        "faults": sum(n for k, n in reasons.items() if k not in ("score", "overload", "deadline")),
        "late": late,
        **run.extra,
        "cpu": run.cpu,
    }
    if run.mode == "sustained" and run.sent:
        t_first = run.sent[0][1]
        span = (max(recv) - t_first) if recv else 0.0
        out["fps"] = round(len(e2e) / span, 2) if span > 0 else None
        out["fps_sent"] = round(len(run.sent) / max(1e-9, run.sent[-1][1] - t_first), 2) if len(run.sent) > 1 else None
        buckets: dict[int, int] = {}
        for t in recv:
            buckets[int((t - t_first) // 10)] = buckets.get(int((t - t_first) // 10), 0) + 1
        full = [buckets.get(i, 0) / 10 for i in range(int(span // 10))]  # complete 10 s windows only
        out["fps_per_10s"] = {"min": min(full), "max": max(full), "windows": full} if full else None
    if per_frame:
        out["per_frame"] = [
            {"frame_id": name, "t0": t0, "received_at": sink.got[name].at if name in sink.got else None,
             "captured_at": jtimes.get(name, (None, None))[0], "decided_at": jtimes.get(name, (None, None))[1],
             "latency_ms": sink.got[name].body.get("latency_ms") if name in sink.got else None}
            for name, t0 in run.sent
        ]
    if run.cpu and e2e:
        out["cpu_ms_per_frame"] = {
            k.removesuffix("_cpu_s"): round(v * 1000 / len(e2e), 2) for k, v in run.cpu.items() if k.endswith("_cpu_s")
        }
    return out


def judge(results: dict[str, Any], args: argparse.Namespace) -> dict[str, Any]:
    t: dict[str, Any] = {}
    lat = results.get("latency")
    if lat and lat["e2e_ms"]["p50"] is not None:
        p50_, p99_, inf = lat["e2e_ms"]["p50"], lat["e2e_ms"]["p99"], lat["daemon_latency_ms_p50"]["inference"]
        t["latency_p50_le_inference_plus_3ms"] = {"p50_ms": p50_, "limit_ms": round(inf + TARGET_P50_OVER_MODEL_MS, 3), "met": p50_ <= inf + TARGET_P50_OVER_MODEL_MS}
        t["latency_p99_le_2x_p50"] = {"p99_ms": p99_, "limit_ms": round(TARGET_P99_OVER_P50 * p50_, 3), "met": p99_ <= TARGET_P99_OVER_P50 * p50_}
    pc = results.get("paced")
    if pc:
        t["paced_p99_ms"] = {"rate_fps": pc["rate_fps"], "p99_ms": pc["e2e_ms"]["p99"], "lost": pc["lost"], "met": pc["lost"] == 0, "note": "reported; met = zero lost"}
    su = results.get("sustained")
    if su:
        fps = su.get("fps") or 0.0
        zero = su["lost"] == 0 and su["decided"] == su["frames_sent"]
        t["sustained_ge_60fps_zero_lost"] = {
            "fps": fps,
            "lost": su["lost"],
            "overload_rejects": su["overload_rejects"],
            "seconds": su["seconds"],
            "met": fps >= TARGET_SUSTAINED_FPS and zero,
            "full_duration": su["seconds"] >= TARGET_SUSTAINED_S,
        }
    return t


# --- output ---------------------------------------------------------------------------------------


def _f(x: Any, nd: int = 2) -> str:
    if x is None:
        return "-"
    if isinstance(x, float):
        return f"{x:.{nd}f}"
    return str(x)


def print_report(doc: dict[str, Any]) -> None:
    res, m = doc["results"], doc["machine"]
    print("\ninspector run, end to end: rename into the watched folder -> decision received on MQTT (QoS 1, loopback mosquitto)")
    print(f"{doc['settings']['model']}; {m['cpu']}, {m['cpu_count']} cores, onnxruntime {m['onnxruntime']}; "
          f"intra_op_threads {doc['settings']['threads']}, spinning {doc['settings']['spinning']}, "
          f"pin_threads {doc['settings'].get('pin_threads', 'auto')}; journal on {doc['settings']['journal_fs']['type']} "
          f"(one SQLite commit p50 {_f(doc['fsync_probe_ms']['p50'])} ms)")
    print()
    head = f"{'mode':<18}{'sent':>7}{'lost':>6}{'p50':>8}{'p90':>8}{'p99':>8}{'max':>8}{'infer50':>9}{'p50-inf':>9}{'outside':>9}{'fps':>8}"
    print(head + "   (ms; outside = share of end-to-end time outside model inference, p50 per frame)")
    print("-" * len(head))
    for mode in MODES:
        r = res.get(mode)
        if not r:
            continue
        label = {"latency": "latency (1 by 1)", "paced": f"paced {r.get('rate_fps', 0):g}/s", "sustained": f"sustained <={r.get('inflight_max', '')}"}[mode]
        e = r["e2e_ms"]
        print(
            f"{label:<18}{r['frames_sent']:>7}{r['lost']:>6}{_f(e['p50']):>8}{_f(e['p90']):>8}{_f(e['p99']):>8}{_f(e['max']):>8}"
            f"{_f(r['daemon_latency_ms_p50']['inference']):>9}{_f(r['p50_minus_inference_p50_ms']):>9}"
            f"{_f(r['outside_model_share']['p50_per_frame'], 3):>9}{_f(r.get('fps')):>8}"
        )
    print()
    print("where the time goes, p50 ms: rename->capture (inotify) | capture->pipeline (read, queue) | pipeline (decode+pre+infer) "
          "| decided->received (journal commit, publish, broker)")
    for mode in MODES:
        r = res.get(mode)
        if r:
            s = r["split_ms_p50"]
            d = r["daemon_latency_ms_p50"]
            print(f"  {mode:<10} {_f(s['rename_to_capture']):>7} | {_f(s['capture_to_pipeline']):>7} | {_f(s['pipeline']):>7} "
                  f"(decode {_f(d['decode'])} pre {_f(d['preprocess'])} infer {_f(d['inference'])}) | {_f(s['decided_to_received']):>7}"
                  f"   outside-model p50/p99 {_f(r['outside_model_ms']['p50'])}/{_f(r['outside_model_ms']['p99'])}")
    print("per mode: rejects by reason, decisions marked late, CPU ms per decided frame")
    for mode in MODES:
        r = res.get(mode)
        if r:
            print(f"  {mode:<10} {r['reject_reasons'] or '{}'}  late {r['late']}  {r.get('cpu_ms_per_frame', {})}")
    print()
    for name, t in doc["targets"].items():
        flag = "PASS" if t["met"] else "FAIL"
        detail = ", ".join(f"{k} {v}" for k, v in t.items() if k != "met")
        print(f"  {flag}  {name}: {detail}")
    su = doc["targets"].get("sustained_ge_60fps_zero_lost")
    if su and not su["full_duration"]:
        print(f"  note: sustained ran {su['seconds']:g} s; the target asks for {TARGET_SUSTAINED_S:g} s (--sustained-seconds 300)")
    d = doc["daemon"]
    print(f"\nidle daemon (no frames, {doc['idle']['wall_s']:g} s): {doc['idle']['daemon_cpu_pct']:g}% of one core")
    print(f"daemon exit code {d['exit_code']} after SIGTERM; warnings/errors logged: {d['log_warnings']}; "
          f"journal records {d['journal_records']} for {d['frames_sent']} frames sent")


# --- main ------------------------------------------------------------------------------------------


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--mode", default=",".join(MODES), help="comma-separated: latency,paced,sustained (default all, in that order)")
    ap.add_argument("--data", type=Path, default=DEFAULT_DATA, help="magnetic-tile folder (default ../shared/datasets/magnetic-tile from the repo root)")
    ap.add_argument("--model", type=Path, help="an exported ONNX model to use instead of a random-weight ResNet18 (gray, CLAHE, 224)")
    ap.add_argument("--frames", type=int, default=300, help="latency mode: measured frames (default 300)")
    ap.add_argument("--warmup", type=int, default=20, help="unmeasured frames, one at a time, before the first mode (default 20)")
    ap.add_argument("--idle-seconds", type=float, default=3.0, help="measure the daemon's CPU use without frames for this long (default 3)")
    ap.add_argument("--gap-ms", type=float, default=0.0, help="latency mode: idle time after each decision before the next frame (default 0)")
    ap.add_argument("--seconds", type=float, help="shorten both paced and sustained to this many seconds")
    ap.add_argument("--paced-seconds", type=float, default=60.0, help="paced mode duration (default 60)")
    ap.add_argument("--sustained-seconds", type=float, default=TARGET_SUSTAINED_S, help="sustained mode duration (default 300)")
    ap.add_argument("--rate", type=float, default=30.0, help="paced mode frames per second (default 30)")
    ap.add_argument("--inflight", type=int, default=8, help="sustained mode: most frames renamed but not yet decided (default 8)")
    ap.add_argument("--threads", type=int, default=2, help="model.intra_op_threads (default 2)")
    ap.add_argument("--spinning", choices=[s.value for s in Spinning], default="off", help="model.spinning (default off)")
    ap.add_argument("--pin", choices=("auto", "true", "false"), default="auto", help="model.pin_threads (default auto, the package default)")
    add_cpu_latency_arg(ap, "pipeline.cpu_latency_us")
    ap.add_argument("--queue-size", type=int, default=64, help="pipeline.queue_size (default 64)")
    ap.add_argument("--deadline-ms", type=int, default=5000, help="decision.deadline_ms (default 5000: no deadline rejects expected)")
    ap.add_argument("--lost-after", type=float, default=10.0, help="a frame without a decision this many seconds after its rename is lost (default 10)")
    ap.add_argument("--seed", type=int, default=0, help="weights and image order seed (default 0)")
    ap.add_argument("--tmp", type=Path, help="where the temporary folders go (default: the system temp folder); its filesystem is reported")
    ap.add_argument("--per-frame", action="store_true", help="also write every frame's timestamps (t0, capture, decision, receipt) into the JSON")
    ap.add_argument("--keep-tmp", action="store_true", help="keep the temporary folder (config, journal, daemon and broker logs)")
    ap.add_argument("--out", type=Path, default=DEFAULT_OUT, help=f"JSON output (default {DEFAULT_OUT.relative_to(REPO)} in the repository)")
    ap.add_argument("--_export", help=argparse.SUPPRESS)
    ap.add_argument("--_int8-data", help=argparse.SUPPRESS)
    ap.add_argument("--int8", action="store_true", help="quantize the generated ResNet18 to INT8 (inspector's quantizer) before the run")
    ap.add_argument("--backend", choices=("onnxruntime", "openvino"), default="onnxruntime", help="model.backend (default onnxruntime)")
    ap.add_argument("--openvino-precision", choices=("auto", "bf16", "fp32"), default="auto", help="model.openvino_precision")
    ap.add_argument("--golden", type=Path, help="model.golden: labelled images for the bf16 accuracy gate")
    args = ap.parse_args(argv)
    modes = [m.strip() for m in args.mode.split(",") if m.strip()]
    bad = [m for m in modes if m not in MODES]
    if bad or not modes:
        ap.error(f"--mode: unknown {bad}; choose from {','.join(MODES)}")
    args.modes = [m for m in MODES if m in modes]
    if args.seconds is not None:
        args.paced_seconds = args.sustained_seconds = args.seconds
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args._export:
        export_child(args._export, args.seed, args._int8_data)
        return 0
    started = time.time()
    images = find_images(args.data.resolve())
    if args.model is not None and not args.model.is_file():
        sys.exit(f"error: --model {args.model}: no such file")

    tmp = Path(tempfile.mkdtemp(prefix="inspector-bench-daemon-", dir=args.tmp))
    (tmp / "in").mkdir()
    (tmp / "stage").mkdir()
    if os.stat(tmp / "in").st_dev != os.stat(tmp / "stage").st_dev:
        sys.exit("error: the staging and watched folders are on different filesystems; a rename would be a copy")
    broker = daemon = sink = None
    daemon_log = None
    try:
        if args.model is None:
            model = tmp / "resnet18-gray-clahe-224.onnx"
            precision = "int8 (static QDQ, per-channel)" if args.int8 else "fp32"
            log(f"exporting ResNet18 (random init, gray, CLAHE 2.0 8x8, {INPUT_SIZE}x{INPUT_SIZE}, {precision}) in a child process")
            export_model(model, args.seed, args.data.resolve() if args.int8 else None)
            model_desc = f"ResNet18 {INPUT_SIZE}x{INPUT_SIZE} gray, CLAHE 2.0/8x8, {precision}, random weights (seed {args.seed})"
        else:
            model = args.model.resolve()
            model_desc = f"{model.name} (--model)"
        probe = fsync_probe(tmp)
        log(f"one SQLite commit (WAL, synchronous=FULL) in {tmp}: p50 {probe['p50']} ms")

        broker = Broker(tmp / "broker").start()
        sink = DecisionSink(broker.host, broker.port).start()
        config = write_config(tmp, broker, model, args)
        daemon_log = (tmp / "daemon.log").open("ab")
        log(f"starting `inspector run` (broker 127.0.0.1:{broker.port}, folder {tmp / 'in'})")
        daemon = subprocess.Popen([sys.executable, "-m", "inspector", "run", "--config", str(config)], stdout=daemon_log, stderr=subprocess.STDOUT, cwd=REPO)
        if not sink.wait_online(60, lambda: daemon.poll() is None):
            sys.exit(f"error: the daemon did not come online (exit {daemon.poll()}); log:\n{(tmp / 'daemon.log').read_text()[-3000:]}")

        feeder = Feeder(images, tmp / "stage", tmp / "in", args.seed)
        log(f"warm-up: {args.warmup} frames one at a time")
        warm = Run("warmup")
        one_at_a_time(feeder, sink, args.warmup, "W", 30.0, 0.0, warm)
        missing = [n for n, _ in warm.sent if n not in sink.got]
        if missing:
            sys.exit(f"error: {len(missing)} warm-up frames got no decision; daemon log:\n{(tmp / 'daemon.log').read_text()[-3000:]}")

        log(f"idle: {args.idle_seconds:g} s without frames (what the daemon's polling loops cost)")
        with CpuMeter(daemon.pid, broker.proc.pid if broker.proc else None) as idle:
            time.sleep(args.idle_seconds)
        idle_cpu = {**idle.result, "daemon_cpu_pct": round(100 * idle.result["daemon_cpu_s"] / max(1e-9, idle.result["wall_s"]), 2)}

        runs: dict[str, Run] = {}
        for mode in args.modes:
            run = Run(mode)
            time.sleep(0.5)  # let the previous mode's tail (record stream, acknowledgements) settle
            with CpuMeter(daemon.pid, broker.proc.pid if broker.proc else None) as cpu:
                if mode == "latency":
                    log(f"latency: {args.frames} frames one at a time" + (f", {args.gap_ms:g} ms apart" if args.gap_ms else ""))
                    one_at_a_time(feeder, sink, args.frames, "L", args.lost_after, args.gap_ms, run)
                    run.extra = {"gap_ms": args.gap_ms}
                elif mode == "paced":
                    log(f"paced: {args.rate:g} frames/s for {args.paced_seconds:g} s")
                    paced(feeder, sink, args.rate, args.paced_seconds, args.lost_after, run)
                else:
                    log(f"sustained: as fast as it takes, at most {args.inflight} in flight, for {args.sustained_seconds:g} s")
                    sustained(feeder, sink, args.sustained_seconds, args.inflight, args.lost_after, run)
            run.cpu = cpu.result
            runs[mode] = run
            got = len(sink.decided([n for n, _ in run.sent]))
            log(f"{mode}: {got}/{len(run.sent)} decided")

        log("stopping the daemon (SIGTERM)")
        t_stop = time.time()
        daemon.send_signal(signal.SIGTERM)
        try:
            code = daemon.wait(60)
        except subprocess.TimeoutExpired:
            daemon.kill()
            code = daemon.wait(10)
            log("the daemon did not stop within 60 s of SIGTERM: killed")
        stop_s = time.time() - t_stop
        daemon_log.close()

        jtimes = journal_times(tmp / "journal.sqlite3")
        results = {mode: summarize(run, sink, jtimes, args.lost_after, args.per_frame) for mode, run in runs.items()}
        events = []
        for line in (tmp / "daemon.log").read_text(errors="replace").splitlines():
            try:
                events.append(json.loads(line))
            except ValueError:
                events.append({"level": "raw", "event": line[:300]})
        noteworthy = [e for e in events if e.get("level") in ("warning", "error", "critical", "raw")]
        frames_sent = len(warm.sent) + sum(len(r.sent) for r in runs.values())
        doc = {
            "benchmark": "inspector run end to end: rename into the watched folder -> decision on MQTT",
            "machine": {**machine_info(), "loadavg_end": loadavg()},
            "settings": {
                "model": model_desc,
                "model_path": str(model) if args.model else None,
                "model_sha256": file_sha256(model),
                "data": str(args.data.resolve()),
                "images_available": len(images),
                "modes": args.modes,
                "frames": args.frames,
                "warmup": args.warmup,
                "gap_ms": args.gap_ms,
                "paced_rate_fps": args.rate,
                "paced_seconds": args.paced_seconds,
                "sustained_seconds": args.sustained_seconds,
                "inflight": args.inflight,
                "threads": args.threads,
                "spinning": args.spinning,
                "pin_threads": args.pin,
                "cpu_latency_us": args.cpu_latency,
                # The daemon logs at warning here: a request it could not hold shows as cpu_latency_not_held.
                "cpu_latency_held_us": None
                if any(e.get("event") == "cpu_latency_not_held" for e in events)
                else PipelineSettings.model_validate(cpu_latency_section(args.cpu_latency)).cpu_latency_us,
                "queue_size": args.queue_size,
                "deadline_ms": args.deadline_ms,
                "lost_after_s": args.lost_after,
                "daemon_config": (tmp / "inspector.yaml").read_text(),
                "journal_fs": fs_of(tmp),
                "clock": "time.time() on both sides (same machine)",
            },
            "fsync_probe_ms": probe,
            "idle": idle_cpu,
            "results": results,
            "targets": {},
            "daemon": {
                "exit_code": code,
                "exit_ok": code == 0,
                "stop_s": round(stop_s, 2),
                "frames_sent": frames_sent,
                "journal_records": len(jtimes),
                "decisions_received": len(sink.got),
                "duplicate_decisions": sink.duplicates,
                "log_warnings": len(noteworthy),
                "log_noteworthy": noteworthy[:20],
            },
            "runtime_s": round(time.time() - started, 1),
        }
        doc["targets"] = judge(results, args)
        print_report(doc)
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(doc, indent=2) + "\n", encoding="utf-8")
        log(f"JSON: {args.out}")
        return 0 if code == 0 else 1
    finally:
        if daemon is not None and daemon.poll() is None:
            daemon.send_signal(signal.SIGTERM)
            try:
                daemon.wait(30)
            except subprocess.TimeoutExpired:
                daemon.kill()
                daemon.wait(10)
        if daemon_log is not None and not daemon_log.closed:
            daemon_log.close()
        if sink is not None:
            sink.stop()
        if broker is not None:
            broker.stop()
        if args.keep_tmp:
            log(f"kept {tmp}")
        else:
            shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
