"""Figures for the report: bars per method (error bars = the tables' intervals), ROC curves, grids of generated pairs.

Pure functions: data in, one PNG out, its path returned. They build ``matplotlib.figure.Figure``
objects directly (Agg canvas, no pyplot state), so they are safe in workers and never open windows.
Saved without a tight bounding box, so a PNG's pixel size is exactly ``figsize x DPI``.
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.patches import Patch
from sklearn.metrics import roc_auc_score, roc_curve

DPI = 100
PANEL_IN = 1.6  # side of one pair_grid panel, inches


def _save(fig: Figure, path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    FigureCanvasAgg(fig)
    fig.savefig(path, dpi=DPI, format="png")
    return path


def error_bars(summary: pd.DataFrame) -> tuple[np.ndarray, np.ndarray]:
    """(below, above) bar extents from the table's interval bounds ``lo`` / ``hi``; NaN where the
    table has no interval (one seed and nothing to resample), so no error bar is drawn there.
    Bars never invent a spread the table does not show (issue 9: one aggregation for both)."""
    need = ["mean", "lo", "hi"]
    missing = [c for c in need if c not in summary.columns]
    if missing:
        raise ValueError(f"bars_by_method: summary lacks column(s) {missing} (has {list(summary.columns)}); "
                         f"build it with benchmark.tables.method_summary")
    m, lo, hi = (pd.to_numeric(summary[c], errors="coerce").to_numpy(np.float64) for c in need)
    ok = np.isfinite(m) & np.isfinite(lo) & np.isfinite(hi)
    return np.where(ok, m - lo, np.nan), np.where(ok, hi - m, np.nan)


def bars_by_method(summary: pd.DataFrame, path: str | Path, metric: str = "image_auroc") -> Path:
    """One subplot per data set; bars grouped by generator, one colour per detector.

    ``summary`` is `benchmark.tables.method_summary(records, metric)`: the tables' average row
    (mean and 95% interval over the same categories for every method). Error bars only where that
    interval exists; a method without a finite mean is marked n/a instead of drawn at zero."""
    df = summary.copy()
    if len(df):
        df["detector"] = df["detector"].fillna("").astype(str) if "detector" in df else ""
        below, above = error_bars(df)
        df["below"], df["above"] = below, above
    s = df[np.isfinite(pd.to_numeric(df["mean"], errors="coerce"))] if len(df) else df
    datasets = list(dict.fromkeys(df["dataset"])) if len(df) else []
    generators = list(dict.fromkeys(df["generator"])) if len(df) else []
    detectors = list(dict.fromkeys(df["detector"])) if len(df) else [""]
    datasets = datasets or ["(no results)"]
    width_in = max(3.0, 0.5 + 0.45 * max(1, len(generators)) * max(1, len(detectors)))
    fig = Figure(figsize=(width_in * len(datasets), 3.6), layout="constrained")
    axes = fig.subplots(1, len(datasets), squeeze=False)[0]
    bar_w = 0.8 / max(1, len(detectors))
    colors = [f"C{i % 10}" for i in range(len(detectors))]
    for ax, ds in zip(axes, datasets):
        sd = s[s["dataset"] == ds] if len(s) else s
        for j, det in enumerate(detectors):
            sj = sd[sd["detector"] == det].set_index("generator") if len(sd) else sd
            gs = [g for g in generators if g in sj.index]
            x = [i + (j - (len(detectors) - 1) / 2) * bar_w for i, g in enumerate(generators) if g in sj.index]
            if gs:
                ax.bar(x, sj.loc[gs, "mean"], bar_w, color=colors[j], label=det or None)
                has = np.isfinite(sj.loc[gs, "below"].to_numpy(np.float64))
                if has.any():
                    ax.errorbar(np.asarray(x)[has], sj.loc[gs, "mean"].to_numpy()[has],
                                yerr=[sj.loc[gs, "below"].to_numpy()[has], sj.loc[gs, "above"].to_numpy()[has]],
                                fmt="none", ecolor="k", capsize=3, lw=1)
            for i, g in enumerate(generators):  # mark skipped bars (no finite value) as n/a
                if g not in sj.index and ((df["dataset"] == ds) & (df["generator"] == g) & (df["detector"] == det)).any():
                    ax.text(i + (j - (len(detectors) - 1) / 2) * bar_w, 0.01, "n/a", rotation=90,
                            ha="center", va="bottom", fontsize="x-small", color=colors[j],
                            transform=ax.get_xaxis_transform())
        ax.set_xticks(range(len(generators)), generators, rotation=30, ha="right")
        sub = df[df["dataset"] == ds] if len(df) else df
        n = f" ({int(sub['n_categories'].iloc[0])}/{int(sub['n_all'].iloc[0])} categories)" \
            if len(sub) and "n_categories" in sub and sub["n_categories"].iloc[0] != sub["n_all"].iloc[0] else ""
        ax.set_title(ds + n)
        ax.set_ylabel(metric)
        top = (sd["mean"] + sd["above"].fillna(0.0)) if len(sd) else pd.Series([1.0])
        ax.set_ylim(0, max(1.0, float(top.max()) * 1.05))
        if len(sd) == 0:
            ax.text(0.5, 0.5, "no finite values", ha="center", va="center", transform=ax.transAxes)
    if any(detectors):
        handles = [Patch(color=c, label=d) for c, d in zip(colors, detectors)]
        fig.legend(handles=handles, title="detector", fontsize="small", loc="outside right upper")
    return _save(fig, path)


def roc_curves(curves: Mapping[str, Mapping[str, tuple[np.ndarray, np.ndarray]]], path: str | Path) -> Path:
    """One subplot per category with each method's ROC; AUROC in the legend (n/a if one class)."""
    if not curves:
        raise ValueError("roc_curves: no categories given")
    n = len(curves)
    ncols = min(4, n)
    nrows = -(-n // ncols)
    fig = Figure(figsize=(3.2 * ncols, 3.2 * nrows), layout="constrained")
    axes = fig.subplots(nrows, ncols, squeeze=False).ravel()
    for ax, (cat, methods) in zip(axes, curves.items()):
        for name, (labels, scores) in methods.items():
            labels, scores = np.asarray(labels).ravel(), np.asarray(scores, dtype=np.float64).ravel()
            if labels.shape != scores.shape:
                raise ValueError(f"roc_curves: {cat}/{name}: {labels.size} labels but {scores.size} scores")
            if np.unique(labels).size < 2:
                ax.plot([], [], label=f"{name} (AUROC n/a: one class)")
                continue
            fpr, tpr, _ = roc_curve(labels, scores)
            ax.plot(fpr, tpr, label=f"{name} ({100 * roc_auc_score(labels, scores):.1f})")
        ax.plot([0, 1], [0, 1], color="0.7", lw=0.8, ls="--")
        ax.set(title=cat, xlabel="FPR", ylabel="TPR", xlim=(0, 1), ylim=(0, 1.01), aspect="equal")
        ax.legend(title="AUROC %", fontsize="x-small", loc="lower right")
    for ax in axes[n:]:
        ax.set_axis_off()
    return _save(fig, path)


def _outlined(image: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """RGB image with the mask's outline drawn in red."""
    out = np.ascontiguousarray(image).copy()
    contours, _ = cv2.findContours(mask.astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_NONE)
    thickness = max(1, round(min(mask.shape) / 128))
    cv2.drawContours(out, contours, -1, (255, 0, 0), thickness)
    return out


def pair_grid(pairs: Sequence, path: str | Path, title: str | None = None, max_per_row: int = 6) -> Path:
    """One row per defect type (first-seen order), up to ``max_per_row`` pairs, each as outlined image + mask.

    The PNG is ``2 * columns`` panels wide and one panel per defect type high (plus a title band).
    """
    if not pairs:
        raise ValueError("pair_grid: no pairs to show")
    if max_per_row < 1:
        raise ValueError(f"pair_grid: max_per_row must be >= 1, got {max_per_row}")
    rows: dict[str, list] = {}
    for i, p in enumerate(pairs):
        img, mask = np.asarray(p.image), np.asarray(p.mask)
        if img.dtype != np.uint8 or img.ndim != 3 or img.shape[2] != 3:
            raise ValueError(f"pair_grid: pair {i} ({p.defect_type}): image must be uint8 HxWx3, "
                             f"got {img.dtype} {img.shape}")
        if mask.shape != img.shape[:2]:
            raise ValueError(f"pair_grid: pair {i} ({p.defect_type}): mask {mask.shape} != image {img.shape[:2]}")
        rows.setdefault(str(p.defect_type), []).append((img, mask.astype(bool)))
    ncols = 2 * min(max_per_row, max(len(v) for v in rows.values()))
    title_in = 0.4 if title else 0.0
    height = PANEL_IN * len(rows) + title_in
    fig = Figure(figsize=(PANEL_IN * ncols, height))
    fig.subplots_adjust(left=0.02, right=0.98, bottom=0.02, wspace=0.05, hspace=0.3,
                        top=1 - (title_in + 0.25) / height)
    axes = fig.subplots(len(rows), ncols, squeeze=False)
    for r, (defect, items) in enumerate(rows.items()):
        for k in range(ncols // 2):
            ax_img, ax_mask = axes[r, 2 * k], axes[r, 2 * k + 1]
            for ax in (ax_img, ax_mask):
                ax.set_xticks([])
                ax.set_yticks([])
            if k >= len(items):
                ax_img.set_axis_off()
                ax_mask.set_axis_off()
                continue
            img, mask = items[k]
            ax_img.imshow(_outlined(img, mask))
            ax_mask.imshow(mask, cmap="gray", vmin=0, vmax=1)
        axes[r, 0].set_title(f"{defect} ({len(items)})", fontsize="small", loc="left")
    if title:
        fig.suptitle(title)
    return _save(fig, path)
