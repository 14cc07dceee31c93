"""Plan the grid of cells and run it, resumably, with a local or a Ray executor."""
from __future__ import annotations

import multiprocessing as mp
import os
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from detectors import get_detector_class
from generators import get_generator_class

from . import runs, schema, store
from .cell import NO_GENERATOR, run_cell
from .config import CellConfig, ConfigError, RunConfig, digest
from .datasets import DATASETS, create_dataset, list_datasets
from .evaluation import check_ready
from .registry import UnknownNameError


@dataclass
class Plan:
    cells: list[CellConfig]
    todo: list[CellConfig]
    skipped: list[str] = field(default_factory=list)  # why some grid points have no cell
    rejected: list = field(default_factory=list)      # (path, reason) of bad records moved aside


def _component_class(kind: str, name: str):
    if kind == "generator":
        return get_generator_class(name)
    if kind == "detector":
        return get_detector_class(name)
    list_datasets()
    return DATASETS.get(name)


def resolve_components(cfg: RunConfig) -> dict:
    """{(kind, name): resolved config} for every component of the grid, validated before any
    work: unknown names, unknown keys, wrong types and ranges are one line naming the key.

    Settings for a component name that is not registered (a typo such as `detector_cfg.uent`)
    are refused too, even when that name is not in the grid."""
    out: dict = {}
    for kind, field_name, names in (("generator", "generator_cfg", [g for g in cfg.generators if g != NO_GENERATOR]),
                                    ("detector", "detector_cfg", cfg.detectors),
                                    ("dataset", "dataset_cfg", cfg.datasets)):
        given = getattr(cfg, field_name)
        for name in list(names) + [k for k in given if k not in names]:  # settings given but unused: checked too
            try:
                entry = _component_class(kind, name)
            except UnknownNameError as e:  # one line listing the registered names
                if name in names:
                    raise
                raise ConfigError(f"{field_name}.{name}: {e}") from None
            resolver = getattr(entry, "resolve_config", None)
            own = getattr(entry, "own_settings", None)  # ablation variants inherit their parent's settings
            raw = own(name, given) if own is not None else dict(given.get(name, {}))
            where = f"{field_name}.{name}"
            if resolver is None:  # a plain factory without a settings dataclass: passed as given
                out[(kind, name)] = raw
                continue
            variant = name.split(":", 1)[1] if ":" in name else None  # a family member, e.g. anomalib:Padim
            out[(kind, name)] = schema.resolved(resolver(raw, where, variant) if variant else resolver(raw, where))
    return out


def _uses_pairs(name: str, resolved_cfg: dict) -> bool:
    """Whether a detector trains on generated pairs, read from its class (no model is built)."""
    cls = get_detector_class(name)
    hook = getattr(cls, "pairs_used", None)
    if hook is not None:
        return bool(hook(resolved_cfg, name.split(":", 1)[1] if ":" in name else None))
    return bool(getattr(cls, "uses_pairs", True))


def check_device(device: str) -> None:
    """A device torch cannot use here fails before any work, not inside every cell."""
    import torch

    if device.startswith("cuda"):
        if not torch.cuda.is_available():
            raise ConfigError(f"device {device!r}: CUDA is not available on this machine (torch "
                              f"{torch.__version__}); use --device cpu")
        idx = int(device.split(":", 1)[1]) if ":" in device else 0
        if idx >= torch.cuda.device_count():
            raise ConfigError(f"device {device!r}: only {torch.cuda.device_count()} CUDA device(s) here")
    if device == "mps" and not torch.backends.mps.is_available():
        raise ConfigError("device 'mps': MPS is not available on this machine; use --device cpu")


def plan(cfg: RunConfig, record_run: bool = True) -> Plan:
    """Validate everything, then list the grid's cells and those still to run.

    With ``record_run`` the run folder's manifest is checked (a run is one experiment,
    `benchmark.runs`) and grown; nothing is computed here."""
    components = resolve_components(cfg)
    check_device(cfg.device)
    from detectors.backbones import check_weights

    for det in cfg.detectors:  # pretrained weights that are not there stop the run before any work
        missing = check_weights(components[("detector", det)], f"detector_cfg.{det}")
        if missing:
            raise ConfigError(missing)
    for gen in cfg.generators:  # so do local checkpoints a generator names (sd scale, CLIP)
        check = getattr(_component_class("generator", gen), "missing_files", None) if gen != NO_GENERATOR else None
        missing = check(components[("generator", gen)], f"generator_cfg.{gen}") if check else None
        if missing:
            raise ConfigError(missing)
    cells: list[CellConfig] = []
    skipped: list[str] = []
    seen: set[str] = set()
    for dataset in cfg.datasets:
        adapter = create_dataset(dataset, cfg.root_of(dataset), **components[("dataset", dataset)])
        cats = adapter.categories()
        wanted = cfg.categories_for(dataset)
        if wanted != "all":
            missing = [c for c in wanted if c not in cats]
            if missing:
                raise ConfigError(f"data set {dataset!r} has no categories {missing}; found: {', '.join(cats)}")
            cats = list(wanted)
        for cat in cats:  # e.g. LOCO without defects_config.json: found now, before any training
            note = check_ready(adapter, cat)
            if note:
                skipped.append(note)
        for det in cfg.detectors:
            gens = cfg.generators if _uses_pairs(det, components[("detector", det)]) else [NO_GENERATOR]
            if not adapter.has_masks:  # image-level data: mask-needing generators are refused
                refused = [g for g in gens
                           if g != NO_GENERATOR and getattr(get_generator_class(g), "needs_masks", False)]
                skipped.extend(f"{g} skipped on {dataset}: it needs pixel masks of real anomalies and "
                               f"{dataset} has image-level labels only" for g in refused)
                gens = [g for g in gens if g not in refused]
            for cat in cats:
                for gen in gens:
                    for seed in cfg.seeds:
                        c = cfg.cell(dataset, cat, gen, det, seed, components)
                        if c.hash() not in seen:
                            seen.add(c.hash())
                            cells.append(c)
    if not cells:
        raise ConfigError("the grid has no cell to run (every generator was skipped); see the lines above")
    if record_run:
        runs.check_and_record(cfg, components)
    good, rejected = store.scan(cfg.run_dir)  # bad records are moved aside here, and named below
    done = {r["hash"] for r in good if r["status"] == "ok"}
    todo = [c for c in cells if c.hash() not in done]
    return Plan(cells, todo, list(dict.fromkeys(skipped)), rejected)


def _progress(console: Console) -> Progress:
    return Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                    TimeElapsedColumn(), TextColumn("{task.fields[status]}"), console=console)


def _finished(prog: Progress, task: Any, label: str, **fields: Any) -> None:
    """Advance ``task`` by one finished item. rich's live bar draws nothing into a file or pipe
    until it stops (``make bench > log``, CI), so there each finished item also prints a line:
    a 17-minute run shows its progress in its log too."""
    prog.update(task, advance=1, **fields)
    if not prog.console.is_terminal:
        t = next(t for t in prog.tasks if t.id == task)
        prog.console.print(f"{t.description}: {int(t.completed)}/{int(t.total)} after "
                           f"{t.elapsed or 0:.0f} s, {label} done", highlight=False, soft_wrap=True)


def _pool_cell(cell: dict, cache_dir: str, run_dir: str, threads: int) -> dict | None:
    """One cell in a worker process: claim it, run it with ``threads`` torch threads, write its
    record (None: another process had recorded it meanwhile)."""
    import torch

    torch.set_num_threads(threads)
    c = CellConfig.from_dict(cell)
    with store.cell_lock(run_dir, c.hash()):
        if store.is_done(run_dir, c.hash()):
            return None
        rec = run_cell(c, cache_dir)
        store.write_record(run_dir, rec)
    return rec


def _generate_first(cells: list[CellConfig], cache_dir: str, console: Console) -> None:
    """Make every cell's generated set here, one after another with ``generate_threads`` torch
    threads, before the cells run in parallel (when a set has more threads than a cell, so that
    two sets at once would oversubscribe the cores); the cells then read their sets from the
    cache. A set that fails here is made (and its failure recorded) by its cell."""
    from .cell import generate_only

    todo = [c for c in cells if c.generator != NO_GENERATOR]
    with _progress(console) as prog:
        task = prog.add_task(f"generated sets ({todo[0].generate_threads if todo else 0} threads)",
                             total=len(todo), status="")
        for c in todo:
            label = f"{c.dataset}/{c.category} {c.generator} seed {c.seed}"

            def say(msg: str, label: str = label) -> None:
                prog.update(task, status=f"{label}: {msg}")

            say("")
            try:
                generate_only(c, cache_dir, progress=say)
            except Exception as e:  # the cell will fail the same way and record it
                console.print(f"[yellow]generating for {c.label} failed; the cell records it:[/yellow] {e}")
            _finished(prog, task, label)


def _pool_set(cell: dict, cache_dir: str) -> str | None:
    """One cell's generated set in a worker process, with the cell's ``generate_threads``
    (``generate_only``): None, or why it failed (the cell then makes the set itself and records
    the failure)."""
    from .cell import generate_only

    try:
        generate_only(CellConfig.from_dict(cell), cache_dir)
    except Exception as e:
        return f"{type(e).__name__}: {e}"
    return None


def _set_identity(c: CellConfig) -> str:
    """Cells with equal identity read one generated set (they differ only in the detector):
    the pool makes it once. Too fine a split would only queue a second task that waits on the
    set's lock and then reads it."""
    d = c.to_dict()
    for key in ("detector", "detector_cfg", "detector_seed", "quality", "eval_size", "threads", "device"):
        d.pop(key, None)
    return digest(d)


def run_pool(cfg: RunConfig, cells: list[CellConfig], console: Console, jobs: int) -> list[dict]:
    """``jobs`` cells at once, each in its own (spawned) process with ``cfg.threads`` torch threads
    (default: the CPUs shared out). Small convolutions use 2 threads poorly, so on 2 cores two
    1-thread cells finish sooner than two 2-thread cells in a row; a record is the same as a
    sequential run's with the same thread count. Records are written as soon as a cell ends.

    Generated sets (``generate_threads`` > 0) are tasks of their own, queued before every cell,
    and a cell is queued when its set is made. Why: DH-Diff's small U-Net uses 2 threads poorly
    too (one set on this 2-core box: 308 s with 1 thread, 227 s with 2, user CPU 306 s against
    417 s), so two 1-thread sets side by side, and cells beside the last set, keep both cores
    busy where one 2-thread set after another did not. A set with more threads than a cell
    (``generate_threads`` > ``threads``) is made here instead, one after another, before the
    cells (``_generate_first``): two of them at once would oversubscribe the cores."""
    threads = cfg.threads or max(1, (os.cpu_count() or 1) // jobs)
    for ds in dict.fromkeys(c.dataset for c in cells):   # build data trees once, before workers race
        adapter = create_dataset(ds, cfg.root_of(ds), **cfg.dataset_cfg.get(ds, {}))
        if hasattr(adapter, "ensure"):
            adapter.ensure(sorted({c.category for c in cells if c.dataset == ds}))
    sets_in_pool = 0 < cfg.generate_threads <= threads
    if cfg.generate_threads and not sets_in_pool:
        _generate_first(cells, cfg.cache_dir, console)
    # set identity -> the cells waiting for it; cells without a set (or with sets made already) wait for nothing
    waiting: dict[str, list[CellConfig]] = {}
    ready: list[CellConfig] = []
    for c in cells:
        if sets_in_pool and c.generator != NO_GENERATOR:
            waiting.setdefault(_set_identity(c), []).append(c)
        else:
            ready.append(c)
    out = []
    pool = ProcessPoolExecutor(jobs, mp_context=mp.get_context("spawn"))
    try:
        with _progress(console) as prog:
            set_task = (prog.add_task(f"generated sets ({cfg.generate_threads} thread"
                                      f"{'s' if cfg.generate_threads > 1 else ''} each)", total=len(waiting),
                                      status="") if waiting else None)
            task = prog.add_task(f"cells ({jobs} processes)", total=len(cells), status="")
            futs: dict = {}   # future -> ("set", identity, first cell) | ("cell", cell)

            def running() -> str:
                names = [f"set {v[2].dataset}/{v[2].category} {v[2].generator} seed {v[2].seed}" if v[0] == "set"
                         else v[1].label for f, v in futs.items() if f.running()]
                return "running: " + "; ".join(names[:jobs])

            def died(c: CellConfig, e: BaseException) -> None:
                """The worker process itself died (or took the pool with it): record it like any failure."""
                rec = {"hash": c.hash(), "config": c.to_dict(), "status": "failed",
                       "error": f"{type(e).__name__}: {e}", "traceback": repr(e)}
                store.write_record(cfg.run_dir, rec)
                _report_failure(console, rec)
                out.append(rec)
                _finished(prog, task, c.label, status=running())

            def submit_cell(c: CellConfig) -> None:
                try:
                    futs[pool.submit(_pool_cell, c.to_dict(), cfg.cache_dir, str(cfg.run_dir), threads)] = ("cell", c)
                except BrokenProcessPool as e:   # a set's worker died and broke the pool: its cells cannot run
                    died(c, e)

            for ident, group in waiting.items():   # sets first: the cells wait for them
                futs[pool.submit(_pool_set, group[0].to_dict(), cfg.cache_dir)] = ("set", ident, group[0])
            for c in ready:
                submit_cell(c)

            prog.update(task, status=running())
            while futs:
                done, _ = wait(list(futs), return_when=FIRST_COMPLETED)
                for f in done:
                    kind, *rest = futs.pop(f)
                    if kind == "set":
                        ident, c = rest
                        try:
                            err = f.result()
                        except Exception as e:   # the worker process died
                            err = f"{type(e).__name__}: {e}"
                        if err:
                            console.print(f"[yellow]generating for {c.label} failed; the cell records it:[/yellow] {err}")
                        for cell in waiting[ident]:
                            submit_cell(cell)
                        _finished(prog, set_task, f"{c.dataset}/{c.category} {c.generator} seed {c.seed}",
                                  status=running())
                        continue
                    c = rest[0]
                    try:
                        rec = f.result()
                    except Exception as e:
                        died(c, e)
                        continue
                    if rec is not None:
                        _report_failure(console, rec)
                        out.append(rec)
                    _finished(prog, task, c.label, status=running())
    except BaseException:  # Ctrl-C (or a failure here): stop now, keep what is recorded
        stop_pool(pool)
        raise
    pool.shutdown()
    return out


def stop_pool(pool: ProcessPoolExecutor) -> None:
    """Drop the queued cells and end the running ones now. ``shutdown`` alone waits for every
    running cell (minutes each; a Ctrl-C on a `--jobs 2` run waited on two SuperSimpleNet cells
    for over 20 minutes), and the interpreter's exit joins the workers again. Their records are
    not written, their cell locks go with the processes, and a rerun computes those cells."""
    procs = list((getattr(pool, "_processes", None) or {}).values())  # no public handle on workers
    pool.shutdown(wait=False, cancel_futures=True)
    for p in procs:
        p.kill()
    for p in procs:
        p.join(timeout=10)


def run_local(cfg: RunConfig, cells: list[CellConfig], console: Console) -> list[dict]:
    """Cells one after another (or ``cfg.jobs`` at once, see ``run_pool``). Each cell is claimed
    with a lock first: a second process on the same run folder waits for it and then reads its
    record instead of computing it again."""
    if cfg.jobs > 1 and len(cells) > 1:
        return run_pool(cfg, cells, console, min(cfg.jobs, len(cells)))
    out = []
    with _progress(console) as prog:
        task = prog.add_task("cells", total=len(cells), status="")
        for c in cells:
            prog.update(task, status=c.label)

            def say(msg: str, label: str = c.label) -> None:
                prog.update(task, status=f"{label}: {msg}")

            with store.cell_lock(cfg.run_dir, c.hash(), on_wait=lambda: say("waiting for another process computing it")):
                if store.is_done(cfg.run_dir, c.hash()):  # done by another process meanwhile
                    _finished(prog, task, f"{c.label} (by another process)")
                    continue
                rec = run_cell(c, cfg.cache_dir, progress=say)
                store.write_record(cfg.run_dir, rec)
            _report_failure(console, rec)
            out.append(rec)
            _finished(prog, task, c.label)
    return out


def _check_ray_address(address: str, timeout: float) -> None:
    """Ray's own connect retries for minutes on a dead address; fail within seconds instead."""
    import socket

    target = address.split("://", 1)[-1]
    if target == "auto":
        return
    host, _, port = target.rpartition(":")
    if not host or not port.isdigit():
        raise ConfigError(f"ray.address {address!r}: expected host:port (or ray://host:port)")
    try:
        socket.create_connection((host, int(port)), timeout=timeout).close()
    except OSError as e:
        raise ConfigError(f"ray.address {address!r}: cannot connect ({e.strerror or e}; waited at most "
                          f"{timeout:g} s); is the Ray head running?") from None


def run_ray(cfg: RunConfig, cells: list[CellConfig], console: Console) -> list[dict]:
    """One Ray task per cell; each record is written as soon as its task ends."""
    import ray

    opts = cfg.ray
    if not ray.is_initialized():
        addr = opts.address
        if addr:
            _check_ray_address(addr, opts.connect_timeout_s)
        init_kw = {"address": addr} if addr else {"num_cpus": opts.local_num_cpus or os.cpu_count()}
        ray.init(ignore_reinit_error=True, include_dashboard=False, log_to_driver=False,
                 runtime_env={"env_vars": {"HF_HUB_OFFLINE": os.environ.get("HF_HUB_OFFLINE", "1")}},
                 **init_kw)
    remote = ray.remote(num_cpus=opts.num_cpus, num_gpus=opts.num_gpus, max_retries=0)(_ray_cell)
    threads = cfg.threads or max(1, int(opts.num_cpus))
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
            _finished(prog, task, c.label, status=c.label)
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
    for path, why in p.rejected:
        console.print(f"[yellow]bad record moved aside, its cell runs again:[/yellow] {path}: {why}")
    console.print(f"run [bold]{cfg.run}[/bold]: {len(p.cells)} cells, {len(p.cells) - len(p.todo)} already "
                  f"recorded, {len(p.todo)} to run ({cfg.executor} executor"
                  f"{f', {cfg.jobs} jobs' if cfg.executor == 'local' and cfg.jobs > 1 else ''})")
    if not p.todo:
        return p, []
    runner = run_ray if cfg.executor == "ray" else run_local
    return p, runner(cfg, p.todo, console)
