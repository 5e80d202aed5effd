"""The `inspector` command line. Runtime commands import onnxruntime, OpenCV and numpy only: never torch."""

from __future__ import annotations

import argparse
import json
import os
import shlex
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import structlog

from inspector import __version__
from inspector.config import (
    DEFAULT_CONFIG,
    InspectorSettings,
    load_settings,
    model_errors,
    pin_errors,
    run_errors,
    settings_schema,
    settings_yaml,
    threshold_problem,
)
from inspector.errors import ConfigError, InputError, InspectorError
from inspector.logs import configure_logging
from inspector.outputs import check_output
from inspector.preprocess import PreprocessSpec

EXIT_USAGE = 2
EXIT_INTERNAL = 70  # EX_SOFTWARE: a bug, reported without a traceback unless --debug


def _thresholds(text: str) -> list[float]:
    try:
        # + 0.0: "-0" is the threshold 0, printed as 0.0, not -0.0
        values = [float(t) + 0.0 for t in text.split(",") if t.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated numbers in 0..1, like 0.3,0.5,0.7; got {text!r}") from None
    if not values:
        raise argparse.ArgumentTypeError(f"give one or more thresholds in 0..1, like 0.3,0.5,0.7; got {text!r}")
    for value in values:
        if (problem := threshold_problem(value)) is not None:
            raise argparse.ArgumentTypeError(problem)
    return values


def _threshold(text: str) -> float:
    """A threshold flag: in 0..1 with at most 6 decimals, as the config's and the record's (config.threshold_problem)."""
    try:
        value = float(text) + 0.0
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number in 0..1, got {text!r}") from None
    if (problem := threshold_problem(value)) is not None:
        raise argparse.ArgumentTypeError(problem)
    return value


def build_parser() -> argparse.ArgumentParser:
    """The argument parser for every subcommand."""
    p = argparse.ArgumentParser(prog="inspector", description="Inline visual inspection: ONNX OK/NG verdicts for every frame.")
    p.add_argument("--version", action="version", version=f"inspector {__version__}")
    p.add_argument("--debug", action="store_true", help="show tracebacks of internal errors")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    cfg = sub.add_parser("config", help="check, describe or show the configuration")
    cfg_sub = cfg.add_subparsers(dest="config_command", required=True, metavar="ACTION")
    check = cfg_sub.add_parser("check", help="validate a config file; prints `dotted.path: message` per error, exit 2 on any")
    check.add_argument("file", type=Path, nargs="?", help=f"config file (or --config; default {DEFAULT_CONFIG})")
    check.add_argument("--config", type=Path, default=None, help="the config file, as `run` takes it")
    check.add_argument("--run", action="store_true", help="also check what `inspector run` needs: source, certificates, journal folder")
    cfg_sub.add_parser("schema", help="print the configuration's JSON schema")
    cfg_sub.add_parser("reference", help="print the configuration reference (Markdown, as docs/configuration.md) made from the schema")
    show = cfg_sub.add_parser("show", help="print the effective settings (file + environment), secrets masked")
    show.add_argument("file", type=Path, nargs="?", help="config file (or --config)")
    show.add_argument("--config", type=Path, default=None, help=f"config file (default {DEFAULT_CONFIG} when present)")

    rp = sub.add_parser(
        "replay",
        help="re-run recorded frames through the daemon's exact decision path",
        description="Judge every image under PATH with the deployed configuration and write decisions.jsonl, summary.json and a report.",
    )
    rp.add_argument("path", type=Path, metavar="PATH", help="folder of images (recursive; ok/ + ng/<defect>/ layout gives labels) or a text file listing images")
    rp.add_argument("--model", type=Path, help="ONNX model (default: model.path from the config)")
    rp.add_argument("--config", type=Path, default=None, help=f"config file (default {DEFAULT_CONFIG} when present)")
    rp.add_argument("--threshold", type=_threshold, help="one threshold for every ROI (at most 6 decimals), replacing the config's")
    rp.add_argument("--labels", type=Path, help="CSV `frame,roi1,...` with ok/ng per ROI (frame paths relative to the CSV)")
    rp.add_argument("--out", type=Path, help="output folder (default ./replay-YYYYmmdd-HHMMSS)")
    rp.add_argument("--what-if", type=_thresholds, metavar="T1,T2,...",
                    help="also print NG recall and false-reject rate at these thresholds, each applied to every ROI alike")
    rp.add_argument("--no-report", action="store_true", help="skip the HTML report and contact sheets (and remove those an earlier run left in --out)")
    rp.add_argument("--calibration", type=Path, metavar="RECORD", help="apply this calibration record (calibration/<station>.yaml) and "
                    "check whether the recall reached here lies inside its bound")
    _add_calibrate(sub)
    rn = sub.add_parser(
        "run",
        help="the daemon: judge every frame from a camera or watched folder and publish decisions over MQTT",
        description="Run until SIGTERM/SIGINT: acquisition -> inference -> journal -> MQTT. Under systemd (Type=notify) it reports "
        "READY when the model is warm and the broker connected, and pings the watchdog while every stage makes progress.",
    )
    rn.add_argument("--config", type=Path, default=None, help=f"config file (default {DEFAULT_CONFIG} when present)")
    _add_journal(sub)
    _add_train(sub)
    _add_export(sub)
    return p


def _positive(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive number, got {text!r}") from None
    if not value > 0:
        raise argparse.ArgumentTypeError(f"expected a positive number, got {value}")
    return value


MAX_COUNT = 10_000_000  # SQLite's LIMIT is a 64-bit integer: a larger --limit would be an OverflowError, not a message


def _count(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number from 1 to {MAX_COUNT}, got {text!r}") from None
    if not 1 <= value <= MAX_COUNT:
        raise argparse.ArgumentTypeError(f"expected a whole number from 1 to {MAX_COUNT}, got {value}")
    return value


def _number_or(words: tuple[str, ...], word: str, expected: str) -> Callable[[str], float | str]:
    """A flag parser for a number or a keyword: any of `words` gives `word`."""

    def parse(text: str) -> float | str:
        if text.lower() in words:
            return word
        try:
            return float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {expected}; got {text!r}") from None

    return parse


_auto_or_number = _number_or(("auto",), "auto", "auto or the band's upper threshold in 0..1")


def _band(text: str) -> float | str:
    """--uncertain-band: auto, or the band's upper threshold (reject at or above it): at most 6 decimals, as every threshold."""
    value = _auto_or_number(text)
    if isinstance(value, float) and 0.0 <= value <= 1.0 and (problem := threshold_problem(value)) is not None:
        raise argparse.ArgumentTypeError(problem)  # a number out of 0..1 gets calibrate's own message, which names the flag
    return value


_clahe = _number_or(("off", "none", "0"), "off", "a clip limit like 2.0, or off")


def _add_calibrate(sub: Any) -> None:
    cp = sub.add_parser(
        "calibrate",
        help="set the threshold for a target NG recall with stated confidence; writes calibration/<station>.yaml",
        description="Score a labelled calibration set once (or read replay's decisions.jsonl) and choose the highest threshold whose "
        "one-sided Clopper-Pearson lower bound on NG recall meets --target-recall. Writes the station's calibration record and a report.",
    )
    cp.add_argument("data", type=Path, nargs="?", metavar="DATA", help="labelled images: ok/ + ng/<defect>/ folders, or frames with --labels")
    cp.add_argument("--model", type=Path, help="ONNX model to score DATA with (default: model.path from the config)")
    cp.add_argument("--decisions", type=Path, help="replay's decisions.jsonl (with labels) instead of DATA: no scoring")
    cp.add_argument("--labels", type=Path, help="CSV `frame,roi1,...` with ok/ng per ROI: calibrates per ROI sample")
    cp.add_argument("--config", type=Path, default=None, help="the station's config: its preprocess/ROIs, and station.name")
    cp.add_argument("--target-recall", type=float, required=True, metavar="R", help="NG recall to guarantee, like 0.995")
    cp.add_argument("--confidence", type=float, default=0.95, metavar="C", help="one-sided confidence of the guarantee (default 0.95)")
    cp.add_argument("--station", help="station name: names the record calibration/<station>.yaml (default: station.name from --config)")
    cp.add_argument("--out", type=Path, help="record to write (default calibration/<station>.yaml; the folder must exist)")
    cp.add_argument("--safety-margin", type=float, default=0.5, metavar="M",
                    help="when the target cannot be demonstrated, cut the point-estimate threshold's odds by this fraction (default 0.5)")
    cp.add_argument("--per-roi", action="store_true", help="one threshold per ROI (needs ROI labels), for ROIs that see different parts")
    cost = cp.add_argument_group("expected cost (reported beside the recall threshold)")
    cost.add_argument("--cost-escape", type=_positive, metavar="C1", help="cost of one NG part passed")
    cost.add_argument("--cost-false-reject", type=_positive, metavar="C2", help="cost of one OK part rejected (same unit)")
    cost.add_argument("--ng-rate", type=float, metavar="P", help="share of NG parts on the line (default: the calibration data's)")
    cost.add_argument("--choose", choices=("recall", "cost"), default="recall",
                      help="which threshold the record applies: the recall bound (default) or the lowest expected cost")
    band = cp.add_argument_group("uncertain band (verdict `uncertain`, routed per decision.uncertain_route)")
    band.add_argument("--uncertain-band", type=_band, nargs="?", const="auto", metavar="auto|HIGH",
                      help="scores from the threshold up to HIGH get verdict uncertain; auto: up to where at most --band-false-reject of OK parts are rejected")
    band.add_argument("--band-false-reject", type=float, default=None, metavar="F",
                      help="auto band: the false-reject rate allowed above the band (default 0.005)")
    cp.add_argument("--no-report", action="store_true", help="skip the HTML report beside the record")


def _add_journal(sub: Any) -> None:
    jp = sub.add_parser("journal", help="list or export decisions from the daemon's journal")
    jsub = jp.add_subparsers(dest="journal_command", required=True, metavar="ACTION")
    for name, text in (("list", "print the latest decisions as a table"), ("export", "write decisions as JSON lines or CSV")):
        a = jsub.add_parser(name, help=text)
        a.add_argument("--config", type=Path, default=None, help=f"config file whose journal.path to read (default {DEFAULT_CONFIG})")
        a.add_argument("--journal", type=Path, help="journal file (overrides the config)")
        a.add_argument("--since", type=_when, help="from this time: ISO 8601 (2026-11-23T08:00) or an age (30m, 12h, 7d)")
        a.add_argument("--until", type=_when, help="up to this time (same forms as --since)")
        if name == "list":
            a.add_argument("--limit", type=_count, default=50, help="newest N decisions (default 50)")
        else:
            a.add_argument("--format", choices=("jsonl", "csv"), default="jsonl", help="jsonl (full records) or csv (one row per decision)")
            a.add_argument("--out", type=Path, help="file to write (default stdout)")


def _when(text: str) -> float:
    import re
    import time
    from datetime import UTC, datetime

    m = re.fullmatch(r"(\d+(?:\.\d+)?)([smhd])", text.strip())
    if m:
        return time.time() - float(m.group(1)) * {"s": 1, "m": 60, "h": 3600, "d": 86400}[m.group(2)]
    try:
        dt = datetime.fromisoformat(text.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected ISO 8601 (2026-11-23T08:00:00Z) or an age like 30m, 12h, 7d; got {text!r}") from None
    return (dt if dt.tzinfo else dt.replace(tzinfo=UTC)).timestamp()


def _size(text: str) -> tuple[int, int]:
    try:
        w, sep, h = text.lower().partition("x")
        return int(w), int(h if sep else w)  # '64x' names no height: refused, not read as 64x64
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected N or WxH, like 224 or 320x240 (width x height, pixels), got {text!r}") from None




_FRAME_SIZE_FORMS = "any, WxH (e.g. 1280x1024) or MINWxMINH..MAXWxMAXH (e.g. 1280x1024..2448x2048), in pixels"


def _frame_size(text: str) -> str | dict[str, int]:
    """`--frame-size`: `any`, or the range of frame sizes as preprocess.frame_size takes it."""
    import re

    from inspector.preprocess import MAX_FRAME_SIDE

    value = text.strip().lower()
    if value == "any":
        return "any"
    low, sep, high = value.partition("..")
    sizes = [re.fullmatch(r"(\d+)x(\d+)", end.strip()) for end in ((low, high) if sep else (low, low))]
    if sizes[0] is None or sizes[1] is None:
        raise argparse.ArgumentTypeError(f"expected {_FRAME_SIZE_FORMS}; got {text!r}")
    (w0, h0), (w1, h1) = ((int(m.group(1)), int(m.group(2))) for m in sizes if m is not None)
    if not all(1 <= v <= MAX_FRAME_SIDE for v in (w0, h0, w1, h1)):
        raise argparse.ArgumentTypeError(f"widths and heights must lie in 1..{MAX_FRAME_SIDE} pixels; got {text!r}")
    if w0 > w1 or h0 > h1:
        raise argparse.ArgumentTypeError(f"the smaller size comes first: MINWxMINH..MAXWxMAXH, min <= max on each side; got {text!r}")
    return {"min_width": w0, "max_width": w1, "min_height": h0, "max_height": h1}


def _add_train(sub: Any) -> None:
    # pydantic only: `inspector --help` and the runtime commands never import torch
    from inspector.training.recipe import add_recipe_flags

    tp = sub.add_parser(
        "train",
        help="train an OK/NG (or multi-defect) classifier on labelled images (needs the train extra)",
        description="Train a torchvision classifier with the runtime's own preprocessing. Writes best.pt, last.pt, metrics.json, "
        "summary.json, plots and report.html to --out.",
    )
    tp.add_argument("data", type=Path, metavar="DATA", help="ok/ + ng/<defect>/ folders, or frames with labels.csv (one sample per ROI)")
    tp.add_argument("--out", type=Path, help="output folder for checkpoints, metrics and plots (with --resume: the checkpoint's own folder)")
    tp.add_argument("--config", type=Path, help="training YAML with `preprocess:` and `train:` sections; flags override it")
    tp.add_argument("--labels", type=Path, help="CSV frame,roi1,... (default DATA/labels.csv when DATA has no ok/ folder)")
    tp.add_argument("--classes", choices=("binary", "multi"), default=None, help="binary (default): ok/ng; multi: ok + one class per defect folder")
    tp.add_argument("--resume", type=Path, metavar="CKPT", help="continue from a last.pt (its recipe; --epochs may extend it)")
    tp.add_argument("--lr-find", action="store_true", help="run the learning-rate range test, print the suggestion, plot lr_find.png, and stop")
    pp = tp.add_argument_group("preprocessing (each overrides the config file's preprocess section)")
    # The defaults shown are PreprocessSpec's own, which a flag left out (and a config without them) keeps.
    spec = PreprocessSpec()
    size = spec.resize.width if spec.resize.width == spec.resize.height else f"{spec.resize.width}x{spec.resize.height}"
    pp.add_argument("--size", type=_size, help=f"model input size, pixels: 224 or WIDTHxHEIGHT (default: {size})")
    pp.add_argument("--color", choices=("gray", "rgb"), help=f"channels the model sees (default: {spec.color.value})")
    clahe = spec.clahe.clip_limit if spec.clahe.enabled else "off"
    pp.add_argument("--clahe", type=_clahe, metavar="CLIP|off", help=f"CLAHE clip limit, or off (default: {clahe})")
    pp.add_argument("--letterbox", action=argparse.BooleanOptionalAction, default=None,
                    help=f"keep aspect ratio, pad the rest (default: {'on' if spec.resize.letterbox else 'off'})")
    pp.add_argument(
        "--pixel-max", type=int, metavar="N",
        help="full-scale pixel value of the frames: 255 (8-bit), 4095 (12-bit camera in 16-bit files), 65535; default: from the data",
    )
    pp.add_argument(
        "--frame-size", type=_frame_size, metavar="any|WxH|WxH..WxH",
        help="frame sizes the model will judge (others are rejected as frame_size): WxH, a range MINWxMINH..MAXWxMAXH, "
        "or any to record none; default: the range of the training images' sizes",
    )
    add_recipe_flags(tp)


def _add_export(sub: Any) -> None:
    ep = sub.add_parser(
        "export",
        help="export a checkpoint to ONNX with its manifest, behind a parity gate (needs the train extra)",
        description="Export CKPT to ONNX (dynamic batch, opset 17, manifest inside). The golden set runs through torch and through "
        "the daemon's onnxruntime path; any verdict flip or probability drift beyond the tolerance refuses the export.",
    )
    ep.add_argument("checkpoint", type=Path, metavar="CKPT", help="best.pt from `inspector train`")
    ep.add_argument("--out", type=Path, required=True, help="ONNX file to write (only when the gate passes)")
    ep.add_argument("--golden", type=Path, metavar="DIR", help="golden images (default: the checkpoint's validation images)")
    ep.add_argument("--config", type=Path, help="station config whose preprocess/rois replace the trained ones (the gate checks they agree)")
    ep.add_argument("--fp16", action="store_true", help="half-precision weights (looser gate: |delta p| <= 1e-2, still no verdict flips)")
    ep.add_argument("--quantize", choices=("int8",), help="INT8 static quantization (QDQ, per-channel) behind an accuracy gate on the "
                    "golden set: refused when ROC-AUC drops > 0.005 or > 0.5%% of verdicts flip at --threshold")
    ep.add_argument("--calibration-data", type=Path, metavar="DIR", help="with --quantize: real frames of the station for activation ranges")
    ep.add_argument("--threshold", type=_threshold, default=0.5, help="threshold at which no verdict may flip (default 0.5)")
    ep.add_argument("--tta", choices=("none", "flips"), help="test-time views built into the model (default: the training recipe's "
                    "tta): flips scores the mean over the image and the flips it was trained with, up to 4x the inference")


def main(argv: list[str] | None = None) -> int:
    """Run the command line; returns the exit code."""
    parser = build_parser()
    args = parser.parse_args(argv)
    configure_logging()
    try:
        if args.command == "config":
            return _config(args)
        if args.command == "replay":
            return _replay(args)
        if args.command == "train":
            return _train(args)
        if args.command == "export":
            return _export(args)
        if args.command == "calibrate":
            return _calibrate(args)
        if args.command == "run":
            return _run(args)
        if args.command == "journal":
            return _journal(args)
        parser.error(f"unknown command {args.command}")
    except ConfigError as exc:
        print(f"inspector: {exc}", file=sys.stderr)
        for line in exc.errors:
            print(f"  {line}", file=sys.stderr)
        return exc.exit_code
    except InspectorError as exc:
        print(f"inspector: error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt as exc:
        # `inspector train` stops on SIGTERM as on Ctrl-C (_train); 143 = 128 + SIGTERM, what a shell reports for a process
        # that SIGTERM ended, and 130 = 128 + SIGINT for Ctrl-C.
        terminated = getattr(args, "terminated", False)
        print(f"inspector: interrupted{' by SIGTERM' if terminated else ''}{_resume_hint(args, exc)}", file=sys.stderr)
        return 143 if terminated else 130
    except BrokenPipeError:
        # The reader left (`inspector journal list | head`): nothing more to say, and nowhere to say it.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141  # 128 + SIGPIPE, what the shell reports for a writer the pipe killed
    except Exception as exc:
        if args.debug:
            raise
        if isinstance(exc, OSError) and exc.filename is not None:
            # A path the file system refused (permissions, a full disk, a file where a folder was expected): the user's to fix.
            print(f"inspector: error: {exc.filename}: {exc.strerror or exc}", file=sys.stderr)
            return EXIT_USAGE
        print(f"inspector: internal error: {type(exc).__name__}: {exc} (run with --debug for the traceback)", file=sys.stderr)
        return EXIT_INTERNAL
    return 0


def _load(path: Path | None) -> InspectorSettings:
    settings = load_settings(path)
    configure_logging(settings.log.level, settings.log.format)
    return settings


def _config(args: argparse.Namespace) -> int:
    if args.config_command == "schema":
        print(json.dumps(settings_schema(), indent=2))
        return 0
    if args.config_command == "reference":
        from inspector.config_reference import configuration_reference

        print(configuration_reference(), end="")
        return 0
    # `check FILE` and `show --config FILE` both read naturally; each takes either form.
    if args.file is not None and args.config is not None and args.file != args.config:
        raise InputError(f"two config files given ({args.file} and --config {args.config}); give one")
    path = args.file or args.config
    if args.config_command == "show":
        settings = _load(path)
        calibrated: tuple[float | None, dict[str, float]] | str | None = None
        if settings.decision.calibration is not None:
            from inspector.calibration.record import load_record

            try:
                calibrated = load_record(settings.decision.calibration).decision()[:2]
            except ConfigError as exc:
                calibrated = str(exc)
        print(settings_yaml(settings, calibrated), end="")
        return 0
    path = path or DEFAULT_CONFIG  # checking nothing would say "ok" about a file that is not there
    errors = check_config(path, run=args.run)
    if errors:
        for line in errors:
            print(line)
        print(f"{path}: {len(errors)} error(s)", file=sys.stderr)
        return EXIT_USAGE
    print(f"{path}: ok")
    return 0


def check_config(path: Path, *, run: bool = False) -> list[str]:
    """Every problem with a config file, as `dotted.path: message` lines; empty when it is usable."""
    try:
        settings = load_settings(path)
    except ConfigError as exc:
        return exc.errors or [str(exc)]
    errors = run_errors(settings) if run else model_errors(settings, required=False)
    errors += pin_errors(settings)
    if settings.decision.calibration is not None:
        from inspector.calibration.record import load_record

        try:
            record = load_record(settings.decision.calibration)
        except ConfigError as exc:
            errors += exc.errors or [f"decision.calibration: {exc}"]
        else:
            errors += _record_errors(record, settings)
    if settings.rois is not None:
        names = {r.name for r in settings.rois}
        errors += [
            f"decision.roi_thresholds.{n}: no such ROI; the ROIs are: {', '.join(sorted(names))}"
            for n in sorted(set(settings.decision.roi_thresholds) - names)
        ]
    return errors


def _record_errors(record: Any, settings: InspectorSettings) -> list[str]:
    """What the daemon would refuse about a calibration record, found without loading the model."""
    from inspector.digest import file_sha256

    errors = []
    if record.station != settings.station.name:
        errors.append(f"decision.calibration: the record of station {record.station!r}, but station.name is {settings.station.name!r}")
    path = settings.model.path
    if path is not None and path.is_file() and os.access(path, os.R_OK):  # an unreadable model is model_errors' line
        try:
            sha = file_sha256(path)
        except OSError:
            return errors  # a read error after the access check: model_errors names the model's problems
        if sha != record.model.sha256:
            errors.append(f"decision.calibration: made for model sha256 {record.model.sha256}, but model.path {path} has sha256 {sha}")
    return errors


def _run(args: argparse.Namespace) -> int:
    import signal
    import threading

    from inspector.daemon import Daemon  # onnxruntime, OpenCV, paho: never torch

    settings = _load(args.config)
    stop = threading.Event()
    log = structlog.get_logger("inspector.run")

    def _on_signal(signum: int, _frame: object) -> None:
        if stop.is_set():
            log.warning("forced_exit", signal=signal.Signals(signum).name)
            raise SystemExit(130)
        log.info("signal_received", signal=signal.Signals(signum).name)
        stop.set()

    signal.signal(signal.SIGTERM, _on_signal)
    signal.signal(signal.SIGINT, _on_signal)
    return Daemon(settings, stop=stop, log=log).run()


def _journal(args: argparse.Namespace) -> int:
    import csv

    from inspector.journal import Journal

    path = args.journal or _load(args.config).journal.path
    if args.since is not None and args.until is not None and args.since > args.until:
        # `--since 1h --until 2h` reads as "the hour before last" but asks for the reverse: say so, not print nothing.
        raise InputError("--since is later than --until, so no record can fall between them; an age counts back from now (--since 2h --until 1h)")
    if args.journal_command == "export" and args.out:
        check_output(args.out, "--out", folder=False)
    journal = Journal(path, readonly=True)
    try:
        if args.journal_command == "list":
            latest = journal.rows(args.since, args.until, newest=args.limit)
            print(f"{'seq':>8}  {'decided_at':24}  {'verdict':7}  {'reason':14}  {'score':>8}  {'part':16}  delivery")
            for r in latest:
                d = r["delivery"]
                delivery = "acked" if d["acknowledged_at"] else "published" if d["record_sent_at"] else "UNSENT"
                score = "" if r["score"] is None else f"{r['score']:.6f}"  # as published: fewer digits could round up to the threshold
                print(f"{r['seq']:>8}  {r['decided_at']:24}  {r['verdict']:7}  {r['reason'] or '':14}  {score:>8}  {str(r['part_id'])[:16]:16}  {delivery}")
            return 0
        rows = journal.rows(args.since, args.until)
        out = args.out.open("w", newline="", encoding="utf-8") if args.out else sys.stdout
        try:
            if args.format == "jsonl":
                for r in rows:
                    out.write(json.dumps(r) + "\n")
            else:
                fields = ["seq", "session", "frame_id", "part_id", "verdict", "gate", "reason", "detail", "score", "threshold", "captured_at",
                          "decided_at", "deadline_at", "source", "record_sent_at", "acknowledged_at"]
                w = csv.DictWriter(out, fieldnames=fields, extrasaction="ignore")
                w.writeheader()
                for r in rows:
                    w.writerow({**r, "record_sent_at": r["delivery"]["record_sent_at"], "acknowledged_at": r["delivery"]["acknowledged_at"]})
        finally:
            if args.out:
                out.close()
    finally:
        journal.close()
    return 0


def _calibrate(args: argparse.Namespace) -> int:
    import re

    import numpy as np

    from inspector.calibration.record import (
        ALL_ROIS,
        is_record_file,
        load_record,
        report_path,
        write_record,
    )
    from inspector.calibration.run import (
        CalibrateOptions,
        calibrate,
        default_record_path,
        describe,
    )
    from inspector.calibration.scores import from_decisions, from_images
    from inspector.config import TOPIC_LEVEL

    if (args.data is None) == (args.decisions is None):
        raise InputError("give labelled images (DATA, with --model) or --decisions decisions.jsonl, not both and not neither")
    settings = _load(args.config)
    if args.config and args.station and args.station != settings.station.name:
        raise InputError(f"--station {args.station} differs from station.name {settings.station.name!r} in {args.config}: the daemon "
                         "of that config refuses a record of another station; leave --station out or name the same station")
    # Options that would change nothing are refused, not ignored: the user meant something by them.
    if args.band_false_reject is not None and args.uncertain_band != "auto":
        raise InputError("--band-false-reject sets where an automatic band ends: use it with --uncertain-band (auto), or leave it out")
    if args.ng_rate is not None and args.cost_escape is None and args.uncertain_band is None:
        raise InputError("--ng-rate weighs the expected cost and the band's review rate: use it with --cost-escape and "
                         "--cost-false-reject, or --uncertain-band, or leave it out")
    station = args.station or (settings.station.name if args.config else None)
    if station is None:
        raise InputError("--station NAME is required (or --config with station.name): it names the record calibration/<station>.yaml")
    if not re.fullmatch(TOPIC_LEVEL, station) or len(station) > 64:
        raise InputError(f"--station {station!r}: use letters, digits, _ . - (up to 64), as station.name does")
    out = args.out or default_record_path(station)
    if out.is_dir():
        raise InputError(f"--out {out}: is a folder; expected the record's file name, like calibration/{station}.yaml")
    if out.suffix.lower() not in (".yaml", ".yml"):
        raise InputError(f"--out {out}: a calibration record is a .yaml file, like calibration/{station}.yaml")
    if out.is_file() and not is_record_file(out):
        # Only a record replaces a record: a model or a config under that name would be lost.
        raise InputError(f"--out {out}: exists and is not a calibration record; choose another name or move it away")
    if not out.parent.is_dir():
        raise InputError(
            f"{out.parent}/: no such folder for the record {out}; run from the folder that holds calibration/ "
            "(the station records under version control) or pass --out PATH"
        )
    options = CalibrateOptions(
        station=station, target_recall=args.target_recall, confidence=args.confidence, safety_margin=args.safety_margin,
        per_roi=args.per_roi, cost_escape=args.cost_escape, cost_false_reject=args.cost_false_reject, ng_rate=args.ng_rate,
        choose=args.choose, band=args.uncertain_band,
        **({} if args.band_false_reject is None else {"band_false_reject": args.band_false_reject}),  # else the options' default
    )
    options.check()  # before minutes of scoring
    if args.labels is not None and not args.labels.is_file():
        raise InputError(f"--labels {args.labels}: no such file")
    log = structlog.get_logger("inspector.calibrate")
    if args.decisions is not None:
        if args.labels is not None:
            raise InputError("--labels applies to DATA; decisions carry the labels replay gave them")
        scores = from_decisions(args.decisions, model_path=args.model)
    else:
        model = args.model or settings.model.path
        if model is None:
            raise InputError("no model given: pass --model M.onnx (or model.path in --config) to score DATA")
        scores = from_images(args.data, settings, model_path=model, labels_csv=args.labels, per_roi=args.per_roi, log=log)
    record = calibrate(scores, options)
    previous = None
    if out.is_file():
        try:
            previous = load_record(out, what="--out")
        except ConfigError:
            previous = None  # not a record we can compare with; it is replaced
    report = None
    if not args.no_report:
        from inspector.calibration.report import write_calibration_report

        by_scope = {}
        for name in record.thresholds:
            mine = [s for s in scores.samples if name == ALL_ROIS or s.roi == name]
            by_scope[name] = (
                np.array([s.score for s in mine if s.ng], np.float64),
                np.array([s.score for s in mine if not s.ng], np.float64),
            )
        report = write_calibration_report(report_path(out), record, by_scope)
    write_record(out, record)  # last: a failure before it leaves the station's record as it was
    stale = report_path(out)
    if args.no_report and stale.is_file():
        # Reviewers commit the record and its report together: an earlier report would show other figures.
        stale.unlink()
        print(f"removed {stale}: it described the earlier record")
    for line in describe(record, scores.excluded):
        print(line)
    for warning in scores.warnings:
        print(f"WARNING: {warning}")
    if previous is not None:
        old = {k: v.threshold for k, v in previous.thresholds.items()}
        new = {k: v.threshold for k, v in record.thresholds.items()}
        change = "unchanged" if old == new else ", ".join(
            f"{'' if k == ALL_ROIS else k + ' '}{old.get(k, 'none')} -> {new.get(k, 'none')}" for k in sorted(set(old) | set(new)) if old.get(k) != new.get(k)
        )
        model = ("" if previous.model.sha256 == record.model.sha256
                 else f"; model changed ({previous.model.name or '?'} {previous.model.sha256[:12]}… -> {record.model.name or '?'} {record.model.sha256[:12]}…)")
        print(f"previous record ({previous.created_at} by {previous.created_by}): threshold {change}{model}")
    print(f"record: {out}  (commit it: a threshold change is a reviewed change)")
    if report:
        print(f"report: {report}")
    print(f"apply:  decision.calibration: {out}")
    return 0


def _replay(args: argparse.Namespace) -> int:
    from inspector.replay.runner import run_replay  # keeps `inspector config` fast

    settings = _load(args.config)
    if args.labels is not None and not args.labels.is_file():
        raise InputError(f"--labels {args.labels}: no such file")
    result = run_replay(
        args.path,
        settings,
        model_path=args.model,
        threshold=args.threshold,
        labels_csv=args.labels,
        out_dir=args.out,
        what_if_thresholds=args.what_if,
        calibration=args.calibration,
        report=not args.no_report,
        log=structlog.get_logger("inspector.replay"),
    )
    _print_summary(result.summary)
    print(f"decisions: {result.decisions}")
    print(f"summary:   {result.summary_path}")
    if result.report:
        print(f"report:    {result.report}")
    return 0


def _fmt(x: Any, pct: bool = True) -> str:
    from inspector.percent import percent

    if x is None:
        return "n/a"
    return percent(x, 2) if pct else f"{x:.4f}"


def _print_summary(s: dict[str, Any]) -> None:
    print(
        f"frames {s['frames']}  passed {s['passed']}  rejected {s['rejected']} ({_fmt(s['reject_rate'])})"
        + (f" of which uncertain {s['uncertain']}" if s.get("uncertain") else "")
        + (f"  faulted {s['faulted']} (" + ", ".join(f"{k} {n}" for k, n in s["fault_reasons"].items()) + ")" if s["faulted"] else "")
    )
    m = s.get("frame_metrics")
    if m:
        print(
            f"labelled {m['n_ok']} ok / {m['n_ng']} ng" + (f" ({s['unlabelled']} unlabelled, not counted)" if s.get("unlabelled") else "")
            + f":  NG recall {_fmt(m['ng_recall'])} ({m['escapes']} escapes)  "
            f"false-reject rate {_fmt(m['false_reject_rate'])} ({m['false_rejects']})  ROC-AUC {_fmt(m['roc_auc'], pct=False)}"
        )
        _print_faulted(m, "frames")
    r = s.get("roi_metrics")
    if r:
        print(f"per ROI: NG recall {_fmt(r['ng_recall'])}  false-reject rate {_fmt(r['false_reject_rate'])}")
        _print_faulted(r, "ROIs")
    lat = s["latency_ms"]["total"]
    if lat["p50"] is not None:
        print(f"latency ms: p50 {lat['p50']:.2f}  p99 {lat['p99']:.2f}  max {lat['max']:.2f}")
    cal = s.get("calibration")
    if cal:
        _print_calibration_check(cal)
    rows = s.get("what_if")
    if rows:
        from inspector.decision import shared_threshold

        roi_thresholds = s.get("roi_thresholds") or {}
        differ = bool(roi_thresholds) and shared_threshold(roi_thresholds) is None
        print("what-if: each threshold applied to every ROI alike" + ("; this station's own per-ROI thresholds are not" if differ else ""))
        faulted = any(row.get("ng_faulted") or row.get("ok_faulted") for row in rows)
        extra = "  NG-recall(scored)  false-reject-rate(scored)" if faulted else ""
        print("           threshold  reject-rate  NG-recall  false-reject-rate" + extra)
        for row in rows:
            line = (
                f"           {row['threshold']:<9}  {_fmt(row['reject_rate']):>11}  {_fmt(row.get('ng_recall')):>9}  "
                f"{_fmt(row.get('false_reject_rate')):>17}"
            )
            if faulted:
                line += f"  {_fmt(row.get('scored_ng_recall')):>17}  {_fmt(row.get('scored_false_reject_rate')):>25}"
            print(line)
        if faulted:
            print(f"           faulted frames reject at any threshold ({rows[0]['ng_faulted']} NG, {rows[0]['ok_faulted']} OK): "
                  "counted in NG-recall and false-reject-rate, left out of the (scored) columns")


def _print_faulted(m: dict[str, Any], unit: str) -> None:
    """Say how many labelled samples were faulted, and the figures without them, when any were."""
    if not (m.get("ng_faulted") or m.get("ok_faulted")):
        return
    print(
        f"  faulted {m['ng_faulted']} NG and {m['ok_faulted']} OK {unit} (rejected without a score): counted above as caught and as "
        f"false rejects; scored {unit} only, NG recall {_fmt(m['scored_ng_recall'])} of {m['scored_n_ng']} NG, "
        f"false-reject rate {_fmt(m['scored_false_reject_rate'])} of {m['scored_n_ok']} OK"
    )


def _print_calibration_check(cal: dict[str, Any]) -> None:
    from inspector.calibration.record import ALL_ROIS

    check = cal["check"]
    head = f"calibration {cal['station']} ({cal['path']}): target NG recall {_fmt(cal['target_recall'])} at {100 * cal['confidence']:g}%"
    if not check["checked"]:
        print(f"{head}: not checked, {check['why']}")
        return
    print(head + ("" if cal["demonstrated"] else " (NOT DEMONSTRATED at calibration)"))
    conf = f"{100 * check['confidence']:g}%"
    unit = "ROIs" if check.get("unit") == "roi" else "frames"
    for name, sc in check["scopes"].items():
        label = "" if name == ALL_ROIS else f"ROI {name}: "
        if not sc.get("checked", True):
            print(f"  {label}not checked, {sc['why']}")
            continue
        lo, hi = sc["ng_recall_bounds"]
        verdict = (
            "inside the calibrated bound" if sc["inside_bound"]
            else "BELOW the calibrated bound: this data CONTRADICTS the calibration" if sc["contradicts_calibration"]
            else "below the calibrated bound, but within chance at this sample size"
        )
        line = (
            f"  {label}NG recall here {_fmt(sc['ng_recall'])} of {sc['n_ng']} scored NG (one-sided {conf} bounds {_fmt(lo)} and {_fmt(hi)}); "
            f"calibrated lower bound {_fmt(sc['calibrated_lower_bound'])}: {verdict}"
        )
        if "false_reject_rate" in sc:
            line += f"; false-reject rate {_fmt(sc['false_reject_rate'])} (calibrated upper bound {_fmt(sc['calibrated_false_reject_upper'])})"
        print(line)
        if sc.get("ng_faulted_left_out") or sc.get("ok_faulted_left_out"):
            print(f"  {label}left out of this check: {sc['ng_faulted_left_out']} NG and {sc['ok_faulted_left_out']} OK faulted {unit} "
                  "(rejected without a score: no evidence of the model's recall or false-reject rate)")


def _training_modules() -> Any:
    try:
        import inspector.training.export as export_mod
        import inspector.training.run as run_mod
    except ImportError as exc:
        raise InputError(
            f"this command needs the train extra (torch, torchvision, onnx, matplotlib): pip install 'inspector[train]' ({exc})"
        ) from exc
    return run_mod, export_mod


def _resume_hint(args: argparse.Namespace, exc: KeyboardInterrupt) -> str:
    """'; continue with: inspector train ...' after an interrupted training, when a last.pt can continue it; else ''."""
    out = getattr(args, "out", None)
    if args.command != "train" or not isinstance(out, Path) or args.lr_find:
        return ""  # the LR range test trains nothing to continue
    last = exc.resume if hasattr(exc, "resume") else out / "last.pt"  # run.Interrupted names a cross-validation's fold
    if last is None or not last.is_file():
        return ""
    if args.resume is None and last.stat().st_mtime < getattr(args, "started_at", 0.0) - 2:  # 2 s: coarse file times
        return ""  # an earlier run's, in an --out this run had not yet refused: not this run's to continue
    labels = f" --labels {shlex.quote(str(args.labels))}" if args.labels is not None else ""
    epochs = getattr(args, "recipe:epochs", None)
    more = f" --epochs {epochs}" if args.resume is not None and epochs is not None else ""  # a resume that extended the run
    # Quoted: pasted into a shell, "my data" must stay one argument.
    return f"; continue with: inspector train {shlex.quote(str(args.data))} --resume {shlex.quote(str(last))}{labels}{more}"


# The flags that set each preprocess key (the recipe's train.* keys have one flag each, named after the field).
_PREPROCESS_FLAGS = {
    "preprocess.resize.width": "--size", "preprocess.resize.height": "--size", "preprocess.color": "--color",
    "preprocess.clahe.enabled": "--clahe", "preprocess.clahe.clip_limit": "--clahe", "preprocess.resize.letterbox": "--letterbox",
    "preprocess.pixel_max": "--pixel-max", "preprocess.frame_size": "--frame-size",
}


def _flags_named(keys: list[str]) -> list[str]:
    """'--threads (train.threads)' for each flag that set some of `keys`."""
    from inspector.training.recipe import option_flag

    flags: dict[str, list[str]] = {}
    for key in keys:
        flag = _PREPROCESS_FLAGS.get(key) or option_flag(key.rsplit(".", 1)[-1])
        flags.setdefault(flag, []).append(key)
    return [f"{flag} ({', '.join(named)})" for flag, named in flags.items()]


def _train(args: argparse.Namespace) -> int:
    """`inspector train`, which SIGTERM stops as Ctrl-C does: cleanly, between two steps, saying how to continue."""
    import signal
    import threading

    args.started_at = time.time()  # a last.pt older than this is not this run's (_resume_hint)
    if threading.current_thread() is not threading.main_thread():
        return _train_command(args)

    def _terminate(signum: int, _frame: object) -> None:
        args.terminated = True
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, _terminate)
    try:
        return _train_command(args)
    finally:
        signal.signal(signal.SIGTERM, previous if previous is not None else signal.SIG_DFL)


def _train_command(args: argparse.Namespace) -> int:
    from inspector.training.recipe import load_train_config, recipe_overrides

    run_mod, _ = _training_modules()
    overrides = recipe_overrides(args)
    if args.size:
        overrides["preprocess.resize.width"], overrides["preprocess.resize.height"] = args.size
    if args.color:
        overrides["preprocess.color"] = args.color
    if args.clahe is not None:
        overrides["preprocess.clahe.enabled"] = args.clahe != "off"
        if args.clahe != "off":
            overrides["preprocess.clahe.clip_limit"] = args.clahe
    if args.letterbox is not None:
        overrides["preprocess.resize.letterbox"] = args.letterbox
    if args.pixel_max is not None:
        overrides["preprocess.pixel_max"] = args.pixel_max
    if args.frame_size is not None:
        overrides["preprocess.frame_size"] = args.frame_size
    if args.resume is not None:
        unsupported = _flags_named(sorted(k for k in overrides if k != "train.epochs"))
        unsupported += [f"--classes {args.classes}"] * (args.classes is not None) + [f"--config {args.config}"] * (args.config is not None)
        if unsupported:
            raise InputError(
                "--resume continues the checkpoint's run as it was set up (recipe, preprocessing, classes); only --epochs may "
                f"change it (got {', '.join(unsupported)})"
            )
        if args.lr_find:
            raise InputError("--lr-find starts from the recipe's initial weights; it does not continue a run (leave --resume out)")
        args.out = args.out or args.resume.parent  # a resumed run writes only into its own folder
    elif args.out is None:
        raise InputError("--out FOLDER is required: where the run's checkpoints, metrics and plots go")
    config = load_train_config(args.config, overrides)
    if not args.data.is_dir():
        what = "is a file" if args.data.exists() else "no such folder"
        raise InputError(f"{args.data}: {what}; expected a folder of ok/ + ng/<defect>/ folders, or of frames with labels.csv")
    if args.labels is not None and not args.labels.is_file():
        raise InputError(f"--labels {args.labels}: no such file")
    multi = args.classes == "multi"
    if args.lr_find:
        finding = run_mod.run_lr_find(args.data, args.out, config, labels_csv=args.labels, multi=multi)
        print(f"suggested learning rate: {finding.suggestion:.2e} (valley of the loss curve; loss minimum at {finding.minimum:.2e})")
        print(f"plot: {args.out / 'lr_find.png'}")
        return 0
    summary = run_mod.run_training(
        args.data, args.out, config, labels_csv=args.labels, multi=multi, resume=args.resume,
        resume_epochs=overrides.get("train.epochs"), log=structlog.get_logger("inspector.train"),
    )
    if "folds" in summary:
        auc = summary["roc_auc"]
        print(f"{summary['folds']}-fold cross-validation: ROC-AUC {auc['mean']:.4f} +- {auc['std']:.4f}" if auc else "cross-validation done")
        fold = run_mod.fold_parent(args.out) if args.resume is not None else None  # --out a fold's folder: cv.json is beside it
        print(f"summary: {(fold[0] if fold is not None else args.out) / 'cv.json'}")
        return 0
    print(
        f"best epoch {summary['best_epoch']}/{summary['epochs_run']}: validation ROC-AUC {_fmt(summary['roc_auc'], pct=False)}"
        + (" with test-time flips" if summary.get("tta") == "flips" else "") + "  "
        f"at {_fmt(summary['target_recall'])} NG recall: threshold {_fmt(summary['threshold_at_target'], pct=False)}  "
        f"false-reject rate {_fmt(summary['false_reject_rate_at_target'])}  ({summary['training_seconds']:.0f} s)"
    )
    print(f"checkpoint: {summary['checkpoint']}")
    print(f"report:     {args.out / 'report.html'}")
    print(f"next:       inspector export {summary['checkpoint']} --out model.onnx")
    return 0


def _export(args: argparse.Namespace) -> int:
    _, export_mod = _training_modules()
    spec = None
    if args.config is not None:
        from inspector.pipeline import station_spec

        settings = load_settings(args.config)
        base = settings.preprocess or export_mod.model_from_checkpoint(export_mod.load_checkpoint(args.checkpoint))[1]
        spec = station_spec(base, settings.rois)
    if args.golden is not None and not args.golden.exists():
        raise InputError(f"--golden {args.golden}: no such folder")
    if args.calibration_data is not None and args.quantize is None:
        raise InputError("--calibration-data sets the INT8 activation ranges: use it with --quantize int8, or leave it out")
    replaces = args.out.is_file()
    manifest, gate = export_mod.export_checkpoint(
        args.checkpoint, args.out, golden=args.golden, spec=spec, fp16=args.fp16, threshold=args.threshold,
        quantize=args.quantize, calibration_data=args.calibration_data, tta=args.tta,
        log=structlog.get_logger("inspector.export"),
    )
    print(
        f"parity gate passed: {gate.images} images, {gate.rows} crops, max |delta p| {gate.max_abs_diff:.2e} "
        f"(tolerance {gate.tolerance:g}), {gate.flips} verdict flips at {gate.threshold:g}"
    )
    quant = manifest.info.get("quantization")
    if quant:
        g = quant["accuracy_gate"]
        print(
            f"accuracy gate passed: {g['images']} images ({g['labelled']} labelled), ROC-AUC {g['roc_auc_reference']:.4f} fp32 -> "
            f"{g['roc_auc_candidate']:.4f} int8, {g['flips']} verdict flips at {g['threshold']:g}; {quant['calibration_images']} calibration images"
        )
    views = manifest.info.get("tta_views", 1)
    print(f"model: {args.out}  classes {list(manifest.classes)}  precision {manifest.info['precision']}"
          + (f"  test-time views {views} ({manifest.info['tta']})" if views > 1 else "")
          + ("  (replaced the model that was there)" if replaces else ""))
    return 0
