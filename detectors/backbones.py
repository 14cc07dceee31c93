"""Backbones from config: ``backbone: resnet50`` + ``backbone_weights: imagenet | none | <path>``.

Why one place: every feature-based detector (anomalib PatchCore / PaDiM / SuperSimpleNet, the
frozen-encoder segmenter) must use the *same* verified weights, resolve them the same way, stop
before any work when they are missing (never a download, never a silent random backbone), and
record which file it used (name + sha256) so a table row can be traced to its weights.

``imagenet`` is the file `benchmark.weights` builds in the user cache (``make weights``);
``none`` is a seeded random init (smoke tests); any other value is a path to a state dict, with an
optional sidecar ``<file>.json`` (as written by `benchmark.weights`) giving its stride placement
(``v1``: the npm / Keras conversion; default ``v1.5``: torchvision / timm files).
"""
from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from benchmark import weights as W

BACKBONES = ("resnet50",)
WEIGHTS_KEYWORDS = ("imagenet", "none")
# layers a feature extractor may ask for (torchvision / timm ResNet module names)
RESNET_LAYERS = ("layer1", "layer2", "layer3", "layer4")


class MissingBackboneWeights(FileNotFoundError):
    """Pretrained weights the config asks for are not on disk; the message names the build command."""


@dataclass(frozen=True)
class WeightsRef:
    """Which weights a backbone was built from: what a record stores."""

    name: str            # "resnet50_imagenet", "none", or the file name
    sha256: str | None   # of the state-dict file; None for random init
    path: str | None
    stride: str          # "v1" or "v1.5"

    def info(self) -> dict[str, Any]:
        return {"backbone_weights": self.name, "sha256": self.sha256, "path": self.path, "stride": self.stride}


def _missing_message(where: str) -> str:
    return (f"{where}: backbone_weights 'imagenet' are not built yet (looked in {W.weights_dir()}); "
            f"run `{W.BUILD_COMMAND}` once, then rerun")


def resolve_weights(spec: str | None, where: str = "backbone_weights", verify: bool = False) -> WeightsRef:
    """``imagenet`` / ``none`` / a path -> WeightsRef, or MissingBackboneWeights naming the fix.

    ``verify``: recompute the file's sha256 and compare it with the stored one (done once per
    detector at fit time; plan-time checks only look for the files)."""
    if spec is None or str(spec).lower() == "none":
        return WeightsRef("none", None, None, "v1.5")
    if str(spec).lower() == "imagenet":
        meta = W.installed()
        if meta is None:
            raise MissingBackboneWeights(_missing_message(where))
        if verify:
            got = W.sha256_file(Path(meta["path"]))
            if got != meta["sha256"]:
                raise MissingBackboneWeights(f"{where}: {meta['path']} has sha256 {got}, its .json says "
                                             f"{meta['sha256']}: run `{W.BUILD_COMMAND} --force`")
        return WeightsRef(meta["name"], meta["sha256"], meta["path"], meta.get("stride", "v1.5"))
    path = Path(str(spec)).expanduser()
    if not path.is_file():
        raise MissingBackboneWeights(f"{where}: {str(spec)!r} is neither imagenet, none, nor an existing file")
    stride = "v1.5"
    side = path.with_suffix(".json")
    if side.is_file():
        try:
            stride = json.loads(side.read_text()).get("stride", "v1.5")
        except (json.JSONDecodeError, UnicodeDecodeError):
            raise MissingBackboneWeights(f"{side}: not valid JSON") from None
    return WeightsRef(path.name, W.sha256_file(path), str(path), stride)


def load_backbone(name: str, weights: str | None, classifier: bool = False, where: str = "backbone"):
    """A torchvision ``resnet50`` with the resolved weights, strides fixed, frozen, eval mode.

    ``classifier=False`` drops ``fc`` (feature extractors never use it). Returns the module; the
    WeightsRef is on ``module.weights_ref``."""
    import torch

    if name not in BACKBONES:
        raise ValueError(f"{where}: backbone {name!r} is not supported; known: {', '.join(BACKBONES)}")
    ref = resolve_weights(weights, where=f"{where}_weights", verify=True)
    model = W.build_resnet(stride=ref.stride)
    if ref.path is not None:
        try:
            sd = W._load_state_file(Path(ref.path))
            model.load_state_dict(sd, strict=True)
        except (RuntimeError, OSError, ValueError) as e:
            first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise ValueError(f"{where}_weights: {ref.path} is not a resnet50 state dict ({first})") from None
    if not classifier:
        model.fc = torch.nn.Identity()
    for p in model.parameters():
        p.requires_grad_(False)
    model.eval()
    model.weights_ref = ref
    return model


def check_weights(detector_cfg: Mapping[str, Any] | None, where: str = "detector_cfg") -> str | None:
    """Plan-time check for ONE detector's cfg dict: None if fine, else the one-line reason.

    Only ``backbone`` / ``backbone_weights`` are looked at; detectors without them, or with
    ``backbone_weights: timm`` (the anomalib adapter's own timm-name path), pass."""
    if not isinstance(detector_cfg, Mapping):
        return None
    spec = detector_cfg.get("backbone_weights")
    backbone = detector_cfg.get("backbone")
    if spec is None or spec == "timm":
        return None
    if backbone is not None and backbone not in BACKBONES:
        return (f"{where}.backbone: {backbone!r} with backbone_weights needs one of {', '.join(BACKBONES)}")
    try:
        resolve_weights(spec, where=f"{where}.backbone_weights")
    except MissingBackboneWeights as e:
        return str(e)
    return None
