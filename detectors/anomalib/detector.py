"""The ``anomalib:<Model>`` detector: build with raw outputs, train with a bare Trainer, read out.

anomalib is our model zoo only (docs/evaluation.md): every model is built with ``post_processor=False``,
``evaluator=False`` and ``visualizer=False``, trained by a bare Lightning ``Trainer`` (no logger,
no checkpoints, no validation loop, so nothing is normalised, thresholded or selected on any
evaluation data), and ``predict`` returns the torch model's own ``pred_score`` / ``anomaly_map``.
Why not the anomalib ``Engine``: it wires in the datamodule's validation split (the test set for
MVTec-style data), the normalising post-processor and the metric path we refuse to use.
"""
from __future__ import annotations

import dataclasses
import inspect
import logging
import shutil
import tempfile
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from generators.base import Pair

from .. import backbones, register_detector
from ..base import Detector, DetectorContext
from .data import as_images, make_datamodule, masks_to_tensor, pairs_arrays, to_tensor
from .hooks import hooks_for
from .offline import MissingWeightsError, no_downloads
from .options import (
    TIMM,
    AnomalibOptions,
    check_model_kwargs,
    resolve_model_class,
    split_cfg,
)

# Lightning warnings that are expected here (no optimiser for memory banks, no logger, frozen
# backbones in eval mode, anomalib's self.log without batch_size, a backbone module as hparam)
_LIGHTNING_NOISE = (".*configure_optimizers.*", ".*module\\(s\\) in eval mode.*", ".*no logger configured.*",
                    ".*infer the `batch_size`.*", ".*LeafSpec.*", ".*is an instance of `nn.Module`.*")
# anomalib trainer_arguments we honour; everything else (devices, val intervals...) is ours
_TRAINER_KEYS = ("gradient_clip_val", "gradient_clip_algorithm", "accumulate_grad_batches", "max_steps")


def _accelerator(device: str) -> dict[str, Any]:
    if device.startswith("cuda"):
        idx = device.split(":", 1)[1] if ":" in device else None
        return {"accelerator": "gpu", "devices": [int(idx)] if idx else 1}
    return {"accelerator": device.split(":", 1)[0], "devices": 1}


@register_detector("anomalib:*")
class AnomalibDetector(Detector):
    """``anomalib:<Model>``: cfg keys that are AnomalibOptions fields configure the adapter, the
    rest go to the anomalib model constructor; per-model differences live in ``hooks``.

    ``backbone_weights: imagenet`` (with ``backbone: resnet50``, the default then) hands the model
    a frozen torchvision ResNet-50 module with the verified weights from ``make weights`` instead
    of a timm name; ``weights_info()`` says which file (name + sha256) it was.
    """

    config_class = AnomalibOptions

    @classmethod
    def resolve_config(cls, cfg: dict, where: str, variant: str | None = None) -> dict:
        """Adapter options filled in and checked, model kwargs checked against the model class
        (when ``variant``, the model name, is known); a ConfigError naming the key otherwise.
        Whether the backbone weights are on disk is an environment question, not a config one:
        plan asks `detectors.backbones.check_weights` on the resolved dict."""
        from benchmark.schema import ConfigError, build

        given, kwargs = split_cfg(dict(cfg))
        opts = build(AnomalibOptions, given, where)
        if variant is not None:
            try:
                check_model_kwargs(resolve_model_class(variant), kwargs)
            except ValueError as e:
                raise ConfigError(f"{where}: {e}") from None
        if opts.backbone_weights != TIMM and kwargs.get("backbone", "resnet50") not in backbones.BACKBONES:
            raise ConfigError(f"{where}.backbone: {kwargs['backbone']!r} with backbone_weights needs one of "
                              f"{', '.join(backbones.BACKBONES)}")
        return {**dataclasses.asdict(opts), **kwargs}

    @classmethod
    def pairs_used(cls, resolved_cfg: dict, variant: str | None) -> bool:
        """Whether this model trains on generated pairs, from its cfg alone (no model built)."""
        if variant is None:
            return False
        return hooks_for(resolve_model_class(variant).__name__).uses_pairs(split_cfg(resolved_cfg)[1])

    def __init__(self, model_name: str, **cfg):
        self.registry_name = f"anomalib:{model_name}"
        super().__init__(**cfg)
        given, self.model_kwargs = split_cfg(cfg)
        self.options = AnomalibOptions(**given)
        self.model_cls = resolve_model_class(model_name)
        self.model_name = self.model_cls.__name__
        check_model_kwargs(self.model_cls, self.model_kwargs)
        self.hooks = hooks_for(self.model_name)
        self.hooks.configure(self.name, self.model_kwargs, self.options, set(given))
        if self.options.backbone_weights != TIMM:
            if "backbone" not in inspect.signature(self.model_cls.__init__).parameters:
                raise ValueError(f"{self.name}: backbone_weights given but the model has no backbone option")
            backbone = self.model_kwargs.setdefault("backbone", "resnet50")
            if backbone not in backbones.BACKBONES:
                raise ValueError(f"{self.name}: backbone {backbone!r} with backbone_weights: expected one of "
                                 f"{', '.join(backbones.BACKBONES)}")
        self.uses_pairs = self.hooks.uses_pairs(self.model_kwargs)
        self.model = None
        self._size: int | None = None
        self._weights_ref: backbones.WeightsRef | None = None

    @property
    def name(self) -> str:
        return f"anomalib:{self.model_name}"

    def weights_info(self) -> dict | None:
        """Which backbone weights the fitted model used: name + sha256 (resnet50 modules), or
        the timm name and whether it was pretrained; None for models without a backbone."""
        if self._weights_ref is not None:
            return {"backbone": self.model_kwargs["backbone"], **self._weights_ref.info()}
        params = inspect.signature(self.model_cls.__init__).parameters
        if "backbone" not in params:
            return None
        name = self.model_kwargs.get("backbone", params["backbone"].default)
        return {"backbone": str(name), "backbone_weights": "timm-pretrained" if self.options.pre_trained else "none",
                "sha256": None, "path": None}

    def _build(self, size: int, work_dir: Path) -> Any:
        cls = self.model_cls
        kwargs = dict(self.model_kwargs)
        params = inspect.signature(cls.__init__).parameters
        if "pre_trained" in params:
            kwargs["pre_trained"] = self.options.pre_trained
        if self.options.backbone_weights != TIMM:
            module = backbones.load_backbone(kwargs["backbone"], self.options.backbone_weights,
                                             where=f"{self.name}: backbone")
            self._weights_ref = module.weights_ref
            kwargs["backbone"] = module
        kwargs = self.hooks.build_kwargs(kwargs, work_dir, self.options)
        pre = cls.configure_pre_processor(image_size=(size, size))
        try:
            with no_downloads(self.options.pre_trained, cls), warnings.catch_warnings():
                warnings.filterwarnings("ignore", message=".*is an instance of `nn.Module`.*")
                return cls(**kwargs, pre_processor=pre, post_processor=False, evaluator=False, visualizer=False)
        except MissingWeightsError as e:
            raise MissingWeightsError(f"{self.name}: {e}") from None
        except (TypeError, ValueError, RuntimeError) as e:  # e.g. timm's "Unknown model (...)"
            raise ValueError(f"{self.name}: bad option value: {e}") from e

    def fit(self, normals: np.ndarray, pairs: list[Pair], ctx: DetectorContext) -> None:
        from lightning.pytorch import seed_everything

        normals = as_images(normals, "normals")
        size = self._size = int(self.options.image_size or ctx.image_size)
        if size < self.hooks.min_size:
            raise ValueError(f"{self.name}: image_size {size} is below the model's minimum "
                             f"{self.hooks.min_size} (its layers or Perlin masks need it)")
        pair_t = None
        if self.uses_pairs:
            p_img, p_mask = pairs_arrays(pairs, "pairs")
            pair_t = (to_tensor(p_img, size), masks_to_tensor(p_mask, size))
        seed_everything(ctx.seed, verbose=False)
        tmp = None
        work_dir = Path(ctx.work_dir) if ctx.work_dir else Path(tmp := tempfile.mkdtemp(prefix="anomalib_"))
        try:
            model = self._build(size, work_dir)
            images = to_tensor(normals, size)
            labels = torch.zeros(len(images), dtype=torch.long)
            masks = torch.zeros(len(images), size, size, dtype=torch.bool)
            images, labels, masks = self.hooks.before_fit(model, images, labels, masks, pair_t, self.options, ctx)
            dm = make_datamodule(images, labels, masks, self.options.batch_size, ctx.seed)
            self._train(model, dm, ctx, work_dir)
        finally:
            if tmp:
                shutil.rmtree(tmp, ignore_errors=True)
        self._device = torch.device(ctx.device)  # Lightning's teardown may have moved it to CPU
        self.model = model.to(self._device).eval()

    def _train(self, model: Any, dm: Any, ctx: DetectorContext, work_dir: Path) -> None:
        from lightning.pytorch import Trainer

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
            with no_downloads(self.options.pre_trained, self.model_cls), warnings.catch_warnings():
                for msg in _LIGHTNING_NOISE:
                    warnings.filterwarnings("ignore", message=msg)
                trainer.fit(model, datamodule=dm)
                self.hooks.after_fit(model, dm)
        except MissingWeightsError as e:
            raise MissingWeightsError(f"{self.name}: {e}") from None
        finally:
            quiet.setLevel(level)

    @torch.no_grad()
    def raw_forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Model-size float batch in [0,1] -> the torch model's own (pred_score, anomaly_map)."""
        x = self.model.pre_processor.transform(x) if self.model.pre_processor else x
        out = self.model.model(x.to(self._device))
        return out.pred_score, out.anomaly_map

    def predict(self, images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        if self.model is None:
            raise RuntimeError(f"{self.name}: predict() before fit()")
        images = as_images(images, "images")
        n, h, w = images.shape[:3]
        self.model.eval()
        scores, maps = [], []
        bs = self.options.predict_batch_size
        for start in range(0, n, bs):
            x = to_tensor(images[start:start + bs], self._size)
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
