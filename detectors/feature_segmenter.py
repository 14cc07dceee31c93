"""A supervised segmenter on frozen pretrained features: ResNet-50 encoder (ImageNet, from
`detectors.backbones`) + a small U-Net-style decoder trained on the generated pairs.

Why beside the paper's U-Net: the U-Net learns its features from a few hundred pairs, so on real
data it can only detect what the generator's pastes look like at the pixel level; a decoder on
ImageNet features starts from the representation PatchCore / PaDiM rely on, and the generated pairs
only have to teach it *where* anomalies are. Because the encoder is frozen, its features for every
training image are computed once (float16) and only the decoder is trained: CPU cost is one
encoder pass per image plus a cheap decoder loop.

Training mirrors `detectors.unet` (same focal / Dice losses, half-normal half-pair batches, seed
from the cell, the last weights used) and so does the image score (max of the average-pooled map).
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from benchmark.schema import option
from generators.base import Pair

from . import feature_cache, register_detector
from .backbones import BACKBONES, load_backbone
from .base import Detector, DetectorContext, ensemble_seeds
from .unet import cap_pairs, focal_loss, image_scores, soft_dice_loss

_IMAGENET_MEAN = (0.485, 0.456, 0.406)
_IMAGENET_STD = (0.229, 0.224, 0.225)
_CHANNELS = (256, 512, 1024)  # ResNet-50 layer1..3 outputs (strides 4, 8, 16)
_STEM_CHANNELS = 64           # ResNet-50 conv1 + bn1 + relu output (stride 2)


@dataclass
class FeatureSegmenterConfig:
    backbone: str = option("resnet50", choices=BACKBONES)
    backbone_weights: str = option("imagenet", help="imagenet | none | <state-dict path> (detectors.backbones)")
    width: int = option(32, ge=4, help="decoder channels at stride 4 (x2 at 8, x4 at 16); head: decoder only")
    steps: int = option(300, ge=1, help="decoder optimiser steps")
    batch_size: int = option(16, ge=2, help="half normals, half generated pairs")
    lr: float = option(1e-3, gt=0, help="Adam learning rate, cosine-decayed to 0")
    focal_gamma: float = option(2.0, ge=0)
    dice_weight: float = option(0.5, ge=0)
    max_pairs_per_defect: int = option(500, ge=1)
    pool_size: int = option(21, ge=1, help="image score = max of this average pool of the map")
    image_size: int | None = option(None, ge=32, help="encoder input side; None: the run's image_size")
    predict_batch_size: int = option(16, ge=1)
    stem: bool = option(False, omit_default=True,
                        help="also decode the stride-2 stem features (conv1): a map at half the input side, "
                             "not a quarter, so thin defects keep their shape in pixel metrics")
    ensemble: int = option(1, ge=1, omit_default=True,
                           help="decoders trained from their own seeds on the same frozen features, maps "
                                "averaged (the encoder runs once, so K costs K decoder trainings)")
    head: str = option("decoder", choices=("decoder", "linear"), omit_default=True,
                       help="decoder: the U-Net-style decoder; linear: per-pixel logistic regression on the "
                            "layer1-3 features at stride 4 (no spatial layers, no width, no stem)")
    context: int = option(0, ge=0, omit_default=True,
                          help="linear heads only: > 0 adds each layer's (2c+1)-square neighbourhood mean "
                               "as inputs (still linear), so a pixel can be told from its surroundings")
    linear_members: int = option(0, ge=0, omit_default=True,
                                 help="head: decoder only: this many linear heads (lr linear_lr) trained beside the "
                                      "ensemble decoders; each member's log-odds is standardised by its mean and std "
                                      "over the training normals' pixels and the map is the sigmoid of their mean "
                                      "(a probability average would be the decoders' map alone: docs/stability.md §12)")
    linear_lr: float = option(0.01, gt=0, omit_default=True, help="Adam learning rate of the linear_members heads")
    feature_dropout: float = option(0.0, ge=0, lt=1, omit_default=True,
                                    help="training only: each frozen feature channel is zeroed with this probability "
                                         "per sample and step (the rest scaled up), so a member cannot lean on the few "
                                         "channels one draw of pairs happens to excite")
    member_scale: str = option("std", choices=("std", "tail"), omit_default=True,
                               help="with linear_members: each member's log-odds in units of its spread on the "
                                    "training normals' pixels: std (minus the mean, over the std) or tail (minus "
                                    "the median, over the 99.9th percentile minus the median)")
    image_score: str = option("map", choices=("map", "members"), omit_default=True,
                              help="map: max of the average-pooled map (pool_size); members: each member's own "
                                   "such score in log-odds, standardised by its mean and std over the training "
                                   "normals, averaged, so each member has an equal say in the ranking whatever its "
                                   "scale (docs/stability.md §13); the pixel map is unchanged")
    change_threshold: int = option(0, ge=0, le=255, omit_default=True,
                                   help="> 0: a pair's target is only the mask pixels that differ from the normal "
                                        "it edits (Pair.source) by more than this on some channel (0-255); "
                                        "0: the generator's mask as it is")

    def __post_init__(self):
        if self.head == "linear" and self.stem:
            raise ValueError("head='linear' has no stem: it reads layer1-3 at stride 4; use stem: false "
                             "or head: decoder")
        if self.context and self.head != "linear" and not self.linear_members:
            raise ValueError(f"context={self.context} is an input of linear heads; the decoder has its own "
                             f"3 x 3 layers (use context: 0 with head: {self.head!r}, or linear_members > 0)")
        if self.member_scale != "std" and not self.linear_members:
            raise ValueError(f"member_scale={self.member_scale!r} scales the members of a mixed ensemble; "
                             f"set linear_members > 0 or leave member_scale at std")
        if self.linear_members and self.head != "decoder":
            raise ValueError(f"linear_members={self.linear_members} adds linear heads beside decoders; with "
                             f"head={self.head!r} every member is already linear (use head: decoder)")


def pair_target(pair: Pair, normals: np.ndarray, change_threshold: int = 0) -> np.ndarray:
    """A pair's training target (float32 0/1): its mask, or with ``change_threshold`` > 0 only the
    mask pixels where the pair differs from the normal it edits by more than the threshold.

    Why: a CutPaste rectangle cut from background and pasted onto background is labelled anomalous
    where nothing visibly changed (on hex_nut 41-43 % of CutPaste's mask pixels differ from their
    source by at most 10 of 255); the option lets a study ask what those labels cost. A pair with
    no source (a generator that makes whole images) cannot be compared, so it is an error, never
    a silently different target for one column."""
    mask = np.asarray(pair.mask, bool)
    if change_threshold:
        if pair.source is None:
            raise ValueError(f"detector_cfg.feature_segmenter.change_threshold={change_threshold} compares each "
                             f"pair with the normal it edits, but a {pair.defect_type!r} pair has no source "
                             f"(its generator makes whole images); use change_threshold=0 for this generator")
        diff = np.abs(pair.image.astype(np.int16) - normals[pair.source].astype(np.int16)).max(-1)
        mask = mask & (diff > change_threshold)
    return mask.astype(np.float32)


def box_mean(x: torch.Tensor, k: int, dim: int) -> torch.Tensor:
    """The zero-padded mean over an odd window of ``k`` along ``dim`` (output the input's size):
    ``F.avg_pool2d`` with kernel k on that axis, padding k // 2, bit for bit. avg_pool2d sums each
    window's values in order from its first and divides the sum by k; so do these k shifted
    in-place adds (a padding zero adds exactly nothing), 3-4x faster on float64 maps on the CPU,
    where the member image score's pools were most of a prediction (tested against avg_pool2d)."""
    if k % 2 == 0:
        raise ValueError(f"box_mean: the window must be odd (same-size output), got {k}")
    n, p = x.shape[dim], k // 2
    pad = [0, 0] * (x.dim() - 1 - dim % x.dim()) + [p, p]
    xp = F.pad(x, pad)
    acc = xp.narrow(dim, 0, n).clone()
    for i in range(1, k):
        acc += xp.narrow(dim, i, n)
    return acc / k


def _log_odds(logits: torch.Tensor) -> torch.Tensor:
    """Anomaly log-odds of 2-class logits [B, 2, h, w] -> [B, h, w] (softmax's class 1 = sigmoid of this)."""
    return logits[:, 1] - logits[:, 0]


def _block(cin: int, cout: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.GroupNorm(4, cout), nn.ReLU(inplace=True),
                         nn.Conv2d(cout, cout, 3, padding=1, bias=False), nn.GroupNorm(4, cout), nn.ReLU(inplace=True))


def _up_cat(x: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
    return torch.cat([F.interpolate(x, size=skip.shape[-2:], mode="bilinear", align_corners=False), skip], 1)


class FeatureDecoder(nn.Module):
    """layer3 -> up + layer2 -> up + layer1 [-> up + stem] -> 2-class logits at stride 4 [2]
    (GroupNorm: train = eval). Features come in stride order, finest first."""

    def __init__(self, width: int, stem: bool = False):
        super().__init__()
        w1, w2, w3 = width, 2 * width, 4 * width
        self.reduce = nn.ModuleList([nn.Conv2d(c, w, 1) for c, w in zip(_CHANNELS, (w1, w2, w3))])
        self.mid = _block(w3, w3)
        self.dec2 = _block(w3 + w2, w2)
        self.dec1 = _block(w2 + w1, w1)
        if stem:
            self.reduce0 = nn.Conv2d(_STEM_CHANNELS, w1, 1)
            self.dec0 = _block(2 * w1, w1)
        self.stem = stem
        self.head = nn.Conv2d(w1, 2, 1)

    def forward(self, *feats: torch.Tensor) -> torch.Tensor:
        f1, f2, f3 = feats[-3:]
        r1, r2, r3 = (conv(f.float()) for conv, f in zip(self.reduce, (f1, f2, f3)))
        x = self.mid(r3)
        x = self.dec2(_up_cat(x, r2))
        x = self.dec1(_up_cat(x, r1))
        if self.stem:
            x = self.dec0(_up_cat(x, self.reduce0(feats[0].float())))
        return self.head(x)


class LinearHead(nn.Module):
    """Per-pixel logistic regression on the frozen features: logits = sum over layer1-3 of a 1x1
    conv, upsampled bilinearly to stride 4. Linear in the features, so one rare pair pulls it less
    than it pulls the decoder: a probe for how much of a cell's seed spread is the decoder's
    capacity (docs/stability.md §11: steady on the object CutPaste cells where the decoder is
    not, unsteady and lower on wood; ``context`` steadies wood's pixel AUROC, not its image AUROC)."""

    def __init__(self, context: int = 0):
        super().__init__()
        self.context = context
        # weights over [features, neighbourhood means] (2C inputs with context): the model as defined
        self.proj = nn.ModuleList([nn.Conv2d(c * (2 if context else 1), 2, 1) for c in _CHANNELS])

    def _layer_logits(self, conv: nn.Conv2d, f: torch.Tensor) -> torch.Tensor:
        """One layer's logits: W_f f + W_m mean(f) + b. The neighbourhood mean and a 1 x 1 conv
        are both linear and act on different axes (space, channels), so W_m mean(f) = mean(W_m f):
        one conv to 4 outputs, then the mean of its 2 W_m outputs, the same function (equal up to
        float rounding) as pooling all C channels and a conv on 2C. Why: pooling C channels and
        concatenating them was most of a linear head's training step (300 steps took 27.5 s on one
        thread that way, 13.2 s this way)."""
        f = f.float()
        if not self.context:
            return conv(f)
        c = f.shape[1]
        w, b = conv.weight, conv.bias
        y = F.conv2d(f, torch.cat([w[:, :c], w[:, c:]]), torch.cat([b, torch.zeros_like(b)]))
        k = 2 * self.context + 1
        return y[:, :2] + F.avg_pool2d(y[:, 2:], k, stride=1, padding=self.context, count_include_pad=False)

    def forward(self, *feats: torch.Tensor) -> torch.Tensor:
        f1, f2, f3 = feats[-3:]
        logits = self._layer_logits(self.proj[0], f1)
        for conv, f in zip(self.proj[1:], (f2, f3)):
            logits = logits + F.interpolate(self._layer_logits(conv, f), size=logits.shape[-2:], mode="bilinear",
                                            align_corners=False)
        return logits


@register_detector("feature_segmenter")
class FeatureSegmenter(Detector):
    uses_pairs = True
    config_class = FeatureSegmenterConfig

    def __init__(self, **cfg):
        super().__init__(**cfg)
        self.encoder = None
        self.decoders: list[nn.Module] = []   # one unless ``ensemble`` > 1; member 0 from the cell seed
        self.standardise: list[tuple[float, float]] | None = None   # per member, with linear_members
        self.image_standardise: list[tuple[float, float]] | None = None   # per member, image_score: members
        self.loss_history: list[float] = []
        self._feature_cache: Path | None = None

    def weights_info(self) -> dict | None:
        if self.encoder is None:
            return None
        return {"backbone": self.config.backbone, **self.encoder.weights_ref.info()}

    def _prep(self, images: np.ndarray) -> torch.Tensor:
        x = torch.from_numpy(np.ascontiguousarray(images)).permute(0, 3, 1, 2).float().div_(255.0)
        if x.shape[-2:] != (self._size, self._size):
            x = F.interpolate(x, size=(self._size, self._size), mode="bilinear", align_corners=False, antialias=True)
        mean = torch.tensor(_IMAGENET_MEAN).view(1, 3, 1, 1)
        std = torch.tensor(_IMAGENET_STD).view(1, 3, 1, 1)
        return (x - mean) / std

    @property
    def decoder(self) -> nn.Module | None:
        """Member 0: the decoder of the cell seed (the whole detector when ``ensemble`` is 1)."""
        return self.decoders[0] if self.decoders else None

    @torch.no_grad()
    def _features(self, images: np.ndarray) -> list[torch.Tensor]:
        """Frozen encoder, in batches: [f0 (with ``stem``), f1, f2, f3] float16 on the CPU."""
        e, stem = self.encoder, self.config.stem
        out = [[] for _ in range(4 if stem else 3)]
        for start in range(0, len(images), self.config.predict_batch_size):
            x = self._prep(images[start:start + self.config.predict_batch_size]).to(self.device)
            f0 = e.relu(e.bn1(e.conv1(x)))
            f1 = e.layer1(e.maxpool(f0))
            f2 = e.layer2(f1)
            f3 = e.layer3(f2)
            for acc, f in zip(out, (f0, f1, f2, f3) if stem else (f1, f2, f3)):
                acc.append(f.half().cpu())
        return [torch.cat(a) for a in out]

    def _data_features(self, images: np.ndarray) -> list[torch.Tensor]:
        """``_features`` of data-set images (training normals, evaluation images), read from the
        shared feature cache when another cell computed them the same way (the key holds the
        images, the weights' sha256, the sizes, torch's version, the threads and the device: a
        hit is bit-identical). Generated pairs are not cached: no other cell shows them.
        Random-init weights (``none``) have no sha256 to key on, so they are never cached."""
        ref = self.encoder.weights_ref
        if self._feature_cache is None or ref.sha256 is None:
            return self._features(images)
        c = self.config
        parts = {"backbone": c.backbone, "weights_sha256": ref.sha256, "stride": ref.stride, "size": self._size,
                 "stem": c.stem, "batch": c.predict_batch_size, "torch": torch.__version__,
                 "threads": torch.get_num_threads(), "device": str(self.device)}
        return feature_cache.cached(self._feature_cache, parts, images, self._features)

    def fit(self, normals: np.ndarray, pairs: list[Pair], ctx: DetectorContext) -> None:
        c = self.config
        if not pairs:
            raise ValueError("feature_segmenter: trains on generated pairs but none were given")
        self.device = torch.device(ctx.device)
        self._size = int(c.image_size or ctx.image_size)
        self.encoder = load_backbone(c.backbone, c.backbone_weights, where="detector_cfg.feature_segmenter.backbone")
        self.encoder.to(self.device)
        self._feature_cache = ctx.feature_cache
        pairs = cap_pairs(pairs, c.max_pairs_per_defect)
        feats_n = self._data_features(normals)
        feats_p = self._features(np.stack([p.image for p in pairs]))
        h1, w1 = feats_n[-3].shape[-2:]   # layer1 (stride 4): targets at 4x its side, with or without the stem
        masks = torch.from_numpy(np.stack([pair_target(p, normals, c.change_threshold) for p in pairs]))[:, None]
        masks = (F.interpolate(masks, size=(4 * h1, 4 * w1), mode="area")[:, 0] > 0.5)
        self.decoders, histories = [], []
        members = [(seed, c.head, c.lr) for seed in ensemble_seeds(ctx.seed, c.ensemble, "feature_segmenter-ensemble")]
        if c.linear_members:   # their own seeds: decoder 0 keeps the cell seed, as without them
            members += [(seed, "linear", c.linear_lr) for seed in
                        ensemble_seeds(ctx.seed, c.linear_members + 1, "feature_segmenter-linear")[1:]]
        for seed, head, lr in members:
            decoder, history = self._train_one(feats_n, feats_p, masks, seed, head, lr)
            self.decoders.append(decoder)
            histories.append(history)
        self.loss_history = histories[0]
        self.standardise = None
        if c.linear_members:
            self.standardise = [self._normal_logit_stats(d, feats_n) for d in self.decoders]
        self.image_standardise = None
        if c.image_score == "members":
            self.image_standardise = self._normal_image_stats(feats_n, normals.shape[1:3])

    def _member_image_logits(self, logits: list[torch.Tensor], size: tuple[int, int]) -> torch.Tensor:
        """Each member's image score alone, in log-odds: [members, B]. The score is the one
        ``image_score: map`` gives a one-member detector (the map at the image size, average-pooled,
        its maximum, then taken to log-odds, which keeps the order), in float64 and
        with 1 - p pooled from sigmoid(-z), so that a linear head's near-certain answers (p within
        1e-16 of 0 or 1) keep their order. The pool is separable: the same zero-padded mean over
        pool_size^2 pixels in 2 x pool_size adds per pixel instead of pool_size^2."""
        k = self.config.pool_size

        def pool(x: torch.Tensor) -> torch.Tensor:
            x = F.interpolate(x[:, None], size=size, mode="bilinear", align_corners=False)
            if k % 2 == 0:   # an even pool grows the map by one: avg_pool2d's shape, as before
                x = F.avg_pool2d(x, (k, 1), stride=1, padding=(k // 2, 0))
                return F.avg_pool2d(x, (1, k), stride=1, padding=(0, k // 2))[:, 0]
            return box_mean(box_mean(x[:, 0], k, -2), k, -1)

        out, padding = [], None
        for lo in logits:
            z = _log_odds(lo).double()
            if padding is None:   # the share of each window outside the map: 0 inside, exactly
                padding = 1 - pool(torch.ones_like(z))
            p, q = pool(torch.sigmoid(z)), pool(torch.sigmoid(-z)) + padding   # q = 1 - p, without cancelling
            out.append((torch.log(p) - torch.log(q)).flatten(1).amax(1))
        return torch.stack(out).cpu()

    @torch.no_grad()
    def _normal_image_stats(self, feats_n: list[torch.Tensor], size: tuple[int, int]) -> list[tuple[float, float]]:
        """Mean and std of each member's image log-odds over the training normals
        (``image_score: members``). Why: a linear head answers near 0 or 1 and a decoder in
        between, so the maximum of their averaged map is whichever member is most certain on an
        image (docs/stability.md §12: the linear heads on wood's good images); in units of its own
        spread over normal images each member ranks with an equal weight."""
        bs = self.config.predict_batch_size
        z = torch.cat([self._member_image_logits([d(*[f[start:start + bs].to(self.device) for f in feats_n])
                                                  for d in self.decoders], size)
                       for start in range(0, len(feats_n[0]), bs)], 1)
        mean = z.mean(1)
        sd = ((z - mean[:, None]) ** 2).mean(1).sqrt().clamp_min(1e-12)
        return [(float(m), float(s)) for m, s in zip(mean, sd)]

    @torch.no_grad()
    def _normal_logit_stats(self, member: nn.Module, feats_n: list[torch.Tensor]) -> tuple[float, float]:
        """Location and scale of one member's log-odds over every pixel of the training normals
        (``member_scale``). Why: members of different kinds answer on different scales (a linear
        head's normal pixels sit at probabilities below 1e-5, a decoder's do not), so a probability
        average is whichever member has the wider range; in units of its own spread on normals
        each member counts alike. ``tail`` measures that spread where the image score looks, at
        the top of the normals: a member that lights up on some normal pixels counts for less."""
        member.eval()
        bs = self.config.predict_batch_size
        z = torch.cat([_log_odds(member(*[f[start:start + bs].to(self.device) for f in feats_n])).double().cpu()
                       .reshape(-1) for start in range(0, len(feats_n[0]), bs)])
        if self.config.member_scale == "tail":
            median = float(torch.quantile(z, 0.5))   # the midpoint of the two middle values, as numpy
            return median, max(float(torch.quantile(z, 0.999)) - median, 1e-12)
        mean = float(z.mean())
        return mean, max(float((z * z).mean()) - mean * mean, 1e-12) ** 0.5

    def _train_one(self, feats_n: list[torch.Tensor], feats_p: list[torch.Tensor], masks: torch.Tensor,
                   seed: int, head: str, lr: float) -> tuple[nn.Module, list[float]]:
        """One member from ``seed`` alone (init and batch order): common random numbers across
        generators, as in `detectors.unet`."""
        c = self.config
        torch.manual_seed(seed)
        gen = torch.Generator().manual_seed(seed)
        decoder = (LinearHead(c.context) if head == "linear" else FeatureDecoder(c.width, c.stem)).to(self.device)
        opt = torch.optim.Adam(decoder.parameters(), lr=lr)
        sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=c.steps)
        half = c.batch_size // 2
        n_normals, n_pairs = len(feats_n[0]), len(feats_p[0])
        history: list[float] = []
        decoder.train()
        for _ in range(c.steps):
            i_n = torch.randint(n_normals, (c.batch_size - half,), generator=gen)
            i_p = torch.randint(n_pairs, (half,), generator=gen)
            f = [torch.cat([fn[i_n], fp[i_p]]).to(self.device) for fn, fp in zip(feats_n, feats_p)]
            if c.feature_dropout:   # from the global generator, seeded above: the member's seed decides it
                f = [F.dropout2d(t.float(), c.feature_dropout) for t in f]
            target = torch.cat([torch.zeros(len(i_n), *masks.shape[1:], dtype=torch.bool), masks[i_p]]).to(self.device)
            logits = F.interpolate(decoder(*f), size=target.shape[-2:], mode="bilinear", align_corners=False)
            loss = focal_loss(logits, target, c.focal_gamma)
            if c.dice_weight:
                loss = loss + c.dice_weight * soft_dice_loss(logits, target)
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
            history.append(float(loss.detach()))
        decoder.eval()
        return decoder, history

    @torch.no_grad()
    def predict(self, images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        if not self.decoders:
            raise RuntimeError("feature_segmenter: predict() before fit()")
        h, w = images.shape[1:3]
        maps, members = [], []
        bs = self.config.predict_batch_size
        feats = self._data_features(images)   # in the same batches of predict_batch_size as before
        for start in range(0, len(images), bs):
            f = [t[start:start + bs].to(self.device).float() for t in feats]   # once, not once per member
            logits = [d(*f) for d in self.decoders]
            if self.standardise:
                z = sum((_log_odds(lo) - m) / sd for lo, (m, sd) in zip(logits, self.standardise))
                p = torch.sigmoid(z / len(self.decoders))[:, None]
            else:
                p = sum(lo.softmax(1)[:, 1:2] for lo in logits) / len(self.decoders)
            maps.append(F.interpolate(p, size=(h, w), mode="bilinear", align_corners=False)[:, 0].cpu())
            if self.image_standardise:
                members.append(self._member_image_logits(logits, (h, w)))
        m = torch.cat(maps)
        if self.image_standardise:
            z = torch.cat(members, 1)
            mean = torch.tensor([a for a, _ in self.image_standardise], dtype=torch.float64)[:, None]
            sd = torch.tensor([b for _, b in self.image_standardise], dtype=torch.float64)[:, None]
            return ((z - mean) / sd).mean(0).numpy(), m.numpy().astype(np.float32)
        return image_scores(m, self.config.pool_size).double().numpy(), m.numpy().astype(np.float32)
