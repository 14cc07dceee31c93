"""The result store: one JSON record per cell under ``<run>/cells/<hash>.json``, written atomically.

A rerun skips every cell whose record exists, is valid and says ok; a killed run loses no
finished cell. Records check themselves on read (`validate`): a record that is not JSON, not
of this schema, lacks its config, or whose config does not hash to its name is moved aside to
``cells/rejected/`` with a line saying why, and its cell runs again. A per-cell lock
(`cell_lock`) keeps two processes from computing or writing the same cell.
The record layout is written down in docs/records.md.
"""
from __future__ import annotations

import contextlib
import fcntl
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Iterator

import pandas as pd

from .config import RECORD_SCHEMA
from .record import CellRecord, RecordError

__all__ = ["RecordError", "cell_lock", "file_lock", "is_done", "load_records", "read_record", "records_frame",
           "reject", "scan", "validate", "write_record"]


def cells_dir(run_dir: str | Path) -> Path:
    return Path(run_dir) / "cells"


def record_path(run_dir: str | Path, cell_hash: str) -> Path:
    return cells_dir(run_dir) / f"{cell_hash}.json"


def write_record(run_dir: str | Path, record: dict) -> Path:
    record = {"schema": RECORD_SCHEMA, **record}
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


def validate(record: object, name: str | None = None) -> dict:
    """The record itself, or a RecordError saying what is wrong with it (see benchmark.record)."""
    CellRecord.from_dict(record, name)
    return record  # type: ignore[return-value]


def read_record(path: Path) -> dict:
    """The validated record at ``path``; RecordError (not JSON, malformed) or OSError."""
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise RecordError(f"not valid JSON ({e.msg} at line {e.lineno})") from None
    except UnicodeDecodeError:
        raise RecordError("not UTF-8 text") from None
    return validate(data, path.stem)


def reject(path: Path, reason: str) -> Path:
    """Move a bad record aside (``cells/rejected/``) with its reason; its cell runs again."""
    dest_dir = path.parent / "rejected"
    dest_dir.mkdir(exist_ok=True)
    dest = dest_dir / path.name
    shutil.move(str(path), dest)
    dest.with_suffix(".why.txt").write_text(reason + "\n")
    return dest


def scan(run_dir: str | Path) -> tuple[list[dict], list[tuple[Path, str]]]:
    """Every valid record of a run, and (path, reason) for each bad one (moved aside)."""
    d = cells_dir(run_dir)
    if not d.is_dir():
        return [], []
    good, bad = [], []
    for p in sorted(d.glob("*.json")):
        try:
            good.append(read_record(p))
        except RecordError as e:
            bad.append((reject(p, str(e)), str(e)))
        except OSError as e:
            bad.append((p, f"unreadable ({e.strerror})"))
    return good, bad


def is_done(run_dir: str | Path, cell_hash: str) -> bool:
    """A valid ok record exists. A bad one is moved aside (and so is not done)."""
    path = record_path(run_dir, cell_hash)
    if not path.is_file():
        return False
    try:
        rec = read_record(path)
    except RecordError as e:
        reject(path, str(e))
        return False
    return rec["status"] == "ok"


def load_records(run_dir: str | Path) -> list[dict]:
    """The valid records of a run (bad ones are moved aside; `scan` also says which)."""
    return scan(run_dir)[0]


@contextlib.contextmanager
def file_lock(path: Path, on_wait=None) -> Iterator[None]:
    """An exclusive advisory lock (fcntl) held for the block; released when the process dies,
    so a killed run never leaves a stale lock. ``on_wait()`` is called once if we must wait."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            if on_wait is not None:
                on_wait()
            fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def cell_lock(run_dir: str | Path, cell_hash: str, on_wait=None):
    return file_lock(cells_dir(run_dir) / ".locks" / f"{cell_hash}.lock", on_wait)


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
