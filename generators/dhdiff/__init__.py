"""DH-Diff (double-helix diffusion): importing the package registers dhdiff, its Table VIII
ablations (dhdiff_baseline, dhdiff_dda, dhdiff_ssm) and dhdiff_sdedit (not DH-Diff)."""
from .config import DHDiffConfig
from .generator import DHDiff, DHDiffBaseline, DHDiffDDA, DHDiffGenerator, DHDiffSDEdit, DHDiffSSM, variant_cfg

__all__ = ["DHDiffConfig", "DHDiffGenerator", "DHDiff", "DHDiffDDA", "DHDiffSSM", "DHDiffBaseline",
           "DHDiffSDEdit", "variant_cfg"]
