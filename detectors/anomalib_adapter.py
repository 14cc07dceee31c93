"""anomalib image models as helixbench detectors, trained from in-memory arrays, read out raw.

One registry family entry, ``anomalib:<Model>`` (``anomalib:Padim``, ``anomalib:Patchcore``,
``anomalib:EfficientAd``, ``anomalib:Supersimplenet``, ``anomalib:Draem``, ...). anomalib is our
model zoo only (EVALUATION.md): every model is built with ``post_processor=False``,
``evaluator=False`` and ``visualizer=False``, trained by a bare Lightning ``Trainer`` (no logger,
no checkpoints, no validation loop, so nothing is normalised, thresholded or selected on any
evaluation data), and ``predict`` returns the torch model's own ``pred_score`` / ``anomaly_map``.

Why not the anomalib ``Engine``: it wires in the datamodule's validation split (the test set for
MVTec-style data), the normalising post-processor and the metric path we refuse to use.

Downloads never happen: with ``pre_trained=True`` the backbone weights must already be on disk
(the error names the file and the folder); with ``pre_trained=False`` every timm backbone is built
randomly initialised, which is what the tests use.
"""
from __future__ import annotations

import contextlib
import dataclasses
import importlib
import inspect
import logging
import os
import sys
import tempfile
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from generators.base import Pair

from . import register_detector
from .base import Detector, DetectorContext

# anomalib components the adapter owns: a caller must not switch them back on
_MANAGED = ("pre_processor", "post_processor", "evaluator", "visualizer")
# anomalib trainer_arguments we honour; everything else (devices, val intervals...) is ours
# smallest input side that works: SSN's feature-level Perlin masks need a 32-px feature map,
# EfficientAd's autoencoder is built for 256 px
_MIN_SIZE = {"Supersimplenet": 128, "EfficientAd": 256}
# Lightning warnings that are expected here (no optimiser for memory banks, no logger, frozen
# backbones in eval mode, anomalib's self.log without batch_size)
_LIGHTNING_NOISE = (".*configure_optimizers.*", ".*module\\(s\\) in eval mode.*", ".*no logger configured.*",
                    ".*infer the `batch_size`.*", ".*LeafSpec.*")
_TRAINER_KEYS = ("gradient_clip_val", "gradient_clip_algorithm", "accumulate_grad_batches", "max_steps")


class MissingWeightsError(FileNotFoundError):
    """Pre-trained weights (or an auxiliary data set) are not on disk and we never download."""


@dataclass
class AnomalibOptions:
    """Adapter options, read from the same cfg as the model kwargs (the rest go to the model)."""

    max_epochs: int | None = None   # None: the model's own trainer_arguments value, else 1
    batch_size: int = 8             # EfficientAd is forced to 1, as anomalib requires
    pre_trained: bool = True        # False: random backbones (tests, offline smoke runs)
    image_size: int | None = None   # model input side; None: ctx.image_size
    pair_probability: float = 0.5   # Draem: chance a training image gets a pair pasted in (DRAEM's 0.5)
    predict_batch_size: int = 16

    def __post_init__(self) -> None:
        for key in ("max_epochs", "batch_size", "image_size", "predict_batch_size"):
            value = getattr(self, key)
            if value is not None and (not isinstance(value, int) or isinstance(value, bool) or value < 1):
                raise ValueError(f"anomalib adapter option {key!r}: expected a positive int, got {value!r}")
        if not 0.0 <= float(self.pair_probability) <= 1.0:
            raise ValueError(f"anomalib adapter option 'pair_probability': expected [0, 1], got {self.pair_probability!r}")


_OPTION_FIELDS = {f.name for f in dataclasses.fields(AnomalibOptions)}


def image_model_names() -> list[str]:
    """anomalib's image model class names (video models excluded)."""
    return list(importlib.import_module("anomalib.models.image").__all__)


def _resolve_model_class(model_name: str) -> type:
    names = image_model_names()
    match = [n for n in names if n == model_name] or [n for n in names if n.lower() == model_name.lower()]
    if not match:
        raise ValueError(f"unknown anomalib model {model_name!r}; anomalib image models: {', '.join(names)}")
    return getattr(importlib.import_module("anomalib.models.image"), match[0])


def _check_model_kwargs(model_cls: type, kwargs: dict[str, Any]) -> None:
    """Unknown or adapter-managed fields -> ValueError naming the model and the field."""
    name = f"anomalib:{model_cls.__name__}"
    params = inspect.signature(model_cls.__init__).parameters
    has_var_kw = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())
    fields = [p for p in params if p not in ("self", *_MANAGED)]
    for key in kwargs:
        if key in _MANAGED:
            raise ValueError(f"{name}: option {key!r} is managed by the adapter (raw outputs only)")
        if key not in fields and not has_var_kw:
            raise ValueError(
                f"{name}: unknown option {key!r}; model fields: {', '.join(fields)}; "
                f"adapter options: {', '.join(sorted(_OPTION_FIELDS))}"
            )


# ----------------------------------------------------------------------------- weights / offline


def weight_locations() -> dict[str, Path]:
    """Where timm / torch hub look for weights now (read at call time: env vars are honoured)."""
    import huggingface_hub.constants as hf_constants

    return {"hf_cache": Path(hf_constants.HF_HUB_CACHE), "torch_hub": Path(torch.hub.get_dir()) / "checkpoints"}


def _require_timm_weights(model_name: str) -> None:
    """Raise MissingWeightsError unless timm can load ``model_name``'s weights from disk."""
    import timm
    from timm.models import _builder

    cfg = timm.models.get_pretrained_cfg(model_name)
    if cfg is None:
        return  # no pretrained config: timm itself will say so
    source, loc = _builder._resolve_pretrained_source(cfg.to_dict())
    where = weight_locations()
    if source == "hf-hub":
        from huggingface_hub import try_to_load_from_cache

        repo, files = (loc, ("model.safetensors", "pytorch_model.bin")) if isinstance(loc, str) else (loc[0], (loc[1],))
        for fname in files:
            hit = try_to_load_from_cache(repo, fname, cache_dir=where["hf_cache"])
            if isinstance(hit, str) and os.path.exists(hit):
                return
        raise MissingWeightsError(
            f"pre-trained weights for timm model {model_name!r} are not on disk and downloads are off: "
            f"place {files[0]} of https://huggingface.co/{repo} in the Hugging Face cache "
            f"{where['hf_cache'] / ('models--' + repo.replace('/', '--'))}/snapshots/<revision>/ "
            f"(e.g. `huggingface-cli download {repo} {files[0]}` on a connected machine, then copy "
            f"the cache folder), or pass pre_trained=False"
        )
    if source == "url":
        target = where["torch_hub"] / os.path.basename(loc)
        if not target.exists():
            raise MissingWeightsError(
                f"pre-trained weights for timm model {model_name!r} are not on disk and downloads are off: "
                f"place {loc} at {target}, or pass pre_trained=False"
            )
    elif source == "file" and not Path(loc).exists():
        raise MissingWeightsError(f"pre-trained weights file {loc} for timm model {model_name!r} does not exist")


def _refuse_torch_download(url: str, dst: str, *args, **kwargs) -> None:
    raise MissingWeightsError(f"{url} is not on disk and downloads are off: place it at {dst}")


def _refuse_anomalib_download(root: Path, info: Any) -> None:
    raise MissingWeightsError(
        f"anomalib wants {info.name} ({info.url}) and downloads are off: extract it under {root}"
    )


@contextlib.contextmanager
def _no_downloads(pre_trained: bool, model_cls: type) -> Iterator[None]:
    """Force timm backbones random (pre_trained=False) or check their weights are local; refuse
    every torch-hub, Hugging Face and anomalib download while building or training a model."""
    import huggingface_hub.constants as hf_constants
    import timm

    original = timm.create_model

    def create_model(name: str, pretrained: bool = False, **kwargs):
        if pretrained and pre_trained:
            _require_timm_weights(name)
        return original(name, pretrained=pretrained and pre_trained, **kwargs)

    model_module = sys.modules[model_cls.__module__]
    with contextlib.ExitStack() as stack:
        patch = stack.enter_context(_Patcher())
        patch(timm, "create_model", create_model)
        patch(torch.hub, "download_url_to_file", _refuse_torch_download)
        patch(hf_constants, "HF_HUB_OFFLINE", True)
        if hasattr(model_module, "download_and_extract"):
            patch(model_module, "download_and_extract", _refuse_anomalib_download)
        yield


class _Patcher:
    """A tiny setattr-and-restore helper (unittest.mock.patch would do, this keeps it explicit)."""

    def __enter__(self):
        self._saved: list[tuple[Any, str, Any]] = []
        return self

    def __call__(self, obj: Any, attr: str, value: Any) -> None:
        self._saved.append((obj, attr, getattr(obj, attr)))
        setattr(obj, attr, value)

    def __exit__(self, *exc) -> None:
        for obj, attr, value in reversed(self._saved):
            setattr(obj, attr, value)


# ----------------------------------------------------------------------------- data


def _as_images(arr: Any, field: str) -> np.ndarray:
    if not isinstance(arr, np.ndarray) or arr.ndim != 4 or arr.shape[-1] != 3 or arr.dtype != np.uint8:
        desc = f"{arr.dtype} {arr.shape}" if isinstance(arr, np.ndarray) else type(arr).__name__
        raise ValueError(f"{field}: expected uint8 array [N,H,W,3], got {desc}")
    if len(arr) == 0:
        raise ValueError(f"{field}: empty")
    return arr


def _to_tensor(images: np.ndarray, size: int) -> torch.Tensor:
    """uint8 [N,H,W,3] -> float [N,3,size,size] in [0,1] (bilinear, antialiased)."""
    x = torch.from_numpy(np.ascontiguousarray(images)).permute(0, 3, 1, 2).float() / 255.0
    if x.shape[-2:] != (size, size):
        x = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False, antialias=True)
    return x


def _masks_to_tensor(masks: np.ndarray, size: int) -> torch.Tensor:
    """bool [N,H,W] -> bool [N,size,size] (nearest)."""
    m = torch.from_numpy(np.ascontiguousarray(masks, dtype=np.float32))[:, None]
    if m.shape[-2:] != (size, size):
        m = F.interpolate(m, size=(size, size), mode="nearest")
    return m[:, 0] > 0.5


def _pairs_arrays(pairs: list[Pair], field: str) -> tuple[np.ndarray, np.ndarray]:
    if not pairs:
        raise ValueError(f"{field}: this model trains on generated pairs but none were given")
    shapes = {p.image.shape for p in pairs}
    if len(shapes) != 1:
        raise ValueError(f"{field}: pair images differ in shape: {sorted(shapes)}")
    images = _as_images(np.stack([p.image for p in pairs]), f"{field}.image")
    masks = np.stack([np.asarray(p.mask) for p in pairs])
    if masks.shape != images.shape[:3]:
        raise ValueError(f"{field}.mask: shape {masks.shape[1:]} does not match image {images.shape[1:3]}")
    return images, masks.astype(bool)


class _Collate:
    """Index list -> anomalib ImageBatch (picklable, so worker processes would also work)."""

    def __init__(self, images: torch.Tensor, labels: torch.Tensor, masks: torch.Tensor):
        self.images, self.labels, self.masks = images, labels, masks

    def __call__(self, idx: list[int]):
        from anomalib.data import ImageBatch

        i = torch.as_tensor(idx)
        return ImageBatch(image=self.images[i], gt_label=self.labels[i], gt_mask=self.masks[i])


def _make_datamodule(images: torch.Tensor, labels: torch.Tensor, masks: torch.Tensor,
                     batch_size: int, seed: int):
    """The smallest LightningDataModule anomalib models accept (EfficientAd reads
    ``trainer.datamodule``); its "validation" loader is the training normals, never test data."""
    from lightning.pytorch import LightningDataModule
    from torch.utils.data import DataLoader

    collate = _Collate(images, labels, masks)
    normal_idx = torch.nonzero(labels == 0).flatten().tolist()

    class _ArrayDataModule(LightningDataModule):
        train_batch_size = batch_size

        def train_dataloader(self):
            gen = torch.Generator().manual_seed(seed)
            return DataLoader(range(len(images)), batch_size=batch_size, shuffle=True,
                              generator=gen, collate_fn=collate)

        def val_dataloader(self):
            return DataLoader(normal_idx, batch_size=batch_size, shuffle=False, collate_fn=collate)

    return _ArrayDataModule()


# ----------------------------------------------------------------------------- DRAEM from pairs


class PairAugmenter(nn.Module):
    """Stands in for DRAEM's ``PerlinAnomalyGenerator``: same call (``img [B,3,h,w] ->
    (augmented, mask [B,1,h,w])``), but the anomaly comes from a generated pair: with probability
    ``p`` the pair's pixels inside its mask are pasted onto the batch image at the same place.
    The clean batch image stays the reconstruction target, so DRAEM's L2 + SSIM + focal training
    is otherwise unchanged."""

    def __init__(self, images: torch.Tensor, masks: torch.Tensor, probability: float, seed: int):
        super().__init__()
        self.register_buffer("pair_images", images, persistent=False)
        self.register_buffer("pair_masks", masks.float()[:, None], persistent=False)
        self.probability = probability
        self.generator = torch.Generator().manual_seed(seed)

    def forward(self, img: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        b = img.shape[0]
        pick = torch.randint(len(self.pair_images), (b,), generator=self.generator).to(img.device)
        keep = (torch.rand(b, generator=self.generator) < self.probability).to(img)
        mask = self.pair_masks[pick] * keep.view(b, 1, 1, 1)
        return img * (1 - mask) + self.pair_images[pick] * mask, mask


# ----------------------------------------------------------------------------- the detector


def _accelerator(device: str) -> dict[str, Any]:
    if device.startswith("cuda"):
        idx = device.split(":", 1)[1] if ":" in device else None
        return {"accelerator": "gpu", "devices": [int(idx)] if idx else 1}
    return {"accelerator": device.split(":", 1)[0], "devices": 1}


@register_detector("anomalib:*")
class AnomalibDetector(Detector):
    """``anomalib:<Model>``: cfg keys that are AnomalibOptions fields configure the adapter, the
    rest go to the anomalib model constructor.

    Unsupervised models (Padim, Patchcore, EfficientAd, ...) see normal images only
    (``uses_pairs = False``). ``Supersimplenet`` defaults to its supervised mode (``supervised=True``)
    and trains on normals (label 0, empty mask) plus the pairs (label 1, their masks).
    ``Draem``'s Perlin/DTD augmenter is replaced by a PairAugmenter over the pairs handed to fit()
    (see PairAugmenter); no DTD folder is needed.
    EfficientAd with ``pre_trained=False`` skips the teacher weights and uses the training normals
    in place of ImageNette for the penalty loss (smoke-test mode, not the paper's model).
    """

    @classmethod
    def resolve_config(cls, cfg: dict, where: str, variant: str | None = None) -> dict:
        """Adapter options filled in and checked, model kwargs checked against the model class
        (when ``variant``, the model name, is known); a ConfigError naming the key otherwise."""
        from benchmark.schema import ConfigError, build

        opts = build(AnomalibOptions, {k: v for k, v in cfg.items() if k in _OPTION_FIELDS}, where)
        kwargs = {k: v for k, v in cfg.items() if k not in _OPTION_FIELDS}
        if variant is not None:
            try:
                _check_model_kwargs(_resolve_model_class(variant), kwargs)
            except ValueError as e:
                raise ConfigError(f"{where}: {e}") from None
        return {**dataclasses.asdict(opts), **kwargs}

    def __init__(self, model_name: str, **cfg):
        super().__init__(**cfg)
        opts = {k: v for k, v in cfg.items() if k in _OPTION_FIELDS}
        self.model_kwargs = {k: v for k, v in cfg.items() if k not in _OPTION_FIELDS}
        self.options = AnomalibOptions(**opts)
        self.model_cls = _resolve_model_class(model_name)
        self.model_name = self.model_cls.__name__
        _check_model_kwargs(self.model_cls, self.model_kwargs)
        if self.model_name == "Draem" and ({"dtd_dir", "beta"} & set(self.model_kwargs)):
            raise ValueError("anomalib:Draem: dtd_dir / beta configure the Perlin augmenter, which the "
                             "adapter replaces with the generator's pairs")
        if self.model_name == "Supersimplenet":
            self.model_kwargs.setdefault("supervised", True)
        if self.model_name == "EfficientAd":
            if "batch_size" in opts and self.options.batch_size != 1:
                raise ValueError("anomalib:EfficientAd: batch_size must be 1 (anomalib requires it)")
            self.options.batch_size = 1
        self.uses_pairs = self.model_name == "Draem" or bool(
            self.model_name == "Supersimplenet" and self.model_kwargs["supervised"])
        self.model = None
        self._size: int | None = None

    @property
    def name(self) -> str:
        return f"anomalib:{self.model_name}"

    def _build(self, size: int, work_dir: Path) -> Any:
        cls = self.model_cls
        kwargs = dict(self.model_kwargs)
        params = inspect.signature(cls.__init__).parameters
        if "pre_trained" in params:
            kwargs["pre_trained"] = self.options.pre_trained
        if self.model_name == "Draem":  # an existing empty folder: the Perlin source is never used
            kwargs["dtd_dir"] = work_dir / "draem_unused_dtd"
            kwargs["dtd_dir"].mkdir(parents=True, exist_ok=True)
        pre = cls.configure_pre_processor(image_size=(size, size))
        try:
            with _no_downloads(self.options.pre_trained, cls):
                return cls(**kwargs, pre_processor=pre, post_processor=False, evaluator=False, visualizer=False)
        except MissingWeightsError as e:
            raise MissingWeightsError(f"{self.name}: {e}") from None
        except (TypeError, ValueError, RuntimeError) as e:  # e.g. timm's "Unknown model (...)"
            raise ValueError(f"{self.name}: bad option value: {e}") from e

    def fit(self, normals: np.ndarray, pairs: list[Pair], ctx: DetectorContext) -> None:
        from lightning.pytorch import Trainer, seed_everything

        normals = _as_images(normals, "normals")
        size = self._size = int(self.options.image_size or ctx.image_size)
        if size < _MIN_SIZE.get(self.model_name, 1):
            raise ValueError(f"{self.name}: image_size {size} is below the model's minimum "
                             f"{_MIN_SIZE[self.model_name]} (its layers or Perlin masks need it)")
        if self.uses_pairs:
            p_img, p_mask = _pairs_arrays(pairs, "pairs")
        seed_everything(ctx.seed, verbose=False)
        tmp = None
        work_dir = Path(ctx.work_dir) if ctx.work_dir else Path(tmp := tempfile.mkdtemp(prefix="anomalib_"))
        model = self._build(size, work_dir)

        images = _to_tensor(normals, size)
        labels = torch.zeros(len(images), dtype=torch.long)
        masks = torch.zeros(len(images), size, size, dtype=torch.bool)
        if self.uses_pairs:
            p_img_t, p_mask_t = _to_tensor(p_img, size), _masks_to_tensor(p_mask, size)
            if self.model_name == "Draem":
                model.augmenter = PairAugmenter(p_img_t, p_mask_t, self.options.pair_probability, ctx.seed)
            else:
                images = torch.cat([images, p_img_t])
                labels = torch.cat([labels, torch.ones(len(p_img_t), dtype=torch.long)])
                masks = torch.cat([masks, p_mask_t])
        if self.model_name == "EfficientAd" and not self.options.pre_trained:
            _efficientad_offline(model, images[labels == 0])

        dm = _make_datamodule(images, labels, masks, self.options.batch_size, ctx.seed)
        quiet = logging.getLogger("lightning.pytorch")  # no "GPU available" banners per cell
        level = quiet.level
        quiet.setLevel(logging.WARNING)
        targs = dict(model.trainer_arguments)
        max_epochs = self.options.max_epochs or targs.get("max_epochs") or 1
        trainer = Trainer(
            **_accelerator(ctx.device), max_epochs=max_epochs,
            logger=False, enable_checkpointing=False, enable_progress_bar=False,
            enable_model_summary=False, num_sanity_val_steps=0, limit_val_batches=0,
            default_root_dir=str(work_dir),
            **{k: v for k, v in targs.items() if k in _TRAINER_KEYS},
        )
        try:
            with _no_downloads(self.options.pre_trained, self.model_cls), warnings.catch_warnings():
                for msg in _LIGHTNING_NOISE:
                    warnings.filterwarnings("ignore", message=msg)
                trainer.fit(model, datamodule=dm)
                if hasattr(model, "map_norm_quantiles"):  # EfficientAd: map quantiles on training normals
                    model.model.quantiles.update(model.map_norm_quantiles(dm.val_dataloader()))
        except MissingWeightsError as e:
            raise MissingWeightsError(f"{self.name}: {e}") from None
        finally:
            quiet.setLevel(level)
            if tmp:
                import shutil

                shutil.rmtree(tmp, ignore_errors=True)
        self._device = torch.device(ctx.device)  # Lightning's teardown may have moved it to CPU
        self.model = model.to(self._device).eval()

    @torch.no_grad()
    def raw_forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Model-size float batch in [0,1] -> the torch model's own (pred_score, anomaly_map)."""
        x = self.model.pre_processor.transform(x) if self.model.pre_processor else x
        out = self.model.model(x.to(self._device))
        return out.pred_score, out.anomaly_map

    def predict(self, images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        if self.model is None:
            raise RuntimeError(f"{self.name}: predict() before fit()")
        images = _as_images(images, "images")
        n, h, w = images.shape[:3]
        self.model.eval()
        scores, maps = [], []
        bs = self.options.predict_batch_size
        for start in range(0, n, bs):
            x = _to_tensor(images[start:start + bs], self._size)
            score, amap = self.raw_forward(x)
            b = len(x)
            if amap is None:  # image-level-only model: a flat map at its score
                amap = score.reshape(b, 1, 1, 1).expand(b, 1, h, w)
            amap = amap.reshape(b, 1, *amap.shape[-2:]).float()
            if amap.shape[-2:] != (h, w):
                amap = F.interpolate(amap, size=(h, w), mode="bilinear", align_corners=False)
            if score is None:
                score = amap.amax(dim=(-2, -1))
            scores.append(score.reshape(b).double().cpu())
            maps.append(amap[:, 0].cpu())
        return torch.cat(scores).numpy(), torch.cat(maps).numpy().astype(np.float32)


def _efficientad_offline(model: Any, normals: torch.Tensor) -> None:
    """pre_trained=False: keep the random teacher and draw the penalty batch from the normals."""
    from torch.utils.data import DataLoader, TensorDataset

    def prepare_imagenette_data(image_size) -> None:
        del image_size
        ds = TensorDataset(normals, torch.zeros(len(normals)))
        model.imagenet_loader = DataLoader(ds, batch_size=1, shuffle=True)
        model.imagenet_iterator = iter(model.imagenet_loader)

    model.prepare_pretrained_model = lambda: None
    model.prepare_imagenette_data = prepare_imagenette_data
