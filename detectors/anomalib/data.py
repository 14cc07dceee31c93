"""In-memory arrays -> the tensors and the minimal Lightning datamodule anomalib models train on."""
from __future__ import annotations

from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from generators.base import Pair


def as_images(arr: Any, field: str) -> np.ndarray:
    if not isinstance(arr, np.ndarray) or arr.ndim != 4 or arr.shape[-1] != 3 or arr.dtype != np.uint8:
        desc = f"{arr.dtype} {arr.shape}" if isinstance(arr, np.ndarray) else type(arr).__name__
        raise ValueError(f"{field}: expected uint8 array [N,H,W,3], got {desc}")
    if len(arr) == 0:
        raise ValueError(f"{field}: empty")
    return arr


def to_tensor(images: np.ndarray, size: int) -> torch.Tensor:
    """uint8 [N,H,W,3] -> float [N,3,size,size] in [0,1] (bilinear, antialiased)."""
    x = torch.from_numpy(np.ascontiguousarray(images)).permute(0, 3, 1, 2).float() / 255.0
    if x.shape[-2:] != (size, size):
        x = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False, antialias=True)
    return x


def masks_to_tensor(masks: np.ndarray, size: int) -> torch.Tensor:
    """bool [N,H,W] -> bool [N,size,size] (nearest)."""
    m = torch.from_numpy(np.ascontiguousarray(masks, dtype=np.float32))[:, None]
    if m.shape[-2:] != (size, size):
        m = F.interpolate(m, size=(size, size), mode="nearest")
    return m[:, 0] > 0.5


def pairs_arrays(pairs: list[Pair], field: str) -> tuple[np.ndarray, np.ndarray]:
    if not pairs:
        raise ValueError(f"{field}: this model trains on generated pairs but none were given")
    shapes = {p.image.shape for p in pairs}
    if len(shapes) != 1:
        raise ValueError(f"{field}: pair images differ in shape: {sorted(shapes)}")
    images = as_images(np.stack([p.image for p in pairs]), f"{field}.image")
    masks = np.stack([np.asarray(p.mask) for p in pairs])
    if masks.shape != images.shape[:3]:
        raise ValueError(f"{field}.mask: shape {masks.shape[1:]} does not match image {images.shape[1:3]}")
    return images, masks.astype(bool)


class Collate:
    """Index list -> anomalib ImageBatch (picklable, so worker processes would also work)."""

    def __init__(self, images: torch.Tensor, labels: torch.Tensor, masks: torch.Tensor):
        self.images, self.labels, self.masks = images, labels, masks

    def __call__(self, idx: list[int]):
        from anomalib.data import ImageBatch

        i = torch.as_tensor(idx)
        return ImageBatch(image=self.images[i], gt_label=self.labels[i], gt_mask=self.masks[i])


def make_datamodule(images: torch.Tensor, labels: torch.Tensor, masks: torch.Tensor,
                    batch_size: int, seed: int):
    """The smallest LightningDataModule anomalib models accept (EfficientAd reads
    ``trainer.datamodule``); its "validation" loader is the training normals, never test data."""
    from lightning.pytorch import LightningDataModule
    from torch.utils.data import DataLoader

    collate = Collate(images, labels, masks)
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
