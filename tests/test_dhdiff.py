"""DH-Diff: the properties docs/dhdiff.md says a CPU can prove (decoupling, zero-init, SSM fusion,
control, both scales' shapes, training, binary masks, determinism, checkpoints), and issue 10's
guards: the model (not the set-up) makes the pair, each registry name builds its own ablation,
fit is deterministic given its rng, and the listed bugs stay fixed."""
from __future__ import annotations

from dataclasses import asdict

import cv2
import numpy as np
import pytest
import torch

from benchmark.schema import ConfigError
from generators import FitData, Pair, create_generator
from generators.dhdiff import config as dhconfig
from generators.dhdiff.config import resolve
from generators.dhdiff.generator import lr_factor
from generators.dhdiff.model import DHDiffModel
from generators.dhdiff.patches import clean_mask, composite, raw_mask
from generators.dhdiff.processors import DDAProcessor, DHContext, SSMProcessor
from tests.toys import tiny_sd, toy_fitdata

# a very small tiny-scale model: 16 px patches, attention on 16x16 and 8x8 grids
SMALL = dict(widths=(8, 16), attn_levels=(True, True), heads=2, text_dim=16, patch_size=16,
             batch_size=4, steps=4, lr=2e-3, ddim_steps=2, sample_batch=4)
ABLATIONS = {"dhdiff": "dda+ssm", "dhdiff_dda": "dda", "dhdiff_ssm": "ssm", "dhdiff_baseline": "baseline"}
SIZE = 48


@pytest.fixture(autouse=True)
def _threads():
    torch.set_num_threads(1)
    torch.manual_seed(0)


def _toy_data(work_dir=None, seed=0) -> FitData:
    return toy_fitdata(work_dir, seed, SIZE)


def _model(ablation: str, **kw) -> DHDiffModel:
    torch.manual_seed(0)
    return DHDiffModel(resolve({**SMALL, **kw}), ablation, ["toy"], ["scratch", "stain"]).eval()


def _inputs(b=2, size=16, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(b, 3, size, size, generator=g) for _ in range(3)]


@pytest.mark.parametrize("name", sorted(ABLATIONS))
def test_every_name_builds_its_own_ablation(name):
    """Each registry name builds its ablation with the expected processor in EVERY attention
    layer: placed blocks (encoder all, mid, decoder every other) get the ablation's pair,
    every other layer the baseline's concat/plain; the baseline is concat everywhere."""
    gen = create_generator(name, **SMALL)
    assert gen.ablation == ABLATIONS[name]
    gen._build(["toy"], ["scratch"], 0)
    chosen = gen.model.processors
    # SMALL: down_blocks.0/1 (placed), mid_block (placed), up_blocks.0 (placed), up_blocks.1 (not)
    placed_self, placed_cross = {"dda+ssm": ("dda", "ssm"), "dda": ("dda", "plain"),
                                 "ssm": ("concat", "ssm"), "baseline": ("concat", "plain")}[gen.ablation]
    assert len(chosen) == 14          # 2 down + 1 mid + 2x2 up transformer blocks, attn1 and attn2 each
    for layer, proc in chosen.items():
        placed = not layer.startswith("up_blocks.1.")
        slot = layer.rsplit(".", 1)[-1]
        expected = (placed_self if placed else "concat") if slot == "attn1" else (placed_cross if placed else "plain")
        assert proc == expected, (name, layer, proc)
        mod = gen.model.unet.get_submodule(layer)
        assert type(mod.processor).__name__.lower().startswith(expected), (layer, type(mod.processor))


def test_old_names_are_aliases():
    with pytest.warns(DeprecationWarning):
        assert create_generator("dhdiff-baseline", **SMALL).ablation == "baseline"


def test_raw_mask_marks_every_touched_cell():
    m = np.zeros((50, 50), bool)
    m[12, 12] = True          # cell (1, 1)
    m[40:45, 0:3] = True      # cell (4, 0)
    r = raw_mask(m, 5)
    assert r[10:20, 10:20].all() and r[40:50, 0:10].all()
    assert r.sum() == 200


@pytest.mark.parametrize("ablation,placement,decoupled", [
    ("dda", "all", True),             # every layer DDA: the streams never meet
    ("dda", "every_other", False),    # they meet in the unplaced decoder block's concat attention
    ("baseline", "all", False), ("dda+ssm", "all", False)])
def test_stream_decoupling(ablation, placement, decoupled):
    """DDA alone keeps each stream blind to the other; concatenation attention (and SSM) do not."""
    model = _model(ablation, placement_decoder=placement)
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


@pytest.mark.parametrize("ablation", ["dda+ssm", "baseline"])
def test_zero_init_reference_is_a_no_op(ablation):
    model = _model(ablation)
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


def test_ssm_processor_call_matches_a_hand_computation():
    """The processor as the U-Net calls it, eta non-zero, one sample with a control and one
    without, against eq. 6-7 written out with explicit loops over heads and text tokens."""
    from diffusers.models.attention_processor import Attention

    torch.manual_seed(0)
    b, hh, w, c, L, dim = 2, 2, 4, 8, 5, 6
    attn = Attention(c, cross_attention_dim=dim, heads=hh, dim_head=c // hh).eval()
    proc = SSMProcessor()
    with torch.no_grad():
        proc.eta.weight.normal_(0, 0.3)
        proc.eta.bias.normal_(0, 0.1)
    attn.set_processor(proc)
    hs = torch.randn(2 * b, hh * w * 0 + w * w, c)
    text = torch.randn(b, L, dim)
    control = torch.zeros(b, 1, 8, 8)
    control[0, :, :4, :4] = 1.0                      # sample 0: top-left quarter; sample 1: no control
    has = torch.tensor([True, False])
    tok = torch.zeros(b, L, dtype=torch.bool)
    tok[:, 3] = True
    ctx = DHContext(size=(8, 8), control=control, has_control=has, defect_tokens=tok)
    with torch.no_grad():
        got = attn(hs, encoder_hidden_states=torch.cat([text, text]), dh=ctx)
        # by hand
        d = c // hh
        so_grid = torch.nn.functional.avg_pool2d(control, 2).flatten(1)       # [b, 16]
        out = torch.zeros(2 * b, w * w, c)
        for i in range(b):
            q_i, q_a = attn.to_q(hs[i]), attn.to_q(hs[b + i])
            k, v = attn.to_k(text[i]), attn.to_v(text[i])
            for h in range(hh):
                sl = slice(h * d, (h + 1) * d)
                si = torch.softmax(q_i[:, sl] @ k[:, sl].T / d ** 0.5, -1)     # [16, L]
                sa = torch.softmax(q_a[:, sl] @ k[:, sl].T / d ** 0.5, -1)
                so = torch.zeros_like(si)
                if has[i]:
                    so[:, 3] = so_grid[i]
                mu = (si + sa + so) / (3.0 if has[i] else 2.0)
                e = torch.zeros(2, w * w, L)
                for t in range(L):
                    maps = torch.stack([si[:, t], sa[:, t], so[:, t]]).view(1, 3, w, w)
                    e[:, :, t] = torch.nn.functional.conv2d(maps, proc.eta.weight, proc.eta.bias, padding=1).view(2, -1)
                out[i, :, sl] = (e[0] + mu) @ v[:, sl]
                out[b + i, :, sl] = (e[1] + mu) @ v[:, sl]
        want = attn.to_out[0](out)
    assert torch.allclose(got, want, atol=1e-5)


def _square(y, x, s=6, size=16):
    m = torch.zeros(1, 1, size, size)
    m[..., y:y + s, x:x + s] = 1
    return m


def test_control_map_moves_the_mask(monkeypatch):
    """Toy task: masks are random squares known only through S^O. After a short training, under
    the SAME noise, a left control puts more annotation on the left than a right control does
    (and vice versa); with S^O zeroed inside SSM the two controls give the same annotation."""
    model = _model("dda+ssm", lr=3e-3)   # the paper's pure-noise sampler
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
    ref = torch.zeros(4, 3, 16, 16)
    on = torch.ones(4, dtype=torch.bool)

    def ann(ctl):   # same seed: the same initial noise for both controls
        return model.sample(ref, ["toy"] * 4, ["scratch"] * 4, control=ctl.expand(4, -1, -1, -1), has_control=on,
                            steps=8, generator=torch.Generator().manual_seed(1), use_reference=False)[1]

    a_left, a_right = ann(_square(5, 0)), ann(_square(5, 10))
    assert a_left[:, 5:11, 0:6].mean() > a_right[:, 5:11, 0:6].mean()
    assert a_right[:, 5:11, 10:16].mean() > a_left[:, 5:11, 10:16].mean()
    # S^O zeroed: the control can no longer reach the model
    monkeypatch.setattr(DHContext, "control_tokens", lambda self, n: torch.zeros(self.control.shape[0], n))
    assert torch.equal(ann(_square(5, 0)), ann(_square(5, 10)))


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


def test_sd_scale_from_a_local_folder(tmp_path):
    tiny_sd(tmp_path)
    gen = create_generator("dhdiff", scale="sd", sd_path=str(tmp_path), text_encoder="learned", resolution=16, steps=2,
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
    with pytest.raises(ConfigError, match="not_a_field"):
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
    """SDEdit start (dhdiff_sdedit only): with strength < 1 and a tiny noise level, the sample is the reference pair."""
    model = _model("dda+ssm", strength=0.01, ddim_steps=1)
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
    img_p, _ = _model("dda+ssm", ddim_steps=1, strength=1.0).sample(x * m, ["toy"] * 2, ["scratch"] * 2,
                                                      generator=torch.Generator().manual_seed(1))
    assert (img_p - x).abs().mean() > 0.3           # strength 1 (paper): pure noise start
    with pytest.raises(ValueError, match="init_image"):
        model.sample(x * m, ["toy"] * 2, ["scratch"] * 2)
    with pytest.raises(ConfigError, match="strength"):
        create_generator("dhdiff_sdedit", strength=1.5)


@pytest.mark.parametrize("kind", ["v_prediction", "sample"])
def test_prediction_types_train(kind):
    model = _model("dda+ssm", prediction_type=kind, strength=0.5).train()
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


# ---- issue 10 guards --------------------------------------------------------------------------
def test_two_fits_with_the_same_rng_give_the_same_loss_history():
    """Every weight init comes from fit's rng: torch's global RNG state does not matter."""
    hist = []
    for disturb in (0, 123):
        torch.manual_seed(disturb)
        torch.randn(disturb + 1)
        gen = create_generator("dhdiff", **{**SMALL, "steps": 3})
        gen.fit(_toy_data(), np.random.default_rng(11))
        hist.append(list(gen.loss_history))
    assert hist[0] == hist[1]
    gen = create_generator("dhdiff", **{**SMALL, "steps": 3})
    gen.fit(_toy_data(), np.random.default_rng(12))
    assert gen.loss_history != hist[0]


def test_ablations_share_their_initial_weights():
    """Same rng -> the same U-Net and condition-encoder weights for every ablation (only the
    processors differ), so Table VIII compares attention, not initialisations."""
    states = {}
    for name in ABLATIONS:
        gen = create_generator(name, **SMALL)
        gen.data = _toy_data()
        gen._build(["toy"], ["scratch"], 5)
        states[name] = {k: v for k, v in gen.model.state_dict().items() if "processor" not in k}
    ref = states["dhdiff"]
    for name, st in states.items():
        assert st.keys() == ref.keys() and all(torch.equal(st[k], ref[k]) for k in ref), name


def test_the_real_mask_does_not_enter_sampling():
    """Two references with the same image and raw mask but different detailed masks give the
    same sample: only r = x * m_raw, the prompt and the noise reach the model."""
    gen = create_generator("dhdiff", **{**SMALL, "ref_augment": False, "max_retries": 0})
    data = _toy_data()
    gen.fit(data, np.random.default_rng(0))
    a = data.anomalies[0]
    m2 = a.mask.copy()
    ys, xs = np.nonzero(a.mask)
    m2[ys[0], xs[0]] = False                      # same raw-mask cells, different detailed mask
    b = Pair(a.image, m2, a.defect_type)
    out = [gen.sample_patches(a.defect_type, [r], np.random.default_rng(1), clean=False,
                              generator=torch.Generator().manual_seed(2)) for r in (a, b)]
    assert np.array_equal(out[0][0][0], out[1][0][0]) and np.array_equal(out[0][3], out[1][3])


def test_untrained_masks_are_not_the_few_shot_masks():
    """At the default (quick) config an untrained model's masks overlap the reference's own mask
    little (IoU < 0.3): the masks come from the model, not from the set-up."""
    from benchmark.studies.dhdiff_study import iou

    gen = create_generator("dhdiff", steps=0, sample_batch=16)
    data = _toy_data()
    gen.fit(data, np.random.default_rng(0))
    pool = [a for a in data.anomalies if a.defect_type == "stain"]
    _, masks, _, _, real = gen.sample_patches("stain", pool * 4, np.random.default_rng(1))
    assert np.mean([iou(m, r) for m, r in zip(masks, real)]) < 0.3


def test_trained_beats_untrained_on_mask_image_agreement():
    """Strength 1, clean-up off, toy data (flat background, dark or bright rectangles): the
    trained model's image changes where its mask says; the untrained one's does not."""
    from benchmark.studies.dhdiff_study import patch_agreement

    data = _toy_data()
    cfg = {**SMALL, "batch_size": 8, "ddim_steps": 8, "lr": 5e-3, "warmup": 10,
           "lr_schedule": "cosine", "prediction_type": "v_prediction", "normal_share": 0.25}
    scores = {}
    for label, steps in (("untrained", 0), ("trained", 300)):   # measured: 0.50 -> 0.93
        gen = create_generator("dhdiff", **{**cfg, "steps": steps})
        gen.fit(data, np.random.default_rng(0))
        refs = [a for a in data.anomalies if a.defect_type == "scratch"] * 8
        ims, masks, _, _, _ = gen.sample_patches("scratch", refs, np.random.default_rng(1), clean=False)
        vals = [v for v in (patch_agreement(i, m) for i, m in zip(ims, masks)) if v is not None]
        scores[label] = float(np.mean(vals)) if vals else 0.5
    assert scores["trained"] > scores["untrained"] + 0.2, scores


def test_yaml_edit_changes_the_resolved_config(tmp_path, monkeypatch):
    """gen.config is the resolved dataclass, so a changed quick YAML changes the cache key."""
    before = asdict(create_generator("dhdiff").config)
    y = tmp_path / "q.yaml"
    y.write_text(dhconfig.QUICK_YAML.read_text().replace("steps: ", "steps: 1", 1))
    monkeypatch.setattr(dhconfig, "QUICK_YAML", y)
    after = create_generator("dhdiff")
    assert asdict(after.config) != before and after.config.steps == int("1" + str(before["steps"]))
    assert create_generator("dhdiff").cache_token() != {"config": before}
    # resolving the resolved dict again gives the same config (the runner stores it)
    assert asdict(type(after).resolve_config(asdict(after.config), "x")) == asdict(after.config)


def test_variants_inherit_dhdiff_and_refuse_mixed_scales():
    from generators.dhdiff import variant_cfg

    section = {"dhdiff": {"steps": 7, "patch_size": 16}, "dhdiff_dda": {"lr": 0.01}}
    gen = create_generator("dhdiff_dda", **variant_cfg("dhdiff_dda", section))
    assert (gen.config.steps, gen.config.patch_size, gen.config.lr) == (7, 16, 0.01)
    with pytest.raises(ConfigError, match=r"generator_cfg\.dhdiff_ssm\.scale"):
        create_generator("dhdiff_ssm", **variant_cfg("dhdiff_ssm", {"dhdiff": {"scale": "sd", "sd_path": "/x"},
                                                                     "dhdiff_ssm": {"scale": "tiny"}}))
    with pytest.raises(ConfigError, match="dhdiff_sdedit"):
        create_generator("dhdiff", strength=0.7)


def test_full_mode_never_borrows_another_samples_mask(monkeypatch):
    """Bug: a mask emptied by resizing was replaced by masks[0]. Now each mask is resized so
    it stays non-empty and in place."""
    gen = create_generator("dhdiff", **{**SMALL, "mode": "full", "resolution": 96})
    gen.data, gen.model = _toy_data(), "no model needed: sample_patches is replaced"
    big = np.zeros((96, 96), bool)
    big[10:60, 10:60] = True
    dot = np.zeros((96, 96), bool)
    dot[80, 81] = True                             # one pixel: nearest-resizing to 48 px drops it
    img = np.zeros((96, 96, 3), np.uint8)
    monkeypatch.setattr(type(gen), "sample_patches",
                        lambda self, *a, **k: ([img, img], [big, dot], [96, 96], None, None))
    pairs = gen.generate(2, "scratch", np.random.default_rng(0))
    assert pairs[1].mask.sum() == 1 and pairs[1].mask[40, 40]


def test_few_step_ddim_starts_from_pure_noise():
    """Bug: 'leading' spacing started a 6-step DDIM at t = 830; trailing starts at T - 1."""
    _, ts = _model("dda+ssm", ddim_steps=6).schedule()
    assert int(ts[0]) == 999 and len(ts) == 6


def test_sd_scale_scheduler_and_text_encoder(tmp_path):
    """Bugs: a missing scheduler/ fell back to clip_sample=True (latents clipped to +-1), and the
    checkpoint's text encoder was dropped unless clip_path was set."""
    tiny_sd(tmp_path)
    import shutil
    shutil.rmtree(tmp_path / "scheduler")
    model = DHDiffModel(resolve({"scale": "sd", "sd_path": str(tmp_path), "text_encoder": "learned"}),
                        "dda+ssm", ["toy"], ["scratch"])
    assert model.scheduler.config.clip_sample is False and model.schedule()[0].config.clip_sample is False
    with pytest.raises(ValueError, match="text_encoder"):      # no text_encoder/, no clip_path: say so
        DHDiffModel(resolve({"scale": "sd", "sd_path": str(tmp_path)}), "dda+ssm", ["toy"], ["scratch"])
    (tmp_path / "text_encoder").mkdir()
    with pytest.raises(ValueError, match="text_encoder/"):     # present: used (here: needs transformers)
        DHDiffModel(resolve({"scale": "sd", "sd_path": str(tmp_path)}), "dda+ssm", ["toy"], ["scratch"])


def test_fallback_counters():
    gen = create_generator("dhdiff", **{**SMALL, "mask_threshold": 5.0, "max_retries": 1})
    gen.fit(_toy_data(), np.random.default_rng(0))
    gen.generate(3, "stain", np.random.default_rng(0))        # threshold above any value: all fall back
    st = gen.stats()
    assert st["samples"] == 3 and st["retries"] == 3 and st["topk_fallbacks"] == 3
