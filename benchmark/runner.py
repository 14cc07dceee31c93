"""Plan the grid of cells and run it, resumably, with a local or a Ray executor."""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from detectors import create_detector, list_detectors
from generators import get_generator_class, list_generators

from . import store
from .cell import NO_GENERATOR, run_cell
from .config import CellConfig, ConfigError, RunConfig
from .datasets import create_dataset, list_datasets
from .registry import UnknownNameError


@dataclass
class Plan:
    cells: list[CellConfig]
    todo: list[CellConfig]
    skipped: list[str] = field(default_factory=list)  # why some grid points have no cell


def _check_names(cfg: RunConfig) -> None:
    """Unknown names fail before any work, with one line listing what is registered."""
    known = {"generator": list_generators() + [NO_GENERATOR], "detector": list_detectors(),
             "dataset": list_datasets()}
    for kind, names in (("generator", cfg.generators), ("detector", cfg.detectors), ("dataset", cfg.datasets)):
        for n in names:
            if n in known[kind] or (kind == "detector" and ":" in n and f"{n.split(':')[0]}:*" in known[kind]):
                continue
            raise UnknownNameError(f"unknown {kind} {n!r}; registered: {', '.join(known[kind])}")


def plan(cfg: RunConfig) -> Plan:
    _check_names(cfg)
    cells: list[CellConfig] = []
    skipped: list[str] = []
    seen: set[str] = set()
    for dataset in cfg.datasets:
        adapter = create_dataset(dataset, cfg.root_of(dataset), **cfg.dataset_cfg.get(dataset, {}))
        cats = adapter.categories()
        if cfg.categories != "all":
            missing = [c for c in cfg.categories if c not in cats]
            if missing:
                raise ConfigError(f"data set {dataset!r} has no categories {missing}; found: {', '.join(cats)}")
            cats = list(cfg.categories)
        for det in cfg.detectors:
            uses_pairs = create_detector(det, **cfg.detector_cfg.get(det, {})).uses_pairs
            gens = cfg.generators if uses_pairs else [NO_GENERATOR]
            if not adapter.has_masks:  # image-level data: mask-needing generators are refused
                refused = [g for g in gens if g != NO_GENERATOR and getattr(get_generator_class(g), "needs_masks", False)]
                skipped.extend(f"{g} skipped on {dataset}: it needs pixel masks of real anomalies and "
                               f"{dataset} has image-level labels only" for g in refused)
                gens = [g for g in gens if g not in refused]
            for cat in cats:
                for gen in gens:
                    for seed in cfg.seeds:
                        c = cfg.cell(dataset, cat, gen, det, seed)
                        if c.hash() not in seen:
                            seen.add(c.hash())
                            cells.append(c)
    todo = [c for c in cells if not store.is_done(cfg.run_dir, c.hash())]
    return Plan(cells, todo, list(dict.fromkeys(skipped)))


def _progress(console: Console) -> Progress:
    return Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                    TimeElapsedColumn(), TextColumn("{task.fields[status]}"), console=console)


def run_local(cfg: RunConfig, cells: list[CellConfig], console: Console) -> list[dict]:
    out = []
    with _progress(console) as prog:
        task = prog.add_task("cells", total=len(cells), status="")
        for c in cells:
            prog.update(task, status=c.label)
            rec = run_cell(c, cfg.cache_dir, progress=lambda m: prog.update(task, status=f"{c.label}: {m}"))
            store.write_record(cfg.run_dir, rec)
            _report_failure(console, rec)
            out.append(rec)
            prog.advance(task)
    return out


def run_ray(cfg: RunConfig, cells: list[CellConfig], console: Console) -> list[dict]:
    """One Ray task per cell; each record is written as soon as its task ends."""
    import ray

    opts = cfg.ray or {}
    if not ray.is_initialized():
        addr = opts.get("address")
        init_kw = {"address": addr} if addr else {"num_cpus": opts.get("local_num_cpus") or os.cpu_count()}
        ray.init(ignore_reinit_error=True, include_dashboard=False, log_to_driver=False,
                 runtime_env={"env_vars": {"HF_HUB_OFFLINE": os.environ.get("HF_HUB_OFFLINE", "1")}},
                 **init_kw)
    remote = ray.remote(num_cpus=opts.get("num_cpus", 1), num_gpus=opts.get("num_gpus", 0),
                        max_retries=0)(_ray_cell)
    threads = cfg.threads or max(1, int(opts.get("num_cpus", 1)))
    refs = {remote.remote(c.to_dict(), str(Path(cfg.cache_dir).resolve()), str(Path.cwd()), threads): c
            for c in cells}
    out = []
    with _progress(console) as prog:
        task = prog.add_task("cells (ray)", total=len(cells), status="")
        pending = list(refs)
        while pending:
            done, pending = ray.wait(pending, num_returns=1)
            c = refs[done[0]]
            try:
                rec = ray.get(done[0])
            except Exception as e:  # the worker itself died: record it like any failure
                rec = {"hash": c.hash(), "config": c.to_dict(), "status": "failed",
                       "error": f"{type(e).__name__}: {e}", "traceback": repr(e)}
            store.write_record(cfg.run_dir, rec)
            _report_failure(console, rec)
            out.append(rec)
            prog.update(task, advance=1, status=c.label)
    return out


def _ray_cell(cell: dict, cache_dir: str, cwd: str, threads: int) -> dict:
    """Runs in a Ray worker. Ray pins workers to one thread; we give torch the task's CPUs, and
    the same thread count as a local run gives bit-identical records."""
    import sys

    import torch

    torch.set_num_threads(threads)
    if cwd not in sys.path:
        sys.path.insert(0, cwd)
    from benchmark.cell import run_cell as _run
    from benchmark.config import CellConfig as _C

    return _run(_C.from_dict(cell), cache_dir)


def _report_failure(console: Console, rec: dict) -> None:
    if rec.get("status") == "failed":
        c = rec["config"]
        console.print(f"[red]cell failed[/red] {c['dataset']}/{c['category']} {c['generator']} → "
                      f"{c['detector']} seed {c['seed']}: {rec['error']}")


def execute(cfg: RunConfig, console: Console | None = None) -> tuple[Plan, list[dict]]:
    console = console or Console(stderr=True)
    p = plan(cfg)
    for msg in p.skipped:
        console.print(f"[yellow]{msg}[/yellow]")
    console.print(f"run [bold]{cfg.run}[/bold]: {len(p.cells)} cells, {len(p.cells) - len(p.todo)} already "
                  f"recorded, {len(p.todo)} to run ({cfg.executor} executor)")
    if not p.todo:
        return p, []
    runner = run_ray if cfg.executor == "ray" else run_local
    return p, runner(cfg, p.todo, console)
