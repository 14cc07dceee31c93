"""DH-Diff configuration: one dataclass built by ``benchmark.schema.build``, scale presets.

Why a resolved dataclass: the runner keys the generated-set cache on ``asdict(gen.config)``, so
``gen.config`` must hold every value that shapes the output, including the ones that came from
``configs/dhdiff_quick.yaml`` (the default of the ``tiny`` scale) or from ``SD_PRESET``. Editing
the YAML therefore changes the key and regenerates.

Defaults are the paper's where it gives one (Adam, lr 1e-4, batch 32, K = 5, DDA+SSM in every
encoder block and every other decoder block, pure-noise start). The quick YAML trades steps and
widths for the CPU budget and says why.
"""
from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from benchmark.schema import ConfigError, build, option
from generators.diffusion_prior import PriorConfig

QUICK_YAML = Path(__file__).resolve().parents[2] / "configs" / "dhdiff_quick.yaml"


@dataclass
class DHDiffConfig:
    scale: str = option("tiny", choices=("tiny", "sd"),
                        help="tiny: pixel space from scratch (CPU); sd: latent, local SD-1.x folder")
    mode: str = option("", choices=("", "patch", "full"), help="'' resolves to patch at tiny, full at sd")
    # --- backbone (tiny scale; at sd the checkpoint decides) ---
    widths: tuple[int, ...] = option((16, 32, 48), ge=4)
    attn_levels: tuple[bool, ...] = (False, True, True)
    layers_per_block: int = option(1, ge=1)
    heads: int = option(2, ge=1)
    text_dim: int = option(32, ge=4, help="learned-token width (cross_attention_dim) at tiny scale")
    n_ctx: int = option(7, ge=1, help="learned context tokens of the prompt template")
    text_encoder: str = option("auto", choices=("auto", "clip", "learned"),
                               help="auto: CLIP from clip_path if set, else sd_path/text_encoder at sd, learned tokens at tiny")
    # --- placement of DDA+SSM (paper IV-B, Table IX row 4); unplaced layers keep concat attention ---
    placement_encoder: str | list[int] = "all"
    placement_mid: bool = True
    placement_decoder: str | list[int] = "every_other"
    # --- data ---
    patch_size: int = option(32, ge=8, help="patch mode: crop side in image pixels, taken 1:1 (never rescaled)")
    jitter: float = option(0.25, ge=0, le=0.5, help="training crop shift, fraction of the patch")
    normal_share: float = option(0.25, ge=0, lt=1,
                                 help="share of training examples that are normal crops with an empty annotation")
    resolution: int = option(0, ge=0, help="full mode: model resolution (0 -> FitData.image_size)")
    raw_grid: int = option(5, ge=1, help="K of the raw mask")
    # --- training ---
    steps: int = option(2000, ge=0)
    batch_size: int = option(32, ge=1)
    lr: float = option(1e-4, gt=0)
    warmup: int = option(0, ge=0)
    lr_schedule: str = option("constant", choices=("constant", "cosine"))
    num_train_timesteps: int = option(1000, ge=2)
    beta_schedule: str = option("squaredcos_cap_v2", choices=("squaredcos_cap_v2", "linear", "scaled_linear"))
    prediction_type: str = option("epsilon", choices=("epsilon", "v_prediction", "sample"))
    control_prob: float = option(0.5, ge=0, le=1, help="share of training examples carrying a control map S^O")
    # --- sampling ---
    ddim_steps: int = option(25, ge=1)
    sample_batch: int = option(64, ge=1)
    strength: float = option(1.0, gt=0, le=1,
                             help="1.0: pure-noise start (DH-Diff); < 1 only for the dhdiff_sdedit generator")
    mask_threshold: float = 0.0
    mask_sigma: float = option(0.0, ge=0)
    min_blob: int = option(0, ge=0)
    keep_near_ref: bool = False
    fill_holes: bool = False
    ref_augment: bool = False
    max_retries: int = option(2, ge=0)
    control: str | None = option(None, choices=("points", "mask", "raw"))
    dilate: int = option(3, ge=0)
    # --- pretrained parts (sd scale / CLIP), local paths only ---
    sd_path: str | None = None
    clip_path: str | None = None

    def __post_init__(self):
        if not self.mode:
            self.mode = "patch" if self.scale == "tiny" else "full"
        self.widths = tuple(self.widths)
        self.attn_levels = tuple(self.attn_levels)
        if len(self.attn_levels) != len(self.widths):
            raise ConfigError(f"attn_levels has {len(self.attn_levels)} entries, widths {len(self.widths)}; "
                              f"they must match")
        for name in ("placement_encoder", "placement_decoder"):
            v = getattr(self, name)
            if isinstance(v, str) and v not in ("all", "every_other", "none"):
                raise ConfigError(f"{name}: expected 'all', 'every_other', 'none' or a list of block "
                                  f"positions, got {v!r}")
        if self.scale == "sd" and not self.sd_path:
            raise ConfigError("sd_path: scale 'sd' needs a local Stable-Diffusion-1.x folder")
        if self.scale == "tiny" and self.text_encoder == "clip" and not self.clip_path:
            raise ConfigError("clip_path: text_encoder 'clip' at tiny scale needs a local CLIP folder")


@dataclass
class DHDiffPriorConfig(DHDiffConfig):
    """Opt-in: DH-Diff fine-tuned from the shared tiny prior (generators.diffusion_prior) instead
    of trained from scratch. A class of its own so that a config without ``prior`` (the default)
    keeps exactly DHDiffConfig's fields, hence every existing cache key and checkpoint."""

    prior: PriorConfig = field(default_factory=PriorConfig)

    def __post_init__(self):
        super().__post_init__()
        if self.scale != "tiny":
            raise ConfigError("prior: the shared prior is a tiny-scale model; at sd scale the checkpoint is the prior")


# Paper-scale preset of the sd scale (the paper's optimiser, batch and steps). DH-Diff runs full
# mode there; ``patch_size`` is the crop side of the diffusion baselines, which inherit it (256 px
# crops are 32 x 32 SD latents, the smallest size SD-1.x's U-Net handles without blank borders).
SD_PRESET: dict = dict(scale="sd", steps=2000, batch_size=32, lr=1e-4, ddim_steps=50,
                       sample_batch=8, beta_schedule="scaled_linear", resolution=512, patch_size=256)


def quick_values() -> dict:
    """configs/dhdiff_quick.yaml as a dict (the default of the tiny scale; {} if absent)."""
    if not QUICK_YAML.exists():
        return {}
    loaded = yaml.safe_load(QUICK_YAML.read_text()) or {}
    if not isinstance(loaded, dict):
        raise ConfigError(f"{QUICK_YAML}: expected a mapping of dhdiff config fields")
    return loaded


def resolve(cfg: Mapping | None, where: str = "generator_cfg.dhdiff") -> DHDiffConfig:
    """Scale preset (tiny -> quick YAML, sd -> SD_PRESET) overlaid with ``cfg``, built and checked."""
    cfg = dict(cfg or {})
    scale = cfg.get("scale", "tiny")
    if scale not in ("tiny", "sd"):
        raise ConfigError(f"{where}.scale: expected one of tiny, sd, got {scale!r}")
    base = quick_values() if scale == "tiny" else dict(SD_PRESET)
    merged = {**base, **cfg}
    if merged.get("prior") is None:   # the default: no prior field at all (see DHDiffPriorConfig)
        merged.pop("prior", None)
        return build(DHDiffConfig, merged, where)
    return build(DHDiffPriorConfig, merged, where)


def inherit(base: Mapping | None, own: Mapping | None, where: str) -> dict:
    """An ablation's dict: ``generator_cfg.dhdiff`` overlaid with its own section.

    A variant at another scale than ``dhdiff`` would silently compare a tiny model with an
    sd-scale one, so a differing ``scale`` is refused."""
    base, own = dict(base or {}), dict(own or {})
    if "scale" in own and own["scale"] != base.get("scale", "tiny"):
        raise ConfigError(f"{where}.scale: {own['scale']!r} differs from generator_cfg.dhdiff.scale "
                          f"{base.get('scale', 'tiny')!r}; an ablation must run at the scale of dhdiff")
    return {**base, **own}


def _field(cfg, key: str, default):
    return cfg.get(key, default) if isinstance(cfg, Mapping) else getattr(cfg, key, default)


def sd_folder_problem(cfg) -> str | None:
    """Why ``sd_path`` is not a usable SD-1.x folder ("sd_path: ..."), or None (always None at
    tiny scale). ``cfg``: a config dataclass or its resolved dict."""
    if _field(cfg, "scale", "tiny") != "sd":
        return None
    sd = _field(cfg, "sd_path", None)
    if sd and (Path(sd) / "unet").is_dir() and (Path(sd) / "vae").is_dir():
        return None
    return f"sd_path: {sd!r} is not a local Stable-Diffusion-1.x folder with unet/ and vae/ (nothing is downloaded)"


def clip_source(cfg) -> str | None:
    """Where the CLIP text encoder comes from (a folder), or None for learned tokens: ``learned``
    never, ``auto`` at tiny scale only with ``clip_path``, else ``clip_path`` or
    ``sd_path/text_encoder``. Neither there: ValueError starting "text_encoder: "."""
    kind, clip = _field(cfg, "text_encoder", "auto"), _field(cfg, "clip_path", None)
    scale, sd = _field(cfg, "scale", "tiny"), _field(cfg, "sd_path", None)
    if kind == "learned":
        return None
    if clip:
        return clip
    if kind == "auto" and scale == "tiny":
        return None
    if sd and (Path(sd) / "text_encoder").is_dir():
        return sd
    raise ValueError(f"text_encoder: {kind!r} at scale {scale!r} needs sd_path/text_encoder/ or clip_path and "
                     f"neither exists ({sd!r}); set text_encoder: learned to train token embeddings instead")


def missing_local_files(cfg: Mapping, where: str) -> str | None:
    """One line naming what a resolved DH-Diff-family config (DH-Diff, its ablations, the
    diffusion baselines) needs on disk and lacks, or None. Asked at plan time, so a wrong
    ``sd_path`` stops the run before any work instead of failing every cell at fit; the model
    asks the same two functions at fit (direct API use)."""
    import importlib.util

    problem = sd_folder_problem(cfg)
    if problem:
        return f"{where}.{problem} (set under generator_cfg.dhdiff for every diffusion generator)"
    try:
        clip = clip_source(cfg)
    except ValueError as e:
        return f"{where}.{e}"
    if clip is None:
        return None
    if not Path(clip).exists():
        return f"{where}.clip_path: {clip!r} does not exist"
    if importlib.util.find_spec("transformers") is None:
        return (f"{where}.text_encoder: the CLIP text encoder needs the 'transformers' package, which is not "
                f"installed; set text_encoder: learned to train token embeddings instead")
    return None


__all__ = ["DHDiffConfig", "DHDiffPriorConfig", "SD_PRESET", "quick_values", "resolve", "inherit", "missing_local_files",
           "sd_folder_problem", "clip_source"]
