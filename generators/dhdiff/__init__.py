"""DH-Diff (double-helix diffusion): importing the package registers dhdiff and its ablations."""
from .config import DHDiffConfig
from .generator import DHDiff, DHDiffBaseline, DHDiffDDA, DHDiffGenerator, DHDiffSSM

__all__ = ["DHDiffConfig", "DHDiffGenerator", "DHDiff", "DHDiffDDA", "DHDiffSSM", "DHDiffBaseline"]
