"""Configs: one dataclass per cell (hashed and stored) and one per run (a grid of cells).

Defaults are the DH-Diff paper's protocol values where the paper gives one; the `quick` preset
(configs/quick.yaml) shrinks sizes so the default benchmark runs in minutes on a 2-core CPU.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

CONFIG_DIR = Path(__file__).resolve().parent.parent / "configs"
PRESETS = ("quick", "paper", "elpv")


class ConfigError(ValueError):
    """A bad config file, field or override; the message names it."""


@dataclass
class SplitConfig:
    fraction: float = 0.5          # DH-Diff: half of each defect type's test anomalies
    mode: str = "random"           # "random" (seeded) or "ordered" (AnomalyDiffusion's protocol)


@dataclass
class CellConfig:
    """Everything one grid cell depends on. Its hash names the stored record."""

    dataset: str
    category: str
    generator: str
    detector: str
    seed: int = 0
    data_root: str | None = None
    dataset_cfg: dict = field(default_factory=dict)
    image_size: int = 256
    eval_size: int = 256
    split: SplitConfig = field(default_factory=SplitConfig)
    pairs_per_defect: int = 1000
    generator_cfg: dict = field(default_factory=dict)
    detector_cfg: dict = field(default_factory=dict)
    quality: dict = field(default_factory=dict)
    device: str = "cpu"            # recorded, not hashed: a GPU rerun does not redo CPU cells
    threads: int = 0               # torch CPU threads (0: torch's default); recorded, not hashed.
                                   # Bit-identical records need the same device and thread count.

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "CellConfig":
        d = dict(d)
        d["split"] = SplitConfig(**d.get("split", {}))
        return cls(**d)

    def hash(self) -> str:
        d = self.to_dict()
        d.pop("device")
        d.pop("threads")
        blob = json.dumps(d, sort_keys=True, default=str).encode()
        return hashlib.sha256(blob).hexdigest()[:16]

    @property
    def label(self) -> str:
        return f"{self.dataset}/{self.category} {self.generator} → {self.detector} seed {self.seed}"


@dataclass
class RunConfig:
    """A run: the grid (datasets x categories x generators x detectors x seeds) plus shared fields."""

    run: str = "quick"
    datasets: list[str] = field(default_factory=lambda: ["synthetic"])
    data_root: str | None = None
    categories: list[str] | str = "all"
    generators: list[str] = field(default_factory=lambda: ["cutpaste"])
    detectors: list[str] = field(default_factory=lambda: ["unet"])
    seeds: list[int] = field(default_factory=lambda: [0])
    dataset_cfg: dict = field(default_factory=dict)
    image_size: int = 256
    eval_size: int = 256
    split: SplitConfig = field(default_factory=SplitConfig)
    pairs_per_defect: int = 1000
    generator_cfg: dict = field(default_factory=dict)   # generator name -> kwargs
    detector_cfg: dict = field(default_factory=dict)    # detector name -> kwargs
    quality: dict = field(default_factory=dict)         # local weight paths for IS / IC-LPIPS
    device: str = "cpu"
    threads: int = 0                                    # torch CPU threads per cell (0: default)
    executor: str = "local"
    ray: dict = field(default_factory=lambda: {"address": None, "num_cpus": 1, "num_gpus": 0})
    results_dir: str = "results/runs"
    cache_dir: str = "results/cache"

    def root_of(self, dataset: str) -> str | None:
        """Data root of one data set: with several data sets, ``<data_root>/<dataset>`` when that
        folder exists (the paper preset's layout), else None for adapters that need no root."""
        if self.data_root is None or len(self.datasets) <= 1:
            return self.data_root
        sub = Path(self.data_root).expanduser() / dataset
        if sub.is_dir():
            return str(sub)
        from .datasets import DATASETS, list_datasets

        list_datasets()
        return self.data_root if getattr(DATASETS.get(dataset), "needs_root", True) else None

    def cell(self, dataset: str, category: str, generator: str, detector: str, seed: int) -> CellConfig:
        return CellConfig(
            dataset=dataset, category=category, generator=generator, detector=detector, seed=seed,
            data_root=self.root_of(dataset), dataset_cfg=dict(self.dataset_cfg.get(dataset, {})),
            image_size=self.image_size, eval_size=self.eval_size,
            split=SplitConfig(**dataclasses.asdict(self.split)),
            pairs_per_defect=self.pairs_per_defect,
            generator_cfg=dict(self.generator_cfg.get(generator, {})),
            detector_cfg=dict(self.detector_cfg.get(detector, {})),
            quality=dict(self.quality), device=self.device, threads=self.threads,
        )

    @property
    def run_dir(self) -> Path:
        return Path(self.results_dir) / self.run


_LIST_FIELDS = {"datasets", "generators", "detectors", "seeds"}


def _coerce(name: str, value: Any, default: Any) -> Any:
    """Turn a CLI string (or YAML value) into the field's type, with an error naming the field."""
    if name in _LIST_FIELDS or name == "categories":
        if isinstance(value, str):
            if name == "categories" and value == "all":
                return "all"
            value = [v.strip() for v in value.split(",") if v.strip()]
        if not isinstance(value, list):
            raise ConfigError(f"config field {name!r}: expected a list, got {value!r}")
        if name == "seeds":
            try:
                return [int(v) for v in value]
            except (TypeError, ValueError):
                raise ConfigError(f"config field 'seeds': expected integers, got {value!r}") from None
        return [str(v) for v in value]
    if isinstance(default, bool):
        if isinstance(value, str):
            return value.lower() in ("1", "true", "yes", "on")
        return bool(value)
    if isinstance(default, int) and not isinstance(default, bool):
        try:
            return int(value)
        except (TypeError, ValueError):
            raise ConfigError(f"config field {name!r}: expected an integer, got {value!r}") from None
    if isinstance(default, float):
        try:
            return float(value)
        except (TypeError, ValueError):
            raise ConfigError(f"config field {name!r}: expected a number, got {value!r}") from None
    return value


def _apply(cfg: RunConfig, data: dict, source: str) -> None:
    names = {f.name: f for f in dataclasses.fields(RunConfig)}
    for key, value in data.items():
        if key == "dataset":  # singular convenience
            key, value = "datasets", [value] if isinstance(value, str) else value
        if key not in names:
            raise ConfigError(f"{source}: unknown config field {key!r}; known: {', '.join(sorted(names))}")
        if key == "split":
            if not isinstance(value, dict):
                raise ConfigError(f"{source}: field 'split' must be a mapping with fraction/mode")
            unknown = set(value) - {"fraction", "mode"}
            if unknown:
                raise ConfigError(f"{source}: unknown split field(s) {sorted(unknown)}")
            cfg.split = SplitConfig(**{**dataclasses.asdict(cfg.split), **value})
            continue
        if key in ("generator_cfg", "detector_cfg", "dataset_cfg", "quality", "ray"):
            if value is None:
                value = {}
            if not isinstance(value, dict):
                raise ConfigError(f"{source}: field {key!r} must be a mapping")
            merged = dict(getattr(cfg, key))
            for k, v in value.items():  # one level of merge: per-name dicts combine
                merged[k] = {**merged.get(k, {}), **v} if isinstance(v, dict) and isinstance(merged.get(k), dict) else v
            setattr(cfg, key, merged)
            continue
        setattr(cfg, key, _coerce(key, value, getattr(cfg, key)))


def load_yaml(path: str | Path) -> dict:
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file {str(path)!r} does not exist")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as e:
        raise ConfigError(f"config file {str(path)!r} is not valid YAML: {e}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"config file {str(path)!r} must hold a mapping")
    return data


def parse_set(expr: str) -> tuple[str, Any]:
    """`--set a.b=c` -> nested dict {a: {b: c}} merged over the config (values parsed as YAML)."""
    if "=" not in expr:
        raise ConfigError(f"--set expects key=value, got {expr!r}")
    key, raw = expr.split("=", 1)
    value = yaml.safe_load(raw)
    parts = key.strip().split(".")
    for p in reversed(parts[1:]):
        value = {p: value}
    return parts[0], value


def build_config(preset: str | None = None, config: str | Path | None = None,
                 overrides: dict | None = None, sets: list[str] | None = None) -> RunConfig:
    """Preset YAML, then a user YAML, then CLI overrides, then `--set key=value` pairs."""
    cfg = RunConfig()
    if preset is not None:
        if preset not in PRESETS:
            raise ConfigError(f"unknown preset {preset!r}; presets: {', '.join(PRESETS)}")
        _apply(cfg, load_yaml(CONFIG_DIR / f"{preset}.yaml"), f"preset {preset!r}")
    if config is not None:
        _apply(cfg, load_yaml(config), f"config file {str(config)!r}")
    if overrides:
        _apply(cfg, {k: v for k, v in overrides.items() if v is not None}, "command line")
    for s in sets or []:
        k, v = parse_set(s)
        _apply(cfg, {k: v}, f"--set {s}")
    if not 0.0 < cfg.split.fraction < 1.0:
        raise ConfigError(f"config field 'split.fraction' must be in (0, 1), got {cfg.split.fraction}")
    if cfg.split.mode not in ("random", "ordered"):
        raise ConfigError(f"config field 'split.mode' must be 'random' or 'ordered', got {cfg.split.mode!r}")
    if cfg.executor not in ("local", "ray"):
        raise ConfigError(f"config field 'executor' must be 'local' or 'ray', got {cfg.executor!r}")
    return cfg
