"""Rebuild every table and figure of a run from its stored records, recomputing nothing.

Tables: ours per data set (Markdown / CSV / LaTeX), with the DH-Diff paper's published numbers
for the same data set and categories beside them, labelled as published. Figures: grouped bars
of methods per data set, ROC curves per category, and a generated-pair grid per generator.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
from rich.console import Console

from . import store, tables


def _published_pairs(dataset: str, categories: list[str], kind: str) -> pd.DataFrame:
    from .reference import published_rows

    img_m, pix_m = tables.PAIRS[kind]
    a = published_rows(dataset, categories, img_m)
    b = published_rows(dataset, categories, pix_m)
    cols = list(dict.fromkeys(list(a.columns) + list(b.columns)))
    if not cols:
        return pd.DataFrame()
    idx = list(dict.fromkeys(list(a.index) + list(b.index)))
    out = pd.DataFrame(index=idx, columns=cols, dtype=object)
    for c in idx:
        for m in cols:
            x = a.at[c, m] if (c in a.index and m in a.columns) else np.nan
            y = b.at[c, m] if (c in b.index and m in b.columns) else np.nan
            out.at[c, m] = f"({'–' if pd.isna(x) else f'{x:.1f}'}, {'–' if pd.isna(y) else f'{y:.1f}'})"
    out.index.name = "category"
    return out


def _figures(records: list[dict], frame: pd.DataFrame, fig_dir: Path) -> list[Path]:
    from .cache import load_pairs
    from .plots import bars_by_method, pair_grid, roc_curves

    fig_dir.mkdir(parents=True, exist_ok=True)
    paths = []
    wide = frame.pivot_table(index=["dataset", "category", "generator", "detector", "seed"], columns="metric",
                             values="value").reset_index()
    several = wide["detector"].nunique() > 1
    for metric in ("image_auroc", "pixel_auroc", "image_ap", "pixel_ap"):
        if metric in wide and wide[metric].notna().any():
            paths.append(bars_by_method(wide, fig_dir / f"bars_{metric}.png", metric=metric))
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


def build_report(run_dir: str | Path, console: Console | None = None, figures: bool = True) -> dict[str, str]:
    run_dir = Path(run_dir)
    records = store.load_records(run_dir)
    frame = store.records_frame(records)
    if frame.empty:
        if console:
            console.print(f"[yellow]no successful cells recorded under {run_dir}[/yellow]")
        return {}
    out = run_dir / "tables"
    shown = tables.write_tables(frame, out)
    frame.drop(columns="hash").to_csv(out / "records_long.csv", index=False)
    for dataset in sorted(frame["dataset"].unique()):
        cats = sorted(frame.loc[frame["dataset"] == dataset, "category"].unique())
        for kind in tables.PAIRS:
            pub = _published_pairs(dataset, cats, kind)
            if pub.empty:
                continue
            name = f"{dataset}_{kind}"
            head = "Published in the DH-Diff paper (not computed here) for the same categories"
            md = f"\n#### {head}\n\n" + pub.to_markdown() + "\n"
            pub.to_csv(out / f"{name}_published.csv")
            with open(out / f"{name}.md", "a") as f:
                f.write(md)
            shown[name] += md
    if figures:
        try:
            paths = _figures(records, frame, run_dir / "figures")
            if console:
                console.print(f"figures: {', '.join(str(p) for p in paths)}")
        except Exception as e:  # a figure must never cost the tables
            if console:
                console.print(f"[yellow]figures skipped: {type(e).__name__}: {e}[/yellow]")
    return shown
