"""The detector interface: fit on normal train images plus generated pairs, predict scores and maps.

Every detector returns raw scores (higher = more anomalous) and raw anomaly maps at the input
resolution; benchmark.metrics turns them into numbers, so tables never depend on which
detector ran (see docs/evaluation.md: anomalib's own metric path is not used).
"""
from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from generators.base import Pair


def ensemble_seeds(seed: int, k: int, tag: str) -> list[int]:
    """Seeds of an ensemble's K members: member 0 is ``seed`` itself (so K = 1 is the single
    model, and two generators' cells of one seed share every member's init and batch order),
    members 1..K-1 come from (seed, tag, k)."""
    from benchmark.split import stable_seed

    return [seed] + [stable_seed(seed, tag, i) % 2**63 for i in range(1, k)]


@dataclass
class DetectorContext:
    category: str
    device: str = "cpu"
    seed: int = 0
    work_dir: Path | None = None
    image_size: int = 128
    # shared between cells: exact-reuse caches such as frozen-encoder features (detectors.feature_cache);
    # None: compute everything in the cell
    feature_cache: Path | None = None


class Detector(ABC):
    registry_name: str = ""
    config_class: type | None = None   # the settings dataclass (benchmark.schema); None: no settings
    uses_pairs: bool = True  # False: an unsupervised "no augmentation" reference

    def __init__(self, **cfg):
        self.cfg = cfg
        self.config = self.resolve_config(cfg, f"detector_cfg.{self.registry_name or type(self).__name__}")

    @classmethod
    def resolve_config(cls, cfg: dict, where: str, variant: str | None = None):
        """The settings dataclass from a dict (see `generators.base.Generator.resolve_config`)."""
        from benchmark.schema import build, reject_settings

        if cls.config_class is None:
            return reject_settings(cfg, where)
        return build(cls.config_class, cfg, where)

    def weights_info(self) -> dict | None:
        """Which pretrained weights the detector used (name, sha256), stored in the record."""
        return None

    @abstractmethod
    def fit(self, normals: np.ndarray, pairs: list[Pair], ctx: DetectorContext) -> None:
        """normals: uint8 [N,H,W,3]; pairs: generated (image, mask, defect) examples."""

    @abstractmethod
    def predict(self, images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """images uint8 [N,H,W,3] -> (scores float64 [N], maps float32 [N,H,W])."""
