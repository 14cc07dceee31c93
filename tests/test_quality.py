"""Tests for benchmark.quality: weight-free metrics, the IC-LPIPS clustering, IS maths, configs."""
import math

import numpy as np
import pytest
import torch
from scipy.stats import wasserstein_distance

from benchmark import quality as Q
from generators.base import Pair


def _l2(a, b):
    return np.array([float(np.linalg.norm(np.asarray(x, float) - np.asarray(y, float))) for x, y in zip(a, b)])


def test_mask_binariness_by_dtype():
    assert Q.mask_binariness([np.zeros((4, 4), bool), np.ones((4, 4), bool)]) == 1.0
    soft = np.zeros((4, 4))
    soft[0, :2] = 0.5  # 2 of 16 values are soft
    soft[1] = 1.0
    assert Q.mask_binariness([soft]) == pytest.approx(14 / 16)
    png = np.zeros((2, 4), np.uint8)
    png[0] = 255
    png[1, 0] = 128  # 1 of 8 not 0/255
    assert Q.mask_binariness([png]) == pytest.approx(7 / 8)
    assert Q.mask_binariness([np.array([[0, 1], [1, 0]], np.uint8)]) == 1.0
    with pytest.raises(ValueError, match="empty"):
        Q.mask_binariness([])


def test_mask_area_stats():
    def sq(k, n=10):
        m = np.zeros((n, n), bool)
        m[:k, :k] = True
        return m

    gen = [sq(1), sq(2), sq(3)]  # areas 0.01 0.04 0.09
    real = [sq(5), sq(5).astype(np.uint8) * 255]  # 0.25 twice (uint8 PNG mask binarised > 127)
    out = Q.mask_area_stats(gen, real)
    assert out["area_mean_gen"] == pytest.approx(0.14 / 3)
    assert out["area_std_gen"] == pytest.approx(np.std([0.01, 0.04, 0.09]))
    assert out["area_mean_real"] == pytest.approx(0.25)
    assert out["area_w1"] == pytest.approx(wasserstein_distance([0.01, 0.04, 0.09], [0.25, 0.25]))
    assert out["area_w1"] == pytest.approx(0.25 - 0.14 / 3)
    assert Q.mask_area_stats(gen, None)["area_w1"] is None


def test_outside_mask_change():
    rng = np.random.default_rng(0)
    src = rng.integers(0, 256, (2, 8, 8, 3), dtype=np.uint8)
    masks = np.zeros((2, 8, 8), bool)
    masks[:, 2:4, 2:4] = True
    img = src.copy()
    img[masks] = 255 - img[masks]  # a change inside the masks only
    assert Q.outside_mask_change(img, src, masks) == 0.0
    img[0, 7, 7] = (img[0, 7, 7].astype(int) + 40) % 256  # one outside pixel, changed by > tol
    img[1, 0, 0, 0] = min(255, int(img[1, 0, 0, 0]) + 1) if img[1, 0, 0, 0] < 255 else 254  # within tol
    assert Q.outside_mask_change(img, src, masks, tol=2) == pytest.approx(1 / (2 * 60))
    assert Q.outside_mask_change(img, src, masks, tol=0) == pytest.approx(2 / (2 * 60))
    with pytest.raises(ValueError, match="pair 0"):
        Q.outside_mask_change(img[:, :4], src, masks)


def test_ic_lpips_clustering_with_l2():
    # Centres at 0 and 10 (1-D "images"). Generated 0, 1, 3 join centre 0; 9 joins centre 10;
    # 100 joins centre 10 too. Cluster 0 pairs: |0-1|, |0-3|, |1-3| = 1, 3, 2 -> mean 2.
    # Cluster 10 pairs: |9-100| = 91. Mean over clusters: (2 + 91) / 2 = 46.5.
    gen = [np.array([v]) for v in (0.0, 1.0, 3.0, 9.0, 100.0)]
    centres = [np.array([0.0]), np.array([10.0])]
    assert Q.ic_lpips_from_distance(gen, centres, _l2) == pytest.approx(46.5)
    # A cluster with one member is dropped: only cluster 0 (mean 2) remains.
    assert Q.ic_lpips_from_distance(gen[:4], centres, _l2) == pytest.approx(2.0)
    # No cluster with two members -> NaN.
    assert math.isnan(Q.ic_lpips_from_distance(gen[:1], centres, _l2))


def test_ic_lpips_cap_samples_members():
    rng = np.random.default_rng(3)
    gen = [np.array([v]) for v in rng.random(40)]
    full = Q.ic_lpips_from_distance(gen, [np.array([0.5])], _l2, cap=50)
    vals = np.array([g[0] for g in gen])
    expected = np.mean([abs(a - b) for i, a in enumerate(vals) for b in vals[i + 1 :]])
    assert full == pytest.approx(expected)
    capped = Q.ic_lpips_from_distance(gen, [np.array([0.5])], _l2, cap=5, rng=1)
    again = Q.ic_lpips_from_distance(gen, [np.array([0.5])], _l2, cap=5, rng=1)
    assert capped == again and capped != pytest.approx(full)


def test_inception_score_from_logits():
    # Uniform predictions: p(y|x) = p(y) -> KL 0 -> IS 1. One-hot-like distinct classes over
    # k images in one split -> IS close to k.
    assert Q.inception_score_from_logits(np.zeros((20, 7)), splits=2)[0] == pytest.approx(1.0)
    logits = np.full((4, 4), -50.0)
    logits[np.arange(4), np.arange(4)] = 50.0
    assert Q.inception_score_from_logits(logits, splits=1)[0] == pytest.approx(4.0, rel=1e-6)
    mean, std = Q.inception_score_from_logits(np.random.default_rng(0).normal(size=(30, 5)) * 3, splits=3)
    assert mean > 1.0 and std >= 0.0


def test_missing_paths():
    assert Q.inception_score([np.zeros((8, 8, 3), np.uint8)], None) is None
    assert Q.ic_lpips([np.zeros((8, 8, 3), np.uint8)], [np.zeros((8, 8, 3), np.uint8)], None) is None
    with pytest.raises(ValueError, match="quality.inception_weights"):
        Q.inception_score([np.zeros((8, 8, 3), np.uint8)], "/nonexistent/inception.pth")
    with pytest.raises(ValueError, match="quality.lpips_weights"):
        Q.ic_lpips([np.zeros((8, 8, 3), np.uint8)], [np.zeros((8, 8, 3), np.uint8)], "/nonexistent/vgg.pth")
    with pytest.raises(ValueError, match="quality.lpips_weights"):
        Q.quality_report({"a": [Pair(np.zeros((8, 8, 3), np.uint8), np.ones((8, 8), bool), "a")]}, {},
                         cfg={"lpips_weights": "/nonexistent/vgg.pth"})
    with pytest.raises(ValueError, match="quality.bogus"):
        Q.QualityConfig.of({"bogus": 1})


def test_lpips_from_local_backbone(tmp_path):
    # squeezenet1_1 is small enough to build here; the same path serves vgg16 / alexnet files.
    from torchvision.models import squeezenet1_1

    torch.manual_seed(0)
    tv = squeezenet1_1(weights=None)
    path = tmp_path / "squeeze.pth"
    torch.save(tv.state_dict(), path)
    dist = Q.lpips_distance(path, net="squeeze", size=64)
    rng = np.random.default_rng(0)
    a = [rng.integers(0, 256, (64, 64, 3), dtype=np.uint8) for _ in range(3)]
    b = [rng.integers(0, 256, (64, 64, 3), dtype=np.uint8) for _ in range(3)]
    same = dist(a, a)
    diff = dist(a, b)
    assert np.allclose(same, 0.0, atol=1e-6) and (diff > 0).all()
    assert np.allclose(diff, dist(b, a), atol=1e-5)
    with pytest.raises(ValueError, match="quality.lpips_weights"):
        Q.lpips_distance(path, net="alex")  # wrong backbone for this file


def _pair(rng, k, size=16):
    m = np.zeros((size, size), bool)
    m[:k, :k] = True
    return Pair(rng.integers(0, 256, (size, size, 3), dtype=np.uint8), m, "scratch")


def test_quality_report_rows():
    rng = np.random.default_rng(1)
    gen = {"scratch": [_pair(rng, 2), _pair(rng, 4)], "hole": [_pair(rng, 8)]}
    real = {"scratch": [_pair(rng, 4)]}
    src = [p.image.copy() for p in gen["scratch"]]
    rows = Q.quality_report(gen, real, sources={"scratch": src})
    assert [r["defect_type"] for r in rows] == ["hole", "scratch"]
    keys = {"defect_type", "n", "binariness", "area_mean_gen", "area_mean_real", "area_w1",
            "outside_change", "is", "ic_lpips", "mask_image_agreement", "copy_dist_mean", "copy_share"}
    assert all(set(r) == keys for r in rows)
    hole, scratch = rows
    assert hole["area_mean_real"] is None and hole["outside_change"] is None and hole["is"] is None
    assert hole["mask_image_agreement"] is None and hole["copy_share"] is None
    assert scratch["n"] == 2 and scratch["binariness"] == 1.0
    assert scratch["area_mean_gen"] == pytest.approx((4 + 16) / 2 / 256)
    assert scratch["area_w1"] == pytest.approx(abs((4 + 16) / 2 / 256 - 16 / 256))
    assert scratch["outside_change"] == 0.0


def test_inception_score_pipeline(tmp_path, monkeypatch):
    # A stand-in network: class 1 for dark images, class 0 for bright ones, read from the input
    # scaled to [-1, 1]. Half dark, half bright in one split -> IS = 2.
    class TwoClass(torch.nn.Module):
        def forward(self, x):
            m = x.mean(dim=(1, 2, 3))
            assert x.shape[-2:] == (299, 299) and x.min() >= -1 and x.max() <= 1
            return torch.stack([m * 100, -m * 100], dim=1)

    path = tmp_path / "inception.pth"
    path.write_bytes(b"stand-in")
    monkeypatch.setattr(Q, "_inception_model", lambda p: TwoClass())
    imgs = [np.full((32, 32, 3), v, np.uint8) for v in (0, 255, 0, 255, 0, 255)]
    assert Q.inception_score(imgs, str(path), splits=1, batch_size=4) == pytest.approx(2.0, rel=1e-6)
    assert Q.inception_score(imgs[::2], str(path), splits=1) == pytest.approx(1.0)


def test_inception_rejects_wrong_state_dict(tmp_path):
    path = tmp_path / "bad.pth"
    torch.save({"conv.weight": torch.zeros(1)}, path)
    with pytest.raises(ValueError, match="quality.inception_weights.*inception_v3"):
        Q.inception_score([np.zeros((8, 8, 3), np.uint8)], str(path))


def test_mask_image_agreement_exact():
    """Change only inside the mask -> AUROC 1; change only in the ring around it -> 0; the
    neighbourhood (mask dilated by margin) is all that counts."""
    src = np.full((20, 20, 3), 100, np.uint8)
    mask = np.zeros((20, 20), bool)
    mask[8:12, 8:12] = True
    inside = src.copy()
    inside[mask] = 180
    inside[0, 0] = 255                    # far outside the neighbourhood: ignored
    assert Q.mask_image_agreement([inside], [src], [mask], margin=3) == 1.0
    ring = src.copy()
    ring[6:14, 6:14] = 180
    ring[mask] = 100
    assert Q.mask_image_agreement([ring], [src], [mask], margin=2) == 0.0
    # half of the mask changed, nothing else: AUROC = 0.5 * 1 + 0.5 * 0.5 (ties) = 0.75
    half = src.copy()
    half[8:10, 8:12] = 180
    assert Q.mask_image_agreement([half], [src], [mask], margin=3) == pytest.approx(0.75)
    assert Q.mask_image_agreement([src], [src], [np.zeros((20, 20), bool)]) is None


def test_copy_distance_finds_pasted_and_turned_references():
    rng = np.random.default_rng(0)
    img = rng.integers(0, 255, (32, 32, 3)).astype(np.uint8)
    mask = np.zeros((32, 32), bool)
    mask[4:14, 6:12] = True
    ref = Pair(img, mask, "a")
    moved = np.zeros_like(img)            # the same defect pasted elsewhere, turned 90 degrees
    moved_mask = np.zeros_like(mask)
    moved[18:24, 16:26] = np.rot90(img[4:14, 6:12])
    moved_mask[18:24, 16:26] = True
    copy = Pair(moved, moved_mask, "a")
    other = Pair(np.full_like(img, 255), mask, "a")
    out = Q.copy_distance([copy], [ref])
    assert out["copy_dist_mean"] == pytest.approx(0.0, abs=1e-3) and out["copy_share"] == 1.0
    out = Q.copy_distance([copy, other], [ref])
    assert out["copy_share"] == 0.5 and out["copy_dist_mean"] > 0.1
    assert Q.copy_distance([copy], []) == {"copy_dist_mean": None, "copy_share": None}
