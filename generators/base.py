"""The generator interface: fit on normals plus a few real anomalies, then make (image, mask) pairs.

Everything crossing this boundary is a plain numpy value so a generator can be written without
knowing anything about the runner, the cache or the detectors.
"""
from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np


@dataclass
class Pair:
    """One anomaly example: image uint8 HxWx3, mask bool HxW, and its defect type."""

    image: np.ndarray
    mask: np.ndarray
    defect_type: str
    source: int | None = None   # index into FitData.normals of the normal image this pair edits
                                # (None: not an edit); lets the suite check pixels outside the mask


@dataclass
class FitData:
    """What a generator may learn from. Never contains an evaluation image (see benchmark.split)."""

    category: str
    normals: list[np.ndarray]            # normal train images, uint8 HxWx3, run resolution
    anomalies: list[Pair]                # the few-shot real anomalies (generator half of the split)
    defect_types: list[str]              # defect types to generate (those with few-shot examples)
    is_object: bool = False              # objects: paste on the foreground only
    aux_images: list[np.ndarray] = field(default_factory=list)  # texture sources (other categories)
    foreground: Callable[[np.ndarray], np.ndarray] | None = None  # image -> bool HxW foreground
    device: str = "cpu"
    work_dir: Path | None = None         # where a generator may keep checkpoints
    image_size: int = 128


class Generator(ABC):
    """Base class. Subclasses are registered with ``@register_generator(name)``.

    Class attributes tell the runner what the generator needs and promises:
    ``needs_masks``: uses the few-shot anomaly masks (refused on image-level data sets);
    ``edits_normal``: output is a normal image changed only inside the mask.
    """

    registry_name: str = ""
    config_class: type | None = None   # the settings dataclass (benchmark.schema); None: no settings
    needs_masks: bool = False
    needs_anomalies: bool = False
    edits_normal: bool = True
    uses_aux_images: bool = False  # True: the runner fills FitData.aux_images (costs image loads)
    edit_margin: int = 0           # edits_normal: pixels farther than this from the mask are the
                                   # normal's own (a blended seam may reach this far; 0: none)

    def __init__(self, **cfg):
        self.cfg = cfg
        self.config = self.resolve_config(cfg, f"generator_cfg.{self.registry_name or type(self).__name__}")

    @classmethod
    def resolve_config(cls, cfg: dict, where: str, variant: str | None = None):
        """The settings dataclass from a dict: unknown keys, wrong types and ranges are one
        ConfigError naming the key. The runner calls this at plan time, before any work, and
        stores `benchmark.schema.resolved(...)` of the result, so it must be idempotent:
        resolving the resolved dict again gives the same config."""
        from benchmark.schema import build, reject_settings

        if cls.config_class is None:
            return reject_settings(cfg, where)
        return build(cls.config_class, cfg, where)

    @classmethod
    def missing_files(cls, resolved_cfg: Mapping, where: str) -> str | None:
        """One line naming a local file or folder the resolved settings need and lack (a
        checkpoint, a text encoder), or None. The runner asks at plan time, so a wrong path stops
        the run before any work instead of failing every cell."""
        return None

    @classmethod
    def own_settings(cls, name: str, section: dict) -> dict:
        """This generator's settings out of the whole ``generator_cfg`` section. Ablation variants
        override it to inherit their parent's settings (DH-Diff: ``generator_cfg.dhdiff``)."""
        return dict(section.get(name) or {})

    def stats(self) -> dict:
        """Counters of what the generator did besides its model (retries, fallbacks, pieces
        dropped by clean-up ...), stored in the record; empty when there are none."""
        return {}

    @abstractmethod
    def fit(self, data: FitData, rng: np.random.Generator) -> None:
        """Learn whatever the generator needs; cheap generators just keep references."""

    @abstractmethod
    def generate(self, n: int, defect_type: str, rng: np.random.Generator) -> list[Pair]:
        """Return ``n`` pairs of the given defect type, deterministic given ``rng``."""

    def cache_token(self) -> dict:
        """Everything besides cfg that changes the output (bump ``version`` on behaviour change)."""
        return {"version": getattr(self, "version", 1)}
