"""Tiny images shared by the detector tests: a flat noisy grey 'normal' and a bright square defect."""
from __future__ import annotations

import numpy as np


def flat(rng: np.random.Generator, n: int, size: int = 32) -> np.ndarray:
    """n flat grey textures with mild noise, uint8 [n, size, size, 3]: the 'normal' class."""
    return (120 + rng.normal(0, 6, (n, size, size, 3))).clip(0, 255).astype(np.uint8)


def square(img: np.ndarray, top: int, left: int, side: int) -> tuple[np.ndarray, np.ndarray]:
    """``img`` with a bright square pasted in, and its mask."""
    out = img.copy()
    out[top:top + side, left:left + side] = 250
    mask = np.zeros(img.shape[:2], bool)
    mask[top:top + side, left:left + side] = True
    return out, mask
