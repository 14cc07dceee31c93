"""Paper-shaped tables from the stored records, every number with how sure it is.

Rows are categories plus an average row, columns are methods (generator, or generator / detector
when several detectors ran), cells "(image, pixel)" in % as in the DH-Diff paper's Table II, each
value "mean ±h". Why this shape and these rules (issue 9, docs/evaluation.md "Evidence"):
- ±h is the half-width of a 95% interval: over seeds a Student t-interval when >= 2 seeds ran;
  with one seed the stratified per-image bootstrap of the record's stored scores. The title says
  which. No interval (one seed and a metric that cannot be resampled, e.g. AUPRO): no ±.
- ONE aggregation (`aggregate`) and ONE formatter (`format_stat`) make every cell, the average
  row and the bar charts' error bars, so a figure can never disagree with its table.
- A failed cell shows ``failed`` (or "(k failed)" beside the surviving seeds), never a gap.
- The average row covers only categories where every column has a value; otherwise it says
  "average (n/m categories)" and is marked, because an average over different category sets is
  not comparable across columns.
- Cells of different configs are never pooled: columns are (method, rest of config); two records
  with different configs for one (category, method, seed) are refused, naming both files.
"""
from __future__ import annotations

import json
import math
import zlib
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from . import stats
from .compare import check_unique, method_name, metric_value, sample_of

KINDS: dict[str, tuple[str, ...]] = {
    "auroc": ("image_auroc", "pixel_auroc"),
    "ap": ("image_ap", "pixel_ap"),
    "f1max": ("image_f1max", "pixel_f1max"),
    "aupro": ("pixel_aupro",),
    "spro": ("pixel_spro@0.05",),
}
PAIRS = {k: v for k, v in KINDS.items() if len(v) == 2}
LABELS = {"image_auroc": "image AUROC", "pixel_auroc": "pixel AUROC", "image_ap": "image AP",
          "pixel_ap": "pixel AP", "image_f1max": "image F1-max", "pixel_f1max": "pixel F1-max",
          "pixel_aupro": "pixel AUPRO (exact, trapezoid to FPR 0.3, normalised)",
          "pixel_spro@0.05": "AU-sPRO at FPR 0.05 (MVTec LOCO)"}
N_BOOT, BOOT_SEED, LEVEL = 1000, 0, 0.95
AVERAGE = "average"
PARTIAL_MARK = "†"
# Config fields that do not make two records different columns: the grid's own axes, and the
# execution fields the cell hash leaves out (benchmark.config.CellConfig.hash). A field that is
# null or absent (a record written before the field existed) is the same setting.
_NOT_COLUMN = {"category", "seed", "device", "threads", "generate_threads"}


@dataclass(frozen=True)
class Stat:
    """A metric over the seeds (and categories) of one column: mean and interval bounds (NaN when
    none), how many records succeeded / failed, and which interval: "t", "bootstrap" or "none".
    ``n_undefined``: successful seeds whose value is undefined (NaN), left out of the mean."""

    mean: float
    lo: float
    hi: float
    n_ok: int
    n_failed: int
    interval: str
    n_undefined: int = 0

    @property
    def complete(self) -> bool:
        """Counts toward an average row: no failed seed and a finite value for every seed."""
        return self.n_failed == 0 and self.n_undefined == 0 and self.n_ok > 0 and bool(np.isfinite(self.mean))


class BootCache(dict):
    """(record hash, metric, n_boot, seed) -> (estimate, bootstrap distribution) of one record,
    shared by every table, average row and bar chart of one report, so each is drawn once."""


def boot_rng(record: dict, seed: int = BOOT_SEED) -> np.random.Generator:
    """The bootstrap draws of one (dataset, category, seed) cell row: seeded by those, not by the
    method, so every column of a row resamples the same images (their intervals move together),
    while different categories draw independently (what an average over them needs)."""
    c = record["config"]
    key = f"{c['dataset']}/{c['category']}/{c['seed']}".encode()
    return np.random.default_rng([seed, zlib.crc32(key)])


def record_distribution(r: dict, metric: str, n_boot: int = N_BOOT, seed: int = BOOT_SEED,
                        cache: dict | None = None) -> tuple[float, np.ndarray] | None:
    key = (r.get("hash"), metric, n_boot, seed)
    if cache is None or key not in cache:
        s = sample_of(r, metric)
        value = None if s is None else stats.bootstrap_distribution(s, metric, n_boot, boot_rng(r, seed))
        if cache is None:
            return value
        cache[key] = value
    return cache[key]


def aggregate(records: list[dict], metric: str, n_boot: int = N_BOOT, seed: int = BOOT_SEED,
              level: float = LEVEL, cache: dict | None = None) -> Stat | None:
    """The one seed aggregation: records of one column over one or several categories -> Stat.

    Per seed the value is the mean over the records' categories. >= 2 seeds: t-interval of those
    per-seed values. One seed: stratified bootstrap over evaluation images, each category resampled
    independently (`boot_rng`) and averaged, i.e. the bootstrap of the mean over categories; a pixel
    interval comes from the seeded pixel subsample and is shifted onto the exact recorded value.
    None when there are no records."""
    if not records:
        return None
    ok = [r for r in records if r.get("status") == "ok"]
    n_failed = len(records) - len(ok)
    if not ok:
        return Stat(math.nan, math.nan, math.nan, 0, n_failed, "none")
    by_seed: dict = {}
    for r in ok:
        by_seed.setdefault(r["config"]["seed"], []).append(r)
    per_seed = np.array([np.mean([metric_value(r, metric) for r in rs]) for rs in by_seed.values()])
    if len(by_seed) >= 2:
        m, lo, hi = stats.t_interval(per_seed, level)
        undefined = int((~np.isfinite(per_seed)).sum())
        return Stat(m, lo, hi, len(ok), n_failed, "t" if np.isfinite(lo) else "none", undefined)
    mean = float(per_seed[0])
    dists = [record_distribution(r, metric, n_boot, seed, cache) for r in ok] if np.isfinite(mean) else [None]
    if any(d is None for d in dists):
        return Stat(mean, math.nan, math.nan, len(ok), n_failed, "none")
    est = float(np.mean([e for e, _ in dists]))
    lo, hi = stats.percentile_interval(np.mean([d for _, d in dists], axis=0), level, f"bootstrap of {metric}")
    shift = mean - est  # 0 for image metrics (sample_of checked it); pixel subsample -> exact value
    return Stat(mean, lo + shift, hi + shift, len(ok), n_failed, "bootstrap")


def format_stat(st: Stat | None, digits: int = 1) -> str:
    """The one cell formatter: "85.2 ±1.9" in %, "failed", "– " (not run) or "n/a" (undefined)."""
    if st is None:
        return "–"
    if st.n_ok == 0:
        return "failed"
    s = "n/a" if not np.isfinite(st.mean) else f"{100 * st.mean:.{digits}f}"
    if np.isfinite(st.lo) and np.isfinite(st.hi):
        s += f" ±{100 * (st.hi - st.lo) / 2:.{digits}f}"
    if st.n_failed:
        s += f" ({st.n_failed} failed)"
    if st.n_undefined and np.isfinite(st.mean):
        s += f" ({st.n_undefined} n/a)"
    return s


def format_cell(sts: list[Stat | None]) -> str:
    """One table cell: a single value, or "(image, pixel)"; a cell whose every seed failed is one
    word, "failed"."""
    if any(s is not None for s in sts) and all(s is None or s.n_ok == 0 for s in sts):
        return "failed"
    return format_stat(sts[0]) if len(sts) == 1 else "(" + ", ".join(format_stat(s) for s in sts) + ")"


# --------------------------------------------------------------------------- columns
@dataclass
class Columns:
    """A data set's records split into table columns: label -> records, plus notes for the footer."""

    records: dict[str, list[dict]] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)


def columns(records: list[dict], dataset: str) -> Columns:
    rs = [r for r in records if r["config"]["dataset"] == dataset]
    check_unique(rs, ("category", "generator", "detector", "seed"))
    several = len({r["config"]["detector"] for r in rs}) > 1
    groups: dict[tuple, list[dict]] = {}
    for r in rs:
        c = r["config"]
        rest = json.dumps({k: v for k, v in c.items() if k not in _NOT_COLUMN and v is not None},
                          sort_keys=True, default=str)
        groups.setdefault((c["generator"], c["detector"], rest), []).append(r)
    out = Columns()
    variants: dict[tuple, list[tuple]] = {}
    for key in groups:
        variants.setdefault(key[:2], []).append(key)
    # detectors side by side, each with its unsupervised column first (generation.NO_GENERATOR,
    # "none" as in compare.method_name; not imported: that module pulls in the generators), so that
    # a table's columns do not follow the order in which record files happen to be read
    for (g, d), keys in sorted(variants.items(), key=lambda kv: (kv[0][1], kv[0][0] != "none", kv[0][0])):
        name = method_name(g, d, several)
        if len(keys) == 1:
            out.records[name] = groups[keys[0]]
            continue
        cfgs = [json.loads(k[2]) for k in keys]
        diff = sorted(f for f in set().union(*cfgs) if len({json.dumps(c.get(f), sort_keys=True, default=str)
                                                               for c in cfgs}) > 1)
        for i, k in enumerate(keys, 1):
            label = f"{name} [config {i}]"
            out.records[label] = groups[k]
            shown = {f: json.loads(k[2]).get(f) for f in diff}
            out.notes.append(f"{label}: {json.dumps(shown, sort_keys=True, default=str)} "
                             f"(different configs, kept apart)")
    return out


# --------------------------------------------------------------------------- tables
@dataclass
class Table:
    name: str
    title: str
    frame: pd.DataFrame                     # strings, categories (+ average) x columns
    stats: dict[tuple[str, str, str], Stat]  # (row, column, metric) -> Stat
    eligible: list[str]
    categories: list[str]
    notes: list[str]

    def markdown(self) -> str:
        foot = "".join(f"\n{n}\n" for n in self.notes)  # one paragraph per note
        return f"### {self.title}\n\n" + self.frame.to_markdown() + "\n" + foot


def _present(records: list[dict], metric: str) -> bool:
    return any(r.get("status") == "ok" and (r.get("metrics") or {}).get(metric) is not None for r in records)


def average_stats(cols: Columns, categories: list[str], metrics: tuple[str, ...],
                  cell: dict[tuple[str, str, str], Stat | None],
                  cache: dict | None = None) -> tuple[list[str], dict[tuple[str, str], Stat | None]]:
    """Categories where every column has a complete value for every metric, and each column's
    aggregate over exactly those categories."""
    eligible = [c for c in categories if all(cell.get((c, col, m)) is not None and cell[(c, col, m)].complete
                                             for col in cols.records for m in metrics)]
    avg = {}
    for col, rs in cols.records.items():
        sel = [r for r in rs if r["config"]["category"] in set(eligible)]
        for m in metrics:
            avg[(col, m)] = aggregate(sel, m, cache=cache) if sel else None
    return eligible, avg


def _cell_stats(cols: Columns, categories: list[str], metrics: tuple[str, ...], cache: dict | None = None) -> dict:
    cell = {}
    for col, rs in cols.records.items():
        for c in categories:
            sel = [r for r in rs if r["config"]["category"] == c]
            for m in metrics:
                cell[(c, col, m)] = aggregate(sel, m, cache=cache)
    return cell


def _recipe(records: list[dict]) -> str:
    by: dict[str, set] = {}
    for r in records:
        c = r["config"]
        cfg = c.get("detector_cfg") or {}
        by.setdefault(c["detector"], set()).add(", ".join(f"{k}={v}" for k, v in sorted(cfg.items())) or "defaults")
    return "; ".join(f"{d}: {' | '.join(sorted(v))}" for d, v in sorted(by.items()))


def diffusion_budget(records: list[dict]) -> str:
    """What the diffusion generators of a table started from and spent (issue 13: the header says
    whether they share one prior and one budget). A diffusion generator is one whose resolved
    config has optimiser ``steps`` and ``ddim_steps`` (DH-Diff, its ablations, the baselines).
    Groups of generators with the same (start, steps, sampling steps), ``|``-separated; "" with
    no diffusion generator."""
    groups: dict[str, set] = {}
    for r in records:
        c = r["config"]
        g = c.get("generator_cfg") or {}
        if "ddim_steps" not in g or "steps" not in g:
            continue
        if g.get("scale") == "sd":
            start = f"checkpoint {g.get('sd_path')}"
        elif isinstance(g.get("prior"), dict):
            start = f"one tiny prior ({g['prior'].get('steps')} pretraining steps)"
        else:
            start = "from scratch"
        groups.setdefault(f"{start}, {g['steps']} optimiser + {g['ddim_steps']} sampling steps", set()).add(c["generator"])
    if not groups:
        return ""
    parts = [f"{', '.join(sorted(gens))}: {key}" for key, gens in sorted(groups.items())]
    head = "diffusion generators, same start and budget: " if len(groups) == 1 and \
        len(next(iter(groups.values()))) > 1 else "diffusion generators: "
    return head + " | ".join(parts)


def execution_note(cols: Columns) -> str:
    """Where the columns' cells ran, when that differs between cells: device and torch version are
    execution fields, left out of the cell hash (a CUDA cell and a CPU cell of one config are the
    same cell), but their numbers differ in the last digits or more, so a table that mixes them
    says which column ran where; a column whose own seeds mix them is named as mixed. "" when
    every cell ran on the same device with the same torch."""
    def where(r: dict) -> str:
        return f"{r['config'].get('device') or 'cpu'}, torch {(r.get('versions') or {}).get('torch', '?')}"

    by_col = {col: sorted({where(r) for r in rs}) for col, rs in cols.records.items() if rs}
    settings = {w for ws in by_col.values() for w in ws}
    if len(settings) < 2:
        return ""
    groups: dict[str, list[str]] = {}
    for col, ws in by_col.items():
        groups.setdefault(ws[0] if len(ws) == 1 else "mixed (" + " / ".join(ws) + ")", []).append(col)
    return "cells ran on different devices or torch versions: " + " | ".join(
        f"{w}: {', '.join(cs)}" for w, cs in sorted(groups.items()))


def _joined(values) -> str:
    return "/".join(str(v) for v in sorted(set(values), key=str))


def interval_note(kinds: set[str], level: float = LEVEL) -> str:
    parts = []
    if "t" in kinds:
        parts.append(f"± = half-width of the {100 * level:g}% t-interval over seeds")
    if "bootstrap" in kinds:
        parts.append(f"± = half-width of the {100 * level:g}% stratified per-image bootstrap percentile "
                     f"interval (one seed; {N_BOOT} resamples, seed {BOOT_SEED}; good and anomalous images "
                     f"resampled separately, categories independently; pixel metrics: images resampled with their stored pixel "
                     f"subsample, interval shifted onto the exact value)")
    if "none" in kinds:
        parts.append("no ± where no interval exists")
    return "; ".join(parts) or "no intervals"


def build_table(records: list[dict], dataset: str, kind: str, run: str = "",
                cache: dict | None = None) -> Table | None:
    """One metric kind's table for one data set; None when no record of it has these metrics."""
    metrics_all = KINDS[kind]
    ds = [r for r in records if r["config"]["dataset"] == dataset]
    present = tuple(m for m in metrics_all if _present(ds, m))
    if not present:
        return None
    cols = columns(records, dataset)
    categories = sorted({r["config"]["category"] for r in ds})
    cache = BootCache() if cache is None else cache
    cell = _cell_stats(cols, categories, metrics_all, cache)
    eligible, avg = average_stats(cols, categories, present, cell, cache)
    partial = len(eligible) < len(categories)
    avg_label = AVERAGE if not partial else f"{AVERAGE} ({len(eligible)}/{len(categories)} categories){PARTIAL_MARK}"
    frame = pd.DataFrame(index=categories + [avg_label], columns=list(cols.records), dtype=object)
    table_stats: dict = {}
    for col in cols.records:
        for c in categories:
            frame.at[c, col] = format_cell([cell[(c, col, m)] if m in present else None for m in metrics_all])
            table_stats.update({(c, col, m): cell[(c, col, m)] for m in metrics_all if cell[(c, col, m)]})
        frame.at[avg_label, col] = format_cell([avg.get((col, m)) if m in present else None for m in metrics_all])
        table_stats.update({(AVERAGE, col, m): avg[(col, m)] for m in present if avg.get((col, m))})
    frame.index.name = "category"
    seeds = sorted({r["config"]["seed"] for r in ds})
    kinds = {s.interval for s in table_stats.values() if s.n_ok}
    what = ("(" + ", ".join(LABELS[m] for m in metrics_all) + ")" if len(metrics_all) == 2
            else LABELS[metrics_all[0]])
    run_part = f" — run {run}" if run else ""
    title = (f"{dataset}: {what} in %{run_part}; image {_joined(r['config']['image_size'] for r in ds)} px, "
             f"eval {_joined(r['config']['eval_size'] for r in ds)} px; detector {_recipe(ds)}; "
             f"{len(seeds)} seed{'s' if len(seeds) != 1 else ''} ({', '.join(map(str, seeds))}); "
             f"{interval_note(kinds)}; pixel metrics exact (not binned)")
    budget = diffusion_budget(ds)
    if budget:
        title += f"; {budget}"
    notes = list(cols.notes)
    if partial:
        left = [c for c in categories if c not in eligible]
        notes.insert(0, f"{PARTIAL_MARK} average over the {len(eligible)} of {len(categories)} categories where "
                        f"every column has a value (left out: {', '.join(left)})")
    ran = execution_note(cols)
    if ran:
        notes.append(ran)
    if any(s.n_failed for s in table_stats.values()):
        notes.append("failed: every seed of that cell failed; (k failed): k seeds failed, the value is over the "
                     "rest; errors are in the records")
    if any(s.n_undefined for s in table_stats.values()):
        notes.append("(k n/a): the metric is undefined for k seeds (e.g. one class); the value is over the rest")
    return Table(f"{dataset}_{kind}", title, frame, table_stats, eligible, categories, notes)


def stats_frame(t: Table) -> pd.DataFrame:
    """The numbers behind a table, long form (for CSV)."""
    rows = [{"category": k[0], "column": k[1], "metric": k[2], "mean": s.mean, "lo": s.lo, "hi": s.hi,
             "n_ok": s.n_ok, "n_failed": s.n_failed, "interval": s.interval} for k, s in t.stats.items()]
    return pd.DataFrame(rows)


def write_tables(records: list[dict], out_dir: str | Path, run: str = "",
                 cache: dict | None = None) -> dict[str, Table]:
    """Markdown, CSV (cells and their numbers) and LaTeX per data set and metric kind."""
    cache = BootCache() if cache is None else cache
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    out: dict[str, Table] = {}
    for dataset in sorted({r["config"]["dataset"] for r in records}):
        for kind in KINDS:
            t = build_table(records, dataset, kind, run, cache)
            if t is None:
                continue
            (out_dir / f"{t.name}.md").write_text(t.markdown())
            t.frame.to_csv(out_dir / f"{t.name}.csv")
            stats_frame(t).to_csv(out_dir / f"{t.name}_numbers.csv", index=False)
            (out_dir / f"{t.name}.tex").write_text(
                f"% {t.title}\n" + t.frame.to_latex(escape=True, caption=t.title, label=f"tab:{t.name}"))
            out[t.name] = t
    return out


def method_summary(records: list[dict], metric: str, cache: dict | None = None) -> pd.DataFrame:
    """Per data set and column: the table's average-row Stat of ``metric`` (the same categories
    as that table's average row, for every column), for bar charts. Columns: dataset, method, generator, detector, mean, lo, hi,
    interval, n_categories, n_all."""
    rows = []
    for dataset in sorted({r["config"]["dataset"] for r in records}):
        ds = [r for r in records if r["config"]["dataset"] == dataset]
        if not _present(ds, metric):
            continue
        cols = columns(records, dataset)
        cats = sorted({r["config"]["category"] for r in ds})
        cache = BootCache() if cache is None else cache
        # the same categories as the average row of the table that shows this metric
        kind = next((k for k, ms in KINDS.items() if metric in ms), None)
        together = tuple(m for m in KINDS[kind] if _present(ds, m)) if kind else (metric,)
        eligible, avg = average_stats(cols, cats, together, _cell_stats(cols, cats, together, cache), cache)
        for col, rs in cols.records.items():
            s = avg.get((col, metric))
            c = rs[0]["config"]
            rows.append({"dataset": dataset, "method": col, "generator": c["generator"], "detector": c["detector"],
                         "mean": s.mean if s else math.nan, "lo": s.lo if s else math.nan,
                         "hi": s.hi if s else math.nan, "interval": s.interval if s else "none",
                         "n_categories": len(eligible), "n_all": len(cats)})
    return pd.DataFrame(rows, columns=["dataset", "method", "generator", "detector", "mean", "lo", "hi",
                                       "interval", "n_categories", "n_all"])
