"""The anomalib adapter: raw outputs at input resolution, pairs reach Draem / SuperSimpleNet,
clear errors, and no downloads. Tiny inputs, random backbones (pre_trained=False)."""
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np
import pytest
import torch
from torch import nn

from detectors import DetectorContext, create_detector
from detectors.anomalib import MissingWeightsError, PairAugmenter
from generators.base import Pair
from tests.toys import flat, square

torch.set_num_threads(2)


def _flat(rng, n, size=32):
    return flat(rng, n, size)


_square = square


def _pairs(rng, n, size=32):
    return [Pair(*_square(_flat(rng, 1, size)[0], 2 + 3 * i, 4 + 2 * i, size // 3), "square") for i in range(n)]


@pytest.fixture(scope="module")
def padim():
    rng = np.random.default_rng(0)
    det = create_detector("anomalib:Padim", pre_trained=False, layers=["layer1", "layer2"],
                          image_size=32, batch_size=4)
    det.fit(_flat(rng, 6), [], DetectorContext("tex", seed=0, image_size=32))
    return det


def test_padim_shapes_dtypes_and_ranking(padim):
    rng = np.random.default_rng(1)
    normals = _flat(rng, 3, size=40)  # not the model size: maps must come back at 40 x 40
    anomalous, _ = _square(_flat(rng, 1, size=40)[0], 10, 10, 16)
    scores, maps = padim.predict(np.concatenate([normals, anomalous[None]]))
    assert scores.dtype == np.float64 and scores.shape == (4,)
    assert maps.dtype == np.float32 and maps.shape == (4, 40, 40)
    assert np.isfinite(scores).all() and np.isfinite(maps).all()
    assert scores[3] > scores[:3].max()
    assert maps[3, 10:26, 10:26].mean() > maps[:3].mean()
    assert padim.uses_pairs is False


def test_scores_are_the_models_raw_output(padim):
    rng = np.random.default_rng(2)
    anomalous, _ = _square(_flat(rng, 1)[0], 8, 8, 16)
    images = np.concatenate([_flat(rng, 2), anomalous[None]])
    scores, maps = padim.predict(images)
    assert padim.model.post_processor is None
    x = torch.from_numpy(images).permute(0, 3, 1, 2).float() / 255
    with torch.no_grad():
        raw = padim.model.model(padim.model.pre_processor.transform(x))
    np.testing.assert_allclose(scores, raw.pred_score.reshape(-1).double().numpy(), rtol=1e-5)
    np.testing.assert_allclose(maps, raw.anomaly_map[:, 0].numpy(), rtol=1e-5, atol=1e-6)
    assert scores.max() > 1.0  # a Mahalanobis distance, not squashed into [0, 1]


class _TinyDraem(nn.Module):
    """Stand-in for DRAEM's 97M-parameter networks so the data path is tested in seconds."""

    def __init__(self, sspcab: bool = False):
        super().__init__()
        self.rec = nn.Conv2d(3, 3, 3, padding=1)
        self.seg = nn.Conv2d(6, 2, 3, padding=1)

    def forward(self, x):
        rec = self.rec(x)
        return rec, self.seg(torch.cat([x, rec], 1))


def test_draem_trains_on_given_pairs_not_perlin(monkeypatch):
    import anomalib.models.image.draem.lightning_model as draem_lm
    from anomalib.data.utils.generators.perlin import PerlinAnomalyGenerator
    from anomalib.models.image.draem.loss import DraemLoss

    monkeypatch.setattr(draem_lm, "DraemModel", _TinyDraem)

    def no_perlin(self, img):
        raise AssertionError("DRAEM's Perlin augmenter was called")

    monkeypatch.setattr(PerlinAnomalyGenerator, "forward", no_perlin)
    seen = []
    original_loss = DraemLoss.forward

    def loss_spy(self, input_image, reconstruction, anomaly_mask, prediction):
        seen.append(anomaly_mask.detach().clone())
        return original_loss(self, input_image, reconstruction, anomaly_mask, prediction)

    monkeypatch.setattr(DraemLoss, "forward", loss_spy)
    rng = np.random.default_rng(3)
    pairs = _pairs(rng, 3)
    det = create_detector("anomalib:Draem", pre_trained=False, image_size=32, batch_size=4,
                          max_epochs=2, pair_probability=1.0)
    assert det.uses_pairs is True
    det.fit(_flat(rng, 4), pairs, DetectorContext("tex", seed=0, image_size=32))
    assert isinstance(det.model.augmenter, PairAugmenter)
    assert len(seen) == 2
    pair_masks = [torch.from_numpy(p.mask).float() for p in pairs]
    for batch in seen:
        for m in batch[:, 0]:
            assert any(torch.equal(m, pm) for pm in pair_masks)


def test_pair_augmenter_pastes_inside_mask_only():
    rng = np.random.default_rng(4)
    pair_img = torch.rand(2, 3, 16, 16, generator=torch.Generator().manual_seed(0))
    masks = torch.zeros(2, 16, 16, dtype=torch.bool)
    masks[0, 2:6, 2:6] = True
    masks[1, 8:14, 3:9] = True
    aug = PairAugmenter(pair_img, masks, probability=1.0, seed=0)
    img = torch.from_numpy(rng.random((5, 3, 16, 16))).float()
    out, m = aug(img)
    assert m.shape == (5, 1, 16, 16) and (m.flatten(1).sum(1) > 0).all()
    inside = m.expand_as(img).bool()
    assert torch.equal(out[~inside], img[~inside])
    assert not torch.equal(out[inside], img[inside])
    out0, m0 = PairAugmenter(pair_img, masks, probability=0.0, seed=0)(img)
    assert torch.equal(out0, img) and m0.sum() == 0


def test_supersimplenet_supervised_receives_pair_masks(monkeypatch):
    from anomalib.models.image.supersimplenet.torch_model import SupersimplenetModel

    seen = []
    original = SupersimplenetModel.forward

    def spy(self, images, masks=None, labels=None):
        if self.training:
            seen.append((masks.clone(), labels.clone()))
        return original(self, images, masks, labels)

    monkeypatch.setattr(SupersimplenetModel, "forward", spy)
    rng = np.random.default_rng(5)
    det = create_detector("anomalib:Supersimplenet", pre_trained=False, backbone="resnet18.tv_in1k",
                          image_size=128, batch_size=4)
    assert det.uses_pairs is True
    pairs = _pairs(rng, 2, size=64)
    det.fit(_flat(rng, 2, size=64), pairs, DetectorContext("tex", seed=0, image_size=128))
    masks, labels = seen[0]
    assert labels.sum() == 2 and masks.shape[0] == 4
    assert (masks[labels == 1].flatten(1).sum(1) > 0).all()
    assert masks[labels == 0].sum() == 0
    scores, maps = det.predict(_flat(rng, 2, size=64))
    assert scores.shape == (2,) and maps.shape == (2, 64, 64)
    assert not create_detector("anomalib:Supersimplenet", supervised=False).uses_pairs


def test_unknown_model_name_lists_image_models():
    with pytest.raises(ValueError) as err:
        create_detector("anomalib:NoSuchModel")
    msg = str(err.value)
    assert "\n" not in msg and "NoSuchModel" in msg and "Patchcore" in msg and "Draem" in msg


def test_bad_option_names_model_and_field():
    with pytest.raises(ValueError, match=r"anomalib:Padim.*'n_feature'"):
        create_detector("anomalib:Padim", n_feature=10)
    with pytest.raises(ValueError, match=r"anomalib:Patchcore.*'post_processor'"):
        create_detector("anomalib:Patchcore", post_processor=True)


def test_missing_pretrained_weights_message(monkeypatch, tmp_path):
    import huggingface_hub.constants as hf_constants

    monkeypatch.setattr(hf_constants, "HF_HUB_CACHE", str(tmp_path / "hf"))
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    det = create_detector("anomalib:Padim", pre_trained=True, backbone="resnet18", image_size=32)
    with pytest.raises(MissingWeightsError) as err:
        det.fit(_flat(np.random.default_rng(6), 2), [], DetectorContext("tex", image_size=32))
    msg = str(err.value)
    assert "anomalib:Padim" in msg and "timm/resnet18" in msg and str(tmp_path / "hf") in msg
    assert "pre_trained=False" in msg


@pytest.mark.slow
def test_draem_real_network_one_step():
    rng = np.random.default_rng(7)
    anomalous, _ = _square(_flat(rng, 1)[0], 8, 8, 12)
    det = create_detector("anomalib:Draem", pre_trained=False, image_size=32, batch_size=2, max_epochs=1)
    det.fit(_flat(rng, 2), _pairs(rng, 2), DetectorContext("tex", seed=0, image_size=32))
    scores, maps = det.predict(np.concatenate([_flat(rng, 1), anomalous[None]]))
    assert scores.shape == (2,) and maps.shape == (2, 32, 32) and np.isfinite(maps).all()


@pytest.mark.slow
def test_patchcore_ranks_square_above_normals():
    rng = np.random.default_rng(8)
    det = create_detector("anomalib:Patchcore", pre_trained=False, layers=["layer2"], image_size=32,
                          coreset_sampling_ratio=0.1)
    det.fit(_flat(rng, 6), [], DetectorContext("tex", seed=0, image_size=32))
    anomalous, _ = _square(_flat(rng, 1)[0], 8, 8, 14)
    scores, _ = det.predict(np.concatenate([_flat(rng, 3), anomalous[None]]))
    assert scores[3] > scores[:3].max()


@pytest.mark.slow
def test_efficientad_offline_smoke():
    rng = np.random.default_rng(9)
    det = create_detector("anomalib:EfficientAd", pre_trained=False, image_size=256, max_epochs=1)
    det.fit(_flat(rng, 2, size=64), [], DetectorContext("tex", seed=0, image_size=256))
    scores, maps = det.predict(_flat(rng, 2, size=64))
    assert scores.shape == (2,) and maps.shape == (2, 64, 64) and np.isfinite(scores).all()
    assert det.model.model.is_set(det.model.model.quantiles)  # map quantiles from training normals


def test_bad_option_values_are_value_errors():
    with pytest.raises(ValueError, match="max_epochs"):
        create_detector("anomalib:Padim", max_epochs=0)
    det = create_detector("anomalib:Padim", pre_trained=False, backbone="no_such_backbone", image_size=32)
    with pytest.raises(ValueError, match=r"anomalib:Padim: bad option value.*no_such_backbone"):
        det.fit(_flat(np.random.default_rng(10), 2), [], DetectorContext("tex", image_size=32))
    with pytest.raises(ValueError, match="pairs"):
        create_detector("anomalib:Draem", pre_trained=False, image_size=32).fit(
            _flat(np.random.default_rng(11), 2), [], DetectorContext("tex", image_size=32))


# ----------------------------------------------------------------------------- backbones from config


@pytest.fixture(scope="module")
def fake_imagenet(tmp_path_factory):
    """A seeded random resnet50 stored as the 'imagenet' weights (v1 strides, as the npm build)."""
    from benchmark import weights as W

    cache = tmp_path_factory.mktemp("weights")
    src = W.build_resnet(stride="v1")
    with torch.no_grad():  # non-default BN stats, so a re-initialised backbone would show
        src.layer2[0].bn1.running_mean.normal_(generator=torch.Generator().manual_seed(1))
    meta = W.write_weights(src.state_dict(), {"source": "test", "stride": "v1", "input": "torchvision"}, cache)
    return cache, meta, src


def test_backbone_weights_reach_the_anomalib_model(fake_imagenet, monkeypatch):
    cache, meta, src = fake_imagenet
    monkeypatch.setenv("HELIXBENCH_WEIGHTS", str(cache))
    rng = np.random.default_rng(12)
    det = create_detector("anomalib:Patchcore", backbone_weights="imagenet", layers=["layer2"], image_size=32,
                          coreset_sampling_ratio=0.5)
    assert det.model_kwargs["backbone"] == "resnet50"
    det.fit(_flat(rng, 3), [], DetectorContext("tex", seed=0, image_size=32))
    fx = det.model.model.feature_extractor.feature_extractor
    assert torch.equal(fx.get_submodule("layer2.0.bn1").running_mean, src.layer2[0].bn1.running_mean)
    assert torch.equal(fx.conv1.weight, src.conv1.weight)
    first = fx.get_submodule("layer2.0")
    assert first.conv1.stride == (2, 2) and first.conv2.stride == (1, 1)  # v1, from the .json
    assert det.weights_info() == {"backbone": "resnet50", "backbone_weights": "resnet50_imagenet",
                                  "sha256": meta["sha256"], "path": str(cache / "resnet50_imagenet.pth"),
                                  "stride": "v1"}
    scores, maps = det.predict(_flat(rng, 2))
    assert scores.shape == (2,) and maps.shape == (2, 32, 32)
    padim = create_detector("anomalib:Padim", backbone_weights="imagenet")
    assert padim.model_kwargs["n_features"] == 550  # anomalib has no default for a module backbone


def test_missing_backbone_weights_found_on_the_resolved_config(tmp_path, monkeypatch):
    """Plan resolves the config (pure) then asks backbones.check_weights (the environment)."""
    from benchmark.schema import ConfigError, resolved
    from detectors import get_detector_class
    from detectors.backbones import check_weights

    monkeypatch.setenv("HELIXBENCH_WEIGHTS", str(tmp_path / "empty"))
    cls = get_detector_class("anomalib:Padim")
    where = "detector_cfg.anomalib:Padim"
    cfg = resolved(cls.resolve_config({"backbone_weights": "imagenet", "layers": ["layer1"]}, where, "Padim"))
    msg = check_weights(cfg, where)
    assert msg.startswith("detector_cfg.anomalib:Padim.backbone_weights: ") and "make weights" in msg
    assert "\n" not in msg
    assert check_weights(resolved(cls.resolve_config({}, where, "Padim")), where) is None  # timm path
    with pytest.raises(ConfigError, match=r"backbone: 'wide_resnet50_2' with backbone_weights"):
        cls.resolve_config({"backbone_weights": "none", "backbone": "wide_resnet50_2"}, "d", "Patchcore")
    resolved_none = cls.resolve_config({"backbone_weights": "none", "n_features": 20}, "d", "Padim")
    assert resolved_none["backbone_weights"] == "none" and resolved_none["batch_size"] == 8
    assert resolved_none["n_features"] == 20 and check_weights(resolved_none, "d") is None


def test_pairs_used_per_model_without_building():
    from detectors import get_detector_class

    cls = get_detector_class("anomalib:Padim")
    assert cls.pairs_used({}, "Draem") is True
    assert cls.pairs_used({"supervised": True}, "Supersimplenet") is True
    assert cls.pairs_used({"supervised": False}, "supersimplenet") is False
    assert cls.pairs_used({}, "Patchcore") is False
