"""Rebuild every table and figure of a run from its stored records, re-running no cell
(intervals and paired tests are computed from the records' per-image scores).

Tables: ours per data set (Markdown / CSV / LaTeX), with the DH-Diff paper's published numbers
for the same data set and categories beside them, labelled as published and averaged over the
same categories as our average row (the paper's printed average is shown too, marked where it is
not the mean of its own rows), and a ranking per data set whose "= best" column comes from
paired tests with Holm's correction. Figures: grouped bars
of methods per data set, ROC curves per category, and a generated-pair grid per generator.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
from rich.console import Console

from . import store, tables

MISMATCH_MARK = "‡"


def _published_pairs(dataset: str, categories: list[str], same: list[str], kind: str) -> tuple[pd.DataFrame, list[str]]:
    """Published "(image, pixel)" cells for our categories, an average over ``same`` (our average
    row's categories) computed from the paper's rows, and the paper's printed average, marked
    where it is not the mean of its own rows. Returns (table, footnotes)."""
    from .reference import published_rows, published_summary

    img_m, pix_m = tables.PAIRS[kind]
    per = [published_rows(dataset, categories, m, include_average=False) for m in (img_m, pix_m)]
    summ = [published_summary(dataset, same, m) for m in (img_m, pix_m)]
    cols = list(dict.fromkeys([*per[0].columns, *per[1].columns, *summ[0].index, *summ[1].index]))
    if not cols:
        return pd.DataFrame(), []
    same_row = f"average over the same {len(same)} categories (from the paper's rows)"
    printed_row = "average as printed (all categories)"
    idx = [c for c in categories if any(c in f.index for f in per)] + [same_row, printed_row]
    out = pd.DataFrame(index=idx, columns=cols, dtype=object)
    notes: list[str] = []

    def num(x) -> str:
        return "–" if x is None or pd.isna(x) else f"{float(x):.1f}"

    for m in cols:
        for c in idx[:-2]:
            out.at[c, m] = "(" + ", ".join(num(f.at[c, m] if (c in f.index and m in f.columns) else None)
                                         for f in per) + ")"
        out.at[same_row, m] = "(" + ", ".join(num(sm.at[m, "same_mean"] if m in sm.index and same else None)
                                              for sm in summ) + ")"
        parts = []
        for sm, metric in zip(summ, (img_m, pix_m)):
            if m not in sm.index:
                parts.append("–")
                continue
            v = num(sm.at[m, "printed_average"])
            if sm.at[m, "printed_mismatch"]:
                v += MISMATCH_MARK
                notes.append(f"{MISMATCH_MARK} {m}, {metric}: printed average {num(sm.at[m, 'printed_average'])} "
                             f"but the mean of its {sm.at[m, 'n_rows']} printed rows is {sm.at[m, 'rows_mean']:.2f}")
            parts.append(v)
        out.at[printed_row, m] = "(" + ", ".join(parts) + ")"
    out.index.name = "category"
    return out, notes


def _rankings(records: list[dict], dataset: str) -> str:
    """A ranking per data set and AUROC level, with Holm-adjusted paired tests against the best."""
    from .compare import ranking, ranking_markdown
    from .config import ConfigError

    parts = []
    for metric in ("image_auroc", "pixel_auroc"):
        try:
            r = ranking(records, dataset, metric)
        except ConfigError as e:
            parts.append(f"#### Ranking on {dataset} by {metric}: not computed ({e})\n")
            continue
        if len(r) > 1:
            parts.append(ranking_markdown(r, dataset, metric))
    return "\n".join(parts)


def _figures(records: list[dict], frame: pd.DataFrame, fig_dir: Path, cache: dict | None = None) -> list[Path]:
    from .cache import load_pairs
    from .plots import bars_by_method, pair_grid, roc_curves

    fig_dir.mkdir(parents=True, exist_ok=True)
    paths = []
    several = frame["detector"].nunique() > 1
    for metric in ("image_auroc", "pixel_auroc", "image_ap", "pixel_ap"):
        summary = tables.method_summary(records, metric, cache)
        if len(summary) and summary["mean"].notna().any():
            paths.append(bars_by_method(summary, fig_dir / f"bars_{metric}.png", metric=metric))
    for dataset in sorted(frame["dataset"].unique()):
        curves: dict = {}
        for r in records:
            c = r["config"]
            if r.get("status") != "ok" or c["dataset"] != dataset or "eval" not in r:
                continue
            method = tables.method_name(c["generator"], c["detector"], several)
            if c["seed"] != min(frame.loc[frame["dataset"] == dataset, "seed"]):
                continue  # one seed per curve keeps the figure readable
            curves.setdefault(c["category"], {})[method] = (np.asarray(r["eval"]["label"]),
                                                            np.asarray(r["eval"]["score"]))
        if curves:
            paths.append(roc_curves(dict(sorted(curves.items())), fig_dir / f"roc_{dataset}.png"))
    done: set[str] = set()
    for r in records:  # one grid per generator, from its cached set when still on disk
        g = r["config"]["generator"]
        root = r.get("generated_set")
        if g in done or not root or not Path(root).is_dir():
            continue
        pairs = load_pairs(Path(root))
        if pairs:
            by: dict[str, list] = {}
            for p in pairs:
                by.setdefault(p.defect_type, []).append(p)
            sample = [p for ps in by.values() for p in ps[:6]]
            c = r["config"]
            paths.append(pair_grid(sample, fig_dir / f"pairs_{g}.png",
                                   title=f"{g} on {c['dataset']}/{c['category']}"))
            done.add(g)
    return paths


def generator_costs(records: list[dict], dataset: str) -> pd.DataFrame:
    """What each generator's sets cost to make, from the records' ``generator_timings`` (kept in
    the set's manifest, so a cell that read its set from the cache still reports it). A set shared
    by several cells (one per detector) counts once; records without timings are left out."""
    sets: dict[str, dict] = {}
    for r in records:
        t, c = r.get("generator_timings"), r["config"]
        if c["dataset"] == dataset and t and r.get("generated_set"):
            sets[r["generated_set"]] = {"generator": c["generator"], **t}
    cols = ["generator", "sets", "fit s (median)", "generate s (median)", "total s (median)", "threads"]
    if not sets:
        return pd.DataFrame(columns=cols)
    df = pd.DataFrame(sets.values())
    df["total_s"] = df["fit_s"] + df["generate_s"]
    g = df.groupby("generator", sort=True)
    out = pd.DataFrame({"sets": g.size(), "fit s (median)": g["fit_s"].median(),
                        "generate s (median)": g["generate_s"].median(), "total s (median)": g["total_s"].median(),
                        "threads": g["threads"].agg(lambda v: "/".join(str(int(x)) for x in sorted(set(v))))})
    return out.reset_index()[cols]


def _generator_costs_markdown(records: list[dict], dataset: str) -> str:
    df = generator_costs(records, dataset)
    if df.empty:
        return ""
    head = (f"#### {dataset}: cost of the generated sets (seconds when each set was made, fit and sampling; "
            f"a set read from the cache counts once, at its cost when made)")
    return f"{head}\n\n{df.to_markdown(index=False, floatfmt='.1f')}\n"


def _run_label(run_dir: Path) -> str:
    """The run's name, plus its preset where the run manifest (run.json) records one."""
    import json

    try:
        preset = json.loads((run_dir / "run.json").read_text()).get("preset")
    except (OSError, ValueError, AttributeError):
        preset = None
    return run_dir.name + (f" (preset {preset})" if preset else "")


def build_report(run_dir: str | Path, console: Console | None = None, figures: bool = True) -> dict[str, str]:
    run_dir = Path(run_dir)
    records = store.load_records(run_dir)
    if not records:
        if console:
            console.print(f"[yellow]no cells recorded under {run_dir}[/yellow]")
        return {}
    out = run_dir / "tables"
    cache = tables.BootCache()  # each record's bootstrap drawn once for every table and figure
    tabs = tables.write_tables(records, out, run=_run_label(run_dir), cache=cache)
    shown = {name: t.markdown() for name, t in tabs.items()}
    frame = store.records_frame(records)
    if not frame.empty:
        frame.drop(columns="hash").to_csv(out / "records_long.csv", index=False)
    for name, t in tabs.items():
        dataset, kind = name.rsplit("_", 1)
        if kind not in tables.PAIRS:
            continue
        pub, notes = _published_pairs(dataset, t.categories, t.eligible, kind)
        if pub.empty:
            continue
        head = "Published in the DH-Diff paper (not computed here) for the same categories"
        md = f"\n#### {head}\n\n" + pub.to_markdown() + "\n" + "".join(f"\n{n}\n" for n in notes)
        pub.to_csv(out / f"{name}_published.csv")
        with open(out / f"{name}.md", "a") as f:
            f.write(md)
        shown[name] += md
    for dataset in sorted({r["config"]["dataset"] for r in records}):
        md = _rankings(records, dataset)
        if md:
            (out / f"{dataset}_ranking.md").write_text(md)
            shown[f"{dataset}_ranking"] = md
        md = _generator_costs_markdown(records, dataset)
        if md:
            (out / f"{dataset}_generators.md").write_text(md)
            shown[f"{dataset}_generators"] = md
    if figures and not frame.empty:
        try:
            paths = _figures(records, frame, run_dir / "figures", cache)
            if console:
                console.print(f"figures: {', '.join(str(p) for p in paths)}")
        except Exception as e:  # a figure must never cost the tables
            if console:
                console.print(f"[yellow]figures skipped: {type(e).__name__}: {e}[/yellow]")
    return shown
