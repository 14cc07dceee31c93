"""Real-data adapters on tiny fixture trees in the official layouts, and ELPV on the package data."""
from __future__ import annotations

import csv
import json
import re
import shutil
from collections import Counter
from pathlib import Path

import cv2
import numpy as np
import pytest

from benchmark.datasets import DataError, create_dataset, list_datasets, load_image, load_mask
from tests.layouts import (
    LOCO_DEFECTS_CONFIG,
    make_mpdd_tree,
    make_mvtec_ad_tree,
    make_mvtec_loco_tree,
    make_visa_pytorch_tree,
    make_visa_tree,
)


def counts(df) -> Counter:
    return Counter(zip(df["split"], df["label"], df["defect_type"]))


def assert_masks_match_images(df) -> None:
    """Every anomalous row: its masks exist and cover exactly the bright defect of its image."""
    assert (df.loc[df["label"] == 0, "mask_paths"].map(len) == 0).all()
    anomalous = df[df["label"] == 1]
    assert len(anomalous)
    for r in anomalous.itertuples():
        assert r.mask_paths and all(Path(p).is_file() for p in r.mask_paths)
        img = load_image(r.image_path).mean(axis=2)
        m = load_mask(r.mask_paths, shape=img.shape)
        assert m.any() and not m.all()
        assert img[m].mean() > img[~m].mean() + 80, r.image_path


# ---------------------------------------------------------------- registry / shared errors

def test_adapters_registered():
    assert {"mpdd", "visa", "mvtec_loco", "elpv"} <= set(list_datasets())


@pytest.mark.parametrize("name", ["mpdd", "visa", "mvtec_loco"])
def test_missing_root_names_the_path(tmp_path, name):
    missing = tmp_path / "nowhere"
    with pytest.raises(DataError, match=re.escape(str(missing))):
        create_dataset(name, missing)
    with pytest.raises(DataError, match="--data-root"):
        create_dataset(name, None)


# ---------------------------------------------------------------- MVTec AD / MPDD

def test_mvtec_ad_fixture_tree_reads(tmp_path):
    root = make_mvtec_ad_tree(tmp_path, defects={"broken": 2, "crack": 1})
    assert (root / "bottle" / "ground_truth" / "crack" / "000_mask.png").is_file()
    df = create_dataset("mvtec_ad", root).samples("bottle")
    assert counts(df) == {("train", 0, "good"): 4, ("test", 0, "good"): 2,
                          ("test", 1, "broken"): 2, ("test", 1, "crack"): 1}
    assert_masks_match_images(df)


def test_mpdd_table(tmp_path):
    root = make_mpdd_tree(tmp_path, categories=("bracket_black", "tubes"), n_train=3, n_good=2,
                          defects={"hole": 2, "scratches": 1})
    ds = create_dataset("mpdd", root)
    assert ds.categories() == ["bracket_black", "tubes"]
    assert ds.is_object("tubes") and ds.has_masks
    df = ds.samples("tubes")
    assert (df["category"] == "tubes").all()
    assert counts(df) == {("train", 0, "good"): 3, ("test", 0, "good"): 2,
                          ("test", 1, "hole"): 2, ("test", 1, "scratches"): 1}
    for r in df[df["label"] == 1].itertuples():
        (mask,) = r.mask_paths
        assert Path(mask).name == Path(r.image_path).stem + "_mask.png"
        assert Path(mask).parent.name == r.defect_type == Path(r.image_path).parent.name
    assert_masks_match_images(df)


def test_mpdd_errors(tmp_path):
    root = make_mpdd_tree(tmp_path, categories=("bracket_black", "connector"))
    ds = create_dataset("mpdd", root)
    shutil.rmtree(root / "connector")
    with pytest.raises(DataError, match=re.escape(str(root / "connector"))):
        ds.samples("connector")
    (root / "bracket_black" / "ground_truth" / "hole" / "001_mask.png").unlink()
    with pytest.raises(DataError, match=re.escape(str(root / "bracket_black" / "test" / "hole" / "001.png"))):
        ds.samples("bracket_black")


# ---------------------------------------------------------------- VisA

def read_1cls(root: Path, category: str) -> dict[str, tuple[str, int]]:
    with open(root / "split_csv" / "1cls.csv", newline="") as f:
        return {str(root / r["image"]): (r["split"], int(r["label"] == "anomaly"))
                for r in csv.DictReader(f) if r["object"] == category}


def test_visa_official_split_is_the_csv(tmp_path):
    root = make_visa_tree(tmp_path, categories=("candle", "pcb1"), n_train=5, n_good=3, n_bad=4)
    before = sorted(p for p in root.rglob("*"))
    ds = create_dataset("visa", root)
    assert ds.layout == "official" and ds.categories() == ["candle", "pcb1"]
    df = ds.samples("pcb1")
    assert (df["category"] == "pcb1").all()
    assert counts(df) == {("train", 0, "good"): 5, ("test", 0, "good"): 3, ("test", 1, "bad"): 4}
    expected = read_1cls(root, "pcb1")
    assert dict(zip(df["image_path"], zip(df["split"], df["label"]))) == expected
    # the csv split is not file order: some test normals sort before training ones
    normals = df[df["label"] == 0].sort_values("image_path")
    assert list(normals["split"]) != sorted(normals["split"], reverse=True)
    for r in df[df["label"] == 1].itertuples():
        (mask,) = r.mask_paths
        assert Path(mask).relative_to(root).as_posix() == f"pcb1/Data/Masks/Anomaly/{Path(r.image_path).stem}.png"
    assert_masks_match_images(df)
    assert sorted(root.rglob("*")) == before  # nothing copied or converted


def test_visa_masks_with_values_1_and_2_binarise(tmp_path):
    root = make_visa_tree(tmp_path, n_bad=3)
    df = create_dataset("visa", root).samples("candle")
    seen = set()
    for r in df[df["label"] == 1].itertuples():
        raw = cv2.imread(r.mask_paths[0], cv2.IMREAD_UNCHANGED)
        seen |= set(np.unique(raw).tolist())
        assert (raw > 127).sum() == 0  # a 127 threshold would lose every defect
        m = load_mask(r.mask_paths)
        assert m.sum() == (raw > 0).sum() > 0
    assert seen == {0, 1, 2}


def test_visa_pytorch_layout_matches_official(tmp_path):
    kw = dict(categories=("capsules",), n_train=4, n_good=3, n_bad=3)
    official = create_dataset("visa", make_visa_tree(tmp_path / "raw", **kw)).samples("capsules")
    conv_root = make_visa_pytorch_tree(tmp_path / "anomalib", **kw)
    assert (conv_root / "visa_pytorch" / "capsules" / "ground_truth" / "bad" / "000.png").is_file()
    for root in (conv_root, conv_root / "visa_pytorch"):
        ds = create_dataset("visa", root)
        assert ds.layout == "visa_pytorch"
        conv = ds.samples("capsules")
        key = ["split", "label", "defect_type", "image_id"]
        assert conv[key].sort_values("image_id").values.tolist() == \
            official[key].sort_values("image_id").values.tolist()
        assert_masks_match_images(conv)


def test_visa_errors(tmp_path):
    root = make_visa_tree(tmp_path, categories=("candle", "pcb1"))
    csv_path = root / "split_csv" / "1cls.csv"
    text = csv_path.read_text()

    shutil.rmtree(root / "pcb1")
    ds = create_dataset("visa", root)
    with pytest.raises(DataError, match=re.escape(str(root / "pcb1"))):
        ds.samples("pcb1")

    mask = root / "candle" / "Data" / "Masks" / "Anomaly" / "001.png"
    mask.unlink()
    with pytest.raises(DataError, match=r"without a mask.*" + re.escape(str(root / "candle/Data/Images/Anomaly/001.JPG"))):
        ds.samples("candle")

    csv_path.write_text(text.replace(",anomaly,", ",Anomaly,", 1))
    with pytest.raises(DataError, match=r"1cls.csv' line \d+: label 'Anomaly'"):
        create_dataset("visa", root)

    csv_path.write_text(text.replace("object,split", "category,split", 1))
    with pytest.raises(DataError, match=re.escape(str(csv_path))):
        create_dataset("visa", root)

    csv_path.unlink()
    with pytest.raises(DataError, match=re.escape(str(csv_path))):
        create_dataset("visa", root)


# ---------------------------------------------------------------- MVTec LOCO

def test_loco_table(tmp_path):
    root = make_mvtec_loco_tree(tmp_path, n_train=3, n_val=2, n_good=2,
                                defects={"logical_anomalies": 3, "structural_anomalies": 2})
    ds = create_dataset("mvtec_loco", root)
    assert ds.categories() == ["breakfast_box"] and ds.is_object("breakfast_box")
    df = ds.samples("breakfast_box")
    assert counts(df) == {("train", 0, "good"): 5, ("test", 0, "good"): 2,
                          ("test", 1, "logical_anomalies"): 3, ("test", 1, "structural_anomalies"): 2}
    val = df[df["image_path"].str.contains("/validation/")]
    assert len(val) == 2 and (val["split"] == "train").all()
    assert val["image_id"].str.startswith("validation/").all()
    groups = dict(zip(df["defect_type"], df["defect_group"]))
    assert groups == {"good": "", "logical_anomalies": "logical", "structural_anomalies": "structural"}

    pixel_values = {d["pixel_value"] for d in LOCO_DEFECTS_CONFIG}
    n_regions = []
    for r in df[df["label"] == 1].itertuples():
        img = Path(r.image_path)
        gt = root / "breakfast_box" / "ground_truth" / r.defect_type / img.stem
        assert set(r.mask_paths) == {str(p) for p in gt.glob("*.png")}
        regions = [cv2.imread(p, cv2.IMREAD_GRAYSCALE) for p in r.mask_paths]
        union = np.logical_or.reduce([m > 0 for m in regions])
        assert np.array_equal(load_mask(r.mask_paths), union)
        assert union.sum() == sum((m > 0).sum() for m in regions)  # disjoint regions all kept
        assert all(set(np.unique(m).tolist()) <= {0} | pixel_values for m in regions)
        n_regions.append(len(regions))
    assert sorted(set(n_regions)) == [1, 2]
    assert_masks_match_images(df)


def test_loco_defect_config(tmp_path):
    root = make_mvtec_loco_tree(tmp_path)
    ds = create_dataset("mvtec_loco", root)
    assert ds.defect_config("breakfast_box") == LOCO_DEFECTS_CONFIG
    path = root / "breakfast_box" / "defects_config.json"

    broken = [dict(LOCO_DEFECTS_CONFIG[0]), dict(LOCO_DEFECTS_CONFIG[1])]
    del broken[1]["saturation_threshold"]
    path.write_text(json.dumps(broken))
    with pytest.raises(DataError, match=r"defects_config.json' entry 1: field 'saturation_threshold'"):
        ds.defect_config("breakfast_box")

    path.write_text("[{not json")
    with pytest.raises(DataError, match=re.escape(str(path))):
        ds.defect_config("breakfast_box")

    path.unlink()
    with pytest.raises(DataError, match=re.escape(str(path))):
        ds.defect_config("breakfast_box")


def test_loco_errors(tmp_path):
    root = make_mvtec_loco_tree(tmp_path, categories=("pushpins", "screw_bag"))
    ds = create_dataset("mvtec_loco", root)
    shutil.rmtree(root / "screw_bag")
    with pytest.raises(DataError, match=re.escape(str(root / "screw_bag"))):
        ds.samples("screw_bag")
    shutil.rmtree(root / "pushpins" / "ground_truth" / "structural_anomalies" / "001")
    img = root / "pushpins" / "test" / "structural_anomalies" / "001.png"
    with pytest.raises(DataError, match=r"without a mask.*" + re.escape(str(img))):
        ds.samples("pushpins")


# ---------------------------------------------------------------- ELPV (real package data)

def elpv_labels() -> list[tuple[str, float, str]]:
    import elpv_dataset
    path = Path(elpv_dataset.__file__).parent / "data" / "labels.csv"
    rows = [line.split() for line in path.read_text().splitlines() if line.strip()]
    return [(p, float(q), t) for p, q, t in rows]


@pytest.fixture(scope="module")
def elpv():
    return create_dataset("elpv")


@pytest.mark.parametrize("threshold", [1.0, 0.5])
def test_elpv_counts_match_labels(threshold):
    ds = create_dataset("elpv", anomalous_threshold=threshold)
    assert ds.categories() == ["mono", "poly"] and not ds.has_masks and not ds.is_object("mono")
    labels = elpv_labels()
    for cat in ("mono", "poly"):
        df = ds.samples(cat)
        n_norm = sum(1 for _, q, t in labels if t == cat and q == 0)
        n_anom = sum(1 for _, q, t in labels if t == cat and q >= threshold)
        assert (df["label"] == 0).sum() == n_norm and (df["label"] == 1).sum() == n_anom
        assert n_anom > 0 and (df["mask_paths"].map(len) == 0).all()
        assert set(df.loc[df["label"] == 1, "defect_type"]) == {"defect"}
        assert (df.loc[df["label"] == 1, "split"] == "test").all()
        assert (df["defect_group"] == "").all()
    if threshold == 0.5:  # the 2/3-probability cells now count, the 1/3 ones stay out
        assert sum(1 for _, q, t in labels if t == "mono" and 0.5 <= q < 1) > 0


def test_elpv_split_deterministic_and_disjoint(elpv):
    df = elpv.samples("poly")
    again = create_dataset("elpv", seed=0).samples("poly")
    assert df.equals(again)
    normals = df[df["label"] == 0]
    train, test = set(normals.loc[normals["split"] == "train", "image_id"]), \
        set(normals.loc[normals["split"] == "test", "image_id"])
    assert not train & test and len(train) == round(0.5 * len(normals))
    other = create_dataset("elpv", seed=1).samples("poly")
    other_train = set(other.loc[(other["label"] == 0) & (other["split"] == "train"), "image_id"])
    assert other_train != train and len(other_train) == len(train)
    quarter = create_dataset("elpv", train_fraction=0.25).samples("poly")
    assert ((quarter["split"] == "train").sum()) == round(0.25 * len(normals))
    img = load_image(df["image_path"].iloc[0])
    assert img.shape == (300, 300, 3)


def test_elpv_root_and_errors(tmp_path):
    labels = elpv_labels()
    pick = [r for r in labels if r[2] == "mono" and r[1] == 0.0][:4] + \
        [r for r in labels if r[2] == "mono" and r[1] == 1.0][:2]
    src = Path(create_dataset("elpv").labels_path).parent
    (tmp_path / "images").mkdir()
    for p, _, _ in pick:
        shutil.copy(src / p, tmp_path / p)
    text = "\n".join(f"{p}  {q}  {t}" for p, q, t in pick) + "\n"
    (tmp_path / "labels.csv").write_text(text)
    ds = create_dataset("elpv", tmp_path)
    assert ds.categories() == ["mono"]
    df = ds.samples("mono")
    assert len(df) == len(pick) and df["image_path"].str.startswith(str(tmp_path)).all()

    (tmp_path / "labels.csv").write_text(text + "images/x.png  maybe  mono\n")
    with pytest.raises(DataError, match=r"labels.csv' line 7"):
        create_dataset("elpv", tmp_path)
    (tmp_path / "labels.csv").write_text(text)
    (tmp_path / pick[0][0]).unlink()
    with pytest.raises(DataError, match=re.escape(str(tmp_path / pick[0][0]))):
        create_dataset("elpv", tmp_path).samples("mono")
    with pytest.raises(DataError, match=re.escape(str(tmp_path / "gone"))):
        create_dataset("elpv", tmp_path / "gone")
    with pytest.raises(ValueError, match="anomalous_threshold"):
        create_dataset("elpv", anomalous_threshold=0.0)
    with pytest.raises(ValueError, match="treshold"):
        create_dataset("elpv", treshold=0.5)
