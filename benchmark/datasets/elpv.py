"""ELPV: real electroluminescence solar-cell images (300x300 grayscale), image-level labels only.

By default the copy shipped in the ``elpv-dataset`` package is read (no --data-root needed);
a root, if given, is a folder with the same ``labels.csv`` (``images/cellXXXX.png probability
type``, whitespace-separated) and ``images/``. We parse labels.csv ourselves instead of calling
``elpv_dataset.load_dataset``, which loads all 2,624 images into memory.

Categories are the cell types ``mono`` and ``poly``. A cell is normal at defect probability 0
and anomalous at probability >= ``anomalous_threshold`` (default 1.0, the experts' certain
defects); cells in between are dropped as ambiguous. There is no official split, so a seeded
permutation of each category's normals (sorted by file name, so the result is independent of
the csv order) sends ``train_fraction`` (default 0.5) of them to training; the other normals
and every anomaly are the test set. Same seed -> same split.
"""
from __future__ import annotations

import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from ..schema import option
from . import register_dataset
from .base import DataError, DatasetAdapter

ELPV_TYPES = ("mono", "poly")


@dataclass(frozen=True)
class ELPVConfig:
    anomalous_threshold: float = option(1.0, gt=0.0, le=1.0,
                                        help="probability at or above which a cell counts as defective")
    seed: int = option(0, ge=0, help="seeds the train/test split of the normals")
    train_fraction: float = option(0.5, gt=0.0, lt=1.0, help="share of each category's normals used for training")


def package_root() -> Path:
    """The data folder shipped inside the installed ``elpv-dataset`` package."""
    try:
        import elpv_dataset
    except ImportError as e:
        raise DataError("elpv: package 'elpv-dataset' is not installed; pass --data-root instead") from e
    return Path(elpv_dataset.__file__).parent / "data"


def read_labels(path: Path) -> pd.DataFrame:
    """labels.csv as (path, probability, type), each line checked."""
    if not path.is_file():
        raise DataError(f"elpv: labels file {str(path)!r} does not exist")
    rows = []
    for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        parts = line.split()
        if not parts:
            continue
        try:
            if len(parts) != 3:
                raise ValueError(f"expected 3 fields, got {len(parts)}")
            prob = float(parts[1])
            if not 0.0 <= prob <= 1.0:
                raise ValueError(f"probability {prob} outside [0, 1]")
            if parts[2] not in ELPV_TYPES:
                raise ValueError(f"type {parts[2]!r} is not one of {list(ELPV_TYPES)}")
        except ValueError as e:
            raise DataError(f"elpv: labels file {str(path)!r} line {n}: {e}") from e
        rows.append((parts[0], prob, parts[2]))
    if not rows:
        raise DataError(f"elpv: labels file {str(path)!r} is empty")
    return pd.DataFrame(rows, columns=["path", "probability", "type"])


@register_dataset("elpv")
class ELPV(DatasetAdapter):
    name = "elpv"
    has_masks = False
    needs_root = False
    # a cropped cell fills the whole frame: no background, so generators paste anywhere
    object_categories = frozenset()

    config_class = ELPVConfig

    def __init__(self, root=None, **cfg):
        super().__init__(root, **cfg)
        if self.root is not None and not self.root.is_dir():
            raise DataError(f"elpv: data root {str(self.root)!r} does not exist")
        self.data_root = self.root if self.root is not None else package_root()
        self.labels_path = self.data_root / "labels.csv"
        self.labels = read_labels(self.labels_path)

    def categories(self) -> list[str]:
        return sorted(self.labels["type"].unique())

    def _samples(self, category: str) -> pd.DataFrame:
        cfg = self.config
        lab = self.labels[self.labels["type"] == category]
        normal = lab[lab["probability"] == 0.0].sort_values("path")
        anomalous = lab[lab["probability"] >= cfg.anomalous_threshold].sort_values("path")
        if len(normal) < 2:
            raise DataError(f"elpv/{category}: need at least 2 normal cells in {str(self.labels_path)!r}")
        # per-category stream, so adding or dropping one category leaves the other's split alone
        rng = np.random.default_rng([cfg.seed, zlib.crc32(category.encode())])
        n_train = min(max(1, round(cfg.train_fraction * len(normal))), len(normal) - 1)
        train_idx = set(rng.permutation(len(normal))[:n_train].tolist())
        rows = []
        for i, r in enumerate(normal.itertuples(index=False)):
            rows.append(self._row(category, "train" if i in train_idx else "test", 0, r.path))
        for r in anomalous.itertuples(index=False):
            rows.append(self._row(category, "test", 1, r.path))
        return pd.DataFrame(rows)

    def _row(self, category: str, split: str, label: int, rel: str) -> dict:
        img = self.data_root / rel
        if not img.is_file():
            raise DataError(f"elpv: image {str(img)!r} listed in {str(self.labels_path)!r} does not exist")
        return {"category": category, "split": split, "label": label,
                "defect_type": "defect" if label else "good", "defect_group": "",
                "image_path": str(img), "mask_paths": (), "image_id": Path(rel).stem}
