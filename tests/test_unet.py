"""The U-Net detector: learns a visible defect from pairs; image score is the pooled-map max."""
import numpy as np
import torch
import torch.nn.functional as F

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


def test_focal_loss_at_gamma_0_is_cross_entropy_and_gamma_discounts_easy_pixels():
    """docs/stability.md §9 compares focal_gamma 0 with the default 2: 0 must be exactly torch's
    cross-entropy, and 2 must weigh each pixel by (1 - p_t)^2, or that comparison is of something else."""
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(2, 2, 5, 5, generator=g)
    t = torch.rand(2, 5, 5, generator=g) > 0.7
    assert torch.allclose(focal_loss(logits, t, 0.0), F.cross_entropy(logits, t.long()), atol=1e-7)
    ce = F.cross_entropy(logits, t.long(), reduction="none")
    assert torch.allclose(focal_loss(logits, t, 2.0), ((1 - (-ce).exp()) ** 2 * ce).mean(), atol=1e-7)


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


def test_cosine_schedule_with_warmup_exact_rates():
    """Linear warm-up from lr/100 over `warmup` steps, then cosine from lr to 0 over the rest."""
    import math

    from detectors.unet import UNetConfig, lr_schedule
    c = UNetConfig(steps=10, warmup=2, lr=1.0, lr_schedule="cosine")
    p = torch.nn.Parameter(torch.zeros(1))
    opt = torch.optim.Adam([p], lr=c.lr)
    sched = lr_schedule(opt, c)
    seen = []
    for _ in range(c.steps):
        seen.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    want = [0.01, 0.505] + [0.5 * (1 + math.cos(math.pi * j / 8)) for j in range(8)]
    assert np.allclose(seen, want, atol=1e-12), seen
    step = UNetConfig(steps=10, lr=1.0)   # DRAEM: x0.2 at 80% and 90%
    opt = torch.optim.Adam([p], lr=1.0)
    sched = lr_schedule(opt, step)
    seen = []
    for _ in range(10):
        seen.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    assert np.allclose(seen, [1.0] * 8 + [0.2, 0.04])


def test_group_norm_net_predicts_what_it_trained_with():
    """GroupNorm keeps no running statistics: eval() output equals train() output exactly."""
    torch.manual_seed(0)
    x = torch.rand(2, 3, 32, 32)
    gn = SegmentationUNet(3, 2, base_width=4, depth=3, norm="group")
    with torch.no_grad():
        assert torch.equal(gn.train()(x), gn.eval()(x))
    bn = SegmentationUNet(3, 2, base_width=4, depth=3, norm="batch")
    with torch.no_grad():
        assert not torch.allclose(bn.train()(x), bn.eval()(x))


def test_init_comes_from_the_cell_seed_only():
    """Common random numbers: two cells of one seed with different generated pairs start from the
    same weights (one Adam step at lr 1e-12 moves no weight by more than ~1e-12)."""
    normals, pairs = _data(8)
    _, other = _data(8, seed=5)
    cfg = dict(base_width=4, depth=3, steps=1, batch_size=4, lr=1e-12, ema_decay=0.5,
               lr_schedule="cosine", norm="group")
    nets = []
    for ps in (pairs, other):
        det = create_detector("unet", **cfg)
        det.fit(normals, ps, DetectorContext("c", seed=3))
        nets.append(torch.cat([q.detach().reshape(-1) for q in det.net.parameters()]))
    assert torch.allclose(nets[0], nets[1], rtol=0, atol=1e-9)
    det = create_detector("unet", **cfg)
    det.fit(normals, pairs, DetectorContext("c", seed=4))
    assert not torch.allclose(nets[0], torch.cat([q.detach().reshape(-1) for q in det.net.parameters()]), atol=1e-3)


def test_recipe_options_are_checked():
    import pytest

    from benchmark.schema import ConfigError
    with pytest.raises(ConfigError, match="detector_cfg.unet.warmup"):
        create_detector("unet", warmup=5)              # warm-up belongs to the cosine schedule
    with pytest.raises(ConfigError, match="detector_cfg.unet.warmup"):
        create_detector("unet", steps=5, warmup=5, lr_schedule="cosine")
    with pytest.raises(ConfigError, match="norm"):
        create_detector("unet", norm="layer")
    with pytest.raises(ConfigError, match="ema_decay"):
        create_detector("unet", ema_decay=1.0)


def test_ensemble_averages_its_members_maps():
    """ensemble K: member 0 is the single net of the cell seed (the same weights), the others
    train from their own seeds, and the map is the members' mean probability."""
    normals, pairs = _data(8)
    cfg = dict(base_width=4, depth=3, steps=3, batch_size=4, lr=1e-3)
    one = create_detector("unet", **cfg)
    one.fit(normals, pairs, DetectorContext("c", seed=3))
    ens = create_detector("unet", **cfg, ensemble=3)
    ens.fit(normals, pairs, DetectorContext("c", seed=3))
    assert len(ens.nets) == 3 and ens.net is ens.nets[0]
    flat = [torch.cat([q.detach().reshape(-1) for q in n.parameters()]) for n in [one.net] + ens.nets]
    assert torch.equal(flat[0], flat[1])                       # member 0 = the single net
    assert not torch.allclose(flat[1], flat[2]) and not torch.allclose(flat[2], flat[3])
    imgs = normals[:4]
    x = torch.from_numpy(imgs).permute(0, 3, 1, 2).float() / 255
    with torch.no_grad():
        mean = torch.stack([n.eval()(x).softmax(1)[:, 1] for n in ens.nets]).mean(0)
    scores, maps = ens.predict(imgs)
    assert np.allclose(maps, mean.numpy(), atol=1e-6)
    assert np.allclose(scores, image_scores(mean, ens.config.pool_size).numpy(), atol=1e-6)
