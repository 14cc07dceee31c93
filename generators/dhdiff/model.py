"""The DH-Diff network: one diffusers U-Net over two stacked streams, a Siamese condition
encoder for the reference, a prompt encoder, and (sd scale) a frozen VAE.

Choices where the paper is silent (also in docs/dhdiff.md):
* The condition encoder is a deep copy of the U-Net's conv_in, time embedding and down blocks
  (ControlNet-style; at sd scale it therefore starts from the pretrained encoder). F^R at a
  resolution is the last feature of the down block at that level before downsampling; decoder
  and mid blocks reuse the feature of their level. The mid block is not copied.
* At sampling, the reference is noised with the image stream's initial noise z_T (the "same
  eps" of training, where that eps is known) at every step's timestep.
* The mask enters the pixel U-Net repeated over the image channels (the streams must share the
  conv weights); its prediction is the channel mean. At sd scale it goes through the VAE.
* ``prediction_type`` (tiny scale): the paper regresses noise (eq. 8, "epsilon", the default).
  With only a handful of DDIM steps, "v_prediction" gives cleaner x0 estimates at high noise;
  the loss is then the MSE to the velocity, still summed over both streams. At sd scale the
  checkpoint's scheduler decides.
* Sampling (DDIM) uses "trailing" timestep spacing: with few steps the first step is t = T-1,
  pure noise, as the paper's sampler needs ("leading" spacing would start at t = 830 of 1000
  for 6 steps and leave signal the model never put there). Latent-space schedulers never clip
  samples to [-1, 1] (SD latents span about +-4); pixel-space (tiny) ones do.
* The text encoder at sd scale is the checkpoint's own CLIP (``sd_path/text_encoder``) unless
  ``clip_path`` names another; a missing one is an error, never a silent switch to learned tokens.
* ``strength`` < 1 (only the ``dhdiff_sdedit`` generator, NOT DH-Diff, which starts from pure
  noise): SDEdit-style sampling. Both streams start from the reference pair (its full crop and its real
  mask) noised to the first timestep of the last ``ddim_steps`` steps of a DDIM schedule of
  ``round(ddim_steps / strength)`` steps (diffusers' img2img convention; t is then a little under
  strength * T, e.g. 555 for 6 steps at 0.7), and only those steps run. Training then draws t only
  from [0, that first timestep], the range sampling visits. strength = 1 is exactly the paper's sampler.
"""
from __future__ import annotations

import copy
from pathlib import Path

import torch
import torch.nn.functional as F
from diffusers import AutoencoderKL, DDIMScheduler, DDPMScheduler, UNet2DConditionModel
from torch import nn

from .config import DHDiffConfig, clip_source, sd_folder_problem
from .processors import DHContext, install_processors
from .prompt import ClipPromptEncoder, LearnedPromptEncoder


class ConditionEncoder(nn.Module):
    """Siamese copy of the U-Net encoder; returns F^R per token count {N: [B, N, C]}."""

    def __init__(self, unet: UNet2DConditionModel):
        super().__init__()
        self.conv_in = copy.deepcopy(unet.conv_in)
        self.time_proj = copy.deepcopy(unet.time_proj)
        self.time_embedding = copy.deepcopy(unet.time_embedding)
        self.down_blocks = copy.deepcopy(unet.down_blocks)

    def forward(self, r_t: torch.Tensor, t: torch.Tensor, text: torch.Tensor) -> dict[int, torch.Tensor]:
        emb = self.time_embedding(self.time_proj(t).to(r_t.dtype))
        h = self.conv_in(r_t)
        feats: dict[int, torch.Tensor] = {}
        for blk in self.down_blocks:
            if getattr(blk, "has_cross_attention", False):
                h, states = blk(h, temb=emb, encoder_hidden_states=text)
            else:
                h, states = blk(h, temb=emb)
            f = states[len(blk.resnets) - 1]
            feats[f.shape[-2] * f.shape[-1]] = f.flatten(2).transpose(1, 2)
        return feats


def _tiny_unet(cfg: DHDiffConfig, channels: int) -> UNet2DConditionModel:
    down = tuple("CrossAttnDownBlock2D" if a else "DownBlock2D" for a in cfg.attn_levels)
    up = tuple("CrossAttnUpBlock2D" if a else "UpBlock2D" for a in reversed(cfg.attn_levels))
    return UNet2DConditionModel(
        sample_size=cfg.patch_size, in_channels=channels, out_channels=channels,
        down_block_types=down, up_block_types=up, block_out_channels=tuple(cfg.widths),
        layers_per_block=cfg.layers_per_block, cross_attention_dim=cfg.text_dim,
        attention_head_dim=cfg.heads, norm_num_groups=min(8, min(cfg.widths)),
        mid_block_type="UNetMidBlock2DCrossAttn" if cfg.attn_levels[-1] else None,
    )


def _sd_dir(cfg: DHDiffConfig) -> Path:
    """The checkpoint folder of an sd-scale config (callers are sd-scale only)."""
    problem = sd_folder_problem(cfg)
    if problem:
        raise ValueError(f"dhdiff: config field {problem}")
    return Path(cfg.sd_path)


def _clip_source(cfg: DHDiffConfig) -> str | None:
    """Where the CLIP text encoder comes from, or None for learned tokens (see module docstring)."""
    try:
        return clip_source(cfg)
    except ValueError as e:
        raise ValueError(f"dhdiff: config field {e}") from None


class DHDiffModel(nn.Module):
    """eps-prediction for both streams; ``loss`` for training and ``sample`` for DDIM generation."""

    def __init__(self, cfg: DHDiffConfig, ablation: str, categories: list[str], defects: list[str]):
        super().__init__()
        self.cfg, self.ablation = cfg, ablation
        self.vae: AutoencoderKL | None = None
        if cfg.scale == "sd":
            path = _sd_dir(cfg)
            self.unet = UNet2DConditionModel.from_pretrained(path, subfolder="unet", local_files_only=True,
                                                             low_cpu_mem_usage=False)
            vae = AutoencoderKL.from_pretrained(path, subfolder="vae", local_files_only=True,
                                                low_cpu_mem_usage=False).requires_grad_(False)
            object.__setattr__(self, "vae", vae)   # frozen, loaded from the path, not in state_dict
            sched_dir = path / "scheduler"
            self.scheduler = (DDPMScheduler.from_pretrained(path, subfolder="scheduler", local_files_only=True)
                              if sched_dir.is_dir() else
                              DDPMScheduler(num_train_timesteps=cfg.num_train_timesteps, beta_schedule=cfg.beta_schedule,
                                            prediction_type=cfg.prediction_type))
            if self.scheduler.config.clip_sample:   # latents are not in [-1, 1]: never clip them
                self.scheduler = DDPMScheduler.from_config(self.scheduler.config, clip_sample=False)
            self.channels = self.unet.config.in_channels
        else:
            self.channels = 3
            self.unet = _tiny_unet(cfg, self.channels)
            self.scheduler = DDPMScheduler(num_train_timesteps=cfg.num_train_timesteps, beta_schedule=cfg.beta_schedule,
                                           prediction_type=cfg.prediction_type)
        text_dim = self.unet.config.cross_attention_dim
        clip = _clip_source(cfg)
        if clip is not None:
            enc = ClipPromptEncoder(clip)
            if enc.dim != text_dim:
                raise ValueError(f"dhdiff: CLIP at 'clip_path' gives {enc.dim}-d text, the U-Net wants {text_dim}")
            object.__setattr__(self, "prompt", enc)  # frozen, not in state_dict
        else:
            self.prompt = LearnedPromptEncoder(categories, defects, text_dim, cfg.n_ctx)
        self.cond = ConditionEncoder(self.unet)      # copied before DH processors go in
        self.processors = install_processors(self.unet, ablation, cfg.placement_encoder,
                                             cfg.placement_mid, cfg.placement_decoder)

    # ---- latent space --------------------------------------------------------------------
    def to_latent(self, x: torch.Tensor) -> torch.Tensor:
        """[-1, 1] images [B, 3, H, W] -> model space (identity at tiny scale)."""
        if self.vae is None:
            return x
        return self.vae.encode(x).latent_dist.mode() * self.vae.config.scaling_factor

    def from_latent(self, z: torch.Tensor) -> torch.Tensor:
        if self.vae is None:
            return z
        return self.vae.decode(z / self.vae.config.scaling_factor).sample

    def mask_to_input(self, m: torch.Tensor) -> torch.Tensor:
        """Binary/[0,1] masks [B, 1, H, W] -> annotation-stream input in model space."""
        return self.to_latent((m * 2 - 1).expand(-1, 3, -1, -1))

    # ---- the two-stream U-Net --------------------------------------------------------------
    def forward(self, z_img, z_mask, t, text, ref_t=None, control=None, has_control=None, defect_tokens=None):
        b = z_img.shape[0]
        if t.ndim == 0:
            t = t.expand(b)
        ctx = DHContext(size=tuple(z_img.shape[-2:]), control=control, has_control=has_control,
                        defect_tokens=defect_tokens)
        if ref_t is not None:
            ctx.ref = self.cond(ref_t, t, text)
        out = self.unet(torch.cat([z_img, z_mask]), torch.cat([t, t]), encoder_hidden_states=torch.cat([text, text]),
                        cross_attention_kwargs={"dh": ctx}).sample
        return out[:b], out[b:]

    def loss(self, x, m, ref, categories, defects, control=None, has_control=None, generator=None):
        """Eq. 8: noise MSE summed over both streams. x, ref in [-1, 1]; m, control in [0, 1]."""
        z0, a0, r0 = self.to_latent(x), self.mask_to_input(m), self.to_latent(ref)
        b, dev = z0.shape[0], z0.device   # randomness drawn on the CPU: same seed, same run anywhere
        t = torch.randint(0, self.t_max(), (b,), generator=generator).to(dev)
        eps_i = torch.randn(z0.shape, generator=generator).to(dev)
        eps_a = torch.randn(a0.shape, generator=generator).to(dev)
        zt = self.scheduler.add_noise(z0, eps_i, t)
        at = self.scheduler.add_noise(a0, eps_a, t)
        rt = self.scheduler.add_noise(r0, eps_i, t)        # the SAME eps as the image stream
        text, tokens = self.prompt.encode(categories, defects)
        tokens = tokens.to(z0.device)
        pi, pa = self(zt, at, t, text, rt, control, has_control, tokens)
        kind = self.scheduler.config.prediction_type
        if kind == "v_prediction":
            ti, ta = self.scheduler.get_velocity(z0, eps_i, t), self.scheduler.get_velocity(a0, eps_a, t)
        elif kind == "sample":
            ti, ta = z0, a0
        else:
            ti, ta = eps_i, eps_a
        return F.mse_loss(pi, ti) + F.mse_loss(pa, ta)

    def t_max(self) -> int:
        """Training draws t from [0, t_max): all of [0, T) at strength 1, else up to the first
        timestep sampling visits (a few percent under strength * T, see ``schedule``)."""
        T = self.scheduler.config.num_train_timesteps
        return T if self.cfg.strength >= 1 else min(T, int(self.schedule()[1][0]) + 1)

    def schedule(self, steps: int | None = None) -> tuple[DDIMScheduler, torch.Tensor]:
        """DDIM scheduler and the timesteps one sampling run visits (``steps`` U-Net calls)."""
        steps = steps or self.cfg.ddim_steps
        sched = DDIMScheduler.from_config(self.scheduler.config, timestep_spacing="trailing")
        total = steps if self.cfg.strength >= 1 else max(steps, int(round(steps / self.cfg.strength)))
        sched.set_timesteps(total)
        return sched, sched.timesteps[total - steps:]

    @torch.no_grad()
    def sample(self, ref, categories, defects, control=None, has_control=None, steps=None,
               generator=None, use_reference=True, init_image=None, init_mask=None):
        """DDIM: returns images in [-1, 1] [B, 3, H, W] and annotation maps in [-1, 1] [B, H, W].

        With config ``strength`` < 1, ``init_image`` ([-1, 1]) and ``init_mask`` ([0, 1] [B, 1, H, W])
        are the reference pair the streams start from (noised to the first timestep).
        """
        r0 = self.to_latent(ref)
        sched, timesteps = self.schedule(steps)
        zi = torch.randn(r0.shape, generator=generator).to(r0.device)
        za = torch.randn(r0.shape, generator=generator).to(r0.device)
        eps_ref = zi.clone()
        if self.cfg.strength < 1:
            if init_image is None or init_mask is None:
                raise ValueError("dhdiff: strength < 1 needs init_image and init_mask (the reference pair)")
            t0 = timesteps[:1].expand(r0.shape[0]).to(r0.device)
            zi = self.scheduler.add_noise(self.to_latent(init_image), eps_ref, t0)
            za = self.scheduler.add_noise(self.mask_to_input(init_mask), za, t0)
        text, tokens = self.prompt.encode(categories, defects)
        tokens = tokens.to(r0.device)
        for t in timesteps:
            tt = t.expand(r0.shape[0]).to(r0.device)
            rt = self.scheduler.add_noise(r0, eps_ref, tt) if use_reference else None
            pi, pa = self(zi, za, tt, text, rt, control, has_control, tokens)
            zi = sched.step(pi, t, zi).prev_sample
            za = sched.step(pa, t, za).prev_sample
        img = self.from_latent(zi).clamp(-1, 1)
        ann = self.from_latent(za).mean(1)
        return img, ann

    def place(self, device) -> "DHDiffModel":
        """``to(device)`` including the frozen parts kept out of the state_dict (VAE, CLIP)."""
        self.to(device)
        if self.vae is not None:
            self.vae.to(device)
        if isinstance(self.prompt, ClipPromptEncoder):
            self.prompt.model.to(device)
        return self

    def trainable_parameters(self):
        return [p for p in self.parameters() if p.requires_grad]
