"""NSA, Natural Synthetic Anomalies (Schlueter et al., ECCV 2022): rectangular patches from
another normal image, rescaled and Poisson-blended (OpenCV ``seamlessClone``) into the target.

Defaults follow the reference code's MVTec setting (hmsch/natural-synthetic-anomalies,
``patch_ex``): half-widths (fractions of the image side) drawn as 0.03 + Gamma(shape 2, scale
0.05), clipped to [0.03, 0.4]; up to 3 patches (the first always, each further one with p=0.5);
patch rescaled by clip(N(1, 0.5), 0.7, 1.3) keeping its aspect ratio; NORMAL_CLONE; on objects
the source patch must be >= 70 % foreground and lands on the target's foreground.

Labels: the reference labels pixels whose mean absolute change exceeds a tolerance (then median
filtered, optionally a logistic of the change). We need a binary mask, so: mean |change| over
channels > ``change_threshold`` (default 8 of 255, about the logistic mid-points x0 the reference
uses on MVTec), inside the patch area, then morphological open + close. With
``restore_outside_mask`` (default) pixels outside the final mask are reset to the normal, so the
image changes only inside the mask (the faint, sub-threshold part of the Poisson blend is
dropped; the largest step this leaves at the mask edge is ``change_threshold``).
"""
from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

from benchmark.schema import option

from . import common, register_generator
from .base import FitData, Generator, Pair

_MIN_HALF = 3
_MODES = {"normal": cv2.NORMAL_CLONE, "mixed": cv2.MIXED_CLONE}


@dataclass
class NsaConfig:
    half_width_bounds: tuple[tuple[float, float], tuple[float, float]] = ((0.03, 0.4), (0.03, 0.4))
    gamma_params: tuple[float, float, float] = (2.0, 0.05, 0.03)  # shape, scale, lower bound
    num_patches: int = option(3, ge=1)
    resize_bounds: tuple[float, float] = (0.7, 1.3)
    mode: str = option("normal", choices=("normal", "mixed", "mix"),
                       help="Poisson clone mode; mix: a coin flip per pair")
    min_object_pct: float = 0.7
    change_threshold: float = 8.0
    morph_kernel: int = 3
    restore_outside_mask: bool = True
    foreground_only: bool | None = None   # None: True for object categories
    max_attempts: int = 20


@register_generator("nsa")
class Nsa(Generator):
    """Poisson-blended patches from other normals; knows no defect types."""
    config_class = NsaConfig

    version = 1   # needs neither masks nor anomalies; edits a normal (the base defaults)

    def fit(self, data: FitData, rng: np.random.Generator) -> None:
        self._normals = common.check_normals(data, "nsa")
        c = self.config
        fg_only = data.is_object if c.foreground_only is None else c.foreground_only
        self._fg = common.foreground_fn(data) if fg_only else None
        self._fg_cache: dict[int, np.ndarray] = {}

    def _foreground(self, idx: int) -> np.ndarray | None:
        if self._fg is None:
            return None
        if idx not in self._fg_cache:
            self._fg_cache[idx] = common.checked_foreground(self._fg, self._normals[idx])
        return self._fg_cache[idx]

    def _half_width(self, rng, side: int, bounds: tuple[float, float]) -> int:
        k, theta, lb = self.config.gamma_params
        lo = max(_MIN_HALF, round(bounds[0] * side))  # tiny images: Poisson needs a few pixels
        hi = max(lo, round(bounds[1] * side))
        return int(np.clip((lb + rng.gamma(k, theta)) * side, lo, hi))

    def _source_patch(self, src: np.ndarray, src_fg, rng):
        """A rectangle from the source image (>= min_object_pct foreground on objects)."""
        H, W = src.shape[:2]
        (bh, bw) = self.config.half_width_bounds
        hh, hw = self._half_width(rng, H, bh), self._half_width(rng, W, bw)
        hh, hw = min(hh, (H - 2) // 2), min(hw, (W - 2) // 2)
        best, best_share = None, -1.0
        for _ in range(self.config.max_attempts):
            top, left = common.random_top_left(rng, (H, W), (2 * hh, 2 * hw))
            if src_fg is None:
                return src[top:top + 2 * hh, left:left + 2 * hw], None
            share = src_fg[top:top + 2 * hh, left:left + 2 * hw].mean()
            if share > best_share:
                best, best_share = (top, left), share
            if share >= self.config.min_object_pct:
                break
        top, left = best
        box = (slice(top, top + 2 * hh), slice(left, left + 2 * hw))
        return src[box], src_fg[box]

    def _resize(self, patch, pfg, rng, hw):
        lo, hi = self.config.resize_bounds
        s = float(np.clip(rng.normal(1, 0.5), lo, hi))
        H, W = hw
        h, w = patch.shape[:2]
        s = min(s, (H - 2) / h, (W - 2) / w)  # Poisson cloning needs a margin inside the image
        size = (max(2 * _MIN_HALF, round(w * s)), max(2 * _MIN_HALF, round(h * s)))
        patch = cv2.resize(patch, size, interpolation=cv2.INTER_LINEAR)
        if pfg is not None:
            pfg = cv2.resize(pfg.astype(np.uint8), size, interpolation=cv2.INTER_NEAREST).astype(bool)
        return patch, pfg

    def _blend_once(self, out, idx, rng, mode):
        """Clone one patch into ``out`` in place; returns the bool area it may have changed."""
        H, W = out.shape[:2]
        n = len(self._normals)
        sidx = idx if n == 1 else int((idx + 1 + rng.integers(n - 1)) % n)  # another normal
        patch, pfg = self._source_patch(self._normals[sidx], self._foreground(sidx), rng)
        patch, pfg = self._resize(patch, pfg, rng, (H, W))
        h, w = patch.shape[:2]
        # keep a 1 px margin: seamlessClone rejects a region touching the image border
        allowed = self._foreground(idx)
        top, left = common.random_top_left(rng, (H - 2, W - 2), (h, w),
                                           None if allowed is None else allowed[1:-1, 1:-1])
        top, left = top + 1, left + 1
        pmask = np.ones((h, w), bool)
        if pfg is not None:  # as the reference: blend where source or target is object
            dfg = allowed[top:top + h, left:left + w]
            pmask = pfg | dfg
        pmask[0, :] = pmask[-1, :] = pmask[:, 0] = pmask[:, -1] = False  # avoid edge artefacts
        if not pmask.any():
            return np.zeros((H, W), bool)
        full_src = np.zeros_like(out)
        full_src[top:top + h, left:left + w] = patch
        full_mask = np.zeros((H, W), np.uint8)
        full_mask[top:top + h, left:left + w] = pmask * 255
        x, y, bw, bh = cv2.boundingRect(full_mask)
        try:
            # pass a copy: OpenCV 5 writes into the mask argument
            out[:] = cv2.seamlessClone(full_src, out, full_mask.copy(), (x + bw // 2, y + bh // 2),
                                       mode)
        except cv2.error:  # degenerate region OpenCV refuses; skip this patch
            return np.zeros((H, W), bool)
        return full_mask > 0

    def _one(self, idx: int, rng: np.random.Generator):
        img = self._normals[idx]
        c = self.config
        mode = _MODES[c.mode] if c.mode != "mix" else (cv2.NORMAL_CLONE, cv2.MIXED_CLONE)[rng.integers(2)]
        out = img.copy()
        area = np.zeros(img.shape[:2], bool)
        for i in range(c.num_patches):
            if i == 0 or rng.integers(2) > 0:
                area |= self._blend_once(out, idx, rng, mode)
        change = np.abs(out.astype(np.int16) - img.astype(np.int16)).mean(axis=2)
        mask = ((change > c.change_threshold) & area).astype(np.uint8)
        if c.morph_kernel > 1:
            k = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (c.morph_kernel,) * 2)
            mask = cv2.morphologyEx(mask, cv2.MORPH_OPEN, k)
            mask = cv2.morphologyEx(mask, cv2.MORPH_CLOSE, k)
        mask = mask.astype(bool) & area
        if c.restore_outside_mask:
            out[~mask] = img[~mask]
        return out, mask

    def generate(self, n: int, defect_type: str, rng: np.random.Generator) -> list[Pair]:
        common.check_fitted(self)
        pairs = []
        for _ in range(n):
            for _attempt in range(self.config.max_attempts):
                idx = int(rng.integers(len(self._normals)))
                out, mask = self._one(idx, rng)
                if mask.any():
                    break
            else:
                raise RuntimeError("nsa: no visible change after "
                                   f"{self.config.max_attempts} attempts; lower change_threshold "
                                   "or check that the normals are not flat")
            pairs.append(Pair(out, mask, defect_type, source=idx))
        return pairs
