"""MVTec AD (and every data set in its layout) read with anomalib's ``make_mvtec_ad_dataset``.

Layout: ``<root>/<category>/{train/good, test/<defect>, ground_truth/<defect>/<id>_mask.png}``.
"""
from __future__ import annotations

from pathlib import Path

import pandas as pd

from . import register_dataset
from .base import DataError, DatasetAdapter, require_category_dir

MVTEC_AD_CATEGORIES = ("bottle", "cable", "capsule", "carpet", "grid", "hazelnut", "leather",
                       "metal_nut", "pill", "screw", "tile", "toothbrush", "transistor", "wood",
                       "zipper")
MVTEC_AD_TEXTURES = frozenset({"carpet", "grid", "leather", "tile", "wood"})
IMG_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".PNG", ".JPG")


def check_masks(cat_root: Path) -> None:
    """Name the first anomalous test image that has no mask, before anomalib's bulk assignment
    turns the mismatch into an opaque pandas length error."""
    test = cat_root / "test"
    gt = cat_root / "ground_truth"
    if not test.is_dir():
        raise DataError(f"missing folder {str(test)!r}")
    for d in sorted(p for p in test.iterdir() if p.is_dir() and p.name != "good"):
        for img in sorted(p for p in d.iterdir() if p.suffix in IMG_SUFFIXES):
            cands = [gt / d.name / f"{img.stem}_mask{s}" for s in IMG_SUFFIXES] + \
                    [gt / d.name / f"{img.stem}{s}" for s in IMG_SUFFIXES]
            if not any(c.is_file() for c in cands):
                raise DataError(f"anomalous image without a mask: {str(img)!r} "
                                f"(expected {str(gt / d.name / (img.stem + '_mask.png'))!r})")


def mvtec_layout_samples(cat_root: Path, category: str) -> pd.DataFrame:
    """Sample table of one category folder in the MVTec AD layout, via anomalib's parser."""
    from anomalib.data.datasets.image.mvtecad import make_mvtec_ad_dataset

    if not cat_root.is_dir():
        raise DataError(f"category folder {str(cat_root)!r} does not exist")
    check_masks(cat_root)
    try:
        raw = make_mvtec_ad_dataset(cat_root, split=None, extensions=IMG_SUFFIXES)
    except Exception as e:  # anomalib's MisMatchError / RuntimeError: re-raise with the folder
        raise DataError(f"{str(cat_root)!r}: {e}") from e
    return anomalib_to_table(raw, category)


def anomalib_to_table(raw: pd.DataFrame, category: str) -> pd.DataFrame:
    """anomalib's (split, label, image_path, mask_path, label_index) frame -> our COLUMNS."""
    rows = []
    for r in raw.itertuples(index=False):
        p = Path(r.image_path)
        label = int(r.label_index)
        mask = r.mask_path if isinstance(r.mask_path, str) and r.mask_path else None
        rows.append({
            "category": category,
            "split": r.split,
            "label": label,
            "defect_type": r.label,
            "defect_group": "",
            "image_path": str(p),
            "mask_paths": (mask,) if (label == 1 and mask) else (),
            "image_id": f"{r.split}/{r.label}/{p.stem}",
        })
    return pd.DataFrame(rows)


@register_dataset("mvtec_ad")
class MVTecAD(DatasetAdapter):
    name = "mvtec_ad"
    object_categories = frozenset(MVTEC_AD_CATEGORIES) - MVTEC_AD_TEXTURES

    def categories(self) -> list[str]:
        return self.folder_categories()

    def _samples(self, category: str) -> pd.DataFrame:
        return mvtec_layout_samples(require_category_dir(self, category), category)
