"""The evaluation protocol: from a detector's raw scores and maps to the table metrics of one cell.

Moved out of ``cell.py`` so that cell.py holds only the steps (issue 11 item 5); the metric
definitions live in ``benchmark.metrics`` and the protocol is written down in docs/evaluation.md.

What is decided here, and why:
- Pixel metrics are computed at ``cfg.eval_size`` (maps resized bilinearly, masks nearest), one
  declared resolution for every detector.
- LOCO (rows with a ``defect_group``): image AUROC / AP / F1-max of each group (logical,
  structural) against all good images, then averaged, as the official LOCO protocol does for
  AUROC; the pooled values stay under ``*_pooled``. AU-sPRO likewise per group, then averaged.
- LOCO's saturation thresholds are pixel counts of the full-resolution ground truth, so each
  ground-truth PNG is read at its native size for its area; the overlap is counted at
  ``eval_size`` (rule in ``metrics.spro``). A defect that vanishes when resized is left out
  with a warning, never a failed cell; a LOCO category without ``defects_config.json`` gets
  image and pixel metrics, AU-sPRO ``None`` and one warning (``check_ready`` finds it at plan
  time, before any training).
- Intervals for pixel metrics need per-image pixel data in the record; a full map per image is
  far too big, so a seeded subsample of K pixels per image is returned. The positions depend
  only on (seed, image_id), never on the generator: two columns of one seed are compared on the
  same pixels (common random numbers).
"""
from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Any, NamedTuple

import cv2
import numpy as np
import pandas as pd

from . import metrics as M
from .config import CellConfig
from .datasets import DataError, DatasetAdapter
from .schema import build, option
from .split import stable_seed

PIXEL_KEYS = ("pixel_auroc", "pixel_ap", "pixel_f1max", "pixel_aupro")
IMAGE_KEYS = ("image_auroc", "image_ap", "image_f1max")


class EvaluationWarning(UserWarning):
    """Part of a cell's evaluation is unavailable (e.g. AU-sPRO without defects_config.json)."""


@dataclass
class EvalConfig:
    """Evaluation options of a cell (read from ``cfg.eval`` when the cell config has that field)."""

    pixel_sample: int = option(256, ge=0, help="pixels sampled per evaluation image and kept in the "
                               "record for pixel-metric intervals (0: none)")


class Evaluation(NamedTuple):
    """What one cell's evaluation gives the record."""

    metrics: dict                 # table metrics, float or None (not applicable)
    pixel_sample: dict | None     # {"k", "score", "label"}; None for image-level data sets
    warnings: list[str]           # one line each, in order, without repeats


def eval_config(cfg: CellConfig) -> EvalConfig:
    """The cell's evaluation options; defaults until the cell config carries an ``eval`` mapping."""
    return build(EvalConfig, dict(getattr(cfg, "eval", None) or {}), where="eval")


def resize_maps(maps: np.ndarray, size: int) -> np.ndarray:
    """Maps at size x size (bilinear): detectors emit maps at their own resolution, pixel
    metrics are declared at one evaluation size."""
    if maps.shape[-2:] == (size, size):
        return maps.astype(np.float32)
    return np.stack([cv2.resize(m.astype(np.float32), (size, size), interpolation=cv2.INTER_LINEAR)
                     for m in maps])


# --------------------------------------------------------------------------- LOCO readiness
def _defects_config(adapter: DatasetAdapter, category: str) -> tuple[list[dict] | None, str | None]:
    """(defects config or None, warning or None). Only a *missing* LOCO defects_config.json is a
    warning (anomalib's own LOCO test trees ship without one); a malformed one stays a DataError."""
    from .datasets.mvtec_loco import MVTecLOCO

    if not adapter.has_masks:
        return None, None
    if isinstance(adapter, MVTecLOCO):
        path = adapter.root / category / "defects_config.json"
        if not path.is_file():
            return None, (f"{adapter.name}/{category}: no defects_config.json at {str(path)!r}; "
                          "AU-sPRO is unavailable (None), image and pixel metrics are computed")
    return adapter.defect_config(category), None


def check_ready(adapter: DatasetAdapter, category: str) -> str | None:
    """Cheap plan-time check of what evaluation will need: a warning line, or None.

    Raises DataError for a defects config that exists but is malformed (bad input, named)."""
    return _defects_config(adapter, category)[1]


# --------------------------------------------------------------------------- protocol
def _group_masks(ev: pd.DataFrame, groups: list[str]) -> dict[str, np.ndarray]:
    """Rows of each group plus all good rows (LOCO: each group is scored against every good image)."""
    good = (ev["label"] == 0).to_numpy()
    return {g: good | (ev["defect_group"] == g).to_numpy() for g in groups}


def _image_metrics(out: dict, labels: np.ndarray, scores: np.ndarray, groups: dict[str, np.ndarray]) -> None:
    out.update({k: float(v) for k, v in M.image_metrics(labels, scores).items()})
    if not groups:
        return
    for g, sel in groups.items():
        for k, v in M.image_metrics(labels[sel], scores[sel]).items():
            out[f"{k}_{g}"] = float(v)
    for k in IMAGE_KEYS:
        out[f"{k}_pooled"] = out[k]
        out[k] = float(np.mean([out[f"{k}_{g}"] for g in groups]))


def _read_channel(path: str, size: int) -> tuple[np.ndarray, int, int] | str:
    """One LOCO ground-truth PNG: (mask at size x size, pixel_value, area at native size), or a
    warning line when it holds no defect pixel at either size. Its non-zero pixels store the
    defect's ``pixel_value``; the area is counted at native size because saturation thresholds
    are in full-resolution pixels."""
    m = cv2.imread(str(path), cv2.IMREAD_GRAYSCALE)
    if m is None:
        raise DataError(f"cannot read mask {str(path)!r}")
    gt_area = int(np.count_nonzero(m))
    if gt_area == 0:
        return f"ground-truth mask {str(path)!r} holds no defect pixel; left out of AU-sPRO"
    small = m if m.shape == (size, size) else cv2.resize(m, (size, size), interpolation=cv2.INTER_NEAREST)
    small = small > 0
    if not small.any():
        return (f"defect {str(path)!r} ({gt_area} px at {m.shape[0]}x{m.shape[1]}) vanishes at the "
                f"evaluation size {size}x{size}: its sPRO is NaN and it is left out of AU-sPRO")
    return small, int(m.max()), gt_area


def _spro_metrics(out: dict, cfg: CellConfig, ev: pd.DataFrame, maps_e: np.ndarray,
                  defects: list[dict] | None, groups: dict[str, np.ndarray]) -> None:
    names = list(groups) or [""]
    keys = [f"pixel_spro@{lim:g}" + (f"_{g}" if g else "") for g in names for lim in M.SPRO_FPR_LIMITS]
    if defects is None:
        out.update(dict.fromkeys(keys, None))
        out.update({f"pixel_spro@{lim:g}": None for lim in M.SPRO_FPR_LIMITS})
        return
    known = {int(d["pixel_value"]) for d in defects}
    channels: list[list | None] = []
    for label, paths in zip(ev["label"], ev["mask_paths"]):
        if not label:
            channels.append(None)
            continue
        chans = []
        for p in paths:
            got = _read_channel(p, cfg.eval_size)
            if isinstance(got, str):
                warnings.warn(got, EvaluationWarning, stacklevel=2)
                continue
            if got[1] not in known:
                raise DataError(f"ground-truth mask {str(p)!r} has pixel_value {got[1]}, which is not "
                                f"in defects_config.json (known: {sorted(known)})")
            chans.append(got)
        channels.append(chans)
    for g in names:
        sel = np.flatnonzero(groups[g]) if g else np.arange(len(ev))
        res = M.spro(maps_e[sel], [channels[i] for i in sel], defects)
        for lim, v in res.items():
            out[f"pixel_spro@{lim:g}" + (f"_{g}" if g else "")] = float(v)
    if groups:
        for lim in M.SPRO_FPR_LIMITS:
            out[f"pixel_spro@{lim:g}"] = float(np.mean([out[f"pixel_spro@{lim:g}_{g}"] for g in names]))


def pixel_sample(cfg: CellConfig, ev: pd.DataFrame, maps_e: np.ndarray, masks: np.ndarray,
                 k: int) -> dict:
    """K uniformly drawn pixels per evaluation image (without replacement), map score to 6
    significant digits and ground-truth label, for per-image bootstrap intervals of pixel metrics.

    Positions are seeded from (cfg.seed, image_id) only, so every generator and detector of a
    seed is sampled at the same pixels of the same image. Significant digits, not decimals: a
    confident detector's normal pixels sit far below 1e-5 (a linear head on the frozen features:
    80-99 % of them), and rounding to 5 decimals made them ties at 0, which put the sampled pixel
    AUROC 2-20 points under the exact one (record schema 2)."""
    h, w = maps_e.shape[1:]
    k = min(int(k), h * w)
    scores, labels = [], []
    for i, image_id in enumerate(ev["image_id"]):
        rng = np.random.default_rng(stable_seed("pixel_sample", cfg.seed, image_id))
        pos = rng.choice(h * w, size=k, replace=False)
        scores.append([float(f"{v:.6g}") for v in maps_e[i].reshape(-1)[pos].astype(np.float64)])
        labels.append(masks[i].reshape(-1)[pos].astype(int).tolist())
    return {"k": k, "score": scores, "label": labels}


def evaluate_with_sample(cfg: CellConfig, adapter: DatasetAdapter, ev: pd.DataFrame, scores: np.ndarray,
                         maps: np.ndarray, masks: np.ndarray | None) -> Evaluation:
    """Image metrics always; pixel metrics where the data set has masks (else None: not
    applicable); LOCO per-group metrics and AU-sPRO; the pixel subsample for intervals.

    ``ev`` is the evaluation table (rows in the order of ``scores`` / ``maps``), ``masks`` the
    evaluation masks at ``eval_size`` (None for image-level data sets). Warnings (undefined
    metrics, vanished defects, missing defects config) are collected, not raised."""
    econf = eval_config(cfg)
    scores = np.asarray(scores, np.float64)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        defects, missing = _defects_config(adapter, cfg.category)
        if missing:
            warnings.warn(missing, EvaluationWarning, stacklevel=1)
        labels = ev["label"].to_numpy()
        groups = _group_masks(ev, sorted(g for g in ev["defect_group"].unique() if g))
        out: dict[str, Any] = {}
        _image_metrics(out, labels, scores, groups)
        sample = None
        if masks is None:
            out.update(dict.fromkeys(PIXEL_KEYS, None))
        else:
            maps_e = resize_maps(maps, cfg.eval_size)
            out.update({k: float(v) for k, v in M.pixel_metrics(masks, maps_e).items()})
            if econf.pixel_sample:
                sample = pixel_sample(cfg, ev, maps_e, masks, econf.pixel_sample)
            if defects is not None or missing:
                _spro_metrics(out, cfg, ev, maps_e, defects, groups)
    lines = list(dict.fromkeys(str(w.message) for w in caught))
    return Evaluation(out, sample, lines)


def evaluate(cfg: CellConfig, adapter: DatasetAdapter, ev: pd.DataFrame, scores: np.ndarray,
             maps: np.ndarray, masks: np.ndarray | None) -> dict:
    """The metrics dict only, warnings re-emitted (for callers that do not record the sample yet)."""
    res = evaluate_with_sample(cfg, adapter, ev, scores, maps, masks)
    for line in res.warnings:
        warnings.warn(line, EvaluationWarning, stacklevel=2)
    return res.metrics
