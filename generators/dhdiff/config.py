"""DH-Diff configuration: one dataclass, scale presets, the quick config.

Defaults are the paper's values where the paper gives one (Adam, lr 1e-4, batch 32, K = 5,
DDA+SSM in every encoder block and every other decoder block); the ``tiny`` scale starts from
the QUICK preset below (or configs/dhdiff_quick.yaml), sized to train and sample one category
on 2 CPU cores in minutes.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from pathlib import Path

import yaml

QUICK_YAML = Path(__file__).resolve().parents[2] / "configs" / "dhdiff_quick.yaml"


@dataclass
class DHDiffConfig:
    scale: str = "tiny"                 # "tiny" (pixel space, from scratch) | "sd" (latent, local SD-1.x folder)
    mode: str = ""                      # "patch" | "full"; "" -> patch at tiny, full at sd
    # --- backbone (tiny scale; ignored at sd, where the checkpoint decides) ---
    widths: tuple[int, ...] = (16, 32, 48)
    attn_levels: tuple[bool, ...] = (False, True, True)  # attention only on <=16x16 grids at 32 px
    layers_per_block: int = 1
    heads: int = 2
    text_dim: int = 32                  # learned-token width (cross_attention_dim) at tiny scale
    n_ctx: int = 7                      # learned context tokens of the prompt template
    # --- placement of DDA+SSM (paper IV-B, Table IX row 4) ---
    placement_encoder: object = "all"   # "all" | "every_other" | "none" | list of positions
    placement_mid: bool = True          # the bottleneck counts as encoder
    placement_decoder: object = "every_other"
    # --- data ---
    patch_size: int = 32                # patch mode: model resolution of a crop
    context: float = 1.5                # crop side = context * defect bbox side (at least patch_size)
    jitter: float = 0.25                # training crop shift, fraction of the crop side
    resolution: int = 0                 # full mode: model resolution (0 -> FitData.image_size)
    raw_grid: int = 5                   # K of the raw mask
    # --- training ---
    steps: int = 2000
    batch_size: int = 32
    lr: float = 1e-4
    warmup: int = 0                     # linear lr warm-up steps
    lr_schedule: str = "constant"       # "constant" (paper) | "cosine" (decay to 0 after warm-up)
    num_train_timesteps: int = 1000
    beta_schedule: str = "squaredcos_cap_v2"
    prediction_type: str = "epsilon"    # "epsilon" (paper eq. 8) | "v_prediction" | "sample"; tiny only
    control_prob: float = 0.5           # share of training examples that carry a control map S^O
    # --- sampling ---
    ddim_steps: int = 25
    sample_batch: int = 64
    strength: float = 1.0               # 1.0 = the paper's pure-noise start; < 1 = SDEdit start from the
                                        # noised reference crop and mask (CPU-budget choice, not in the paper)
    mask_threshold: float = 0.0         # on the generated annotation in [-1, 1]
    mask_sigma: float = 0.0             # Gaussian blur (model px) of the annotation before thresholding
    min_blob: int = 0                   # drop mask components smaller than this (model px); 0 = keep all
    keep_near_ref: bool = False         # keep only components touching the reference's dilated raw mask
    fill_holes: bool = False
    ref_augment: bool = False           # random flip / 90-degree turn of each reference at generation
    max_retries: int = 2                # re-sample empty masks this many times, then fall back
    control: object = None              # None | "points" | "mask" | "raw": default control at generation
    dilate: int = 3                     # px of mask dilation for blending into a normal image
    # --- pretrained parts (sd scale / CLIP), local paths only ---
    sd_path: str | None = None
    clip_path: str | None = None

    @classmethod
    def from_kwargs(cls, **kw) -> "DHDiffConfig":
        """Scale preset (tiny -> quick values) overlaid with the caller's kwargs."""
        known = {f.name for f in fields(cls)}
        bad = sorted(set(kw) - known)
        if bad:
            raise ValueError(f"dhdiff: unknown config field(s) {bad}; known: {sorted(known)}")
        scale = kw.get("scale", "tiny")
        if scale not in ("tiny", "sd"):
            raise ValueError(f"dhdiff: config field 'scale' must be 'tiny' or 'sd', got {scale!r}")
        base = quick_values() if scale == "tiny" else dict(SD_PRESET)
        base.update(kw)
        cfg = cls(**base)
        cfg.widths = tuple(int(w) for w in cfg.widths)
        cfg.attn_levels = tuple(bool(a) for a in cfg.attn_levels)
        if not cfg.mode:
            cfg.mode = "patch" if scale == "tiny" else "full"
        if cfg.mode not in ("patch", "full"):
            raise ValueError(f"dhdiff: config field 'mode' must be 'patch' or 'full', got {cfg.mode!r}")
        if len(cfg.attn_levels) != len(cfg.widths):
            raise ValueError("dhdiff: config fields 'attn_levels' and 'widths' must have the same length")
        if cfg.control not in (None, "points", "mask", "raw"):
            raise ValueError(f"dhdiff: config field 'control' must be None/points/mask/raw, got {cfg.control!r}")
        if not 0.0 < float(cfg.strength) <= 1.0:
            raise ValueError(f"dhdiff: config field 'strength' must be in (0, 1], got {cfg.strength!r}")
        if cfg.prediction_type not in ("epsilon", "v_prediction", "sample"):
            raise ValueError(f"dhdiff: config field 'prediction_type' must be epsilon/v_prediction/sample, "
                             f"got {cfg.prediction_type!r}")
        if cfg.lr_schedule not in ("constant", "cosine"):
            raise ValueError(f"dhdiff: config field 'lr_schedule' must be 'constant' or 'cosine', got {cfg.lr_schedule!r}")
        if scale == "sd" and not cfg.sd_path:
            raise ValueError("dhdiff: scale 'sd' needs config field 'sd_path' (a local Stable-Diffusion-1.x folder)")
        return cfg

    def to_dict(self) -> dict:
        d = asdict(self)
        d["widths"] = list(self.widths)
        d["attn_levels"] = list(self.attn_levels)
        return d


# The quick config (default of the tiny scale; configs/dhdiff_quick.yaml says why each value).
# Budget: fit + 60 pairs per defect type on one category in <= 150 s on 2 CPU cores. lr 20x the
# paper's with warm-up + cosine, batch 8 not 32, v-prediction, SDEdit start (strength 0.7, not
# in the paper) and mask cleanup: ~180 steps from scratch is all the budget allows.
QUICK: dict = dict(
    scale="tiny", widths=(16, 32, 48), attn_levels=(False, True, True), layers_per_block=1,
    heads=2, text_dim=32, patch_size=32, steps=180, batch_size=8, lr=2e-3, warmup=20,
    lr_schedule="cosine", prediction_type="v_prediction", strength=0.7,
    ddim_steps=6, sample_batch=60, mask_threshold=0.0, mask_sigma=0.6, min_blob=4,
    keep_near_ref=True, fill_holes=True, ref_augment=True,
)

SD_PRESET: dict = dict(scale="sd", steps=2000, batch_size=32, lr=1e-4, ddim_steps=50,
                       sample_batch=8, beta_schedule="scaled_linear", resolution=512)


def quick_values() -> dict:
    """QUICK, overridden by configs/dhdiff_quick.yaml when that file exists."""
    vals = dict(QUICK)
    if QUICK_YAML.exists():
        loaded = yaml.safe_load(QUICK_YAML.read_text()) or {}
        if not isinstance(loaded, dict):
            raise ValueError(f"{QUICK_YAML}: expected a mapping of dhdiff config fields")
        vals.update(loaded)
    return vals


__all__ = ["DHDiffConfig", "QUICK", "SD_PRESET", "quick_values"]
