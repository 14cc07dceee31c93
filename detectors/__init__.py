"""Downstream detectors: a registry, the supervised U-Net segmenter, and anomalib adapters."""
from __future__ import annotations

import importlib

from benchmark.registry import Registry

from .base import Detector, DetectorContext

DETECTORS = Registry("detector", "helixbench.detectors")
register_detector = DETECTORS.register

_BUILTINS = ("unet", "anomalib", "feature_segmenter")


def _import_builtins() -> None:
    for mod in _BUILTINS:
        try:
            importlib.import_module(f"detectors.{mod}")
        except ModuleNotFoundError as e:
            if e.name != f"detectors.{mod}":
                raise


def create_detector(name: str, **cfg) -> Detector:
    _import_builtins()
    return DETECTORS.create(name, **cfg)


def list_detectors(pattern: str = "*") -> list[str]:
    _import_builtins()
    return DETECTORS.names(pattern)


def get_detector_class(name: str):
    _import_builtins()
    return DETECTORS.get(name)


__all__ = ["Detector", "DetectorContext", "DETECTORS", "register_detector", "create_detector",
           "list_detectors", "get_detector_class"]
