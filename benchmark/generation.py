"""The generated set of a cell: fit the generator on the few-shot half and generate, or read the
set from the cache (benchmark.cache) when its key matches.

Seeds: fit and sampling seeds come from (seed, category[, defect type]) only, never the
generator's name, so within one seed every generator starts from the same random state
(common random numbers) and a renamed variant gives the same pairs. The key holds the
generator's RESOLVED config, so editing a preset file such as configs/dhdiff_quick.yaml
regenerates instead of serving stale pairs.
"""
from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np

from generators import FitData, Pair, create_generator, get_generator_class

from . import cache as gcache
from . import schema
from .config import CellConfig
from .datasets import DatasetAdapter, load_image, load_mask
from .split import Split, stable_seed
from .store import file_lock

NO_GENERATOR = "none"  # the "no augmentation" column: unsupervised detectors train on normals only

Progress = Callable[[str], None]


def log(progress: Progress | None, msg: str) -> None:
    if progress is not None:
        progress(msg)


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
    # What making the set cost when it was made (kept in its manifest, so a cell that reads the
    # set from the cache still reports it): fit_s, generate_s, threads. Empty for sets cached
    # before this was recorded.
    timings: dict | None = None


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
                   on_wait=lambda: log(progress, "waiting for another process generating this set")):
        gcache.clean_stale(root)
        discarded = None
        try:
            cached = gcache.load_pairs(root)
        except gcache.CacheError as e:
            discarded = str(e)
            log(progress, f"{e}; discarded, generating again")
            gcache.discard(root)
            cached = None
        if cached is not None:
            log(progress, f"generated set from cache {root}")
            meta = json.loads((root / "manifest.json").read_text())
            return GeneratedSet(cached, True, real, root, meta.get("stats", {}), timings=meta.get("timings") or {})
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
        log(progress, f"fitting generator {cfg.generator}")
        t0 = time.perf_counter()
        gen.fit(fit, rng)
        t1 = time.perf_counter()
        pairs: list[Pair] = []
        for d in defect_types:
            log(progress, f"generating {cfg.pairs_per_defect} {d} pairs")
            drng = np.random.default_rng(stable_seed(cfg.seed, cfg.category, d))
            pairs.extend(gen.generate(cfg.pairs_per_defect, d, drng))
        timings = {"fit_s": round(t1 - t0, 3), "generate_s": round(time.perf_counter() - t1, 3),
                   "threads": torch_thread_count()}
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
                                        "stats": stats, "timings": timings})
    return GeneratedSet(pairs, False, real, root, stats, discarded, timings)


def torch_thread_count() -> int:
    import torch

    return torch.get_num_threads()
