"""Tiny fixture trees in the exact folder depths and file names of the official releases.

Each builder writes real small images (seeded noise) into ``root`` and returns the data root
to pass as ``--data-root``. An anomalous image carries a bright square exactly where its mask
(or each of its LOCO region masks) is set, at a position that differs per image, so a test
can check that a mask belongs to its image by looking at the pixels.
"""
from __future__ import annotations

import csv
import json
import zlib
from pathlib import Path

import cv2
import numpy as np

BACKGROUND, DEFECT = 60, 220


def _rng(*key) -> np.random.Generator:
    return np.random.default_rng(zlib.crc32("/".join(map(str, key)).encode()))


def _square(size: int, k: int) -> tuple[slice, slice]:
    """The k-th defect square: side size//4, its corner moving with k."""
    s = max(2, size // 4)
    span = size - s
    y, x = (3 + 5 * k) % span, (5 + 7 * k) % span
    return slice(y, y + s), slice(x, x + s)


def _image(path: Path, size: int, key: tuple, squares=()) -> None:
    img = _rng(*key).normal(BACKGROUND, 10, (size, size, 3)).clip(0, 255).astype(np.uint8)
    for sq in squares:
        img[sq] = DEFECT
    path.parent.mkdir(parents=True, exist_ok=True)
    if not cv2.imwrite(str(path), img):
        raise OSError(f"cannot write {path}")


def _mask(path: Path, size: int, squares, values) -> None:
    m = np.zeros((size, size), np.uint8)
    for sq, v in zip(squares, values):
        m[sq] = v
    path.parent.mkdir(parents=True, exist_ok=True)
    if not cv2.imwrite(str(path), m):
        raise OSError(f"cannot write {path}")


def _mvtec_like(root, categories, n_train, n_good, defects, size, mask_suffix="_mask") -> Path:
    root = Path(root)
    for cat in categories:
        c = root / cat
        for i in range(n_train):
            _image(c / "train" / "good" / f"{i:03d}.png", size, (cat, "train", i))
        for i in range(n_good):
            _image(c / "test" / "good" / f"{i:03d}.png", size, (cat, "good", i))
        for d, (defect, n) in enumerate(defects.items()):
            for i in range(n):
                sq = _square(size, i + 3 * d)
                _image(c / "test" / defect / f"{i:03d}.png", size, (cat, defect, i), [sq])
                _mask(c / "ground_truth" / defect / f"{i:03d}{mask_suffix}.png", size, [sq], [255])
    return root


def make_mvtec_ad_tree(root, categories=("bottle",), n_train=4, n_good=2, defects=None,
                       size=32) -> Path:
    """``<cat>/{train/good/000.png, test/<defect>/000.png, ground_truth/<defect>/000_mask.png}``."""
    return _mvtec_like(root, categories, n_train, n_good, defects or {"broken": 2}, size)


def make_mpdd_tree(root, categories=("bracket_black",), n_train=4, n_good=2, defects=None,
                   size=32) -> Path:
    """MPDD ships in MVTec AD's layout and names (``ground_truth/<defect>/000_mask.png``)."""
    return _mvtec_like(root, categories, n_train, n_good, defects or {"hole": 2, "scratches": 1}, size)


def visa_plan(category: str, n_train: int, n_good: int, n_bad: int) -> list[tuple[str, str, str]]:
    """(split, label, stem) of every image, rows shuffled like the real 1cls.csv: normals
    0000.. with the test ones spread between training ones (so the split is not file order),
    anomalies 000.. all in test."""
    n = n_train + n_good
    test = {int((j + 0.5) * n / n_good) for j in range(n_good)} if n_good else set()
    plan = [("test" if i in test else "train", "normal", f"{i:04d}") for i in range(n)]
    plan += [("test", "anomaly", f"{i:03d}") for i in range(n_bad)]
    order = _rng(category, "order").permutation(len(plan))
    return [plan[i] for i in order]


def _visa_squares(size: int, i: int) -> tuple[list, list]:
    """Anomaly i: one region of value 1 or 2, every third image two regions (values 1 and 2)."""
    if i % 3 == 2:
        return [_square(size, i), _square(size, i + 7)], [1, 2]
    return [_square(size, i)], [1 + i % 2]


def make_visa_tree(root, categories=("candle",), n_train=4, n_good=2, n_bad=2, size=32) -> Path:
    """Official release: ``<cat>/Data/Images/{Normal/0000.JPG, Anomaly/000.JPG}``,
    ``<cat>/Data/Masks/Anomaly/000.png`` (values 0/1/2), ``<cat>/image_anno.csv`` and
    ``split_csv/1cls.csv`` (object,split,label,image,mask; paths relative to the root)."""
    root = Path(root)
    rows = []
    for cat in categories:
        anno = []
        for split, label, stem in visa_plan(cat, n_train, n_good, n_bad):
            if label == "normal":
                rel = f"{cat}/Data/Images/Normal/{stem}.JPG"
                _image(root / rel, size, (cat, "normal", stem))
                mrel = ""
            else:
                rel = f"{cat}/Data/Images/Anomaly/{stem}.JPG"
                mrel = f"{cat}/Data/Masks/Anomaly/{stem}.png"
                sqs, vals = _visa_squares(size, int(stem))
                _image(root / rel, size, (cat, "anomaly", stem), sqs)
                _mask(root / mrel, size, sqs, vals)
            rows.append([cat, split, label, rel, mrel])
            anno.append([rel, label, mrel])
        with open(root / cat / "image_anno.csv", "w", newline="") as f:
            csv.writer(f).writerows([["image", "label", "mask"], *anno])
    (root / "split_csv").mkdir(parents=True, exist_ok=True)
    with open(root / "split_csv" / "1cls.csv", "w", newline="") as f:
        csv.writer(f).writerows([["object", "split", "label", "image", "mask"], *rows])
    return root


def make_visa_pytorch_tree(root, categories=("candle",), n_train=4, n_good=2, n_bad=2,
                           size=32) -> Path:
    """anomalib's converted copy: ``visa_pytorch/<cat>/{train/good/0000.JPG, test/good,
    test/bad/000.JPG, ground_truth/bad/000.png}`` (masks binarised to 255, names kept).
    Same images and split as ``make_visa_tree`` with the same arguments; returns ``root``."""
    root = Path(root)
    for cat in categories:
        c = root / "visa_pytorch" / cat
        for split, label, stem in visa_plan(cat, n_train, n_good, n_bad):
            if label == "normal":
                _image(c / split / "good" / f"{stem}.JPG", size, (cat, "normal", stem))
            else:
                sqs, _ = _visa_squares(size, int(stem))
                _image(c / "test" / "bad" / f"{stem}.JPG", size, (cat, "anomaly", stem), sqs)
                _mask(c / "ground_truth" / "bad" / f"{stem}.png", size, sqs, [255] * len(sqs))
    return root


LOCO_DEFECTS_CONFIG = [
    {"defect_name": "missing_part", "pixel_value": 255, "saturation_threshold": 1.0,
     "relative_saturation": True},
    {"defect_name": "extra_part", "pixel_value": 254, "saturation_threshold": 40,
     "relative_saturation": False},
    {"defect_name": "scratch", "pixel_value": 253, "saturation_threshold": 0.5,
     "relative_saturation": True},
]


def make_mvtec_loco_tree(root, categories=("breakfast_box",), n_train=4, n_val=2, n_good=2,
                         defects=None, regions=2, size=32) -> Path:
    """``<cat>/{train/good, validation/good, test/<type>/000.png,
    ground_truth/<type>/000/{000.png, 001.png, ...}, defects_config.json}``: one full-size PNG
    per defect region, holding that defect's pixel_value; anomaly i has ``regions`` regions
    (one region when i is odd, to vary the count)."""
    root = Path(root)
    defects = defects or {"logical_anomalies": 2, "structural_anomalies": 2}
    for cat in categories:
        c = root / cat
        c.mkdir(parents=True, exist_ok=True)
        (c / "defects_config.json").write_text(json.dumps(LOCO_DEFECTS_CONFIG, indent=2))
        for i in range(n_train):
            _image(c / "train" / "good" / f"{i:03d}.png", size, (cat, "train", i))
        for i in range(n_val):
            _image(c / "validation" / "good" / f"{i:03d}.png", size, (cat, "validation", i))
        for i in range(n_good):
            _image(c / "test" / "good" / f"{i:03d}.png", size, (cat, "good", i))
        for d, (dtype, n) in enumerate(defects.items()):
            for i in range(n):
                k = 1 if i % 2 else regions
                sqs = [_square(size, i + 4 * d + 9 * r) for r in range(k)]
                _image(c / "test" / dtype / f"{i:03d}.png", size, (cat, dtype, i), sqs)
                for r, sq in enumerate(sqs):
                    v = LOCO_DEFECTS_CONFIG[r % len(LOCO_DEFECTS_CONFIG)]["pixel_value"]
                    _mask(c / "ground_truth" / dtype / f"{i:03d}" / f"{r:03d}.png", size, [sq], [v])
    return root
