"""Configs: one dataclass per run (a grid of cells) and one per cell (hashed and stored).

Every value goes through one path (`benchmark.schema.build`): the preset YAML, then a user
YAML, then command-line flags, then `--set key=value` pairs are merged into one dict, and the
dict is validated after each layer so an error names the layer that introduced it. Component
configs (`generator_cfg.<name>`, `detector_cfg.<name>`, `dataset_cfg.<name>`) are validated
against each component's own dataclass at plan time (`benchmark.runner.plan`), and what a cell
stores and hashes is the *resolved* component config: every default filled in, preset files
(e.g. configs/dhdiff_quick.yaml) included, so a changed default is a different cell.

Defaults are the DH-Diff paper's protocol values where the paper gives one; the `quick` preset
(configs/quick.yaml) shrinks sizes so the default benchmark runs in minutes on a 2-core CPU.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from .schema import ConfigError, build, option, resolved

CONFIG_DIR = Path(__file__).resolve().parent.parent / "configs"
# presets: run configs in configs/ (component defaults such as dhdiff_quick.yaml are not presets)
PRESETS = tuple(sorted(p.stem for p in CONFIG_DIR.glob("*.yaml") if not p.stem.startswith("dhdiff")))
RECORD_SCHEMA = 3   # bump when the record layout or meaning changes (docs/records.md)
_RUN_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
_DEVICE = re.compile(r"^(cpu|mps|cuda(:\d+)?)$")


def _device_ok(dev: str) -> None:
    if not _DEVICE.match(dev):
        raise ConfigError(f"device: expected cpu, cuda, cuda:N or mps, got {dev!r}")


@dataclass
class SplitConfig:
    fraction: float = option(0.5, gt=0.0, lt=1.0,
                             help="share of each defect type's test anomalies given to the generator")
    mode: str = option("random", choices=("random", "ordered"),
                       help="random (seeded) or ordered (AnomalyDiffusion's protocol)")


@dataclass
class RayConfig:
    address: str | None = option(None, help="Ray cluster address; None starts a local instance")
    num_cpus: float = option(1, gt=0, help="CPUs per cell task")
    num_gpus: float = option(0, ge=0, help="GPUs per cell task")
    local_num_cpus: int | None = option(None, ge=1, help="CPUs of a locally started Ray instance")
    connect_timeout_s: float = option(15.0, gt=0, help="give up connecting to `address` after this")


@dataclass
class CellConfig:
    """Everything one grid cell depends on. Its hash names the stored record."""

    dataset: str
    category: str
    generator: str
    detector: str
    seed: int = 0
    data_root: str | None = None
    dataset_cfg: dict = field(default_factory=dict)     # resolved
    image_size: int = 256
    eval_size: int = 256
    split: SplitConfig = field(default_factory=SplitConfig)
    pairs_per_defect: int = 1000
    generator_cfg: dict = field(default_factory=dict)   # resolved
    detector_cfg: dict = field(default_factory=dict)    # resolved
    quality: dict = field(default_factory=dict)
    device: str = "cpu"            # recorded, not hashed: a GPU rerun does not redo CPU cells
    threads: int = 0               # torch CPU threads (0: torch's default); recorded, not hashed.
                                   # Bit-identical records need the same device and thread count.
    generate_threads: int = 0      # torch threads while the generator fits and samples (0: threads);
                                   # recorded, not hashed. Generated pairs depend on it like a
                                   # detector on ``threads``.
    detector_seed: int | None = None  # None: the detector draws from ``seed`` like everything else.
                                      # Set only by the stability study's variance decomposition
                                      # (vary the detector's init and batch order alone); hashed
                                      # only when set, so ordinary records keep their names.
    split_seed: int | None = None     # None: the few-shot split draws from ``seed``. Set only by the
                                      # study's ``--vary pairs`` (same split and detector, new pairs);
                                      # hashed only when set, like ``detector_seed``.

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
        d.pop("generate_threads", None)
        for key in ("detector_seed", "split_seed"):
            if d.get(key) is None:
                d.pop(key, None)
        return digest(d)

    @property
    def label(self) -> str:
        return f"{self.dataset}/{self.category} {self.generator} → {self.detector} seed {self.seed}"


def digest(obj: Any, n: int = 16) -> str:
    """A short sha256 of a JSON-able value with sorted keys (stable across processes)."""
    blob = json.dumps(obj, sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:n]


@dataclass
class RunConfig:
    """A run: the grid (datasets x categories x generators x detectors x seeds) plus shared fields."""

    run: str = option("quick", help="run name: the folder under results_dir")
    datasets: list[str] = option(["synthetic"])
    data_root: str | None = None
    # "all", a list, or per data set {synthetic: [weave, hex_nut]} (a data set not named: all)
    categories: str | list[str] | dict[str, str | list[str]] = "all"
    generators: list[str] = option(["cutpaste"])
    detectors: list[str] = option(["unet"])
    seeds: list[int] = option([0], ge=0)
    dataset_cfg: dict[str, dict] = option({}, help="data set name -> its config")
    image_size: int = option(256, ge=16, le=4096)
    eval_size: int = option(256, ge=16, le=4096)
    split: SplitConfig = field(default_factory=SplitConfig)
    pairs_per_defect: int = option(1000, ge=1, help="generated pairs per defect type")
    generator_cfg: dict[str, dict] = option({}, help="generator name -> its config")
    detector_cfg: dict[str, dict] = option({}, help="detector name -> its config")
    quality: dict = option({}, help="local weight paths for IS / IC-LPIPS")
    device: str = "cpu"
    threads: int = option(0, ge=0, help="torch CPU threads per cell (0: torch's default)")
    executor: str = option("local", choices=("local", "ray"))
    jobs: int = option(1, ge=1, help="local executor: cells run at once, each in its own process "
                       "with `threads` torch threads (1: one after another, in this process)")
    generate_threads: int = option(0, ge=0, help="torch threads while generators fit and sample (0: "
                                   "threads, inside each cell); with jobs > 1 the sets are tasks of their own "
                                   "before their cells, in the pool, or here one after another when above threads")
    ray: RayConfig = field(default_factory=RayConfig)
    results_dir: str = "results/runs"
    cache_dir: str = "results/cache"
    preset: str | None = option(None, help="the preset the config started from (set by build_config; a label)")

    def __post_init__(self) -> None:
        if not _RUN_NAME.match(self.run):
            raise ConfigError(f"run: a run name is letters, digits, '_', '-' and '.', got {self.run!r}")
        _device_ok(self.device)
        for name in ("datasets", "generators", "detectors", "seeds"):
            if not getattr(self, name):
                raise ConfigError(f"{name}: the grid needs at least one, got an empty list")
        def norm(v):
            if isinstance(v, str) and v != "all":
                v = [c.strip() for c in v.split(",") if c.strip()]
            if not v:
                raise ConfigError("categories: expected 'all' or a non-empty list")
            return v

        self.categories = ({k: norm(v) for k, v in self.categories.items()} if isinstance(self.categories, dict)
                           else norm(self.categories))
        for key in ("dataset_cfg", "generator_cfg", "detector_cfg"):
            for name, sub in getattr(self, key).items():
                if sub is None:
                    getattr(self, key)[name] = {}
                elif not isinstance(sub, dict):
                    raise ConfigError(f"{key}.{name}: expected a mapping of settings, got {sub!r}")

    def categories_for(self, dataset: str) -> str | list[str]:
        """The categories asked for on one data set ("all" or a list)."""
        if isinstance(self.categories, dict):
            return self.categories.get(dataset, "all")
        return self.categories

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

    def cell(self, dataset: str, category: str, generator: str, detector: str, seed: int,
             components: dict | None = None) -> CellConfig:
        """One cell. ``components`` maps ("generator"|"detector"|"dataset", name) to the resolved
        config (from `benchmark.runner.resolve_components`); without it the raw dicts are used."""
        comp = components or {}
        return CellConfig(
            dataset=dataset, category=category, generator=generator, detector=detector, seed=seed,
            data_root=self.root_of(dataset),
            dataset_cfg=dict(comp.get(("dataset", dataset), self.dataset_cfg.get(dataset, {}))),
            image_size=self.image_size, eval_size=self.eval_size,
            split=SplitConfig(**dataclasses.asdict(self.split)),
            pairs_per_defect=self.pairs_per_defect,
            generator_cfg=dict(comp.get(("generator", generator), self.generator_cfg.get(generator, {}))),
            detector_cfg=dict(comp.get(("detector", detector), self.detector_cfg.get(detector, {}))),
            quality=dict(self.quality), device=self.device, threads=self.threads,
            generate_threads=self.generate_threads,
        )

    @property
    def run_dir(self) -> Path:
        return Path(self.results_dir) / self.run


# Fields that say where and how a run executes, not what it measures: never part of the
# experiment's identity (see benchmark.runs).
EXECUTION_FIELDS = ("run", "device", "threads", "generate_threads", "jobs", "executor", "ray", "results_dir",
                    "cache_dir", "preset")
GRID_FIELDS = ("datasets", "categories", "generators", "detectors", "seeds")


def load_yaml(path: str | Path) -> dict:
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file {str(path)!r} does not exist")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except (yaml.YAMLError, UnicodeDecodeError) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise ConfigError(f"config file {str(path)!r} is not valid YAML: {first}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"config file {str(path)!r} must hold a mapping")
    return data


def parse_set(expr: str) -> dict:
    """`--set a.b=c` -> nested dict {a: {b: c}} (the value parsed as YAML)."""
    if "=" not in expr:
        raise ConfigError(f"--set expects key=value, got {expr!r}")
    key, raw = expr.split("=", 1)
    try:
        value = yaml.safe_load(raw)
    except yaml.YAMLError:
        value = raw
    parts = [p for p in key.strip().split(".")]
    if not all(parts):
        raise ConfigError(f"--set {expr}: bad key {key!r}")
    for p in reversed(parts[1:]):
        value = {p: value}
    return {parts[0]: value}


def _merge(base: dict, over: dict) -> dict:
    """Recursive dict merge: mappings combine, anything else replaces."""
    out = dict(base)
    for k, v in over.items():
        if k == "dataset":  # singular convenience
            k, v = "datasets", [v] if isinstance(v, str) else v
        if isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = _merge(out[k], v)
        else:
            out[k] = v
    return out


def build_config(preset: str | None = None, config: str | Path | None = None,
                 overrides: dict | None = None, sets: list[str] | None = None) -> RunConfig:
    """Preset YAML, then a user YAML, then CLI overrides, then `--set key=value` pairs."""
    layers: list[tuple[str, dict]] = []
    if preset is not None:
        if preset not in PRESETS:
            raise ConfigError(f"unknown preset {preset!r}; presets: {', '.join(PRESETS)}")
        layers.append((f"preset {preset!r}", {**load_yaml(CONFIG_DIR / f"{preset}.yaml"), "preset": preset}))
    if config is not None:
        layers.append((f"config file {str(config)!r}", load_yaml(config)))
    if overrides:
        layers.append(("command line", {k: v for k, v in overrides.items() if v is not None}))
    for s in sets or []:
        layers.append((f"--set {s}", parse_set(s)))
    raw: dict = {}
    cfg = RunConfig()
    for source, data in layers:
        raw = _merge(raw, data)
        try:
            cfg = build(RunConfig, raw, where="")
        except ConfigError as e:
            raise ConfigError(f"{source}: {e}") from None
    return cfg


def run_settings(cfg: RunConfig) -> dict:
    """The resolved run config as a plain dict (what `run.json` stores)."""
    return resolved(cfg)


__all__ = ["CONFIG_DIR", "PRESETS", "RECORD_SCHEMA", "CellConfig", "ConfigError", "RayConfig", "RunConfig",
           "SplitConfig", "build_config", "digest", "load_yaml", "parse_set", "run_settings"]
