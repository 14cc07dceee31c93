"""Golden tests for benchmark.metrics: scikit-learn, anomalib and hand-worked values."""
import math
import warnings

import cv2
import numpy as np
import pytest
import torch
from scipy import ndimage
from sklearn.metrics import average_precision_score, roc_auc_score

from benchmark import metrics as M

SEEDS = [0, 1, 2, 3]


def _scores(rng, n, kind):
    s = rng.random(n)
    if kind == "tied1":
        return np.round(s, 1)
    if kind == "int":
        return (s * 4).astype(np.int64)
    if kind == "float32":
        return s.astype(np.float32)
    return s


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("kind", ["random", "tied1", "int", "float32"])
def test_auroc_ap_equal_sklearn(seed, kind):
    rng = np.random.default_rng(seed)
    n = int(rng.integers(50, 800))
    y = rng.random(n) < rng.uniform(0.05, 0.6)
    y[0], y[1] = True, False
    s = _scores(rng, n, kind) + y * rng.uniform(0, 0.5) * (kind == "random")
    assert M.auroc(y, s) == pytest.approx(roc_auc_score(y, s), abs=1e-9)
    assert M.average_precision(y, s) == pytest.approx(average_precision_score(y, s), abs=1e-9)


def test_accepts_torch_and_int_labels():
    rng = np.random.default_rng(5)
    y = (rng.random(200) < 0.3).astype(np.int64)
    s = rng.random(200).astype(np.float32)
    assert M.auroc(torch.from_numpy(y), torch.from_numpy(s)) == pytest.approx(roc_auc_score(y, s), abs=1e-9)


def _f1max_brute(y, s):
    best = 0.0
    for t in np.unique(s):
        pred = s >= t
        tp = np.sum(pred & y)
        fp = np.sum(pred & ~y)
        fn = np.sum(~pred & y)
        if tp:
            best = max(best, 2 * tp / (2 * tp + fp + fn))
    return best


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("kind", ["random", "tied1", "int"])
def test_f1max_brute_force(seed, kind):
    rng = np.random.default_rng(seed)
    y = rng.random(300) < 0.3
    s = _scores(rng, 300, kind)
    assert M.f1_max(y, s) == pytest.approx(_f1max_brute(y, s), abs=1e-12)


def test_perfect_and_reversed():
    y = np.array([0, 0, 1, 1])
    assert M.auroc(y, [0.1, 0.2, 0.3, 0.4]) == 1.0
    assert M.auroc(y, [0.4, 0.3, 0.2, 0.1]) == 0.0
    assert M.f1_max(y, [0.1, 0.2, 0.3, 0.4]) == 1.0


@pytest.mark.parametrize("fn", [M.auroc, M.average_precision, M.f1_max])
@pytest.mark.parametrize("labels", [np.zeros(10, bool), np.ones(10, bool)])
def test_one_class_nan_and_warning(fn, labels):
    with pytest.warns(M.UndefinedMetricWarning):
        v = fn(labels, np.linspace(0, 1, 10))
    assert math.isnan(v)


def test_one_class_dicts():
    with pytest.warns(M.UndefinedMetricWarning):
        d = M.image_metrics(np.zeros(5), np.arange(5.0))
    assert set(d) == {"image_auroc", "image_ap", "image_f1max"} and all(math.isnan(v) for v in d.values())
    with pytest.warns(M.UndefinedMetricWarning):
        d = M.pixel_metrics(np.zeros((2, 8, 8), bool), np.random.default_rng(0).random((2, 8, 8)))
    assert set(d) == {"pixel_auroc", "pixel_ap", "pixel_f1max", "pixel_aupro"}
    assert all(math.isnan(v) for v in d.values())


def test_constant_scores():
    y = np.array([0, 1, 0, 1, 1])
    s = np.full(5, 3.0)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert M.auroc(y, s) == 0.5
        assert M.average_precision(y, s) == pytest.approx(0.6)
        assert M.f1_max(y, s) == pytest.approx(2 * 3 / (3 + 5))


def test_shape_and_value_errors():
    with pytest.raises(ValueError, match="same shape"):
        M.auroc([0, 1, 1], [0.1, 0.2])
    with pytest.raises(ValueError, match="binary"):
        M.auroc([0, 2, 1], [0.1, 0.2, 0.3])
    with pytest.raises(ValueError, match="NaN"):
        M.auroc([0, 1], [0.1, np.nan])
    with pytest.raises(ValueError, match="fpr_limit"):
        M.aupro(np.ones((1, 4, 4), bool), np.zeros((1, 4, 4)), fpr_limit=0)
    with pytest.raises(ValueError, match=r"\[N,H,W\]"):
        M.aupro(np.ones((2, 4, 4), bool), np.zeros((3, 4, 4)))


# ----------------------------------------------------------------- AUPRO
def _blob_data(seed, n=12, size=48, float32=True):
    rng = np.random.default_rng(seed)
    masks = np.zeros((n, size, size), bool)
    yy, xx = np.ogrid[:size, :size]
    for i in range(n // 2):
        for _ in range(int(rng.integers(1, 4))):
            cy, cx = rng.integers(4, size - 4, 2)
            r = rng.integers(1, 7)
            masks[i] |= (yy - cy) ** 2 + (xx - cx) ** 2 <= r * r
    maps = ndimage.gaussian_filter(rng.random((n, size, size)) + masks * rng.uniform(0.2, 1.0), (0, 1.5, 1.5))
    return masks, maps.astype(np.float32 if float32 else np.float64)


def _anomalib_aupro(masks, maps, fpr_limit):
    from anomalib.metrics.aupro import _AUPRO  # the computation behind anomalib.metrics.AUPRO

    metric = _AUPRO(fpr_limit=fpr_limit)
    metric.update(torch.from_numpy(np.asarray(maps, np.float32)), torch.from_numpy(masks.astype(np.int64)))
    return float(metric.compute())


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("fpr_limit", [0.3, 0.05])
def test_aupro_matches_anomalib(seed, fpr_limit):
    masks, maps = _blob_data(seed)
    ref = _anomalib_aupro(masks, maps, fpr_limit)
    assert M.aupro(masks, maps, fpr_limit) == pytest.approx(ref, abs=1e-3)
    tied = np.round(maps, 2)  # many ties between normal and anomalous pixels
    assert M.aupro(masks, tied, fpr_limit) == pytest.approx(_anomalib_aupro(masks, tied, fpr_limit), abs=1e-3)


def test_aupro_hand_built():
    # One 1x13 image. Region A = pixels 0-1 (size 2), region B = pixel 12 (size 1), 10 normals,
    # so each normal pixel adds 0.1 FPR. Scores, descending:
    #   0.9 A -> (FPR 0,   PRO (1/2 + 0)/2 = 0.25)
    #   0.8 N -> (0.1, 0.25)
    #   0.7 B -> (0.1, (1/2 + 1)/2 = 0.75)
    #   0.6 N and 0.6 A tie -> one point (0.2, 1.0): a diagonal segment from (0.1, 0.75)
    #   0.45 N -> (0.3, 1.0)
    # Area to 0.3: 0.1*0.25 + 0.1*(0.75+1)/2 + 0.1*1 = 0.025 + 0.0875 + 0.1 = 0.2125; /0.3 = 0.708333
    # Area to 0.15 (interpolated PRO at 0.15 = 0.875): 0.025 + 0.05*(0.75+0.875)/2 = 0.065625;
    # /0.15 = 0.4375
    mask = np.zeros((1, 1, 13), bool)
    mask[0, 0, [0, 1, 12]] = True
    amap = np.zeros((1, 1, 13))
    amap[0, 0, [0, 1, 12]] = [0.9, 0.6, 0.7]
    amap[0, 0, 2:12] = [0.8, 0.6, 0.45, 0.3, 0.2, 0.1, 0.09, 0.08, 0.07, 0.06]
    assert M.aupro(mask, amap, 0.3) == pytest.approx(0.2125 / 0.3, abs=1e-12)
    assert M.aupro(mask, amap, 0.15) == pytest.approx(0.4375, abs=1e-12)
    assert _anomalib_aupro(mask, amap, 0.3) == pytest.approx(0.2125 / 0.3, abs=1e-5)


def test_aupro_eight_connectivity():
    # Mask pixels (0,0), (1,1), (1,2): one 8-connected region of size 3 (4-connectivity would
    # make two). Scores 0.9 and 0.8 on the first two, 0.05 on the third, normals 0.7..0.2:
    # the curve sits at PRO 2/3 from FPR 0 on (4-connected it would be (1 + 1/2)/2 = 0.75).
    mask = np.zeros((1, 3, 3), bool)
    mask[0, [0, 1, 1], [0, 1, 2]] = True
    amap = np.zeros((1, 3, 3))
    amap[0, [0, 1, 1], [0, 1, 2]] = [0.9, 0.8, 0.05]
    amap[~mask] = [0.7, 0.6, 0.5, 0.4, 0.3, 0.2]
    assert M.aupro(mask, amap) == pytest.approx(2 / 3, abs=1e-12)
    assert M.aupro(mask, amap) == pytest.approx(_anomalib_aupro(mask, amap, 0.3), abs=1e-5)


def test_aupro_resizes_masks_nearest():
    masks, maps = _blob_data(4, n=4, size=32, float32=False)
    big = np.repeat(np.repeat(masks, 2, axis=1), 2, axis=2)
    assert M.aupro(big, maps) == pytest.approx(M.aupro(masks, maps), abs=1e-12)
    assert M.match_size(big, (32, 32)).shape == (4, 32, 32)
    assert (M.match_size(big, (32, 32)) == masks).all()


def test_pixel_metrics_consistent():
    masks, maps = _blob_data(7, float32=False)
    d = M.pixel_metrics(masks, maps)
    assert d["pixel_auroc"] == pytest.approx(roc_auc_score(masks.ravel(), maps.ravel()), abs=1e-9)
    assert d["pixel_ap"] == pytest.approx(average_precision_score(masks.ravel(), maps.ravel()), abs=1e-9)
    assert d["pixel_f1max"] == pytest.approx(M.f1_max(masks, maps), abs=1e-12)
    assert d["pixel_aupro"] == pytest.approx(M.aupro(masks, maps), abs=1e-12)


# ----------------------------------------------------------------- sPRO
ABS2 = {"defect_name": "missing", "pixel_value": 255, "saturation_threshold": 2, "relative_saturation": False}
REL1 = {"defect_name": "scratch", "pixel_value": 254, "saturation_threshold": 1.0, "relative_saturation": True}
REL06 = {"defect_name": "blobs", "pixel_value": 253, "saturation_threshold": 0.6, "relative_saturation": True}
CONFIG = [ABS2, REL1, REL06]


def _case_two_images():
    # Image 0 is good (8 normals), image 1 has a defect on pixels 0-3 and 4 normals: 12 pooled.
    maps = np.zeros((2, 1, 8))
    maps[0, 0] = [0.55, 0.45, 0.35, 0.25, 0.15, 0.05, 0.02, 0.01]
    maps[1, 0] = [0.9, 0.8, 0.1, 0.1, 0.5, 0.4, 0.3, 0.2]
    defect = np.zeros((1, 8), bool)
    defect[0, :4] = True
    return maps, defect


def test_spro_absolute_saturates():
    # Absolute t=2 on a 4-pixel defect: saturation area 2. After 0.9 and 0.8 (FPR still 0) the
    # defect is saturated, sPRO = min(2/2, 1) = 1 and stays 1 (capped): every AUC is 1.
    maps, defect = _case_two_images()
    out = M.spro(maps, [None, [(defect, 255)]], CONFIG)
    assert list(out) == list(M.SPRO_FPR_LIMITS)
    assert all(v == pytest.approx(1.0, abs=1e-12) for v in out.values())


def test_spro_relative_and_fpr_pooling():
    # Relative t=1.0: saturation area int(1.0*4) = 4. sPRO is 0.5 from FPR 0 (0.9, 0.8 found).
    # The two 0.1 defect pixels come after the 9 pooled normals scoring > 0.1
    # (0.55 0.5 0.45 0.4 0.35 0.3 0.25 0.2 0.15), i.e. at FPR 9/12 = 0.75, then sPRO = 1.
    # AUC(1.0) = 0.75*0.5 + 0.25*1 = 0.625; AUC(0.3) = AUC(0.01) = 0.5.
    # Without pooling the good image (4 normals only) the jump would be at FPR 4/4 = 1.
    maps, defect = _case_two_images()
    out = M.spro(maps, [[], [(defect, 254)]], CONFIG)
    assert out[1.0] == pytest.approx(0.625, abs=1e-12)
    assert out[0.3] == pytest.approx(0.5, abs=1e-12)
    assert out[0.01] == pytest.approx(0.5, abs=1e-12)


def test_spro_two_blobs_one_channel():
    # One channel with two 2-pixel blobs (area 4), relative t=0.6 -> int(2.4) = 2. The first blob
    # scores 0.9 and saturates the defect: sPRO 1 from FPR 0 (connected-component PRO would
    # give 0.5 there, and ceil(2.4) = 3 would give 2/3).
    amap = np.full((1, 5, 5), 0.5)
    mask = np.zeros((5, 5), bool)
    mask[0, 0:2] = True
    mask[4, 3:5] = True
    amap[0, 0, 0:2] = 0.9
    amap[0, 4, 3:5] = 0.0
    amap[0, 2] = np.linspace(0.1, 0.4, 5)
    out = M.spro(amap, [[(mask, 253)]], CONFIG)
    assert all(v == pytest.approx(1.0, abs=1e-12) for v in out.values())
    pro = M.aupro(mask[None], amap, 0.3)
    assert pro < 0.9  # the per-region definition is not the same metric


def test_spro_other_channel_pixels_are_not_false_positives():
    # Channel A (relative 1.0) on pixel 0 with score 0.2; channel B (absolute 2) on pixels 1-2
    # scoring 0.9. B's pixels are not defect-free, so they never count as FP: the first normal
    # (0.5) comes after B saturates. Mean over the two defects: B=1 from FPR 0, A reaches 1
    # after 0.5 and 0.3 (2 of 4 normals, FPR 0.5). Curve: (0, 0.5) .. (0.5, 0.5) -> (0.5, 1).
    # AUC(1.0) = 0.5*0.5 + 0.5*1 = 0.75.
    amap = np.array([[[0.2, 0.9, 0.9, 0.5, 0.3, 0.1, 0.05]]])
    a = np.zeros((1, 7), bool)
    a[0, 0] = True
    b = np.zeros((1, 7), bool)
    b[0, 1:3] = True
    out = M.spro(amap, [[(a, 254), (b, 255)]], CONFIG)
    assert out[1.0] == pytest.approx(0.75, abs=1e-12)
    assert out[0.3] == pytest.approx(0.5, abs=1e-12)


def test_spro_absolute_scaled_when_masks_resized():
    maps, defect = _case_two_images()
    maps = np.repeat(np.repeat(maps, 2, axis=1), 2, axis=2)  # maps 2x8 -> 2x16 (each pixel 2x2)
    big = np.repeat(np.repeat(defect, 4, axis=0), 4, axis=1)  # mask at 4x32: 4x the map area
    cfg = [dict(ABS2, saturation_threshold=32)]  # 32 px at mask resolution = 8 px at map size
    # At map resolution the defect has 16 px, saturation 8: the 0.9 and 0.8 pixels (4 px each)
    # saturate it at FPR 0, so every AUC is 1; unscaled (32 > 16 -> 16) it would not.
    out = M.spro(maps, [None, [(big, 255)]], cfg)
    assert all(v == pytest.approx(1.0, abs=1e-12) for v in out.values())


def _spro_reference(maps, gt, cfg, limits):
    """Per-threshold loop straight from the definition (slow, tiny inputs only)."""
    cfg = {c["pixel_value"]: c for c in cfg}
    normal = np.ones(maps.shape, bool)
    defects = []
    for i, chans in enumerate(gt):
        for m, v in chans or []:
            c = cfg[v]
            area = m.sum()
            sat = int(c["saturation_threshold"] * area) if c["relative_saturation"] else min(
                c["saturation_threshold"], area)
            defects.append((i, m, sat))
            normal[i] &= ~m
    ths = np.r_[np.inf, np.unique(maps)[::-1]]
    fprs, spros = [], []
    for t in ths:
        on = maps >= t
        fprs.append((on & normal).sum() / normal.sum())
        spros.append(np.mean([min((on[i] & m).sum() / sat, 1.0) for i, m, sat in defects]))
    fprs, spros = np.array(fprs), np.array(spros)
    out = {}
    for f in limits:
        keep = fprs <= f
        x, y = fprs[keep], spros[keep]
        if x[-1] < f:
            j = np.flatnonzero(~keep)[0]
            y_end = spros[j - 1] + (spros[j] - spros[j - 1]) * (f - fprs[j - 1]) / (fprs[j] - fprs[j - 1])
            x, y = np.r_[x, f], np.r_[y, y_end]
        out[f] = np.trapezoid(y, x) / f
    return out


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_spro_matches_reference_loop(seed):
    rng = np.random.default_rng(seed)
    n, h, w = 5, 6, 7
    maps = np.round(rng.random((n, h, w)), 2)
    gt = [None, None]
    for _ in range(n - 2):
        chans = []
        for v in rng.choice([253, 254, 255], size=int(rng.integers(1, 3)), replace=False):
            m = rng.random((h, w)) < 0.15
            m[rng.integers(h), rng.integers(w)] = True
            chans.append((m, int(v)))
        gt.append(chans)
    ours = M.spro(maps, gt, CONFIG)
    ref = _spro_reference(maps, gt, CONFIG, M.SPRO_FPR_LIMITS)
    for f in M.SPRO_FPR_LIMITS:
        assert ours[f] == pytest.approx(ref[f], abs=1e-9), f


def test_spro_config_from_file_and_errors(tmp_path):
    import json

    p = tmp_path / "defects_config.json"
    p.write_text(json.dumps(CONFIG))
    maps, defect = _case_two_images()
    assert M.spro(maps, [None, [(defect, 254)]], p)[1.0] == pytest.approx(0.625)
    with pytest.raises(ValueError, match="pixel_value 7"):
        M.spro(maps, [None, [(defect, 7)]], p)
    with pytest.raises(ValueError, match="entry 0"):
        M.spro(maps, [None, [(defect, 254)]], [{"defect_name": "x"}])
    with pytest.raises(ValueError, match="2 maps"):
        M.spro(maps, [None], p)
    with pytest.warns(M.UndefinedMetricWarning):
        out = M.spro(maps, [None, None], p)
    assert all(math.isnan(v) for v in out.values())


# --------------------------------------------------------------------------- sPRO at ground-truth scale
# LOCO's saturation thresholds are full-resolution pixel counts; maps are evaluated smaller.
SCALE_CONFIG = [
    {"defect_name": "abs", "pixel_value": 255, "saturation_threshold": 200, "relative_saturation": False},
    {"defect_name": "rel", "pixel_value": 254, "saturation_threshold": 0.3, "relative_saturation": True},
]


def _scale_case(seed, aligned, n=6, gt=128, ev=32):
    """Maps at ev px; two defects (one per config entry) per anomalous image at gt px: squares
    made of whole ev-pixels when ``aligned`` (4x4 blocks), else discs at arbitrary positions."""
    rng = np.random.default_rng(seed)
    f = gt // ev
    maps = np.round(rng.random((n, ev, ev)), 2)
    yy, xx = np.mgrid[:gt, :gt]
    channels = [None, None]
    for i in range(2, n):
        chans = []
        for v in (255, 254):
            if aligned:
                y, x, s = rng.integers(0, ev - 8), rng.integers(0, ev - 8), rng.integers(3, 8)
                small = np.zeros((ev, ev), bool)
                small[y:y + s, x:x + s] = True
                d = np.kron(small, np.ones((f, f), bool))
                maps[i, y:y + s, x:x + s] += np.round(rng.random() * rng.random((s, s)), 2)
            else:
                cy, cx, r = rng.integers(20, gt - 20), rng.integers(20, gt - 20), rng.integers(6, 20)
                d = (yy - cy) ** 2 + (xx - cx) ** 2 < r * r
                blur = cv2.resize(d.astype(np.float32), (ev, ev), interpolation=cv2.INTER_AREA)
                maps[i] += 0.5 * rng.random() * blur
            chans.append((d, v))
        channels.append(chans)
    return maps, channels


@pytest.mark.parametrize("seed", [0, 1])
def test_spro_ground_truth_larger_than_maps_equals_full_resolution(seed):
    # Defects made of whole 4x4 blocks: sPRO of the 32 px map against 128 px masks must equal,
    # exactly, sPRO computed at 128 px (slow per-threshold loop) on the map upsampled nearest.
    maps, gt = _scale_case(seed, aligned=True)
    ours = M.spro(maps, gt, SCALE_CONFIG)
    up = np.repeat(np.repeat(maps, 4, axis=1), 4, axis=2)
    ref = _spro_reference(up, gt, SCALE_CONFIG, M.SPRO_FPR_LIMITS)
    for f in M.SPRO_FPR_LIMITS:
        assert ours[f] == pytest.approx(ref[f], abs=1e-9), f
    # Passing masks already resized with their ground-truth area gives the same numbers.
    pre = [None if c is None else [(M.match_size(d, (32, 32)), v, int(d.sum())) for d, v in c] for c in gt]
    assert M.spro(maps, pre, SCALE_CONFIG) == pytest.approx(ours, abs=1e-12)


def test_spro_ground_truth_larger_than_maps_tracks_full_resolution():
    # Discs at arbitrary positions: not exact (a 32 px mask samples each disc), but the rule
    # tracks sPRO at 128 px on the upsampled map, while applying full-resolution pixel
    # thresholds to resized masks (the old path) understates it at every limit. Measured over
    # these 4 seeds x 5 limits: ours - ref mean -0.021, max |.| 0.050; old - ref mean -0.112,
    # at most -0.075.
    diffs, olds = [], []
    for seed in range(4):
        maps, gt = _scale_case(seed, aligned=False, n=8)
        ref = M.spro(np.repeat(np.repeat(maps, 4, axis=1), 4, axis=2), gt, SCALE_CONFIG)
        ours = M.spro(maps, gt, SCALE_CONFIG)
        old = M.spro(maps, [None if c is None else [(M.match_size(d, (32, 32)), v) for d, v in c]
                            for c in gt], SCALE_CONFIG)
        diffs += [ours[f] - ref[f] for f in M.SPRO_FPR_LIMITS]
        olds += [old[f] - ref[f] for f in M.SPRO_FPR_LIMITS]
    assert max(abs(d) for d in diffs) < 0.055
    assert abs(np.mean(diffs)) < 0.03
    assert max(olds) < -0.07


def test_spro_vanishing_channel_is_left_out_with_a_warning():
    maps, gt = _scale_case(0, aligned=True)
    line = np.zeros((128, 128), bool)
    line[1, 10:90] = True  # row 1: nearest-neighbour 128 -> 32 keeps rows 0, 4, 8, ...
    with_line = [c if c is None else list(c) for c in gt]
    with_line[2] = with_line[2] + [(line, 254)]
    with pytest.warns(M.UndefinedMetricWarning, match=r"gt_channels\[2\]\[2\].*vanish"):
        out = M.spro(maps, with_line, SCALE_CONFIG)
    assert out == pytest.approx(M.spro(maps, gt, SCALE_CONFIG), abs=1e-12)
    only = [None, None, [(line, 254)]]
    with pytest.warns(M.UndefinedMetricWarning):
        out = M.spro(maps[:3], only, SCALE_CONFIG)
    assert all(math.isnan(v) for v in out.values())
