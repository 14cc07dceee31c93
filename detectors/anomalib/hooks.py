"""Per-model hooks: what differs between anomalib models, kept out of the generic adapter.

Why hooks: the adapter's job (build with raw outputs, train with a bare Trainer, read the torch
model's scores) is the same for every anomalib image model; only a few models need something
special (DRAEM takes its anomalies from our pairs, SuperSimpleNet is supervised on them,
EfficientAd has a batch size of 1 and an ImageNette penalty set, PaDiM needs ``n_features`` once
its backbone is a module). Each such difference is one small method here, so adding a model is
one class in ``HOOKS`` and the adapter stays one code path.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..base import DetectorContext


class ModelHooks:
    """Defaults: an unsupervised model trained on normal images only."""

    min_size = 1          # smallest model input side that works

    def configure(self, name: str, kwargs: dict[str, Any], opts, given: set[str]) -> None:
        """At construction: fill model defaults, refuse impossible combinations (ValueError).
        ``given``: the adapter options the user set (the rest are defaults)."""

    def uses_pairs(self, kwargs: dict[str, Any]) -> bool:
        return False

    def build_kwargs(self, kwargs: dict[str, Any], work_dir: Path, opts) -> dict[str, Any]:
        """Model constructor kwargs right before the build (backbone module already in place)."""
        return kwargs

    def before_fit(self, model: Any, images: torch.Tensor, labels: torch.Tensor, masks: torch.Tensor,
                   pairs: tuple[torch.Tensor, torch.Tensor] | None, opts, ctx: DetectorContext):
        """Hand the pairs to the model; returns the (images, labels, masks) it trains on."""
        if pairs is not None:  # a supervised model: pairs are labelled training samples
            p_img, p_mask = pairs
            images = torch.cat([images, p_img])
            labels = torch.cat([labels, torch.ones(len(p_img), dtype=torch.long)])
            masks = torch.cat([masks, p_mask])
        return images, labels, masks

    def after_fit(self, model: Any, datamodule: Any) -> None:
        """After training, before predict (e.g. statistics over the training normals)."""


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


class DraemHooks(ModelHooks):
    """DRAEM's Perlin/DTD augmenter is replaced by a PairAugmenter over the pairs (no DTD folder)."""

    def configure(self, name, kwargs, opts, given) -> None:
        if {"dtd_dir", "beta"} & set(kwargs):
            raise ValueError(f"{name}: dtd_dir / beta configure the Perlin augmenter, which the "
                             "adapter replaces with the generator's pairs")

    def uses_pairs(self, kwargs) -> bool:
        return True

    def build_kwargs(self, kwargs, work_dir, opts):
        kwargs["dtd_dir"] = work_dir / "draem_unused_dtd"  # an existing empty folder, never read
        kwargs["dtd_dir"].mkdir(parents=True, exist_ok=True)
        return kwargs

    def before_fit(self, model, images, labels, masks, pairs, opts, ctx):
        model.augmenter = PairAugmenter(*pairs, opts.pair_probability, ctx.seed)
        return images, labels, masks


class SupersimplenetHooks(ModelHooks):
    """Supervised by default (``supervised=True``): normals (label 0, empty mask) plus the pairs
    (label 1, their masks). Its feature-level Perlin masks need a 32-px feature map."""

    min_size = 128

    def configure(self, name, kwargs, opts, given) -> None:
        kwargs.setdefault("supervised", True)

    def uses_pairs(self, kwargs) -> bool:
        return bool(kwargs.get("supervised", True))


class EfficientAdHooks(ModelHooks):
    """Batch size 1 (anomalib requires it); map quantiles from the training normals. With
    ``pre_trained=False`` the random teacher is kept and the penalty batch is drawn from the
    normals in place of ImageNette (smoke-test mode, not the paper's model)."""

    min_size = 256  # its autoencoder is built for 256 px

    def configure(self, name, kwargs, opts, given) -> None:
        if opts.batch_size != 1 and "batch_size" in given:
            raise ValueError(f"{name}: batch_size must be 1 (anomalib requires it)")
        opts.batch_size = 1

    def before_fit(self, model, images, labels, masks, pairs, opts, ctx):
        if not opts.pre_trained:
            _efficientad_offline(model, images[labels == 0])
        return images, labels, masks

    def after_fit(self, model, datamodule) -> None:
        model.model.quantiles.update(model.map_norm_quantiles(datamodule.val_dataloader()))


def _efficientad_offline(model: Any, normals: torch.Tensor) -> None:
    from torch.utils.data import DataLoader, TensorDataset

    def prepare_imagenette_data(image_size) -> None:
        del image_size
        ds = TensorDataset(normals, torch.zeros(len(normals)))
        model.imagenet_loader = DataLoader(ds, batch_size=1, shuffle=True)
        model.imagenet_iterator = iter(model.imagenet_loader)

    model.prepare_pretrained_model = lambda: None
    model.prepare_imagenette_data = prepare_imagenette_data


class PadimHooks(ModelHooks):
    """anomalib only knows default ``n_features`` for backbone *names*; with a backbone module
    (``backbone_weights`` set) it must be given, so the PaDiM paper's 550 is the default."""

    def configure(self, name, kwargs, opts, given) -> None:
        if opts.backbone_weights != "timm":
            kwargs.setdefault("n_features", 550)


HOOKS: dict[str, ModelHooks] = {"Draem": DraemHooks(), "Supersimplenet": SupersimplenetHooks(),
                                "EfficientAd": EfficientAdHooks(), "Padim": PadimHooks()}


def hooks_for(model_name: str) -> ModelHooks:
    return HOOKS.get(model_name, ModelHooks())
