"""Adapter options and the anomalib model-class lookup.

Why split from the model kwargs: one cfg dict configures both the adapter (how we train and read
out) and the anomalib model (its own constructor arguments). The adapter's fields are a
`benchmark.schema` dataclass (typed, ranged, unknown keys impossible because everything else is
a model kwarg); the rest are checked against the model constructor's signature, so a typo names
the model and the field instead of reaching anomalib as a TypeError.
"""
from __future__ import annotations

import dataclasses
import importlib
import inspect
from dataclasses import dataclass
from typing import Any

from benchmark.schema import option

# anomalib components the adapter owns: a caller must not switch them back on
MANAGED = ("pre_processor", "post_processor", "evaluator", "visualizer")
# backbone_weights value meaning "the model's own timm backbone by name" (anomalib's own path)
TIMM = "timm"


@dataclass
class AnomalibOptions:
    """Adapter options, read from the same cfg as the model kwargs (the rest go to the model)."""

    max_epochs: int | None = option(None, ge=1, help="None: the model's own trainer_arguments value, else 1")
    batch_size: int = option(8, ge=1, help="EfficientAd is forced to 1, as anomalib requires")
    pre_trained: bool = option(True, help="timm-name backbones only; False: random (tests, smoke runs)")
    image_size: int | None = option(None, ge=1, help="model input side; None: the run's image_size")
    pair_probability: float = option(0.5, ge=0.0, le=1.0,
                                     help="Draem: chance a training image gets a pair pasted in (DRAEM's 0.5)")
    predict_batch_size: int = option(16, ge=1)
    backbone_weights: str = option(
        "timm", help="timm: the model's own timm backbone name (pre_trained decides its weights); "
                     "imagenet | none | <state-dict path>: a torchvision resnet50 module from "
                     "detectors.backbones instead (imagenet: the file `make weights` builds)")

    def __post_init__(self) -> None:
        # direct construction (not via build) gets the same checks, as plain ValueErrors
        for key in ("max_epochs", "batch_size", "image_size", "predict_batch_size"):
            value = getattr(self, key)
            if value is not None and (not isinstance(value, int) or isinstance(value, bool) or value < 1):
                raise ValueError(f"anomalib adapter option {key!r}: expected a positive int, got {value!r}")
        if not 0.0 <= float(self.pair_probability) <= 1.0:
            raise ValueError(f"anomalib adapter option 'pair_probability': expected [0, 1], got {self.pair_probability!r}")


OPTION_FIELDS = {f.name for f in dataclasses.fields(AnomalibOptions)}


def split_cfg(cfg: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """cfg -> (adapter options, model kwargs)."""
    return ({k: v for k, v in cfg.items() if k in OPTION_FIELDS},
            {k: v for k, v in cfg.items() if k not in OPTION_FIELDS})


def image_model_names() -> list[str]:
    """anomalib's image model class names (video models excluded)."""
    return list(importlib.import_module("anomalib.models.image").__all__)


def resolve_model_class(model_name: str) -> type:
    names = image_model_names()
    match = [n for n in names if n == model_name] or [n for n in names if n.lower() == model_name.lower()]
    if not match:
        raise ValueError(f"unknown anomalib model {model_name!r}; anomalib image models: {', '.join(names)}")
    return getattr(importlib.import_module("anomalib.models.image"), match[0])


def check_model_kwargs(model_cls: type, kwargs: dict[str, Any]) -> None:
    """Unknown or adapter-managed fields -> ValueError naming the model and the field."""
    name = f"anomalib:{model_cls.__name__}"
    params = inspect.signature(model_cls.__init__).parameters
    has_var_kw = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())
    fields = [p for p in params if p not in ("self", *MANAGED)]
    for key in kwargs:
        if key in MANAGED:
            raise ValueError(f"{name}: option {key!r} is managed by the adapter (raw outputs only)")
        if key not in fields and not has_var_kw:
            raise ValueError(
                f"{name}: unknown option {key!r}; model fields: {', '.join(fields)}; "
                f"adapter options: {', '.join(sorted(OPTION_FIELDS))}"
            )
