"""Published numbers of the DH-Diff paper (Tables II-VII), to print beside our own tables.

The CSV is a transcription of the paper: values in % exactly as printed (including the paper's
own inconsistencies, e.g. averages that are not the mean of their column), one row per number.
Methods keep their printed names (with citation marks), so a reader can find the source.
"""
from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

import pandas as pd

DEFAULT_PATH = Path(__file__).resolve().parents[1] / "results" / "reference" / "dh_diff_paper.csv"
COLUMNS = ["table", "dataset", "category", "method", "metric", "value"]
KEY = ["table", "dataset", "category", "method", "metric"]
TABLES = ("II", "III", "IV", "V", "VI", "VII")
AVERAGE = "average"
LABEL_PREFIX = "published: "

# Our adapters' folder names; "average" stands for a table's average row / column.
DATASET_CATEGORIES: dict[str, frozenset[str]] = {
    "mvtec_ad": frozenset({
        "bottle", "cable", "capsule", "carpet", "grid", "hazelnut", "leather", "metal_nut",
        "pill", "screw", "tile", "toothbrush", "transistor", "wood", "zipper"}),
    "mpdd": frozenset({
        "bracket_black", "bracket_brown", "bracket_white", "connector", "metal_plate", "tubes"}),
    "visa": frozenset({
        "candle", "capsules", "cashew", "chewinggum", "fryum", "macaroni1", "macaroni2", "pcb1",
        "pcb2", "pcb3", "pcb4", "pipe_fryum"}),
    "mvtec_loco": frozenset({
        "breakfast_box", "juice_bottle", "pushpins", "screw_bag", "splicing_connectors"}),
}


def load_reference(path: str | Path | None = None) -> pd.DataFrame:
    """Read and validate the reference CSV; a bad row raises ValueError naming file and line."""
    path = Path(path) if path is not None else DEFAULT_PATH
    if not path.is_file():
        raise ValueError(f"reference table {str(path)!r} does not exist")
    df = pd.read_csv(path, dtype={c: str for c in KEY})
    missing = [c for c in COLUMNS if c not in df.columns]
    if missing:
        raise ValueError(f"{path}: missing column(s) {missing}; expected {COLUMNS}")
    df = df[COLUMNS].copy()
    values = pd.to_numeric(df["value"], errors="coerce")

    def bad(mask, why: str) -> None:
        if mask.any():
            i = int(mask.to_numpy().nonzero()[0][0])
            raise ValueError(f"{path}, line {i + 2}: {why}: {df.iloc[i].to_dict()}")

    bad(df[KEY].isna().any(axis=1), "empty key field")
    bad(~df["table"].isin(TABLES), f"table not one of {TABLES}")
    bad(~df["dataset"].isin(list(DATASET_CATEGORIES)), f"dataset not one of {list(DATASET_CATEGORIES)}")
    valid_cat = [c == AVERAGE or c in DATASET_CATEGORIES.get(d, ()) for d, c in zip(df["dataset"], df["category"])]
    bad(~pd.Series(valid_cat, index=df.index), "category is not a folder name of its data set")
    bad(values.isna(), "value is not a number")
    bad((values < 0) | (values > 100), "value outside [0, 100] (%)")
    bad(df.duplicated(KEY, keep="first"), "duplicate (table, dataset, category, method, metric)")
    df["value"] = values.astype(float)
    return df


def published_rows(dataset: str, categories: Iterable[str], metric: str,
                   *, include_average: bool = True, tables: Iterable[str] | None = None,
                   reference: pd.DataFrame | None = None) -> pd.DataFrame:
    """Published ``metric`` values for our categories: rows = category, columns = method.

    Columns are labelled ``"published: <method> (Table <n>)"`` since the same method can appear
    in two tables with different numbers (e.g. RealNet's MPDD image AUROC in Tables III and V).
    Rows follow ``categories``' order (plus ``average`` last); categories the paper does not
    report are left out, so an unpublished data set gives an empty frame. ``tables`` (e.g. ``["II"]``)
    keeps only those tables. MVTec LOCO's per-category
    numbers are ``image_auroc_logical`` / ``image_auroc_structural``; only its average is ``image_auroc``.
    """
    ref = load_reference() if reference is None else reference
    wanted = list(dict.fromkeys(categories))
    if include_average and AVERAGE not in wanted:
        wanted.append(AVERAGE)
    sel = ref[(ref["dataset"] == dataset) & (ref["metric"] == metric) & ref["category"].isin(wanted)]
    if tables is not None:
        tables = list(tables)
        unknown = sorted(set(tables) - set(TABLES))
        if unknown:
            raise ValueError(f"published_rows: unknown table(s) {unknown}; the reference has {list(TABLES)}")
        sel = sel[sel["table"].isin(tables)]
    if sel.empty:
        return pd.DataFrame(index=pd.Index([], name="category"), dtype=float)
    labels = LABEL_PREFIX + sel["method"] + " (Table " + sel["table"] + ")"
    table_order = {t: i for i, t in enumerate(TABLES)}
    # Column order: tables in paper order, methods in printed (file) order within a table.
    order = sorted(dict.fromkeys(zip(sel["table"], labels)), key=lambda tl: table_order[tl[0]])
    out = (sel.assign(label=labels)
              .pivot(index="category", columns="label", values="value")
              .reindex(index=[c for c in wanted if c in set(sel["category"])],
                       columns=[lab for _, lab in order]))
    out.columns.name = None
    return out


# Rows are printed with one decimal and so is the average: the mean of the printed rows may differ
# from the printed average by up to 0.05 + 0.05 through rounding alone; more than that is the
# paper's own inconsistency and gets flagged.
ROUNDING_SLACK = 0.1


def published_summary(dataset: str, categories: Iterable[str], metric: str, *,
                      tables: Iterable[str] | None = None, reference: pd.DataFrame | None = None) -> pd.DataFrame:
    """Per published method (rows, labelled as in `published_rows`): the mean of its printed
    per-category values over ``categories`` (``same_mean``, NaN unless it has every one of them,
    so it sits beside our average over the same categories), the printed average, the mean of all
    its printed category rows, and ``printed_mismatch``: True where the printed average differs
    from that mean by more than rounding (``ROUNDING_SLACK`` points).

    Why: an average over other categories than ours is not comparable, and some of the paper's
    printed averages are not the mean of their rows (e.g. DRAEM's Table II pixel AUROC, 98.7
    printed, 92.5 from the rows)."""
    cats = list(dict.fromkeys(c for c in categories if c != AVERAGE))
    ref = load_reference() if reference is None else reference
    all_cats = sorted(DATASET_CATEGORIES.get(dataset, ()))
    every = published_rows(dataset, all_cats, metric, tables=tables, reference=ref)
    cols = ["same_mean", "n_same", "printed_average", "rows_mean", "n_rows", "printed_mismatch"]
    if every.empty:
        return pd.DataFrame(columns=cols, dtype=float)
    rows = every.drop(index=AVERAGE, errors="ignore")
    out = pd.DataFrame(index=every.columns, columns=cols, dtype=object)
    for m in every.columns:
        col = rows[m] if m in rows else pd.Series(dtype=float)
        mine = col.reindex(cats)
        out.at[m, "n_same"] = int(mine.notna().sum())
        out.at[m, "same_mean"] = float(mine.mean()) if cats and mine.notna().all() else float("nan")
        printed = every.at[AVERAGE, m] if AVERAGE in every.index else float("nan")
        out.at[m, "printed_average"] = float(printed)
        n_rows = int(col.notna().sum())
        out.at[m, "n_rows"] = n_rows
        out.at[m, "rows_mean"] = float(col.mean()) if n_rows else float("nan")
        out.at[m, "printed_mismatch"] = bool(n_rows and pd.notna(printed)
                                             and abs(float(printed) - float(col.mean())) > ROUNDING_SLACK + 1e-9)
    return out
