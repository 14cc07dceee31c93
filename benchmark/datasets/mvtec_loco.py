"""MVTec LOCO AD read with anomalib's ``mvtec_loco.make_dataset``.

Layout: ``<root>/<category>/{train/good, validation/good, test/{good, logical_anomalies,
structural_anomalies}, ground_truth/<type>/<image-id>/000.png, 001.png, ...}`` plus
``<root>/<category>/defects_config.json``. One anomalous image has one PNG per defect region
(its pixel value names the defect in defects_config.json); ``mask_paths`` lists them all and
``load_mask`` merges them, while AU-sPRO reads them one by one.

Validation normals become extra ``split="train"`` rows. They are defect-free images that the
official protocol sets aside for model selection; our protocol takes any validation from the
training data, never from the evaluation (test) set, so they join the training normals and
the test set stays untouched. Their image_id keeps the ``validation/`` prefix (LOCO reuses the
file names 000.png... in train and validation).
"""
from __future__ import annotations

import json
import warnings
from pathlib import Path

import pandas as pd

from . import register_dataset
from .base import DataError, DatasetAdapter, require_category_dir

LOCO_CATEGORIES = ("breakfast_box", "juice_bottle", "pushpins", "screw_bag", "splicing_connectors")
LOCO_GROUPS = {"logical_anomalies": "logical", "structural_anomalies": "structural"}
MASK_SUFFIXES = (".png",)
IMG_SUFFIXES = (".png", ".PNG", ".jpg", ".JPG", ".jpeg", ".bmp", ".tif", ".tiff")
CONFIG_KEYS = {"defect_name": str, "pixel_value": int, "saturation_threshold": (int, float),
               "relative_saturation": bool}


def check_loco_masks(cat_root: Path) -> None:
    """Name the first anomalous test image whose ground_truth/<type>/<id>/ folder holds no PNG,
    before anomalib's bulk assignment turns it into an opaque length error."""
    test = cat_root / "test"
    if not test.is_dir():
        raise DataError(f"mvtec_loco: missing folder {str(test)!r}")
    for d in sorted(p for p in test.iterdir() if p.is_dir() and p.name != "good"):
        for img in sorted(p for p in d.iterdir() if p.suffix in IMG_SUFFIXES):
            folder = cat_root / "ground_truth" / d.name / img.stem
            if not folder.is_dir() or not any(p.suffix in MASK_SUFFIXES for p in folder.iterdir()):
                raise DataError(f"mvtec_loco: anomalous image without a mask: {str(img)!r} "
                                f"(expected PNGs in {str(folder)!r})")


def read_defects_config(path: Path) -> list[dict]:
    """defects_config.json as a list of {defect_name, pixel_value, saturation_threshold,
    relative_saturation}, each field checked (AU-sPRO depends on all four)."""
    if not path.is_file():
        raise DataError(f"mvtec_loco: defects config {str(path)!r} does not exist")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise DataError(f"mvtec_loco: cannot parse defects config {str(path)!r}: {e}") from e
    if not isinstance(data, list) or not data:
        raise DataError(f"mvtec_loco: defects config {str(path)!r} must be a non-empty JSON list")
    out = []
    for i, entry in enumerate(data):
        if not isinstance(entry, dict):
            raise DataError(f"mvtec_loco: defects config {str(path)!r} entry {i} is not an object")
        for key, typ in CONFIG_KEYS.items():
            val = entry.get(key)
            ok = isinstance(val, typ) and not (typ is not bool and isinstance(val, bool))
            if not ok:
                raise DataError(f"mvtec_loco: defects config {str(path)!r} entry {i}: field "
                                f"{key!r} is {val!r}, expected {getattr(typ, '__name__', 'a number')}")
        if not 0 < entry["pixel_value"] <= 255 or entry["saturation_threshold"] <= 0:
            raise DataError(f"mvtec_loco: defects config {str(path)!r} entry {i}: pixel_value must "
                            f"be in 1..255 and saturation_threshold > 0")
        out.append({k: entry[k] for k in CONFIG_KEYS})
    return out


@register_dataset("mvtec_loco")
class MVTecLOCO(DatasetAdapter):
    name = "mvtec_loco"
    object_categories = frozenset(LOCO_CATEGORIES)

    def categories(self) -> list[str]:
        return self.folder_categories(LOCO_CATEGORIES)

    def defect_config(self, category: str) -> list[dict]:
        return read_defects_config(self.root / category / "defects_config.json")

    def _samples(self, category: str) -> pd.DataFrame:
        from anomalib.data.datasets.image.mvtec_loco import make_dataset

        cat_root = require_category_dir(self, category)
        check_loco_masks(cat_root)
        try:
            # anomalib 2.7 writes the per-image mask lists into a column pandas 3 infers as
            # str (TypeError); parse with object columns, as under pandas 2.
            with warnings.catch_warnings(), pd.option_context("future.infer_string", False):
                warnings.simplefilter("ignore")
                raw = make_dataset(cat_root, split=None, extensions=IMG_SUFFIXES)
        except Exception as e:  # MisMatchError / RuntimeError: re-raise naming the folder
            raise DataError(f"{self.name}: {str(cat_root)!r}: {e}") from e
        rows = []
        for r in raw.itertuples(index=False):
            p = Path(r.image_path)
            label = int(r.label_index)
            folder = "validation" if r.split == "val" else r.split
            masks = tuple(sorted(r.mask_path)) if label == 1 and isinstance(r.mask_path, list) else ()
            rows.append({
                "category": category,
                "split": "test" if r.split == "test" else "train",
                "label": label,
                "defect_type": r.label,
                "defect_group": LOCO_GROUPS.get(r.label, "") if label else "",
                "image_path": str(p),
                "mask_paths": masks,
                "image_id": f"{folder}/{r.label}/{p.stem}",
            })
        return pd.DataFrame(rows)
