"""The `inspector` command line. Runtime commands import onnxruntime, OpenCV and numpy only: never torch."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import structlog

from inspector import __version__
from inspector.config import (
    DEFAULT_CONFIG,
    InspectorSettings,
    load_settings,
    run_errors,
    settings_schema,
    settings_yaml,
)
from inspector.errors import ConfigError, InputError, InspectorError
from inspector.logs import configure_logging

EXIT_USAGE = 2
EXIT_INTERNAL = 70  # EX_SOFTWARE: a bug, reported without a traceback unless --debug


def _thresholds(text: str) -> list[float]:
    try:
        return [float(t) for t in text.split(",") if t.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated numbers in 0..1, like 0.3,0.5,0.7; got {text!r}") from None


def _unit_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number in 0..1, got {text!r}") from None
    if not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError(f"expected a number in 0..1, got {value}")
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
    check.add_argument("file", type=Path)
    check.add_argument("--run", action="store_true", help="also check what `inspector run` needs: source, certificates, journal folder")
    cfg_sub.add_parser("schema", help="print the configuration's JSON schema")
    show = cfg_sub.add_parser("show", help="print the effective settings (file + environment), secrets masked")
    show.add_argument("--config", type=Path, default=None, help=f"config file (default {DEFAULT_CONFIG} when present)")

    rp = sub.add_parser(
        "replay",
        help="re-run recorded frames through the daemon's exact decision path",
        description="Judge every image under PATH with the deployed configuration and write decisions.jsonl, summary.json and a report.",
    )
    rp.add_argument("path", type=Path, metavar="PATH", help="folder of images (recursive; ok/ + ng/<defect>/ layout gives labels) or a text file listing images")
    rp.add_argument("--model", type=Path, help="ONNX model (default: model.path from the config)")
    rp.add_argument("--config", type=Path, default=None, help=f"config file (default {DEFAULT_CONFIG} when present)")
    rp.add_argument("--threshold", type=_unit_float, help="one threshold for every ROI, replacing the config's")
    rp.add_argument("--labels", type=Path, help="CSV `frame,roi1,...` with ok/ng per ROI (frame paths relative to the CSV)")
    rp.add_argument("--out", type=Path, help="output folder (default ./replay-YYYYmmdd-HHMMSS)")
    rp.add_argument("--what-if", type=_thresholds, metavar="T1,T2,...", help="also print NG recall and false-reject rate at these thresholds")
    rp.add_argument("--no-report", action="store_true", help="skip the HTML report and contact sheets")
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
            a.add_argument("--limit", type=int, default=50, help="newest N decisions (default 50)")
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
        w, _, h = text.lower().partition("x")
        return int(w), int(h or w)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a size like 224 or 320x240 (width x height, pixels), got {text!r}") from None


def _clahe(text: str) -> float | str:
    if text.lower() in ("off", "none", "0"):
        return "off"
    try:
        return float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a clip limit like 2.0, or off; got {text!r}") from None


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
    tp.add_argument("--out", type=Path, required=True, help="output folder for checkpoints, metrics and plots")
    tp.add_argument("--config", type=Path, help="training YAML with `preprocess:` and `train:` sections; flags override it")
    tp.add_argument("--labels", type=Path, help="CSV frame,roi1,... (default DATA/labels.csv when DATA has no ok/ folder)")
    tp.add_argument("--classes", choices=("binary", "multi"), default="binary", help="binary: ok/ng; multi: ok + one class per defect folder")
    tp.add_argument("--resume", type=Path, metavar="CKPT", help="continue from a last.pt (its recipe; --epochs may extend it)")
    tp.add_argument("--lr-find", action="store_true", help="run the learning-rate range test, print the suggestion, plot lr_find.png, and stop")
    pp = tp.add_argument_group("preprocessing (each overrides the config file's preprocess section)")
    pp.add_argument("--size", type=_size, help="model input size, pixels: 224 or WIDTHxHEIGHT")
    pp.add_argument("--color", choices=("gray", "rgb"), help="channels the model sees")
    pp.add_argument("--clahe", type=_clahe, metavar="CLIP|off", help="CLAHE clip limit, or off")
    pp.add_argument("--letterbox", action=argparse.BooleanOptionalAction, default=None, help="keep aspect ratio, pad the rest")
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
    ep.add_argument("--threshold", type=_unit_float, default=0.5, help="threshold at which no verdict may flip (default 0.5)")


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
    except KeyboardInterrupt:
        print("inspector: interrupted", file=sys.stderr)
        return 130
    except Exception as exc:
        if args.debug:
            raise
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
    if args.config_command == "show":
        print(settings_yaml(_load(args.config)), end="")
        return 0
    errors = check_config(args.file, run=args.run)
    if errors:
        for line in errors:
            print(line)
        print(f"{args.file}: {len(errors)} error(s)", file=sys.stderr)
        return EXIT_USAGE
    print(f"{args.file}: ok")
    return 0


def check_config(path: Path, *, run: bool = False) -> list[str]:
    """Every problem with a config file, as `dotted.path: message` lines; empty when it is usable."""
    try:
        settings = load_settings(path)
    except ConfigError as exc:
        return exc.errors or [str(exc)]
    errors = run_errors(settings) if run else []
    if run and settings.model.path is None:
        errors.append("model.path: required by `inspector run`")
    if settings.model.path is not None and not settings.model.path.is_file():
        errors.append(f"model.path: file not found: {settings.model.path}")
    if settings.rois is not None:
        names = {r.name for r in settings.rois}
        errors += [
            f"decision.roi_thresholds.{n}: no such ROI; the ROIs are: {', '.join(sorted(names))}"
            for n in sorted(set(settings.decision.roi_thresholds) - names)
        ]
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
    journal = Journal(path, readonly=True)
    try:
        if args.journal_command == "list":
            latest = journal.rows(args.since, args.until, newest=args.limit)
            print(f"{'seq':>8}  {'decided_at':24}  {'verdict':7}  {'reason':14}  {'score':>8}  {'part':16}  delivery")
            for r in latest:
                d = r["delivery"]
                delivery = "acked" if d["acknowledged_at"] else "published" if d["record_sent_at"] else "UNSENT"
                score = "" if r["score"] is None else f"{r['score']:.4f}"
                print(f"{r['seq']:>8}  {r['decided_at']:24}  {r['verdict']:7}  {r['reason'] or '':14}  {score:>8}  {str(r['part_id'])[:16]:16}  {delivery}")
            return 0
        rows = journal.rows(args.since, args.until)
        out = args.out.open("w", newline="", encoding="utf-8") if args.out else sys.stdout
        try:
            if args.format == "jsonl":
                for r in rows:
                    out.write(json.dumps(r) + "\n")
            else:
                fields = ["seq", "session", "frame_id", "part_id", "verdict", "reason", "score", "threshold", "captured_at",
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
    if x is None:
        return "n/a"
    return f"{100 * x:.2f}%" if pct else f"{x:.4f}"


def _print_summary(s: dict[str, Any]) -> None:
    print(
        f"frames {s['frames']}  passed {s['passed']}  rejected {s['rejected']} ({_fmt(s['reject_rate'])})"
        + (f"  faulted {s['faulted']} {s['reasons']}" if s["faulted"] else "")
    )
    m = s.get("frame_metrics")
    if m:
        print(
            f"labelled {m['n_ok']} ok / {m['n_ng']} ng:  NG recall {_fmt(m['ng_recall'])} ({m['escapes']} escapes)  "
            f"false-reject rate {_fmt(m['false_reject_rate'])} ({m['false_rejects']})  ROC-AUC {_fmt(m['roc_auc'], pct=False)}"
        )
    r = s.get("roi_metrics")
    if r:
        print(f"per ROI: NG recall {_fmt(r['ng_recall'])}  false-reject rate {_fmt(r['false_reject_rate'])}")
    lat = s["latency_ms"]["total"]
    if lat["p50"] is not None:
        print(f"latency ms: p50 {lat['p50']:.2f}  p99 {lat['p99']:.2f}  max {lat['max']:.2f}")
    rows = s.get("what_if")
    if rows:
        print("what-if:   threshold  reject-rate  NG-recall  false-reject-rate")
        for row in rows:
            print(
                f"           {row['threshold']:<9}  {_fmt(row['reject_rate']):>11}  {_fmt(row.get('ng_recall')):>9}  "
                f"{_fmt(row.get('false_reject_rate')):>17}"
            )


def _training_modules() -> Any:
    try:
        import inspector.training.export as export_mod
        import inspector.training.run as run_mod
    except ImportError as exc:
        raise InputError(
            f"this command needs the train extra (torch, torchvision, onnx, matplotlib): pip install 'inspector[train]' ({exc})"
        ) from exc
    return run_mod, export_mod


def _train(args: argparse.Namespace) -> int:
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
    if args.resume is not None:
        unsupported = sorted(k for k in overrides if k != "train.epochs")
        if unsupported or args.config:
            raise InputError(f"--resume continues the checkpoint's recipe; only --epochs may change it (got {', '.join(unsupported) or '--config'})")
    config = load_train_config(args.config, overrides)
    if not args.data.is_dir():
        raise InputError(f"{args.data}: no such folder; expected ok/ + ng/<defect>/ folders, or frames with labels.csv")
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
        print(f"summary: {args.out / 'cv.json'}")
        return 0
    print(
        f"best epoch {summary['best_epoch']}/{summary['epochs_run']}: validation ROC-AUC {_fmt(summary['roc_auc'], pct=False)}  "
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
    manifest, gate = export_mod.export_checkpoint(
        args.checkpoint, args.out, golden=args.golden, spec=spec, fp16=args.fp16, threshold=args.threshold,
        log=structlog.get_logger("inspector.export"),
    )
    print(
        f"parity gate passed: {gate.images} images, {gate.rows} crops, max |delta p| {gate.max_abs_diff:.2e} "
        f"(tolerance {gate.tolerance:g}), {gate.flips} verdict flips at {gate.threshold:g}"
    )
    print(f"model: {args.out}  classes {list(manifest.classes)}  precision {manifest.info['precision']}")
    return 0
