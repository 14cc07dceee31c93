"""Frozen-encoder features kept on disk between cells: ``<cache>/features/<key>.pt`` + ``.json``.

Why: a frozen encoder gives the same features to every cell that shows it the same images, and
the cells of one (category, seed) under different generators evaluate the same images; in the
quick bench that encoder pass is a sixth of a cell. Only exact reuse is allowed: the key holds
the images' bytes and everything the numbers depend on (the weights' sha256, the input side,
the batch size, torch's version, the thread count, the device), so a hit returns the tensors
the cell would have computed, bit for bit, and a record never depends on what ran before it.

Self-checking: the ``.json`` beside each file holds its sha256; a file that does not match is
discarded (with a warning) and recomputed, never used. Writes go to a temp file renamed into
place, so a killed writer leaves no half file under the key. The folder is kept under
``MAX_BYTES`` by removing the least recently used files (a hit touches its file).
"""
from __future__ import annotations

import hashlib
import json
import os
import tempfile
import warnings
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from benchmark.weights import sha256_file

FORMAT = 1
MAX_BYTES = 6 * 2**30   # about five 1,120-image sets of ResNet-50 layer1-3 features at 128 px (float16)


def features_key(parts: dict, images: np.ndarray) -> str:
    """sha256 over ``parts`` (JSON, sorted keys) and the images' dtype, shape and bytes."""
    h = hashlib.sha256(json.dumps({**parts, "format": FORMAT}, sort_keys=True, default=str).encode())
    h.update(f"{images.dtype.str}{images.shape}".encode())
    h.update(np.ascontiguousarray(images).data)
    return h.hexdigest()[:24]


def load(root: Path, key: str) -> list[torch.Tensor] | None:
    """The tensors stored under ``key``; None when there are none or they fail their checksum."""
    path, meta = root / f"{key}.pt", root / f"{key}.json"
    try:
        want = json.loads(meta.read_text())["sha256"]
        got = sha256_file(path)
        if got != want:
            raise ValueError(f"sha256 {got[:12]}... is not the {want[:12]}... written beside it")
        tensors = torch.load(path, weights_only=True)
    except FileNotFoundError:   # never written, or removed by a prune since
        return None
    except Exception as e:   # damaged: recompute, never use it
        warnings.warn(f"feature cache {str(path)!r} discarded ({type(e).__name__}: {e}); recomputing",
                      stacklevel=2)
        for p in (path, meta):
            p.unlink(missing_ok=True)
        return None
    os.utime(path)   # recently used: the prune keeps it
    return tensors


def save(root: Path, key: str, tensors: list[torch.Tensor], parts: dict, max_bytes: int = MAX_BYTES) -> None:
    """Write ``tensors`` under ``key`` (temp file, then rename), then prune the folder."""
    root.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=root, prefix=f".{key}.", suffix=".tmp")
    os.close(fd)
    try:
        torch.save(tensors, tmp)
        meta = {"sha256": sha256_file(Path(tmp)), "parts": parts, "format": FORMAT,
                "shapes": [list(t.shape) for t in tensors]}
        Path(tmp + ".json").write_text(json.dumps(meta, sort_keys=True, default=str))
        os.replace(tmp + ".json", root / f"{key}.json")
        os.replace(tmp, root / f"{key}.pt")
    finally:
        for p in (tmp, tmp + ".json"):
            Path(p).unlink(missing_ok=True)
    prune(root, max_bytes)


def prune(root: Path, max_bytes: int = MAX_BYTES) -> list[Path]:
    """Remove the least recently used files until the folder holds at most ``max_bytes``."""
    files = []
    for p in root.glob("*.pt"):
        try:
            st = p.stat()
        except FileNotFoundError:
            continue
        files.append((st.st_mtime, st.st_size, p))
    total, removed = sum(s for _, s, _ in files), []
    for _, size, p in sorted(files):
        if total <= max_bytes:
            break
        p.unlink(missing_ok=True)
        p.with_suffix(".json").unlink(missing_ok=True)
        total -= size
        removed.append(p)
    return removed


def cached(root: Path | None, parts: dict, images: np.ndarray,
           compute: Callable[[np.ndarray], list[torch.Tensor]]) -> list[torch.Tensor]:
    """``compute(images)``, read from ``root`` when the same call was made before (None: no cache)."""
    if root is None:
        return compute(images)
    key = features_key(parts, images)
    found = load(root, key)
    if found is not None:
        return found
    tensors = compute(images)
    save(root, key, tensors, parts)
    return tensors
