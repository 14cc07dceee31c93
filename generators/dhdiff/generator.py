"""DH-Diff generators: ``dhdiff`` (DDA+SSM) and its Table VIII ablations, one class each.

fit() trains one model per category on the few-shot anomalies (or reuses a checkpoint in
FitData.work_dir whose key matches); generate() samples (image, mask) pairs from the same
denoising run. Tiny scale works in patch mode (see patches.py): the returned image is a normal
image changed only inside the dilated generated mask. The annotation map becomes a mask by
``patches.clean_mask`` (blur, threshold, drop specks, keep what touches the reference's raw mask,
fill holes; each step a config field, all off at the paper defaults). Empty masks are re-sampled
``max_retries`` times; after that the annotation map is thresholded at the quantile that gives
the reference defect's area, so every pair has a non-empty mask.

Quick-config choices for the CPU budget (configs/dhdiff_quick.yaml says which are on):
warm-up + cosine lr, v-prediction, SDEdit start (``strength`` < 1, see model.py; not in the
paper) and ``ref_augment`` (a random flip / 90-degree turn of each reference at generation,
for diversity when sampling starts near the reference).
"""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

import math

import cv2
import numpy as np
import torch

from generators import register_generator
from generators.base import FitData, Generator, Pair

from .config import DHDiffConfig
from .model import DHDiffModel
from .patches import clean_mask, composite, control_map, crop, defect_box, estimate_foreground, raw_mask


def _to_tensor(images: list[np.ndarray]) -> torch.Tensor:
    return torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2).float() / 127.5 - 1


def _masks(masks: list[np.ndarray]) -> torch.Tensor:
    return torch.from_numpy(np.stack(masks).astype(np.float32))[:, None]


def lr_factor(step: int, total: int, warmup: int = 0, schedule: str = "constant") -> float:
    """Multiplier of the base lr: linear warm-up over ``warmup`` steps, then constant or cosine to 0."""
    if warmup > 0 and step < warmup:
        return (step + 1) / warmup
    if schedule == "cosine":
        span = max(1, total - warmup)
        return 0.5 * (1 + math.cos(math.pi * min(1.0, (step - warmup) / span)))
    return 1.0


class DHDiffGenerator(Generator):
    variant = "dhdiff"
    needs_masks = True
    needs_anomalies = True
    edits_normal = True
    version = 2

    def __init__(self, **cfg):
        super().__init__(**cfg)
        self.config = DHDiffConfig.from_kwargs(**cfg)
        self.edits_normal = self.config.mode == "patch"
        self.model: DHDiffModel | None = None
        self.loss_history: list[float] = []
        self.key: str | None = None
        self.data: FitData | None = None
        self._fg: dict[int, np.ndarray] = {}

    # ---- data -------------------------------------------------------------------------------
    def cache_token(self) -> dict:
        return {"version": self.version, "variant": self.variant}

    def checkpoint_key(self, data: FitData) -> str:
        h = hashlib.sha256()
        h.update(json.dumps({"cfg": self.config.to_dict(), "variant": self.variant, "v": self.version,
                             "category": data.category, "defects": list(data.defect_types),
                             "size": data.image_size}, sort_keys=True, default=str).encode())
        for a in data.anomalies:
            h.update(a.defect_type.encode())
            h.update(np.ascontiguousarray(a.image).tobytes())
            h.update(np.ascontiguousarray(a.mask).tobytes())
        return h.hexdigest()[:20]

    def _pool(self, defect: str) -> list[Pair]:
        pool = [a for a in self.data.anomalies if a.defect_type == defect]
        if not pool:
            raise ValueError(f"dhdiff: no few-shot anomaly of defect type {defect!r} "
                             f"(have: {sorted({a.defect_type for a in self.data.anomalies})})")
        return pool

    def _res(self) -> int:
        c = self.config
        if c.mode == "patch":
            return c.patch_size
        return c.resolution or self.data.image_size

    def _example(self, a: Pair, rng: np.random.Generator | None, jitter: float):
        """(image crop uint8, mask crop bool, raw mask bool) at model resolution."""
        size = self._res()
        if self.config.mode == "patch":
            box = defect_box(a.mask, size, self.config.context, rng, jitter)
        else:
            box = (0, 0, min(a.mask.shape))
        im, mk = crop(a.image, a.mask.astype(bool), box, size)
        return im, mk, raw_mask(mk, self.config.raw_grid), box[2]

    def _train_batch(self, rng: np.random.Generator):
        c = self.config
        ims, mks, refs, ctl, has, defects = [], [], [], [], [], []
        for _ in range(c.batch_size):
            a = self.data.anomalies[rng.integers(len(self.data.anomalies))]
            im, mk, rm, _ = self._example(a, rng, c.jitter)
            if rng.random() < 0.5:
                im, mk, rm = im[:, ::-1], mk[:, ::-1], rm[:, ::-1]
            if rng.random() < 0.5:
                im, mk, rm = im[::-1], mk[::-1], rm[::-1]
            im, mk, rm = np.ascontiguousarray(im), np.ascontiguousarray(mk), np.ascontiguousarray(rm)
            use = rng.random() < c.control_prob
            kind = ("points", "mask", "raw")[rng.integers(3)]
            ctl.append(control_map(mk, kind, rng, c.raw_grid) if use else np.zeros(mk.shape, np.float32))
            has.append(use)
            ims.append(im)
            mks.append(mk)
            refs.append(rm)
            defects.append(a.defect_type)
        x = _to_tensor(ims)
        return x, _masks(mks), x * _masks(refs), _masks(ctl), torch.tensor(has), defects

    # ---- fit / checkpoints ---------------------------------------------------------------------
    def _build(self, categories: list[str], defects: list[str]) -> None:
        self.model = DHDiffModel(self.config, self.variant, categories, defects).place(
            self.data.device if self.data else "cpu")

    def fit(self, data: FitData, rng: np.random.Generator) -> None:
        if not data.anomalies:
            raise ValueError("dhdiff: FitData.anomalies is empty; DH-Diff learns from few-shot anomalies")
        for a in data.anomalies:
            if a.mask is None or not np.asarray(a.mask).any():
                raise ValueError(f"dhdiff: a few-shot anomaly of type {a.defect_type!r} has an empty mask")
        if not data.normals and self.config.mode == "patch":
            raise ValueError("dhdiff: patch mode needs FitData.normals to paste generated defects into")
        self.data, self._fg = data, {}
        key = self.checkpoint_key(data)
        if self.model is not None and self.key == key:
            return
        ckpt = Path(data.work_dir) / f"{self.variant}-{key}.pt" if data.work_dir else None
        if ckpt is not None and ckpt.exists():
            self.load(ckpt)
            if self.key == key:
                return
        defects = sorted({a.defect_type for a in data.anomalies} | set(data.defect_types))
        self._build([data.category], defects)
        self.train(rng)
        self.key = key
        if ckpt is not None:
            ckpt.parent.mkdir(parents=True, exist_ok=True)
            self.save(ckpt)

    def train(self, rng: np.random.Generator, steps: int | None = None) -> list[float]:
        c, model = self.config, self.model
        gen = torch.Generator().manual_seed(int(rng.integers(2**31)))
        opt = torch.optim.Adam(model.trainable_parameters(), lr=c.lr)
        n = c.steps if steps is None else steps
        sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda i: lr_factor(i, n, c.warmup, c.lr_schedule))
        model.train()
        cat = self.data.category
        for _ in range(n):
            x, m, ref, ctl, has, defects = self._train_batch(rng)
            dev = self.data.device
            loss = model.loss(x.to(dev), m.to(dev), ref.to(dev), [cat] * len(defects), defects,
                              ctl.to(dev), has.to(dev), generator=gen)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            self.loss_history.append(float(loss.detach()))
        model.eval()
        return self.loss_history

    def save(self, path: str | Path) -> None:
        if self.model is None:
            raise RuntimeError("dhdiff: nothing to save; call fit() first")
        p = self.model.prompt
        torch.save({"variant": self.variant, "version": self.version, "key": self.key,
                    "config": self.config.to_dict(), "loss_history": self.loss_history,
                    "categories": getattr(p, "categories", None), "defects": getattr(p, "defects", None),
                    "state": self.model.state_dict()}, Path(path))

    def load(self, path: str | Path) -> None:
        """Restore a checkpoint's weights (generate() still needs fit(data) for normals/references;
        fit() with a matching key then skips training)."""
        path = Path(path)
        if not path.exists():
            raise ValueError(f"dhdiff: checkpoint not found: {path}")
        ck = torch.load(path, map_location="cpu", weights_only=False)
        if ck.get("variant") != self.variant:
            raise ValueError(f"dhdiff: {path} holds variant {ck.get('variant')!r}, this is {self.variant!r}")
        self.config = DHDiffConfig.from_kwargs(**ck["config"])
        self._build(ck["categories"] or [], ck["defects"] or [])
        self.model.load_state_dict(ck["state"])
        if self.data is not None:
            self.model.place(self.data.device)
        self.model.eval()
        self.key, self.loss_history = ck["key"], list(ck["loss_history"])

    # ---- generation ------------------------------------------------------------------------------
    def _control(self, control, mk: np.ndarray, rng) -> np.ndarray | None:
        if control is None:
            return None
        if isinstance(control, str):
            return control_map(mk, control, rng, self.config.raw_grid)
        arr = np.asarray(control, np.float32)
        if arr.ndim != 2:
            raise ValueError("dhdiff: a control map must be a 2-D mask (HxW)")
        size = self._res()
        return (cv2.resize(arr, (size, size), interpolation=cv2.INTER_AREA) > 0.5).astype(np.float32)

    def _foreground(self, i: int) -> np.ndarray | None:
        if not self.data.is_object:
            return None
        if i not in self._fg:
            img = self.data.normals[i]
            fg = self.data.foreground(img) if self.data.foreground else estimate_foreground(img)
            self._fg[i] = np.asarray(fg, bool)
        return self._fg[i]

    def sample_patches(self, defect: str, refs: list[Pair], rng: np.random.Generator, control=None,
                       generator: torch.Generator | None = None):
        """Generate at model resolution for the given references: images uint8, masks bool, sides."""
        c, dev = self.config, self.data.device
        ims, mks, raws, ctl, has, areas, sides = [], [], [], [], [], [], []
        for a in refs:
            im, mk, rm, side = self._example(a, None, 0.0)
            if c.ref_augment:
                k, flip = int(rng.integers(4)), bool(rng.integers(2))
                im, mk, rm = (np.ascontiguousarray(np.rot90(v[:, ::-1] if flip else v, k)) for v in (im, mk, rm))
            cm = self._control(control, mk, rng)
            ims.append(im)
            mks.append(mk)
            raws.append(rm)
            ctl.append(cm if cm is not None else np.zeros(mk.shape, np.float32))
            has.append(cm is not None)
            areas.append(max(1, int(mk.sum())))
            sides.append(side)
        x = _to_tensor(ims)
        ref = x * _masks(raws)
        ctl_t, has_t = _masks(ctl).to(dev), torch.tensor(has, device=dev)
        kw = dict(control=ctl_t, has_control=has_t) if any(has) else {}
        if c.strength < 1:
            kw.update(init_image=x.to(dev), init_mask=_masks(mks).to(dev))
        cats = [self.data.category] * len(refs)
        gen = generator or torch.Generator().manual_seed(int(rng.integers(2**31)))
        img, ann = self.model.sample(ref.to(dev), cats, [defect] * len(refs), generator=gen, **kw)
        img, ann = img.cpu(), ann.cpu()

        def _mask(i: int) -> np.ndarray:
            return clean_mask(ann[i].numpy(), c.mask_threshold, c.mask_sigma, c.min_blob,
                              raws[i] if c.keep_near_ref else None, c.fill_holes)

        masks = [_mask(i) for i in range(len(refs))]
        for _ in range(c.max_retries):
            empty = [i for i in range(len(refs)) if not masks[i].any()]
            if not empty:
                break
            sub = {k: v[empty] for k, v in kw.items()}
            i2, a2 = self.model.sample(ref[empty].to(dev), [cats[0]] * len(empty), [defect] * len(empty),
                                       generator=gen, **sub)
            img[empty], ann[empty] = i2.cpu(), a2.cpu()
            for i in empty:
                masks[i] = _mask(i)
        for i in range(len(refs)):
            m = masks[i]
            if not m.any():  # fallback: the reference defect's area of the highest annotation values
                flat = ann[i].flatten()
                m = (ann[i] >= flat.topk(min(areas[i], flat.numel())).values[-1]).numpy()
            masks[i] = m
        images = ((img.permute(0, 2, 3, 1).numpy() + 1) * 127.5).round().clip(0, 255).astype(np.uint8)
        return list(images), masks, sides

    def generate(self, n: int, defect_type: str, rng: np.random.Generator, control=None) -> list[Pair]:
        """``control``: None, 'points' | 'mask' | 'raw' (derived from each reference's mask), or a
        2-D array (resized to the model canvas); defaults to config ``control``."""
        if self.model is None or self.data is None:
            raise RuntimeError("dhdiff: call fit(data) before generate() (a matching checkpoint is reused)")
        pool = self._pool(defect_type)
        control = self.config.control if control is None else control
        gen = torch.Generator().manual_seed(int(rng.integers(2**31)))
        out: list[Pair] = []
        size = self.data.image_size
        while len(out) < n:
            refs = [pool[i] for i in rng.integers(len(pool), size=min(self.config.sample_batch, n - len(out)))]
            images, masks, sides = self.sample_patches(defect_type, refs, rng, control, gen)
            for im, mk, side in zip(images, masks, sides):
                if self.config.mode == "full":
                    im = cv2.resize(im, (size, size), interpolation=cv2.INTER_LINEAR)
                    mk = cv2.resize(mk.astype(np.uint8), (size, size), interpolation=cv2.INTER_NEAREST) > 0
                    if not mk.any():
                        mk = cv2.resize(masks[0].astype(np.uint8), (size, size), interpolation=cv2.INTER_AREA) > 0
                    out.append(Pair(im, mk, defect_type))
                    continue
                res = None
                for _ in range(5):
                    j = int(rng.integers(len(self.data.normals)))
                    res = composite(self.data.normals[j], im, mk, side, rng, self._foreground(j), self.config.dilate)
                    if res is not None:
                        break
                if res is None:  # the foreground never met the mask: paste without the cut
                    res = composite(self.data.normals[j], im, mk, side, rng, None, self.config.dilate)
                out.append(Pair(res[0], res[1], defect_type, source=j))
        return out


@register_generator("dhdiff")
class DHDiff(DHDiffGenerator):
    """Full DH-Diff: DDA + SSM."""
    variant = "dhdiff"


@register_generator("dhdiff-dda")
class DHDiffDDA(DHDiffGenerator):
    """Ablation: DDA only (plain text cross-attention per stream)."""
    variant = "dhdiff-dda"


@register_generator("dhdiff-ssm")
class DHDiffSSM(DHDiffGenerator):
    """Ablation: SSM only (concatenation self-attention)."""
    variant = "dhdiff-ssm"


@register_generator("dhdiff-baseline")
class DHDiffBaseline(DHDiffGenerator):
    """Ablation baseline: concatenation attention, plain text cross-attention."""
    variant = "dhdiff-baseline"
