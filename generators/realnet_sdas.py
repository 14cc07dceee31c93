"""RealNet-SDAS-style generator (Zhang et al., CVPR 2024) on DH-Diff's tiny backbone.

Kept from the original method
* A diffusion model of **normal images only**: no real anomaly and no mask is needed
  (``needs_anomalies`` and ``needs_masks`` are False); the few-shot anomalies are never read.
* **Strength-controlled diffusion anomaly synthesis (SDAS)**: ancestral sampling from pure
  noise in which every reverse step's noise is scaled by sqrt(1 + s), s ~ U[``strength``]
  = U[0.1, 0.2] per sample (the DDPM setting of the paper). s = 0 is the model's ordinary
  sampler, hence normal-looking samples; larger s drifts away from the normal distribution.
* The SDAS image A is blended into a normal image I through a **Perlin mask** M restricted to the
  foreground, with a blend factor beta ~ U[``blend``] = U[0.5, 1.0]:
  out = I * (1 - M) + M * ((1 - beta) * I + beta * A). The mask of the pair is M.

What the shared tiny backbone changes
* The model is the shared prior (generators.diffusion_prior: DH-Diff's tiny pixel-space U-Net
  pretrained on this category's normal crops), not guided-diffusion 256x256 ImageNet; its
  fine-tuning (the budget every diffusion generator gets: ``steps`` Adam steps) continues
  training on the same normals. The ancestral sampler is DDIM with eta = 1 over ``ddim_steps``
  steps (DDPM's posterior on a respaced schedule), the noise passed as ``variance_noise``.
* Patch mode: A is a ``patch_size`` sample, and M lives in one ``patch_size`` window centred on
  a random foreground pixel (RealNet's masks span the whole image). The Perlin noise is
  ``generators.common.perlin_2d`` with 2**k lattice periods per axis, k in
  [``perlin_min``, ``perlin_max``), thresholded at ``perlin_threshold`` (DRAEM's 0.5), not rotated;
  an empty mask is re-drawn (counted in ``stats()``). Pixels outside M are the normal's own
  (``edit_margin`` 0).
* sd scale (``generator_cfg.dhdiff.scale: sd``): the model is the local SD-1.x checkpoint
  (U-Net fine-tuned on VAE latents of the normal crops with the unconditional context), not
  guided-diffusion's pixel-space ImageNet model; SDAS runs on the latents and the sample is
  decoded before the blend. ``patch_size`` (256 in the sd preset) must be a multiple of the
  latent grid.

Seeds: every weight init and every draw comes from fit's / generate's ``rng``.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from benchmark.schema import ConfigError, option

from . import common, register_generator
from .base import Pair
from .diffusion_prior import (
    DiffusionConfig,
    PriorGenerator,
    ddim,
    noise_loss,
    normal_crops,
    optimise,
    to_tensor,
    to_uint8,
    window_at,
)


@dataclass
class RealNetSDASConfig(DiffusionConfig):
    strength: tuple[float, float] = option((0.1, 0.2), ge=0, help="s ~ U[lo, hi]: reverse-step noise * sqrt(1 + s)")
    blend: tuple[float, float] = option((0.5, 1.0), ge=0, le=1, help="beta ~ U[lo, hi]: weight of the SDAS image in M")
    perlin_min: int = option(0, ge=0)
    perlin_max: int = option(3, ge=1, help="exclusive: lattice 2**k periods per axis over the window")
    perlin_threshold: float = 0.5
    max_redraws: int = option(50, ge=1)

    def __post_init__(self):
        super().__post_init__()
        for name in ("strength", "blend"):
            lo, hi = getattr(self, name)
            if lo > hi:
                raise ConfigError(f"{name}: expected [lo, hi] with lo <= hi, got {[lo, hi]}")
        if self.perlin_min >= self.perlin_max:
            raise ConfigError(f"perlin_min {self.perlin_min} must be below perlin_max {self.perlin_max}")


@register_generator("realnet_sdas")
class RealNetSDAS(PriorGenerator):
    config_class = RealNetSDASConfig
    needs_masks = False
    needs_anomalies = False
    edits_normal = True
    edit_margin = 0

    def fit(self, data, rng: np.random.Generator) -> None:
        self._fit_prior(data, rng)
        c = self.config
        self.unet = self.prior.unet.requires_grad_(True)
        null = self.prior.null.detach()
        gen = torch.Generator().manual_seed(int(rng.integers(2**63)))
        normals = data.normals

        def loss():
            x0 = self.prior.encode(self._dev(to_tensor(normal_crops(normals, c.patch_size, c.batch_size, rng))))
            return noise_loss(self.unet, self.prior.scheduler, x0, null[None].expand(len(x0), -1, -1), gen)

        self.unet.train()
        self.loss_history = optimise(self.unet.parameters(), loss, c.steps, c.lr, c.warmup, c.lr_schedule)
        self.unet.eval().requires_grad_(False)
        self._stats = {"samples": 0, "mask_redraws": 0, "paste_without_fg": 0}

    @torch.no_grad()
    def sdas(self, s: np.ndarray, gen: torch.Generator) -> torch.Tensor:
        """SDAS samples [len(s), 3, P, P] in [-1, 1]: ancestral sampling (DDIM, eta 1) with each
        reverse step's noise scaled by sqrt(1 + s_i), in the prior's model space (SD latents at
        sd scale, decoded at the end)."""
        P, b = self.config.patch_size, len(s)
        sched, ts = ddim(self.prior.scheduler, self.config.ddim_steps)
        scale = torch.from_numpy(np.sqrt(1 + np.asarray(s, np.float64))).float().view(b, 1, 1, 1)
        text = self._context(torch.zeros(b, 0, self.prior.null.shape[1], device=self.dev))
        z = self._dev(torch.randn(self.prior.shape(b, P), generator=gen))
        for t in ts:
            pred = self.unet(z, self._dev(t.expand(b)), encoder_hidden_states=text).sample
            noise = self._dev(torch.randn(z.shape, generator=gen) * scale)
            z = sched.step(pred, t, z, eta=1.0, variance_noise=noise).prev_sample
        return self.prior.decode(z).clamp(-1, 1)

    def perlin_mask(self, j: int, rng: np.random.Generator) -> tuple[int, int, np.ndarray]:
        """(y0, x0, window mask): a thresholded Perlin blob in a window on the foreground."""
        c, P = self.config, self.config.patch_size
        img = self.data.normals[j]
        fg = self._foreground(j)
        for _ in range(c.max_redraws):
            y0, x0 = window_at(fg, img.shape[0], img.shape[1], P, rng)
            ky, kx = rng.integers(c.perlin_min, c.perlin_max, 2)
            m = common.perlin_2d((P, P), (2 ** int(ky), 2 ** int(kx)), rng) > c.perlin_threshold
            if fg is not None:
                m &= fg[y0:y0 + P, x0:x0 + P]
            if m.any():
                return y0, x0, m
            self._stats["mask_redraws"] += 1
        self._stats["paste_without_fg"] += 1           # never met the foreground: a centred disc
        yy, xx = np.mgrid[:P, :P]
        return y0, x0, (yy - P / 2) ** 2 + (xx - P / 2) ** 2 <= (P / 4) ** 2

    def generate(self, n: int, defect_type: str, rng: np.random.Generator) -> list[Pair]:
        self._check_fitted()
        c, P = self.config, self.config.patch_size
        gen = torch.Generator().manual_seed(int(rng.integers(2**63)))
        out: list[Pair] = []
        while len(out) < n:
            b = min(c.sample_batch, n - len(out))
            s = rng.uniform(c.strength[0], c.strength[1], b)
            beta = rng.uniform(c.blend[0], c.blend[1], b)
            A = to_uint8(self.sdas(s, gen)).astype(np.float32)
            self._stats["samples"] += b
            for i in range(b):
                j = int(rng.integers(len(self.data.normals)))
                y0, x0, m = self.perlin_mask(j, rng)
                img = self.data.normals[j].copy()
                win = img[y0:y0 + P, x0:x0 + P].astype(np.float32)
                mixed = (1 - beta[i]) * win + beta[i] * A[i]
                img[y0:y0 + P, x0:x0 + P] = np.where(m[..., None], mixed.round(), win).clip(0, 255).astype(np.uint8)
                mask = np.zeros(img.shape[:2], bool)
                mask[y0:y0 + P, x0:x0 + P] = m
                out.append(Pair(img, mask, defect_type, source=j))
        return out


__all__ = ["RealNetSDAS", "RealNetSDASConfig"]
