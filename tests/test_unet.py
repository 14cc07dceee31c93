"""The U-Net detector: learns a visible defect from pairs; image score is the pooled-map max."""
import numpy as np
import torch

from detectors import DetectorContext, create_detector
from detectors.unet import SegmentationUNet, focal_loss, image_scores
from generators.base import Pair


def _data(n, size=32, seed=0):
    rng = np.random.default_rng(seed)
    normals = rng.normal(100, 8, (n, size, size, 3)).clip(0, 255).astype(np.uint8)
    pairs = []
    for i in range(n):
        img = normals[i].copy()
        m = np.zeros((size, size), bool)
        y, x = rng.integers(2, size - 10, 2)
        m[y:y + 8, x:x + 8] = True
        img[m] = 230
        pairs.append(Pair(img, m, "square"))
    return normals, pairs


def test_unet_shapes_odd_sizes():
    net = SegmentationUNet(3, 2, base_width=4, depth=4)
    assert net(torch.rand(2, 3, 37, 45)).shape == (2, 2, 37, 45)


def test_image_score_is_max_of_average_pool():
    maps = torch.zeros(2, 40, 40)
    maps[0, 10:13, 10:13] = 1.0  # 9 pixels: pooled max = 9/441
    assert torch.allclose(image_scores(maps, 21), torch.tensor([9 / 441, 0.0]))


def test_focal_loss_prefers_right_answers():
    t = torch.zeros(1, 4, 4, dtype=torch.long)
    good = torch.stack([torch.full((1, 4, 4), 3.0), torch.full((1, 4, 4), -3.0)], 1)
    assert focal_loss(good, t) < focal_loss(-good, t)


def test_unet_learns_the_defect_and_is_seeded():
    torch.set_num_threads(2)
    normals, pairs = _data(16)
    cfg = dict(base_width=8, depth=3, steps=60, batch_size=8, lr=3e-3)
    det = create_detector("unet", **cfg)
    det.fit(normals, pairs, DetectorContext("c", seed=0))
    assert np.mean(det.loss_history[-10:]) < np.mean(det.loss_history[:10])
    test_norm, test_pairs = _data(6, seed=1)
    imgs = np.concatenate([test_norm, np.stack([p.image for p in test_pairs])])
    scores, maps = det.predict(imgs)
    assert scores.shape == (12,) and maps.shape == (12, 32, 32) and maps.dtype == np.float32
    assert scores[6:].min() > scores[:6].max()
    inside = np.mean([maps[6 + i][p.mask].mean() for i, p in enumerate(test_pairs)])
    outside = np.mean([maps[6 + i][~p.mask].mean() for i, p in enumerate(test_pairs)])
    assert inside > outside + 0.3
    det2 = create_detector("unet", **cfg)
    det2.fit(normals, pairs, DetectorContext("c", seed=0))
    assert np.array_equal(det2.predict(imgs)[0], scores)


def test_bad_config_field_named():
    import pytest
    with pytest.raises(ValueError, match="unet"):
        create_detector("unet", widht=3)


def test_random_crops_keep_part_of_every_mask():
    from detectors.unet import random_crops
    g = torch.Generator().manual_seed(0)
    x = torch.rand(20, 3, 64, 64)
    m = torch.zeros(20, 64, 64, dtype=torch.uint8)
    for i in range(10):  # tiny defects in corners: a plain random crop would usually miss them
        m[i, (i * 7) % 60:(i * 7) % 60 + 3, 60:63] = 1
    xc, mc = random_crops(x, m, 24, g)
    assert xc.shape == (20, 3, 24, 24) and mc.shape == (20, 24, 24)
    assert all(mc[i].sum() > 0 for i in range(10))
    assert mc[10:].sum() == 0
