"""Tiny images shared by the detector tests: a flat noisy grey 'normal' and a bright square defect."""
from __future__ import annotations

import numpy as np


def flat(rng: np.random.Generator, n: int, size: int = 32) -> np.ndarray:
    """n flat grey textures with mild noise, uint8 [n, size, size, 3]: the 'normal' class."""
    return (120 + rng.normal(0, 6, (n, size, size, 3))).clip(0, 255).astype(np.uint8)


def square(img: np.ndarray, top: int, left: int, side: int) -> tuple[np.ndarray, np.ndarray]:
    """``img`` with a bright square pasted in, and its mask."""
    out = img.copy()
    out[top:top + side, left:left + side] = 250
    mask = np.zeros(img.shape[:2], bool)
    mask[top:top + side, left:left + side] = True
    return out, mask


def toy_fitdata(work_dir=None, seed: int = 0, size: int = 48, anomalies: bool = True):
    """FitData for the diffusion generators' tests: 4 noisy grey normals and two defect types
    (a dark 'scratch', a bright 'stain') with two 6x9 px examples each."""
    from generators import FitData, Pair

    rng = np.random.default_rng(seed)
    normals = [rng.integers(110, 140, (size, size, 3)).astype(np.uint8) for _ in range(4)]
    pairs = []
    for d, val in (("scratch", 20), ("stain", 230)):
        for _ in range(2):
            im = rng.integers(110, 140, (size, size, 3)).astype(np.uint8)
            m = np.zeros((size, size), bool)
            y, x = rng.integers(8, size - 16, 2)
            m[y:y + 6, x:x + 9] = True
            im[m] = val
            pairs.append(Pair(im, m, d))
    return FitData("toy", normals, pairs if anomalies else [], ["scratch", "stain"], work_dir=work_dir,
                   image_size=size)


def tiny_sd(path):
    """A Stable-Diffusion-1.x folder layout (unet/, vae/, scheduler/) with tiny random weights:
    latent factor 2, one U-Net downsampling, 16-d cross-attention. No text_encoder/."""
    from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel
    UNet2DConditionModel(sample_size=8, in_channels=4, out_channels=4, block_out_channels=(16, 32),
                         layers_per_block=1, down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
                         up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"), cross_attention_dim=16,
                         attention_head_dim=2, norm_num_groups=8).save_pretrained(path / "unet")
    AutoencoderKL(in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D",) * 2,
                  up_block_types=("UpDecoderBlock2D",) * 2, block_out_channels=(8, 16), latent_channels=4,
                  norm_num_groups=8, sample_size=16).save_pretrained(path / "vae")
    DDPMScheduler(beta_schedule="scaled_linear").save_pretrained(path / "scheduler")
    return path
