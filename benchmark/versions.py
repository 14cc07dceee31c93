"""Package versions recorded with every result, so a number can be traced to its software."""
from __future__ import annotations

import platform
from functools import lru_cache
from importlib.metadata import PackageNotFoundError, version

_PACKAGES = ("helixbench", "torch", "torchvision", "anomalib", "diffusers", "timm", "torchmetrics",
             "scikit-learn", "numpy", "pandas", "opencv-python-headless")


@lru_cache(maxsize=1)
def package_versions() -> dict[str, str]:
    out = {"python": platform.python_version()}
    for p in _PACKAGES:
        try:
            out[p] = version(p)
        except PackageNotFoundError:
            out[p] = "not installed"
    return out
