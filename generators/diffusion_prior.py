"""A shared tiny prior, and what every diffusion generator on DH-Diff's backbone shares.

docs/dh-diff.md ("A shared tiny prior"): what Stable Diffusion is to the papers, a small
pixel-space diffusion model pretrained on normal images can be at ``tiny`` scale. Every
diffusion generator (DH-Diff with its opt-in ``prior``, ``anomalydiffusion``, ``dualanodiff``,
``realnet_sdas``) then starts from the same weights and spends the same optimiser and sampling
steps, so a comparison between them is fair by construction.

The prior
* Backbone: DH-Diff's tiny U-Net (``generators.dhdiff.model._tiny_unet``: a diffusers
  UNet2DConditionModel with the widths, attention levels, heads and text width of the resolved
  ``generator_cfg.dhdiff``, by default configs/dhdiff_quick.yaml), one stream, 3 channels, the
  same DDPM noise schedule and prediction type.
* Data: ``patch_size`` crops (1:1, random flips) of FitData.normals. The Generator interface
  hands a generator one category's normals, so the prior is pretrained **per category**, not per
  data set (the design page's "once per data set" is not reachable through FitData).
* Conditioning: the U-Net's text cross-attention sees ``PriorConfig.n_tokens`` learned "null"
  tokens (trained with the prior). Generators add their own tokens after them (textual
  inversion: anomaly/spatial/mask embeddings, branch tokens).
* Seed: the first draw of fit's ``rng``. The runner gives every generator of one (seed,
  category) the same fit rng (common random numbers), so all four get the same prior.
* Cache: ``<FitData.work_dir>/../diffusion_prior/prior-<key>.pt``, key = sha256 of (backbone
  fields, PriorConfig, seed, normals' bytes, version). The runner gives each generator its own
  work_dir under one folder (``cache/work/<generator>-<key>``), so the prior sits beside them
  and is trained once for the four generators; a file lock keeps concurrent cells from training
  it twice. Without a work_dir (tests) it is trained in memory every fit.

sd scale (``generator_cfg.dhdiff.scale: sd``): the local SD-1.x checkpoint is the prior
(``load_sd_prior``: its U-Net, frozen VAE and scheduler; the null context is CLIP's empty prompt,
or zero tokens with ``text_encoder: learned``). Generators go through ``Prior.encode`` /
``decode`` / ``down`` / ``shape``, the identity at tiny scale, so the tiny path is unchanged.

Settings in one place: the baselines inherit the backbone and the budget (``prior``,
``steps``, ``batch_size``, ``lr``, ``warmup``, ``lr_schedule``, ``ddim_steps``,
``sample_batch``; ``INHERITED``) from ``generator_cfg.dhdiff`` (resolved, quick YAML
included) through ``own_settings``, as DH-Diff's ablations do. ``generator_cfg.dhdiff`` is the
one place because the runner refuses settings under a name that is not a registered generator,
and DH-Diff is the backbone they all share. A baseline's own section may still override a field
(studies); the diffusion_baselines preset does not.
"""
from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import torch
import torch.nn.functional as F
from diffusers import DDIMScheduler, DDPMScheduler, UNet2DConditionModel
from diffusers.models.attention_processor import Attention, AttnProcessor2_0

from benchmark.schema import ConfigError, build, option, resolved

from . import common
from .base import FitData, Generator

PRIOR_VERSION = 1
BACKBONE_FIELDS = ("patch_size", "widths", "attn_levels", "layers_per_block", "heads", "text_dim",
                   "num_train_timesteps", "beta_schedule", "prediction_type")
BUDGET_FIELDS = ("steps", "batch_size", "lr", "warmup", "lr_schedule", "ddim_steps", "sample_batch")
SD_FIELDS = ("scale", "sd_path", "text_encoder", "clip_path")   # inherited at sd scale only
INHERITED = BACKBONE_FIELDS + BUDGET_FIELDS   # + prior (tiny) / SD_FIELDS (sd): from generator_cfg.dhdiff


@dataclass
class PriorConfig:
    """How the shared prior is pretrained (its backbone is the host config's BACKBONE_FIELDS)."""

    steps: int = option(400, ge=0, help="optimiser steps of pretraining on the normals")
    batch_size: int = option(8, ge=1)
    lr: float = option(2e-3, gt=0)
    warmup: int = option(20, ge=0)
    lr_schedule: str = option("cosine", choices=("constant", "cosine"))
    n_tokens: int = option(2, ge=1, help="learned null-text tokens the prior is conditioned on")


@dataclass
class DiffusionConfig:
    """Fields every diffusion baseline shares; defaults are overwritten by generator_cfg.dhdiff."""

    # --- backbone: DH-Diff's tiny U-Net ---
    patch_size: int = option(32, ge=8, help="crop side in image pixels, taken 1:1")
    widths: tuple[int, ...] = option((16, 32, 48), ge=4)
    attn_levels: tuple[bool, ...] = (False, True, True)
    layers_per_block: int = option(1, ge=1)
    heads: int = option(2, ge=1)
    text_dim: int = option(32, ge=4)
    num_train_timesteps: int = option(1000, ge=2)
    beta_schedule: str = option("squaredcos_cap_v2", choices=("squaredcos_cap_v2", "linear", "scaled_linear"))
    prediction_type: str = option("v_prediction", choices=("epsilon", "v_prediction", "sample"))
    # --- the shared budget ---
    prior: PriorConfig = field(default_factory=PriorConfig)
    steps: int = option(180, ge=0, help="fine-tuning optimiser steps")
    batch_size: int = option(8, ge=1)
    lr: float = option(2e-3, gt=0)
    warmup: int = option(20, ge=0)
    lr_schedule: str = option("cosine", choices=("constant", "cosine"))
    ddim_steps: int = option(8, ge=1, help="sampling steps (U-Net calls per sample)")
    sample_batch: int = option(60, ge=1)
    # --- sd scale: a local SD-1.x checkpoint is the prior (inherited from generator_cfg.dhdiff) ---
    scale: str = option("tiny", choices=("tiny", "sd"), omit_default=True,
                        help="tiny: the shared pixel-space prior; sd: latent space, sd_path's U-Net + VAE")
    sd_path: str | None = option(None, omit_default=True)
    text_encoder: str = option("auto", choices=("auto", "clip", "learned"), omit_default=True,
                               help="sd: the null context from CLIP (auto/clip) or prior.n_tokens zeros (learned)")
    clip_path: str | None = option(None, omit_default=True)

    def __post_init__(self):
        self.widths = tuple(self.widths)
        self.attn_levels = tuple(self.attn_levels)
        if len(self.attn_levels) != len(self.widths):
            raise ConfigError(f"attn_levels has {len(self.attn_levels)} entries, widths {len(self.widths)}; "
                              f"they must match")
        if self.scale == "sd" and not self.sd_path:
            raise ConfigError("sd_path: scale 'sd' needs a local Stable-Diffusion-1.x folder")
        if self.scale == "tiny" and (self.sd_path or self.clip_path or self.text_encoder != "auto"):
            raise ConfigError("scale: sd_path / clip_path / text_encoder are sd-scale settings; at tiny scale the "
                              "baselines condition on the shared prior's learned null tokens")


def backbone_of(cfg) -> dict:
    """The backbone fields of a config (DHDiffConfig or DiffusionConfig) as a plain dict."""
    return {k: (list(v) if isinstance(v, tuple) else v) for k in BACKBONE_FIELDS for v in [getattr(cfg, k)]}


def inherited(base: Mapping | None, where: str) -> dict:
    """The INHERITED fields (and ``prior``) of the resolved ``generator_cfg.dhdiff`` ``base``."""
    from generators.dhdiff.config import resolve

    dh = resolve(dict(base or {}), "generator_cfg.dhdiff")
    out = {k: getattr(dh, k) for k in INHERITED}
    if dh.scale == "sd":
        out.update({k: getattr(dh, k) for k in SD_FIELDS})
    if getattr(dh, "prior", None) is not None:
        out["prior"] = asdict(dh.prior)
    return out


# ---------------------------------------------------------------------------------- the prior


def build_unet(backbone: Mapping, seed: int) -> UNet2DConditionModel:
    """DH-Diff's tiny U-Net, every weight initialised from ``seed`` (torch's global RNG forked)."""
    from generators.dhdiff.model import _tiny_unet

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return _tiny_unet(SimpleNamespace(**backbone), 3)


def make_scheduler(backbone: Mapping) -> DDPMScheduler:
    return DDPMScheduler(num_train_timesteps=backbone["num_train_timesteps"], beta_schedule=backbone["beta_schedule"],
                         prediction_type=backbone["prediction_type"])


def ddim(scheduler: DDPMScheduler, steps: int) -> tuple[DDIMScheduler, torch.Tensor]:
    """DDIM with DH-Diff's "trailing" spacing (the first step is t = T-1, pure noise)."""
    s = DDIMScheduler.from_config(scheduler.config, timestep_spacing="trailing")
    s.set_timesteps(steps)
    return s, s.timesteps


def target(scheduler: DDPMScheduler, x0: torch.Tensor, eps: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    kind = scheduler.config.prediction_type
    if kind == "v_prediction":
        return scheduler.get_velocity(x0, eps, t)
    return x0 if kind == "sample" else eps


def noise_loss(unet, scheduler, x0, text, gen: torch.Generator, weight: torch.Tensor | None = None,
               attn_kwargs: dict | None = None) -> torch.Tensor:
    """One diffusion training loss: random t and eps from ``gen``; ``weight`` [B, 1, H, W] weights pixels."""
    b = x0.shape[0]
    t = torch.randint(0, scheduler.config.num_train_timesteps, (b,), generator=gen).to(x0.device)
    eps = torch.randn(x0.shape, generator=gen).to(x0.device)   # drawn on the CPU: same seed, same draws anywhere
    pred = unet(scheduler.add_noise(x0, eps, t), t, encoder_hidden_states=text, cross_attention_kwargs=attn_kwargs).sample
    err = (pred - target(scheduler, x0, eps, t)) ** 2
    if weight is None:
        return err.mean()
    w = weight.expand_as(err)
    return (err * w).sum() / w.sum().clamp_min(1e-8)


def to_tensor(images: list[np.ndarray]) -> torch.Tensor:
    return torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2).float() / 127.5 - 1


def to_uint8(x: torch.Tensor) -> np.ndarray:
    """[B, 3, H, W] in [-1, 1] -> uint8 [B, H, W, 3]."""
    return ((x.detach().cpu().clamp(-1, 1).permute(0, 2, 3, 1).numpy() + 1) * 127.5).round().clip(0, 255).astype(np.uint8)


def normal_crops(normals: list[np.ndarray], size: int, n: int, rng: np.random.Generator) -> list[np.ndarray]:
    """``n`` random ``size`` crops (1:1, random flips) of the normal images."""
    out = []
    for _ in range(n):
        im = normals[rng.integers(len(normals))]
        h, w = im.shape[:2]
        s = min(size, h, w)
        y0, x0 = int(rng.integers(h - s + 1)), int(rng.integers(w - s + 1))
        c = im[y0:y0 + s, x0:x0 + s]
        if s != size:
            import cv2
            c = cv2.resize(c, (size, size), interpolation=cv2.INTER_LINEAR)
        if rng.random() < 0.5:
            c = c[:, ::-1]
        if rng.random() < 0.5:
            c = c[::-1]
        out.append(np.ascontiguousarray(c))
    return out


def optimise(params, loss_fn, steps: int, lr: float, warmup: int, schedule: str) -> list[float]:
    """Adam on ``params`` for ``steps`` steps of ``loss_fn()`` (DH-Diff's lr schedule); loss history."""
    from generators.dhdiff.generator import lr_factor

    params = [p for p in params if p.requires_grad]
    history: list[float] = []
    if steps <= 0 or not params:
        return history
    opt = torch.optim.Adam(params, lr=lr)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda i: lr_factor(i, steps, warmup, schedule))
    for _ in range(steps):
        loss = loss_fn()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        history.append(float(loss.detach()))
    return history


@dataclass
class Prior:
    """A pretrained prior: U-Net, null tokens [n_tokens, text_dim], noise schedule, and (sd
    scale) the frozen VAE between image pixels and the U-Net's latent space.

    Generators work on ``patch_size`` pixel crops in [-1, 1] and go through ``encode`` /
    ``decode`` / ``down`` / ``shape`` for everything the U-Net sees; at tiny scale these are the
    identity (pixel space), so the tiny path draws and computes exactly what it did before."""

    unet: UNet2DConditionModel
    null: torch.Tensor
    scheduler: DDPMScheduler
    key: str
    loss_history: list[float]
    source: str          # "trained" | "disk" | "checkpoint" (sd scale)
    path: Path | None = None
    vae: object | None = None

    @property
    def factor(self) -> int:
        """Pixels per model-space cell (1 in pixel space)."""
        return 1 if self.vae is None else 2 ** (len(self.vae.config.block_out_channels) - 1)

    @property
    def channels(self) -> int:
        return self.unet.config.in_channels

    def shape(self, b: int, side: int) -> tuple[int, int, int, int]:
        """Model-space shape of ``b`` crops of ``side`` pixels (for noise drawn from scratch)."""
        return (b, self.channels, side // self.factor, side // self.factor)

    @torch.no_grad()
    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """[-1, 1] crops [B, 3, P, P] -> model space (the VAE posterior's mode, scaled)."""
        if self.vae is None:
            return x
        return self.vae.encode(x).latent_dist.mode() * self.vae.config.scaling_factor

    @torch.no_grad()
    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """Model space -> pixels (about [-1, 1]; not clamped, callers clamp where they did)."""
        if self.vae is None:
            return z
        return self.vae.decode(z / self.vae.config.scaling_factor).sample

    def down(self, m: torch.Tensor) -> torch.Tensor:
        """[B, 1, P, P] masks/weights onto the model-space grid: a cell counts as much as its most
        masked pixel (max pooling), so a latent cell touching the defect is generated."""
        return m if self.factor == 1 else F.max_pool2d(m, self.factor)


def prior_key(backbone: Mapping, cfg: PriorConfig, normals: list[np.ndarray], seed: int) -> str:
    h = hashlib.sha256()
    h.update(json.dumps({"backbone": dict(backbone), "prior": asdict(cfg), "seed": int(seed), "v": PRIOR_VERSION},
                        sort_keys=True, default=str).encode())
    for n in normals:
        h.update(str(n.shape).encode())
        h.update(np.ascontiguousarray(n).tobytes())
    return h.hexdigest()[:20]


def prior_path(work_dir: str | Path | None, key: str) -> Path | None:
    """Where the prior of ``key`` lives: beside the generators' work folders (see module docstring)."""
    if work_dir is None:
        return None
    return Path(work_dir).resolve().parent / "diffusion_prior" / f"prior-{key}.pt"


def train_prior(backbone: Mapping, cfg: PriorConfig, normals: list[np.ndarray], seed: int):
    """Pretrain on normal crops; returns (unet, null tokens, loss history). Every init and draw from ``seed``."""
    unet = build_unet(backbone, seed)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed + 1)
        null = torch.nn.Parameter(torch.randn(cfg.n_tokens, backbone["text_dim"]))
    scheduler = make_scheduler(backbone)
    rng = np.random.default_rng(seed)
    gen = torch.Generator().manual_seed(int(rng.integers(2**63)))
    unet.train()

    def loss():
        x0 = to_tensor(normal_crops(normals, backbone["patch_size"], cfg.batch_size, rng))
        return noise_loss(unet, scheduler, x0, null[None].expand(len(x0), -1, -1), gen)

    history = optimise(list(unet.parameters()) + [null], loss, cfg.steps, cfg.lr, cfg.warmup, cfg.lr_schedule)
    unet.eval()
    return unet, null.detach(), history


def load_prior(backbone: Mapping, cfg: PriorConfig, data: FitData, seed: int) -> Prior:
    """The prior for (backbone, cfg, normals, seed): read from its cache file, else trained (and saved).

    Returns a fresh U-Net each call, so a caller may fine-tune it in place."""
    normals = common.check_normals(data, "diffusion prior")
    key = prior_key(backbone, cfg, normals, seed)
    path = prior_path(data.work_dir, key)
    scheduler = make_scheduler(backbone)
    if path is None:
        unet, null, hist = train_prior(backbone, cfg, normals, seed)
        return Prior(unet, null, scheduler, key, hist, "trained")
    from benchmark.store import file_lock

    with file_lock(path.with_suffix(".lock")):
        if path.exists():
            ck = torch.load(path, map_location="cpu", weights_only=False)
            if ck.get("key") == key:
                unet = build_unet(backbone, seed)
                unet.load_state_dict(ck["unet"])
                unet.eval()
                return Prior(unet, ck["null"], scheduler, key, list(ck["loss_history"]), "disk", path)
        unet, null, hist = train_prior(backbone, cfg, normals, seed)
        tmp = path.with_suffix(f".tmp{os.getpid()}")
        torch.save({"key": key, "backbone": dict(backbone), "prior": asdict(cfg), "seed": int(seed),
                    "unet": unet.state_dict(), "null": null, "loss_history": hist}, tmp)
        os.replace(tmp, path)
    return Prior(unet, null, scheduler, key, hist, "trained", path)


def load_sd_prior(cfg: "DiffusionConfig") -> Prior:
    """sd scale: the local SD-1.x checkpoint is the prior (a fresh U-Net each call, fine-tuned in
    place by the caller; the VAE frozen). Its null context is the CLIP embedding of the empty
    prompt (SD's unconditional context) from sd_path/text_encoder or clip_path, or with
    ``text_encoder: learned`` ``prior.n_tokens`` zero vectors (no CLIP needed)."""
    from diffusers import AutoencoderKL

    from generators.dhdiff.model import _clip_source, _sd_dir

    path = _sd_dir(cfg)
    unet = UNet2DConditionModel.from_pretrained(path, subfolder="unet", local_files_only=True, low_cpu_mem_usage=False)
    vae = AutoencoderKL.from_pretrained(path, subfolder="vae", local_files_only=True,
                                        low_cpu_mem_usage=False).requires_grad_(False).eval()
    scheduler = (DDPMScheduler.from_pretrained(path, subfolder="scheduler", local_files_only=True)
                 if (path / "scheduler").is_dir() else make_scheduler(backbone_of(cfg)))
    if scheduler.config.clip_sample:      # latents span about +-4: never clip them to [-1, 1]
        scheduler = DDPMScheduler.from_config(scheduler.config, clip_sample=False)
    dim = unet.config.cross_attention_dim
    clip = _clip_source(cfg)
    if clip is None:
        null = torch.zeros(cfg.prior.n_tokens, dim)
    else:
        from generators.dhdiff.prompt import ClipPromptEncoder

        enc = ClipPromptEncoder(clip)
        if enc.dim != dim:
            raise ValueError(f"diffusion baselines: CLIP at {clip!r} gives {enc.dim}-d text, the U-Net wants {dim}")
        null = enc.embed([""])[0]
    key = hashlib.sha256(json.dumps({"sd_path": str(path.resolve()), "clip": clip}).encode()).hexdigest()[:20]
    return Prior(unet.eval(), null, scheduler, key, [], "checkpoint", path, vae)


# ---------------------------------------------------------------------------- the generators


class PassProcessor(AttnProcessor2_0):
    """Stock attention that accepts (and ignores) a generator's ``ctx`` keyword."""

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, temb=None,
                 ctx=None, **kwargs):
        return super().__call__(attn, hidden_states, encoder_hidden_states, attention_mask, temb)


def set_processors(unet: UNet2DConditionModel, self_attn, cross_attn) -> dict[str, str]:
    """Install ``self_attn(module)`` in every attn1 slot and ``cross_attn(module)`` in every attn2 slot."""
    chosen = {}
    for name, mod in unet.named_modules():
        if isinstance(mod, Attention):
            proc = (self_attn if name.endswith("attn1") else cross_attn)(mod)
            mod.set_processor(proc)
            chosen[name] = type(proc).__name__
    return chosen


def window_at(fg: np.ndarray | None, h: int, w: int, side: int, rng: np.random.Generator) -> tuple[int, int]:
    """Top-left of a ``side`` window centred on a random foreground pixel (anywhere without one)."""
    if fg is not None and fg.any():
        ys, xs = np.nonzero(fg)
        i = rng.integers(len(ys))
        cy, cx = int(ys[i]), int(xs[i])
    else:
        cy, cx = int(rng.integers(h)), int(rng.integers(w))
    return int(np.clip(cy - side // 2, 0, h - side)), int(np.clip(cx - side // 2, 0, w - side))


class PriorGenerator(Generator):
    """Base of the diffusion baselines: settings inherited from generator_cfg.dhdiff, the prior,
    foreground estimates and counters. Subclasses set ``config_class`` (a DiffusionConfig)."""

    config_class = DiffusionConfig
    version = 1
    # a handful of steps at a small width: enough for the registry contract tests
    contract_settings = {"widths": [8, 16], "attn_levels": [True, True], "patch_size": 16, "text_dim": 16,
                         "prior": {"steps": 2, "batch_size": 2}, "steps": 2, "batch_size": 2, "ddim_steps": 2,
                         "sample_batch": 4}

    @classmethod
    def missing_files(cls, resolved_cfg: Mapping, where: str) -> str | None:
        from generators.dhdiff.config import missing_local_files

        return missing_local_files(resolved_cfg, where)

    @classmethod
    def own_settings(cls, name: str, section: Mapping) -> dict:
        own = dict(section.get(name) or {})
        own.setdefault("base", dict(section.get("dhdiff") or {}))
        return own

    @classmethod
    def resolve_config(cls, cfg: dict, where: str, variant: str | None = None):
        """generator_cfg.dhdiff's INHERITED fields (``base``; quick YAML defaults) + own dict,
        built and checked. Idempotent on its own output (which holds every field)."""
        cfg = dict(cfg or {})
        base = cfg.pop("base", None)
        if base is not None and not isinstance(base, Mapping):
            raise ConfigError(f"{where}.base: expected the generator_cfg.dhdiff mapping, got {base!r}")
        shared = inherited(base, f"{where}.base")
        # a tiny column beside sd ones; without ``base`` (a cell rebuilding from its own resolved
        # dict, which holds every field) there is nothing to differ from
        if base is not None and "scale" in cfg and cfg["scale"] != shared.get("scale", "tiny"):
            raise ConfigError(f"{where}.scale: {cfg['scale']!r} differs from generator_cfg.dhdiff.scale "
                              f"{shared.get('scale', 'tiny')!r}; every diffusion generator runs at one scale")
        return build(cls.config_class, {**shared, **cfg}, where)

    def __init__(self, **cfg):
        super().__init__(**cfg)
        self.data: FitData | None = None
        self.prior: Prior | None = None
        self._fg: dict[int, np.ndarray] = {}
        self._stats: dict = {}

    def cache_token(self) -> dict:
        return {"version": self.version, "prior_version": PRIOR_VERSION, "config": resolved(self.config)}

    def stats(self) -> dict:
        return dict(self._stats)

    def _name(self) -> str:
        return self.registry_name or type(self).__name__

    def _fit_prior(self, data: FitData, rng: np.random.Generator) -> int:
        """Load the shared prior; its seed is the first draw of ``rng`` (as DH-Diff's), so every
        generator of one (seed, category) gets the same prior. Returns that seed."""
        normals = common.check_normals(data, self._name())
        side = min(min(n.shape[:2]) for n in normals)
        if self.config.patch_size > side:
            raise ValueError(f"{self._name()}: patch_size {self.config.patch_size} exceeds the images' side {side}")
        seed = int(rng.integers(2**63))
        self.data, self._fg, self._stats = data, {}, {}
        if self.config.scale == "sd":
            self.prior = load_sd_prior(self.config)
            cell = self.prior.factor * 2 ** (len(self.prior.unet.config.block_out_channels) - 1)
            if self.config.patch_size % cell:
                raise ValueError(f"{self._name()}: patch_size {self.config.patch_size} must be a multiple of {cell} "
                                 f"at sd scale (VAE factor {self.prior.factor} x the U-Net's downsampling)")
        else:
            self.prior = load_prior(backbone_of(self.config), self.config.prior, data, seed)
        # FitData.device (the cell's --device): the prior is trained or loaded on the CPU, then
        # the U-Net, VAE and null tokens move; every random draw stays on CPU generators
        self.dev = torch.device(getattr(data, "device", None) or "cpu")
        self.prior.unet.to(self.dev)
        if self.prior.vae is not None:
            self.prior.vae.to(self.dev)
        self.prior.null = self.prior.null.to(self.dev)
        return seed

    def _dev(self, x: torch.Tensor) -> torch.Tensor:
        """``x`` (drawn or built on the CPU) on the generator's device."""
        return x.to(self.dev)

    def _check_fitted(self) -> None:
        if self.prior is None or self.data is None:
            raise RuntimeError(f"{self._name()}: call fit(data) before generate()")

    def _foreground(self, i: int) -> np.ndarray | None:
        if not self.data.is_object:
            return None
        if i not in self._fg:
            self._fg[i] = common.checked_foreground(common.foreground_fn(self.data), self.data.normals[i])
        return self._fg[i]

    def _context(self, tokens: torch.Tensor) -> torch.Tensor:
        """[B, L, D] learned tokens after the prior's (frozen) null tokens."""
        null = self.prior.null.detach()
        return torch.cat([null[None].expand(tokens.shape[0], -1, -1), tokens], dim=1)

    def _defect_index(self, defect: str) -> int:
        if defect not in self.defects:
            raise ValueError(f"{self._name()}: no few-shot anomaly of defect type {defect!r} (have: {self.defects})")
        return self.defects.index(defect)


def resize_mask_tokens(mask: torch.Tensor, n: int, size: tuple[int, int]) -> torch.Tensor:
    """[B, 1, H, W] mask averaged onto an ``n``-token grid of an H x W input: [B, N]."""
    H, W = size
    s = (H * W / n) ** 0.5
    return F.adaptive_avg_pool2d(mask, (round(H / s), round(W / s))).flatten(1)


__all__ = ["PriorConfig", "DiffusionConfig", "Prior", "PriorGenerator", "BACKBONE_FIELDS", "INHERITED",
           "backbone_of", "inherited", "build_unet", "load_prior", "load_sd_prior", "prior_key", "prior_path", "train_prior",
           "make_scheduler", "ddim", "noise_loss", "target", "optimise", "set_processors", "PassProcessor"]
