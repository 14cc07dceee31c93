"""Generated sets, written once in an MVTec-like layout and reused while their key matches.

``<cache>/generated/<key>/<generator>/<category>/<defect>/NNN.png`` (+ ``NNN_mask.png``) and a
``manifest.json``; the key hashes everything the set depends on, so a changed config, split,
seed or generator version gets a fresh folder instead of stale pairs.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path

import cv2
import numpy as np

from generators.base import Pair

from .versions import package_versions


def cache_key(parts: dict) -> str:
    blob = json.dumps(parts, sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:20]


def set_dir(cache_dir: str | Path, key: str) -> Path:
    return Path(cache_dir) / "generated" / key


def load_pairs(root: Path) -> list[Pair] | None:
    """The cached pairs under ``root``, or None when no complete set is there."""
    man = root / "manifest.json"
    if not man.is_file():
        return None
    manifest = json.loads(man.read_text())
    pairs = []
    base = root / manifest["generator"] / manifest["category"]
    sources = manifest.get("sources", {})
    for defect, n in manifest["counts"].items():
        src = sources.get(defect, [None] * n)
        for i in range(n):
            img = cv2.imread(str(base / defect / f"{i:03d}.png"), cv2.IMREAD_COLOR)
            mask = cv2.imread(str(base / defect / f"{i:03d}_mask.png"), cv2.IMREAD_GRAYSCALE)
            if img is None or mask is None:
                return None  # damaged set: regenerate
            pairs.append(Pair(cv2.cvtColor(img, cv2.COLOR_BGR2RGB), mask > 127, defect, src[i]))
    return pairs


def save_pairs(root: Path, pairs: list[Pair], manifest: dict) -> None:
    """Write the set into a temp folder, then rename: a killed run never leaves a half set."""
    root.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".tmp-", dir=root.parent))
    try:
        counts: dict[str, int] = {}
        sources: dict[str, list] = {}
        base = tmp / manifest["generator"] / manifest["category"]
        for p in pairs:
            i = counts.get(p.defect_type, 0)
            counts[p.defect_type] = i + 1
            sources.setdefault(p.defect_type, []).append(p.source)
            d = base / p.defect_type
            d.mkdir(parents=True, exist_ok=True)
            cv2.imwrite(str(d / f"{i:03d}.png"), cv2.cvtColor(p.image, cv2.COLOR_RGB2BGR))
            cv2.imwrite(str(d / f"{i:03d}_mask.png"), p.mask.astype(np.uint8) * 255)
        manifest = {**manifest, "counts": counts, "sources": sources, "versions": package_versions()}
        (tmp / "manifest.json").write_text(json.dumps(manifest, indent=2, sort_keys=True, default=str))
        if root.exists():
            shutil.rmtree(root)
        os.replace(tmp, root)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
