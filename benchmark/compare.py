"""Is generator A better than B? Paired comparisons and rankings from a run's stored records.

Why paired: within one seed every generator's cell sees the same split, evaluation images,
detector initialisation and batch order (common random numbers), so scoring A and B on the
*same* images and resampling those images jointly cancels most of the noise that makes two
unpaired intervals overlap. Cells are matched on (dataset, category, detector, seed) and must hold
the same evaluation image ids; anything else is refused with a ConfigError naming both records.

Combining: the statistic is the mean over matched cells of the per-cell difference (every
(category, seed) weighs the same); the bootstrap resamples images inside every cell independently
and averages (`stats.paired_bootstrap_combined`). DeLong's test for image AUROC is combined the
same way: mean of the deltas, variance = sum of the per-cell variances / n_cells^2 (the variance of
a mean of independent estimates). Pixel metrics use the records' seeded pixel subsample
(``eval["pixel_sample"]``), resampled over images; their Δ is that of the subsample, the exact
recorded Δ is shown beside it. AUPRO / sPRO need whole maps: no image interval.

Two questions, two tests: the image tests ask "are *these trained* detectors different on these
images?" and hold the training fixed; a generator's claim to be better must also survive a
rerun with new seeds. So every metric (AUPRO / sPRO too) also gets the paired t-test over cells
of the recorded per-cell Δ (`stats.paired_t`), whose spread includes the training seeds; the
ranking's "= best" uses it wherever there are two or more shared cells. Measured on the quick
preset (weave, 3 seeds): DH-Diff − Crop&Paste image AUROC per seed −0.9 / −15.1 / −4.3; the
image bootstrap gave p = 0.004, the t over cells p = 0.25.
"""
from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from scipy import stats as sps

from . import stats
from .config import ConfigError

DEFAULT_METRICS = ("image_auroc", "image_ap", "image_f1max", "pixel_auroc", "pixel_ap", "pixel_f1max")
# Config fields that may differ between two columns of one comparison (the rest must agree).
_METHOD_FIELDS = {"generator", "generator_cfg", "device", "threads", "generate_threads"}
_CELL_FIELDS = {"dataset", "category", "detector", "seed"}


def record_file(r: dict) -> str:
    """Where a record lives in its run (store.record_path's layout), to name it in errors."""
    return r.get("_path") or f"cells/{r.get('hash', '?')}.json"


def method_name(generator: str, detector: str, several_detectors: bool) -> str:
    g = "no augmentation" if generator == "none" else generator
    return f"{g} / {detector}" if several_detectors else g


def _ok(records: list[dict]) -> list[dict]:
    return [r for r in records if r.get("status") == "ok"]


def metric_value(r: dict, metric: str) -> float:
    v = (r.get("metrics") or {}).get(metric)
    return math.nan if v is None else float(v)


def _eval(r: dict) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    e = r.get("eval")
    if not e or "score" not in e or "label" not in e:
        raise ConfigError(f"{record_file(r)}: no per-image evaluation data ('eval'); rerun the cell")
    ids = np.asarray(e.get("image_id", range(len(e["label"]))), dtype=object)
    return ids, np.asarray(e["label"], dtype=np.int64), np.asarray(e["score"], dtype=np.float64)


def sample_of(r: dict, metric: str, order: np.ndarray | None = None) -> stats.Sample | None:
    """The record's data behind ``metric`` as a bootstrap sample, or None where none can stand for
    it: the metric is not a curve metric, there is no pixel subsample, or the image metric
    recomputed from the stored scores is not the recorded one (e.g. LOCO's per-group AUROC).
    ``order`` reorders the images (to align another record's ids)."""
    kind = stats.curve_metric(metric)
    if kind is None or not r.get("eval"):
        return None
    _, labels, scores = _eval(r)
    sel = slice(None) if order is None else order
    if metric.startswith("pixel_"):
        ps = r["eval"].get("pixel_sample")
        if not ps:
            return None
        try:
            plab, psc = np.asarray(ps["label"], np.int64), np.asarray(ps["score"], np.float64)
        except (KeyError, TypeError, ValueError) as e:
            raise ConfigError(f"{record_file(r)}: eval.pixel_sample is malformed ({e})") from None
        if plab.ndim != 2 or plab.shape != psc.shape or plab.shape[0] != labels.size:
            raise ConfigError(f"{record_file(r)}: eval.pixel_sample label {plab.shape} / score {psc.shape} must both "
                              f"be ({labels.size}, K), one row per evaluation image")
        return stats.Sample(plab[sel], psc[sel], strata=labels[sel])
    recorded = metric_value(r, metric)
    if np.unique(labels).size < 2:
        return None
    value = stats.curve_value(labels, scores, kind)
    if not (np.isfinite(recorded) and abs(value - recorded) <= 1e-9):
        return None
    return stats.Sample(labels[sel], scores[sel])


def config_rest(r: dict, drop: set[str]) -> dict:
    return {k: v for k, v in r["config"].items() if k not in drop}


def check_unique(records: list[dict], key_fields: tuple[str, ...]) -> dict[tuple, dict]:
    """{key: record}; two records of one key with different configs are refused, naming both files."""
    out: dict[tuple, dict] = {}
    for r in records:
        k = tuple(r["config"][f] for f in key_fields)
        if k in out and out[k].get("hash") != r.get("hash"):
            diff = sorted(f for f in set(out[k]["config"]) | set(r["config"])
                          if out[k]["config"].get(f) != r["config"].get(f))
            raise ConfigError(f"two records for {dict(zip(key_fields, k))} with different configs "
                              f"(fields {', '.join(diff)}): {record_file(out[k])} and {record_file(r)}; "
                              f"use one run per config")
        out[k] = r
    return out


def _align(ra: dict, rb: dict) -> np.ndarray:
    """Index that puts B's images in A's order; refuses unless both hold the same image ids/labels."""
    ida, la, _ = _eval(ra)
    idb, lb, _ = _eval(rb)
    pos = {i: k for k, i in enumerate(idb)}
    if len(pos) != len(idb) or len(ida) != len(idb) or any(i not in pos for i in ida):
        only = sorted(set(map(str, ida)) ^ set(map(str, idb)))[:3]
        raise ConfigError(f"{record_file(ra)} and {record_file(rb)} were not evaluated on the same images "
                          f"({len(ida)} vs {len(idb)} ids; e.g. {only}): not comparable")
    order = np.array([pos[i] for i in ida], dtype=np.int64)
    if not np.array_equal(la, lb[order]):
        raise ConfigError(f"{record_file(ra)} and {record_file(rb)}: same image ids but different labels")
    return order


def _paired_samples(pairs: list[tuple[dict, dict]], metric: str) -> list[stats.PairedSample] | None:
    out = []
    for ra, rb in pairs:
        sa = sample_of(ra, metric)
        sb = sample_of(rb, metric, _align(ra, rb))
        if sa is None or sb is None:
            return None
        same = np.array_equal(np.asarray(sa.labels), np.asarray(sb.labels))
        out.append(stats.PairedSample(sa.labels, sa.scores, sb.scores, None if same else sb.labels, sa.strata))
    return out


def _over_cells_row(metric: str, deltas: list[float], recorded: float, base: dict, level: float) -> dict:
    """The paired t-test over cells of the recorded (exact) per-cell differences: the test that
    includes training-seed variation (see ``stats.paired_t``)."""
    finite = int(np.isfinite(deltas).sum())
    d, lo, hi, p = stats.paired_t(deltas, level)
    note = "needs >= 2 cells" if finite < 2 else ""
    if 0 < finite < len(deltas):
        note = f"{finite} of {len(deltas)} cells have a value" + (f"; {note}" if note else "")
    return {"metric": metric, "test": f"paired t over {finite} cells", "delta": d, "lo": lo, "hi": hi, "p": p,
            "recorded_delta": recorded, **base, "note": note}


def paired_rows(pairs: list[tuple[dict, dict]], metrics: tuple[str, ...], n_boot: int = 1000,
                seed: int = 0, level: float = 0.95) -> pd.DataFrame:
    """Per metric over matched pairs: the paired t-test over cells (training seeds included), then
    the tests on the same evaluation images (trained models fixed): paired bootstrap, and DeLong
    for image AUROC."""
    rows = []
    cats = {(ra["config"]["dataset"], ra["config"]["category"]) for ra, _ in pairs}
    seeds = {ra["config"]["seed"] for ra, _ in pairs}
    base = {"n_cells": len(pairs), "n_categories": len(cats), "n_seeds": len(seeds)}
    for m in metrics:
        rec = [metric_value(ra, m) - metric_value(rb, m) for ra, rb in pairs]
        recorded = float(np.mean(rec)) if rec and np.isfinite(rec).all() else math.nan
        rows.append(_over_cells_row(m, rec, recorded, base, level))
        samples = _paired_samples(pairs, m) if stats.curve_metric(m) else None
        if samples is None:
            why = ("no pixel subsample in the records" if m.startswith("pixel_") and stats.curve_metric(m)
                   else "not resamplable from stored scores")
            rows.append({"metric": m, "test": "none", "delta": recorded, "lo": math.nan, "hi": math.nan,
                         "p": math.nan, "recorded_delta": recorded, **base, "note": why})
            continue
        d, lo, hi, p = stats.paired_bootstrap_combined(samples, m, n_boot=n_boot, seed=seed, level=level)
        note = "pixel subsample" if m.startswith("pixel_") else ""
        rows.append({"metric": m, "test": f"paired bootstrap ({n_boot})", "delta": d, "lo": lo, "hi": hi,
                     "p": p, "recorded_delta": recorded, **base, "note": note})
        if m == "image_auroc":
            dd, se, _, pd_ = stats.delong_combined(samples)
            h = sps.norm.ppf(0.5 + level / 2) * se
            rows.append({"metric": m, "test": "DeLong", "delta": dd, "lo": dd - h, "hi": dd + h, "p": pd_,
                         "recorded_delta": recorded, **base, "note": ""})
    return pd.DataFrame(rows, columns=["metric", "test", "delta", "lo", "hi", "p", "recorded_delta",
                                       "n_cells", "n_categories", "n_seeds", "note"])


def compare_runs(records: list[dict], a: str, b: str, detector: str | None = None,
                 metrics: tuple[str, ...] = DEFAULT_METRICS, dataset: str | None = None,
                 n_boot: int = 1000, seed: int = 0, level: float = 0.95) -> pd.DataFrame:
    """Δ = metric(A) - metric(B) per metric, with its interval and p, over the matched cells.

    ``a`` / ``b`` are generator names; cells match on (dataset, category, detector, seed), every
    other config field except the generator's own must agree. ``frame.attrs["unmatched"]`` lists
    cells that only one side has (failed or not run): they are left out, and say so."""
    if a == b:
        raise ConfigError(f"compare: A and B are both {a!r}")
    ok = [r for r in _ok(records) if (detector is None or r["config"]["detector"] == detector)
          and (dataset is None or r["config"]["dataset"] == dataset)]
    side = {}
    for g in (a, b):
        rs = [r for r in ok if r["config"]["generator"] == g]
        if not rs:
            have = sorted({r["config"]["generator"] for r in ok})
            raise ConfigError(f"compare: no successful cell of generator {g!r}"
                              + (f" with detector {detector!r}" if detector else "") + f"; have {have}")
        side[g] = check_unique(rs, ("dataset", "category", "detector", "seed"))
    keys = sorted(set(side[a]) & set(side[b]), key=str)
    if not keys:
        raise ConfigError(f"compare: {a} and {b} share no (dataset, category, detector, seed) cell")
    pairs = []
    for k in keys:
        ra, rb = side[a][k], side[b][k]
        ca, cb = config_rest(ra, _METHOD_FIELDS), config_rest(rb, _METHOD_FIELDS)
        if ca != cb:
            diff = sorted(f for f in set(ca) | set(cb) if ca.get(f) != cb.get(f))
            raise ConfigError(f"{record_file(ra)} and {record_file(rb)} differ in {', '.join(diff)}: "
                              f"not a paired comparison")
        pairs.append((ra, rb))
    out = paired_rows(pairs, tuple(metrics), n_boot=n_boot, seed=seed, level=level)
    out.attrs["unmatched"] = sorted(set(side[a]) ^ set(side[b]), key=str)
    out.attrs["a"], out.attrs["b"] = a, b
    return out


def ranking(records: list[dict], dataset: str, metric: str, detector: str | None = None,
            n_boot: int = 1000, seed: int = 0, alpha: float = 0.05) -> pd.DataFrame:
    """Methods (generator, or generator / detector) of one data set ordered by mean ``metric`` over
    the (category, seed) cells that every method has, each with two paired tests against the best,
    Holm-adjusted over the comparisons with the best: ``p_cells``, the t-test over cells of the
    recorded differences (training seeds included, ``stats.paired_t``), and ``p``, the paired
    bootstrap on the same evaluation images (trained models held fixed). ``same_as_best`` is True
    where the adjusted p is >= ``alpha`` (not significantly different from the best), decided by
    the test over cells when there are at least 2 shared cells and by the image test for a single
    cell (``attrs["decided_by"]``); None where no test exists. ``delta_vs_best`` is the exact
    difference of the means; ``tested_delta`` with ``lo`` / ``hi`` / ``p`` is the bootstrapped
    statistic, the same for image metrics and the pixel-subsample value for pixel metrics."""
    ok = [r for r in _ok(records) if r["config"]["dataset"] == dataset
          and (detector is None or r["config"]["detector"] == detector)]
    cols = ["rank", "method", "mean", "delta_vs_best", "tested_delta", "lo", "hi", "p", "p_holm", "p_cells",
            "p_cells_holm", "same_as_best", "n_cells"]
    if not ok:
        return pd.DataFrame(columns=cols)
    several = len({r["config"]["detector"] for r in ok}) > 1
    by: dict[str, dict] = {}
    for r in ok:
        c = r["config"]
        by.setdefault(method_name(c["generator"], c["detector"], several), []).append(r)
    cells = {m: check_unique(rs, ("category", "seed")) for m, rs in by.items()}
    cells = {m: {k: r for k, r in cs.items() if np.isfinite(metric_value(r, metric))} for m, cs in cells.items()}
    cells = {m: cs for m, cs in cells.items() if cs}
    if not cells:
        return pd.DataFrame(columns=cols)
    common = sorted(set.intersection(*(set(cs) for cs in cells.values())), key=str)
    union = set().union(*(set(cs) for cs in cells.values()))
    means = {m: float(np.mean([metric_value(cs[k], metric) for k in common])) if common else math.nan
             for m, cs in cells.items()}
    order = sorted(means, key=lambda m: (-means[m] if np.isfinite(means[m]) else math.inf, m))
    best = order[0]
    rows = []
    for m in order:
        row = {"method": m, "mean": means[m], "n_cells": len(common), "delta_vs_best": 0.0,
               "tested_delta": math.nan, "lo": math.nan, "hi": math.nan, "p": math.nan, "p_cells": math.nan}
        if m != best and common:
            pairs = [(cells[m][k], cells[best][k]) for k in common]
            samples = _paired_samples(pairs, metric) if stats.curve_metric(metric) else None
            row["delta_vs_best"] = means[m] - means[best]
            row["p_cells"] = stats.paired_t([metric_value(ra, metric) - metric_value(rb, metric)
                                             for ra, rb in pairs])[3]
            if samples is not None:
                d, lo, hi, p = stats.paired_bootstrap_combined(samples, metric, n_boot=n_boot, seed=seed)
                row.update(tested_delta=d, lo=lo, hi=hi, p=p)
        rows.append(row)
    out = pd.DataFrame(rows)
    out["p_holm"], out["p_cells_holm"] = np.nan, np.nan
    others = out.index[out["method"] != best]
    out.loc[others, "p_holm"] = stats.holm(out.loc[others, "p"].to_numpy())
    out.loc[others, "p_cells_holm"] = stats.holm(out.loc[others, "p_cells"].to_numpy())
    # The decision needs the training seeds' variation where there are cells to measure it.
    decide = "p_cells_holm" if len(common) >= 2 else "p_holm"
    out["same_as_best"] = [True if m == best else (None if not np.isfinite(ph) else bool(ph >= alpha))
                           for m, ph in zip(out["method"], out[decide])]
    out.insert(0, "rank", range(1, len(out) + 1))
    out.attrs["cells"] = (len(common), len(union))
    out.attrs["alpha"] = alpha
    out.attrs["decided_by"] = "cells" if decide == "p_cells_holm" else "images"
    return out[cols]


# --------------------------------------------------------------------------- Markdown / CLI
def _pts(x: float, digits: int = 2) -> str:
    return "–" if x is None or not np.isfinite(x) else f"{100 * x:+.{digits}f}"


def _p(x: float) -> str:
    return "–" if x is None or not np.isfinite(x) else (f"{x:.3f}" if x >= 0.001 else f"{x:.1e}")


def compare_markdown(df: pd.DataFrame, run: str = "", level: float = 0.95) -> str:
    a, b = df.attrs.get("a", "A"), df.attrs.get("b", "B")
    n = df.iloc[0] if len(df) else None
    head = (f"### {run + ': ' if run else ''}{a} − {b}, Δ in points (%), {int(100 * level)}% interval, "
            f"two-sided p; t over cells: the recorded per-cell Δ, training seeds included; bootstrap / "
            f"DeLong: paired on the same evaluation images, trained models held fixed")
    if n is not None:
        seeds = f"{n['n_seeds']} seed{'s' if n['n_seeds'] != 1 else ''}"
        cats = f"{n['n_categories']} categor{'ies' if n['n_categories'] != 1 else 'y'}"
        head += f"; {n['n_cells']} cell{'s' if n['n_cells'] != 1 else ''} ({cats} × {seeds}), mean of per-cell Δ"
    lines = [head, "", "| metric | test | Δ | interval | p | recorded Δ | note |", "|---|---|---|---|---|---|---|"]
    for _, r in df.iterrows():
        iv = "–" if not np.isfinite(r["lo"]) else f"[{_pts(r['lo'])}, {_pts(r['hi'])}]"
        lines.append(f"| {r['metric']} | {r['test']} | {_pts(r['delta'])} | {iv} | {_p(r['p'])} | "
                     f"{_pts(r['recorded_delta'])} | {r['note']} |")
    um = df.attrs.get("unmatched") or []
    if um:
        lines.append(f"\nLeft out (only one of {a}, {b} has a successful cell): "
                     + "; ".join("/".join(map(str, k)) for k in um[:10]) + (" ..." if len(um) > 10 else ""))
    return "\n".join(lines) + "\n"


def ranking_markdown(df: pd.DataFrame, dataset: str, metric: str) -> str:
    n, m = df.attrs.get("cells", (0, 0))
    alpha = df.attrs.get("alpha", 0.05)
    by_cells = df.attrs.get("decided_by", "cells") == "cells"
    head = (f"#### Ranking on {dataset} by {metric} (mean over {n}{'' if n == m else f'/{m}'} shared "
            f"(category, seed) cells); tests vs the best, Holm-adjusted (Holm 1979): p cells = paired t "
            f"over the cells' recorded Δ (training seeds included), p images = paired bootstrap on the "
            f"same evaluation images (trained models fixed); = best: not significantly different from "
            f"the best at α = {alpha} by {'p cells' if by_cells else 'p images (one cell: no seed variation to test)'}")
    pix = metric.startswith("pixel_")
    lines = [head + ("; tested Δ: on the records' pixel subsample" if pix else ""), "",
             "| rank | method | mean | Δ vs best | p cells (Holm) | tested Δ [95% interval] | p images (Holm) | = best |",
             "|---|---|---|---|---|---|---|---|"]
    for _, r in df.iterrows():
        iv = "–" if not np.isfinite(r["lo"]) else \
            f"{_pts(r['tested_delta'], 1)} [{_pts(r['lo'], 1)}, {_pts(r['hi'], 1)}]"
        same = {True: "yes", False: "no", None: "?"}[r["same_as_best"]]
        mean = "–" if not np.isfinite(r["mean"]) else f"{100 * r['mean']:.1f}"
        lines.append(f"| {r['rank']} | {r['method']} | {mean} | {_pts(r['delta_vs_best'], 1)} | "
                     f"{_p(r['p_cells_holm'])} | {iv} | {_p(r['p_holm'])} | {same} |")
    return "\n".join(lines) + "\n"


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    p = subparsers.add_parser("compare", help="paired comparison of two generators of a run (Δ, interval, p)")
    p.add_argument("run_dir", metavar="RUN", help="run name or folder")
    p.add_argument("a", metavar="A", help="generator A")
    p.add_argument("b", metavar="B", help="generator B")
    p.add_argument("--metric", help=f"comma-separated metrics (default {','.join(DEFAULT_METRICS)})")
    p.add_argument("--detector", help="only cells of this detector")
    p.add_argument("--dataset", help="only cells of this data set")
    p.add_argument("--results-dir", default="results/runs")
    p.add_argument("--n-boot", type=int, default=1000, help="bootstrap resamples (default 1000)")
    p.add_argument("--seed", type=int, default=0, help="bootstrap seed (default 0)")
    return p


def run(args: argparse.Namespace, console: Any = None) -> int:
    from . import store

    try:
        run_dir = Path(args.run_dir)
        if not run_dir.is_dir():
            run_dir = Path(args.results_dir) / args.run_dir
        records = store.load_records(run_dir)
        if not records:
            raise ConfigError(f"compare: no records under {run_dir}/cells")
        metrics = tuple(m.strip() for m in args.metric.split(",") if m.strip()) if args.metric else DEFAULT_METRICS
        known = set().union(*((r.get("metrics") or {}).keys() for r in records))
        unknown = [m for m in metrics if m not in known]
        if unknown:
            raise ConfigError(f"compare: --metric {','.join(unknown)} not in the records; known: {', '.join(sorted(known))}")
        df = compare_runs(records, args.a, args.b, detector=args.detector, metrics=metrics,
                          dataset=getattr(args, "dataset", None), n_boot=args.n_boot, seed=args.seed)
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(compare_markdown(df, run=run_dir.name))
    return 0
