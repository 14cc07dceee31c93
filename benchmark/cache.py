"""Generated sets, written once in an MVTec-like layout and reused while their key matches.

``<cache>/generated/<key>/<generator>/<category>/<defect>/NNN.png`` (+ ``NNN_mask.png``) and a
``manifest.json``; the key hashes everything the set depends on (the generator's resolved
config, the split, the seed, the generator's version), so a changed config gets a fresh folder
instead of stale pairs. The manifest lists every file with its sha256: a set whose files were
damaged or replaced (a truncated manifest, a black image, a mask of the wrong size) is named,
discarded and made again, never used. Writes go to a temp folder renamed into place, under a
per-key lock; temp folders left by a killed writer are removed the next time the key is locked.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np

from generators.base import Pair

from .versions import package_versions

MANIFEST_SCHEMA = 2
STALE_TMP_S = 24 * 3600   # a temp folder of another key older than this is a killed writer's


class CacheError(ValueError):
    """A cached set that cannot be trusted; the message names the folder and why."""


def cache_key(parts: dict) -> str:
    blob = json.dumps(parts, sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:20]


def set_dir(cache_dir: str | Path, key: str) -> Path:
    return Path(cache_dir) / "generated" / key


def lock_path(root: Path) -> Path:
    return root.parent / ".locks" / f"{root.name}.lock"


def load_pairs(root: Path) -> list[Pair] | None:
    """The cached pairs under ``root``; None when no set is there; CacheError when one is there
    but damaged (checksums, sizes, counts)."""
    man = root / "manifest.json"
    if not root.exists():
        return None
    if not man.is_file():
        raise CacheError(f"generated set {str(root)!r}: no manifest.json")
    try:
        manifest = json.loads(man.read_text())
        files: dict[str, str] = manifest["files"]
        counts: dict[str, int] = manifest["counts"]
        base = root / manifest["generator"] / manifest["category"]
        size = manifest.get("image_size")
    except (ValueError, KeyError, TypeError) as e:
        raise CacheError(f"generated set {str(root)!r}: unreadable manifest ({type(e).__name__}: {e})") from None
    if manifest.get("schema") != MANIFEST_SCHEMA:
        raise CacheError(f"generated set {str(root)!r}: manifest schema {manifest.get('schema')!r}")
    pairs = []
    sources = manifest.get("sources", {})
    for defect, n in counts.items():
        src = sources.get(defect, [None] * n)
        for i in range(n):
            blobs = []  # each file read once: checked against its sha256, then decoded from the same bytes
            for name in (f"{i:03d}.png", f"{i:03d}_mask.png"):
                rel = f"{defect}/{name}"
                try:
                    data = (base / rel).read_bytes()
                except OSError:
                    raise CacheError(f"generated set {str(root)!r}: {rel} is missing") from None
                if hashlib.sha256(data).hexdigest() != files.get(rel):
                    raise CacheError(f"generated set {str(root)!r}: {rel} does not match its checksum")
                blobs.append(np.frombuffer(data, np.uint8))
            img = cv2.imdecode(blobs[0], cv2.IMREAD_COLOR)
            mask = cv2.imdecode(blobs[1], cv2.IMREAD_GRAYSCALE)
            if img is None or mask is None or img.shape[:2] != mask.shape or \
                    (size is not None and img.shape[:2] != (size, size)):
                raise CacheError(f"generated set {str(root)!r}: {defect}/{i:03d} has an unreadable or "
                                 f"mis-sized image or mask")
            pairs.append(Pair(cv2.cvtColor(img, cv2.COLOR_BGR2RGB), mask > 127, defect, src[i]))
    return pairs


def discard(root: Path) -> None:
    shutil.rmtree(root, ignore_errors=True)


def clean_stale(root: Path) -> list[Path]:
    """Remove this key's temp folders (we hold its lock, so no writer is alive) and any temp
    folder older than a day. Returns what was removed."""
    removed = []
    parent = root.parent
    if not parent.is_dir():
        return removed
    now = time.time()
    for tmp in parent.glob(".tmp-*"):
        mine = tmp.name.startswith(f".tmp-{root.name}-")
        try:
            old = now - tmp.stat().st_mtime > STALE_TMP_S
        except OSError:
            continue
        if mine or old:
            shutil.rmtree(tmp, ignore_errors=True)
            removed.append(tmp)
    return removed


def save_pairs(root: Path, pairs: list[Pair], manifest: dict) -> None:
    """Write the set into a temp folder, then rename: a killed run never leaves a half set."""
    root.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".tmp-{root.name}-", dir=root.parent))
    try:
        counts: dict[str, int] = {}
        sources: dict[str, list] = {}
        files: dict[str, str] = {}
        base = tmp / manifest["generator"] / manifest["category"]
        for p in pairs:
            i = counts.get(p.defect_type, 0)
            counts[p.defect_type] = i + 1
            sources.setdefault(p.defect_type, []).append(p.source)
            d = base / p.defect_type
            d.mkdir(parents=True, exist_ok=True)
            for name, arr in ((f"{i:03d}.png", cv2.cvtColor(p.image, cv2.COLOR_RGB2BGR)),
                              (f"{i:03d}_mask.png", p.mask.astype(np.uint8) * 255)):
                ok, buf = cv2.imencode(".png", arr)
                if not ok:
                    raise CacheError(f"cannot encode {p.defect_type}/{name}")
                data = buf.tobytes()
                (d / name).write_bytes(data)
                files[f"{p.defect_type}/{name}"] = hashlib.sha256(data).hexdigest()
        size = pairs[0].image.shape[0] if pairs and pairs[0].image.shape[0] == pairs[0].image.shape[1] else None
        manifest = {**manifest, "schema": MANIFEST_SCHEMA, "counts": counts, "sources": sources,
                    "files": files, "image_size": size, "versions": package_versions()}
        (tmp / "manifest.json").write_text(json.dumps(manifest, indent=2, sort_keys=True, default=str))
        if root.exists():
            shutil.rmtree(root)
        os.replace(tmp, root)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
