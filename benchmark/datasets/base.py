"""Data set adapters list samples as a plain DataFrame with fixed columns (anomalib's shape).

Everything downstream (split, generators, detectors, metrics) works on that table and on the
images it names, never on globbing again.
"""
from __future__ import annotations

import os
from pathlib import Path

import cv2
import numpy as np
import pandas as pd

# One row per image.
#   category      str
#   split         "train" | "test"   ("validation" rows of LOCO are kept as "train" normals)
#   label         0 normal, 1 anomalous
#   defect_type   "good" for normals, else the defect folder name
#   defect_group  "" or a family of defect types (LOCO: "logical" / "structural")
#   image_path    str
#   mask_paths    tuple[str, ...]  empty for normals and for image-level data sets
#   image_id      str  unique inside the category, stable across runs (used for seeding/splits)
COLUMNS = ["category", "split", "label", "defect_type", "defect_group", "image_path",
           "mask_paths", "image_id"]


class DataError(ValueError):
    """Bad or missing input data; the message names the file or folder."""


class DatasetAdapter:
    """Base adapter. Subclasses set ``name`` and implement ``categories`` and ``_samples``."""

    name: str = ""
    has_masks: bool = True            # False: image-level labels only (pixel metrics n/a)
    object_categories: frozenset[str] = frozenset()
    needs_root: bool = True
    config_class: type | None = None  # the settings dataclass (benchmark.schema); None: no settings

    def __init__(self, root: str | Path | None = None, **cfg):
        self.cfg = cfg
        self.config = self.resolve_config(cfg, f"dataset_cfg.{self.name or type(self).__name__}")
        self.root = Path(root).expanduser() if root is not None else None
        if self.needs_root:
            if self.root is None:
                raise DataError(f"data set {self.name!r} needs --data-root (the folder of its official release)")
            if not self.root.is_dir():
                raise DataError(f"data set {self.name!r}: data root {str(self.root)!r} does not exist")

    @classmethod
    def resolve_config(cls, cfg: dict, where: str, variant: str | None = None):
        """The settings dataclass from a dict (see `generators.base.Generator.resolve_config`)."""
        from benchmark.schema import build, reject_settings

        if cls.config_class is None:
            return reject_settings(cfg, where)
        return build(cls.config_class, cfg, where)

    def categories(self) -> list[str]:
        raise NotImplementedError

    def folder_categories(self, examples: tuple[str, ...] = ()) -> list[str]:
        """Categories of an MVTec-like layout (MVTec AD, MPDD, LOCO, visa_pytorch): the folders
        under the root that hold a ``train/`` folder; a DataError naming the root when none do."""
        found = sorted(p.name for p in self.root.iterdir() if (p / "train").is_dir())
        if not found:
            hint = f" (expected e.g. {', '.join(examples[:3])})" if examples else ""
            raise DataError(f"{self.name}: no category folders with a train/ subfolder under "
                            f"{str(self.root)!r}{hint}")
        return found

    def is_object(self, category: str) -> bool:
        return category in self.object_categories

    def _samples(self, category: str) -> pd.DataFrame:
        raise NotImplementedError

    def samples(self, category: str) -> pd.DataFrame:
        """The validated sample table of one category."""
        found = self.categories()
        if category not in found:
            where = f" (no folder {str(self.root / category)!r})" if self.root is not None else ""
            raise DataError(
                f"data set {self.name!r} has no category {category!r}{where}; found: {', '.join(found)}")
        df = self._samples(category)
        for alias, real in getattr(self, "_ascii_aliases", {}).items():  # back to the user's own paths
            df["image_path"] = [p.replace(alias, real, 1) for p in df["image_path"]]
            df["mask_paths"] = [tuple(m.replace(alias, real, 1) for m in mp) for mp in df["mask_paths"]]
        return validate_samples(df, self.name, category, self.has_masks)

    def defect_config(self, category: str) -> list[dict] | None:
        """Per-defect metadata (LOCO's defects_config.json); None elsewhere."""
        return None


def require_category_dir(adapter: DatasetAdapter, category: str) -> Path:
    """The category folder, or a DataError naming the folder that should hold it.

    anomalib's parsers refuse any path with a non-ASCII character ("non-printable"), so a
    folder such as ``~/données/mvtec`` is parsed through an ASCII symlink in the user cache;
    `DatasetAdapter.samples` maps the table back to the real paths."""
    cat_root = adapter.root / category
    if not cat_root.is_dir():
        raise DataError(f"{adapter.name}: category folder {str(cat_root)!r} does not exist")
    real = str(cat_root.resolve())
    if real.isascii():
        return cat_root
    import hashlib

    link_dir = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "helixbench" / "ascii_paths"
    link = link_dir / hashlib.sha256(real.encode()).hexdigest()[:16]
    if not link.is_symlink():
        link_dir.mkdir(parents=True, exist_ok=True)
        try:
            link.symlink_to(real, target_is_directory=True)
        except FileExistsError:
            pass
        except OSError as e:
            raise DataError(f"{adapter.name}: {real!r} has non-ASCII characters, which anomalib's parser "
                            f"refuses, and no ASCII link could be made in {str(link_dir)!r} ({e.strerror})") from None
    if not str(link).isascii():
        raise DataError(f"{adapter.name}: {real!r} has non-ASCII characters, which anomalib's parser refuses; "
                        f"set XDG_CACHE_HOME to an ASCII folder or move the data")
    adapter._ascii_aliases = {**getattr(adapter, "_ascii_aliases", {}), str(link): real}
    return link


def validate_samples(df: pd.DataFrame, dataset: str, category: str, has_masks: bool) -> pd.DataFrame:
    missing = [c for c in COLUMNS if c not in df.columns]
    if missing:
        raise DataError(f"{dataset}/{category}: sample table lacks columns {missing}")
    df = df[COLUMNS].reset_index(drop=True)
    if df.empty:
        raise DataError(f"{dataset}/{category}: no images found")
    if not (df["split"] == "train").any():
        raise DataError(f"{dataset}/{category}: no training images found")
    if not (df["split"] == "test").any():
        raise DataError(f"{dataset}/{category}: no test images found")
    if has_masks:
        bad = df[(df["label"] == 1) & (df["mask_paths"].map(len) == 0)]
        if len(bad):
            raise DataError(f"{dataset}/{category}: anomalous image without a mask: {bad['image_path'].iloc[0]}")
    if df["image_id"].duplicated().any():
        dup = df.loc[df["image_id"].duplicated(), "image_id"].iloc[0]
        raise DataError(f"{dataset}/{category}: duplicate image id {dup!r}")
    return df


def load_image(path: str | Path, size: int | None = None) -> np.ndarray:
    """Read an image as RGB uint8 HxWx3, resized (area) to size x size when given."""
    img = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    if img is None:
        raise DataError(f"cannot read image {str(path)!r}")
    if img.dtype != np.uint8:  # 16-bit PNG etc.
        img = (img.astype(np.float64) / np.iinfo(img.dtype).max * 255).round().astype(np.uint8)
    if img.ndim == 2:
        img = cv2.cvtColor(img, cv2.COLOR_GRAY2RGB)
    elif img.shape[2] == 4:
        img = cv2.cvtColor(img, cv2.COLOR_BGRA2RGB)
    else:
        img = cv2.cvtColor(img, cv2.COLOR_BGR2RGB)
    if size is not None and img.shape[:2] != (size, size):
        interp = cv2.INTER_AREA if img.shape[0] > size else cv2.INTER_LINEAR
        img = cv2.resize(img, (size, size), interpolation=interp)
    return np.ascontiguousarray(img)


def image_shape(path: str | Path) -> tuple[int, int]:
    """(height, width) of an image file from its header, without decoding the pixels."""
    from PIL import Image

    try:
        with Image.open(path) as im:
            w, h = im.size
    except (OSError, ValueError) as e:
        raise DataError(f"cannot read image {str(path)!r} ({type(e).__name__})") from None
    return h, w


def load_mask(paths: tuple[str, ...] | list[str], size: int | None = None,
              shape: tuple[int, int] | None = None, image_path: str | Path | None = None) -> np.ndarray:
    """Union of the given mask files as bool HxW (any value > 0 is defect; VisA stores 0/1/2).

    A mask of another size than its image is resized nearest-neighbour when it has the same
    aspect ratio (a half-resolution mask still lines up); with ``image_path`` given, a mask of
    another aspect ratio is a DataError naming both files: stretching it would move the defect.
    """
    out = None
    img_hw = image_shape(image_path) if image_path is not None and len(paths) else None
    for p in paths:
        m = cv2.imread(str(p), cv2.IMREAD_GRAYSCALE)
        if m is None:
            raise DataError(f"cannot read mask {str(p)!r}")
        if img_hw is not None and m.shape != img_hw and \
                abs(m.shape[0] * img_hw[1] - m.shape[1] * img_hw[0]) > 0.01 * m.shape[1] * img_hw[0]:
            raise DataError(f"mask {str(p)!r} is {m.shape[1]}x{m.shape[0]} but its image {str(image_path)!r} is "
                            f"{img_hw[1]}x{img_hw[0]}: another aspect ratio, so the defect cannot be placed")
        if size is not None and m.shape != (size, size):
            m = cv2.resize(m, (size, size), interpolation=cv2.INTER_NEAREST)
        elif shape is not None and m.shape != shape:
            m = cv2.resize(m, (shape[1], shape[0]), interpolation=cv2.INTER_NEAREST)
        out = m > 0 if out is None else (out | (m > 0))
    if out is None:
        if size is None and shape is None:
            raise DataError("load_mask needs at least one path, or a size for an empty mask")
        hw = (size, size) if size is not None else shape
        return np.zeros(hw, dtype=bool)
    return out
