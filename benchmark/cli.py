"""The command line: run a grid (default), rebuild a report, draw generated samples, list names."""
from __future__ import annotations

import argparse
import importlib
import os
import sys
from pathlib import Path

from rich.console import Console

from .config import PRESETS, ConfigError, build_config
from .datasets import DataError
from .registry import UnknownNameError
from .store import RecordError

# subcommands that live in their own module: module.add_parser(subparsers), module.run(args, console)
PLUGGED: dict[str, str] = {"compare": "benchmark.compare", "weights": "benchmark.weights"}
SUBCOMMANDS = ("run", "report", "samples", "list", *PLUGGED)


def _positive_int(text: str) -> int:
    try:
        v = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number >= 1, got {text!r}") from None
    if v < 1:
        raise argparse.ArgumentTypeError(f"expected a whole number >= 1, got {v}")
    return v


def _grid_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--preset", choices=PRESETS, default=None, help="base config (default: quick)")
    p.add_argument("--config", help="YAML file over the preset")
    p.add_argument("--dataset", help="data set name(s), comma-separated")
    p.add_argument("--data-root", help="folder of the data set's official release (or synthetic cache parent)")
    p.add_argument("--categories", help="comma-separated categories, or 'all'")
    p.add_argument("--generators", help="comma-separated generator names")
    p.add_argument("--detectors", help="comma-separated detector names")
    p.add_argument("--seeds", help="comma-separated seeds")
    p.add_argument("--device", help="cpu, cuda, cuda:1, mps ...")
    p.add_argument("--threads", help="torch CPU threads per cell (default: torch's choice)")
    p.add_argument("--jobs", help="cells run at once in separate processes (local executor)")
    p.add_argument("--run", dest="run_name", help="run name (folder under results/runs)")
    p.add_argument("--results-dir", help="where runs are stored (default results/runs)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="any config field, dotted for nesting, e.g. detector_cfg.unet.steps=100")


def parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="run_benchmark.py", description=__doc__)
    sub = ap.add_subparsers(dest="cmd")
    run = sub.add_parser("run", help="run the benchmark grid (the default subcommand)")
    _grid_args(run)
    run.add_argument("--executor", choices=("local", "ray"))
    run.add_argument("--address", help="Ray cluster address (default: a local Ray instance)")
    rep = sub.add_parser("report", help="rebuild tables and figures of a run from its records")
    rep.add_argument("run_dir", help="run name or folder")
    rep.add_argument("--results-dir", default="results/runs")
    sam = sub.add_parser("samples", help="write a PNG grid of generated pairs")
    _grid_args(sam)
    sam.add_argument("--generator", required=True)
    sam.add_argument("--n", type=_positive_int, default=6, help="pairs per defect type")
    sam.add_argument("--out", help="PNG path (default results/samples/<generator>_<dataset>_<category>.png)")
    sub.add_parser("list", help="list registered data sets, generators and detectors")
    for mod in PLUGGED.values():
        importlib.import_module(mod).add_parser(sub)
    return ap


def _overrides(a: argparse.Namespace) -> dict:
    return {"datasets": a.dataset, "data_root": a.data_root, "categories": a.categories,
            "generators": a.generators, "detectors": a.detectors, "seeds": a.seeds, "device": a.device,
            "threads": a.threads, "jobs": getattr(a, "jobs", None), "run": a.run_name, "results_dir": a.results_dir,
            "executor": "ray" if getattr(a, "address", None) else getattr(a, "executor", None),
            "ray": {"address": a.address} if getattr(a, "address", None) else None}


def _config(a: argparse.Namespace):
    return build_config(a.preset or "quick", a.config, _overrides(a), a.set)


def cmd_run(a: argparse.Namespace, console: Console) -> int:
    from .report import build_report
    from .runner import execute

    cfg = _config(a)
    p, recs = execute(cfg, console)
    failed = [r for r in recs if r.get("status") != "ok"]
    _say_rejected(cfg.run_dir, console)
    shown = build_report(cfg.run_dir, console=console)
    for md in shown.values():
        print(md)
    console.print(f"tables in {cfg.run_dir / 'tables'}")
    if failed:
        console.print(f"[red]{len(failed)} cell(s) failed[/red]; their errors are in the records under "
                      f"{cfg.run_dir / 'cells'}; rerun to retry them")
        return 1
    return 0


def _say_rejected(run_dir: Path, console: Console) -> None:
    """Bad records are moved aside by the store; say how many and why, one line each."""
    from .store import scan

    _, bad = scan(run_dir)
    if bad:
        console.print(f"[yellow]skipped {len(bad)} bad record(s)[/yellow] (moved aside; their cells run again "
                      f"on the next run):")
        for path, why in bad:
            console.print(f"  {path}: {why}")


def cmd_report(a: argparse.Namespace, console: Console) -> int:
    from .report import build_report

    run_dir = Path(a.run_dir)
    if not (run_dir / "cells").is_dir():
        run_dir = Path(a.results_dir) / a.run_dir
    if not (run_dir / "cells").is_dir():
        raise ConfigError(f"no run records under {str(run_dir)!r} (expected a cells/ folder)")
    _say_rejected(run_dir, console)
    for md in build_report(run_dir, console=console).values():
        print(md)
    return 0


def cmd_samples(a: argparse.Namespace, console: Console) -> int:
    from .samples import write_samples

    cfg = _config(a)
    path = write_samples(cfg, a.generator, a.n, a.out, console)
    print(path)
    return 0


def cmd_list(a: argparse.Namespace, console: Console) -> int:
    from detectors import list_detectors
    from generators import list_generators

    from .datasets import list_datasets

    print("datasets:  ", ", ".join(list_datasets()))
    print("generators:", ", ".join(list_generators()))
    print("detectors: ", ", ".join(list_detectors()), "(anomalib:<Model> for any anomalib image model)")
    return 0


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] not in SUBCOMMANDS + ("-h", "--help"):
        argv = ["run"] + argv
    a = parser().parse_args(argv)
    console = Console(stderr=True)
    if not console.is_terminal:
        # Into a file or pipe, progress is our one line per finished cell; libraries' tqdm bars
        # (anomalib's coreset selection: hundreds of redraws a PatchCore cell) would fill the log with
        # carriage returns. tqdm reads TQDM_* when it is imported, so this must come before any
        # model import; spawned worker processes inherit it. A user's own setting wins.
        os.environ.setdefault("TQDM_DISABLE", "1")
    try:
        if a.cmd in PLUGGED:
            return importlib.import_module(PLUGGED[a.cmd]).run(a, console)
        return {"run": cmd_run, "report": cmd_report, "samples": cmd_samples, "list": cmd_list}[a.cmd](a, console)
    except (ConfigError, UnknownNameError, DataError, RecordError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted: finished cells are recorded; rerun to continue", file=sys.stderr)
        return 130
