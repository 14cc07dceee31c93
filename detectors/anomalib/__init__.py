"""anomalib image models as helixbench detectors (``anomalib:<Model>``), trained from in-memory
arrays and read out raw.

One registry family entry covers every anomalib image model (``anomalib:Padim``,
``anomalib:Patchcore``, ``anomalib:Supersimplenet``, ``anomalib:Draem``, ``anomalib:EfficientAd``...).
The package is split by job so each can be read alone:
``options`` (adapter settings, model lookup), ``offline`` (no downloads), ``data`` (arrays to
batches), ``hooks`` (the few per-model differences), ``detector`` (build, train, read out).
Backbones given as ``backbone_weights`` come from `detectors.backbones` (verified files built by
``make weights``); with ``pre_trained=False`` timm backbones are random (what the tests use).
"""
from .detector import AnomalibDetector
from .hooks import HOOKS, ModelHooks, PairAugmenter
from .offline import MissingWeightsError, weight_locations
from .options import AnomalibOptions, image_model_names

__all__ = [
           "HOOKS",
           "AnomalibDetector",
           "AnomalibOptions",
           "MissingWeightsError",
           "ModelHooks",
           "PairAugmenter",
           "image_model_names",
           "weight_locations",
]
