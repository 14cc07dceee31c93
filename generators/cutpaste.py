"""CutPaste (Li et al., CVPR 2021): cut a rectangle from a normal image, colour-jitter it and
paste it elsewhere in the same image; the mask is the pasted rectangle.

Defaults follow the paper and its reference implementation: area ratio U[0.02, 0.15] of the
image, aspect ratio log-uniform in [0.3, 1/0.3], ColorJitter(0.1, 0.1, 0.1, 0.1).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from . import common, register_generator
from .base import FitData, Generator, Pair


@dataclass
class CutPasteConfig:
    area_ratio: tuple[float, float] = (0.02, 0.15)
    aspect_ratio: float = 0.3              # log-uniform in [a, 1/a]
    brightness: float = 0.1
    contrast: float = 0.1
    saturation: float = 0.1
    hue: float = 0.1
    foreground_only: bool = False          # paper pastes anywhere; True pastes on the object

    def __post_init__(self):
        lo, hi = self.area_ratio
        if not 0 < lo <= hi < 1:
            raise ValueError(f"cutpaste: area_ratio must satisfy 0 < lo <= hi < 1, got {self.area_ratio}")
        if not 0 < self.aspect_ratio <= 1:
            raise ValueError(f"cutpaste: aspect_ratio must be in (0, 1], got {self.aspect_ratio}")


def jitter(patch: np.ndarray, cfg, rng: np.random.Generator) -> np.ndarray:
    return common.color_jitter(patch, rng, cfg.brightness, cfg.contrast, cfg.saturation, cfg.hue)


@register_generator("cutpaste")
class CutPaste(Generator):
    """Rectangle CutPaste; knows no defect types, so pairs carry the requested label."""

    needs_masks = False
    needs_anomalies = False
    edits_normal = True
    version = 1
    config_class = CutPasteConfig

    def __init__(self, **cfg):
        super().__init__(**cfg)
        self._normals: list[np.ndarray] | None = None
        self._fg = None

    def fit(self, data: FitData, rng: np.random.Generator) -> None:
        self._normals = common.check_normals(data, self.registry_name)
        self._fg = common.foreground_fn(data) if self.config.foreground_only else None
        self._fg_cache: dict[int, np.ndarray] = {}

    def _allowed(self, idx: int, img: np.ndarray) -> np.ndarray | None:
        if self._fg is None:
            return None
        if idx not in self._fg_cache:
            self._fg_cache[idx] = common.checked_foreground(self._fg, img)
        return self._fg_cache[idx]

    def _patch(self, img: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray | None]:
        """Cut a jittered rectangle; returns (patch, patch_mask or None for a full rectangle)."""
        H, W = img.shape[:2]
        c = self.config
        area = rng.uniform(*c.area_ratio) * H * W
        aspect = math.exp(rng.uniform(math.log(c.aspect_ratio), math.log(1 / c.aspect_ratio)))
        w = int(np.clip(round(math.sqrt(area * aspect)), 1, W))
        h = int(np.clip(round(math.sqrt(area / aspect)), 1, H))
        top, left = common.random_top_left(rng, (H, W), (h, w))
        return jitter(img[top:top + h, left:left + w], c, rng), None

    def generate(self, n: int, defect_type: str, rng: np.random.Generator) -> list[Pair]:
        common.check_fitted(self)
        pairs = []
        for _ in range(n):
            idx = int(rng.integers(len(self._normals)))
            img = self._normals[idx]
            patch, pmask = self._patch(img, rng)
            top, left = common.random_top_left(rng, img.shape[:2], patch.shape[:2],
                                               self._allowed(idx, img))
            out, mask = common.paste(img, patch, pmask, top, left)
            pairs.append(Pair(out, mask, defect_type, source=idx))
        return pairs
