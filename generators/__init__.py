"""Anomaly generators: a registry plus one module per synthesizer."""
from __future__ import annotations

import importlib

from benchmark.registry import Registry

from .base import FitData, Generator, Pair

GENERATORS = Registry("generator", "helixbench.generators")
register_generator = GENERATORS.register


def create_generator(name: str, **cfg) -> Generator:
    _import_builtins()
    return GENERATORS.create(name, **cfg)


def list_generators(pattern: str = "*") -> list[str]:
    _import_builtins()
    return GENERATORS.names(pattern)


def get_generator_class(name: str):
    _import_builtins()
    return GENERATORS.get(name)


_BUILTINS = ("cutpaste", "cutpaste_scar", "crop_paste", "draem", "nsa", "dhdiff", "anomalydiffusion", "dualanodiff",
             "realnet_sdas")


def _import_builtins() -> None:
    for mod in _BUILTINS:
        try:
            importlib.import_module(f"generators.{mod}")
        except ModuleNotFoundError as e:  # a built-in module not written yet
            if e.name != f"generators.{mod}":
                raise


__all__ = ["FitData", "Generator", "Pair", "GENERATORS", "register_generator",
           "create_generator", "list_generators", "get_generator_class"]
