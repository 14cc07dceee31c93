"""Generation-quality metrics per generator and defect type (see docs/evaluation.md).

Weight-free numbers are always computed, for every generator (mask binariness, mask-area
statistics against the real few-shot masks, change outside the mask and mask-image agreement for
generators that edit a normal image, distance of each generated defect to its nearest few-shot
reference and the share of near-copies). Inception
Score and IC-LPIPS need pretrained networks, which this project only ever loads from local
paths named in the ``quality`` config section; with no path they are ``None``.
"""
from __future__ import annotations

import dataclasses
import functools
import logging
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import numpy as np
from scipy.stats import wasserstein_distance

log = logging.getLogger(__name__)

__all__ = [
    "QualityConfig",
    "mask_binariness",
    "mask_area_stats",
    "outside_mask_change",
    "mask_image_agreement",
    "copy_distance",
    "inception_score",
    "inception_score_from_logits",
    "ic_lpips",
    "ic_lpips_from_distance",
    "lpips_distance",
    "quality_report",
]


@dataclass
class QualityConfig:
    """The ``quality`` section of a run config. Paths are local files; nothing is downloaded.

    inception_weights: a torchvision ``inception_v3`` state dict (e.g. inception_v3_google-*.pth).
    lpips_weights: the LPIPS backbone as a torchvision state dict (vgg16 for ``lpips_net="vgg"``,
    AnomalyDiffusion's choice; alexnet / squeezenet1_1 for "alex" / "squeeze"); the LPIPS linear
    heads are the ones bundled with torchmetrics.
    """

    inception_weights: str | None = None
    lpips_weights: str | None = None
    lpips_net: str = "vgg"
    ic_lpips_cap: int = 50          # AnomalyDiffusion: up to 50 random members per cluster
    is_splits: int = 10             # torch-fidelity default
    outside_tol: int = 2            # uint8 levels; absorbs rounding of blended edits
    agreement_margin: int = 8       # px around the mask that count as the edited neighbourhood
    copy_size: int = 24             # defect crops compared at this side (copy_distance)
    copy_threshold: float = 0.05    # mean abs difference in [0, 1] below which a defect is a near-copy
    batch_size: int = 16
    device: str = "cpu"
    seed: int = 0

    @classmethod
    def of(cls, cfg: Any) -> "QualityConfig":
        """Accept None, a QualityConfig, the ``quality`` dict, or an object/dict holding one."""
        if cfg is None:
            return cls()
        if isinstance(cfg, cls):
            return cfg
        if not isinstance(cfg, Mapping):
            cfg = getattr(cfg, "quality", cfg)
            if dataclasses.is_dataclass(cfg) and not isinstance(cfg, type):
                cfg = dataclasses.asdict(cfg)
        if isinstance(cfg, Mapping) and isinstance(cfg.get("quality"), Mapping):
            cfg = cfg["quality"]
        if not isinstance(cfg, Mapping):
            raise ValueError(f"quality config must be a mapping, got {type(cfg).__name__}")
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(cfg) - names)
        if unknown:
            raise ValueError(f"unknown quality config field(s): {', '.join('quality.' + u for u in unknown)}")
        return cls(**dict(cfg))


# --------------------------------------------------------------------------- weight-free
def _stack(items: Any, name: str) -> list[np.ndarray]:
    if isinstance(items, np.ndarray) and items.ndim >= 3:
        return list(items)
    out = [np.asarray(x) for x in items]
    if not out:
        raise ValueError(f"{name} is empty")
    return out


def _binary(mask: np.ndarray) -> np.ndarray:
    """Bool view of a mask: bool as is, float > 0.5, integers > half their 0/1 or 0/255 scale."""
    if mask.dtype == bool:
        return mask
    if np.issubdtype(mask.dtype, np.floating):
        return mask > 0.5
    return mask > (127 if mask.max(initial=0) > 1 else 0)


def mask_binariness(masks: Any) -> float:
    """Share of mask values that are exactly background or foreground, pooled over all masks.

    bool masks are binary by construction (1.0). Float masks count values exactly 0.0 or 1.0
    (soft edges from blending lower it). Integer masks count values equal to 0 or to the full
    value of their scale: 1 if every value is <= 1, else 255 (PNG masks).
    """
    ms = _stack(masks, "masks")
    hits = total = 0
    for m in ms:
        if m.dtype == bool:
            hits += m.size
        elif np.issubdtype(m.dtype, np.floating):
            hits += int(np.count_nonzero((m == 0) | (m == 1)))
        else:
            full = 255 if m.max(initial=0) > 1 else 1
            hits += int(np.count_nonzero((m == 0) | (m == full)))
        total += m.size
    return hits / total


def _areas(masks: Any, name: str) -> np.ndarray:
    return np.array([float(_binary(m).mean()) for m in _stack(masks, name)])


def mask_area_stats(gen_masks: Any, real_masks: Any | None) -> dict[str, float | None]:
    """Mask area as a fraction of the image: mean/std for generated and real masks, plus the 1-D
    Wasserstein distance between the two area distributions (None without real masks)."""
    gen = _areas(gen_masks, "gen_masks")
    out: dict[str, float | None] = {
        "area_mean_gen": float(gen.mean()), "area_std_gen": float(gen.std()),
        "area_mean_real": None, "area_std_real": None, "area_w1": None,
    }
    if real_masks is not None and len(real_masks):
        real = _areas(real_masks, "real_masks")
        out.update(area_mean_real=float(real.mean()), area_std_real=float(real.std()),
                   area_w1=float(wasserstein_distance(gen, real)))
    return out


def outside_mask_change(images: Any, sources: Any, masks: Any, tol: int = 2) -> float:
    """Share of pixels outside the mask (not dilated) whose largest channel change exceeds ``tol``.

    For generators that edit a normal image: 0 means the edit stayed inside its mask.
    """
    ims, srcs, ms = _stack(images, "images"), _stack(sources, "sources"), _stack(masks, "masks")
    if not len(ims) == len(srcs) == len(ms):
        raise ValueError(f"images, sources and masks differ in length: {len(ims)}, {len(srcs)}, {len(ms)}")
    changed = outside = 0
    for k, (im, src, m) in enumerate(zip(ims, srcs, ms)):
        if im.shape != src.shape or im.shape[:2] != m.shape[:2]:
            raise ValueError(f"pair {k}: image {im.shape}, source {src.shape} and mask {m.shape} disagree")
        diff = np.abs(im.astype(np.int16) - src.astype(np.int16))
        if diff.ndim == 3:
            diff = diff.max(axis=2)
        out_m = ~_binary(m)
        changed += int(np.count_nonzero((diff > tol) & out_m))
        outside += int(np.count_nonzero(out_m))
    return changed / outside if outside else math.nan


def _dilate(mask: np.ndarray, px: int) -> np.ndarray:
    import cv2

    if px <= 0:
        return mask.copy()
    k = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * px + 1, 2 * px + 1))
    return cv2.dilate(mask.astype(np.uint8), k).astype(bool)


def change_map(image: np.ndarray, source: np.ndarray) -> np.ndarray:
    """Largest per-channel absolute difference, as float (uint8 levels)."""
    d = np.abs(np.asarray(image, np.float32) - np.asarray(source, np.float32))
    return d.max(axis=2) if d.ndim == 3 else d


def mask_image_agreement(images: Any, sources: Any, masks: Any, margin: int = 8) -> float | None:
    """Mean over pairs of the pixel AUROC of the change map |generated - source| against the
    generated mask, inside the edited neighbourhood (the mask dilated by ``margin`` px).

    Why: a mask that says "defect" where the image did not change (or the reverse) teaches a
    detector the wrong pixels; this measures it on the pair itself, without a detector. Only
    the neighbourhood counts, so the untouched rest of the image does not inflate the value.
    Caveat: a generator that blends only inside a (dilated) mask scores high partly by
    construction; compare it on the values, not on the absolute level. Pairs whose mask is
    empty or fills the neighbourhood are skipped; None when no pair is left.
    """
    from .metrics import auroc  # exact, equal to sklearn's roc_auc_score, without its input checks

    ims, srcs, ms = _stack(images, "images"), _stack(sources, "sources"), _stack(masks, "masks")
    if not len(ims) == len(srcs) == len(ms):
        raise ValueError(f"images, sources and masks differ in length: {len(ims)}, {len(srcs)}, {len(ms)}")
    values = []
    for k, (im, src, m) in enumerate(zip(ims, srcs, ms)):
        if im.shape != src.shape or im.shape[:2] != m.shape[:2]:
            raise ValueError(f"pair {k}: image {im.shape}, source {src.shape} and mask {m.shape} disagree")
        m = _binary(m)
        hood = _dilate(m, margin)
        if not m.any() or m[hood].all():
            continue
        values.append(float(auroc(m[hood], change_map(im, src)[hood])))
    return float(np.mean(values)) if values else None


def _defect_crop(image: np.ndarray, mask: np.ndarray, size: int) -> tuple[np.ndarray, np.ndarray] | None:
    """The mask's bounding box of the image, pixels outside the mask zeroed, resized to size."""
    import cv2

    m = _binary(np.asarray(mask))
    ys, xs = np.nonzero(m)
    if not len(ys):
        return None
    y0, y1, x0, x1 = ys.min(), ys.max() + 1, xs.min(), xs.max() + 1
    im = np.asarray(image, np.float32)[y0:y1, x0:x1] / 255.0
    if im.ndim == 2:
        im = im[..., None]
    mk = m[y0:y1, x0:x1].astype(np.float32)
    im = cv2.resize(im * mk[..., None], (size, size), interpolation=cv2.INTER_AREA).reshape(size, size, -1)
    mk = cv2.resize(mk, (size, size), interpolation=cv2.INTER_AREA)
    return im, mk


def copy_distance(generated: Sequence[Any], references: Sequence[Any], size: int = 24,
                  threshold: float = 0.05) -> dict[str, float | None]:
    """How close each generated defect is to its nearest few-shot reference defect.

    Each defect (the mask's bounding box, pixels outside the mask zeroed) is resized to
    ``size`` x ``size``; the distance is the mean absolute difference in [0, 1] over the pixels
    either mask covers, minimised over the 8 flips/quarter-turns of the generated crop (so a
    pasted, flipped or rotated reference counts as a copy) and over the references.
    Returns the mean distance and the share of near-copies (distance < ``threshold``): a
    generator that pastes its references shows a share near 1 (Crop&Paste by design).
    """
    refs = [c for c in (_defect_crop(_field(p, "image"), _field(p, "mask"), size) for p in references
                        if _field(p, "mask") is not None) if c is not None]
    if not refs:
        return {"copy_dist_mean": None, "copy_share": None}
    # all references and the 8 orientations at once: [8, refs, size, size] (one shape per channel count)
    by_ch: dict[int, tuple[np.ndarray, np.ndarray]] = {}
    for ch in {ri.shape[-1] for ri, _ in refs}:
        keep = [(ri, rm) for ri, rm in refs if ri.shape[-1] == ch]
        by_ch[ch] = np.stack([ri for ri, _ in keep])[None], np.stack([rm for _, rm in keep])[None]
    dists = []
    for p in generated:
        g = _defect_crop(_field(p, "image"), _field(p, "mask"), size)
        if g is None or g[0].shape[-1] not in by_ch:
            continue
        ri, rm = by_ch[g[0].shape[-1]]
        turns = [(np.rot90(g[0], k % 4), np.rot90(g[1], k % 4)) for k in range(8)]
        turns = [(gi[:, ::-1], gm[:, ::-1]) if k >= 4 else (gi, gm) for k, (gi, gm) in enumerate(turns)]
        gi = np.stack([t[0] for t in turns])[:, None]
        gm = np.stack([t[1] for t in turns])[:, None]
        union = np.maximum(gm, rm) > 0.25                       # [8, refs, size, size]
        diff = np.abs(gi - ri).mean(axis=-1)
        n = union.sum(axis=(2, 3))
        if not n.any():
            continue
        d = (diff * union).sum(axis=(2, 3), dtype=np.float64) / np.maximum(n, 1)
        dists.append(float(d[n > 0].min()))
    if not dists:
        return {"copy_dist_mean": None, "copy_share": None}
    d = np.array(dists)
    return {"copy_dist_mean": float(d.mean()), "copy_share": float((d < threshold).mean())}


# --------------------------------------------------------------------------- weights
def _weights_path(path: str | None, field: str) -> Path | None:
    if path is None or path == "":
        log.info("%s not configured: metric skipped (None)", field)
        return None
    p = Path(path).expanduser()
    if not p.is_file():
        raise ValueError(f"{field} = {path!r}: no such file (weights are only loaded from local paths)")
    return p


def _load_state_dict(path: Path, field: str) -> dict:
    import torch

    try:
        sd = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001 - any unreadable file is the same user error
        raise ValueError(f"{field} = {str(path)!r}: cannot load a state dict ({err})") from err
    if isinstance(sd, Mapping) and isinstance(sd.get("state_dict"), Mapping):
        sd = sd["state_dict"]
    if not isinstance(sd, Mapping):
        raise ValueError(f"{field} = {str(path)!r}: not a state dict")
    return dict(sd)


def _to_tensor(images: Sequence[np.ndarray], size: int | None):
    """uint8 HxWx3 (or float [0,1]) images -> float tensor [N,3,H,W] in [0, 1]."""
    import torch
    import torch.nn.functional as F

    arr = np.stack([np.asarray(im) for im in images])
    if arr.ndim == 3:
        arr = np.repeat(arr[..., None], 3, axis=3)
    x = torch.from_numpy(np.ascontiguousarray(arr)).permute(0, 3, 1, 2).float()
    if np.issubdtype(arr.dtype, np.integer):
        x = x / 255.0
    if size is not None and tuple(x.shape[-2:]) != (size, size):
        # bilinear resizing can overshoot by an ulp; the networks expect exactly [0, 1]
        x = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False).clamp_(0.0, 1.0)
    return x


def inception_score_from_logits(logits: Any, splits: int = 10, seed: int = 2020) -> tuple[float, float]:
    """IS mean and std from classifier logits, as torch-fidelity computes it: shuffle with a
    fixed seed, ``splits`` chunks, exp(mean KL(p(y|x) || p(y))) per chunk, float64."""
    z = np.asarray(logits.detach().cpu().numpy() if hasattr(logits, "detach") else logits, np.float64)
    if z.ndim != 2 or z.shape[0] < 1:
        raise ValueError(f"logits must be [N, classes] with N >= 1, got {z.shape}")
    n = z.shape[0]
    splits = max(1, min(int(splits), n))
    z = z[np.random.RandomState(seed).permutation(n)]
    log_p = z - z.max(axis=1, keepdims=True)
    log_p -= np.log(np.exp(log_p).sum(axis=1, keepdims=True))
    p = np.exp(log_p)
    scores = []
    for i in range(splits):
        sl = slice(i * n // splits, (i + 1) * n // splits)
        log_q = np.log(p[sl].mean(axis=0, keepdims=True))
        scores.append(math.exp(float((p[sl] * (log_p[sl] - log_q)).sum(axis=1).mean())))
    return float(np.mean(scores)), float(np.std(scores))


@functools.lru_cache(maxsize=2)
def _inception_model(path: Path):
    from torchvision.models import inception_v3

    sd = _load_state_dict(path, "quality.inception_weights")
    classes = int(sd["fc.weight"].shape[0]) if "fc.weight" in sd else 1000
    model = inception_v3(weights=None, aux_logits=any(k.startswith("AuxLogits.") for k in sd),
                         transform_input=False, init_weights=False, num_classes=classes)
    try:
        res = model.load_state_dict(sd, strict=False)
        problem = [f"missing {k}" for k in res.missing_keys[:2]] + [f"unexpected {k}" for k in res.unexpected_keys[:2]]
    except RuntimeError as err:  # shape mismatch
        problem = [" ".join(str(err).split())[:200]]
    if problem:
        raise ValueError(f"quality.inception_weights = {str(path)!r}: not a torchvision inception_v3 "
                         f"state dict ({'; '.join(problem)})")
    return model.eval().requires_grad_(False)


def inception_score(images: Sequence[np.ndarray], weights_path: str | None, splits: int = 10,
                    batch_size: int = 16, device: str = "cpu") -> float | None:
    """Inception Score of ``images`` with a local torchvision inception_v3; None without a path.

    Images are resized to 299 (bilinear) and scaled to [-1, 1] as the Google weights expect.
    The score follows torch-fidelity's computation; the network is torchvision's port, so values
    can differ slightly from torch-fidelity's TF-ported network: say so beside published IS.
    """
    path = _weights_path(weights_path, "quality.inception_weights")
    if path is None:
        return None
    import torch

    model = _inception_model(path).to(device)
    logits = []
    with torch.no_grad():
        for i in range(0, len(images), batch_size):
            x = _to_tensor(images[i : i + batch_size], 299).to(device) * 2 - 1
            logits.append(model(x).double().cpu())
    return inception_score_from_logits(torch.cat(logits), splits=splits)[0]


def ic_lpips_from_distance(generated: Sequence[Any], centres: Sequence[Any],
                           distance: Callable[[list, list], Any], cap: int = 50,
                           rng: np.random.Generator | int | None = 0) -> float:
    """Intra-cluster pairwise distance (AnomalyDiffusion's IC-LPIPS with ``distance`` = LPIPS).

    Each generated item joins its nearest centre (the real few-shot anomalies; ties -> first
    centre); up to ``cap`` random members per cluster are compared over all unordered pairs;
    clusters with fewer than 2 members are dropped; the result is the mean over clusters (NaN if
    none is left). ``distance(a_list, b_list)`` returns one distance per aligned pair.
    """
    gen, cen = list(generated), list(centres)
    if not gen or not cen:
        raise ValueError("ic_lpips needs at least one generated item and one centre")
    rng = rng if isinstance(rng, np.random.Generator) else np.random.default_rng(rng)
    d = np.empty((len(gen), len(cen)))
    for j, c in enumerate(cen):
        d[:, j] = np.asarray(distance(gen, [c] * len(gen)), np.float64).reshape(-1)
    nearest = np.argmin(d, axis=1)
    means = []
    for j in range(len(cen)):
        members = np.flatnonzero(nearest == j)
        if members.size < 2:
            continue
        if members.size > cap:
            members = rng.choice(members, size=cap, replace=False)
        a, b = np.triu_indices(members.size, k=1)
        pd = np.asarray(distance([gen[i] for i in members[a]], [gen[i] for i in members[b]]), np.float64)
        means.append(float(pd.mean()))
    return float(np.mean(means)) if means else math.nan


def lpips_distance(weights_path: str | Path, net: str = "vgg", batch_size: int = 16, device: str = "cpu",
                   size: int | None = 256) -> Callable[[list, list], np.ndarray]:
    """An LPIPS callable for image lists, from a local backbone state dict (no download).

    The backbone is torchmetrics' LPIPS port with random init, then loaded from the torchvision
    state dict at ``weights_path``; the linear heads are those bundled with torchmetrics.
    Inputs are resized to ``size`` (AnomalyDiffusion: 256) and scaled to [-1, 1].
    """
    import torch
    from torchmetrics.functional.image.lpips import _LPIPS

    path = _weights_path(str(weights_path), "quality.lpips_weights")
    if net not in ("vgg", "alex", "squeeze"):
        raise ValueError(f"quality.lpips_net must be vgg, alex or squeeze, got {net!r}")
    sd = _load_state_dict(path, "quality.lpips_weights")
    model = _LPIPS(pretrained=True, net=net, pnet_rand=True)  # heads bundled, backbone random
    _load_backbone(model.net, sd, path)
    model = model.eval().requires_grad_(False).to(device)

    def distance(a: list, b: list) -> np.ndarray:
        if len(a) != len(b):
            raise ValueError(f"lpips: {len(a)} vs {len(b)} images")
        out = []
        with torch.no_grad():
            for i in range(0, len(a), batch_size):
                xa = _to_tensor(a[i : i + batch_size], size).to(device) * 2 - 1
                xb = _to_tensor(b[i : i + batch_size], size).to(device) * 2 - 1
                out.append(model(xa, xb).reshape(-1).double().cpu().numpy())
        return np.concatenate(out) if out else np.zeros(0)

    return distance


def _load_backbone(net_module, sd: dict, path: Path) -> None:
    """Copy torchvision ``features.<i>.*`` weights into the LPIPS slices (which keep index names)."""
    by_index: dict[int, Any] = {}
    import torch.nn as nn

    for mod in net_module.modules():
        if isinstance(mod, nn.Sequential):
            for name, child in mod.named_children():
                if name.isdigit():
                    by_index[int(name)] = child
    groups: dict[int, dict] = {}
    for key, value in sd.items():
        parts = key.split(".", 2)
        if len(parts) == 3 and parts[0] == "features" and parts[1].isdigit():
            groups.setdefault(int(parts[1]), {})[parts[2]] = value
    wanted = [i for i, m in by_index.items() if any(True for _ in m.parameters())]
    missing = [i for i in wanted if i not in groups]
    if missing:
        raise ValueError(f"quality.lpips_weights = {str(path)!r}: no weights for backbone layer(s) "
                         f"{', '.join(f'features.{i}' for i in missing[:3])} "
                         f"(is it the torchvision state dict of the chosen lpips_net?)")
    try:
        for i in wanted:
            by_index[i].load_state_dict(groups[i], strict=True)
    except RuntimeError as err:
        raise ValueError(f"quality.lpips_weights = {str(path)!r}: {str(err).splitlines()[0]}") from err


def ic_lpips(generated: Sequence[np.ndarray], real_centres: Sequence[np.ndarray], lpips_net_path: str | None,
             net: str = "vgg", cap: int = 50, seed: int = 0, batch_size: int = 16,
             device: str = "cpu") -> float | None:
    """IC-LPIPS (AnomalyDiffusion's definition) of one defect type; None without weights."""
    if _weights_path(lpips_net_path, "quality.lpips_weights") is None:
        return None
    dist = lpips_distance(lpips_net_path, net=net, batch_size=batch_size, device=device)
    return ic_lpips_from_distance(generated, real_centres, dist, cap=cap, rng=seed)


# --------------------------------------------------------------------------- report
def _field(p: Any, name: str) -> Any:
    return p[name] if isinstance(p, Mapping) else getattr(p, name)


def quality_report(pairs_by_defect: Mapping[str, Sequence[Any]], real_by_defect: Mapping[str, Sequence[Any]] | None,
                   sources: Mapping[str, Sequence[np.ndarray]] | None = None, cfg: Any = None) -> list[dict]:
    """One row per defect type of generated pairs (``Pair``: image, mask, defect_type).

    ``real_by_defect`` holds the real few-shot pairs (area reference and IC-LPIPS centres);
    ``sources`` the normal image each pair was edited from, aligned with the pairs, for
    generators that edit a normal image (else outside_change is None). IS / IC-LPIPS are None
    unless ``quality.inception_weights`` / ``quality.lpips_weights`` point to local files.
    """
    q = QualityConfig.of(cfg)
    # Fail on a bad path before any work, and say once that a metric is off.
    _weights_path(q.inception_weights, "quality.inception_weights")
    lpips_path = _weights_path(q.lpips_weights, "quality.lpips_weights")
    dist = lpips_distance(lpips_path, q.lpips_net, q.batch_size, q.device) if lpips_path else None
    real_by_defect = real_by_defect or {}
    rows = []
    for defect in sorted(pairs_by_defect):
        pairs = list(pairs_by_defect[defect])
        if not pairs:
            continue
        images = [np.asarray(_field(p, "image")) for p in pairs]
        masks = [np.asarray(_field(p, "mask")) for p in pairs]
        real = list(real_by_defect.get(defect, []))
        real_masks = [np.asarray(_field(p, "mask")) for p in real if _field(p, "mask") is not None]
        area = mask_area_stats(masks, real_masks or None)
        src = sources.get(defect) if sources else None
        row = {
            "defect_type": defect,
            "n": len(pairs),
            "binariness": mask_binariness(masks),
            "area_mean_gen": area["area_mean_gen"],
            "area_mean_real": area["area_mean_real"],
            "area_w1": area["area_w1"],
            "outside_change": outside_mask_change(images, src, masks, q.outside_tol) if src is not None else None,
            "mask_image_agreement": mask_image_agreement(images, src, masks, q.agreement_margin)
            if src is not None else None,
            **copy_distance(pairs, real, q.copy_size, q.copy_threshold),
            "is": inception_score(images, q.inception_weights, q.is_splits, q.batch_size, q.device)
            if q.inception_weights else None,
            "ic_lpips": None,
        }
        if dist is not None and real:
            value = ic_lpips_from_distance(images, [np.asarray(_field(p, "image")) for p in real], dist,
                                           cap=q.ic_lpips_cap, rng=q.seed)
            row["ic_lpips"] = None if math.isnan(value) else value
        rows.append(row)
    return rows
