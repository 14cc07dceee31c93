"""Shared helpers for the baseline generators: input checks, colour jitter, foreground,
random placement, pasting, rotation and Perlin noise.

All randomness comes from an explicit ``np.random.Generator`` so every generator is
reproducible from the rng the runner hands it.
"""
from __future__ import annotations

import math
from typing import Callable

import cv2
import numpy as np

from .base import FitData

# --------------------------------------------------------------------------- checks


def check_image(img: np.ndarray, where: str) -> np.ndarray:
    """A uint8 HxWx3 image or a ValueError that says which input was wrong."""
    if not isinstance(img, np.ndarray) or img.ndim != 3 or img.shape[2] != 3:
        shape = getattr(img, "shape", type(img).__name__)
        raise ValueError(f"{where}: expected a uint8 HxWx3 image, got shape {shape}")
    if img.dtype != np.uint8:
        raise ValueError(f"{where}: expected dtype uint8, got {img.dtype}")
    return img


def check_normals(data: FitData, who: str) -> list[np.ndarray]:
    """FitData.normals validated; generators that edit normals cannot work without them."""
    if not data.normals:
        raise ValueError(f"{who}: FitData.normals is empty (category {data.category!r})")
    return [check_image(im, f"{who}: FitData.normals[{i}]") for i, im in enumerate(data.normals)]


def check_fitted(obj, attr: str = "_normals") -> None:
    if getattr(obj, attr, None) is None:
        raise RuntimeError(f"{type(obj).__name__}: call fit() before generate()")


# --------------------------------------------------------------------------- colour


def _gray(img: np.ndarray) -> np.ndarray:
    """ITU-R 601 luma, like torchvision's rgb_to_grayscale; float HxW."""
    return img[..., 0] * 0.299 + img[..., 1] * 0.587 + img[..., 2] * 0.114


def color_jitter(img: np.ndarray, rng: np.random.Generator, brightness: float = 0.1,
                 contrast: float = 0.1, saturation: float = 0.1, hue: float = 0.1) -> np.ndarray:
    """torchvision ColorJitter semantics (factors ~U[1-x, 1+x], hue shift ~U[-x, x] of a turn,
    random order of the four ops) on a uint8 RGB array, driven by ``rng``."""
    out = img.astype(np.float32)
    ops = rng.permutation(4)
    fb = rng.uniform(max(0.0, 1 - brightness), 1 + brightness)
    fc = rng.uniform(max(0.0, 1 - contrast), 1 + contrast)
    fs = rng.uniform(max(0.0, 1 - saturation), 1 + saturation)
    fh = rng.uniform(-hue, hue)
    for op in ops:
        if op == 0:
            out = np.clip(out * fb, 0, 255)
        elif op == 1:
            mean = _gray(out).mean()
            out = np.clip(fc * out + (1 - fc) * mean, 0, 255)
        elif op == 2:
            g = _gray(out)[..., None]
            out = np.clip(fs * out + (1 - fs) * g, 0, 255)
        elif op == 3 and fh != 0:
            hsv = cv2.cvtColor(np.round(out).astype(np.uint8), cv2.COLOR_RGB2HSV_FULL)
            shift = int(round(fh * 256)) % 256
            hsv[..., 0] = ((hsv[..., 0].astype(np.int32) + shift) % 256).astype(np.uint8)
            out = cv2.cvtColor(hsv, cv2.COLOR_HSV2RGB_FULL).astype(np.float32)
    return np.round(out).astype(np.uint8)


# --------------------------------------------------------------------------- foreground


def estimate_foreground(img: np.ndarray, border: int = 4) -> np.ndarray:
    """Object foreground as bool HxW, estimated without a model.

    The background of object categories (MVTec, VisA) is a near-uniform colour that fills the
    image border, so: distance of every pixel (Lab) to the median border colour, Otsu threshold
    on that distance, close/open to remove speckle, keep components that hold >=10 % of the
    largest one. Falls back to the whole image when the result is implausible (<1 % or >97 %),
    e.g. for textures.
    """
    h, w = img.shape[:2]
    lab = cv2.cvtColor(img, cv2.COLOR_RGB2LAB).astype(np.float32)
    b = max(1, min(border, h // 8, w // 8))
    frame = np.concatenate([lab[:b].reshape(-1, 3), lab[-b:].reshape(-1, 3),
                            lab[:, :b].reshape(-1, 3), lab[:, -b:].reshape(-1, 3)])
    bg = np.median(frame, axis=0)
    dist = np.linalg.norm(lab - bg, axis=2)
    dist = cv2.GaussianBlur(dist, (0, 0), sigmaX=max(1.0, min(h, w) / 128))
    d8 = np.clip(dist / max(dist.max(), 1e-6) * 255, 0, 255).astype(np.uint8)
    _, fg = cv2.threshold(d8, 0, 1, cv2.THRESH_BINARY + cv2.THRESH_OTSU)
    k = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (max(3, min(h, w) // 32) | 1,) * 2)
    fg = cv2.morphologyEx(fg, cv2.MORPH_CLOSE, k)
    fg = cv2.morphologyEx(fg, cv2.MORPH_OPEN, k)
    n, lbl, stats, _ = cv2.connectedComponentsWithStats(fg, connectivity=8)
    if n > 1:
        areas = stats[1:, cv2.CC_STAT_AREA]
        keep = 1 + np.flatnonzero(areas >= 0.1 * areas.max())
        fg = np.isin(lbl, keep)
    fg = fg.astype(bool)
    frac = fg.mean()
    if frac < 0.01 or frac > 0.97:
        return np.ones((h, w), bool)
    return fg


def foreground_fn(data: FitData) -> Callable[[np.ndarray], np.ndarray]:
    """The foreground function to use for ``data``: the given one, our estimate for objects,
    everything for textures."""
    if data.foreground is not None:
        return data.foreground
    if data.is_object:
        return estimate_foreground
    return lambda im: np.ones(im.shape[:2], bool)


def checked_foreground(fn: Callable[[np.ndarray], np.ndarray], img: np.ndarray) -> np.ndarray:
    """Call a foreground function and validate its output (empty -> whole image)."""
    fg = np.asarray(fn(img))
    if fg.shape != img.shape[:2]:
        raise ValueError(f"foreground function returned shape {fg.shape}, "
                         f"expected {img.shape[:2]}")
    fg = fg.astype(bool)
    return fg if fg.any() else np.ones(img.shape[:2], bool)


# --------------------------------------------------------------------------- placement


def random_top_left(rng: np.random.Generator, img_hw: tuple[int, int], patch_hw: tuple[int, int],
                    allowed: np.ndarray | None = None) -> tuple[int, int]:
    """Top-left corner for a patch that lies fully inside the image.

    With ``allowed`` (bool HxW, e.g. the foreground) the patch centre is drawn uniformly from
    allowed pixels, then the box is shifted inside the image.
    """
    H, W = img_hw
    h, w = patch_hw
    if h > H or w > W:
        raise ValueError(f"patch {patch_hw} larger than image {img_hw}")
    if allowed is None or allowed.all():
        return int(rng.integers(0, H - h + 1)), int(rng.integers(0, W - w + 1))
    ys, xs = np.nonzero(allowed)
    i = int(rng.integers(len(ys)))
    top = int(np.clip(ys[i] - h // 2, 0, H - h))
    left = int(np.clip(xs[i] - w // 2, 0, W - w))
    return top, left


def paste(img: np.ndarray, patch: np.ndarray, patch_mask: np.ndarray | None,
          top: int, left: int) -> tuple[np.ndarray, np.ndarray]:
    """Copy ``patch`` (where ``patch_mask``) into a copy of ``img``; returns (image, bool mask)."""
    out = img.copy()
    h, w = patch.shape[:2]
    m = np.ones((h, w), bool) if patch_mask is None else patch_mask.astype(bool)
    region = out[top:top + h, left:left + w]
    region[m] = patch[m]
    mask = np.zeros(img.shape[:2], bool)
    mask[top:top + h, left:left + w] = m
    return out, mask


def rotate_expand(img: np.ndarray, angle_deg: float, interp: int = cv2.INTER_LINEAR,
                  border_mode: int = cv2.BORDER_CONSTANT) -> np.ndarray:
    """Rotate about the centre onto a canvas big enough to hold the whole result (PIL's
    ``rotate(expand=True)``). Use BORDER_REPLICATE for image patches so interpolation at the
    edge does not pull in black."""
    h, w = img.shape[:2]
    M = cv2.getRotationMatrix2D((w / 2, h / 2), angle_deg, 1.0)
    c, s = abs(M[0, 0]), abs(M[0, 1])
    nw, nh = int(math.ceil(h * s + w * c)), int(math.ceil(h * c + w * s))
    M[0, 2] += nw / 2 - w / 2
    M[1, 2] += nh / 2 - h / 2
    return cv2.warpAffine(img, M, (nw, nh), flags=interp, borderMode=border_mode, borderValue=0)


def rotate_same(img: np.ndarray, angle_deg: float, interp: int = cv2.INTER_LINEAR,
                border_value: float = 0) -> np.ndarray:
    """Rotate about the centre keeping the size, constant border (imgaug ``Affine(rotate)``)."""
    h, w = img.shape[:2]
    M = cv2.getRotationMatrix2D((w / 2 - 0.5, h / 2 - 0.5), angle_deg, 1.0)
    return cv2.warpAffine(img, M, (w, h), flags=interp, borderMode=cv2.BORDER_CONSTANT,
                          borderValue=border_value)


def crop_to_mask(img: np.ndarray, mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Tight crop of ``img`` and ``mask`` to the mask's bounding box."""
    ys, xs = np.nonzero(mask)
    if len(ys) == 0:
        raise ValueError("crop_to_mask: empty mask")
    y0, y1, x0, x1 = ys.min(), ys.max() + 1, xs.min(), xs.max() + 1
    return img[y0:y1, x0:x1], mask[y0:y1, x0:x1]


# --------------------------------------------------------------------------- Perlin noise


def _fade(t: np.ndarray) -> np.ndarray:
    return 6 * t ** 5 - 15 * t ** 4 + 10 * t ** 3


def perlin_2d(shape: tuple[int, int], res: tuple[int, int], rng: np.random.Generator) -> np.ndarray:
    """Gradient (Perlin) noise in roughly [-1, 1] with ``res`` lattice periods per axis.

    Same construction as DRAEM's ``rand_perlin_2d_np`` (random unit gradients on a
    (res+1)-lattice, quintic fade), but the shape need not be divisible by ``res``: noise is
    made on the next divisible size and cropped.
    """
    H, W = shape
    ry, rx = int(res[0]), int(res[1])
    Hp, Wp = -(-H // ry) * ry, -(-W // rx) * rx
    angles = rng.uniform(0, 2 * np.pi, (ry + 1, rx + 1))
    grads = np.stack([np.cos(angles), np.sin(angles)], axis=-1)
    y = np.arange(Hp) * ry / Hp
    x = np.arange(Wp) * rx / Wp
    yi, xi = np.floor(y).astype(int), np.floor(x).astype(int)
    fy, fx = (y - yi)[:, None], (x - xi)[None, :]

    def dot(dy: int, dx: int) -> np.ndarray:
        g = grads[yi[:, None] + dy, xi[None, :] + dx]
        return g[..., 0] * (fy - dy) + g[..., 1] * (fx - dx)

    n00, n10, n01, n11 = dot(0, 0), dot(1, 0), dot(0, 1), dot(1, 1)
    ty, tx = _fade(fy), _fade(fx)
    n0 = n00 * (1 - ty) + n10 * ty
    n1 = n01 * (1 - ty) + n11 * ty
    return (math.sqrt(2) * (n0 * (1 - tx) + n1 * tx))[:H, :W].astype(np.float32)


# --------------------------------------------------------------------------- config
