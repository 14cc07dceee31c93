"""A run is one experiment: ``<run>/run.json`` remembers the settings it was made with.

Why: reusing a run name with a changed config used to average old and new cells into one
table cell without a word (`steps=20` then `steps=60` printed the mean of both). The rule,
checked before any work:
- the *settings* (every resolved run field except the grid axes and the execution fields
  `device`, `threads`, `executor`, `ray`, `results_dir`, `cache_dir`, and the `preset` label) must equal
  the stored ones;
- each component's resolved config (`generator_cfg.<name>`, `detector_cfg.<name>`,
  `dataset_cfg.<name>`) must equal the stored one for every name both know;
- the grid may grow: new categories, generators, detectors, seeds and data sets join the run.
Anything else is refused with one line naming the differing keys and suggesting `--run NAME`.
"""
from __future__ import annotations

import json
import os
import tempfile
from datetime import datetime, timezone
from pathlib import Path

from .config import EXECUTION_FIELDS, GRID_FIELDS, RunConfig, digest
from .schema import ConfigError, resolved

MANIFEST = "run.json"
RUN_SCHEMA = 1
COMPONENT_FIELDS = {"generator": "generator_cfg", "detector": "detector_cfg", "dataset": "dataset_cfg"}


def settings(cfg: RunConfig) -> dict:
    d = resolved(cfg)
    for k in (*EXECUTION_FIELDS, *GRID_FIELDS, *COMPONENT_FIELDS.values()):
        d.pop(k, None)
    return d


def manifest(cfg: RunConfig, components: dict) -> dict:
    """``components``: {(kind, name): resolved config} from `benchmark.runner.resolve_components`."""
    comp: dict = {kind: {} for kind in COMPONENT_FIELDS}
    for (kind, name), c in components.items():
        comp[kind][name] = c
    s = settings(cfg)
    return {"schema": RUN_SCHEMA, "run": cfg.run, "preset": cfg.preset, "settings": s, "settings_hash": digest(s),
            "components": comp, "grid": {k: getattr(cfg, k) for k in GRID_FIELDS}}


def _diff(old: object, new: object, prefix: str) -> list[str]:
    if isinstance(old, dict) and isinstance(new, dict):
        out = []
        for k in sorted(set(old) | set(new), key=str):
            key = f"{prefix}.{k}" if prefix else str(k)
            if k not in old:
                out.append(f"{key} (new: {new[k]!r})")
            elif k not in new:
                out.append(f"{key} (was {old[k]!r}, now absent)")
            else:
                out.extend(_diff(old[k], new[k], key))
        return out
    return [] if old == new else [f"{prefix} {old!r} -> {new!r}"]


def differences(stored: dict, current: dict) -> list[str]:
    out = _diff(stored.get("settings", {}), current["settings"], "")
    for kind, field in COMPONENT_FIELDS.items():
        old, new = stored.get("components", {}).get(kind, {}), current["components"][kind]
        for name in sorted(set(old) & set(new)):
            out.extend(_diff(old[name], new[name], f"{field}.{name}"))
    return out


def _union(a: object, b: object) -> object:
    if isinstance(a, dict) or isinstance(b, dict):
        return b
    if isinstance(a, list) and isinstance(b, list):
        return a + [x for x in b if x not in a]
    return b if a == "all" or b == "all" else a


def check_and_record(cfg: RunConfig, components: dict) -> dict:
    """Refuse a run folder made with other settings; else write the (grown) manifest."""
    run_dir = cfg.run_dir
    path = run_dir / MANIFEST
    current = manifest(cfg, components)
    now = datetime.now(timezone.utc).isoformat()
    if path.is_file():
        try:
            stored = json.loads(path.read_text())
            if not isinstance(stored, dict) or stored.get("schema") != RUN_SCHEMA:
                raise ValueError("unknown layout")
        except (ValueError, OSError) as e:
            raise ConfigError(f"run manifest {str(path)!r} is unreadable ({e}); move the run folder "
                              f"aside or choose another --run NAME") from None
        diff = differences(stored, current)
        if diff:
            shown = "; ".join(diff[:6]) + (f"; and {len(diff) - 6} more" if len(diff) > 6 else "")
            raise ConfigError(f"run {cfg.run!r} ({str(run_dir)!r}) was made with other settings: {shown}. "
                              f"A run is one experiment: use --run NAME for a new one")
        for kind in COMPONENT_FIELDS:
            current["components"][kind] = {**stored["components"].get(kind, {}), **current["components"][kind]}
        current["grid"] = {k: _union(stored.get("grid", {}).get(k, current["grid"][k]), current["grid"][k])
                           for k in GRID_FIELDS}
        current["created"] = stored.get("created", now)
    elif (run_dir / "cells").is_dir() and any((run_dir / "cells").glob("*.json")):
        raise ConfigError(f"run folder {str(run_dir)!r} holds records but no {MANIFEST} (made by an older "
                          f"version); move it aside or choose another --run NAME")
    else:
        current["created"] = now
    current["updated"] = now
    run_dir.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", suffix=".json", dir=run_dir)
    with os.fdopen(fd, "w") as f:
        json.dump(current, f, indent=1, sort_keys=True, default=str)
    os.replace(tmp, path)
    return current


def load(run_dir: str | Path) -> dict | None:
    path = Path(run_dir) / MANIFEST
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None
