"""MPDD (Metal Parts Defect Detection) read with anomalib's ``make_mpdd_dataset``.

Layout is MVTec AD's: ``<root>/<category>/{train/good, test/<defect>,
ground_truth/<defect>/<id>_mask.png}``; every category is a metal part, so all are objects.
"""
from __future__ import annotations

import pandas as pd

from . import register_dataset
from .base import DataError, DatasetAdapter, require_category_dir
from .mvtec_ad import IMG_SUFFIXES, anomalib_to_table, check_masks

MPDD_CATEGORIES = ("bracket_black", "bracket_brown", "bracket_white", "connector", "metal_plate",
                   "tubes")


@register_dataset("mpdd")
class MPDD(DatasetAdapter):
    name = "mpdd"
    object_categories = frozenset(MPDD_CATEGORIES)

    def categories(self) -> list[str]:
        return self.folder_categories(MPDD_CATEGORIES)

    def _samples(self, category: str) -> pd.DataFrame:
        from anomalib.data.datasets.image.mpdd import make_mpdd_dataset

        cat_root = require_category_dir(self, category)
        check_masks(cat_root)
        try:
            raw = make_mpdd_dataset(cat_root, split=None, extensions=IMG_SUFFIXES)
        except Exception as e:  # MisMatchError / RuntimeError: re-raise naming the folder
            raise DataError(f"{self.name}: {str(cat_root)!r}: {e}") from e
        return anomalib_to_table(raw, category)
