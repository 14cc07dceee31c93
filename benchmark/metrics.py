"""Table metrics: exact AUROC / AP / F1-max, AUPRO and LOCO AU-sPRO (see docs/evaluation.md).

Pure functions over arrays, float64 on raw scores, no binning. Speed comes from never arg-sorting
the ~10M normal pixels: they are sorted by value only (``np.sort``), the few anomalous pixels are
arg-sorted with their weights, and curve points are read off with ``searchsorted``. Every point
is taken at the end of a run of tied scores, so the results equal scikit-learn / the MVTec
evaluation scripts exactly. Undefined cases (one class) give NaN plus ``UndefinedMetricWarning``.
"""
from __future__ import annotations

import json
import math
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from scipy import ndimage

__all__ = [
    "SPRO_FPR_LIMITS",
    "DefectConfig",
    "UndefinedMetricWarning",
    "aupro",
    "auroc",
    "average_precision",
    "f1_max",
    "image_metrics",
    "load_defects_config",
    "match_size",
    "pixel_metrics",
    "spro",
]

SPRO_FPR_LIMITS = (0.01, 0.05, 0.1, 0.3, 1.0)
# 8-connectivity, as the MVTec AD script (scipy.ndimage.label, 3x3 ones) and anomalib
# (cv2.connectedComponents, default connectivity 8) both use.
_EIGHT_CONNECTED = np.ones((3, 3), dtype=bool)


class UndefinedMetricWarning(UserWarning):
    """A metric is undefined for this input (e.g. one class only); the value is NaN."""


# --------------------------------------------------------------------------- helpers
def _to_numpy(x: Any) -> np.ndarray:
    """Accept numpy arrays, torch tensors and sequences."""
    if hasattr(x, "detach"):  # torch.Tensor without importing torch
        x = x.detach().cpu().numpy()
    return np.asarray(x)


def _as_labels(labels: Any, name: str = "labels") -> np.ndarray:
    """Binary labels as bool; bool or {0, 1} numbers accepted, anything else is a ValueError."""
    y = _to_numpy(labels)
    if y.dtype == bool:
        return y
    if y.size and not np.isin(y, (0, 1)).all():
        bad = np.unique(y[~np.isin(y, (0, 1))])[:5]
        raise ValueError(f"{name} must be binary (bool or 0/1), found values such as {bad.tolist()}")
    return y.astype(bool)


def _as_scores(scores: Any, name: str = "scores") -> np.ndarray:
    s = _to_numpy(scores)
    if s.dtype != bool and not np.issubdtype(s.dtype, np.number):
        raise ValueError(f"{name} must be numeric, got dtype {s.dtype}")
    s = s.astype(np.float64, copy=False)
    if np.isnan(s).any():
        raise ValueError(f"{name} contains NaN")
    return s


def _pair(labels: Any, scores: Any) -> tuple[np.ndarray, np.ndarray]:
    y, s = _as_labels(labels), _as_scores(scores)
    if y.shape != s.shape:
        raise ValueError(f"labels and scores must have the same shape, got {y.shape} and {s.shape}")
    return y.ravel(), s.ravel()


def _undefined(metric: str, why: str) -> float:
    warnings.warn(f"{metric} is undefined: {why}; returning NaN", UndefinedMetricWarning, stacklevel=3)
    return math.nan


@dataclass(frozen=True)
class _Split:
    """Scores of positives and negatives, each sorted ascending (by value only: fast)."""

    pos: np.ndarray
    neg: np.ndarray

    @classmethod
    def of(cls, y: np.ndarray, s: np.ndarray) -> _Split:
        return cls(np.sort(s[y]), np.sort(s[~y]))

    def one_class(self, metric: str) -> bool:
        if self.pos.size == 0 or self.neg.size == 0:
            _undefined(metric, "only one class present in labels")
            return True
        return False

    def at_positive_thresholds(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """For each distinct positive score t (descending): tp(>=t), fp(>=t), #positives == t.

        Every threshold that changes recall is a positive score, so these are the only points
        AP and F1-max need (a threshold between them only adds false positives).
        """
        pos, neg = self.pos, self.neg
        start = np.flatnonzero(np.r_[True, pos[1:] != pos[:-1]])  # first index of each run
        t = pos[start]
        run = np.diff(np.r_[start, pos.size])
        tp = pos.size - start
        fp = neg.size - np.searchsorted(neg, t, side="left")
        return tp[::-1], fp[::-1], run[::-1]


def _auroc(sp: _Split) -> float:
    # Mann-Whitney U with mid-ranks = trapezoidal ROC area with diagonal tie segments (sklearn).
    lo = np.searchsorted(sp.neg, sp.pos, side="left").astype(np.int64)
    hi = np.searchsorted(sp.neg, sp.pos, side="right").astype(np.int64)
    twice_u = int(lo.sum()) * 2 + int((hi - lo).sum())  # exact integers
    return twice_u / (2.0 * sp.pos.size * sp.neg.size)


def _ap(sp: _Split) -> float:
    tp, fp, run = sp.at_positive_thresholds()
    return float(np.sum(run / sp.pos.size * (tp / (tp + fp))))


def _f1max(sp: _Split) -> float:
    tp, fp, _ = sp.at_positive_thresholds()
    return float(np.max(2.0 * tp / (tp + fp + sp.pos.size)))


# --------------------------------------------------------------------------- public: ranking
def auroc(labels: Any, scores: Any) -> float:
    """Exact ROC AUC, equal to ``sklearn.metrics.roc_auc_score`` (ties count one half)."""
    sp = _Split.of(*_pair(labels, scores))
    return math.nan if sp.one_class("AUROC") else _auroc(sp)


def average_precision(labels: Any, scores: Any) -> float:
    """Step-wise average precision, equal to ``sklearn.metrics.average_precision_score``."""
    sp = _Split.of(*_pair(labels, scores))
    return math.nan if sp.one_class("AP") else _ap(sp)


def f1_max(labels: Any, scores: Any) -> float:
    """Best F1 over every distinct score used as threshold (``score >= t`` is positive)."""
    sp = _Split.of(*_pair(labels, scores))
    return math.nan if sp.one_class("F1-max") else _f1max(sp)


# --------------------------------------------------------------------------- curves
def _trapezoid_to(x: np.ndarray, y: np.ndarray, x_max: float) -> float:
    """Trapezoid area under (x, y), x non-decreasing, up to x_max (end point interpolated)."""
    i = int(np.searchsorted(x, x_max, side="right")) - 1  # last point with x <= x_max
    if i < 0:
        return 0.0
    area = float(np.sum(np.diff(x[: i + 1]) * (y[1 : i + 1] + y[:i]) / 2.0))
    if x[i] < x_max and i + 1 < x.size:
        y_lim = y[i] + (y[i + 1] - y[i]) * (x_max - x[i]) / (x[i + 1] - x[i])
        area += (x_max - x[i]) * (y[i] + y_lim) / 2.0
    return area


def _overlap_curve(
    neg_sorted: np.ndarray, pos: np.ndarray, weight: np.ndarray, fpr_max: float
) -> tuple[np.ndarray, np.ndarray]:
    """Exact (FPR, sum of weights of positives with score >= t) curve, up to just past fpr_max.

    Curve points change only at thresholds; between two distinct normal scores the FPR is flat,
    so the polyline through every distinct score equals, for each distinct normal score t, the
    point just above its tie run (> t) followed by the point at its end (>= t). Normals below
    the score where FPR first exceeds fpr_max are not needed and never touched.
    """
    n = neg_sorted.size
    order = np.argsort(pos, kind="stable")
    pos_sorted = pos[order]
    suffix = np.r_[np.cumsum(weight[order][::-1])[::-1], 0.0]  # suffix[i] = sum(weight[i:])
    k = min(n, math.floor(fpr_max * n) + 1)  # FPR(>= k-th largest) > fpr_max
    top = neg_sorted[n - k :]
    first = np.searchsorted(neg_sorted, top[0], side="left")  # whole tie run of the k-th largest
    top = neg_sorted[first:][::-1]  # descending
    new = np.r_[True, top[1:] != top[:-1]]
    t = top[new]
    n_ge = np.r_[np.flatnonzero(new)[1:], top.size]  # normals >= t (counted within `top`)
    n_gt = np.flatnonzero(new)
    w_ge = suffix[np.searchsorted(pos_sorted, t, side="left")]
    w_gt = suffix[np.searchsorted(pos_sorted, t, side="right")]
    fpr = np.empty(2 * t.size + 1)
    w = np.empty_like(fpr)
    fpr[0], w[0] = 0.0, 0.0
    fpr[1::2], fpr[2::2] = n_gt / n, n_ge / n
    w[1::2], w[2::2] = w_gt, w_ge
    return fpr, w


def _check_limit(fpr_limit: float) -> float:
    fpr_limit = float(fpr_limit)
    if not 0.0 < fpr_limit <= 1.0:
        raise ValueError(f"fpr_limit must be in (0, 1], got {fpr_limit}")
    return fpr_limit


def match_size(masks: Any, shape: tuple[int, int]) -> np.ndarray:
    """Resize bool masks [N,H,W] (or [H,W]) to ``shape`` nearest-neighbour (cv2 INTER_NEAREST rule)."""
    m = _to_numpy(masks)
    h, w = m.shape[-2:]
    oh, ow = int(shape[0]), int(shape[1])
    if (h, w) == (oh, ow):
        return m
    rows = np.minimum((np.arange(oh) * h) // oh, h - 1)
    cols = np.minimum((np.arange(ow) * w) // ow, w - 1)
    return m[..., rows[:, None], cols[None, :]]


def _masks_maps(masks: Any, maps: Any) -> tuple[np.ndarray, np.ndarray]:
    s = _as_scores(maps, "maps")
    y = _as_labels(masks, "masks")
    if s.ndim == 2:
        s = s[None]
    if y.ndim == 2:
        y = y[None]
    if s.ndim == 4 and s.shape[1] == 1:
        s = s[:, 0]
    if y.ndim == 4 and y.shape[1] == 1:
        y = y[:, 0]
    if s.ndim != 3 or y.ndim != 3 or y.shape[0] != s.shape[0]:
        raise ValueError(f"masks and maps must be [N,H,W] with the same N, got {y.shape} and {s.shape}")
    return match_size(y, s.shape[1:]), s


def _aupro(y: np.ndarray, s: np.ndarray, fpr_limit: float, neg_sorted: np.ndarray | None) -> float:
    regions = np.zeros(y.shape, dtype=np.int64)
    n_regions = 0
    for i in np.flatnonzero(y.reshape(y.shape[0], -1).any(axis=1)):
        lab, k = ndimage.label(y[i], structure=_EIGHT_CONNECTED)
        regions[i] = np.where(lab > 0, lab + n_regions, 0)
        n_regions += k
    if n_regions == 0:
        return _undefined("AUPRO", "no anomalous region in the masks")
    if y.all():
        return _undefined("AUPRO", "no normal pixel in the masks")
    fg = regions.ravel()
    fg = fg[fg > 0]
    size = np.bincount(fg, minlength=n_regions + 1).astype(np.float64)
    pos = s[y]
    weight = 1.0 / size[regions[y]]
    if neg_sorted is None:
        neg_sorted = np.sort(s[~y])
    fpr, pro = _overlap_curve(neg_sorted, pos, weight, fpr_limit)
    return float(_trapezoid_to(fpr, pro / n_regions, fpr_limit) / fpr_limit)


def aupro(masks: Any, maps: Any, fpr_limit: float = 0.3) -> float:
    """Normalised area under the PRO curve up to ``fpr_limit`` (MVTec AD definition, exact).

    Regions are 8-connected components of each ground-truth mask (as in the MVTec script and
    anomalib); masks of another resolution are resized nearest-neighbour to the maps.
    """
    fpr_limit = _check_limit(fpr_limit)
    y, s = _masks_maps(masks, maps)
    return _aupro(y, s, fpr_limit, None)


# --------------------------------------------------------------------------- convenience
def image_metrics(labels: Any, scores: Any) -> dict[str, float]:
    """Image-level AUROC, AP and F1-max as fractions (NaN where undefined)."""
    sp = _Split.of(*_pair(labels, scores))
    if sp.one_class("image metrics"):
        return {"image_auroc": math.nan, "image_ap": math.nan, "image_f1max": math.nan}
    return {"image_auroc": _auroc(sp), "image_ap": _ap(sp), "image_f1max": _f1max(sp)}


def pixel_metrics(masks: Any, maps: Any, fpr_limit: float = 0.3) -> dict[str, float]:
    """Pixel-level AUROC, AP, F1-max (flattened maps) and AUPRO, sharing one sort of the normals."""
    fpr_limit = _check_limit(fpr_limit)
    y, s = _masks_maps(masks, maps)
    sp = _Split.of(y.ravel(), s.ravel())
    keys = ("pixel_auroc", "pixel_ap", "pixel_f1max", "pixel_aupro")
    if sp.one_class("pixel metrics"):
        return dict.fromkeys(keys, math.nan)
    return {
        "pixel_auroc": _auroc(sp),
        "pixel_ap": _ap(sp),
        "pixel_f1max": _f1max(sp),
        "pixel_aupro": _aupro(y, s, fpr_limit, sp.neg),
    }


# --------------------------------------------------------------------------- LOCO sPRO
@dataclass(frozen=True)
class DefectConfig:
    """One entry of MVTec LOCO's ``defects_config.json``."""

    defect_name: str
    pixel_value: int
    saturation_threshold: float
    relative_saturation: bool

    def saturation_area(self, defect_area: int) -> float:
        """Pixels at which a defect counts as fully found, at the ground truth's own resolution.

        Relative: ``int(t * area)``; absolute: ``min(t, area)``; LOCO's thresholds are in pixels
        of the full-resolution PNGs, so ``defect_area`` must be counted there (see ``spro`` for
        the rule at another evaluation size). Never below one pixel (a zero would make sPRO 0/0).
        """
        if self.relative_saturation:
            sat = int(self.saturation_threshold * defect_area)
        else:
            sat = min(self.saturation_threshold, defect_area)
        return max(float(sat), 1.0)


def load_defects_config(config: Any) -> dict[int, DefectConfig]:
    """pixel_value -> DefectConfig from a path, a list of json entries, or such a mapping."""
    source = "defects_config"
    if isinstance(config, (str, Path)):
        source = str(config)
        try:
            config = json.loads(Path(config).read_text())
        except (OSError, json.JSONDecodeError) as err:
            raise ValueError(f"cannot read defects config {source}: {err}") from err
    if isinstance(config, Mapping):
        if all(isinstance(v, DefectConfig) for v in config.values()):
            return {int(k): v for k, v in config.items()}
        config = list(config.values())
    out: dict[int, DefectConfig] = {}
    for i, entry in enumerate(config):
        if isinstance(entry, DefectConfig):
            out[entry.pixel_value] = entry
            continue
        try:
            dc = DefectConfig(
                defect_name=str(entry["defect_name"]),
                pixel_value=int(entry["pixel_value"]),
                saturation_threshold=float(entry["saturation_threshold"]),
                relative_saturation=bool(entry["relative_saturation"]),
            )
        except (KeyError, TypeError, ValueError) as err:
            raise ValueError(f"{source}: entry {i} lacks a valid field ({err!r})") from err
        out[dc.pixel_value] = dc
    return out


GtChannels = Sequence[tuple]  # per image: [(bool mask, pixel_value[, gt_area]), ...]


def spro(
    maps: Any,
    gt_channels: Sequence[GtChannels | None],
    defects_config: Any,
    fpr_limits: Sequence[float] = SPRO_FPR_LIMITS,
) -> dict[float, float]:
    """AU-sPRO of MVTec LOCO, exact over every distinct score; returns {fpr_limit: value}.

    maps: float [N,H,W]. gt_channels: one entry per image; a good image has ``None`` or ``[]``,
    an anomalous image a list of ``(mask, pixel_value)``, one per ground-truth PNG (a channel
    may hold several blobs: it is one defect). ``pixel_value`` keys ``defects_config`` (path,
    json list, or mapping). sPRO(t) = mean over all defects of min(|map>t & defect| / sat, 1);
    FPR pools pixels that are defect-free in every channel of every image. Each AUC is
    divided by its limit.

    Scale rule. LOCO's saturation thresholds are pixel counts of the full-resolution ground
    truth, while overlaps are counted at the maps' size. A defect's saturation area is computed
    from its area at ground-truth resolution ``A_gt`` (the mask's own pixels, or the optional
    third tuple element ``gt_area`` when the caller resized the mask already), then carried to
    the maps' size by the defect's own area ratio: ``sat = sat_gt * A / A_gt`` with ``A`` its
    area after nearest-neighbour resizing. This keeps the saturated *fraction* of each defect
    what it is at full resolution, so the result equals sPRO computed at full resolution on the
    map upsampled (nearest) whenever the defect is made of whole map pixels, and approximates it
    otherwise (discs at 128 px, maps at 32 px: within 0.05, mean -0.02, of sPRO at 128 px on the
    nearest-upsampled map). Resizing masks first and applying full-resolution pixel thresholds
    to the smaller areas asks for far more than the threshold and understates sPRO (same check:
    mean -0.11; issue 9 saw 0.107 instead of 0.386). Scaling by the image's area ratio instead
    of the defect's own gave the same accuracy but lets a thin defect's threshold exceed its
    resized area; the own ratio keeps relative saturation exactly relative. A fractional
    ``sat`` is honoured exactly (the pixel that crosses it completes the defect).
    A defect with no pixel left after resizing has no sPRO at this size: it is left out of the
    mean with an ``UndefinedMetricWarning`` naming it (NaN overall only if none is left).
    """
    cfg = load_defects_config(defects_config)
    s = _as_scores(maps, "maps")
    if s.ndim != 3:
        raise ValueError(f"maps must be [N,H,W], got shape {s.shape}")
    if len(gt_channels) != s.shape[0]:
        raise ValueError(f"gt_channels has {len(gt_channels)} entries for {s.shape[0]} maps")
    limits = [_check_limit(f) for f in fpr_limits]
    h, w = s.shape[1:]
    normal = np.ones(s.shape, dtype=bool)
    pos_scores, pos_weights = [], []
    n_defects = 0
    for i, channels in enumerate(gt_channels):
        for j, entry in enumerate(channels or []):
            if len(entry) not in (2, 3):
                raise ValueError(f"gt_channels[{i}][{j}] must be (mask, pixel_value[, gt_area])")
            mask, value = entry[0], entry[1]
            m = _as_labels(mask, f"gt_channels[{i}][{j}]")
            if m.ndim != 2:
                raise ValueError(f"gt_channels[{i}][{j}] must be a 2-D mask, got shape {m.shape}")
            if int(value) not in cfg:
                raise ValueError(f"gt_channels[{i}][{j}]: pixel_value {value} not in defects_config")
            gt_area = int(entry[2]) if len(entry) == 3 else int(m.sum())
            if gt_area <= 0:
                raise ValueError(f"gt_channels[{i}][{j}] is empty (no defect pixel)")
            m = match_size(m, (h, w))
            area = int(m.sum())
            if area == 0:
                _undefined(f"sPRO of gt_channels[{i}][{j}] (pixel_value {value})",
                           f"its {gt_area} ground-truth pixels vanish when resized to {h}x{w}; "
                           "it is left out of the mean")
                continue
            sat = cfg[int(value)].saturation_area(gt_area) * area / gt_area
            # The first `sat` pixels of a defect in descending score order each add 1/sat; the
            # rest add 0. At the end of any tie run this sums to min(tp, sat) / sat exactly.
            ds = np.sort(s[i][m])[::-1]
            wt = np.zeros(area)
            whole = min(int(sat), area)
            wt[:whole] = 1.0 / sat
            if whole < area:  # a fractional saturation area: the crossing pixel completes it
                wt[whole] = (sat - whole) / sat
            pos_scores.append(ds)
            pos_weights.append(wt)
            normal[i] &= ~m
            n_defects += 1
    if n_defects == 0:
        _undefined("sPRO", "no defect channel given (or every one vanished when resized)")
        return dict.fromkeys(limits, math.nan)
    if not normal.any():
        _undefined("sPRO", "no defect-free pixel")
        return dict.fromkeys(limits, math.nan)
    neg_sorted = np.sort(s[normal])
    fpr, spro_sum = _overlap_curve(
        neg_sorted, np.concatenate(pos_scores), np.concatenate(pos_weights), max(limits)
    )
    curve = spro_sum / n_defects
    return {f: float(_trapezoid_to(fpr, curve, f) / f) for f in limits}
