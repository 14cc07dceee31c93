"""One cell of the grid: data table -> split -> generator (cached) -> detector -> metrics -> record.

Each step hands the next a plain value; the record is a JSON-able dict (see benchmark.store).
"""
from __future__ import annotations

import json
import platform
import time
import traceback
from datetime import datetime, timezone
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import pandas as pd

from detectors import DetectorContext, create_detector
from generators import FitData, Pair, create_generator, get_generator_class

from . import cache as gcache
from . import schema
from .config import CellConfig
from .datasets import DataError, DatasetAdapter, create_dataset, load_image, load_mask
from .evaluation import evaluate_with_sample
from .split import Split, few_shot_split, stable_seed
from .store import file_lock
from .versions import package_versions

NO_GENERATOR = "none"  # the "no augmentation" column: unsupervised detectors train on normals only

Progress = Callable[[str], None]


def _log(progress: Progress | None, msg: str) -> None:
    if progress is not None:
        progress(msg)


def load_images(df: pd.DataFrame, size: int) -> np.ndarray:
    if len(df) == 0:
        return np.zeros((0, size, size, 3), np.uint8)
    return np.stack([load_image(p, size) for p in df["image_path"]])


def load_masks(df: pd.DataFrame, size: int) -> np.ndarray:
    if not len(df):
        return np.zeros((0, size, size), bool)
    return np.stack([load_mask(tuple(mp), size, image_path=ip) for ip, mp in zip(df["image_path"], df["mask_paths"])])


def aux_images(adapter: DatasetAdapter, category: str, size: int, per_category: int = 10) -> list[np.ndarray]:
    """A few normal train images of the other categories: DRAEM's default texture source."""
    out = []
    for other in adapter.categories():
        if other == category:
            continue
        df = adapter.samples(other)
        df = df[(df["split"] == "train") & (df["label"] == 0)].head(per_category)
        out.extend(load_image(p, size) for p in df["image_path"])
    return out


def generator_key(cfg: CellConfig, split: Split, gen) -> str:
    """Everything a generated set depends on: the generator's RESOLVED config (defaults and
    preset files included, so editing configs/dhdiff_quick.yaml regenerates), its version
    token, the data, the split and the seed."""
    return gcache.cache_key({
        "generator": gen.registry_name or cfg.generator, "generator_cfg": schema.resolved(gen.config),
        "token": gen.cache_token(),
        "dataset": cfg.dataset, "dataset_cfg": cfg.dataset_cfg, "category": cfg.category,
        "image_size": cfg.image_size, "seed": cfg.seed, "n": cfg.pairs_per_defect,
        "few_shot": sorted(split.few_shot["image_id"]), "normals": sorted(split.train_normals["image_id"]),
    })


@dataclass
class GeneratedSet:
    pairs: list[Pair]
    from_cache: bool
    real: list[Pair]          # the few-shot real anomalies the generator saw
    root: Path                # folder of the cached set
    stats: dict               # the generator's own counters (retries, fallbacks ...), see Generator.stats
    discarded: str | None = None  # why a damaged cached set was thrown away and made again


def make_pairs(cfg: CellConfig, adapter: DatasetAdapter, split: Split, normals: np.ndarray,
               cache_dir: str | Path, progress: Progress | None = None) -> GeneratedSet:
    """Fit the generator on the few-shot half and generate, or read the cached set.

    Seeds: fit and sampling seeds come from (seed, category[, defect type]) only — never the
    generator's name — so within one seed every generator starts from the same random state
    (common random numbers) and a renamed variant gives the same pairs."""
    gen_cls = get_generator_class(cfg.generator)
    if getattr(gen_cls, "needs_masks", False) and not adapter.has_masks:
        raise ValueError(f"generator {cfg.generator!r} needs pixel masks of real anomalies, but data set "
                         f"{cfg.dataset!r} has image-level labels only; choose a mask-free generator "
                         f"(e.g. cutpaste, draem)")
    few = split.few_shot
    real = [Pair(load_image(r.image_path, cfg.image_size),
                 load_mask(tuple(r.mask_paths), cfg.image_size, image_path=r.image_path) if adapter.has_masks
                 else np.zeros((cfg.image_size,) * 2, bool), r.defect_type)
            for r in few.itertuples(index=False)]
    defect_types = sorted(few["defect_type"].unique()) or ["synthetic"]
    gen = create_generator(cfg.generator, **cfg.generator_cfg)
    key = generator_key(cfg, split, gen)
    root = gcache.set_dir(cache_dir, key)
    with file_lock(gcache.lock_path(root),
                   on_wait=lambda: _log(progress, "waiting for another process generating this set")):
        gcache.clean_stale(root)
        discarded = None
        try:
            cached = gcache.load_pairs(root)
        except gcache.CacheError as e:
            discarded = str(e)
            _log(progress, f"{e}; discarded, generating again")
            gcache.discard(root)
            cached = None
        if cached is not None:
            _log(progress, f"generated set from cache {root}")
            stats = json.loads((root / "manifest.json").read_text()).get("stats", {})
            return GeneratedSet(cached, True, real, root, stats)
        if getattr(gen_cls, "needs_anomalies", False) and not real:
            raise ValueError(f"generator {cfg.generator!r} needs few-shot anomalies, but the split gave none "
                             f"for {cfg.dataset}/{cfg.category}")
        use_aux = getattr(gen_cls, "uses_aux_images", False)
        work_dir = Path(cache_dir) / "work" / f"{cfg.generator}-{key}"
        fit = FitData(category=cfg.category, normals=list(normals), anomalies=real, defect_types=defect_types,
                      is_object=adapter.is_object(cfg.category),
                      aux_images=aux_images(adapter, cfg.category, cfg.image_size) if use_aux else [],
                      device=cfg.device, work_dir=work_dir, image_size=cfg.image_size)
        rng = np.random.default_rng(stable_seed(cfg.seed, cfg.category, "fit"))
        _log(progress, f"fitting generator {cfg.generator}")
        gen.fit(fit, rng)
        pairs: list[Pair] = []
        for d in defect_types:
            _log(progress, f"generating {cfg.pairs_per_defect} {d} pairs")
            drng = np.random.default_rng(stable_seed(cfg.seed, cfg.category, d))
            pairs.extend(gen.generate(cfg.pairs_per_defect, d, drng))
        for p in pairs:
            if p.image.shape != (cfg.image_size, cfg.image_size, 3) or p.image.dtype != np.uint8:
                raise ValueError(f"generator {cfg.generator!r} returned an image of shape {p.image.shape} "
                                 f"{p.image.dtype}; expected ({cfg.image_size}, {cfg.image_size}, 3) uint8")
            if p.mask.shape != p.image.shape[:2]:
                raise ValueError(f"generator {cfg.generator!r} returned a mask of shape {p.mask.shape}")
            p.mask = p.mask.astype(bool)
        stats = dict(gen.stats())
        gcache.save_pairs(root, pairs, {"generator": cfg.generator, "category": cfg.category,
                                        "dataset": cfg.dataset, "config": schema.resolved(gen.config),
                                        "seed": cfg.seed, "key": key, "token": gen.cache_token(),
                                        "stats": stats})
    return GeneratedSet(pairs, False, real, root, stats, discarded)


def _torch_threads() -> int:
    import torch

    return torch.get_num_threads()


def run_cell(cfg: CellConfig, cache_dir: str | Path = "results/cache",
             progress: Progress | None = None) -> dict:
    """Run one cell and return its record; failures are recorded, never raised."""
    t0 = time.perf_counter()
    timings: dict[str, float] = {}
    record: dict = {"hash": cfg.hash(), "config": cfg.to_dict(), "versions": package_versions(),
                    "host": platform.node(), "started": datetime.now(timezone.utc).isoformat()}

    def lap(name: str, since: float) -> float:
        now = time.perf_counter()
        timings[name] = round(now - since, 3)
        return now

    try:
        if cfg.threads:
            import torch

            torch.set_num_threads(cfg.threads)
        record["threads"] = _torch_threads()
        t = time.perf_counter()
        adapter = create_dataset(cfg.dataset, cfg.data_root, **cfg.dataset_cfg)
        samples = adapter.samples(cfg.category)
        split = few_shot_split(samples, cfg.split.fraction, cfg.split.mode, cfg.seed)
        normals = load_images(split.train_normals, cfg.image_size)
        ev = split.evaluation
        ev_images = load_images(ev, cfg.image_size)  # read everything before training: bad files fail early
        ev_masks = load_masks(ev, cfg.eval_size) if adapter.has_masks else None
        t = lap("load", t)
        detector = create_detector(cfg.detector, **cfg.detector_cfg)
        pairs: list[Pair] = []
        if cfg.generator != NO_GENERATOR:
            gset = make_pairs(cfg, adapter, split, normals, cache_dir, progress)
            pairs, real = gset.pairs, gset.real
            record["generated_from_cache"] = gset.from_cache
            record["generated_set"] = str(gset.root)
            record["generator_stats"] = gset.stats
            if gset.discarded:
                record["generated_set_discarded"] = gset.discarded
            t = lap("generate", t)
            from .quality import quality_report
            by_def: dict[str, list[Pair]] = {}
            real_by: dict[str, list[Pair]] = {}
            for p in pairs:
                by_def.setdefault(p.defect_type, []).append(p)
            for p in real:
                real_by.setdefault(p.defect_type, []).append(p)
            sources = {d: [normals[p.source] for p in ps] for d, ps in by_def.items()
                       if all(p.source is not None for p in ps)}
            record["quality"] = quality_report(by_def, real_by, sources=sources or None, cfg=cfg.quality)
            t = lap("quality", t)
        if cfg.generator != NO_GENERATOR and detector.uses_pairs and not pairs:
            raise ValueError(f"generator {cfg.generator!r} made no pairs for {cfg.dataset}/{cfg.category}: "
                             f"a detector trained on none would not measure it")
        _log(progress, f"training detector {cfg.detector}")
        ctx = DetectorContext(category=cfg.category, device=cfg.device, seed=cfg.seed,
                              image_size=cfg.image_size,
                              work_dir=Path(cache_dir) / "work" / f"det-{cfg.hash()}")
        detector.fit(normals, pairs if detector.uses_pairs else [], ctx)
        t = lap("fit", t)
        record["weights"] = detector.weights_info()
        scores, maps = detector.predict(ev_images)
        t = lap("predict", t)
        result = evaluate_with_sample(cfg, adapter, ev, np.asarray(scores, np.float64), maps, ev_masks)
        record["metrics"] = result.metrics
        if result.warnings:
            record["warnings"] = list(result.warnings)
        lap("metrics", t)
        record["split"] = {"train_normals": len(split.train_normals), "few_shot": len(split.few_shot),
                           "eval_normals": int((ev["label"] == 0).sum()),
                           "eval_anomalies": int((ev["label"] == 1).sum())}
        record["n_pairs"] = len(pairs)
        record["eval"] = {"image_id": ev["image_id"].tolist(), "label": ev["label"].astype(int).tolist(),
                          "defect_type": ev["defect_type"].tolist(),
                          "score": [float(s) for s in scores]}
        if result.pixel_sample is not None:  # for pixel-metric intervals and paired tests
            record["eval"]["pixel_sample"] = result.pixel_sample
        record["status"] = "ok"
    except Exception as e:  # recorded, so one bad cell never loses the others
        record["status"] = "failed"
        record["error"] = f"{type(e).__name__}: {e}"
        record["traceback"] = traceback.format_exc()
        record["error_is_input"] = isinstance(e, (DataError, ValueError, FileNotFoundError))
    timings["total"] = round(time.perf_counter() - t0, 3)
    record["timings"] = timings
    record["finished"] = datetime.now(timezone.utc).isoformat()
    return record
