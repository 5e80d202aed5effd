"""`make demo`: the whole product on one machine, end to end, in a few minutes on a 2-core CPU.

    python -m inspector.demo [--out demo] [--data DIR] [--epochs 8] [--rate 10] [--small]

Generates synthetic parts (or splits the labelled folder given with --data), trains a small model, exports it through
the parity gate, calibrates a threshold, starts a local mosquitto and `inspector run` on a watched folder, drops test
parts into the folder and prints each decision as an MQTT subscriber receives it; then stops everything cleanly.
Needs the train extra (torch) and the mosquitto binary.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import queue
import random
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NoReturn

import numpy as np
import yaml

from inspector.percent import percent

MARKER = ".inspector-demo"  # only a folder holding this is wiped by a new run
STEPS = 7
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff")


def _step(n: int, text: str) -> None:
    print(f"[{n}/{STEPS}] {text}", flush=True)


def _say(text: str) -> None:
    print(f"      {text}", flush=True)


# --- a local broker ---------------------------------------------------------------------------


def free_port() -> int:
    """A TCP port nothing listens on right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def accepts(port: int, host: str = "127.0.0.1") -> bool:
    """True when something accepts TCP connections on host:port."""
    try:
        with socket.create_connection((host, port), timeout=0.2):
            return True
    except OSError:
        return False


def find_mosquitto() -> str:
    """The mosquitto binary; a clear error naming the package when it is missing."""
    found = shutil.which("mosquitto") or next((p for p in ("/usr/sbin/mosquitto", "/usr/local/sbin/mosquitto") if os.access(p, os.X_OK)), None)
    if found is None:
        raise SystemExit("inspector demo: mosquitto not found; install it (sudo apt-get install mosquitto) or run `make demo`, which does")
    return found


@contextlib.contextmanager
def local_broker(workdir: Path) -> Iterator[int]:
    """mosquitto on a free loopback port, anonymous, for the length of the block; yields the port."""
    workdir.mkdir(parents=True, exist_ok=True)
    port = free_port()
    # `user root` keeps mosquitto from dropping to a user that cannot write here when the demo runs as root.
    (workdir / "mosquitto.conf").write_text(f"listener {port} 127.0.0.1\nallow_anonymous true\nuser root\n")
    with (workdir / "mosquitto.log").open("ab") as log:
        proc = subprocess.Popen([find_mosquitto(), "-c", str(workdir / "mosquitto.conf")], stdout=log, stderr=subprocess.STDOUT)
        try:
            deadline = time.monotonic() + 10
            while not accepts(port) and proc.poll() is None and time.monotonic() < deadline:
                time.sleep(0.05)
            if not accepts(port):
                raise SystemExit(f"inspector demo: mosquitto did not start; see {workdir / 'mosquitto.log'}")
            yield port
        finally:
            stop_process(proc)


def stop_process(proc: subprocess.Popen[Any], sig: int = signal.SIGTERM, timeout: float = 10) -> int:
    """Send `sig`, wait up to `timeout` s, then SIGKILL; the exit code."""
    if proc.poll() is None:
        proc.send_signal(sig)
        try:
            return proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
    return proc.wait(10)


# --- data ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Part:
    """A test image dropped into the watched folder, and what it really is."""

    path: Path
    label: str
    defect: str | None


def _synthetic(root: Path, small: bool) -> tuple[Path, Path, list[Part]]:
    from inspector.samples import write_labelled_folder

    n = (60, 30, 40, 60, 24, 12) if small else (240, 120, 160, 80, 40, 20)
    train = write_labelled_folder(root / "train", n_ok=n[0], n_ng=n[1], width=96, height=96, seed=0)
    calib = write_labelled_folder(root / "calibration", n_ok=n[2], n_ng=n[3], width=96, height=96, seed=1)
    test = write_labelled_folder(root / "test", n_ok=n[4], n_ng=n[5], width=96, height=96, seed=2)
    return train, calib, _parts(test)


def _parts(root: Path) -> list[Part]:
    out = []
    for p in sorted(root.rglob("*")):
        if p.suffix.lower() in IMAGE_SUFFIXES:
            rel = p.relative_to(root).parts
            out.append(Part(p, rel[0], rel[1] if rel[0] == "ng" and len(rel) > 2 else None))
    return out


def _split_user_data(data: Path, root: Path, seed: int) -> tuple[Path, Path, list[Part]]:
    """Train 60%, calibration 25%, test 15% of each label/defect folder, as symlinks; the originals are not touched."""
    rng = random.Random(seed)
    groups: dict[Path, list[Path]] = {}
    for p in sorted(data.rglob("*")):
        rel = p.relative_to(data)
        if p.suffix.lower() in IMAGE_SUFFIXES and rel.parts[0] in ("ok", "ng"):
            groups.setdefault(rel.parent, []).append(p)
    for folder, files in groups.items():
        rng.shuffle(files)
        cut1, cut2 = round(len(files) * 0.6), round(len(files) * 0.85)
        for i, f in enumerate(files):
            split = "train" if i < cut1 else "calibration" if i < cut2 else "test"
            link = root / split / folder / f.name
            link.parent.mkdir(parents=True, exist_ok=True)
            link.symlink_to(f.resolve())
    return root / "train", root / "calibration", _parts(root / "test")


# --- the run ------------------------------------------------------------------------------------


def _refuse(message: str) -> NoReturn:
    """Bad input: the message on stderr and exit 2, as every inspector command does."""
    print(f"inspector demo: {message}", file=sys.stderr)
    raise SystemExit(2)


def _prepare(out: Path) -> None:
    if out.exists():
        if not (out / MARKER).exists():
            _refuse(f"{out} exists and is not a demo folder; pass another --out")
        shutil.rmtree(out)
    out.mkdir(parents=True)
    (out / MARKER).write_text("written by python -m inspector.demo; removed by the next run\n")


def _train(out: Path, train: Path, epochs: int) -> tuple[Path, Path]:
    from inspector.training.export import export_checkpoint
    from inspector.training.recipe import TrainConfig
    from inspector.training.run import run_training
    from inspector.training.sample import CONFIG

    config = TrainConfig.model_validate({**CONFIG, "train": {**CONFIG["train"], "epochs": epochs}})
    started = time.monotonic()
    summary = run_training(train, out / "train", config)
    _say(f"validation ROC-AUC {summary['roc_auc']:.4f} after {summary['epochs_run']} epochs ({time.monotonic() - started:.0f} s); "
         f"report {out / 'train' / 'report.html'}")
    model = out / "model.onnx"
    _, gate = export_checkpoint(out / "train" / "best.pt", model)
    _say(f"parity gate passed: {gate.images} images, max |delta p| {gate.max_abs_diff:.1e}, {gate.flips} verdict flips -> {model}")
    return model, out / "train" / "report.html"


def _calibrate(out: Path, model: Path, calib: Path) -> Path:
    from inspector.cli import main as cli

    record = out / "calibration" / "demo.yaml"
    record.parent.mkdir()
    text, logs = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(text), contextlib.redirect_stderr(logs):
        code = cli(["calibrate", str(calib), "--model", str(model), "--target-recall", "0.95", "--confidence", "0.9",
                    "--station", "demo", "--out", str(record)])
    from inspector.logs import configure_logging

    configure_logging("warning", "console")  # the command set its own logging up
    if code != 0:
        raise SystemExit(f"inspector demo: calibration failed (exit {code}):\n{logs.getvalue()[-2000:]}")
    for line in text.getvalue().splitlines():
        if line.startswith(("target", "threshold", "  NG recall", "NOT DEMONSTRATED", "record", "report")):
            _say(line.strip())
    return record


def _config(out: Path, model: Path, record: Path, port: int) -> Path:
    cfg = {
        "model": {"path": str(model)},
        "station": {"line": "demo", "name": "demo"},
        "decision": {"calibration": str(record), "deadline_ms": 2000},
        "source": {"kind": "folder", "path": str(out / "incoming"), "settle_ms": 100},
        "mqtt": {"host": "127.0.0.1", "port": port},
        "journal": {"path": str(out / "journal.sqlite3")},
        "metrics": {"interval_s": 1},
        "log": {"format": "json", "level": "info"},
    }
    (out / "incoming").mkdir()
    path = out / "inspector.yaml"
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    return path


class _Listener:
    """A paho subscriber to the station's topics; decisions arrive in a queue."""

    def __init__(self, port: int, prefix: str) -> None:
        import paho.mqtt.client as paho
        from paho.mqtt.enums import CallbackAPIVersion

        self.prefix = prefix
        self.decisions: queue.Queue[dict[str, Any]] = queue.Queue()
        self.online = False
        self.client = paho.Client(CallbackAPIVersion.VERSION2, client_id="demo-plc", protocol=paho.MQTTv5)
        self.client.on_message = self._on_message
        self.client.on_connect = lambda c, *_: c.subscribe([(f"{prefix}/decision", 1), (f"{prefix}/status", 1)])
        self.client.connect("127.0.0.1", port)
        self.client.loop_start()

    def _on_message(self, _client: Any, _userdata: Any, msg: Any) -> None:
        body = json.loads(msg.payload)
        if msg.topic.endswith("/status"):
            self.online = body.get("state") == "online"
        else:
            self.decisions.put(body)

    def close(self) -> None:
        self.client.loop_stop()
        self.client.disconnect()


def _run_line(out: Path, config: Path, port: int, parts: list[Part], rate: float) -> dict[str, Any]:
    prefix = "inspector/v1/demo/demo"
    listener = _Listener(port, prefix)
    log = (out / "daemon.log").open("ab")
    daemon = subprocess.Popen([sys.executable, "-m", "inspector", "run", "--config", str(config)], stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 60
        while not listener.online and daemon.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        if not listener.online:
            raise SystemExit(f"inspector demo: the daemon did not come online (exit {daemon.poll()}); see {out / 'daemon.log'}")
        _say(f"daemon online (pid {daemon.pid}), subscribed to {prefix}/decision; dropping {len(parts)} parts at {rate:g}/s")
        truth = _drop(out / "incoming", parts, rate)
        seen = _print_decisions(listener, truth)
        _step(7, "stopping the daemon (SIGTERM) and the broker")
        code = stop_process(daemon, signal.SIGTERM, 30)
        _say(f"daemon exited with {code}")
        return seen
    finally:
        stop_process(daemon, signal.SIGKILL, 5)
        log.close()
        listener.close()


def _drop(incoming: Path, parts: list[Part], rate: float) -> dict[str, Part]:
    """Write each part as a camera program should: a hidden temporary name, then a rename, which counts at once."""
    order = list(parts)
    random.Random(0).shuffle(order)
    truth = {}
    for i, part in enumerate(order):
        name = f"part{i:04d}{part.path.suffix.lower()}"
        tmp = incoming / f".{name}.tmp"
        shutil.copyfile(part.path, tmp)
        tmp.rename(incoming / name)
        truth[Path(name).stem] = part
        time.sleep(1.0 / rate)
    return truth


def _print_decisions(listener: _Listener, truth: dict[str, Part]) -> dict[str, Any]:
    got: dict[str, dict[str, Any]] = {}
    deadline = time.monotonic() + 30 + len(truth) / 5
    while len(got) < len(truth) and time.monotonic() < deadline:
        try:
            d = listener.decisions.get(timeout=0.5)
        except queue.Empty:
            continue
        part = truth.get(d["part_id"])
        if part is None or d["part_id"] in got:
            continue
        got[d["part_id"]] = d
        actual = part.label + (f"/{part.defect}" if part.defect else "")
        note = "ESCAPE" if part.label == "ng" and d["verdict"] == "pass" else "false reject" if part.label == "ok" and d["verdict"] != "pass" else ""
        score = "-" if d["score"] is None else f"{d['score']:.4f}"
        # A reject for another reason than its score (frame_size, truncated, deadline...) says which: it is no model verdict.
        why = f"  ({d['reason']})" if d["reason"] not in (None, "score", "uncertain") else ""
        _say(f"{d['part_id']}  {d['verdict']:9} gate {d['gate']:6}  score {score:>6}  {d['latency_ms']['since_capture']:6.1f} ms  "
             f"truth {actual:12} {note}{why}")
    return {"decisions": got, "truth": truth}


def _summary(seen: dict[str, Any]) -> dict[str, Any]:
    got, truth = seen["decisions"], seen["truth"]
    verdicts = [d["verdict"] for d in got.values()]
    ng = [p for p, t in truth.items() if t.label == "ng" and p in got]
    ok = [p for p, t in truth.items() if t.label == "ok" and p in got]
    latency = np.array([d["latency_ms"]["since_capture"] for d in got.values()] or [np.nan])
    return {
        "parts": len(truth),
        "decided": len(got),
        "pass": verdicts.count("pass"),
        "reject": verdicts.count("reject"),
        "uncertain": verdicts.count("uncertain"),
        "ng_recall": sum(got[p]["verdict"] != "pass" for p in ng) / len(ng) if ng else None,
        "false_reject_rate": sum(got[p]["verdict"] != "pass" for p in ok) / len(ok) if ok else None,
        "latency_p50_ms": float(np.nanpercentile(latency, 50)),
        "latency_p99_ms": float(np.nanpercentile(latency, 99)),
    }


def main(argv: list[str] | None = None) -> int:
    """Run the demo; exit 0 when every part got its decision and everything stopped cleanly."""
    p = argparse.ArgumentParser(prog="python -m inspector.demo", description=__doc__.splitlines()[0])
    p.add_argument("--out", type=Path, default=Path("demo"), help="working folder, replaced on each run (default ./demo)")
    p.add_argument("--data", type=Path, help="your own labelled ok/ + ng/<defect>/ folder instead of synthetic parts")
    p.add_argument("--epochs", type=int, default=8, help="training epochs (default 8: about a minute on 2 cores)")
    p.add_argument("--rate", type=float, default=10.0, help="parts dropped per second (default 10)")
    p.add_argument("--small", action="store_true", help="a reduced run (fewer, smaller sets), as the test suite uses")
    args = p.parse_args(argv)
    from inspector.calibration.record import report_path
    from inspector.logs import configure_logging

    configure_logging("warning", "console")  # the steps speak for themselves; the daemon's own log goes to a file
    started = time.monotonic()
    out = args.out.resolve()
    if args.data is not None and not ((args.data / "ok").is_dir() and (args.data / "ng").is_dir()):
        _refuse(f"--data {args.data}: expected ok/ and ng/<defect>/ folders of images")  # before --out is touched
    _prepare(out)
    find_mosquitto()  # before minutes of training
    _step(1, "sample parts" if args.data is None else f"splitting {args.data} into train / calibration / test")
    train, calib, parts = _synthetic(out / "data", args.small) if args.data is None else _split_user_data(args.data, out / "data", 0)
    _say(f"train {train}  calibration {calib}  test parts {len(parts)}")
    _step(2, f"training a small ResNet18 on the CPU ({args.epochs} epochs) and exporting it through the parity gate")
    model, train_report = _train(out, train, args.epochs)
    _step(3, "calibrating the threshold: NG recall >= 95% at 90% confidence")
    record = _calibrate(out, model, calib)
    _step(4, "starting a local mosquitto broker")
    with local_broker(out / "broker") as port:
        _say(f"mosquitto on 127.0.0.1:{port}")
        config = _config(out, model, record, port)
        _step(5, f"starting `inspector run --config {config}` on the watched folder {out / 'incoming'}")
        _step(6, "dropping test parts into the folder; decisions as the PLC's subscriber receives them:")
        seen = _run_line(out, config, port, parts, args.rate)
    s = _summary(seen)
    print(
        f"\n{s['decided']}/{s['parts']} parts decided: {s['pass']} pass, {s['reject']} reject, {s['uncertain']} uncertain; "
        f"NG recall {percent(s['ng_recall'], 1)}, false-reject rate {percent(s['false_reject_rate'], 1)}; "
        f"latency from capture p50 {s['latency_p50_ms']:.1f} ms, p99 {s['latency_p99_ms']:.1f} ms"
    )
    print(f"training report:    {train_report}")
    print(f"model:              {model}")
    print(f"calibration record: {record}  (report {report_path(record)})")
    print(f"daemon log:         {out / 'daemon.log'}")
    print(f"journal:            inspector journal list --journal {out / 'journal.sqlite3'}")
    print(f"done in {time.monotonic() - started:.0f} s; nothing left running")
    return 0 if s["decided"] == s["parts"] else 1


if __name__ == "__main__":
    sys.exit(main())
