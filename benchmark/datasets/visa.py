"""VisA, read in place from the official release or from anomalib's converted folder.

Official release (``layout="official"``): ``<root>/<category>/Data/Images/{Normal,Anomaly}/*.JPG``,
``<root>/<category>/Data/Masks/Anomaly/*.png`` and ``<root>/split_csv/1cls.csv`` (header
``object,split,label,image,mask``; split train/test; label normal/anomaly; paths relative to
the root). The split comes straight from the csv and nothing is copied: anomalib's
``Visa.prepare_data`` would duplicate the whole set into ``visa_pytorch``.

Converted (``layout="visa_pytorch"``): ``[<root>/]visa_pytorch/<category>/{train/good,
test/{good,bad}, ground_truth/bad/*.png}``, read like MVTec AD.

``layout="auto"`` (default) prefers the csv when present. Both layouts give the same table
(defect_type "good"/"bad", image_id ``<split>/<defect_type>/<stem>``), so seeds and splits do
not depend on which copy is read. Masks store 0/1/2; ``load_mask`` binarises them with ``> 0``.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from ..schema import option
from . import register_dataset
from .base import DataError, DatasetAdapter, require_category_dir
from .mvtec_ad import mvtec_layout_samples

VISA_CATEGORIES = ("candle", "capsules", "cashew", "chewinggum", "fryum", "macaroni1",
                   "macaroni2", "pcb1", "pcb2", "pcb3", "pcb4", "pipe_fryum")
CSV_COLUMNS = ["object", "split", "label", "image", "mask"]
LAYOUTS = ("auto", "official", "visa_pytorch")


def read_split_csv(path: Path) -> pd.DataFrame:
    """The 1cls split csv as strings, checked for its header and value spellings."""
    if not path.is_file():
        raise DataError(f"visa: split csv {str(path)!r} does not exist")
    try:
        df = pd.read_csv(path, dtype=str, keep_default_na=False)
    except Exception as e:
        raise DataError(f"visa: cannot parse split csv {str(path)!r}: {e}") from e
    df.columns = [str(c).strip() for c in df.columns]
    if list(df.columns) != CSV_COLUMNS:
        raise DataError(f"visa: split csv {str(path)!r} has columns {list(df.columns)}, "
                        f"expected {CSV_COLUMNS}")
    df = df.apply(lambda c: c.str.strip())
    for col, allowed in (("split", {"train", "test"}), ("label", {"normal", "anomaly"})):
        bad = df[~df[col].isin(allowed)]
        if len(bad):
            line = int(bad.index[0]) + 2  # 1-based, after the header
            raise DataError(f"visa: split csv {str(path)!r} line {line}: {col} "
                            f"{bad[col].iloc[0]!r} is not one of {sorted(allowed)}")
    return df


def official_samples(root: Path, table: pd.DataFrame, category: str, csv_path: Path) -> pd.DataFrame:
    """Sample table of one category from the split csv, paths resolved under ``root``."""
    rows = []
    for line, r in zip(table.index, table.itertuples(index=False)):
        img = root / r.image
        where = f"(split csv {str(csv_path)!r} line {int(line) + 2})"
        if not img.is_file():
            raise DataError(f"visa: image {str(img)!r} does not exist {where}")
        anomalous = r.label == "anomaly"
        masks: tuple[str, ...] = ()
        if anomalous:
            if not r.mask:
                raise DataError(f"visa: anomalous image without a mask: {str(img)!r} {where}")
            mask = root / r.mask
            if not mask.is_file():
                raise DataError(f"visa: anomalous image without a mask: {str(img)!r} "
                                f"(mask {str(mask)!r} does not exist) {where}")
            masks = (str(mask),)
        defect = "bad" if anomalous else "good"
        rows.append({
            "category": category,
            "split": r.split,
            "label": int(anomalous),
            "defect_type": defect,
            "defect_group": "",
            "image_path": str(img),
            "mask_paths": masks,
            "image_id": f"{r.split}/{defect}/{img.stem}",
        })
    if not rows:
        raise DataError(f"visa: split csv {str(csv_path)!r} has no rows for category {category!r}")
    return pd.DataFrame(rows).sort_values("image_path", ignore_index=True)


@dataclass
class VisAConfig:
    layout: str = option("auto", choices=LAYOUTS,
                         help="official: split_csv/1cls.csv release; visa_pytorch: anomalib's converted folder")


@register_dataset("visa")
class VisA(DatasetAdapter):
    name = "visa"
    object_categories = frozenset(VISA_CATEGORIES)  # all twelve are objects

    config_class = VisAConfig

    def __init__(self, root=None, **cfg):
        super().__init__(root, **cfg)
        layout = self.config.layout
        self.csv_path = self.root / "split_csv" / "1cls.csv"
        converted = self.root / "visa_pytorch"
        has_converted = converted.is_dir() or any(
            (p / "train").is_dir() for p in self.root.iterdir() if p.is_dir())
        if layout == "official" or (layout == "auto" and (self.csv_path.is_file() or not has_converted)):
            if not self.csv_path.is_file():
                raise DataError(f"visa: split csv {str(self.csv_path)!r} does not exist (official "
                                f"layout; or point --data-root at anomalib's visa_pytorch folder)")
            self.layout = "official"
            self.table = read_split_csv(self.csv_path)
        else:
            self.layout = "visa_pytorch"
            if converted.is_dir():
                self.root = converted
            self.table = None

    def categories(self) -> list[str]:
        if self.layout == "official":
            found = sorted(c for c in self.table["object"].unique() if (self.root / c).is_dir())
        else:
            return self.folder_categories(VISA_CATEGORIES)
        if not found:
            raise DataError(f"{self.name}: no category folders under {str(self.root)!r}")
        return found

    def _samples(self, category: str) -> pd.DataFrame:
        cat_root = require_category_dir(self, category)
        if self.layout == "visa_pytorch":
            return mvtec_layout_samples(cat_root, category)
        rows = self.table[self.table["object"] == category]
        return official_samples(self.root, rows, category, self.csv_path)
