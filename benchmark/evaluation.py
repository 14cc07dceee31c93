"""The evaluation protocol: from a detector's raw scores and maps to the table metrics of one cell.

Moved out of ``cell.py`` so that cell.py holds only the steps (issue 11 item 5); the metric
definitions live in ``benchmark.metrics`` and the protocol is written down in EVALUATION.md.
"""
from __future__ import annotations

import cv2
import numpy as np
import pandas as pd

from .config import CellConfig
from .datasets import DataError, DatasetAdapter, load_mask


def resize_maps(maps: np.ndarray, size: int) -> np.ndarray:
    if maps.shape[-2:] == (size, size):
        return maps.astype(np.float32)
    return np.stack([cv2.resize(m.astype(np.float32), (size, size), interpolation=cv2.INTER_LINEAR)
                     for m in maps])


def evaluate(cfg: CellConfig, adapter: DatasetAdapter, ev: pd.DataFrame, scores: np.ndarray,
             maps: np.ndarray, masks: np.ndarray | None) -> dict:
    """Image metrics always; pixel metrics where the data set has masks (else None: not applicable).

    ``masks`` are the evaluation masks at ``eval_size`` (None for image-level data sets)."""
    from . import metrics as M

    labels = ev["label"].to_numpy()
    out: dict = {k: float(v) for k, v in M.image_metrics(labels, scores).items()}
    if masks is not None:
        pix = M.pixel_metrics(masks, resize_maps(maps, cfg.eval_size))
        out.update({k: float(v) for k, v in pix.items()})
    else:
        out.update({k: None for k in ("pixel_auroc", "pixel_ap", "pixel_f1max", "pixel_aupro")})
    groups = sorted(g for g in ev["defect_group"].unique() if g)
    if groups:  # LOCO: each group against all good images, then averaged (its official protocol)
        for g in groups:
            sel = ((ev["label"] == 0) | (ev["defect_group"] == g)).to_numpy()
            out[f"image_auroc_{g}"] = float(M.auroc(labels[sel], scores[sel]))
        out["image_auroc_pooled"] = out["image_auroc"]
        out["image_auroc"] = float(np.mean([out[f"image_auroc_{g}"] for g in groups]))
    defects = adapter.defect_config(cfg.category)
    if defects is not None and adapter.has_masks:  # AU-sPRO, per group then averaged
        maps_e = resize_maps(maps, cfg.eval_size)
        channels = [[(load_mask((p,), cfg.eval_size), _pixel_value(p)) for p in mp] or None
                    for mp in ev["mask_paths"]]
        for g in groups or [""]:
            sel = np.flatnonzero(((ev["label"] == 0) | (ev["defect_group"] == g)).to_numpy())
            res = M.spro(maps_e[sel], [channels[i] for i in sel], defects)
            for lim, v in res.items():
                out[f"pixel_spro@{lim:g}" + (f"_{g}" if g else "")] = float(v)
        for lim in M.SPRO_FPR_LIMITS:
            vals = [out[f"pixel_spro@{lim:g}" + (f"_{g}" if g else "")] for g in groups or [""]]
            out[f"pixel_spro@{lim:g}"] = float(np.mean(vals))
    return out


def _pixel_value(path: str) -> int:
    """A LOCO ground-truth PNG stores its defect's ``pixel_value`` in its non-zero pixels."""
    m = cv2.imread(str(path), cv2.IMREAD_GRAYSCALE)
    if m is None:
        raise DataError(f"cannot read mask {str(path)!r}")
    return int(m.max())
