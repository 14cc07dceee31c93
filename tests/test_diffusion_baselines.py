"""Issue 13: the diffusion baselines on DH-Diff's backbone and their shared prior.

Each test names the property it guards: AnomalyDiffusion's backbone stays frozen and its
background is the normal image; DualAnoDiff's branches meet only through shared self-attention;
RealNet-SDAS at s = 0 samples the normal distribution and needs no anomaly; same seed, same pairs
(torch's global RNG never matters); the prior is cached, shared (DH-Diff's opt-in included) and
retrained when its config changes; the settings are inherited from generator_cfg.dhdiff."""
from __future__ import annotations

from dataclasses import asdict

import cv2
import numpy as np
import pytest
import torch

from benchmark.schema import ConfigError, resolved
from generators import FitData, create_generator, get_generator_class
from generators import diffusion_prior as dp
from generators.dhdiff.config import DHDiffConfig, resolve
from generators.diffusion_prior import to_tensor, to_uint8
from tests.toys import tiny_sd, toy_fitdata

SIZE = 48
TINY = dict(widths=[8, 16], attn_levels=[True, True], patch_size=16, text_dim=16, heads=2,
            prior={"steps": 4, "batch_size": 2}, steps=3, batch_size=2, lr=2e-3, ddim_steps=2, sample_batch=4)
BASELINES = ("anomalydiffusion", "dualanodiff", "realnet_sdas")


@pytest.fixture(autouse=True)
def _threads():
    torch.set_num_threads(1)


def _toy(work_dir=None, seed=0, anomalies=True) -> FitData:
    return toy_fitdata(work_dir, seed, SIZE, anomalies)


def _fit(name, data, seed=0, **kw):
    gen = create_generator(name, **{**TINY, **kw})
    gen.fit(data, np.random.default_rng(seed))
    return gen


# ----------------------------------------------------------------------------- AnomalyDiffusion


def test_anomalydiffusion_backbone_stays_frozen(tmp_path):
    """After fit the U-Net is bit-identical to the cached prior; only the embeddings moved."""
    gen = _fit("anomalydiffusion", _toy(tmp_path / "g"), steps=4)
    saved = torch.load(gen.prior.path, weights_only=False)["unet"]
    now = gen.unet.state_dict()
    assert saved.keys() == now.keys()
    assert all(torch.equal(saved[k], now[k]) for k in saved), "the frozen backbone changed during fit"
    assert len(gen.loss_history) == 4
    trainable = {id(p) for p in gen.emb.parameters()}
    assert not any(id(p) in trainable for p in gen.unet.parameters())


def test_anomalydiffusion_background_is_the_normal():
    """The blend at every step leaves the known background exactly; pairs change nothing outside
    the mask (edit_margin 0) and something inside it."""
    gen = _fit("anomalydiffusion", _toy())
    assert gen.edit_margin == 0
    d, P = gen.defects.index("stain"), gen.config.patch_size
    known = to_tensor([n[10:10 + P, 20:20 + P] for n in gen.data.normals[:3]])
    m = torch.zeros(3, 1, P, P)
    m[:, :, 4:11, 3:9] = 1
    painted = to_uint8(gen.inpaint(known, m, d, torch.Generator().manual_seed(0)))
    outside = ~m[:, 0].bool().numpy()
    assert np.array_equal(painted[outside], to_uint8(known)[outside]), "inpainting changed the known background"
    assert (painted[~outside] != to_uint8(known)[~outside]).any()
    pairs = gen.generate(4, "stain", np.random.default_rng(1))
    for p in pairs:
        near = cv2.dilate(p.mask.astype(np.uint8), np.ones((2 * gen.edit_margin + 1,) * 2, np.uint8)).astype(bool)
        assert p.mask.any() and np.array_equal(p.image[~near], gen.data.normals[p.source][~near])
    assert any((p.image[p.mask] != gen.data.normals[p.source][p.mask]).any() for p in pairs)


def test_anomalydiffusion_reweighting_pushes_anomaly_attention_into_the_mask():
    """The re-weighting processor raises the anomaly tokens' attention inside the mask, not outside."""
    from diffusers.models.attention_processor import Attention

    from generators.anomalydiffusion import ReweightProcessor

    torch.manual_seed(0)
    attn = Attention(8, cross_attention_dim=6, heads=2, dim_head=4).eval()
    attn.set_processor(ReweightProcessor())
    hs, text = torch.randn(1, 16, 8), torch.randn(1, 5, 6)
    mask = torch.zeros(1, 1, 4, 4)
    mask[..., :2, :2] = 1
    ctx = {"mask": mask, "tokens": (2, 4), "strength": 2.0, "size": (4, 4)}
    with torch.no_grad():
        plain = attn(hs, encoder_hidden_states=text)
        moved = attn(hs, encoder_hidden_states=text, ctx=ctx)
        assert torch.allclose(attn(hs, encoder_hidden_states=text, ctx={**ctx, "strength": 0.0}), plain, atol=1e-6)
    inside = mask.flatten().bool()
    assert not torch.allclose(moved[0, inside], plain[0, inside], atol=1e-4)      # inside the mask: re-weighted
    assert torch.allclose(moved[0, ~inside], plain[0, ~inside], atol=1e-6)        # outside: untouched


# ----------------------------------------------------------------------------------- DualAnoDiff


@pytest.mark.parametrize("share", [True, False])
def test_dualanodiff_branches_share_self_attention(share):
    """Changing only the part branch's input changes the whole branch's output iff attention is shared."""
    gen = _fit("dualanodiff", _toy(), share_attention=share, steps=1)
    g = torch.Generator().manual_seed(0)
    whole, part, part2 = (torch.randn(2, 3, 16, 16, generator=g) for _ in range(3))
    t, d = torch.tensor([700, 300, 700, 300]), torch.tensor([0, 1])
    with torch.no_grad():
        a = gen.forward(torch.cat([whole, part]), t, d)
        b = gen.forward(torch.cat([whole, part2]), t, d)
    assert torch.allclose(a[:2], b[:2], atol=1e-6) != share
    assert not torch.allclose(a[2:], b[2:], atol=1e-6)          # the changed branch itself changes


def test_dualanodiff_mask_is_segmented_from_the_part_branch():
    gen = _fit("dualanodiff", _toy())
    part = gen.key.expand(2, 3, 16, 16).clone()
    part[0, :, 3:9, 4:12] = -0.9     # a dark defect on the chroma key
    part[1, :, 8:14, 2:6] = 0.9      # a bright one
    m = gen.segment(part)
    for mk, (y0, y1, x0, x1) in zip(m, [(3, 9, 4, 12), (8, 14, 2, 6)]):
        box = np.zeros((16, 16), bool)
        box[y0:y1, x0:x1] = True
        assert mk[y0 + 1:y1 - 1, x0 + 1:x1 - 1].all() and not (mk & ~box).any()   # blur may take a corner


def test_dualanodiff_generated_masks_are_the_part_branch_anomaly(monkeypatch):
    """generate() with a known part branch (a defect on the key colour plus the residual noise a
    short fine-tune leaves: about 0.06 of the largest distance, as measured at the preset budget)
    gives masks of that defect's size: never the whole window, never empty, no re-sample or top-k
    fallback. Guards the failure of the first version, whose masks were the whole 32 x 32 window."""
    gen = _fit("dualanodiff", _toy())
    P = gen.config.patch_size
    blobs = [(3, 9, 4, 12), (8, 14, 2, 6), (5, 8, 5, 14)]       # 48, 24, 27 px

    def known(d, b, g):
        noise = torch.Generator().manual_seed(b)
        part = gen.key.expand(b, 3, P, P) + 0.15 * torch.randn(b, 3, P, P, generator=noise)
        for i in range(b):
            y0, y1, x0, x1 = blobs[i % len(blobs)]
            part[i, :, y0:y1, x0:x1] = -0.9 if i % 2 else 0.9      # dark and bright defects
        return torch.zeros(b, 3, P, P), part.clamp(-1, 1)

    monkeypatch.setattr(gen, "sample_branches", known)
    pairs = gen.generate(4, "stain", np.random.default_rng(0))          # one sample_batch
    areas = [int(p.mask.sum()) for p in pairs]
    want = [(y1 - y0) * (x1 - x0) for y0, y1, x0, x1 in blobs * 2][:4]
    assert all(0 < a < P * P for a in areas), f"full-window or empty masks: {areas}"
    assert all(0.6 * w <= a <= 1.5 * w for a, w in zip(areas, want)), f"mask areas {areas}, defects {want}"
    assert gen.stats()["retries"] == 0 and gen.stats()["topk_fallbacks"] == 0


def test_dualanodiff_otsu_segments_the_part_branch():
    """mask_mode otsu: the level adapts to each sample, so a defect on a background still far from
    the key (an under-trained part branch) is segmented, not the whole window."""
    gen = _fit("dualanodiff", _toy(), mask_mode="otsu")
    part = torch.tensor([-0.3, -0.2, -0.1]).view(1, 3, 1, 1).expand(1, 3, 16, 16).clone()
    part[0, :, 3:9, 4:12] = torch.tensor([0.9, -0.9, 0.9]).view(3, 1, 1)
    m = gen.segment(part)[0]
    assert 0.6 * 48 <= m.sum() <= 1.5 * 48 and m[4:8, 5:11].all()


# ---------------------------------------------------------------------------------- RealNet-SDAS


def _oracle(gen, mu: torch.Tensor, tau: float):
    """The exact denoiser of normals ~ N(mu, tau^2) per pixel, in the U-Net's calling convention."""
    sched = gen.prior.scheduler
    kind = sched.config.prediction_type

    class Out:
        def __init__(self, sample):
            self.sample = sample

    def unet(z, t, encoder_hidden_states=None, **kw):
        ab = sched.alphas_cumprod[t].view(-1, 1, 1, 1)
        x0 = mu + (ab.sqrt() * tau ** 2 / (ab * tau ** 2 + 1 - ab)) * (z - ab.sqrt() * mu)
        eps = (z - ab.sqrt() * x0) / (1 - ab).sqrt()
        return Out({"epsilon": eps, "sample": x0, "v_prediction": ab.sqrt() * eps - (1 - ab).sqrt() * x0}[kind])

    return unet


def test_realnet_sdas_strength_zero_samples_normals_and_needs_no_anomaly():
    """Fits on normals only. Given the exact denoiser of normals ~ N(mu, tau^2) per pixel: s = 0 is
    diffusers' own ancestral sampler (DDIM, eta 1), its pairs differ from their normal image no
    more than two normals differ from each other; s = 1 spreads the samples further out."""
    cls = get_generator_class("realnet_sdas")
    assert not cls.needs_anomalies and not cls.needs_masks
    rng = np.random.default_rng(0)
    colour, tau = np.array([100, 130, 160]), 20.0
    normals = [np.clip(colour + rng.normal(0, tau, (SIZE, SIZE, 3)), 0, 255).astype(np.uint8) for _ in range(4)]
    data = FitData("flat", normals, [], ["synthetic"], image_size=SIZE)
    mu = torch.tensor(colour / 127.5 - 1, dtype=torch.float32).view(1, 3, 1, 1)
    between_normals = np.abs(normals[0].astype(float) - normals[1]).mean()
    change, spread = {}, {}
    for s in (0.0, 1.0):
        gen = _fit("realnet_sdas", data, strength=[s, s], blend=[1, 1], ddim_steps=8, sample_batch=16)
        gen.unet = _oracle(gen, mu, tau / 127.5)
        a = gen.sdas(np.full(16, s), torch.Generator().manual_seed(0))
        spread[s] = np.abs(to_uint8(a).astype(float) - colour).mean()
        if s == 0:      # the plain ancestral sampler, step for step
            sched, ts = dp.ddim(gen.prior.scheduler, 8)
            g = torch.Generator().manual_seed(0)
            z = torch.randn(16, 3, 16, 16, generator=g)
            for t in ts:
                z = sched.step(gen.unet(z, t.expand(16)).sample, t, z, eta=1.0, generator=g).prev_sample
            assert torch.allclose(a, z.clamp(-1, 1), atol=1e-6)
        pairs = gen.generate(16, "synthetic", np.random.default_rng(1))
        change[s] = np.mean([np.abs(p.image.astype(int) - normals[p.source].astype(int))[p.mask].mean() for p in pairs])
    assert change[0.0] < between_normals                   # s = 0: normal-looking
    assert spread[1.0] > 1.3 * spread[0.0] and change[1.0] > change[0.0]


# ------------------------------------------------------------------------------- seeds and cache


@pytest.mark.parametrize("name", BASELINES)
def test_same_seed_same_pairs(name):
    """Same fit/generate rngs -> identical pairs, whatever torch's global RNG; another rng differs."""
    data = _toy()

    def run(gen_seed, global_seed):
        torch.manual_seed(global_seed)
        return _fit(name, data, seed=3).generate(3, "scratch", np.random.default_rng(gen_seed))

    a, b, c = run(4, 0), run(4, 12345), run(5, 0)
    for p, q in zip(a, b):
        assert np.array_equal(p.image, q.image) and np.array_equal(p.mask, q.mask) and p.source == q.source
    assert not all(np.array_equal(p.image, q.image) for p, q in zip(a, c))


def test_prior_is_cached_shared_and_retrained_on_a_config_change(tmp_path, monkeypatch):
    data = _toy(tmp_path / "anomalydiffusion-x")
    first = _fit("anomalydiffusion", data)
    assert first.prior.source == "trained" and first.prior.path.exists()
    calls = []
    real = dp.train_prior

    def counting(*a, **k):
        calls.append(1)
        return real(*a, **k)

    monkeypatch.setattr(dp, "train_prior", counting)
    # another generator, its own work_dir beside the first: loads the same prior, trains nothing
    other = FitData(**{**data.__dict__, "work_dir": tmp_path / "realnet_sdas-y"})
    second = _fit("realnet_sdas", other)
    assert not calls and second.prior.source == "disk" and second.prior.key == first.prior.key
    # DH-Diff's opt-in prior: the same file, and its U-Net starts from it
    dh = create_generator("dhdiff", **{**TINY, "steps": 0})
    dh.fit(FitData(**{**data.__dict__, "work_dir": tmp_path / "dhdiff-z"}), np.random.default_rng(0))
    assert not calls and dh.prior_source == "disk"
    state = torch.load(first.prior.path, weights_only=False)["unet"]
    dh_state = dh.model.unet.state_dict()
    assert all(torch.equal(state[k], dh_state[k]) for k in state)
    # a prior setting changes: trained again, another file
    third = _fit("anomalydiffusion", data, prior={"steps": 5, "batch_size": 2})
    assert len(calls) == 1 and third.prior.source == "trained" and third.prior.key != first.prior.key
    # a different seed: another prior
    assert _fit("anomalydiffusion", data, seed=1).prior.key != first.prior.key


def test_settings_come_from_generator_cfg_dhdiff():
    """One place: the baselines inherit backbone, prior and budget from generator_cfg.dhdiff, and
    DH-Diff without ``prior`` keeps exactly its old config (fields, hence every cache key)."""
    section = {"dhdiff": {"prior": {"steps": 7}, "steps": 11, "ddim_steps": 3, "widths": [8, 16],
                          "attn_levels": [True, True]}}
    for name in BASELINES + ("dhdiff",):
        cls = get_generator_class(name)
        cfg = cls.resolve_config(cls.own_settings(name, section), f"generator_cfg.{name}")
        assert (cfg.prior.steps, cfg.steps, cfg.ddim_steps, tuple(cfg.widths)) == (7, 11, 3, (8, 16)), name
    plain = resolve({})
    assert type(plain) is DHDiffConfig and "prior" not in asdict(plain)
    assert "prior" not in asdict(create_generator("dhdiff").config)


# ------------------------------------------------------------------------------------ sd scale

SD_OWN = dict(patch_size=16, steps=2, batch_size=2, ddim_steps=2, sample_batch=4)


def _sd_base(path, **kw) -> dict:
    """generator_cfg.dhdiff at sd scale on the tiny SD folder (no CLIP: learned null tokens)."""
    return {"scale": "sd", "sd_path": str(tiny_sd(path)), "text_encoder": "learned", **kw}


@pytest.mark.parametrize("name", BASELINES)
def test_sd_scale_runs_in_the_checkpoints_latent_space(name, tmp_path):
    """At sd scale the prior is the local checkpoint: its U-Net on VAE latents (4 channels, half
    the side here), its noise schedule; pairs come out at image size with binary masks, the
    same for the same seed."""
    base = _sd_base(tmp_path / "sd")
    gen = create_generator(name, base=base, **SD_OWN)
    assert gen.config.scale == "sd" and resolved(gen.config)["sd_path"] == base["sd_path"]
    gen.fit(_toy(), np.random.default_rng(0))
    assert gen.prior.source == "checkpoint" and gen.prior.vae is not None
    assert gen.prior.shape(2, 16) == (2, 4, 8, 8) and gen.prior.scheduler.config.beta_schedule == "scaled_linear"
    assert gen.prior.null.shape == (gen.config.prior.n_tokens, 16)        # the U-Net's cross-attention width
    pairs = gen.generate(3, "stain", np.random.default_rng(1))
    for p in pairs:
        assert p.image.shape == (SIZE, SIZE, 3) and p.mask.shape == (SIZE, SIZE) and p.mask.dtype == bool
        assert p.mask.any()
    again = create_generator(name, base=base, **SD_OWN)
    again.fit(_toy(), np.random.default_rng(0))
    assert all(np.array_equal(a.image, b.image) and np.array_equal(a.mask, b.mask)
               for a, b in zip(pairs, again.generate(3, "stain", np.random.default_rng(1))))


def test_sd_anomalydiffusion_keeps_the_checkpoint_frozen_and_the_background(tmp_path):
    """AnomalyDiffusion at sd: the checkpoint's U-Net is bit-identical after fitting, and the
    decoded latents are pasted inside the mask only (outside it, the normal's own pixels)."""
    from diffusers import UNet2DConditionModel

    base = _sd_base(tmp_path / "sd")
    gen = create_generator("anomalydiffusion", base=base, **SD_OWN)
    gen.fit(_toy(), np.random.default_rng(0))
    saved = UNet2DConditionModel.from_pretrained(tmp_path / "sd", subfolder="unet").state_dict()
    now = gen.unet.state_dict()
    assert saved.keys() == now.keys() and all(torch.equal(saved[k], now[k]) for k in saved)
    for p in gen.generate(4, "scratch", np.random.default_rng(2)):
        assert np.array_equal(p.image[~p.mask], gen.data.normals[p.source][~p.mask])


def test_sd_scale_settings_are_checked(tmp_path):
    base = _sd_base(tmp_path / "sd")
    with pytest.raises(ValueError, match="patch_size 18 must be a multiple of 4"):
        create_generator("realnet_sdas", base=base, **{**SD_OWN, "patch_size": 18}).fit(_toy(), np.random.default_rng(0))
    with pytest.raises(ConfigError, match="every diffusion generator runs at one scale"):
        create_generator("dualanodiff", base=base, scale="tiny")       # a tiny column beside sd ones
    with pytest.raises(ConfigError, match="sd-scale settings"):
        create_generator("dualanodiff", sd_path=str(tmp_path / "sd"))  # sd_path at tiny scale
    no_clip = create_generator("realnet_sdas", base={**base, "text_encoder": "auto"}, **SD_OWN)
    with pytest.raises(ValueError, match="text_encoder"):               # no text_encoder/ and no clip_path
        no_clip.fit(_toy(), np.random.default_rng(0))
    with pytest.raises(ValueError, match="sd_path"):
        create_generator("anomalydiffusion", base={**base, "sd_path": str(tmp_path / "nope")},
                         **SD_OWN).fit(_toy(), np.random.default_rng(0))


def test_tiny_configs_keep_their_hash():
    """The sd fields are left out of a tiny config's resolved dict (``omit_default``), so every
    tiny record, run folder and generated set made before they existed keeps its hash."""
    for name in BASELINES:
        cfg = resolved(create_generator(name).config)
        assert not {"scale", "sd_path", "text_encoder", "clip_path"} & cfg.keys(), name
