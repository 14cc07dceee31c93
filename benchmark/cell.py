"""One cell of the grid, as steps: data table -> split -> generated set (benchmark.generation) ->
detector -> evaluation (benchmark.evaluation) -> record.

Each step hands the next a plain value; the record is a JSON-able dict whose layout is written
down in docs/records.md and checked on read by benchmark.store.
"""
from __future__ import annotations

import platform
import time
import traceback
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import pandas as pd

from detectors import DetectorContext, create_detector
from generators import Pair

from .config import CellConfig
from .datasets import DataError, create_dataset, load_image, load_mask
from .evaluation import evaluate_with_sample
from .generation import NO_GENERATOR, Progress, log, make_pairs, torch_thread_count
from .malloc import keep_freed_memory
from .record import CellRecord
from .split import Split, few_shot_split
from .versions import package_versions

__all__ = ["NO_GENERATOR", "cell_split", "generate_only", "load_images", "load_masks", "make_pairs", "run_cell"]


def load_images(df: pd.DataFrame, size: int) -> np.ndarray:
    if len(df) == 0:
        return np.zeros((0, size, size, 3), np.uint8)
    return np.stack([load_image(p, size) for p in df["image_path"]])


def load_masks(df: pd.DataFrame, size: int) -> np.ndarray:
    if not len(df):
        return np.zeros((0, size, size), bool)
    return np.stack([load_mask(tuple(mp), size, image_path=ip) for ip, mp in zip(df["image_path"], df["mask_paths"])])


@contextmanager
def torch_threads(n: int):
    """``n`` torch threads inside the block (0: leave as is), the previous count after it."""
    if not n:
        yield
        return
    import torch

    old = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(old)


def cell_split(cfg: CellConfig, samples: pd.DataFrame) -> Split:
    """The cell's few-shot split: from ``seed``, or ``split_seed`` when the stability study pins it."""
    seed = cfg.seed if cfg.split_seed is None else cfg.split_seed
    return few_shot_split(samples, cfg.split.fraction, cfg.split.mode, seed)


def generate_only(cfg: CellConfig, cache_dir: str | Path = "results/cache", progress: Progress | None = None):
    """Make (or find) the cell's generated set and nothing else, with ``cfg.generate_threads``:
    what run_cell does before training, so a later run_cell reads the same set from the cache."""
    keep_freed_memory()
    adapter = create_dataset(cfg.dataset, cfg.data_root, **cfg.dataset_cfg)
    split = cell_split(cfg, adapter.samples(cfg.category))
    normals = load_images(split.train_normals, cfg.image_size)
    with torch_threads(cfg.generate_threads):
        return make_pairs(cfg, adapter, split, normals, cache_dir, progress)


def run_cell(cfg: CellConfig, cache_dir: str | Path = "results/cache",
             progress: Progress | None = None) -> dict:
    """Run one cell and return its record; failures are recorded, never raised."""
    keep_freed_memory()   # speed only (benchmark.malloc)
    t0 = time.perf_counter()
    timings: dict[str, float] = {}
    record = CellRecord(hash=cfg.hash(), config=cfg.to_dict(), versions=package_versions(),
                        host=platform.node(), started=datetime.now(timezone.utc).isoformat())

    def lap(name: str, since: float) -> float:
        now = time.perf_counter()
        timings[name] = round(now - since, 3)
        return now

    try:
        if cfg.threads:
            import torch

            torch.set_num_threads(cfg.threads)
        record.threads = torch_thread_count()
        t = time.perf_counter()
        adapter = create_dataset(cfg.dataset, cfg.data_root, **cfg.dataset_cfg)
        samples = adapter.samples(cfg.category)
        split = cell_split(cfg, samples)
        normals = load_images(split.train_normals, cfg.image_size)
        ev = split.evaluation
        ev_images = load_images(ev, cfg.image_size)  # read everything before training: bad files fail early
        ev_masks = load_masks(ev, cfg.eval_size) if adapter.has_masks else None
        t = lap("load", t)
        detector = create_detector(cfg.detector, **cfg.detector_cfg)
        pairs: list[Pair] = []
        if cfg.generator != NO_GENERATOR:
            with torch_threads(cfg.generate_threads):
                gset = make_pairs(cfg, adapter, split, normals, cache_dir, progress)
            pairs, real = gset.pairs, gset.real
            record.generated_from_cache = gset.from_cache
            record.generated_set = str(gset.root)
            record.generator_stats = gset.stats
            record.generator_timings = gset.timings or None
            if gset.discarded:
                record.generated_set_discarded = gset.discarded
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
            record.quality = quality_report(by_def, real_by, sources=sources or None, cfg=cfg.quality)
            t = lap("quality", t)
        if cfg.generator != NO_GENERATOR and detector.uses_pairs and not pairs:
            raise ValueError(f"generator {cfg.generator!r} made no pairs for {cfg.dataset}/{cfg.category}: "
                             f"a detector trained on none would not measure it")
        log(progress, f"training detector {cfg.detector}")
        det_seed = cfg.seed if cfg.detector_seed is None else cfg.detector_seed
        ctx = DetectorContext(category=cfg.category, device=cfg.device, seed=det_seed,
                              image_size=cfg.image_size,
                              work_dir=Path(cache_dir) / "work" / f"det-{cfg.hash()}",
                              feature_cache=Path(cache_dir) / "features")
        detector.fit(normals, pairs if detector.uses_pairs else [], ctx)
        t = lap("fit", t)
        record.weights = detector.weights_info()
        scores, maps = detector.predict(ev_images)
        t = lap("predict", t)
        result = evaluate_with_sample(cfg, adapter, ev, np.asarray(scores, np.float64), maps, ev_masks)
        record.metrics = result.metrics
        if result.warnings:
            record.warnings = list(result.warnings)
        lap("metrics", t)
        record.split = {"train_normals": len(split.train_normals), "few_shot": len(split.few_shot),
                           "eval_normals": int((ev["label"] == 0).sum()),
                           "eval_anomalies": int((ev["label"] == 1).sum())}
        record.n_pairs = len(pairs)
        record.eval = {"image_id": ev["image_id"].tolist(), "label": ev["label"].astype(int).tolist(),
                          "defect_type": ev["defect_type"].tolist(),
                          "score": [float(s) for s in scores]}
        if result.pixel_sample is not None:  # for pixel-metric intervals and paired tests
            record.eval["pixel_sample"] = result.pixel_sample
        record.status = "ok"
    except Exception as e:  # recorded, so one bad cell never loses the others
        record.status = "failed"
        record.error = f"{type(e).__name__}: {e}"
        record.traceback = traceback.format_exc()
        record.error_is_input = isinstance(e, (DataError, ValueError, FileNotFoundError))
    timings["total"] = round(time.perf_counter() - t0, 3)
    record.timings = timings
    record.finished = datetime.now(timezone.utc).isoformat()
    return record.to_dict()
