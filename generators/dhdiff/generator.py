"""DH-Diff generators: ``dhdiff`` (DDA+SSM), its Table VIII ablations, and ``dhdiff_sdedit``.

The model makes the pair (issue 10): sampling starts from pure noise in both streams, conditioned
on the reference r = x * m_raw (the coarse K x K raw mask, as in the paper), the prompt and the
optional control map. Nothing of the real detailed mask or the full real crop enters sampling.
The one exception is ``dhdiff_sdedit``, a separate generator that is NOT DH-Diff: it starts from
the reference pair (real crop and real mask) noised to ``strength`` < 1; with an untrained model
its masks are the few-shot masks (IoU 0.95), so it measures the set-up, not a model.

fit() trains one model per category on the few-shot anomalies AND the category's normal images
(crops with an empty annotation and the prompt's defect word "good"; paper: "50% of the
anomalous samples and all normal samples"), ``normal_share`` of each batch. Every weight
initialisation and every training draw comes from fit's ``rng``; the checkpoint in
FitData.work_dir is keyed by (resolved config, ablation, data, that seed).

Patch mode (tiny scale): crops of ``patch_size`` image pixels taken 1:1, never rescaled, so a
defect is generated at its final resolution and pasted back 1:1 (a small patch scaled up showed
as blocks). Defects larger than the patch are learned piecewise (training crops centre on a
random defect pixel) and generated up to the patch size.

The annotation map becomes a mask by ``patches.clean_mask`` (each step a config field, all off
by default). Empty masks are re-sampled ``max_retries`` times; after that the annotation map is
thresholded at the quantile that gives the reference defect's area (a "top-k fallback"). Both are
counted in ``stats()`` together with the components the clean-up dropped, so a record shows how
much of a column the fallbacks made.

Ablations (Table VIII): every registry name maps to an ``ablation`` key of processors.VARIANTS.
``baseline`` runs concatenation attention in every attention layer; ``dda``/``ssm``/``dda+ssm``
swap DDA and/or SSM into the placed blocks and keep the baseline's attention elsewhere. So the
streams of ``dhdiff_dda`` align only through the unplaced layers' concatenation attention (at the
quick config the decoder's unplaced attention block); with every block placed they cannot align
at all. Variants inherit ``generator_cfg.dhdiff`` through the ``base`` key (see ``variant_cfg``);
a different scale is refused. Seeds never depend on the registry name.

Opt-in shared prior (config ``prior``, default off; issue 13): fit() first loads the tiny prior
of generators.diffusion_prior (pretrained on the category's normals, cached beside work_dir,
seeded with the same first draw of fit's rng) into the U-Net and the condition encoder, then
trains as usual for ``steps``. The diffusion baselines inherit ``prior``, ``steps`` and
``ddim_steps`` from this generator's settings, so one preset puts all four on one prior and budget.
"""
from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Mapping
from dataclasses import asdict
from pathlib import Path

import cv2
import numpy as np
import torch

from benchmark.schema import ConfigError
from generators import common, register_generator
from generators.base import FitData, Generator, Pair

from .config import DHDiffConfig, inherit, resolve
from .model import DHDiffModel
from .patches import clean_mask, composite, control_map, crop, defect_box, raw_mask, resize_mask

NORMAL = "good"   # the defect word of normal training crops (empty annotation)


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


def variant_cfg(name: str, generator_cfg: Mapping) -> dict:
    """What the runner passes to ``create_generator(name, **...)`` given the whole
    ``generator_cfg`` section: for ablations, ``{"base": generator_cfg["dhdiff"], **own}``."""
    own = dict(generator_cfg.get(name) or {})
    if name != "dhdiff" and name.startswith("dhdiff") and "dhdiff" in generator_cfg:
        own.setdefault("base", dict(generator_cfg.get("dhdiff") or {}))
    return own


class DHDiffGenerator(Generator):
    ablation = "dda+ssm"         # key of processors.VARIANTS
    partial_noise = False        # only dhdiff_sdedit may start from the noised reference pair
    needs_masks = True
    needs_anomalies = True
    edits_normal = True
    version = 3
    config_class = DHDiffConfig

    @classmethod
    def missing_files(cls, resolved_cfg: Mapping, where: str) -> str | None:
        from generators.dhdiff.config import missing_local_files

        return missing_local_files(resolved_cfg, where)

    @classmethod
    def own_settings(cls, name: str, section: Mapping) -> dict:
        return variant_cfg(name, section)

    @classmethod
    def resolve_config(cls, cfg: dict, where: str, variant: str | None = None) -> DHDiffConfig:
        """Preset (quick YAML at tiny, SD_PRESET at sd) + ``base`` (generator_cfg.dhdiff, for the
        ablations) + the generator's own dict, built and checked. Idempotent on its own output."""
        cfg = dict(cfg or {})
        if "base" in cfg:
            base = cfg.pop("base")
            if base is not None and not isinstance(base, Mapping):
                raise ConfigError(f"{where}.base: expected the generator_cfg.dhdiff mapping, got {base!r}")
            cfg = inherit(base, cfg, where)
        if cls.partial_noise:
            cfg.setdefault("strength", 0.7)
        elif cfg.get("strength", 1.0) not in (1, 1.0, "1", "1.0"):
            raise ConfigError(f"{where}.strength: DH-Diff starts from pure noise (1.0), got "
                              f"{cfg['strength']!r}; the partial-noise start is the separate generator "
                              f"'dhdiff_sdedit' (not DH-Diff)")
        return resolve(cfg, where)

    # a few optimiser and sampling steps: enough for the registry contract tests to fit and sample
    contract_settings = {"steps": 3, "warmup": 0, "ddim_steps": 2, "sample_batch": 4}

    @property
    def edit_margin(self) -> int:
        """The composite blends over the mask dilated by ``dilate`` and blurred by as much again."""
        return 2 * self.config.dilate

    def __init__(self, **cfg):
        super().__init__(**cfg)     # -> resolve_config: self.config is the resolved DHDiffConfig
        self.edits_normal = self.config.mode == "patch"
        self.model: DHDiffModel | None = None
        self.loss_history: list[float] = []
        self.key: str | None = None
        self.data: FitData | None = None
        self._fg: dict[int, np.ndarray] = {}
        self._stats = self._zero_stats()

    # ---- bookkeeping ---------------------------------------------------------------------------
    @staticmethod
    def _zero_stats() -> dict:
        return {"samples": 0, "retries": 0, "topk_fallbacks": 0, "pieces_dropped": 0, "paste_without_fg": 0}

    def stats(self) -> dict:
        """Fallback counters since fit(): pairs sampled, re-samples of empty masks, top-k
        fallbacks, components the clean-up dropped, pastes that ignored the foreground."""
        return dict(self._stats)

    def cache_token(self) -> dict:
        return {"version": self.version, "ablation": self.ablation, "config": asdict(self.config)}

    def checkpoint_key(self, data: FitData, seed: int) -> str:
        h = hashlib.sha256()
        h.update(json.dumps({"cfg": asdict(self.config), "ablation": self.ablation, "v": self.version,
                             "seed": seed, "category": data.category, "defects": list(data.defect_types),
                             "size": data.image_size}, sort_keys=True, default=str).encode())
        for a in data.anomalies:
            h.update(a.defect_type.encode())
            h.update(np.ascontiguousarray(a.image).tobytes())
            h.update(np.ascontiguousarray(a.mask).tobytes())
        for n in data.normals:
            h.update(np.ascontiguousarray(n).tobytes())
        return h.hexdigest()[:20]

    # ---- data -------------------------------------------------------------------------------
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

    def _example(self, image: np.ndarray, mask: np.ndarray, rng: np.random.Generator | None, jitter: float):
        """(image crop uint8, mask crop bool, raw mask bool, crop side) at model resolution."""
        size = self._res()
        if self.config.mode == "patch":
            box = defect_box(mask, size, rng, jitter)
        else:
            box = (0, 0, min(mask.shape))
        im, mk = crop(image, mask.astype(bool), box, size)
        return im, mk, raw_mask(mk, self.config.raw_grid), box[2]

    def _normal_example(self, rng: np.random.Generator):
        """A normal crop with an empty annotation (and so an empty reference)."""
        n = self.data.normals[rng.integers(len(self.data.normals))]
        size = self._res()
        h, w = n.shape[:2]
        if self.config.mode == "patch":
            side = min(size, h, w)
            y0, x0 = int(rng.integers(h - side + 1)), int(rng.integers(w - side + 1))
            box = (y0, x0, side)
        else:
            box = (0, 0, min(h, w))
        im, mk = crop(n, np.zeros((h, w), bool), box, size)
        return im, mk, np.zeros_like(mk), box[2]

    def _train_batch(self, rng: np.random.Generator):
        c = self.config
        ims, mks, refs, ctl, has, defects = [], [], [], [], [], []
        for _ in range(c.batch_size):
            if self.data.normals and rng.random() < c.normal_share:
                im, mk, rm, _ = self._normal_example(rng)
                defect = NORMAL
            else:
                a = self.data.anomalies[rng.integers(len(self.data.anomalies))]
                im, mk, rm, _ = self._example(a.image, a.mask, rng, c.jitter)
                defect = a.defect_type
            if rng.random() < 0.5:
                im, mk, rm = im[:, ::-1], mk[:, ::-1], rm[:, ::-1]
            if rng.random() < 0.5:
                im, mk, rm = im[::-1], mk[::-1], rm[::-1]
            im, mk, rm = np.ascontiguousarray(im), np.ascontiguousarray(mk), np.ascontiguousarray(rm)
            use = mk.any() and rng.random() < c.control_prob
            kind = ("points", "mask", "raw")[rng.integers(3)]
            ctl.append(control_map(mk, kind, rng, c.raw_grid) if use else np.zeros(mk.shape, np.float32))
            has.append(bool(use))
            ims.append(im)
            mks.append(mk)
            refs.append(rm)
            defects.append(defect)
        x = _to_tensor(ims)
        return x, _masks(mks), x * _masks(refs), _masks(ctl), torch.tensor(has), defects

    # ---- fit / checkpoints ---------------------------------------------------------------------
    def _build(self, categories: list[str], defects: list[str], seed: int) -> None:
        """Every weight initialisation from ``seed`` (torch's global RNG is forked, not touched)."""
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            self.model = DHDiffModel(self.config, self.ablation, categories, defects)
        self.model.place(self.data.device if self.data else "cpu")

    def fit(self, data: FitData, rng: np.random.Generator) -> None:
        if not data.anomalies:
            raise ValueError("dhdiff: FitData.anomalies is empty; DH-Diff learns from few-shot anomalies")
        for a in data.anomalies:
            if a.mask is None or not np.asarray(a.mask).any():
                raise ValueError(f"dhdiff: a few-shot anomaly of type {a.defect_type!r} has an empty mask")
        if not data.normals and self.config.mode == "patch":
            raise ValueError("dhdiff: patch mode needs FitData.normals to paste generated defects into")
        self.data, self._fg, self._stats = data, {}, self._zero_stats()
        seed = int(rng.integers(2**63))
        key = self.checkpoint_key(data, seed)
        if self.model is not None and self.key == key:
            return
        ckpt = Path(data.work_dir) / f"dhdiff-{self.ablation.replace('+', '_')}-{key}.pt" if data.work_dir else None
        if ckpt is not None and ckpt.exists():
            self.load(ckpt)
            if self.key == key:
                return
        defects = sorted({a.defect_type for a in data.anomalies} | set(data.defect_types) | {NORMAL})
        self._build([data.category], defects, seed)
        if getattr(self.config, "prior", None) is not None:   # opt-in: start from the shared prior
            self._init_from_prior(data, seed)
        self.loss_history = []
        self.train(np.random.default_rng(seed))
        self.key = key
        if ckpt is not None:
            ckpt.parent.mkdir(parents=True, exist_ok=True)
            self.save(ckpt)

    def _init_from_prior(self, data: FitData, seed: int) -> None:
        """Opt-in (config ``prior``): the U-Net, the condition encoder (its Siamese copy) and the
        DDA annotation projections W^A start from the shared tiny prior (generators.diffusion_prior)
        pretrained on the normals with the same ``seed`` the baselines draw; the DH-Diff-only parts
        (zeta, eta, prompt tokens) keep their zero/seeded init. Then training fine-tunes everything."""
        from generators import diffusion_prior as dp

        prior = dp.load_prior(dp.backbone_of(self.config), self.config.prior, data, seed)
        state = prior.unet.state_dict()
        missing, unexpected = self.model.unet.load_state_dict(state, strict=False)
        if unexpected or any(".processor." not in k for k in missing):
            raise ValueError(f"dhdiff: the prior's U-Net does not match DH-Diff's (missing "
                             f"{[k for k in missing if '.processor.' not in k][:3]}, unexpected {unexpected[:3]})")
        self.model.cond.load_state_dict({k: v for k, v in state.items()
                                         if k.split(".", 1)[0] in ("conv_in", "time_embedding", "down_blocks")})
        for mod in self.model.unet.modules():
            proc = getattr(mod, "processor", None)
            if hasattr(proc, "to_q_a"):     # W^A starts as a copy of W^I, as without a prior
                proc.to_q_a.load_state_dict(mod.to_q.state_dict())
                proc.to_k_a.load_state_dict(mod.to_k.state_dict())
                proc.to_v_a.load_state_dict(mod.to_v.state_dict())
        self.model.place(data.device)
        self.prior_source = prior.source

    def train(self, rng: np.random.Generator, steps: int | None = None) -> list[float]:
        c, model = self.config, self.model
        gen = torch.Generator().manual_seed(int(rng.integers(2**63)))
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
        torch.save({"ablation": self.ablation, "version": self.version, "key": self.key,
                    "config": asdict(self.config), "loss_history": self.loss_history,
                    "categories": getattr(p, "categories", None), "defects": getattr(p, "defects", None),
                    "state": self.model.state_dict()}, Path(path))

    def load(self, path: str | Path) -> None:
        """Restore a checkpoint's weights (generate() still needs fit(data) for normals/references;
        fit() with a matching key then skips training)."""
        path = Path(path)
        if not path.exists():
            raise ValueError(f"dhdiff: checkpoint not found: {path}")
        ck = torch.load(path, map_location="cpu", weights_only=False)
        if ck.get("ablation") != self.ablation:
            raise ValueError(f"dhdiff: {path} holds ablation {ck.get('ablation')!r}, this is {self.ablation!r}")
        self.config = resolve(ck["config"], f"{path}: config")
        self._build(ck["categories"] or [], ck["defects"] or [], 0)
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
            # the one foreground estimate every generator uses (generators.common)
            self._fg[i] = common.checked_foreground(common.foreground_fn(self.data), img)
        return self._fg[i]

    def sample_patches(self, defect: str, refs: list[Pair], rng: np.random.Generator, control=None,
                       generator: torch.Generator | None = None, clean: bool = True):
        """Generate at model resolution for the given references: images uint8, masks bool,
        crop sides, raw annotation maps [-1, 1], and the reference crops' real masks (the last
        two for studies: IoU against the reference, agreement with clean-up off).

        Sampling sees the reference r = crop * raw mask, the prompt and the optional control;
        the real detailed mask only sizes the top-k fallback (counted in ``stats()``) and, for
        ``dhdiff_sdedit`` only, the partial-noise start."""
        c, dev = self.config, self.data.device
        ims, mks, raws, ctl, has, areas, sides = [], [], [], [], [], [], []
        for a in refs:
            im, mk, rm, side = self._example(a.image, a.mask, None, 0.0)
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
        if c.strength < 1:   # dhdiff_sdedit only (refused for DH-Diff in __init__)
            kw.update(init_image=x.to(dev), init_mask=_masks(mks).to(dev))
        cats = [self.data.category] * len(refs)
        gen = generator or torch.Generator().manual_seed(int(rng.integers(2**63)))
        img, ann = self.model.sample(ref.to(dev), cats, [defect] * len(refs), generator=gen, **kw)
        img, ann = img.cpu(), ann.cpu()
        self._stats["samples"] += len(refs)
        if not clean:
            masks = [(ann[i] > c.mask_threshold).numpy() for i in range(len(refs))]
        else:
            def _mask(i: int) -> np.ndarray:
                return clean_mask(ann[i].numpy(), c.mask_threshold, c.mask_sigma, c.min_blob,
                                  raws[i] if c.keep_near_ref else None, c.fill_holes, self._stats)

            masks = [_mask(i) for i in range(len(refs))]
            for _ in range(c.max_retries):
                empty = [i for i in range(len(refs)) if not masks[i].any()]
                if not empty:
                    break
                self._stats["retries"] += len(empty)
                sub = {k: v[empty] for k, v in kw.items()}
                i2, a2 = self.model.sample(ref[empty].to(dev), [cats[0]] * len(empty), [defect] * len(empty),
                                           generator=gen, **sub)
                img[empty], ann[empty] = i2.cpu(), a2.cpu()
                for i in empty:
                    masks[i] = _mask(i)
            for i in range(len(refs)):
                if not masks[i].any():  # fallback: the reference defect's area of the highest annotation values
                    self._stats["topk_fallbacks"] += 1
                    flat = ann[i].flatten()
                    masks[i] = (ann[i] >= flat.topk(min(areas[i], flat.numel())).values[-1]).numpy()
        images = ((img.permute(0, 2, 3, 1).numpy() + 1) * 127.5).round().clip(0, 255).astype(np.uint8)
        return list(images), masks, sides, ann.numpy(), mks

    def generate(self, n: int, defect_type: str, rng: np.random.Generator, control=None) -> list[Pair]:
        """``control``: None, 'points' | 'mask' | 'raw' (derived from each reference's mask), or a
        2-D array (resized to the model canvas); defaults to config ``control``."""
        if self.model is None or self.data is None:
            raise RuntimeError("dhdiff: call fit(data) before generate() (a matching checkpoint is reused)")
        pool = self._pool(defect_type)
        control = self.config.control if control is None else control
        gen = torch.Generator().manual_seed(int(rng.integers(2**63)))
        out: list[Pair] = []
        size = self.data.image_size
        while len(out) < n:
            refs = [pool[i] for i in rng.integers(len(pool), size=min(self.config.sample_batch, n - len(out)))]
            images, masks, sides, _, _ = self.sample_patches(defect_type, refs, rng, control, gen)
            for im, mk, side in zip(images, masks, sides):
                if self.config.mode == "full":
                    if im.shape[0] != size:
                        im = cv2.resize(im, (size, size), interpolation=cv2.INTER_AREA if im.shape[0] > size
                                        else cv2.INTER_LINEAR)
                    out.append(Pair(im, resize_mask(mk, size), defect_type))
                    continue
                res = None
                for _ in range(5):
                    j = int(rng.integers(len(self.data.normals)))
                    res = composite(self.data.normals[j], im, mk, side, rng, self._foreground(j), self.config.dilate)
                    if res is not None:
                        break
                if res is None:  # the foreground never met the mask: paste without the cut
                    self._stats["paste_without_fg"] += 1
                    res = composite(self.data.normals[j], im, mk, side, rng, None, self.config.dilate)
                out.append(Pair(res[0], res[1], defect_type, source=j))
        return out


@register_generator("dhdiff")
class DHDiff(DHDiffGenerator):
    """Full DH-Diff: DDA + SSM in the placed blocks."""
    ablation = "dda+ssm"


@register_generator("dhdiff_dda")
class DHDiffDDA(DHDiffGenerator):
    """Table VIII ablation: DDA in the placed blocks, plain text cross-attention, concat elsewhere."""
    ablation = "dda"


@register_generator("dhdiff_ssm")
class DHDiffSSM(DHDiffGenerator):
    """Table VIII ablation: SSM in the placed blocks, concatenation self-attention everywhere."""
    ablation = "ssm"


@register_generator("dhdiff_baseline")
class DHDiffBaseline(DHDiffGenerator):
    """Table VIII baseline: concatenation attention in every attention layer, plain text attention."""
    ablation = "baseline"


@register_generator("dhdiff_sdedit")
class DHDiffSDEdit(DHDiffGenerator):
    """NOT DH-Diff: the DH-Diff network sampled SDEdit-style from the reference pair (real crop
    and real mask) noised to ``strength`` (default 0.7). A CPU shortcut kept for comparison; with
    an untrained model its masks are the few-shot masks, so it measures the set-up."""
    ablation = "dda+ssm"
    partial_noise = True


def _aliases() -> None:
    """Old hyphenated names keep working (with a DeprecationWarning) where the registry can alias."""
    from generators import GENERATORS
    alias = getattr(GENERATORS, "alias", None)
    if alias is None:   # TODO(lead): Registry.alias not there yet; old names dhdiff-* are gone until it is
        return
    for old, new in (("dhdiff-dda", "dhdiff_dda"), ("dhdiff-ssm", "dhdiff_ssm"),
                     ("dhdiff-baseline", "dhdiff_baseline")):
        alias(old, new)


_aliases()
