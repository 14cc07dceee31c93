"""Pure numpy helpers: raw masks, defect crops (patch mode), control maps, compositing.

Patch mode (docs/dhdiff.md, tiny scale): the model sees a ``patch_size`` crop around each defect,
taken 1:1; a generated (patch, mask) is pasted 1:1 into a normal image, changing pixels only
inside a dilated copy of the generated mask.
"""
from __future__ import annotations

import cv2
import numpy as np
from scipy import ndimage


def raw_mask(mask: np.ndarray, k: int = 5) -> np.ndarray:
    """K x K grid over the image; every cell touching ``mask`` is set (paper III-B)."""
    h, w = mask.shape
    ys = np.linspace(0, h, k + 1).round().astype(int)
    xs = np.linspace(0, w, k + 1).round().astype(int)
    out = np.zeros((h, w), bool)
    for i in range(k):
        for j in range(k):
            if mask[ys[i]:ys[i + 1], xs[j]:xs[j + 1]].any():
                out[ys[i]:ys[i + 1], xs[j]:xs[j + 1]] = True
    return out


def defect_box(mask: np.ndarray, patch: int, rng: np.random.Generator | None = None,
               jitter: float = 0.0) -> tuple[int, int, int]:
    """Square crop (y0, x0, side) of side ``patch`` (capped by the image) around the defect.

    The crop is taken 1:1, never rescaled: a defect is generated at its final resolution, so
    pasting it back cannot show blocks from scaling a small patch up (issue 10). Without an rng
    the crop is centred on the defect's bounding box; with one (training) it is centred on a
    random defect pixel, so every part of a defect larger than the patch is seen, then shifted
    by up to ``jitter`` * side."""
    h, w = mask.shape
    side = int(min(patch, h, w))
    ys, xs = np.nonzero(mask)
    if len(ys) == 0:
        cy, cx = h / 2, w / 2
    elif rng is None:
        cy, cx = (ys.min() + ys.max()) / 2, (xs.min() + xs.max()) / 2
    else:
        i = rng.integers(len(ys))
        cy, cx = float(ys[i]), float(xs[i])
    if rng is not None and jitter > 0:
        cy += rng.uniform(-jitter, jitter) * side
        cx += rng.uniform(-jitter, jitter) * side
    y0 = int(np.clip(round(cy - side / 2), 0, h - side))
    x0 = int(np.clip(round(cx - side / 2), 0, w - side))
    return y0, x0, side


def crop(image: np.ndarray, mask: np.ndarray, box: tuple[int, int, int], size: int) -> tuple[np.ndarray, np.ndarray]:
    """Crop and resize: image uint8 -> uint8 size x size x 3, mask -> bool size x size."""
    y0, x0, s = box
    im = image[y0:y0 + s, x0:x0 + s]
    mk = mask[y0:y0 + s, x0:x0 + s].astype(np.float32)
    interp = cv2.INTER_AREA if s > size else cv2.INTER_LINEAR
    im = cv2.resize(im, (size, size), interpolation=interp)
    mk = cv2.resize(mk, (size, size), interpolation=cv2.INTER_AREA if s > size else cv2.INTER_NEAREST)
    return im, mk > 0.25


def control_map(mask: np.ndarray, kind: str, rng: np.random.Generator, k: int = 5) -> np.ndarray:
    """A user-style control from a real mask: 'mask' (detailed), 'raw' (grid cells), 'points'."""
    if kind == "mask":
        return mask.astype(np.float32)
    if kind == "raw":
        return raw_mask(mask, k).astype(np.float32)
    if kind == "points":
        out = np.zeros(mask.shape, np.float32)
        ys, xs = np.nonzero(mask)
        if len(ys):
            r = max(1, mask.shape[0] // 16)
            for i in rng.choice(len(ys), size=min(3, len(ys)), replace=False):
                cv2.circle(out, (int(xs[i]), int(ys[i])), r, 1.0, -1)
        return out
    raise ValueError(f"dhdiff: control kind must be 'points', 'mask' or 'raw', got {kind!r}")


def clean_mask(ann: np.ndarray, threshold: float = 0.0, sigma: float = 0.0, min_area: int = 0,
               near: np.ndarray | None = None, fill: bool = False, counts: dict | None = None) -> np.ndarray:
    """Threshold a generated annotation map into a defect-shaped mask.

    A few-step sampler leaves pixel noise in the annotation stream; thresholding it as is gives
    speckle. Blur (``sigma`` px) first, then drop 8-connected components under ``min_area`` px,
    keep only those touching ``near`` (e.g. the reference's dilated raw mask; the largest one
    if none does), and fill holes. Thin lines survive: no morphological opening is used.
    ``counts["pieces_dropped"]`` is increased by the components removed (recorded, because a
    clean-up that discards most of what the model drew would otherwise be invisible).
    """
    a = np.asarray(ann, np.float32)
    if sigma > 0:
        a = cv2.GaussianBlur(a, (0, 0), sigma)
    m = a > threshold
    if not m.any() or (min_area <= 0 and near is None and not fill):
        return m
    n, lab, stats, _ = cv2.connectedComponentsWithStats(m.astype(np.uint8), connectivity=8)
    ids = [i for i in range(1, n) if stats[i, cv2.CC_STAT_AREA] >= min_area]
    if near is not None and ids:
        touching = [i for i in ids if near[lab == i].any()]
        ids = touching or [max(ids, key=lambda i: stats[i, cv2.CC_STAT_AREA])]
    if counts is not None:
        counts["pieces_dropped"] = counts.get("pieces_dropped", 0) + (n - 1 - len(ids))
    m = np.isin(lab, ids) if ids else np.zeros_like(m)
    return ndimage.binary_fill_holes(m) if fill else m


def resize_mask(mask: np.ndarray, size: int) -> np.ndarray:
    """A bool mask resized to size x size without losing it: nearest when enlarging, any
    coverage (area > 0) when shrinking, so a non-empty mask stays non-empty and in place."""
    m = np.asarray(mask, bool)
    if m.shape == (size, size):
        return m.copy()
    if size >= max(m.shape):
        return cv2.resize(m.astype(np.uint8), (size, size), interpolation=cv2.INTER_NEAREST) > 0
    return cv2.resize(m.astype(np.float32), (size, size), interpolation=cv2.INTER_AREA) > 0


def composite(normal: np.ndarray, patch: np.ndarray, pmask: np.ndarray, side: int,
              rng: np.random.Generator, foreground: np.ndarray | None = None,
              dilate: int = 3, tries: int = 10) -> tuple[np.ndarray, np.ndarray] | None:
    """Paste a generated (patch, mask) into ``normal`` at side ``side`` (1:1 in patch mode; only
    shrunk when the image is smaller than the patch).

    The crop centre lands on a random foreground pixel (anywhere for textures); for objects the
    mask is cut to the foreground. Pixels outside the dilated mask stay the normal's own.
    Returns None when no placement keeps a non-empty mask.
    """
    h, w = normal.shape[:2]
    side = min(side, h, w)
    big = patch if patch.shape[0] == side else cv2.resize(patch, (side, side), interpolation=cv2.INTER_AREA)
    bmask = resize_mask(pmask, side)
    fy, fx = np.nonzero(foreground) if foreground is not None else (None, None)
    for _ in range(tries):
        if fy is not None and len(fy):
            i = rng.integers(len(fy))
            cy, cx = fy[i], fx[i]
        else:
            cy, cx = rng.integers(h), rng.integers(w)
        y0 = int(np.clip(cy - side // 2, 0, h - side))
        x0 = int(np.clip(cx - side // 2, 0, w - side))
        mask = np.zeros((h, w), bool)
        mask[y0:y0 + side, x0:x0 + side] = bmask
        if foreground is not None:
            mask &= foreground
        if mask.any():
            break
    else:
        return None
    src = normal.copy()
    src[y0:y0 + side, x0:x0 + side] = big
    kernel = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * dilate + 1, 2 * dilate + 1))
    region = cv2.dilate(mask.astype(np.uint8), kernel).astype(bool)
    alpha = cv2.GaussianBlur(region.astype(np.float32), (2 * dilate + 1, 2 * dilate + 1), 0)
    alpha = np.where(mask, 1.0, alpha) * region
    out = normal.astype(np.float32) * (1 - alpha[..., None]) + src.astype(np.float32) * alpha[..., None]
    out = np.where(region[..., None], out.round(), normal).astype(np.uint8)
    return out, mask
