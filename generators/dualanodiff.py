"""DualAnoDiff-style generator (Jin et al., CVPR 2025) on DH-Diff's tiny backbone.

Kept from the original method
* The pretrained diffusion model is fine-tuned with **LoRA** (rank ``rank`` adapters on every
  attention projection q, k, v, out, and with ``lora_conv`` on every conv layer; the base
  weights stay frozen) plus learned prompt tokens.
* **Two branches denoised together**: the whole anomalous image and the anomaly part alone, with
  the same timestep, stacked on the batch axis of one U-Net.
* The branches **share self-attention**: in every self-attention layer each branch's queries
  attend to the keys and values of both branches (tokens concatenated), which is what lets the
  part and the whole agree. ``share_attention: false`` is the ablation with per-branch attention
  (the branches then never meet: nothing else in the U-Net mixes samples).
* The mask is **segmented from the anomaly-part branch**. The original uses a salient-object
  network on a black background; here the part branch shows the anomaly on a chroma-key
  background (``part_background``, pure green by default, so that dark and bright defects both
  stand out) and the mask is a **fixed threshold** on the distance to that colour
  (``mask_threshold``, a fraction of the largest RGB distance; ``mask_mode: otsu`` takes each
  sample's Otsu level instead), then DH-Diff's clean-up (blur, specks, holes). No learned
  segmenter. ``part_edge`` (off by default) softens the part target's edge.

What the shared tiny backbone changes
* The backbone is the shared prior (generators.diffusion_prior): DH-Diff's tiny pixel-space
  U-Net pretrained on this category's normal crops, not SD-1.5; prompt tokens are learned per
  defect type and branch (after the prior's null tokens) instead of a frozen CLIP prompt.
* The budget (optimiser and sampling steps) is the one shared by every diffusion generator.
  At it (180 steps), LoRA on attention only at the shared lr left the part branch near the
  prior's colours (mean (-0.30, -0.20, -0.10) against the key (-1, 1, -1)), so every mask was
  the whole window. Hence, measured (docs/diffusion_baselines.md): LoRA also on the convs
  (``lora_conv``; the tiny U-Net's top level has no attention at all) and a per-method lr,
  ``lr_scale`` = 5 x the shared lr (LoRA is commonly run at a higher lr than a full
  fine-tune); the step count stays the shared one.
* Patch mode: the branches are ``patch_size`` crops around the few-shot defects; a generated
  (whole patch, mask) is composited 1:1 into a normal image on the foreground, blended only
  inside the mask dilated by ``dilate`` (``edit_margin`` = 2 * dilate), as DH-Diff does. The
  original's background-compensation module is not built.
* sd scale (``generator_cfg.dhdiff.scale: sd``): the base model is the local SD-1.x checkpoint,
  as in the original (SD-1.5 + LoRA); both branches are VAE latents of the crops, denoised
  together and decoded before the part branch is segmented; the learned tokens have the U-Net's
  cross-attention width and follow CLIP's empty-prompt context (or zero tokens with
  ``text_encoder: learned``), where the original fine-tunes a CLIP prompt.
* Empty masks are re-sampled ``max_retries`` times, then thresholded at the quantile that gives
  a few-shot defect's area in the patch ("top-k fallback"); counted in ``stats()``.

Seeds: every weight init (LoRA, tokens) and every draw comes from fit's / generate's ``rng``.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import cv2
import numpy as np
import torch
import torch.nn.functional as F
from diffusers.models.attention_processor import Attention
from torch import nn

from benchmark.schema import option

from . import register_generator
from .attention_ops import finish, heads, merge
from .base import Pair
from .dhdiff.patches import clean_mask, composite, crop, defect_box
from .diffusion_prior import (
    DiffusionConfig,
    PassProcessor,
    PriorGenerator,
    ddim,
    optimise,
    set_processors,
    target,
    to_tensor,
    to_uint8,
)


@dataclass
class DualAnoDiffConfig(DiffusionConfig):
    rank: int = option(4, ge=1, help="LoRA rank on every attention projection (and conv, with lora_conv)")
    lora_conv: bool = option(True, help="LoRA also on every conv layer of the U-Net (resnets, samplers, in/out)")
    lr_scale: float = option(5.0, gt=0, help="LoRA/token lr = lr_scale x the shared lr (the step count stays shared)")
    n_tokens: int = option(2, ge=1, help="learned prompt tokens per defect type and branch")
    share_attention: bool = option(True, help="branches share self-attention (DualAnoDiff); false: ablation")
    part_background: tuple[int, int, int] = option((0, 255, 0), ge=0, le=255,
                                                   help="RGB of the anomaly-part branch's background (chroma key)")
    part_edge: float = option(0.0, ge=0, help="soft edge of the part target: the mask blurred by this sigma (px)")
    mask_mode: str = option("threshold", choices=("threshold", "otsu"),
                            help="segment the distance map at mask_threshold, or at its per-sample Otsu level")
    mask_threshold: float = option(0.2, gt=0, lt=1, help="distance to part_background, fraction of the largest")
    mask_sigma: float = option(0.6, ge=0)
    min_blob: int = option(4, ge=0)
    fill_holes: bool = True
    max_retries: int = option(2, ge=0)
    jitter: float = option(0.25, ge=0, le=0.5, help="training crop shift, fraction of the patch")
    dilate: int = option(3, ge=0)


class LoRALinear(nn.Module):
    """``base(x) + up(down(x))``: base frozen, ``up`` zero-initialised (starts as the prior)."""

    def __init__(self, base: nn.Linear, rank: int):
        super().__init__()
        self.base = base.requires_grad_(False)
        self.down = nn.Linear(base.in_features, rank, bias=False)
        self.up = nn.Linear(rank, base.out_features, bias=False)
        nn.init.kaiming_uniform_(self.down.weight, a=math.sqrt(5))
        nn.init.zeros_(self.up.weight)

    @property
    def in_features(self) -> int:
        return self.base.in_features

    @property
    def out_features(self) -> int:
        return self.base.out_features

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.base(x) + self.up(self.down(x))


class LoRAConv2d(nn.Module):
    """``base(x) + up(down(x))`` for a conv: ``down`` has the base's kernel and stride, ``up`` is
    1x1 and zero-initialised (starts as the prior); base frozen."""

    def __init__(self, base: nn.Conv2d, rank: int):
        super().__init__()
        self.base = base.requires_grad_(False)
        self.down = nn.Conv2d(base.in_channels, rank, base.kernel_size, base.stride, base.padding, bias=False)
        self.up = nn.Conv2d(rank, base.out_channels, 1, bias=False)
        nn.init.kaiming_uniform_(self.down.weight, a=math.sqrt(5))
        nn.init.zeros_(self.up.weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.base(x) + self.up(self.down(x))


def add_lora(unet, rank: int, conv: bool = False) -> list[nn.Parameter]:
    """LoRA adapters on q, k, v and out of every attention layer (and, with ``conv``, on every
    Conv2d); returns their parameters."""
    params = []
    if conv:
        convs = [(parent, name, child) for parent in unet.modules() for name, child in parent.named_children()
                 if isinstance(child, nn.Conv2d)]
        for parent, name, child in convs:
            lora = LoRAConv2d(child, rank)
            setattr(parent, name, lora)
            params += [lora.down.weight, lora.up.weight]
    for mod in [m for m in unet.modules() if isinstance(m, Attention)]:
        for name in ("to_q", "to_k", "to_v"):
            lora = LoRALinear(getattr(mod, name), rank)
            setattr(mod, name, lora)
            params += [lora.down.weight, lora.up.weight]
        lora = LoRALinear(mod.to_out[0], rank)
        mod.to_out[0] = lora
        params += [lora.down.weight, lora.up.weight]
    return params


class BranchAttention(PassProcessor):
    """Self-attention over ``[whole B | part B]``: with ``share`` each branch's queries attend to
    the keys/values of both branches of the same sample; without it, per-sample attention."""

    def __init__(self, share: bool):
        super().__init__()
        self.share = share

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, temb=None,
                 ctx=None, **kwargs):
        if not self.share:
            return super().__call__(attn, hidden_states, encoder_hidden_states, attention_mask, temb)
        b, h = hidden_states.shape[0] // 2, attn.heads
        k, v = attn.to_k(hidden_states), attn.to_v(hidden_states)
        k = torch.cat([k[:b], k[b:]], dim=1).repeat(2, 1, 1)        # [2B, 2N, C]: both branches' tokens
        v = torch.cat([v[:b], v[b:]], dim=1).repeat(2, 1, 1)
        out = F.scaled_dot_product_attention(heads(attn.to_q(hidden_states), h), heads(k, h), heads(v, h))
        return finish(attn, merge(out), hidden_states)


def otsu(a: np.ndarray, bins: int = 256) -> float:
    """Otsu's level of a map (between-class variance maximised over ``bins`` levels of its range)."""
    lo, hi = float(a.min()), float(a.max())
    if hi - lo < 1e-8:
        return hi
    hist, edges = np.histogram(a, bins, (lo, hi))
    p = hist / hist.sum()
    w = np.cumsum(p)
    mu = np.cumsum(p * edges[:-1])
    with np.errstate(divide="ignore", invalid="ignore"):
        between = (mu[-1] * w - mu) ** 2 / (w * (1 - w))
    return float(edges[1 + int(np.nanargmax(between[:-1]))])


@register_generator("dualanodiff")
class DualAnoDiff(PriorGenerator):
    config_class = DualAnoDiffConfig
    needs_masks = True
    needs_anomalies = True
    edits_normal = True

    @property
    def edit_margin(self) -> int:
        """The composite blends over the mask dilated by ``dilate`` and blurred by as much again."""
        return 2 * self.config.dilate

    def fit(self, data, rng: np.random.Generator) -> None:
        if not data.anomalies:
            raise ValueError("dualanodiff: FitData.anomalies is empty; it learns from few-shot anomalies")
        if any(a.mask is None or not np.asarray(a.mask).any() for a in data.anomalies):
            raise ValueError("dualanodiff: every few-shot anomaly needs a non-empty mask")
        self._fit_prior(data, rng)
        c = self.config
        self.unet = self.prior.unet.requires_grad_(False)
        self.defects = sorted({a.defect_type for a in data.anomalies})
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(int(rng.integers(2**63)))
            lora = add_lora(self.unet, c.rank, c.lora_conv)
            start = self.prior.null.mean(0)
            self.tokens = nn.Parameter(start + 0.1 * self._dev(torch.randn(2, len(self.defects), c.n_tokens, start.shape[-1])))
        self.unet.to(self.dev)                    # the LoRA layers were built on the CPU
        set_processors(self.unet, lambda m: BranchAttention(c.share_attention), lambda m: PassProcessor())
        self.key = self._dev(torch.tensor(c.part_background, dtype=torch.float32).view(1, 3, 1, 1) / 127.5 - 1)
        self.areas = {d: [int(np.asarray(a.mask).sum()) for a in data.anomalies if a.defect_type == d] for d in self.defects}
        gen = torch.Generator().manual_seed(int(rng.integers(2**63)))
        sched = self.prior.scheduler

        def loss():
            x, m, ds = self._batch(rng)
            x, m = self._dev(x), self._dev(m)
            part = self.prior.encode(self.part(x, m))
            x = self.prior.encode(x)
            t = self._dev(torch.randint(0, sched.config.num_train_timesteps, (len(x),), generator=gen))
            ew, ep = self._dev(torch.randn(x.shape, generator=gen)), self._dev(torch.randn(x.shape, generator=gen))
            zt = torch.cat([sched.add_noise(x, ew, t), sched.add_noise(part, ep, t)])
            pred = self.forward(zt, torch.cat([t, t]), torch.tensor(ds))
            return F.mse_loss(pred, torch.cat([target(sched, x, ew, t), target(sched, part, ep, t)]))

        self.unet.train()
        self.loss_history = optimise(lora + [self.tokens], loss, c.steps, c.lr * c.lr_scale, c.warmup, c.lr_schedule)
        self.unet.eval()
        self._stats = {"samples": 0, "retries": 0, "topk_fallbacks": 0, "pieces_dropped": 0, "paste_without_fg": 0}

    def part(self, x: torch.Tensor, m: torch.Tensor) -> torch.Tensor:
        """The anomaly part alone: the image inside the mask (its edge softened by ``part_edge``),
        the key colour elsewhere."""
        s = self.config.part_edge
        if s > 0:      # separable Gaussian, zero outside the crop
            r = max(1, math.ceil(3 * s))
            g = torch.exp(-torch.arange(-r, r + 1, dtype=torch.float32) ** 2 / (2 * s * s))
            g = (g / g.sum()).to(m.device)
            m = F.conv2d(F.conv2d(m, g.view(1, 1, 1, -1), padding=(0, r)), g.view(1, 1, -1, 1), padding=(r, 0))
        return m * x + (1 - m) * self.key

    def forward(self, z2: torch.Tensor, t2: torch.Tensor, defects: torch.Tensor) -> torch.Tensor:
        """One U-Net call on ``[whole B | part B]`` with each branch's prompt tokens."""
        text = torch.cat([self._context(self.tokens[0][defects]), self._context(self.tokens[1][defects])])
        return self.unet(z2, t2, encoder_hidden_states=text, cross_attention_kwargs={"ctx": None}).sample

    def _batch(self, rng: np.random.Generator):
        c, ims, mks, ds = self.config, [], [], []
        for _ in range(c.batch_size):
            a = self.data.anomalies[rng.integers(len(self.data.anomalies))]
            am = np.asarray(a.mask, bool)
            im, mk = crop(a.image, am, defect_box(am, c.patch_size, rng, c.jitter), c.patch_size)
            if rng.random() < 0.5:
                im, mk = im[:, ::-1], mk[:, ::-1]
            if rng.random() < 0.5:
                im, mk = im[::-1], mk[::-1]
            ims.append(np.ascontiguousarray(im))
            mks.append(np.ascontiguousarray(mk))
            ds.append(self.defects.index(a.defect_type))
        return to_tensor(ims), torch.from_numpy(np.stack(mks).astype(np.float32))[:, None], ds

    @torch.no_grad()
    def sample_branches(self, d: int, b: int, gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        """Both branches from pure noise: (whole [b, 3, P, P], part [b, 3, P, P]) in [-1, 1]."""
        P = self.config.patch_size
        sched, ts = ddim(self.prior.scheduler, self.config.ddim_steps)
        z = self._dev(torch.randn(self.prior.shape(2 * b, P), generator=gen))
        idx = torch.full((b,), d)
        for t in ts:
            z = sched.step(self.forward(z, self._dev(t.expand(2 * b)), idx), t, z).prev_sample
        z = self.prior.decode(z).clamp(-1, 1)
        return z[:b], z[b:]

    def distance(self, part: torch.Tensor) -> np.ndarray:
        """[B, P, P] distance of the part branch to the key colour, a fraction of the largest RGB distance."""
        return (((part - self.key) ** 2).sum(1).sqrt() / (2 * math.sqrt(3))).cpu().numpy()

    def segment(self, part: torch.Tensor) -> list[np.ndarray]:
        """Masks from the part branch: its distance to the key colour (blurred by ``mask_sigma``)
        above ``mask_threshold``, or above each sample's Otsu level (``mask_mode: otsu``), cleaned."""
        c, out = self.config, []
        for d in self.distance(part):
            if c.mask_sigma > 0:
                d = cv2.GaussianBlur(d, (0, 0), c.mask_sigma)
            level = c.mask_threshold if c.mask_mode == "threshold" else otsu(d)
            out.append(clean_mask(d, level, 0.0, c.min_blob, None, c.fill_holes, self._stats))
        return out

    def generate(self, n: int, defect_type: str, rng: np.random.Generator) -> list[Pair]:
        self._check_fitted()
        d = self._defect_index(defect_type)
        c, P = self.config, self.config.patch_size
        gen = torch.Generator().manual_seed(int(rng.integers(2**63)))
        out: list[Pair] = []
        while len(out) < n:
            b = min(c.sample_batch, n - len(out))
            whole, part = self.sample_branches(d, b, gen)
            masks = self.segment(part)
            self._stats["samples"] += b
            for _ in range(c.max_retries):
                empty = [i for i in range(b) if not masks[i].any()]
                if not empty:
                    break
                self._stats["retries"] += len(empty)
                w2, p2 = self.sample_branches(d, len(empty), gen)
                for k, (i, m2) in enumerate(zip(empty, self.segment(p2))):
                    whole[i], part[i], masks[i] = w2[k], p2[k], m2
            dist = torch.from_numpy(self.distance(part))
            for i in range(b):
                if not masks[i].any():   # top-k fallback: a few-shot defect's area (capped by the patch)
                    self._stats["topk_fallbacks"] += 1
                    area = min(P * P, max(1, self.areas[self.defects[d]][rng.integers(len(self.areas[self.defects[d]]))]))
                    flat = dist[i].flatten()
                    masks[i] = (dist[i] >= flat.topk(area).values[-1]).numpy()
            for patch, mk in zip(to_uint8(whole), masks):
                res = None
                for _ in range(5):
                    j = int(rng.integers(len(self.data.normals)))
                    res = composite(self.data.normals[j], patch, mk, P, rng, self._foreground(j), c.dilate)
                    if res is not None:
                        break
                if res is None:
                    self._stats["paste_without_fg"] += 1
                    res = composite(self.data.normals[j], patch, mk, P, rng, None, c.dilate)
                out.append(Pair(res[0], res[1], defect_type, source=j))
        return out


__all__ = ["DualAnoDiff", "DualAnoDiffConfig", "BranchAttention", "LoRALinear", "add_lora"]
