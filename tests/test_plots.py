"""The report figures: each writes a PNG of the size its layout implies, and survives odd input."""
import matplotlib.image as mpimg
import numpy as np
import pandas as pd
import pytest

from benchmark.plots import DPI, bars_by_method, error_bars, pair_grid, roc_curves
from generators.base import Pair


def png_hw(path):
    assert path.is_file() and path.stat().st_size > 0
    img = mpimg.imread(path)
    return img.shape[:2], img


def results(seed=0, with_interval=True):
    """A `tables.method_summary`-shaped frame: mean and interval bounds per data set and method."""
    rng = np.random.default_rng(seed)
    rows = []
    for ds in ["mvtec_ad", "mpdd"]:
        for gen in ["cutpaste", "dhdiff"]:
            for det in ["unet", "patchcore"]:
                m = rng.uniform(0.6, 0.9)
                h = rng.uniform(0.01, 0.05) if with_interval else np.nan
                rows.append(dict(dataset=ds, method=f"{gen} / {det}", generator=gen, detector=det, mean=m,
                                 lo=m - h, hi=m + 2 * h, interval="t", n_categories=2, n_all=2))
    return pd.DataFrame(rows)


def test_error_bars_only_from_intervals():
    df = results()
    below, above = error_bars(df)
    assert below == pytest.approx(df["mean"] - df["lo"]) and above == pytest.approx(df["hi"] - df["mean"])
    df.loc[0, ["lo", "hi"]] = np.nan  # one seed, nothing to resample: no error bar, not a zero one
    below, above = error_bars(df)
    assert np.isnan(below[0]) and np.isnan(above[0]) and np.isfinite(below[1:]).all()
    with pytest.raises(ValueError, match="lo"):
        error_bars(df.drop(columns="lo"))


def test_bars_by_method_png(tmp_path):
    df = results()
    (h, w), img = png_hw(bars_by_method(df, tmp_path / "sub" / "bars.png"))
    assert h == round(3.6 * DPI)
    assert w > h  # two data set subplots side by side
    assert img[..., :3].std() > 0.01  # something drawn
    # one data set -> a narrower figure of the same height
    (h1, w1), _ = png_hw(bars_by_method(df[df.dataset == "mpdd"], tmp_path / "one.png"))
    assert h1 == h and w1 * 2 == pytest.approx(w, abs=2)


def test_bars_by_method_nan_values_and_no_intervals(tmp_path):
    df = results(with_interval=False)
    df.loc[df.generator == "dhdiff", "mean"] = np.nan
    df.loc[df.dataset == "mpdd", "mean"] = np.nan  # a whole subplot without values
    (h, w), _ = png_hw(bars_by_method(df, tmp_path / "nan.png"))
    assert h == round(3.6 * DPI)
    # error bars change the picture only where an interval exists
    a = png_hw(bars_by_method(results(with_interval=False), tmp_path / "a.png"))[1]
    b = png_hw(bars_by_method(results(with_interval=True), tmp_path / "b.png"))[1]
    assert a.shape == b.shape and not np.array_equal(a, b)


def test_roc_curves_png(tmp_path):
    rng = np.random.default_rng(1)
    y = np.r_[np.zeros(50), np.ones(20)].astype(int)
    curves = {f"cat{i}": {"good": (y, y + rng.normal(0, 0.5, y.size)),
                          "random": (y, rng.random(y.size))} for i in range(5)}
    curves["cat4"]["one_class"] = (np.zeros(10, int), rng.random(10))  # AUROC undefined: no crash
    (h, w), _ = png_hw(roc_curves(curves, tmp_path / "roc.png"))
    assert (h, w) == (round(3.2 * DPI * 2), round(3.2 * DPI * 4))  # 5 categories -> 2 x 4 grid
    (h1, w1), _ = png_hw(roc_curves({"c": curves["cat0"]}, tmp_path / "roc1.png"))
    assert (h1, w1) == (round(3.2 * DPI), round(3.2 * DPI))
    with pytest.raises(ValueError, match="labels"):
        roc_curves({"c": {"m": (y, y[:-1])}}, tmp_path / "bad.png")


def make_pairs(types, per_type, size=32, seed=0):
    rng = np.random.default_rng(seed)
    pairs = []
    for t in types:
        for _ in range(per_type):
            img = rng.integers(0, 255, (size, size, 3), dtype=np.uint8)
            mask = np.zeros((size, size), bool)
            y, x = rng.integers(4, size - 12, 2)
            mask[y:y + 8, x:x + 8] = True
            pairs.append(Pair(img, mask, t))
    return pairs


def test_pair_grid_one_row_per_defect_type(tmp_path):
    dims = [png_hw(pair_grid(make_pairs([f"t{i}" for i in range(n)], 2), tmp_path / f"g{n}.png"))[0]
            for n in (1, 2, 3)]
    heights = [h for h, _ in dims]
    step = heights[1] - heights[0]
    assert step > 0 and heights[2] - heights[1] == pytest.approx(step, abs=1)  # linear in rows
    assert heights[0] == pytest.approx(step, abs=1)  # no title: height is rows x panel
    assert {w for _, w in dims} == {round(2 * 2 * step)}  # 2 pairs x (image, mask) square panels
    # max_per_row caps the columns; extra pairs of a type do not make extra rows
    (h, w), _ = png_hw(pair_grid(make_pairs(["a", "b"], 5), tmp_path / "cap.png", max_per_row=3))
    assert h == heights[1] and w == pytest.approx(2 * 3 * step, abs=1)


def test_pair_grid_single_pair_and_outline(tmp_path):
    p = make_pairs(["scratch"], 1, size=64)
    (h, w), img = png_hw(pair_grid(p, tmp_path / "one.png", title="one pair"))
    assert w == round(2 * 1.6 * DPI) and h > round(1.6 * DPI)  # title band on top
    rgb = img[..., :3]
    red = (rgb[..., 0] > 0.9) & (rgb[..., 1] < 0.1) & (rgb[..., 2] < 0.1)
    assert red.sum() > 20  # the mask outline is drawn in red


def test_pair_grid_bad_input(tmp_path):
    p = make_pairs(["x"], 1)[0]
    with pytest.raises(ValueError, match="pair 0 \\(x\\): mask"):
        pair_grid([Pair(p.image, p.mask[:-1], "x")], tmp_path / "bad.png")
    with pytest.raises(ValueError, match="uint8"):
        pair_grid([Pair(p.image.astype(float), p.mask, "x")], tmp_path / "bad.png")
    with pytest.raises(ValueError, match="no pairs"):
        pair_grid([], tmp_path / "bad.png")
