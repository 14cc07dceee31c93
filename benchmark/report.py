"""Rebuild every table and figure of a run from its stored records, recomputing nothing."""
from __future__ import annotations

from pathlib import Path

from rich.console import Console

from . import store, tables


def build_report(run_dir: str | Path, console: Console | None = None) -> dict[str, str]:
    run_dir = Path(run_dir)
    records = store.load_records(run_dir)
    frame = store.records_frame(records)
    if frame.empty:
        if console:
            console.print(f"[yellow]no successful cells recorded under {run_dir}[/yellow]")
        return {}
    out = run_dir / "tables"
    shown = tables.write_tables(frame, out)
    frame.to_csv(out / "records_long.csv", index=False)
    return shown
