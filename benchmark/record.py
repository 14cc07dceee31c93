"""The record of one cell, typed: what `run_cell` writes and what the store checks on read.

One dataclass so the layout is written in one place (and in docs/records.md): a record with a
field this version does not know, a missing required field, another schema version or a
config that does not hash to its name is a `RecordError`, and the store moves it aside.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from .config import RECORD_SCHEMA, CellConfig

STATUSES = ("ok", "failed")


class RecordError(ValueError):
    """A stored record that cannot be trusted; the message says why."""


@dataclass
class CellRecord:
    hash: str
    config: dict
    status: str = "failed"
    schema: int = RECORD_SCHEMA
    # results (status ok)
    metrics: dict | None = None
    eval: dict | None = None            # image_id, label, defect_type, score[, pixel_sample]
    split: dict | None = None
    n_pairs: int | None = None
    quality: list | None = None
    warnings: list | None = None
    # the generated set
    generated_set: str | None = None
    generated_from_cache: bool | None = None
    generated_set_discarded: str | None = None
    generator_stats: dict | None = None
    generator_timings: dict | None = None  # fit_s, generate_s, threads of the set when it was made
    weights: dict | None = None         # pretrained weights a detector used (name, sha256)
    # failure (status failed)
    error: str | None = None
    traceback: str | None = None
    error_is_input: bool | None = None
    # how it ran
    timings: dict = field(default_factory=dict)
    threads: int | None = None
    versions: dict = field(default_factory=dict)
    host: str = ""
    started: str = ""
    finished: str = ""

    def to_dict(self) -> dict:
        """JSON-able dict; fields left None are left out."""
        return {k: v for k, v in dataclasses.asdict(self).items() if v is not None}

    @classmethod
    def from_dict(cls, data: Any, name: str | None = None) -> "CellRecord":
        """The record, validated (see the module docstring), or a RecordError saying why not."""
        if not isinstance(data, dict):
            raise RecordError(f"not a record (a JSON {type(data).__name__})")
        if data.get("schema") != RECORD_SCHEMA:
            raise RecordError(f"record schema {data.get('schema')!r}, this version reads {RECORD_SCHEMA}")
        for key in ("hash", "config", "status"):
            if key not in data:
                raise RecordError(f"no {key!r} field")
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise RecordError(f"unknown field(s) {unknown}")
        rec = cls(**data)
        rec.check(name)
        return rec

    def check(self, name: str | None = None) -> None:
        if self.status not in STATUSES:
            raise RecordError(f"status {self.status!r} (expected ok or failed)")
        if not isinstance(self.config, dict):
            raise RecordError("'config' is not a mapping")
        try:
            cell_hash = CellConfig.from_dict(self.config).hash()
        except (TypeError, ValueError, KeyError) as e:
            raise RecordError(f"'config' is not a cell config ({e})") from None
        if cell_hash != self.hash:
            raise RecordError(f"its config hashes to {cell_hash}, not to its recorded hash {self.hash}")
        if name is not None and name != self.hash:
            raise RecordError(f"file name {name} differs from its hash {self.hash}")
        if self.status == "ok":
            if not isinstance(self.metrics, dict) or not self.metrics:
                raise RecordError("status ok but no metrics")
            ev = self.eval
            if not isinstance(ev, dict) or not all(isinstance(ev.get(k), list) for k in ("label", "score")) \
                    or len(ev["label"]) != len(ev["score"]):
                raise RecordError("status ok but no per-image labels and scores of equal length")
