"""DH-Diff: the properties dh-diff.md says a CPU can prove (decoupling, zero-init, SSM fusion,
control, both scales' shapes, training, binary masks, determinism, checkpoints)."""
from __future__ import annotations

import cv2
import numpy as np
import pytest
import torch

from generators import FitData, Pair, create_generator, list_generators
from generators.dhdiff.config import DHDiffConfig
from generators.dhdiff.model import DHDiffModel
from generators.dhdiff.generator import lr_factor
from generators.dhdiff.patches import clean_mask, composite, raw_mask
from generators.dhdiff.processors import DDAProcessor, SSMProcessor

# a very small tiny-scale model: 16 px patches, attention on 16x16 and 8x8 grids
SMALL = dict(widths=(8, 16), attn_levels=(True, True), heads=2, text_dim=16, patch_size=16,
             batch_size=4, steps=4, lr=2e-3, ddim_steps=2, sample_batch=4)
SIZE = 48


@pytest.fixture(autouse=True)
def _threads():
    torch.set_num_threads(1)
    torch.manual_seed(0)


def _toy_data(work_dir=None, seed=0) -> FitData:
    rng = np.random.default_rng(seed)
    normals = [rng.integers(110, 140, (SIZE, SIZE, 3)).astype(np.uint8) for _ in range(4)]
    anomalies = []
    for d, val in (("scratch", 20), ("stain", 230)):
        for _ in range(2):
            im = rng.integers(110, 140, (SIZE, SIZE, 3)).astype(np.uint8)
            m = np.zeros((SIZE, SIZE), bool)
            y, x = rng.integers(8, SIZE - 16, 2)
            m[y:y + 6, x:x + 9] = True
            im[m] = val
            anomalies.append(Pair(im, m, d))
    return FitData("toy", normals, anomalies, ["scratch", "stain"], work_dir=work_dir, image_size=SIZE)


def _model(variant: str, **kw) -> DHDiffModel:
    torch.manual_seed(0)
    return DHDiffModel(DHDiffConfig.from_kwargs(**{**SMALL, **kw}), variant, ["toy"], ["scratch", "stain"]).eval()


def _inputs(b=2, size=16, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(b, 3, size, size, generator=g) for _ in range(3)]


def test_registered_variants():
    assert {"dhdiff", "dhdiff-dda", "dhdiff-ssm", "dhdiff-baseline"} <= set(list_generators("dhdiff*"))


def test_raw_mask_marks_every_touched_cell():
    m = np.zeros((50, 50), bool)
    m[12, 12] = True          # cell (1, 1)
    m[40:45, 0:3] = True      # cell (4, 0)
    r = raw_mask(m, 5)
    assert r[10:20, 10:20].all() and r[40:50, 0:10].all()
    assert r.sum() == 200


@pytest.mark.parametrize("variant,decoupled", [("dhdiff-dda", True), ("dhdiff-baseline", False),
                                               ("dhdiff", False)])
def test_stream_decoupling(variant, decoupled):
    """DDA alone keeps each stream blind to the other; concatenation attention (and SSM) do not."""
    model = _model(variant)
    zi, za, ref = _inputs()
    zi2 = torch.randn_like(zi)
    za2 = torch.randn_like(za)
    t = torch.tensor([500, 200])
    text, tok = model.prompt.encode(["toy"] * 2, ["scratch", "stain"])
    with torch.no_grad():
        oi, oa = model(zi, za, t, text, ref, defect_tokens=tok)
        _, oa_b = model(zi2, za, t, text, ref, defect_tokens=tok)   # only the image changes
        oi_c, _ = model(zi, za2, t, text, ref, defect_tokens=tok)   # only the annotation changes
    assert torch.allclose(oa, oa_b, atol=1e-5) == decoupled
    assert torch.allclose(oi, oi_c, atol=1e-5) == decoupled


@pytest.mark.parametrize("variant", ["dhdiff", "dhdiff-baseline"])
def test_zero_init_reference_is_a_no_op(variant):
    model = _model(variant)
    zi, za, ref = _inputs()
    t = torch.tensor([300, 700])
    text, tok = model.prompt.encode(["toy"] * 2, ["scratch"] * 2)
    with torch.no_grad():
        with_ref = model(zi, za, t, text, ref, defect_tokens=tok)[0]
        without = model(zi, za, t, text, None, defect_tokens=tok)[0]
        assert torch.equal(with_ref, without)
        for mod in model.unet.modules():       # once zeta learns, the reference matters
            if isinstance(mod, DDAProcessor) or hasattr(mod, "zeta"):
                mod.zeta.weight.normal_(0, 0.5)
        moved = model(zi, za, t, text, ref, defect_tokens=tok)[0]
    assert not torch.allclose(moved, without, atol=1e-4)


def test_ssm_fusion_is_the_mean_at_init():
    g = torch.Generator().manual_seed(0)
    si, sa = (torch.softmax(torch.randn(2, 2, 64, 5, generator=g), -1) for _ in range(2))
    so = torch.zeros_like(si)
    so[1, :, :20, 3] = 1.0
    n_maps = torch.tensor([2.0, 3.0])
    proc = SSMProcessor()
    a, b = proc.fuse(si, sa, so, n_maps, (8, 8))
    mean = (si + sa + so) / n_maps.view(2, 1, 1, 1)
    assert torch.allclose(a, mean) and torch.allclose(b, mean)
    assert torch.allclose(a[0].sum(-1), torch.ones(2, 64))      # no control: rows stay distributions
    with torch.no_grad():
        proc.eta.weight.normal_()
    a2, _ = proc.fuse(si, sa, so, n_maps, (8, 8))
    assert not torch.allclose(a2, mean)


def _square(y, x, s=6, size=16):
    m = torch.zeros(1, 1, size, size)
    m[..., y:y + s, x:x + s] = 1
    return m


def test_control_map_moves_the_mask():
    """Toy task: masks are random squares known only through S^O; after a short training the
    generated annotation is higher inside the control region than when the control is elsewhere."""
    model = _model("dhdiff", lr=3e-3, strength=1.0)   # the paper's pure-noise sampler
    model.train()
    opt = torch.optim.Adam(model.trainable_parameters(), lr=3e-3)
    g = torch.Generator().manual_seed(0)
    rng = np.random.default_rng(0)
    for _ in range(60):
        masks = torch.cat([_square(*rng.integers(0, 10, 2)) for _ in range(6)])
        x = torch.where(masks.bool(), -0.8, 0.3).expand(-1, 3, -1, -1)
        loss = model.loss(x, masks, torch.zeros_like(x), ["toy"] * 6, ["scratch"] * 6, control=masks,
                          has_control=torch.ones(6, dtype=torch.bool), generator=g)
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.eval()
    left, right = _square(5, 0), _square(5, 10)
    ctl = torch.cat([left.expand(4, -1, -1, -1), right.expand(4, -1, -1, -1)])
    ref = torch.zeros(8, 3, 16, 16)
    _, ann = model.sample(ref, ["toy"] * 8, ["scratch"] * 8, control=ctl, has_control=torch.ones(8, dtype=torch.bool),
                          steps=8, generator=torch.Generator().manual_seed(1), use_reference=False)
    in_left = ann[:, 5:11, 0:6].mean((1, 2))
    in_right = ann[:, 5:11, 10:16].mean((1, 2))
    # left control -> more annotation on the left than the right-controlled samples have there
    assert in_left[:4].mean() > in_left[4:].mean()
    assert in_right[4:].mean() > in_right[:4].mean()


@pytest.fixture(scope="module")
def fitted(tmp_path_factory):
    torch.set_num_threads(1)
    work = tmp_path_factory.mktemp("dhdiff")
    data = _toy_data(work)
    gen = create_generator("dhdiff", **{**SMALL, "steps": 30})
    gen.fit(data, np.random.default_rng(0))
    return gen, data


def test_short_training_lowers_the_loss(fitted):
    gen, _ = fitted
    h = gen.loss_history
    assert len(h) == 30 and all(np.isfinite(h))
    assert np.mean(h[-5:]) < np.mean(h[:5])


def test_samples_are_binary_masks_on_normals(fitted):
    gen, data = fitted
    pairs = gen.generate(3, "stain", np.random.default_rng(5))
    assert len(pairs) == 3
    for p in pairs:
        assert p.image.shape == (SIZE, SIZE, 3) and p.image.dtype == np.uint8
        assert p.mask.shape == (SIZE, SIZE) and p.mask.dtype == bool and p.mask.any()
        assert p.defect_type == "stain"
        # the image is one of the normals, changed only inside the dilated mask
        k = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * 3 + 3, 2 * 3 + 3))
        region = cv2.dilate(p.mask.astype(np.uint8), k).astype(bool)
        assert any(np.array_equal(p.image[~region], n[~region]) for n in data.normals)


def test_same_seed_same_pairs(fitted):
    gen, _ = fitted
    a = gen.generate(2, "scratch", np.random.default_rng(7))
    b = gen.generate(2, "scratch", np.random.default_rng(7))
    c = gen.generate(2, "scratch", np.random.default_rng(8))
    for p, q in zip(a, b):
        assert np.array_equal(p.image, q.image) and np.array_equal(p.mask, q.mask)
    assert not all(np.array_equal(p.image, q.image) for p, q in zip(a, c))


def test_checkpoint_round_trip_without_retraining(fitted, tmp_path, monkeypatch):
    gen, data = fitted
    expected = gen.generate(2, "stain", np.random.default_rng(3))
    again = create_generator("dhdiff", **{**SMALL, "steps": 30})
    monkeypatch.setattr(type(again), "train", lambda *a, **k: pytest.fail("retrained despite a checkpoint"))
    again.fit(data, np.random.default_rng(0))                    # finds the checkpoint in work_dir
    assert again.loss_history == gen.loss_history
    got = again.generate(2, "stain", np.random.default_rng(3))
    for p, q in zip(expected, got):
        assert np.array_equal(p.image, q.image) and np.array_equal(p.mask, q.mask)
    path = tmp_path / "explicit.pt"
    gen.save(path)
    third = create_generator("dhdiff", **SMALL)
    third.load(path)
    monkeypatch.setattr(type(third), "train", lambda *a, **k: pytest.fail("retrained after load()"))
    third.fit(FitData(**{**data.__dict__, "work_dir": None}), np.random.default_rng(0))
    got3 = third.generate(2, "stain", np.random.default_rng(3))
    assert all(np.array_equal(p.image, q.image) for p, q in zip(expected, got3))


def test_composite_changes_only_the_dilated_mask():
    rng = np.random.default_rng(0)
    normal = rng.integers(0, 255, (40, 40, 3)).astype(np.uint8)
    patch = np.zeros((16, 16, 3), np.uint8)
    pm = np.zeros((16, 16), bool)
    pm[6:9, 6:10] = True
    img, mask = composite(normal, patch, pm, 20, rng, None, dilate=2)
    region = cv2.dilate(mask.astype(np.uint8), np.ones((5, 5), np.uint8)).astype(bool)
    assert mask.any() and np.array_equal(img[~region], normal[~region])
    assert (img[mask] < normal[mask]).mean() > 0.9


def _tiny_sd(path):
    from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel
    UNet2DConditionModel(sample_size=8, in_channels=4, out_channels=4, block_out_channels=(16, 32),
                         layers_per_block=1, down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
                         up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"), cross_attention_dim=16,
                         attention_head_dim=2, norm_num_groups=8).save_pretrained(path / "unet")
    AutoencoderKL(in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D",) * 2,
                  up_block_types=("UpDecoderBlock2D",) * 2, block_out_channels=(8, 16), latent_channels=4,
                  norm_num_groups=8, sample_size=16).save_pretrained(path / "vae")
    DDPMScheduler(beta_schedule="scaled_linear").save_pretrained(path / "scheduler")


def test_sd_scale_from_a_local_folder(tmp_path):
    _tiny_sd(tmp_path)
    gen = create_generator("dhdiff", scale="sd", sd_path=str(tmp_path), resolution=16, steps=2,
                           batch_size=2, ddim_steps=2, sample_batch=2)
    data = _toy_data()
    gen.fit(data, np.random.default_rng(0))
    assert gen.model.vae is not None and len(gen.loss_history) == 2
    assert set(gen.model.processors.values()) == {"dda", "ssm"}     # all 3 attention blocks placed
    pairs = gen.generate(2, "scratch", np.random.default_rng(0))
    for p in pairs:
        assert p.image.shape == (SIZE, SIZE, 3) and p.mask.shape == (SIZE, SIZE)
        assert p.mask.dtype == bool and p.mask.any()
    assert not gen.edits_normal                                  # full-image mode


def test_missing_paths_are_named_errors(tmp_path):
    with pytest.raises(ValueError, match="sd_path"):
        create_generator("dhdiff", scale="sd")
    with pytest.raises(ValueError, match="sd_path"):
        create_generator("dhdiff", scale="sd", sd_path=str(tmp_path / "nope")).fit(_toy_data(), np.random.default_rng(0))
    with pytest.raises(ValueError, match="clip_path"):
        create_generator("dhdiff", clip_path=str(tmp_path / "nope"), **SMALL).fit(_toy_data(), np.random.default_rng(0))
    with pytest.raises(ValueError, match="not_a_field"):
        create_generator("dhdiff", not_a_field=1)


def test_clean_mask_keeps_the_blob_and_drops_specks():
    rng = np.random.default_rng(0)
    ann = np.full((32, 32), -1.0, np.float32)
    ann[10:18, 12:20] = 1.0                   # the defect blob
    ann[13:15, 15:17] = -1.0                  # a hole in it
    ann[2, 2] = ann[28, 5] = ann[3, 29] = 1.0  # isolated specks
    ann += rng.normal(0, 0.05, ann.shape).astype(np.float32)
    raw = np.zeros((32, 32), bool)
    raw[6:20, 6:26] = True
    plain = clean_mask(ann)
    assert plain[2, 2] and not plain[14, 15]   # without cleanup: specks and hole stay
    m = clean_mask(ann, 0.0, sigma=0.0, min_area=4, near=raw, fill=True)
    assert m[10:18, 12:20].all()               # blob kept, hole filled
    assert m.sum() == 64                        # nothing else
    line = np.full((32, 32), -1.0, np.float32)
    line[4:28, 16] = 1.0                        # a 1-px scratch survives blur + speck removal
    lm = clean_mask(line, 0.0, sigma=0.0, min_area=4)
    assert lm[4:28, 16].all() and lm.sum() == 24
    far = np.zeros((32, 32), bool)
    far[25:30, 25:30] = True                    # nothing touches it: keep the largest component
    assert clean_mask(ann, 0.0, min_area=2, near=far)[12, 13]


def test_strength_below_one_starts_from_the_noised_reference():
    """SDEdit start: with strength < 1 and a tiny noise level, the sample is the reference pair."""
    model = _model("dhdiff", strength=0.01, ddim_steps=1)
    _, ts = model.schedule()
    assert int(ts[0]) <= 10 and model.t_max() <= 12
    g = torch.Generator().manual_seed(0)
    x = torch.rand(2, 3, 16, 16, generator=g) * 2 - 1
    m = torch.zeros(2, 1, 16, 16)
    m[:, :, 4:9, 5:12] = 1
    img, ann = model.sample(x * m, ["toy"] * 2, ["scratch"] * 2, init_image=x, init_mask=m,
                            generator=torch.Generator().manual_seed(1))
    assert (img - x).abs().mean() < 0.1
    assert torch.equal(ann > 0, m[:, 0] > 0)
    img_p, _ = _model("dhdiff", ddim_steps=1, strength=1.0).sample(x * m, ["toy"] * 2, ["scratch"] * 2,
                                                      generator=torch.Generator().manual_seed(1))
    assert (img_p - x).abs().mean() > 0.3           # strength 1 (paper): pure noise start
    with pytest.raises(ValueError, match="init_image"):
        model.sample(x * m, ["toy"] * 2, ["scratch"] * 2)
    with pytest.raises(ValueError, match="strength"):
        create_generator("dhdiff", strength=1.5)


@pytest.mark.parametrize("kind", ["v_prediction", "sample"])
def test_prediction_types_train(kind):
    model = _model("dhdiff", prediction_type=kind, strength=0.5).train()
    _, ts = model.schedule()
    assert model.scheduler.config.prediction_type == kind and model.t_max() == int(ts[0]) + 1 <= 501
    opt = torch.optim.Adam(model.trainable_parameters(), lr=3e-3)
    g = torch.Generator().manual_seed(0)
    x = torch.zeros(4, 3, 16, 16)
    m = torch.zeros(4, 1, 16, 16)
    m[:, :, 4:10, 4:10] = 1
    x = x + m * 0.8 - 0.4
    losses = []
    for _ in range(15):
        loss = model.loss(x, m, x * m, ["toy"] * 4, ["stain"] * 4, generator=g)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
    assert np.mean(losses[-3:]) < np.mean(losses[:3])


def test_lr_schedule_warms_up_and_decays():
    f = [lr_factor(i, 100, 10, "cosine") for i in range(100)]
    assert f[0] == pytest.approx(0.1) and f[9] == pytest.approx(1.0)
    assert all(a >= b for a, b in zip(f[10:], f[11:])) and f[-1] < 0.01
    assert lr_factor(50, 100, 0, "constant") == 1.0
