"""The result store: one JSON record per cell under ``<run>/cells/<hash>.json``, written atomically.

A rerun skips every cell whose record exists with status ok; a killed run loses no finished cell.
"""
from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

import pandas as pd


def cells_dir(run_dir: str | Path) -> Path:
    return Path(run_dir) / "cells"


def record_path(run_dir: str | Path, cell_hash: str) -> Path:
    return cells_dir(run_dir) / f"{cell_hash}.json"


def write_record(run_dir: str | Path, record: dict) -> Path:
    path = record_path(run_dir, record["hash"])
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", suffix=".json", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as f:
            json.dump(record, f, indent=1, sort_keys=True, default=str)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return path


def read_record(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return None  # unreadable: treated as not recorded, the cell runs again


def is_done(run_dir: str | Path, cell_hash: str) -> bool:
    rec = read_record(record_path(run_dir, cell_hash))
    return rec is not None and rec.get("hash") == cell_hash and rec.get("status") == "ok"


def load_records(run_dir: str | Path) -> list[dict]:
    d = cells_dir(run_dir)
    if not d.is_dir():
        return []
    return [r for p in sorted(d.glob("*.json")) if (r := read_record(p)) is not None]


def records_frame(records: list[dict]) -> pd.DataFrame:
    """Long table: one row per (cell, metric) of the successful records."""
    rows = []
    for r in records:
        if r.get("status") != "ok":
            continue
        c = r["config"]
        for metric, value in r.get("metrics", {}).items():
            rows.append({"dataset": c["dataset"], "category": c["category"], "generator": c["generator"],
                         "detector": c["detector"], "seed": c["seed"], "metric": metric,
                         "value": float("nan") if value is None else float(value), "hash": r["hash"]})
    return pd.DataFrame(rows, columns=["dataset", "category", "generator", "detector", "seed", "metric",
                                       "value", "hash"])
