"""The paper's downstream detector: a supervised U-Net segmenter (DRAEM discriminative-net style).

Trained on normal train images (empty masks) plus generated pairs with focal loss (optionally +
Dice); image score = max of the 21x21 average-pooled anomaly map, as in the DRAEM /
AnomalyDiffusion evaluation scripts. The last checkpoint is used: nothing is selected on the
evaluation set (docs/evaluation.md, "The protocol flaw we refuse to copy").
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from benchmark.schema import ConfigError, option
from generators.base import Pair

from . import register_detector
from .base import Detector, DetectorContext, ensemble_seeds


@dataclass
class UNetConfig:
    """Defaults are DRAEM's discriminative-net recipe; the quick preset departs from it (see
    configs/quick.yaml) for a CPU budget, and every departure there is a field here."""

    base_width: int = option(64, ge=1, help="channels of the first stage (DRAEM: 64)")
    depth: int = option(6, ge=2, help="encoder stages (DRAEM: 6)")
    steps: int = option(20000, ge=1, help="~200 epochs x 500 samples / batch 8 (the scripts' recipe)")
    batch_size: int = option(8, ge=2, help="half normals, half generated pairs")
    lr: float = option(1e-4, gt=0, help="Adam learning rate (peak, after any warm-up)")
    lr_schedule: str = option("step", choices=("step", "cosine"),
                              help="step: x0.2 at 80% and 90% of the steps (DRAEM); cosine: decay to 0")
    warmup: int = option(0, ge=0, help="linear warm-up steps from lr/100 (cosine schedule only)")
    ema_decay: float = option(0.0, ge=0, lt=1, help="0: last weights; else predict with an EMA of them")
    norm: str = option("batch", choices=("batch", "group"),
                       help="batch (DRAEM) or group norm (no running statistics: train = eval)")
    focal_gamma: float = option(2.0, ge=0)
    dice_weight: float = option(0.0, ge=0, help=">0 adds a soft Dice term on the anomaly channel")
    max_pairs_per_defect: int = option(500, ge=1)
    pool_size: int = option(21, ge=1, help="image score = max of this average pool of the map")
    crop_size: int | None = option(None, ge=8, help="train on random crops (each generated crop holds "
                                   "part of its mask): the net is fully convolutional, so this only buys speed")
    predict_batch_size: int = option(16, ge=1)
    ensemble: int = option(1, ge=1, omit_default=True,
                           help="members trained from their own seeds on the same pairs; their anomaly maps "
                                "are averaged (1: one net, seeded by the cell)")

    def __post_init__(self):
        if self.warmup and self.lr_schedule != "cosine":
            raise ConfigError(f"detector_cfg.unet.warmup: only used with lr_schedule 'cosine', got "
                              f"lr_schedule {self.lr_schedule!r}")
        if self.warmup >= self.steps:
            raise ConfigError(f"detector_cfg.unet.warmup: must be below steps ({self.steps}), got {self.warmup}")


CL = torch.channels_last


def _norm(kind: str, c: int) -> nn.Module:
    """BatchNorm (DRAEM) or GroupNorm of 4-channel groups: GroupNorm has no running statistics,
    so the net at evaluation computes exactly what it trained with, whatever the last batches
    happened to hold (with batches of 8 crops, BatchNorm's running averages are a noisy estimate)."""
    return nn.BatchNorm2d(c) if kind == "batch" else nn.GroupNorm(max(1, c // 4), c)


def _block(cin: int, cout: int, norm: str = "batch") -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(cin, cout, 3, padding=1), _norm(norm, cout), nn.ReLU(inplace=True),
        nn.Conv2d(cout, cout, 3, padding=1), _norm(norm, cout), nn.ReLU(inplace=True),
    )


class SegmentationUNet(nn.Module):
    """Encoder of `depth` conv blocks (widths w, 2w, 4w, 8w, 8w, ...), mirrored decoder with skips."""

    def __init__(self, in_channels: int = 3, out_channels: int = 2, base_width: int = 64, depth: int = 6,
                 norm: str = "batch"):
        super().__init__()
        widths = [base_width * min(2 ** i, 8) for i in range(depth)]
        self.enc = nn.ModuleList()
        cin = in_channels
        for w in widths:
            self.enc.append(_block(cin, w, norm))
            cin = w
        self.up = nn.ModuleList()
        self.dec = nn.ModuleList()
        for i in range(depth - 1, 0, -1):
            self.up.append(nn.Sequential(nn.Upsample(scale_factor=2, mode="bilinear", align_corners=False),
                                         nn.Conv2d(widths[i], widths[i - 1], 3, padding=1),
                                         _norm(norm, widths[i - 1]), nn.ReLU(inplace=True)))
            self.dec.append(_block(2 * widths[i - 1], widths[i - 1], norm))
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


def lr_schedule(opt: torch.optim.Optimizer, c: UNetConfig) -> torch.optim.lr_scheduler.LRScheduler:
    """DRAEM's steps (x0.2 at 80% and 90%), or linear warm-up then cosine decay to zero: a few
    hundred steps at a high peak rate need the warm-up to not blow up the fresh BatchNorm/GroupNorm
    statistics and the decay to end on small steps (the last weights then sit in one basin)."""
    if c.lr_schedule == "step":
        return torch.optim.lr_scheduler.MultiStepLR(opt, milestones=[int(c.steps * 0.8), int(c.steps * 0.9)],
                                                    gamma=0.2)
    cos = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=c.steps - c.warmup)
    if not c.warmup:
        return cos
    warm = torch.optim.lr_scheduler.LinearLR(opt, start_factor=0.01, total_iters=c.warmup)
    return torch.optim.lr_scheduler.SequentialLR(opt, [warm, cos], milestones=[c.warmup])


@register_detector("unet")
class UNetDetector(Detector):
    uses_pairs = True

    config_class = UNetConfig  # validated by benchmark.schema.build (Detector.__init__)

    def __init__(self, **cfg):
        super().__init__(**cfg)
        self.nets: list[nn.Module] = []      # the ensemble's members; one net unless ``ensemble`` > 1
        self.device = torch.device("cpu")
        self.loss_history: list[float] = []

    def fit(self, normals: np.ndarray, pairs: list[Pair], ctx: DetectorContext) -> None:
        """Train from the cell seed alone: weight init, batch order, crops and flips all come from
        ``ctx.seed`` (common random numbers: two generators' cells of one seed start from the same
        weights and draw the same batch indices, so their difference comes from the pairs).

        With ``ensemble`` K > 1, member 0 is that net and members 1..K-1 train from seeds derived
        from (``ctx.seed``, k): averaging K maps is the textbook cut of the seed-to-seed spread
        (issue 9), at K times the training cost."""
        self.device = torch.device(ctx.device)
        pairs = cap_pairs(pairs, self.config.max_pairs_per_defect)
        self.nets, histories = [], []
        for seed in ensemble_seeds(ctx.seed, self.config.ensemble, "unet-ensemble"):
            net, hist = self._train_one(normals, pairs, seed)
            self.nets.append(net)
            histories.append(hist)
        self.loss_history = histories[0]

    @property
    def net(self) -> nn.Module | None:
        """Member 0: the net of the cell seed (the whole detector when ``ensemble`` is 1)."""
        return self.nets[0] if self.nets else None

    def _train_one(self, normals: np.ndarray, pairs: list[Pair], seed: int) -> tuple[nn.Module, list[float]]:
        c = self.config
        torch.manual_seed(seed)
        gen = torch.Generator().manual_seed(seed)
        # channels-last: the same arithmetic, ~20% faster training and ~2x faster prediction on CPU
        # for these narrow convolutions (measured, see the quick preset)
        net = SegmentationUNet(3, 2, c.base_width, c.depth, c.norm).to(self.device, memory_format=CL)
        x_norm = to_tensor(normals)
        if pairs:
            x_anom = to_tensor(np.stack([p.image for p in pairs]))
            m_anom = torch.from_numpy(np.stack([p.mask for p in pairs]).astype(np.uint8))
        opt = torch.optim.Adam(net.parameters(), lr=c.lr)
        sched = lr_schedule(opt, c)
        # the EMA copy is what predicts: averaging the last few hundred steps' weights removes most
        # of the step-to-step jitter that made the last checkpoint a lottery (issue 9)
        ema = (torch.optim.swa_utils.AveragedModel(
            net, multi_avg_fn=torch.optim.swa_utils.get_ema_multi_avg_fn(c.ema_decay), use_buffers=True)
            if c.ema_decay > 0 else None)
        n_anom = c.batch_size // 2 if pairs else 0
        n_norm = c.batch_size - n_anom
        net.train()
        history: list[float] = []
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
            x = torch.where(flip.to(self.device)[:, None, None, None], x.flip(-1), x).contiguous(memory_format=CL)
            m = torch.where(flip.to(self.device)[:, None, None], m.flip(-1), m)
            logits = net(x)
            loss = focal_loss(logits, m, c.focal_gamma)
            if c.dice_weight > 0:
                loss = loss + c.dice_weight * soft_dice_loss(logits, m)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            if ema is not None:
                ema.update_parameters(net)
            history.append(float(loss.detach()))
        if ema is not None:
            net = ema.module
        return net, history

    @torch.no_grad()
    def predict(self, images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        nets = self.nets
        if not nets:
            raise RuntimeError("detector 'unet': predict() called before fit()")
        for net in nets:
            net.eval()
        maps = []
        for s in range(0, len(images), self.config.predict_batch_size):
            x = to_tensor(images[s:s + self.config.predict_batch_size]).to(self.device).contiguous(memory_format=CL)
            p = nets[0](x).softmax(1)[:, 1].float()
            for net in nets[1:]:
                p = p + net(x).softmax(1)[:, 1].float()
            maps.append((p / len(nets) if len(nets) > 1 else p).cpu())
        m = torch.cat(maps)
        scores = image_scores(m, self.config.pool_size)
        return scores.double().numpy(), m.numpy().astype(np.float32)
