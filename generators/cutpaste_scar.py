"""CutPaste-Scar (Li et al., CVPR 2021): a thin, colour-jittered, rotated strip cut from a
normal image and pasted elsewhere in it; the mask is exactly the pasted rotated pixels.

Paper/reference defaults at 256 px: width U[2, 16], height U[10, 25], rotation U[-45, 45] deg;
lengths scale with min(H, W) / 256 so a 128 px run gets proportionally thinner scars.
"""
from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

from . import common, register_generator
from .cutpaste import CutPaste, jitter


@dataclass
class CutPasteScarConfig:
    width: tuple[float, float] = (2, 16)     # px at 256 px
    height: tuple[float, float] = (10, 25)   # px at 256 px
    rotation: tuple[float, float] = (-45, 45)
    brightness: float = 0.1
    contrast: float = 0.1
    saturation: float = 0.1
    hue: float = 0.1
    foreground_only: bool = False
    reference_size: int = 256

    def __post_init__(self):
        for name in ("width", "height"):
            lo, hi = getattr(self, name)
            if not 0 < lo <= hi:
                raise ValueError(f"cutpaste_scar: {name} must satisfy 0 < lo <= hi, got {(lo, hi)}")


@register_generator("cutpaste_scar")
class CutPasteScar(CutPaste):
    """Scar CutPaste; shares placement and jitter with rectangle CutPaste."""

    version = 1
    config_class = CutPasteScarConfig

    def _patch(self, img: np.ndarray, rng: np.random.Generator):
        H, W = img.shape[:2]
        c = self.config
        s = min(H, W) / c.reference_size
        w = int(np.clip(round(rng.uniform(*c.width) * s), 1, W))
        h = int(np.clip(round(rng.uniform(*c.height) * s), 2, H))
        top, left = common.random_top_left(rng, (H, W), (h, w))
        patch = jitter(img[top:top + h, left:left + w], c, rng)
        angle = rng.uniform(*c.rotation)
        # nearest-neighbour rotation for both: the mask is exactly the pixels that carry patch
        # content, with no interpolated border colour inside it
        rot = common.rotate_expand(patch, angle, cv2.INTER_NEAREST)
        m = common.rotate_expand(np.ones((h, w), np.uint8), angle, cv2.INTER_NEAREST).astype(bool)
        if not m.any():  # cannot happen for h >= 2, w >= 1, but never return an empty mask
            return patch, None
        rot, m = common.crop_to_mask(rot, m)
        if rot.shape[0] > H or rot.shape[1] > W:  # tiny images: fall back to the unrotated strip
            return patch, None
        return rot, m
