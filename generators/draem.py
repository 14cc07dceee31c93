"""DRAEM (Zavrtanik et al., ICCV 2021): a thresholded, rotated Perlin-noise mask through which an
augmented texture image is blended into a normal image.

Parameters match the reference ``data_loader.py``/``perlin.py`` (and anomalib's port): Perlin
lattice 2**k per axis with k drawn independently from [min_perlin_scale, perlin_scale) =
[0, 6) (the reference uses torch.randint, upper bound exclusive: 1..32 periods), noise rotated by
U[-90, 90] deg (bilinear, zero fill), threshold 0.5, three distinct augmenters out of DRAEM's
ten applied to the texture, and blend image*(1-m) + (1-beta)*texture*m + beta*image*m with
beta ~ U[0, 0.8).

Augmenters, reimplemented with OpenCV/numpy (imgaug is not a dependency), imgaug name -> ours:
GammaContrast((0.5, 2), per_channel) -> per-channel gamma LUT; MultiplyAndAddToBrightness(
mul=(0.8, 1.2), add=(-30, 30)) -> affine change of the YCrCb luma; pillike.EnhanceSharpness(
(0, 2)) -> PIL's SMOOTH-kernel unsharp blend; AddToHueAndSaturation((-50, 50), per_channel) ->
independent hue/saturation offsets in HSV; Solarize(0.5, threshold=(32, 128)) -> with p=0.5
invert pixels >= threshold; Posterize((1, 8) bits) -> keep the top bits; Invert -> 255 - x;
pillike.Autocontrast(cutoff=(0, 20)%) -> per-channel percentile stretch; pillike.Equalize ->
per-channel cv2.equalizeHist; Affine(rotate=(-45, 45)) -> cv2 rotation, zero fill.

Deviations, on purpose: an empty mask is re-drawn (DRAEM also returns unchanged normals 50% of
the time; our runner mixes normals in separately, so every pair here is anomalous); with
``foreground_only`` (default: object categories) the mask is cut to the object foreground. The
reference's extra 90-degree rotation of the *normal* image (p=0.3) is dropped: we edit normals
in place, the detector's own augmentation can rotate.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from . import common, register_generator
from .base import FitData, Generator, Pair

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff")


@dataclass
class DraemConfig:
    min_perlin_scale: int = 0
    perlin_scale: int = 6               # exclusive, as torch.randint in the reference
    threshold: float = 0.5
    rotation: tuple[float, float] = (-90, 90)
    beta_max: float = 0.8               # beta ~ U[0, beta_max)
    num_augmenters: int = 3
    texture_dir: str | None = None      # e.g. DTD; default: FitData.aux_images, else normals
    foreground_only: bool | None = None  # None: True for object categories
    max_redraws: int = 50

    def __post_init__(self):
        if not 0 <= self.min_perlin_scale < self.perlin_scale:
            raise ValueError("draem: need 0 <= min_perlin_scale < perlin_scale, got "
                             f"{self.min_perlin_scale}, {self.perlin_scale}")
        if not 1 <= self.num_augmenters <= len(AUGMENTERS):
            raise ValueError(f"draem: num_augmenters must be in 1..{len(AUGMENTERS)}")


# ----------------------------------------------------------------------------- augmenters


def _gamma(img, rng):
    g = rng.uniform(0.5, 2.0, 3)
    x = np.arange(256) / 255.0
    out = np.empty_like(img)
    for c in range(3):
        lut = np.clip(np.round(255 * x ** g[c]), 0, 255).astype(np.uint8)
        out[..., c] = cv2.LUT(np.ascontiguousarray(img[..., c]), lut)
    return out


def _brightness(img, rng):
    mul, add = rng.uniform(0.8, 1.2), rng.uniform(-30, 30)
    ycc = cv2.cvtColor(img, cv2.COLOR_RGB2YCrCb).astype(np.float32)
    ycc[..., 0] = np.clip(ycc[..., 0] * mul + add, 0, 255)
    return cv2.cvtColor(np.round(ycc).astype(np.uint8), cv2.COLOR_YCrCb2RGB)


_SMOOTH = np.array([[1, 1, 1], [1, 5, 1], [1, 1, 1]], np.float32) / 13


def _sharpness(img, rng):
    f = rng.uniform(0.0, 2.0)
    x = img.astype(np.float32)
    blur = cv2.filter2D(x, -1, _SMOOTH, borderType=cv2.BORDER_REPLICATE)
    blur[0], blur[-1], blur[:, 0], blur[:, -1] = x[0], x[-1], x[:, 0], x[:, -1]  # PIL keeps the edge
    return np.clip(np.round(blur + f * (x - blur)), 0, 255).astype(np.uint8)


def _hue_saturation(img, rng):
    dh, ds = rng.integers(-50, 51, 2)
    hsv = cv2.cvtColor(img, cv2.COLOR_RGB2HSV).astype(np.int32)  # H in [0, 180)
    hsv[..., 0] = (hsv[..., 0] + int(round(dh * 180 / 255))) % 180  # imgaug maps +-255 to a full turn
    hsv[..., 1] = np.clip(hsv[..., 1] + ds, 0, 255)
    return cv2.cvtColor(hsv.astype(np.uint8), cv2.COLOR_HSV2RGB)


def _solarize(img, rng):
    if rng.random() >= 0.5:
        return img
    t = rng.integers(32, 129)
    return np.where(img >= t, 255 - img, img).astype(np.uint8)


def _posterize(img, rng):
    bits = int(rng.integers(1, 9))
    return (img & np.uint8((0xFF << (8 - bits)) & 0xFF)).astype(np.uint8)


def _invert(img, rng):
    return (255 - img).astype(np.uint8)


def _autocontrast(img, rng):
    cutoff = rng.uniform(0, 20)
    out = np.empty_like(img)
    for c in range(3):
        ch = img[..., c]
        lo, hi = np.percentile(ch, [cutoff, 100 - cutoff])
        if hi <= lo:
            out[..., c] = ch
            continue
        out[..., c] = np.clip(np.round((ch.astype(np.float32) - lo) * 255 / (hi - lo)), 0, 255)
    return out


def _equalize(img, rng):
    return np.stack([cv2.equalizeHist(np.ascontiguousarray(img[..., c])) for c in range(3)], -1)


def _affine_rotate(img, rng):
    return common.rotate_same(img, rng.uniform(-45, 45), cv2.INTER_LINEAR, 0)


AUGMENTERS = (_gamma, _brightness, _sharpness, _hue_saturation, _solarize, _posterize,
              _invert, _autocontrast, _equalize, _affine_rotate)


def augment(img: np.ndarray, rng: np.random.Generator, k: int = 3) -> np.ndarray:
    """DRAEM's randAugmenter: k distinct augmenters in random order."""
    for i in rng.choice(len(AUGMENTERS), k, replace=False):
        img = AUGMENTERS[i](img, rng)
    return img


def perlin_mask(hw: tuple[int, int], cfg: DraemConfig, rng: np.random.Generator) -> np.ndarray:
    """One DRAEM anomaly mask (may be empty): rotated Perlin noise > threshold."""
    sy = 2 ** int(rng.integers(cfg.min_perlin_scale, cfg.perlin_scale))
    sx = 2 ** int(rng.integers(cfg.min_perlin_scale, cfg.perlin_scale))
    noise = common.perlin_2d(hw, (sy, sx), rng)
    noise = common.rotate_same(noise, rng.uniform(*cfg.rotation), cv2.INTER_LINEAR, 0)
    return noise > cfg.threshold


# ----------------------------------------------------------------------------- generator


@register_generator("draem")
class Draem(Generator):
    """Perlin-masked texture blending; knows no defect types (pairs carry the requested label)."""
    config_class = DraemConfig

    needs_masks = False
    needs_anomalies = False
    edits_normal = True
    uses_aux_images = True  # the runner loads other categories' normals as texture sources
    version = 1

    def fit(self, data: FitData, rng: np.random.Generator) -> None:
        self._normals = common.check_normals(data, "draem")
        c = self.config
        self._texture_paths: list[Path] = []
        self._textures: list[np.ndarray] = []
        if c.texture_dir is not None:
            root = Path(c.texture_dir)
            if not root.is_dir():
                raise ValueError(f"draem: texture_dir {str(root)!r} is not a directory")
            self._texture_paths = sorted(p for p in root.rglob("*")
                                         if p.suffix.lower() in IMAGE_EXTENSIONS)
            if not self._texture_paths:
                raise ValueError(f"draem: texture_dir {str(root)!r} holds no image")
        elif data.aux_images:
            self._textures = [common.check_image(t, f"draem: FitData.aux_images[{i}]")
                              for i, t in enumerate(data.aux_images)]
        else:
            self._textures = self._normals  # last resort: the category's own normals
        fg_only = data.is_object if c.foreground_only is None else c.foreground_only
        self._fg = common.foreground_fn(data) if fg_only else None
        self._fg_cache: dict[int, np.ndarray] = {}

    def _texture(self, rng: np.random.Generator, hw: tuple[int, int]) -> np.ndarray:
        if self._texture_paths:
            path = self._texture_paths[int(rng.integers(len(self._texture_paths)))]
            bgr = cv2.imread(str(path), cv2.IMREAD_COLOR)
            if bgr is None:
                raise ValueError(f"draem: cannot read texture image {str(path)!r}")
            tex = cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)
        else:
            tex = self._textures[int(rng.integers(len(self._textures)))]
        if tex.shape[:2] != hw:
            tex = cv2.resize(tex, (hw[1], hw[0]), interpolation=cv2.INTER_LINEAR)
        return tex

    def _mask(self, idx: int, img: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        hw = img.shape[:2]
        fg = None
        if self._fg is not None:
            if idx not in self._fg_cache:
                self._fg_cache[idx] = common.checked_foreground(self._fg, img)
            fg = self._fg_cache[idx]
        for _ in range(self.config.max_redraws):
            m = perlin_mask(hw, self.config, rng)
            if fg is not None:
                m &= fg
            if m.any():
                return m
        # pathological (tiny foreground): a blob on the foreground so the pair stays usable
        ys, xs = np.nonzero(fg if fg is not None else np.ones(hw, bool))
        i = int(rng.integers(len(ys)))
        m = np.zeros(hw, np.uint8)
        cv2.circle(m, (int(xs[i]), int(ys[i])), max(1, min(hw) // 16), 1, -1)
        m = m.astype(bool)
        return m & fg if fg is not None and (m & fg).any() else m

    def generate(self, n: int, defect_type: str, rng: np.random.Generator) -> list[Pair]:
        common.check_fitted(self)
        pairs = []
        for _ in range(n):
            idx = int(rng.integers(len(self._normals)))
            img = self._normals[idx]
            mask = self._mask(idx, img, rng)
            tex = augment(self._texture(rng, img.shape[:2]), rng, self.config.num_augmenters)
            beta = rng.uniform(0, self.config.beta_max)
            x, t = img.astype(np.float32), tex.astype(np.float32)
            blended = (1 - beta) * t + beta * x
            out = img.copy()
            out[mask] = np.clip(np.round(blended[mask]), 0, 255).astype(np.uint8)
            pairs.append(Pair(out, mask, defect_type, source=idx))
        return pairs
