"""The paper's downstream detector: a supervised U-Net segmenter (DRAEM discriminative-net style).

Trained on normal train images (empty masks) plus generated pairs with focal loss (optionally +
Dice); image score = max of the 21x21 average-pooled anomaly map, as in the DRAEM /
AnomalyDiffusion evaluation scripts. The last checkpoint is used: nothing is selected on the
evaluation set (EVALUATION.md, "The protocol flaw we refuse to copy").
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from generators.base import Pair

from . import register_detector
from .base import Detector, DetectorContext


@dataclass
class UNetConfig:
    base_width: int = 64        # DRAEM's discriminative net; the quick preset uses 16
    depth: int = 6              # encoder stages (DRAEM: 6)
    steps: int = 20000          # ~ 200 epochs x 500 samples / batch 8 (the scripts' recipe)
    batch_size: int = 8         # half normals, half generated pairs
    lr: float = 1e-4            # Adam, x0.2 at 80% and 90% of the steps
    focal_gamma: float = 2.0
    dice_weight: float = 0.0    # >0 adds a soft Dice term on the anomaly channel
    max_pairs_per_defect: int = 500
    pool_size: int = 21         # image score = max of this average pool of the map
    crop_size: int | None = None  # train on random crops (each generated crop holds part of its
                                  # mask): the net is fully convolutional, so this only buys speed
    predict_batch_size: int = 16


def _block(cin: int, cout: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(cin, cout, 3, padding=1), nn.BatchNorm2d(cout), nn.ReLU(inplace=True),
        nn.Conv2d(cout, cout, 3, padding=1), nn.BatchNorm2d(cout), nn.ReLU(inplace=True),
    )


class SegmentationUNet(nn.Module):
    """Encoder of `depth` conv blocks (widths w, 2w, 4w, 8w, 8w, ...), mirrored decoder with skips."""

    def __init__(self, in_channels: int = 3, out_channels: int = 2, base_width: int = 64, depth: int = 6):
        super().__init__()
        widths = [base_width * min(2 ** i, 8) for i in range(depth)]
        self.enc = nn.ModuleList()
        cin = in_channels
        for w in widths:
            self.enc.append(_block(cin, w))
            cin = w
        self.up = nn.ModuleList()
        self.dec = nn.ModuleList()
        for i in range(depth - 1, 0, -1):
            self.up.append(nn.Sequential(nn.Upsample(scale_factor=2, mode="bilinear", align_corners=False),
                                         nn.Conv2d(widths[i], widths[i - 1], 3, padding=1),
                                         nn.BatchNorm2d(widths[i - 1]), nn.ReLU(inplace=True)))
            self.dec.append(_block(2 * widths[i - 1], widths[i - 1]))
        self.head = nn.Conv2d(widths[0], out_channels, 3, padding=1)
        self.divisor = 2 ** (depth - 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h, w = x.shape[-2:]
        ph, pw = (-h) % self.divisor, (-w) % self.divisor
        if ph or pw:
            x = F.pad(x, (0, pw, 0, ph), mode="reflect")
        skips = []
        for i, blk in enumerate(self.enc):
            x = blk(x if i == 0 else F.max_pool2d(x, 2))
            skips.append(x)
        for up, dec, skip in zip(self.up, self.dec, reversed(skips[:-1])):
            x = dec(torch.cat([up(x), skip], dim=1))
        return self.head(x)[..., :h, :w]


def focal_loss(logits: torch.Tensor, target: torch.Tensor, gamma: float = 2.0) -> torch.Tensor:
    """Focal loss over the two-class softmax (DRAEM's choice for the heavily imbalanced masks)."""
    logp = F.log_softmax(logits, dim=1)
    logp_t = logp.gather(1, target.long().unsqueeze(1)).squeeze(1)
    return (-(1 - logp_t.exp()) ** gamma * logp_t).mean()


def soft_dice_loss(logits: torch.Tensor, target: torch.Tensor, eps: float = 1.0) -> torch.Tensor:
    p = logits.softmax(1)[:, 1]
    t = target.float()
    inter = (p * t).sum((1, 2))
    return (1 - (2 * inter + eps) / (p.sum((1, 2)) + t.sum((1, 2)) + eps)).mean()


def image_scores(maps: torch.Tensor, pool_size: int = 21) -> torch.Tensor:
    """Max of the stride-1, same-padded average pool of each map: [N,H,W] -> [N]."""
    pooled = F.avg_pool2d(maps.unsqueeze(1), pool_size, stride=1, padding=pool_size // 2)
    return pooled.flatten(1).amax(1)


def to_tensor(images: np.ndarray) -> torch.Tensor:
    """uint8 [N,H,W,3] -> float [N,3,H,W] in [0, 1] (no ImageNet normalisation, as DRAEM)."""
    return torch.from_numpy(np.ascontiguousarray(images)).permute(0, 3, 1, 2).float().div_(255.0)


def cap_pairs(pairs: list[Pair], per_defect: int) -> list[Pair]:
    seen: dict[str, int] = {}
    out = []
    for p in pairs:
        if seen.get(p.defect_type, 0) < per_defect:
            seen[p.defect_type] = seen.get(p.defect_type, 0) + 1
            out.append(p)
    return out


def random_crops(x: torch.Tensor, m: torch.Tensor, size: int, gen: torch.Generator
                 ) -> tuple[torch.Tensor, torch.Tensor]:
    """One size x size crop per image; where the mask has pixels, the crop contains one of them."""
    H, W = x.shape[-2:]
    xs, ms = [], []
    for i in range(len(x)):
        pos = m[i].nonzero()
        if len(pos):
            cy, cx = pos[torch.randint(len(pos), (1,), generator=gen)].squeeze(0).tolist()
            lo_y, hi_y = max(0, cy - size + 1), min(cy, H - size)
            lo_x, hi_x = max(0, cx - size + 1), min(cx, W - size)
        else:
            lo_y, hi_y, lo_x, hi_x = 0, H - size, 0, W - size
        y0 = int(torch.randint(lo_y, hi_y + 1, (1,), generator=gen))
        x0 = int(torch.randint(lo_x, hi_x + 1, (1,), generator=gen))
        xs.append(x[i, :, y0:y0 + size, x0:x0 + size])
        ms.append(m[i, y0:y0 + size, x0:x0 + size])
    return torch.stack(xs), torch.stack(ms)


@register_detector("unet")
class UNetDetector(Detector):
    uses_pairs = True

    def __init__(self, **cfg):
        super().__init__(**cfg)
        try:
            self.config = UNetConfig(**cfg)
        except TypeError as e:
            known = ", ".join(f.name for f in UNetConfig.__dataclass_fields__.values())
            raise ValueError(f"detector 'unet': bad config ({e}); fields: {known}") from None
        self.net: SegmentationUNet | None = None
        self.device = torch.device("cpu")
        self.loss_history: list[float] = []

    def fit(self, normals: np.ndarray, pairs: list[Pair], ctx: DetectorContext) -> None:
        c = self.config
        self.device = torch.device(ctx.device)
        torch.manual_seed(ctx.seed)
        gen = torch.Generator().manual_seed(ctx.seed)
        self.net = SegmentationUNet(3, 2, c.base_width, c.depth).to(self.device)
        pairs = cap_pairs(pairs, c.max_pairs_per_defect)
        x_norm = to_tensor(normals)
        if pairs:
            x_anom = to_tensor(np.stack([p.image for p in pairs]))
            m_anom = torch.from_numpy(np.stack([p.mask for p in pairs]).astype(np.uint8))
        opt = torch.optim.Adam(self.net.parameters(), lr=c.lr)
        sched = torch.optim.lr_scheduler.MultiStepLR(
            opt, milestones=[int(c.steps * 0.8), int(c.steps * 0.9)], gamma=0.2)
        n_anom = c.batch_size // 2 if pairs else 0
        n_norm = c.batch_size - n_anom
        self.net.train()
        self.loss_history = []
        for _ in range(c.steps):
            i = torch.randint(len(x_norm), (n_norm,), generator=gen)
            xb = [x_norm[i]]
            mb = [torch.zeros(n_norm, *x_norm.shape[-2:], dtype=torch.uint8)]
            if n_anom:
                j = torch.randint(len(x_anom), (n_anom,), generator=gen)
                xb.append(x_anom[j])
                mb.append(m_anom[j])
            x = torch.cat(xb)
            m = torch.cat(mb)
            if c.crop_size and c.crop_size < x.shape[-1]:
                x, m = random_crops(x, m, c.crop_size, gen)
            x, m = x.to(self.device), m.to(self.device)
            flip = torch.rand(len(x), generator=gen) < 0.5  # cheap augmentation from training data only
            x = torch.where(flip.to(self.device)[:, None, None, None], x.flip(-1), x)
            m = torch.where(flip.to(self.device)[:, None, None], m.flip(-1), m)
            logits = self.net(x)
            loss = focal_loss(logits, m, c.focal_gamma)
            if c.dice_weight > 0:
                loss = loss + c.dice_weight * soft_dice_loss(logits, m)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            self.loss_history.append(float(loss.detach()))

    @torch.no_grad()
    def predict(self, images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        if self.net is None:
            raise RuntimeError("detector 'unet': predict() called before fit()")
        self.net.eval()
        maps = []
        for s in range(0, len(images), self.config.predict_batch_size):
            x = to_tensor(images[s:s + self.config.predict_batch_size]).to(self.device)
            maps.append(self.net(x).softmax(1)[:, 1].float().cpu())
        m = torch.cat(maps)
        scores = image_scores(m, self.config.pool_size)
        return scores.double().numpy(), m.numpy().astype(np.float32)
