"""Crop-and-paste (Lin et al., ICME 2021): the few-shot real defects are cut out through their
masks and pasted onto random normal images, so the synthetic defects are real ones in new places.

The paper gives no jitter values; ours (documented defaults, all configurable): scale
U[0.8, 1.2], rotation U[-90, 90] deg, horizontal and vertical flips with p = 0.5 each. On object
categories the paste location is drawn on the foreground (FitData.foreground, else
``common.estimate_foreground``) and the placement with the largest foreground overlap out of
``placement_tries`` is kept.
"""
from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass

import cv2
import numpy as np

from benchmark.schema import option

from . import common, register_generator
from .base import FitData, Generator, Pair


@dataclass
class CropPasteConfig:
    scale: tuple[float, float] = (0.8, 1.2)
    rotation: tuple[float, float] = (-90, 90)
    flip_p: float = 0.5
    foreground_only: bool | None = None   # None: True for object categories
    placement_tries: int = option(10, ge=1)
    min_foreground_overlap: float = 0.9   # stop trying once this share of the defect is on it

    def __post_init__(self):
        if not 0 < self.scale[0] <= self.scale[1]:
            raise ValueError(f"crop_paste: scale must satisfy 0 < lo <= hi, got {self.scale}")


@register_generator("crop_paste")
class CropPaste(Generator):
    """Real defects moved onto normals; pairs keep their source's defect type."""
    config_class = CropPasteConfig

    needs_masks = True
    needs_anomalies = True
    version = 1

    def fit(self, data: FitData, rng: np.random.Generator) -> None:
        self._normals = common.check_normals(data, "crop_paste")
        sources: dict[str, list[tuple[np.ndarray, np.ndarray]]] = defaultdict(list)
        for i, p in enumerate(data.anomalies):
            img = common.check_image(p.image, f"crop_paste: FitData.anomalies[{i}].image")
            mask = np.asarray(p.mask)
            if mask.shape != img.shape[:2]:
                raise ValueError(f"crop_paste: FitData.anomalies[{i}].mask has shape {mask.shape}, "
                                 f"image has {img.shape[:2]}")
            if not mask.any():
                continue  # an image-level label only; nothing to cut out
            sources[p.defect_type].append(common.crop_to_mask(img, mask.astype(bool)))
        if not sources:
            raise ValueError("crop_paste: FitData.anomalies holds no anomaly with a non-empty mask "
                             f"(category {data.category!r})")
        self._sources = dict(sources)
        fg_only = data.is_object if self.config.foreground_only is None else self.config.foreground_only
        self._fg = common.foreground_fn(data) if fg_only else None
        self._fg_cache: dict[int, np.ndarray] = {}

    def _jitter(self, patch: np.ndarray, pmask: np.ndarray, rng: np.random.Generator):
        c = self.config
        patch0, pmask0 = patch, pmask
        if rng.random() < c.flip_p:
            patch, pmask = patch[:, ::-1], pmask[:, ::-1]
        if rng.random() < c.flip_p:
            patch, pmask = patch[::-1], pmask[::-1]
        s = rng.uniform(*c.scale)
        h, w = pmask.shape
        size = (max(1, round(w * s)), max(1, round(h * s)))
        patch = cv2.resize(np.ascontiguousarray(patch), size, interpolation=cv2.INTER_LINEAR)
        m = cv2.resize(np.ascontiguousarray(pmask, dtype=np.uint8), size, interpolation=cv2.INTER_NEAREST)
        angle = rng.uniform(*c.rotation)
        patch = common.rotate_expand(patch, angle, cv2.INTER_LINEAR, cv2.BORDER_REPLICATE)
        m = common.rotate_expand(m, angle, cv2.INTER_NEAREST).astype(bool)
        if not m.any():  # degenerate sliver: keep it unrotated
            return np.ascontiguousarray(patch0), pmask0.astype(bool)
        return common.crop_to_mask(patch, m)

    def _fit_into(self, patch, m, hw):
        """Shrink a patch that is larger than the target image."""
        H, W = hw
        f = min(1.0, H / m.shape[0], W / m.shape[1])
        if f >= 1.0:
            return patch, m
        size = (max(1, int(m.shape[1] * f)), max(1, int(m.shape[0] * f)))
        patch = cv2.resize(patch, size, interpolation=cv2.INTER_AREA)
        m2 = cv2.resize(m.astype(np.uint8), size, interpolation=cv2.INTER_NEAREST).astype(bool)
        return (patch, m2) if m2.any() else (patch, np.ones(m2.shape, bool))

    def generate(self, n: int, defect_type: str, rng: np.random.Generator) -> list[Pair]:
        common.check_fitted(self)
        if defect_type not in self._sources:
            raise ValueError(f"crop_paste: no few-shot anomaly of defect type {defect_type!r}; "
                             f"have {sorted(self._sources)}")
        sources = self._sources[defect_type]
        pairs = []
        for _ in range(n):
            idx = int(rng.integers(len(self._normals)))
            img = self._normals[idx]
            src, smask = sources[int(rng.integers(len(sources)))]
            patch, m = self._fit_into(*self._jitter(src, smask, rng), img.shape[:2])
            top, left = self._place(idx, img, m, rng)
            out, mask = common.paste(img, patch, m, top, left)
            pairs.append(Pair(out, mask, defect_type, source=idx))
        return pairs

    def _place(self, idx, img, m, rng):
        if self._fg is None:
            return common.random_top_left(rng, img.shape[:2], m.shape)
        if idx not in self._fg_cache:
            self._fg_cache[idx] = common.checked_foreground(self._fg, img)
        fg = self._fg_cache[idx]
        best, best_share = None, -1.0
        h, w = m.shape
        for _ in range(self.config.placement_tries):
            top, left = common.random_top_left(rng, img.shape[:2], m.shape, fg)
            share = fg[top:top + h, left:left + w][m].mean()
            if share > best_share:
                best, best_share = (top, left), share
            if share >= self.config.min_foreground_overlap:
                break
        return best
