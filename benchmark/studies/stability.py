"""Stability study (issue 9): is one cell of the quick preset a measurement or a dice roll?

Runs categories x {cutpaste, crop_paste} x seeds 0-4 of the quick preset through the normal
runner (run name ``stability``) and prints, per category and generator, the mean and the std over
seeds of image and pixel AUROC with PASS/FAIL against the limits (std <= 2 points image AUROC,
<= 3 points pixel AUROC). Why a study and not a unit test: the limits are about the spread of a
whole training recipe over seeds, which takes minutes of CPU per cell; the table is what the
README quotes and what a recipe change must not break.

Records already in the run folder are read, not rerun (the runner's resume), so ``--jobs 0``
only prints the table. ``--jobs N`` runs the missing cells in N worker processes, each with one
torch thread, so a 16-core machine does the 50 cells in minutes; every worker writes its own
record through ``benchmark.store.write_record`` as soon as its cell ends.

    python -m benchmark.studies.stability --jobs 2 --categories granite,wood --generators cutpaste

Where the spread comes from (``--vary``): ``all`` (default) changes the seed of everything; ``detector``
keeps the split and the pairs of the first seed and changes only the detector's seed (weight init,
batch order, crops); ``data`` changes the split and the pairs and keeps the first seed's detector
seed; ``pairs`` keeps the first seed's split and detector seed and changes only the generated
pairs (the generator's fit and sampling seeds). A spread that stays under ``--vary data`` cannot
be removed by a detector recipe; one that stays under ``--vary pairs`` is the generator's own.
These runs are stored as ``<run>-detector`` / ``<run>-data`` / ``<run>-pairs`` (cells carry
``detector_seed``, and ``split_seed`` for ``pairs``); their seed-0 cells are the ``all`` run's,
whose records are copied from ``<run>`` when it has them.
"""
from __future__ import annotations

import argparse
import dataclasses
import sys
from pathlib import Path

import numpy as np
from rich.console import Console

from benchmark import store
from benchmark.config import CellConfig, ConfigError, RunConfig, build_config
from benchmark.runner import execute, plan, run_pool

GENERATORS = ("cutpaste", "crop_paste")
SEEDS = (0, 1, 2, 3, 4)
LIMITS = {"image_auroc": 2.0, "pixel_auroc": 3.0}   # max std over seeds, AUROC points (issue 9)
VARY = ("all", "detector", "data", "pairs")


def study_cells(cells: list[CellConfig], vary: str, seeds: list[int]) -> list[tuple[int, CellConfig]]:
    """(varied seed, cell) for each planned cell. ``detector``: split and pairs from seeds[0], the
    detector from the cell's seed; ``data``: split and pairs from the cell's seed, the detector from
    seeds[0]; ``pairs``: only the generated pairs from the cell's seed, split and detector from
    seeds[0]. The seeds[0] cell is the ordinary one in every mode (same hash as in the ``all`` run;
    `reuse_base_records` takes its record from there)."""
    if vary not in VARY:
        raise ConfigError(f"--vary: expected one of {', '.join(VARY)}, got {vary!r}")
    base = seeds[0]
    out = []
    for c in cells:
        if vary == "all" or c.seed == base:
            out.append((c.seed, c))
        elif vary == "detector":
            out.append((c.seed, dataclasses.replace(c, seed=base, detector_seed=c.seed)))
        elif vary == "data":
            out.append((c.seed, dataclasses.replace(c, detector_seed=base)))
        else:
            out.append((c.seed, dataclasses.replace(c, split_seed=base, detector_seed=base)))
    return out


def study_config(categories: str | None = None, generators: str | None = None, seeds: str | None = None,
                 results_dir: str | None = None, device: str | None = None, run: str = "stability",
                 sets: list[str] | None = None) -> RunConfig:
    """The quick preset with the study's grid; one torch thread per cell (recorded, not hashed)."""
    over = {"generators": generators or ",".join(GENERATORS), "seeds": seeds or ",".join(map(str, SEEDS)),
            "categories": categories or "all", "results_dir": results_dir, "device": device, "run": run,
            "threads": 1}
    return build_config("quick", overrides=over, sets=sets)


def reuse_base_records(cfg: RunConfig, base_run: str, cells: list[CellConfig]) -> int:
    """Copy into ``cfg``'s run the ok records of ``base_run`` (the ``all`` run) that ``cells``
    would compute again: a ``--vary`` run's seeds[0] cells are ordinary cells with the same hash.
    Only records made with the cell's thread count and device (records depend on both; neither is
    hashed). Returns how many were copied."""
    want = {c.hash(): c for c in cells}
    n = 0
    for rec in store.load_records(Path(cfg.results_dir) / base_run):
        c = want.get(rec["hash"])
        if (c is None or rec["status"] != "ok" or rec["config"].get("threads") != c.threads
                or rec["config"].get("device") != c.device or store.is_done(cfg.run_dir, c.hash())):
            continue
        store.write_record(cfg.run_dir, rec)
        n += 1
    return n


def run_study(cfg: RunConfig, jobs: int = 1, vary: str = "all", base_run: str | None = None) -> None:
    """Run the missing cells: jobs == 1 through ``runner.execute``, jobs > 1 (or any ``vary`` other
    than ``all``, whose cells the runner does not plan) in a process pool. With ``base_run``, a
    ``vary`` run first takes its seeds[0] records from that run (`reuse_base_records`)."""
    if jobs <= 0:
        return
    if jobs == 1 and vary == "all":
        execute(cfg)
        return
    p = plan(cfg)
    if base_run and vary != "all":
        n = reuse_base_records(cfg, base_run, [c for _, c in study_cells(p.cells, vary, cfg.seeds)])
        if n:
            print(f"run {cfg.run}: took {n} seed-{cfg.seeds[0]} record(s) from run {base_run} (same cells)", file=sys.stderr)
    done = {r.get("hash") for r in store.load_records(cfg.run_dir) if r.get("status") == "ok"}
    todo = [c for _, c in study_cells(p.cells, vary, cfg.seeds) if c.hash() not in done]
    print(f"run {cfg.run}: {len(p.cells)} cells, {len(todo)} to run in {jobs} processes", file=sys.stderr)
    if todo:
        run_pool(cfg, todo, Console(stderr=True), jobs)


def table(cfg: RunConfig, vary: str = "all") -> tuple[list[dict], bool]:
    """Rows (category, generator, n, mean/std per metric, pass) from the records of this grid."""
    p = plan(cfg)
    want = {c.hash(): (s, c) for s, c in study_cells(p.cells, vary, cfg.seeds)}
    groups: dict[tuple[str, str], dict[int, dict]] = {}
    for rec in store.load_records(cfg.run_dir):
        s, c = want.get(rec.get("hash"), (None, None))
        if c is None or rec.get("status") != "ok":
            continue
        groups.setdefault((c.category, c.generator), {})[s] = rec
    rows = []
    cats = list(dict.fromkeys(c.category for c in p.cells))
    for cat in cats:
        for gen in cfg.generators:
            by_seed = groups.get((cat, gen), {})
            recs = [by_seed[s] for s in sorted(by_seed)]   # seed order: `--values` lists seeds 0, 1, ...
            rows.append({"category": cat, "generator": gen, **summarise(recs, len(cfg.seeds))})
    return rows, all(r["pass"] for r in rows)


def summarise(recs: list[dict], n_seeds: int) -> dict:
    """Mean and sample std (ddof=1) over seeds of each limited metric, in AUROC points; PASS needs
    every seed's record and every std within its limit."""
    row = {"n": len(recs), "seconds": float(np.mean([r["timings"]["total"] for r in recs])) if recs else float("nan")}
    ok = len(recs) == n_seeds
    for m, lim in LIMITS.items():
        v = np.array([100 * r["metrics"][m] for r in recs if r["metrics"].get(m) is not None])
        row[m] = v.mean() if len(v) else float("nan")
        row[m + "_std"] = v.std(ddof=1) if len(v) > 1 else float("nan")
        row[m + "_all"] = v.round(1).tolist()
        ok = ok and len(v) > 1 and row[m + "_std"] <= lim
    row["pass"] = bool(ok)
    return row


def format_table(rows: list[dict], n_seeds: int) -> str:
    head = (f"| category | generator | seeds | image AUROC mean ± std (≤{LIMITS['image_auroc']:g}) | "
            f"pixel AUROC mean ± std (≤{LIMITS['pixel_auroc']:g}) | s/cell | verdict |")
    lines = [head, "|" + "---|" * 7]
    for r in rows:
        if n_seeds < 2:   # a std needs two seeds: one seed's values are shown, never judged
            verdict = "no std (1 seed)"
        else:
            verdict = "PASS" if r["pass"] else ("FAIL" if r["n"] == n_seeds else f"incomplete ({r['n']}/{n_seeds})")
        img, pix = (f"{r[m]:.1f}" + ("" if np.isnan(r[m + "_std"]) else f" ± {r[m + '_std']:.1f}")
                    for m in ("image_auroc", "pixel_auroc"))
        lines.append(f"| {r['category']} | {r['generator']} | {r['n']} | {img} | {pix} | {r['seconds']:.0f} | {verdict} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m benchmark.studies.stability", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--categories", help="comma-separated (default: the preset's)")
    ap.add_argument("--generators", help=f"comma-separated (default: {','.join(GENERATORS)})")
    ap.add_argument("--seeds", help=f"comma-separated (default: {','.join(map(str, SEEDS))})")
    ap.add_argument("--jobs", type=int, default=1, help="worker processes, one torch thread each (0: only print)")
    ap.add_argument("--results-dir", help="where runs are stored (default results/runs)")
    ap.add_argument("--device", help="cpu, cuda, ...")
    ap.add_argument("--run", default="stability", help="run name (default stability)")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                    help="config override, e.g. detector_cfg.unet.steps=300")
    ap.add_argument("--values", action="store_true", help="also print each seed's values")
    ap.add_argument("--vary", default="all", choices=VARY,
                    help="which randomness the seeds change: all, only the detector's, only the data's "
                         "(split and pairs), only the generated pairs'")
    a = ap.parse_args(argv)
    if a.jobs < 0:
        ap.error(f"--jobs must be >= 0, got {a.jobs}")
    try:
        run = a.run if a.vary == "all" else f"{a.run}-{a.vary}"
        cfg = study_config(a.categories, a.generators, a.seeds, a.results_dir, a.device, run, a.set)
        run_study(cfg, a.jobs, a.vary, a.run)
        rows, ok = table(cfg, a.vary)
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    what = {"all": "everything", "detector": f"only the detector (split and pairs of seed {cfg.seeds[0]})",
            "data": f"only the split and pairs (detector seed {cfg.seeds[0]})",
            "pairs": f"only the generated pairs (split and detector seed {cfg.seeds[0]})"}[a.vary]
    changed = f", with {'; '.join(a.set)}" if a.set else ""   # a recipe under study is said, not implied
    print(f"Stability of the quick preset{changed} over seeds {','.join(map(str, cfg.seeds))}, varying {what} "
          f"(std = sample std over seeds, AUROC points; one torch thread per cell)")
    print(format_table(rows, len(cfg.seeds)))
    if a.values:
        for r in rows:
            print(f"{r['category']}/{r['generator']}: image {r['image_auroc_all']} pixel {r['pixel_auroc_all']}")
    print("NO VERDICT (one seed: a std needs two)" if len(cfg.seeds) < 2 else "ALL PASS" if ok else "NOT ALL PASS")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
