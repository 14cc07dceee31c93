"""AnomalyDiffusion-style generator (Hu et al., AAAI 2024) on DH-Diff's tiny backbone.

Kept from the original method
* The pretrained diffusion model stays **frozen**; what is learned is an *anomaly embedding*
  (``n_tokens`` textual-inversion tokens per defect type) and a *spatial embedding* (a small
  conv encoder turning the mask into ``spatial_grid``^2 tokens), both fed to the U-Net's text
  cross-attention.
* Generation paints the anomaly into a normal image inside a given mask, **blending the known
  background at every step** (the normal crop noised to the next timestep replaces the sample
  outside the mask; at the last step it is the normal crop itself).
* **Adaptive attention re-weighting** in every cross-attention layer at generation: the anomaly
  tokens' attention inside the mask is multiplied by 1 + ``reweight`` * W with
  W = |M| * softmax over mask positions of (-A), A the anomaly tokens' attention (mean over
  heads), so the weakly attended parts of the mask get the most; rows are renormalised.
* Masks come from a second, mask-only model learned the same way: a *mask embedding*
  (``mask_tokens`` tokens per defect type) on the same frozen backbone, trained on the few-shot
  masks drawn as images, sampled from noise and thresholded (``mask_threshold``) with
  DH-Diff's clean-up (blur, specks, holes).
* Loss: noise-prediction MSE weighted by the mask (1 inside, ``background_weight`` outside).

What the shared tiny backbone changes
* The backbone is the shared prior (generators.diffusion_prior): DH-Diff's tiny pixel-space
  U-Net pretrained on this category's normal crops, not the LDM text2img-1.4B; the learned
  tokens follow the prior's learned null tokens instead of a frozen text prompt.
* Patch mode: training crops of ``patch_size`` around the few-shot defects; a generated mask
  (patch size) is placed on a normal image at a foreground pixel (cut to the foreground for
  objects), and only that window is inpainted. Pixels outside the mask are the normal's own
  (``edit_margin`` 0: the inpainted pixels are pasted inside the mask only).
* Both embeddings train in the same optimiser steps (one Adam step updates the anomaly, spatial
  and mask embeddings), so the step budget is the one every diffusion generator gets.
* sd scale (``generator_cfg.dhdiff.scale: sd``): the frozen model is the local SD-1.x checkpoint
  (as in the original, whose LDM is also a latent model); crops go through its VAE, the
  background blending runs on the latents with the mask max-pooled onto the latent grid, the
  mask model generates masks drawn as images through the same VAE, and the learned tokens have
  the U-Net's cross-attention width and follow CLIP's empty-prompt context (or zero tokens with
  ``text_encoder: learned``). The inpainted window is decoded and pasted inside the mask only, so
  the background stays the normal image's own pixels.
* Empty generated masks are re-sampled ``max_retries`` times, then a few-shot mask (flipped or
  turned) is used; both are counted in ``stats()``.

Seeds: every weight init and every draw comes from fit's / generate's ``rng``.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from benchmark.schema import option

from . import register_generator
from .attention_ops import finish, heads, merge
from .dhdiff.patches import clean_mask, crop, defect_box
from .diffusion_prior import (
    DiffusionConfig,
    PassProcessor,
    PriorGenerator,
    ddim,
    noise_loss,
    optimise,
    resize_mask_tokens,
    set_processors,
    to_tensor,
    to_uint8,
    window_at,
)


@dataclass
class AnomalyDiffusionConfig(DiffusionConfig):
    n_tokens: int = option(2, ge=1, help="anomaly-embedding tokens per defect type")
    spatial_grid: int = option(2, ge=1, help="spatial embedding: the mask encoder's output grid side (grid^2 tokens)")
    mask_tokens: int = option(2, ge=1, help="mask-embedding tokens per defect type")
    background_weight: float = option(0.1, ge=0, le=1, help="loss weight outside the mask (1 inside)")
    reweight: float = option(1.0, ge=0, help="adaptive attention re-weighting strength at generation (0: off)")
    jitter: float = option(0.25, ge=0, le=0.5, help="training crop shift, fraction of the patch")
    mask_threshold: float = 0.0
    mask_sigma: float = option(0.6, ge=0)
    min_blob: int = option(4, ge=0)
    fill_holes: bool = True
    max_retries: int = option(2, ge=0)


class ReweightProcessor(PassProcessor):
    """Text cross-attention with adaptive re-weighting of the anomaly tokens inside the mask.

    ``ctx``: {"mask": [B, 1, H, W], "tokens": (lo, hi) anomaly-token positions, "strength",
    "size": (H, W)}; without a mask (training, the mask model) it is plain attention."""

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, temb=None,
                 ctx=None, **kwargs):
        if ctx is None or ctx.get("mask") is None or ctx.get("strength", 0) <= 0 or encoder_hidden_states is None:
            return super().__call__(attn, hidden_states, encoder_hidden_states, attention_mask, temb)
        h, n = attn.heads, hidden_states.shape[1]
        q = heads(attn.to_q(hidden_states), h)
        k = heads(attn.to_k(encoder_hidden_states), h)
        v = heads(attn.to_v(encoder_hidden_states), h)
        p = torch.softmax(q @ k.transpose(-1, -2) * attn.scale, dim=-1)          # [B, h, N, L]
        lo, hi = ctx["tokens"]
        inside = resize_mask_tokens(ctx["mask"], n, ctx["size"]) > 0              # [B, N]
        a = p[..., lo:hi].sum(-1).mean(1)                                          # [B, N]
        w = torch.softmax((-a).masked_fill(~inside, float("-inf")), dim=-1) * inside.sum(-1, keepdim=True)
        w = torch.nan_to_num(w) * inside                                           # mean 1 over the mask
        boost = (1 + ctx["strength"] * w)[:, None, :, None]
        p = torch.cat([p[..., :lo], p[..., lo:hi] * boost, p[..., hi:]], dim=-1)
        p = p / p.sum(-1, keepdim=True)
        return finish(attn, merge(p @ v), hidden_states)


class Embeddings(nn.Module):
    """The learned parts: anomaly and mask embeddings per defect type, the spatial (mask) encoder."""

    def __init__(self, n_defects: int, cfg: AnomalyDiffusionConfig, null: torch.Tensor):
        super().__init__()
        d = null.shape[-1]       # text_dim at tiny scale, the U-Net's cross-attention width at sd
        start = null.mean(0)
        self.anomaly = nn.Parameter(start + 0.1 * torch.randn(n_defects, cfg.n_tokens, d))
        self.mask = nn.Parameter(start + 0.1 * torch.randn(n_defects, cfg.mask_tokens, d))
        self.spatial = nn.Sequential(nn.Conv2d(1, 16, 3, 2, 1), nn.SiLU(), nn.Conv2d(16, 32, 3, 2, 1), nn.SiLU(),
                                     nn.AdaptiveAvgPool2d(cfg.spatial_grid))
        self.proj = nn.Linear(32, d)

    def spatial_tokens(self, m: torch.Tensor) -> torch.Tensor:
        return self.proj(self.spatial(m * 2 - 1).flatten(2).transpose(1, 2))


@register_generator("anomalydiffusion")
class AnomalyDiffusion(PriorGenerator):
    config_class = AnomalyDiffusionConfig
    needs_masks = True
    needs_anomalies = True
    edits_normal = True
    edit_margin = 0

    def fit(self, data, rng: np.random.Generator) -> None:
        if not data.anomalies:
            raise ValueError("anomalydiffusion: FitData.anomalies is empty; the embeddings learn from few-shot anomalies")
        if any(a.mask is None or not np.asarray(a.mask).any() for a in data.anomalies):
            raise ValueError("anomalydiffusion: every few-shot anomaly needs a non-empty mask")
        self._fit_prior(data, rng)
        c = self.config
        self.unet = self.prior.unet.requires_grad_(False).eval()     # frozen backbone
        set_processors(self.unet, lambda m: PassProcessor(), lambda m: ReweightProcessor())
        self.defects = sorted({a.defect_type for a in data.anomalies})
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(int(rng.integers(2**63)))
            self.emb = Embeddings(len(self.defects), c, self.prior.null.cpu()).to(self.dev)
        gen = torch.Generator().manual_seed(int(rng.integers(2**63)))
        sched = self.prior.scheduler

        def loss():
            ims, mks, ds = self._batch(rng)
            x0 = self.prior.encode(self._dev(to_tensor(ims)))
            m = self._dev(torch.from_numpy(np.stack(mks).astype(np.float32))[:, None])
            idx = torch.tensor(ds)
            text = self._context(torch.cat([self.emb.anomaly[idx], self.emb.spatial_tokens(m)], dim=1))
            mz = self.prior.down(m)
            weight = mz + c.background_weight * (1 - mz)
            li = noise_loss(self.unet, sched, x0, text, gen, weight, {"ctx": None})
            lm = noise_loss(self.unet, sched, self.prior.encode((m * 2 - 1).expand(-1, 3, -1, -1)),
                            self._context(self.emb.mask[idx]), gen, None, {"ctx": None})
            return li + lm

        self.emb.train()
        self.loss_history = optimise(self.emb.parameters(), loss, c.steps, c.lr, c.warmup, c.lr_schedule)
        self.emb.eval()
        self._stats = {"samples": 0, "mask_retries": 0, "mask_fallbacks": 0, "pieces_dropped": 0, "paste_without_fg": 0}

    def _batch(self, rng: np.random.Generator):
        c, ims, mks, ds = self.config, [], [], []
        for _ in range(c.batch_size):
            a = self.data.anomalies[rng.integers(len(self.data.anomalies))]
            box = defect_box(np.asarray(a.mask, bool), c.patch_size, rng, c.jitter)
            im, mk = crop(a.image, np.asarray(a.mask, bool), box, c.patch_size)
            if rng.random() < 0.5:
                im, mk = im[:, ::-1], mk[:, ::-1]
            if rng.random() < 0.5:
                im, mk = im[::-1], mk[::-1]
            ims.append(np.ascontiguousarray(im))
            mks.append(np.ascontiguousarray(mk))
            ds.append(self.defects.index(a.defect_type))
        return ims, mks, ds

    # ---- generation ---------------------------------------------------------------------------
    @torch.no_grad()
    def sample_masks(self, d: int, b: int, gen: torch.Generator, rng: np.random.Generator) -> list[np.ndarray]:
        """``b`` masks (patch size) from the mask model; empty ones re-sampled, then a few-shot mask."""
        c = self.config
        masks: list[np.ndarray | None] = [None] * b
        todo = list(range(b))
        for attempt in range(c.max_retries + 1):
            text = self._context(self.emb.mask[d][None].expand(len(todo), -1, -1))
            z = self._denoise(self._dev(torch.randn(self.prior.shape(len(todo), c.patch_size), generator=gen)), text, gen)
            ann = self.prior.decode(z).mean(1).cpu()
            for i, idx in enumerate(todo):
                masks[idx] = clean_mask(ann[i].numpy(), c.mask_threshold, c.mask_sigma, c.min_blob, None,
                                        c.fill_holes, self._stats)
            todo = [i for i in todo if not masks[i].any()]
            if not todo:
                break
            if attempt < c.max_retries:
                self._stats["mask_retries"] += len(todo)
        pool = [a for a in self.data.anomalies if a.defect_type == self.defects[d]]
        for i in todo:      # fallback: a few-shot mask crop, flipped and turned
            self._stats["mask_fallbacks"] += 1
            a = pool[rng.integers(len(pool))]
            am = np.asarray(a.mask, bool)
            _, mk = crop(a.image, am, defect_box(am, c.patch_size), c.patch_size)
            masks[i] = np.ascontiguousarray(np.rot90(mk[:, ::-1] if rng.integers(2) else mk, int(rng.integers(4))))
        return masks

    def _denoise(self, z, text, gen, known=None, mask=None, attn_ctx=None):
        """DDIM from ``z``; with ``known``/``mask`` the known background (noised to the next
        timestep, at the end itself) replaces the sample outside the mask after every step."""
        sched, ts = ddim(self.prior.scheduler, self.config.ddim_steps)
        stride = sched.config.num_train_timesteps // sched.num_inference_steps
        for t in ts:
            pred = self.unet(z, self._dev(t.expand(len(z))), encoder_hidden_states=text,
                             cross_attention_kwargs={"ctx": attn_ctx}).sample
            z = sched.step(pred, t, z).prev_sample
            if known is not None:
                t_prev = int(t) - stride
                bg = (self.prior.scheduler.add_noise(known, self._dev(torch.randn(known.shape, generator=gen)),
                                                     torch.full((len(z),), t_prev)) if t_prev >= 0 else known)
                z = mask * z + (1 - mask) * bg
        return z

    @torch.no_grad()
    def inpaint(self, known: torch.Tensor, mask: torch.Tensor, d: int, gen: torch.Generator) -> torch.Tensor:
        """Paint defect ``d`` into ``known`` ([B, 3, P, P] in [-1, 1]) inside ``mask`` ([B, 1, P, P]).
        The blending runs in the prior's model space (at sd scale on latents, with the mask
        max-pooled onto the latent grid); the result is decoded to pixels."""
        c = self.config
        b = len(known)
        tokens = torch.cat([self.emb.anomaly[d][None].expand(b, -1, -1), self.emb.spatial_tokens(mask)], dim=1)
        text = self._context(tokens)
        lo = self.prior.null.shape[0]
        attn_ctx = {"mask": mask, "tokens": (lo, lo + c.n_tokens), "strength": c.reweight, "size": tuple(known.shape[-2:])}
        zk = self.prior.encode(known)
        z = self._denoise(self._dev(torch.randn(zk.shape, generator=gen)), text, gen, zk, self.prior.down(mask), attn_ctx)
        return self.prior.decode(z)

    def _place(self, mk: np.ndarray, rng: np.random.Generator):
        """(normal index, y0, x0, window mask) with the mask on the foreground (objects)."""
        P = self.config.patch_size
        for _ in range(10):
            j = int(rng.integers(len(self.data.normals)))
            h, w = self.data.normals[j].shape[:2]
            fg = self._foreground(j)
            y0, x0 = window_at(fg, h, w, P, rng)
            m = mk & fg[y0:y0 + P, x0:x0 + P] if fg is not None else mk
            if m.any():
                return j, y0, x0, m
        self._stats["paste_without_fg"] += 1
        return j, y0, x0, mk

    def generate(self, n: int, defect_type: str, rng: np.random.Generator):
        from .base import Pair

        self._check_fitted()
        d = self._defect_index(defect_type)
        c, P = self.config, self.config.patch_size
        gen = torch.Generator().manual_seed(int(rng.integers(2**63)))
        out: list[Pair] = []
        while len(out) < n:
            b = min(c.sample_batch, n - len(out))
            placed = [self._place(mk, rng) for mk in self.sample_masks(d, b, gen, rng)]
            known = self._dev(to_tensor([self.data.normals[j][y0:y0 + P, x0:x0 + P] for j, y0, x0, _ in placed]))
            m = self._dev(torch.from_numpy(np.stack([p[3] for p in placed]).astype(np.float32))[:, None])
            painted = to_uint8(self.inpaint(known, m, d, gen))
            self._stats["samples"] += b
            for (j, y0, x0, wm), patch in zip(placed, painted):
                img = self.data.normals[j].copy()
                win = img[y0:y0 + P, x0:x0 + P]
                win[wm] = patch[wm]
                mask = np.zeros(img.shape[:2], bool)
                mask[y0:y0 + P, x0:x0 + P] = wm
                out.append(Pair(img, mask, defect_type, source=j))
        return out


__all__ = ["AnomalyDiffusion", "AnomalyDiffusionConfig", "ReweightProcessor"]
