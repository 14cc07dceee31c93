"""Data set adapters, one module each, behind one registry."""
from __future__ import annotations

import importlib

from benchmark.registry import Registry

from .base import COLUMNS, DataError, DatasetAdapter, load_image, load_mask, validate_samples

DATASETS = Registry("dataset", "helixbench.datasets")
register_dataset = DATASETS.register

_BUILTINS = ("synthetic", "mvtec_ad", "mpdd", "visa", "mvtec_loco", "elpv")


def _import_builtins() -> None:
    for mod in _BUILTINS:
        try:
            importlib.import_module(f"benchmark.datasets.{mod}")
        except ModuleNotFoundError as e:
            if e.name != f"benchmark.datasets.{mod}":
                raise


def create_dataset(name: str, root=None, **cfg) -> DatasetAdapter:
    _import_builtins()
    return DATASETS.create(name, root=root, **cfg)


def list_datasets() -> list[str]:
    _import_builtins()
    return DATASETS.names()


__all__ = ["COLUMNS", "DataError", "DatasetAdapter", "DATASETS", "register_dataset",
           "create_dataset", "list_datasets", "load_image", "load_mask", "validate_samples"]
