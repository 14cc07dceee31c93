"""Paper-shaped tables from the stored records (pandas pivots to Markdown / CSV / LaTeX).

Rows are categories plus an average, columns are methods (generator, or generator/detector when
several detectors ran), cells "(image AUROC, pixel AUROC)" in % with one decimal as in the
DH-Diff paper's Table II; mean ± std over seeds when several seeds ran.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

PAIRS = {
    "auroc": ("image_auroc", "pixel_auroc"),
    "ap": ("image_ap", "pixel_ap"),
}


def method_name(generator: str, detector: str, several_detectors: bool) -> str:
    g = "no augmentation" if generator == "none" else generator
    return f"{g} / {detector}" if several_detectors else g


def _fmt(mean: float, std: float, n: int) -> str:
    if mean is None or np.isnan(mean):
        return "–"
    s = f"{100 * mean:.1f}"
    if n > 1 and not np.isnan(std):
        s += f"±{100 * std:.1f}"
    return s


def summary(frame: pd.DataFrame, dataset: str, metric: str) -> pd.DataFrame:
    """category x method -> (mean, std, n) over seeds of one metric, with an 'average' row.

    The average row averages the per-seed category means, so its std is over seeds too."""
    f = frame[(frame["dataset"] == dataset) & (frame["metric"] == metric)].copy()
    several = f["detector"].nunique() > 1
    f["method"] = [method_name(g, d, several) for g, d in zip(f["generator"], f["detector"])]
    per_seed = f.pivot_table(index=["category", "seed"], columns="method", values="value", aggfunc="mean",
                             dropna=False)
    grouped = per_seed.groupby(level="category")
    mean, std, n = grouped.mean(), grouped.std(ddof=1), grouped.count()
    avg_seed = per_seed.groupby(level="seed").mean()
    mean.loc["average"] = avg_seed.mean()
    std.loc["average"] = avg_seed.std(ddof=1)
    n.loc["average"] = avg_seed.count()
    return pd.concat({"mean": mean, "std": std, "n": n}, axis=1)


def pair_table(frame: pd.DataFrame, dataset: str, kind: str = "auroc") -> pd.DataFrame:
    """The paper's cell shape: "(image, pixel)" strings, categories x methods."""
    img_m, pix_m = PAIRS[kind]
    a, b = summary(frame, dataset, img_m), summary(frame, dataset, pix_m)
    methods = list(a["mean"].columns)
    out = pd.DataFrame(index=a.index, columns=methods, dtype=object)
    for cat in a.index:
        for m in methods:
            x = _fmt(a["mean"].at[cat, m], a["std"].at[cat, m], a["n"].at[cat, m])
            y = _fmt(b["mean"].at[cat, m], b["std"].at[cat, m], b["n"].at[cat, m]) \
                if (cat in b.index and m in b["mean"].columns) else "–"
            out.at[cat, m] = f"({x}, {y})"
    order = [c for c in out.index if c != "average"] + ["average"]
    out = out.loc[order]
    out.index.name = "category"
    return out


def title(dataset: str, kind: str, n_seeds: int, extra: str = "") -> str:
    what = "(image AUROC, pixel AUROC)" if kind == "auroc" else "(image AP, pixel AP)"
    seeds = f", mean±std over {n_seeds} seeds" if n_seeds > 1 else ""
    return f"{dataset}: {what} in %{seeds}; pixel metrics exact (not binned){extra}"


def write_tables(frame: pd.DataFrame, out_dir: str | Path) -> dict[str, str]:
    """Write Markdown, CSV and LaTeX per data set and metric kind; return {name: markdown}."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    shown: dict[str, str] = {}
    for dataset in sorted(frame["dataset"].unique()):
        n_seeds = frame.loc[frame["dataset"] == dataset, "seed"].nunique()
        for kind in PAIRS:
            t = pair_table(frame, dataset, kind)
            name = f"{dataset}_{kind}"
            head = title(dataset, kind, n_seeds)
            md = f"### {head}\n\n" + t.to_markdown() + "\n"
            (out_dir / f"{name}.md").write_text(md)
            t.to_csv(out_dir / f"{name}.csv")
            (out_dir / f"{name}.tex").write_text(
                f"% {head}\n" + t.to_latex(escape=True, caption=head, label=f"tab:{name}"))
            shown[name] = md
    return shown
